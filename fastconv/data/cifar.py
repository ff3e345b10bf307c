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

import gzip
import hashlib
import io
import os
import pickle
import posixpath
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..checkpoint import _fsync_dir

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
_DATA_ENV = "FASTCONV_DATA"


class DatasetError(ValueError):
    """The dataset is corrupt, truncated, incomplete, or could not be fetched.

    The message is a single line that names the file and says what to do about it.
    """


class DatasetNotFoundError(DatasetError):
    """No copy of CIFAR-10 was found and none could be downloaded."""


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

def default_data_dir() -> Path:
    """The root folder used when no ``data_dir`` is given: ``$FASTCONV_DATA``, else
    ``~/.cache/fastconv``."""
    env = os.environ.get(_DATA_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "fastconv"


def _root(data_dir: str | os.PathLike | None) -> Path:
    return Path(data_dir).expanduser() if data_dir is not None else default_data_dir()


def find_cifar10(data_dir: str | os.PathLike | None = None) -> Path | None:
    """Return the tarball or extracted folder to load, or None when there is none.

    ``data_dir`` (else ``$FASTCONV_DATA``, else ``~/.cache/fastconv``) may be the tarball
    itself, the ``cifar-10-batches-py`` folder itself, or a folder containing either; when it
    contains both, the extracted folder wins (no decompression needed).
    """
    root = _root(data_dir)
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

def md5sum(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex MD5 digest of a file, read in chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def download_cifar10(dest_dir: str | os.PathLike | None = None, *, url: str = CIFAR10_URL,
                     md5: str | None = CIFAR10_MD5,
                     opener: Callable[..., Any] | None = None, timeout: float = 60.0,
                     progress: bool = False, filename: str = TARBALL_NAME) -> Path:
    """Download the CIFAR-10 tarball into ``dest_dir`` and return its path.

    The file is streamed into a temporary file in ``dest_dir`` while its MD5 is computed; only
    when the digest equals ``md5`` is it fsynced and atomically renamed to
    ``dest_dir/filename``. On any failure (network, digest mismatch, interruption) the
    temporary file is removed and nothing is left behind.

    Args:
        dest_dir: target folder (created if needed); default :func:`default_data_dir`.
        url: address to fetch; any scheme ``urllib`` handles (``file://`` works offline).
        md5: expected hex digest; ``None`` skips the check (not recommended).
        opener: ``opener(url, timeout=...)`` returning a binary file-like response; default
            ``urllib.request.urlopen``. Injectable for tests.
        timeout: socket timeout in seconds.
        progress: show a progress bar (tqdm when installed, else a percentage on stderr).
        filename: name of the final file.

    Raises:
        DatasetNotFoundError: the download failed (no network, HTTP error, ...).
        DatasetError: the digest did not match, or ``dest_dir`` is not writable.
    """
    dest = _root(dest_dir)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=dest)
    except OSError as e:
        raise DatasetError(f"cannot write to {dest} ({e.strerror or e}); choose a writable "
                           f"folder with ${_DATA_ENV} or --data-dir") from e
    tmp = Path(tmp_name)
    final = dest / filename
    open_url = opener if opener is not None else urllib.request.urlopen
    digest = hashlib.md5()
    bar = None
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                response = open_url(url, timeout=timeout)
            except (urllib.error.URLError, OSError, ValueError) as e:
                reason = getattr(e, "reason", None) or e
                raise DatasetNotFoundError(
                    f"could not download CIFAR-10 from {url} ({reason}); download "
                    f"{TARBALL_NAME} by hand and put it in {dest}, or point ${_DATA_ENV} "
                    f"(or --data-dir) at a folder that holds it") from e
            with response:
                total = _content_length(response)
                bar = _make_progress(total, progress, url)
                while True:
                    try:
                        chunk = response.read(1 << 20)
                    except OSError as e:
                        raise DatasetNotFoundError(
                            f"download of {url} failed midway ({e}); run again, or download "
                            f"{TARBALL_NAME} by hand into {dest}") from e
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    if bar is not None:
                        bar(len(chunk))
            if md5 is not None and digest.hexdigest() != md5.lower():
                raise DatasetError(
                    f"downloaded file from {url} has MD5 {digest.hexdigest()}, expected {md5} "
                    f"(corrupted download); it was deleted - run again, or download "
                    f"{TARBALL_NAME} by hand into {dest}")
            out.flush()
            if hasattr(os, "fchmod"):                 # mkstemp makes 0o600; use the umask
                umask = os.umask(0)
                os.umask(umask)
                os.fchmod(out.fileno(), 0o666 & ~umask)
            os.fsync(out.fileno())
        os.replace(tmp, final)
        _fsync_dir(dest)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    finally:
        if bar is not None:
            bar(None)
    return final


def _content_length(response: Any) -> int | None:
    headers = getattr(response, "headers", None)
    try:
        value = headers.get("Content-Length") if headers is not None else None
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _make_progress(total: int | None, enabled: bool, url: str) -> Callable[[int | None], None] | None:
    """Return update(n) / close (called with None) for a download progress display."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        t = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                 desc=f"downloading {posixpath.basename(url)}", file=sys.stderr)

        def update_tqdm(n: int | None) -> None:
            if n is None:
                t.close()
            else:
                t.update(n)
        return update_tqdm

    state = {"done": 0, "last": -1}

    def update_plain(n: int | None) -> None:
        if n is None:
            print(file=sys.stderr)
            return
        state["done"] += n
        pct = int(100 * state["done"] / total) if total else state["done"] >> 20
        if pct != state["last"]:
            state["last"] = pct
            unit = "%" if total else " MiB"
            print(f"\rdownloading {url}: {pct}{unit}", end="", file=sys.stderr, flush=True)
    return update_plain


# --------------------------------------------------------------------------------------------
# Safe unpickling and validation
# --------------------------------------------------------------------------------------------

def _allowed_globals() -> dict[tuple[str, str], Any]:
    import _codecs
    try:
        from numpy._core import multiarray as _ma, numeric as _num
    except ImportError:  # NumPy < 2
        from numpy.core import multiarray as _ma, numeric as _num  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _codecs.encode,
        ("builtins", "bytes"): bytes,
        ("__builtin__", "bytes"): bytes,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = _ma._reconstruct
    frombuffer = getattr(_num, "_frombuffer", None)
    if frombuffer is not None:
        for mod in ("numpy.core.numeric", "numpy._core.numeric"):
            allowed[(mod, "_frombuffer")] = frombuffer
    return allowed


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild NumPy arrays, dtypes and plain containers."""

    _allowed: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if _SafeUnpickler._allowed is None:
            _SafeUnpickler._allowed = _allowed_globals()
        try:
            return _SafeUnpickler._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name} (not part of the CIFAR-10 format)") from None


def _unpickle(f: io.BufferedIOBase | Any) -> Any:
    return _SafeUnpickler(f, encoding="bytes").load()


def _get(d: Mapping, key: str) -> Any:
    """Look a key up as bytes (official files) or str (files written by Python 3)."""
    if key.encode() in d:
        return d[key.encode()]
    if key in d:
        return d[key]
    raise KeyError(key)


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


def _parse_batch(obj: Any, name: str, where: str,
                 expected_rows: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Validate one batch dict; return (uint8 (n, 3, 32, 32), int64 (n,))."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{where}: {name} is not a dict")
    try:
        data = _get(obj, "data")
        labels_raw = _get(obj, "labels")
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
    labels = np.asarray(labels_raw)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{where}: {name} has labels of shape {labels.shape} and dtype "
                         f"{labels.dtype}, expected {n} integers")
    labels = labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= _NUM_CLASSES:
        raise ValueError(f"{where}: {name} has labels outside 0..9")
    return data.reshape((n,) + _IMAGE_SHAPE), labels


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

def _needed_train_batches(limit_train: int | None, per_batch: int | None) -> int:
    if limit_train is None or per_batch is None:
        return len(TRAIN_BATCHES)
    return min(len(TRAIN_BATCHES), -(-limit_train // per_batch))


def _read_members(source: Path, names_wanted: Callable[[dict], set[str]]) -> dict[str, Any]:
    """Unpickle the wanted members of a folder or tarball. ``names_wanted(objects_so_far)``
    decides, given what has been read (meta first in a folder), which files to unpickle."""
    objs: dict[str, Any] = {}
    all_names = (META_FILE,) + TRAIN_BATCHES + (TEST_BATCH,)
    if source.is_dir():
        missing = [n for n in all_names if not (source / n).is_file()]
        if missing:
            raise DatasetError(
                f"CIFAR-10 folder {source} is incomplete (missing {', '.join(missing)}); "
                + _what_to_do(source))
        with open(source / META_FILE, "rb") as f:
            objs[META_FILE] = _unpickle(f)
        wanted = names_wanted(objs)
        for n in all_names[1:]:
            if n in wanted:
                with open(source / n, "rb") as f:
                    objs[n] = _unpickle(f)
        return objs

    seen: set[str] = set()
    # One streaming pass, nothing extracted to disk. Decompressed by GzipFile, not tarfile's
    # "r|gz", which never checks the gzip trailer (CRC-32, ISIZE): a flipped bit would load
    # as a wrong pixel. The member order in the official archive is arbitrary, so every
    # data member is unpickled unless meta has already told us it is not needed.
    with gzip.open(source, "rb") as gz:
        with tarfile.open(fileobj=gz, mode="r|") as tf:
            for member in tf:
                base = posixpath.basename(member.name.rstrip("/"))
                if not member.isfile() or base not in all_names:
                    continue
                if posixpath.dirname(member.name).strip("./") not in ("", FOLDER_NAME):
                    continue
                seen.add(base)
                if base != META_FILE and META_FILE in objs and base not in names_wanted(objs):
                    continue              # skipped, but still decompressed into the CRC
                f = tf.extractfile(member)
                if f is None:
                    continue
                objs[base] = _unpickle(f)
        # tarfile stops at the end-of-archive block; GzipFile checks the trailer only when
        # read to the end (raising BadGzipFile, EOFError or zlib.error), so drain the rest.
        while gz.read(1 << 16):
            pass
    missing = [n for n in all_names if n not in seen]
    if missing:
        raise DatasetError(
            f"CIFAR-10 archive {source} is incomplete (missing {', '.join(missing)}); "
            + _what_to_do(source))
    return objs


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

    try:
        objs = _read_members(source, names_wanted)
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
    except DatasetError:
        raise
    except (PermissionError, IsADirectoryError) as e:
        raise DatasetError(f"cannot read {e.filename or source}: {e.strerror}; fix the "
                           f"permissions or point ${_DATA_ENV} (or --data-dir) elsewhere") from e
    except (tarfile.TarError, EOFError, zlib.error, OSError, pickle.UnpicklingError, ValueError,
            KeyError, TypeError, AttributeError, IndexError) as e:
        detail = str(e) or type(e).__name__
        if detail.startswith(where + ": "):
            detail = detail[len(where) + 2:]
        kind = "archive" if source.is_file() else "folder"
        raise DatasetError(f"CIFAR-10 {kind} {source} is corrupt or truncated ({detail}); "
                           + _what_to_do(source)) from e
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
    for nm, v in (("limit_train", limit_train), ("limit_test", limit_test)):
        if v is not None and (not isinstance(v, (int, np.integer)) or isinstance(v, bool)
                              or v < 0):
            raise ValueError(f"load_cifar10: {nm} must be a non-negative int or None, got {v!r}")
    root = _root(data_dir)
    source = find_cifar10(root)
    if source is None:
        if not download:
            raise DatasetNotFoundError(
                f"CIFAR-10 not found in {root} (looked for {TARBALL_NAME} and {FOLDER_NAME}/); "
                f"put it there, point ${_DATA_ENV} or --data-dir at its folder, or allow "
                f"downloading")
        if root.exists() and not root.is_dir():
            raise DatasetNotFoundError(f"CIFAR-10 data path {root} is not a folder or archive")
        source = download_cifar10(root, url=url, md5=md5, opener=opener, progress=progress)
    return _load_source(source, limit_train, limit_test)
