"""A small convolutional autoencoder for 3 x 32 x 32 images, and the denoising set-up of the
course notes: noisy images in, clean images as the target, mean squared error.

``autoencoder()`` (38,723 parameters with the default channels (32, 64))::

    encoder  Conv2d(3, 32, 3, stride 2, padding 1) ReLU             (32, 16, 16)
             Conv2d(32, 64, 3, stride 2, padding 1) ReLU            (64, 8, 8)
    decoder  ConvTranspose2d(64, 32, 3, stride 2, padding 1, output_padding 1) ReLU  (32, 16, 16)
             ConvTranspose2d(32, 3, 3, stride 2, padding 1, output_padding 1)        (3, 32, 32)
             Sigmoid                                  (with sigmoid=True, the default)

Each stride-2 convolution halves the height and width and each transposed one doubles them
back, so any input whose sides are multiples of 2 ** len(channels) comes out at its own size.
The final Sigmoid keeps outputs in (0, 1), the range of images scaled to [0, 1] (the targets
of :func:`denoising_pairs`); ``sigmoid=False`` ends on the last transposed convolution, for
targets of any range (e.g. images normalised per channel). Keys: ``encoder.0.weight``,
``decoder.2.bias``, ...

Denoising (``fit`` logs the mean squared error as ``loss`` / ``val_loss``; there is no
accuracy for image targets)::

    from fastconv import data, losses, models, optim
    from fastconv.training import fit, predict
    cifar = data.load_cifar10()
    noisy, clean = models.denoising_pairs(cifar.x_train[:5000], noise_std=0.1, rng=0)
    model = models.autoencoder(seed=0)
    fit(model, (noisy, clean), 5, optimizer=optim.Adam(model.parameters(), lr=1e-3),
        loss=losses.MSELoss(), batch_size=64)
    restored = predict(model, noisy[:8])      # (8, 3, 32, 32) in (0, 1)
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import numpy as np

from .. import nn
from ..data import to_float32
from ..init import as_generator
from ._seed import model_generator

__all__ = ["autoencoder", "denoising_pairs"]


def autoencoder(rng=None, dtype=np.float32, *, seed=None, channels: Sequence[int] = (32, 64),
                in_channels: int = 3, sigmoid: bool = True) -> nn.Sequential:
    """The convolutional autoencoder of the module docstring: ``encoder`` (a 3x3 stride-2
    conv + ReLU per entry of `channels`) and ``decoder`` (as many 3x3 stride-2 transposed
    convs back to `in_channels`, ReLU between them, then Sigmoid if `sigmoid`). It maps
    images to images, so it has no ``num_classes``."""
    g = model_generator(rng, seed)
    channels = [int(c) for c in channels]
    if not channels:
        raise ValueError("autoencoder: channels must name at least one layer width")
    widths = [in_channels] + channels
    encoder: list[nn.Module] = []
    for c_in, c_out in zip(widths[:-1], widths[1:]):
        encoder += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, dtype=dtype, rng=g), nn.ReLU()]
    decoder: list[nn.Module] = []
    back = widths[::-1]
    for i, (c_in, c_out) in enumerate(zip(back[:-1], back[1:])):
        decoder.append(nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1,
                                          dtype=dtype, rng=g))
        if i < len(back) - 2:
            decoder.append(nn.ReLU())
    if sigmoid:
        decoder.append(nn.Sigmoid())
    return nn.Sequential(OrderedDict(encoder=nn.Sequential(*encoder),
                                     decoder=nn.Sequential(*decoder)))


def denoising_pairs(images: np.ndarray, noise_std: float = 0.1,
                    rng=None) -> tuple[np.ndarray, np.ndarray]:
    """``(noisy, clean)`` float32 images for training a denoising autoencoder with
    ``fit(model, (noisy, clean), ..., loss=losses.MSELoss())``.

    clean: `images` scaled to [0, 1] (uint8 divided by 255; float images taken as already in
    [0, 1]), not normalised per channel. noisy: ``clip(clean + noise_std * N(0, 1), 0, 1)``,
    the noise drawn from `rng` (a Generator or an int seed). images: (N, C, H, W).
    """
    noise_std = float(noise_std)
    if not np.isfinite(noise_std) or noise_std < 0:
        raise ValueError(f"denoising_pairs: noise_std must be a finite number >= 0, got {noise_std}")
    clean = to_float32(images, None, None)
    noise = as_generator(rng).standard_normal(clean.shape, dtype=np.float32)
    noisy = clean + np.float32(noise_std) * noise
    np.clip(noisy, 0.0, 1.0, out=noisy)
    return noisy, clean
