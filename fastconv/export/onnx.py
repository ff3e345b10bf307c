"""fastconv models as ONNX files: :func:`to_onnx`.

::

    from fastconv import models
    from fastconv.export import to_onnx
    model = models.resnet18(seed=0)
    to_onnx(model, "resnet18.onnx", input_shape=(1, 3, 32, 32))

    import onnxruntime as ort                       # any batch size runs
    session = ort.InferenceSession("resnet18.onnx")
    logits = session.run(None, {"input": x})[0]     # x: (N, 3, 32, 32) float32

The file is ONNX opset 17 with IR version 8 (ONNX 1.12's: onnxruntime 1.13 and later, and the
other runtimes from 2022 on, read it). Opset 17 is the first with LayerNormalization; GELU is
built from Erf or Tanh, its operator only came with opset 20. It computes the model's eval-mode output
(BatchNorm with its running statistics, Dropout the identity), whatever mode the model is in.

The onnx package is imported when :func:`to_onnx` is called, not when fastconv is: fastconv
does not depend on it, and without it to_onnx raises ImportError with the pip command.
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from typing import Any, Callable

import numpy as np

from .. import _args, nn
from ..nn.activation import _softmax_dim

__all__ = ["to_onnx", "OPSET"]

#: The ONNX operator set of the files :func:`to_onnx` writes.
OPSET = 17
#: The IR version of opset 17 (ONNX 1.12): the oldest that holds it, read by the most runtimes.
IR_VERSION = 8

INPUT_NAME = "input"
OUTPUT_NAME = "output"
BATCH = "batch"


def _import_onnx():
    try:
        import onnx
    except ImportError as exc:
        raise ImportError("fastconv.export.to_onnx needs the onnx package, which fastconv does "
                          "not depend on: pip install onnx onnxruntime (or fastconv's extra: "
                          "pip install '.[onnx]')") from exc
    return onnx


class _Graph:
    """The graph being built: nodes, initializers (the state dict's tensors under their keys,
    then the exporters' constants) and unique names.

    A node is named ``<module path>/<op type>`` (``layer1.0.body.0/Conv``) and so is its
    output tensor, so that netron's graph and onnxruntime's errors point at the module."""

    def __init__(self, onnx, model: nn.Module, dtype: np.dtype) -> None:
        self.onnx = onnx
        self.dtype = dtype
        self.nodes: list = []
        self.initializers: list = []
        self.names: set[str] = {INPUT_NAME, OUTPUT_NAME}
        # id of a Parameter / buffer -> its state-dict key (the first, for shared parameters);
        # all are written first, in the state dict's order, but the integer counters
        # (num_batches_tracked), which inference does not use
        self.keys: dict[int, str] = {}
        for key, (m, name, kind) in model._state_entries().items():
            obj = m._parameters[name] if kind == "param" else m._buffers[name]
            data = obj.data if kind == "param" else obj
            if data.dtype.kind == "f" and id(obj) not in self.keys:
                self.keys[id(obj)] = key
                self._initializer(key, np.asarray(data, dtype))

    def _unique(self, base: str) -> str:
        name, i = base, 1
        while name in self.names:
            i += 1
            name = f"{base}_{i}"
        self.names.add(name)
        return name

    def op(self, path: str, op_type: str, inputs: list[str], **attrs) -> str:
        """Add node `op_type` of the module at `path` on `inputs` (tensor names; "" for an
        omitted optional input); returns its output's name."""
        name = self._unique(f"{path}/{op_type}" if path else op_type)
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [name], name=name, **attrs))
        return name

    def state(self, module: nn.Module, attr: str) -> str:
        """The initializer of `module`'s parameter or buffer `attr`: its state-dict key."""
        params = module._parameters
        return self.keys[id(params[attr] if attr in params else module._buffers[attr])]

    def const(self, path: str, what: str, value, dtype=None) -> str:
        """A constant initializer (not in the state dict) named ``<path>/<what>``, in the
        graph's float dtype unless `dtype` is given."""
        name = self._unique(f"{path}/{what}" if path else what)
        self._initializer(name, np.asarray(value, self.dtype if dtype is None else dtype))
        return name

    def _initializer(self, name: str, array: np.ndarray) -> None:
        self.names.add(name)
        # (np.asarray, not np.ascontiguousarray, which makes a scalar (Clip's bounds, Pad's
        # value) a tensor of shape (1,) where ONNX asks for a scalar)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(array, order="C"),
                                                                   name))


def _pair_pads(begin, end) -> list[int]:
    """ONNX's pads of a 2-D op: (top, left, bottom, right)."""
    return [int(begin[0]), int(begin[1]), int(end[0]), int(end[1])]


# functional.pad's modes as ONNX Pad modes (circular has none before opset 19: _wrap_pad).
_ONNX_PAD_MODE = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}
# Conv2d's padding_mode -> functional.pad's mode
_PAD_OF_PADDING_MODE = {"reflect": "reflect", "replicate": "replicate", "circular": "circular"}


def _wrap_pad(g: _Graph, path: str, x: str, rank: int, begin, end) -> str:
    """Circular padding of the last two axes: on each, the input's last `begin` rows (or
    columns) before it and its first `end` after it (Slice and Concat)."""
    for axis, b, e in zip((rank - 2, rank - 1), begin, end):
        if not b and not e:
            continue
        parts = []
        if b:
            parts.append(g.op(path, "Slice", [x, g.const(path, "starts", [-b], np.int64),
                                              g.const(path, "ends", [np.iinfo(np.int64).max], np.int64),
                                              g.const(path, "axes", [axis], np.int64)]))
        parts.append(x)
        if e:
            parts.append(g.op(path, "Slice", [x, g.const(path, "starts", [0], np.int64),
                                              g.const(path, "ends", [e], np.int64),
                                              g.const(path, "axes", [axis], np.int64)]))
        x = g.op(path, "Concat", parts, axis=axis)
    return x


def _pad(g: _Graph, path: str, x: str, rank: int, mode: str, begin, end, value=0.0) -> str:
    """`x` (of `rank` axes) padded on its last two by `begin` (top, left) and `end` (bottom,
    right) in functional.pad's `mode`: a Pad node, or Slice and Concat for circular."""
    if mode == "circular":
        return _wrap_pad(g, path, x, rank, begin, end)
    lead = [0] * (rank - 2)
    pads = g.const(path, "pads", lead + list(begin) + lead + list(end), np.int64)
    inputs = [x, pads] + ([g.const(path, "value", value)] if mode == "constant" else [])
    return g.op(path, "Pad", inputs, mode=_ONNX_PAD_MODE[mode])


def _pad2d(g: _Graph, m, path: str, x: str, shape, convert) -> str:
    left, right, top, bottom = m.padding
    return _pad(g, path, x, len(shape), m.mode, (top, left), (bottom, right), m.value)


def _conv2d(g: _Graph, m: nn.Conv2d, path: str, x: str, shape, convert) -> str:
    begin, end = m.explicit_padding()
    if m.padding_mode != "zeros":  # the input padded first, then convolved without padding
        x = _pad(g, path, x, 4, _PAD_OF_PADDING_MODE[m.padding_mode], begin, end)
        begin = end = (0, 0)
    inputs = [x, g.state(m, "weight")] + ([g.state(m, "bias")] if m.bias is not None else [])
    return g.op(path, "Conv", inputs, kernel_shape=list(m.kernel_size), strides=list(m.stride),
                pads=_pair_pads(begin, end), dilations=list(m.dilation), group=m.groups)


def _conv_transpose2d(g: _Graph, m: nn.ConvTranspose2d, path: str, x: str, shape,
                      convert) -> str:
    """ConvTranspose without its output_padding attribute, which onnxruntime refuses from the
    stride up (PyTorch takes it below the stride *or* the dilation): output_padding op is the
    end padding p cut back by op (ONNX's size: s (n - 1) + d (k - 1) + 1 - begin - end). Where
    op > p the rows past the full convolution hold the bias alone: the output is padded with
    zeros there and the bias added after."""
    begin = m.padding
    end = tuple(max(p - op, 0) for p, op in zip(m.padding, m.output_padding))
    extra = [max(op - p, 0) for p, op in zip(m.padding, m.output_padding)]
    bias = m.bias is not None and not any(extra)
    inputs = [x, g.state(m, "weight")] + ([g.state(m, "bias")] if bias else [])
    y = g.op(path, "ConvTranspose", inputs, kernel_shape=list(m.kernel_size),
             strides=list(m.stride), pads=_pair_pads(begin, end), dilations=list(m.dilation),
             group=m.groups)
    if not any(extra):
        return y
    y = g.op(path, "Pad", [y, g.const(path, "pads", [0, 0, 0, 0, 0, 0, *extra], np.int64)])
    if m.bias is None:
        return y
    per_channel = g.const(path, "bias_shape", [m.out_channels, 1, 1], np.int64)
    return g.op(path, "Add", [y, g.op(path, "Reshape", [g.state(m, "bias"), per_channel])])


def _linear(g: _Graph, m: nn.Linear, path: str, x: str, shape, convert) -> str:
    w = g.state(m, "weight")
    if len(shape) == 2:  # Gemm: x W^T + b in one node
        inputs = [x, w] + ([g.state(m, "bias")] if m.bias is not None else [])
        return g.op(path, "Gemm", inputs, transB=1)
    y = g.op(path, "MatMul", [x, g.op(path, "Transpose", [w], perm=[1, 0])])
    return y if m.bias is None else g.op(path, "Add", [y, g.state(m, "bias")])


def _ones(g: _Graph, path: str, what: str, shape) -> str:
    return g.const(path, what, np.ones(shape))


def _batch_norm(g: _Graph, m, path: str, x: str, shape, convert) -> str:
    c = m.num_features
    scale = g.state(m, "weight") if m.weight is not None else _ones(g, path, "ones", c)
    shift = g.state(m, "bias") if m.bias is not None else g.const(path, "zeros", np.zeros(c))
    if m.running_mean is not None:
        return g.op(path, "BatchNormalization", [x, scale, shift, g.state(m, "running_mean"),
                                                 g.state(m, "running_var")], epsilon=m.eps)
    # Without running statistics PyTorch normalises with the batch's, in eval mode too:
    # (x - mean) / sqrt(var + eps) over every axis but the channels', var biased.
    axes = [0] + list(range(2, len(shape)))
    mean = g.op(path, "ReduceMean", [x], axes=axes, keepdims=1)
    centred = g.op(path, "Sub", [x, mean])
    var = g.op(path, "ReduceMean", [g.op(path, "Mul", [centred, centred])], axes=axes,
               keepdims=1)
    std = g.op(path, "Sqrt", [g.op(path, "Add", [var, g.const(path, "eps", m.eps)])])
    y = g.op(path, "Div", [centred, std])
    if not m.affine:
        return y
    per_channel = g.const(path, "channel_shape", [c] + [1] * (len(shape) - 2), np.int64)
    y = g.op(path, "Mul", [y, g.op(path, "Reshape", [scale, per_channel])])
    return g.op(path, "Add", [y, g.op(path, "Reshape", [shift, per_channel])])


def _layer_norm(g: _Graph, m: nn.LayerNorm, path: str, x: str, shape, convert) -> str:
    scale = g.state(m, "weight") if m.elementwise_affine else _ones(g, path, "ones",
                                                                     m.normalized_shape)
    inputs = [x, scale] + ([g.state(m, "bias")] if m.bias is not None else [])
    return g.op(path, "LayerNormalization", inputs, axis=-len(m.normalized_shape),
                epsilon=m.eps)


def _pool_pads(m, shape) -> tuple[tuple[int, int], tuple[int, int]]:
    """(begin, end) padding per spatial axis that gives `m`'s PyTorch output size with ONNX's
    floor rule: ceil_mode's last window (PyTorch keeps it when it starts inside the input or
    its left padding) becomes extra padding at the end, so no runtime's own ceil_mode rule is
    relied on."""
    out = m.output_shape(shape)[2:]
    end = []
    for n, o, k, s, p, d in zip(shape[2:], out, m.kernel_size, m.stride, m.padding, m.dilation):
        extra = (o - 1) * s + d * (k - 1) + 1 - (n + 2 * p)
        end.append(p + max(extra, 0))
    return m.padding, tuple(end)


def _max_pool2d(g: _Graph, m: nn.MaxPool2d, path: str, x: str, shape, convert) -> str:
    begin, end = _pool_pads(m, shape)
    attrs = dict(kernel_shape=list(m.kernel_size), strides=list(m.stride),
                 dilations=list(m.dilation))
    if all(p < k for p, k in zip(begin + end, m.kernel_size * 2)):
        return g.op(path, "MaxPool", [x], pads=_pair_pads(begin, end), **attrs)
    # onnxruntime refuses pads as large as the kernel (possible with dilation): pad with -inf.
    pads = g.const(path, "pads", [0, 0, *begin, 0, 0, *end], np.int64)
    x = g.op(path, "Pad", [x, pads, g.const(path, "minus_inf", -np.inf)])
    return g.op(path, "MaxPool", [x], **attrs)


def _avg_pool2d(g: _Graph, m: nn.AvgPool2d, path: str, x: str, shape, convert) -> str:
    begin, end = _pool_pads(m, shape)
    attrs = dict(kernel_shape=list(m.kernel_size), strides=list(m.stride))
    if m.divisor_override is not None:
        # AveragePool has no divisor: every window lies whole in the zero-padded input (the
        # padding made real, ceil_mode's extra end padding included), so AveragePool gives
        # sum / (kH kW), scaled by kH kW / divisor_override.
        pads = g.const(path, "pads", [0, 0, *begin, 0, 0, *end], np.int64)
        pooled = g.op(path, "AveragePool", [g.op(path, "Pad", [x, pads])], **attrs)
        return _scalar_op(g, path, "Mul", pooled, "divisor_scale",
                          math.prod(m.kernel_size) / m.divisor_override)
    if not (m.count_include_pad and begin != (0, 0) and end != begin):
        # (with no padding, a ceil_mode window past the input divides by its input pixels)
        return g.op(path, "AveragePool", [x], pads=_pair_pads(begin, end),
                    count_include_pad=int(m.count_include_pad and end == begin), **attrs)
    # A ceil_mode window past the padding divides by its pixels inside input + padding
    # (PyTorch's): the zero padding made real, the extra end padding left out.
    pads = g.const(path, "pads", [0, 0, *begin, 0, 0, *begin], np.int64)
    x = g.op(path, "Pad", [x, pads])
    extra = [e - b for e, b in zip(end, begin)]
    return g.op(path, "AveragePool", [x], pads=_pair_pads((0, 0), extra), count_include_pad=0,
                **attrs)


def _adaptive_avg_pool2d(g: _Graph, m: nn.AdaptiveAvgPool2d, path: str, x: str, shape,
                         convert) -> str:
    out = m.output_shape(shape)[2:]
    if out == (1, 1):
        return g.op(path, "GlobalAveragePool", [x])
    windows = [_args.adaptive_windows(n, o) for n, o in zip(shape[2:], out)]
    sizes = [end - start for start, end in windows]
    if all((s == s[0]).all() and (start == np.arange(len(start)) * s[0]).all()
           for s, (start, _) in zip(sizes, windows)):  # equal windows side by side
        k = [int(s[0]) for s in sizes]
        return g.op(path, "AveragePool", [x], kernel_shape=k, strides=k)
    # Windows of unequal sizes: averaging matrices, y = A_h x A_w^T per plane.
    a_h, a_w = (np.zeros((o, n)) for o, n in zip(out, shape[2:]))
    for a, (start, end) in zip((a_h, a_w), windows):
        for i, (s, e) in enumerate(zip(start, end)):
            a[i, s:e] = 1.0 / (e - s)
    y = g.op(path, "MatMul", [x, g.const(path, "cols", a_w.T)])
    return g.op(path, "MatMul", [g.const(path, "rows", a_h), y])


def _upsample(g: _Graph, m: nn.Upsample, path: str, x: str, shape, convert) -> str:
    # The source rows and columns fastconv computes (PyTorch's float32 arithmetic), gathered:
    # exact for any scale, where Resize's coordinate rounding would be the runtime's.
    geom = _args.upsample_nearest2d_geometry(shape, op=repr(m), name="input", **m._resampling())
    for axis, what, index in ((2, "rows", geom.rows), (3, "cols", geom.cols)):
        if not np.array_equal(index, np.arange(shape[axis])):
            x = g.op(path, "Gather", [x, g.const(path, what, index, np.int64)], axis=axis)
    return x


def _reshape(g: _Graph, path: str, x: str, out, batch_kept: bool) -> str:
    """`x` reshaped to `out`, the batch axis dynamic: copied where it is kept, else inferred."""
    out = list(out)
    out[0] = 0 if batch_kept else -1
    return g.op(path, "Reshape", [x, g.const(path, "shape", out, np.int64)])


def _flatten(g: _Graph, m: nn.Flatten, path: str, x: str, shape, convert) -> str:
    start = m.start_dim + len(shape) if m.start_dim < 0 else m.start_dim
    return _reshape(g, path, x, m.output_shape(shape), start > 0)


def _unflatten(g: _Graph, m: nn.Unflatten, path: str, x: str, shape, convert) -> str:
    """A graph's first axis is the batch: unflattening it is refused (its sizes would be the
    export's batch)."""
    if m.dim % len(shape) == 0:
        where = f"module {path!r}" if path else "the model"
        raise ValueError(f"to_onnx: {where} ({m!r}) unflattens the batch axis; the graph's "
                         f"first axis is the batch, of any size")
    return _reshape(g, path, x, m.output_shape(shape), True)


def _scalar_op(g: _Graph, path: str, op_type: str, x: str, what: str, value) -> str:
    return g.op(path, op_type, [x, g.const(path, what, value)])


def _gelu(g: _Graph, m: nn.GELU, path: str, x: str, shape, convert) -> str:
    if m.approximate == "tanh":  # x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = g.op(path, "Mul", [x, g.op(path, "Mul", [x, x])])
        inner = g.op(path, "Add", [x, _scalar_op(g, path, "Mul", cube, "kappa", 0.044715)])
        t = g.op(path, "Tanh", [_scalar_op(g, path, "Mul", inner, "sqrt_2_over_pi",
                                           math.sqrt(2 / math.pi))])
    else:                        # x/2 (1 + erf(x / sqrt(2)))
        t = g.op(path, "Erf", [_scalar_op(g, path, "Mul", x, "inv_sqrt2", math.sqrt(0.5))])
    half_x = _scalar_op(g, path, "Mul", x, "half", 0.5)
    return g.op(path, "Mul", [half_x, _scalar_op(g, path, "Add", t, "one", 1.0)])


def _silu(g: _Graph, m: nn.SiLU, path: str, x: str, shape, convert) -> str:
    return g.op(path, "Mul", [x, g.op(path, "Sigmoid", [x])])


def _unary(op_type: str, **attrs_of: Callable[[nn.Module], Any]):
    """The exporter of a layer that is one ONNX op on its input (attributes read from it)."""
    def export(g: _Graph, m, path: str, x: str, shape, convert) -> str:
        return g.op(path, op_type, [x], **{k: f(m) for k, f in attrs_of.items()})
    return export


def _softmax(op_type: str):
    """The exporter of Softmax / LogSoftmax: the ONNX op along the layer's axis."""
    def export(g: _Graph, m, path: str, x: str, shape, convert) -> str:
        return g.op(path, op_type, [x], axis=_softmax_dim(m.dim, len(shape), m))
    return export


def _group_norm(g: _Graph, m: nn.GroupNorm, path: str, x: str, shape, convert) -> str:
    """(N, C, *) as (N, groups, C / groups * ...) normalised by InstanceNormalization (unit
    scale, zero shift), back to the input's shape, then the per-channel affine."""
    # (sizes written out, no -1: a Reshape cannot infer one from an empty batch)
    per_group = m.num_channels // m.num_groups * math.prod(shape[2:])
    grouped = g.op(path, "Reshape", [x, g.const(path, "grouped", [0, m.num_groups, per_group],
                                                np.int64)])
    normed = g.op(path, "InstanceNormalization",
                  [grouped, g.const(path, "ones", np.ones(m.num_groups)),
                   g.const(path, "zeros", np.zeros(m.num_groups))], epsilon=m.eps)
    y = g.op(path, "Reshape", [normed, g.op(path, "Shape", [x])])
    per_channel = [m.num_channels] + [1] * (len(shape) - 2)
    for attr, op_type in (("weight", "Mul"), ("bias", "Add")):
        if getattr(m, attr) is not None:
            param = g.op(path, "Reshape", [g.state(m, attr),
                                           g.const(path, f"{attr}_shape", per_channel, np.int64)])
            y = g.op(path, op_type, [y, param])
    return y


def _instance_norm2d(g: _Graph, m: nn.InstanceNorm2d, path: str, x: str, shape, convert) -> str:
    """InstanceNormalization, or with running statistics (eval mode's) BatchNormalization.
    Missing affine parameters are ones and zeros. A graph's first axis is the batch's: one
    sample (C, H, W), whose first axis is the channels', is refused."""
    if len(shape) != 4:
        where = f"module {path!r}" if path else "the model"
        raise ValueError(f"to_onnx: {where} ({m!r}) takes one sample {shape}; the graph's first "
                         f"axis is the batch: export it for (N, C, H, W)")
    c = shape[1]
    scale = g.state(m, "weight") if m.weight is not None else _ones(g, path, "ones", c)
    shift = g.state(m, "bias") if m.bias is not None else g.const(path, "zeros", np.zeros(c))
    if m.track_running_stats:
        return g.op(path, "BatchNormalization", [x, scale, shift, g.state(m, "running_mean"),
                                                 g.state(m, "running_var")], epsilon=m.eps)
    return g.op(path, "InstanceNormalization", [x, scale, shift], epsilon=m.eps)


def _local_response_norm(g: _Graph, m: nn.LocalResponseNorm, path: str, x: str, shape,
                         convert) -> str:
    """ONNX's LRN sums the channels [c - floor((size-1)/2), c + ceil((size-1)/2)]: PyTorch's
    window [c - size//2, c + (size-1)//2] for an odd size only (and onnxruntime takes no
    other). An even size gets PyTorch's
    own formula: x / (k + alpha avg(x^2))^beta, the channel average an AveragePool of x^2
    laid out (N, 1, C, rest) with a (size, 1) window, zero padding counted."""
    rest = math.prod(shape[2:])  # (written out, no -1: an empty batch has none to infer)
    if m.size % 2:
        # LRN takes (N, C, H, W): other layouts go through (N, C, rest, 1)
        four_d = len(shape) == 4
        y = x if four_d else g.op(path, "Reshape", [x, g.const(path, "nchw",
                                                               [0, shape[1], rest, 1], np.int64)])
        y = g.op(path, "LRN", [y], size=m.size, alpha=m.alpha, beta=m.beta, bias=m.k)
        return y if four_d else g.op(path, "Reshape", [y, g.op(path, "Shape", [x])])
    planes = g.const(path, "planes", [0, 1, shape[1], rest], np.int64)  # (N, 1, C, rest)
    squares = g.op(path, "Reshape", [g.op(path, "Mul", [x, x]), planes])
    mean = g.op(path, "AveragePool", [squares], kernel_shape=[m.size, 1], strides=[1, 1],
                pads=[m.size // 2, 0, (m.size - 1) // 2, 0], count_include_pad=1)
    mean = g.op(path, "Reshape", [mean, g.op(path, "Shape", [x])])
    base = _scalar_op(g, path, "Add", _scalar_op(g, path, "Mul", mean, "alpha", m.alpha), "k", m.k)
    return g.op(path, "Div", [x, _scalar_op(g, path, "Pow", base, "beta", m.beta)])


def _hardtanh(g: _Graph, m: nn.Hardtanh, path: str, x: str, shape, convert) -> str:
    return g.op(path, "Clip", [x, g.const(path, "min", m.min_val), g.const(path, "max", m.max_val)])


def _softplus(g: _Graph, m: nn.Softplus, path: str, x: str, shape, convert) -> str:
    """Softplus(beta x) / beta, x itself where beta x > threshold (ONNX's Softplus has
    neither)."""
    bx = _scalar_op(g, path, "Mul", x, "beta", m.beta)
    y = _scalar_op(g, path, "Div", g.op(path, "Softplus", [bx]), "beta", m.beta)
    linear = g.op(path, "Greater", [bx, g.const(path, "threshold", m.threshold)])
    return g.op(path, "Where", [linear, x, y])


def _mish(g: _Graph, m: nn.Mish, path: str, x: str, shape, convert) -> str:
    # (ONNX's Mish came with opset 18)
    return g.op(path, "Mul", [x, g.op(path, "Tanh", [g.op(path, "Softplus", [x])])])


def _log_sigmoid(g: _Graph, m: nn.LogSigmoid, path: str, x: str, shape, convert) -> str:
    # log(sigmoid(x)) = -softplus(-x)
    return g.op(path, "Neg", [g.op(path, "Softplus", [g.op(path, "Neg", [x])])])


def _relu6(g: _Graph, m: nn.ReLU6, path: str, x: str, shape, convert) -> str:
    return g.op(path, "Clip", [x, g.const(path, "min", 0.0), g.const(path, "max", 6.0)])


def _prelu(g: _Graph, m: nn.PReLU, path: str, x: str, shape, convert) -> str:
    slope = g.state(m, "weight")
    if m.num_parameters > 1:  # (C,) -> (C, 1, ...): ONNX broadcasts from the last axis
        slope = g.op(path, "Reshape", [slope, g.const(path, "slope_shape",
                                                      [m.num_parameters] + [1] * (len(shape) - 2),
                                                      np.int64)])
    return g.op(path, "PRelu", [x, slope])


def _mul(g: _Graph, m: nn.Mul, path: str, x: str, shape, convert) -> str:
    return _scalar_op(g, path, "Mul", x, "scale", m.scale)


def _passthrough(g: _Graph, m, path: str, x: str, shape, convert) -> str:
    return x  # (Identity; Dropout and Dropout2d in eval mode)


def _sequential(g: _Graph, m: nn.Sequential, path: str, x: str, shape, convert) -> str:
    for name, child in m.named_children():
        x, shape = convert(child, name, x, shape)
    return x


def _residual(g: _Graph, m: nn.Residual, path: str, x: str, shape, convert) -> str:
    body, _ = convert(m.body, "body", x, shape)
    shortcut = x if m.shortcut is None else convert(m.shortcut, "shortcut", x, shape)[0]
    return g.op(path, "Add", [body, shortcut])


def _concat(g: _Graph, m: nn.Concat, path: str, x: str, shape, convert) -> str:
    outs = [convert(child, name, x, shape)[0] for name, child in m.named_children()]
    return g.op(path, "Concat", outs, axis=m.dim)


#: fastconv type -> function(graph, module, path, input name, input shape, convert_child)
#: adding its nodes and returning its output's name; convert_child(child, name, x, shape)
#: returns (output name, output shape). Exact types only: a subclass may compute something
#: else.
EXPORTERS: dict[type, Callable] = {
    nn.Sequential: _sequential,
    nn.Residual: _residual,
    nn.Concat: _concat,
    nn.Conv2d: _conv2d,
    nn.ConvTranspose2d: _conv_transpose2d,
    nn.Linear: _linear,
    nn.BatchNorm1d: _batch_norm,
    nn.BatchNorm2d: _batch_norm,
    nn.LayerNorm: _layer_norm,
    nn.GroupNorm: _group_norm,
    nn.InstanceNorm2d: _instance_norm2d,
    nn.LocalResponseNorm: _local_response_norm,
    nn.MaxPool2d: _max_pool2d,
    nn.AvgPool2d: _avg_pool2d,
    nn.AdaptiveAvgPool2d: _adaptive_avg_pool2d,
    nn.Upsample: _upsample,
    nn.ReLU: _unary("Relu"),
    nn.LeakyReLU: _unary("LeakyRelu", alpha=lambda m: m.negative_slope),
    nn.Tanh: _unary("Tanh"),
    nn.Sigmoid: _unary("Sigmoid"),
    nn.GELU: _gelu,
    nn.SiLU: _silu,
    nn.ReLU6: _relu6,
    nn.PReLU: _prelu,
    nn.ELU: _unary("Elu", alpha=lambda m: m.alpha),
    nn.Hardsigmoid: _unary("HardSigmoid", alpha=lambda m: 1 / 6, beta=lambda m: 0.5),
    nn.Hardswish: _unary("HardSwish"),
    nn.Hardtanh: _hardtanh,
    nn.Softplus: _softplus,
    nn.Mish: _mish,
    nn.LogSigmoid: _log_sigmoid,
    nn.Softmax: _softmax("Softmax"),
    nn.LogSoftmax: _softmax("LogSoftmax"),
    nn.Dropout: _passthrough,
    nn.Dropout2d: _passthrough,
    nn.ZeroPad2d: _pad2d,
    nn.ConstantPad2d: _pad2d,
    nn.ReflectionPad2d: _pad2d,
    nn.ReplicationPad2d: _pad2d,
    nn.CircularPad2d: _pad2d,
    nn.Flatten: _flatten,
    nn.Unflatten: _unflatten,
    nn.Identity: _passthrough,
    nn.Mul: _mul,
}


def _graph_dtype(model: nn.Module) -> np.dtype:
    """The model's float dtype (float32 for a model without floating state); ValueError for a
    model mixing float32 and float64 (each layer would compute in its own)."""
    dtypes = {np.dtype(a.dtype) for a in list(model.parameters()) + list(model.buffers())
              if a.dtype.kind == "f"}
    if len(dtypes) > 1:
        raise ValueError(f"to_onnx: the model mixes dtypes {sorted(d.name for d in dtypes)}: "
                         f"convert it to one first (model.astype(np.float32))")
    return dtypes.pop() if dtypes else np.dtype(np.float32)


def _bf16_layers(model: nn.Module, dtype) -> tuple[int, int]:
    """(how many of `model`'s convolution and linear layers compute on bfloat16 operands now,
    through ``model.to(precision="bf16")`` or an active ``fastconv.autocast("bf16")``; how
    many there are)."""
    layers = [m for m in model.modules()
              if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    bf16 = 0
    for m in layers:
        try:
            bf16 += m._op_precision(dtype) == "bf16"
        except TypeError:  # (bf16 asked of float64 weights: their forward refuses it anyway)
            pass
    return bf16, len(layers)


def _check_input_shape(model: nn.Module, input_shape) -> tuple[tuple[int, ...], tuple]:
    """(input shape, output shape) as int tuples; ValueError for a shape that is not
    (batch, ...) positive ints or that the model does not take."""
    ok = isinstance(input_shape, (tuple, list)) and len(input_shape) >= 2 and all(
        isinstance(n, (numbers.Integral, np.integer)) and not isinstance(n, bool) and n >= 1
        for n in input_shape)
    if not ok:
        raise ValueError(f"to_onnx: input_shape must be a tuple (batch, ...) of at least two "
                         f"positive ints, e.g. (1, 3, 32, 32), got {input_shape!r}")
    shape = tuple(int(n) for n in input_shape)
    # the first axis is the batch, dynamic in the file: the model must take another size too
    # (an image shape without it, (3, 32, 32), can pass as one unbatched image, then fail)
    other = (shape[0] + 1,) + shape[1:]
    outs = []
    for probe in (shape, other):
        try:
            outs.append(tuple(model.output_shape(probe)))
        except ValueError as e:
            batch = "" if probe is shape else f" with a batch of {other[0]} (axis 0 is the batch)"
            raise ValueError(f"to_onnx: input_shape {shape} does not fit the model{batch}: "
                             f"{e}{_batch_axis_hint(model, shape)}") from e
    return shape, outs[0]


def _batch_axis_hint(model: nn.Module, shape: tuple[int, ...]) -> str:
    """A note when ``(1,) + shape`` fits the model: the batch axis was left out."""
    try:
        model.output_shape((1,) + shape)
        model.output_shape((2,) + shape)
    except Exception:
        return ""
    return f" (input_shape starts with the batch axis: {(1,) + shape}?)"


def _output_dims(model: nn.Module, shape: tuple, out: tuple) -> list:
    """The output's dims for the graph: "batch" where the batch size goes, a fixed size where
    none depends on it, unnamed (None) where one depends on it otherwise (Flatten(0))."""
    other = tuple(model.output_shape((shape[0] + 1,) + shape[1:]))
    return [n if n == m else (BATCH if (n, m) == (shape[0], shape[0] + 1) else None)
            for n, m in zip(out, other)]


def to_onnx(model: nn.Module, path: str | os.PathLike, input_shape=(1, 3, 32, 32),
            metadata: dict[str, str] | None = None):
    """Write `model` as an ONNX file at `path` (atomically: whole or absent) and return the
    ``onnx.ModelProto``.

    * opset :data:`OPSET` (17); one graph input ``"input"`` of `input_shape` and one output
      ``"output"``, in the model's dtype (float32 by default; float64 models give a float64
      graph, which onnxruntime's CPU kernels do not all take). The first axis is dynamic
      (``"batch"``): the file runs on any batch size; the other axes are fixed by
      `input_shape` (a fixed size is what Flatten, AdaptiveAvgPool2d and Upsample are
      exported for).
    * The model's eval-mode computation, whatever its mode: BatchNorm uses its running
      statistics (the batch's when it tracks none, as PyTorch in eval mode), Dropout is
      left out. The model is not changed.
    * In float32: a model in bf16 mode (``model.to(precision="bf16")``, or exported inside
      ``fastconv.autocast("bf16")``) is exported as its float32 computation (the weights
      are float32 either way), so the graph's outputs differ from ``predict``'s in bf16 mode
      by the bf16 rounding (~1e-3 on an untrained simple_cnn's logits); a one-line UserWarning
      says so.
    * Parameters and buffers are initializers named by their state-dict keys
      (``"layer1.0.body.0.weight"``; ``num_batches_tracked`` is not needed and left out);
      nodes are named ``<module path>/<op type>``.
    * `metadata` (str -> str) goes to the file's ``metadata_props`` (onnxruntime's
      ``session.get_modelmeta().custom_metadata_map``), e.g. the class names.
    * One exporter per layer type (:data:`EXPORTERS`): every layer and container of
      :mod:`fastconv.nn` but MaxUnpool2d (two inputs: TypeError). Notes: ceil_mode pooling
      becomes explicit end padding, Upsample two Gathers of the source rows and columns, GELU
      its Erf or Tanh formula, SiLU x * Sigmoid(x), AdaptiveAvgPool2d a GlobalAveragePool, an
      AveragePool or (unequal windows) two MatMuls by averaging matrices, AvgPool2d with
      divisor_override a Pad, an AveragePool and a scale, LocalResponseNorm an LRN (odd
      sizes) or its formula (even sizes), InstanceNorm2d an InstanceNormalization (or, with
      running statistics, a BatchNormalization; batched input only), ConvTranspose2d's
      output_padding end padding cut back (a Pad of zeros and the bias added after where it
      exceeds the padding: onnxruntime refuses output_padding from the stride up).

    The model is checked with ``onnx.checker.check_model(full_check=True)``. Raises TypeError
    naming the module's path for a module type without an exporter (a subclass of a fastconv
    layer counts as one: its forward may differ), ValueError for an `input_shape` the model
    does not take, and ImportError when the onnx package is not installed.
    """
    onnx = _import_onnx()
    if not isinstance(model, nn.Module):
        raise TypeError(f"to_onnx: expected a fastconv.nn.Module, got {type(model).__name__}")
    for p, m in model.named_modules():
        if type(m) is nn.MaxUnpool2d:
            where = f"module {p!r}" if p else "the model"
            raise TypeError(f"to_onnx: {where} is a MaxUnpool2d, which takes two inputs (the "
                            f"values and a MaxPool2d's indices) where the exported graph passes "
                            f"one tensor from layer to layer: it has no ONNX exporter here")
        if type(m) not in EXPORTERS:
            where = f"module {p!r}" if p else "the model"
            raise TypeError(f"to_onnx: {where} is a {type(m).__module__}.{type(m).__qualname__}, "
                            f"which has no ONNX exporter here (supported: "
                            f"{', '.join(sorted(t.__name__ for t in EXPORTERS))})")
        if isinstance(m, nn.MaxPool2d) and m.return_indices:
            where = f"module {p!r}" if p else "the model"
            raise ValueError(f"to_onnx: {where} is a MaxPool2d with return_indices=True, whose "
                             f"(output, indices) pair is no single tensor to pass on; export it "
                             f"with return_indices=False")
    shape, out = _check_input_shape(model, input_shape)
    metadata = dict(metadata or {})
    if not all(isinstance(v, str) for kv in metadata.items() for v in kv):
        raise TypeError(f"to_onnx: metadata must map str to str, got {metadata!r}")
    dtype = _graph_dtype(model)
    bf16, layers = _bf16_layers(model, dtype)
    if bf16:
        warnings.warn(f"to_onnx: the model runs in bf16 mode ({bf16} of its {layers} conv/linear "
                      f"layers), but the ONNX graph computes in float32: its outputs differ from "
                      f"predict's by the bf16 rounding", UserWarning, stacklevel=2)
    g = _Graph(onnx, model, dtype)

    def convert(module: nn.Module, path: str, x: str, shape: tuple) -> tuple[str, tuple]:
        def child(c: nn.Module, name: str, x: str, shape: tuple):
            return convert(c, f"{path}.{name}" if path else name, x, shape)
        return EXPORTERS[type(module)](g, module, path, x, shape, child), \
            tuple(module.output_shape(shape))

    y, _ = convert(model, "", INPUT_NAME, shape)
    if y == INPUT_NAME:
        g.op("", "Identity", [y])
        y = g.nodes[-1].output[0]
    for node in g.nodes:  # the last tensor becomes "output"
        node.output[:] = [OUTPUT_NAME if t == y else t for t in node.output]
    elem = onnx.helper.np_dtype_to_tensor_dtype(dtype)
    graph = onnx.helper.make_graph(
        g.nodes, type(model).__name__,
        [onnx.helper.make_tensor_value_info(INPUT_NAME, elem, (BATCH,) + shape[1:])],
        [onnx.helper.make_tensor_value_info(OUTPUT_NAME, elem, _output_dims(model, shape, out))],
        initializer=g.initializers)
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)],
                                   producer_name="fastconv", ir_version=IR_VERSION)
    onnx.helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto, full_check=True)
    from ..checkpoint import atomic_write
    with atomic_write(path) as f:
        f.write(proto.SerializeToString())
    return proto
