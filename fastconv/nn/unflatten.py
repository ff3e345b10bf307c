"""Unflatten: one axis split into several (the inverse of Flatten)."""

from __future__ import annotations

import math
import numbers

import numpy as np

from .module import Module, _as_input


class Unflatten(Module):
    """Split axis ``dim`` of the input into ``unflattened_size``, as torch.nn.Unflatten:
    Unflatten(1, (C, H, W)) takes (N, C*H*W) to (N, C, H, W). One entry may be -1 (inferred
    from the others). A view when the input is contiguous; backward reshapes back."""

    def __init__(self, dim: int, unflattened_size) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, (numbers.Integral, np.integer)):
            raise TypeError(f"Unflatten: dim must be an int, got {dim!r}")
        sizes = unflattened_size
        if not isinstance(sizes, (tuple, list)) or not all(
                isinstance(s, (numbers.Integral, np.integer)) and not isinstance(s, bool)
                for s in sizes):
            raise TypeError(f"Unflatten: unflattened_size must be a tuple (or list) of ints, "
                            f"got {unflattened_size!r}")
        if not sizes or sum(s == -1 for s in sizes) > 1 or any(s < -1 for s in sizes):
            raise ValueError(f"Unflatten: unflattened_size must be non-negative sizes with at "
                             f"most one -1, got {unflattened_size!r}")
        self.dim = int(dim)
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
