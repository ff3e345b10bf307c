"""Your own images: a folder with a sub-folder per class, as torchvision's ``ImageFolder``::

    flowers/                   load_image_folder("flowers")  -> 3 classes, sorted by name
      daisy/  001.jpg 002.png ...
      rose/   a.jpg b/c.jpg ...      (files in nested folders count for their class)
      tulip/  ...

Every image is decoded with Pillow, converted to RGB, its shorter side resized to
``image_size`` and centre-cropped (:func:`fastconv.data.images.read_image`): images of mixed
sizes and modes come out as one uint8 (N, 3, size, size) array.

What is skipped, and what is an error (each error is one :class:`DatasetError` line naming the
folder or file):

* Skipped (listed in ``skipped`` with the reason): files whose name does not end with an image
  extension (:data:`~fastconv.data.images.IMAGE_EXTENSIONS`: ``readme.txt``, ``labels.csv``),
  hidden files and folders (``.DS_Store``, ``.ipynb_checkpoints``), and files at the top level,
  outside any class folder.
* Errors: a root that is not a folder; no class folder; a class folder with no image (an
  empty class would be a label the model never sees: remove the folder or add images); a file
  with an image extension that Pillow cannot decode (truncated, not an image), unless
  ``bad_images="skip"``, which skips it and lists it in ``skipped``.

:func:`load_image_folder_dataset` makes a train/test pair from either a root holding ``train/``
and ``test/`` (or ``val/``) class trees, or one class tree from which a seeded, per-class
fraction is held out for testing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .archive import DatasetError, check_limits
from .images import IMAGE_EXTENSIONS, ImageReadError, is_image_file, read_image

__all__ = ["ImageFolder", "FolderDataset", "find_classes", "load_image_folder",
           "load_image_folder_dataset", "split_per_class"]


class ImageFolder(NamedTuple):
    """Images of a class-folder tree, as returned by :func:`load_image_folder`.

    Attributes:
        x: uint8 (N, 3, size, size) images, classes in order, files sorted within a class.
        y: int64 (N,) labels; label i is ``class_names[i]``.
        class_names: the class folders' names, sorted.
        paths: the N image files, in the order of ``x``.
        skipped: ``(path, reason)`` of every file left out (see the module's notes).
        root: the folder read.
    """

    x: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...]
    paths: tuple[Path, ...]
    skipped: tuple[tuple[Path, str], ...]
    root: Path


class FolderDataset(NamedTuple):
    """A train/test pair of image-folder data (:func:`load_image_folder_dataset`), with the
    fields of :class:`~fastconv.data.CIFAR10` first."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    source: Path
    skipped: tuple[tuple[Path, str], ...]


def _hidden(name: str) -> bool:
    return name.startswith(".")


def find_classes(root: str | os.PathLike) -> tuple[str, ...]:
    """The class names under ``root``: its non-hidden sub-folders, sorted (as torchvision's
    ``find_classes``). DatasetError when ``root`` is not a folder or has none."""
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise DatasetError(f"image folder {root} {what} (expected a folder with one sub-folder "
                           f"of images per class)")
    names = tuple(sorted(e.name for e in os.scandir(root) if e.is_dir() and not _hidden(e.name)))
    if not names:
        raise DatasetError(f"image folder {root} has no class sub-folders (expected one "
                           f"sub-folder of images per class, as torchvision's ImageFolder)")
    return names


def _class_files(folder: Path, skipped: list) -> list[Path]:
    """Image files under ``folder`` (recursively, sorted); other files go to ``skipped``."""
    files: list[Path] = []
    seen: set[str] = set()   # real paths of the folders walked: a symlink cycle is walked once
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            skipped.append((Path(dirpath), "a link to a folder already read"))
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if _hidden(name):
                skipped.append((path, "hidden file"))
            elif is_image_file(name):
                files.append(path)
            else:
                skipped.append((path, "not an image file name"))
    return sorted(files)


def load_image_folder(root: str | os.PathLike, image_size: int = 32, *,
                      class_names: tuple[str, ...] | list[str] | None = None,
                      bad_images: str = "error") -> ImageFolder:
    """Read a class-folder tree (see the module's notes) into uint8 arrays.

    Args:
        root: the folder holding one sub-folder per class.
        image_size: side of the square images returned (the model's input size).
        class_names: the classes to expect, in label order (e.g. the training set's, when
            reading its test set): a class folder not among them is an error; one missing
            from ``root`` just has no images here. Default: ``root``'s sub-folders, and every
            one must hold images.
        bad_images: ``"error"`` (default) or ``"skip"`` for files with an image name that
            cannot be decoded.

    Returns:
        :class:`ImageFolder` ``(x, y, class_names, paths, skipped, root)``.
    """
    if bad_images not in ("error", "skip"):
        raise ValueError(f"load_image_folder: bad_images must be 'error' or 'skip', got "
                         f"{bad_images!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) \
            or image_size < 1:
        raise ValueError(f"load_image_folder: image_size must be a positive int, got "
                         f"{image_size!r}")
    if isinstance(class_names, str):
        raise TypeError(f"load_image_folder: class_names must be a list of names, got the "
                        f"string {class_names!r}")
    root = Path(root).expanduser()
    found = find_classes(root)
    if class_names is None:
        names = found
    else:
        names = tuple(class_names)
        repeated = sorted({c for c in names if names.count(c) > 1})
        if repeated:   # (each folder's images would be read once per repeat, under two labels)
            raise ValueError(f"load_image_folder: class_names repeats {', '.join(repeated)}")
        extra = [c for c in found if c not in names]
        if extra:
            raise DatasetError(f"image folder {root} has class folders the model was not "
                               f"trained on: {', '.join(extra)} (classes: {', '.join(names)})")
    skipped: list[tuple[Path, str]] = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if not entry.is_dir():
            skipped.append((Path(entry.path), "outside the class folders"))
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(names):
        if name not in found:
            continue
        class_files = _class_files(root / name, skipped)
        if not class_files and class_names is None:
            raise DatasetError(
                f"class folder {root / name} holds no images (file names ending "
                f"{', '.join(IMAGE_EXTENSIONS)}): add images or remove the folder")
        files.extend((p, label) for p in class_files)
    x = np.empty((len(files), 3, image_size, image_size), np.uint8)
    keep = np.ones(len(files), bool)
    for i, (path, _) in enumerate(files):
        try:
            x[i] = read_image(path, image_size)
        except ImageReadError as e:
            if bad_images == "error":
                raise ImageReadError(f"{e}; fix or remove the file, or skip unreadable "
                                     f"images (bad_images='skip')") from e
            skipped.append((path, f"unreadable image: {e}"))
            keep[i] = False
    if not keep.all():
        x = x[keep]
    kept = [f for f, k in zip(files, keep) if k]
    y = np.array([label for _, label in kept], np.int64)
    return ImageFolder(x, y, names, tuple(p for p, _ in kept), tuple(skipped), root)


def split_per_class(y: np.ndarray, test_fraction: float, seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) holding out ``round(test_fraction * n)`` of each class's n
    samples (at most n - 1), chosen with ``numpy.random.default_rng(seed)``; both sorted."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"split_per_class: test_fraction must be in [0, 1), got "
                         f"{test_fraction!r}")
    rng = np.random.default_rng(seed)
    test: list[np.ndarray] = []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        k = min(int(round(test_fraction * len(idx))), len(idx) - 1)
        test.append(rng.permutation(idx)[:k])
    test_idx = np.sort(np.concatenate(test)) if test else np.empty(0, np.int64)
    train_mask = np.ones(len(y), bool)
    train_mask[test_idx] = False
    return np.flatnonzero(train_mask), test_idx


def _split_folders(root: Path) -> tuple[Path, Path] | None:
    train = root / "train"
    for name in ("test", "val"):
        if train.is_dir() and (root / name).is_dir():
            return train, root / name
    return None


def load_image_folder_dataset(root: str | os.PathLike, image_size: int = 32, *,
                              test_fraction: float = 0.1, seed: int = 0,
                              limit_train: int | None = None, limit_test: int | None = None,
                              bad_images: str = "error") -> FolderDataset:
    """Training and test images from a folder, for :func:`fastconv.training.fit` and
    ``fastconv-train --dataset folder:PATH``.

    When ``root`` holds ``train/`` and ``test/`` (or ``val/``) sub-folders, each is a
    class-folder tree (the classes are ``train/``'s; ``test/`` may lack some but have no
    other). Otherwise ``root`` itself is the class-folder tree and ``test_fraction`` of each
    class (rounded; never a whole class) is held out for testing, chosen with ``seed``.
    Both sets come in an order shuffled with ``seed`` (so that ``limit_train``/``limit_test``,
    which keep the first N/M images, keep a mix of classes).
    """
    check_limits("load_image_folder_dataset", limit_train=limit_train, limit_test=limit_test)
    root = Path(root).expanduser()
    pair = _split_folders(root) if root.is_dir() else None
    if pair is not None:
        train = load_image_folder(pair[0], image_size, bad_images=bad_images)
        test = load_image_folder(pair[1], image_size, class_names=train.class_names,
                                 bad_images=bad_images)
        x_train, y_train, x_test, y_test = train.x, train.y, test.x, test.y
        skipped = train.skipped + test.skipped
    else:
        full = load_image_folder(root, image_size, bad_images=bad_images)
        train_idx, test_idx = split_per_class(full.y, test_fraction, seed)
        x_train, y_train = full.x[train_idx], full.y[train_idx]
        x_test, y_test = full.x[test_idx], full.y[test_idx]
        train, skipped = full, full.skipped
    # a seeded shuffle, so that the first N images (limit_train) are not all of one class
    rng = np.random.default_rng(seed)
    order_train = rng.permutation(len(y_train))[:limit_train]
    order_test = rng.permutation(len(y_test))[:limit_test]
    return FolderDataset(np.ascontiguousarray(x_train[order_train]), y_train[order_train],
                         np.ascontiguousarray(x_test[order_test]), y_test[order_test],
                         train.class_names, root, skipped)
