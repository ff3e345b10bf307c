"""Argument checking and shape arithmetic shared by the fast and the reference ops.

Both `fastconv.functional` and `fastconv.reference` validate through this module, so they
accept exactly the same inputs, raise exactly the same errors and agree on every output size.

Output size of a convolution / pooling window along one axis (arXiv 1603.07285):

    out = (H + pad_total - d*(k-1) - 1) // s + 1

Pooling may use ceil instead of floor (``ceil_mode``); then the last window must still start
inside the input or the left padding, as in PyTorch.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from dataclasses import dataclass

import numpy as np

# Sizes and hyper-parameters beyond this are certainly a mistake, and keeping every product
# of two of them below 2**62 means the int64 index arithmetic in the kernels cannot overflow.
_MAX_INT = 2**31 - 1
_MAX_ELEMENTS = 2**62


def pair(value, name: str, op: str) -> tuple[int, int]:
    """Normalise an int or a pair of ints (PyTorch's `_pair`) to a tuple of two Python ints."""
    if isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return (int(value), int(value))
    if isinstance(value, (tuple, list, np.ndarray)) and len(value) == 2:
        items = tuple(value)
        if all(isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, (bool, np.bool_))
               for v in items):
            return (int(items[0]), int(items[1]))
    raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")


def flag(value, name: str, op: str) -> bool:
    """A boolean option (ceil_mode, count_include_pad, ...): True/False (or NumPy's, or 0/1);
    anything else, e.g. the string 'no', which Python would take as True, raises TypeError."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, (numbers.Integral, np.integer))
                                              and value in (0, 1)):
        return bool(value)
    raise TypeError(f"{op}: {name} must be True or False, got {value!r}")


def divisor_override(value, op: str) -> int | None:
    """avg_pool2d's divisor_override: None (each window's own divisor) or a non-zero int, as
    PyTorch takes it (a negative one too); 0 raises ValueError, a float or bool TypeError."""
    if value is None:
        return None
    if not isinstance(value, (numbers.Integral, np.integer)) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: divisor_override must be an int or None, got {value!r}")
    if value == 0 or abs(int(value)) > _MAX_INT:
        raise ValueError(f"{op}: divisor_override must be non-zero (and of magnitude below "
                         f"2**31), got {value!r}")
    return int(value)


def positive_pair(value, name: str, op: str) -> tuple[int, int]:
    """`pair`, each entry in [1, 2**31)."""
    p = pair(value, name, op)
    if not all(1 <= v <= _MAX_INT for v in p):
        raise ValueError(f"{op}: {name} must be positive (and below 2**31), got {value!r}")
    return p


def nonnegative_pair(value, name: str, op: str) -> tuple[int, int]:
    """`pair`, each entry in [0, 2**31)."""
    p = pair(value, name, op)
    if not all(0 <= v <= _MAX_INT for v in p):
        raise ValueError(f"{op}: {name} must be non-negative (and below 2**31), got {value!r}")
    return p


def conv_output_size(size: int, kernel: int, stride: int, pad_total: int, dilation: int) -> int:
    """Output length of a convolution along one axis: (size + pad_total - d(k-1) - 1) // s + 1.

    May be <= 0 when the dilated kernel is larger than the padded input; callers check.
    """
    return (size + pad_total - dilation * (kernel - 1) - 1) // stride + 1


def pool_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int,
                     ceil_mode: bool) -> int:
    """Output length of a pooling window along one axis, PyTorch's `pooling_output_shape`.

    With ceil_mode the division rounds up, but a last window that would start entirely in the
    right padding is dropped: if (out - 1) * s >= size + padding, out -= 1.
    """
    numerator = size + 2 * padding - dilation * (kernel - 1) - 1
    if ceil_mode:
        numerator += stride - 1
    out = numerator // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


_CONVERTIBLE_KINDS = "biuf"  # bool, signed, unsigned, float (float16 etc.)


def working_dtype(dtype) -> np.dtype:
    """The native float dtype a real array computes in: float64 for float64 of either byte
    order and longdouble, else float32 (float32, float16, integers, bool)."""
    dt = np.dtype(dtype)
    return np.dtype(np.float64 if dt.kind == "f" and dt.itemsize >= 8 else np.float32)


def as_float_array(x, name: str, op: str) -> np.ndarray:
    """Return `x` as a float32 or float64 ndarray (any layout; no copy if it already is one).

    float32 and float64 are kept (byte-swapped ones, e.g. big-endian '>f8' read from a file,
    become the native type of the same precision). longdouble becomes float64; other real
    numbers (bool, integers, float16) become float32, the library's working precision.
    Complex, object, string and datetime arrays raise TypeError: there is no meaningful
    convolution of them.
    """
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except Exception as exc:  # ragged lists and the like
            raise TypeError(f"{op}: {name} must be an array of real numbers: {exc}") from None
    if x.dtype == np.float32 or x.dtype == np.float64:
        return x
    if x.dtype.kind in _CONVERTIBLE_KINDS:
        return x.astype(working_dtype(x.dtype))
    raise TypeError(f"{op}: {name} must hold real numbers (float32/float64, or ints/float16 "
                    f"which are converted to float32), got dtype {x.dtype}")


def common_dtype(*arrays: np.ndarray | None) -> np.dtype:
    """float64 if any argument is float64, else float32 (NumPy's promotion for these two)."""
    if any(a is not None and a.dtype == np.float64 for a in arrays):
        return np.dtype(np.float64)
    return np.dtype(np.float32)


def check_ndim(x: np.ndarray, ndim: int, name: str, op: str, layout: str) -> None:
    """Raise ValueError unless `x` has `ndim` dimensions."""
    if x.ndim != ndim:
        if layout.startswith("(N, C"):
            raise not_batched(op, name, x.shape, layout)
        raise ValueError(f"{op}: {name} must be {ndim}-D {layout}, got shape {x.shape}")


def not_batched(op: str, name: str, shape, layout: str = "(N, C, H, W)") -> ValueError:
    """The error for an image array of the wrong number of axes: the ops take a batch
    (N, C, H, W), or one unbatched image (C, H, W) (see :func:`unbatched`)."""
    return ValueError(f"{op}: {name} must be 4-D {layout}, or 3-D {layout.replace('N, ', '')} "
                      f"for one unbatched image, got shape {tuple(shape)}")


def unbatched(key: str, arrays: tuple[str, ...] = (), shapes: tuple[str, ...] = (),
              strip: tuple[int, ...] | None = None, ndim: int = 3, shape_result: bool = False):
    """Decorator: the op also takes one unbatched image, as PyTorch's 2-D ops do, and gives
    its result without the batch axis.

    When the argument `key` (an array, or a shape if it is one of `shapes`) has `ndim` axes
    (entries), (C, H, W) rather than (N, C, H, W), every array named in `arrays` (each must
    then have `ndim` axes too) gets a batch axis of 1 and every shape in `shapes` a leading 1;
    the op runs on that batch of one, and its result loses the batch axis again: the result
    itself, or the entries at positions `strip` of a tuple result (all of them if None; None
    entries stay), or its first entry if it is a shape (`shape_result`). The values are
    those of the batched call on x[None], bit for bit. A
    ValueError of that call says which unbatched argument it ran for. fastconv.functional
    and fastconv.reference decorate their twins alike."""
    def decorate(op):
        names = list(inspect.signature(op).parameters)
        where = {name: names.index(name) for name in (key, *arrays, *shapes)}
        key_is_shape = key in shapes

        def get(args, kwargs, name):
            i = where[name]
            return args[i] if i < len(args) else kwargs.get(name)

        def put(args, kwargs, name, value):
            if where[name] < len(args):
                args[where[name]] = value
            else:
                kwargs[name] = value

        @functools.wraps(op)
        def run(*args, **kwargs):
            value = get(args, kwargs, key)
            try:
                size = len(value) if key_is_shape else np.ndim(value)
            except (TypeError, ValueError):  # (not a shape or an array: the op says why)
                size = None
            if size != ndim or value is None:
                return op(*args, **kwargs)
            given = tuple(value) if key_is_shape else np.shape(value)
            args, kwargs = list(args), dict(kwargs)
            for name in arrays:
                a = get(args, kwargs, name)
                if a is None:
                    continue
                a = np.asarray(a)
                if a.ndim != ndim:
                    raise ValueError(f"{op.__name__}: {key} is unbatched (shape {given}), so "
                                     f"{name} must be {ndim}-D too, got shape {a.shape}")
                put(args, kwargs, name, a[None])
            for name in shapes:
                s = get(args, kwargs, name)
                if s is None:
                    continue
                s = tuple(s)
                if len(s) != ndim:
                    raise ValueError(f"{op.__name__}: {key} is unbatched (shape {given}), so "
                                     f"{name} must have {ndim} entries too, got {s}")
                put(args, kwargs, name, (1,) + s)
            try:
                out = op(*args, **kwargs)
            except ValueError as exc:
                raise ValueError(f"{exc} (for the unbatched {key} of shape {given}, run as a "
                                 f"batch of one)") from None
            if shape_result:
                return out[1:]
            if not isinstance(out, tuple):
                return out[0]
            return tuple(o[0] if o is not None and (strip is None or i in strip) else o
                         for i, o in enumerate(out))

        return run

    return decorate


def check_shape(shape, ndim: int, name: str, op: str) -> tuple[int, ...]:
    """Normalise a user-given shape (e.g. `input_shape`) to a tuple of non-negative ints."""
    try:
        out = tuple(int(s) for s in shape)
        ok = all(isinstance(s, (numbers.Integral, np.integer)) for s in shape)
    except TypeError:
        ok = False
    if not ok or len(out) != ndim or any(s < 0 or s > _MAX_INT for s in out):
        raise ValueError(f"{op}: {name} must be a sequence of {ndim} non-negative ints, got {shape!r}")
    check_elements(out, op, name)
    return out


def check_elements(shape, op: str, what: str) -> None:
    """Refuse outputs whose element count would overflow int64 arithmetic."""
    total = 1
    for s in shape:
        total *= int(s)
    if total >= _MAX_ELEMENTS:
        raise ValueError(f"{op}: {what} of shape {tuple(shape)} is too large")


@dataclass(frozen=True)
class ConvGeometry:
    """Everything a conv2d kernel needs, validated.

    ``padding`` is the (top, left) padding; the bottom/right padding is implied by the output
    size (it differs from top/left only for padding='same' with an even dilated kernel, where
    PyTorch puts the extra row/column at the bottom/right).
    """

    N: int
    C: int
    H: int
    W: int
    F: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    out: tuple[int, int]

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.N, self.C, self.H, self.W)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.N, self.F, self.out[0], self.out[1])

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.F, self.C // self.groups, self.kernel[0], self.kernel[1])


def _conv_padding(padding, kernel, stride, dilation, op):
    """(top, left) padding and total padding per axis, for an int/pair or 'valid'/'same'."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"{op}: padding='same' is not supported for strided convolutions "
                                 f"(stride={stride}), as in PyTorch")
            total = tuple(d * (k - 1) for d, k in zip(dilation, kernel))
            return tuple(t // 2 for t in total), total
        raise ValueError(f"{op}: padding must be 'valid', 'same', an int or a pair of ints, "
                         f"got {padding!r}")
    p = nonnegative_pair(padding, "padding", op)
    return p, (2 * p[0], 2 * p[1])


def _memoized(compute):
    """`compute` with its results kept for hashable arguments (types included, so True is not
    taken for 1): a layer asks for the same geometry every step, and validating it costs more
    than a small layer's kernel. Errors are raised every time (nothing is cached for them)."""
    cached = functools.lru_cache(maxsize=256, typed=True)(compute)

    @functools.wraps(compute)
    def geometry(*args, **kwargs):
        try:
            return cached(*args, **kwargs)
        except TypeError:
            try:
                hash((args, tuple(kwargs.items())))
            except TypeError:  # unhashable arguments (lists): computed afresh
                return compute(*args, **kwargs)
            raise

    return geometry


def _group_count(groups, op: str) -> int:
    """`groups` as a positive Python int."""
    if not isinstance(groups, (numbers.Integral, np.integer)) or isinstance(groups, (bool, np.bool_)):
        raise TypeError(f"{op}: groups must be an int, got {groups!r}")
    if groups < 1:
        raise ValueError(f"{op}: groups must be positive, got {groups}")
    return int(groups)


def float_bias(bias, channels: int, weight_shape, op: str):
    """A convolution's bias: None, or a float array of shape (channels,)."""
    if bias is not None:
        bias = as_float_array(bias, "bias", op)
        if bias.shape != (channels,):
            raise ValueError(f"{op}: bias must have shape ({channels},) to match weight "
                             f"{tuple(weight_shape)}, got {bias.shape}")
    return bias


def _check_planes(x_shape, op: str) -> None:
    """Refuse images with an empty plane (H or W 0), as PyTorch's convolutions do (they take
    empty planes in an empty batch only): padding would otherwise make an output of the bias
    alone from no input at all."""
    N, _, H, W = (int(s) for s in x_shape)
    if N and (H == 0 or W == 0):
        raise ValueError(f"{op}: x of shape {tuple(x_shape)} has empty planes (H and W must be "
                         f"at least 1)")


@_memoized
def conv2d_geometry(x_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1,
                    op: str = "conv2d") -> ConvGeometry:
    """Validate conv2d arguments (PyTorch semantics) and compute the output size."""
    if len(x_shape) != 4:
        raise not_batched(op, "x", x_shape)
    if len(weight_shape) != 4:
        raise ValueError(f"{op}: weight must be 4-D (C_out, C_in/groups, kH, kW), "
                         f"got shape {tuple(weight_shape)}")
    N, C, H, W = (int(s) for s in x_shape)
    F, Cg, kh, kw = (int(s) for s in weight_shape)
    groups = _group_count(groups, op)
    _check_planes(x_shape, op)
    if F == 0 or Cg == 0 or kh == 0 or kw == 0:
        raise ValueError(f"{op}: weight has an empty dimension: shape {tuple(weight_shape)}")
    if Cg * groups != C:
        raise ValueError(f"{op}: weight of shape {tuple(weight_shape)} with groups={groups} expects "
                         f"{Cg * groups} input channels, but x of shape {tuple(x_shape)} has {C}")
    if F % groups != 0:
        raise ValueError(f"{op}: out_channels ({F}, weight shape {tuple(weight_shape)}) must be "
                         f"divisible by groups={groups}")
    stride = positive_pair(stride, "stride", op)
    dilation = positive_pair(dilation, "dilation", op)
    pad, total = _conv_padding(padding, (kh, kw), stride, dilation, op)
    out = tuple(conv_output_size(size, k, s, t, d)
                for size, k, s, t, d in zip((H, W), (kh, kw), stride, total, dilation))
    if out[0] < 1 or out[1] < 1:
        raise ValueError(
            f"{op}: kernel {(kh, kw)} with dilation {dilation} is larger than the padded input: "
            f"x of shape {tuple(x_shape)} with padding {padding!r} gives output size {out}")
    geom = ConvGeometry(N, C, H, W, F, (kh, kw), stride, pad, dilation, groups, out)
    check_elements(geom.output_shape, op, "output")
    check_elements((C * kh * kw, out[0] * out[1]), op, "column matrix")
    return geom


@dataclass(frozen=True)
class ConvTransposeGeometry:
    """conv_transpose2d's arguments, validated. The op is the input gradient of `conv`, the
    convolution of the whole output (N, C_out, OH, OW) with the same weight, stride, padding,
    dilation and groups; its output is x's size (H, W), or `extra` = output_padding // stride
    rows/columns more where output_padding >= stride (allowed when it is below the dilation),
    which x then fills with zeros."""

    conv: ConvGeometry
    output_shape: tuple[int, int, int, int]
    output_padding: tuple[int, int]
    extra: tuple[int, int]


@_memoized
def conv_transpose2d_geometry(x_shape, weight_shape, stride=1, padding=0, output_padding=0,
                              groups=1, dilation=1,
                              op: str = "conv_transpose2d") -> ConvTransposeGeometry:
    """Validate conv_transpose2d's arguments (PyTorch semantics) and compute its output size

        OH = (H - 1) s - 2 p + d (kH - 1) + output_padding + 1

    weight: (C_in, C_out / groups, kH, kW); output_padding must be below stride or dilation."""
    if len(x_shape) != 4:
        raise not_batched(op, "x", x_shape, "(N, C_in, H, W)")
    if len(weight_shape) != 4:
        raise ValueError(f"{op}: weight must be 4-D (C_in, C_out/groups, kH, kW), got shape "
                         f"{tuple(weight_shape)}")
    N, C, H, W = (int(s) for s in x_shape)
    Cin, Cg, kh, kw = (int(s) for s in weight_shape)
    groups = _group_count(groups, op)
    _check_planes(x_shape, op)
    if Cin == 0 or Cg == 0 or kh == 0 or kw == 0:
        raise ValueError(f"{op}: weight has an empty dimension: shape {tuple(weight_shape)}")
    if Cin != C:
        raise ValueError(f"{op}: weight of shape {tuple(weight_shape)} expects x to have {Cin} "
                         f"channels (weight.shape[0]), but x of shape {tuple(x_shape)} has {C}")
    if Cin % groups:
        raise ValueError(f"{op}: in_channels ({Cin}, weight shape {tuple(weight_shape)}) must be "
                         f"divisible by groups={groups}")
    stride = positive_pair(stride, "stride", op)
    dilation = positive_pair(dilation, "dilation", op)
    padding = nonnegative_pair(padding, "padding", op)
    output_padding = nonnegative_pair(output_padding, "output_padding", op)
    if any(o >= s and o >= d for o, s, d in zip(output_padding, stride, dilation)):
        raise ValueError(f"{op}: output_padding {output_padding} must be smaller than either "
                         f"stride {stride} or dilation {dilation}")
    out = tuple((size - 1) * s - 2 * p + d * (k - 1) + o + 1 for size, s, p, d, k, o in
                zip((H, W), stride, padding, dilation, (kh, kw), output_padding))
    if out[0] < 1 or out[1] < 1:
        raise ValueError(f"{op}: x of shape {tuple(x_shape)} with weight {tuple(weight_shape)}, "
                         f"stride {stride}, padding {padding}, dilation {dilation} and "
                         f"output_padding {output_padding} gives an output size of {out}: the "
                         f"padding is too large")
    output_shape = (N, Cg * groups, out[0], out[1])
    check_elements(output_shape, op, "output")
    conv = conv2d_geometry(output_shape, (Cin, Cg, kh, kw), stride, padding, dilation, groups, op)
    extra = (conv.out[0] - H, conv.out[1] - W)  # (H - 1) s + output_padding over s, plus 1
    return ConvTransposeGeometry(conv, output_shape, output_padding, extra)


def conv_transpose_inputs(x, weight, op: str):
    """x and weight of a transposed convolution as float arrays, both 4-D."""
    x = as_float_array(x, "x", op)
    weight = as_float_array(weight, "weight", op)
    check_ndim(x, 4, "x", op, "(N, C, H, W)")
    check_ndim(weight, 4, "weight", op, "(C_in, C_out/groups, kH, kW)")
    return x, weight


def conv_transpose_backward_inputs(grad_y, x, weight, stride, padding, output_padding, groups,
                                   dilation, output_mask, op: str):
    """conv_transpose2d_backward's arguments validated: (mask, grad_y, x, weight, geometry,
    working dtype); grad_y must have the forward's output shape."""
    mask = normalize_output_mask(output_mask, op)
    x, weight = conv_transpose_inputs(x, weight, op)
    grad_y = as_float_array(grad_y, "grad_y", op)
    geom = conv_transpose2d_geometry(x.shape, weight.shape, stride, padding, output_padding,
                                     groups, dilation, op)
    if grad_y.shape != geom.output_shape:
        raise ValueError(f"{op}: grad_y must have the conv_transpose2d output shape "
                         f"{geom.output_shape} for x {x.shape} and weight {weight.shape}, got "
                         f"{grad_y.shape}")
    return mask, grad_y, x, weight, geom, common_dtype(grad_y, x, weight)


@dataclass(frozen=True)
class PoolGeometry:
    """Validated pooling arguments and output size."""

    N: int
    C: int
    H: int
    W: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    ceil_mode: bool
    out: tuple[int, int]

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.N, self.C, self.H, self.W)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.N, self.C, self.out[0], self.out[1])


@_memoized
def pool2d_geometry(x_shape, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                    op: str = "max_pool2d", name: str = "x", prefix: str = "") -> PoolGeometry:
    """Validate pooling arguments (PyTorch semantics) and compute the output size.

    name: what the pooled input is called in errors; prefix: of the stride, padding and
    dilation arguments' names (conv2d_max_pool2d's pool_stride, ...)."""
    if len(x_shape) != 4:
        raise not_batched(op, name, x_shape)
    N, C, H, W = (int(s) for s in x_shape)
    kernel = positive_pair(kernel_size, "kernel_size", op)
    stride_, padding_, dilation_ = (prefix + a for a in ("stride", "padding", "dilation"))
    # stride=None (or an empty list, as torch allows) means stride = kernel_size.
    if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0):
        stride = kernel
    else:
        stride = positive_pair(stride, stride_, op)
    padding = nonnegative_pair(padding, padding_, op)
    dilation = positive_pair(dilation, dilation_, op)
    ceil_mode = flag(ceil_mode, "ceil_mode", op)
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"{op}: {padding_} {padding} should be at most half of kernel_size "
                         f"{kernel}")
    out = tuple(pool_output_size(size, k, s, p, d, ceil_mode)
                for size, k, s, p, d in zip((H, W), kernel, stride, padding, dilation))
    if out[0] < 1 or out[1] < 1:
        raise ValueError(f"{op}: {name} of shape {tuple(x_shape)} is too small for kernel_size "
                         f"{kernel} with {padding_} {padding} and {dilation_} {dilation}: output "
                         f"size would be {out}")
    for axis, (size, k, s, p, d, o) in enumerate(zip((H, W), kernel, stride, padding, dilation, out)):
        empty = _first_empty_window(size, k, s, p, d, o)
        if empty is not None:
            raise ValueError(
                f"{op}: with kernel_size {kernel}, {stride_} {stride}, {padding_} {padding} and "
                f"{dilation_} {dilation}, window {empty} along {'HW'[axis]} of {name} of shape "
                f"{tuple(x_shape)} lies entirely in the padding (its maximum would be -inf, "
                f"with no input position to send a gradient to)")
    geom = PoolGeometry(N, C, H, W, kernel, stride, padding, dilation, ceil_mode, out)
    check_elements(geom.output_shape, op, "output")
    return geom


def _first_empty_window(size: int, k: int, s: int, p: int, d: int, out: int) -> int | None:
    """Index of the first window whose taps start + i*d (i < k) all miss [0, size), or None.

    O(1) time and memory (the windows can number 2**31). Given the padding limit
    (p <= k // 2) and the output-size rule, every window starts before the input's end, and a
    window starting at a >= 0 holds its first tap; one starting in the padding (a < 0) reaches
    the input first at a % d (its tap number ceil(-a / d) <= p < k), so it is empty iff
    a % d >= size. That needs size < d; and then at most one window starts in the padding
    (two would need p > s, k >= 2p, and out >= 1 gives d (k - 2) < k + s - 2, so d = 1).
    """
    if size == 0:
        return 0 if out > 0 else None
    if size >= d:
        return None
    for i in range(min(out, -(-p // s))):  # at most one window (see above)
        if (i * s - p) % d >= size:
            return i
    return None


def _adaptive_size(value, output_size, op: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_)):
        if not 0 <= int(value) <= _MAX_INT:
            raise ValueError(f"{op}: output_size must be >= 0 (and below 2**31), got "
                             f"{output_size!r}")
        return int(value)
    raise TypeError(f"{op}: output_size must be an int or a pair of ints or None, got "
                    f"{output_size!r}")


def adaptive_output_size(output_size, op: str) -> tuple[int | None, int | None]:
    """Adaptive pooling's output_size (PyTorch's): an int, or a pair whose entries are ints or
    None (None keeps that axis's input size); every int >= 0."""
    if isinstance(output_size, (tuple, list)) and len(output_size) == 2:
        return (_adaptive_size(output_size[0], output_size, op),
                _adaptive_size(output_size[1], output_size, op))
    if output_size is None or isinstance(output_size, (tuple, list)):
        raise TypeError(f"{op}: output_size must be an int or a pair of ints or None, got "
                        f"{output_size!r}")
    size = _adaptive_size(output_size, output_size, op)
    return size, size


def adaptive_pool2d_output_shape(x_shape, output_size, op: str = "adaptive_avg_pool2d",
                                 name: str = "x") -> tuple[int, int, int, int]:
    """(N, C, OH, OW) of adaptive pooling of an (N, C, H, W) input (`name` in errors); H and W
    must be at least 1, as in PyTorch."""
    if len(x_shape) != 4:
        raise not_batched(op, name, x_shape)
    N, C, H, W = (int(s) for s in x_shape)
    if H < 1 or W < 1:
        raise ValueError(f"{op}: {name} of shape {tuple(x_shape)} has empty planes (H and W "
                         f"must be at least 1)")
    oh, ow = adaptive_output_size(output_size, op)
    shape = (N, C, H if oh is None else oh, W if ow is None else ow)
    check_elements(shape, op, "output")
    return shape


def adaptive_backward_inputs(grad_y, input_shape, op: str):
    """(grad_y, input_shape) of adaptive pooling's backward, validated: grad_y (N, C, OH, OW)
    and input_shape (N, C, H, W) agree on (N, C), H and W >= 1."""
    grad_y = as_float_array(grad_y, "grad_y", op)
    check_ndim(grad_y, 4, "grad_y", op, "(N, C, H, W)")
    input_shape = check_shape(input_shape, 4, "input_shape", op)
    adaptive_pool2d_output_shape(input_shape, grad_y.shape[2:], op, "input_shape")
    if grad_y.shape[:2] != input_shape[:2]:
        raise ValueError(f"{op}: grad_y {grad_y.shape} and input_shape {input_shape} must agree "
                         f"on (N, C)")
    return grad_y, input_shape


def adaptive_windows(size: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) of adaptive pooling's `out` windows along an axis of `size`:
    start = floor(i size / out), end = ceil((i + 1) size / out) (PyTorch's)."""
    i = np.arange(out, dtype=np.int64)
    return (i * size) // out, ((i + 1) * size + out - 1) // out


@dataclass(frozen=True)
class UpsampleGeometry:
    """Nearest upsampling: the output shape and, per output row and column, the input row and
    column it copies (read-only int64 arrays, non-decreasing)."""

    output_shape: tuple[int, int, int, int]
    rows: np.ndarray
    cols: np.ndarray


def scale_factors(scale_factor, op: str) -> tuple[float, float]:
    """scale_factor as two finite positive floats (one number applies to both axes)."""
    values = tuple(scale_factor) if isinstance(scale_factor, (tuple, list)) else (scale_factor,) * 2
    if len(values) != 2 or not all(isinstance(v, (numbers.Real, np.floating, np.integer))
                                   and not isinstance(v, (bool, np.bool_)) for v in values):
        raise TypeError(f"{op}: scale_factor must be a number or a pair of numbers, got "
                        f"{scale_factor!r}")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"{op}: scale_factor must be finite and positive, got {scale_factor!r}")
    return float(values[0]), float(values[1])


def nearest_indices(size: int, out: int, scale_factor: float | None) -> np.ndarray:
    """The input index each of `out` outputs copies, as PyTorch's nearest_idx: the identity
    where out == size, dst // 2 where out == 2 size, else min(floor(dst * s), size - 1) in
    float32 arithmetic, s = float32(1 / scale_factor) where a scale factor is used, else
    float32(size) / float32(out)."""
    dst = np.arange(out, dtype=np.int64)
    if out == size:
        return dst
    if out == 2 * size:
        return dst >> 1
    if scale_factor is not None:
        scale = np.float32(1.0 / scale_factor)
    else:
        scale = np.float32(size) / np.float32(out)
    src = np.floor(dst.astype(np.float32) * scale).astype(np.int64)
    return np.minimum(src, size - 1)


@_memoized
def upsample_nearest2d_geometry(x_shape, size=None, scale_factor=None,
                                recompute_scale_factor=None, op: str = "upsample_nearest2d",
                                name: str = "x") -> UpsampleGeometry:
    """Validate F.interpolate(mode='nearest')-style arguments for an (N, C, H, W) input (called
    `name` in errors): exactly one of size (an int or pair, each >= 1) and scale_factor (a
    number or pair, finite and > 0; output size floor(H * scale_factor), at least 1)."""
    if len(x_shape) == 3:  # (torch's interpolate takes it as 1-D data: no unbatched image)
        raise ValueError(f"{op}: {name} of shape {tuple(x_shape)} is 3-D, which PyTorch's "
                         f"Upsample/interpolate takes as 1-D data (N, C, L), not as one image; "
                         f"fastconv resamples 2-D (N, C, H, W) only: for one (C, H, W) image "
                         f"use x[None]")
    if len(x_shape) != 4:
        raise ValueError(f"{op}: {name} must be 4-D (N, C, H, W), got shape {tuple(x_shape)}")
    N, C, H, W = (int(v) for v in x_shape)
    if (size is None) == (scale_factor is None):
        raise ValueError(f"{op}: give exactly one of size and scale_factor (got size={size!r}, "
                         f"scale_factor={scale_factor!r})")
    if H < 1 or W < 1:
        raise ValueError(f"{op}: {name} of shape {tuple(x_shape)} has empty planes (H and W must "
                         f"be at least 1)")
    if size is not None:
        out = positive_pair(size, "size", op)
        scales = (None, None)
    else:
        scales = scale_factors(scale_factor, op)
        out = tuple(math.floor(n * f) for n, f in zip((H, W), scales))
        if out[0] < 1 or out[1] < 1:
            raise ValueError(f"{op}: scale_factor {scale_factor!r} gives {name} of shape "
                             f"{tuple(x_shape)} an output size of {out}: it must be at least 1")
        if recompute_scale_factor is not None and flag(recompute_scale_factor,
                                                       "recompute_scale_factor", op):
            scales = (None, None)  # the scale recomputed from the sizes
    output_shape = (N, C) + out
    check_elements(output_shape, op, "output")
    rows, cols = (nearest_indices(n, o, f) for n, o, f in zip((H, W), out, scales))
    rows.flags.writeable = cols.flags.writeable = False
    return UpsampleGeometry(output_shape, rows, cols)


def upsample_backward_inputs(op: str, grad_y, input_shape, size, scale_factor,
                             recompute_scale_factor):
    """(grad_y, input_shape, geometry) of upsample_nearest2d_backward, validated: grad_y must
    have the forward's output shape for input_shape."""
    grad_y = as_float_array(grad_y, "grad_y", op)
    if grad_y.ndim != 4:
        raise ValueError(f"{op}: grad_y must be 4-D (N, C, OH, OW), got shape {grad_y.shape}")
    input_shape = check_shape(input_shape, 4, "input_shape", op)
    geom = upsample_nearest2d_geometry(input_shape, size, scale_factor, recompute_scale_factor,
                                       op, "input_shape")
    if grad_y.shape != geom.output_shape:
        raise ValueError(f"{op}: grad_y must have the upsampled shape {geom.output_shape} for "
                         f"input_shape {input_shape}, got {grad_y.shape}")
    return grad_y, input_shape, geom


@dataclass(frozen=True)
class UnfoldGeometry:
    """Validated im2col / col2im arguments: image size (H, W) and the grid of blocks (OH, OW)."""

    C: int
    H: int
    W: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    out: tuple[int, int]

    @property
    def rows(self) -> int:
        return self.C * self.kernel[0] * self.kernel[1]

    @property
    def blocks(self) -> int:
        return self.out[0] * self.out[1]


def unfold_geometry(C, H, W, kernel_size, dilation, padding, stride, op: str) -> UnfoldGeometry:
    """Validate F.unfold / F.fold style arguments for an image of C x H x W."""
    kernel = positive_pair(kernel_size, "kernel_size", op)
    dilation = positive_pair(dilation, "dilation", op)
    padding = nonnegative_pair(padding, "padding", op)
    stride = positive_pair(stride, "stride", op)
    out = tuple(conv_output_size(size, k, s, 2 * p, d)
                for size, k, s, p, d in zip((H, W), kernel, stride, padding, dilation))
    if out[0] < 1 or out[1] < 1:
        raise ValueError(f"{op}: kernel_size {kernel} with dilation {dilation} does not fit in the "
                         f"padded image of size {(H, W)} with padding {padding}: "
                         f"the block grid would be {out}")
    geom = UnfoldGeometry(C, H, W, kernel, stride, padding, dilation, out)
    check_elements((geom.rows, geom.blocks), op, "column matrix")
    return geom


_NUMBER_WORDS = {2: "two", 3: "three"}


def normalize_output_mask(output_mask, op: str,
                          names=("grad_x", "grad_weight", "grad_bias")) -> tuple[bool, ...]:
    """`output_mask` of the backward functions: one boolean per output named in `names`
    (by default three: grad_x, grad_weight, grad_bias)."""
    try:
        mask = () if isinstance(output_mask, (str, bytes)) else tuple(output_mask)
        if len(mask) == len(names):
            return tuple(flag(m, "output_mask", op) for m in mask)
    except TypeError:  # not iterable, or not booleans
        pass
    raise ValueError(f"{op}: output_mask must be {_NUMBER_WORDS[len(names)]} booleans "
                     f"({', '.join(names)}), got {output_mask!r}")


def conv_through_pool_inputs(grad_pooled, indices, x, weight, stride, padding, dilation, groups,
                             relu_output, output_mask, op: str):
    """Validate conv2d_backward_through_max_pool's arguments (x, weight already float 4-D
    arrays). Returns (geom, grad_pooled, indices as int64, relu_output, (weight, bias) mask,
    working dtype)."""
    mask = normalize_output_mask(output_mask, op, ("grad_weight", "grad_bias"))
    geom = conv2d_geometry(x.shape, weight.shape, stride, padding, dilation, groups, op)
    grad_pooled, indices, _, relu_output = max_pool_backward_inputs(
        grad_pooled, indices, geom.output_shape, op, relu_output, "grad_pooled", CONV_OUTPUT)
    return geom, grad_pooled, indices, relu_output, mask, common_dtype(grad_pooled, x, weight)


@unbatched("input_shape", shapes=("input_shape",), shape_result=True)
def conv2d_output_shape(input_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1):
    """Output shape (N, C_out, OH, OW) of conv2d, with OH = (H + 2p - d(kH-1) - 1) // s + 1
    ((C_out, OH, OW) for an unbatched (C, H, W) input_shape).

    Validates exactly like conv2d (raises ValueError/TypeError for impossible arguments).

    >>> conv2d_output_shape((8, 3, 32, 32), (16, 3, 5, 5), stride=2, padding=2)
    (8, 16, 16, 16)
    """
    op = "conv2d_output_shape"
    input_shape = check_shape(input_shape, 4, "input_shape", op)
    weight_shape = check_shape(weight_shape, 4, "weight_shape", op)
    return conv2d_geometry(input_shape, weight_shape, stride, padding, dilation, groups,
                           op=op).output_shape


@unbatched("input_shape", shapes=("input_shape",), shape_result=True)
def pool2d_output_shape(input_shape, kernel_size, stride=None, padding=0, dilation=1,
                        ceil_mode=False):
    """Output shape (N, C, OH, OW) of max_pool2d / avg_pool2d (avg pooling has dilation 1);
    (C, OH, OW) for an unbatched (C, H, W) input_shape.

    OH = floor_or_ceil((H + 2p - d(k-1) - 1) / s) + 1, minus one in ceil mode if the last
    window would start in the bottom padding (PyTorch's rule).

    >>> pool2d_output_shape((1, 3, 7, 7), 2, ceil_mode=True)
    (1, 3, 4, 4)
    """
    op = "pool2d_output_shape"
    input_shape = check_shape(input_shape, 4, "input_shape", op)
    return pool2d_geometry(input_shape, kernel_size, stride, padding, dilation, ceil_mode,
                           op=op, name="input_shape").output_shape


def fold_geometry(cols_shape, output_size, kernel_size, dilation, padding, stride,
                  op: str = "col2im") -> UnfoldGeometry:
    """Validate col2im / F.fold arguments for columns of shape (N, C*kH*kW, L)."""
    if len(cols_shape) != 3:
        raise ValueError(f"{op}: cols must be 3-D (N, C*kH*kW, L), or 2-D (C*kH*kW, L) for "
                         f"one unbatched image, got shape {tuple(cols_shape)}")
    H, W = positive_pair(output_size, "output_size", op)
    kh, kw = positive_pair(kernel_size, "kernel_size", op)
    _, rows, blocks = (int(s) for s in cols_shape)
    if rows % (kh * kw) != 0:
        raise ValueError(f"{op}: cols.shape[1] ({rows}) must be divisible by kH*kW ({kh}*{kw}); "
                         f"cols has shape {tuple(cols_shape)}")
    geom = unfold_geometry(rows // (kh * kw), H, W, (kh, kw), dilation, padding, stride, op)
    if blocks != geom.blocks:
        raise ValueError(f"{op}: cols.shape[2] ({blocks}) must equal the number of blocks "
                         f"{geom.out[0]}*{geom.out[1]} = {geom.blocks} for output_size {(H, W)}, "
                         f"kernel_size {(kh, kw)}, dilation {geom.dilation}, padding "
                         f"{geom.padding}, stride {geom.stride}")
    return geom


def max_pool_backward_inputs(grad_y, indices, input_shape, op: str = "max_pool2d_backward",
                             relu_output=None, grad_name: str = "grad_y",
                             shape_name: str = "input_shape"):
    """Validate max_pool2d_backward's arguments; returns (grad_y, indices as int64, input_shape,
    relu_output), relu_output None or C-contiguous in grad_y's dtype and of its shape.
    grad_name, shape_name: what errors call grad_y and input_shape.

    Only shapes are checked here; the range of every index ([0, H*W)) is checked where the
    indices are used, so a hostile index raises instead of writing out of bounds.
    """
    grad_y = as_float_array(grad_y, grad_name, op)
    check_ndim(grad_y, 4, grad_name, op, "(N, C, H, W)")
    input_shape = check_shape(input_shape, 4, shape_name, op)
    indices = np.asarray(indices)
    if indices.dtype.kind not in "iu":
        raise TypeError(f"{op}: indices must be an integer array, got dtype {indices.dtype}")
    if indices.shape != grad_y.shape:
        raise ValueError(f"{op}: indices shape {indices.shape} must equal {grad_name} shape "
                         f"{grad_y.shape}")
    if grad_y.shape[:2] != input_shape[:2]:
        raise ValueError(f"{op}: {grad_name} {grad_y.shape} and {shape_name} {input_shape} must "
                         f"agree on (N, C)")
    if relu_output is not None:
        relu_output = as_float_array(relu_output, "relu_output", op)
        if relu_output.shape != grad_y.shape:
            raise ValueError(f"{op}: relu_output shape {relu_output.shape} must equal "
                             f"{grad_name} shape {grad_y.shape}")
        relu_output = np.ascontiguousarray(relu_output, dtype=grad_y.dtype)
    return grad_y, indices.astype(np.int64, copy=False), input_shape, relu_output


def indices_out_of_range(input_shape, op: str = "max_pool2d_backward",
                         shape_name: str = "input_shape") -> ValueError:
    """The error for a max-pooling index outside its H*W plane."""
    plane = input_shape[2] * input_shape[3]
    return ValueError(f"{op}: indices must lie in [0, H*W) = [0, {plane}) for {shape_name} "
                      f"{tuple(input_shape)}")


def check_pool_indices(indices: np.ndarray, input_shape, op: str = "max_pool2d_backward",
                       shape_name: str = "input_shape") -> None:
    """Raise indices_out_of_range unless every index lies in its H*W plane (an empty plane
    admits none)."""
    plane = input_shape[2] * input_shape[3]
    if indices.size and (indices.min() < 0 or indices.max() >= plane):
        raise indices_out_of_range(input_shape, op, shape_name)


def unpool_output_size(x_shape, kernel_size, stride=None, padding=0, output_size=None,
                       op: str = "max_unpool2d", name: str = "x") -> tuple[int, int]:
    """(OH, OW) of max_unpool2d for an input of `x_shape` (N, C, H, W), PyTorch's
    ``_unpool_output_size``: by default (H - 1) s - 2p + k per axis (the size MaxPool2d took
    in, up to the rows its floor dropped); an `output_size` (OH, OW), or (N, C, OH, OW) whose
    first two are ignored, must lie strictly between default - s and default + s on each axis.
    """
    kernel = positive_pair(kernel_size, "kernel_size", op)
    if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0):
        stride = kernel
    else:
        stride = positive_pair(stride, "stride", op)
    padding = nonnegative_pair(padding, "padding", op)
    default = tuple((n - 1) * s + k - 2 * p
                    for n, k, s, p in zip(x_shape[2:], kernel, stride, padding))
    if output_size is None:
        size = default
    else:
        if not isinstance(output_size, (tuple, list, np.ndarray)) or not all(
                isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, (bool, np.bool_))
                for v in output_size):
            raise TypeError(f"{op}: output_size must be a sequence of ints (OH, OW) or "
                            f"(N, C, OH, OW), got {output_size!r}")
        size = tuple(int(v) for v in output_size)
        if len(size) == 4:
            size = size[2:]
        if len(size) != 2:
            raise ValueError(f"{op}: output_size should be a sequence containing 2 or 4 "
                             f"elements, but it has a length of {len(output_size)}")
        for d, (o, n, s) in enumerate(zip(size, default, stride)):
            if not n - s < o < n + s:
                raise ValueError(f"{op}: invalid output_size {tuple(output_size)} (dim {d} must be "
                                 f"between {n - s} and {n + s}, exclusive, for {name} of shape "
                                 f"{tuple(x_shape)}, kernel_size {kernel}, stride {stride} and "
                                 f"padding {padding})")
    if min(size) < 0 or max(size) > _MAX_INT:
        raise ValueError(f"{op}: the output size {size} for {name} of shape {tuple(x_shape)}, "
                         f"kernel_size {kernel}, stride {stride} and padding {padding} must be "
                         f"non-negative (and below 2**31)")
    check_elements(tuple(x_shape[:2]) + size, op, "output")
    return size


def max_unpool_inputs(x, indices, kernel_size, stride, padding, output_size,
                      op: str = "max_unpool2d"):
    """Validate max_unpool2d's arguments: x (N, C, H, W) real, `indices` an integer array of
    x's shape, each in [0, OH*OW). Returns (x as float32/float64, the flat position in the
    whole output of each element of x (int64, x.size of them, in x's order), the output shape
    (N, C, OH, OW))."""
    x = as_float_array(x, "x", op)
    check_ndim(x, 4, "x", op, "(N, C, H, W)")
    indices = np.asarray(indices)
    if indices.dtype.kind not in "iu":
        raise TypeError(f"{op}: indices must be an integer array, got dtype {indices.dtype}")
    if indices.shape != x.shape:
        raise ValueError(f"{op}: indices shape {indices.shape} must equal x shape {x.shape}")
    shape = x.shape[:2] + unpool_output_size(x.shape, kernel_size, stride, padding,
                                             output_size, op)
    check_pool_indices(indices, shape, op, "the output")
    N, C, H, W = x.shape
    plane = shape[2] * shape[3]
    where = indices.reshape(N * C, H * W).astype(np.int64) \
        + (np.arange(N * C, dtype=np.int64) * plane)[:, None]
    return x, where.reshape(-1), shape


def max_unpool_backward_inputs(grad_y, indices, op: str = "max_unpool2d_backward"):
    """Validate max_unpool2d_backward's arguments: grad_y (N, C, OH, OW) real, `indices` an
    integer array (N, C, H, W) on the same (N, C), every index in [0, OH*OW). Returns (grad_y,
    indices as int64)."""
    grad_y = as_float_array(grad_y, "grad_y", op)
    check_ndim(grad_y, 4, "grad_y", op, "(N, C, H, W)")
    indices = np.asarray(indices)
    if indices.dtype.kind not in "iu":
        raise TypeError(f"{op}: indices must be an integer array, got dtype {indices.dtype}")
    if indices.ndim != 4 or indices.shape[:2] != grad_y.shape[:2]:
        raise ValueError(f"{op}: indices {indices.shape} must be 4-D and agree with grad_y "
                         f"{grad_y.shape} on (N, C)")
    indices = indices.astype(np.int64, copy=False)
    check_pool_indices(indices, grad_y.shape, op, "grad_y")
    return grad_y, indices


#: What conv2d_backward_through_max_pool's errors call the pooled conv output.
CONV_OUTPUT = "the conv output"


def linear_shapes(x_shape, weight_shape, bias_shape=None, op: str = "linear",
                  grad_y_shape=None) -> tuple[int, int]:
    """Validate linear(x, weight, bias): x (..., in_features), weight (out, in), bias (out,),
    and for the backward pass grad_y (..., out_features).

    Returns (in_features, out_features).
    """
    if len(weight_shape) != 2:
        raise ValueError(f"{op}: weight must be 2-D (out_features, in_features), got shape "
                         f"{tuple(weight_shape)}")
    out_features, in_features = (int(s) for s in weight_shape)
    if len(x_shape) < 1 or x_shape[-1] != in_features:
        raise ValueError(f"{op}: x must have shape (..., {in_features}) to match weight "
                         f"{tuple(weight_shape)}, got {tuple(x_shape)}")
    if bias_shape is not None and tuple(bias_shape) != (out_features,):
        raise ValueError(f"{op}: bias must have shape ({out_features},) to match weight "
                         f"{tuple(weight_shape)}, got {tuple(bias_shape)}")
    expected = tuple(x_shape[:-1]) + (out_features,)
    if grad_y_shape is not None and tuple(grad_y_shape) != expected:
        raise ValueError(f"{op}: grad_y must have shape {expected} for x {tuple(x_shape)} and "
                         f"weight {tuple(weight_shape)}, got {tuple(grad_y_shape)}")
    return in_features, out_features


def batch_norm_inputs(x, weight, bias, op: str, grad_y=None):
    """Validate batch-norm arguments: x (N, C, ...) with at least one value per channel,
    weight/bias None or (C,). All in their common dtype (float64 if x, weight, bias or, for
    the backward, grad_y is float64). Returns (x viewed as (N, C, S), weight, bias)."""
    x = as_float_array(x, "x", op)
    if x.ndim < 2:
        raise ValueError(f"{op}: x must be (N, C, ...), got shape {x.shape}")
    N, C, S = x.shape[0], x.shape[1], math.prod(x.shape[2:])
    if N * S == 0 and C > 0:
        raise ValueError(f"{op}: x of shape {x.shape} has no values per channel to take "
                         f"statistics of")
    params = []
    for name, a in (("weight", weight), ("bias", bias)):
        if a is not None:
            a = as_float_array(a, name, op)
            if a.shape != (C,):
                raise ValueError(f"{op}: {name} must have shape ({C},), got {a.shape}")
        params.append(a)
    gy = None if grad_y is None else as_float_array(grad_y, "grad_y", op)
    dtype = common_dtype(x, gy, *params)
    params = [None if a is None else np.ascontiguousarray(a, dtype=dtype) for a in params]
    return x.astype(dtype, copy=False).reshape(N, C, S), params[0], params[1]


def batch_norm_eps(eps, op: str) -> float:
    """eps as a float, refusing what is not a finite number >= 0."""
    if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, (numbers.Real, np.floating)) \
            or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"{op}: eps must be a finite number >= 0, got {eps!r}")
    return float(eps)


def real_number(value, name: str, op: str) -> float:
    """A real-valued hyper-parameter (alpha, beta, ...) as a float; TypeError for a bool or a
    non-number."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.floating)):
        raise TypeError(f"{op}: {name} must be a real number, got {value!r}")
    return float(value)


def local_response_norm_args(size, alpha, beta, k, op: str) -> tuple[int, float, float, float]:
    """(size, alpha, beta, k) of local_response_norm: size a positive int (the channels in a
    window), the others real numbers."""
    if (not isinstance(size, (numbers.Integral, np.integer)) or isinstance(size, (bool, np.bool_))
            or not 1 <= size <= _MAX_INT):
        raise ValueError(f"{op}: size must be a positive int, got {size!r}")
    return (int(size), real_number(alpha, "alpha", op), real_number(beta, "beta", op),
            real_number(k, "k", op))


def local_response_norm_input(x, op: str, name: str = "x") -> np.ndarray:
    """x of local_response_norm: real, at least 3-D (N, C, *), as float32/float64."""
    x = as_float_array(x, name, op)
    if x.ndim < 3:
        raise ValueError(f"{op}: {name} must be 3-D or more (N, C, *), got shape {x.shape}")
    return x


def local_response_norm_grad_inputs(grad_y, x, size, alpha, beta, k, op: str):
    """local_response_norm_backward's arguments validated: (grad_y, x in their common dtype,
    that dtype, (size, alpha, beta, k))."""
    hyper = local_response_norm_args(size, alpha, beta, k, op)
    grad_y, x, dtype = relu_backward_inputs(grad_y, local_response_norm_input(x, op), op, "x")
    return grad_y, x.astype(dtype, copy=False), dtype, hyper


def batch_norm_grad_inputs(grad_y, x_shape, mean, invstd, dtype, op: str, relu_output=None):
    """Validate batch_norm_train_backward's grad_y and relu_output (x's shape, relu_output
    None allowed) and per-channel statistics. Returns (grad_y, mean, invstd, relu_output), the
    last three in `dtype`, relu_output C-contiguous."""
    grad_y = as_float_array(grad_y, "grad_y", op)
    if grad_y.shape != tuple(x_shape):
        raise ValueError(f"{op}: grad_y shape {grad_y.shape} must equal x shape {tuple(x_shape)}")
    if relu_output is not None:
        relu_output = as_float_array(relu_output, "relu_output", op)
        if relu_output.shape != tuple(x_shape):
            raise ValueError(f"{op}: relu_output shape {relu_output.shape} must equal x shape "
                             f"{tuple(x_shape)}")
        relu_output = np.ascontiguousarray(relu_output, dtype=dtype)
    C = x_shape[1]
    stats = [np.ascontiguousarray(as_float_array(s, name, op), dtype=dtype)
             for s, name in ((mean, "mean"), (invstd, "invstd"))]
    if any(s.shape != (C,) for s in stats):
        raise ValueError(f"{op}: mean and invstd must have shape ({C},)")
    return grad_y, stats[0], stats[1], relu_output


def relu_backward_inputs(grad_y, y, op: str = "relu_backward", name: str = "y"):
    """(grad_y, a, dtype) of an elementwise op's gradient from grad_y and the op's input or
    output `a` (called `name` in errors): float arrays of one shape, and their common dtype."""
    y = as_float_array(y, name, op)
    grad_y = as_float_array(grad_y, "grad_y", op)
    if grad_y.shape != y.shape:
        raise ValueError(f"{op}: grad_y shape {grad_y.shape} must equal {name} shape {y.shape}")
    return grad_y, y, common_dtype(grad_y, y)


def gelu_tanh(approximate, op: str) -> bool:
    """GELU's `approximate` argument, 'none' or 'tanh' (torch's): whether it is 'tanh'."""
    if not isinstance(approximate, str):
        raise TypeError(f"{op}: approximate must be the string 'none' or 'tanh', got "
                        f"{approximate!r}")
    if approximate not in ("none", "tanh"):
        raise ValueError(f"{op}: approximate must be 'none' or 'tanh', got {approximate!r}")
    return approximate == "tanh"


PAD_MODES = ("constant", "reflect", "replicate", "circular")


def pad_geometry(shape: tuple, pad, mode: str, op: str) -> tuple[tuple[int, int], ...]:
    """torch.nn.functional.pad's arguments checked for an input of `shape`: `pad` is
    (left, right) for the last axis or (left, right, top, bottom) for the last two, each >= 0;
    returns ((before, after), ...) for every axis of `shape` (0s for the leading ones).

    reflect needs each pad < its axis' size (the edge is not repeated), circular <= the size
    (one wrap at most), replicate a non-empty axis; those three pad 3-D or 4-D inputs (2-D or
    3-D for a pad of the last axis only), as PyTorch."""
    if mode not in PAD_MODES:
        raise ValueError(f"{op}: mode must be one of {', '.join(map(repr, PAD_MODES))}, got {mode!r}")
    try:
        pads = tuple(pad)
        ok = len(pads) in (2, 4) and all(
            isinstance(p, (numbers.Integral, np.integer)) and not isinstance(p, (bool, np.bool_))
            for p in pads)
    except TypeError:
        ok = False
    if not ok:
        raise TypeError(f"{op}: pad must be 2 or 4 ints (left, right[, top, bottom]), got {pad!r}")
    pads = tuple(int(p) for p in pads)
    if any(p < 0 for p in pads):
        raise ValueError(f"{op}: pad must be non-negative (cropping is not supported), got {pads}")
    if any(p > _MAX_INT for p in pads):
        raise ValueError(f"{op}: pad must be below 2**31, got {pads}")
    axes = len(pads) // 2
    if mode == "constant":
        if len(shape) < axes:
            raise ValueError(f"{op}: pad {pads} pads {axes} axes, the input of shape {shape} "
                             f"has {len(shape)}")
    elif len(shape) not in (axes + 1, axes + 2):
        raise ValueError(f"{op}: {mode} padding of {axes} {'axis' if axes == 1 else 'axes'} "
                         f"needs a {axes + 1}-D or "
                         f"{axes + 2}-D input, got shape {shape}")
    per_axis = [(pads[2 * i], pads[2 * i + 1]) for i in range(axes)][::-1]  # leading first
    for (before, after), size, axis in zip(per_axis, shape[-axes:], range(len(shape) - axes, len(shape))):
        if mode == "reflect" and max(before, after) >= size:
            raise ValueError(f"{op}: reflect padding must be smaller than the axis it pads: "
                             f"pad ({before}, {after}) on axis {axis} of size {size} (input "
                             f"{shape})")
        if mode == "circular" and max(before, after) > size:
            raise ValueError(f"{op}: circular padding may wrap around once at most: pad "
                             f"({before}, {after}) on axis {axis} of size {size} (input {shape})")
        if mode == "replicate" and size == 0 and before + after:
            raise ValueError(f"{op}: replicate padding of the empty axis {axis} (input {shape})")
    return ((0, 0),) * (len(shape) - axes) + tuple(per_axis)


def pad_value(value, mode: str, op: str) -> float:
    """F.pad's ``value`` as a float (None: 0); as PyTorch, only "constant" padding takes one
    other than 0."""
    if value is None:
        return 0.0
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: value must be a real number, got {value!r}")
    if mode != "constant" and value != 0:
        raise ValueError(f"{op}: {mode} padding takes no value (only constant padding does), "
                         f"got value={value!r}")
    return float(value)


def pad_backward_inputs(grad_y, input_shape, pad, mode: str, op: str):
    """(grad_y as a float array, the pads per axis from pad_geometry): grad_y must have the
    padded shape of `input_shape`."""
    grad_y = as_float_array(grad_y, "grad_y", op)
    try:
        shape = tuple(int(s) for s in input_shape)
        if any(isinstance(s, (float, str, bytes, bool, np.bool_)) for s in input_shape):
            raise TypeError
    except (TypeError, ValueError):
        raise TypeError(f"{op}: input_shape must be a sequence of ints, got {input_shape!r}") from None
    if any(s < 0 for s in shape):
        raise ValueError(f"{op}: input_shape must be non-negative, got {shape}")
    pads = pad_geometry(shape, pad, mode, op)
    want = tuple(s + b + a for s, (b, a) in zip(shape, pads))
    if grad_y.shape != want:
        raise ValueError(f"{op}: grad_y must have the padded shape {want} of input {shape} "
                         f"with pad {tuple(pad)}, got {grad_y.shape}")
    return grad_y, shape, pads
