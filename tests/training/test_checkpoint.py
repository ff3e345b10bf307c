"""Tests for fastconv.checkpoint: exact round trips, atomic writes, safe loading."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import fastconv
from fastconv import checkpoint as C

# the folder holding the fastconv package this test imported (checkout or site-packages),
# so subprocesses run the same code
REPO = Path(fastconv.__file__).resolve().parents[1]


def _state(version: int = 1) -> dict:
    rng = np.random.default_rng(version)
    gen = np.random.default_rng(123)
    gen.random(5)
    return {
        "version": version,
        "model": {
            "conv1.weight": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
            "conv1.bias": np.zeros(8, np.float32),
            "bn.running_mean": rng.standard_normal(8),
            "bn.num_batches_tracked": np.array(7, np.int64),
        },
        "optimizer": {
            "state": {0: {"momentum_buffer": rng.standard_normal((8, 3, 3, 3)).astype(np.float32)},
                      1: {"momentum_buffer": None}},
            "param_groups": [{"lr": 0.05, "momentum": 0.9, "nesterov": True, "params": [0, 1]}],
        },
        "scheduler": {"last_epoch": 41, "base_lrs": (0.1,), "_step_count": np.int64(42)},
        "rng": gen.bit_generator.state,                     # 128-bit ints inside
        "scalars": {"f32": np.float32(1.2345678), "f64": np.float64(0.1), "i8": np.int8(-3),
                    "bool": np.bool_(True)},
        "floats": [0.1, 1e-300, -0.0, math.inf, -math.inf, 2.0 ** 0.5, 1 / 3],
        "nan": math.nan,
        "text": "résumé ✓",
        "none": None,
        "flags": [True, False],
        "empty": np.empty((0, 4), np.float32),
        "fortran": np.asfortranarray(rng.standard_normal((3, 4))),
        "uint8": np.arange(256, dtype=np.uint8).reshape(16, 16),
        "tuple_key": {(1, 2): "a", "__tuple__": "marker used as a key"},
        "metrics": [{"epoch": 1, "test_acc": 0.5}],
    }


def _same(a, b) -> None:
    """Exact structural and bitwise equality (types included)."""
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    elif isinstance(a, dict):
        assert list(a.keys()) == list(b.keys())
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    elif isinstance(a, float):
        assert (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) ==
                                                        math.copysign(1, b))
    else:
        assert a == b


def test_round_trip_exact(tmp_path):
    state = _state()
    path = C.save_checkpoint(tmp_path / "ckpt.npz", state)
    loaded = C.load_checkpoint(path)
    _same(state, loaded)
    # a restored generator continues the same stream
    gen = np.random.default_rng()
    gen.bit_generator.state = loaded["rng"]
    ref = np.random.default_rng(123)
    ref.random(5)
    np.testing.assert_array_equal(gen.random(10), ref.random(10))
    assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]


def test_any_suffix_and_overwrite(tmp_path):
    path = tmp_path / "last.ckpt"
    C.save_checkpoint(path, {"a": np.arange(3)})
    C.save_checkpoint(path, {"a": np.arange(5)})
    np.testing.assert_array_equal(C.load_checkpoint(path)["a"], np.arange(5))
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt"]


def test_loading_needs_no_pickle(tmp_path):
    """The file is a plain .npz readable with allow_pickle=False."""
    path = C.save_checkpoint(tmp_path / "c.npz", _state())
    with np.load(path, allow_pickle=False) as z:
        assert "__meta__" in z.files
        assert all(z[k].dtype != object for k in z.files)


def test_pickled_npz_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, a=np.array([{"x": 1}], dtype=object))       # needs pickle to load
    with pytest.raises(C.CheckpointError, match="corrupt or not a fastconv"):
        C.load_checkpoint(path)


def test_unsupported_values_rejected_and_nothing_written(tmp_path):
    path = tmp_path / "c.npz"
    C.save_checkpoint(path, {"a": 1})
    with pytest.raises(TypeError, match="cannot save"):
        C.save_checkpoint(path, {"a": object()})
    with pytest.raises(TypeError, match="object array"):
        C.save_checkpoint(path, {"a": np.array([None])})
    assert C.load_checkpoint(path) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["c.npz"]


def test_crash_during_write_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    C.save_checkpoint(path, _state(1))
    before = path.read_bytes()

    def half_then_fail(f, **arrays):
        f.write(b"PK\x03\x04 partial zip data")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(np, "savez", half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        C.save_checkpoint(path, _state(2))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert C.load_checkpoint(path)["version"] == 1
    assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]          # temp file cleaned up


def test_crash_before_rename_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    C.save_checkpoint(path, _state(1))

    def no_replace(src, dst):
        raise KeyboardInterrupt                                  # e.g. Ctrl-C at that moment
    monkeypatch.setattr(os, "replace", no_replace)
    with pytest.raises(KeyboardInterrupt):
        C.save_checkpoint(path, _state(2))
    monkeypatch.undo()
    assert C.load_checkpoint(path)["version"] == 1
    assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]


def test_process_killed_mid_write_keeps_previous(tmp_path):
    """A process that dies (os._exit) halfway through a save leaves the old file intact."""
    path = tmp_path / "ckpt.npz"
    C.save_checkpoint(path, _state(1))
    script = textwrap.dedent(f"""
        import os, numpy as np
        from fastconv import checkpoint as C
        def die(f, **arrays):
            f.write(b"PK" + b"x" * 100000)
            f.flush()
            os._exit(3)
        np.savez = die
        C.save_checkpoint({str(path)!r}, {{"version": 2, "w": np.ones(10)}})
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=str(tmp_path),
                          capture_output=True, timeout=60)
    assert proc.returncode == 3, proc.stderr.decode()
    assert C.load_checkpoint(path)["version"] == 1
    # only the orphaned temp file can be left, never a damaged target
    assert all(n == "ckpt.npz" or (n.startswith(".ckpt.npz.") and n.endswith(".tmp"))
               for n in os.listdir(tmp_path))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "npy"])
def test_corrupt_checkpoint_error(tmp_path, damage):
    path = tmp_path / "c.npz"
    C.save_checkpoint(path, _state())
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 1000)
    else:
        with open(path, "wb") as f:
            np.save(f, np.arange(3))
    with pytest.raises(C.CheckpointError) as err:
        C.load_checkpoint(path)
    assert str(path) in str(err.value)
    assert isinstance(err.value, ValueError)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError):
        C.load_checkpoint(tmp_path / "nope.npz")


def test_weights_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    sd = {"0.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
          "0.bias": rng.standard_normal(4).astype(np.float32),
          "3.running_var": np.ones(4)}

    class Param:                                     # objects with .data are accepted too
        def __init__(self, data):
            self.data = data
    path = C.save_weights(tmp_path / "w.npz",
                          {k: (Param(v) if k == "0.bias" else v) for k, v in sd.items()},
                          metadata={"model": "simple_cnn", "classes": ["a", "b"]})
    loaded = C.load_weights(path)
    assert list(loaded) == list(sd)
    for k in sd:
        _same(sd[k], loaded[k])
    assert C.load_weights_metadata(path) == {"model": "simple_cnn", "classes": ["a", "b"]}
    with np.load(path) as z:                        # plain npz, usable anywhere
        np.testing.assert_array_equal(z["0.weight"], sd["0.weight"])
    # a plain npz without metadata also loads
    np.savez(tmp_path / "plain.npz", w=np.arange(3))
    assert list(C.load_weights(tmp_path / "plain.npz")) == ["w"]
    assert C.load_weights_metadata(tmp_path / "plain.npz") == {}


def test_weights_and_checkpoints_not_confused(tmp_path):
    w = C.save_weights(tmp_path / "w.npz", {"a": np.ones(2)})
    c = C.save_checkpoint(tmp_path / "c.npz", {"model": {"a": np.ones(2)}})
    with pytest.raises(C.CheckpointError, match="weights only"):
        C.load_checkpoint(w)
    with pytest.raises(C.CheckpointError, match="training checkpoint"):
        C.load_weights(c)
    with pytest.raises(TypeError, match="JSON"):
        C.save_weights(tmp_path / "x.npz", {"a": np.ones(2)}, metadata={"bad": object()})
    with pytest.raises(ValueError, match="invalid parameter name"):
        C.save_weights(tmp_path / "x.npz", {"__meta__": np.ones(2)})
    assert not (tmp_path / "x.npz").exists()


@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="POSIX permissions")
def test_saved_files_get_normal_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        path = C.save_checkpoint(tmp_path / "c.npz", {"a": 1})
        assert (path.stat().st_mode & 0o777) == 0o644            # not mkstemp's 0o600
        os.chmod(path, 0o640)
        C.save_checkpoint(path, {"a": 2})
        assert (path.stat().st_mode & 0o777) == 0o640            # an existing mode is kept
    finally:
        os.umask(umask)


def test_atomic_write_context_manager(tmp_path):
    target = tmp_path / "f.txt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with C.atomic_write(target) as f:
            f.write(b"new but incomplete")
            raise RuntimeError("crash")
    assert target.read_bytes() == b"old"
    with C.atomic_write(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["f.txt"]


def _with_meta(path, meta, **arrays):
    """An .npz with hand-made metadata, as a damaged or foreign writer could leave."""
    np.savez(path, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    return path


@pytest.mark.parametrize("meta,needle", [
    ({"format": "fastconv-checkpoint", "version": "x", "state": {}}, "invalid format version 'x'"),
    ({"format": "fastconv-checkpoint", "version": None, "state": {}},
     "invalid format version None"),
    ({"format": "fastconv-checkpoint", "version": 1.5, "state": {}}, "invalid format version 1.5"),
    ({"format": "fastconv-checkpoint", "version": [1], "state": {}}, "invalid format version"),
    ({"format": "fastconv-checkpoint", "version": True, "state": {}}, "invalid format version"),
    ({"format": "fastconv-checkpoint", "version": 0, "state": {}}, "invalid format version 0"),
    ({"format": "fastconv-checkpoint", "state": {}}, "no format version"),
    ({"format": "fastconv-checkpoint", "version": 1}, "no state"),
    ({"format": "fastconv-checkpoint", "version": 1, "state": [1, 2]}, "not a dict"),
    ({"format": "fastconv-checkpoint", "version": 1, "state": None}, "not a dict"),
    ({"format": "fastconv-checkpoint", "version": 1, "state": {"__tuple__": [1]}}, "not a dict"),
])
def test_malformed_metadata_is_a_checkpoint_error(tmp_path, meta, needle):
    path = _with_meta(tmp_path / "c.npz", meta)
    with pytest.raises(C.CheckpointError, match=re.escape(needle)) as err:
        C.load_checkpoint(path)
    assert str(path) in str(err.value)


def test_deeply_nested_metadata_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "c.npz"
    np.savez(path, __meta__=np.frombuffer(b"[" * 100_000 + b"]" * 100_000, np.uint8))
    with pytest.raises(C.CheckpointError, match="corrupt metadata"):
        C.load_checkpoint(path)


def test_malformed_weights_metadata(tmp_path):
    path = _with_meta(tmp_path / "w.npz", {"format": "fastconv-weights", "version": "x",
                                           "metadata": {}}, a=np.ones(2))
    for load in (C.load_weights, C.load_weights_metadata):
        with pytest.raises(C.CheckpointError, match="invalid format version 'x'"):
            load(path)
    path = _with_meta(tmp_path / "w.npz", {"format": "fastconv-weights", "version": 1,
                                           "metadata": ["model"]}, a=np.ones(2))
    with pytest.raises(C.CheckpointError, match="'metadata' is a list, not a dict"):
        C.load_weights_metadata(path)


def _png(path):
    # a minimal PNG signature and header: the kind of file users pass by mistake
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 40)
    return path


@pytest.mark.parametrize("kind", ["png", "jpeg", "pickle", "text", "empty", "torch"])
def test_foreign_file_is_not_called_corrupt(tmp_path, kind):
    """A file that is not an .npz at all is named for what it is; nothing says to delete it
    or to load it unsafely (it is the user's own file)."""
    path = tmp_path / f"input.{kind}"
    if kind == "png":
        _png(path)
        what = "PNG image"
    elif kind == "jpeg":
        path.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 100)
        what = "JPEG image"
    elif kind == "pickle":
        import pickle
        path.write_bytes(pickle.dumps({"w": [1, 2]}, protocol=4))
        what = "Python pickle"
    elif kind == "text":
        path.write_text("hello")
        what = "not an .npz archive"
    elif kind == "empty":
        path.write_bytes(b"")
        what = "empty"
    else:
        import zipfile
        with zipfile.ZipFile(path, "w") as z:          # torch.save's layout
            z.writestr("model/data.pkl", b"\x80\x02}q\x00.")
            z.writestr("model/version", b"3\n")
        what = "PyTorch"
    for load, name in ((C.load_checkpoint, "checkpoint"), (C.load_weights, "weights file"),
                       (C.file_kind, "weights or checkpoint file")):
        with pytest.raises(C.CheckpointError) as err:
            load(path)
        msg = str(err.value)
        assert f"{path} is not a fastconv {name}" in msg and what in msg, msg
        assert "delete" not in msg and "pickle=" not in msg and "corrupt" not in msg, msg
    assert path.exists()


def test_a_full_disk_names_the_file_not_written_and_keeps_the_old_one(tmp_path):
    """A write or fsync failing for lack of space (its error names no file) is an OSError
    naming the file not written; the previous file stays and no temporary file is left."""
    import errno as _errno

    path = tmp_path / "ck.npz"
    path.write_bytes(b"previous")
    with pytest.raises(OSError, match=r"\[Errno 28\] No space left on device: '.*ck\.npz'") as e:
        with C.atomic_write(path) as f:
            f.write(b"new")
            raise OSError(_errno.ENOSPC, "No space left on device")
    assert e.value.errno == _errno.ENOSPC and e.value.filename == str(path)
    assert path.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["ck.npz"]
