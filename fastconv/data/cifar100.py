"""CIFAR-100 in its official python format: locate, download, verify and decode.

The dataset is the official ``cifar-100-python.tar.gz`` (top folder ``cifar-100-python/``
holding ``train``, ``test`` and ``meta``). ``train`` (50,000 images) and ``test`` (10,000)
are pickles of dicts with ``b'data'`` (uint8, (n, 3072), laid out as CIFAR-10's: 1024 red,
1024 green, 1024 blue values), ``b'fine_labels'`` (n ints in 0..99) and ``b'coarse_labels'``
(n ints in 0..19, the superclass); ``meta`` holds ``b'fine_label_names'`` (100) and
``b'coarse_label_names'`` (20).

Where the data is looked for, what is trusted and how problems are reported are as for
CIFAR-10 (:mod:`fastconv.data.cifar`): ``data_dir``, else ``$FASTCONV_DATA``, else
``~/.cache/fastconv``; the extracted folder wins over the tarball; a copy the user has is
accepted when well formed (gzip's CRC included), a downloaded one must match the published
MD5 ``eb9058c3...``; pickles are read by the restricted unpickler; every problem is one
:class:`~fastconv.data.DatasetError` line.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .archive import (DATA_ENV, check_limits, data_root, download as _download, get_key,
                      locate, read_members, reading)
from .cifar import parse_batch

__all__ = ["CIFAR100", "CIFAR100_URL", "CIFAR100_MD5", "CIFAR100_SIZE", "CIFAR100_TARBALL",
           "CIFAR100_FOLDER", "CIFAR100_MEAN", "CIFAR100_STD", "find_cifar100",
           "download_cifar100", "load_cifar100"]

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
"""Official download address of the python version."""
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
"""Published MD5 of the official ``cifar-100-python.tar.gz``."""
CIFAR100_SIZE = 169_001_437
"""Size in bytes of the official ``cifar-100-python.tar.gz`` (announced before a download)."""
CIFAR100_TARBALL = "cifar-100-python.tar.gz"
CIFAR100_FOLDER = "cifar-100-python"
_META, _TRAIN, _TEST = "meta", "train", "test"
_MEMBERS = (_META, _TRAIN, _TEST)
_FINE, _COARSE = 100, 20

CIFAR100_MEAN = (0.5070751592371323, 0.48654887331495095, 0.4409178433670343)
"""Per-channel (R, G, B) mean of the 50,000 training images, pixel values scaled to [0, 1]."""
CIFAR100_STD = (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)
"""Per-channel population standard deviation of the training images (scaled to [0, 1])."""


class CIFAR100(NamedTuple):
    """CIFAR-100 arrays as returned by :func:`load_cifar100`.

    The first six fields are those of :class:`~fastconv.data.CIFAR10` (labels are the 100
    fine classes, unless ``load_cifar100(label_mode="coarse")``); the superclass labels and
    names follow.

    Attributes:
        x_train: uint8 (N, 3, 32, 32) training images, official order (N <= 50000).
        y_train: int64 (N,) labels (fine, 0..99, by default).
        x_test: uint8 (M, 3, 32, 32) test images (M <= 10000).
        y_test: int64 (M,) labels.
        class_names: the names of ``y_train``'s classes, label i = ``class_names[i]``.
        source: the tarball or folder the data came from.
        y_train_coarse, y_test_coarse: int64 superclass labels in 0..19.
        coarse_class_names: the 20 superclass names.
        fine_class_names: the 100 fine class names.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    source: Path | None
    y_train_coarse: np.ndarray
    y_test_coarse: np.ndarray
    coarse_class_names: tuple[str, ...]
    fine_class_names: tuple[str, ...]


def find_cifar100(data_dir: str | os.PathLike | None = None) -> Path | None:
    """Return the tarball or extracted folder to load, or None when there is none.

    ``data_dir`` (else ``$FASTCONV_DATA``, else ``~/.cache/fastconv``) may be the tarball
    itself, the ``cifar-100-python`` folder itself, or a folder containing either; when it
    contains both, the extracted folder wins.
    """
    root = data_root(data_dir)
    if root.is_file():
        return root
    if not root.is_dir():
        return None
    if (root / _META).is_file() and (root / _TRAIN).is_file():
        return root
    if (root / CIFAR100_FOLDER).is_dir():
        return root / CIFAR100_FOLDER
    if (root / CIFAR100_TARBALL).is_file():
        return root / CIFAR100_TARBALL
    return None


def download_cifar100(dest_dir: str | os.PathLike | None = None, *, url: str = CIFAR100_URL,
                      md5: str | None = CIFAR100_MD5,
                      opener: Callable[..., Any] | None = None, timeout: float = 60.0,
                      progress: bool = False) -> Path:
    """Download the CIFAR-100 tarball into ``dest_dir`` (default
    :func:`~fastconv.data.default_data_dir`), MD5-checked, and return its path; announced on
    stderr with its size first. See :func:`fastconv.data.archive.download`."""
    return _download(dest_dir, url=url, md5=md5, filename=CIFAR100_TARBALL, what="CIFAR-100",
                     expected_size=CIFAR100_SIZE, opener=opener, timeout=timeout,
                     progress=progress)


def _what_to_do(path: Path) -> str:
    return (f"delete {path} and run again to download a fresh copy from {CIFAR100_URL}, "
            f"or point ${DATA_ENV} (or --data-dir) at a folder holding a good "
            f"{CIFAR100_TARBALL} or {CIFAR100_FOLDER}/")


def _names(meta: Any, key: str, count: int, where: str) -> tuple[str, ...]:
    if not isinstance(meta, Mapping):
        raise ValueError(f"{where}: meta is not a dict")
    try:
        raw = get_key(meta, key)
    except KeyError:
        raise ValueError(f"{where}: meta has no {key}") from None
    names = tuple(n.decode("latin1") if isinstance(n, bytes) else str(n) for n in raw)
    if len(names) != count:
        raise ValueError(f"{where}: meta lists {len(names)} {key}, expected {count}")
    return names


def _load_source(source: Path, limit_train: int | None, limit_test: int | None,
                 label_mode: str) -> CIFAR100:
    where = str(source)
    wanted = {_TRAIN} | ({_TEST} if limit_test != 0 else set())

    def incomplete(missing: str) -> str:
        kind = "folder" if source.is_dir() else "archive"
        return (f"CIFAR-100 {kind} {source} is incomplete (missing {missing}); "
                + _what_to_do(source))

    keys = {"fine_labels": _FINE, "coarse_labels": _COARSE}
    empty = np.empty((0, 3, 32, 32), np.uint8), {k: np.empty((0,), np.int64) for k in keys}
    with reading(source, "CIFAR-100", _what_to_do):
        objs = read_members(source, CIFAR100_FOLDER, _MEMBERS, lambda _: wanted, incomplete)
        fine = _names(objs[_META], "fine_label_names", _FINE, where)
        coarse = _names(objs[_META], "coarse_label_names", _COARSE, where)
        x_train, y_train = parse_batch(objs.pop(_TRAIN), _TRAIN, where, None, keys)
        x_test, y_test = (parse_batch(objs.pop(_TEST), _TEST, where, None, keys)
                          if limit_test != 0 else empty)
    train_rows = slice(None, limit_train)
    test_rows = slice(None, limit_test)
    main, other = ("coarse_labels", "fine_labels") if label_mode == "coarse" else \
        ("fine_labels", "coarse_labels")
    return CIFAR100(
        np.ascontiguousarray(x_train[train_rows]), y_train[main][train_rows].copy(),
        np.ascontiguousarray(x_test[test_rows]), y_test[main][test_rows].copy(),
        coarse if label_mode == "coarse" else fine, source,
        y_train["coarse_labels"][train_rows].copy(), y_test["coarse_labels"][test_rows].copy(),
        coarse, fine)


def load_cifar100(data_dir: str | os.PathLike | None = None, *, label_mode: str = "fine",
                  download: bool = True, limit_train: int | None = None,
                  limit_test: int | None = None, progress: bool = False,
                  url: str = CIFAR100_URL, md5: str | None = CIFAR100_MD5,
                  opener: Callable[..., Any] | None = None) -> CIFAR100:
    """Load CIFAR-100 as uint8 NCHW arrays with its fine and coarse labels.

    Looks in ``data_dir``, else ``$FASTCONV_DATA``, else ``~/.cache/fastconv`` (see
    :func:`find_cifar100`); when nothing is there and ``download`` is true, downloads the
    official archive into that folder (169 MB, MD5-verified, announced on stderr first).

    Args:
        data_dir: tarball, extracted folder, or a folder holding either.
        label_mode: ``"fine"`` (100 classes, the default) or ``"coarse"`` (the 20
            superclasses) for ``y_train``, ``y_test`` and ``class_names``, as torchvision's
            and Keras' ``label_mode``; both kinds are always in the result.
        download: fetch the archive when it is missing.
        limit_train: keep only the first N training images (official order); 0 loads none.
        limit_test: keep only the first M test images; 0 skips the test file.
        progress: show download progress.
        url, md5, opener: passed to :func:`download_cifar100` (for tests and mirrors).

    Returns:
        :class:`CIFAR100`.

    Raises:
        DatasetNotFoundError: no data found and none could be downloaded.
        DatasetError: the data found is corrupt, truncated or incomplete.
    """
    if label_mode not in ("fine", "coarse"):
        raise ValueError(f"load_cifar100: label_mode must be 'fine' or 'coarse', got "
                         f"{label_mode!r}")
    check_limits("load_cifar100", limit_train=limit_train, limit_test=limit_test)
    source = locate(data_dir, find_cifar100,
                    lambda root: download_cifar100(root, url=url, md5=md5, opener=opener,
                                                   progress=progress),
                    what="CIFAR-100", looked_for=f"{CIFAR100_TARBALL} and {CIFAR100_FOLDER}/",
                    download=download)
    return _load_source(source, limit_train, limit_test, label_mode)
