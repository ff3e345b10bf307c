"""Neural-network layers with explicit forward and backward passes, PyTorch-compatible.

Every layer is a :class:`Module`:

* ``y = layer(x)`` / ``layer.forward(x)`` computes the output and caches what backward needs;
* ``grad_x = layer.backward(grad_y)`` returns dL/dx and *accumulates* dL/dparam into each
  ``Parameter.grad`` (call ``zero_grad()`` between steps);
* ``train()`` / ``eval()`` switch Dropout and BatchNorm between their two behaviours;
* ``requires_grad_(False)`` (or ``p.requires_grad = False``) freezes parameters: no gradient
  work for them, and optimisers leave them alone;
* ``state_dict()`` / ``load_state_dict()`` use PyTorch's key names (``"0.weight"``,
  ``"3.running_mean"``, ``"3.num_batches_tracked"``), so a PyTorch state dict converted to NumPy
  arrays loads as is and gives the same outputs.

Inputs are batches (N, C, H, W); the 2-D layers that take one unbatched image (C, H, W) in
PyTorch take it here too (convolutions, poolings, MaxUnpool2d, padding, InstanceNorm2d, and
containers of them) and give the output, and in backward the input gradient, without the batch
axis, the values bit for bit those of the batch of one x[None]. Where PyTorch refuses 3-D
input or means something else by it, so does fastconv (BatchNorm2d refuses it; Upsample,
whose 3-D input is 1-D data in PyTorch, refuses it; Dropout2d and LocalResponseNorm take it
as (N, C, L), as PyTorch's).

``model.apply(fn)`` calls ``fn`` on every module (children first), e.g. to initialise
weights; :mod:`fastconv.nn.utils` has ``clip_grad_norm_``, ``clip_grad_value_``,
``parameters_to_vector`` and ``vector_to_parameters``, as ``torch.nn.utils``.

Containers (``Sequential``, ``Residual``, ``Concat``) nest freely; state-dict keys follow the
module tree (``"layer1.0.body.0.weight"``), and ``model.summary(input_shape)`` prints it. Which
runs of layers inside them execute fused is decided by :mod:`fastconv.nn.fusion`.

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

from . import fusion, utils
from .activation import (ELU, GELU, Hardsigmoid, Hardswish, Hardtanh, LeakyReLU, LogSigmoid,
                         LogSoftmax, Mish, PReLU, ReLU, ReLU6, Sigmoid, SiLU, Softmax, Softplus,
                         Tanh)
from .containers import Concat, Residual, Sequential
from .conv import Conv2d, ConvTranspose2d
from .dropout import Dropout, Dropout2d
from .linear import Flatten, Identity, Linear, Mul, Unflatten
from .module import IncompatibleKeys, Module, Parameter
from .normalization import (BatchNorm1d, BatchNorm2d, GroupNorm, InstanceNorm2d, LayerNorm,
                            LocalResponseNorm, convert_sync_batchnorm)
from .padding import CircularPad2d, ConstantPad2d, ReflectionPad2d, ReplicationPad2d, ZeroPad2d
from .pool import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d, MaxUnpool2d
from .summary import ModelSummary
from .upsample import Upsample

__all__ = [
    "Parameter", "Module", "Sequential", "Residual", "Concat", "Identity",
    "Conv2d", "ConvTranspose2d", "MaxPool2d", "MaxUnpool2d", "AvgPool2d", "AdaptiveAvgPool2d",
    "Upsample",
    "Linear", "Flatten", "Unflatten", "Mul",
    "ZeroPad2d", "ConstantPad2d", "ReflectionPad2d", "ReplicationPad2d", "CircularPad2d",
    "ReLU", "ReLU6", "LeakyReLU", "PReLU", "ELU", "Tanh", "Sigmoid", "Hardsigmoid", "Hardswish",
    "Hardtanh", "Softplus", "Mish", "LogSigmoid", "GELU", "SiLU", "Softmax", "LogSoftmax",
    "Dropout", "Dropout2d",
    "BatchNorm1d", "BatchNorm2d", "LayerNorm", "GroupNorm", "InstanceNorm2d", "LocalResponseNorm",
    "convert_sync_batchnorm", "ModelSummary",
    "IncompatibleKeys", "fusion", "utils",
]
