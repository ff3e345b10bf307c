"""The resumable state of a fit: everything that decides the rest of the run, at a step boundary.

Training continues bit-exactly from this state because every input of the remaining steps is
in it or is a pure function of it:

* the model's parameters and buffers (``state_dict``), the optimiser's state (momentum and
  Adam buffers, step counts) and the scheduler's position;
* the state of every ``numpy.random.Generator`` a module of the model holds (dropout masks),
  keyed by module path and attribute (``"7.rng"``);
* the train loader's seed: batch i of epoch e is a pure function of (seed, e, i);
* the position (epoch, next batch, optimiser steps) and the running sums of an unfinished
  epoch (loss, correct predictions, samples, seconds), so its metrics come out whole;
* the History and the callbacks' own states.

The compiled kernels give the same bits whatever the thread count, so the thread count may
differ between the two halves of a run; the backend (fast or reference) may not.
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from .history import History

if TYPE_CHECKING:
    from .loop import Trainer

__all__ = ["STATE_FORMAT", "STATE_VERSION", "ResumeError", "capture", "restore",
           "module_generators"]

STATE_FORMAT = "fastconv-training-state"
STATE_VERSION = 1


def module_generators(model) -> dict[str, np.random.Generator]:
    """Every ``numpy.random.Generator`` held as an attribute by a module of ``model``, keyed
    ``"<module path>.<attribute>"`` (``"rng"`` on the root), in module order."""
    out: dict[str, np.random.Generator] = {}
    for path, module in model.named_modules():
        for attr, value in vars(module).items():
            if isinstance(value, np.random.Generator):
                out[f"{path}.{attr}" if path else attr] = value
    return out


def callback_keys(callbacks) -> list[str]:
    """Names of the callbacks in a state: the class name, ``#2``, ``#3`` for repeats."""
    seen: Counter = Counter()
    keys = []
    for cb in callbacks:
        name = type(cb).__name__
        seen[name] += 1
        keys.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return keys


def capture(trainer: "Trainer") -> dict[str, Any]:
    """The state of ``trainer`` now (between two steps), as a checkpoint-ready dict."""
    t = trainer
    return {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "model": dict(t.model.state_dict()),
        "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict() if t.scheduler is not None else None,
        "generators": {k: g.bit_generator.state
                       for k, g in module_generators(t.model).items()},
        "loader": {"seed": t.train.seed},
        "position": {"epoch": t.epoch, "batch": t.batch, "step": t.step,
                     "batches_per_epoch": len(t.train)},
        "running": t.running_sums(),
        "history": [dict(r) for r in t.history.rows],
        "callbacks": {k: cb.state_dict() for k, cb in zip(callback_keys(t.callbacks),
                                                          t.callbacks)},
    }


class ResumeError(ValueError):
    """A state that cannot continue this fit (another model, optimiser, data or format)."""


def _fail(message: str) -> NoReturn:
    raise ResumeError(f"fit: cannot resume: {message}")


def restore(trainer: "Trainer", state: dict[str, Any]) -> None:
    """Load ``state`` (from :func:`capture`) into ``trainer``. :class:`ResumeError` when it
    does not fit this fit's model, optimiser, scheduler or data; the format, position,
    scheduler and generators are checked before anything is loaded, and the model, optimiser
    and scheduler load all or none."""
    t = trainer
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        _fail(f"not a fit state (format {found!r}; expected a checkpoint written by "
              f"ModelCheckpoint)")
    version = state.get("version")
    if type(version) is not int or not 1 <= version <= STATE_VERSION:
        _fail(f"state version {version!r} is not one this fastconv reads (1..{STATE_VERSION})")
    try:
        pos = state["position"]
        running = state["running"]
        n = int(pos["batches_per_epoch"])
        epoch, batch, step = int(pos["epoch"]), int(pos["batch"]), int(pos["step"])
        seed = int(state["loader"]["seed"])
    except (KeyError, TypeError, ValueError) as e:
        _fail(f"the state's position is unreadable ({e!r})")
    if n != len(t.train):
        _fail(f"the run had {n} batches per epoch, this train data has {len(t.train)} (same "
              f"data and batch size needed)")
    if not 0 <= batch <= n or epoch < 0 or step < 0:
        _fail(f"the state's position (epoch {epoch}, batch {batch}, step {step}) is invalid")
    if (state.get("scheduler") is None) != (t.scheduler is None):
        _fail("the run " + ("had no scheduler but fit was given one" if t.scheduler is not None
                            else "had a scheduler: give fit the same scheduler"))
    gens = module_generators(t.model)
    saved = state.get("generators", {})
    if set(gens) != set(saved):
        _fail(f"the model's random generators {sorted(gens)} differ from the run's "
              f"{sorted(saved)}")
    # The model, optimiser and scheduler load all or none: a state that fits the model but
    # not the optimiser leaves the model's weights as they were.
    before = copy.deepcopy((t.model.state_dict(), t.optimizer.state_dict(),
                            None if t.scheduler is None else t.scheduler.state_dict()))
    what = "model"
    try:
        t.model.load_state_dict(state["model"])
        what = "optimiser or scheduler"
        t.optimizer.load_state_dict(state["optimizer"])
        if t.scheduler is not None:
            t.scheduler.load_state_dict(state["scheduler"])
    except (ValueError, TypeError, KeyError) as e:
        t.model.load_state_dict(before[0])
        t.optimizer.load_state_dict(before[1])
        if t.scheduler is not None:
            t.scheduler.load_state_dict(before[2])
        _fail(f"the saved {what} does not fit this {'model' if what == 'model' else 'one'}: {e}")
    for k, g in gens.items():
        g.bit_generator.state = saved[k]
    t.train.load_state_dict({"seed": seed, "epoch": epoch, "batch": batch})
    t.epoch, t.batch, t.step = epoch, batch, step
    t.load_running_sums(running)
    t.history = History(state.get("history", []))
    saved_cbs = state.get("callbacks", {})
    for key, cb in zip(callback_keys(t.callbacks), t.callbacks):
        if key in saved_cbs:
            cb.load_state_dict(saved_cbs[key])
