"""The base of every layer: :class:`Parameter` (an array and its gradient) and :class:`Module`
(registration of parameters, buffers and sub-modules; traversal; modes; dtype; backend; state
dicts under PyTorch's dotted keys), plus the input checks the layers share."""

from __future__ import annotations

import copy
import functools
import inspect
import numbers
import threading
import warnings
from collections import OrderedDict, namedtuple
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from .. import _args
from ..backend import BACKENDS, get_backend
from ..precision import _normalize as _normalize_precision
from ..precision import resolve_precision as _resolve_precision

if TYPE_CHECKING:
    from .summary import ModelSummary


IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _float_dtype(dtype, where: str) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:  # NumPy's "data type 'cuda' not understood", from model.to("cuda")
        device = isinstance(dtype, str) and dtype.split(":")[0] in ("cpu", "cuda", "mps", "xpu")
        hint = (" (a PyTorch device? fastconv runs on the CPU, with NumPy arrays: leave the "
                "call out)" if device else "")
        raise TypeError(f"{where}: dtype must be float32 or float64, got {dtype!r}{hint}") \
            from None
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


def _is_flag(value) -> bool:
    """True/False, NumPy's bools, 0 or 1 (what _args.flag takes)."""
    return isinstance(value, (bool, np.bool_)) or (
        isinstance(value, (numbers.Integral, np.integer)) and value in (0, 1))


class Parameter:
    """A trainable array: ``data`` (the values) and ``grad`` (same shape and dtype, starts at 0).

    Layers accumulate into ``grad`` in backward; optimisers update ``data`` in place.
    ``name`` is the attribute name in the owning layer (``"weight"``, ``"bias"``); full dotted
    names come from :meth:`Module.named_parameters`.

    ``requires_grad`` (True by default, as in PyTorch): False freezes the parameter. Layers then
    ask the kernels for no gradient of it (its ``grad`` stays as it is, zero after
    ``zero_grad``), and every optimiser leaves it, and its state, alone. It is not part of
    ``state_dict`` (as in PyTorch): set it again after loading a checkpoint into a new model.
    """

    __slots__ = ("data", "_grad", "_grad_zero_pending", "name", "_requires_grad")

    def __init__(self, data, name: str | None = None, requires_grad: bool = True) -> None:
        data = np.asarray(data)
        if data.dtype.kind != "f":
            data = data.astype(np.float32)
        self.data: np.ndarray = data
        self.requires_grad = requires_grad
        self._grad: np.ndarray = np.zeros_like(data)
        # zero_grad only marks the gradient as zero: the first accumulation then takes the new
        # gradient as it is, instead of writing zeros and adding onto them (two passes over
        # memory that cost ~8% of a simple_cnn step, whose Linear weight is 9.4 MB).
        self._grad_zero_pending = False
        self.name = name

    @property
    def requires_grad(self) -> bool:
        """Whether the parameter is trained (see the class docstring)."""
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value) -> None:
        if not _is_flag(value):  # (bool("False") is True: the parameter stayed trainable)
            raise TypeError(f"Parameter: requires_grad must be True or False, got {value!r}")
        self._requires_grad = bool(value)

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

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """``data`` to NumPy (``np.asarray(p)``, ``np.mean(p)``, ...), with NumPy 2's
        ``__array__`` protocol: ``copy=None`` copies only to convert the dtype (otherwise
        the result shares ``data``'s memory, as ``np.asarray`` of an array does), ``copy=True``
        always copies, ``copy=False`` never (ValueError when `dtype` needs a conversion)."""
        data = self.data
        if dtype is None or np.dtype(dtype) == data.dtype:
            return data.copy() if copy else data
        if copy is False:
            raise ValueError(f"Parameter: cannot give the {data.dtype} values as {np.dtype(dtype)} "
                             f"without a copy (copy=False)")
        return data.astype(dtype)

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
        frozen = "" if self.requires_grad else ", requires_grad=False"
        return f"Parameter({name}shape={self.data.shape}, dtype={self.data.dtype}{frozen})"


# Bumped by every change a container's cached fusion plan (see fusion.py) depends on: the
# module tree, training/eval modes, backends, the planner's on/off switch. A plan is rebuilt
# when the number differs from the one it was built at: one integer compare per forward.
_plan_epoch = [0]


def _invalidate_plans() -> None:
    _plan_epoch[0] += 1


def _reraise_in_child(exc: Exception, name: str, container: "Module", backward: bool = False):
    """Raise a copy of `exc` (same type) from `container`'s child `name`, whose message says
    where in the tree it happened: ``layer <path> of <Container>[ (backward)]: <message>``.
    Each enclosing container re-raises it with its own child's name in front of the path
    (``layer 1.body.0 of Sequential: ...``), keeping the innermost message. An error about a
    container's branches (:func:`_branch_error`) names each branch by its path."""
    below = getattr(exc, "_fastconv_path", "")
    path = f"{name}.{below}" if below else name
    template = getattr(exc, "_fastconv_template", None)
    if template is not None:
        detail = _branch_message(exc, path)
    else:
        detail = getattr(exc, "_fastconv_detail", None) or str(exc)
    try:
        new = type(exc)(f"layer {path} of {type(container).__name__}"
                        f"{' (backward)' if backward else ''}: {detail}")
    except Exception:
        raise exc
    origin = getattr(exc, "_fastconv_origin", exc)
    new._fastconv_path = path
    new._fastconv_detail = detail if template is None else None
    new._fastconv_template = template
    new._fastconv_origin = origin
    raise new from origin


def _branch_error(container: "Module", template: str, **fields) -> ValueError:
    """A ValueError about `container`'s branches. `template` names a branch as ``{at}body``:
    ``body`` here, ``3.body`` once re-raised by a Sequential holding the container as layer 3
    (see :func:`_reraise_in_child`); `fields` fill its other placeholders."""
    template = f"{type(container).__name__}: {template}"
    exc = ValueError(template.format(at="", **fields))
    exc._fastconv_template = (template, fields)
    return exc


def _branch_message(exc: Exception, path: str) -> str:
    """The message of `exc`, its branches named from the container at `path` ('' for the
    top) if it is a :func:`_branch_error`."""
    template = getattr(exc, "_fastconv_template", None)
    if template is None:
        return str(exc)
    return template[0].format(at=f"{path}." if path else "", **template[1])


class Module:
    """Base class of all layers and models (``torch.nn.Module``'s explicit-backward cousin).

    Subclasses call ``super().__init__()`` first, then assign :class:`Parameter` objects,
    sub-modules and buffers (``register_buffer``) as attributes; these are registered in
    assignment order, which fixes the order of ``parameters()`` and of ``state_dict()`` keys.
    Subclasses implement ``forward(x)`` and ``backward(grad_y, input_grad=True)``.
    """

    training: bool
    # buffers a state dict may lack (load_state_dict keeps their values): see _BatchNorm
    _kept_when_missing: tuple[str, ...] = ()

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_backend", None)
        object.__setattr__(self, "_precision", None)
        object.__setattr__(self, "_cache", None)
        # the last forward's unbatched output shape, or None (see _accepts_unbatched)
        object.__setattr__(self, "_unbatched", None)

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
            _invalidate_plans()
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
            _invalidate_plans()
        object.__setattr__(self, name, value)

    def __getstate__(self) -> dict:
        # Cached activations (and the ops module they reference) are not part of the state:
        # pickling and deep-copying a model after a forward pass stay cheap and possible. A
        # container's fusion plan (see fusion.py) is rebuilt on the next forward.
        # Post-backward hooks belong to the objects that registered them (a distributed
        # wrapper, say), not to the model: a copy has none.
        state = self.__dict__.copy()
        state["_cache"] = None
        state["_unbatched"] = None
        if "_plan" in state:
            state["_plan"] = None
        state.pop("_post_backward_hooks", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def __delattr__(self, name: str) -> None:
        if name in self._modules:
            _invalidate_plans()
        for reg in (self._parameters, self._buffers, self._modules):
            reg.pop(name, None)
        object.__delattr__(self, name)

    def _check_name(self, name, kind: str, registry: dict, op: str) -> None:
        """As torch.nn.Module: a `kind` name must be a non-empty str without "." (a dotted
        state-dict key would not map back to it) and not another attribute of the module (a
        method, the training flag, a sub-module, parameter or buffer of another kind)."""
        if not isinstance(name, str):
            raise TypeError(f"{op}: {kind} name should be a string, got {type(name).__name__}")
        if "." in name:
            raise KeyError(f"{op}: {kind} name can't contain \".\", got {name!r}")
        if not name:
            raise KeyError(f"{op}: {kind} name can't be empty")
        if name not in registry and hasattr(self, name):
            raise KeyError(f"{op}: attribute {name!r} already exists")

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Register `param` (or None, e.g. ``bias=False``) under `name`."""
        self._check_name(name, "parameter", self._parameters, "register_parameter")
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter: expected a Parameter or None, got {type(param).__name__}")
        self._buffers.pop(name, None)
        self._modules.pop(name, None)
        self._parameters[name] = param
        if param is not None and param.name is None:
            param.name = name
        object.__setattr__(self, name, param)

    def register_buffer(self, name: str, array: np.ndarray | None,
                        persistent: bool = True) -> None:
        """Register a non-trainable array (e.g. BatchNorm running stats), saved in
        ``state_dict`` unless ``persistent=False`` (as PyTorch's: a buffer the module rebuilds,
        kept out of checkpoints)."""
        self._check_name(name, "buffer", self._buffers, "register_buffer")
        if array is not None and not isinstance(array, np.ndarray):
            raise TypeError(f"register_buffer: expected a NumPy array or None, got {type(array).__name__}")
        if not _is_flag(persistent):
            raise TypeError(f"register_buffer: persistent must be True or False, got "
                            f"{persistent!r}")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        self._buffers[name] = array
        transient = set(self.__dict__.get("_non_persistent", ()))
        transient.discard(name) if persistent else transient.add(name)
        object.__setattr__(self, "_non_persistent", frozenset(transient))
        object.__setattr__(self, name, array)

    def add_module(self, name: str, module: "Module | None") -> None:
        """Register a sub-module under `name`."""
        self._check_name(name, "module", self._modules, "add_module")
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module: expected a Module, got {type(module).__name__}")
        self._parameters.pop(name, None)
        self._buffers.pop(name, None)
        self._modules[name] = module
        object.__setattr__(self, name, module)
        _invalidate_plans()

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

    def apply(self, fn: Callable[["Module"], object]) -> "Module":
        """Call ``fn`` on every sub-module, then on this module, and return this module, as
        ``torch.nn.Module.apply``: each child's sub-tree first (children in order,
        recursively), the parent last, e.g. ``model.apply(init_weights)`` with
        ``def init_weights(m): if isinstance(m, nn.Linear): init.xavier_uniform_(m.weight)``.
        As in PyTorch, a child held under two names of one module is visited once, a module
        held by two parents once under each."""
        if not callable(fn):
            raise TypeError(f"{type(self).__name__}.apply: fn must be callable, got "
                            f"{type(fn).__name__}")
        seen: set[int] = set()
        for child in self.children():
            if id(child) not in seen:
                seen.add(id(child))
                child.apply(fn)
        fn(self)
        return self

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True) -> Iterator[tuple[str, Parameter]]:
        """(dotted name, Parameter) pairs, e.g. ``("0.weight", p)``; shared ones once (every
        name with ``remove_duplicate=False``)."""
        seen: set[int] = set()
        mods = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mod_prefix, module in mods:
            for name, p in module._parameters.items():
                if p is None or (remove_duplicate and id(p) in seen):
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

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameter scalars (what PyTorch and Keras report as parameters); with
        `trainable_only`, of those with ``requires_grad`` only."""
        return sum(p.data.size for p in self.parameters()
                   if p.requires_grad or not trainable_only)

    # -- modes, gradients, dtype, backend ------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        """Training mode (batch statistics, dropout on) for this module and its descendants.
        ``mode``: True or False (NumPy's bools, 0 and 1 too); anything else, such as the string
        "no" that bool() takes for True, raises ValueError, as in PyTorch."""
        if not _is_flag(mode):
            raise ValueError(f"{type(self).__name__}.train: mode must be True or False, got "
                             f"{mode!r}")
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        _invalidate_plans()
        return self

    def eval(self) -> "Module":
        """Evaluation mode (running statistics, dropout off); same as ``train(False)``."""
        return self.train(False)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Set every parameter's ``grad`` to zero. (``set_to_none`` is taken for PyTorch's
        training loops: fastconv's gradients are arrays, zeroed either way.)"""
        for p in self.parameters():
            p.zero_grad()

    def get_submodule(self, target: str) -> "Module":
        """The sub-module at dotted path `target` (``"layer1.0.conv1"``; ``""``: this one),
        as torch.nn.Module.get_submodule; AttributeError naming the missing step."""
        if not isinstance(target, str):
            raise TypeError(f"get_submodule: target must be a str, got {target!r}")
        m: Module = self
        done = type(self).__name__
        for step in target.split(".") if target else ():
            child = m._modules.get(step)
            if child is None:
                raise AttributeError(f"get_submodule({target!r}): {done} has no sub-module "
                                     f"{step!r}")
            m, done = child, f"{done}.{step}"
        return m

    def float(self) -> "Module":
        """``astype(np.float32)``, as torch.nn.Module.float."""
        return self.astype(np.float32)

    def double(self) -> "Module":
        """``astype(np.float64)``, as torch.nn.Module.double."""
        return self.astype(np.float64)

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        """Set ``requires_grad`` of every parameter of this module and its descendants (False
        freezes them: see :class:`Parameter`); returns self, as ``torch.nn.Module.requires_grad_``."""
        if not _is_flag(requires_grad):
            raise TypeError(f"{type(self).__name__}.requires_grad_: requires_grad must be True "
                            f"or False, got {requires_grad!r}")
        for p in self.parameters():
            p.requires_grad = bool(requires_grad)
        return self

    def _needs_grad(self) -> bool:
        """Whether backward has a parameter gradient to compute here (a trainable parameter in
        this module or below)."""
        return any(p.requires_grad for p in self.parameters())

    def astype(self, dtype) -> "Module":
        """Convert parameters, their gradients and floating buffers to `dtype` (float32/float64),
        in place; returns self. Cached activations are dropped. A module in bf16 mode
        (``to(precision="bf16")``), which computes on float32, stays float32: TypeError for
        another dtype (``to(dtype, precision="auto")`` leaves bf16 mode and converts)."""
        dt = _float_dtype(dtype, f"{type(self).__name__}.astype")
        if dt != np.float32:
            for name, m in self.named_modules():
                if m.__dict__.get("_precision") == "bf16":
                    where = f" (its {name})" if name else ""
                    raise TypeError(f"{type(self).__name__}.astype({dt}): the module runs in bf16 "
                                    f"mode{where}, on float32 parameters: call "
                                    f".to({dt}, precision='auto') to leave bf16 mode and convert")
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

    def to(self, dtype=None, *, precision=None) -> "Module":
        """Convert to `dtype` (float32/float64: see astype) and/or run this module and all its
        descendants in `precision`, in place; returns self.

        precision: "bf16" (convolutions and linear layers take bfloat16-rounded operands and
        sum in float32; parameters, gradients, optimiser state and buffers stay float32: see
        fastconv.precision), "f32" (float32 whatever the autocast state), or "auto" (follow
        the active fastconv.autocast, the default). None leaves it as it is. "bf16" needs
        float32 parameters (TypeError otherwise)."""
        target = _float_dtype(dtype, f"{type(self).__name__}.to") if dtype is not None else None
        if precision is not None:
            if precision == "auto":
                name = None
            else:
                name = _normalize_precision(precision, f"{type(self).__name__}.to")
            if name == "bf16":
                for p in self.parameters():
                    if (target or p.data.dtype) != np.float32:
                        raise TypeError(f"{type(self).__name__}.to: precision='bf16' needs "
                                        f"float32 parameters, got {target or p.data.dtype}")
        if precision is not None:
            for m in self.modules():
                object.__setattr__(m, "_precision", name)
                object.__setattr__(m, "_cache", None)
        if dtype is not None:
            self.astype(dtype)
        return self

    @property
    def precision(self) -> str | None:
        """The precision set by ``to(precision=...)``: "bf16", "f32", or None (follows the
        active fastconv.autocast)."""
        return self.__dict__.get("_precision")

    def _op_precision(self, dtype) -> str:
        """The precision this module's ops run in now ("f32" or "bf16") for a computation in
        `dtype`: its own, else the active autocast's (float64 stays "f32" under autocast)."""
        return _resolve_precision(self.__dict__.get("_precision"), dtype, repr(self))

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
        _invalidate_plans()
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
            transient = m.__dict__.get("_non_persistent", ())
            for name, b in m._buffers.items():
                if b is not None and name not in transient:
                    out.setdefault(pre + name, (m, name, "buffer"))
        return out

    def state_dict(self, *, prefix: str = "",
                   keep_vars: bool = False) -> "OrderedDict[str, np.ndarray]":
        """Copies of all parameters and persistent buffers under PyTorch's dotted key names,
        each after `prefix`; ``keep_vars=True``: the Parameters and buffer arrays themselves,
        not copies (as PyTorch's)."""
        if not isinstance(prefix, str):
            raise TypeError(f"state_dict: prefix must be a str, got {prefix!r}")
        sd: OrderedDict[str, np.ndarray] = OrderedDict()
        for key, (m, name, kind) in self._state_entries().items():
            if keep_vars:
                sd[prefix + key] = m._parameters[name] if kind == "param" else m._buffers[name]
                continue
            arr = m._parameters[name].data if kind == "param" else m._buffers[name]
            sd[prefix + key] = arr.copy()
        return sd

    def load_state_dict(self, state_dict, strict: bool = True) -> IncompatibleKeys:
        """Copy values from `state_dict` (name -> array-like; torch tensors are accepted too)
        into the parameters and buffers, in place (optimisers keep working).

        Everything is validated before anything is changed: with ``strict`` (the default)
        missing and unexpected keys are errors (except a batch norm's ``num_batches_tracked``,
        which checkpoints from before PyTorch 0.4.1 lack: it keeps its value, as in PyTorch); shapes must match exactly (ValueError naming
        the key and both shapes). Values are cast to the module's dtype. Returns the
        (missing_keys, unexpected_keys) lists, as PyTorch does.
        """
        if not hasattr(state_dict, "items"):
            raise TypeError(f"load_state_dict: expected a mapping, got {type(state_dict).__name__}")
        entries = self._state_entries()
        # (a counter older checkpoints lack, e.g. num_batches_tracked: kept, as PyTorch does
        # for a state dict without version metadata)
        missing = [k for k, (m, name, _) in entries.items()
                   if k not in state_dict and name not in m._kept_when_missing]
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
                value = value.detach().cpu()
                if value.is_floating_point() and value.element_size() < 4:
                    value = value.float()  # bfloat16 / float16: NumPy has no bfloat16
                value = value.numpy()
            value = np.asarray(value)
            target = m._parameters[name].data if kind == "param" else m._buffers[name]
            if value.dtype.kind not in "biuf":
                problems.append(f"{key!r}: expected real numbers, got dtype {value.dtype}")
            elif value.shape != target.shape:
                problems.append(f"{key!r}: shape {value.shape} in the state dict does not match "
                                f"shape {target.shape} in the model"
                                + _layout_hint(value.shape, target.shape))
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
        """``forward(x)``; in training mode on a copy of the caller's float array when this
        is the outermost call (see :func:`_call_forward`)."""
        return _call_forward(self, self.forward, x)

    def register_post_backward_hook(self, hook: Callable[["Module"], None]) -> "HookHandle":
        """Call ``hook(module)`` each time a container (Sequential, Residual, Concat) has run
        this module's backward, or the fused step that holds it: from then until the next
        forward, the ``grad`` of every parameter of this module and of its sub-modules holds
        this backward's whole contribution (a parameter shared with another module may still
        receive that one's). Returns a handle whose ``remove()`` unregisters the hook.

        What it is for: acting on gradients as soon as they are complete, while backward
        continues with the earlier layers (a distributed run starts the gradients' allreduce
        there: :class:`fastconv.training.distributed.DistributedDataParallel`). A module whose
        backward no container runs (the model itself, the children of a custom module that
        calls their backward itself) is never reported: the caller of the outermost backward
        knows when that one is done. Hooks are not copied or pickled with the module.
        """
        if not callable(hook):
            raise TypeError(f"register_post_backward_hook: hook must be callable, got "
                            f"{type(hook).__name__}")
        hooks = self.__dict__.get("_post_backward_hooks")
        if hooks is None:
            hooks = OrderedDict()
            object.__setattr__(self, "_post_backward_hooks", hooks)
        return HookHandle(hooks, hook)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Output shape for an input of `input_shape` (including the batch dimension).

        The default runs forward on zeros in eval mode, on a copy of the module: this one's
        saved forward (and its layers'), and each layer's training flag, stay as they were.
        Layers override it with the shape formula.
        """
        zeros = np.zeros(input_shape, dtype=self.dtype or np.float32)
        try:
            twin = copy.deepcopy(self)
        except Exception:  # noqa: BLE001 - a module holding what cannot be copied (a
            twin = None    # communicator, a file): run it in place, then restore its state
        if twin is not None:
            return tuple(twin.eval().forward(zeros).shape)
        saved = [(m, m.training, m.__dict__.get("_cache"), m.__dict__.get("_unbatched"))
                 for m in self.modules()]
        try:
            self.eval()
            return tuple(self.forward(zeros).shape)
        finally:
            for m, training, cache, unbatched in saved:
                object.__setattr__(m, "training", training)
                object.__setattr__(m, "_cache", cache)
                object.__setattr__(m, "_unbatched", unbatched)

    def _get_cache(self):
        cache = self._cache
        if cache is None:
            raise RuntimeError(f"{_one_line(self)}: backward called before forward")
        return cache

    def _forget_forward(self) -> None:
        """Drop what the last forward kept for backward. A fused step (fusion.py) calls it on
        the layers it ran as one, which keeps their values itself: a later backward of one
        of those layers on its own then fails instead of using an older forward's values."""
        if self._cache is not None:
            object.__setattr__(self, "_cache", None)
        object.__setattr__(self, "_unbatched", None)

    def _check_grad(self, grad_y, shape, dtype) -> np.ndarray:
        grad_y = np.asarray(grad_y)
        if grad_y.shape != shape:
            raise ValueError(f"{_one_line(self)}.backward: grad_y has shape {grad_y.shape}, "
                             f"expected the output shape {shape}")
        if grad_y.dtype != dtype:
            grad_y = grad_y.astype(dtype)
        return grad_y

    # -- summary -----------------------------------------------------------------------------
    def summary(self, input_shape, print_fn: Callable[[str], None] | None = print
                ) -> "ModelSummary | None":
        """Keras-like table of the module tree: each module's dotted name (indented by depth)
        and type, output shape, parameter count and, for each convolution/pooling output and
        each container, its receptive field (size and jump/stride, in input pixels; where
        branches join, the larger field).

        Printed with `print_fn`, and then None is returned, as Keras' ``summary()`` does (so
        a REPL or notebook shows the table once, with no line echoed after it). With
        ``print_fn=None`` nothing is printed and a :class:`~fastconv.nn.ModelSummary` is
        returned (rows, total/trainable/frozen parameter counts; its ``str`` and ``repr``
        are the table).

        input_shape: the shape of one sample, e.g. (3, 32, 32) (the batch axis shows as None);
        a 4-tuple is taken as a whole batch (N, C, H, W).

        Receptive field recurrence (per axis, starting at r = j = 1 on the input):
            r_out = r_in + d (k - 1) j_in,   j_out = j_in s
        """
        from .summary import summarize

        result = summarize(self, input_shape, None)
        if print_fn is None:
            return result
        print_fn(result.text)
        return None

    def _summarize(self, shape, rf, name: str, depth: int, rows: list):
        """Append this module's summary rows for an input of `shape` with receptive field `rf`
        (per axis (size, jump), or None); return (output shape, receptive field). One row for
        a layer; containers add their children's rows below their own."""
        from .summary import layer_row

        return layer_row(self, shape, rf, name, depth, rows)

    # -- printing ----------------------------------------------------------------------------
    def extra_repr(self) -> str:
        """Arguments shown between the parentheses of ``repr``."""
        return ""

    def __repr__(self) -> str:
        children = list(self.named_children())
        extra = self.extra_repr()
        if not children:
            return f"{type(self).__name__}({extra})"
        lines = [f"{type(self).__name__}("]
        lines += [f"  {line}" for line in extra.split("\n") if line]  # (PyTorch's order)
        for name, child in children:
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        lines.append(")")
        return "\n".join(lines)


class HookHandle:
    """What :meth:`Module.register_post_backward_hook` returns: ``remove()`` unregisters the
    hook (a second call does nothing)."""

    _next_id = 0

    def __init__(self, hooks: "OrderedDict[int, Callable]", hook: Callable) -> None:
        HookHandle._next_id += 1
        self.id = HookHandle._next_id
        self._hooks = hooks
        hooks[self.id] = hook

    def remove(self) -> None:
        self._hooks.pop(self.id, None)


def _post_backward(module: Module) -> None:
    """Run `module`'s post-backward hooks (containers call it once a child's backward, or the
    fused step holding it, has run: see Module.register_post_backward_hook)."""
    hooks = module.__dict__.get("_post_backward_hooks")
    if hooks:
        for hook in tuple(hooks.values()):
            hook(module)


def _layout_hint(given: tuple, expected: tuple) -> str:
    """A suggestion when a weight of the wrong shape is a known other layout of the right one:
    TensorFlow/Keras kernels, (kh, kw, in, out) for Conv2d and (kh, kw, out, in) for
    ConvTranspose2d, both undone by ``np.transpose(w, (3, 2, 0, 1))``; Keras Dense kernels
    (in, out) for Linear's (out, in). Square shapes, where the layouts coincide, cannot be
    told apart."""
    if len(given) == 4 and len(expected) == 4 and given == tuple(expected[i] for i in (2, 3, 1, 0)):
        return (" (it looks like a TensorFlow/Keras kernel laid out (kh, kw, in, out): "
                "load np.transpose(w, (3, 2, 0, 1)))")
    if len(given) == 2 and given == expected[::-1]:
        return " (it looks like a Keras Dense kernel laid out (in, out): load w.T)"
    return ""


def _one_line(module: Module) -> str:
    """`module` in error messages: its repr, or for a module with sub-modules (whose repr
    spans lines) its type."""
    return repr(module) if not module._modules else f"{type(module).__name__}(...)"


_warned_uint8 = [False]


def _warn_uint8(layer: Module) -> None:
    """Once per process: uint8 input is most likely raw images, used as values 0..255."""
    if _warned_uint8[0]:
        return
    _warned_uint8[0] = True
    warnings.warn(f"{_one_line(layer)}: uint8 input (raw images?) is used as values 0..255, "
                  f"unscaled and unnormalised; convert it as the model was trained: "
                  f"fastconv.data.to_float32(x, mean, std), or x.astype(np.float32) to keep "
                  f"the values (this warning is shown once)", UserWarning, stacklevel=4)


_calls = threading.local()  # .depth: module calls (``module(x)``) running on this thread


def _call_forward(module: Module, forward: Callable, x, *args):
    """``forward(x, *args)`` for ``module(x, ...)``. The layers keep their input for backward:
    in training mode the outermost call of a thread gets a copy of a float32/float64 array,
    so that the caller changing theirs before backward (a loader refilling one batch buffer)
    cannot change the gradients. (PyTorch raises there; a NumPy array has no version counter
    to check.) Calls inside a module's forward take the array as it is: fastconv made it; so
    do calls in eval mode (inference), and ``forward`` itself (fit and the containers call
    it)."""
    depth = getattr(_calls, "depth", 0)
    if depth == 0 and module.training and isinstance(x, np.ndarray) \
            and x.dtype in (np.float32, np.float64):
        x = x.copy()
    _calls.depth = depth + 1
    try:
        return forward(x, *args)
    finally:
        _calls.depth = depth


def _as_input(layer: Module, x, dtype: np.dtype | None) -> np.ndarray:
    """`x` as an ndarray of `dtype` (the layer's parameters' dtype) or, if None, of its own
    float32/float64 dtype (other real dtypes -> float32; uint8 with a one-time warning)."""
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise TypeError(f"{_one_line(layer)}: input must hold real numbers, got dtype {x.dtype}")
    if x.dtype == np.uint8:
        _warn_uint8(layer)
    if dtype is None:
        dtype = _input_float_dtype(x)
    if x.dtype != dtype:
        x = x.astype(dtype)
    return x


def _input_float_dtype(x) -> np.dtype:
    """float32/float64 inputs keep their precision; anything else computes in float32."""
    dt = getattr(x, "dtype", None)
    return np.dtype(np.float32) if dt is None else _args.working_dtype(dt)


def _layout_advice(shape: tuple, channels: int | None) -> str:
    """What to do with an input of ``shape`` whose channels are not where a layer with
    `channels` input channels wants them: channels last (NHWC or HWC, as TensorFlow and Pillow
    give images) -> the transpose."""
    if len(shape) == 4 and channels is not None and shape[1] != channels \
            and shape[3] == channels:
        return (" (channels last? fastconv takes NCHW like PyTorch: use "
                "x.transpose(0, 3, 1, 2))")
    if len(shape) == 3 and channels is not None and shape[0] != channels \
            and shape[2] == channels:
        return (" (one channels-last image? fastconv takes (C, H, W) like PyTorch: use "
                "x.transpose(2, 0, 1))")
    return ""


def _expected(channels: int | None, unbatched: bool = True) -> str:
    c = "C" if channels is None else str(channels)
    return f"(N, {c}, H, W) or ({c}, H, W)" if unbatched else f"(N, {c}, H, W)"


def _check_4d(layer: Module, x: np.ndarray, channels: int | None = None,
              refused_3d: str | None = None) -> None:
    """ValueError unless `x` is (N, channels, H, W). A layer taking unbatched (C, H, W) images
    has had them made a batch of one by :func:`_accepts_unbatched`; one that refuses them, as
    its PyTorch twin does, gives the reason as `refused_3d`."""
    _check_shape_4d(layer, x.shape, channels, refused_3d)


def _check_shape_4d(layer: Module, shape: tuple, channels: int | None,
                    refused_3d: str | None) -> None:
    if len(shape) != 4 or (channels is not None and shape[1] != channels):
        if len(shape) == 3 and refused_3d is not None:
            raise ValueError(f"{layer!r}: got input of shape {shape}: {refused_3d}")
        raise ValueError(f"{layer!r}: expected input of shape "
                         f"{_expected(channels, refused_3d is None)}, got {shape}"
                         f"{_layout_advice(shape, channels)}")


def _shape_4d(layer: Module, shape, channels: int | None = None,
              refused_3d: str | None = None) -> tuple[int, int, int, int]:
    shape = tuple(int(s) for s in shape)
    _check_shape_4d(layer, shape, channels, refused_3d)
    return shape  # type: ignore[return-value]


# -- unbatched (C, H, W) input, as PyTorch's 2-D layers take it --------------------------------
# A layer (or a fused step of fusion.py) whose forward is decorated with _accepts_unbatched runs
# a (C, H, W) input as the batch of one x[None] and returns the output without the batch axis.
# It records the unbatched output's shape in its own `_unbatched` (None after a batched
# forward); its backward, decorated with _unbatched_backward, then takes a gradient of that
# shape and returns the input gradient unbatched. The values are those of the batched call on
# x[None], bit for bit, and parameter gradients accumulate as they would for it.

def _ndim(x) -> int | None:
    try:
        return np.ndim(x)
    except (TypeError, ValueError):  # (ragged lists and the like: the forward says why)
        return None


def _name(owner) -> str:
    """`owner` in a backward's errors: a layer, or the layer a fused step blames for them."""
    if isinstance(owner, Module):
        return _one_line(owner)
    return _one_line(owner.layers[owner._backward_blame])


def _input_layer(owner) -> "Module":
    """The layer that checks `owner`'s input: the layer itself, or a fused step's first."""
    return owner if isinstance(owner, Module) else owner.layers[0]


def _check_unbatched(layer: Module, shape: tuple) -> None:
    """ValueError unless an unbatched input of `shape` has the layer's in_channels (if it has
    one) first; a channels-last (H, W, C) image gets the transpose suggested."""
    channels = getattr(layer, "in_channels", None)
    if channels is not None and shape[0] != channels:
        raise ValueError(f"{layer!r}: expected input of shape {_expected(channels)}, got "
                         f"{tuple(shape)}{_layout_advice(tuple(shape), channels)}")


def _accepts_unbatched(forward=None, *, arrays: tuple[str, ...] = (),
                       output_size: str | None = None):
    """Decorator of a forward taking (N, C, H, W): it takes one unbatched (C, H, W) image too
    (see the comment above). arrays: names of further arguments given unbatched alike, which
    get a batch axis too (MaxUnpool2d's indices); output_size: the name of an argument that
    gives the output's (H, W), or its whole shape, (C, H, W) for an unbatched input
    (ConvTranspose2d's, as torch's: 2 or 3 entries then)."""
    if forward is None:
        return lambda f: _accepts_unbatched(f, arrays=arrays, output_size=output_size)
    names = list(inspect.signature(forward).parameters)[1:]  # (after self)
    extra = (*arrays, output_size) if output_size else arrays
    where = {name: names.index(name) for name in extra}

    @functools.wraps(forward)
    def run(self, x, *args, **kwargs):
        if _ndim(x) != 3:
            y = forward(self, x, *args, **kwargs)
            object.__setattr__(self, "_unbatched", None)
            return y
        x = np.asarray(x)
        _check_unbatched(_input_layer(self), x.shape)
        args, kwargs = [x[None], *args], dict(kwargs)
        for name in extra:
            i = where[name]
            value = args[i] if i < len(args) else kwargs.get(name)
            if value is None:
                continue
            if name == output_size:
                value = _unbatched_output_size(self, value)
            else:
                value = np.asarray(value)
                if value.ndim != 3:
                    raise ValueError(f"{_name(self)}: the input {x.shape} is unbatched, so "
                                     f"{name} must be 3-D too, got shape {value.shape}")
                value = value[None]
            if i < len(args):
                args[i] = value
            else:
                kwargs[name] = value
        y = forward(self, *args, **kwargs)
        y = tuple(a[0] for a in y) if isinstance(y, tuple) else y[0]
        object.__setattr__(self, "_unbatched", (y[0] if isinstance(y, tuple) else y).shape)
        return y

    return run


def _unbatched_output_size(owner, value) -> tuple:
    """An output_size given with an unbatched input: (H, W) as it is, (C, H, W) with a batch
    of 1 in front; anything else, as in PyTorch, a ValueError."""
    size = tuple(value) if isinstance(value, (tuple, list, np.ndarray)) else None
    if size is None or len(size) not in (2, 3):
        raise ValueError(f"{_name(owner)}: for an unbatched (3-D) input, output_size must have "
                         f"2 or 3 elements (H, W) or (C, H, W), got {value!r}")
    return size if len(size) == 2 else (1,) + size


def _unbatched_backward(backward):
    """Decorator of the backward of a forward decorated with :func:`_accepts_unbatched`: after
    an unbatched forward, grad_y has the unbatched output's shape and dL/dx is unbatched."""

    @functools.wraps(backward)
    def run(self, grad_y, input_grad: bool = True):
        shape = getattr(self, "_unbatched", None)
        if shape is None:
            return backward(self, grad_y, input_grad)
        g = np.asarray(grad_y)
        if g.shape != shape:
            raise ValueError(f"{_name(self)}.backward: grad_y has shape {g.shape}, expected the "
                             f"output shape {shape} (the last forward's input was unbatched)")
        gx = backward(self, g[None], input_grad)
        return None if gx is None else gx[0]

    return run


def _shape_accepts_unbatched(output_shape):
    """Decorator of a layer's output_shape(input_shape) formula for (N, C, H, W): a (C, H, W)
    input_shape gives the unbatched output shape, as the forward does."""

    @functools.wraps(output_shape)
    def run(self, input_shape):
        shape = tuple(int(s) for s in input_shape)
        if len(shape) != 3:
            return output_shape(self, shape)
        _check_unbatched(self, shape)
        return tuple(output_shape(self, (1,) + shape))[1:]

    return run


def _positive_int(value, name: str, layer: str) -> int:
    if (not isinstance(value, (numbers.Integral, np.integer)) or isinstance(value, bool)
            or value <= 0):
        raise ValueError(f"{layer}: {name} must be a positive int, got {value!r}")
    return int(value)
