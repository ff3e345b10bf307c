"""Classic small CNNs for 3 x 32 x 32 inputs (CIFAR-10), as :class:`fastconv.nn.Sequential`.

Every builder takes ``num_classes=10``, ``rng`` (a numpy Generator or an int seed; ``seed=`` is
accepted as an alias) and ``dtype=np.float32``; layers are initialised as PyTorch does, drawing
from one generator in layer order, so a seed fixes the whole model. The layer indices match the
equivalent ``torch.nn.Sequential``, so PyTorch state dicts load directly.

=============  =============================================================  ===========
name           layers                                                         parameters
=============  =============================================================  ===========
simple_cnn     Conv(3,32,3) ReLU MaxPool(2) Conv(32,64,3) ReLU MaxPool(2)     2,389,962
               Flatten Linear(2304,1024) ReLU Linear(1024,10)
lenet5         Conv(3,6,5) ReLU MaxPool(2) Conv(6,16,5) ReLU MaxPool(2)         62,006
               Flatten Linear(400,120) ReLU Linear(120,84) ReLU Linear(84,10)
vgg_small      [Conv(c,32,3,p1,no bias) BN ReLU] x2 MaxPool(2), same with 64,    307,946
               then 128 channels, Flatten Linear(2048,10)
alexnet_small  Conv(3,64,3,p1) ReLU MaxPool(2) Conv(64,192,3,p1) ReLU MaxPool(2)  7,506,762
               Conv(192,384,3,p1) ReLU Conv(384,256,3,p1) ReLU
               Conv(256,256,3,p1) ReLU MaxPool(2) Flatten Dropout(0.5)
               Linear(4096,1024) ReLU Dropout(0.5) Linear(1024,1024) ReLU
               Linear(1024,10)
=============  =============================================================  ===========

LeNet-5 here is the common modern variant: ReLU and max pooling instead of the original
scaled tanh and trainable sub-sampling, and a 3-channel input. AlexNet-small keeps AlexNet's
five convolutions (64-192-384-256-256 channels), three max pools and three fully connected
layers with dropout, but uses 3x3 stride-1 kernels (instead of 11x11 stride 4 and 5x5) so that
a 32x32 image is pooled to 4x4, and 1024-wide hidden layers instead of 4096.
"""

from __future__ import annotations

import numpy as np

from .. import nn
from ._seed import check_num_classes, model_generator as _generator

__all__ = ["simple_cnn", "lenet5", "vgg_small", "alexnet_small"]


def simple_cnn(num_classes: int = 10, rng=None, dtype=np.float32, *, seed=None) -> nn.Sequential:
    """The classic first CIFAR-10 network (2,389,962 parameters with 10 classes)."""
    num_classes = check_num_classes(num_classes, "simple_cnn")
    g = _generator(rng, seed)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, dtype=dtype, rng=g), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Conv2d(32, 64, 3, dtype=dtype, rng=g), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Flatten(),
        nn.Linear(64 * 6 * 6, 1024, dtype=dtype, rng=g), nn.ReLU(),
        nn.Linear(1024, num_classes, dtype=dtype, rng=g),
    )


def lenet5(num_classes: int = 10, rng=None, dtype=np.float32, *, seed=None) -> nn.Sequential:
    """LeNet-5 for 3 x 32 x 32 inputs, with ReLU and max pooling (62,006 parameters)."""
    num_classes = check_num_classes(num_classes, "lenet5")
    g = _generator(rng, seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 5, dtype=dtype, rng=g), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, dtype=dtype, rng=g), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120, dtype=dtype, rng=g), nn.ReLU(),
        nn.Linear(120, 84, dtype=dtype, rng=g), nn.ReLU(),
        nn.Linear(84, num_classes, dtype=dtype, rng=g),
    )


def vgg_small(num_classes: int = 10, rng=None, dtype=np.float32, *, seed=None) -> nn.Sequential:
    """A small VGG: three blocks of two 3x3 conv-BN-ReLU and a max pool (32, 64, 128 channels),
    then Linear(2048, classes); 307,946 parameters with 10 classes."""
    num_classes = check_num_classes(num_classes, "vgg_small")
    g = _generator(rng, seed)
    layers: list[nn.Module] = []
    c_in = 3
    for c in (32, 64, 128):
        for _ in range(2):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False, dtype=dtype, rng=g),
                       nn.BatchNorm2d(c, dtype=dtype), nn.ReLU()]
            c_in = c
        layers.append(nn.MaxPool2d(2))
    layers += [nn.Flatten(), nn.Linear(128 * 4 * 4, num_classes, dtype=dtype, rng=g)]
    return nn.Sequential(*layers)


def alexnet_small(num_classes: int = 10, rng=None, dtype=np.float32, *, seed=None,
                  dropout: float = 0.5) -> nn.Sequential:
    """AlexNet-style network adapted to 32 x 32 inputs (see the module docstring); the dropout
    layers draw their masks from the same generator."""
    num_classes = check_num_classes(num_classes, "alexnet_small")
    g = _generator(rng, seed)
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1, dtype=dtype, rng=g), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 192, 3, padding=1, dtype=dtype, rng=g), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(192, 384, 3, padding=1, dtype=dtype, rng=g), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1, dtype=dtype, rng=g), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1, dtype=dtype, rng=g), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(dropout, rng=g),
        nn.Linear(256 * 4 * 4, 1024, dtype=dtype, rng=g), nn.ReLU(),
        nn.Dropout(dropout, rng=g),
        nn.Linear(1024, 1024, dtype=dtype, rng=g), nn.ReLU(),
        nn.Linear(1024, num_classes, dtype=dtype, rng=g),
    )

