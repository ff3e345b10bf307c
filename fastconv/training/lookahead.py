"""Lookahead (Zhang et al., 2019) as airbench applies it: every ``every`` optimiser steps the
model moves to a slow copy that follows it, ``slow = lerp(slow, model, 1 - decay)``; model =
slow. The decay grows over the run, ``decay(t) = base * (t / total_steps) ** power``
(airbench94: 0.95 ** 5 * (t / T) ** 3), so early steps keep nearly all of the fast weights and
late ones average over many steps; after the last step the model takes the slow copy (a
final update with decay 1).

Every floating-point entry of the state dict follows: parameters (frozen ones too) and
BatchNorm's running statistics; integer buffers (``num_batches_tracked``) do not.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from .callbacks import Callback

__all__ = ["Lookahead", "lookahead_update"]


def _float_entries(model) -> Iterator[tuple[str, np.ndarray]]:
    """(state-dict key, live array) of the model's floating-point parameters and buffers."""
    for name, p in model.named_parameters():
        yield name, p.data
    for name, b in model.named_buffers():
        if b.dtype.kind == "f":
            yield name, b


def lookahead_update(model, slow: dict[str, np.ndarray], decay: float) -> None:
    """``slow = slow + (1 - decay) (model - slow)``, then model = slow, for every entry of
    ``slow`` (arrays keyed as the state dict), in place (torch's ``lerp_`` then ``copy_``)."""
    w = 1.0 - float(decay)
    for name, arr in _float_entries(model):
        s = slow[name]
        s += arr.dtype.type(w) * (arr - s)
        arr[...] = s


class Lookahead(Callback):
    """The lookahead of airbench94 as a :func:`fastconv.training.fit` callback (see the
    module docstring)::

        T = ceil(9.9 * len(train))
        fit(model, train, 10, max_steps=T, optimizer=opt,
            callbacks=[Lookahead(total_steps=T)])

    Args:
        total_steps: T of the decay schedule; after step T the model takes the slow copy.
        every: steps between two updates.
        base, power: ``decay(t) = base * (t / total_steps) ** power``.

    The slow copy is taken from the model when training begins and saved with checkpoints
    (``state_dict``), so a resumed run continues it.
    """

    def __init__(self, total_steps: int, every: int = 5, base: float = 0.95 ** 5,
                 power: float = 3.0) -> None:
        for name, value in (("total_steps", total_steps), ("every", every)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"Lookahead: {name} must be an int >= 1, got {value!r}")
        if not 0.0 <= base <= 1.0:
            raise ValueError(f"Lookahead: base must be in [0, 1], got {base!r}")
        self.total_steps = int(total_steps)
        self.every = int(every)
        self.base = float(base)
        self.power = float(power)
        self.slow: dict[str, np.ndarray] | None = None

    def decay(self, step: int) -> float:
        """The decay of the update after optimiser step ``step``."""
        return self.base * (step / self.total_steps) ** self.power

    def on_train_begin(self, logs: dict) -> None:
        if self.slow is None:
            self.slow = {name: arr.copy() for name, arr in _float_entries(self.trainer.model)}

    def on_batch_end(self, batch: int, logs: dict) -> None:
        step = self.trainer.step
        if step % self.every == 0:
            lookahead_update(self.trainer.model, self.slow, self.decay(step))
        if step == self.total_steps:
            lookahead_update(self.trainer.model, self.slow, 1.0)

    def state_dict(self) -> dict:
        return {"slow": self.slow}

    def load_state_dict(self, state: dict) -> None:
        slow = state.get("slow")
        self.slow = None if slow is None else {k: np.array(v) for k, v in slow.items()}
