"""Callbacks of fastconv.training.fit: the hooks' order and logs, stopping, EarlyStopping,
ModelCheckpoint with a bit-exact resume (also across thread counts), CSVLogger, progress."""

from __future__ import annotations

import csv
import errno
import sys

import numpy as np
import pytest

from fastconv import checkpoint as C
from fastconv import data as D
from fastconv import nn, optim
from fastconv.training import (Callback, CSVLogger, EarlyStopping, ModelCheckpoint, fit,
                               progress as progress_module)
from fastconv.training.state import ResumeError
from test_training import N_CLASSES, make_data, make_model, weights_bytes


class Recorder(Callback):
    """Records every hook call with its arguments and a copy of its logs."""

    def __init__(self):
        self.calls = []

    def _record(self, name, *args):
        self.calls.append((name,) + tuple(a if not isinstance(a, dict) else dict(a)
                                          for a in args))

    def on_train_begin(self, logs):
        self._record("train_begin", logs)

    def on_train_end(self, logs):
        self._record("train_end", logs)

    def on_epoch_begin(self, epoch, logs):
        self._record("epoch_begin", epoch, logs)

    def on_epoch_end(self, epoch, logs):
        self._record("epoch_end", epoch, logs)

    def on_batch_begin(self, batch, logs):
        self._record("batch_begin", batch, logs)

    def on_before_optimizer_step(self, batch, logs):
        self._record("before_step", batch, logs)

    def on_batch_end(self, batch, logs):
        self._record("batch_end", batch, logs)

    def on_exception(self, exception):
        self._record("exception", exception)


def _names(calls):
    return [c[0] if c[0].startswith("train") else (c[0], c[1]) for c in calls]


def test_hooks_run_in_order_with_their_logs():
    x, y = make_data(24)
    rec = Recorder()
    h = fit(make_model(), (x, y), 2, val=(x, y), batch_size=8, callbacks=[rec], progress=False)
    per_epoch = lambda e: [("epoch_begin", e)] + [
        (hook, b) for b in range(3) for hook in ("batch_begin", "before_step", "batch_end")] \
        + [("epoch_end", e)]
    assert _names(rec.calls) == ["train_begin", *per_epoch(0), *per_epoch(1), "train_end"]
    begin = next(c for c in rec.calls if c[0] == "batch_begin")
    assert begin[2] == {"size": 8}
    before = next(c for c in rec.calls if c[0] == "before_step")
    assert set(before[2]) == {"size", "batch_loss"}
    end = next(c for c in rec.calls if c[0] == "batch_end")
    assert set(end[2]) == {"size", "batch_loss", "loss", "accuracy", "images_per_s"}
    assert end[2]["loss"] == end[2]["batch_loss"]             # first batch: running == batch
    epoch_ends = [c[2] for c in rec.calls if c[0] == "epoch_end"]
    assert epoch_ends == h.rows
    assert rec.calls[-1] == ("train_end", h.rows[-1])


def test_hooks_see_the_trainer_at_each_point():
    x, y = make_data(24)

    class Probe(Callback):
        def __init__(self):
            self.seen = []

        def on_batch_begin(self, batch, logs):
            t = self.trainer
            self.w = t.model[0].weight.data.copy()
            self.seen.append(("begin", t.epoch, t.batch, t.step))

        def on_before_optimizer_step(self, batch, logs):
            t = self.trainer
            p = t.model[0].weight
            # gradients are ready, the weights not yet updated
            assert np.any(p.grad != 0) and np.array_equal(p.data, self.w)

        def on_batch_end(self, batch, logs):
            t = self.trainer
            assert not np.array_equal(t.model[0].weight.data, self.w)
            self.seen.append(("end", t.epoch, t.batch, t.step))

        def on_epoch_end(self, epoch, logs):
            t = self.trainer
            self.seen.append(("epoch_end", t.epoch, t.batch, t.step, len(t.history)))

    probe = Probe()
    fit(make_model(), (x, y), 2, optimizer=None, batch_size=12, callbacks=[probe],
        progress=False)
    assert probe.seen == [("begin", 0, 0, 0), ("end", 0, 1, 1), ("begin", 0, 1, 1),
                          ("end", 0, 2, 2), ("epoch_end", 1, 0, 2, 1),
                          ("begin", 1, 0, 2), ("end", 1, 1, 3), ("begin", 1, 1, 3),
                          ("end", 1, 2, 4), ("epoch_end", 2, 0, 4, 2)]


class StopAt(Callback):
    """Sets stop_training after `steps` optimiser steps of this fit, or at an epoch's end."""

    def __init__(self, steps=None, epoch=None):
        self.steps, self.epoch, self.count = steps, epoch, 0

    def on_batch_end(self, batch, logs):
        self.count += 1
        if self.steps is not None and self.count >= self.steps:
            self.trainer.stop_training = True

    def on_epoch_end(self, epoch, logs):
        if self.epoch is not None and epoch + 1 >= self.epoch:
            self.trainer.stop_training = True


def test_stop_in_a_batch_leaves_the_epoch_unfinished():
    x, y = make_data(24)
    rec = Recorder()
    stop = StopAt(steps=2)
    h = fit(make_model(), (x, y), 3, batch_size=8, callbacks=[stop, rec], progress=False)
    assert len(h) == 0 and stop.trainer.position == (0, 2) and stop.trainer.step == 2
    assert _names(rec.calls)[-1] == "train_end" and rec.calls[-1][1] == {}
    assert not any(c[0] == "epoch_end" for c in rec.calls)


def test_stop_at_an_epoch_end():
    x, y = make_data(24)
    h = fit(make_model(), (x, y), 5, batch_size=8, callbacks=[StopAt(epoch=2)], progress=False)
    assert h.epoch == [1, 2]


def test_a_callback_can_add_metrics_to_the_history(tmp_path):
    x, y = make_data(24)

    class Extra(Callback):
        def on_epoch_end(self, epoch, logs):
            logs["double_loss"] = 2 * logs["loss"]

    h = fit(make_model(), (x, y), 2, batch_size=8, progress=False,
            callbacks=[CSVLogger(tmp_path / "log.csv"), Extra()])
    assert [r["double_loss"] for r in h] == [2 * r["loss"] for r in h]
    with open(tmp_path / "log.csv", newline="") as f:    # rewritten at the end: complete
        rows = list(csv.DictReader(f))
    assert [float(r["double_loss"]) for r in rows] == h.history["double_loss"]


def test_an_exception_reaches_on_exception_not_on_train_end():
    x, y = make_data(24)

    class Boom(Callback):
        def on_batch_end(self, batch, logs):
            if self.trainer.step == 2:
                raise RuntimeError("boom")

    rec = Recorder()
    model = make_model()
    model.eval()
    with pytest.raises(RuntimeError, match="boom"):
        fit(model, (x, y), 2, batch_size=8, callbacks=[rec, Boom()], progress=False)
    assert rec.calls[-1][0] == "exception" and isinstance(rec.calls[-1][1], RuntimeError)
    assert not any(c[0] == "train_end" for c in rec.calls)
    assert not model.training                                  # modes restored


# --------------------------------------------------------------------------------------------
# EarlyStopping
# --------------------------------------------------------------------------------------------

class Scripted(Callback):
    """Writes logs["score"] from a list, and keeps the weights of every epoch."""

    def __init__(self, scores):
        self.scores = scores
        self.weights = []

    def on_epoch_end(self, epoch, logs):
        logs["score"] = self.scores[epoch]
        self.weights.append(weights_bytes(self.trainer.model))


@pytest.mark.parametrize("scores,kwargs,stopped,best_epoch", [
    ([1.0, 0.5, 0.6, 0.7, 0.4, 0.3], dict(patience=2), 4, 2),
    ([1.0, 0.5, 0.6, 0.7, 0.4, 0.3], dict(patience=0), 3, 2),
    ([1.0, 0.5, 0.45, 0.44, 0.2, 0.1], dict(patience=1, min_delta=0.02), 4, 3),
    ([0.1, 0.2, 0.2, 0.3, 0.25, 0.2], dict(patience=1, mode="max"), 3, 2),
    # neither 1.0 nor 0.9 beats the baseline: two epochs without improvement
    ([1.0, 0.9, 0.8, 0.7, 0.6, 0.5], dict(patience=2, baseline=0.75), 2, 2),
    ([1.0, 0.9, 0.8, 0.7, 0.6, 0.5], dict(patience=4, baseline=0.75), 0, 6),
    ([1.0, 0.9, 0.8, 0.7, 0.6, 0.5], dict(patience=1), 0, 6),
])
def test_early_stopping(scores, kwargs, stopped, best_epoch):
    x, y = make_data(16)
    es = EarlyStopping("score", restore_best_weights=True, **kwargs)
    script = Scripted(scores)
    model = make_model()
    h = fit(model, (x, y), 6, batch_size=8, callbacks=[script, es], progress=False)
    assert es.stopped_epoch == stopped and len(h) == (stopped or 6)
    assert es.best_epoch == best_epoch and es.best == scores[best_epoch - 1]
    assert weights_bytes(model) == script.weights[best_epoch - 1]      # restored


def test_early_stopping_on_accuracy_is_maximised_and_needs_its_metric():
    assert EarlyStopping("val_accuracy").mode == "max"
    assert EarlyStopping("val_loss").mode == "min"
    x, y = make_data(16)
    model = make_model()
    with pytest.raises(ValueError, match="needs validation data: pass val="):
        fit(model, (x, y), 2, callbacks=[EarlyStopping()], progress=False)
    with pytest.raises(ValueError, match=r"monitor 'acc' is not among the epoch's metrics "
                                         r"\['accuracy'"):
        fit(model, (x, y), 2, callbacks=[EarlyStopping("acc")], progress=False)
    for bad in (dict(patience=-1), dict(patience=1.5), dict(mode="up"), dict(min_delta=-1)):
        with pytest.raises(ValueError):
            EarlyStopping(**bad)


# --------------------------------------------------------------------------------------------
# ModelCheckpoint and resume
# --------------------------------------------------------------------------------------------

def _dropout_model(seed=0):
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, rng=seed), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.3, rng=seed + 1),
                         nn.Linear(64, N_CLASSES, rng=seed + 2))


def _run(path, epochs, *, stop=None, resume=None, threads=None, set_threads=None):
    """A fit with everything that has state: dropout, batch norm, momentum, a one-cycle
    schedule, an augmenting loader, early stopping; returns (model, optimizer, history, es)."""
    x, y = make_data(60)
    images = np.clip(x * 40 + 128, 0, 255).astype(np.uint8)
    xv, yv = make_data(20, seed=2)
    if set_threads is not None:
        set_threads(threads)
    model = _dropout_model()
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    train = D.DataLoader(images, y, 16, shuffle=True, augment=True, pad=1, seed=3,
                         mean=(0.5,) * 3, std=(0.25,) * 3)
    sched = optim.OneCycleLR(opt, max_lr=0.05, total_steps=epochs * len(train))
    es = EarlyStopping("val_loss", patience=10, restore_best_weights=True)
    callbacks = [es, ModelCheckpoint(path, metadata={"name": "test"})]
    if stop is not None:
        callbacks.append(stop)
    h = fit(model, train, epochs, optimizer=opt, scheduler=sched, val=(xv, yv),
            callbacks=callbacks, progress=False, resume=resume)
    return model, opt, h, es


def _same_run(a, b):
    (ma, oa, ha, ea), (mb, ob, hb, eb) = a, b
    assert weights_bytes(ma) == weights_bytes(mb)
    sa, sb = oa.state_dict(), ob.state_dict()
    for i, st in sa["state"].items():
        for name, v in st.items():
            assert np.asarray(v).tobytes() == np.asarray(sb["state"][i][name]).tobytes()
    timing = ("seconds", "images_per_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in ha] == \
        [{k: v for k, v in r.items() if k not in timing} for r in hb]
    assert (ea.best, ea.best_epoch, ea.wait) == (eb.best, eb.best_epoch, eb.wait)
    assert ma[5].rng.bit_generator.state == mb[5].rng.bit_generator.state


def test_checkpoint_resume_is_bit_exact_across_interruptions_and_threads(tmp_path, threads):
    # 60 images / 16 -> 4 batches per epoch, 3 epochs
    straight = _run(tmp_path / "a.npz", 3, threads=1, set_threads=threads)
    path = tmp_path / "b.npz"
    first = _run(path, 3, stop=StopAt(steps=2), threads=2, set_threads=threads)
    assert len(first[2]) == 0
    state = C.load_checkpoint(path)
    assert state["position"] == {"epoch": 0, "batch": 2, "step": 2, "batches_per_epoch": 4}
    assert state["metadata"] == {"name": "test"} and sorted(state["generators"]) == ["5.rng"]
    assert set(state["callbacks"]) == {"EarlyStopping", "ModelCheckpoint", "StopAt"}
    # to the end of epoch 1's training (before its validation), then mid-epoch 3, then the end
    second = _run(path, 3, stop=StopAt(steps=2), resume=path, threads=1, set_threads=threads)
    assert C.load_checkpoint(path)["position"]["batch"] == 4 and len(second[2]) == 0
    third = _run(path, 3, stop=StopAt(steps=5), resume=C.load_checkpoint(path), threads=2,
                 set_threads=threads)
    assert third[2].epoch == [1, 2]
    resumed = _run(path, 3, resume=path, threads=1, set_threads=threads)
    _same_run(straight, resumed)
    assert resumed[2].epoch == [1, 2, 3]
    # a finished run resumed trains nothing more
    again = _run(path, 3, resume=path)
    assert weights_bytes(again[0]) == weights_bytes(resumed[0])


def test_checkpoint_files_per_epoch_best_only_and_weights_only(tmp_path):
    x, y = make_data(16)
    script = Scripted([1.0, 0.5, 0.7, 0.4])
    per_epoch = ModelCheckpoint(tmp_path / "ep{epoch:02d}.npz")
    best = ModelCheckpoint(tmp_path / "best.npz", monitor="score", save_best_only=True)
    weights = ModelCheckpoint(tmp_path / "w.npz", save_weights_only=True,
                              metadata={"model": "tiny"})
    model = make_model()
    fit(model, (x, y), 4, batch_size=8, callbacks=[script, per_epoch, best, weights],
        progress=False)
    assert sorted(p.name for p in tmp_path.glob("ep*.npz")) == [f"ep0{i}.npz" for i in
                                                               range(1, 5)]
    assert C.load_checkpoint(tmp_path / "ep02.npz")["position"]["epoch"] == 2
    state = C.load_checkpoint(tmp_path / "best.npz")
    assert state["position"]["epoch"] == 4 and best.best == 0.4
    assert state["callbacks"]["ModelCheckpoint#2"] == {"best": 0.4}
    assert C.file_kind(tmp_path / "w.npz") == "weights"
    assert C.load_weights_metadata(tmp_path / "w.npz") == {"model": "tiny"}
    w = C.load_weights(tmp_path / "w.npz")
    assert {k: v.tobytes() for k, v in w.items()} == weights_bytes(model)
    assert not list(tmp_path.glob(".*.tmp"))


def test_checkpoint_of_a_mid_epoch_stop_only_when_saving_the_state(tmp_path):
    x, y = make_data(24)
    best = ModelCheckpoint(tmp_path / "best.npz", monitor="loss", save_best_only=True)
    fit(make_model(), (x, y), 2, batch_size=8, callbacks=[best, StopAt(steps=2)],
        progress=False)
    assert not (tmp_path / "best.npz").exists()


@pytest.mark.parametrize("bad,error,match", [
    (dict(filepath="ck-{loss}.npz"), ValueError, r"only hold the field \{epoch\}"),
    (dict(filepath="ck-{epoch.npz"), ValueError, "bad filepath template"),
    (dict(filepath="ck.npz", metadata=[1]), TypeError, "metadata must be a dict"),
    (dict(filepath="ck.npz", mode="lowest"), ValueError, "mode"),
])
def test_model_checkpoint_bad_arguments(bad, error, match):
    with pytest.raises(error, match=match):
        ModelCheckpoint(**bad)


def test_resume_refuses_a_state_of_another_run(tmp_path):
    x, y = make_data(24)
    path = tmp_path / "ck.npz"
    fit(make_model(), (x, y), 1, batch_size=8, callbacks=[ModelCheckpoint(path)],
        progress=False)
    other = nn.Sequential(nn.Flatten(), nn.Linear(192, N_CLASSES, rng=0))
    with pytest.raises(ResumeError, match="does not fit this model"):
        fit(other, (x, y), 2, batch_size=8, resume=path, progress=False)
    with pytest.raises(ResumeError, match="3 batches per epoch, this train data has 2"):
        fit(make_model(), (x, y), 2, batch_size=12, resume=path, progress=False)
    model = make_model()
    opt = optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ResumeError, match="had no scheduler"):
        fit(model, (x, y), 2, optimizer=opt, scheduler=optim.StepLR(opt, 1), batch_size=8,
            resume=path, progress=False)
    with pytest.raises(ResumeError, match="random generators"):
        fit(_dropout_model(), (x, y), 2, batch_size=8, resume=path, progress=False)
    C.save_weights(tmp_path / "w.npz", make_model().state_dict())
    with pytest.raises(C.CheckpointError, match="not a fastconv checkpoint"):
        fit(make_model(), (x, y), 2, batch_size=8, resume=tmp_path / "w.npz", progress=False)
    with pytest.raises(ResumeError, match="not a fit state"):
        fit(make_model(), (x, y), 2, batch_size=8, resume={"model": {}}, progress=False)


@pytest.mark.parametrize("scheduled", [False, True])
def test_resume_with_another_optimiser_fails_and_leaves_the_model_as_it_was(tmp_path, scheduled):
    """A state that fits the model but not the optimiser (SGD's momentum buffers given to
    Adam): a ResumeError naming the cause, and the model, optimiser and scheduler untouched."""
    x, y = make_data(24)
    path = tmp_path / "ck.npz"
    model = make_model()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = optim.StepLR(opt, 1) if scheduled else None
    fit(model, (x, y), 1, optimizer=opt, scheduler=sched, batch_size=8,
        callbacks=[ModelCheckpoint(path)], progress=False)
    other = make_model(seed=1)
    for p in other.parameters():
        p.data += 1.0  # weights no checkpoint holds
    before = {k: np.array(v, copy=True) for k, v in other.state_dict().items()}
    adam = optim.Adam(other.parameters(), lr=1e-3)
    adam_sched = optim.StepLR(adam, 1) if scheduled else None
    with pytest.raises(ResumeError, match="does not fit this one.*'momentum_buffer'.*Adam"):
        fit(other, (x, y), 2, optimizer=adam, scheduler=adam_sched, batch_size=8, resume=path,
            progress=False)
    after = other.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert adam.state == {} and "nesterov" not in adam.param_groups[0]
    if scheduled:
        assert adam_sched.last_epoch == 0


def test_resume_of_a_missing_file_names_the_argument_and_the_path(tmp_path, monkeypatch):
    # fit(..., resume="nothere.npz") said only "[Errno 2] No such file or directory:
    # 'nothere.npz'", from deep in the checkpoint reader
    x, y = make_data(24)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        fit(make_model(), (x, y), 1, batch_size=8, resume="nothere.npz", progress=False)
    assert str(e.value) == (f"[Errno 2] fit: resume: no such checkpoint file (the files "
                            f"ModelCheckpoint writes, relative to {tmp_path}): 'nothere.npz'")
    assert e.value.filename == "nothere.npz" and e.value.errno == errno.ENOENT
    missing = tmp_path / "runs" / "ck.npz"
    with pytest.raises(FileNotFoundError, match=r"fit: resume: no such checkpoint file \(the "
                                                r"files ModelCheckpoint writes\): '.*ck\.npz'$"):
        fit(make_model(), (x, y), 1, batch_size=8, resume=missing, progress=False)


# --------------------------------------------------------------------------------------------
# CSVLogger
# --------------------------------------------------------------------------------------------

def test_csv_logger_writes_every_epoch_exactly(tmp_path):
    x, y = make_data(24)
    log = tmp_path / "log.csv"
    h = fit(make_model(), (x, y), 2, val=(x, y), batch_size=8, progress=False,
            callbacks=[CSVLogger(log, separator=";"), ModelCheckpoint(tmp_path / "ck.npz"),
                       StopAt(epoch=1)])
    with open(log, newline="") as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    assert list(rows[0]) == list(h.rows[0]) and len(rows) == 1
    assert float(rows[0]["val_loss"]) == h.rows[0]["val_loss"]          # exact text
    # a resumed run's log holds the epochs before the interruption too
    h2 = fit(make_model(), (x, y), 3, val=(x, y), batch_size=8, progress=False,
             callbacks=[CSVLogger(log, separator=";"), ModelCheckpoint(tmp_path / "ck.npz")],
             resume=tmp_path / "ck.npz")
    with open(log, newline="") as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] == h2.epoch
    with pytest.raises(ValueError, match="separator"):
        CSVLogger(log, separator=";;")


# --------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------

def test_progress_bar_with_tqdm(capsys):
    pytest.importorskip("tqdm")
    x, y = make_data(24)
    fit(make_model(), (x, y), 2, val=(x, y), batch_size=8)
    out, err = capsys.readouterr()
    assert out == ""
    assert "epoch 1/2" in err and "epoch 2/2" in err and "val_accuracy" in err
    assert "pip install tqdm" not in err


def test_progress_lines_and_one_hint_without_tqdm(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)        # import fails as if absent
    monkeypatch.setattr(progress_module, "_hinted", False)
    x, y = make_data(24)
    fit(make_model(), (x, y), 2, val=(x, y), batch_size=8)
    fit(make_model(), (x, y), 1, batch_size=8)
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 3 and lines[0].startswith("epoch 1/2  loss ")
    assert "val_accuracy" in lines[1] and "img/s" in lines[2]
    assert err.count("pip install tqdm") == 1


def test_progress_false_is_silent(capsys):
    x, y = make_data(24)
    fit(make_model(), (x, y), 2, val=(x, y), batch_size=8, progress=False)
    assert capsys.readouterr() == ("", "")
