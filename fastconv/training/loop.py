"""fit / evaluate / predict: the one training loop of fastconv, and the evaluation loop.

A training step is::

    model.zero_grad()
    output = model.forward(x)
    loss_value = loss.forward(output, y)
    model.backward(loss.backward(), input_grad=False)
    (callbacks: on_before_optimizer_step)
    clip_grad_norm_(model.parameters(), clip_grad_norm)     # with clip_grad_norm
    optimizer.step()
    scheduler.step()          # every step, or once per epoch with scheduler_interval="epoch"

exactly what a hand-written loop does, so the two give the same weights bit for bit. A
ReduceLROnPlateau scheduler is stepped once per epoch instead, after validation, with the
monitored metric (``scheduler.step(val_loss)``).

With ``distributed`` (:mod:`fastconv.training.distributed`), every rank runs this loop on its
share of each batch: the model's backward averages the gradients over the ranks, the step's
loss and accuracy are summed over them, and stopping (a callback, a signal) is agreed by all
ranks after each step and epoch, so they always take the same steps.
"""

from __future__ import annotations

import errno
import math
import numbers
import os
import time
from collections.abc import Iterable
from typing import Any, Sequence

import numpy as np

from .. import memory, optim
from ..data import DataLoader
from ..nn.utils import clip_grad_norm_
from . import inputs, state as _state
from .callbacks import Callback
from .history import History
from .progress import ProgressBar

__all__ = ["fit", "evaluate", "predict", "Trainer"]


def _modes(model) -> list:
    """Every module's training flag, to put back with :func:`_restore_modes`."""
    return [(m, m.training) for m in model.modules()]


def _restore_modes(modes: list) -> None:
    # pre-order: a parent's train() sets its children, which then get their own flag back
    for m, flag in modes:
        m.train(flag)


def _is_classification(output: np.ndarray, y: np.ndarray) -> bool:
    return output.ndim == 2 and y.ndim == 1 and y.dtype.kind in "iu"


def _loss_sum(loss_fn: Any, value: float, n: int) -> float:
    """The batch's summed loss: ``value`` for a loss with ``reduction="sum"``, else value * n."""
    return value if getattr(loss_fn, "reduction", "mean") == "sum" else value * n


def _evaluation(model, loader: DataLoader, loss_fn: Any, should_stop=None, parallel=None,
                what: str = "evaluate: data"
                ) -> tuple[dict[str, float], np.ndarray | None] | None:
    """Loss (and accuracy, for classification) over ``loader`` in eval mode, and the predicted
    classes (None unless classification); None when ``should_stop()`` turned true. The loader's
    position and the model's modes are put back afterwards. With ``parallel`` (a distributed
    fit), ``loader`` is this rank's share and the results are those of the whole loader."""
    modes = _modes(model)
    position = loader.state_dict()
    model.eval()
    loader.set_epoch(0)
    total, correct, seen = 0.0, 0, 0
    preds: list[np.ndarray] = []
    classification = True
    batches = iter(loader)
    try:
        for xb, yb in batches:
            if len(yb) == 0:  # (a rank's share of a batch smaller than the ranks)
                preds.append(np.empty(0, np.int64))
                continue
            out = model.forward(xb)
            if seen == 0:
                inputs.check_label_range(loader.labels, out, loss_fn, what)
            total += _loss_sum(loss_fn, loss_fn.forward(out, yb), len(yb))
            seen += len(yb)
            if classification and _is_classification(out, yb):
                p = np.argmax(out, axis=1)
                preds.append(p)
                correct += int(np.count_nonzero(p == yb))
            else:
                classification = False
            if should_stop is not None and should_stop():
                return None
    finally:
        batches.close()
        loader.load_state_dict(position)
        _restore_modes(modes)
    if parallel is not None:
        total, correct, seen, classification, preds = parallel.gather_evaluation(
            total, correct, seen, classification, preds)
    metrics = {"loss": total / seen}
    if classification:
        metrics["accuracy"] = correct / seen
    return metrics, (np.concatenate(preds) if classification else None)


class Trainer:
    """One run of :func:`fit`: its pieces, its position and its loop (``fit`` makes one and
    runs it). Callbacks see it as ``self.trainer``.

    Read: ``model``, ``optimizer``, ``scheduler``, ``scheduler_interval``,
    ``scheduler_monitor`` (the metric a ReduceLROnPlateau scheduler steps on, else None),
    ``clip_grad_norm`` (None: no clipping), ``loss``,
    ``train`` and ``val`` (DataLoaders; ``val`` may be None), ``callbacks``, ``epochs``,
    ``max_steps`` (None: every batch of every epoch),
    ``epoch`` (0-based index of the epoch in progress = epochs completed), ``batch`` (batches
    done in it), ``step`` (optimiser steps in total), ``position`` (``(epoch, batch)``),
    ``history`` (:class:`History`), ``val_predictions`` (the classes predicted for ``val`` at
    the last validation, int64 (N,), or None). Write: ``stop_training = True`` to stop after
    the current step or epoch. :meth:`state_dict` is the resumable state
    (:mod:`fastconv.training.state`).

    In a distributed fit: ``parallel`` (:class:`fastconv.training.distributed.FitRun`, else
    None), ``rank``, ``world_size``, ``is_global_zero`` (rank 0, the rank that writes
    files); ``train`` and ``val`` are this rank's shares of the loaders; the metrics are
    those of the whole batches, on every rank.
    """

    def __init__(self, model, train: DataLoader, epochs: int, optimizer, scheduler,
                 scheduler_interval: str, loss, val: DataLoader | None,
                 callbacks: Sequence[Callback], parallel=None,
                 max_steps: int | None = None, scheduler_monitor: str | None = None,
                 clip_grad_norm: float | None = None) -> None:
        self.parallel = parallel
        self._net = model if parallel is None else parallel.net
        self.model = model
        self.train = train
        self.epochs = epochs
        self.max_steps = max_steps
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scheduler_interval = scheduler_interval
        self.scheduler_monitor = scheduler_monitor
        self.clip_grad_norm = clip_grad_norm
        self.loss = loss
        self.val = val
        self.callbacks = list(callbacks)
        self.epoch = 0
        self.batch = 0
        self.step = 0
        self.history = History()
        self.val_predictions: np.ndarray | None = None
        self.stop_training = False
        self._labels_checked = False   # (the labels' range against the output, at step 1)
        self.load_running_sums({})

    # -- ranks ---------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        """This process's rank in a distributed fit (0 otherwise)."""
        return 0 if self.parallel is None else self.parallel.rank

    @property
    def world_size(self) -> int:
        """The number of ranks of a distributed fit (1 otherwise)."""
        return 1 if self.parallel is None else self.parallel.size

    @property
    def is_global_zero(self) -> bool:
        """Whether this process writes the run's files (rank 0, or the only process)."""
        return self.rank == 0

    def _stopping(self) -> bool:
        """``stop_training``, agreed by every rank in a distributed fit (any rank's request
        stops them all at the same step)."""
        if self.parallel is not None:
            self.stop_training = self.parallel.any(self.stop_training)
        return self.stop_training

    # -- state --------------------------------------------------------------------------
    @property
    def position(self) -> tuple[int, int]:
        """``(epoch, batch)``: the epoch in progress and the batches done in it."""
        return self.epoch, self.batch

    def running_sums(self) -> dict[str, Any]:
        """Sums over the unfinished epoch's batches so far (part of the resumable state)."""
        return {"loss_sum": self._loss_total, "correct": self._correct, "seen": self._seen,
                "seconds": self._seconds, "classification": self._classification}

    def load_running_sums(self, sums: dict[str, Any]) -> None:
        """Set the sums of :meth:`running_sums` (all zero for an empty dict)."""
        self._loss_total = float(sums.get("loss_sum", 0.0))
        self._correct = int(sums.get("correct", 0))
        self._seen = int(sums.get("seen", 0))
        self._seconds = float(sums.get("seconds", 0.0))
        self._classification = bool(sums.get("classification", True))

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run bit-exactly (see
        :mod:`fastconv.training.state`); what :class:`ModelCheckpoint` saves."""
        return _state.capture(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a state of :meth:`state_dict` (e.g. ``load_checkpoint(path)``)."""
        _state.restore(self, state)

    # -- the loop -----------------------------------------------------------------------
    def _call(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(*args)

    def run(self) -> History:
        """Train until ``epochs`` epochs are complete or a callback stops; returns the History."""
        modes = _modes(self.model)
        for cb in self.callbacks:
            cb.set_trainer(self)
        # each step's arrays reuse the previous step's memory (see fastconv.memory)
        with memory.recycling():
            return self._run(modes)

    def _run(self, modes) -> History:
        """run's loop, inside memory recycling."""
        try:
            self.model.train()
            self._call("on_train_begin", {})
            while self.epoch < self.epochs and not self._stopping() \
                    and not self._steps_done():
                if not self._epoch():
                    break
            if self.parallel is not None:  # (the model every rank returns, and rank 0 saves)
                self.parallel.sync_buffers()
            self._call("on_train_end", self.history.rows[-1] if self.history.rows else {})
        except BaseException as e:
            self._call("on_exception", e)
            raise
        finally:
            _restore_modes(modes)
        return self.history

    def _steps_done(self) -> bool:
        """Whether the run has made its ``max_steps`` optimiser steps."""
        return self.max_steps is not None and self.step >= self.max_steps

    def _epoch(self) -> bool:
        """Train the current epoch from the current batch, validate it and record it; False
        when a callback stopped before its end."""
        epoch = self.epoch
        self._call("on_epoch_begin", epoch, {})
        if self._stopping():
            return False
        n = len(self.train)
        if self.batch < n:
            self.train.set_epoch(epoch, self.batch)
            start, base = time.perf_counter(), self._seconds
            batches = iter(self.train)
            try:
                for xb, yb in batches:
                    logs = self._step(xb, yb, n)
                    self._seconds = base + time.perf_counter() - start
                    logs.update(self._running(), images_per_s=self._speed())
                    self._call("on_batch_end", self.batch - 1, logs)
                    if self._stopping():
                        return False
                    if self._steps_done():      # the last epoch ends early
                        break
            finally:
                batches.close()
        t_val = time.perf_counter()
        row: dict[str, Any] = {"epoch": epoch + 1, "step": self.step, **self._running()}
        if self.parallel is not None:
            self.parallel.sync_buffers()
        if self.val is not None:
            # (a distributed validation runs to its end: the ranks stop together afterwards)
            result = _evaluation(self.model, self.val, self.loss,
                                 (lambda: self.stop_training) if self.parallel is None else None,
                                 self.parallel, "fit: val")
            if result is None:
                return False
            metrics, self.val_predictions = result
            row.update({f"val_{k}": v for k, v in metrics.items()})
        if self.scheduler_monitor is not None:  # (ReduceLROnPlateau: once per epoch, on it)
            if self.scheduler_monitor not in row:
                raise ValueError(f"fit: scheduler_monitor {self.scheduler_monitor!r} is not "
                                 f"among the epoch's metrics {sorted(row)}")
            self.scheduler.step(row[self.scheduler_monitor])
        row["lr"] = float(self.optimizer.param_groups[0]["lr"])
        row["seconds"] = self._seconds + (time.perf_counter() - t_val)
        row["images_per_s"] = self._speed()
        self.history.append(row)
        self.epoch, self.batch = epoch + 1, 0
        self.load_running_sums({})
        self._call("on_epoch_end", epoch, row)
        return True

    def _step(self, xb: np.ndarray, yb: np.ndarray, n_batches: int) -> dict[str, Any]:
        """One optimiser step on (xb, yb) (this rank's share of the batch, in a distributed
        fit); returns the batch's logs."""
        index, par = self.batch, self.parallel
        size = len(yb) if par is None else self.train.batch_length(index)
        self._call("on_batch_begin", index, {"size": size})
        net, loss_fn = self._net, self.loss
        net.zero_grad()
        out = net.forward(xb) if par is None else par.forward(xb, index)
        if not self._labels_checked:
            inputs.check_label_range(self.train.labels, out, loss_fn, "fit: train")
            self._labels_checked = True
        value = loss_fn.forward(out, yb)
        loss_sum = _loss_sum(loss_fn, value, len(yb))
        classification = self._classification and _is_classification(out, yb)
        correct = int(np.count_nonzero(np.argmax(out, axis=1) == yb)) if classification else 0
        grad = loss_fn.backward()
        if par is None:
            net.backward(grad, input_grad=False)
        else:  # the whole batch's loss and accuracy, summed over the ranks during backward
            grad = par.scale_loss_grad(grad, loss_fn, len(yb), size)
            sums, pending = par.start_sums([loss_sum, correct])
            net.backward(grad, input_grad=False)
            pending.wait()
            loss_sum, correct = float(sums[0]), int(round(sums[1]))
            value = loss_sum if getattr(loss_fn, "reduction", "mean") == "sum" \
                else loss_sum / size
        logs: dict[str, Any] = {"size": size, "batch_loss": value}
        self._call("on_before_optimizer_step", index, logs)
        if par is None:
            if self.clip_grad_norm is not None:
                logs["grad_norm"] = float(clip_grad_norm_(self.model.parameters(),
                                                          self.clip_grad_norm))
            self.optimizer.step()
        else:  # (par.step clips: the whole gradients, or a sharded update's shares)
            norm = par.step(self.optimizer, self.clip_grad_norm)
            if norm is not None:
                logs["grad_norm"] = norm
        self.batch += 1
        self.step += 1
        if self.scheduler is not None and self.scheduler_monitor is None and (
                self.scheduler_interval == "step" or self.batch == n_batches):
            self.scheduler.step()
        self._loss_total += loss_sum
        self._seen += size
        if classification:
            self._correct += correct
        else:
            self._classification = False
        if not math.isfinite(value):
            # (inputs that are not finite are the data's fault, not the learning rate's)
            cause = "the batch's inputs hold NaN or infinite values: clean the data" \
                if not np.isfinite(xb).all() else "training diverged; lower the learning rate"
            error = FloatingPointError(
                f"fit: the loss is {value} at epoch {self.epoch + 1}, batch {index + 1} (step "
                f"{self.step}): {cause}")
            if par is not None:  # (the loss of the whole batch: every rank stops here)
                from .distributed import every_rank
                every_rank(error)
            raise error
        return logs

    def _running(self) -> dict[str, float]:
        """The epoch's mean loss (and accuracy, for classification) over its batches so far."""
        seen = max(self._seen, 1)
        out = {"loss": self._loss_total / seen}
        if self._classification:
            out["accuracy"] = self._correct / seen
        return out

    def _speed(self) -> float:
        """Training images per second in the epoch so far."""
        return self._seen / max(self._seconds, 1e-9)


def fit(model, train, epochs: int, *, optimizer=None, scheduler=None,
        scheduler_interval: str | None = None, scheduler_monitor: str | None = None,
        loss=None, val=None,
        callbacks: Sequence[Callback] = (), batch_size: int | None = None,
        val_batch_size: int | None = None, shuffle: bool | None = None,
        seed: int | None = None, progress: bool = True,
        resume: str | os.PathLike | dict | None = None, distributed=False,
        max_steps: int | None = None, clip_grad_norm: float | None = None) -> History:
    """Train ``model`` for ``epochs`` epochs on ``train``; returns the per-epoch :class:`History`.

    ::

        from fastconv import data, models, optim
        from fastconv.training import fit, EarlyStopping

        cifar = data.load_cifar10()
        train = data.DataLoader(cifar.x_train, cifar.y_train, 128, shuffle=True, augment=True)
        test = data.DataLoader(cifar.x_test, cifar.y_test, 250)
        model = models.simple_cnn(seed=0)
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
        sched = optim.OneCycleLR(opt, max_lr=0.05, total_steps=5 * len(train))
        history = fit(model, train, 5, optimizer=opt, scheduler=sched, val=test,
                      callbacks=[EarlyStopping("val_accuracy", patience=2)])
        history.history["val_accuracy"]          # one value per epoch

    The model is put in training mode for the steps and in eval mode for validation; every
    module's mode is restored when fit returns (or raises).

    Args:
        model: a :class:`fastconv.nn.Module` whose output goes into ``loss``.
        train: a :class:`fastconv.data.DataLoader`, or a pair ``(x, y)`` of arrays: x float32
            or float64 (N, ...) used as they are (uint8 images are refused: convert them with
            :func:`fastconv.data.to_float32`, or give a DataLoader, which also augments), y
            (N,) integer labels or (N, ...) targets. Arrays are batched by ``batch_size``
            (default 32), shuffled each epoch unless ``shuffle=False``, with ``seed``
            (default 0).
        epochs: the number of epochs of the whole run: a resumed fit trains the ones missing.
        optimizer: a :mod:`fastconv.optim` optimiser over ``model.parameters()``; default
            ``optim.Adam(model.parameters(), lr=1e-3)``.
        scheduler: a :mod:`fastconv.optim` schedule of ``optimizer``, stepped after every
            optimiser step (``scheduler_interval="step"``, the default: its periods are in
            steps; one epoch is ``len(train)`` steps) or once per epoch (``"epoch"``). A
            :class:`fastconv.optim.ReduceLROnPlateau` is stepped once per epoch, after
            validation, on the metric ``scheduler_monitor`` (default: ``"val_loss"`` when
            ``val`` is given, else ``"loss"``, the epoch's mean training loss): the rate
            drops after ``patience`` epochs without improvement, and the epoch's History
            ``lr`` is the rate after that step. Its ``scheduler_interval`` is ``"epoch"``
            (``"step"`` is refused).
        scheduler_monitor: for a ReduceLROnPlateau scheduler, the History metric it steps
            on: ``"val_loss"``, ``"val_accuracy"``, ``"loss"`` or ``"accuracy"`` (an
            accuracy needs the scheduler's ``mode="max"``, a loss ``mode="min"``). Refused
            with other schedulers.
        loss: a :mod:`fastconv.losses` loss; default ``CrossEntropyLoss()``. A loss with
            ``reduction = "sum"`` is logged per sample as well.
        val: validation data (as ``train``; arrays batched by ``val_batch_size``, default
            256, in order), evaluated after every epoch: ``val_loss``, ``val_accuracy``.
        callbacks: :class:`Callback` objects (:class:`ModelCheckpoint`,
            :class:`EarlyStopping`, :class:`CSVLogger`, your own), run in this order.
        progress: a tqdm bar per epoch (a plain line per epoch without tqdm); False: silent.
        resume: a checkpoint path written by :class:`ModelCheckpoint`, or the state dict of
            :meth:`Trainer.state_dict`, to continue that run bit-exactly (same model,
            optimiser, scheduler and data; the thread count may differ).
        distributed: True (or a :class:`fastconv.training.distributed.Distributed`, for
            ``sync_bn`` and the bucket size) to train data-parallel on the ranks of the MPI
            job (``mpiexec -n N python script.py``; ``pip install 'fastconv[mpi]'``): the
            train loader's batch size is the global batch, each rank trains on its share of
            every batch, gradients are averaged over the ranks (see
            :mod:`fastconv.training.distributed`). Every rank calls fit with the same
            arguments (checked: a difference is refused on every rank); rank 0 alone writes
            files (:class:`ModelCheckpoint`, :class:`CSVLogger`) and shows progress; the
            History, metrics and returned model are the same on every rank. A resume path
            is read by rank 0. An error on one rank ends every rank (MPI_Abort).

        max_steps: stop after this many optimiser steps in all: the epoch in progress then
            ends early (validated and recorded as any other). With ``epochs =
            ceil(e)`` and ``max_steps = ceil(e * len(train))`` a run lasts a fractional
            number of epochs ``e`` (airbench's 9.9).
        clip_grad_norm: clip the gradients before every optimiser step to this total L2
            norm (:func:`fastconv.nn.utils.clip_grad_norm_` over ``model.parameters()``,
            after the ``on_before_optimizer_step`` callbacks); the norm before clipping is
            in the batch logs as ``grad_norm``. None (default): no clipping. In a
            distributed fit the norm is that of the whole batch's gradient, over all ranks.

    Returns:
        :class:`History`: ``history.rows`` (a dict per epoch: epoch, step, loss, accuracy,
        val_loss, val_accuracy, lr, seconds, images_per_s) and ``history.history`` (a dict of
        lists, as Keras').

    Raises:
        TypeError, ValueError: a bad argument, named, before any training (on every rank,
            in a distributed fit).
        ImportError: ``distributed`` without mpi4py (the message says how to install it).
        FileNotFoundError: no file at the ``resume`` path (the message names ``resume``).
        fastconv.training.state.ResumeError: ``resume`` is the state of another run.
        FloatingPointError: the loss became inf or NaN (lower the learning rate).
        An exception (Ctrl-C in a notebook included) leaves the model as it was at that
        moment, possibly in the middle of a step: continue from the last checkpoint.
    """
    if distributed is False or distributed is None:
        trainer = _prepare(model, train, epochs, optimizer, scheduler, scheduler_interval, loss,
                           val, callbacks, batch_size, val_batch_size, shuffle, seed, progress,
                           None, max_steps, scheduler_monitor=scheduler_monitor,
                           clip_grad_norm=clip_grad_norm)
        if resume is not None:
            trainer.load_state_dict(_resume_state(resume))
        return trainer.run()
    from .distributed import every_rank, start_fit
    from .state import ResumeError

    par = start_fit(distributed)
    # Every rank checks its arguments, then the ranks compare outcomes and set-ups: a refusal
    # on any rank is raised on all (a rank leaving alone would leave the others waiting).
    trainer, error, facts = None, None, None
    try:
        trainer = _prepare(model, train, epochs, optimizer, scheduler, scheduler_interval,
                           loss, val, callbacks, batch_size, val_batch_size, shuffle, seed,
                           progress, par, max_steps, scheduler_monitor=scheduler_monitor,
                           clip_grad_norm=clip_grad_norm)
        par.check_batches(trainer.train)
        if resume is not None and not isinstance(resume, (str, os.PathLike, dict)):
            _resume_state(resume)  # (raises the TypeError)
        facts = par.facts(model, trainer.train, trainer.val, trainer.optimizer,
                          trainer.scheduler, trainer.scheduler_interval, epochs, trainer.loss,
                          trainer.callbacks, scheduler_monitor=trainer.scheduler_monitor,
                          clip_grad_norm=trainer.clip_grad_norm)
    except (TypeError, ValueError) as e:
        error = e
    par.agree(error, facts)
    try:
        par.attach(model, trainer.train, trainer.val, trainer.optimizer, trainer.callbacks)
        trainer.train, trainer.val, trainer._net = par.train, par.val, par.net
        if resume is not None:
            state = par.load_state(resume)
            try:
                trainer.load_state_dict(state)
            except ResumeError as e:  # (the same state and model on every rank)
                raise every_rank(e)
        return trainer.run()
    except BaseException as e:
        par.fail(e)
        raise
    finally:
        par.close()


def _resume_state(resume) -> dict:
    """fit's ``resume``: a checkpoint path read, or a state dict as it is."""
    if isinstance(resume, (str, os.PathLike)):
        resume = _load_resume(resume)
    if not isinstance(resume, dict):
        raise TypeError(f"fit: resume must be a checkpoint path or a state dict, got "
                        f"{type(resume).__name__}")
    return resume


def _prepare(model, train, epochs, optimizer, scheduler, scheduler_interval, loss, val,
             callbacks, batch_size, val_batch_size, shuffle, seed, progress,
             parallel, max_steps=None, *, scheduler_monitor=None,
             clip_grad_norm=None) -> Trainer:
    """fit's arguments checked and made into a Trainer (see fit)."""
    where = "fit"
    inputs.check_model(model, where)
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"fit: epochs must be an int >= 1, got {epochs!r}")
    if scheduler_interval not in (None, "step", "epoch"):
        raise ValueError(f"fit: scheduler_interval must be 'step' or 'epoch', got "
                         f"{scheduler_interval!r}")
    loss = inputs.check_loss(loss, where)
    train_loader = inputs.as_loader(train, "fit: train", batch_size=batch_size, shuffle=shuffle,
                                    seed=seed, default_batch_size=inputs.DEFAULT_BATCH_SIZE,
                                    default_shuffle=True)
    inputs.check_targets(train_loader, loss, "fit: train")
    val_loader = None
    if val is not None:
        val_loader = inputs.as_loader(val, "fit: val", batch_size=val_batch_size, shuffle=None,
                                      seed=None,
                                      default_batch_size=inputs.DEFAULT_EVAL_BATCH_SIZE)
        inputs.check_targets(val_loader, loss, "fit: val")
    elif val_batch_size is not None:
        raise ValueError("fit: val_batch_size given without val")
    if optimizer is None:
        optimizer = optim.Adam(model.parameters(), lr=1e-3)
    inputs.check_optimizer(optimizer, model, where)
    if scheduler is not None:
        if isinstance(scheduler, type):  # its step is there, unbound: it failed mid-epoch
            raise TypeError(f"fit: scheduler must be a schedule of the optimizer, got the class "
                            f"{scheduler.__name__}: build it, e.g. "
                            f"scheduler={scheduler.__name__}(optimizer, ...)")
        if not callable(getattr(scheduler, "step", None)):
            raise TypeError(f"fit: scheduler must be a fastconv.optim schedule, got "
                            f"{type(scheduler).__name__}")
        if getattr(scheduler, "optimizer", optimizer) is not optimizer:
            raise ValueError("fit: the scheduler belongs to another optimizer than the one "
                             "given")
    scheduler_interval, scheduler_monitor = _schedule_plan(scheduler, scheduler_interval,
                                                           scheduler_monitor, val is not None)
    if clip_grad_norm is not None:
        if isinstance(clip_grad_norm, bool) or not isinstance(clip_grad_norm, numbers.Real) \
                or not clip_grad_norm > 0 or not math.isfinite(clip_grad_norm):
            raise ValueError(f"fit: clip_grad_norm must be None or a number > 0, got "
                             f"{clip_grad_norm!r}")
        clip_grad_norm = float(clip_grad_norm)
    if isinstance(callbacks, Callback) or not isinstance(callbacks, Iterable):
        raise TypeError(f"fit: callbacks must be a list of callbacks, got a "
                        f"{type(callbacks).__name__} (write callbacks=[...])")
    callbacks = list(callbacks)
    for i, cb in enumerate(callbacks):
        if not isinstance(cb, Callback):
            raise TypeError(f"fit: callbacks[{i}] is a {type(cb).__name__}, not a "
                            f"fastconv.training.Callback")
    if max_steps is not None and (isinstance(max_steps, bool)
                                  or not isinstance(max_steps, (int, np.integer))
                                  or max_steps < 1):
        raise ValueError(f"fit: max_steps must be None or an int >= 1, got {max_steps!r}")
    if not isinstance(progress, bool):
        raise TypeError(f"fit: progress must be True or False, got {progress!r}")
    if progress:
        callbacks.append(ProgressBar())
    return Trainer(model, train_loader, int(epochs), optimizer, scheduler, scheduler_interval,
                   loss, val_loader, callbacks, parallel,
                   None if max_steps is None else int(max_steps),
                   scheduler_monitor=scheduler_monitor, clip_grad_norm=clip_grad_norm)


_MONITORABLE = {"loss": "min", "val_loss": "min", "accuracy": "max", "val_accuracy": "max"}


def _schedule_plan(scheduler, interval: str | None, monitor: str | None,
                   has_val: bool) -> tuple[str, str | None]:
    """fit's ``(scheduler_interval, scheduler_monitor)``: a ReduceLROnPlateau steps once per
    epoch on a metric (val_loss with validation data, else the training loss); any other
    schedule every step unless told "epoch", with no metric."""
    if not isinstance(scheduler, optim.ReduceLROnPlateau):
        if monitor is not None:
            given = None if scheduler is None else type(scheduler).__name__
            raise ValueError(f"fit: scheduler_monitor applies to a ReduceLROnPlateau "
                             f"scheduler only, got scheduler={given}")
        return interval or "step", None
    if interval == "step":
        raise ValueError("fit: a ReduceLROnPlateau scheduler steps once per epoch on a "
                         "metric: scheduler_interval must be 'epoch' (or left out), got "
                         "'step'")
    if monitor is None:
        monitor = "val_loss" if has_val else "loss"
    if monitor not in _MONITORABLE:
        raise ValueError(f"fit: scheduler_monitor must be one of {sorted(_MONITORABLE)}, got "
                         f"{monitor!r}")
    if monitor.startswith("val_") and not has_val:
        raise ValueError(f"fit: scheduler_monitor {monitor!r} needs validation data: pass "
                         f"val= to fit, or monitor 'loss'")
    if scheduler.mode != _MONITORABLE[monitor]:
        raise ValueError(f"fit: scheduler_monitor {monitor!r} improves as it "
                         f"{'decreases' if _MONITORABLE[monitor] == 'min' else 'increases'}: "
                         f"the ReduceLROnPlateau needs mode={_MONITORABLE[monitor]!r}, it has "
                         f"mode={scheduler.mode!r}")
    return "epoch", monitor


def evaluate(model, data, *, loss=None, batch_size: int | None = None) -> dict[str, float]:
    """Mean loss (and accuracy, for classification) of ``model`` over ``data``, in eval mode.

    ``data`` is a :class:`fastconv.data.DataLoader` or a pair ``(x, y)`` of arrays (batched by
    ``batch_size``, default 256; see :func:`fit`). Returns ``{"loss": ..., "accuracy": ...}``
    (accuracy when the output is (N, C) and y integer labels). The model's modes are restored
    afterwards.
    """
    inputs.check_model(model, "evaluate")
    loss = inputs.check_loss(loss, "evaluate")
    loader = inputs.as_loader(data, "evaluate: data", batch_size=batch_size, shuffle=None,
                              seed=None, default_batch_size=inputs.DEFAULT_EVAL_BATCH_SIZE)
    inputs.check_targets(loader, loss, "evaluate: data")
    with memory.recycling():  # each batch reuses the last one's memory (see fastconv.memory)
        metrics, _ = _evaluation(model, loader, loss)
    return metrics


def predict(model, x, *, batch_size: int | None = None) -> np.ndarray:
    """The model's outputs for the inputs ``x``, in eval mode, computed in batches.

    ``x`` is a float32/float64 array (N, ...) (uint8 images are refused: convert with
    :func:`fastconv.data.to_float32`, which normalises as the loaders do) batched by
    ``batch_size`` (default 256), or a DataLoader (its inputs, in its order; the labels are
    ignored). Returns the concatenated outputs: for a classifier the logits (N, C), not
    probabilities (``fastconv.losses.softmax(out, axis=1)`` gives those, ``out.argmax(1)``
    the classes). The model's modes are restored afterwards.
    """
    inputs.check_model(model, "predict")
    if isinstance(x, DataLoader):
        if batch_size is not None:
            raise ValueError("predict: batch_size applies to arrays; a DataLoader has its own")
        position = x.state_dict()
        x.set_epoch(0)
        batches = (xb for xb, _ in x)
    else:
        arr = inputs.check_inputs(x, "predict")
        bs = inputs.check_positive_int(inputs.DEFAULT_EVAL_BATCH_SIZE if batch_size is None
                                       else batch_size, "batch_size", "predict")
        position = None
        batches = (arr[i:i + bs] for i in range(0, arr.shape[0], bs))
    modes = _modes(model)
    model.eval()
    try:
        with memory.recycling():  # each batch reuses the last one's memory
            outputs = [model.forward(xb) for xb in batches]
    except ValueError as e:
        if position is None and arr.ndim == 3:
            # one (C, H, W) image: the 2-D layers take it unbatched, Flatten then keeps its
            # channels apart, and the error came from deep inside the model
            raise ValueError(f"predict: the model cannot take x of shape {arr.shape}; if x is "
                             f"one image, give a batch of one, x[None] (predict takes "
                             f"(N, ...) batches): {e}") from e
        raise
    finally:
        batches.close()
        if position is not None:
            x.load_state_dict(position)
        _restore_modes(modes)
    return np.concatenate(outputs)


def _load_resume(path: str | os.PathLike) -> dict:
    """The checkpoint at fit's ``resume`` path; a missing file is a FileNotFoundError naming the
    ``resume`` argument and the path (load_checkpoint's own names only the path)."""
    from ..checkpoint import load_checkpoint
    try:
        return load_checkpoint(path)
    except FileNotFoundError as e:
        where = "" if os.path.isabs(path) else f", relative to {os.getcwd()}"
        raise FileNotFoundError(errno.ENOENT, f"fit: resume: no such checkpoint file (the files "
                                f"ModelCheckpoint writes{where})", os.fspath(path)) from e
