"""Element-wise activations (output shape = input shape)."""

from __future__ import annotations

import numpy as np

from .. import _args
from .module import Module, _as_input


class _Elementwise(Module):
    def output_shape(self, input_shape):
        return tuple(input_shape)

    def _grad(self, grad_y, ref: np.ndarray) -> np.ndarray:
        return self._check_grad(grad_y, ref.shape, ref.dtype)


class ReLU(_Elementwise):
    """max(x, 0); gradient 0 for x <= 0 (as PyTorch)."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _as_input(self, x, None)
        ops = self._ops()
        y = ops.relu(x)
        self._cache = (ops, y)
        return y

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray:
        ops, y = self._get_cache()
        return ops.relu_backward(self._grad(grad_y, y), y)


class LeakyReLU(_Elementwise):
    """x if x > 0 else negative_slope * x."""

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = float(negative_slope)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _as_input(self, x, None)
        scale = (x > 0).astype(x.dtype)  # 1 or negative_slope, reused by backward
        scale *= x.dtype.type(1.0 - self.negative_slope)
        scale += x.dtype.type(self.negative_slope)
        self._cache = scale
        return x * scale

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray:
        scale = self._get_cache()
        return self._grad(grad_y, scale) * scale

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class Tanh(_Elementwise):
    """tanh(x); gradient 1 - y**2."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _as_input(self, x, None)
        y = np.tanh(x)
        self._cache = y
        return y

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray:
        y = self._get_cache()
        g = self._grad(grad_y, y)
        d = y * y
        np.subtract(1, d, out=d)
        d *= g
        return d


class Sigmoid(_Elementwise):
    """1 / (1 + exp(-x)) (exp overflow for very negative x gives exactly 0, silently);
    gradient y (1 - y)."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _as_input(self, x, None)
        with np.errstate(over="ignore"):
            y = np.exp(-x)
        y += 1
        np.reciprocal(y, out=y)
        self._cache = y
        return y

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray:
        y = self._get_cache()
        g = self._grad(grad_y, y)
        d = 1 - y
        d *= y
        d *= g
        return d


class GELU(_Elementwise):
    """x Phi(x), Phi the standard normal CDF; approximate='tanh' uses
    x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) instead (as PyTorch)."""

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        _args.gelu_tanh(approximate, "GELU")
        self.approximate = approximate

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _as_input(self, x, None)
        ops = self._ops()
        y = ops.gelu(x, self.approximate)
        self._cache = (ops, x)
        return y

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray:
        ops, x = self._get_cache()
        return ops.gelu_backward(self._grad(grad_y, x), x, self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class SiLU(_Elementwise):
    """x sigmoid(x) (swish); gradient s (1 + x (1 - s)), s = sigmoid(x)."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _as_input(self, x, None)
        ops = self._ops()
        y = ops.silu(x)
        self._cache = (ops, x)
        return y

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray:
        ops, x = self._get_cache()
        return ops.silu_backward(self._grad(grad_y, x), x)
