"""End-to-end tests of fastconv-train and fastconv-predict on a small fake CIFAR-10.

The fake dataset has the official python format (100 images per batch) and a learnable
signal (the class sets the mean colour), so a short run improves on chance.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fastconv
from fake_cifar import PER_BATCH, fake_batches, write_folder
from fastconv import checkpoint as C
from fastconv import data as D
from fastconv import plotting
from fastconv.cli import predict as P, train as T

# the folder holding the fastconv package this test imported (checkout or site-packages),
# so subprocesses run the same code
REPO = Path(fastconv.__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_folder(root, fake_batches(learnable=True))
    return root


@pytest.fixture
def no_plots(monkeypatch):
    """Skip rendering (as without matplotlib) to keep the many short runs fast."""
    monkeypatch.setattr(plotting, "have_matplotlib", lambda: False)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.delenv("FASTCONV_DATA", raising=False)
    monkeypatch.chdir(tmp_path)


def _args(data_dir, out, *extra):
    return ["--data-dir", str(data_dir), "--out", str(out), "--no-download", "--quiet",
            *map(str, extra)]


def _weights(out: Path) -> dict:
    return C.load_weights(out / T.WEIGHTS_NAME)


def _metrics(out: Path) -> list[dict]:
    with open(out / T.METRICS_NAME, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------

def test_train_end_to_end(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    rc = T.main(_args(data_dir, out, "--epochs", 1, "--limit-train", 300, "--batch-size", 50))
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "done: test accuracy" in captured.out
    rows = _metrics(out)
    assert len(rows) == 1 and list(rows[0]) == list(T.METRIC_FIELDS)
    row = rows[0]
    assert row["epoch"] == "1" and row["step"] == "6"            # 300 / 50 batches
    assert 0 <= float(row["train_acc"]) <= 1 and 0 <= float(row["test_acc"]) <= 1
    assert float(row["test_acc"]) > 0.2                          # learnable colours: > chance
    assert float(row["images_per_s"]) > 0 and float(row["seconds"]) > 0
    config = json.loads((out / T.CONFIG_NAME).read_text())
    assert config["config"]["model"] == "simple_cnn" and config["config"]["lr"] == 0.05
    assert config["train_images"] == 300 and config["test_images"] == PER_BATCH
    assert config["config"]["schedule"] == "onecycle" and config["config"]["warmup"] == 0.3
    weights = _weights(out)
    meta = C.load_weights_metadata(out / T.WEIGHTS_NAME)
    assert meta["model"] == "simple_cnn" and tuple(meta["class_names"]) == D.CLASS_NAMES
    assert weights["0.weight"].shape == (32, 3, 3, 3) and weights["0.weight"].dtype == np.float32
    state = C.load_checkpoint(out / T.CHECKPOINT_NAME)
    assert state["position"]["epoch"] == 1 and len(state["history"]) == 1
    assert state["metadata"]["config"]["model"] == "simple_cnn"
    table = (out / "confusion.txt").read_text()
    assert "airplane" in table and "accuracy" in table
    if plotting.have_matplotlib():
        for name in ("curves.png", "filters.png", "confusion.png"):
            assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_without_matplotlib_says_plots_skipped(data_dir, tmp_path, capsys, no_plots):
    out = tmp_path / "run"
    assert T.main(_args(data_dir, out, "--epochs", 1, "--limit-train", 64, "--model",
                        "lenet5")) == 0
    err = capsys.readouterr().err
    assert "plots skipped" in err
    assert not list(out.glob("*.png"))
    assert (out / T.WEIGHTS_NAME).is_file()


def test_progress_lines_when_not_quiet(data_dir, tmp_path, capsys, no_plots):
    out = tmp_path / "run"
    args = [a for a in _args(data_dir, out, "--epochs", 2, "--limit-train", 64, "--model",
                             "lenet5", "--optimizer", "adam", "--schedule", "cosine",
                             "--warmup", 0.25) if a != "--quiet"]
    assert T.main(args) == 0
    text = capsys.readouterr().out
    assert "epoch  1/2" in text and "epoch  2/2" in text and "img/s" in text
    assert "confusion matrix" in text
    assert " 2 epochs of 1 batch, adam " in text


def test_the_header_counts_one_epoch_and_one_batch_in_the_singular(data_dir, tmp_path, capsys,
                                                                    no_plots):
    # "1 epochs of 1 batches"
    args = [a for a in _args(data_dir, tmp_path / "run", *TINY[:-2], "--batch-size", 4)
            if a != "--quiet"]
    assert T.main(args) == 0
    assert " 1 epoch of 1 batch, sgd " in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# Resume
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model,extra", [
    ("simple_cnn", ("--limit-train", 64, "--batch-size", 16)),        # the default recipe
    # dropout draws from a generator whose state must be restored; no momentum (no buffers)
    # keeps the 7.5M-parameter checkpoints small
    pytest.param("alexnet_small", ("--limit-train", 32, "--batch-size", 8, "--limit-test", 10,
                                   "--momentum", 0), marks=pytest.mark.slow),
])
def test_resume_is_bit_exact(data_dir, tmp_path, capsys, no_plots, model, extra):
    common = ("--model", model, "--epochs", 2, *extra)                # 4 batches per epoch
    straight = tmp_path / "straight"
    assert T.main(_args(data_dir, straight, *common)) == 0
    resumed = tmp_path / "resumed"
    # stop mid-epoch 1, then at the end of epoch 1 before its evaluation, then mid-epoch 2
    assert T.main(_args(data_dir, resumed, *common, "--stop-after", 2)) == 128 + signal.SIGINT
    assert "interrupted at epoch 1, batch 2/4" in capsys.readouterr().err
    assert T.main(_args(data_dir, resumed, *common, "--resume", "--stop-after", 2)) == 130
    assert "end of epoch 1 (before its evaluation)" in capsys.readouterr().err
    assert T.main(_args(data_dir, resumed, "--resume", "--stop-after", 1)) == 130
    assert T.main(_args(data_dir, resumed, "--resume")) == 0
    a, b = _weights(straight), _weights(resumed)
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k
    sa = C.load_checkpoint(straight / T.CHECKPOINT_NAME)
    sb = C.load_checkpoint(resumed / T.CHECKPOINT_NAME)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "val_accuracy_1k", "lr", "step"):
        assert [r[key] for r in sa["history"]] == [r[key] for r in sb["history"]], key
    for i, st in sa["optimizer"]["state"].items():
        for name, v in st.items():
            if isinstance(v, np.ndarray):
                assert v.tobytes() == sb["optimizer"]["state"][i][name].tobytes()
    assert sa["generators"] == sb["generators"]
    if model == "alexnet_small":
        assert sorted(sa["generators"]) == ["14.rng", "17.rng"]          # the Dropouts
        assert all(not s for s in sa["optimizer"]["state"].values())      # no buffers


def test_resume_of_a_fractional_epochs_run_keeps_its_plan(data_dir, tmp_path, capsys, no_plots):
    # the checkpoint's planned epochs were read as int(1.5) = 1: resuming without --epochs
    # said "with 1.5 epochs instead of 1 (the onecycle schedule re-planned ...)"
    out = tmp_path / "run"
    run = ("--model", "lenet5", "--limit-train", 16, "--batch-size", 4, "--limit-test", 10)
    assert T.main(_args(data_dir, out, *run, "--epochs", 1.5, "--stop-after", 5)) == 130
    capsys.readouterr()
    assert T.main([a for a in _args(data_dir, out, "--resume") if a != "--quiet"]) == 0
    text = capsys.readouterr().out
    assert f"resuming {out} at epoch 2, batch 1\n" in text
    assert "instead of" not in text and "re-planned" not in text


def test_resume_finished_run_is_a_no_op(data_dir, tmp_path, capsys, no_plots):
    out = tmp_path / "run"
    args = _args(data_dir, out, "--epochs", 1, "--limit-train", 64, "--model", "lenet5")
    assert T.main(args) == 0
    before = _weights(out)
    assert T.main(args + ["--resume"]) == 0
    after = _weights(out)
    assert all(before[k].tobytes() == after[k].tobytes() for k in before)
    assert len(_metrics(out)) == 1


def test_sigterm_saves_checkpoint(data_dir, tmp_path):
    """A real SIGTERM to a running process: checkpoint saved, exit 143, no traceback."""
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "fastconv.cli.train",
           *_args(data_dir, out, "--model", "lenet5", "--epochs", 1000, "--limit-train", 64,
                  "--batch-size", 32, "--limit-test", 10)]
    proc = subprocess.Popen(cmd, env=env, cwd=str(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (out / T.CHECKPOINT_NAME).exists():           # first epoch finished
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint after 60 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    err = stderr.decode()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM" in err and "checkpoint saved" in err and "--resume" in err
    assert "Traceback" not in err
    state = C.load_checkpoint(out / T.CHECKPOINT_NAME)
    assert state["position"]["step"] >= 2 and state["metadata"]["config"]["epochs"] == 1000


# --------------------------------------------------------------------------------------------
# User errors: one line, non-zero exit, no traceback
# --------------------------------------------------------------------------------------------

def _one_line_error(capsys, rc, *needles):
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert len(err.splitlines()) == 1, err
    assert err.startswith("fastconv-train: error:"), err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err


@pytest.mark.parametrize("argv,needle", [
    (["--lr", "abc"], "--lr"),
    (["--lr", "-1"], "--lr"),
    (["--model", "resnet"], "--model"),
    (["--epochs", "0"], "--epochs"),
    (["--optimizer", "lbfgs"], "--optimizer"),
    (["--bogus"], "unrecognized"),
    # options the optimiser has no use for: refused, not dropped from the run unsaid
    (["--optimizer", "adam", "--momentum", "0.5"], "--momentum does not apply to --optimizer adam"),
    (["--optimizer", "adamw", "--nesterov"], "--nesterov is SGD's"),
    (["--optimizer", "rmsprop", "--nesterov"], "--optimizer rmsprop"),
    (["--momentum", "0", "--nesterov"], "--nesterov needs a momentum"),
])
def test_bad_options(argv, needle, capsys):
    _one_line_error(capsys, T.main(argv), needle)


def test_missing_dataset(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc = T.main(_args(tmp_path / "empty", tmp_path / "run"))
    _one_line_error(capsys, rc, "not found", "FASTCONV_DATA")


def test_corrupt_dataset(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / D.TARBALL_NAME).write_bytes(b"\x1f\x8b" + b"\x00" * 100)
    rc = T.main(_args(tmp_path / "d", tmp_path / "run"))
    _one_line_error(capsys, rc, "corrupt", "delete")


def test_unwritable_output(data_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    rc = T.main(_args(data_dir, blocker / "run"))
    _one_line_error(capsys, rc, "cannot write to output folder")


def test_checkpoint_of_another_model(data_dir, tmp_path, capsys, no_plots):
    out = tmp_path / "run"
    assert T.main(_args(data_dir, out, "--epochs", 1, "--limit-train", 64)) == 0
    capsys.readouterr()
    rc = T.main(_args(data_dir, out, "--resume", "--model", "lenet5"))
    _one_line_error(capsys, rc, "simple_cnn", "lenet5")
    rc = T.main(_args(data_dir, out, "--resume", "--lr", "0.2"))
    _one_line_error(capsys, rc, "--lr", "differs")
    rc = T.main(_args(data_dir, out, "--epochs", 1))               # no --resume: refuse
    _one_line_error(capsys, rc, "already holds a run", "--resume")
    (out / T.CHECKPOINT_NAME).write_bytes(b"PK\x03\x04garbage")
    rc = T.main(_args(data_dir, out, "--resume"))
    _one_line_error(capsys, rc, "corrupt")


def test_resume_without_checkpoint(data_dir, tmp_path, capsys):
    rc = T.main(_args(data_dir, tmp_path / "nothing", "--resume"))
    _one_line_error(capsys, rc, "nothing to resume")


@pytest.mark.parametrize("warmup,limit,batch,epochs", [
    ("1.0", 4, 2, 1),      # warm-up throughout: the last step used to divide by zero
    ("1.0", 4, 2, 2),
    ("1.0", 1, 1, 1),      # a single step
    ("0.5", 4, 2, 1),      # pct_start * total_steps == 1: crashed at start-up
    ("0.1", 20, 2, 1),
    ("0.25", 4, 1, 1),
])
def test_onecycle_any_warmup_runs_to_completion(data_dir, tmp_path, capsys, no_plots, warmup,
                                                limit, batch, epochs):
    out = tmp_path / "run"
    rc = T.main(_args(data_dir, out, "--model", "lenet5", "--epochs", epochs, "--limit-train",
                      limit, "--batch-size", batch, "--limit-test", 10, "--warmup", warmup))
    assert rc == 0, capsys.readouterr().err
    assert (out / T.WEIGHTS_NAME).is_file()
    rows = _metrics(out)
    assert len(rows) == epochs and all(np.isfinite(float(r["lr"])) for r in rows)
    if warmup == "1.0":          # the warm-up's end, then the schedule's minimum after the run
        assert float(rows[-1]["lr"]) == pytest.approx(0.05 / 25 / 1e4, rel=1e-5)


TINY = ("--model", "lenet5", "--epochs", 1, "--limit-train", 4, "--batch-size", 2,
        "--limit-test", 10)


def test_a_folder_in_use_by_another_run_is_refused(data_dir, tmp_path, capsys, no_plots):
    # The same command started twice would interleave its files with the first run's.
    pytest.importorskip("fcntl")
    out = tmp_path / "run"
    with T._OutLock(out):  # as a running fastconv-train holds it
        assert T.main(_args(data_dir, out, *TINY)) == 2
        assert "is in use by another fastconv-train run" in capsys.readouterr().err
        assert not (out / T.CHECKPOINT_NAME).exists()
    assert T.main(_args(data_dir, out, *TINY)) == 0  # released when the run ends
    assert T.main(_args(data_dir, out, "--resume")) == 0


def test_resume_of_a_finished_run_and_interrupted_final_outputs(data_dir, tmp_path, capsys,
                                                                 no_plots, monkeypatch):
    out = tmp_path / "run"

    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "_make_plots", interrupt)  # Ctrl-C while the plots are drawn
    loud = [a for a in _args(data_dir, out, *TINY) if a != "--quiet"]
    assert T.main(loud) == 130
    err = capsys.readouterr().err
    assert "interrupted while writing the final outputs" in err and "--resume" in err
    assert "no checkpoint" not in err and (out / T.CHECKPOINT_NAME).is_file()
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    (out / "confusion.txt").unlink(missing_ok=True)
    assert T.main([a for a in _args(data_dir, out, "--resume") if a != "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "already complete (1 epoch): writing its final outputs again" in text
    assert "resuming" not in text and (out / "confusion.txt").is_file()


@pytest.mark.parametrize("schedule", ["cosine", "step", "constant"])
def test_full_warmup_is_kept_by_every_schedule(schedule):
    # --warmup 1.0: the rate rises over every step (cosine used to drop the warm-up then)
    from types import SimpleNamespace
    from fastconv import nn, optim
    cfg = SimpleNamespace(schedule=schedule, warmup=1.0, lr=0.5, optimizer="sgd", momentum=0.9)
    opt = optim.SGD(nn.Linear(2, 2).parameters(), lr=0.5, momentum=0.9)
    sched = T._make_schedule(cfg, opt, 10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.05) and all(b > a for a, b in zip(lrs, lrs[1:]))


def test_full_warmup_resumes_to_completion(data_dir, tmp_path, capsys, no_plots):
    common = ("--model", "lenet5", "--epochs", 2, "--limit-train", 4, "--batch-size", 2,
              "--limit-test", 10, "--warmup", "1.0")
    straight = tmp_path / "straight"
    assert T.main(_args(data_dir, straight, *common)) == 0
    resumed = tmp_path / "resumed"
    assert T.main(_args(data_dir, resumed, *common, "--stop-after", 3)) == 130
    assert T.main(_args(data_dir, resumed, "--resume")) == 0
    a, b = _weights(straight), _weights(resumed)
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)


def test_checkpoint_of_the_first_format_is_refused_but_still_predicts(data_dir, tmp_path,
                                                                      capsys, trained):
    # fastconv-train's first checkpoints (before fastconv.training) kept config, class names
    # and a position of their own at the top level
    out = tmp_path / "old"
    out.mkdir()
    weights = C.load_weights(trained / T.WEIGHTS_NAME)
    C.save_checkpoint(out / T.CHECKPOINT_NAME, {
        "format": "fastconv-train", "version": 1, "config": {"model": "lenet5"},
        "model": weights, "class_names": list(D.CLASS_NAMES),
        "position": {"epoch": 1, "batch": 0, "step": 4}})
    rc = T.main(_args(data_dir, out, "--resume"))
    _one_line_error(capsys, rc, "older fastconv-train", "another --out")
    model, info = P.load_model(out)
    assert info["model"] == "lenet5" and info["class_names"] == D.CLASS_NAMES
    C.save_checkpoint(out / T.CHECKPOINT_NAME, {"format": "something", "model": weights})
    rc = T.main(_args(data_dir, out, "--resume"))
    _one_line_error(capsys, rc, "is not a fastconv-train checkpoint")


@pytest.mark.parametrize("meta", [
    {"format": "fastconv-checkpoint", "version": "x", "state": {}},
    {"format": "fastconv-checkpoint", "version": None, "state": {}},
    {"format": "fastconv-checkpoint", "version": 1, "state": [1, 2]},
])
def test_resume_malformed_checkpoint_metadata(data_dir, tmp_path, capsys, meta):
    out = tmp_path / "run"
    out.mkdir()
    np.savez(out / T.CHECKPOINT_NAME,
             __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    rc = T.main(_args(data_dir, out, "--resume"))
    _one_line_error(capsys, rc, str(out / T.CHECKPOINT_NAME), "another --out")
    assert rc == 1


def test_default_recipe_per_model():
    # Every model has default epochs and learning rate; an explicit value wins.
    assert set(T.DEFAULT_EPOCHS) == set(T.MODEL_NAMES) == set(T.DEFAULT_LR["sgd"])
    assert T.TrainConfig().resolved().epochs == 17
    cfg = T.TrainConfig(model="vgg_small").resolved()
    assert (cfg.epochs, cfg.lr) == (15, 0.1)
    assert T.TrainConfig(model="simple_cnn", epochs=3).resolved().epochs == 3


def test_help_exits_zero(capsys):
    assert T.main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "--limit-train" in text and "--resume" in text and "--stop-after" not in text


# --------------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plotting, "have_matplotlib", lambda: False)
        assert T.main(_args(data_dir, out, "--model", "lenet5", "--epochs", 1,
                            "--limit-train", 200, "--batch-size", 50)) == 0
    return out


def test_predict_api_arrays(trained, data_dir):
    ds = D.load_cifar10(data_dir, download=False, limit_train=0)
    result = P.predict(ds.x_test[:20], weights=trained, top=3)
    assert len(result) == 20 and all(len(r) == 3 for r in result)
    for r in result:
        probs = [p for _, p in r]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert all(name in D.CLASS_NAMES for name, _ in r)
    model, info = P.load_model(trained)
    assert info["model"] == "lenet5"
    # same answers as the network applied to the normalised batch directly
    logits = model.forward(D.to_float32(ds.x_test[:20]))
    assert [D.CLASS_NAMES[i] for i in logits.argmax(1)] == [r[0][0] for r in result]
    # a checkpoint works as well as the weights file
    again = P.predict(ds.x_test[:20], weights=trained / T.CHECKPOINT_NAME, top=3)
    assert [r[0] for r in again] == [r[0] for r in result]


def test_predict_cli_on_image_files(trained, data_dir, tmp_path, capsys):
    Image = pytest.importorskip("PIL.Image")
    ds = D.load_cifar10(data_dir, download=False, limit_train=0)
    paths = []
    for i in range(2):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(ds.x_test[i].transpose(1, 2, 0)).save(p)
        paths.append(p)
    big = tmp_path / "big.jpg"
    Image.fromarray(ds.x_test[2].transpose(1, 2, 0)).resize((96, 64)).save(big)
    rc = P.main(["-w", str(trained), "--top", "2", *map(str, paths), str(big)])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and len(out) == 3
    assert out[0].startswith(f"{paths[0]}: ") and out[0].count("%") == 2
    expected = P.predict(ds.x_test[:1], weights=trained, top=1)[0][0][0]
    assert out[0].split(": ")[1].split()[0] == expected       # PNG is lossless


def test_predict_errors(trained, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    rc = P.main(["-w", str(trained), str(bad)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "cannot read" in err and len(err.splitlines()) == 1
    rc = P.main(["-w", str(tmp_path / "missing"), str(bad)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "not found" in err
    rc = P.main(["-w", str(trained), "--model", "simple_cnn", str(bad)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "lenet5" in err and "Traceback" not in err
    # a bare weights file of another architecture
    C.save_weights(tmp_path / "w.npz", {"0.weight": np.zeros((2, 3, 3, 3), np.float32)})
    rc = P.main(["-w", str(tmp_path / "w.npz"), "--model", "lenet5", str(bad)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "do not fit" in err and len(err.splitlines()) == 1


def test_keep_freed_memory_applies_on_glibc():
    import platform

    from fastconv.cli.train import keep_freed_memory

    applied = keep_freed_memory()
    assert isinstance(applied, bool)
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert applied


def test_predict_with_an_image_as_weights(tmp_path, capsys):
    Image = pytest.importorskip("PIL.Image")
    img = tmp_path / "cat.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    rc = P.main(["-w", str(img), str(img)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"{img} is not a fastconv weights or checkpoint file" in err and "PNG image" in err
    assert "model.npz" in err                                     # what --weights takes
    # it is the user's image: no advice to delete it, no NumPy pickle message
    assert "delete" not in err and "corrupt" not in err and "pickle" not in err
    assert img.is_file()
    with pytest.raises(P.PredictError, match="PNG image"):
        P.load_model(img)


@pytest.mark.parametrize("top", ["0", "-5"])
def test_predict_top_must_be_positive(tmp_path, capsys, top):
    rc = P.main(["-w", str(tmp_path), "--top", top, "x.png"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--top" in err and top in err, err


def test_predict_api_top_must_be_positive(trained, data_dir):
    ds = D.load_cifar10(data_dir, download=False, limit_train=0)
    for top in (0, -5, 1.5, True):
        with pytest.raises(ValueError, match="top must be an integer >= 1"):
            P.predict(ds.x_test[:2], weights=trained, top=top)
    assert [len(r) for r in P.predict(ds.x_test[:2], weights=trained, top=99)] == [10, 10]


@pytest.mark.parametrize("state,needle", [
    ({"model": {}, "config": [1]}, "does not say which model"),
    ({"model": {}, "config": {"model": "lenet5"}, "class_names": 5}, "malformed class names"),
])
def test_predict_malformed_checkpoint_contents(tmp_path, capsys, state, needle):
    path = C.save_checkpoint(tmp_path / "c.npz", state)
    rc = P.main(["-w", str(path), "x.png"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and needle in err, err


# --------------------------------------------------------------------------------------------
# Recipes
# --------------------------------------------------------------------------------------------

def test_airbench94_recipe_runs_and_reports_tta(data_dir, tmp_path, capsys, no_plots):
    out = tmp_path / "ab"
    # 5 batches of 100 per epoch: 0.4 epochs are 2 steps
    rc = T.main(_args(data_dir, out, "--recipe", "airbench94", "--batch-size", 100,
                      "--epochs", 0.4, "--limit-test", 50))
    assert rc == 0
    text = capsys.readouterr().out
    assert "test-time augmentation (level 2)" in text
    cfg = json.loads((out / T.CONFIG_NAME).read_text())["config"]
    assert (cfg["recipe"], cfg["model"], cfg["batch_size"], cfg["epochs"]) == \
        ("airbench94", "airbench94", 100, 0.4)
    assert (cfg["lr"], cfg["momentum"], cfg["weight_decay"], cfg["label_smoothing"],
            cfg["tta"]) == (11.5, 0.85, 0.0153, 0.2, 2)
    rows = list(csv.DictReader((out / T.METRICS_NAME).read_text().splitlines()))
    assert [int(r["step"]) for r in rows] == [2]
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["tta_acc"] <= 1.0 and summary["tta_level"] == 2
    weights = _weights(out)
    assert "2.norm1.bias" in weights and weights["0.weight"].shape == (24, 3, 2, 2)


def test_airbench94_resume_is_bit_exact(data_dir, tmp_path, capsys, no_plots):
    # 5 batches of 20 per epoch, 1.2 epochs = 6 steps: the lookahead updates at step 5 and
    # takes its slow weights at step 6; the stop falls between them and its checkpoint
    common = ("--recipe", "airbench94", "--batch-size", 20, "--epochs", 1.2,
              "--limit-train", 100, "--limit-test", 20, "--tta", 0)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert T.main(_args(data_dir, straight, *common)) == 0
    assert T.main(_args(data_dir, resumed, *common, "--stop-after", 3)) == 128 + signal.SIGINT
    assert T.main(_args(data_dir, resumed, "--resume")) == 0
    a, b = _weights(straight), _weights(resumed)
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k


@pytest.mark.parametrize("argv,needle", [
    (["--recipe", "airbench94", "--optimizer", "adam"], "--optimizer adam does not go with"),
    (["--recipe", "airbench94", "--no-nesterov"], "--nesterov False does not go with"),
    (["--recipe", "cifar"], "--recipe"),
])
def test_recipe_conflicts(argv, needle, capsys):
    _one_line_error(capsys, T.main(argv), needle)


def test_help_lists_the_recipes(capsys):
    assert T.main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--recipe {default,airbench94}" in text and "label_smoothing=0.2" in text


_STALLING_DOWNLOAD = r'''
import signal, sys
# Ctrl-C as at a terminal: a job started in the background (CI's, say) inherits SIGINT ignored
signal.signal(signal.SIGINT, signal.default_int_handler)
from fastconv.data import cifar
cifar.load_cifar10.__kwdefaults__["url"] = sys.argv.pop(1)
from fastconv.cli.train import main
sys.exit(main(sys.argv[1:]))
'''


@pytest.mark.parametrize("sig,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)],
                         ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_the_download_leaves_nothing(tmp_path, sig, status):
    """SIGTERM (or Ctrl-C) while fastconv-train downloads CIFAR-10: the partial download is
    removed (SIGTERM's default action killed the process, leaving it in the data folder),
    the exit status is the signal's, and the message says nothing was written."""
    import http.server
    import threading

    class Stall(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(10 ** 8))
            self.end_headers()
            try:  # (1 KiB every 50 ms: a slow download, never a stall)
                for _ in range(1200):
                    self.wfile.write(bytes(1024))
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stall)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    data, out = tmp_path / "data", tmp_path / "run"
    data.mkdir()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", _STALLING_DOWNLOAD,
             f"http://127.0.0.1:{server.server_address[1]}/cifar", "--data-dir", str(data),
             "--download", "--out", str(out), "--epochs", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        while not list(data.glob(".*.part")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(data.glob(".*.part")), "the download did not start"
        time.sleep(0.3)
        assert proc.poll() is None, proc.communicate()[0]  # (still downloading)
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=60)
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == status, output
    assert "interrupted before training began (nothing written)" in output
    assert list(data.iterdir()) == [] and "Traceback" not in output


def test_predict_refuses_what_it_would_read_wrongly():
    """Integer pixels of an unknown scale (int64 0..255 were taken as scaled: confident
    nonsense), no images, and a model with another number of classes than the names: a
    PredictError each; a bytes path is a path."""
    from fastconv import models

    model = models.get_model("simple_cnn", seed=0)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32))
    with pytest.raises(P.PredictError, match="integer images of dtype int64"):
        P.predict(pixels, model=model)
    assert len(P.predict(pixels.astype(np.uint8), model=model)) == 2
    with pytest.raises(P.PredictError, match="no images given"):
        P.predict([], model=model)
    twelve = models.get_model("simple_cnn", seed=0, num_classes=12)
    with pytest.raises(P.PredictError, match="12 class scores, and there are 10 class names"):
        P.predict(pixels.astype(np.uint8), model=twelve)
