"""Pure-NumPy reference implementations of the fastconv ops.

Same signatures, semantics, validation and error messages as :mod:`fastconv.functional`
(PyTorch ``torch.nn.functional`` semantics), written the way a competent NumPy user would:

* convolution = im2col (an ``as_strided`` view of the padded input, copied once into a
  column matrix) followed by one batched ``np.matmul`` over (batch, group);
* col2im / the input gradient = a loop over the kh*kw kernel offsets with strided slice-adds;
* pooling = a loop over the kh*kw kernel offsets with vectorised element-wise updates.

There are no Python loops over pixels, channels or batch elements. This module is the
correctness baseline of the test-suite and the speed baseline of the benchmarks.

Shapes: x is (N, C, H, W), weight is (F, C/groups, kH, kW), conv output is (N, F, OH, OW) with

    OH = (H + pad_top + pad_bottom - dH*(kH - 1) - 1) // sH + 1

(see :mod:`fastconv._args` for the pooling variant with ``ceil_mode``). As in
:mod:`fastconv.functional`, the 2-D ops also take one unbatched image (C, H, W) and return it
unbatched (``_args.unbatched``).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from fastconv.precision import resolve_precision, round_to_bf16

from fastconv._args import (
    CONV_OUTPUT,
    adaptive_backward_inputs,
    adaptive_pool2d_output_shape,
    adaptive_windows,
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
    upsample_backward_inputs,
    upsample_nearest2d_geometry,
    gelu_tanh,
    linear_shapes,
    local_response_norm_args,
    local_response_norm_grad_inputs,
    local_response_norm_input,
    max_pool_backward_inputs,
    max_unpool_backward_inputs,
    max_unpool_inputs,
    normalize_output_mask,
    pool2d_geometry,
    pool2d_output_shape,
    pad_backward_inputs,
    pad_geometry,
    pad_value,
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


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def _extent(out: int, kernel: int, stride: int, dilation: int) -> int:
    """Number of input rows touched by `out` windows: (out - 1) * s + d * (k - 1) + 1."""
    return (out - 1) * stride + dilation * (kernel - 1) + 1


def _pad(x: np.ndarray, top: int, left: int, height: int, width: int, value: float,
         dtype: np.dtype) -> np.ndarray:
    """C-contiguous (N, C, height, width) array of `dtype` with `x` placed at (top, left).

    `height` >= top + H and `width` >= left + W; the rest is filled with `value`.
    """
    N, C, H, W = x.shape
    if top == 0 and left == 0 and height == H and width == W:
        return np.ascontiguousarray(x, dtype=dtype)
    xp = np.full((N, C, height, width), value, dtype=dtype)
    xp[:, :, top:top + H, left:left + W] = x
    return xp


def _padded_size(size: int, pad: int, out: int, kernel: int, stride: int, dilation: int) -> int:
    """Size of the padded axis: the input plus top padding plus whatever the windows reach."""
    return max(pad + size, _extent(out, kernel, stride, dilation))


def _window_view(xp: np.ndarray, kernel, stride, dilation, out) -> np.ndarray:
    """Read-only view (N, C, kH, kW, OH, OW) of the windows of the padded input `xp`.

    view[n, c, i, j, oh, ow] = xp[n, c, oh*sH + i*dH, ow*sW + j*dW]. Works for any strides of
    `xp` (including negative ones), since the view is built from xp's own strides.
    """
    N, C = xp.shape[:2]
    sN, sC, sH, sW = xp.strides
    return as_strided(
        xp,
        shape=(N, C, kernel[0], kernel[1], out[0], out[1]),
        strides=(sN, sC, dilation[0] * sH, dilation[1] * sW, stride[0] * sH, stride[1] * sW),
        writeable=False,
    )


def _offset_slice(i: int, j: int, out, stride, dilation) -> tuple[slice, slice]:
    """Slices of a padded (H, W) plane read by kernel offset (i, j) for all output positions."""
    h0, w0 = i * dilation[0], j * dilation[1]
    return (slice(h0, h0 + (out[0] - 1) * stride[0] + 1, stride[0]),
            slice(w0, w0 + (out[1] - 1) * stride[1] + 1, stride[1]))


def _conv_inputs(op: str, x, weight) -> tuple[np.ndarray, np.ndarray]:
    """x and weight as float arrays, both 4-D."""
    x = as_float_array(x, "x", op)
    weight = as_float_array(weight, "weight", op)
    check_ndim(x, 4, "x", op, _NCHW)
    check_ndim(weight, 4, "weight", op, "(C_out, C_in/groups, kH, kW)")
    return x, weight


def _conv_columns(x: np.ndarray, geom, dtype: np.dtype) -> np.ndarray:
    """im2col for conv2d: C-contiguous (N, groups, C/groups*kH*kW, OH*OW) column matrix."""
    (kh, kw), (oh, ow) = geom.kernel, geom.out
    top, left = geom.padding
    height = _padded_size(geom.H, top, oh, kh, geom.stride[0], geom.dilation[0])
    width = _padded_size(geom.W, left, ow, kw, geom.stride[1], geom.dilation[1])
    xp = _pad(x, top, left, height, width, 0.0, dtype)
    win = _window_view(xp, geom.kernel, geom.stride, geom.dilation, geom.out)
    G = geom.groups
    # (N, C, kh, kw, OH, OW) -> (N, G, Cg*kh*kw, OH*OW); splitting C into (G, Cg) keeps it a view,
    # the final reshape makes the one copy.
    return win.reshape(geom.N, G, (geom.C // G) * kh * kw, oh * ow)


# --------------------------------------------------------------------------------------------
# im2col / col2im
# --------------------------------------------------------------------------------------------

@unbatched("x", ("x",))
def im2col(x, kernel_size, dilation=1, padding=0, stride=1) -> np.ndarray:
    """Extract sliding blocks, ``torch.nn.functional.unfold``.

    x: (N, C, H, W) -> (N, C*kH*kW, L) with L = OH*OW, where
    out[n, (c*kH + i)*kW + j, oh*OW + ow] = x_padded[n, c, oh*sH + i*dH, ow*sW + j*dW]
    and OH = (H + 2*pH - dH*(kH - 1) - 1) // sH + 1 (likewise OW). Zero padding.
    """
    op = "im2col"
    x = as_float_array(x, "x", op)
    check_ndim(x, 4, "x", op, _NCHW)
    N, C, H, W = x.shape
    geom = unfold_geometry(C, H, W, kernel_size, dilation, padding, stride, op)
    (kh, kw), (oh, ow), (ph, pw) = geom.kernel, geom.out, geom.padding
    height = _padded_size(H, ph, oh, kh, geom.stride[0], geom.dilation[0])
    width = _padded_size(W, pw, ow, kw, geom.stride[1], geom.dilation[1])
    xp = _pad(x, ph, pw, height, width, 0.0, x.dtype)
    win = _window_view(xp, geom.kernel, geom.stride, geom.dilation, geom.out)
    return win.reshape(N, geom.rows, geom.blocks)


@unbatched("cols", ("cols",), ndim=2)
def col2im(cols, output_size, kernel_size, dilation=1, padding=0, stride=1) -> np.ndarray:
    """Sum sliding blocks back into an image, ``torch.nn.functional.fold`` (adjoint of im2col).

    cols: (N, C*kH*kW, L) -> (N, C, H, W) with (H, W) = output_size; L must equal the number
    of blocks OH*OW of :func:`im2col` for that image size. Overlapping entries are summed and
    entries that fall in the padding are dropped.
    """
    op = "col2im"
    cols = as_float_array(cols, "cols", op)
    geom = fold_geometry(cols.shape, output_size, kernel_size, dilation, padding, stride, op)
    N, C, H, W = cols.shape[0], geom.C, geom.H, geom.W
    kh, kw = geom.kernel
    oh, ow = geom.out
    ph, pw = geom.padding
    height = _padded_size(H, ph, oh, kh, geom.stride[0], geom.dilation[0])
    width = _padded_size(W, pw, ow, kw, geom.stride[1], geom.dilation[1])
    blocks = cols.reshape(N, C, kh, kw, oh, ow)
    out = np.zeros((N, C, height, width), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            window = _offset_slice(i, j, geom.out, geom.stride, geom.dilation)
            out[(..., *window)] += blocks[:, :, i, j]
    return np.ascontiguousarray(out[:, :, ph:ph + H, pw:pw + W])


# --------------------------------------------------------------------------------------------
# convolution
# --------------------------------------------------------------------------------------------

def _bf16_operands(precision, dtype, op, *arrays):
    """The arrays as the op multiplies them: rounded to bfloat16 (as float32) where `precision`
    (None: the active autocast's, see fastconv.precision) is "bf16", else unchanged."""
    if resolve_precision(precision, dtype, op) == "bf16":
        return tuple(round_to_bf16(a) for a in arrays)
    return arrays


@unbatched("x", ("x",))
def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           precision=None) -> np.ndarray:
    """2-D cross-correlation, ``torch.nn.functional.conv2d``.

    x: (N, C, H, W), weight: (F, C/groups, kH, kW), bias: (F,) or None -> y: (N, F, OH, OW),

        y[n, f, oh, ow] = bias[f] + sum_{c, i, j} weight[f, c, i, j]
                          * x_pad[n, g*C/groups + c, oh*sH + i*dH, ow*sW + j*dW]

    with g = f // (F/groups) the group of output channel f.

    padding: int, pair, 'valid' or 'same' (stride 1 only; for an even dilated kernel the extra
    row/column goes to the bottom/right, as in PyTorch). Working dtype: float64 if any of
    x/weight/bias is float64, else float32. precision "bf16": x and weight rounded to bfloat16
    first (fastconv.precision).
    """
    op = "conv2d"
    x, weight = _conv_inputs(op, x, weight)
    geom = conv2d_geometry(x.shape, weight.shape, stride, padding, dilation, groups, op)
    bias = float_bias(bias, geom.F, weight.shape, op)
    dtype = common_dtype(x, weight, bias)
    x, weight = _bf16_operands(precision, dtype, op, x, weight)
    G = geom.groups
    cols = _conv_columns(x, geom, dtype)                                  # (N, G, K, L)
    wmat = weight.astype(dtype, copy=False).reshape(G, geom.F // G, -1)  # (G, Fg, K)
    y = np.matmul(wmat, cols).reshape(geom.output_shape)                  # (N, G, Fg, L)
    if bias is not None:
        y += bias.astype(dtype, copy=False)[:, None, None]
    return y


def _conv_input_grad(gy: np.ndarray, wmat: np.ndarray, geom, dtype: np.dtype) -> np.ndarray:
    """conv2d's input gradient: col2im(weight[g]^T @ grad_y[g]), from grad_y as
    (N, G, F/G, OH*OW) and the weight as (G, F/G, C/G*kH*kW)."""
    N, (kh, kw), (oh, ow) = geom.N, geom.kernel, geom.out
    dcols = np.matmul(wmat.transpose(0, 2, 1), gy)                        # (N, G, K, L)
    dcols = dcols.reshape(N, geom.C, kh, kw, oh, ow)
    top, left = geom.padding
    height = _padded_size(geom.H, top, oh, kh, geom.stride[0], geom.dilation[0])
    width = _padded_size(geom.W, left, ow, kw, geom.stride[1], geom.dilation[1])
    gxp = np.zeros((N, geom.C, height, width), dtype=dtype)
    for i in range(kh):
        for j in range(kw):
            gxp[(..., *_offset_slice(i, j, geom.out, geom.stride, geom.dilation))] += \
                dcols[:, :, i, j]
    return np.ascontiguousarray(gxp[:, :, top:top + geom.H, left:left + geom.W])


@unbatched("x", ("grad_y", "x"), strip=(0,))
def conv2d_backward(grad_y, x, weight, stride=1, padding=0, dilation=1, groups=1,
                    output_mask=(True, True, True), *, precision=None):
    """Gradients of :func:`conv2d` w.r.t. x, weight and bias.

    grad_y: (N, F, OH, OW), the gradient of the loss w.r.t. conv2d(x, weight, ...).
    Returns (grad_x (N, C, H, W), grad_weight (F, C/groups, kH, kW), grad_bias (F,)), with None
    in place of the entries whose `output_mask` flag is False:

        grad_weight[g] = grad_y[g] @ cols[g]^T      grad_x = col2im(weight[g]^T @ grad_y[g])
        grad_bias = grad_y.sum((0, 2, 3))

    precision "bf16": grad_y, x and weight rounded to bfloat16 for grad_x and grad_weight
    (grad_bias sums grad_y as given).
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
    N, G = geom.N, geom.groups
    Fg = geom.F // G
    oh, ow = geom.out
    grad_b = None
    if mask[2]:  # (of grad_y as given, whatever the precision)
        gy = grad_y.astype(dtype, copy=False).reshape(N, G, Fg, oh * ow)
        grad_b = np.ascontiguousarray(gy.sum(axis=(0, 3)).reshape(geom.F), dtype=dtype)
    grad_y, x, weight = _bf16_operands(precision, dtype, op, grad_y, x, weight)
    gy = grad_y.astype(dtype, copy=False).reshape(N, G, Fg, oh * ow)      # (N, G, Fg, L)
    wmat = weight.astype(dtype, copy=False).reshape(G, Fg, -1)            # (G, Fg, K)

    grad_x = grad_w = None
    if mask[0]:
        grad_x = _conv_input_grad(gy, wmat, geom, dtype)
    if mask[1]:
        cols = _conv_columns(x, geom, dtype)                              # (N, G, K, L)
        grad_w = np.matmul(gy, cols.transpose(0, 1, 3, 2)).sum(axis=0)    # (G, Fg, K)
        grad_w = np.ascontiguousarray(grad_w.reshape(weight.shape), dtype=dtype)
    return grad_x, grad_w, grad_b


@unbatched("x", ("x",))
def conv2d_max_pool2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
                      kernel_size, pool_stride=None, pool_padding=0, pool_dilation=1,
                      ceil_mode=False, relu=False, precision=None):
    """conv2d followed by max_pool2d (with return_indices; relu as max_pool2d's), returning
    (y, indices): see :func:`fastconv.functional.conv2d_max_pool2d`. Here the two calls,
    after the fast op's checks (its errors name conv2d_max_pool2d and pool_*)."""
    op = "conv2d_max_pool2d"
    x, weight = _conv_inputs(op, x, weight)
    geom = conv2d_geometry(x.shape, weight.shape, stride, padding, dilation, groups, op)
    float_bias(bias, geom.F, weight.shape, op)
    pool2d_geometry(geom.output_shape, kernel_size, pool_stride, pool_padding, pool_dilation,
                    ceil_mode, op, name=CONV_OUTPUT, prefix="pool_")
    return max_pool2d(conv2d(x, weight, bias, stride, padding, dilation, groups,
                             precision=precision), kernel_size,
                      pool_stride, pool_padding, pool_dilation, ceil_mode, return_indices=True,
                      relu=relu)


@unbatched("x", ("grad_pooled", "indices", "x", "relu_output"), strip=())
def conv2d_backward_through_max_pool(grad_pooled, indices, x, weight, stride=1, padding=0,
                                     dilation=1, groups=1, *, relu_output=None,
                                     output_mask=(True, True), precision=None):
    """Weight and bias gradients of conv2d followed by max_pool2d (and a ReLU fused into the
    pooling), from the pooled output's gradient: see
    :func:`fastconv.functional.conv2d_backward_through_max_pool`. Here simply the two
    backwards, max_pool2d_backward then conv2d_backward without grad_x.
    """
    op = "conv2d_backward_through_max_pool"
    x, weight = _conv_inputs(op, x, weight)
    geom, grad_pooled, indices, relu_output, mask, dtype = conv_through_pool_inputs(
        grad_pooled, indices, x, weight, stride, padding, dilation, groups, relu_output,
        output_mask, op)
    check_pool_indices(indices, geom.output_shape, op, CONV_OUTPUT)
    grad_y = max_pool2d_backward(grad_pooled, indices, geom.output_shape,
                                 relu_output=relu_output)
    _, grad_w, grad_b = conv2d_backward(grad_y.astype(dtype, copy=False), x, weight, stride,
                                        padding, dilation, groups,
                                        output_mask=(False, *mask), precision=precision)
    return grad_w, grad_b


@unbatched("x", ("x",))
def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, precision=None) -> np.ndarray:
    """Transposed convolution, ``torch.nn.functional.conv_transpose2d``: the input gradient of
    conv2d(., weight, stride, padding, dilation, groups) applied to x, i.e. each input pixel
    spreads weight[c_in] over its window of the output:

        y[n, g*C_out/G + o, h*sH - pH + i*dH, w*sW - pW + j*dW] += x[n, c, h, w] weight[c, o, i, j]

    x: (N, C_in, H, W), weight: (C_in, C_out/groups, kH, kW), bias: (C_out,) or None ->
    y: (N, C_out, (H - 1) sH - 2 pH + dH (kH - 1) + output_padding + 1, ...).
    """
    op = "conv_transpose2d"
    x, weight = conv_transpose_inputs(x, weight, op)
    geom = conv_transpose2d_geometry(x.shape, weight.shape, stride, padding, output_padding,
                                     groups, dilation, op)
    bias = float_bias(bias, geom.output_shape[1], weight.shape, op)
    dtype = common_dtype(x, weight, bias)
    x, weight = _bf16_operands(precision, dtype, op, x, weight)
    conv = geom.conv
    G, (H, W) = conv.groups, x.shape[2:]
    gy = np.zeros(conv.output_shape, dtype)  # x, and zero rows where output_padding >= stride
    gy[:, :, :H, :W] = x
    gy = gy.reshape(conv.N, G, conv.F // G, conv.out[0] * conv.out[1])
    wmat = weight.astype(dtype, copy=False).reshape(G, conv.F // G, -1)
    y = _conv_input_grad(gy, wmat, conv, dtype)
    if bias is not None:
        y += bias.astype(dtype, copy=False)[:, None, None]
    return y


@unbatched("x", ("grad_y", "x"), strip=(0,))
def conv_transpose2d_backward(grad_y, x, weight, stride=1, padding=0, output_padding=0,
                              groups=1, dilation=1, output_mask=(True, True, True), *,
                              precision=None):
    """Gradients of :func:`conv_transpose2d` w.r.t. x, weight and bias: grad_x is conv2d of
    grad_y with the same weight, grad_weight conv2d's weight gradient with the roles of x and
    grad_y swapped, grad_bias = grad_y.sum((0, 2, 3)). None where output_mask is False."""
    mask, grad_y, x, weight, geom, dtype = conv_transpose_backward_inputs(
        grad_y, x, weight, stride, padding, output_padding, groups, dilation, output_mask,
        "conv_transpose2d_backward")
    conv = geom.conv
    args = (conv.stride, conv.padding, conv.dilation, conv.groups)
    gy, w = np.ascontiguousarray(grad_y, dtype), weight.astype(dtype, copy=False)
    grad_x = grad_w = grad_b = None
    if mask[0]:
        grad_x = np.ascontiguousarray(
            conv2d(gy, w, None, *args, precision=precision)[:, :, :x.shape[2], :x.shape[3]])
    if mask[1]:
        x_out = np.zeros(conv.output_shape, dtype)  # x as conv's output (see conv_transpose2d)
        x_out[:, :, :x.shape[2], :x.shape[3]] = x
        grad_w = conv2d_backward(x_out, gy, w, *args, output_mask=(False, True, False),
                                 precision=precision)[1]
    if mask[2]:
        grad_b = gy.sum(axis=(0, 2, 3))
    return grad_x, grad_w, grad_b


# --------------------------------------------------------------------------------------------
# pooling
# --------------------------------------------------------------------------------------------

def _first_valid(out: int, stride: int, pad: int, dilation: int) -> np.ndarray:
    """Per output position, the first window row/column inside the input (PyTorch's
    ``while (ih0 < 0) ih0 += dilation``); int64 array of length `out`."""
    start = np.arange(out, dtype=np.int64) * stride - pad
    neg = start < 0
    start[neg] += (-start[neg] + dilation - 1) // dilation * dilation
    return start


@unbatched("x", ("x",))
def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False, *, relu=False):
    """2-D max pooling, ``torch.nn.functional.max_pool2d``.

    x: (N, C, H, W) -> y: (N, C, OH, OW), OH = (H + 2p - d(k - 1) - 1) // s + 1 (ceil with
    `ceil_mode`). stride=None means stride = kernel_size. Padding counts as -inf.
    With `return_indices`, also returns int64 indices (N, C, OH, OW) of the maxima, flat in
    each H*W plane (ih*W + iw), as PyTorch's CPU kernel picks them: the first maximum in
    row-major window order, except that NaN propagates (the last NaN of the window wins).
    relu=True returns relu(y) (the same indices): a ReLU after the pooling.
    """
    op = "max_pool2d"
    x = as_float_array(x, "x", op)
    check_ndim(x, 4, "x", op, _NCHW)
    geom = pool2d_geometry(x.shape, kernel_size, stride, padding, dilation, ceil_mode, op)
    dtype = x.dtype
    N, C, H, W = x.shape
    (kh, kw), (oh, ow), (ph, pw) = geom.kernel, geom.out, geom.padding
    (sh, sw), (dh, dw) = geom.stride, geom.dilation
    height = _padded_size(H, ph, oh, kh, sh, dh)
    width = _padded_size(W, pw, ow, kw, sw, dw)
    xp = _pad(x, ph, pw, height, width, -np.inf, dtype)

    y = np.full(geom.output_shape, -np.inf, dtype=dtype)
    take = np.empty(geom.output_shape, dtype=bool)
    isnan = np.empty(geom.output_shape, dtype=bool)
    if return_indices:
        rows0 = _first_valid(oh, sh, ph, dh)
        cols0 = _first_valid(ow, sw, pw, dw)
        idx = np.empty(geom.output_shape, dtype=np.int64)
        idx[...] = rows0[:, None] * W + cols0[None, :]
        base = (np.arange(oh, dtype=np.int64) * sh - ph)[:, None] * W \
            + (np.arange(ow, dtype=np.int64) * sw - pw)[None, :]
    for i in range(kh):
        for j in range(kw):
            val = xp[(..., *_offset_slice(i, j, geom.out, geom.stride, geom.dilation))]
            # PyTorch: if (val > maxval || isnan(val)) { maxval = val; maxindex = index; }
            np.greater(val, y, out=take)
            np.isnan(val, out=isnan)
            take |= isnan
            np.copyto(y, val, where=take)
            if return_indices:
                # padded positions hold -inf, are never taken, so their index does not matter
                np.copyto(idx, base + (i * dh * W + j * dw), where=take)
    if relu:
        y = _relu_values(y)
    if return_indices:
        return y, idx
    return y


@unbatched("input_shape", ("grad_y", "indices", "relu_output"), ("input_shape",))
def max_pool2d_backward(grad_y, indices, input_shape, *, relu_output=None) -> np.ndarray:
    """Gradient of :func:`max_pool2d` w.r.t. x: scatter-add grad_y to the argmax positions.

    grad_y, indices: (N, C, OH, OW), indices flat in each H*W plane (from max_pool2d with
    return_indices=True); input_shape: (N, C, H, W). Returns grad_x of `input_shape`.
    relu_output: the output of a forward with relu=True; grad_y then first goes through the
    ReLU's gradient.
    """
    grad_y, indices, input_shape, relu_output = max_pool_backward_inputs(
        grad_y, indices, input_shape, relu_output=relu_output)
    if relu_output is not None:
        grad_y = relu_backward(grad_y, relu_output)
    N, C, H, W = input_shape
    plane = H * W
    check_pool_indices(indices, input_shape)
    grad_x = np.zeros(N * C * plane, dtype=grad_y.dtype)
    if indices.size:
        flat = indices.reshape(N * C, -1) \
            + (np.arange(N * C, dtype=np.int64) * plane)[:, None]
        np.add.at(grad_x, flat.ravel(), grad_y.reshape(-1))
    return grad_x.reshape(input_shape)


def _avg_divisor(geom, count_include_pad: bool, dtype: np.dtype,
                 divisor_override: int | None = None) -> np.ndarray:
    """(OH, OW) divisors of avg_pool2d, as PyTorch's CPU kernel computes them.

    Per axis the window [start, start + k) is first clipped to [-p, size + p) (that length is
    the divisor with count_include_pad) and then to [0, size) (the divisor without it);
    `divisor_override` replaces the divisor of every window. A window with nothing inside the
    input gets divisor 0 (its output is 0).
    """
    counts, nonempty = [], []
    for size, k, s, p, o in zip((geom.H, geom.W), geom.kernel, geom.stride, geom.padding,
                                geom.out):
        start = np.arange(o, dtype=np.int64) * s - p
        end = np.minimum(start + k, size + p)
        inside = np.maximum(np.minimum(end, size) - np.maximum(start, 0), 0)
        counts.append(np.where(inside > 0, end - start, 0) if count_include_pad else inside)
        nonempty.append(inside > 0)
    div = counts[0][:, None] * counts[1][None, :]
    if divisor_override is not None:
        div = np.where(nonempty[0][:, None] & nonempty[1][None, :], divisor_override, 0)
    return div.astype(dtype)


@unbatched("x", ("x",))
def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None) -> np.ndarray:
    """2-D average pooling, ``torch.nn.functional.avg_pool2d`` (CPU divisor rules).

    x: (N, C, H, W) -> y: (N, C, OH, OW). The window sum (zero padding) is divided by the
    number of window positions inside [-p, H + p) x [-p, W + p) if `count_include_pad`
    (so with ceil_mode the part of a window hanging past the padding is not counted), else by
    the number of positions inside the input; by `divisor_override` (a non-zero int) for
    every window when it is given.
    """
    op = "avg_pool2d"
    x = as_float_array(x, "x", op)
    check_ndim(x, 4, "x", op, _NCHW)
    geom = pool2d_geometry(x.shape, kernel_size, stride, padding, 1, ceil_mode, op)
    dtype = x.dtype
    N, C, H, W = x.shape
    (kh, kw), (oh, ow), (ph, pw) = geom.kernel, geom.out, geom.padding
    height = _padded_size(H, ph, oh, kh, geom.stride[0], 1)
    width = _padded_size(W, pw, ow, kw, geom.stride[1], 1)
    xp = _pad(x, ph, pw, height, width, 0.0, dtype)
    y = np.zeros(geom.output_shape, dtype=dtype)
    for i in range(kh):
        for j in range(kw):
            y += xp[(..., *_offset_slice(i, j, geom.out, geom.stride, geom.dilation))]
    div = _avg_divisor(geom, flag(count_include_pad, "count_include_pad", op), dtype,
                       _divisor_override(divisor_override, op))
    np.divide(y, div, out=y, where=div != 0)
    return y


@unbatched("input_shape", ("grad_y",), ("input_shape",))
def avg_pool2d_backward(grad_y, input_shape, kernel_size, stride=None, padding=0,
                        ceil_mode=False, count_include_pad=True,
                        divisor_override=None) -> np.ndarray:
    """Gradient of :func:`avg_pool2d` w.r.t. x.

    grad_y: (N, C, OH, OW), input_shape: (N, C, H, W). Each grad_y entry divided by its
    window's divisor is added to every input position of the window.
    """
    op = "avg_pool2d_backward"
    grad_y = as_float_array(grad_y, "grad_y", op)
    check_ndim(grad_y, 4, "grad_y", op, _NCHW)
    input_shape = check_shape(input_shape, 4, "input_shape", op)
    geom = pool2d_geometry(input_shape, kernel_size, stride, padding, 1, ceil_mode, op,
                           name="input_shape")
    if grad_y.shape != geom.output_shape:
        raise ValueError(f"{op}: grad_y must have the pooled shape {geom.output_shape} for "
                         f"input_shape {input_shape}, got {grad_y.shape}")
    dtype = grad_y.dtype
    N, C, H, W = input_shape
    (kh, kw), (oh, ow), (ph, pw) = geom.kernel, geom.out, geom.padding
    div = _avg_divisor(geom, flag(count_include_pad, "count_include_pad", op), dtype,
                       _divisor_override(divisor_override, op))
    g = np.zeros(geom.output_shape, dtype=dtype)
    np.divide(grad_y, div, out=g, where=div != 0)
    height = _padded_size(H, ph, oh, kh, geom.stride[0], 1)
    width = _padded_size(W, pw, ow, kw, geom.stride[1], 1)
    gxp = np.zeros((N, C, height, width), dtype=dtype)
    for i in range(kh):
        for j in range(kw):
            gxp[(..., *_offset_slice(i, j, geom.out, geom.stride, geom.dilation))] += g
    return np.ascontiguousarray(gxp[:, :, ph:ph + H, pw:pw + W])


@unbatched("x", ("x", "indices"))
def max_unpool2d(x, indices, kernel_size, stride=None, padding=0,
                 output_size=None) -> np.ndarray:
    """``torch.nn.functional.max_unpool2d``: y (N, C, OH, OW) zero but y[n, c].flat[i] =
    x[n, c].flat[j] for indices[n, c].flat[j] = i; of repeated indices the last j (row-major)
    wins. Output size as :func:`fastconv._args.unpool_output_size`."""
    x, where, shape = max_unpool_inputs(x, indices, kernel_size, stride, padding, output_size)
    y = np.zeros(shape, x.dtype)
    # the last occurrence of each position: its first in the reversed order
    positions, first = np.unique(where[::-1], return_index=True)
    y.reshape(-1)[positions] = x.reshape(-1)[::-1][first]
    return y


@unbatched("grad_y", ("grad_y", "indices"))
def max_unpool2d_backward(grad_y, indices) -> np.ndarray:
    """Gradient of :func:`max_unpool2d` w.r.t. x: grad_x[n, c].flat[j] =
    grad_y[n, c].flat[indices[n, c].flat[j]] (PyTorch's, repeated indices included)."""
    grad_y, indices = max_unpool_backward_inputs(grad_y, indices)
    N, C, H, W = indices.shape
    plane = grad_y.shape[2] * grad_y.shape[3]
    flat = indices + (np.arange(N * C, dtype=np.int64) * plane).reshape(N, C, 1, 1)
    return np.ascontiguousarray(grad_y).reshape(-1)[flat]


def _window_sums(x: np.ndarray, axis: int, out: int):
    """Sums of x over adaptive pooling's `out` windows along `axis` (that axis becomes `out`
    long), added window offset by window offset; and the window lengths."""
    size = x.shape[axis]
    start, end = adaptive_windows(size, out)
    length = end - start
    shape = [1] * x.ndim
    shape[axis] = out
    total = np.zeros(x.shape[:axis] + (out,) + x.shape[axis + 1:], x.dtype)
    for i in range(int(length.max(initial=0))):
        rows = np.take(x, np.minimum(start + i, size - 1), axis=axis)
        with np.errstate(invalid="ignore"):  # inf + -inf is NaN, as in PyTorch
            total += np.where((i < length).reshape(shape), rows, 0)  # (not * mask: 0 * inf)
    return total, length


def _window_scatter(g: np.ndarray, axis: int, size: int) -> np.ndarray:
    """The adjoint of _window_sums' sum: each entry of g added over its window, the axis
    becoming `size` long."""
    g = np.moveaxis(g, axis, -1)
    start, end = adaptive_windows(size, g.shape[-1])
    out = np.zeros(g.shape[:-1] + (size,), g.dtype)
    for i in range(int((end - start).max(initial=0))):
        valid = i < end - start
        np.add.at(out, (Ellipsis, start[valid] + i), g[..., valid])
    return np.moveaxis(out, -1, axis)


@unbatched("x", ("x",))
def adaptive_avg_pool2d(x, output_size) -> np.ndarray:
    """Adaptive average pooling, ``torch.nn.functional.adaptive_avg_pool2d``: each output the
    sum over its window [floor(i H / OH), ceil((i + 1) H / OH)) x (columns likewise), rows
    first, divided by the window's height and then its width (PyTorch's order)."""
    op = "adaptive_avg_pool2d"
    x = as_float_array(x, "x", op)
    check_ndim(x, 4, "x", op, _NCHW)
    N, C, OH, OW = adaptive_pool2d_output_shape(x.shape, output_size, op)
    rows, kh = _window_sums(x, 2, OH)
    total, kw = _window_sums(rows, 3, OW)
    return np.ascontiguousarray(total / kh[:, None].astype(x.dtype) / kw.astype(x.dtype))


@unbatched("input_shape", ("grad_y",), ("input_shape",))
def adaptive_avg_pool2d_backward(grad_y, input_shape) -> np.ndarray:
    """Gradient of :func:`adaptive_avg_pool2d`: each grad_y entry divided by its window's
    height and width, added over the window."""
    grad_y, input_shape = adaptive_backward_inputs(grad_y, input_shape,
                                                   "adaptive_avg_pool2d_backward")
    (H, W), (OH, OW) = input_shape[2:], grad_y.shape[2:]
    kh = np.diff(np.stack(adaptive_windows(H, OH)), axis=0)[0]
    kw = np.diff(np.stack(adaptive_windows(W, OW)), axis=0)[0]
    g = grad_y / kh[:, None].astype(grad_y.dtype) / kw.astype(grad_y.dtype)
    return np.ascontiguousarray(_window_scatter(_window_scatter(g, 3, W), 2, H))


def upsample_nearest2d(x, size=None, scale_factor=None, *, recompute_scale_factor=None):
    """Nearest-neighbour resampling, ``torch.nn.functional.interpolate(mode='nearest')``:
    y[..., i, j] = x[..., rows[i], cols[j]], one fancy-indexing gather, with PyTorch's index
    maps (see :func:`fastconv._args.nearest_indices`)."""
    op = "upsample_nearest2d"
    x = as_float_array(x, "x", op)
    geom = upsample_nearest2d_geometry(x.shape, size, scale_factor, recompute_scale_factor, op)
    return np.ascontiguousarray(x[:, :, geom.rows[:, None], geom.cols[None, :]])


def upsample_nearest2d_backward(grad_y, input_shape, size=None, scale_factor=None, *,
                                recompute_scale_factor=None) -> np.ndarray:
    """Gradient of :func:`upsample_nearest2d`: grad_y scatter-added (np.add.at) to the input
    positions the outputs copy."""
    grad_y, input_shape, geom = upsample_backward_inputs(
        "upsample_nearest2d_backward", grad_y, input_shape, size, scale_factor,
        recompute_scale_factor)
    grad_x = np.zeros(input_shape, grad_y.dtype)
    np.add.at(grad_x, (slice(None), slice(None), geom.rows[:, None], geom.cols[None, :]), grad_y)
    return grad_x


def linear(x, weight, bias=None, *, precision=None) -> np.ndarray:
    """y = x @ weight.T + bias, ``torch.nn.functional.linear``: x (..., in) -> (..., out).
    precision "bf16": x and weight rounded to bfloat16 first."""
    op = "linear"
    x = as_float_array(x, "x", op)
    weight = as_float_array(weight, "weight", op)
    if bias is not None:
        bias = as_float_array(bias, "bias", op)
    linear_shapes(x.shape, weight.shape, None if bias is None else bias.shape, op)
    dtype = common_dtype(x, weight, bias)
    x, weight = _bf16_operands(precision, dtype, op, x, weight)
    y = np.matmul(x.astype(dtype, copy=False), weight.astype(dtype, copy=False).T)
    if bias is not None:
        y += bias
    return np.ascontiguousarray(y)


def linear_backward(grad_y, x, weight, output_mask=(True, True, True), *, precision=None):
    """Gradients of :func:`linear`: (grad_y @ weight, grad_y^T @ x, grad_y summed), masked.
    precision "bf16": grad_y, x and weight rounded to bfloat16 for the products (the bias
    gradient sums grad_y as given)."""
    op = "linear_backward"
    mask = normalize_output_mask(output_mask, op)
    x = as_float_array(x, "x", op)
    weight = as_float_array(weight, "weight", op)
    grad_y = as_float_array(grad_y, "grad_y", op)
    in_f, out_f = linear_shapes(x.shape, weight.shape, None, op, grad_y.shape)
    dtype = common_dtype(grad_y, x, weight)
    rows = math.prod(x.shape[:-1])  # not reshape(-1, ...): in_f or out_f may be 0
    grad_b = grad_y.astype(dtype, copy=False).reshape(rows, out_f).sum(axis=0) if mask[2] else None
    grad_y, x, weight = _bf16_operands(precision, dtype, op, grad_y, x, weight)
    gy = grad_y.astype(dtype, copy=False).reshape(rows, out_f)
    x2 = x.astype(dtype, copy=False).reshape(rows, in_f)
    grad_x = np.ascontiguousarray((gy @ weight.astype(dtype, copy=False)).reshape(x.shape)) if mask[0] else None
    grad_w = np.ascontiguousarray(gy.T @ x2) if mask[1] else None
    return grad_x, grad_w, grad_b


def batch_norm_train(x, weight=None, bias=None, eps=1e-5, *, relu=False):
    """Training-mode batch normalisation over axis 1 (see fastconv.functional.batch_norm_train)."""
    op = "batch_norm_train"
    x3, weight, bias = batch_norm_inputs(x, weight, bias, op)
    eps = batch_norm_eps(eps, op)
    mean = x3.mean(axis=(0, 2))
    xc = x3 - mean[:, None]
    var = np.mean(xc * xc, axis=(0, 2))
    invstd = 1.0 / np.sqrt(var + x3.dtype.type(eps))
    y = xc * invstd[:, None]
    if weight is not None:
        y *= weight[:, None]
    if bias is not None:
        y += bias[:, None]
    if relu:
        np.maximum(y, y.dtype.type(0), out=y)
    return np.ascontiguousarray(y.reshape(np.shape(x))), mean, invstd.astype(x3.dtype), var


def batch_norm_train_backward(grad_y, x, mean, invstd, weight=None, input_grad=True, *,
                              relu_output=None):
    """Gradients of :func:`batch_norm_train`: (grad_x or None, grad_weight, grad_bias)."""
    op = "batch_norm_train_backward"
    shape = np.shape(x)
    x3, weight, _ = batch_norm_inputs(x, weight, None, op, grad_y)
    grad_y, mean, invstd, relu_output = batch_norm_grad_inputs(grad_y, shape, mean, invstd,
                                                               x3.dtype, op, relu_output)
    if relu_output is not None:
        grad_y = relu_backward(grad_y, relu_output)
    g3 = grad_y.astype(x3.dtype, copy=False).reshape(x3.shape)
    xhat = (x3 - mean[:, None]) * invstd[:, None]
    gb = g3.sum(axis=(0, 2))
    gw = np.sum(g3 * xhat, axis=(0, 2))
    gx = None
    if input_grad:
        m = x3.shape[0] * x3.shape[2]
        k = invstd * weight if weight is not None else invstd
        gx = k[:, None] * (g3 - gb[:, None] / m - xhat * (gw / m)[:, None])
        gx = np.ascontiguousarray(gx.reshape(shape), dtype=x3.dtype)
    return gx, gw, gb


def _lrn_window(C: int, size: int, dtype) -> np.ndarray:
    """(C, C) matrix B with B[c, c'] = 1 where channel c' is in channel c's window
    [c - size // 2, c + (size - 1) // 2]: the window sums of a are B @ a over the channels."""
    offset = np.arange(C)[None, :] - np.arange(C)[:, None]
    return ((offset >= -(size // 2)) & (offset <= (size - 1) // 2)).astype(dtype)


def _lrn_base(x: np.ndarray, size: int, alpha: float, k: float, window: np.ndarray) -> np.ndarray:
    """k + alpha / size * (window sums of x^2 over the channels)."""
    sums = np.einsum("cd,nd...->nc...", window, x * x)
    return k + alpha / size * sums


def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0) -> np.ndarray:
    """``torch.nn.functional.local_response_norm`` of x (N, C, *): x / (k + alpha / size *
    S)^beta, S the sums of x^2 over each channel's window of `size` channels
    [c - size // 2, c + (size - 1) // 2] (a band matrix over the channel axis)."""
    op = "local_response_norm"
    size, alpha, beta, k = local_response_norm_args(size, alpha, beta, k, op)
    x = local_response_norm_input(x, op)
    if not x.size:
        return np.empty(x.shape, x.dtype)
    base = _lrn_base(x, size, alpha, k, _lrn_window(x.shape[1], size, x.dtype))
    return np.ascontiguousarray(x * base ** -beta, dtype=x.dtype)


def local_response_norm_backward(grad_y, x, size, alpha=1e-4, beta=0.75, k=1.0) -> np.ndarray:
    """Gradient of :func:`local_response_norm` w.r.t. x, by the chain rule through the band
    matrix B: with b = k + alpha / size * B x^2 and y = x b^-beta,
    dx = g b^-beta + 2 alpha / size * x * B^T (-beta g x b^(-beta - 1))."""
    grad_y, x, dtype, (size, alpha, beta, k) = local_response_norm_grad_inputs(
        grad_y, x, size, alpha, beta, k, "local_response_norm_backward")
    if not x.size:
        return np.empty(x.shape, dtype)
    window = _lrn_window(x.shape[1], size, dtype)
    base = _lrn_base(x, size, alpha, k, window)
    grad_base = -beta * grad_y * x * base ** (-beta - 1)
    grad_sums = np.einsum("cd,nc...->nd...", window, grad_base)
    dx = grad_y * base ** -beta + 2 * alpha / size * x * grad_sums
    return np.ascontiguousarray(dx, dtype=dtype)


def _relu_values(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, x.dtype.type(0))  # NaN propagates


def relu(x) -> np.ndarray:
    """max(x, 0) elementwise, as torch.relu (NaN propagates)."""
    # (asarray: ascontiguousarray would make a 0-d array 1-d)
    return np.asarray(_relu_values(as_float_array(x, "x", "relu")), order="C")


def relu_backward(grad_y, y) -> np.ndarray:
    """Gradient of relu from its output: 0 where y <= 0, else grad_y (NaN passes, as torch)."""
    grad_y, y, dtype = relu_backward_inputs(grad_y, y)
    return np.asarray(np.where(y <= 0, 0, grad_y), dtype, order="C")


# --------------------------------------------------------------------------------------------
# GELU and SiLU: the normal CDF and the sigmoid in float64; GELU's tanh form, torch's formula,
# in the working dtype (as torch: so a float32 x**3 overflows where torch's does)
# --------------------------------------------------------------------------------------------

def _normal_cdf(x: np.ndarray) -> np.ndarray:
    """Phi(x) = erfc(-x / sqrt(2)) / 2 in float64, NumPy having no erf. With z = |x| / sqrt(2):

    * z < 1.25: erf(z) = 2/sqrt(pi) exp(-z^2) sum_n z (2 z^2)^n / (1 3 5 ... (2n + 1)), a
      series of positive terms (40 of them reach double precision there);
    * z >= 1.25: erfc(z) = exp(-z^2) / sqrt(pi) / (z + (1/2) / (z + 1 / (z + (3/2) / (z + ...)))),
      the continued fraction, 120 levels deep.

    The lower tail takes erfc directly beyond z = 1.25 (1 - erf cancels at most a factor 13
    below it). Within 40 eps of the exact values for |x| < 6 (measured against mpmath); the
    rounding of z^2 costs up to ~2 z^2 eps further out.
    """
    z = np.abs(np.asarray(x, np.float64)) / math.sqrt(2.0)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        near = np.minimum(z, 1.25)
        term = near.copy()
        total = near.copy()
        for n in range(1, 40):
            term *= 2 * near * near / (2 * n + 1)
            total += term
        erf_near = 2 / math.sqrt(math.pi) * np.exp(-near * near) * total
        far = np.maximum(z, 1.25)
        frac = far.copy()
        for k in range(120, 0, -1):
            frac = far + (k / 2) / frac
        erfc_far = np.exp(-far * far) / (math.sqrt(math.pi) * frac)
    erfc = np.where(z < 1.25, 1 - erf_near, erfc_far)
    upper = np.where(z < 1.25, 0.5 * (1 + erf_near), 1 - 0.5 * erfc_far)
    return np.where(x < 0, 0.5 * erfc, upper)


_GELU_K = math.sqrt(2 / math.pi)
_GELU_KAPPA = 0.044715


def gelu(x, approximate="none") -> np.ndarray:
    """GELU, ``torch.nn.functional.gelu``: x Phi(x), or with approximate='tanh'
    x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (torch's formula as written, which loses
    the negative tail to cancellation)."""
    tanh = gelu_tanh(approximate, "gelu")
    x = as_float_array(x, "x", "gelu")
    with np.errstate(over="ignore", invalid="ignore"):
        if tanh:
            y = 0.5 * x * (1 + np.tanh(_GELU_K * (x + _GELU_KAPPA * x ** 3)))
        else:
            y = x * _normal_cdf(x)
    return np.asarray(y, x.dtype, order="C")


def gelu_backward(grad_y, x, approximate="none") -> np.ndarray:
    """Gradient of :func:`gelu`: grad_y (Phi(x) + x exp(-x^2/2) / sqrt(2 pi)), or torch's
    derivative of the tanh form. The derivative is rounded to the working dtype before the
    product, as torch's: where it underflows to 0 (float32 x below ~ -14), an infinite grad_y
    gives NaN, not +-inf."""
    tanh = gelu_tanh(approximate, "gelu_backward")
    grad_y, x, dtype = relu_backward_inputs(grad_y, x, "gelu_backward", "x")
    x = x.astype(dtype, copy=False)
    with np.errstate(over="ignore", invalid="ignore"):
        if tanh:
            t = np.tanh(_GELU_K * (x + _GELU_KAPPA * x ** 3))
            d = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _GELU_K * (1 + 3 * _GELU_KAPPA * x ** 2)
        else:
            d = _normal_cdf(x) + x * np.exp(-0.5 * x.astype(np.float64) ** 2) / math.sqrt(2 * math.pi)
        return np.asarray(grad_y * d.astype(dtype), dtype, order="C")


def _sigmoid64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1 / (1 + np.exp(-x.astype(np.float64)))


def silu(x) -> np.ndarray:
    """SiLU, ``torch.nn.functional.silu``: x sigmoid(x)."""
    x = as_float_array(x, "x", "silu")
    with np.errstate(invalid="ignore"):
        return np.asarray(x * _sigmoid64(x), x.dtype, order="C")


def silu_backward(grad_y, x) -> np.ndarray:
    """Gradient of :func:`silu`: grad_y s (1 + x (1 - s)), s = sigmoid(x) (torch's formula);
    the derivative rounded to the working dtype before the product, as gelu_backward's."""
    grad_y, x, dtype = relu_backward_inputs(grad_y, x, "silu_backward", "x")
    s = _sigmoid64(x)
    with np.errstate(invalid="ignore"):
        return np.asarray(grad_y * (s * (1 + x * (1 - s))).astype(dtype), dtype, order="C")


def _pad_sources(n: int, before: int, after: int, mode: str) -> np.ndarray:
    """For each position of an axis of size n padded (before, after): the input index it
    holds, -1 for a constant."""
    i = np.arange(-before, n + after)
    if mode == "constant":
        return np.where((i >= 0) & (i < n), i, -1)
    if mode == "replicate":
        return np.clip(i, 0, n - 1)
    if mode == "circular":
        return i % n
    i = np.abs(i)                       # reflect: -k -> k, then n - 1 + k -> n - 1 - k
    return np.where(i > n - 1, 2 * (n - 1) - i, i)


def pad(x, pad, mode="constant", value=0.0) -> np.ndarray:
    """torch.nn.functional.pad of the last axis (pad = (left, right)) or the last two (left,
    right, top, bottom), by gathering each padded axis through its source indices."""
    x = as_float_array(x, "x", "pad")
    pads = pad_geometry(x.shape, pad, mode, "pad")
    value = pad_value(value, mode, "pad")
    y = x
    for axis, (before, after) in enumerate(pads):
        if before or after:
            src = _pad_sources(x.shape[axis], before, after, mode)
            shape = [1] * y.ndim
            shape[axis] = -1
            if x.shape[axis] == 0:  # (constant only: nothing to gather from)
                y = np.broadcast_to(x.dtype.type(value),
                                    y.shape[:axis] + (len(src),) + y.shape[axis + 1:])
                continue
            y = np.take(y, np.maximum(src, 0), axis=axis)
            y = np.where(src.reshape(shape) < 0, x.dtype.type(value), y)
    return np.array(y, dtype=x.dtype, order="C")


def pad_backward(grad_y, input_shape, pad, mode="constant") -> np.ndarray:
    """Gradient of :func:`pad`: each padded axis' gradient scattered back to its source
    indices (np.add.at), constants dropped."""
    g, shape, pads = pad_backward_inputs(grad_y, input_shape, pad, mode, "pad_backward")
    for axis, (before, after) in enumerate(pads):
        if before or after:
            src = _pad_sources(shape[axis], before, after, mode)
            out_shape = list(g.shape)
            out_shape[axis] = shape[axis]
            out = np.zeros(out_shape, g.dtype)
            keep = np.flatnonzero(src >= 0)
            moved = np.moveaxis(out, axis, 0)
            np.add.at(moved, src[keep], np.moveaxis(np.take(g, keep, axis=axis), axis, 0))
            g = out
    return np.array(g, order="C")
