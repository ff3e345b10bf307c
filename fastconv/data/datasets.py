"""One entry point for the datasets ``fastconv-train`` trains on, by name: ``"cifar10"``,
``"cifar100"`` or ``"folder:PATH"`` (an image folder, see :mod:`fastconv.data.folder`).

::

    from fastconv import data
    ds = data.load_dataset("folder:~/pictures/flowers", image_size=32)
    train = data.DataLoader(ds.x_train, ds.y_train, 64, shuffle=True, augment=True,
                            mean=ds.mean, std=ds.std)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .cifar import CIFAR10_MEAN, CIFAR10_STD, load_cifar10
from .cifar100 import CIFAR100_MEAN, CIFAR100_STD, load_cifar100
from .folder import load_image_folder_dataset
from .transforms import compute_mean_std

__all__ = ["DATASETS", "LabelledImages", "parse_dataset", "load_dataset"]

DATASETS = ("cifar10", "cifar100", "folder:PATH")
"""The names :func:`load_dataset` takes."""


class LabelledImages(NamedTuple):
    """Training and test images of a dataset (:func:`load_dataset`).

    Attributes:
        x_train, y_train, x_test, y_test: uint8 (N, 3, H, W) images and int64 labels.
        class_names: label i is ``class_names[i]``.
        source: the archive or folder read.
        mean, std: per-channel normalisation for :class:`~fastconv.data.DataLoader` and
            :func:`~fastconv.data.to_float32`: the published statistics of CIFAR-10/100's
            training images, or those of an image folder's training images, computed.
        name: the dataset's name as given (``"cifar10"``, ``"folder:/path"``).
        skipped: files left out of an image folder, ``(path, reason)`` (empty for CIFAR).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    source: Path | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    skipped: tuple = ()


def parse_dataset(name: str) -> tuple[str, Path | None]:
    """``"cifar10"`` -> ("cifar10", None); ``"folder:PATH"`` -> ("folder", PATH). ValueError
    for anything else."""
    if not isinstance(name, str):
        raise TypeError(f"dataset must be a string, got {type(name).__name__}")
    if name in ("cifar10", "cifar100"):
        return name, None
    if name.startswith("folder:") and name[len("folder:"):].strip():
        return "folder", Path(name[len("folder:"):]).expanduser()
    raise ValueError(f"unknown dataset {name!r}: expected cifar10, cifar100 or folder:PATH "
                     f"(a folder with a sub-folder of images per class)")


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *,
                 download: bool = True, limit_train: int | None = None,
                 limit_test: int | None = None, image_size: int = 32, seed: int = 0,
                 progress: bool = False, **options: Any) -> LabelledImages:
    """Load dataset ``name`` (one of :data:`DATASETS`) as :class:`LabelledImages`.

    CIFAR-10/100 are found in ``data_dir`` (else ``$FASTCONV_DATA``, else
    ``~/.cache/fastconv``) and downloaded there when missing and ``download`` is true (see
    :func:`~fastconv.data.load_cifar10`); their images are 32 x 32. An image folder is read
    at ``image_size`` with :func:`~fastconv.data.load_image_folder_dataset` (``seed`` chooses
    its held-out test images); ``data_dir`` does not apply to it. ``options`` go to the
    loader (``label_mode`` for CIFAR-100, ``test_fraction`` and ``bad_images`` for a folder).
    """
    kind, path = parse_dataset(name)
    limits = {"limit_train": limit_train, "limit_test": limit_test}
    if kind == "folder":
        if data_dir is not None:
            raise ValueError(f"data_dir does not apply to {name}: the path is part of the name")
        ds = load_image_folder_dataset(path, image_size, seed=seed, **limits, **options)
        if len(ds.y_train) == 0:
            raise ValueError(f"no training images in {path}")
        mean, std = compute_mean_std(ds.x_train)
        if np.any(std <= 0):
            raise ValueError(f"the training images in {path} have a constant colour channel "
                             f"(std {tuple(round(float(v), 4) for v in std)}): they cannot be "
                             f"normalised")
        return LabelledImages(*ds[:6], tuple(map(float, mean)), tuple(map(float, std)), name,
                              ds.skipped)
    if image_size != 32:
        raise ValueError(f"{name} images are 32 x 32, not {image_size} x {image_size}")
    if kind == "cifar10":
        ds10 = load_cifar10(data_dir, download=download, progress=progress, **limits, **options)
        return LabelledImages(*ds10, CIFAR10_MEAN, CIFAR10_STD, name)
    ds100 = load_cifar100(data_dir, download=download, progress=progress, **limits, **options)
    return LabelledImages(*ds100[:6], CIFAR100_MEAN, CIFAR100_STD, name)
