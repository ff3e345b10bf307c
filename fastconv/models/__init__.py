"""Models for 3 x 32 x 32 inputs (CIFAR-10), each a :class:`fastconv.nn.Sequential` tree.

=============  ==========================================================  ===========
name           what                                                        parameters
=============  ==========================================================  ===========
simple_cnn     two conv-ReLU-pool, two Linear (classic.py)                   2,389,962
lenet5         LeNet-5 with ReLU and max pooling (classic.py)                   62,006
vgg_small      three VGG blocks of two conv-BN-ReLU (classic.py)               307,946
alexnet_small  AlexNet's layout for 32 x 32 images (classic.py)             7,506,762
resnet9        the DAWNBench ResNet-9 (resnet.py)                           6,573,120
resnet18       the CIFAR ResNet-18 of kuangliu/pytorch-cifar (resnet.py)   11,173,962
airbench94     airbench's whitening conv, three conv groups (airbench.py)   1,972,792
autoencoder    conv encoder, transposed-conv decoder (autoencoder.py)           38,723
=============  ==========================================================  ===========

(parameters with 10 classes.) Every classifier builder takes ``num_classes=10``, ``rng`` (a
numpy Generator or an int seed; ``seed=`` is an alias) and ``dtype=np.float32``; the
autoencoder, which maps images to images, takes ``rng``/``seed`` and ``dtype`` only. Layers
are initialised as PyTorch does, drawing from one generator in layer order, so a seed fixes
the whole model. State-dict keys follow the module tree as PyTorch's do, so the state dict of
a PyTorch model built as the same tree loads directly (:func:`fastconv.export.to_torch`
builds that PyTorch model from any fastconv model).
"""

from __future__ import annotations

from typing import Callable

from .. import nn
from .airbench import airbench94, init_whitening_conv
from .autoencoder import autoencoder, denoising_pairs
from .classic import alexnet_small, lenet5, simple_cnn, vgg_small
from .resnet import basic_block, resnet9, resnet18

__all__ = ["simple_cnn", "lenet5", "vgg_small", "alexnet_small", "resnet9", "resnet18",
           "airbench94", "init_whitening_conv", "basic_block", "autoencoder", "denoising_pairs", "get_model", "MODELS", "CLASSIFIERS"]

_REGISTRY: dict[str, Callable[..., nn.Sequential]] = {
    "simple_cnn": simple_cnn,
    "lenet5": lenet5,
    "vgg_small": vgg_small,
    "alexnet_small": alexnet_small,
    "resnet9": resnet9,
    "resnet18": resnet18,
    "airbench94": airbench94,
    "autoencoder": autoencoder,
}

#: Names accepted by :func:`get_model`.
MODELS: list[str] = list(_REGISTRY)

#: The models that map images to class scores (N, num_classes): all but the autoencoder.
CLASSIFIERS: list[str] = [name for name in MODELS if name != "autoencoder"]


def get_model(name: str, **kwargs) -> nn.Sequential:
    """Build model `name` (one of :data:`MODELS`), passing `kwargs` (num_classes, rng/seed,
    dtype; see each builder)."""
    try:
        builder = _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}: expected one of {MODELS}") from None
    return builder(**kwargs)
