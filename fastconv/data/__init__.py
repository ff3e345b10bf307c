"""Data for training: datasets, transforms and a batch loader, all on NumPy arrays.

::

    from fastconv import data
    cifar = data.load_cifar10()          # uint8 (N, 3, 32, 32) images, int64 labels
    train = data.DataLoader(cifar.x_train, cifar.y_train, batch_size=128, shuffle=True,
                            augment=True)
    test = data.DataLoader(cifar.x_test, cifar.y_test, batch_size=250)
    x = data.to_float32(cifar.x_test[:8])  # normalised float32, as the loaders give it

* Datasets: :func:`load_cifar10` (:mod:`fastconv.data.cifar`) and :func:`load_cifar100`
  (:mod:`fastconv.data.cifar100`, fine and coarse labels) find the official python format
  (``data_dir``, else ``$FASTCONV_DATA``, else ``~/.cache/fastconv``), download it there when
  missing (MD5-checked, its size announced first), validate it and return tuples
  ``(x_train, y_train, x_test, y_test, class_names, source, ...)``.
  :func:`load_image_folder` (:mod:`fastconv.data.folder`) reads your own images, a
  sub-folder per class, resized and centre-cropped with Pillow; :func:`load_image_folder_dataset`
  makes a train/test pair of them. :func:`load_dataset` takes a name (``"cifar10"``,
  ``"cifar100"``, ``"folder:PATH"``) and adds the normalisation statistics. Problems raise
  :class:`DatasetError` with a one-line message that says what to do.
* Transforms (:mod:`fastconv.data.transforms`): :func:`to_float32` (``(x / 255 - mean) /
  std`` per channel), :func:`compute_mean_std`, :func:`augment_batch` (random crop with zero
  padding and horizontal flip, vectorised over the batch).
* Batches (:mod:`fastconv.data.loader`): :class:`DataLoader` shuffles (seeded), augments,
  normalises and prepares the next batch in a background thread; every batch is a pure
  function of ``(seed, epoch, batch index)``, so training resumes bit-exactly.
  :func:`fastconv.training.fit` takes a DataLoader (or arrays, which it batches itself).
"""

from __future__ import annotations

from .archive import DatasetError, DatasetNotFoundError, default_data_dir, md5sum
from .cifar import (
    CIFAR10,
    CIFAR10_MD5,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR10_URL,
    CLASS_NAMES,
    FOLDER_NAME,
    META_FILE,
    TARBALL_NAME,
    TEST_BATCH,
    TRAIN_BATCHES,
    CIFAR10_SIZE,
    download_cifar10,
    find_cifar10,
    load_cifar10,
)
from .cifar100 import (
    CIFAR100,
    CIFAR100_FOLDER,
    CIFAR100_MD5,
    CIFAR100_MEAN,
    CIFAR100_SIZE,
    CIFAR100_STD,
    CIFAR100_TARBALL,
    CIFAR100_URL,
    download_cifar100,
    find_cifar100,
    load_cifar100,
)
from .datasets import DATASETS, LabelledImages, load_dataset, parse_dataset
from .folder import (FolderDataset, ImageFolder, find_classes, load_image_folder,
                     load_image_folder_dataset, split_per_class)
from .images import IMAGE_EXTENSIONS, ImageReadError, read_image
from .loader import DataLoader
from .transforms import augment_batch, compute_mean_std, to_float32

__all__ = [
    # datasets
    "load_cifar10",
    "CIFAR10",
    "CLASS_NAMES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DatasetError",
    "DatasetNotFoundError",
    "default_data_dir",
    "find_cifar10",
    "download_cifar10",
    "md5sum",
    "CIFAR10_URL",
    "CIFAR10_MD5",
    "TARBALL_NAME",
    "FOLDER_NAME",
    "TRAIN_BATCHES",
    "TEST_BATCH",
    "META_FILE",
    "CIFAR10_SIZE",
    "load_cifar100",
    "CIFAR100",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "find_cifar100",
    "download_cifar100",
    "CIFAR100_URL",
    "CIFAR100_MD5",
    "CIFAR100_SIZE",
    "CIFAR100_TARBALL",
    "CIFAR100_FOLDER",
    "load_image_folder",
    "load_image_folder_dataset",
    "ImageFolder",
    "FolderDataset",
    "find_classes",
    "split_per_class",
    "read_image",
    "ImageReadError",
    "IMAGE_EXTENSIONS",
    "load_dataset",
    "parse_dataset",
    "LabelledImages",
    "DATASETS",
    # batches and transforms
    "DataLoader",
    "to_float32",
    "compute_mean_std",
    "augment_batch",
]
