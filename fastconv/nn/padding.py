"""Padding layers, as torch.nn's ZeroPad2d, ConstantPad2d, ReflectionPad2d, ReplicationPad2d
and CircularPad2d (run on the backend's ``pad`` / ``pad_backward``)."""

from __future__ import annotations

import numbers

import numpy as np

from .. import _args
from .module import Module, _as_input


def _four(padding, name: str) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) from an int (all four) or a 4-tuple, each >= 0."""
    if isinstance(padding, (numbers.Integral, np.integer)) and not isinstance(padding, bool):
        padding = (int(padding),) * 4
    try:
        pad = tuple(padding)
        ok = len(pad) == 4 and all(isinstance(p, (numbers.Integral, np.integer))
                                   and not isinstance(p, bool) and p >= 0 for p in pad)
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"{name}: padding must be a non-negative int or 4 of them (left, right, "
                         f"top, bottom), got {padding!r}")
    return tuple(int(p) for p in pad)


class _Pad2d(Module):
    """Pads the last two axes of (N, C, H, W) or (C, H, W) input by ``padding`` = (left,
    right, top, bottom) with the class's ``mode``; the gradient of an input pixel is its own
    plus that of every padded pixel copying it."""

    mode = "constant"

    def __init__(self, padding, value: float = 0.0) -> None:
        super().__init__()
        self.padding = _four(padding, type(self).__name__)
        self.value = float(value)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _as_input(self, x, None)
        if x.ndim not in (3, 4):
            raise ValueError(f"{self!r}: input must be (N, C, H, W) or (C, H, W), got shape "
                             f"{x.shape}")
        ops = self._ops()
        y = ops.pad(x, self.padding, self.mode, self.value)
        self._cache = (ops, x.shape, y.shape, y.dtype)
        return y

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray:
        ops, x_shape, y_shape, dtype = self._get_cache()
        return ops.pad_backward(self._check_grad(grad_y, y_shape, dtype), x_shape, self.padding,
                                self.mode)

    def output_shape(self, input_shape):
        shape = tuple(int(s) for s in input_shape)
        if len(shape) not in (3, 4):
            raise ValueError(f"{self!r}: input must be (N, C, H, W) or (C, H, W), got shape "
                             f"{shape}")
        # forward's checks (reflect: pad < size; circular: pad <= size), so a summary or an
        # export refuses the shapes forward refuses
        _args.pad_geometry(shape, self.padding, self.mode, repr(self))
        *lead, h, w = shape
        left, right, top, bottom = self.padding
        return (*lead, h + top + bottom, w + left + right)

    def extra_repr(self) -> str:
        return f"{self.padding}"


class ZeroPad2d(_Pad2d):
    """Pads with zeros."""

    def __init__(self, padding) -> None:
        super().__init__(padding, 0.0)


class ConstantPad2d(_Pad2d):
    """Pads with the constant ``value``."""

    def __init__(self, padding, value: float) -> None:
        super().__init__(padding, value)

    def extra_repr(self) -> str:
        return f"padding={self.padding}, value={self.value}"


class ReflectionPad2d(_Pad2d):
    """Pads with the input mirrored at its edges (the edge pixel not repeated): each pad must
    be smaller than the axis it pads."""

    mode = "reflect"

    def __init__(self, padding) -> None:
        super().__init__(padding)


class ReplicationPad2d(_Pad2d):
    """Pads with copies of the edge pixels."""

    mode = "replicate"

    def __init__(self, padding) -> None:
        super().__init__(padding)


class CircularPad2d(_Pad2d):
    """Pads with the input wrapped around (periodic): each pad at most the axis' size."""

    mode = "circular"

    def __init__(self, padding) -> None:
        super().__init__(padding)
