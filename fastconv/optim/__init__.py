"""Optimisers and learning-rate schedules, with torch.optim's update rules and semantics.

Optimisers work on :class:`fastconv.nn.Parameter` objects (``.data`` updated in place from
``.grad``)::

    opt = SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    sched = OneCycleLR(opt, max_lr=0.1, total_steps=epochs * batches)
    for x, t in batches:
        opt.zero_grad(); loss = crit(model(x), t); model.backward(crit.backward())
        opt.step(); sched.step()          # OneCycleLR / LinearWarmup: once per batch

``params`` may also be a list of dicts (parameter groups with their own hyper-parameters), as
in PyTorch. ``opt.lr`` reads the first group's learning rate and sets every group's.
Parameters with ``requires_grad=False`` (frozen) may be listed: ``step`` leaves them and keeps
no state for them, as PyTorch does with parameters that get no gradient (their index still
counts in ``state_dict``).

Schedules are closed-form functions of the step count ``last_epoch`` (the number of ``step()``
calls since construction); each ``step()`` writes the new rate into the optimiser. Call
``step()`` once per epoch for StepLR / MultiStepLR / ExponentialLR / InverseTimeDecay /
CosineAnnealingLR / CosineAnnealingWarmRestarts / LambdaLR when their periods are given in
epochs (or once per batch with periods in batches), and once per batch for OneCycleLR and
LinearWarmup. As in PyTorch, constructing a schedule sets the rate for step 0, so call
``sched.step()`` *after* ``opt.step()``. ReduceLROnPlateau is the exception: it lowers the
rate when a metric stops improving, ``sched.step(val_loss)`` once per epoch.

L2 regularisation: either ``weight_decay=lam`` (SGD/RMSprop/Adam add lam * w to the gradient;
AdamW decays the weights directly: w -= lr * lam * w) or, equivalently for SGD, the loss term
:func:`l2_penalty` (lam / 2 * sum w**2, whose gradient lam * w it adds to ``.grad``).
"""

from __future__ import annotations

from . import lr_scheduler
from .lr_scheduler import (
    CosineAnnealingLR,
    CosineAnnealingWarmRestarts,
    ExponentialLR,
    InverseTimeDecay,
    LambdaLR,
    LinearWarmup,
    LRScheduler,
    MultiStepLR,
    OneCycleLR,
    ReduceLROnPlateau,
    StepLR,
)
from .optimizer import Optimizer
from .optimizers import SGD, Adam, AdamW, RMSprop, l2_penalty

__all__ = [
    "Optimizer", "SGD", "RMSprop", "Adam", "AdamW", "l2_penalty",
    "LRScheduler", "StepLR", "ExponentialLR", "InverseTimeDecay", "CosineAnnealingLR",
    "OneCycleLR", "LinearWarmup", "MultiStepLR", "LambdaLR", "CosineAnnealingWarmRestarts",
    "ReduceLROnPlateau", "lr_scheduler",
]
