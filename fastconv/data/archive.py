"""What the dataset loaders share: where data lives, MD5-checked downloads, safe unpickling,
and reading members of a pickled-batches archive (CIFAR-10 and CIFAR-100 alike).

The *root* folder of the data is, in this order: the ``data_dir`` argument (``--data-dir`` on
the command line); else ``$FASTCONV_DATA`` if set and non-empty; else ``~/.cache/fastconv``.

A download is announced on stderr, with its size, before it starts (:func:`download`): the
official archives are about 170 MB each.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import pickle
import posixpath
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import _fsync_dir

__all__ = ["DatasetError", "DatasetNotFoundError", "DATA_ENV", "default_data_dir", "data_root",
           "md5sum", "download", "format_size", "unpickle", "get_key", "read_members",
           "reading", "check_limits", "locate"]

DATA_ENV = "FASTCONV_DATA"


class DatasetError(ValueError):
    """The dataset is corrupt, truncated, incomplete, or could not be fetched.

    The message is a single line that names the file and says what to do about it.
    """


class DatasetNotFoundError(DatasetError):
    """No copy of the dataset was found and none could be downloaded."""


def default_data_dir() -> Path:
    """The root folder used when no ``data_dir`` is given: ``$FASTCONV_DATA``, else
    ``~/.cache/fastconv``."""
    env = os.environ.get(DATA_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "fastconv"


def data_root(data_dir: str | os.PathLike | None) -> Path:
    """``data_dir`` (``~`` expanded), or :func:`default_data_dir` when it is None."""
    return Path(data_dir).expanduser() if data_dir is not None else default_data_dir()


def format_size(n_bytes: int) -> str:
    """``170498071`` -> ``"170.5 MB"`` (decimal units, as download pages give them)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes} bytes"


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


def download(dest_dir: str | os.PathLike | None, *, url: str, md5: str | None, filename: str,
             what: str, expected_size: int | None = None,
             opener: Callable[..., Any] | None = None, timeout: float = 60.0,
             progress: bool = False) -> Path:
    """Download ``url`` into ``dest_dir/filename`` and return its path.

    Before anything is fetched, one line on stderr says what is downloaded, from where, to
    where and its size (the server's Content-Length, else ``expected_size``). The file is
    streamed into a temporary file in ``dest_dir`` while its MD5 is computed; only when the
    digest equals ``md5`` is it fsynced and atomically renamed to ``dest_dir/filename``. On
    any failure (network, digest mismatch, interruption) the temporary file is removed and
    nothing is left behind.

    Args:
        dest_dir: target folder (created if needed); None: :func:`default_data_dir`.
        url: address to fetch; any scheme ``urllib`` handles (``file://`` works offline).
        md5: expected hex digest; ``None`` skips the check (not recommended).
        filename: name of the final file.
        what: the dataset's name in messages (``"CIFAR-10"``).
        expected_size: the archive's published size in bytes, announced when the server
            does not send a Content-Length.
        opener: ``opener(url, timeout=...)`` returning a binary file-like response; default
            ``urllib.request.urlopen``. Injectable for tests.
        timeout: socket timeout in seconds; also, a download that receives less than 1 KiB
            in any ``timeout`` seconds is given up as stalled.
        progress: show a progress bar (tqdm when installed, else a percentage on stderr).

    Raises:
        DatasetNotFoundError: the download failed (no network, HTTP error, ...).
        DatasetError: the digest did not match, or ``dest_dir`` is not writable.
    """
    dest = data_root(dest_dir)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        _remove_stale_parts(dest, filename)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=dest)
    except OSError as e:
        raise DatasetError(f"cannot write to {dest} ({e.strerror or e}); choose a writable "
                           f"folder with ${DATA_ENV} or --data-dir") from e
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
                    f"could not download {what} from {url} ({reason}); download "
                    f"{filename} by hand and put it in {dest}, or point ${DATA_ENV} "
                    f"(or --data-dir) at a folder that holds it") from e
            with response:
                total = _content_length(response)
                size = total if total is not None else expected_size
                print(f"downloading {what} ({format_size(size) if size else 'size unknown'}) "
                      f"from {url} into {dest}", file=sys.stderr, flush=True)
                bar = _make_progress(total, progress, url)
                # read1: what has arrived (read(n) blocks until n bytes, so a server sending
                # a byte now and then was never timed out); a window of `timeout` seconds
                # with under 1 KiB is a stall.
                read = getattr(response, "read1", response.read)
                received, window_start, window_bytes = 0, time.monotonic(), 0
                while True:
                    try:
                        chunk = read(1 << 20)
                    except OSError as e:
                        raise DatasetNotFoundError(
                            f"download of {url} failed midway ({e}); run again, or download "
                            f"{filename} by hand into {dest}") from e
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    window_bytes += len(chunk)
                    if time.monotonic() - window_start >= timeout:
                        if window_bytes < 1024:
                            raise DatasetNotFoundError(
                                f"download of {url} stalled ({window_bytes} bytes in the last "
                                f"{timeout:g} s); run again, or download {filename} by hand "
                                f"into {dest}")
                        window_start, window_bytes = time.monotonic(), 0
                    if bar is not None:
                        bar(len(chunk))
                if total is not None and received != total:
                    raise DatasetNotFoundError(
                        f"download of {url} failed midway (got {received:,} of {total:,} "
                        f"bytes); run again, or download {filename} by hand into {dest}")
            if md5 is not None and digest.hexdigest() != md5.lower():
                raise DatasetError(
                    f"downloaded file from {url} has MD5 {digest.hexdigest()}, expected {md5} "
                    f"(corrupted download); it was deleted - run again, or download "
                    f"{filename} by hand into {dest}")
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


def _remove_stale_parts(dest: Path, filename: str, age: float = 86400.0) -> None:
    """Remove the temporary files of downloads of `filename` into `dest` left by a process
    killed outright (SIGKILL, power loss) more than `age` seconds ago."""
    now = time.time()
    for part in dest.glob(f".{filename}.*.part"):
        try:
            if now - part.stat().st_mtime > age:
                part.unlink()
        except OSError:
            pass


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
# Safe unpickling
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
                f"refusing to load {module}.{name} (not part of the dataset's format)") from None


def unpickle(f: io.BufferedIOBase | Any) -> Any:
    """Unpickle a batch file (Python 2 pickles: byte-string keys) that may only hold NumPy
    arrays and plain containers: a malicious file cannot run code."""
    return _SafeUnpickler(f, encoding="bytes").load()


def get_key(d: Mapping, key: str) -> Any:
    """Look a key up as bytes (official files) or str (files written by Python 3)."""
    if key.encode() in d:
        return d[key.encode()]
    if key in d:
        return d[key]
    raise KeyError(key)


# --------------------------------------------------------------------------------------------
# Reading the members of a folder or a tarball
# --------------------------------------------------------------------------------------------

def read_members(source: Path, folder_name: str, all_names: tuple[str, ...],
                 names_wanted: Callable[[dict], set[str]], incomplete: Callable[[str], str]
                 ) -> dict[str, Any]:
    """Unpickle the wanted members of an extracted folder or a ``.tar.gz`` archive.

    ``all_names[0]`` is the metadata file, read first in a folder; ``names_wanted(objs)``
    decides, given what has been read, which other members to unpickle. Every member of
    ``all_names`` must be present (``DatasetError`` with ``incomplete(missing)`` otherwise).
    In an archive, members sit at the top or in ``folder_name/``.
    """
    objs: dict[str, Any] = {}
    meta_name = all_names[0]
    if source.is_dir():
        missing = [n for n in all_names if not (source / n).is_file()]
        if missing:
            raise DatasetError(incomplete(", ".join(missing)))
        with open(source / meta_name, "rb") as f:
            objs[meta_name] = unpickle(f)
        wanted = names_wanted(objs)
        for n in all_names[1:]:
            if n in wanted:
                with open(source / n, "rb") as f:
                    objs[n] = unpickle(f)
        return objs

    seen: set[str] = set()
    # One streaming pass, nothing extracted to disk. Decompressed by GzipFile, not tarfile's
    # "r|gz", which never checks the gzip trailer (CRC-32, ISIZE): a flipped bit would load
    # as a wrong pixel. The member order in the official archives is arbitrary, so every
    # data member is unpickled unless the metadata has already told us it is not needed.
    with gzip.open(source, "rb") as gz:
        with tarfile.open(fileobj=gz, mode="r|") as tf:
            for member in tf:
                base = posixpath.basename(member.name.rstrip("/"))
                if not member.isfile() or base not in all_names:
                    continue
                if posixpath.dirname(member.name).strip("./") not in ("", folder_name):
                    continue
                seen.add(base)
                if base != meta_name and meta_name in objs and base not in names_wanted(objs):
                    continue              # skipped, but still decompressed into the CRC
                f = tf.extractfile(member)
                if f is None:
                    continue
                objs[base] = unpickle(f)
        # tarfile stops at the end-of-archive block; GzipFile checks the trailer only when
        # read to the end (raising BadGzipFile, EOFError or zlib.error), so drain the rest.
        while gz.read(1 << 16):
            pass
    missing = [n for n in all_names if n not in seen]
    if missing:
        raise DatasetError(incomplete(", ".join(missing)))
    return objs


class reading(contextlib.AbstractContextManager):
    """``with reading(source, "CIFAR-10", what_to_do):`` turns any failure to read or decode
    ``source`` into one :class:`DatasetError` line that names it and says what to do
    (``what_to_do(source)``); a :class:`DatasetError` raised inside passes unchanged."""

    def __init__(self, source: Path, what: str, what_to_do: Callable[[Path], str]) -> None:
        self.source = source
        self.what = what
        self.what_to_do = what_to_do

    def __exit__(self, exc_type, e, tb) -> bool:
        if e is None or isinstance(e, DatasetError):
            return False
        source, where = self.source, str(self.source)
        if isinstance(e, (PermissionError, IsADirectoryError)):
            raise DatasetError(f"cannot read {e.filename or source}: {e.strerror}; fix the "
                               f"permissions or point ${DATA_ENV} (or --data-dir) "
                               f"elsewhere") from e
        if isinstance(e, (tarfile.TarError, EOFError, zlib.error, OSError,
                          pickle.UnpicklingError, ValueError, KeyError, TypeError,
                          AttributeError, IndexError)):
            detail = str(e) or type(e).__name__
            if detail.startswith(where + ": "):
                detail = detail[len(where) + 2:]
            kind = "archive" if source.is_file() else "folder"
            raise DatasetError(f"{self.what} {kind} {source} is corrupt or truncated "
                               f"({detail}); " + self.what_to_do(source)) from e
        return False


def check_limits(where: str, **limits: Any) -> None:
    """ValueError unless every ``name=value`` is None or a non-negative int (row limits)."""
    for name, v in limits.items():
        if v is not None and (not isinstance(v, (int, np.integer)) or isinstance(v, bool)
                              or v < 0):
            raise ValueError(f"{where}: {name} must be a non-negative int or None, got {v!r}")


def locate(data_dir: str | os.PathLike | None, find: Callable[[Path], Path | None],
           fetch: Callable[[Path], Path], *, what: str, looked_for: str,
           download: bool) -> Path:
    """The archive or folder of a dataset under ``data_root(data_dir)``: ``find(root)``, else,
    when ``download`` is true, ``fetch(root)`` (which downloads it there);
    :class:`DatasetNotFoundError` naming the folder otherwise."""
    root = data_root(data_dir)
    source = find(root)
    if source is not None:
        return source
    if not download:
        raise DatasetNotFoundError(
            f"{what} not found in {root} (looked for {looked_for}); put it there, point "
            f"${DATA_ENV} or --data-dir at its folder, or allow downloading")
    if root.exists() and not root.is_dir():
        raise DatasetNotFoundError(f"{what} data path {root} is not a folder or archive")
    return fetch(root)
