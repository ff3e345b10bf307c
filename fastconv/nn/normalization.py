"""Normalisation layers: BatchNorm1d, BatchNorm2d, LayerNorm."""

from __future__ import annotations

import math
import numbers

import numpy as np

from .module import (Module, Parameter, _as_input, _layout_advice, _channel_dot, _channel_sum, _float_dtype,
                     _input_float_dtype, _positive_int, _rowdot)


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
            advice = _layout_advice(tuple(shape), self.num_features) if len(shape) == 4 else ""
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
        if x.size == 0:  # an empty batch: an empty output, the statistics kept (as PyTorch)
            if self.training and self.track_running_stats:
                self.num_batches_tracked += 1
            return x.copy(), (None, x3, None, np.ones(C, dt), x.shape, None)
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
            ctx = (ops, x3, mean, invstd, x.shape, y if relu else None)
        else:
            invstd = 1.0 / np.sqrt(self.running_var + dt.type(self.eps))
            scale = invstd * self.weight.data if self.affine else invstd
            shift = -self.running_mean * scale
            if self.affine:
                shift += self.bias.data
            y = x3 * scale[:, None]
            y += shift[:, None]
            ctx = (None, x3, None, invstd, x.shape, None)
        return y.reshape(x.shape), ctx

    def _backward_ctx(self, ctx, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """Accumulate the trainable parameters' gradients; return dL/dx (None without
        input_grad)."""
        ops, x3, mean, invstd, shape, relu_y = ctx
        dt = invstd.dtype
        g = self._check_grad(grad_y, shape, dt)
        train_w = self.affine and self.weight.requires_grad
        train_b = self.affine and self.bias.requires_grad
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
