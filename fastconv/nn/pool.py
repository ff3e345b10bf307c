"""Pooling layers (run on the backend's ops)."""

from __future__ import annotations

from fractions import Fraction
from typing import NamedTuple

import numpy as np

from .. import _args
from .module import (Module, _accepts_unbatched, _as_input, _call_forward, _check_4d, _shape_4d,
                     _shape_accepts_unbatched, _unbatched_backward)


class MaxPoolContext(NamedTuple):
    """What MaxPool2d's backward needs from its forward: the ops that ran it, the arg-max
    indices, the input's shape, the output and whether a ReLU was applied to it (relu=True)."""

    ops: object
    indices: np.ndarray
    input_shape: tuple
    output: np.ndarray
    relu: bool


class _Pool2d(Module):
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int] = (1, 1)
    ceil_mode: bool

    def _init_geometry(self, name, kernel_size, stride, padding, ceil_mode):
        self.kernel_size = _args.positive_pair(kernel_size, "kernel_size", name)
        if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0):
            self.stride = self.kernel_size
        else:
            self.stride = _args.positive_pair(stride, "stride", name)
        self.padding = _args.nonnegative_pair(padding, "padding", name)
        if self.padding[0] > self.kernel_size[0] // 2 or self.padding[1] > self.kernel_size[1] // 2:
            raise ValueError(f"{name}: padding {self.padding} should be at most half of "
                             f"kernel_size {self.kernel_size}")
        self.ceil_mode = _args.flag(ceil_mode, "ceil_mode", name)

    @_shape_accepts_unbatched
    def output_shape(self, input_shape):
        shape = _shape_4d(self, input_shape)
        geom = _args.pool2d_geometry(shape, self.kernel_size, self.stride, self.padding,
                                     self.dilation, self.ceil_mode, op=repr(self))
        return geom.output_shape

    def _receptive(self, input_shape):
        return self.kernel_size, self.stride, self.dilation, self.padding


class MaxPool2d(_Pool2d):
    """Max pooling over (N, C, H, W) (or one unbatched (C, H, W), as PyTorch's); stride
    defaults to kernel_size; padding pads with -inf. Arguments in PyTorch's order; with
    ``return_indices=True`` forward returns (output, indices), each index the arg-max's flat
    position in its input plane (H * W), int64, as PyTorch's (unbatched for an unbatched
    input).

    Backward routes each output gradient to the arg-max position (indices from the forward).
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1,
                 return_indices: bool = False, ceil_mode: bool = False) -> None:
        super().__init__()
        self._init_geometry("MaxPool2d", kernel_size, stride, padding, ceil_mode)
        self.dilation = _args.positive_pair(dilation, "dilation", "MaxPool2d")
        self.return_indices = _args.flag(return_indices, "return_indices", "MaxPool2d")

    @_accepts_unbatched
    def forward(self, x: np.ndarray):
        y, self._cache = self._forward_ctx(x)
        if self.return_indices:  # (a copy: the backward keeps its own)
            return y, self._cache.indices.astype(np.int64, copy=True)
        return y

    @_unbatched_backward
    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray:
        return self._backward_ctx(self._get_cache(), grad_y)

    # Stateless pieces, for this layer's own forward/backward and for fusion.py's steps.
    def _forward_ctx(self, x: np.ndarray, relu: bool = False) -> tuple[np.ndarray, MaxPoolContext]:
        """(output, context for _backward_ctx); relu=True returns relu(pool(x)) (a ReLU before
        or after this layer), and the backward then takes the gradient of that output."""
        x = _as_input(self, x, None)
        _check_4d(self, x)
        ops = self._ops()
        y, idx = ops.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation,
                                self.ceil_mode, return_indices=True, relu=relu)
        return y, MaxPoolContext(ops, idx, x.shape, y, relu)

    def _backward_ctx(self, ctx: MaxPoolContext, grad_y: np.ndarray) -> np.ndarray:
        ops, idx, x_shape, y, relu = ctx
        grad_y = self._check_grad(grad_y, y.shape, y.dtype)
        return ops.max_pool2d_backward(grad_y, idx, x_shape, relu_output=y if relu else None)

    def extra_repr(self) -> str:
        s = f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.return_indices:
            s += ", return_indices=True"
        if self.ceil_mode:
            s += ", ceil_mode=True"
        return s


class AvgPool2d(_Pool2d):
    """Average pooling over (N, C, H, W) (or one unbatched (C, H, W), as PyTorch's); stride
    defaults to kernel_size; arguments in PyTorch's order.

    count_include_pad: divide by the full window size (True) or by the number of input pixels
    in the window (False). divisor_override: a non-zero int dividing every window's sum
    instead (None: the window's divisor), as torch.nn.AvgPool2d's.
    """

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
                 count_include_pad: bool = True, divisor_override: int | None = None) -> None:
        super().__init__()
        self._init_geometry("AvgPool2d", kernel_size, stride, padding, ceil_mode)
        self.count_include_pad = _args.flag(count_include_pad, "count_include_pad", "AvgPool2d")
        self.divisor_override = _args.divisor_override(divisor_override, "AvgPool2d")

    @_accepts_unbatched
    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _as_input(self, x, None)
        _check_4d(self, x)
        ops = self._ops()
        y = ops.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                           self.count_include_pad, self.divisor_override)
        self._cache = (ops, x.shape, y.shape, y.dtype)
        return y

    @_unbatched_backward
    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray:
        ops, x_shape, y_shape, dtype = self._get_cache()
        grad_y = self._check_grad(grad_y, y_shape, dtype)
        return ops.avg_pool2d_backward(grad_y, x_shape, self.kernel_size, self.stride, self.padding,
                                       self.ceil_mode, self.count_include_pad,
                                       self.divisor_override)

    def extra_repr(self) -> str:
        s = f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
        if self.ceil_mode:
            s += ", ceil_mode=True"
        if not self.count_include_pad:
            s += ", count_include_pad=False"
        if self.divisor_override is not None:
            s += f", divisor_override={self.divisor_override}"
        return s


class AdaptiveAvgPool2d(Module):
    """Average pooling to a fixed output size (N, C, H, W) -> (N, C, OH, OW) (or unbatched
    (C, H, W) -> (C, OH, OW), as PyTorch's), whatever the input's size: output row i averages
    input rows [floor(i H / OH), ceil((i + 1) H / OH)), columns likewise. output_size: an int or a pair, a None entry keeping that input size
    (AdaptiveAvgPool2d(1) is global average pooling)."""

    def __init__(self, output_size) -> None:
        super().__init__()
        _args.adaptive_output_size(output_size, "AdaptiveAvgPool2d")
        self.output_size = output_size

    @_accepts_unbatched
    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _as_input(self, x, None)
        _check_4d(self, x)
        ops = self._ops()
        y = ops.adaptive_avg_pool2d(x, self.output_size)
        self._cache = (ops, x.shape, y.shape, y.dtype)
        return y

    @_unbatched_backward
    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray:
        ops, x_shape, y_shape, dtype = self._get_cache()
        return ops.adaptive_avg_pool2d_backward(self._check_grad(grad_y, y_shape, dtype), x_shape)

    @_shape_accepts_unbatched
    def output_shape(self, input_shape):
        return _args.adaptive_pool2d_output_shape(_shape_4d(self, input_shape), self.output_size,
                                                  repr(self), "input")

    def _receptive(self, input_shape):
        """(kernel, stride, dilation, padding) per axis for the summary's receptive field: the
        largest window and the largest step between windows (exact where the output size
        divides the input size, an upper bound otherwise)."""
        shape = self.output_shape(input_shape)
        kernel, stride = [], []
        for size, out in zip(_shape_4d(self, input_shape)[2:], shape[2:]):
            start, end = _args.adaptive_windows(size, max(out, 1))
            kernel.append(int((end - start).max()))
            stride.append(int(np.diff(start).max()) if out > 1 else size)
        return tuple(kernel), tuple(stride), (1, 1), (0, 0)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class MaxUnpool2d(Module):
    """The partial inverse of MaxPool2d, as torch.nn.MaxUnpool2d: ``unpool(x, indices,
    output_size=None)`` puts each value of x (N, C, H, W) at its position ``indices`` (a
    MaxPool2d(return_indices=True)'s, flat in each output plane) of an output of zeros, as
    SegNet-style decoders do. Output size: (H - 1) stride - 2 padding + kernel_size per axis
    by default; ``output_size`` (OH, OW) or (N, C, OH, OW) picks one within stride of it (the
    pooled input's size, where the pooling's floor dropped rows). An unbatched x (C, H, W)
    takes unbatched indices and gives an unbatched output, as PyTorch's; its output_size is
    (OH, OW), or 4 entries whose first two are ignored (PyTorch refuses 3 entries here).

    It takes two inputs, so, as in PyTorch, it is no layer of a Sequential (which passes one):
    call it from a module's own forward, with the indices of the MaxPool2d it undoes, and its
    backward from that module's backward (it returns the gradient of x; indices have none).
    Where indices repeat, the last value (row-major) stays and each gets that position's
    gradient (PyTorch leaves which value stays unspecified).
    """

    def __init__(self, kernel_size, stride=None, padding=0) -> None:
        super().__init__()
        self.kernel_size = _args.positive_pair(kernel_size, "kernel_size", "MaxUnpool2d")
        if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0):
            self.stride = self.kernel_size
        else:
            self.stride = _args.positive_pair(stride, "stride", "MaxUnpool2d")
        self.padding = _args.nonnegative_pair(padding, "padding", "MaxUnpool2d")

    def __call__(self, x: np.ndarray, indices: np.ndarray | None = None,
                 output_size=None) -> np.ndarray:
        return _call_forward(self, self.forward, x, indices, output_size)

    @_accepts_unbatched(arrays=("indices",))
    def forward(self, x: np.ndarray, indices: np.ndarray | None = None,
                output_size=None) -> np.ndarray:
        """Unpool `x` to the positions `indices` (x's shape); see the class docstring."""
        if indices is None:
            raise TypeError(f"{self!r} takes (input, indices[, output_size]), the indices of a "
                            f"MaxPool2d(return_indices=True); it cannot be a layer of a "
                            f"Sequential, which passes one array (neither in PyTorch): call it "
                            f"from a module's forward")
        x = _as_input(self, x, None)
        _check_4d(self, x)
        ops = self._ops()
        y = ops.max_unpool2d(x, indices, self.kernel_size, self.stride, self.padding,
                             output_size)
        # a copy even of int64 indices: backward reads them, and the caller's array could
        # change before it (NumPy has no version counter; torch's autograd would raise)
        self._cache = (ops, np.array(indices, dtype=np.int64), y.shape, y.dtype)
        return y

    @_unbatched_backward
    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray:
        ops, indices, y_shape, dtype = self._get_cache()
        return ops.max_unpool2d_backward(self._check_grad(grad_y, y_shape, dtype), indices)

    @_shape_accepts_unbatched
    def output_shape(self, input_shape):
        shape = _shape_4d(self, input_shape)
        return shape[:2] + _args.unpool_output_size(shape, self.kernel_size, self.stride,
                                                    self.padding, op=repr(self), name="input")

    def _receptive(self, input_shape):
        """(kernel, stride, dilation, padding) per axis for the summary's receptive field: an
        output pixel copies one input pixel (or none), and neighbouring windows of outputs are
        one input pixel apart: 1 / stride per output pixel."""
        return (1, 1), tuple(Fraction(1, s) for s in self.stride), (1, 1), (0, 0)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
