"""Neural-network layers with explicit forward and backward passes, PyTorch-compatible.

Every layer is a :class:`Module`:

* ``y = layer(x)`` / ``layer.forward(x)`` computes the output and caches what backward needs;
* ``grad_x = layer.backward(grad_y)`` returns dL/dx and *accumulates* dL/dparam into each
  ``Parameter.grad`` (call ``zero_grad()`` between steps);
* ``train()`` / ``eval()`` switch Dropout and BatchNorm between their two behaviours;
* ``state_dict()`` / ``load_state_dict()`` use PyTorch's key names (``"0.weight"``,
  ``"3.running_mean"``, ``"3.num_batches_tracked"``), so a PyTorch state dict converted to NumPy
  arrays loads as is and gives the same outputs.

Layer names, constructor arguments and default initialisation follow ``torch.nn``. Layers
are float32 by default (``dtype=np.float32``); ``model.astype(np.float64)`` converts a whole
model, e.g. for gradient checking. Inputs of a layer with parameters are converted to the
parameters' dtype, so a float32 model stays float32 throughout.

Convolution and pooling layers run on the ops of the active backend (:mod:`fastconv.backend`):
the per-model override set by ``model.set_backend(name)`` or else the global backend,
looked up at call time; backward always uses the ops that ran the forward pass.

Example::

    from fastconv import nn
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(8 * 16 * 16, 10))
    logits = model(x)                  # x: (N, 3, 32, 32) float32
    grad_x = model.backward(grad_logits)
"""

from __future__ import annotations

import copy
import math
import numbers
from collections import OrderedDict, namedtuple
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from . import _args
from . import init as _init
from .backend import BACKENDS, get_backend

__all__ = [
    "Parameter", "Module", "Sequential", "Identity",
    "Conv2d", "MaxPool2d", "AvgPool2d", "Linear", "Flatten",
    "ReLU", "LeakyReLU", "Tanh", "Sigmoid", "Dropout",
    "BatchNorm1d", "BatchNorm2d", "LayerNorm", "ModelSummary",
]

IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _float_dtype(dtype, where: str) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in _FLOAT_DTYPES:
        raise TypeError(f"{where}: dtype must be float32 or float64, got {dt}")
    return dt


if hasattr(np, "vecdot"):  # NumPy >= 2.0: BLAS dot products along the last axis
    def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.vecdot(a, b)
else:  # pragma: no cover - old NumPy
    def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.einsum("...k,...k->...", a, b)


def _channel_sum(a3: np.ndarray) -> np.ndarray:
    """Sum of (N, C, L) over N and L -> (C,). Pairwise summation along the contiguous L axis."""
    return a3.sum(axis=2).sum(axis=0)


def _channel_dot(a3: np.ndarray, b3: np.ndarray) -> np.ndarray:
    """sum over N and L of a*b for (N, C, L) arrays -> (C,), without an (N, C, L) temporary."""
    return _rowdot(a3, b3).sum(axis=0)


# --------------------------------------------------------------------------------------------
# Parameter and Module
# --------------------------------------------------------------------------------------------

class Parameter:
    """A trainable array: ``data`` (the values) and ``grad`` (same shape and dtype, starts at 0).

    Layers accumulate into ``grad`` in backward; optimisers update ``data`` in place.
    ``name`` is the attribute name in the owning layer (``"weight"``, ``"bias"``); full dotted
    names come from :meth:`Module.named_parameters`.
    """

    __slots__ = ("data", "_grad", "_grad_zero_pending", "name")

    def __init__(self, data, name: str | None = None) -> None:
        data = np.asarray(data)
        if data.dtype.kind != "f":
            data = data.astype(np.float32)
        self.data: np.ndarray = data
        self._grad: np.ndarray = np.zeros_like(data)
        # zero_grad only marks the gradient as zero: the first accumulation then takes the new
        # gradient as it is, instead of writing zeros and adding onto them (two passes over
        # memory that cost ~8% of a simple_cnn step, whose Linear weight is 9.4 MB).
        self._grad_zero_pending = False
        self.name = name

    @property
    def grad(self) -> np.ndarray:
        """dL/d(data), accumulated by backward; zero after :meth:`zero_grad`."""
        if self._grad_zero_pending:
            self._grad.fill(0)
            self._grad_zero_pending = False
        return self._grad

    @grad.setter
    def grad(self, value) -> None:
        self._grad = value
        self._grad_zero_pending = False

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def ndim(self) -> int:
        return self.data.ndim

    def zero_grad(self) -> None:
        """Set ``grad`` to zero (re-allocated if ``data`` changed shape or dtype)."""
        g = self._grad
        if g is None or g.shape != self.data.shape or g.dtype != self.data.dtype:
            self.grad = np.zeros_like(self.data)
        else:
            self._grad_zero_pending = True

    def accumulate_grad(self, g: np.ndarray) -> None:
        """``grad += g``. Right after :meth:`zero_grad`, a C-contiguous `g` of the gradient's
        shape and dtype that the caller hands over (it must not keep using it) becomes the
        gradient without a copy."""
        if (self._grad_zero_pending and isinstance(g, np.ndarray) and g.shape == self._grad.shape
                and g.dtype == self._grad.dtype and g.flags.c_contiguous and g.flags.writeable):
            self.grad = g
        else:
            self.grad += g

    def __repr__(self) -> str:
        name = f"{self.name!r}, " if self.name else ""
        return f"Parameter({name}shape={self.data.shape}, dtype={self.data.dtype})"


def _reraise_with_context(exc: Exception, context: str):
    """Raise a copy of `exc` (same type) whose message starts with `context`."""
    try:
        new = type(exc)(f"{context}: {exc}")
    except Exception:
        raise exc
    raise new from exc


class Module:
    """Base class of all layers and models (``torch.nn.Module``'s explicit-backward cousin).

    Subclasses call ``super().__init__()`` first, then assign :class:`Parameter` objects,
    sub-modules and buffers (``register_buffer``) as attributes; these are registered in
    assignment order, which fixes the order of ``parameters()`` and of ``state_dict()`` keys.
    Subclasses implement ``forward(x)`` and ``backward(grad_y, input_grad=True)``.
    """

    training: bool

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_backend", None)
        object.__setattr__(self, "_cache", None)

    # -- registration ------------------------------------------------------------------------
    def __setattr__(self, name: str, value) -> None:
        d = self.__dict__
        if "_parameters" not in d:
            raise AttributeError(f"{type(self).__name__}: call super().__init__() before assigning "
                                 f"attributes (while setting {name!r})")
        params, buffers, modules = d["_parameters"], d["_buffers"], d["_modules"]
        if isinstance(value, Parameter):
            buffers.pop(name, None)
            modules.pop(name, None)
            if value.name is None:
                value.name = name
            params[name] = value
        elif isinstance(value, Module):
            params.pop(name, None)
            buffers.pop(name, None)
            modules[name] = value
        elif name in params:
            if value is not None:
                raise TypeError(f"{type(self).__name__}.{name} is a Parameter: assign a Parameter "
                                f"or None, or set {name}.data")
            params[name] = None
        elif name in buffers:
            if value is not None and not isinstance(value, np.ndarray):
                raise TypeError(f"{type(self).__name__}.{name} is a buffer: assign a NumPy array")
            buffers[name] = value
        elif name in modules:
            if value is not None:
                raise TypeError(f"{type(self).__name__}.{name} is a sub-module: assign a Module or None")
            modules[name] = None
        object.__setattr__(self, name, value)

    def __getstate__(self) -> dict:
        # Cached activations (and the ops module they reference) are not part of the state:
        # pickling and deep-copying a model after a forward pass stay cheap and possible.
        state = self.__dict__.copy()
        state["_cache"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def __delattr__(self, name: str) -> None:
        for reg in (self._parameters, self._buffers, self._modules):
            reg.pop(name, None)
        object.__delattr__(self, name)

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Register `param` (or None, e.g. ``bias=False``) under `name`."""
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter: expected a Parameter or None, got {type(param).__name__}")
        self._buffers.pop(name, None)
        self._modules.pop(name, None)
        self._parameters[name] = param
        if param is not None and param.name is None:
            param.name = name
        object.__setattr__(self, name, param)

    def register_buffer(self, name: str, array: np.ndarray | None) -> None:
        """Register a non-trainable array saved in ``state_dict`` (e.g. BatchNorm running stats)."""
        if array is not None and not isinstance(array, np.ndarray):
            raise TypeError(f"register_buffer: expected a NumPy array or None, got {type(array).__name__}")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        self._buffers[name] = array
        object.__setattr__(self, name, array)

    def add_module(self, name: str, module: "Module | None") -> None:
        """Register a sub-module under `name`."""
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module: expected a Module, got {type(module).__name__}")
        self._parameters.pop(name, None)
        self._buffers.pop(name, None)
        self._modules[name] = module
        object.__setattr__(self, name, module)

    # -- traversal ---------------------------------------------------------------------------
    def named_children(self) -> Iterator[tuple[str, "Module"]]:
        """Direct sub-modules with their names."""
        for name, m in self._modules.items():
            if m is not None:
                yield name, m

    def children(self) -> Iterator["Module"]:
        """Direct sub-modules."""
        for _, m in self.named_children():
            yield m

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        """This module (name `prefix`, '' by default) and all its descendants, pre-order."""
        seen: set[int] = set()

        def walk(module: Module, pre: str):
            if id(module) in seen:
                return
            seen.add(id(module))
            yield pre, module
            for name, child in module.named_children():
                yield from walk(child, f"{pre}.{name}" if pre else name)

        yield from walk(self, prefix)

    def modules(self) -> Iterator["Module"]:
        """This module and all its descendants."""
        for _, m in self.named_modules():
            yield m

    def named_parameters(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, Parameter]]:
        """(dotted name, Parameter) pairs, e.g. ``("0.weight", p)``; shared ones once."""
        seen: set[int] = set()
        mods = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mod_prefix, module in mods:
            for name, p in module._parameters.items():
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), p

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        """All parameters (each once), in registration order."""
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, np.ndarray]]:
        """(dotted name, array) pairs of the buffers, e.g. ``("1.running_mean", a)``."""
        mods = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mod_prefix, module in mods:
            for name, b in module._buffers.items():
                if b is not None:
                    yield (f"{mod_prefix}.{name}" if mod_prefix else name), b

    def buffers(self, recurse: bool = True) -> Iterator[np.ndarray]:
        """All buffers."""
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def num_parameters(self) -> int:
        """Number of trainable scalars (what PyTorch and Keras report as parameters)."""
        return sum(p.data.size for p in self.parameters())

    # -- modes, gradients, dtype, backend ------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        """Training mode (batch statistics, dropout on) for this module and its descendants."""
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> "Module":
        """Evaluation mode (running statistics, dropout off); same as ``train(False)``."""
        return self.train(False)

    def zero_grad(self) -> None:
        """Set every parameter's ``grad`` to zero."""
        for p in self.parameters():
            p.zero_grad()

    def astype(self, dtype) -> "Module":
        """Convert parameters, their gradients and floating buffers to `dtype` (float32/float64),
        in place; returns self. Cached activations are dropped."""
        dt = _float_dtype(dtype, f"{type(self).__name__}.astype")
        for m in self.modules():
            for p in m._parameters.values():
                if p is not None and p.data.dtype != dt:
                    p.data = p.data.astype(dt)
                    p.grad = p.grad.astype(dt)
            for name, b in list(m._buffers.items()):
                if b is not None and b.dtype.kind == "f" and b.dtype != dt:
                    setattr(m, name, b.astype(dt))
            object.__setattr__(m, "_cache", None)
        return self

    to = astype

    @property
    def dtype(self) -> np.dtype | None:
        """dtype of the first parameter (None for a module without parameters)."""
        for p in self.parameters():
            return p.data.dtype
        return None

    def set_backend(self, name: str | None) -> "Module":
        """Run this module and all its descendants on backend `name` ("fast" / "reference"),
        whatever the global backend; None returns them to the global backend. Returns self."""
        if name is not None and name not in BACKENDS:
            raise ValueError(f"unknown backend {name!r}: expected one of {sorted(BACKENDS)} or None")
        for m in self.modules():
            object.__setattr__(m, "_backend", name)
        return self

    @property
    def backend(self) -> str | None:
        """The per-module backend override (None: the global backend)."""
        return self._backend

    def _ops(self):
        return get_backend(self._backend)

    # -- state dict --------------------------------------------------------------------------
    def _state_entries(self) -> "OrderedDict[str, tuple[Module, str, str]]":
        """name -> (owning module, local name, 'param' | 'buffer'), in PyTorch's order."""
        out: OrderedDict[str, tuple[Module, str, str]] = OrderedDict()
        for prefix, m in self.named_modules():
            pre = f"{prefix}." if prefix else ""
            for name, p in m._parameters.items():
                if p is not None:
                    out.setdefault(pre + name, (m, name, "param"))
            for name, b in m._buffers.items():
                if b is not None:
                    out.setdefault(pre + name, (m, name, "buffer"))
        return out

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Copies of all parameters and buffers under PyTorch's dotted key names."""
        sd: OrderedDict[str, np.ndarray] = OrderedDict()
        for key, (m, name, kind) in self._state_entries().items():
            arr = m._parameters[name].data if kind == "param" else m._buffers[name]
            sd[key] = arr.copy()
        return sd

    def load_state_dict(self, state_dict, strict: bool = True) -> IncompatibleKeys:
        """Copy values from `state_dict` (name -> array-like; torch tensors are accepted too)
        into the parameters and buffers, in place (optimisers keep working).

        Everything is validated before anything is changed: with ``strict`` (the default)
        missing and unexpected keys are errors; shapes must match exactly (ValueError naming
        the key and both shapes). Values are cast to the module's dtype. Returns the
        (missing_keys, unexpected_keys) lists, as PyTorch does.
        """
        if not hasattr(state_dict, "items"):
            raise TypeError(f"load_state_dict: expected a mapping, got {type(state_dict).__name__}")
        entries = self._state_entries()
        missing = [k for k in entries if k not in state_dict]
        unexpected = [k for k in state_dict if k not in entries]
        problems = []
        if strict and missing:
            problems.append(f"missing keys: {missing}")
        if strict and unexpected:
            problems.append(f"unexpected keys: {unexpected}")
        values = {}
        for key, (m, name, kind) in entries.items():
            if key not in state_dict:
                continue
            value = state_dict[key]
            if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
                value = value.detach().cpu().numpy()
            value = np.asarray(value)
            target = m._parameters[name].data if kind == "param" else m._buffers[name]
            if value.dtype.kind not in "biuf":
                problems.append(f"{key!r}: expected real numbers, got dtype {value.dtype}")
            elif value.shape != target.shape:
                problems.append(f"{key!r}: shape {value.shape} in the state dict does not match "
                                f"shape {target.shape} in the model")
            else:
                values[key] = (target, value)
        if problems:
            raise ValueError(f"{type(self).__name__}.load_state_dict: " + "; ".join(problems))
        for target, value in values.values():
            np.copyto(target, value, casting="unsafe")
        return IncompatibleKeys(missing, unexpected)

    # -- computation -------------------------------------------------------------------------
    def forward(self, x: np.ndarray) -> np.ndarray:
        """Compute the output for input `x` (and cache what backward needs)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """Given dL/dy of the last forward, accumulate parameter gradients and return dL/dx
        (None when ``input_grad`` is False and the layer can skip computing it)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Output shape for an input of `input_shape` (including the batch dimension).

        The default runs forward on zeros in eval mode, restoring the training flag; layers
        override it with the shape formula.
        """
        mode = self.training
        self.eval()
        try:
            return tuple(self.forward(np.zeros(input_shape, dtype=self.dtype or np.float32)).shape)
        finally:
            self.train(mode)
            object.__setattr__(self, "_cache", None)

    def _get_cache(self):
        cache = self._cache
        if cache is None:
            raise RuntimeError(f"{self!r}: backward called before forward")
        return cache

    def _check_grad(self, grad_y, shape, dtype) -> np.ndarray:
        grad_y = np.asarray(grad_y)
        if grad_y.shape != shape:
            raise ValueError(f"{self!r}.backward: grad_y has shape {grad_y.shape}, "
                             f"expected the output shape {shape}")
        if grad_y.dtype != dtype:
            grad_y = grad_y.astype(dtype)
        return grad_y

    # -- printing ----------------------------------------------------------------------------
    def extra_repr(self) -> str:
        """Arguments shown between the parentheses of ``repr``."""
        return ""

    def __repr__(self) -> str:
        children = list(self.named_children())
        if not children:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"{type(self).__name__}("]
        for name, child in children:
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        lines.append(")")
        return "\n".join(lines)


def _as_input(layer: Module, x, dtype: np.dtype | None) -> np.ndarray:
    """`x` as an ndarray of `dtype` (the layer's parameters' dtype) or, if None, of its own
    float32/float64 dtype (other real dtypes -> float32)."""
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise TypeError(f"{layer!r}: input must hold real numbers, got dtype {x.dtype}")
    if dtype is None:
        dtype = _input_float_dtype(x)
    if x.dtype != dtype:
        x = x.astype(dtype)
    return x


def _input_float_dtype(x) -> np.dtype:
    """float32/float64 inputs keep their precision; anything else computes in float32."""
    dt = getattr(x, "dtype", None)
    return np.dtype(np.float32) if dt is None else _args.working_dtype(dt)


def _check_4d(layer: Module, x: np.ndarray, channels: int | None = None) -> None:
    if x.ndim != 4 or (channels is not None and x.shape[1] != channels):
        c = "C" if channels is None else str(channels)
        hint = " (for a single image use x[None])" if x.ndim == 3 else ""
        raise ValueError(f"{layer!r}: expected input of shape (N, {c}, H, W), "
                         f"got {x.shape}{hint}")


def _shape_4d(layer: Module, shape, channels: int | None = None) -> tuple[int, int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4 or (channels is not None and shape[1] != channels):
        c = "C" if channels is None else str(channels)
        raise ValueError(f"{layer!r}: expected input of shape (N, {c}, H, W), got {shape}")
    return shape  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Convolution and pooling (run on the backend's ops)
# --------------------------------------------------------------------------------------------

def _positive_int(value, name: str, layer: str) -> int:
    if (not isinstance(value, (numbers.Integral, np.integer)) or isinstance(value, bool)
            or value <= 0):
        raise ValueError(f"{layer}: {name} must be a positive int, got {value!r}")
    return int(value)


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
        x, w, b = self._inputs(x)
        ops = self._ops()
        y = ops.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)
        self._cache = (ops, x, y.shape)
        return y

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        ops, x, y_shape = self._get_cache()
        w = self.weight.data
        grad_y = self._check_grad(grad_y, y_shape, w.dtype)
        has_bias = self.bias is not None
        gx, gw, gb = ops.conv2d_backward(grad_y, x, w, self.stride, self.padding, self.dilation,
                                         self.groups, output_mask=(bool(input_grad), True, has_bias))
        self.weight.accumulate_grad(gw)
        if has_bias:
            self.bias.accumulate_grad(gb)
        return gx

    def _forward_max_pool(self, pool: "MaxPool2d", x: np.ndarray, relu: bool,
                          ops) -> np.ndarray:
        """This layer's forward and then `pool`'s (relu: with a ReLU between them, fused into
        the pooling), as one op (conv2d_max_pool2d of `ops`, both layers' backend); both
        layers keep what their backward needs, as if run one after the other."""
        x, w, b = self._inputs(x)
        y_shape = _args.conv2d_geometry(x.shape, w.shape, self.stride, self.padding,
                                        self.dilation, self.groups, op=repr(self)).output_shape
        pooled, idx = ops.conv2d_max_pool2d(
            x, w, b, self.stride, self.padding, self.dilation, self.groups,
            kernel_size=pool.kernel_size, pool_stride=pool.stride, pool_padding=pool.padding,
            pool_dilation=pool.dilation, ceil_mode=pool.ceil_mode, relu=relu)
        self._cache = (ops, x, y_shape)
        pool._cache = (ops, idx, y_shape, pooled, relu)
        return pooled

    def _backward_through_max_pool(self, pool: "MaxPool2d", grad_pooled: np.ndarray) -> None:
        """Backward of this layer and the max pooling run after it (with a ReLU fused into the
        pooling, see Sequential), without this layer's input gradient: the first layer of a
        network. Accumulates the weight and bias gradients as backward would."""
        ops, x, y_shape = self._get_cache()
        _, idx, pooled_shape, y, relu = pool._get_cache()
        if tuple(pooled_shape) != tuple(y_shape):
            raise ValueError(f"{self!r}: the pooling after it saw input {pooled_shape}, not this "
                             f"layer's output {y_shape}")
        w = self.weight.data
        grad_pooled = pool._check_grad(grad_pooled, y.shape, y.dtype)
        has_bias = self.bias is not None
        gw, gb = ops.conv2d_backward_through_max_pool(
            grad_pooled, idx, x, w, self.stride, self.padding, self.dilation, self.groups,
            relu_output=y if relu else None, output_mask=(True, has_bias))
        self.weight.accumulate_grad(gw)
        if has_bias:
            self.bias.accumulate_grad(gb)

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
        self.ceil_mode = bool(ceil_mode)

    def output_shape(self, input_shape):
        shape = _shape_4d(self, input_shape)
        geom = _args.pool2d_geometry(shape, self.kernel_size, self.stride, self.padding,
                                     self.dilation, self.ceil_mode, op=repr(self))
        return geom.output_shape

    def _receptive(self, input_shape):
        return self.kernel_size, self.stride, self.dilation, self.padding


class MaxPool2d(_Pool2d):
    """Max pooling over (N, C, H, W); stride defaults to kernel_size; padding pads with -inf.

    Backward routes each output gradient to the arg-max position (indices from the forward).
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False) -> None:
        super().__init__()
        self._init_geometry("MaxPool2d", kernel_size, stride, padding, ceil_mode)
        self.dilation = _args.positive_pair(dilation, "dilation", "MaxPool2d")

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self._forward(x)

    def _forward(self, x: np.ndarray, relu: bool = False) -> np.ndarray:
        """forward; relu=True returns relu(pool(x)) (a ReLU before or after this layer), and
        backward then takes the gradient of that output."""
        x = _as_input(self, x, None)
        _check_4d(self, x)
        ops = self._ops()
        y, idx = ops.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation,
                                self.ceil_mode, return_indices=True, relu=relu)
        self._cache = (ops, idx, x.shape, y, relu)
        return y

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray:
        ops, idx, x_shape, y, relu = self._get_cache()
        grad_y = self._check_grad(grad_y, y.shape, y.dtype)
        return ops.max_pool2d_backward(grad_y, idx, x_shape, relu_output=y if relu else None)

    def extra_repr(self) -> str:
        s = f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.ceil_mode:
            s += ", ceil_mode=True"
        return s


class AvgPool2d(_Pool2d):
    """Average pooling over (N, C, H, W); stride defaults to kernel_size.

    count_include_pad: divide by the full window size (True) or by the number of input pixels
    in the window (False).
    """

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
                 count_include_pad: bool = True) -> None:
        super().__init__()
        self._init_geometry("AvgPool2d", kernel_size, stride, padding, ceil_mode)
        self.count_include_pad = bool(count_include_pad)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _as_input(self, x, None)
        _check_4d(self, x)
        ops = self._ops()
        y = ops.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                           self.count_include_pad)
        self._cache = (ops, x.shape, y.shape, y.dtype)
        return y

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray:
        ops, x_shape, y_shape, dtype = self._get_cache()
        grad_y = self._check_grad(grad_y, y_shape, dtype)
        return ops.avg_pool2d_backward(grad_y, x_shape, self.kernel_size, self.stride, self.padding,
                                       self.ceil_mode, self.count_include_pad)

    def extra_repr(self) -> str:
        s = f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
        if self.ceil_mode:
            s += ", ceil_mode=True"
        if not self.count_include_pad:
            s += ", count_include_pad=False"
        return s


# --------------------------------------------------------------------------------------------
# Dense layers and reshaping
# --------------------------------------------------------------------------------------------

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
        y = ops.linear(x, w, None if self.bias is None else self.bias.data)
        self._cache = (ops, x, y.shape)
        return y

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        ops, x, y_shape = self._get_cache()
        w = self.weight.data
        grad_y = self._check_grad(grad_y, y_shape, w.dtype)
        has_bias = self.bias is not None
        gx, gw, gb = ops.linear_backward(grad_y, x, w,
                                         output_mask=(bool(input_grad), True, has_bias))
        self.weight.accumulate_grad(gw)
        if has_bias:
            self.bias.accumulate_grad(gb)
        return gx

    def output_shape(self, input_shape):
        self._check(input_shape)
        return tuple(input_shape[:-1]) + (self.out_features,)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class Flatten(Module):
    """Flatten axes start_dim..end_dim into one: (N, C, H, W) -> (N, C*H*W) by default.
    A view when the input is contiguous."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim = int(start_dim)
        self.end_dim = int(end_dim)

    def _out(self, shape) -> tuple[int, ...]:
        nd = len(shape)
        if nd == 0:
            return (1,)
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


class Identity(Module):
    """y = x."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _as_input(self, x, None)
        self._cache = (x.shape,)
        return x

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray:
        self._get_cache()
        return grad_y

    def output_shape(self, input_shape):
        return tuple(input_shape)


# --------------------------------------------------------------------------------------------
# Activations (element-wise; output shape = input shape)
# --------------------------------------------------------------------------------------------

class _Elementwise(Module):
    def output_shape(self, input_shape):
        return tuple(input_shape)

    def _grad(self, grad_y, ref: np.ndarray) -> np.ndarray:
        return self._check_grad(grad_y, ref.shape, ref.dtype)


class ReLU(_Elementwise):
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


class LeakyReLU(_Elementwise):
    """x if x > 0 else negative_slope * x."""

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
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


class Dropout(_Elementwise):
    """Inverted dropout: in training, each element is zeroed with probability p and the others
    are scaled by 1/(1-p), so eval mode (the identity) needs no rescaling.

    The (scaled) mask of the last forward is ``self.mask``. ``freeze_mask()`` keeps reusing it
    (or a given mask) in later forwards, for gradient checks; ``unfreeze_mask()`` undoes that.
    """

    def __init__(self, p: float = 0.5, rng=None) -> None:
        super().__init__()
        p = float(p)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: probability has to be between 0 and 1, got {p}")
        self.p = p
        self.rng = _init.as_generator(rng)
        self.mask: np.ndarray | None = None
        self.frozen = False

    def freeze_mask(self, mask: np.ndarray | None = None) -> None:
        """Reuse a fixed mask in every training forward: `mask` (a boolean keep-mask, or already
        scaled values) or, if None, the mask of the last forward (or of the next one)."""
        if mask is not None:
            mask = np.asarray(mask)
            if mask.dtype == np.bool_:
                scale = 0.0 if self.p >= 1.0 else 1.0 / (1.0 - self.p)
                mask = mask * scale
            self.mask = mask
        self.frozen = True

    def unfreeze_mask(self) -> None:
        """Draw a new mask at every forward again."""
        self.frozen = False

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _as_input(self, x, None)
        if not self.training or self.p == 0.0:
            self._cache = (None, x.shape, x.dtype)
            return x
        dt = x.dtype
        mask = self.mask
        if self.frozen and mask is not None:
            if mask.shape != x.shape:
                raise ValueError(f"{self!r}: frozen mask has shape {mask.shape} but the input has "
                                 f"shape {x.shape}")
            if mask.dtype != dt:
                mask = mask.astype(dt)
        elif self.p >= 1.0:
            mask = np.zeros(x.shape, dt)
        else:
            mask = (self.rng.random(x.shape, dtype=np.float32) >= np.float32(self.p)).astype(dt)
            mask *= dt.type(1.0 / (1.0 - self.p))
        self.mask = mask
        self._cache = (mask, x.shape, dt)
        return x * mask

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray:
        mask, shape, dt = self._get_cache()
        grad_y = self._check_grad(grad_y, shape, dt)
        return grad_y if mask is None else grad_y * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------

class _BatchNorm(Module):
    """Shared code of BatchNorm1d and BatchNorm2d: statistics per channel (axis 1) over all other
    axes. Training: batch mean and biased variance normalise; running_mean / running_var are
    updated with `momentum` (running = (1 - momentum) running + momentum batch; the variance
    term uses the unbiased batch variance, as PyTorch). momentum=None: cumulative average.
    Eval: the running statistics normalise. y = (x - mean) / sqrt(var + eps) * weight + bias.
    """

    _ndims: tuple[int, ...] = ()
    _layout = ""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, dtype=np.float32) -> None:
        super().__init__()
        name = type(self).__name__
        self.num_features = _positive_int(num_features, "num_features", name)
        self.eps = float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        dt = _float_dtype(dtype, name)
        if self.affine:
            self.weight = Parameter(np.ones(num_features, dt))
            self.bias = Parameter(np.zeros(num_features, dt))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if self.track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, dt))
            self.register_buffer("running_var", np.ones(num_features, dt))
            self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        """running_mean = 0, running_var = 1, num_batches_tracked = 0."""
        if self.track_running_stats:
            self.running_mean.fill(0)
            self.running_var.fill(1)
            self.num_batches_tracked.fill(0)

    def _param_dtype(self, x) -> np.dtype:
        if self.weight is not None:
            return self.weight.data.dtype
        if self.running_mean is not None:
            return self.running_mean.dtype
        return _input_float_dtype(x)

    def _check_shape(self, shape) -> None:
        if len(shape) not in self._ndims or shape[1] != self.num_features:
            raise ValueError(f"{self!r}: expected input of shape {self._layout.format(C=self.num_features)}, "
                             f"got {tuple(shape)}")

    def _uses_batch_stats(self) -> bool:
        return self.training or not self.track_running_stats

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self._forward(x, relu=False)

    def _forward(self, x: np.ndarray, relu: bool) -> np.ndarray:
        # relu=True (batch statistics only): relu(batch_norm(x)) in one pass, for Sequential's
        # BatchNorm -> ReLU pairs; backward then applies the ReLU's gradient itself.
        dt = self._param_dtype(x)
        x = _as_input(self, x, dt)
        self._check_shape(x.shape)
        N, C = x.shape[0], x.shape[1]
        x3 = x.reshape(N, C, math.prod(x.shape[2:]))
        m = x3.shape[0] * x3.shape[2]
        use_batch = self._uses_batch_stats()
        if relu and not use_batch:
            raise RuntimeError(f"{self!r}: a fused ReLU needs batch statistics")
        if x.size == 0:  # an empty batch: an empty output, the statistics kept (as PyTorch)
            if self.training and self.track_running_stats:
                self.num_batches_tracked += 1
            self._cache = (None, x3, None, np.ones(C, dt), x.shape, None)
            return x.copy()
        if use_batch:
            if m <= 1 and self.training:
                raise ValueError(f"{self!r}: expected more than 1 value per channel when training, "
                                 f"got input of shape {x.shape}")
            ops = self._ops()
            w = self.weight.data if self.affine else None
            b = self.bias.data if self.affine else None
            y, mean, invstd, var = ops.batch_norm_train(x3, w, b, self.eps, relu=relu)
            if self.training and self.track_running_stats:
                self.num_batches_tracked += 1
                if self.momentum is None:
                    factor = 1.0 / float(self.num_batches_tracked)
                else:
                    factor = self.momentum
                unbiased = var * dt.type(m / (m - 1)) if m > 1 else var
                self.running_mean *= dt.type(1.0 - factor)
                self.running_mean += dt.type(factor) * mean
                self.running_var *= dt.type(1.0 - factor)
                self.running_var += dt.type(factor) * unbiased
            self._cache = (ops, x3, mean, invstd, x.shape, y if relu else None)
        else:
            invstd = 1.0 / np.sqrt(self.running_var + dt.type(self.eps))
            scale = invstd * self.weight.data if self.affine else invstd
            shift = -self.running_mean * scale
            if self.affine:
                shift += self.bias.data
            y = x3 * scale[:, None]
            y += shift[:, None]
            self._cache = (None, x3, None, invstd, x.shape, None)
        return y.reshape(x.shape)

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray:
        ops, x3, mean, invstd, shape, relu_y = self._get_cache()
        dt = invstd.dtype
        g = self._check_grad(grad_y, shape, dt)
        if x3.size == 0:  # an empty batch: nothing to add to the parameters' gradients
            return np.zeros(shape, dt) if input_grad else None
        if ops is not None:  # batch statistics
            w = self.weight.data if self.affine else None
            dx, gw, gb = ops.batch_norm_train_backward(g.reshape(x3.shape), x3, mean, invstd, w,
                                                       input_grad=input_grad,
                                                       relu_output=relu_y)
            if self.affine:
                self.weight.grad += gw
                self.bias.grad += gb
            return None if dx is None else dx.reshape(shape)
        # running statistics: an affine map per channel
        g3 = g.reshape(x3.shape)
        k = invstd * self.weight.data if self.affine else invstd
        if self.affine:
            xhat = x3 - self.running_mean[:, None]
            xhat *= invstd[:, None]
            self.weight.grad += _channel_dot(g3, xhat)
            self.bias.grad += _channel_sum(g3)
        return (g3 * k[:, None]).reshape(shape)

    def output_shape(self, input_shape):
        self._check_shape(tuple(input_shape))
        return tuple(input_shape)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) per channel C (statistics over N, H, W)."""

    _ndims = (4,)
    _layout = "(N, {C}, H, W)"


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) or (N, C, L) per channel C (statistics over N and L)."""

    _ndims = (2, 3)
    _layout = "(N, {C}) or (N, {C}, L)"


class LayerNorm(Module):
    """Normalise over the last len(normalized_shape) axes of each sample (biased variance):
    y = (x - mean) / sqrt(var + eps) * weight + bias, weight/bias of shape normalized_shape.
    Same in training and eval."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, dtype=np.float32) -> None:
        super().__init__()
        if isinstance(normalized_shape, (numbers.Integral, np.integer)):
            normalized_shape = (int(normalized_shape),)
        self.normalized_shape = tuple(_positive_int(s, "normalized_shape", "LayerNorm")
                                      for s in normalized_shape)
        self.eps = float(eps)
        self.elementwise_affine = bool(elementwise_affine)
        dt = _float_dtype(dtype, "LayerNorm")
        if self.elementwise_affine:
            self.weight = Parameter(np.ones(self.normalized_shape, dt))
            if bias:
                self.bias = Parameter(np.zeros(self.normalized_shape, dt))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def _check_shape(self, shape) -> None:
        k = len(self.normalized_shape)
        if len(shape) < k or tuple(shape[len(shape) - k:]) != self.normalized_shape:
            raise ValueError(f"{self!r}: expected input of shape (*, {', '.join(map(str, self.normalized_shape))}), "
                             f"got {tuple(shape)}")

    def forward(self, x: np.ndarray) -> np.ndarray:
        dt = self.weight.data.dtype if self.weight is not None else _input_float_dtype(x)
        x = _as_input(self, x, dt)
        self._check_shape(x.shape)
        K = math.prod(self.normalized_shape)
        x2 = x.reshape(-1, K)
        mean = x2.mean(axis=1)
        xhat = x2 - mean[:, None]
        var = _rowdot(xhat, xhat) / dt.type(K)
        invstd = 1.0 / np.sqrt(var + dt.type(self.eps))
        xhat *= invstd[:, None]
        if self.weight is not None:
            y = xhat * self.weight.data.reshape(-1)
            if self.bias is not None:
                y += self.bias.data.reshape(-1)
        else:
            y = xhat.copy()
        self._cache = (xhat, invstd, x.shape)
        return y.reshape(x.shape)

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray:
        xhat, invstd, shape = self._get_cache()
        K = xhat.shape[1]
        g2 = self._check_grad(grad_y, shape, xhat.dtype).reshape(-1, K)
        if self.weight is not None:
            self.weight.grad += (g2 * xhat).sum(axis=0).reshape(self.normalized_shape)
            if self.bias is not None:
                self.bias.grad += g2.sum(axis=0).reshape(self.normalized_shape)
            dxhat = g2 * self.weight.data.reshape(-1)
        else:
            dxhat = g2
        # dx = invstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)), means over the K axis
        c1 = dxhat.mean(axis=1)
        c2 = _rowdot(dxhat, xhat) / xhat.dtype.type(K)
        dx = xhat * c2[:, None]
        np.subtract(dxhat, dx, out=dx)
        dx -= c1[:, None]
        dx *= invstd[:, None]
        return dx.reshape(shape)

    def output_shape(self, input_shape):
        self._check_shape(tuple(input_shape))
        return tuple(input_shape)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")


# --------------------------------------------------------------------------------------------
# Containers and summary
# --------------------------------------------------------------------------------------------

@dataclass
class ModelSummary:
    """Result of :meth:`Sequential.summary`: ``rows`` (one dict per layer: name, layer,
    output_shape, params, rf_size, rf_jump), parameter totals and the formatted ``text``
    (``str(summary)``)."""

    rows: list[dict] = field(default_factory=list)
    input_shape: tuple = ()
    total_params: int = 0
    trainable_params: int = 0
    buffer_elements: int = 0
    text: str = ""

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return (f"ModelSummary(layers={len(self.rows)}, total_params={self.total_params:,}, "
                f"output_shape={self.rows[-1]['output_shape'] if self.rows else None})")


def _fmt_shape(shape, batch) -> str:
    shape = tuple(shape)
    return "(" + ", ".join(["None" if batch is None else str(shape[0])] + [str(s) for s in shape[1:]]) + \
           ("," if len(shape) == 1 else "") + ")"


def _all_modules(module: Module) -> Iterator[Module]:
    """`module` and every module below it, repeats included (named_modules skips them)."""
    yield module
    for child in module._modules.values():
        if child is not None:
            yield from _all_modules(child)


class Sequential(Module):
    """Layers applied in order; sub-modules are named "0", "1", ... (PyTorch's keys).

    ``model[i]`` is a layer, ``model[a:b]`` a Sequential of those layers, ``len(model)`` and
    ``iter(model)`` work as on a list. backward runs the layers' backward in reverse order.

    Each layer keeps what its last forward saw for its backward, so one layer object cannot
    run twice in a model. A layer without parameters or buffers given again (``act =
    nn.ReLU()`` used after every conv, as often written for PyTorch) gets its own copy in
    each later place; a layer with them raises ValueError (to share weights, make a second
    layer and assign it the first one's Parameter: ``b.weight = a.weight``).
    """

    def __init__(self, *layers) -> None:
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], OrderedDict):
            for name, layer in layers[0].items():
                self.add_module(str(name), self._unshared(layer, repr(str(name))))
        else:
            for i, layer in enumerate(layers):
                if not isinstance(layer, Module):
                    raise TypeError(f"Sequential: argument {i} is not a Module: {layer!r}")
                self.add_module(str(i), self._unshared(layer, str(i)))

    def _unshared(self, layer, where: str):
        """`layer`, or a copy of it if it is already in this model (see the class docstring)."""
        if not isinstance(layer, Module):
            return layer
        present = {id(m) for m in _all_modules(self)}
        repeated = [m for m in _all_modules(layer) if id(m) in present]
        if not repeated:
            return layer
        if repeated == [layer] and not layer._parameters and not layer._buffers \
                and not layer._modules:
            twin = copy.copy(layer)  # (__getstate__ leaves the cached forward behind)
            for registry in ("_parameters", "_buffers", "_modules"):
                object.__setattr__(twin, registry, OrderedDict())
            return twin
        raise ValueError(
            f"Sequential: layer {where} ({repeated[0]!r}) is already in this model. A layer "
            f"keeps its last forward's values for backward, so one layer object cannot run "
            f"twice: make another layer; to share weights, assign the first one's Parameter "
            f"to it (b.weight = a.weight)")

    def append(self, layer: Module) -> "Sequential":
        """Add `layer` at the end (named by its position); it inherits this model's backend
        override. A layer already in the model is copied or refused, as in the constructor."""
        if not isinstance(layer, Module):
            raise TypeError(f"Sequential.append: expected a Module, got {type(layer).__name__}")
        layer = self._unshared(layer, str(len(self)))
        self.add_module(str(len(self)), layer)
        self._cache = None
        if self._backend is not None:
            layer.set_backend(self._backend)
        layer.train(self.training)
        return self

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __getitem__(self, idx):
        layers = list(self._modules.values())
        if isinstance(idx, slice):
            seq = Sequential(OrderedDict(list(self._modules.items())[idx]))
            object.__setattr__(seq, "training", self.training)
            object.__setattr__(seq, "_backend", self._backend)
            return seq
        try:
            return layers[idx]
        except IndexError:
            raise IndexError(f"Sequential index {idx} out of range for {len(layers)} layers") from None

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Run the layers in order. These runs of layers are fused, with the same results:

        * Conv2d -> (ReLU ->) MaxPool2d: one op, conv2d_max_pool2d; for RGB first layers and
          Winograd layers the conv output is never stored whole (each image's planes pooled
          in cache).
        * BatchNorm (batch statistics) -> ReLU: one pass computes relu(batch_norm(x)), and its
          backward applies the ReLU's gradient in the batch norm's own passes.
        * ReLU -> MaxPool2d: one pass computes relu(max_pool(x)), the ReLU on 1/k^2 of the
          data, and the pooling's backward applies the ReLU's gradient in its scatter. max is
          monotone, so relu(max(window)) == max(relu(window)); where the gradient is nonzero
          (window max > 0) both orders pick the same arg-max, and elsewhere both give 0.
        """
        layers = list(self._modules.values())
        names = list(self._modules)
        order: list[int] = []  # layer indices in the order run; backward runs it reversed
        i = 0
        while i < len(layers):
            layer = layers[i]
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            at = i
            after = layers[i + 2] if i + 2 < len(layers) else None
            try:
                relu = type(nxt) is ReLU
                pool = after if relu else nxt
                ops = layer._ops() if type(layer) is Conv2d and type(pool) is MaxPool2d else None
                if ops is not None and pool._ops() is ops:  # (one backend for both)
                    x = layer._forward_max_pool(pool, x, relu, ops)
                    if relu:
                        nxt._cache = (nxt._ops(), x)  # as if run alone, as below
                    order += [i, i + 2 if relu else i + 1]
                    i += 3 if relu else 2
                elif (type(nxt) is ReLU and isinstance(layer, _BatchNorm)
                        and layer._uses_batch_stats()):
                    x = layer._forward(x, relu=True)
                    nxt._cache = (layer._ops(), x)  # as if run alone: its backward still works
                    order.append(i)
                    i += 2
                elif type(layer) is ReLU and type(nxt) is MaxPool2d:
                    at = i + 1
                    x = nxt._forward(x, relu=True)
                    layer._cache = (layer._ops(), x)  # as if run alone, as above
                    order.append(i + 1)
                    i += 2
                else:
                    x = layer.forward(x)
                    order.append(i)
                    i += 1
            except (ValueError, TypeError) as exc:
                _reraise_with_context(exc, f"layer {names[at]} of Sequential")
        self._cache = order
        return x

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """Backpropagate through all layers and return dL/dx. ``input_grad=False`` lets the first
        layer skip computing dL/dx (Conv2d and Linear then return None), which saves the
        input-gradient convolution of the first layer in training."""
        layers = list(self._modules.items())
        # The order of the last forward (fused pairs); plain reverse order when the layers were
        # run one by one.
        order = self._cache if self._cache is not None else list(range(len(layers)))
        # A first Conv2d whose output went (through a ReLU) into a MaxPool2d, with no input
        # gradient wanted: both backward in one op, the conv output's gradient never stored
        # whole (see conv2d_backward_through_max_pool).
        through_pool = (not input_grad and self._cache is not None and len(order) >= 2
                        and type(layers[order[0]][1]) is Conv2d
                        and type(layers[order[1]][1]) is MaxPool2d
                        and all(type(layers[j][1]) is ReLU for j in range(1, order[1])))
        g = grad_y
        for k, i in enumerate(reversed(order)):
            name, layer = layers[i]
            try:
                if through_pool and k == len(order) - 2:
                    layers[order[0]][1]._backward_through_max_pool(layer, g)
                    return None
                if k == len(order) - 1 and not input_grad:
                    g = layer.backward(g, input_grad=False)
                else:
                    g = layer.backward(g)
            except (ValueError, TypeError) as exc:
                _reraise_with_context(exc, f"layer {name} of Sequential (backward)")
        return g

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        for layer in self:
            shape = tuple(layer.output_shape(shape))
        return shape

    def _summary_rows(self, shape, rf, prefix, rows):
        for name, layer in self.named_children():
            full = f"{prefix}{name}"
            if isinstance(layer, Sequential):
                shape, rf = layer._summary_rows(shape, rf, f"{full}.", rows)
                continue
            try:
                out = tuple(layer.output_shape(shape))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"summary: layer {full} ({layer!r}) cannot take input of shape "
                                 f"{shape}: {exc}") from exc
            rf_size = rf_jump = None
            receptive = getattr(layer, "_receptive", None)
            if receptive is not None and rf is not None:
                kernel, stride, dilation, _ = receptive(shape)
                rf = tuple((r + (d * (k - 1)) * j, j * s)
                           for (r, j), k, s, d in zip(rf, kernel, stride, dilation))
                rf_size = tuple(r for r, _ in rf)
                rf_jump = tuple(j for _, j in rf)
            elif isinstance(layer, (Flatten, Linear)) or len(out) != len(shape):
                rf = None
            rows.append(dict(name=full, layer=layer, type=type(layer).__name__,
                             output_shape=out, params=layer.num_parameters(),
                             rf_size=rf_size, rf_jump=rf_jump))
            shape = out
        return shape, rf

    def summary(self, input_shape, print_fn: Callable[[str], None] | None = print) -> ModelSummary:
        """Keras-like table of the layers: name and type, output shape, parameter count and, for
        each convolution/pooling output, its receptive field (size and jump/stride, in input
        pixels). Printed with `print_fn` (None: not printed); returns a :class:`ModelSummary`.

        input_shape: the shape of one sample, e.g. (3, 32, 32) (the batch axis shows as None);
        a 4-tuple is taken as a whole batch (N, C, H, W).

        Receptive field recurrence (per axis, starting at r = j = 1 on the input):
            r_out = r_in + d (k - 1) j_in,   j_out = j_in s
        """
        input_shape = tuple(int(s) for s in input_shape)
        if len(input_shape) == 4:
            batch, shape = input_shape[0], input_shape
        else:
            batch, shape = None, (1,) + input_shape
        rf = ((1, 1), (1, 1)) if len(shape) == 4 else None
        rows: list[dict] = []
        self._summary_rows(shape, rf, "", rows)
        total = self.num_parameters()
        buffers = sum(b.size for name, b in self.named_buffers() if not name.endswith("num_batches_tracked"))
        head = ("Layer (type)", "Output Shape", "Param #", "Receptive field (jump)")
        table = []
        for r in rows:
            rf_text = ""
            if r["rf_size"] is not None:
                (rh, rw), (jh, jw) = r["rf_size"], r["rf_jump"]
                rf_text = f"{rh}x{rw} ({jh})" if jh == jw else f"{rh}x{rw} ({jh}x{jw})"
            table.append((f"{r['name']} {r['type']}", _fmt_shape(r["output_shape"], batch),
                          f"{r['params']:,}", rf_text))
        widths = [max(len(h), *(len(t[i]) for t in table)) if table else len(h) for i, h in enumerate(head)]

        def line(cells):
            return "  ".join([cells[0].ljust(widths[0]), cells[1].ljust(widths[1]),
                              cells[2].rjust(widths[2]), cells[3].ljust(widths[3])]).rstrip()

        width = sum(widths) + 6
        lines = [f"Model: {type(self).__name__}, input {_fmt_shape(shape, batch)}", "=" * width,
                 line(head), "=" * width]
        lines += [line(t) for t in table]
        lines += ["=" * width,
                  f"Total params: {total:,}",
                  f"Trainable params: {total:,}",
                  f"Non-trainable buffers (running statistics): {buffers:,}",
                  "Receptive field: size in input pixels (jump = distance in input pixels between "
                  "neighbouring outputs)"]
        text = "\n".join(lines)
        for r in rows:
            r["output_shape"] = (batch,) + tuple(r["output_shape"][1:])
        summary = ModelSummary(rows=rows, input_shape=(batch,) + tuple(shape[1:]),
                               total_params=total, trainable_params=total,
                               buffer_elements=buffers, text=text)
        if print_fn is not None:
            print_fn(text)
        return summary
