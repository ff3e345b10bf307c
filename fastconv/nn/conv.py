"""Convolution layers (run on the backend's ops)."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from .. import _args
from .. import init as _init
from .module import Module, Parameter, _as_input, _check_4d, _float_dtype, _positive_int, _shape_4d
from .pool import MaxPoolContext

if TYPE_CHECKING:
    from .pool import MaxPool2d


class ConvContext(NamedTuple):
    """What Conv2d's backward needs from its forward: the ops that ran it, the input (checked,
    in the weight's dtype) and the output's shape."""

    ops: object
    x: np.ndarray
    output_shape: tuple


class Conv2d(Module):
    """2-D convolution (cross-correlation) over (N, C_in, H, W) -> (N, C_out, H_out, W_out).

        H_out = (H + 2 p - d (k - 1) - 1) // s + 1

    weight: (out_channels, in_channels / groups, kH, kW); bias: (out_channels,).
    Default initialisation as PyTorch: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
    fan_in = in_channels / groups * kH * kW. padding may be an int, a pair, 'valid' or 'same'.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, dtype=np.float32, rng=None) -> None:
        super().__init__()
        name = "Conv2d"
        in_channels = _positive_int(in_channels, "in_channels", name)
        out_channels = _positive_int(out_channels, "out_channels", name)
        groups = _positive_int(groups, "groups", name)
        if in_channels % groups:
            raise ValueError(f"{name}: in_channels ({in_channels}) must be divisible by groups ({groups})")
        if out_channels % groups:
            raise ValueError(f"{name}: out_channels ({out_channels}) must be divisible by groups ({groups})")
        self.in_channels = in_channels
        self.out_channels = out_channels
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
        dt = _float_dtype(dtype, name)
        self.weight = Parameter(np.empty((out_channels, in_channels // groups) + self.kernel_size, dt))
        if bias:
            self.bias = Parameter(np.empty(out_channels, dt))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters(rng)

    def reset_parameters(self, rng=None) -> None:
        """PyTorch's default initialisation (see :func:`fastconv.init.default_init_`)."""
        _init.default_init_(self.weight, self.bias, rng)

    def _inputs(self, x: np.ndarray):
        """(x checked and in the weight's dtype, weight, bias or None)."""
        w = self.weight.data
        x = _as_input(self, x, w.dtype)
        _check_4d(self, x, self.in_channels)
        return x, w, self.bias.data if self.bias is not None else None

    def forward(self, x: np.ndarray) -> np.ndarray:
        y, self._cache = self._forward_ctx(x)
        return y

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        return self._backward_ctx(self._get_cache(), grad_y, input_grad)

    # Stateless pieces: forward and backward with the forward's context passed explicitly, for
    # this layer's own forward/backward and for the fused steps of fusion.py.
    def _forward_ctx(self, x: np.ndarray) -> tuple[np.ndarray, ConvContext]:
        """(output, context for _backward_ctx)."""
        x, w, b = self._inputs(x)
        ops = self._ops()
        y = ops.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)
        return y, ConvContext(ops, x, y.shape)

    def _grad_mask(self) -> tuple[bool, bool]:
        """Which of (weight, bias) gradients are wanted: not those of frozen parameters."""
        bias = self.bias
        return self.weight.requires_grad, bias is not None and bias.requires_grad

    def _accumulate(self, gw, gb) -> None:
        if gw is not None:
            self.weight.accumulate_grad(gw)
        if gb is not None:
            self.bias.accumulate_grad(gb)

    def _backward_ctx(self, ctx: ConvContext, grad_y: np.ndarray,
                      input_grad: bool = True) -> np.ndarray | None:
        """Accumulate the trainable parameters' gradients; return dL/dx (None without
        input_grad). The kernels are asked for nothing else (output_mask)."""
        ops, x, y_shape = ctx
        w = self.weight.data
        grad_y = self._check_grad(grad_y, y_shape, w.dtype)
        mask = (bool(input_grad), *self._grad_mask())
        if not any(mask):
            return None
        gx, gw, gb = ops.conv2d_backward(grad_y, x, w, self.stride, self.padding, self.dilation,
                                         self.groups, output_mask=mask)
        self._accumulate(gw, gb)
        return gx

    def _forward_max_pool_ctx(self, pool: "MaxPool2d", x: np.ndarray, relu: bool):
        """This layer's forward and then `pool`'s (relu: with a ReLU between them, fused into
        the pooling) as one op, conv2d_max_pool2d of this layer's ops (fusion.py runs it only
        where both layers have one backend). Returns (pooled output, this layer's context,
        the pooling's context), the contexts those of the two layers run one after the other."""
        x, w, b = self._inputs(x)
        ops = self._ops()
        y_shape = _args.conv2d_geometry(x.shape, w.shape, self.stride, self.padding,
                                        self.dilation, self.groups, op=repr(self)).output_shape
        pooled, idx = ops.conv2d_max_pool2d(
            x, w, b, self.stride, self.padding, self.dilation, self.groups,
            kernel_size=pool.kernel_size, pool_stride=pool.stride, pool_padding=pool.padding,
            pool_dilation=pool.dilation, ceil_mode=pool.ceil_mode, relu=relu)
        return pooled, ConvContext(ops, x, y_shape), MaxPoolContext(ops, idx, y_shape, pooled, relu)

    def _backward_through_max_pool_ctx(self, ctx: ConvContext, pool: "MaxPool2d",
                                       pool_ctx: MaxPoolContext, grad_pooled: np.ndarray) -> None:
        """Backward of this layer and of the max pooling run after it (`pool`, its context;
        a ReLU may be fused into the pooling) in one op, without this layer's input gradient
        (the first layer of a network). Accumulates the trainable parameters' gradients as
        backward would."""
        ops, x, y_shape = ctx
        if tuple(pool_ctx.input_shape) != tuple(y_shape):
            raise ValueError(f"{self!r}: the pooling after it saw input {pool_ctx.input_shape}, "
                             f"not this layer's output {y_shape}")
        y = pool_ctx.output
        grad_pooled = pool._check_grad(grad_pooled, y.shape, y.dtype)
        mask = self._grad_mask()
        if not any(mask):
            return
        gw, gb = ops.conv2d_backward_through_max_pool(
            grad_pooled, pool_ctx.indices, x, self.weight.data, self.stride, self.padding,
            self.dilation, self.groups, relu_output=y if pool_ctx.relu else None,
            output_mask=mask)
        self._accumulate(gw, gb)

    def output_shape(self, input_shape):
        shape = _shape_4d(self, input_shape, self.in_channels)
        geom = _args.conv2d_geometry(shape, self.weight.data.shape, self.stride, self.padding,
                                     self.dilation, self.groups, op=repr(self))
        return geom.output_shape

    def _receptive(self, input_shape):
        """(kernel, stride, dilation, left padding) per axis, for the receptive-field table."""
        if isinstance(self.padding, str):
            total = [d * (k - 1) if self.padding == "same" else 0
                     for k, d in zip(self.kernel_size, self.dilation)]
            pad = tuple(t // 2 for t in total)
        else:
            pad = self.padding
        return self.kernel_size, self.stride, self.dilation, pad

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
        return s
