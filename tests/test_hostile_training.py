"""Hostile inputs to the training and data surface (an outside reviewer's audit): each test is
a defect that was found and fixed, or a guarantee the audit checked (a clear error, no lost
file)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fastconv import checkpoint as ckpt
from fastconv import nn, optim
from fastconv.data import DataLoader, load_image_folder
from fastconv.data.images import ImageReadError
from fastconv.training import CSVLogger, EarlyStopping, ModelCheckpoint, evaluate, fit

PIL = pytest.importorskip("PIL.Image")


def _mlp(classes: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(12, classes))


def _xy(n: int = 10):
    x = np.random.default_rng(0).standard_normal((n, 3, 2, 2)).astype(np.float32)
    return x, np.arange(n) % 3


def _tree(root, per_class: int = 2):
    for c in ("cat", "dog"):
        (root / c).mkdir()
        for i in range(per_class):
            PIL.new("RGB", (6 + i, 5), (40 * i, 9, 9)).save(root / c / f"{i}.png")
    return root


# -- load_image_folder ----------------------------------------------------------------------
def test_image_folder_symlink_cycle_is_read_once(tmp_path):
    # a link back to its own class folder used to be followed until the OS gave up: every
    # image read dozens of times (silent duplicates, slow)
    root = _tree(tmp_path)
    if not hasattr(os, "symlink"):
        pytest.skip("no symlinks")
    (root / "dog" / "sub").mkdir()
    os.symlink(root / "dog", root / "dog" / "sub" / "loop")
    got = load_image_folder(root, 4)
    assert got.x.shape == (4, 3, 4, 4)
    assert len(set(map(os.path.realpath, got.paths))) == 4
    assert any("already read" in why for _, why in got.skipped)


def test_image_folder_repeated_class_names_refused(tmp_path):
    # a repeated name read the folder twice under two labels
    root = _tree(tmp_path)
    with pytest.raises(ValueError, match="repeats dog"):
        load_image_folder(root, 4, class_names=["cat", "dog", "dog"])


def test_image_folder_class_names_string_refused(tmp_path):
    root = _tree(tmp_path)
    with pytest.raises(TypeError, match="class_names must be a list"):
        load_image_folder(root, 4, class_names="catdog")


@pytest.mark.parametrize("size", [0, -1, 2.5, True])
def test_image_folder_bad_image_size(tmp_path, size):
    root = _tree(tmp_path)
    with pytest.raises(ValueError, match="image_size must be a positive int"):
        load_image_folder(root, size)


def test_image_folder_mixed_modes_sizes_and_junk(tmp_path):
    root = tmp_path
    (root / "a").mkdir()
    (root / "b" / "deep").mkdir(parents=True)
    PIL.new("L", (10, 20), 128).save(root / "a" / "grey.png")
    PIL.new("RGBA", (40, 30), (1, 2, 3, 0)).save(root / "a" / "rgba.png")
    PIL.new("P", (8, 8)).save(root / "a" / "palette.png")
    PIL.new("RGB", (50, 50), (9, 9, 9)).save(root / "b" / "j.jpg")
    PIL.new("RGB", (5, 7)).save(root / "b" / "deep" / "n.jpeg")
    (root / "b" / ".DS_Store").write_bytes(b"x")
    (root / "b" / "notes.txt").write_text("x")
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nxx")
    with pytest.raises(ImageReadError, match="broken.png"):
        load_image_folder(root, 4)
    got = load_image_folder(root, 4, bad_images="skip")
    assert got.x.shape == (5, 3, 4, 4) and got.x.dtype == np.uint8
    assert got.y.tolist() == [0, 0, 0, 1, 1]
    assert {p.name for p, _ in got.skipped} == {".DS_Store", "notes.txt", "broken.png"}


# -- DataLoader ------------------------------------------------------------------------------
@pytest.mark.parametrize("prefetch", [1.5, "2", True, -1])
def test_loader_prefetch_must_be_int(prefetch):
    x, y = _xy()
    with pytest.raises(ValueError, match="prefetch must be an int >= 0"):
        DataLoader(x, y, 2, prefetch=prefetch)


@pytest.mark.parametrize("pad", [2.7, -1, "4"])
def test_loader_pad_must_be_int(pad):
    # pad=2.7 was silently truncated to 2
    with pytest.raises(ValueError, match="pad must be an int >= 0"):
        DataLoader(np.zeros((4, 3, 8, 8), np.uint8), np.zeros(4, int), 2, augment=True,
                   pad=pad)


def test_loader_load_state_dict_checked():
    x, y = _xy()
    loader = DataLoader(x, y, 2)
    with pytest.raises(ValueError, match="no 'epoch'"):
        loader.load_state_dict({"batch": 1})
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        loader.load_state_dict({"epoch": -3})
    assert loader.state_dict() == {"seed": 0, "epoch": 0, "batch": 0}


def test_loader_sizes():
    x, y = _xy(10)
    assert [len(b) for _, b in DataLoader(x, y, 3, shuffle=True)] == [3, 3, 3, 1]
    assert [len(b) for _, b in DataLoader(x, y, 100)] == [10]
    assert len(DataLoader(x, y, 100, drop_last=True)) == 0
    assert list(DataLoader(x[:0], y[:0], 4)) == []
    with pytest.raises(ValueError, match="no samples"):
        fit(_mlp(), DataLoader(x[:0], y[:0], 4), 1, progress=False)
    with pytest.raises(ValueError, match="yields no batches"):
        fit(_mlp(), DataLoader(x, y, 100, drop_last=True), 1, progress=False)


# -- fit -------------------------------------------------------------------------------------
def test_fit_labels_out_of_range_name_the_width():
    # checked over all labels before the first step (was: the loss's error at whichever
    # batch first held a bad label, after the steps before it), and in evaluate and val
    x, y = _xy()
    y = y.copy()
    y[-1] = 7
    msg = r"the labels span 0\.\.7 but the model outputs 3 classes.*1 are not"
    model = _mlp()
    before = model.state_dict()["1.weight"].copy()
    with pytest.raises(ValueError, match="fit: train: " + msg):
        fit(model, (x, y), 1, shuffle=False, batch_size=2, progress=False)
    assert np.array_equal(model.state_dict()["1.weight"], before)   # no step taken
    with pytest.raises(ValueError, match="fit: val: " + msg):
        fit(_mlp(), (x, y % 3), 1, val=(x, y), progress=False)
    with pytest.raises(ValueError, match="evaluate: data: " + msg):
        evaluate(_mlp(), (x, y))
    with pytest.raises(ValueError, match=r"span -1\.\.1 .*fix the labels$"):
        fit(_mlp(), (x, y % 3 - 1), 1, progress=False)
    # ignore_index labels are not classes
    fit(_mlp(), (x, np.where(y == 7, -100, y)), 1, progress=False)


def test_fit_nan_loss_stops_with_a_clear_error():
    # non-finite inputs used to be blamed on the learning rate
    x, y = _xy()
    x[3, 0, 0, 0] = np.inf
    with pytest.raises(FloatingPointError, match="loss is nan at epoch 1, batch 2.*inputs hold "
                                                 "NaN or infinite values"), \
            np.errstate(all="ignore"):
        fit(_mlp(), (x, y), 1, batch_size=2, shuffle=False, progress=False)
    model = _mlp()
    with pytest.raises(FloatingPointError, match="diverged; lower the learning rate"), \
            np.errstate(all="ignore"):
        fit(model, (np.full_like(x, 1e30), y), 3, optimizer=optim.SGD(model.parameters(), lr=1e30),
            progress=False)


def test_fit_callbacks_must_be_a_list():
    x, y = _xy()
    with pytest.raises(TypeError, match=r"callbacks must be a list.*callbacks=\[\.\.\.\]"):
        fit(_mlp(), (x, y), 1, callbacks=EarlyStopping("loss"), progress=False)


def test_early_stopping_numpy_numbers():
    # np.int64 patience / np.float32 min_delta were refused as "not an int"
    es = EarlyStopping("loss", patience=np.int64(2), min_delta=np.float32(0.5))
    assert es.patience == 2 and type(es.patience) is int and es.min_delta == 0.5
    with pytest.raises(ValueError, match="min_delta"):
        EarlyStopping("loss", min_delta=float("nan"))
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping("loss", patience=1.5)


def test_csv_logger_creates_its_folder(tmp_path):
    x, y = _xy()
    target = tmp_path / "logs" / "run.csv"
    fit(_mlp(), (x, y), 2, callbacks=[CSVLogger(target)], progress=False)
    assert target.read_text().splitlines()[0].startswith("epoch,")
    assert len(target.read_text().splitlines()) == 3


def test_model_checkpoint_creates_its_folder(tmp_path):
    # a missing folder used to fail only after the first epoch, naming the temporary file
    x, y = _xy()
    target = tmp_path / "runs" / "a" / "ckpt.npz"
    fit(_mlp(), (x, y), 1, callbacks=[ModelCheckpoint(target)], progress=False)
    assert ckpt.file_kind(target) == "checkpoint"


def test_atomic_write_missing_folder_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="the folder .*nowhere does not exist"):
        ckpt.save_checkpoint(tmp_path / "nowhere" / "c.npz", {"a": 1})


def test_interrupted_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    ckpt.save_checkpoint(path, {"a": np.arange(3)})
    before = path.read_bytes()

    def boom(f, arrays, meta):
        f.write(b"PK\x03\x04 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "_write_npz", boom)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(path, {"a": np.arange(5)})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.npz"]


def test_resume_from_corrupt_or_missing_checkpoint(tmp_path):
    x, y = _xy()
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(ckpt.CheckpointError, match="corrupt"):
        fit(_mlp(), (x, y), 1, resume=bad, progress=False)
    with pytest.raises(FileNotFoundError):
        fit(_mlp(), (x, y), 1, resume=tmp_path / "missing.npz", progress=False)


def test_constant_channel_message_is_plain_numbers(tmp_path):
    # the std used to print as (np.float64(0.281), ...) under NumPy 2
    from fastconv.data import load_dataset
    for c, g in (("a", 0), ("b", 200)):
        (tmp_path / c).mkdir()
        for i in range(3):
            PIL.new("RGB", (6, 6), (40 * i, g, 9)).save(tmp_path / c / f"{i}.png")
    with pytest.raises(ValueError, match=r"constant colour channel \(std \([0-9., ]*0\.0\)\)"):
        load_dataset(f"folder:{tmp_path}", image_size=4, test_fraction=0.34)
