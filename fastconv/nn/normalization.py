"""Normalisation layers: BatchNorm1d, BatchNorm2d (statistics of this process's batch, or of
the batches of all processes of a group: :func:`convert_sync_batchnorm`), LayerNorm,
GroupNorm, InstanceNorm2d, LocalResponseNorm."""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

from .. import _args
from .module import (Module, Parameter, _as_input, _layout_advice, _channel_dot, _channel_sum, _float_dtype,
                     _input_float_dtype, _positive_int, _rowdot)


class _BatchNorm(Module):
    """Shared code of BatchNorm1d and BatchNorm2d: statistics per channel (axis 1) over all other
    axes. Training: batch mean and biased variance normalise; running_mean / running_var are
    updated with `momentum` (running = (1 - momentum) running + momentum batch; the variance
    term uses the unbiased batch variance, as PyTorch). momentum=None: cumulative average.
    Eval: the running statistics normalise. y = (x - mean) / sqrt(var + eps) * weight + bias
    (``affine=False``: neither; ``bias=False``: no bias, as PyTorch's keyword).

    ``process_group`` (None: this process's batch alone) makes the batch statistics those of
    the batches of every process of a group, as torch's SyncBatchNorm (see
    :func:`convert_sync_batchnorm`).
    """

    _kept_when_missing = ("num_batches_tracked",)  # (PyTorch < 0.4.1 checkpoints lack it)

    _ndims: tuple[int, ...] = ()
    _layout = ""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, dtype=np.float32, *,
                 bias: bool = True) -> None:
        super().__init__()
        name = type(self).__name__
        self.num_features = _positive_int(num_features, "num_features", name)
        self.eps = float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        dt = _float_dtype(dtype, name)
        self.register_parameter("weight", Parameter(np.ones(num_features, dt)) if self.affine
                                else None)
        use_bias = _args.flag(bias, "bias", name)
        self.register_parameter("bias", Parameter(np.zeros(num_features, dt))
                                if self.affine and use_bias else None)
        if self.track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, dt))
            self.register_buffer("running_var", np.ones(num_features, dt))
            self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.process_group = None

    def __getstate__(self) -> dict:
        # (a group holds the processes' connections: a copy computes local statistics)
        state = super().__getstate__()
        state["process_group"] = None
        return state

    def _group(self):
        """The process group whose batches the statistics span, or None (this process's)."""
        group = getattr(self, "process_group", None)
        return group if group is not None and group.size > 1 else None

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
            advice = _layout_advice(tuple(shape), self.num_features) if len(shape) == 4 else ""
            if len(shape) == 3 and 4 in self._ndims:  # (torch's BatchNorm2d refuses it too)
                advice = (f" ({type(self).__name__} takes no unbatched (C, H, W) image, as "
                          f"PyTorch's: x[None] makes a batch of one)")
            raise ValueError(f"{self!r}: expected input of shape {self._layout.format(C=self.num_features)}, "
                             f"got {tuple(shape)}{advice}")

    def _uses_batch_stats(self) -> bool:
        return self.training or not self.track_running_stats

    def forward(self, x: np.ndarray) -> np.ndarray:
        y, self._cache = self._forward_ctx(x)
        return y

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        return self._backward_ctx(self._get_cache(), grad_y, input_grad)

    # Stateless pieces (apart from the running statistics, this layer's own), for this layer's
    # forward/backward and for fusion.py's BatchNorm -> ReLU step.
    def _forward_ctx(self, x: np.ndarray, relu: bool = False):
        """(output, context for _backward_ctx). relu=True (batch statistics only) returns
        relu(batch_norm(x)), made in the same pass; the backward then applies the ReLU's
        gradient itself."""
        dt = self._param_dtype(x)
        x = _as_input(self, x, dt)
        self._check_shape(x.shape)
        N, C = x.shape[0], x.shape[1]
        x3 = x.reshape(N, C, math.prod(x.shape[2:]))
        m = x3.shape[0] * x3.shape[2]
        use_batch = self._uses_batch_stats()
        if relu and not use_batch:
            raise RuntimeError(f"{self!r}: a fused ReLU needs batch statistics")
        if use_batch and not self.eps > 0:  # a constant channel would divide by 0
            raise ValueError(f"{self!r}: eps must be positive to normalise with batch "
                             f"statistics, got {self.eps}")
        group = self._group() if use_batch else None
        if group is not None:
            return self._forward_group(x3, x.shape, relu, group)
        if x.size == 0:  # an empty batch: an empty output, the statistics kept (as PyTorch)
            if self.training and self.track_running_stats:
                self.num_batches_tracked += 1
            return x.copy(), (None, x3, None, np.ones(C, dt), x.shape, None)
        if use_batch:
            if m <= 1:  # (training, or no running statistics to use)
                raise ValueError(f"{self!r}: expected more than 1 value per channel to "
                                 f"normalise with batch statistics, got input of shape "
                                 f"{x.shape}")
            ops = self._ops()
            w = self.weight.data if self.affine else None
            b = None if self.bias is None else self.bias.data
            y, mean, invstd, var = ops.batch_norm_train(x3, w, b, self.eps, relu=relu)
            self._update_running_stats(mean, var, m)
            ctx = (ops, x3, mean, invstd, x.shape, y if relu else None)
        else:
            invstd = 1.0 / np.sqrt(self.running_var + dt.type(self.eps))
            scale = invstd * self.weight.data if self.affine else invstd
            shift = -self.running_mean * scale
            if self.bias is not None:
                shift += self.bias.data
            y = x3 * scale[:, None]
            y += shift[:, None]
            ctx = (None, x3, None, invstd, x.shape, None)
        return y.reshape(x.shape), ctx

    def _backward_ctx(self, ctx, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """Accumulate the trainable parameters' gradients; return dL/dx (None without
        input_grad)."""
        if isinstance(ctx, _GroupContext):
            return self._backward_group(ctx, grad_y, input_grad)
        ops, x3, mean, invstd, shape, relu_y = ctx
        dt = invstd.dtype
        g = self._check_grad(grad_y, shape, dt)
        train_w = self.affine and self.weight.requires_grad
        train_b = self.bias is not None and self.bias.requires_grad
        if x3.size == 0:  # an empty batch: nothing to add to the parameters' gradients
            return np.zeros(shape, dt) if input_grad else None
        if not (input_grad or train_w or train_b):
            return None
        if ops is not None:  # batch statistics (one kernel makes all three gradients)
            w = self.weight.data if self.affine else None
            dx, gw, gb = ops.batch_norm_train_backward(g.reshape(x3.shape), x3, mean, invstd, w,
                                                       input_grad=input_grad,
                                                       relu_output=relu_y)
            if train_w:
                self.weight.grad += gw
            if train_b:
                self.bias.grad += gb
            return None if dx is None else dx.reshape(shape)
        # running statistics: an affine map per channel
        g3 = g.reshape(x3.shape)
        if train_w:
            xhat = x3 - self.running_mean[:, None]
            xhat *= invstd[:, None]
            self.weight.grad += _channel_dot(g3, xhat)
        if train_b:
            self.bias.grad += _channel_sum(g3)
        if not input_grad:
            return None
        k = invstd * self.weight.data if self.affine else invstd
        return (g3 * k[:, None]).reshape(shape)

    def _update_running_stats(self, mean: np.ndarray, var: np.ndarray, m: int) -> None:
        """In training, fold the batch's mean and biased variance (of m values per channel)
        into the running statistics."""
        if not (self.training and self.track_running_stats):
            return
        dt = self.running_mean.dtype
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

    # Batch statistics over a process group (torch's SyncBatchNorm). Each process has its own
    # rows of the batch; one allreduce of per-channel sums per pass makes the statistics, and
    # the input gradient, those of the whole batch:
    #   forward:  M = sum_p m_p, mean = sum_p m_p mean_p / M,
    #             var = sum_p m_p (var_p + (mean_p - mean)^2) / M     (Chan et al.'s pairwise
    #             combination: each process's variance is about its own mean, so no
    #             cancellation of large sums of squares)
    #   backward: sum_g = sum_p sum(g_p), sum_gxhat = sum_p sum(g_p xhat_p) over all rows;
    #             dx = k (g - sum_g / M - xhat sum_gxhat / M), k = weight * invstd.
    # The parameters' gradients are the sums over this process's rows (a data-parallel run
    # sums or averages the processes' parameter gradients afterwards, as for any layer).
    def _forward_group(self, x3: np.ndarray, shape: tuple, relu: bool, group):
        ops = self._ops()
        dt = x3.dtype
        C = x3.shape[1]
        m = x3.shape[0] * x3.shape[2]
        sums = np.zeros(3 * C + 1, np.float64)
        if m > 0:
            _, mean_p, _, var_p = ops.batch_norm_train(x3, None, None, self.eps)
            mean_p = mean_p.astype(np.float64)
            sums[:C] = m * mean_p
            sums[C:2 * C] = m * var_p
            sums[2 * C:3 * C] = m * mean_p * mean_p
        sums[3 * C] = m
        sums = group.allreduce(sums)
        M = int(round(sums[3 * C]))
        if M <= 1 and self.training:
            raise ValueError(f"{self!r}: expected more than 1 value per channel when training, "
                             f"got {M} over the process group (input of shape {shape} here)")
        if M == 0:  # an empty batch everywhere: an empty output, the statistics kept
            if self.training and self.track_running_stats:
                self.num_batches_tracked += 1
            return x3.reshape(shape).copy(), _GroupContext(
                ops, x3, np.zeros(C, dt), np.ones(C, dt), shape, None, 0, group)
        mean = sums[:C] / M
        # sum_p m_p (mean_p - mean)^2 / M = sum_p m_p mean_p^2 / M - mean^2
        var = np.maximum(sums[C:2 * C] / M + (sums[2 * C:3 * C] / M - mean * mean), 0.0)
        invstd = 1.0 / np.sqrt(var + self.eps)
        # y = x * scale + shift, both per channel, rounded as the batch-norm kernel rounds them
        scale = (invstd * self.weight.data if self.affine else invstd).astype(dt)
        shift = -mean * scale.astype(np.float64)
        if self.bias is not None:
            shift += self.bias.data
        y = np.multiply(x3, scale[:, None])
        y += shift.astype(dt)[:, None]
        if relu:
            np.maximum(y, dt.type(0), out=y)
        mean_t, var_t = mean.astype(dt), var.astype(dt)
        self._update_running_stats(mean_t, var_t, M)
        ctx = _GroupContext(ops, x3, mean_t, invstd.astype(dt), shape, y if relu else None, M,
                            group)
        return y.reshape(shape), ctx

    def _backward_group(self, ctx: "_GroupContext", grad_y: np.ndarray,
                        input_grad: bool) -> np.ndarray | None:
        x3, mean, invstd, M = ctx.x3, ctx.mean, ctx.invstd, ctx.count
        dt = invstd.dtype
        C = x3.shape[1]
        g3 = self._check_grad(grad_y, ctx.shape, dt).reshape(x3.shape)
        train_w = self.affine and self.weight.requires_grad
        train_b = self.bias is not None and self.bias.requires_grad
        if not (input_grad or train_w or train_b):
            return None
        gw = gb = np.zeros(C, dt)
        if x3.size > 0:
            _, gw, gb = ctx.ops.batch_norm_train_backward(g3, x3, mean, invstd, None,
                                                          input_grad=False,
                                                          relu_output=ctx.relu_output)
        if train_w:
            self.weight.grad += gw
        if train_b:
            self.bias.grad += gb
        if not input_grad:  # (the same on every process: no sums needed anywhere)
            return None
        group_sums = ctx.group.allreduce(np.concatenate([gw, gb]).astype(np.float64))
        if M == 0:
            return np.zeros(ctx.shape, dt)
        sum_gxhat, sum_g = group_sums[:C], group_sums[C:]
        # dx = a g - b x + d  (a = k, b = k invstd sum_gxhat / M, d = -k sum_g / M + mean b),
        # as the batch-norm kernel writes it
        is64 = invstd.astype(np.float64)
        k = is64 * self.weight.data if self.affine else is64
        b = k * is64 * sum_gxhat / M
        d = -k * sum_g / M + mean * b
        g = g3 if ctx.relu_output is None else \
            np.where(ctx.relu_output > 0, g3, dt.type(0))
        dx = np.multiply(x3, (-b).astype(dt)[:, None])
        dx += d.astype(dt)[:, None]
        dx += g * k.astype(dt)[:, None]
        return dx.reshape(ctx.shape)

    def output_shape(self, input_shape):
        self._check_shape(tuple(input_shape))
        return tuple(input_shape)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}")


class _GroupContext:
    """What the backward of a forward with group statistics needs (see _forward_group)."""

    __slots__ = ("ops", "x3", "mean", "invstd", "shape", "relu_output", "count", "group")

    def __init__(self, ops, x3, mean, invstd, shape, relu_output, count, group) -> None:
        self.ops, self.x3, self.mean, self.invstd = ops, x3, mean, invstd
        self.shape, self.relu_output, self.count, self.group = shape, relu_output, count, group


def convert_sync_batchnorm(module: Module, process_group) -> Module:
    """Make every BatchNorm1d/BatchNorm2d in ``module`` (itself included) compute its batch
    statistics over the batches of all processes of ``process_group``, as torch's
    ``SyncBatchNorm.convert_sync_batchnorm``; None makes them local again. Returns ``module``.

    The layers keep their class, parameters and buffers (an optimiser over them stays valid,
    state dicts are unchanged); only their ``process_group`` is set. In training the batch
    mean and variance are those of the concatenation of the processes' batches, and so is
    the input gradient; in eval mode the running statistics normalise, with no communication.
    Every process of the group must run the same layers in the same order.

    ``process_group`` is any object with ``size`` (the number of processes) and
    ``allreduce(array)`` (the elementwise sum of a float64 array over the processes, the same
    values on every one), as :class:`fastconv.training.distributed.Communicator`. A group of
    size 1 computes exactly what local statistics compute.
    """
    if process_group is not None and not (hasattr(process_group, "size")
                                          and callable(getattr(process_group, "allreduce", None))):
        raise TypeError(f"convert_sync_batchnorm: process_group must have size and "
                        f"allreduce(array), got {type(process_group).__name__}")
    for m in module.modules():
        if isinstance(m, _BatchNorm):
            object.__setattr__(m, "process_group", process_group)
    return module


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) per channel C (statistics over N, H, W)."""

    _ndims = (4,)
    _layout = "(N, {C}, H, W)"


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) or (N, C, L) per channel C (statistics over N and L)."""

    _ndims = (2, 3)
    _layout = "(N, {C}) or (N, {C}, L)"


def _row_moments(x2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, x - mean, biased variance) of rows (R, K)."""
    mean = x2.mean(axis=1)
    centred = x2 - mean[:, None]
    return mean, centred, _rowdot(centred, centred) / x2.dtype.type(x2.shape[1])


def _normalize_rows(x2: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(xhat, invstd) of rows (R, K): xhat = (x - mean) invstd, invstd = 1 / sqrt(var + eps)
    with the biased variance of each row."""
    _, xhat, var = _row_moments(x2)
    invstd = 1.0 / np.sqrt(var + x2.dtype.type(eps))
    xhat *= invstd[:, None]
    return xhat, invstd


def _normalized_rows_backward(dxhat: np.ndarray, xhat: np.ndarray, invstd: np.ndarray) -> np.ndarray:
    """dL/dx of _normalize_rows from dL/dxhat (a new array):
    dx = invstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)), means along each row."""
    K = xhat.dtype.type(xhat.shape[1])
    c1 = dxhat.mean(axis=1)
    c2 = _rowdot(dxhat, xhat) / K
    dx = xhat * c2[:, None]
    np.subtract(dxhat, dx, out=dx)
    dx -= c1[:, None]
    dx *= invstd[:, None]
    return dx


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
        xhat, invstd = _normalize_rows(x.reshape(-1, K), self.eps)
        if self.weight is not None:
            y = xhat * self.weight.data.reshape(-1)
            if self.bias is not None:
                y += self.bias.data.reshape(-1)
        else:
            y = xhat.copy()
        self._cache = (xhat, invstd, x.shape)
        return y.reshape(x.shape)

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        xhat, invstd, shape = self._get_cache()
        K = xhat.shape[1]
        g2 = self._check_grad(grad_y, shape, xhat.dtype).reshape(-1, K)
        if self.weight is not None and self.weight.requires_grad:
            self.weight.grad += (g2 * xhat).sum(axis=0).reshape(self.normalized_shape)
        if self.bias is not None and self.bias.requires_grad:
            self.bias.grad += g2.sum(axis=0).reshape(self.normalized_shape)
        if not input_grad:
            return None
        dxhat = g2 * self.weight.data.reshape(-1) if self.weight is not None else g2
        return _normalized_rows_backward(dxhat, xhat, invstd).reshape(shape)

    def output_shape(self, input_shape):
        self._check_shape(tuple(input_shape))
        return tuple(input_shape)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}, bias={self.bias is not None}")


class GroupNorm(Module):
    """Group normalisation (Wu & He), as torch.nn.GroupNorm: the C channels of each sample of
    (N, C, *) split into ``num_groups`` groups of C / num_groups channels, each group
    normalised over its channels and positions (biased variance), then a per-channel affine
    y = xhat * weight + bias. Independent of the batch: the same in training and eval."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5,
                 affine: bool = True, dtype=np.float32, *, bias: bool = True) -> None:
        super().__init__()
        self.num_groups = _positive_int(num_groups, "num_groups", "GroupNorm")
        self.num_channels = _positive_int(num_channels, "num_channels", "GroupNorm")
        if self.num_channels % self.num_groups:
            raise ValueError(f"GroupNorm: num_channels ({num_channels}) must be divisible by "
                             f"num_groups ({num_groups})")
        self.eps = float(eps)
        self.affine = bool(affine)
        dt = _float_dtype(dtype, "GroupNorm")
        if self.affine:
            self.weight = Parameter(np.ones(self.num_channels, dt))
        else:
            self.register_parameter("weight", None)
        if self.affine and bias:
            self.bias = Parameter(np.zeros(self.num_channels, dt))
        else:
            self.register_parameter("bias", None)

    def _check_shape(self, shape) -> None:
        if len(shape) < 2 or shape[1] != self.num_channels:
            raise ValueError(f"{self!r}: expected input of shape (N, {self.num_channels}, *), "
                             f"got {tuple(shape)}")

    def _rows(self, shape) -> tuple[int, int]:
        """(N * groups, the values of a group): the rows _normalize_rows takes."""
        return shape[0] * self.num_groups, math.prod(shape[1:]) // self.num_groups

    def _per_channel(self, a: np.ndarray, ndim: int) -> np.ndarray:
        return a.reshape((1, self.num_channels) + (1,) * (ndim - 2))

    def forward(self, x: np.ndarray) -> np.ndarray:
        dt = self.weight.data.dtype if self.weight is not None else _input_float_dtype(x)
        x = _as_input(self, x, dt)
        self._check_shape(x.shape)
        rows = x.reshape(self._rows(x.shape))
        if rows.shape[1]:
            xhat, invstd = _normalize_rows(rows, self.eps)
        else:  # (groups of no values: nothing to normalise)
            xhat, invstd = rows.copy(), np.zeros(len(rows), dt)
        xhat = xhat.reshape(x.shape)
        y = xhat.copy()
        if self.weight is not None:
            y *= self._per_channel(self.weight.data, x.ndim)
        if self.bias is not None:
            y += self._per_channel(self.bias.data, x.ndim)
        self._cache = (xhat, invstd)
        return y

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        xhat, invstd = self._get_cache()
        g = self._check_grad(grad_y, xhat.shape, xhat.dtype)
        axes = (0,) + tuple(range(2, xhat.ndim))
        if self.weight is not None and self.weight.requires_grad:
            self.weight.grad += (g * xhat).sum(axis=axes)
        if self.bias is not None and self.bias.requires_grad:
            self.bias.grad += g.sum(axis=axes)
        if not input_grad:
            return None
        dxhat = g * self._per_channel(self.weight.data, g.ndim) if self.weight is not None else g
        rows = self._rows(xhat.shape)
        if not rows[1]:
            return np.zeros_like(xhat)
        return _normalized_rows_backward(dxhat.reshape(rows), xhat.reshape(rows),
                                         invstd).reshape(xhat.shape)

    def output_shape(self, input_shape):
        self._check_shape(tuple(input_shape))
        return tuple(input_shape)

    def extra_repr(self) -> str:
        return (f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
                f"bias={self.bias is not None}")


class InstanceNorm2d(Module):
    """Instance normalisation (Ulyanov et al.), as torch.nn.InstanceNorm2d: each channel of each
    sample of (N, C, H, W), or of one sample (C, H, W), normalised over its H x W values
    (biased variance), then, with ``affine``, a per-channel y = xhat * weight + bias (weight
    ones and bias zeros at first; ``bias=False`` leaves the shift out).

    track_running_stats: in training the running_mean / running_var buffers follow the
    instances' means and unbiased variances, averaged over the batch (running = (1 - momentum)
    running + momentum * batch average; momentum None keeps them, as PyTorch's 0); in eval
    they normalise instead, as BatchNorm's. Without it (the default) the instance statistics
    normalise in eval too. num_batches_tracked is in the state dict and, as PyTorch's, stays 0.
    An empty batch gives an empty output and leaves the statistics alone (PyTorch fails).
    Without affine and running statistics, a channel count other than num_features is
    computed with a warning, as PyTorch's.
    """

    _kept_when_missing = ("num_batches_tracked",)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = False, track_running_stats: bool = False, dtype=np.float32, *,
                 bias: bool = True) -> None:
        super().__init__()
        self.num_features = _positive_int(num_features, "num_features", "InstanceNorm2d")
        self.eps = float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        dt = _float_dtype(dtype, "InstanceNorm2d")
        c = self.num_features
        self.register_parameter("weight", Parameter(np.ones(c, dt)) if self.affine else None)
        self.register_parameter("bias", Parameter(np.zeros(c, dt)) if self.affine and bias
                                else None)
        track = self.track_running_stats
        self.register_buffer("running_mean", np.zeros(c, dt) if track else None)
        self.register_buffer("running_var", np.ones(c, dt) if track else None)
        self.register_buffer("num_batches_tracked", np.array(0, np.int64) if track else None)

    def _param_dtype(self, x) -> np.dtype:
        for a in (self.weight, self.running_mean):
            if a is not None:
                return a.dtype
        return _input_float_dtype(x)

    def _check_shape(self, shape, warn: bool = False) -> None:
        """ValueError unless (N, C, H, W) or (C, H, W) with C = num_features; a C that only
        the warning-free PyTorch path would reject warns when `warn`."""
        c = self.num_features
        if len(shape) not in (3, 4):
            raise ValueError(f"{self!r}: expected input of shape (N, {c}, H, W) or ({c}, H, W), "
                             f"got {tuple(shape)}{_layout_advice(tuple(shape), c)}")
        axis = len(shape) - 3
        if shape[axis] == c:
            return
        if self.affine or self.track_running_stats:
            raise ValueError(f"{self!r}: expected input's size at dim={axis} to match "
                             f"num_features ({c}), got input of shape {tuple(shape)}")
        if warn:
            warnings.warn(f"{self!r}: input's size at dim={axis} does not match num_features "
                          f"(input of shape {tuple(shape)}); it is not used, as affine=False",
                          UserWarning, stacklevel=3)

    def _uses_input_stats(self) -> bool:
        return self.training or not self.track_running_stats

    def _per_channel(self, a: np.ndarray) -> np.ndarray:
        return a.reshape(1, -1, 1, 1)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _as_input(self, x, self._param_dtype(x))
        self._check_shape(x.shape, warn=True)
        x4 = x if x.ndim == 4 else x[None]
        N, C, H, W = x4.shape
        input_stats = self._uses_input_stats()
        if input_stats:
            if H * W <= 1:
                raise ValueError(f"{self!r}: expected more than 1 spatial element when "
                                 f"training, got input of shape {x.shape}")
            rows = x4.reshape(N * C, H * W)
            if self.training and self.track_running_stats and N:
                self._update_running_stats(rows, N)
            xhat, invstd = _normalize_rows(rows, self.eps)
            xhat = xhat.reshape(x4.shape)
        else:
            invstd = 1.0 / np.sqrt(self.running_var + x.dtype.type(self.eps))
            xhat = (x4 - self._per_channel(self.running_mean)) * self._per_channel(invstd)
        y = xhat.copy()
        if self.weight is not None:
            y *= self._per_channel(self.weight.data)
        if self.bias is not None:
            y += self._per_channel(self.bias.data)
        self._cache = (xhat, invstd, input_stats, x.shape)
        return y.reshape(x.shape)

    def _update_running_stats(self, rows: np.ndarray, n: int) -> None:
        """Fold the batch average of the instances' means and unbiased variances (rows of
        N * C values) into the running statistics, as PyTorch's instance_norm does."""
        momentum = 0.0 if self.momentum is None else self.momentum
        dt = self.running_mean.dtype.type
        mean, _, var = _row_moments(rows)
        k = rows.shape[1]
        for running, batch in ((self.running_mean, mean),
                               (self.running_var, var * dt(k / (k - 1)))):
            running *= dt(1.0 - momentum)
            running += dt(momentum) * batch.reshape(n, -1).mean(axis=0)

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        xhat, invstd, input_stats, shape = self._get_cache()
        N, C, H, W = xhat.shape
        g = self._check_grad(grad_y, shape, xhat.dtype).reshape(xhat.shape)
        if self.weight is not None and self.weight.requires_grad:
            self.weight.grad += _channel_dot(g.reshape(N, C, H * W), xhat.reshape(N, C, H * W))
        if self.bias is not None and self.bias.requires_grad:
            self.bias.grad += _channel_sum(g.reshape(N, C, H * W))
        if not input_grad:
            return None
        dxhat = g * self._per_channel(self.weight.data) if self.weight is not None else g
        if not input_stats:  # running statistics: an affine map per channel
            return (dxhat * self._per_channel(invstd)).reshape(shape)
        rows = (N * C, H * W)
        return _normalized_rows_backward(dxhat.reshape(rows), xhat.reshape(rows),
                                         invstd).reshape(shape)

    def output_shape(self, input_shape):
        self._check_shape(tuple(input_shape))
        return tuple(input_shape)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, bias={self.bias is not None}, "
                f"track_running_stats={self.track_running_stats}")


class LocalResponseNorm(Module):
    """Local response normalisation across channels (AlexNet's), as torch.nn.LocalResponseNorm:
    for input (N, C, *),

        y[:, c] = x[:, c] / (k + alpha / size * sum_{c' = c - size//2}^{c + (size-1)//2} x[:, c']^2)^beta

    channels outside [0, C) counting as zeros. No parameters; the same in training and eval.
    """

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k = _args.local_response_norm_args(
            size, alpha, beta, k, "LocalResponseNorm")

    def _check_shape(self, shape) -> None:
        if len(shape) < 3:
            raise ValueError(f"{self!r}: expected input of shape (N, C, *) (3-D or more), "
                             f"got {tuple(shape)}")

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _as_input(self, x, None)
        self._check_shape(x.shape)
        ops = self._ops()
        self._cache = (ops, x)
        return ops.local_response_norm(x, self.size, self.alpha, self.beta, self.k)

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray:
        ops, x = self._get_cache()
        return ops.local_response_norm_backward(self._check_grad(grad_y, x.shape, x.dtype), x,
                                                self.size, self.alpha, self.beta, self.k)

    def output_shape(self, input_shape):
        self._check_shape(tuple(input_shape))
        return tuple(input_shape)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
