"""Containers: Sequential."""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Callable, Iterator

import numpy as np

from .activation import ReLU
from .conv import Conv2d
from .linear import Flatten, Linear
from .module import Module, _reraise_with_context
from .normalization import _BatchNorm
from .pool import MaxPool2d
from .summary import ModelSummary, _fmt_shape


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
