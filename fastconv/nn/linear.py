"""Dense layers, reshaping and constant maps: Linear, Flatten, Unflatten, Identity, Mul."""

from __future__ import annotations

import math
import numbers

import numpy as np

from .. import init as _init
from .module import Module, Parameter, _as_input, _float_dtype, _positive_int


class Linear(Module):
    """y = x @ weight.T + bias over the last axis: (*, in_features) -> (*, out_features).

    weight: (out_features, in_features). Default init as PyTorch: U(-1/sqrt(in), 1/sqrt(in)).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype=np.float32, rng=None) -> None:
        super().__init__()
        self.in_features = _positive_int(in_features, "in_features", "Linear")
        self.out_features = _positive_int(out_features, "out_features", "Linear")
        dt = _float_dtype(dtype, "Linear")
        self.weight = Parameter(np.empty((self.out_features, self.in_features), dt))
        if bias:
            self.bias = Parameter(np.empty(self.out_features, dt))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters(rng)

    def reset_parameters(self, rng=None) -> None:
        """PyTorch's default initialisation (see :func:`fastconv.init.default_init_`)."""
        _init.default_init_(self.weight, self.bias, rng)

    def _check(self, shape) -> None:
        if len(shape) < 1 or shape[-1] != self.in_features:
            raise ValueError(f"{self!r}: expected input of shape (N, {self.in_features}) "
                             f"(last axis {self.in_features}), got {tuple(shape)}")

    def forward(self, x: np.ndarray) -> np.ndarray:
        w = self.weight.data
        x = _as_input(self, x, w.dtype)
        self._check(x.shape)
        ops = self._ops()
        precision = self._op_precision(w.dtype)
        y = ops.linear(x, w, None if self.bias is None else self.bias.data, precision=precision)
        self._cache = (ops, x, y.shape, precision)
        return y

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        ops, x, y_shape, precision = self._get_cache()
        w = self.weight.data
        grad_y = self._check_grad(grad_y, y_shape, w.dtype)
        bias = self.bias
        # (frozen parameters' gradients are not asked for)
        mask = (bool(input_grad), self.weight.requires_grad, bias is not None and bias.requires_grad)
        if not any(mask):
            return None
        gx, gw, gb = ops.linear_backward(grad_y, x, w, output_mask=mask, precision=precision)
        if gw is not None:
            self.weight.accumulate_grad(gw)
        if gb is not None:
            bias.accumulate_grad(gb)
        return gx

    def output_shape(self, input_shape):
        self._check(input_shape)
        return tuple(input_shape[:-1]) + (self.out_features,)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


def _dim(value, name: str, layer: str = "Flatten") -> int:
    """An axis argument as an int; a float (1.0), a bool or a string is a TypeError, as torch's."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{layer}: {name} must be an int, got {value!r}")
    return int(value)


class Flatten(Module):
    """Flatten axes start_dim..end_dim into one: (N, C, H, W) -> (N, C*H*W) by default.
    A view when the input is contiguous."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim = _dim(start_dim, "start_dim")
        self.end_dim = _dim(end_dim, "end_dim")

    def _out(self, shape) -> tuple[int, ...]:
        nd = len(shape)
        if nd == 0:  # as torch: a scalar's dims are those of a 1-d array (0 and -1)
            if self.start_dim in (0, -1) and self.end_dim in (0, -1):
                return (1,)
            raise ValueError(f"{self!r}: cannot flatten dims {self.start_dim}..{self.end_dim} "
                             f"of a 0-d input (shape ())")
        s = self.start_dim + nd if self.start_dim < 0 else self.start_dim
        e = self.end_dim + nd if self.end_dim < 0 else self.end_dim
        if not (0 <= s < nd and 0 <= e < nd) or s > e:
            raise ValueError(f"{self!r}: cannot flatten dims {self.start_dim}..{self.end_dim} "
                             f"of an input of shape {tuple(shape)}")
        return tuple(shape[:s]) + (math.prod(shape[s:e + 1]),) + tuple(shape[e + 1:])

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _as_input(self, x, None)
        y = x.reshape(self._out(x.shape))
        self._cache = (x.shape, y.shape)
        return y

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray:
        x_shape, y_shape = self._get_cache()
        grad_y = np.asarray(grad_y)
        if grad_y.shape != y_shape:
            raise ValueError(f"{self!r}.backward: grad_y has shape {grad_y.shape}, "
                             f"expected the output shape {y_shape}")
        return grad_y.reshape(x_shape)

    def output_shape(self, input_shape):
        return self._out(tuple(input_shape))

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Unflatten(Module):
    """Split axis ``dim`` of the input into ``unflattened_size``, as torch.nn.Unflatten:
    Unflatten(1, (C, H, W)) takes (N, C*H*W) to (N, C, H, W). One entry may be -1 (inferred
    from the others). A view when the input is contiguous; backward reshapes back."""

    def __init__(self, dim: int, unflattened_size) -> None:
        super().__init__()
        sizes = unflattened_size
        if not isinstance(sizes, (tuple, list)) or not all(
                isinstance(s, (numbers.Integral, np.integer)) and not isinstance(s, bool)
                for s in sizes):
            raise TypeError(f"Unflatten: unflattened_size must be a tuple (or list) of ints, "
                            f"got {unflattened_size!r}")
        if not sizes or sum(s == -1 for s in sizes) > 1 or any(s < -1 for s in sizes):
            raise ValueError(f"Unflatten: unflattened_size must be non-negative sizes with at "
                             f"most one -1, got {unflattened_size!r}")
        self.dim = _dim(dim, "dim", "Unflatten")
        # (a list stays a list, as PyTorch keeps it: the repr shows what was given)
        ints = [int(s) for s in sizes]
        self.unflattened_size = ints if isinstance(sizes, list) else tuple(ints)

    def _out(self, shape) -> tuple[int, ...]:
        nd = len(shape)
        if not -nd <= self.dim < nd:
            raise ValueError(f"{self!r}: dim {self.dim} is out of range for an input of shape "
                             f"{tuple(shape)}")
        d = self.dim % nd
        sizes = list(self.unflattened_size)
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes and known and shape[d] % known == 0:
            sizes[sizes.index(-1)] = shape[d] // known
        if -1 in sizes or math.prod(sizes) != shape[d]:
            raise ValueError(f"{self!r}: unflattened_size {tuple(self.unflattened_size)} does not "
                             f"split dim {self.dim} of size {shape[d]} (input of shape "
                             f"{tuple(shape)})")
        return tuple(shape[:d]) + tuple(sizes) + tuple(shape[d + 1:])

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _as_input(self, x, None)
        y = x.reshape(self._out(x.shape))
        self._cache = (x.shape, y.shape, y.dtype)
        return y

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray:
        x_shape, y_shape, dtype = self._get_cache()
        return self._check_grad(grad_y, y_shape, dtype).reshape(x_shape)

    def output_shape(self, input_shape):
        return self._out(tuple(input_shape))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, unflattened_size={self.unflattened_size}"


class Identity(Module):
    """y = x. Takes any arguments and ignores them, as PyTorch's (a placeholder for a layer
    built with arguments)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _as_input(self, x, None)
        self._cache = (x.shape,)
        return x

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray:
        self._get_cache()
        return grad_y

    def output_shape(self, input_shape):
        return tuple(input_shape)


class Mul(Module):
    """y = x * scale, a constant (not a parameter: no state-dict entry); gradient
    grad_y * scale. As the ``Mul`` module PyTorch users write for it (airbench's; ResNet-9's
    logits are scaled by 0.125)::

        class Mul(torch.nn.Module):
            def __init__(self, scale):
                super().__init__()
                self.scale = scale
            def forward(self, x):
                return x * self.scale
    """

    def __init__(self, scale: float) -> None:
        super().__init__()
        if isinstance(scale, bool) or not isinstance(scale, (numbers.Real, np.floating, np.integer)) \
                or not math.isfinite(float(scale)):
            raise TypeError(f"Mul: scale must be a finite real number, got {scale!r}")
        self.scale = float(scale)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _as_input(self, x, None)
        self._cache = (x.shape, x.dtype)
        return x * x.dtype.type(self.scale)

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray:
        shape, dtype = self._get_cache()
        return self._check_grad(grad_y, shape, dtype) * dtype.type(self.scale)

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"
