"""Convolution layers (run on the backend's ops)."""

from __future__ import annotations

import math
import numbers
from fractions import Fraction
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from .. import _args
from .. import init as _init
from .module import (Module, Parameter, _accepts_unbatched, _as_input, _call_forward, _check_4d,
                     _float_dtype, _positive_int, _shape_4d, _shape_accepts_unbatched,
                     _unbatched_backward)
from .pool import MaxPoolContext

if TYPE_CHECKING:
    from .pool import MaxPool2d


class ConvContext(NamedTuple):
    """What Conv2d's backward needs from its forward: the ops that ran it, the input (checked,
    in the weight's dtype), the output's shape and the precision it ran in ("f32"/"bf16")."""

    ops: object
    x: np.ndarray
    output_shape: tuple
    precision: str


# Conv2d's padding_mode -> the mode of functional.pad that fills the padding ("zeros": the
# kernels' own zero padding).
_PADDING_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate",
                  "circular": "circular"}


def _channels(in_channels, out_channels, groups, name: str) -> tuple[int, int, int]:
    """(in_channels, out_channels, groups) of a convolution layer: positive ints, the channel
    counts divisible by groups."""
    in_channels = _positive_int(in_channels, "in_channels", name)
    out_channels = _positive_int(out_channels, "out_channels", name)
    groups = _positive_int(groups, "groups", name)
    if in_channels % groups:
        raise ValueError(f"{name}: in_channels ({in_channels}) must be divisible by groups ({groups})")
    if out_channels % groups:
        raise ValueError(f"{name}: out_channels ({out_channels}) must be divisible by groups ({groups})")
    return in_channels, out_channels, groups


def _add_parameters(layer: Module, weight_channels: tuple[int, int], bias: bool, dtype,
                    rng) -> None:
    """layer.weight of shape weight_channels + kernel_size, layer.bias (out_channels,) or
    None, in `dtype`, with PyTorch's default initialisation."""
    dt = _float_dtype(dtype, type(layer).__name__)
    layer.weight = Parameter(np.empty(weight_channels + layer.kernel_size, dt))
    if bias:
        layer.bias = Parameter(np.empty(layer.out_channels, dt))
    else:
        layer.register_parameter("bias", None)
    layer.reset_parameters(rng)


class _ConvLayer(Module):
    """What Conv2d and ConvTranspose2d share: PyTorch's default initialisation and the
    gradients of trainable parameters only."""

    weight: Parameter
    bias: Parameter | None

    def reset_parameters(self, rng=None) -> None:
        """PyTorch's default initialisation (see :func:`fastconv.init.default_init_`)."""
        _init.default_init_(self.weight, self.bias, rng)

    def _grad_mask(self) -> tuple[bool, bool]:
        """Which of (weight, bias) gradients are wanted: not those of frozen parameters."""
        bias = self.bias
        return self.weight.requires_grad, bias is not None and bias.requires_grad

    def _accumulate(self, gw, gb) -> None:
        if gw is not None:
            self.weight.accumulate_grad(gw)
        if gb is not None:
            self.bias.accumulate_grad(gb)


class Conv2d(_ConvLayer):
    """2-D convolution (cross-correlation) over (N, C_in, H, W) -> (N, C_out, H_out, W_out),
    or one unbatched image (C_in, H, W) -> (C_out, H_out, W_out), as PyTorch's.

        H_out = (H + 2 p - d (k - 1) - 1) // s + 1

    weight: (out_channels, in_channels / groups, kH, kW); bias: (out_channels,).
    Default initialisation as PyTorch: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
    fan_in = in_channels / groups * kH * kW. padding may be an int, a pair, 'valid' or 'same';
    padding_mode what fills it, as PyTorch's: "zeros", or "reflect", "replicate", "circular"
    (the input padded by :func:`fastconv.functional.pad` first, then convolved unpadded).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 dtype=np.float32, rng=None) -> None:
        super().__init__()
        name = "Conv2d"
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"{name}: padding_mode must be one of "
                             f"{', '.join(map(repr, _PADDING_MODES))}, got {padding_mode!r}")
        self.padding_mode = padding_mode
        self.in_channels, self.out_channels, groups = _channels(in_channels, out_channels,
                                                                groups, name)
        self.kernel_size = _args.positive_pair(kernel_size, "kernel_size", name)
        self.stride = _args.positive_pair(stride, "stride", name)
        self.dilation = _args.positive_pair(dilation, "dilation", name)
        if isinstance(padding, str):
            if padding not in ("valid", "same"):
                raise ValueError(f"{name}: padding must be 'valid', 'same', an int or a pair, got {padding!r}")
            if padding == "same" and self.stride != (1, 1):
                raise ValueError(f"{name}: padding='same' is not supported for strided convolutions")
            self.padding = padding
        else:
            self.padding = _args.nonnegative_pair(padding, "padding", name)
        self.groups = groups
        _add_parameters(self, (self.out_channels, self.in_channels // groups), bias, dtype, rng)

    def _inputs(self, x: np.ndarray):
        """(x checked and in the weight's dtype, weight, bias or None)."""
        w = self.weight.data
        x = _as_input(self, x, w.dtype)
        _check_4d(self, x, self.in_channels)
        return x, w, self.bias.data if self.bias is not None else None

    @_accepts_unbatched
    def forward(self, x: np.ndarray) -> np.ndarray:
        y, self._cache = self._forward_ctx(x)
        return y

    @_unbatched_backward
    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        return self._backward_ctx(self._get_cache(), grad_y, input_grad)

    # Stateless pieces: forward and backward with the forward's context passed explicitly, for
    # this layer's own forward/backward and for the fused steps of fusion.py.
    def explicit_padding(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """((top, left), (bottom, right)): the padding in pixels, 'same' and 'valid' resolved
        (PyTorch's 'same' puts the odd pixel of an even total d (k - 1) at the end)."""
        if self.padding == "valid":
            return (0, 0), (0, 0)
        if self.padding == "same":
            total = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
            begin = tuple(t // 2 for t in total)
            return begin, tuple(t - b for t, b in zip(total, begin))
        return self.padding, self.padding

    def _kernel_padding(self):
        """The padding the conv kernels apply: none when padding_mode pads the input first."""
        return self.padding if self.padding_mode == "zeros" else (0, 0)

    def _mode_pad(self) -> tuple[int, int, int, int]:
        """functional.pad's (left, right, top, bottom) for padding_mode."""
        (top, left), (bottom, right) = self.explicit_padding()
        return left, right, top, bottom

    def _forward_ctx(self, x: np.ndarray) -> tuple[np.ndarray, ConvContext]:
        """(output, context for _backward_ctx)."""
        x, w, b = self._inputs(x)
        ops = self._ops()
        if self.padding_mode != "zeros":
            x = ops.pad(x, self._mode_pad(), _PADDING_MODES[self.padding_mode])
        precision = self._op_precision(w.dtype)
        y = ops.conv2d(x, w, b, self.stride, self._kernel_padding(), self.dilation, self.groups,
                       precision=precision)
        return y, ConvContext(ops, x, y.shape, precision)

    def _backward_ctx(self, ctx: ConvContext, grad_y: np.ndarray,
                      input_grad: bool = True) -> np.ndarray | None:
        """Accumulate the trainable parameters' gradients; return dL/dx (None without
        input_grad). The kernels are asked for nothing else (output_mask)."""
        ops, x, y_shape, precision = ctx
        self._check_unchanged(x, y_shape)
        w = self.weight.data
        grad_y = self._check_grad(grad_y, y_shape, w.dtype)
        mask = (bool(input_grad), *self._grad_mask())
        if not any(mask):
            return None
        gx, gw, gb = ops.conv2d_backward(grad_y, x, w, self.stride, self._kernel_padding(),
                                         self.dilation, self.groups, output_mask=mask,
                                         precision=precision)
        self._accumulate(gw, gb)
        if gx is not None and self.padding_mode != "zeros":  # x is the padded input
            (top, left), (bottom, right) = self.explicit_padding()
            shape = x.shape[:2] + (x.shape[2] - top - bottom, x.shape[3] - left - right)
            gx = ops.pad_backward(gx, shape, self._mode_pad(), _PADDING_MODES[self.padding_mode])
        return gx

    def _forward_max_pool_ctx(self, pool: "MaxPool2d", x: np.ndarray, relu: bool):
        """This layer's forward and then `pool`'s (relu: with a ReLU between them, fused into
        the pooling) as one op, conv2d_max_pool2d of this layer's ops (fusion.py runs it only
        where both layers have one backend). Returns (pooled output, this layer's context,
        the pooling's context), the contexts those of the two layers run one after the other."""
        x, w, b = self._inputs(x)
        ops = self._ops()
        if self.padding_mode != "zeros":
            x = ops.pad(x, self._mode_pad(), _PADDING_MODES[self.padding_mode])
        precision = self._op_precision(w.dtype)
        padding = self._kernel_padding()
        y_shape = _args.conv2d_geometry(x.shape, w.shape, self.stride, padding,
                                        self.dilation, self.groups, op=repr(self)).output_shape
        pooled, idx = ops.conv2d_max_pool2d(
            x, w, b, self.stride, padding, self.dilation, self.groups,
            kernel_size=pool.kernel_size, pool_stride=pool.stride, pool_padding=pool.padding,
            pool_dilation=pool.dilation, ceil_mode=pool.ceil_mode, relu=relu, precision=precision)
        return (pooled, ConvContext(ops, x, y_shape, precision),
                MaxPoolContext(ops, idx, y_shape, pooled, relu))

    def _check_unchanged(self, x: np.ndarray, y_shape: tuple) -> None:
        """ValueError unless the layer (weight shape, stride, padding, dilation, groups) still
        maps the saved input to the saved output's shape: changed after the forward, its
        backward would pair them wrongly (the fused conv -> pool backward did, silently)."""
        now = _args.conv2d_output_shape(x.shape, self.weight.data.shape, self.stride,
                                        self._kernel_padding(), self.dilation, self.groups)
        if tuple(now) != tuple(y_shape):
            raise ValueError(f"{self!r}: changed since its forward (its output would now be "
                             f"{tuple(now)}, not {tuple(y_shape)}): run forward again before "
                             f"backward")

    def _backward_through_max_pool_ctx(self, ctx: ConvContext, pool: "MaxPool2d",
                                       pool_ctx: MaxPoolContext, grad_pooled: np.ndarray) -> None:
        """Backward of this layer and of the max pooling run after it (`pool`, its context;
        a ReLU may be fused into the pooling) in one op, without this layer's input gradient
        (the first layer of a network). Accumulates the trainable parameters' gradients as
        backward would."""
        ops, x, y_shape, precision = ctx
        self._check_unchanged(x, y_shape)
        if tuple(pool_ctx.input_shape) != tuple(y_shape):
            raise ValueError(f"{self!r}: the pooling after it saw input {pool_ctx.input_shape}, "
                             f"not this layer's output {y_shape}")
        y = pool_ctx.output
        grad_pooled = pool._check_grad(grad_pooled, y.shape, y.dtype)
        mask = self._grad_mask()
        if not any(mask):
            return
        gw, gb = ops.conv2d_backward_through_max_pool(
            grad_pooled, pool_ctx.indices, x, self.weight.data, self.stride, self._kernel_padding(),
            self.dilation, self.groups, relu_output=y if pool_ctx.relu else None,
            output_mask=mask, precision=precision)
        self._accumulate(gw, gb)

    @_shape_accepts_unbatched
    def output_shape(self, input_shape):
        shape = _shape_4d(self, input_shape, self.in_channels)
        if self.padding_mode != "zeros":  # forward pads first: its checks (reflect: pad < size)
            _args.pad_geometry(shape, self._mode_pad(), _PADDING_MODES[self.padding_mode],
                               repr(self))
        geom = _args.conv2d_geometry(shape, self.weight.data.shape, self.stride, self.padding,
                                     self.dilation, self.groups, op=repr(self))
        return geom.output_shape

    def _receptive(self, input_shape):
        """(kernel, stride, dilation, left padding) per axis, for the receptive-field table."""
        return self.kernel_size, self.stride, self.dilation, self.explicit_padding()[0]

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding!r}" if isinstance(self.padding, str) else f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s


class ConvTranspose2d(_ConvLayer):
    """Transposed convolution (N, C_in, H, W) -> (N, C_out, H_out, W_out) (or unbatched
    (C_in, H, W) -> (C_out, H_out, W_out), as PyTorch's): the gradient of a
    Conv2d with respect to its input, which upsamples by the stride:

        H_out = (H - 1) s - 2 p + d (k - 1) + output_padding + 1

    weight: (in_channels, out_channels / groups, kH, kW); bias: (out_channels,). Default
    initialisation as PyTorch's: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in
    taken from the weight as for Conv2d, weight.shape[1] * kH * kW = out_channels / groups *
    kH * kW. ``forward(x, output_size=(H_out, W_out))`` picks the output_padding that gives that
    size (between the smallest size and stride - 1 more), as PyTorch's; output_size may also be
    the whole output shape, (N, C_out, H_out, W_out), or (C_out, H_out, W_out) for an
    unbatched x (the leading entries are not checked, as in PyTorch).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 output_padding=0, groups: int = 1, bias: bool = True, dilation=1,
                 padding_mode: str = "zeros", dtype=np.float32, rng=None) -> None:
        super().__init__()
        name = "ConvTranspose2d"
        if padding_mode != "zeros":  # (as PyTorch: its padding removes output, adds no input)
            raise ValueError(f"{name}: only padding_mode='zeros' is supported, got "
                             f"{padding_mode!r}")
        self.padding_mode = padding_mode
        self.in_channels, self.out_channels, groups = _channels(in_channels, out_channels,
                                                                groups, name)
        self.kernel_size = _args.positive_pair(kernel_size, "kernel_size", name)
        self.stride = _args.positive_pair(stride, "stride", name)
        self.padding = _args.nonnegative_pair(padding, "padding", name)
        self.dilation = _args.positive_pair(dilation, "dilation", name)
        self.output_padding = self._check_output_padding(
            _args.nonnegative_pair(output_padding, "output_padding", name))
        self.groups = groups
        _add_parameters(self, (self.in_channels, self.out_channels // groups), bias, dtype, rng)

    def _check_output_padding(self, output_padding):
        if any(o >= s and o >= d for o, s, d in zip(output_padding, self.stride, self.dilation)):
            raise ValueError(f"ConvTranspose2d: output_padding {output_padding} must be smaller "
                             f"than either stride {self.stride} or dilation {self.dilation}")
        return output_padding

    def _output_padding(self, input_shape, output_size) -> tuple[int, int]:
        """The output_padding of a forward: the layer's, or the one that gives `output_size`
        ((H_out, W_out), or a whole shape whose last two entries are those)."""
        if output_size is None:
            return self.output_padding
        size = tuple(output_size) if isinstance(output_size, (tuple, list, np.ndarray)) else None
        if size is not None and len(size) not in (2, 4):  # (PyTorch's rule for 4-D input)
            raise ValueError(f"{self!r}: for 4-D input, output_size must have 2 or 4 elements "
                             f"(H_out, W_out) or (N, C_out, H_out, W_out), got {output_size!r}")
        size = None if size is None else size[-2:]
        if size is None or len(size) != 2 or not all(
                isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, bool) for v in size):
            raise TypeError(f"{self!r}: output_size must be (H_out, W_out) or a shape ending in "
                            f"them, got {output_size!r}")
        smallest = tuple((n - 1) * s - 2 * p + d * (k - 1) + 1 for n, s, p, d, k in zip(
            input_shape[2:], self.stride, self.padding, self.dilation, self.kernel_size))
        largest = tuple(m + s - 1 for m, s in zip(smallest, self.stride))
        if not all(lo <= v <= hi for v, lo, hi in zip(size, smallest, largest)):
            raise ValueError(f"{self!r}: requested an output size of {tuple(int(v) for v in size)}, "
                             f"but valid sizes range from {smallest} to {largest} (for an input "
                             f"of {tuple(input_shape[2:])})")
        return tuple(int(v) - m for v, m in zip(size, smallest))

    @_accepts_unbatched(output_size="output_size")
    def forward(self, x: np.ndarray, output_size=None) -> np.ndarray:
        w = self.weight.data
        x = _as_input(self, x, w.dtype)
        _check_4d(self, x, self.in_channels)
        output_padding = self._output_padding(x.shape, output_size)
        ops = self._ops()
        precision = self._op_precision(w.dtype)
        y = ops.conv_transpose2d(x, w, None if self.bias is None else self.bias.data,
                                 self.stride, self.padding, output_padding, self.groups,
                                 self.dilation, precision=precision)
        self._cache = (ops, x, y.shape, output_padding, precision)
        return y

    def __call__(self, x: np.ndarray, output_size=None) -> np.ndarray:
        return _call_forward(self, self.forward, x, output_size)

    @_unbatched_backward
    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        ops, x, y_shape, output_padding, precision = self._get_cache()
        w = self.weight.data
        grad_y = self._check_grad(grad_y, y_shape, w.dtype)
        mask = (bool(input_grad), *self._grad_mask())
        if not any(mask):
            return None
        gx, gw, gb = ops.conv_transpose2d_backward(
            grad_y, x, w, self.stride, self.padding, output_padding, self.groups, self.dilation,
            output_mask=mask, precision=precision)
        self._accumulate(gw, gb)
        return gx

    @_shape_accepts_unbatched
    def output_shape(self, input_shape):
        shape = _shape_4d(self, input_shape, self.in_channels)
        return _args.conv_transpose2d_geometry(shape, self.weight.data.shape, self.stride,
                                               self.padding, self.output_padding, self.groups,
                                               self.dilation, op=repr(self)).output_shape

    def _receptive(self, input_shape):
        """(kernel, stride, dilation, padding) per axis for the summary's receptive field. An
        output pixel o takes the inputs i with i s + t d = o + p, t < k: at most
        ceil(k g / s) of them (g = gcd(d, s)), d / g apart; and neighbouring outputs are 1 / s
        input pixels apart (a fraction: the jump shrinks)."""
        kernel, dilation = [], []
        for k, s, d in zip(self.kernel_size, self.stride, self.dilation):
            g = math.gcd(d, s)
            kernel.append(-(-k * g // s))
            dilation.append(d // g)
        return (tuple(kernel), tuple(Fraction(1, s) for s in self.stride), tuple(dilation),
                (0, 0))

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.output_padding != (0, 0):
            s += f", output_padding={self.output_padding}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s
