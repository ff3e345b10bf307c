"""fastconv-train's data choices and run folders: --dataset cifar100 and folder:PATH with
fastconv-predict answering in the run's classes; downloads only on request or into the default
folder (size said first); --data-dir that does not exist; the lock file removed at exit; stale
temporary files cleaned; --resume of a run still going; runs extended with --epochs; resumed_at
and the resumed epoch's timing; curves.png's integer epoch ticks. All on synthetic data."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

import fake_cifar
from fastconv import checkpoint as C, data as D, plotting
from fastconv.cli import predict as P, train as T

TINY = ("--model", "lenet5", "--epochs", 1, "--limit-train", 8, "--batch-size", 4,
        "--limit-test", 10)


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar10")
    fake_cifar.write_folder(root, fake_cifar.fake_batches(learnable=True))
    return root


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.delenv("FASTCONV_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(plotting, "have_matplotlib", lambda: False)


def _run(*argv) -> int:
    return T.main(["--quiet", *map(str, argv)])


def _last_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------

def test_cifar100_run_and_predict_use_its_classes(tmp_path, capsys):
    fake_cifar.write_tarball(tmp_path / "c100" / D.CIFAR100_TARBALL, fake_cifar.fake_cifar100(),
                             folder_name=D.CIFAR100_FOLDER)
    out = tmp_path / "run"
    assert _run("--dataset", "cifar100", "--data-dir", tmp_path / "c100", "--out", out,
                *TINY) == 0
    meta = C.load_weights_metadata(out / T.WEIGHTS_NAME)
    assert meta["dataset"] == "cifar100" and len(meta["class_names"]) == 100
    assert meta["mean"] == list(D.CIFAR100_MEAN) and meta["image_size"] == 32
    assert list(C.load_weights(out / T.WEIGHTS_NAME).values())[-1].shape == (100,)  # last bias
    config = json.loads((out / T.CONFIG_NAME).read_text())
    assert config["dataset"] == "cifar100" and config["config"]["dataset"] == "cifar100"
    for weights in (out / T.WEIGHTS_NAME, out / T.CHECKPOINT_NAME):
        net, info = P.load_model(weights)
        assert info["class_names"][7] == "fine07" and info["mean"] == D.CIFAR100_MEAN
        top = P.predict(np.zeros((2, 3, 32, 32), np.uint8), model=net, info=info, top=3)
        assert all(name.startswith("fine") for name, _ in top[0])


def _image_tree(root, per_class=6):
    from PIL import Image
    colours = {"apple": (220, 20, 20), "leaf": (20, 200, 30), "sky": (30, 60, 220)}
    for name, colour in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (40 + 5 * i, 36), colour).save(root / name / f"{i}.png")
    (root / "apple" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_run_and_predict(tmp_path, capsys):
    pytest.importorskip("PIL")
    root = _image_tree(tmp_path / "fruit")
    out = tmp_path / "run"
    assert _run("--dataset", f"folder:{root}", "--out", out, "--model", "lenet5",
                "--epochs", 2, "--batch-size", 4) == 0
    err = capsys.readouterr().err
    assert "skipped 1 file(s)" in err and "notes.txt (not an image file name)" in err
    meta = C.load_weights_metadata(out / T.WEIGHTS_NAME)
    assert meta["class_names"] == ["apple", "leaf", "sky"]
    assert meta["dataset"] == f"folder:{root.resolve()}"
    mean, std = D.compute_mean_std(D.load_dataset(meta["dataset"]).x_train)
    np.testing.assert_allclose(meta["mean"], mean)
    np.testing.assert_allclose(meta["std"], std)
    assert P.main(["-w", str(out), str(root / "sky" / "0.png"), "--top", "3"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(root / "sky" / "0.png") + ": ")
    assert {"apple", "leaf", "sky"} == {part.split()[0] for part in line.split(": ")[1]
                                        .split(", ")}
    # resuming keeps the dataset; another one is refused
    assert _run("--out", out, "--resume") == 0
    assert _run("--out", out, "--resume", "--dataset", "cifar10") == 2
    assert "--dataset cifar10 differs" in _last_error(capsys)


@pytest.mark.parametrize("argv,needle", [
    (("--dataset", "imagenet"), "unknown dataset 'imagenet'"),
    (("--dataset", "folder:"), "unknown dataset"),
])
def test_bad_dataset_names(argv, needle, capsys):
    assert T.main(list(argv)) == 2
    assert needle in _last_error(capsys)


def test_folder_dataset_errors_are_one_line(tmp_path, capsys):
    pytest.importorskip("PIL")
    root = _image_tree(tmp_path / "fruit", per_class=1)       # a tenth of 1 image: no test set
    assert _run("--dataset", f"folder:{root}", "--out", tmp_path / "r1") == 2
    assert "no test images" in _last_error(capsys)
    assert _run("--dataset", f"folder:{root}", "--data-dir", tmp_path,
                "--out", tmp_path / "r2") == 2
    assert "--data-dir applies to cifar10 and cifar100" in _last_error(capsys)
    (root / "empty").mkdir()
    assert _run("--dataset", f"folder:{root}", "--out", tmp_path / "r3") == 1
    assert "holds no images" in _last_error(capsys)
    assert _run("--dataset", f"folder:{tmp_path / 'nowhere'}", "--out", tmp_path / "r4") == 1
    assert "does not exist" in _last_error(capsys)
    # an unreadable image: the advice is the command's, not load_image_folder's bad_images=
    (root / "empty" / "broken.jpg").write_bytes(b"not a jpeg")
    assert _run("--dataset", f"folder:{root}", "--out", tmp_path / "r5") == 1
    err = _last_error(capsys)
    assert "cannot read" in err and "broken.jpg" in err and err.endswith("fix or remove the file")
    assert "bad_images" not in err


# --------------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------------

def test_missing_data_dir_is_an_error_naming_it(tmp_path, capsys):
    typo = tmp_path / "a" / "typo"
    assert _run("--data-dir", typo, "--out", tmp_path / "run") == 2
    err = _last_error(capsys)
    assert f"--data-dir {typo} does not exist" in err and "--download" in err
    assert not typo.exists() and not (tmp_path / "a").exists()


def test_an_existing_data_dir_is_not_downloaded_into_unless_asked(tmp_path, capsys,
                                                                   monkeypatch):
    calls = []
    monkeypatch.setattr(D.cifar, "download_cifar10", lambda *a, **k: calls.append(a))
    (tmp_path / "data").mkdir()
    assert _run("--data-dir", tmp_path / "data", "--out", tmp_path / "run") == 1
    err = _last_error(capsys)
    assert "CIFAR-10 not found in" in err and "add --download" in err and not calls


def test_default_folder_download_says_the_size_first(tmp_path, capsys, monkeypatch, cifar10):
    src = fake_cifar.write_tarball(tmp_path / "src" / D.TARBALL_NAME,
                                   fake_cifar.fake_batches(learnable=True))
    md5 = hashlib.md5(src.read_bytes()).hexdigest()

    def offline(dest_dir=None, **kw):      # the official URL and MD5, served from a file
        return D.archive.download(dest_dir, url=src.as_uri(), md5=md5,
                                  filename=D.TARBALL_NAME, what="CIFAR-10",
                                  expected_size=D.CIFAR10_SIZE)
    monkeypatch.setattr(D.cifar, "download_cifar10", offline)
    cache = tmp_path / "home" / ".cache" / "fastconv"
    assert _run("--out", tmp_path / "run", *TINY) == 0
    err = capsys.readouterr().err
    assert "downloading CIFAR-10 (" in err and f"into {cache}" in err
    assert (cache / D.TARBALL_NAME).is_file()
    # with --data-dir, --download asks for it there (a new folder is made)
    assert _run("--data-dir", tmp_path / "new", "--download", "--out", tmp_path / "run2",
                *TINY) == 0
    assert (tmp_path / "new" / D.TARBALL_NAME).is_file()
    # --no-download never downloads
    assert _run("--out", tmp_path / "run3", "--no-download", "--dataset", "cifar100") == 1
    assert "CIFAR-100 not found" in _last_error(capsys)


# --------------------------------------------------------------------------------------------
# Run folders
# --------------------------------------------------------------------------------------------

def test_lock_file_is_removed_at_exit(cifar10, tmp_path, capsys):
    pytest.importorskip("fcntl")
    out = tmp_path / "run"
    assert _run("--data-dir", cifar10, "--out", out, *TINY) == 0
    assert not (out / T.LOCK_NAME).exists()
    assert _run("--data-dir", cifar10, "--out", out, "--epochs", 1, "--resume") == 0
    assert not (out / T.LOCK_NAME).exists()
    # a failed run too
    assert _run("--data-dir", cifar10, "--out", out, "--resume", "--lr", "9") == 2
    assert not (out / T.LOCK_NAME).exists()


def test_lock_removed_under_a_waiting_opener_is_not_taken(tmp_path):
    """A process that opened the lock file just before its owner removed it must not think
    it holds the lock on the removed file while a third process locks a new one."""
    pytest.importorskip("fcntl")
    out = tmp_path / "run"
    first = T._OutLock(out).__enter__()
    stale = open(out / T.LOCK_NAME, "a+")       # opened, not yet locked, by a second run
    first.__exit__(None, None, None)
    assert not (out / T.LOCK_NAME).exists()
    with T._OutLock(out):                       # a third run locks a new file
        assert (out / T.LOCK_NAME).read_text().strip() == str(__import__("os").getpid())
        import fcntl
        fcntl.flock(stale, fcntl.LOCK_EX | fcntl.LOCK_NB)   # the old inode: lockable
        import os
        assert os.fstat(stale.fileno()).st_ino != os.stat(out / T.LOCK_NAME).st_ino
    stale.close()


def test_stale_temporary_files_are_removed_by_the_next_run(cifar10, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run("--data-dir", cifar10, "--out", out, *TINY, "--epochs", 2,
                "--stop-after", 1) == 130
    # a kill -9 during a checkpoint write leaves its temporary file
    stale = [out / f".{T.CHECKPOINT_NAME}.k3j_x8.tmp", out / f".{T.METRICS_NAME}.a1b2.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
    mine = out / ".notes.tmp"
    mine.write_text("the user's own")
    assert _run("--data-dir", cifar10, "--out", out, "--resume") == 0
    assert not any(p.exists() for p in stale) and mine.exists()


def test_resume_of_a_run_still_going_says_in_use(cifar10, tmp_path, capsys):
    pytest.importorskip("fcntl")
    import os
    out = tmp_path / "run"
    with T._OutLock(out):        # a run that started and has not written a checkpoint yet
        assert _run("--data-dir", cifar10, "--out", out, "--resume") == 2
        err = _last_error(capsys)
        assert f"is in use by another fastconv-train run (process {os.getpid()})" in err
        assert "nothing to resume" not in err
    assert _run("--data-dir", cifar10, "--out", out, "--resume") == 2
    assert "nothing to resume" in _last_error(capsys)


def test_a_finished_run_is_extended_with_epochs(cifar10, tmp_path, capsys):
    args = ("--data-dir", cifar10, "--model", "lenet5", "--limit-train", 8, "--batch-size", 4,
            "--limit-test", 10)
    short, extended, straight = tmp_path / "short", tmp_path / "ext", tmp_path / "straight"
    assert _run(*args, "--out", extended, "--epochs", 2) == 0
    assert T.main([*map(str, args), "--out", str(extended), "--resume", "--epochs", "4"]) == 0
    text = capsys.readouterr().out
    assert "with 4 epochs instead of 2" in text and "re-planned over 4 epochs" in text
    rows = [r for r in C.load_checkpoint(extended / T.CHECKPOINT_NAME)["history"]]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    # the re-planned epochs follow the 4-epoch schedule from step 4 on (lr of each epoch's
    # last step), as a run planned for 4 epochs from the start does
    assert _run(*args, "--out", straight, "--epochs", 4) == 0
    planned = C.load_checkpoint(straight / T.CHECKPOINT_NAME)["history"]
    np.testing.assert_allclose([r["lr"] for r in rows[2:]], [r["lr"] for r in planned[2:]],
                               rtol=1e-12)
    assert C.load_checkpoint(extended / T.CHECKPOINT_NAME)["metadata"]["config"]["epochs"] == 4
    # fewer epochs than the run has done: refused
    assert _run(*args, "--out", extended, "--resume", "--epochs", 3) == 2
    assert "fewer than the 4 epochs" in _last_error(capsys)
    assert _run(*args, "--out", short, "--epochs", 1) == 0


def test_resumed_at_counts_epochs_from_one(cifar10, tmp_path, capsys):
    out = tmp_path / "run"
    args = ("--data-dir", cifar10, "--out", out, *TINY[:2], "--epochs", 2, "--limit-train", 8,
            "--batch-size", 4, "--limit-test", 10)
    assert _run(*args, "--stop-after", 3) == 130            # epoch 2, after 1 of its 2 batches
    assert T.main([*map(str, args), "--resume"]) == 0
    assert "resuming" in capsys.readouterr().out
    config = json.loads((out / T.CONFIG_NAME).read_text())
    assert config["resumed_at"] == {"epoch": 2, "batch": 1}


def test_the_resumed_epoch_row_times_the_whole_epoch(cifar10, tmp_path, monkeypatch):
    """With a clock that advances 1 s per reading, the interrupted and resumed epoch's seconds
    equal those of the same epoch run straight (the part before the stop is kept)."""
    from fastconv.training import loop

    class Clock:
        t = 0.0

        def __call__(self):
            Clock.t += 1.0
            return Clock.t

    monkeypatch.setattr(loop.time, "perf_counter", Clock())
    args = ("--data-dir", cifar10, *TINY[:2], "--epochs", 1, "--limit-train", 16,
            "--batch-size", 4, "--limit-test", 10)
    assert _run(*args, "--out", tmp_path / "straight") == 0
    assert _run(*args, "--out", tmp_path / "resumed", "--stop-after", 2) == 130
    assert _run(*args, "--out", tmp_path / "resumed", "--resume") == 0
    straight = C.load_checkpoint(tmp_path / "straight" / T.CHECKPOINT_NAME)["history"][0]
    resumed = C.load_checkpoint(tmp_path / "resumed" / T.CHECKPOINT_NAME)["history"][0]
    # straight: one reading per batch after the start, plus validation's two; resumed: the
    # same, give or take the one reading of the resumed part's start
    assert resumed["seconds"] >= straight["seconds"] > 0
    assert resumed["seconds"] - straight["seconds"] <= 1.0
    assert resumed["images_per_s"] == straight["images_per_s"] == 4.0     # 16 images in 4 s


def test_curves_have_integer_epoch_ticks(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.undo()
    figures = []
    monkeypatch.setattr(plotting, "_save", lambda fig, path, dpi: figures.append(fig) or path)
    rows = [{"epoch": e, "train_loss": 1 / e, "test_acc": 0.1 * e} for e in (1, 2, 3)]
    plotting.plot_curves(rows, tmp_path / "c.png")
    for ax in figures[0].axes:
        ax.figure.canvas.draw()
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
