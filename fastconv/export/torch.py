"""fastconv models as PyTorch modules: :func:`to_torch` and :func:`save_torch_state_dict`.

::

    from fastconv import models
    from fastconv.export import to_torch, save_torch_state_dict
    model = models.resnet18(seed=0)
    tmodel = to_torch(model)              # torch.nn.Module, same tree, weights and modes
    save_torch_state_dict(model, "resnet18.pt")   # torch.load(...) -> {key: tensor}

PyTorch is imported when these are called, not when fastconv is: fastconv does not depend on
it, and without it both raise ImportError with the pip command.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Callable

import numpy as np

from .. import nn

__all__ = ["to_torch", "save_torch_state_dict"]


def _import_torch():
    try:
        import torch
    except ImportError as exc:
        raise ImportError("fastconv.export needs PyTorch, which fastconv does not depend on: "
                          "pip install torch") from exc
    return torch


def _dtype(torch, module: nn.Module):
    """The torch dtype of `module`'s parameters (else of its floating buffers), or None."""
    dt = module.dtype
    if dt is None:
        dt = next((b.dtype for b in module.buffers(recurse=False) if b.dtype.kind == "f"), None)
    if dt is None:
        return None
    return torch.float64 if np.dtype(dt) == np.float64 else torch.float32


def _tensor(torch, array: np.ndarray):
    """`array` as a torch tensor of its shape: 0-d stays 0-d (a batch norm's
    num_batches_tracked, as torch's; np.ascontiguousarray would make it (1,))."""
    return torch.from_numpy(np.asarray(array, order="C"))


def _children(module: nn.Module, convert) -> "OrderedDict[str, Any]":
    return OrderedDict((name, convert(child, name)) for name, child in module.named_children())


def _converters(torch) -> dict[type, Callable]:
    """fastconv type -> function(module, convert_child) building its torch twin (without
    weights: to_torch loads them afterwards). Exact types only: a subclass may compute
    something else."""
    from . import torch_modules as tm

    tnn = torch.nn

    def sequential(m, convert):
        return tnn.Sequential(_children(m, convert))

    def residual(m, convert):
        shortcut = None if m.shortcut is None else convert(m.shortcut, "shortcut")
        return tm.Residual(convert(m.body, "body"), shortcut)

    def concat(m, convert):
        return tm.Concat(_children(m, convert), dim=m.dim)

    def conv(m, convert):
        return tnn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride,
                          padding=m.padding, dilation=m.dilation, groups=m.groups,
                          bias=m.bias is not None, padding_mode=m.padding_mode,
                          dtype=_dtype(torch, m))

    def conv_transpose(m, convert):
        return tnn.ConvTranspose2d(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride,
                                   padding=m.padding, output_padding=m.output_padding,
                                   groups=m.groups, bias=m.bias is not None, dilation=m.dilation,
                                   dtype=_dtype(torch, m))

    def linear(m, convert):
        return tnn.Linear(m.in_features, m.out_features, bias=m.bias is not None,
                          dtype=_dtype(torch, m))

    def batch_norm(cls):
        def build(m, convert):
            return cls(m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
                       track_running_stats=m.track_running_stats, dtype=_dtype(torch, m),
                       bias=m.bias is not None)
        return build

    def layer_norm(m, convert):
        return tnn.LayerNorm(m.normalized_shape, eps=m.eps, elementwise_affine=m.elementwise_affine,
                             bias=m.bias is not None, dtype=_dtype(torch, m))

    def max_pool(m, convert):
        return tnn.MaxPool2d(m.kernel_size, stride=m.stride, padding=m.padding,
                             dilation=m.dilation, return_indices=m.return_indices,
                             ceil_mode=m.ceil_mode)

    def avg_pool(m, convert):
        return tnn.AvgPool2d(m.kernel_size, stride=m.stride, padding=m.padding,
                             ceil_mode=m.ceil_mode, count_include_pad=m.count_include_pad,
                             divisor_override=m.divisor_override)

    def upsample(m, convert):
        return tnn.Upsample(size=m.size, scale_factor=m.scale_factor, mode=m.mode,
                            align_corners=m.align_corners,
                            recompute_scale_factor=m.recompute_scale_factor)

    def stateless(cls):
        return lambda m, convert: cls()

    return {
        nn.Sequential: sequential,
        nn.Residual: residual,
        nn.Concat: concat,
        nn.Conv2d: conv,
        nn.ConvTranspose2d: conv_transpose,
        nn.Linear: linear,
        nn.BatchNorm1d: batch_norm(tnn.BatchNorm1d),
        nn.BatchNorm2d: batch_norm(tnn.BatchNorm2d),
        nn.LayerNorm: layer_norm,
        nn.GroupNorm: lambda m, convert: tnn.GroupNorm(m.num_groups, m.num_channels, eps=m.eps,
                                                       affine=m.affine, bias=m.bias is not None,
                                                       dtype=_dtype(torch, m)),
        nn.InstanceNorm2d: lambda m, convert: tnn.InstanceNorm2d(
            m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
            track_running_stats=m.track_running_stats, dtype=_dtype(torch, m),
            bias=m.bias is not None),
        nn.LocalResponseNorm: lambda m, convert: tnn.LocalResponseNorm(m.size, alpha=m.alpha,
                                                                       beta=m.beta, k=m.k),
        nn.MaxPool2d: max_pool,
        nn.MaxUnpool2d: lambda m, convert: tnn.MaxUnpool2d(m.kernel_size, stride=m.stride,
                                                           padding=m.padding),
        nn.AvgPool2d: avg_pool,
        nn.AdaptiveAvgPool2d: lambda m, convert: tnn.AdaptiveAvgPool2d(m.output_size),
        nn.Upsample: upsample,
        nn.ReLU: stateless(tnn.ReLU),
        nn.LeakyReLU: lambda m, convert: tnn.LeakyReLU(m.negative_slope),
        nn.Tanh: stateless(tnn.Tanh),
        nn.Sigmoid: stateless(tnn.Sigmoid),
        nn.GELU: lambda m, convert: tnn.GELU(approximate=m.approximate),
        nn.SiLU: stateless(tnn.SiLU),
        nn.ReLU6: stateless(tnn.ReLU6),
        nn.PReLU: lambda m, convert: tnn.PReLU(m.num_parameters, dtype=_dtype(torch, m)),
        nn.ELU: lambda m, convert: tnn.ELU(m.alpha),
        nn.Hardsigmoid: stateless(tnn.Hardsigmoid),
        nn.Hardswish: stateless(tnn.Hardswish),
        nn.Hardtanh: lambda m, convert: tnn.Hardtanh(m.min_val, m.max_val),
        nn.Softplus: lambda m, convert: tnn.Softplus(m.beta, m.threshold),
        nn.Mish: stateless(tnn.Mish),
        nn.LogSigmoid: stateless(tnn.LogSigmoid),
        nn.Softmax: lambda m, convert: tnn.Softmax(m.dim),
        nn.LogSoftmax: lambda m, convert: tnn.LogSoftmax(m.dim),
        nn.Dropout: lambda m, convert: tnn.Dropout(m.p),
        nn.Dropout2d: lambda m, convert: tnn.Dropout2d(m.p),
        nn.ZeroPad2d: lambda m, convert: tnn.ZeroPad2d(m.padding),
        nn.ConstantPad2d: lambda m, convert: tnn.ConstantPad2d(m.padding, m.value),
        nn.ReflectionPad2d: lambda m, convert: tnn.ReflectionPad2d(m.padding),
        nn.ReplicationPad2d: lambda m, convert: tnn.ReplicationPad2d(m.padding),
        nn.CircularPad2d: lambda m, convert: tnn.CircularPad2d(m.padding),
        nn.Flatten: lambda m, convert: tnn.Flatten(m.start_dim, m.end_dim),
        nn.Unflatten: lambda m, convert: tnn.Unflatten(m.dim, m.unflattened_size),
        nn.Identity: stateless(tnn.Identity),
        nn.Mul: lambda m, convert: tm.Mul(m.scale),
    }


def _tie_shared_parameters(model: nn.Module, tmodel) -> None:
    """A fastconv Parameter used by several layers (``b.weight = a.weight``) becomes one torch
    Parameter used by the same layers, as it would be written in PyTorch."""
    tmodules = dict(tmodel.named_modules(remove_duplicate=False))
    first: dict[int, Any] = {}
    for path, m in model.named_modules():
        for name, p in m._parameters.items():
            if p is None:
                continue
            if id(p) in first:
                setattr(tmodules[path], name, first[id(p)])
            else:
                first[id(p)] = getattr(tmodules[path], name)


def to_torch(model: nn.Module):
    """A ``torch.nn.Module`` mirroring `model`: the same tree (``torch.nn.Sequential`` with the
    same child names, :mod:`fastconv.export.torch_modules`' Residual, Concat and Mul, the
    torch.nn layer of each layer with its hyper-parameters), a copy of the weights and
    buffers in the same dtypes (float32/float64), the same ``requires_grad`` flags, the same
    training flag per module, and parameters shared between layers shared again. Its
    ``state_dict()`` has `model`'s keys, and its outputs and gradients are `model`'s up to
    rounding (dropout masks are drawn by PyTorch, so they differ).

    Raises TypeError naming the module's path for a module type without a twin here (a
    subclass of a fastconv layer counts as one: its forward may differ), and ImportError
    when PyTorch is not installed.
    """
    torch = _import_torch()
    if not isinstance(model, nn.Module):
        raise TypeError(f"to_torch: expected a fastconv.nn.Module, got {type(model).__name__}")
    converters = _converters(torch)

    def convert(module: nn.Module, path: str):
        build = converters.get(type(module))
        if build is None:
            where = f"module {path!r}" if path else "the model"
            raise TypeError(f"to_torch: {where} is a {type(module).__module__}."
                            f"{type(module).__qualname__}, which has no PyTorch twin here "
                            f"(supported: {', '.join(sorted(t.__name__ for t in converters))})")
        return build(module, lambda child, name: convert(child, f"{path}.{name}" if path else name))

    tmodel = convert(model, "")
    _tie_shared_parameters(model, tmodel)
    state = {k: _tensor(torch, v) for k, v in model.state_dict().items()}
    tmodel.load_state_dict(state, strict=True)
    tparams = dict(tmodel.named_parameters(remove_duplicate=False))
    tmodules = dict(tmodel.named_modules(remove_duplicate=False))
    for path, m in model.named_modules():
        tmodules[path].training = m.training  # (per module: train() would set the children too)
        for name, p in m._parameters.items():
            if p is not None:
                tparams[f"{path}.{name}" if path else name].requires_grad_(p.requires_grad)
    return tmodel


def save_torch_state_dict(model: nn.Module, path: str | os.PathLike) -> None:
    """Write `model`'s state dict as PyTorch's ``torch.save`` does (an OrderedDict of tensors
    under the same keys; ``torch.load(path, weights_only=True)`` reads it), atomically: the
    file is whole or absent. Works for any fastconv model, with or without a twin in
    :func:`to_torch`. ImportError when PyTorch is not installed."""
    from ..checkpoint import atomic_write

    torch = _import_torch()
    state = OrderedDict((k, _tensor(torch, v)) for k, v in model.state_dict().items())
    with atomic_write(path) as f:
        torch.save(state, f)
