"""Fast NumPy-facing ops on the compiled kernels, with torch.nn.functional's names and semantics.

Every function checks and normalises its arguments (through `fastconv._args`, shared with
`fastconv.reference`), makes C-contiguous inputs of the working dtype, allocates the output and
calls the C++ kernel with the GIL released.

Arrays are NCHW. The 2-D ops also take one unbatched image (C, H, W), as PyTorch's do (conv2d,
conv_transpose2d, the poolings, max_unpool2d, im2col and col2im with (C*kH*kW, L) columns,
pad) and return it without the batch axis, bit for bit the batched result of x[None]; their
explicit backwards take the unbatched shapes alike: an unbatched x (or a 3-entry
input_shape) wants the gradients and indices unbatched too and gives grad_x unbatched (the
weight and bias gradients are the same either way). upsample_nearest2d does not: PyTorch's
interpolate takes 3-D input as 1-D (N, C, L) data. Any layout is accepted (views, negative strides, Fortran order: copied to
C order once). dtypes: float32 and float64 are computed as such; bool, integer and float16
inputs are converted to float32; complex, object and string arrays raise TypeError. When the
arguments mix float32 and float64, the computation and the result are float64 (NumPy's
promotion). Outputs are new C-contiguous arrays.

The convolutions and linear layers take `precision` (keyword): "bf16" rounds their operands to
bfloat16 and sums the products in float32 (float32 arrays only), "f32" computes as given, None
(the default) follows the active :class:`fastconv.autocast` (see :mod:`fastconv.precision`).
Outputs are float32 either way.
"""

from __future__ import annotations

import math

import numpy as np

from . import _core
from .precision import resolve_precision as _resolve_precision
from .precision import warn_if_emulated as _warn_if_emulated
from ._args import (
    CONV_OUTPUT,
    adaptive_backward_inputs,
    adaptive_pool2d_output_shape,
    as_float_array,
    batch_norm_eps,
    batch_norm_grad_inputs,
    batch_norm_inputs,
    check_ndim,
    check_pool_indices,
    check_shape,
    common_dtype,
    conv_through_pool_inputs,
    conv_transpose_backward_inputs,
    conv_transpose_inputs,
    conv_transpose2d_geometry,
    conv2d_geometry,
    conv2d_output_shape,
    divisor_override as _divisor_override,
    flag,
    float_bias,
    fold_geometry,
    upsample_backward_inputs as _upsample_backward_inputs,
    upsample_nearest2d_geometry,
    gelu_tanh,
    indices_out_of_range,
    linear_shapes,
    local_response_norm_args,
    local_response_norm_grad_inputs,
    local_response_norm_input,
    max_pool_backward_inputs,
    max_unpool_backward_inputs,
    max_unpool_inputs,
    normalize_output_mask,
    pad_backward_inputs,
    pad_geometry,
    pad_value,
    pool2d_geometry,
    pool2d_output_shape,
    relu_backward_inputs,
    unbatched,
    unfold_geometry,
)

__all__ = [
    "conv2d",
    "conv2d_backward",
    "conv2d_backward_through_max_pool",
    "conv2d_max_pool2d",
    "conv_transpose2d",
    "conv_transpose2d_backward",
    "max_pool2d",
    "max_pool2d_backward",
    "avg_pool2d",
    "avg_pool2d_backward",
    "max_unpool2d",
    "max_unpool2d_backward",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool2d_backward",
    "im2col",
    "col2im",
    "linear",
    "linear_backward",
    "batch_norm_train",
    "batch_norm_train_backward",
    "local_response_norm",
    "local_response_norm_backward",
    "relu",
    "relu_backward",
    "upsample_nearest2d",
    "upsample_nearest2d_backward",
    "gelu",
    "gelu_backward",
    "silu",
    "silu_backward",
    "pad",
    "pad_backward",
    "conv2d_output_shape",
    "pool2d_output_shape",
]

_NCHW = "(N, C, H, W)"


def _c(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """C-contiguous array of `dtype` (no copy when `a` already is one)."""
    return np.ascontiguousarray(a, dtype=dtype)


def _empty_aligned(shape, dtype) -> np.ndarray:
    """np.empty with the data at a 64-byte boundary (a view into a slightly larger buffer): the
    GEMM writes a large C (2 MiB or more) of aligned rows with non-temporal stores. Smaller
    arrays are plain np.empty."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    if n * dtype.itemsize < 1 << 21:
        return np.empty(shape, dtype)
    buf = np.empty(n * dtype.itemsize + 64, np.uint8)
    start = -buf.ctypes.data % 64
    return buf[start:start + n * dtype.itemsize].view(dtype).reshape(shape)


def _conv_inputs(op, x, weight):
    x = as_float_array(x, "x", op)
    weight = as_float_array(weight, "weight", op)
    check_ndim(x, 4, "x", op, _NCHW)
    check_ndim(weight, 4, "weight", op, "(C_out, C_in/groups, kH, kW)")
    return x, weight


def _conv_bias(op, bias, geom, weight):
    return float_bias(bias, geom.F, weight.shape, op)


def _precision(precision, dtype, op) -> str:
    """The kernels' precision argument ("f32" / "bf16") for an op computing in dtype; warns once
    when bf16 runs emulated (see fastconv.precision)."""
    name = _resolve_precision(precision, dtype, op)
    if name == "bf16":
        _warn_if_emulated()
    return name


@unbatched("x", ("x",))
def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           precision=None) -> np.ndarray:
    """2-D convolution (cross-correlation), as torch.nn.functional.conv2d.

    Args:
        x: input (N, C_in, H, W), or one unbatched image (C_in, H, W).
        weight: filters (C_out, C_in / groups, kH, kW).
        bias: optional (C_out,).
        stride, padding, dilation: int or (h, w) pair; padding may also be 'valid' or 'same'
            ('same' needs stride 1; an odd total padding puts the extra row/column at the
            bottom/right, as PyTorch does).
        groups: C_in and C_out split into `groups` independent convolutions
            (groups == C_in is a depthwise convolution).
        precision: "bf16", "f32" or None (the active autocast's): see the module docstring.

    Returns:
        y (N, C_out, OH, OW) with OH = (H + 2p - d(kH-1) - 1) // s + 1 ((C_out, OH, OW) for
        an unbatched x).

    >>> conv2d(np.ones((1, 3, 8, 8), "f4"), np.ones((4, 3, 3, 3), "f4")).shape
    (1, 4, 6, 6)
    """
    op = "conv2d"
    x, weight = _conv_inputs(op, x, weight)
    geom = conv2d_geometry(x.shape, weight.shape, stride, padding, dilation, groups, op)
    bias = _conv_bias(op, bias, geom, weight)
    dtype = common_dtype(x, weight, bias)
    precision = _precision(precision, dtype, op)
    y = np.empty(geom.output_shape, dtype)
    if geom.N == 0:
        return y
    _core.conv2d_forward(_c(x, dtype), _c(weight, dtype),
                         None if bias is None else _c(bias, dtype), y,
                         *geom.stride, *geom.padding, *geom.dilation, geom.groups,
                         precision=precision)
    return y


@unbatched("x", ("x",))
def conv2d_max_pool2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
                      kernel_size, pool_stride=None, pool_padding=0, pool_dilation=1,
                      ceil_mode=False, relu=False, precision=None):
    """conv2d followed by max_pool2d (with return_indices; relu as max_pool2d's):

        max_pool2d(conv2d(x, weight, bias, stride, padding, dilation, groups), kernel_size,
                   pool_stride, pool_padding, pool_dilation, ceil_mode, return_indices=True,
                   relu=relu)

    Returns (y, indices), the same bits as the two calls. Where the few-channel forward (RGB
    first layers) or Winograd (3x3 stride-1 layers with 16+ channels each way per group) runs,
    float32 on AVX-512 or AVX2, the conv output is never stored whole: each image's planes are
    pooled while they are in cache.
    """
    op = "conv2d_max_pool2d"
    x, weight = _conv_inputs(op, x, weight)
    geom = conv2d_geometry(x.shape, weight.shape, stride, padding, dilation, groups, op)
    bias = _conv_bias(op, bias, geom, weight)
    pool = pool2d_geometry(geom.output_shape, kernel_size, pool_stride, pool_padding,
                           pool_dilation, ceil_mode, op, name=CONV_OUTPUT, prefix="pool_")
    dtype = common_dtype(x, weight, bias)
    precision = _precision(precision, dtype, op)
    if dtype == np.float32 and geom.N and geom.F:
        y = np.empty(pool.output_shape, dtype)
        indices = np.empty(pool.output_shape, np.int64)
        if _core.conv2d_forward_max_pool(
                _c(x, dtype), _c(weight, dtype), None if bias is None else _c(bias, dtype), y,
                indices, *geom.out, *geom.stride, *geom.padding, *geom.dilation, geom.groups,
                *pool.kernel, *pool.stride, *pool.padding, *pool.dilation, bool(relu),
                precision=precision):
            return y, indices
    return max_pool2d(conv2d(x, weight, bias, stride, padding, dilation, groups,
                             precision=precision), kernel_size,
                      pool_stride, pool_padding, pool_dilation, ceil_mode, return_indices=True,
                      relu=relu)


@unbatched("x", ("grad_y", "x"), strip=(0,))
def conv2d_backward(grad_y, x, weight, stride=1, padding=0, dilation=1, groups=1,
                    output_mask=(True, True, True), *, precision=None):
    """Gradients of conv2d with respect to its input, weight and bias.

    Args:
        grad_y: gradient of the loss with respect to conv2d's output (N, C_out, OH, OW);
            (C_out, OH, OW) when x is an unbatched (C_in, H, W).
        x, weight, stride, padding, dilation, groups: as given to `conv2d`.
        output_mask: which of (grad_x, grad_weight, grad_bias) to compute.
        precision: as conv2d's (bf16: grad_y, x and weight rounded; grad_bias is always the
            float32 sum of grad_y).

    Returns:
        (grad_x, grad_weight, grad_bias): shapes of x (unbatched for an unbatched x), weight
        and (C_out,); None where output_mask is False. grad_bias = grad_y.sum(axis=(0, 2, 3)).
    """
    op = "conv2d_backward"
    mask = normalize_output_mask(output_mask, op)
    x, weight = _conv_inputs(op, x, weight)
    grad_y = as_float_array(grad_y, "grad_y", op)
    geom = conv2d_geometry(x.shape, weight.shape, stride, padding, dilation, groups, op)
    if grad_y.shape != geom.output_shape:
        raise ValueError(f"{op}: grad_y must have the conv2d output shape {geom.output_shape} "
                         f"for x {x.shape} and weight {weight.shape}, got {grad_y.shape}")
    dtype = common_dtype(grad_y, x, weight)
    precision = _precision(precision, dtype, op)
    window = (*geom.stride, *geom.padding, *geom.dilation, geom.groups)
    gy = _c(grad_y, dtype)
    grad_x = grad_w = grad_b = None
    if mask[0]:
        grad_x = np.empty(x.shape, dtype)
        if geom.N:
            _core.conv2d_backward_input(gy, _c(weight, dtype), grad_x, *window,
                                        precision=precision)
    if mask[1]:
        grad_w = np.empty(weight.shape, dtype)
        _core.conv2d_backward_weight(gy, _c(x, dtype), grad_w, *window, precision=precision)
    if mask[2]:
        grad_b = np.empty((geom.F,), dtype)
        _core.conv2d_backward_bias(gy, grad_b)
    return grad_x, grad_w, grad_b


@unbatched("x", ("grad_pooled", "indices", "x", "relu_output"), strip=())
def conv2d_backward_through_max_pool(grad_pooled, indices, x, weight, stride=1, padding=0,
                                     dilation=1, groups=1, *, relu_output=None,
                                     output_mask=(True, True), precision=None):
    """Weight and bias gradients of conv2d followed by max_pool2d (a ReLU may sit between them,
    fused into the pooling: see max_pool2d's relu), from the pooled output's gradient:

        conv2d_backward(max_pool2d_backward(grad_pooled, indices, y.shape,
                                            relu_output=relu_output),
                        x, weight, ..., output_mask=(False, *output_mask))[1:]

    with y = conv2d(x, weight, ...). For the first layer of a network, whose input gradient is
    not needed. Args as conv2d_backward and max_pool2d_backward (indices index the conv
    output's planes); output_mask: (grad_weight, grad_bias). Returns (grad_weight, grad_bias),
    None where not asked for.

    Where the few-channel weight gradient runs (RGB first layers, AVX-512 or AVX2), the conv
    output's gradient is never stored whole: each block of its planes is made, and used, in
    cache. The results are those of the two calls, bit for bit.
    """
    op = "conv2d_backward_through_max_pool"
    x, weight = _conv_inputs(op, x, weight)
    geom, grad_pooled, indices, relu_output, mask, dtype = conv_through_pool_inputs(
        grad_pooled, indices, x, weight, stride, padding, dilation, groups, relu_output,
        output_mask, op)
    precision = _precision(precision, dtype, op)
    grad_w = np.empty(weight.shape, dtype) if mask[0] else None
    grad_b = np.empty((geom.F,), dtype) if mask[1] else None
    if not (mask[0] or mask[1]):
        return grad_w, grad_b
    ry = None if relu_output is None else _c(relu_output, dtype)
    # (without a weight gradient asked for, one is still computed: the bias rides along)
    gw = grad_w if grad_w is not None else np.empty(weight.shape, dtype)
    if not _core.conv2d_backward_weight_through_max_pool(
            _c(grad_pooled, dtype), _c(indices, np.int64), ry, _c(x, dtype), gw, grad_b,
            *geom.out, *geom.stride, *geom.padding, *geom.dilation, geom.groups,
            precision=precision):
        raise indices_out_of_range(geom.output_shape, op, CONV_OUTPUT)
    return grad_w, grad_b


@unbatched("x", ("x",))
def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, precision=None) -> np.ndarray:
    """Transposed convolution ("deconvolution"), as torch.nn.functional.conv_transpose2d (same
    argument order): the input gradient of conv2d(., weight, stride, padding, dilation,
    groups), applied to x, on the conv input-gradient kernels.

    Args:
        x: input (N, C_in, H, W).
        weight: (C_in, C_out / groups, kH, kW) (the layout of the conv it transposes).
        bias: optional (C_out,).
        stride, padding, output_padding, dilation: int or (h, w) pair; output_padding (extra
            rows/columns at the bottom/right) must be below the stride or the dilation.
    Returns:
        y (N, C_out, OH, OW), OH = (H - 1) s - 2 p + d (kH - 1) + output_padding + 1.
    """
    op = "conv_transpose2d"
    x, weight = conv_transpose_inputs(x, weight, op)
    geom = conv_transpose2d_geometry(x.shape, weight.shape, stride, padding, output_padding,
                                     groups, dilation, op)
    bias = float_bias(bias, geom.output_shape[1], weight.shape, op)
    dtype = common_dtype(x, weight, bias)
    precision = _precision(precision, dtype, op)
    y = np.empty(geom.output_shape, dtype)
    if y.size:
        _core.conv2d_backward_input(_transpose_x(x, geom, dtype), _c(weight, dtype), y,
                                    *_window(geom.conv), precision=precision)
        if bias is not None:
            y += _c(bias, dtype)[:, None, None]
    return y


def _transpose_x(x, geom, dtype):
    """x as the gradient of geom.conv's output: C order, with zero rows/columns after it where
    output_padding >= stride makes that output larger than x."""
    if geom.extra == (0, 0):
        return _c(x, dtype)
    padded = np.zeros(geom.conv.output_shape, dtype)
    padded[:, :, :x.shape[2], :x.shape[3]] = x
    return padded


def _window(geom):
    """The conv kernels' window arguments of a ConvGeometry."""
    return (*geom.stride, *geom.padding, *geom.dilation, geom.groups)


@unbatched("x", ("grad_y", "x"), strip=(0,))
def conv_transpose2d_backward(grad_y, x, weight, stride=1, padding=0, output_padding=0,
                              groups=1, dilation=1, output_mask=(True, True, True), *,
                              precision=None):
    """Gradients of conv_transpose2d with respect to x, weight and bias.

    grad_x = conv2d(grad_y, weight, stride, padding, dilation, groups) (the conv forward
    kernels); grad_weight = conv2d's weight gradient with x and grad_y swapped (weight layout
    (C_in, C_out / groups, kH, kW)); grad_bias = grad_y.sum(axis=(0, 2, 3)). None where
    output_mask is False. Other arguments as conv_transpose2d's.
    """
    mask, grad_y, x, weight, geom, dtype = conv_transpose_backward_inputs(
        grad_y, x, weight, stride, padding, output_padding, groups, dilation, output_mask,
        "conv_transpose2d_backward")
    precision = _precision(precision, dtype, "conv_transpose2d_backward")
    gy, w, conv = _c(grad_y, dtype), _c(weight, dtype), geom.conv
    grad_x = grad_w = grad_b = None
    if mask[0]:
        grad_x = np.empty(conv.output_shape, dtype)
        if grad_x.size:
            _core.conv2d_forward(gy, w, None, grad_x, *_window(conv), precision=precision)
        if geom.extra != (0, 0):
            grad_x = np.ascontiguousarray(grad_x[:, :, :x.shape[2], :x.shape[3]])
    if mask[1]:
        grad_w = np.empty(weight.shape, dtype)
        _core.conv2d_backward_weight(_transpose_x(x, geom, dtype), gy, grad_w, *_window(conv),
                                     precision=precision)
    if mask[2]:
        grad_b = np.empty((geom.output_shape[1],), dtype)
        _core.conv2d_backward_bias(gy, grad_b)
    return grad_x, grad_w, grad_b


@unbatched("x", ("x",))
def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False, *, relu=False):
    """2-D max pooling, as torch.nn.functional.max_pool2d.

    Padding counts as -inf; padding may be at most half the kernel size. NaN propagates. With
    `return_indices`, also returns int64 indices (N, C, OH, OW) of each maximum, flattened
    within its H*W plane (what `max_pool2d_backward` takes).

    relu=True returns relu(y) instead, made in the same pass (the indices are the pooling's).
    That equals max pooling of relu(x), since max is monotone; its backward then takes that
    output as `relu_output`.

    >>> max_pool2d(np.arange(16.0).reshape(1, 1, 4, 4), 2)[0, 0]
    array([[ 5.,  7.],
           [13., 15.]])
    """
    op = "max_pool2d"
    x = as_float_array(x, "x", op)
    check_ndim(x, 4, "x", op, _NCHW)
    geom = pool2d_geometry(x.shape, kernel_size, stride, padding, dilation, ceil_mode, op)
    y = np.empty(geom.output_shape, x.dtype)
    indices = np.empty(geom.output_shape, np.int64)
    if geom.N and geom.C:
        _core.max_pool2d_forward(_c(x, x.dtype), y, indices, *geom.kernel, *geom.stride,
                                 *geom.padding, *geom.dilation, bool(relu))
    return (y, indices) if return_indices else y


@unbatched("input_shape", ("grad_y", "indices", "relu_output"), ("input_shape",))
def max_pool2d_backward(grad_y, indices, input_shape, *, relu_output=None) -> np.ndarray:
    """Gradient of max_pool2d: scatter-add grad_y into the positions named by `indices`.

    Args:
        grad_y: (N, C, OH, OW) gradient of the pooled output.
        indices: the int indices max_pool2d returned (same shape as grad_y).
        input_shape: (N, C, H, W) of the pooled input; (C, H, W) for an unbatched one, with
            grad_y, indices and relu_output (C, OH, OW) and an unbatched result.
        relu_output: the output of a forward with relu=True. grad_y is then the gradient of
            that output and first goes through the ReLU's gradient (0 where relu_output <= 0),
            in the same pass as the scatter.

    Raises ValueError if an index lies outside its H*W plane.
    """
    grad_y, indices, input_shape, relu_output = max_pool_backward_inputs(
        grad_y, indices, input_shape, relu_output=relu_output)
    grad_x = np.empty(input_shape, grad_y.dtype)
    if grad_x.size == 0:
        check_pool_indices(indices, input_shape)  # (the kernel is not called to check them)
        return grad_x
    if grad_y.size == 0:
        grad_x.fill(0)
        return grad_x
    if not _core.max_pool2d_backward(_c(grad_y, grad_y.dtype), _c(indices, np.int64), grad_x,
                                     relu_output):
        raise indices_out_of_range(input_shape)
    return grad_x


@unbatched("x", ("x",))
def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None) -> np.ndarray:
    """2-D average pooling, as torch.nn.functional.avg_pool2d.

    Each output is the mean over its window; the divisor is the window area clipped to the
    padded input when `count_include_pad` (PyTorch's default), else the number of input
    elements in the window. A non-zero int `divisor_override` divides every window's sum by
    it instead (count_include_pad then has no effect). A window with no input element gives 0.
    """
    op = "avg_pool2d"
    x = as_float_array(x, "x", op)
    check_ndim(x, 4, "x", op, _NCHW)
    geom = pool2d_geometry(x.shape, kernel_size, stride, padding, 1, ceil_mode, op)
    include_pad = flag(count_include_pad, "count_include_pad", op)
    divisor = _divisor_override(divisor_override, op) or 0
    y = np.empty(geom.output_shape, x.dtype)
    if geom.N and geom.C:
        _core.avg_pool2d_forward(_c(x, x.dtype), y, *geom.kernel, *geom.stride, *geom.padding,
                                 include_pad, divisor)
    return y


@unbatched("input_shape", ("grad_y",), ("input_shape",))
def avg_pool2d_backward(grad_y, input_shape, kernel_size, stride=None, padding=0,
                        ceil_mode=False, count_include_pad=True,
                        divisor_override=None) -> np.ndarray:
    """Gradient of avg_pool2d: each output's gradient divided by its window's divisor (see
    avg_pool2d) and added over the window's input elements."""
    op = "avg_pool2d_backward"
    grad_y = as_float_array(grad_y, "grad_y", op)
    check_ndim(grad_y, 4, "grad_y", op, _NCHW)
    input_shape = check_shape(input_shape, 4, "input_shape", op)
    geom = pool2d_geometry(input_shape, kernel_size, stride, padding, 1, ceil_mode, op,
                           name="input_shape")
    if grad_y.shape != geom.output_shape:
        raise ValueError(f"{op}: grad_y must have the pooled shape {geom.output_shape} for "
                         f"input_shape {input_shape}, got {grad_y.shape}")
    include_pad = flag(count_include_pad, "count_include_pad", op)
    divisor = _divisor_override(divisor_override, op) or 0
    grad_x = np.empty(input_shape, grad_y.dtype)
    if grad_x.size:
        _core.avg_pool2d_backward(_c(grad_y, grad_y.dtype), grad_x, *geom.kernel, *geom.stride,
                                  *geom.padding, include_pad, divisor)
    return grad_x


@unbatched("x", ("x", "indices"))
def max_unpool2d(x, indices, kernel_size, stride=None, padding=0,
                 output_size=None) -> np.ndarray:
    """The partial inverse of max_pool2d, as torch.nn.functional.max_unpool2d: zeros of the
    output size, then each value of x (N, C, H, W) written at its flat position `indices`
    (x's shape, e.g. from max_pool2d with return_indices) in its output plane OH * OW.

    Output size: by default (H - 1) stride - 2 padding + kernel_size per axis; `output_size`
    (OH, OW) or (N, C, OH, OW) picks another within stride of it (the size max_pool2d took in
    when its floor dropped rows). Where several values go to one position the last one (in
    row-major order) stays: PyTorch leaves that unspecified. ValueError for an index outside
    its plane.
    """
    x, where, shape = max_unpool_inputs(x, indices, kernel_size, stride, padding, output_size)
    y = np.zeros(math.prod(shape), x.dtype)
    # output position -> the last element of x written there (ufunc.at runs in order)
    writer = np.full(y.size, -1, np.int64)
    np.maximum.at(writer, where, np.arange(where.size, dtype=np.int64))
    hit = np.flatnonzero(writer >= 0)
    y[hit] = x.reshape(-1)[writer[hit]]
    return y.reshape(shape)


@unbatched("grad_y", ("grad_y", "indices"))
def max_unpool2d_backward(grad_y, indices) -> np.ndarray:
    """Gradient of max_unpool2d w.r.t. x: grad_y (N, C, OH, OW) read at each index, as
    PyTorch's (a value overwritten at a repeated index gets that position's gradient too).
    indices: (N, C, H, W), as given to max_unpool2d."""
    grad_y, indices = max_unpool_backward_inputs(grad_y, indices)
    N, C, H, W = indices.shape
    g2 = np.ascontiguousarray(grad_y).reshape(N * C, grad_y.shape[2] * grad_y.shape[3])
    return np.take_along_axis(g2, indices.reshape(N * C, H * W), axis=1).reshape(indices.shape)


@unbatched("x", ("x",))
def adaptive_avg_pool2d(x, output_size) -> np.ndarray:
    """Adaptive average pooling, as torch.nn.functional.adaptive_avg_pool2d.

    Output row i averages input rows [floor(i H / OH), ceil((i + 1) H / OH)), columns
    likewise (neighbouring windows overlap by one row where OH does not divide H).
    output_size: an int or a pair (OH, OW), a None entry keeping that axis's input size.
    Output size 1 (global average pooling) sums each plane in fixed lanes; an output size that
    divides the input size is avg_pool2d with kernel_size = stride = H / OH (whose 2x2 case
    has its own kernels).
    """
    op = "adaptive_avg_pool2d"
    x = as_float_array(x, "x", op)
    check_ndim(x, 4, "x", op, _NCHW)
    y = np.empty(adaptive_pool2d_output_shape(x.shape, output_size, op), x.dtype)
    if y.size:
        kernel = _dividing_window(x.shape, y.shape)
        if kernel:
            _core.avg_pool2d_forward(_c(x, x.dtype), y, *kernel, *kernel, 0, 0, True)
        else:
            _core.adaptive_avg_pool2d_forward(_c(x, x.dtype), y)
    return y


def _dividing_window(input_shape, output_shape):
    """(kH, kW) where adaptive pooling from input_shape to output_shape is avg_pool2d with
    kernel = stride = (H / OH, W / OW), except global pooling; else None."""
    (H, W), (OH, OW) = input_shape[2:], output_shape[2:]
    if (OH, OW) != (1, 1) and H % OH == 0 and W % OW == 0:
        return H // OH, W // OW
    return None


@unbatched("input_shape", ("grad_y",), ("input_shape",))
def adaptive_avg_pool2d_backward(grad_y, input_shape) -> np.ndarray:
    """Gradient of adaptive_avg_pool2d: each grad_y entry divided by its window's area, added
    over the window. grad_y: (N, C, OH, OW) (its shape gives the output size); input_shape:
    (N, C, H, W)."""
    grad_y, input_shape = adaptive_backward_inputs(grad_y, input_shape,
                                                   "adaptive_avg_pool2d_backward")
    grad_x = np.empty(input_shape, grad_y.dtype)
    if not grad_y.size:
        grad_x.fill(0)
        return grad_x
    kernel = _dividing_window(input_shape, grad_y.shape)
    if kernel:
        _core.avg_pool2d_backward(_c(grad_y, grad_y.dtype), grad_x, *kernel, *kernel, 0, 0, True)
    else:
        _core.adaptive_avg_pool2d_backward(_c(grad_y, grad_y.dtype), grad_x)
    return grad_x


def upsample_nearest2d(x, size=None, scale_factor=None, *, recompute_scale_factor=None):
    """Nearest-neighbour upsampling (or downsampling), as torch.nn.functional.interpolate with
    mode='nearest': output row i copies input row min(floor(i * s), H - 1), s = 1 / scale_factor
    (or H / OH where size is given, or with recompute_scale_factor), computed in float32 as
    PyTorch does (its 2x case is i // 2 exactly); columns likewise.

    Args:
        x: (N, C, H, W).
        size: output (OH, OW), an int or a pair; or
        scale_factor: a number or a pair: OH = floor(H * scale_factor) (give exactly one).
    """
    op = "upsample_nearest2d"
    x = as_float_array(x, "x", op)
    geom = upsample_nearest2d_geometry(x.shape, size, scale_factor, recompute_scale_factor, op)
    y = np.empty(geom.output_shape, x.dtype)
    if y.size:
        _core.upsample_nearest2d_forward(_c(x, x.dtype), y, geom.rows, geom.cols)
    return y


def upsample_nearest2d_backward(grad_y, input_shape, size=None, scale_factor=None, *,
                                recompute_scale_factor=None) -> np.ndarray:
    """Gradient of upsample_nearest2d: each input pixel gets the sum of the gradients of the
    outputs that copy it (0 for those none copies). grad_y: (N, C, OH, OW); input_shape
    (N, C, H, W); size, scale_factor, recompute_scale_factor: as given to the forward."""
    op = "upsample_nearest2d_backward"
    grad_y, input_shape, geom = _upsample_backward_inputs(
        op, grad_y, input_shape, size, scale_factor, recompute_scale_factor)
    grad_x = np.empty(input_shape, grad_y.dtype)
    if grad_x.size:
        _core.upsample_nearest2d_backward(_c(grad_y, grad_y.dtype), grad_x, geom.rows, geom.cols)
    return grad_x


@unbatched("x", ("x",))
def im2col(x, kernel_size, dilation=1, padding=0, stride=1) -> np.ndarray:
    """Extract sliding blocks as columns, as torch.nn.functional.unfold.

    Args:
        x: (N, C, H, W), or one unbatched image (C, H, W).
    Returns:
        cols (N, C*kH*kW, L), L = OH*OW ((C*kH*kW, L) for an unbatched x); row (c*kH + i)*kW + j holds the pixel at kernel
        offset (i, j) of channel c for every block position.
    """
    op = "im2col"
    x = as_float_array(x, "x", op)
    check_ndim(x, 4, "x", op, _NCHW)
    N, C, H, W = x.shape
    geom = unfold_geometry(C, H, W, kernel_size, dilation, padding, stride, op)
    cols = np.empty((N, geom.rows, geom.blocks), x.dtype)
    if cols.size:
        _core.im2col(_c(x, x.dtype), cols, *geom.kernel, *geom.stride, *geom.padding,
                     *geom.dilation, *geom.out)
    return cols


@unbatched("cols", ("cols",), ndim=2)
def col2im(cols, output_size, kernel_size, dilation=1, padding=0, stride=1) -> np.ndarray:
    """Sum columns back into images, as torch.nn.functional.fold (the adjoint of im2col).

    Args:
        cols: (N, C*kH*kW, L) with L the number of block positions for `output_size`, or
            (C*kH*kW, L) for one unbatched image.
        output_size: (H, W) of the images.
    Returns:
        x (N, C, H, W), (C, H, W) for unbatched cols: overlapping contributions are summed.
    """
    op = "col2im"
    cols = as_float_array(cols, "cols", op)
    geom = fold_geometry(cols.shape, output_size, kernel_size, dilation, padding, stride, op)
    x = np.empty((cols.shape[0], geom.C, geom.H, geom.W), cols.dtype)
    if x.size:
        _core.col2im(_c(cols, cols.dtype), x, *geom.kernel, *geom.stride, *geom.padding,
                     *geom.dilation, *geom.out)
    return x


def linear(x, weight, bias=None, *, precision=None) -> np.ndarray:
    """Affine map y = x @ weight.T + bias, as torch.nn.functional.linear, on the packed GEMM.

    Args:
        x: (..., in_features).
        weight: (out_features, in_features).
        bias: optional (out_features,).
        precision: "bf16", "f32" or None (the active autocast's): see the module docstring.
    Returns:
        y (..., out_features). Threads split the output, so results do not depend on their
        number (unlike a BLAS whose reductions may be split).
    """
    op = "linear"
    x = as_float_array(x, "x", op)
    weight = as_float_array(weight, "weight", op)
    if bias is not None:
        bias = as_float_array(bias, "bias", op)
    in_f, out_f = linear_shapes(x.shape, weight.shape, None if bias is None else bias.shape, op)
    dtype = common_dtype(x, weight, bias)
    precision = _precision(precision, dtype, op)
    rows = math.prod(x.shape[:-1])  # not reshape(-1, in_f): in_f may be 0
    x2 = _c(x, dtype).reshape(rows, in_f)
    y = np.empty((rows, out_f), dtype)
    if bias is not None:
        y[...] = bias  # the GEMM accumulates onto the bias
    if y.size:
        _core.gemm(x2, _c(weight, dtype), y, False, True, bias is not None, precision=precision)
    return y.reshape(x.shape[:-1] + (out_f,))


def linear_backward(grad_y, x, weight, output_mask=(True, True, True), *, precision=None):
    """Gradients of `linear` with respect to x, weight and bias.

    grad_x = grad_y @ weight, grad_weight = grad_y^T @ x (over all leading axes),
    grad_bias = grad_y summed over all but the last axis. None where output_mask is False.
    precision: as linear's (bf16: grad_y, x and weight rounded; grad_bias a float32 sum).
    """
    op = "linear_backward"
    mask = normalize_output_mask(output_mask, op)
    x = as_float_array(x, "x", op)
    weight = as_float_array(weight, "weight", op)
    grad_y = as_float_array(grad_y, "grad_y", op)
    in_f, out_f = linear_shapes(x.shape, weight.shape, None, op, grad_y.shape)
    dtype = common_dtype(grad_y, x, weight)
    precision = _precision(precision, dtype, op)
    rows = math.prod(x.shape[:-1])
    gy = _c(grad_y, dtype).reshape(rows, out_f)
    grad_x = grad_w = grad_b = None
    if mask[0]:
        grad_x = np.empty((gy.shape[0], in_f), dtype)
        if grad_x.size:
            _core.gemm(gy, _c(weight, dtype), grad_x, False, False, False, precision=precision)
        grad_x = grad_x.reshape(x.shape)
    if mask[1]:
        grad_w = _empty_aligned((out_f, in_f), dtype)
        if grad_w.size:
            _core.gemm(gy, _c(x, dtype).reshape(rows, in_f), grad_w, True, False, False,
                       precision=precision)
    if mask[2]:
        grad_b = gy.sum(axis=0)
    return grad_x, grad_w, grad_b


def batch_norm_train(x, weight=None, bias=None, eps=1e-5, *, relu=False):
    """Training-mode batch normalisation over axis 1 of x (N, C, ...) with batch statistics.

    y = (x - mean) / sqrt(var + eps) * weight + bias, mean and (biased) var per channel over
    all other axes. Returns (y, mean, invstd, var), invstd = 1 / sqrt(var + eps): what
    `batch_norm_train_backward` and the running-statistics update need.

    relu=True returns relu(y) instead, made in the same pass over memory (a batch norm followed
    by a ReLU); its backward then takes that output as `relu_output`.
    """
    op = "batch_norm_train"
    x3, weight, bias = batch_norm_inputs(x, weight, bias, op)
    eps = batch_norm_eps(eps, op)
    x3 = _c(x3, x3.dtype)
    C = x3.shape[1]
    y = np.empty(x3.shape, x3.dtype)
    mean, invstd, var = (np.empty(C, x3.dtype) for _ in range(3))
    _core.batch_norm_forward(x3, weight, bias, eps, bool(relu), y, mean, invstd, var)
    return y.reshape(np.shape(x)), mean, invstd, var


def batch_norm_train_backward(grad_y, x, mean, invstd, weight=None, input_grad=True, *,
                              relu_output=None):
    """Gradients of `batch_norm_train`: (grad_x or None, grad_weight, grad_bias).

    With xhat = (x - mean) * invstd, M values per channel: grad_bias = sum(grad_y),
    grad_weight = sum(grad_y * xhat), grad_x = weight * invstd * (grad_y - grad_bias / M
    - xhat * grad_weight / M).

    relu_output: the output of a forward with relu=True. grad_y is then the gradient of that
    output and first goes through the ReLU's gradient (0 where relu_output <= 0), in the same
    pass.
    """
    op = "batch_norm_train_backward"
    shape = np.shape(x)
    x3, weight, _ = batch_norm_inputs(x, weight, None, op, grad_y)
    x3 = _c(x3, x3.dtype)
    grad_y, mean, invstd, relu_output = batch_norm_grad_inputs(grad_y, shape, mean, invstd,
                                                               x3.dtype, op, relu_output)
    C = x3.shape[1]
    gy = _c(grad_y, x3.dtype).reshape(x3.shape)
    ry = None if relu_output is None else relu_output.reshape(x3.shape)
    gx = np.empty(x3.shape, x3.dtype) if input_grad else None
    gw, gb = np.empty(C, x3.dtype), np.empty(C, x3.dtype)
    _core.batch_norm_backward(gy, ry, x3, mean, invstd, weight, gx, gw, gb)
    return (None if gx is None else gx.reshape(shape)), gw, gb


def _channel_window_sum(a: np.ndarray, before: int, after: int) -> np.ndarray:
    """out[:, c] = a[:, c - before] + ... + a[:, c + after] (zero outside the channels): the
    shifted slices of a zero-padded copy, added window position by window position."""
    C = a.shape[1]
    padded = np.zeros((a.shape[0], C + before + after) + a.shape[2:], a.dtype)
    padded[:, before:before + C] = a
    out = padded[:, :C].copy()
    for i in range(1, before + after + 1):
        out += padded[:, i:i + C]
    return out


def _lrn_denominator(x: np.ndarray, size: int, alpha: float, k: float) -> np.ndarray:
    """k + alpha mean(x^2) over each channel's window [c - size // 2, c + (size - 1) // 2]
    (zeros outside the channels, the mean always over `size`), as torch's avg_pool of x^2."""
    d = _channel_window_sum(x * x, size // 2, (size - 1) // 2)
    d /= x.dtype.type(size)
    d *= x.dtype.type(alpha)
    d += x.dtype.type(k)
    return d


def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0) -> np.ndarray:
    """Local response normalisation across channels (AlexNet's), as
    torch.nn.functional.local_response_norm: for x (N, C, *),

        y[:, c] = x[:, c] / (k + alpha / size * sum_{c' = c - size//2}^{c + (size-1)//2} x[:, c']^2)^beta

    (channels outside [0, C) count as zeros).
    """
    op = "local_response_norm"
    size, alpha, beta, k = local_response_norm_args(size, alpha, beta, k, op)
    x = local_response_norm_input(x, op)
    if not x.size:
        return np.empty(x.shape, x.dtype)
    return x / _lrn_denominator(x, size, alpha, k) ** x.dtype.type(beta)


def local_response_norm_backward(grad_y, x, size, alpha=1e-4, beta=0.75, k=1.0) -> np.ndarray:
    """Gradient of local_response_norm from its input: with d the denominator's base
    (y = x d^-beta),

        dx[:, j] = g[:, j] d[:, j]^-beta
                   - 2 alpha beta / size x[:, j] sum_{c = j - (size-1)//2}^{j + size//2} g[:, c] y[:, c] / d[:, c]

    (the channels c whose window holds j)."""
    grad_y, x, dtype, (size, alpha, beta, k) = local_response_norm_grad_inputs(
        grad_y, x, size, alpha, beta, k, "local_response_norm_backward")
    if not x.size:
        return np.empty(x.shape, dtype)
    d = _lrn_denominator(x, size, alpha, k)
    scale = d ** dtype.type(-beta)                     # d^-beta
    gy_over_d = grad_y * x * scale / d                 # g y / d
    dx = _channel_window_sum(gy_over_d, (size - 1) // 2, size // 2)
    dx *= x
    dx *= dtype.type(-2 * alpha * beta / size)
    dx += grad_y * scale
    return dx


def relu(x) -> np.ndarray:
    """max(x, 0) elementwise, as torch.relu (NaN propagates); a new C-contiguous array."""
    x = as_float_array(x, "x", "relu")
    y = np.empty(x.shape, x.dtype)
    _core.relu_forward(_c(x, x.dtype), y)
    return y


def relu_backward(grad_y, y) -> np.ndarray:
    """Gradient of relu from its output: 0 where y <= 0, else grad_y (NaN passes, as torch)."""
    grad_y, y, dtype = relu_backward_inputs(grad_y, y)
    grad_x = np.empty(y.shape, dtype)
    _core.relu_backward(_c(grad_y, dtype), _c(y, dtype), grad_x)
    return grad_x


def gelu(x, approximate="none") -> np.ndarray:
    """GELU elementwise, as torch.nn.functional.gelu: x Phi(x), Phi the standard normal CDF
    (approximate='none'), or x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) ('tanh').

    Within a few units in the last place of the exact values in float32 and float64 (torch's
    float32 kernel computes 1 + erf(x/sqrt(2)), which cancels for x below about -3: there its
    results lose their relative accuracy, ours keep it). gelu(-inf) is NaN, as torch's.
    """
    tanh = gelu_tanh(approximate, "gelu")
    x = as_float_array(x, "x", "gelu")
    y = np.empty(x.shape, x.dtype)
    _core.gelu_forward(_c(x, x.dtype), y, tanh)
    return y


def gelu_backward(grad_y, x, approximate="none") -> np.ndarray:
    """Gradient of gelu from its input: grad_y (Phi(x) + x phi(x)), phi the normal density (for
    'tanh': grad_y d/dx [x/2 (1 + tanh(u))]). NaN at x = +-inf, as torch."""
    tanh = gelu_tanh(approximate, "gelu_backward")
    grad_y, x, dtype = relu_backward_inputs(grad_y, x, "gelu_backward", "x")
    grad_x = np.empty(x.shape, dtype)
    _core.gelu_backward(_c(grad_y, dtype), _c(x, dtype), grad_x, tanh)
    return grad_x


def silu(x) -> np.ndarray:
    """SiLU (swish) elementwise, as torch.nn.functional.silu: x sigmoid(x) (no overflow for
    any x; silu(-inf) is NaN, as torch's)."""
    x = as_float_array(x, "x", "silu")
    y = np.empty(x.shape, x.dtype)
    _core.silu_forward(_c(x, x.dtype), y)
    return y


def silu_backward(grad_y, x) -> np.ndarray:
    """Gradient of silu from its input: grad_y s (1 + x (1 - s)), s = sigmoid(x)."""
    grad_y, x, dtype = relu_backward_inputs(grad_y, x, "silu_backward", "x")
    grad_x = np.empty(x.shape, dtype)
    _core.silu_backward(_c(grad_y, dtype), _c(x, dtype), grad_x)
    return grad_x


# The NumPy names of torch's padding modes.
_NUMPY_PAD_MODE = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def pad(x, pad, mode="constant", value=0.0) -> np.ndarray:
    """torch.nn.functional.pad of the last axis (pad = (left, right)) or the last two (left,
    right, top, bottom): "constant" (with ``value``), "reflect" (mirrored without repeating
    the edge), "replicate" (the edge repeated) or "circular" (wrapped around). A new
    C-contiguous array."""
    x = as_float_array(x, "x", "pad")
    pads = pad_geometry(x.shape, pad, mode, "pad")
    value = pad_value(value, mode, "pad")
    if mode != "constant":
        # (np.pad keeps a Fortran-ordered input's layout: a copy in C order then)
        return np.ascontiguousarray(np.pad(x, pads, mode=_NUMPY_PAD_MODE[mode]))
    value = x.dtype.type(value)
    y = np.full(tuple(n + b + a for n, (b, a) in zip(x.shape, pads)), value, x.dtype)
    y[tuple(slice(b, b + n) for n, (b, _) in zip(x.shape, pads))] = x
    return y


def pad_backward(grad_y, input_shape, pad, mode="constant") -> np.ndarray:
    """Gradient of :func:`pad` for an input of ``input_shape``: grad_y's interior, plus each
    padded position's gradient added to the input element it copies (none for "constant")."""
    g, shape, pads = pad_backward_inputs(grad_y, input_shape, pad, mode, "pad_backward")
    for axis, (before, after) in enumerate(pads):
        if not before and not after:
            continue
        n = shape[axis]
        at = lambda i: (slice(None),) * axis + (i,)
        inner = g[(slice(None),) * axis + (slice(before, before + n),)].copy()
        if mode != "constant":
            # padded position -> the input index it copies, before then after the input
            for j in range(before):
                src = {"reflect": before - j, "replicate": 0, "circular": n - before + j}[mode]
                inner[at(src)] += g[at(j)]
            for k in range(after):
                src = {"reflect": n - 2 - k, "replicate": n - 1, "circular": k}[mode]
                inner[at(src)] += g[at(before + n + k)]
        g = inner
    return np.array(g, order="C", copy=True) if g is grad_y else np.ascontiguousarray(g)
