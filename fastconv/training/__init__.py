"""Training from Python: ``fit``, ``evaluate``, ``predict`` and callbacks.

::

    from fastconv import data, models, optim
    from fastconv.training import fit, evaluate, predict, ModelCheckpoint

    cifar = data.load_cifar10()
    train = data.DataLoader(cifar.x_train, cifar.y_train, 128, shuffle=True, augment=True)
    test = data.DataLoader(cifar.x_test, cifar.y_test, 250)
    model = models.simple_cnn(seed=0)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    history = fit(model, train, 3, optimizer=opt, val=test,
                  callbacks=[ModelCheckpoint("run.npz")])
    evaluate(model, test)                              # {"loss": ..., "accuracy": ...}
    logits = predict(model, data.to_float32(cifar.x_test[:8]))

* :func:`fit` runs the training loop (the only one in fastconv: ``fastconv-train`` is a
  command over it) and returns a :class:`History` of per-epoch metrics.
* :func:`evaluate` gives the mean loss and accuracy; :func:`predict` the outputs (logits).
* Callbacks (:mod:`fastconv.training.callbacks`): :class:`ModelCheckpoint` (the whole
  training state, atomically; ``fit(..., resume=path)`` continues bit-exactly),
  :class:`EarlyStopping`, :class:`CSVLogger`, :class:`ProgressBar`, or a :class:`Callback`
  of your own, whose hooks see the running :class:`Trainer`; :class:`Lookahead` and
  :class:`TrainForEpochs` (airbench94's).
* Recipes (:mod:`fastconv.training.recipes`): :func:`airbench94_recipe` builds airbench94's
  model, loader, optimiser, schedule, loss and callbacks; :func:`tta_logits` its test-time
  augmentation.
"""

from __future__ import annotations

from .callbacks import Callback, CSVLogger, EarlyStopping, ModelCheckpoint, TrainForEpochs
from .history import History
from .lookahead import Lookahead
from .loop import Trainer, evaluate, fit, predict
from .progress import ProgressBar
from .recipes import Airbench94, RecipeRun, airbench94_recipe
from .tta import tta_logits

__all__ = [
    "fit",
    "evaluate",
    "predict",
    "History",
    "Callback",
    "ModelCheckpoint",
    "EarlyStopping",
    "CSVLogger",
    "ProgressBar",
    "Trainer",
    "TrainForEpochs",
    "Lookahead",
    "tta_logits",
    "Airbench94",
    "RecipeRun",
    "airbench94_recipe",
]
