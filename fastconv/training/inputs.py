"""Checks of fit/evaluate/predict arguments, and arrays turned into DataLoaders.

Every mistake is reported before any training, in one line that names the argument and what
was given: a model that is not a fastconv Module, uint8 or integer images, x and y of different
lengths, float labels for a cross-entropy loss, an optimiser built for another model, ...
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from ..data import DataLoader
from ..losses import CrossEntropyLoss
from ..nn import Module

__all__ = ["check_model", "check_positive_int", "as_loader", "check_inputs", "check_loss",
           "check_targets", "check_label_range", "check_optimizer"]

DEFAULT_BATCH_SIZE = 32
"""Batch size of fit for (x, y) arrays (Keras' default)."""
DEFAULT_EVAL_BATCH_SIZE = 256
"""Batch size of evaluate and predict for arrays: larger batches run faster here, and in eval
mode the results do not depend on it."""


def check_model(model: Any, where: str) -> None:
    if not isinstance(model, Module):
        raise TypeError(f"{where}: model must be a fastconv.nn.Module, got "
                        f"{type(model).__module__}.{type(model).__qualname__}")


def check_positive_int(value: Any, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{where}: {name} must be an int >= 1, got {value!r}")
    return int(value)


def check_inputs(x: Any, what: str) -> np.ndarray:
    """``x`` as a float32/float64 array with a batch axis first and at least one sample."""
    x = np.asarray(x) if not isinstance(x, np.ndarray) else x
    if x.dtype == np.uint8:
        raise TypeError(f"{what}: x holds uint8 images; convert them first: "
                        f"fastconv.data.to_float32(x) scales to [0, 1] and normalises with "
                        f"CIFAR-10's mean and std (or give a fastconv.data.DataLoader, which "
                        f"does it per batch)")
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"{what}: x must hold float32 or float64 values, got dtype {x.dtype} "
                        f"(convert with x.astype(np.float32))")
    if x.ndim < 2:
        raise ValueError(f"{what}: x must have a batch axis first, (N, ...), got shape "
                         f"{x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{what}: x holds no samples (shape {x.shape})")
    return x


def _check_pair(data: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    x = check_inputs(data[0], what)
    y = data[1]
    y = np.asarray(y) if not isinstance(y, np.ndarray) else y
    if y.dtype.kind not in "uif":
        raise TypeError(f"{what}: y must hold integer labels or real targets, got dtype "
                        f"{y.dtype}")
    if y.ndim == 0 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{what}: x holds {x.shape[0]} samples but y "
                         + (f"holds {y.shape[0]}" if y.ndim else "is a scalar")
                         + f" (shapes {x.shape} and {y.shape})")
    return x, y


def as_loader(data: Any, what: str, *, batch_size: int | None, shuffle: bool | None,
              seed: int | None, default_batch_size: int,
              default_shuffle: bool = False) -> DataLoader:
    """``data`` if it is a DataLoader (then ``batch_size``, ``shuffle`` and ``seed`` must be
    None: not given), else a DataLoader over the pair of arrays ``(x, y)``, without
    normalisation, with the defaults for what is not given."""
    if isinstance(data, DataLoader):
        given = [n for n, v in (("batch_size", batch_size), ("shuffle", shuffle),
                                ("seed", seed)) if v is not None]
        if given:
            raise ValueError(f"{what}: {', '.join(given)} apply to (x, y) arrays; a DataLoader "
                             f"has its own (set them when you build it)")
        if data.num_samples == 0:
            raise ValueError(f"{what}: the DataLoader holds no samples")
        if len(data) == 0:
            raise ValueError(f"{what}: the DataLoader yields no batches ({data.num_samples} "
                             f"samples, batch_size {data.batch_size}, drop_last)")
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = _check_pair(data, what)
        bs = check_positive_int(default_batch_size if batch_size is None else batch_size,
                                "batch_size", what)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                                 or seed < 0):
            raise ValueError(f"{what}: seed must be an int >= 0, got {seed!r}")
        shuffle = default_shuffle if shuffle is None else bool(shuffle)
        return DataLoader(x, y, bs, shuffle=shuffle, seed=int(seed or 0), mean=None,
                          std=None, prefetch=1)
    kind = type(data).__module__ + "." + type(data).__qualname__
    if isinstance(data, np.ndarray):
        hint = " (give the labels too: (x, y))"
    elif isinstance(data, (tuple, list)):
        hint = f" (a {type(data).__name__} of {len(data)} items)"
    else:
        hint = ""
    raise TypeError(f"{what} must be a fastconv.data.DataLoader or a pair (x, y) of arrays, "
                    f"got {kind}{hint}")


def check_loss(loss: Any, where: str) -> Any:
    """``loss``, or a new CrossEntropyLoss when None; it must have forward and backward and
    give one number per batch."""
    if loss is None:
        return CrossEntropyLoss()
    if isinstance(loss, type):  # its forward/backward are there, unbound: it failed later on
        raise TypeError(f"{where}: loss must be a loss object, got the class {loss.__name__}: "
                        f"write loss={loss.__name__}()")
    if not (callable(getattr(loss, "forward", None)) and callable(getattr(loss, "backward", None))):
        raise TypeError(f"{where}: loss must be a fastconv loss (with forward(output, target) "
                        f"and backward()), e.g. fastconv.losses.CrossEntropyLoss(), got "
                        f"{type(loss).__name__}")
    if getattr(loss, "reduction", None) == "none":
        raise ValueError(f"{where}: {type(loss).__name__}(reduction='none') gives a loss per "
                         f"sample; training needs one number per batch: reduction='mean' or "
                         f"'sum'")
    return loss


def check_targets(loader: DataLoader, loss: Any, what: str) -> None:
    """Refuse up front labels the loss cannot take whatever the model's output, by the loss's
    own ``check_targets(labels, what)`` (a loss without one is not checked here):
    CrossEntropyLoss wants integer class labels or float class probabilities, KLDivLoss
    floats, BCELoss values in [0, 1], the other element-wise losses real numbers."""
    check = getattr(loss, "check_targets", None)
    if callable(check):
        check(loader.labels, what)


def check_label_range(labels: np.ndarray, output: np.ndarray, loss: Any, what: str) -> None:
    """Class labels (N,) against the model's first output (B, C): every label must be a class
    of the output (in [0, C), or the loss's ``ignore_index``). Checked over the whole dataset
    at the first batch, so a bad label stops the run before any step, with the labels' range
    and the output's width (not at whichever batch first holds it)."""
    if output.ndim != 2 or labels.ndim != 1 or labels.dtype.kind not in "iu" \
            or labels.shape[0] == 0 or not isinstance(loss, CrossEntropyLoss):
        return
    width = output.shape[1]
    bad = (labels < 0) | (labels >= width)
    bad &= labels != loss.ignore_index
    if bad.any():
        counted = labels[labels != loss.ignore_index]
        lo, hi = int(counted.min()), int(counted.max())
        fix = "fix the labels" if lo < 0 else \
            f"build the model with num_classes={hi + 1}, or fix the labels"
        raise ValueError(f"{what}: the labels span {lo}..{hi} but the model outputs {width} "
                         f"classes (output shape {output.shape}): labels must be in "
                         f"0..{width - 1} ({int(bad.sum())} are not); {fix}")


def check_optimizer(optimizer: Any, model: Module, where: str) -> None:
    """The optimiser must update this model's parameters (not those of an earlier model)."""
    groups = getattr(optimizer, "param_groups", None)
    if not callable(getattr(optimizer, "step", None)) or groups is None:
        raise TypeError(f"{where}: optimizer must be a fastconv.optim optimiser (e.g. "
                        f"fastconv.optim.SGD(model.parameters(), lr=0.01)), got "
                        f"{type(optimizer).__name__}")
    mine = {id(p) for p in model.parameters()}
    foreign = sum(1 for g in groups for p in g["params"] if id(p) not in mine)
    if foreign:
        raise ValueError(f"{where}: the optimizer holds {foreign} parameters that are not the "
                         f"model's: was it built for another model (one created before)? "
                         f"Build it from model.parameters()")
