"""CIFAR-10 in its official python format: locate, download, verify and decode.

The dataset is the official ``cifar-10-python.tar.gz`` (top folder ``cifar-10-batches-py/``
holding ``data_batch_1`` ... ``data_batch_5``, ``test_batch`` and ``batches.meta``). Each batch is
a pickle (protocol 2) of a dict with ``b'data'`` (uint8, (n, 3072): 1024 red, 1024 green, 1024
blue values, each channel 32x32 row-major) and ``b'labels'`` (n ints in 0..9).

Where the data is looked for (first match wins)
-----------------------------------------------
The *root* folder is, in this order:

1. the ``data_dir`` argument (``--data-dir`` on the command line), if given;
2. else ``$FASTCONV_DATA``, if set and non-empty;
3. else ``~/.cache/fastconv``.

Inside the root (``find_cifar10``): ``data_dir`` may itself be the tarball file or the extracted
``cifar-10-batches-py`` folder; otherwise ``<root>/cifar-10-batches-py/`` is used when present
(fastest: no decompression), else ``<root>/cifar-10-python.tar.gz`` (read by streaming through
the archive to its gzip trailer, nothing is extracted to disk). When neither exists and
downloading is allowed, the official archive is downloaded into the root and its MD5 checked
before it is used.

Trust model
-----------
* A file the user already has is accepted when it is *well formed*: every batch present, each
  ``data`` a (n, 3072) uint8 array with n = ``num_cases_per_batch`` of ``batches.meta``, labels
  integers in 0..9. A tarball must also pass gzip's own check (CRC-32 and length of all the
  decompressed data, members not needed included). Its checksum is not compared with the
  official one, so rebuilt copies (such as the offline one in ``../shared/data``, whose MD5
  differs) load.
* A file this module *downloads* must match the official MD5 ``c58f3010...``; otherwise it is
  deleted and :class:`DatasetError` is raised.
* Pickles are read with a restricted unpickler that can only rebuild NumPy arrays and plain
  containers, so a malicious file cannot run code.
* Any problem raises :class:`DatasetError` (a ``ValueError``) with a one-line message that says
  what to do. Nothing is returned until everything needed has been read and validated.

Arrays
------
:func:`load_cifar10` keeps images as compact uint8 NCHW arrays (150 MB for the training set
instead of 600 MB in float32); :class:`fastconv.data.DataLoader` batches, augments and
normalises them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .archive import (DATA_ENV as _DATA_ENV, DatasetError, DatasetNotFoundError, data_root,
                      default_data_dir, download as _download, get_key as _get, md5sum,
                      read_members, reading, check_limits, locate)

__all__ = [
    "CIFAR10_URL",
    "CIFAR10_MD5",
    "TARBALL_NAME",
    "FOLDER_NAME",
    "TRAIN_BATCHES",
    "TEST_BATCH",
    "META_FILE",
    "CLASS_NAMES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DatasetError",
    "DatasetNotFoundError",
    "CIFAR10",
    "default_data_dir",
    "find_cifar10",
    "md5sum",
    "download_cifar10",
    "load_cifar10",
]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
"""Official download address of the python version."""
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
"""Published MD5 of the official ``cifar-10-python.tar.gz``."""
CIFAR10_SIZE = 170_498_071
"""Size in bytes of the official ``cifar-10-python.tar.gz`` (announced before a download)."""
TARBALL_NAME = "cifar-10-python.tar.gz"
FOLDER_NAME = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{k}" for k in range(1, 6))
TEST_BATCH = "test_batch"
META_FILE = "batches.meta"
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck")
"""Label i is ``CLASS_NAMES[i]`` (the order of ``batches.meta``)."""

CIFAR10_MEAN = (0.49139968, 0.48215827, 0.44653124)
"""Per-channel (R, G, B) mean of the 50,000 training images, pixel values scaled to [0, 1]."""
CIFAR10_STD = (0.24703233, 0.24348505, 0.26158768)
"""Per-channel population standard deviation of the training images (scaled to [0, 1])."""

_IMAGE_SHAPE = (3, 32, 32)
_ROW_SIZE = 3 * 32 * 32
_NUM_CLASSES = 10


class CIFAR10(NamedTuple):
    """CIFAR-10 arrays as returned by :func:`load_cifar10`.

    Attributes:
        x_train: uint8 (N, 3, 32, 32) training images, official order (N <= 50000).
        y_train: int64 (N,) labels in 0..9.
        x_test: uint8 (M, 3, 32, 32) test images (M <= 10000).
        y_test: int64 (M,) labels.
        class_names: the 10 class names, label i = ``class_names[i]``.
        source: the tarball or folder the data came from.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    source: Path | None = None


# --------------------------------------------------------------------------------------------
# Locating the data
# --------------------------------------------------------------------------------------------

def find_cifar10(data_dir: str | os.PathLike | None = None) -> Path | None:
    """Return the tarball or extracted folder to load, or None when there is none.

    ``data_dir`` (else ``$FASTCONV_DATA``, else ``~/.cache/fastconv``) may be the tarball
    itself, the ``cifar-10-batches-py`` folder itself, or a folder containing either; when it
    contains both, the extracted folder wins (no decompression needed).
    """
    root = data_root(data_dir)
    if root.is_file():
        return root
    if not root.is_dir():
        return None
    if (root / META_FILE).exists() or (root / TRAIN_BATCHES[0]).exists():
        return root                                  # root is the extracted folder itself
    folder = root / FOLDER_NAME
    if folder.is_dir():
        return folder
    tarball = root / TARBALL_NAME
    if tarball.is_file():
        return tarball
    return None


def _what_to_do(path: Path) -> str:
    return (f"delete {path} and run again to download a fresh copy from {CIFAR10_URL}, "
            f"or point ${_DATA_ENV} (or --data-dir) at a folder holding a good "
            f"{TARBALL_NAME} or {FOLDER_NAME}/")


# --------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------

def download_cifar10(dest_dir: str | os.PathLike | None = None, *, url: str = CIFAR10_URL,
                     md5: str | None = CIFAR10_MD5,
                     opener: Callable[..., Any] | None = None, timeout: float = 60.0,
                     progress: bool = False, filename: str = TARBALL_NAME) -> Path:
    """Download the CIFAR-10 tarball into ``dest_dir`` (default :func:`default_data_dir`),
    MD5-checked, and return its path; announced on stderr with its size first. See
    :func:`fastconv.data.archive.download` for the arguments and errors."""
    return _download(dest_dir, url=url, md5=md5, filename=filename, what="CIFAR-10",
                    expected_size=CIFAR10_SIZE, opener=opener, timeout=timeout,
                    progress=progress)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------

def _parse_meta(obj: Any, where: str) -> tuple[tuple[str, ...], int | None]:
    if not isinstance(obj, Mapping):
        raise ValueError(f"{where}: batches.meta is not a dict")
    try:
        names_raw = _get(obj, "label_names")
    except KeyError:
        raise ValueError(f"{where}: batches.meta has no label_names") from None
    names = tuple(n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names_raw)
    if len(names) != _NUM_CLASSES:
        raise ValueError(f"{where}: batches.meta lists {len(names)} classes, expected 10")
    try:
        num_vis = int(_get(obj, "num_vis"))
    except KeyError:
        num_vis = _ROW_SIZE
    if num_vis != _ROW_SIZE:
        raise ValueError(f"{where}: batches.meta says num_vis={num_vis}, expected 3072")
    try:
        per_batch: int | None = int(_get(obj, "num_cases_per_batch"))
    except KeyError:
        per_batch = None
    return names, per_batch


def parse_batch(obj: Any, name: str, where: str, expected_rows: int | None,
                label_keys: Mapping[str, int]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Validate one batch dict of the CIFAR python format: ``data`` uint8 (n, 3072) and, for
    each ``key: num_classes`` of ``label_keys``, n integer labels in 0..num_classes-1.
    Returns (uint8 (n, 3, 32, 32), {key: int64 (n,)}); ValueError naming what is wrong."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{where}: {name} is not a dict")
    try:
        data = _get(obj, "data")
        raw = {key: _get(obj, key) for key in label_keys}
    except KeyError as e:
        raise ValueError(f"{where}: {name} has no {e.args[0]!r} entry") from None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != _ROW_SIZE:
        desc = (f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
                else type(data).__name__)
        raise ValueError(f"{where}: {name} data is a {desc}, expected uint8 (n, 3072)")
    n = data.shape[0]
    if n == 0 or (expected_rows is not None and n != expected_rows):
        raise ValueError(f"{where}: {name} holds {n} images, expected {expected_rows}")
    out = {}
    for key, num_classes in label_keys.items():
        labels = np.asarray(raw[key])
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{where}: {name} has {key} of shape {labels.shape} and dtype "
                             f"{labels.dtype}, expected {n} integers")
        labels = labels.astype(np.int64)
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(f"{where}: {name} has {key} outside 0..{num_classes - 1}")
        out[key] = labels
    return data.reshape((n,) + _IMAGE_SHAPE), out


def _parse_batch(obj: Any, name: str, where: str,
                 expected_rows: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Validate one CIFAR-10 batch dict; return (uint8 (n, 3, 32, 32), int64 (n,))."""
    x, labels = parse_batch(obj, name, where, expected_rows, {"labels": _NUM_CLASSES})
    return x, labels["labels"]


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

def _needed_train_batches(limit_train: int | None, per_batch: int | None) -> int:
    if limit_train is None or per_batch is None:
        return len(TRAIN_BATCHES)
    return min(len(TRAIN_BATCHES), -(-limit_train // per_batch))


def _load_source(source: Path, limit_train: int | None,
                 limit_test: int | None) -> CIFAR10:
    where = str(source)

    def names_wanted(objs: dict) -> set[str]:
        _, per_batch = _parse_meta(objs[META_FILE], where)
        k = _needed_train_batches(limit_train, per_batch)
        wanted = set(TRAIN_BATCHES[:k])
        if limit_test != 0:
            wanted.add(TEST_BATCH)
        return wanted

    def incomplete(missing: str) -> str:
        kind = "folder" if source.is_dir() else "archive"
        return f"CIFAR-10 {kind} {source} is incomplete (missing {missing}); " + _what_to_do(source)

    with reading(source, "CIFAR-10", _what_to_do):
        objs = read_members(source, FOLDER_NAME, (META_FILE,) + TRAIN_BATCHES + (TEST_BATCH,),
                            names_wanted, incomplete)
        class_names, per_batch = _parse_meta(objs[META_FILE], where)
        wanted = names_wanted(objs)
        xs, ys = [], []
        got = 0
        for name in TRAIN_BATCHES:
            if name not in wanted:
                continue
            if name not in objs:
                raise ValueError(f"{where}: could not read {name}")
            x, y = _parse_batch(objs.pop(name), name, where, per_batch)
            if per_batch is None:
                per_batch = x.shape[0]
            if limit_train is not None and got + x.shape[0] > limit_train:
                x, y = x[:limit_train - got], y[:limit_train - got]
            xs.append(x)
            ys.append(y)
            got += x.shape[0]
            if limit_train is not None and got >= limit_train:
                break
        if limit_test == 0:
            x_test = np.empty((0,) + _IMAGE_SHAPE, np.uint8)
            y_test = np.empty((0,), np.int64)
        else:
            if TEST_BATCH not in objs:
                raise ValueError(f"{where}: could not read {TEST_BATCH}")
            x_test, y_test = _parse_batch(objs.pop(TEST_BATCH), TEST_BATCH, where, per_batch)
            if limit_test is not None:
                x_test, y_test = x_test[:limit_test], y_test[:limit_test]
    if xs:
        x_train = np.ascontiguousarray(np.concatenate(xs)) if len(xs) > 1 else \
            np.ascontiguousarray(xs[0])
        y_train = np.concatenate(ys)
    else:
        x_train = np.empty((0,) + _IMAGE_SHAPE, np.uint8)
        y_train = np.empty((0,), np.int64)
    return CIFAR10(x_train, y_train, np.ascontiguousarray(x_test), y_test.copy(),
                   class_names, source)


def load_cifar10(data_dir: str | os.PathLike | None = None, *, download: bool = True,
                 limit_train: int | None = None, limit_test: int | None = None,
                 progress: bool = False, url: str = CIFAR10_URL, md5: str | None = CIFAR10_MD5,
                 opener: Callable[..., Any] | None = None) -> CIFAR10:
    """Load CIFAR-10 as uint8 NCHW arrays.

    Looks in ``data_dir``, else ``$FASTCONV_DATA``, else ``~/.cache/fastconv`` (see
    :func:`find_cifar10`); when nothing is there and ``download`` is true, downloads the
    official archive into that folder (MD5-verified, see :func:`download_cifar10`).

    Args:
        data_dir: tarball, extracted folder, or a folder holding either.
        download: fetch the archive when it is missing.
        limit_train: keep only the first N training images (official order); 0 loads none.
            Training batches beyond the first ceil(N / 10000) are then not unpickled (their
            presence, and in a tarball their compressed integrity, is still checked).
        limit_test: keep only the first M test images; 0 skips the test batch.
        progress: show download progress.
        url, md5, opener: passed to :func:`download_cifar10` (for tests and mirrors).

    Returns:
        :class:`CIFAR10` ``(x_train (N,3,32,32) uint8, y_train (N,) int64, x_test, y_test,
        class_names, source)``. Convert with :func:`fastconv.data.to_float32` or batch with
        :class:`fastconv.data.DataLoader`.

    Raises:
        DatasetNotFoundError: no data found and none could be downloaded.
        DatasetError: the data found is corrupt, truncated or incomplete.
    """
    check_limits("load_cifar10", limit_train=limit_train, limit_test=limit_test)
    source = locate(data_dir, find_cifar10,
                    lambda root: download_cifar10(root, url=url, md5=md5, opener=opener,
                                                  progress=progress),
                    what="CIFAR-10", looked_for=f"{TARBALL_NAME} and {FOLDER_NAME}/",
                    download=download)
    return _load_source(source, limit_train, limit_test)
