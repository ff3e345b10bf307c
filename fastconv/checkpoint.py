"""Atomic, code-free checkpoints: NumPy arrays in an ``.npz`` plus JSON metadata.

A checkpoint is any nested structure of dicts, lists, tuples, NumPy arrays, NumPy scalars and
JSON scalars (str, int, float, bool, None; PyTorch tensors are saved as the NumPy arrays of
their values) - for example ``{"model": model.state_dict(),
"optimizer": opt.state_dict(), "epoch": 3, "rng": gen.bit_generator.state}``. Arrays are stored
as ``.npy`` members of an uncompressed ``.npz``; the structure, with placeholders for the arrays,
is stored as UTF-8 JSON in the member ``__meta__``. Loading uses ``np.load(allow_pickle=False)``
and ``json.loads``, so opening a checkpoint can never execute code.

Round trips are exact: arrays keep dtype, shape and bits; NumPy scalars come back as NumPy
scalars of the same dtype; Python floats are written with ``repr`` (shortest round-tripping
form, inf/nan included); tuples stay tuples; dicts with non-string keys (e.g. ints) keep them.

Writes are atomic (:func:`atomic_write`): the file is written to a temporary file in the same
folder, flushed and fsynced, then renamed over the target with ``os.replace`` and the folder is
fsynced. A crash during a save leaves the previous file intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "CheckpointError",
    "atomic_write",
    "save_checkpoint",
    "load_checkpoint",
    "save_weights",
    "load_weights",
    "load_weights_metadata",
    "file_kind",
]

_FORMAT = "fastconv-checkpoint"
_WEIGHTS_FORMAT = "fastconv-weights"
_VERSION = 1
_META_KEY = "__meta__"
# markers used in the JSON tree; a user dict that uses one of them as a key is stored in the
# generic item-list form, so there is no ambiguity
_ARRAY = "__ndarray__"
_SCALAR = "__npscalar__"
_TUPLE = "__tuple__"
_ITEMS = "__items__"
_MARKERS = {_ARRAY, _SCALAR, _TUPLE, _ITEMS}


class CheckpointError(ValueError):
    """A checkpoint or weights file is unreadable, corrupt or of the wrong kind."""


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------

def _fsync_dir(directory: Path) -> None:
    """fsync a folder so a rename inside it is durable (POSIX only; best effort)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _new_file_mode(path: Path) -> int:
    """Permissions for a file replacing ``path``: its current mode, else 0o666 minus the umask
    (``mkstemp`` creates 0o600 files, which would make outputs private by accident)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _file_path(path) -> Path:
    """`path` as a Path; TypeError for what is no path (None, say)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"cannot write to {path!r}: expected a file path (str or os.PathLike)")
    return Path(path)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Context manager yielding a binary file whose content replaces ``path`` atomically.

    The data goes to a temporary file ``.<name>.<random>.tmp`` in the same folder; on normal
    exit it is flushed, fsynced, renamed over ``path`` (``os.replace``) and the folder is
    fsynced. If the body raises (or the process dies), ``path`` is untouched and the temporary
    file is removed (when the process survives).
    """
    path = _file_path(path)
    directory = path.parent if str(path.parent) else Path(".")
    # (else mkstemp's or os.replace's error names the temporary file)
    if not directory.is_dir():
        raise FileNotFoundError(f"cannot write {path}: the folder {directory} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder; give a file path in it")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), _new_file_mode(path))
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(e, OSError) and e.filename is None and e.errno is not None:
            # (a full disk's write or fsync error names no file: name the one not written)
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    _fsync_dir(directory)


# --------------------------------------------------------------------------------------------
# Encoding the tree
# --------------------------------------------------------------------------------------------

def _torch_tensor_array(obj: Any, where: str) -> np.ndarray | None:
    """A PyTorch tensor's values as a NumPy array (detached, on the CPU), else None; a tensor
    of a dtype NumPy has no type for (bfloat16, complex32...) is a TypeError saying how to
    convert it."""
    if type(obj).__module__.split(".")[0] != "torch" or not hasattr(obj, "detach"):
        return None
    t = obj.detach().cpu()
    try:
        return t.numpy()
    except TypeError as e:
        raise TypeError(f"{where} is a torch tensor of dtype {t.dtype}, which NumPy has no type "
                        f"for: convert it first (tensor.float())") from e


def _encode(obj: Any, arrays: dict[str, np.ndarray], where: str) -> Any:
    tensor = _torch_tensor_array(obj, f"checkpoint: {where}")
    if tensor is not None:  # (a torch state dict or optimiser state: its values as arrays)
        obj = tensor
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise TypeError(f"checkpoint: {where} is an object array, which cannot be saved "
                            f"without pickle")
        key = f"a{len(arrays)}"
        arrays[key] = obj
        return {_ARRAY: key}
    if isinstance(obj, np.generic):
        if isinstance(obj, np.object_):
            raise TypeError(f"checkpoint: {where} is a NumPy object scalar")
        key = f"a{len(arrays)}"
        arrays[key] = np.asarray(obj)
        return {_SCALAR: key}
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, tuple):
        return {_TUPLE: [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) for k in obj) and not _MARKERS.intersection(obj):
            return {k: _encode(v, arrays, f"{where}[{k!r}]") for k, v in obj.items()}
        return {_ITEMS: [[_encode(k, arrays, f"{where} key"), _encode(v, arrays, f"{where}[{k!r}]")]
                         for k, v in obj.items()]}
    raise TypeError(f"checkpoint: cannot save {where} of type {type(obj).__name__}; use arrays, "
                    f"numbers, strings, lists, tuples and dicts")


def _decode(obj: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    if isinstance(obj, dict):
        if len(obj) == 1:
            (marker, value), = obj.items()
            if marker == _ARRAY:
                return arrays[value]
            if marker == _SCALAR:
                return arrays[value][()]
            if marker == _TUPLE:
                return tuple(_decode(v, arrays) for v in value)
            if marker == _ITEMS:
                return {_hashable(_decode(k, arrays)): _decode(v, arrays) for k, v in value}
        return {k: _decode(v, arrays) for k, v in obj.items()}
    return obj


def _hashable(key: Any) -> Any:
    if isinstance(key, list):
        return tuple(_hashable(k) for k in key)
    if isinstance(key, np.ndarray):
        return key.item() if key.ndim == 0 else tuple(key.tolist())
    return key


def _write_npz(f: IO[bytes], arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
    text = json.dumps(meta, allow_nan=True, separators=(",", ":"))
    payload = dict(arrays)
    payload[_META_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    np.savez(f, **payload)


# first bytes of files people pass by mistake, to say what the file is instead
_OTHER_FORMATS = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
                  (b"GIF8", "a GIF image"), (b"\x1f\x8b", "a gzip file"),
                  (b"\x80\x02", "a Python pickle"), (b"\x80\x03", "a Python pickle"),
                  (b"\x80\x04", "a Python pickle"), (b"\x80\x05", "a Python pickle"))
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")      # what np.load takes for an .npz


def _not_npz_reason(head: bytes) -> str:
    """Why a file starting with ``head`` is no .npz archive, in words."""
    if not head:
        return "it is empty"
    if head.startswith(b"\x93NUMPY"):
        return "it holds a single NumPy array (.npy), not an .npz archive"
    what = next((name for magic, name in _OTHER_FORMATS if head.startswith(magic)), None)
    if what is None and head[:12].startswith(b"RIFF") and head[8:12] == b"WEBP":
        what = "a WebP image"
    return f"it is {what}, not an .npz archive" if what else "it is not an .npz archive"


def _read_npz(path: Path, kind: str,
              meta_only: bool = False) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read the members (all, or only ``__meta__``) and the parsed metadata JSON.

    A file that is not an .npz at all (an image passed by mistake, say) is reported as not a
    fastconv file, saying what it looks like; a damaged archive as corrupt.
    """
    try:
        # open the file ourselves: np.load leaks its own handle when the zip is corrupt
        with open(path, "rb") as fh:
            head = fh.read(16)
            if not head.startswith(_ZIP_MAGIC):
                # np.load would try pickle (refused) and quote its advice to load unsafely
                raise CheckpointError(f"{path} is not a fastconv {kind}: {_not_npz_reason(head)}")
            fh.seek(0)
            with np.load(fh, allow_pickle=False) as z:
                other = [n for n in z.zip.namelist() if not n.endswith(".npy")]
                if other:                   # np.load would return such members as bytes
                    torch = any(n.endswith("data.pkl") for n in other)
                    raise CheckpointError(
                        f"{path} is not a fastconv {kind}: it is a zip archive whose member "
                        f"{other[0]!r} is not a NumPy array"
                        + (" (it looks like a PyTorch file)" if torch else ""))
                names = [k for k in z.files if not meta_only or k == _META_KEY]
                arrays = {}
                for k in names:
                    try:
                        arrays[k] = z[k]
                    except ValueError as e:
                        if "pickle" not in str(e):
                            raise
                        raise CheckpointError(
                            f"{kind} {path} is corrupt or not a fastconv {kind}: its member {k!r} "
                            f"holds pickled Python objects, which fastconv never loads") from e
                    if not isinstance(arrays[k], np.ndarray):   # np.load's bytes fallback
                        raise CheckpointError(f"{kind} {path} is corrupt: its member {k!r} is "
                                              f"not a NumPy array")
    except (FileNotFoundError, CheckpointError):
        raise
    except PermissionError as e:
        raise CheckpointError(f"cannot read {kind} {path}: permission denied") from e
    except IsADirectoryError as e:
        raise CheckpointError(f"{path} is a folder, not a fastconv {kind}") from e
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError, zlib.error) as e:
        raise CheckpointError(f"{kind} {path} is corrupt or not a fastconv {kind} "
                              f"({type(e).__name__}: {e})") from e
    meta_raw = arrays.pop(_META_KEY, None)
    meta: dict[str, Any] = {}
    if meta_raw is not None:
        try:
            meta = json.loads(bytes(meta_raw.astype(np.uint8)).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, TypeError, RecursionError) as e:
            raise CheckpointError(f"{kind} {path} has corrupt metadata ({type(e).__name__}: "
                                  f"{e})") from e
        if not isinstance(meta, dict):
            raise CheckpointError(f"{kind} {path} has corrupt metadata (a JSON "
                                  f"{type(meta).__name__}, not an object)")
    return arrays, meta


def _check_version(meta: Mapping[str, Any], path: Path, kind: str) -> None:
    """The metadata's format version must be an integer >= 1 that this fastconv reads."""
    version = meta.get("version")
    # JSON integers load as int; bools, floats and strings are not versions
    if type(version) is not int or version < 1:
        what = "no format version" if "version" not in meta else \
            f"an invalid format version {version!r} (expected an integer >= 1)"
        raise CheckpointError(f"{kind} {path} has {what}: the file is corrupt or was not "
                              f"written by fastconv")
    if version > _VERSION:
        raise CheckpointError(f"{kind} {path} has format version {version}, newer than this "
                              f"fastconv understands ({_VERSION}); upgrade fastconv")


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------

def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Atomically save a checkpoint (a nested dict of arrays and JSON-able values) to ``path``.

    The file is an ``.npz`` whatever its suffix; see the module docstring for the format.
    Raises TypeError for values that cannot be stored without pickle; the previous file at
    ``path`` is left intact on any error. Returns ``Path(path)``.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"save_checkpoint: state must be a dict, got {type(state).__name__}")
    arrays: dict[str, np.ndarray] = {}
    tree = _encode(dict(state), arrays, "state")
    meta = {"format": _FORMAT, "version": _VERSION, "state": tree}
    path = _file_path(path)
    with atomic_write(path) as f:
        _write_npz(f, arrays, meta)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (no pickle, no code execution).

    Raises FileNotFoundError when missing and :class:`CheckpointError` when the file is
    corrupt or is not a fastconv checkpoint (malformed metadata included).
    """
    path = Path(path)
    arrays, meta = _read_npz(path, "checkpoint")
    if meta.get("format") != _FORMAT:
        raise CheckpointError(f"{path} is not a fastconv checkpoint"
                              + (" (it holds model weights only)"
                                 if meta.get("format") == _WEIGHTS_FORMAT else ""))
    _check_version(meta, path, "checkpoint")
    if "state" not in meta:
        raise CheckpointError(f"checkpoint {path} is inconsistent: its metadata has no state")
    try:
        state = _decode(meta["state"], arrays)
    except (KeyError, TypeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"checkpoint {path} is inconsistent ({e!r})") from e
    if not isinstance(state, dict):   # save_checkpoint only writes dicts
        raise CheckpointError(f"checkpoint {path} is inconsistent: its state is not a dict "
                              f"(got {type(state).__name__})")
    return state


def save_weights(path: str | os.PathLike, state_dict: Mapping[str, Any],
                 metadata: Mapping[str, Any] | None = None) -> Path:
    """Atomically save a model ``state_dict`` (name -> array) as an ``.npz``.

    Each parameter is a member named after it, so ``np.load(path)[name]`` works in any tool.
    ``metadata`` (JSON-able, e.g. ``{"model": "simple_cnn", "class_names": [...]}``) is stored in
    the ``__meta__`` member. Returns ``Path(path)``.
    """
    arrays: dict[str, np.ndarray] = {}
    for name, value in state_dict.items():
        if not isinstance(name, str) or name == _META_KEY or not name:
            raise ValueError(f"save_weights: invalid parameter name {name!r}")
        arr = _torch_tensor_array(value, f"save_weights: {name}")
        if arr is None:
            arr = np.asarray(getattr(value, "data", value))
        if arr.dtype.hasobject:
            raise TypeError(f"save_weights: {name} is not a numeric array")
        arrays[name] = arr
    meta = {"format": _WEIGHTS_FORMAT, "version": _VERSION, "metadata": dict(metadata or {})}
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as e:
        raise TypeError(f"save_weights: metadata must be JSON-able ({e})") from e
    path = _file_path(path)
    with atomic_write(path) as f:
        _write_npz(f, arrays, meta)
    return path


def load_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load a ``state_dict`` saved by :func:`save_weights` (or any plain ``.npz`` of arrays).

    Raises FileNotFoundError when missing and :class:`CheckpointError` when corrupt.
    """
    arrays, meta = _read_npz(Path(path), "weights file")
    if meta.get("format") == _FORMAT:
        raise CheckpointError(f"{path} is a training checkpoint, not a weights file; load it "
                              f"with load_checkpoint(path)['model']")
    if meta.get("format") == _WEIGHTS_FORMAT:
        _check_version(meta, Path(path), "weights file")
    return arrays


def load_weights_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``metadata`` dict stored by :func:`save_weights` ({} when there is none).

    Raises like :func:`load_weights`, also when a fastconv weights file's metadata is
    malformed (bad version, ``metadata`` not a dict).
    """
    _, meta = _read_npz(Path(path), "weights file", meta_only=True)
    if meta.get("format") == _WEIGHTS_FORMAT:
        _check_version(meta, Path(path), "weights file")
    md = meta.get("metadata", {})
    if not isinstance(md, dict):
        raise CheckpointError(f"weights file {path} has corrupt metadata ('metadata' is a "
                              f"{type(md).__name__}, not a dict)")
    return dict(md)


def file_kind(path: str | os.PathLike) -> str:
    """``"checkpoint"`` (:func:`save_checkpoint`), ``"weights"`` (:func:`save_weights`) or
    ``"npz"`` (any other ``.npz`` of arrays). Raises like :func:`load_checkpoint`."""
    _, meta = _read_npz(Path(path), "weights or checkpoint file", meta_only=True)
    fmt = meta.get("format")
    return "checkpoint" if fmt == _FORMAT else "weights" if fmt == _WEIGHTS_FORMAT else "npz"
