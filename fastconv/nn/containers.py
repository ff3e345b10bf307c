"""Containers: Sequential (a chain), Residual (a body plus a shortcut), Concat (branches joined
on channels). They only route arrays and gradients; which layers of a chain run fused is
decided by the planner, fusion.py.

Containers take what their layers take: one unbatched (C, H, W) image too, where the layers
do (see Concat's `dim` for it).

Containers nest freely, and their children's names make the state-dict keys, as in PyTorch
(``"layer1.0.body.0.weight"``): a ``torch.nn.Module`` built as the same tree, with the same
child names, loads the same state dict. Errors inside a tree name the path of the layer
(``layer 1.body.0 of Sequential: Conv2d(...): expected input ...``).

After running a child's backward (in a Sequential, the backward of a step, fused or not, for
each of its layers) a container runs that child's post-backward hooks
(:meth:`Module.register_post_backward_hook`): its parameters' gradients are complete then,
which lets a distributed run start reducing them while backward goes on.
"""

from __future__ import annotations

import copy
import numbers
from collections import OrderedDict
from typing import Iterator

import numpy as np

from . import fusion
from .module import (Module, _as_input, _branch_error, _branch_message, _one_line,
                     _post_backward, _reraise_in_child)
from .summary import add_row, join_fields, set_field


def _all_modules(module: Module) -> Iterator[Module]:
    """`module` and every module below it, repeats included (named_modules skips them)."""
    yield module
    for child in module._modules.values():
        if child is not None:
            yield from _all_modules(child)


def _is_bare(module: Module) -> bool:
    """No parameters, buffers or sub-modules: a copy behaves the same (e.g. a ReLU)."""
    return not module._parameters and not module._buffers and not module._modules


def _bare_copy(module: Module) -> Module:
    twin = copy.copy(module)  # (__getstate__ leaves the cached forward behind)
    for registry in ("_parameters", "_buffers", "_modules"):
        object.__setattr__(twin, registry, OrderedDict())
    return twin


class _Container(Module):
    """Shared code of the containers: taking in children (one layer object runs once per model)
    and the summary's errors about branches."""

    def _adopt(self, module, where: str) -> Module:
        """`module`, checked to be a Module, with no module object that is already in this
        container's tree or twice in its own.

        Each layer keeps its last forward's values for its backward, so one layer object
        cannot run twice in a model: a layer without parameters, buffers or sub-modules given
        again (``act = nn.ReLU()`` used after every conv, as often written for PyTorch) is
        replaced by a copy of it, at any depth of `module`; a module with them raises
        ValueError (to share weights, make a second layer and assign it the first one's
        Parameter: ``b.weight = a.weight``)."""
        if not isinstance(module, Module):
            hint = ""
            if isinstance(module, type) and issubclass(module, Module):
                hint = f" (the class itself: write {module.__name__}(...))"
            elif isinstance(module, (list, tuple)) and module \
                    and all(isinstance(m, Module) for m in module):
                hint = (f" (a {type(module).__name__} of layers: unpack it, "
                        f"{type(self).__name__}(*layers))")
            raise TypeError(f"{type(self).__name__}: child {where!r} is not a Module: "
                            f"{module!r}{hint}")
        present = {id(m) for m in _all_modules(self)}
        return self._unshared(module, where, present)

    def _unshared(self, module: Module, where: str, present: set) -> Module:
        if id(module) in present:
            if _is_bare(module):
                return _bare_copy(module)
            raise ValueError(
                f"{type(self).__name__}: layer {where} ({_one_line(module)}) is already in this "
                f"model. A layer keeps its last forward's values for backward, so one layer object "
                f"cannot run twice: make another layer; to share weights, assign the first "
                f"one's Parameter to it (b.weight = a.weight)")
        present.add(id(module))
        for name, child in list(module._modules.items()):
            if child is not None:
                own = self._unshared(child, f"{where}.{name}", present)
                if own is not child:
                    module.add_module(name, own)
        return module

    @staticmethod
    def _summary_error(exc: ValueError, name: str) -> ValueError:
        """The summary's error for a _branch_error of the container at path `name`."""
        return ValueError(f"summary: {_branch_message(exc, name)}")


def _child_name(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class Sequential(_Container):
    """Layers applied in order; sub-modules are named "0", "1", ... (PyTorch's keys), or by
    the keys of an OrderedDict given as the only argument.

    ``model[i]`` is a layer, ``model[a:b]`` a Sequential of those layers, ``len(model)`` and
    ``iter(model)`` work as on a list; ``model[i] = layer`` (a new head:
    ``model[-1] = nn.Linear(512, 10)``), ``del model[i]``, ``append``, ``extend``, ``insert``,
    ``pop`` and ``+`` edit it as PyTorch's (deleting or inserting numbers the layers again).
    backward runs the layers' backward in reverse order.

    The chain runs as the steps of the fusion planner (fusion.py): Conv2d -> (ReLU ->)
    MaxPool2d, BatchNorm -> ReLU and ReLU -> MaxPool2d run fused, with the results of the
    layers run one by one, bit for bit. The plan is made at the first forward and kept until
    a mode, backend or the tree changes.

    ``backward(grad, input_grad=False)`` (no dL/dx wanted, as for a network's first layers in
    training) stops at the first layer with a trainable parameter, which skips its input
    gradient: earlier layers, frozen or without parameters, cost nothing.

    One layer object runs once per model: a layer given twice is copied if it has no weights,
    refused if it has (see ``_Container._adopt``).
    """

    def __init__(self, *layers) -> None:
        super().__init__()
        object.__setattr__(self, "_plan", None)
        if len(layers) == 1 and isinstance(layers[0], OrderedDict):
            for name, layer in layers[0].items():
                self.add_module(str(name), self._adopt(layer, str(name)))
        else:
            for i, layer in enumerate(layers):
                self.add_module(str(i), self._adopt(layer, str(i)))

    def append(self, layer: Module) -> "Sequential":
        """Add `layer` at the end (named by its position); it inherits this model's backend
        override and training mode. A layer already in the model is copied or refused, as in
        the constructor."""
        if not isinstance(layer, Module):
            raise TypeError(f"Sequential.append: expected a Module, got {type(layer).__name__}")
        self.add_module(str(len(self)), self._take(layer, str(len(self))))
        self._cache = None
        return self

    def extend(self, layers) -> "Sequential":
        """Append each layer of `layers` (a Sequential or any iterable of modules)."""
        for layer in layers:
            self.append(layer)
        return self

    def insert(self, index: int, layer: Module) -> "Sequential":
        """Insert `layer` before position `index` (-len <= index <= len, as torch's); the
        layers are numbered again "0", "1", ..., as PyTorch's."""
        if not isinstance(layer, Module):
            raise TypeError(f"Sequential.insert: expected a Module, got {type(layer).__name__}")
        n = len(self)
        if isinstance(index, bool) or not isinstance(index, (numbers.Integral, np.integer)):
            raise TypeError(f"Sequential.insert: index must be an int, got {index!r}")
        if not -n <= index <= n:
            raise IndexError(f"Sequential.insert: index {index} out of range for {n} layers")
        i = int(index) + n if index < 0 else int(index)
        layers = list(self._modules.values())
        layers.insert(i, self._take(layer, str(i)))
        self._renumber(layers)
        return self

    def pop(self, idx) -> Module:
        """Remove the layer at `idx` (an int or a slice) and return it (a Sequential for a
        slice); the rest are numbered again, as PyTorch's."""
        out = self[idx]
        del self[idx]
        return out

    def __setitem__(self, idx: int, layer: Module) -> None:
        """``model[i] = layer`` replaces the i-th layer under its name (e.g. a new classifier
        head: ``model[-1] = nn.Linear(512, 10)``), as PyTorch's."""
        if not isinstance(layer, Module):
            raise TypeError(f"Sequential: model[{idx}] = ... expects a Module, got "
                            f"{type(layer).__name__}")
        key = list(self._modules)[self._position(idx, len(self), "index")]
        old = self._modules[key]
        if layer is old:
            return
        self._modules[key] = None  # (the old layer leaves first: its parts may come back)
        try:
            layer = self._take(layer, key)
        except (TypeError, ValueError):
            self._modules[key] = old
            raise
        self.add_module(key, layer)
        self._cache = None

    def __delitem__(self, idx) -> None:
        """``del model[i]`` or ``del model[a:b]``; the rest are numbered again, as PyTorch's."""
        layers = list(self._modules.values())
        if isinstance(idx, slice):
            del layers[idx]
        else:
            del layers[self._position(idx, len(layers), "index")]
        self._renumber(layers)

    def __add__(self, other) -> "Sequential":
        """A new Sequential of this one's layers, then `other`'s (the layer objects are shared
        with both, as in PyTorch)."""
        if not isinstance(other, Sequential):
            raise ValueError(f"Sequential + {type(other).__name__}: only a Sequential can be "
                             f"added to a Sequential")
        return Sequential(*self, *other)

    def __iadd__(self, other) -> "Sequential":
        if not isinstance(other, Sequential):
            raise ValueError(f"Sequential += {type(other).__name__}: only a Sequential can be "
                             f"added to a Sequential")
        return self.extend(list(other))

    def _take(self, layer: Module, where: str) -> Module:
        """`layer` adopted (see _adopt), with this model's backend override, precision (set
        by ``to(precision=...)``) and mode."""
        layer = self._adopt(layer, where)
        if self._backend is not None:
            layer.set_backend(self._backend)
        if self.precision is not None:
            layer.to(precision=self.precision)
        layer.train(self.training)
        return layer

    @staticmethod
    def _position(idx, n: int, what: str) -> int:
        """An int index in [-n, n) as a position in [0, n)."""
        if isinstance(idx, bool) or not isinstance(idx, (numbers.Integral, np.integer)):
            raise TypeError(f"Sequential {what} must be an int, got {idx!r}")
        if not -n <= idx < n:
            raise IndexError(f"Sequential {what} {idx} out of range for {n} layers")
        return int(idx) % n

    def _renumber(self, layers: list) -> None:
        """Hold `layers`, named "0", "1", ..."""
        for name in list(self._modules):
            delattr(self, name)
        for i, layer in enumerate(layers):
            self.add_module(str(i), layer)
        self._cache = None

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

    def _steps(self) -> list:
        """The fusion plan of the layers, made again only when out of date (see fusion.py)."""
        plan = self._plan
        epoch = fusion.plan_epoch()
        if plan is None or plan[0] != epoch:
            plan = (epoch, fusion.plan(self.named_children()))
            object.__setattr__(self, "_plan", plan)
        return plan[1]

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Run the layers in order, as the steps of the fusion plan (see the class docstring)."""
        steps = self._steps()
        for step in steps:
            try:
                x = step.forward(x)
            except (ValueError, TypeError) as exc:
                _reraise_in_child(exc, step.error_name(False), self)
        self._cache = steps
        return x

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """Backpropagate through the layers (the steps of the last forward) and return dL/dx.
        ``input_grad=False``: no dL/dx (None is returned), so backward stops at the first
        layer with a trainable parameter, which skips its input gradient (Conv2d, Linear);
        a first Conv2d -> (ReLU ->) MaxPool2d then backpropagates in one op."""
        steps = self._cache
        if steps is None:  # layers run one by one, not through this container's forward
            steps = fusion.plan(self.named_children(), fuse=False)
        first = 0
        if not input_grad:
            first = next((k for k, step in enumerate(steps) if step.needs_grad()), len(steps))
        g = grad_y
        for k in range(len(steps) - 1, first - 1, -1):
            step = steps[k]
            try:
                g = step.backward(g, input_grad or k > first)
            except (ValueError, TypeError) as exc:
                _reraise_in_child(exc, step.error_name(True), self, backward=True)
            for layer in step.layers:
                _post_backward(layer)
        return g if input_grad else None

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        for name, layer in self.named_children():
            try:
                shape = tuple(layer.output_shape(shape))
            except (ValueError, TypeError) as exc:
                _reraise_in_child(exc, name, self)
        return shape

    def _summarize(self, shape, rf, name, depth, rows):
        row = add_row(rows, self, name, depth)
        for child_name, layer in self.named_children():
            shape, rf = layer._summarize(shape, rf, _child_name(name, child_name), depth + 1, rows)
        row["output_shape"] = shape
        set_field(row, rf)
        return shape, rf


class Residual(_Container):
    """y = body(x) + shortcut(x), or y = body(x) + x without a shortcut (ResNet's blocks).

    backward sends the gradient through both and sums them at the input. The children are
    named ``body`` and ``shortcut`` (state-dict keys ``body.0.weight``, ``shortcut.1.bias``,
    ...; no shortcut, no keys), as a PyTorch twin would write them::

        class Residual(torch.nn.Module):
            def __init__(self, body, shortcut=None):
                super().__init__()
                self.body, self.shortcut = body, shortcut
            def forward(self, x):
                return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

    Both outputs must have the same shape (no broadcasting): ValueError naming both branches
    and shapes otherwise. A ResNet BasicBlock with a 1x1 stride-2 projection::

        nn.Sequential(nn.Residual(
            nn.Sequential(nn.Conv2d(64, 128, 3, 2, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
                          nn.Conv2d(128, 128, 3, 1, 1, bias=False), nn.BatchNorm2d(128)),
            shortcut=nn.Sequential(nn.Conv2d(64, 128, 1, 2, bias=False), nn.BatchNorm2d(128))),
            nn.ReLU())
    """

    def __init__(self, body: Module, shortcut: Module | None = None) -> None:
        super().__init__()
        self.add_module("body", self._adopt(body, "body"))
        self.add_module("shortcut", None if shortcut is None else self._adopt(shortcut, "shortcut"))

    def _mismatch(self, body_shape, shortcut_shape) -> ValueError:
        other = "{at}shortcut" if self.shortcut is not None else "the input (identity shortcut)"
        return _branch_error(self, "the output of {at}body has shape {a} but " + other +
                             " has shape {b}: they must be equal to be added",
                             a=tuple(body_shape), b=tuple(shortcut_shape))

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _as_input(self, x, None)
        try:
            y = self.body.forward(x)
        except (ValueError, TypeError) as exc:
            _reraise_in_child(exc, "body", self)
        s = x
        if self.shortcut is not None:
            try:
                s = self.shortcut.forward(x)
            except (ValueError, TypeError) as exc:
                _reraise_in_child(exc, "shortcut", self)
        if y.shape != s.shape:
            raise self._mismatch(y.shape, s.shape)
        self._cache = (y.shape, y.dtype)
        # (a new array: the body's output may be kept by its last layer for its backward)
        return np.add(y, s, dtype=y.dtype)

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        shape, dtype = self._get_cache()
        g = self._check_grad(grad_y, shape, dtype)
        try:
            gx = self.body.backward(g, input_grad=input_grad)
        except (ValueError, TypeError) as exc:
            _reraise_in_child(exc, "body", self, backward=True)
        _post_backward(self.body)
        gs = g
        if self.shortcut is not None:
            try:
                gs = self.shortcut.backward(g, input_grad=input_grad)
            except (ValueError, TypeError) as exc:
                _reraise_in_child(exc, "shortcut", self, backward=True)
            _post_backward(self.shortcut)
        if not input_grad:
            return None
        return gx + gs

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        try:
            out = tuple(self.body.output_shape(shape))
        except (ValueError, TypeError) as exc:
            _reraise_in_child(exc, "body", self)
        other = shape
        if self.shortcut is not None:
            try:
                other = tuple(self.shortcut.output_shape(shape))
            except (ValueError, TypeError) as exc:
                _reraise_in_child(exc, "shortcut", self)
        if out != other:
            raise self._mismatch(out, other)
        return out

    def _summarize(self, shape, rf, name, depth, rows):
        row = add_row(rows, self, name, depth)
        out, body_rf = self.body._summarize(shape, rf, _child_name(name, "body"), depth + 1, rows)
        other, short_rf = shape, rf
        if self.shortcut is not None:
            other, short_rf = self.shortcut._summarize(shape, rf, _child_name(name, "shortcut"),
                                                       depth + 1, rows)
        if tuple(out) != tuple(other):
            exc = self._mismatch(out, other)
            raise self._summary_error(exc, name) from exc
        rf = join_fields([body_rf, short_rf])
        row["output_shape"] = tuple(out)
        set_field(row, rf)
        return tuple(out), rf


class Concat(_Container):
    """Branches run on the same input, their outputs concatenated along `dim` (1: channels of
    (N, C, H, W), as Inception's blocks); backward splits the gradient among the branches and
    sums their input gradients.

    Branches are named "0", "1", ... (state-dict keys ``0.weight``, ``1.0.bias``, ...), or by
    the keys of an OrderedDict given as the only positional argument, as PyTorch's
    ``nn.ModuleList``/``nn.Sequential`` name theirs; a PyTorch twin::

        class Concat(torch.nn.ModuleList):
            def __init__(self, *branches, dim=1):
                super().__init__(branches)
                self.dim = dim
            def forward(self, x):
                return torch.cat([branch(x) for branch in self], self.dim)

    The outputs must have the same number of axes and the same sizes outside `dim`:
    ValueError naming the branches and their shapes otherwise.

    `dim` counts the axes of the outputs as they are, as torch.cat in the twin does: for one
    unbatched image (outputs (C, H, W)) dim=1 is H, not the channels. ``dim=-3`` joins the
    channels of batches and of unbatched images alike.
    """

    def __init__(self, *branches, dim: int = 1) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
            raise TypeError(f"Concat: dim must be an int, got {dim!r}")
        self.dim = int(dim)
        if len(branches) == 1 and isinstance(branches[0], OrderedDict):
            items = [(str(name), branch) for name, branch in branches[0].items()]
        else:
            items = [(str(i), branch) for i, branch in enumerate(branches)]
        if not items:
            raise ValueError("Concat: expected at least one branch")
        for name, branch in items:
            self.add_module(name, self._adopt(branch, name))

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __getitem__(self, idx: int) -> Module:
        try:
            return list(self._modules.values())[idx]
        except IndexError:
            raise IndexError(f"Concat index {idx} out of range for {len(self)} branches") from None

    def _axis(self, shapes: list[tuple], names: list[str]) -> int:
        """The axis `dim` stands for, after checking that the branches' output shapes (of the
        branches `names`) can be concatenated."""
        first = shapes[0]
        names = [n.replace("{", "{{").replace("}", "}}") for n in names]  # (into a template)
        for name, shape in zip(names[1:], shapes[1:]):
            if len(shape) != len(first):
                raise _branch_error(self, "the output of {at}" + name + " has shape {b}, with a "
                                    "different number of axes from the output of {at}" + names[0] +
                                    " {a}", a=first, b=shape)
        if not -len(first) <= self.dim < len(first):
            raise ValueError(f"{_one_line(self)}: dim {self.dim} is out of range for outputs "
                             f"of shape {first} ({len(first)} axes)")
        axis = self.dim % len(first)
        for name, shape in zip(names[1:], shapes[1:]):
            if shape[:axis] + shape[axis + 1:] != first[:axis] + first[axis + 1:]:
                raise _branch_error(self, "the output of {at}" + name + " has shape {b}, which "
                                    "does not match the output of {at}" + names[0] + " {a} outside "
                                    "dimension {dim}", a=first, b=shape, dim=self.dim)
        return axis

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _as_input(self, x, None)
        names, outs = [], []
        for name, branch in self.named_children():
            try:
                outs.append(branch.forward(x))
            except (ValueError, TypeError) as exc:
                _reraise_in_child(exc, name, self)
            names.append(name)
        axis = self._axis([o.shape for o in outs], names)
        y = np.concatenate(outs, axis=axis)
        self._cache = (axis, [o.shape[axis] for o in outs], y.shape, y.dtype)
        return y

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        axis, sizes, shape, dtype = self._get_cache()
        g = self._check_grad(grad_y, shape, dtype)
        pieces = np.split(g, np.cumsum(sizes)[:-1], axis=axis)
        grads = []
        for (name, branch), piece in zip(self.named_children(), pieces):
            try:
                grads.append(branch.backward(piece, input_grad=input_grad))
            except (ValueError, TypeError) as exc:
                _reraise_in_child(exc, name, self, backward=True)
            _post_backward(branch)
        if not input_grad:
            return None
        if len(grads) == 1:
            return grads[0]
        gx = grads[0] + grads[1]  # (a new array: a branch may return a view of g)
        for gb in grads[2:]:
            gx += gb
        return gx

    def output_shape(self, input_shape):
        names, shapes = [], []
        for name, branch in self.named_children():
            try:
                shapes.append(tuple(branch.output_shape(tuple(input_shape))))
            except (ValueError, TypeError) as exc:
                _reraise_in_child(exc, name, self)
            names.append(name)
        return self._joined_shape(shapes, names)

    def _joined_shape(self, shapes: list[tuple], names: list[str]) -> tuple:
        """The shape of the concatenation of outputs of `shapes` (see _axis)."""
        axis = self._axis(shapes, names)
        out = list(shapes[0])
        out[axis] = sum(s[axis] for s in shapes)
        return tuple(out)

    def _summarize(self, shape, rf, name, depth, rows):
        row = add_row(rows, self, name, depth)
        names, shapes, fields = [], [], []
        for child_name, branch in self.named_children():
            out, field = branch._summarize(shape, rf, _child_name(name, child_name), depth + 1, rows)
            names.append(child_name)
            shapes.append(tuple(out))
            fields.append(field)
        try:
            out = self._joined_shape(shapes, names)
        except ValueError as exc:
            raise self._summary_error(exc, name) from exc
        rf = join_fields(fields)
        row["output_shape"] = out
        set_field(row, rf)
        return out, rf

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
