"""Activations (output shape = input shape): element-wise ones, and Softmax / LogSoftmax along
one axis."""

from __future__ import annotations

import warnings

import numpy as np

from .. import _args
from ..losses import log_softmax, softmax
from .module import Module, Parameter, _as_input, _float_dtype, _positive_int


class _Elementwise(Module):
    def output_shape(self, input_shape):
        return tuple(input_shape)

    def _grad(self, grad_y, ref: np.ndarray) -> np.ndarray:
        return self._check_grad(grad_y, ref.shape, ref.dtype)


class _InplaceArg(_Elementwise):
    """An element-wise layer whose torch twin takes ``inplace``: accepted, as PyTorch code
    writes it (``nn.ReLU(inplace=True)``), with the same outputs and gradients; the output is
    always a new array, the input never overwritten (a layer before may keep it for its
    backward)."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = _args.flag(inplace, "inplace", type(self).__name__)

    def extra_repr(self) -> str:
        return "inplace=True" if getattr(self, "inplace", False) else ""  # (older pickles lack it)


class ReLU(_InplaceArg):
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


class LeakyReLU(_InplaceArg):
    """x if x > 0 else negative_slope * x."""

    def __init__(self, negative_slope: float = 0.01, inplace: bool = False) -> None:
        super().__init__(inplace)
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


class SiLU(_InplaceArg):
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


class _Slope(_InplaceArg):
    """An activation whose backward multiplies by the slope its forward computed:
    ``_forward(x)`` gives (y, dy/dx)."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _as_input(self, x, None)
        y, slope = self._forward(x)
        self._cache = slope
        return y

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray:
        slope = self._get_cache()
        return self._grad(grad_y, slope) * slope


class ReLU6(_Slope):
    """min(max(x, 0), 6), as torch.nn.ReLU6; gradient 1 strictly between 0 and 6."""

    def _forward(self, x):
        return np.clip(x, 0, 6), ((x > 0) & (x < 6)).astype(x.dtype)


class ELU(_Slope):
    """x for x > 0, alpha (exp(x) - 1) otherwise, as torch.nn.ELU; gradient 1 or alpha exp(x)."""

    def __init__(self, alpha: float = 1.0, inplace: bool = False) -> None:
        super().__init__(inplace)
        self.alpha = float(alpha)

    def _forward(self, x):
        a = x.dtype.type(self.alpha)
        neg = a * np.exp(np.minimum(x, 0))       # (no overflow for large x)
        pos = x > 0
        return np.where(pos, x, neg - a), np.where(pos, x.dtype.type(1), neg)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class Hardsigmoid(_Slope):
    """min(max(x / 6 + 1/2, 0), 1), as torch.nn.Hardsigmoid; gradient 1/6 for -3 < x < 3."""

    def _forward(self, x):
        dt = x.dtype.type
        y = np.clip(x / dt(6) + dt(0.5), 0, 1)
        return y, np.where((x > -3) & (x < 3), dt(1 / 6), dt(0))


class Hardswish(_Slope):
    """x min(max(x + 3, 0), 6) / 6, as torch.nn.Hardswish (MobileNetV3); gradient 0 up to -3,
    x / 3 + 1/2 between, 1 from 3 on (PyTorch's values at the two boundaries)."""

    def _forward(self, x):
        dt = x.dtype.type
        with np.errstate(invalid="ignore"):  # (-inf * 0: nan, as PyTorch, without a warning)
            y = x * np.clip(x + dt(3), 0, 6) / dt(6)
        # (the middle branch last, so NaN gets a NaN slope, as torch's vectorised kernel)
        slope = np.where(x <= -3, dt(0), np.where(x >= 3, dt(1), x / dt(3) + dt(0.5)))
        return y, slope


class Hardtanh(_Slope):
    """min(max(x, min_val), max_val), as torch.nn.Hardtanh; gradient 1 strictly between the
    two (PyTorch's: 0 at and beyond them, and at NaN as in its vectorised kernel)."""

    def __init__(self, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False) -> None:
        super().__init__(inplace)
        self.min_val = _args.real_number(min_val, "min_val", "Hardtanh")
        self.max_val = _args.real_number(max_val, "max_val", "Hardtanh")
        if not self.max_val > self.min_val:
            raise ValueError(f"Hardtanh: max_val ({max_val}) must be greater than min_val "
                             f"({min_val})")

    def _forward(self, x):
        lo, hi = x.dtype.type(self.min_val), x.dtype.type(self.max_val)
        return np.clip(x, lo, hi), ((x > lo) & (x < hi)).astype(x.dtype)

    def extra_repr(self) -> str:
        extra = super().extra_repr()
        return f"min_val={self.min_val}, max_val={self.max_val}" + (f", {extra}" if extra else "")


class Softplus(_Slope):
    """log(1 + exp(beta x)) / beta, and x itself where beta x > threshold, as torch.nn.Softplus;
    gradient sigmoid(beta x) (1 past the threshold)."""

    def __init__(self, beta: float = 1.0, threshold: float = 20.0) -> None:
        super().__init__()
        self.beta = _args.real_number(beta, "beta", "Softplus")
        self.threshold = _args.real_number(threshold, "threshold", "Softplus")

    def _forward(self, x):
        dt = x.dtype.type
        bx = x * dt(self.beta)
        linear = bx > dt(self.threshold)
        with np.errstate(over="ignore", invalid="ignore"):  # (a threshold past exp's range)
            z = np.exp(np.where(linear, dt(0), bx))
            return (np.where(linear, x, np.log1p(z) / dt(self.beta)),
                    np.where(linear, dt(1), z / (z + dt(1))))

    def extra_repr(self) -> str:
        return f"beta={self.beta}, threshold={self.threshold}"


class Mish(_Slope):
    """x tanh(softplus(x)) (Misra), as torch.nn.Mish; gradient t + x sigmoid(x) (1 - t^2),
    t = tanh(softplus(x))."""

    def _forward(self, x):
        one = x.dtype.type(1)
        with np.errstate(over="ignore"):  # (exp(x) = inf: softplus inf, tanh 1, y = x)
            t = np.tanh(np.log1p(np.exp(x)))
            sigmoid = one / (one + np.exp(-x))
        return x * t, t + x * sigmoid * (one - t * t)


class LogSigmoid(_Slope):
    """log(sigmoid(x)) = min(x, 0) - log(1 + exp(-|x|)) (no overflow), as torch.nn.LogSigmoid;
    gradient sigmoid(-x)."""

    def __init__(self) -> None:
        super().__init__()  # (torch's LogSigmoid takes no inplace)

    def _forward(self, x):
        one = x.dtype.type(1)
        z = np.exp(-np.abs(x))
        y = np.minimum(x, x.dtype.type(0)) - np.log1p(z)
        return y, np.where(x < 0, one, z) / (one + z)


class PReLU(Module):
    """max(0, x) + a min(0, x) with a learnt slope a, as torch.nn.PReLU: one shared slope
    (num_parameters=1) or one per channel (axis 1), initialised to ``init``. State dict:
    ``weight`` (num_parameters,). Gradients (PyTorch's, a at x = 0): dL/dx = g for x > 0,
    a g otherwise; dL/da = sum of g x over x <= 0."""

    def __init__(self, num_parameters: int = 1, init: float = 0.25, dtype=np.float32) -> None:
        super().__init__()
        self.num_parameters = _positive_int(num_parameters, "num_parameters", "PReLU")
        self.weight = Parameter(np.full(self.num_parameters, init, _float_dtype(dtype, "PReLU")))

    def _slope_shape(self, x: np.ndarray) -> tuple:
        n = self.num_parameters
        if n == 1:
            return (1,) * x.ndim
        if x.ndim < 2 or x.shape[1] != n:
            raise ValueError(f"{self!r}: input of shape {x.shape} has not {n} channels on axis 1")
        return (1, n) + (1,) * (x.ndim - 2)

    def forward(self, x: np.ndarray) -> np.ndarray:
        w = self.weight.data
        x = _as_input(self, x, w.dtype)
        a = w.reshape(self._slope_shape(x))
        neg = ~(x > 0)  # (NaN: a * NaN = NaN either way)
        self._cache = (x, neg, a)
        return np.where(neg, a * x, x)

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        x, neg, a = self._get_cache()
        g = self._check_grad(grad_y, x.shape, x.dtype)
        if self.weight.requires_grad:
            gx_neg = np.where(neg, g * x, x.dtype.type(0))
            axes = tuple(i for i in range(x.ndim) if not (self.num_parameters > 1 and i == 1))
            self.weight.accumulate_grad(gx_neg.sum(axis=axes).reshape(self.num_parameters))
        return np.where(neg, g * a, g) if input_grad else None

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def extra_repr(self) -> str:
        return f"num_parameters={self.num_parameters}"


def _softmax_dim(dim, ndim: int, layer) -> int:
    """The axis of a Softmax/LogSoftmax: `dim` (negative counts from the end) or, as PyTorch's
    deprecated implicit choice when None, 0 for 0-, 1- and 3-D input and 1 otherwise."""
    if dim is None:
        warnings.warn(f"{type(layer).__name__}: implicit dimension choice (dim=None) is "
                      f"deprecated in PyTorch; pass dim", UserWarning, stacklevel=3)
        return 0 if ndim in (0, 1, 3) else 1
    if not -max(ndim, 1) <= dim < max(ndim, 1):
        raise ValueError(f"{layer!r}: dim {dim} is out of range for input of {ndim} axes")
    return dim % max(ndim, 1)


class _SoftmaxBase(_Elementwise):
    """Softmax and LogSoftmax: ``_values`` (softmax or log_softmax) along ``dim`` forward,
    ``_input_grad`` backward."""

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, (int, np.integer))):
            raise TypeError(f"{type(self).__name__}: dim must be an int or None, got {dim!r}")
        self.dim = None if dim is None else int(dim)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _as_input(self, x, None)
        axis = _softmax_dim(self.dim, x.ndim, self)
        y = self._values(x, axis=axis) if x.ndim else self._values(x[None], axis=0)[0]
        self._cache = (y, axis)
        return y

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray:
        y, axis = self._get_cache()
        g = self._grad(grad_y, y)
        if not y.ndim:  # (one value: the output is constant)
            return np.zeros_like(y)
        return self._input_grad(y, g, axis)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Softmax(_SoftmaxBase):
    """exp(x) / sum(exp(x)) along ``dim`` (the max subtracted first: no overflow), as
    torch.nn.Softmax; gradient y (g - sum(g y))."""

    _values = staticmethod(softmax)

    @staticmethod
    def _input_grad(y, g, axis):
        return y * (g - (g * y).sum(axis=axis, keepdims=True))


class LogSoftmax(_SoftmaxBase):
    """log(softmax(x)) along ``dim``, as (x - max) - log(sum(exp(x - max))) (torch.nn.LogSoftmax;
    before NLLLoss it makes CrossEntropyLoss); gradient g - exp(y) sum(g)."""

    _values = staticmethod(log_softmax)

    @staticmethod
    def _input_grad(y, g, axis):
        return g - np.exp(y) * g.sum(axis=axis, keepdims=True)
