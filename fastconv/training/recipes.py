"""Recipes: a network with its data pipeline, optimiser, schedule, loss and callbacks, ready for
:func:`fastconv.training.fit`. A recipe is data (its hyper-parameters) plus the functions that
build the pieces from them.

airbench94 (Keller Jordan, KellerJordan/cifar10-airbench, ``legacy/airbench94.py``; 94% on
CIFAR-10 in 9.9 epochs)::

    from fastconv import data
    from fastconv.training import airbench94_recipe, tta_logits

    cifar = data.load_cifar10()
    run = airbench94_recipe(cifar.x_train, cifar.y_train, seed=0)
    run.fit()                                     # 476 steps of 1024 images
    x_test = data.to_float32(cifar.x_test, AIRBENCH_MEAN, AIRBENCH_STD)
    accuracy = (tta_logits(run.model, x_test).argmax(1) == cifar.y_test).mean()

The pieces, as airbench's source builds them:

* model: :func:`fastconv.models.airbench94`, its whitening conv set from the first 5,000
  training images (:func:`fastconv.models.init_whitening_conv`);
* data: batches of 1024, shuffled, the last partial batch dropped; 2-pixel translations with
  reflect padding and the alternating flip (``DataLoader(flip="alternate")``);
* optimiser: SGD, Nesterov momentum 0.85, with airbench's decoupled hyper-parameters (given
  per 1024 examples): ``lr = 11.5 / s``, ``wd = 0.0153 * batch_size / s`` with
  ``s = 1024 (1 + 1 / (1 - momentum))``; BatchNorm biases at 64 lr with weight decay
  ``wd / (64 lr)``, the other trained parameters at lr with ``wd / lr`` (torch's SGD
  multiplies its weight decay by the lr: every parameter decays by ``wd`` x the schedule);
* schedule: the lr factor rises linearly from 0.2 to 1 over the first 23% of the steps
  (``int(0.23 T)``), then falls linearly to 0.07 at step T;
* loss: cross-entropy with label smoothing 0.2, summed over the batch;
* callbacks: the whitening bias trained for the first 3 epochs only
  (:class:`TrainForEpochs`); :class:`Lookahead` every 5 steps, decay 0.95^5 (t / T)^3, and
  the slow weights taken after the last step;
* evaluation: :func:`fastconv.training.tta_logits` at level 2.

One difference from the source: the lookahead's slow copy starts from the model after the
whitening init (airbench copies it just before, so its frozen whitening weights move by
about 1e-6 of their size towards the random init at the first lookahead step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .. import losses, models, optim
from ..data import DataLoader, to_float32
from .callbacks import Callback, TrainForEpochs
from .history import History
from .lookahead import Lookahead
from .loop import fit

__all__ = ["Airbench94", "RecipeRun", "airbench94_recipe", "airbench94_optimizer",
           "airbench94_schedule", "airbench94_loader", "AIRBENCH_MEAN", "AIRBENCH_STD"]

#: airbench's normalisation constants (CIFAR-10's channel statistics, rounded).
AIRBENCH_MEAN = (0.4914, 0.4822, 0.4465)
AIRBENCH_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class Airbench94:
    """airbench94's hyper-parameters (its ``hyp`` dict); ``replace(Airbench94(), epochs=5)``
    changes one."""

    epochs: float = 9.9
    batch_size: int = 1024
    lr: float = 11.5                 # per 1024 examples, decoupled from the momentum
    momentum: float = 0.85
    weight_decay: float = 0.0153     # per 1024 examples, decoupled from the lr
    bias_scaler: float = 64.0        # lr multiplier (not weight decay) of BatchNorm biases
    label_smoothing: float = 0.2
    whiten_bias_epochs: int = 3
    whitening_images: int = 5000
    translate: int = 2
    flip: bool = True
    warmup: float = 0.23             # fraction of the steps
    lr_start: float = 0.2            # schedule factors: start, peak 1, end
    lr_end: float = 0.07
    lookahead_every: int = 5
    tta_level: int = 2

    def total_steps(self, batches_per_epoch: int) -> int:
        """Optimiser steps of the run: ``ceil(batches_per_epoch * epochs)``."""
        return math.ceil(batches_per_epoch * self.epochs)

    def with_(self, **changes) -> "Airbench94":
        """A copy with ``changes`` (``dataclasses.replace``)."""
        return replace(self, **changes)


@dataclass
class RecipeRun:
    """Everything :func:`fit` needs for one run of a recipe; :meth:`fit` runs it."""

    model: Any
    train: DataLoader
    epochs: int
    max_steps: int
    optimizer: optim.Optimizer
    scheduler: optim.LRScheduler | None
    loss: Any
    callbacks: list[Callback] = field(default_factory=list)
    hyper: Any = None

    def fit(self, *, val=None, callbacks: list[Callback] = (), progress: bool = True,
            **kwargs) -> History:
        """:func:`fastconv.training.fit` with this run's pieces; ``callbacks`` are added after
        the recipe's, ``kwargs`` go to fit (``resume``, ``val_batch_size``...)."""
        return fit(self.model, self.train, self.epochs, optimizer=self.optimizer,
                   scheduler=self.scheduler, loss=self.loss, val=val,
                   callbacks=[*self.callbacks, *callbacks], progress=progress,
                   max_steps=self.max_steps, **kwargs)


def airbench94_optimizer(model, hyp: Airbench94 = Airbench94()) -> optim.SGD:
    """Nesterov SGD with airbench's two parameter groups (see the module docstring): trained
    parameters whose name holds ``norm`` (the BatchNorm biases) first, then the others."""
    kilostep_scale = 1024 * (1 + 1 / (1 - hyp.momentum))
    lr = hyp.lr / kilostep_scale
    wd = hyp.weight_decay * hyp.batch_size / kilostep_scale
    lr_biases = lr * hyp.bias_scaler
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    norm_biases = [p for k, p in named if "norm" in k]
    others = [p for k, p in named if "norm" not in k]
    return optim.SGD([dict(params=norm_biases, lr=lr_biases, weight_decay=wd / lr_biases),
                      dict(params=others, lr=lr, weight_decay=wd / lr)],
                     momentum=hyp.momentum, nesterov=True)


def airbench94_schedule(optimizer: optim.Optimizer, total_steps: int,
                        hyp: Airbench94 = Airbench94()) -> optim.LRScheduler:
    """airbench's lr factor: ``lr_start -> 1`` linearly over the first ``int(warmup T)`` steps,
    then ``1 -> lr_end`` linearly at step T (a warm-up followed by a linear decay)."""
    warm = int(total_steps * hyp.warmup)
    decay = optim.LinearWarmup(optimizer, warmup_steps=total_steps - warm, start_factor=1.0,
                               end_factor=hyp.lr_end)
    if warm < 1:
        return decay
    return optim.LinearWarmup(optimizer, warmup_steps=warm, start_factor=hyp.lr_start,
                              end_factor=1.0, after=decay)


def airbench94_loader(x_train: np.ndarray, y_train: np.ndarray,
                      hyp: Airbench94 = Airbench94(), *, seed: int = 0,
                      augment: bool = True, prefetch: int = 1) -> DataLoader:
    """The training batches: shuffled, ``drop_last``, normalised with airbench's constants,
    2-pixel reflect-padded translations and the alternating flip."""
    return DataLoader(x_train, y_train, hyp.batch_size, shuffle=True, drop_last=True,
                      augment=augment, pad=hyp.translate,
                      flip="alternate" if hyp.flip else False, padding_mode="reflect",
                      mean=AIRBENCH_MEAN, std=AIRBENCH_STD, seed=seed, prefetch=prefetch)


def airbench94_recipe(x_train: np.ndarray, y_train: np.ndarray,
                      hyp: Airbench94 = Airbench94(), *, seed: int = 0,
                      dtype=np.float32, augment: bool = True, prefetch: int = 1,
                      num_classes: int = 10) -> RecipeRun:
    """One airbench94 run on uint8 training images ``x_train`` (N, 3, 32, 32) and labels: the
    model (weights from ``seed``; whitening conv set from the first ``whitening_images``
    images), loader (shuffled from ``seed``), optimiser, schedule, loss and callbacks (see
    the module docstring). ``run.fit()`` trains it."""
    x_train = np.asarray(x_train)
    if x_train.ndim != 4 or x_train.shape[1] != 3:
        raise ValueError(f"airbench94_recipe: expected images (N, 3, H, W), got shape "
                         f"{x_train.shape}")
    model = models.airbench94(num_classes=num_classes, seed=seed, dtype=dtype)
    whiten = to_float32(x_train[:hyp.whitening_images], AIRBENCH_MEAN, AIRBENCH_STD)
    models.init_whitening_conv(model[0], whiten.astype(dtype, copy=False))
    train = airbench94_loader(x_train, y_train, hyp, seed=seed, augment=augment,
                              prefetch=prefetch)
    if len(train) == 0:
        raise ValueError(f"airbench94_recipe: {len(x_train)} images make no full batch of "
                         f"{hyp.batch_size}")
    total = hyp.total_steps(len(train))
    opt = airbench94_optimizer(model, hyp)
    sched = airbench94_schedule(opt, total, hyp)
    loss = losses.CrossEntropyLoss(label_smoothing=hyp.label_smoothing, reduction="sum")
    callbacks: list[Callback] = [TrainForEpochs([model[0].bias], hyp.whiten_bias_epochs),
                                 Lookahead(total, every=hyp.lookahead_every)]
    return RecipeRun(model, train, math.ceil(hyp.epochs), total, opt, sched, loss, callbacks,
                     hyp)
