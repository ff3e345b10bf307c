"""Test-time augmentation (TTA) as airbench's ``infer``: the logits of a classifier averaged
over mirrored and translated copies of each image.

* level 0: ``net(x)``
* level 1: ``mirror(x) = 0.5 net(x) + 0.5 net(flip(x))`` (flip: left-right)
* level 2: ``0.5 mirror(x) + 0.5 (mirror(t_a(x)) + mirror(t_b(x))) / 2``, where t_a and t_b
  shift the image by one pixel up-left and down-right (with 1-pixel reflect padding):
  six views, weighted 1/4 (no shift) and 1/8 (each shift), mirrored or not alike.
"""

from __future__ import annotations

import numpy as np

from .. import memory
from . import inputs
from .loop import _modes, _restore_modes

__all__ = ["tta_logits", "TTA_LEVELS"]

TTA_LEVELS = (0, 1, 2)


def _mirror(net, x: np.ndarray) -> np.ndarray:
    # (new arrays: a model's output may be an array it keeps)
    half = x.dtype.type(0.5)
    return half * net(x) + half * net(np.ascontiguousarray(x[..., ::-1]))


def _mirror_translate(net, x: np.ndarray) -> np.ndarray:
    h, w = x.shape[2:]
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    shifted = [_mirror(net, np.ascontiguousarray(padded[:, :, dy:dy + h, dx:dx + w]))
               for dy, dx in ((0, 0), (2, 2))]
    half = x.dtype.type(0.5)
    return half * _mirror(net, x) + half * ((shifted[0] + shifted[1]) * half)


def tta_logits(model, x: np.ndarray, level: int = 2, *, batch_size: int = 2000) -> np.ndarray:
    """The model's logits for images ``x`` (N, C, H, W), float, normalised as in training,
    averaged over the views of TTA ``level`` (see the module docstring), in eval mode and in
    batches of ``batch_size``; the model's modes are restored afterwards. Returns (N, classes).
    """
    if level not in TTA_LEVELS:
        raise ValueError(f"tta_logits: level must be one of {TTA_LEVELS}, got {level!r}")
    arr = inputs.check_inputs(x, "tta_logits")
    if arr.ndim != 4:
        raise ValueError(f"tta_logits: expected images (N, C, H, W), got shape {arr.shape}")
    bs = inputs.check_positive_int(batch_size, "batch_size", "tta_logits")
    view = (lambda net, xb: net(xb), _mirror, _mirror_translate)[level]
    modes = _modes(model)
    model.eval()
    try:
        with memory.recycling():  # each view reuses the last one's memory
            outs = [view(model.forward, np.ascontiguousarray(arr[i:i + bs]))
                    for i in range(0, arr.shape[0], bs)]
    finally:
        _restore_modes(modes)
    return np.concatenate(outs)
