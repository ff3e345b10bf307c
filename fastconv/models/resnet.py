"""Residual networks for 3 x 32 x 32 inputs (CIFAR-10), built from nn.Sequential and nn.Residual.

Builders take ``num_classes=10``, ``rng`` (a Generator or an int seed; ``seed=`` is an alias),
``dtype=np.float32`` and ``width=64`` (the channels of the first stage; every stage scales
with it, for small test instances). Weights are initialised as PyTorch's defaults, drawn from
one generator in layer order; BatchNorm starts at weight 1, bias 0.

``resnet9``: the DAWNBench ResNet-9 of Myrtle.ai (David Page, "How to train your ResNet",
2018), 6,573,120 parameters with 10 classes. ``conv_bn(c)`` is Conv2d(3x3, padding 1, no
bias) -> BatchNorm2d -> ReLU::

    prep    conv_bn(64)                                               (64, 32, 32)
    layer1  conv_bn(128) MaxPool2d(2) Residual(conv_bn(128) conv_bn(128)) (128, 16, 16)
    layer2  conv_bn(256) MaxPool2d(2)                                 (256, 8, 8)
    layer3  conv_bn(512) MaxPool2d(2) Residual(conv_bn(512) conv_bn(512)) (512, 4, 4)
    pool    MaxPool2d(4)   flatten   linear Linear(512, classes, bias=False)   scale Mul(0.125)

``resnet18``: the CIFAR ResNet-18 of kuangliu/pytorch-cifar (a 3x3 stem without max pooling,
for 32 x 32 images), 11,173,962 parameters with 10 classes::

    conv1 bn1 relu        Conv2d(3, 64, 3, padding 1, no bias) BatchNorm2d ReLU   (64, 32, 32)
    layer1 .. layer4      two basic blocks each, 64 / 128 / 256 / 512 channels,
                          the first block of layers 2-4 with stride 2       (512, 4, 4)
    avgpool flatten linear  AdaptiveAvgPool2d(1) Flatten Linear(512, classes)

a basic block (:func:`basic_block`) being ``Sequential(Residual(body, shortcut), ReLU())``.

State-dict keys follow the tree (``layer1.4.body.0.weight`` is ResNet-9's first residual conv,
``layer2.0.0.shortcut.1.running_mean`` ResNet-18's first projection BN), so a PyTorch model
built as the same tree, with the same child names, loads the same state dict (the tests hold
such twins).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .. import nn
from ._seed import check_num_classes, model_generator

__all__ = ["resnet9", "resnet18", "basic_block"]

#: ResNet-9's logit scale (Page's "multiply by 0.125"): it keeps the initial logits small.
RESNET9_LOGIT_SCALE = 0.125


def _conv_bn(c_in: int, c_out: int, dtype, g, stride: int = 1) -> list[nn.Module]:
    """3x3 conv (padding 1, no bias) -> BatchNorm2d -> ReLU, as a list of layers (put in the
    caller's chain, so that the fusion planner sees the whole run)."""
    return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False, dtype=dtype, rng=g),
            nn.BatchNorm2d(c_out, dtype=dtype), nn.ReLU()]


def resnet9(num_classes: int = 10, rng=None, dtype=np.float32, *, seed=None,
            width: int = 64) -> nn.Sequential:
    """The DAWNBench ResNet-9 (see the module docstring); channels width, 2, 4 and 8 x width."""
    num_classes = check_num_classes(num_classes, "resnet9")
    g = model_generator(rng, seed)
    c1, c2, c3, c4 = width, 2 * width, 4 * width, 8 * width

    def residual(c: int) -> nn.Residual:
        return nn.Residual(nn.Sequential(*_conv_bn(c, c, dtype, g), *_conv_bn(c, c, dtype, g)))

    return nn.Sequential(OrderedDict(
        prep=nn.Sequential(*_conv_bn(3, c1, dtype, g)),
        layer1=nn.Sequential(*_conv_bn(c1, c2, dtype, g), nn.MaxPool2d(2), residual(c2)),
        layer2=nn.Sequential(*_conv_bn(c2, c3, dtype, g), nn.MaxPool2d(2)),
        layer3=nn.Sequential(*_conv_bn(c3, c4, dtype, g), nn.MaxPool2d(2), residual(c4)),
        pool=nn.MaxPool2d(4),
        flatten=nn.Flatten(),
        linear=nn.Linear(c4, num_classes, bias=False, dtype=dtype, rng=g),
        scale=nn.Mul(RESNET9_LOGIT_SCALE),
    ))


def basic_block(c_in: int, c_out: int, stride: int = 1, dtype=np.float32,
                rng=None) -> nn.Sequential:
    """ResNet's basic block, ``relu(body(x) + shortcut(x))``: the body is 3x3 conv (stride
    `stride`) -> BN -> ReLU -> 3x3 conv -> BN (convs without bias, padding 1); the shortcut
    is the identity, or a 1x1 conv (stride `stride`, no bias) -> BN where the shape changes.
    Keys: ``0.body.{0,1,3,4}.*``, ``0.shortcut.{0,1}.*``."""
    g = model_generator(rng, None)
    body = nn.Sequential(*_conv_bn(c_in, c_out, dtype, g, stride),
                         nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False, dtype=dtype, rng=g),
                         nn.BatchNorm2d(c_out, dtype=dtype))
    shortcut = None
    if stride != 1 or c_in != c_out:
        shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False, dtype=dtype, rng=g),
                                 nn.BatchNorm2d(c_out, dtype=dtype))
    return nn.Sequential(nn.Residual(body, shortcut), nn.ReLU())


def resnet18(num_classes: int = 10, rng=None, dtype=np.float32, *, seed=None,
             width: int = 64) -> nn.Sequential:
    """The CIFAR ResNet-18 (see the module docstring); stages of width, 2, 4 and 8 x width."""
    num_classes = check_num_classes(num_classes, "resnet18")
    g = model_generator(rng, seed)
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv1=nn.Conv2d(3, width, 3, 1, 1, bias=False, dtype=dtype, rng=g),
        bn1=nn.BatchNorm2d(width, dtype=dtype),
        relu=nn.ReLU(),
    )
    c_in = width
    for stage, (c, stride) in enumerate([(width, 1), (2 * width, 2), (4 * width, 2),
                                         (8 * width, 2)], start=1):
        layers[f"layer{stage}"] = nn.Sequential(basic_block(c_in, c, stride, dtype, g),
                                                basic_block(c, c, 1, dtype, g))
        c_in = c
    layers["avgpool"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    layers["linear"] = nn.Linear(c_in, num_classes, dtype=dtype, rng=g)
    return nn.Sequential(layers)
