"""Callbacks: code that :func:`fastconv.training.fit` runs at fixed points of its loop.

Order of the hooks in one fit (``epoch`` and ``batch`` are 0-based indices)::

    on_train_begin(logs)
      on_epoch_begin(epoch, logs)               # also when a resumed fit re-enters an epoch
        on_batch_begin(batch, logs)             # logs: size
          (zero_grad, forward, loss, backward)
        on_before_optimizer_step(batch, logs)   # gradients ready: allreduce, clip, inspect
          (clip_grad_norm_, optimizer.step, scheduler.step)
        on_batch_end(batch, logs)               # logs: size, batch_loss, running loss/accuracy
      (validation, a ReduceLROnPlateau's step)
      on_epoch_end(epoch, logs)                 # logs: the epoch's row of the History
    on_train_end(logs)                          # logs: the last epoch's row, or {}
    on_exception(exception)                     # instead of on_train_end when fit raises

Callbacks run in the order given, every hook of one callback before the next one's.
``self.trainer`` is the running fit (:class:`fastconv.training.Trainer`: ``model``,
``optimizer``, ``scheduler``, ``epoch``, ``batch``, ``step``, ``history``, ...).
In a distributed fit every rank runs the callbacks, with the same metrics;
``self.trainer.is_global_zero`` tells the rank that writes files (the callbacks here write on
rank 0 only).
Setting ``self.trainer.stop_training = True`` stops training after the current step (in a
batch hook; the epoch is then left unfinished and can be resumed), or after the current epoch
(in ``on_epoch_end``). A callback may add entries to ``logs`` in ``on_epoch_end``: they are
recorded in the History (the dict is the History's row). ``state_dict`` /
``load_state_dict`` carry a callback's own state through checkpoints, so that a resumed run
behaves as an uninterrupted one.
"""

from __future__ import annotations

import math
import numbers
import os
import string
from pathlib import Path
from typing import TYPE_CHECKING

from .. import checkpoint as _ckpt
from .history import csv_text

if TYPE_CHECKING:
    from .loop import Trainer

__all__ = ["Callback", "ModelCheckpoint", "EarlyStopping", "CSVLogger", "TrainForEpochs"]


class Callback:
    """Base class of callbacks: every hook does nothing; override the ones you need."""

    trainer: "Trainer | None" = None

    def set_trainer(self, trainer: "Trainer") -> None:
        """Called by fit before ``on_train_begin``: ``self.trainer`` is the running fit."""
        self.trainer = trainer

    def on_train_begin(self, logs: dict) -> None:
        """Before the first epoch (after a resume's state is loaded)."""

    def on_train_end(self, logs: dict) -> None:
        """After the last epoch, or after training stopped (``self.trainer.stop_training``)."""

    def on_epoch_begin(self, epoch: int, logs: dict) -> None:
        """Before epoch ``epoch`` (0-based) trains; ``self.trainer.batch`` > 0 when a resumed
        fit continues it from the middle."""

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        """After epoch ``epoch`` trained and validated; ``logs`` is its History row."""

    def on_batch_begin(self, batch: int, logs: dict) -> None:
        """Before training step on batch ``batch`` (0-based in the epoch); logs: ``size``."""

    def on_before_optimizer_step(self, batch: int, logs: dict) -> None:
        """After backward, before the optimiser step: every ``Parameter.grad`` holds this
        batch's gradient. Logs: ``size``, ``batch_loss``."""

    def on_batch_end(self, batch: int, logs: dict) -> None:
        """After the optimiser (and a per-step scheduler) stepped. Logs: ``size``,
        ``batch_loss``, the epoch's running ``loss`` and ``accuracy`` (classification),
        ``images_per_s``, ``grad_norm`` (with fit's ``clip_grad_norm``: the norm before
        clipping)."""

    def on_exception(self, exception: BaseException) -> None:
        """fit is being left by ``exception`` (KeyboardInterrupt included): release what the
        callback holds. The training state may be mid-step: do not save it."""

    def state_dict(self) -> dict:
        """What a checkpoint keeps of this callback (arrays and JSON-able values)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""


# --------------------------------------------------------------------------------------------
# Monitoring a metric
# --------------------------------------------------------------------------------------------

def _mode(monitor: str, mode: str, where: str) -> str:
    """"min" or "max"; "auto" is "max" for accuracies (a name with "acc") else "min"."""
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"{where}: mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        return "max" if "acc" in monitor else "min"
    return mode


def _improves(value: float, reference: float | None, mode: str, min_delta: float) -> bool:
    """Whether ``value`` beats ``reference`` by more than ``min_delta`` (NaN never does)."""
    if math.isnan(value):
        return False
    if reference is None:
        return True
    return value < reference - min_delta if mode == "min" else value > reference + min_delta


def _check_monitor_available(cb: Callback, monitor: str) -> None:
    """Refuse a ``val_`` metric before training starts when fit has no validation data."""
    if monitor.startswith("val_") and cb.trainer is not None and cb.trainer.val is None:
        raise ValueError(f"{type(cb).__name__}: monitor {monitor!r} needs validation data: "
                         f"pass val= to fit, or monitor a training metric ('loss')")


def _monitored(cb: Callback, monitor: str, logs: dict) -> float:
    try:
        return float(logs[monitor])
    except KeyError:
        raise ValueError(f"{type(cb).__name__}: monitor {monitor!r} is not among the epoch's "
                         f"metrics {sorted(logs)}") from None


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------

class ModelCheckpoint(Callback):
    """Save the whole training state after every epoch, atomically, for a bit-exact resume.

    ::

        fit(model, train, 10, optimizer=opt, callbacks=[ModelCheckpoint("run.npz")])
        # after a crash or an interruption, the same call with resume= continues it:
        fit(model, train, 10, optimizer=opt, callbacks=[ModelCheckpoint("run.npz")],
            resume="run.npz")

    The file (:func:`fastconv.checkpoint.save_checkpoint`: an ``.npz`` with no pickle, written
    to a temporary file and renamed, so a crash never leaves a half-written one) holds the
    model's parameters and buffers, the optimiser's state, the scheduler's position, the
    state of every random generator in the model (dropout), the loader's seed, the position
    in the run (epoch, batch, step), the running sums of an unfinished epoch, the History and
    the callbacks' states (:meth:`fastconv.training.Trainer.state_dict`). When training
    stops in the middle of an epoch (a callback set ``stop_training``), the state at that
    step is saved too.

    Args:
        filepath: where to write; may hold ``{epoch}`` (with a format spec, e.g.
            ``"ckpt-{epoch:03d}.npz"``) to keep one file per epoch.
        monitor, mode: the metric that defines "best" for ``save_best_only`` (mode "auto":
            highest for accuracies, lowest otherwise).
        save_best_only: write only after an epoch that improves ``monitor``.
        save_weights_only: write only the model's parameters and buffers
            (:func:`fastconv.checkpoint.save_weights`, loadable by ``load_state_dict`` and
            ``fastconv-predict``), not the training state.
        metadata: JSON-able values stored with the state under ``"metadata"`` (with the
            weights, for ``save_weights_only``), e.g. the model's name and class names.
    """

    def __init__(self, filepath: str | os.PathLike, *, monitor: str = "val_loss",
                 mode: str = "auto", save_best_only: bool = False,
                 save_weights_only: bool = False, metadata: dict | None = None) -> None:
        text = os.fspath(filepath)
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
        except ValueError as e:
            raise ValueError(f"ModelCheckpoint: bad filepath template {text!r} ({e})") from None
        if fields - {"epoch"}:
            raise ValueError(f"ModelCheckpoint: filepath may only hold the field {{epoch}}, got "
                             f"{sorted(fields - {'epoch'})} in {text!r}")
        if metadata is not None and not isinstance(metadata, dict):
            raise TypeError(f"ModelCheckpoint: metadata must be a dict, got "
                            f"{type(metadata).__name__}")
        self.filepath = text
        self.monitor = monitor
        self.mode = _mode(monitor, mode, "ModelCheckpoint")
        self.save_best_only = bool(save_best_only)
        self.save_weights_only = bool(save_weights_only)
        self.metadata = dict(metadata or {})
        self.best: float | None = None
        self.last_path: Path | None = None
        """The file written last (None before the first save)."""
        self._saved_at: tuple[int, int] | None = None

    def on_train_begin(self, logs: dict) -> None:
        if self.save_best_only:
            _check_monitor_available(self, self.monitor)
        self._saved_at = None

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        if self.save_best_only:
            value = _monitored(self, self.monitor, logs)
            if not _improves(value, self.best, self.mode, 0.0):
                return
            self.best = value
        self._save(int(logs["epoch"]))

    def on_train_end(self, logs: dict) -> None:
        # a stop in the middle of an epoch: keep that step's state (resumable)
        if not (self.save_best_only or self.save_weights_only) \
                and self._saved_at != self.trainer.position:
            self._save(self.trainer.epoch + (1 if self.trainer.batch else 0))

    def _save(self, epoch_number: int) -> None:
        path = Path(self.filepath.format(epoch=epoch_number))
        model = self.trainer.model
        if not self.trainer.is_global_zero:  # (a distributed fit: rank 0 writes)
            self._saved_at = self.trainer.position
            return
        path.parent.mkdir(parents=True, exist_ok=True)   # (as Keras: the run's folder)
        if self.save_weights_only:
            _ckpt.save_weights(path, model.state_dict(), metadata=self.metadata)
        else:
            state = self.trainer.state_dict()
            state["metadata"] = self.metadata
            _ckpt.save_checkpoint(path, state)
        self.last_path = path
        self._saved_at = self.trainer.position

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best")


# --------------------------------------------------------------------------------------------
# Early stopping
# --------------------------------------------------------------------------------------------

class EarlyStopping(Callback):
    """Stop training when ``monitor`` has not improved for ``patience`` epochs (as Keras').

    An epoch improves when its value beats the best so far by more than ``min_delta`` (lower
    for mode "min", higher for "max"; "auto" means "max" for accuracies, "min" otherwise).
    After ``patience`` epochs in a row without improvement, training stops at the end of
    that epoch (never after the first). With ``baseline``, an epoch counts as an improvement
    only when it also beats the baseline (unlike Keras, which never stops while the metric
    improves, baseline or not). With ``restore_best_weights``, the model's parameters and
    buffers of the best epoch are put back when training ends (not when it is interrupted in
    the middle of an epoch, which keeps the run resumable). ``best``, ``best_epoch`` (1-based) and ``stopped_epoch``
    (0 when it did not stop) tell what happened.
    """

    def __init__(self, monitor: str = "val_loss", *, patience: int = 0, mode: str = "auto",
                 min_delta: float = 0.0, baseline: float | None = None,
                 restore_best_weights: bool = False) -> None:
        if isinstance(patience, bool) or not isinstance(patience, numbers.Integral) \
                or patience < 0:
            raise ValueError(f"EarlyStopping: patience must be an int >= 0, got {patience!r}")
        if isinstance(min_delta, bool) or not (isinstance(min_delta, numbers.Real)
                                               and min_delta >= 0):
            raise ValueError(f"EarlyStopping: min_delta must be a number >= 0, got "
                             f"{min_delta!r}")
        self.monitor = monitor
        self.patience = int(patience)
        self.mode = _mode(monitor, mode, "EarlyStopping")
        self.min_delta = float(min_delta)
        self.baseline = None if baseline is None else float(baseline)
        self.restore_best_weights = bool(restore_best_weights)
        self.best: float | None = None
        self.best_epoch = 0
        self.stopped_epoch = 0
        self.wait = 0
        self.best_weights: dict | None = None

    def on_train_begin(self, logs: dict) -> None:
        _check_monitor_available(self, self.monitor)

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        value = _monitored(self, self.monitor, logs)
        self.wait += 1
        if _improves(value, self.best, self.mode, self.min_delta):
            self.best = value
            self.best_epoch = int(logs["epoch"])
            if self.restore_best_weights:
                self.best_weights = dict(self.trainer.model.state_dict())
            if self.baseline is None or _improves(value, self.baseline, self.mode, 0.0):
                self.wait = 0
                return
        # (never after the first epoch, as Keras)
        if self.wait >= self.patience and int(logs["epoch"]) > 1:
            self.stopped_epoch = int(logs["epoch"])
            self.trainer.stop_training = True

    def on_train_end(self, logs: dict) -> None:
        if self.restore_best_weights and self.best_weights is not None \
                and self.trainer.batch == 0:
            self.trainer.model.load_state_dict(self.best_weights)

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                "stopped_epoch": self.stopped_epoch, "best_weights": self.best_weights}

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best")
        self.best_epoch = int(state.get("best_epoch", 0))
        self.wait = int(state.get("wait", 0))
        self.stopped_epoch = int(state.get("stopped_epoch", 0))
        self.best_weights = state.get("best_weights")


# --------------------------------------------------------------------------------------------
# CSV log
# --------------------------------------------------------------------------------------------

class CSVLogger(Callback):
    """Write the History to a CSV file after every epoch (and when training ends).

    The whole file is rewritten atomically each time from the fit's History, so it always
    holds one row per completed epoch, those before a resume included, and never a torn line.
    Columns: every metric in order of first appearance (``epoch``, ``step``, ``loss``, ...);
    floats are written exactly (shortest round-tripping text).
    """

    def __init__(self, filename: str | os.PathLike, separator: str = ",") -> None:
        if not isinstance(separator, str) or len(separator) != 1:
            raise ValueError(f"CSVLogger: separator must be one character, got {separator!r}")
        self.filename = Path(filename)
        self.separator = separator

    def _write(self) -> None:
        if not self.trainer.is_global_zero:  # (a distributed fit: rank 0 writes)
            return
        text = csv_text(self.trainer.history.rows, separator=self.separator)
        self.filename.parent.mkdir(parents=True, exist_ok=True)   # (as ModelCheckpoint)
        with _ckpt.atomic_write(self.filename) as f:
            f.write(text.encode("utf-8"))

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        self._write()

    def on_train_end(self, logs: dict) -> None:
        if len(self.trainer.history):
            self._write()


# --------------------------------------------------------------------------------------------
# Parameters trained for the first epochs only
# --------------------------------------------------------------------------------------------

class TrainForEpochs(Callback):
    """Train ``parameters`` during the first ``epochs`` epochs only, then freeze them
    (``requires_grad = False``: no gradient, no optimiser update, as PyTorch skips a
    parameter without a gradient). airbench trains its whitening conv's bias so, for 3 epochs::

        fit(model, train, 10, optimizer=opt, callbacks=[TrainForEpochs([model[0].bias], 3)])

    The flag is set before every epoch from its index alone, so a resumed run agrees.
    """

    def __init__(self, parameters, epochs: int) -> None:
        self.parameters = list(parameters)
        if not all(hasattr(p, "requires_grad") and hasattr(p, "data") for p in self.parameters):
            raise TypeError("TrainForEpochs: parameters must be fastconv.nn.Parameter objects")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"TrainForEpochs: epochs must be an int >= 0, got {epochs!r}")
        self.epochs = epochs

    def on_epoch_begin(self, epoch: int, logs: dict) -> None:
        for p in self.parameters:
            p.requires_grad = epoch < self.epochs
