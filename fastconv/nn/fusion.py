"""The fusion planner: which runs of layers in a chain run as one step.

:func:`plan` turns a chain of layers (the children of a :class:`~fastconv.nn.Sequential`,
wherever it sits: a model, a Residual's body or shortcut, a Concat's branch) into steps, each
with ``forward(x)`` and ``backward(grad_y, input_grad)``:

* Conv2d -> (ReLU ->) MaxPool2d: one forward op, conv2d_max_pool2d (for RGB first layers and
  Winograd layers the conv output is never stored whole: each image's planes are pooled in
  cache). Without an input gradient (the first layer of a network, in training) the backward
  is one op too, conv2d_backward_through_max_pool (the conv output's gradient is not stored
  whole either).
* BatchNorm (batch statistics) -> ReLU: one pass computes relu(batch_norm(x)), and its
  backward applies the ReLU's gradient in the batch norm's own passes.
* ReLU -> MaxPool2d: one pass computes relu(max_pool(x)), the ReLU on 1/k^2 of the data, and
  the pooling's backward applies the ReLU's gradient in its scatter. max is monotone, so
  relu(max(window)) == max(relu(window)); where the gradient is nonzero (window max > 0) both
  orders pick the same arg-max, and elsewhere both give 0.
* any other layer (containers included) on its own, by its own forward and backward.

An unbatched (C, H, W) input runs through a fused step as through its layers one by one: the
step makes it a batch of one and strips the batch axis off its output and input gradient
(module._accepts_unbatched); a BatchNorm2d refuses it, as PyTorch's does.

A fused step keeps its layers' forward contexts itself (the layers' stateless pieces
``_forward_ctx`` / ``_backward_ctx`` make and take them); no layer reads or writes another's
state. The fused runs give the results of the layers run one by one, bit for bit: the same
kernels run on the same data, only without the intermediate tensors. Layers fuse only when
they run on one backend (the same ``set_backend`` override, or none).

A plan depends on the layers' types, training modes (batch statistics) and backends and on
the switch below: a container keeps its plan until any of those changes anywhere (module.py
counts such changes: ``train``/``eval``, ``set_backend``, adding or replacing a sub-module,
this switch), so planning costs one integer compare per forward.

Example (every layer on its own inside the block: the same results, slower)::

    from fastconv.nn import fusion
    with fusion.enabled(False):
        y = model(x)
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np

from .activation import ReLU
from .conv import Conv2d
from .module import (Module, _accepts_unbatched, _invalidate_plans, _plan_epoch,
                     _unbatched_backward)
from .normalization import _BatchNorm
from .pool import MaxPool2d

__all__ = ["enabled", "is_enabled", "plan", "plan_epoch", "Step", "LayerStep",
           "ConvMaxPoolStep", "BatchNormReLUStep", "ReLUMaxPoolStep"]

_enabled = True


@contextmanager
def enabled(flag: bool = True) -> Iterator[None]:
    """Within the block, fuse (True) or run every layer on its own (False); restored after."""
    global _enabled
    before = _enabled
    _enabled = bool(flag)
    _invalidate_plans()
    try:
        yield
    finally:
        _enabled = before
        _invalidate_plans()


def is_enabled() -> bool:
    """Whether the planner fuses (see :func:`enabled`)."""
    return _enabled


def plan_epoch() -> int:
    """The count of changes plans depend on; a plan made at another count is out of date."""
    return _plan_epoch[0]


class Step:
    """Layers run as one: ``forward(x) -> y`` and ``backward(grad_y, input_grad) -> dL/dx``
    (None without input_grad), accumulating the layers' parameter gradients.

    names: the layers' names in their container; error_name(backward): the name an error is
    reported under (the layer whose checks see bad input or a bad gradient first).
    """

    __slots__ = ("names", "layers", "_ctx", "_unbatched")
    _forward_blame = 0   # index in names of the layer blamed for errors, forward / backward
    _backward_blame = -1

    def __init__(self, names, layers) -> None:
        self.names = tuple(names)
        self.layers = tuple(layers)
        self._ctx = None
        self._unbatched = None  # (see module._accepts_unbatched)

    def error_name(self, backward: bool) -> str:
        return self.names[self._backward_blame if backward else self._forward_blame]

    def needs_grad(self) -> bool:
        """Whether a layer of this step has a trainable parameter."""
        return any(layer._needs_grad() for layer in self.layers)

    def _context(self):
        if self._ctx is None:
            raise RuntimeError(f"{self!r}: backward called before forward")
        return self._ctx

    def _ran_fused(self, ctx) -> None:
        """Keep `ctx`; the layers drop their own older forward values (see
        Module._forget_forward)."""
        self._ctx = ctx
        for layer in self.layers:
            layer._forget_forward()

    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        raise NotImplementedError

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}: {type(m).__name__}" for n, m in zip(self.names, self.layers))
        return f"{type(self).__name__}({inner})"


class LayerStep(Step):
    """One layer (or container), run by its own forward and backward: it keeps its own cache."""

    __slots__ = ()

    def forward(self, x):
        return self.layers[0].forward(x)

    def backward(self, grad_y, input_grad=True):
        return self.layers[0].backward(grad_y, input_grad=input_grad)


class ConvMaxPoolStep(Step):
    """Conv2d -> (ReLU ->) MaxPool2d (layers: conv, [relu,] pool)."""

    __slots__ = ()

    @_accepts_unbatched
    def forward(self, x):
        conv, pool = self.layers[0], self.layers[-1]
        y, conv_ctx, pool_ctx = conv._forward_max_pool_ctx(pool, x, relu=len(self.layers) == 3)
        self._ran_fused((conv_ctx, pool_ctx))
        return y

    @_unbatched_backward
    def backward(self, grad_y, input_grad=True):
        conv, pool = self.layers[0], self.layers[-1]
        conv_ctx, pool_ctx = self._context()
        if not input_grad:  # (the ReLU's gradient is applied inside, from the pooled output)
            conv._backward_through_max_pool_ctx(conv_ctx, pool, pool_ctx, grad_y)
            return None
        g = pool._backward_ctx(pool_ctx, grad_y)
        return conv._backward_ctx(conv_ctx, g, True)


class BatchNormReLUStep(Step):
    """BatchNorm1d/2d with batch statistics -> ReLU (layers: bn, relu)."""

    __slots__ = ()

    def forward(self, x):
        bn = self.layers[0]
        if not bn._uses_batch_stats():
            # (track_running_stats switched on after planning: no fused kernel for that)
            self._ctx = None
            return self.layers[1].forward(bn.forward(x))
        y, ctx = bn._forward_ctx(x, relu=True)
        self._ran_fused(ctx)
        return y

    def backward(self, grad_y, input_grad=True):
        bn, relu = self.layers
        if self._ctx is None:  # run one by one
            return bn.backward(relu.backward(grad_y), input_grad=input_grad)
        return bn._backward_ctx(self._ctx, grad_y, input_grad)


class ReLUMaxPoolStep(Step):
    """ReLU -> MaxPool2d (layers: relu, pool), as relu(max_pool(x))."""

    __slots__ = ()
    _forward_blame = 1  # (the pooling checks the input; the ReLU takes any shape)

    @_accepts_unbatched
    def forward(self, x):
        y, ctx = self.layers[1]._forward_ctx(x, relu=True)
        self._ran_fused(ctx)
        return y

    @_unbatched_backward
    def backward(self, grad_y, input_grad=True):
        return self.layers[1]._backward_ctx(self._context(), grad_y)


def _plain_max_pool(layer) -> bool:
    """A MaxPool2d giving its output alone (with return_indices it gives a pair)."""
    return type(layer) is MaxPool2d and not layer.return_indices


def _one_backend(*layers: Module) -> bool:
    backend = layers[0]._backend
    return all(m._backend == backend for m in layers[1:])


def plan(named_layers, fuse: bool | None = None) -> list[Step]:
    """The steps that run the chain `named_layers` ((name, layer) pairs, in order), fusing
    where it can (see the module docstring) unless `fuse` is False (default: the switch)."""
    if fuse is None:
        fuse = _enabled
    items = [(name, layer) for name, layer in named_layers]
    steps: list[Step] = []
    i, n = 0, len(items)
    while i < n:
        run = _fusable_run(items, i) if fuse else None
        if run is None:
            steps.append(LayerStep(items[i][:1], items[i][1:]))
            i += 1
        else:
            kind, length = run
            names, layers = zip(*items[i:i + length])
            steps.append(kind(names, layers))
            i += length
    return steps


def _fusable_run(items, i):
    """(step class, number of layers) of the fused step starting at items[i], or None."""
    layer = items[i][1]
    nxt = items[i + 1][1] if i + 1 < len(items) else None
    kind = type(layer)
    if kind is Conv2d:
        after = items[i + 2][1] if i + 2 < len(items) else None
        if type(nxt) is ReLU and _plain_max_pool(after) and _one_backend(layer, nxt, after):
            return ConvMaxPoolStep, 3
        if _plain_max_pool(nxt) and _one_backend(layer, nxt):
            return ConvMaxPoolStep, 2
    elif isinstance(layer, _BatchNorm) and type(layer).forward is _BatchNorm.forward:
        if type(nxt) is ReLU and layer._uses_batch_stats() and _one_backend(layer, nxt):
            return BatchNormReLUStep, 2
    elif kind is ReLU:
        if _plain_max_pool(nxt) and _one_backend(layer, nxt):
            return ReLUMaxPoolStep, 2
    return None
