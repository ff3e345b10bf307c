"""Image transforms on NumPy batches: per-channel statistics, normalisation to float, and the
standard CIFAR augmentation (random crop with zero padding, horizontal flip), vectorised over
the batch."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

from .cifar import CIFAR10_MEAN, CIFAR10_STD

__all__ = ["compute_mean_std", "to_float32", "augment_batch", "pixel_scale"]


#: Integer image dtypes and the value standing for full intensity (1.0), as
#: torchvision.transforms.v2.ToDtype(torch.float32, scale=True) scales them.
_FULL_SCALE = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535, np.dtype(np.int16): 32767}


def pixel_scale(dtype) -> float:
    """What one unit of an image of `dtype` is in [0, 1]: 1/255 for uint8, 1/65535 for uint16
    and 1/32767 for int16 images (16-bit PNG/TIFF and the like); 1.0 for anything else (float
    images are taken as already in [0, 1], other integers as plain values)."""
    full = _FULL_SCALE.get(np.dtype(dtype))
    return 1.0 if full is None else 1.0 / full


def compute_mean_std(images: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and population std of uint8 NCHW images, scaled to [0, 1].

    Integer sums are exact (accumulated in int64 over chunks of ``chunk`` images, so no large
    temporaries); ``std = sqrt(E[x^2] - E[x]^2) / 255``. Returns two float64 arrays of shape
    (C,). uint16 and int16 images are scaled by 1/65535 and 1/32767 (:func:`pixel_scale`);
    float input is taken as already scaled to [0, 1].
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"compute_mean_std: expected non-empty (N, C, H, W) images, "
                         f"got shape {images.shape}")
    n, c = images.shape[:2]
    count = n * images.shape[2] * images.shape[3]
    if images.dtype == np.uint8:
        s1 = np.zeros(c, np.int64)
        s2 = np.zeros(c, np.int64)
        for i in range(0, n, chunk):
            block = images[i:i + chunk].astype(np.int64)
            s1 += block.sum(axis=(0, 2, 3))
            s2 += np.einsum("nchw,nchw->c", block, block)
        mean = s1 / count
        var = s2 / count - mean * mean
        return mean / 255.0, np.sqrt(np.maximum(var, 0.0)) / 255.0
    x = images.astype(np.float64, copy=False)
    mean = x.mean(axis=(0, 2, 3))
    std = x.std(axis=(0, 2, 3))
    pix = pixel_scale(images.dtype)
    return mean * pix, std * pix


def _affine(mean: Sequence[float] | np.ndarray | None, std: Sequence[float] | np.ndarray | None,
            channels: int, pix: float, ndim: int = 4,
            dtype: np.dtype | type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """``scale, offset`` with ``y = x * scale + offset`` per channel (axis 1), each of ``dtype``
    and shape (1, C, 1, ...) with ``ndim`` axes: ``scale = pix / std`` (``pix``: the
    images' :func:`pixel_scale`, 1/255 for uint8), ``offset = -mean / std``."""
    m = np.zeros(channels) if mean is None else np.asarray(mean, np.float64).reshape(-1)
    s = np.ones(channels) if std is None else np.asarray(std, np.float64).reshape(-1)
    if m.shape != (channels,) or s.shape != (channels,):
        raise ValueError(f"mean and std need {channels} values each, got {m.shape} and {s.shape}")
    if np.any(s <= 0):
        raise ValueError(f"std must be positive, got {s}")
    shape = (1, channels) + (1,) * (ndim - 2)
    scale = (pix / s).astype(dtype).reshape(shape)
    offset = (-m / s).astype(dtype).reshape(shape)
    return scale, offset


def channels_last_hint(shape: tuple[int, ...]) -> str:
    """A note for (N, H, W, C) images given where (N, C, H, W) ones are expected ("" unless the
    last axis looks like 1, 3 or 4 channels and axis 1 does not)."""
    if len(shape) == 4 and shape[-1] in (1, 3, 4) and shape[1] not in (1, 3, 4):
        return ("; channels last? fastconv takes NCHW images like PyTorch: use "
                "images.transpose(0, 3, 1, 2)")
    return ""


def _warn_if_unscaled(images: np.ndarray, where: str) -> None:
    """Warn when float images hold values above 16: most likely pixel values 0..255 given as
    floats (``np.asarray(pil_image, np.float32)``), which would be taken as already scaled to
    [0, 1] and come out of the normalisation ~255 times too large (16 is far above what
    scaled or standardised data reach, and below any picture's brightest pixel). Judged on
    the finite values: inf or NaN says nothing of the scale (the message mentions them).
    Judged on at most 4096 images spread over the array (a DataLoader over a memmap larger
    than memory read it whole, and allocated a mask of it when it held a NaN)."""
    if images.dtype.kind != "f" or images.size == 0:
        return
    if images.ndim > 1 and len(images) > 4096:
        images = images[np.linspace(0, len(images) - 1, 4096).astype(np.int64)]
    top = float(np.max(images))
    nonfinite = not math.isfinite(top)  # (an inf or NaN anywhere makes the max inf or NaN)
    if nonfinite:
        finite = np.isfinite(images)
        nonfinite = not finite.all()
        top = float(np.max(images, where=finite, initial=-np.inf))
    if top > 16.0:
        values = (f"finite values up to {top:g} (and inf or NaN)" if nonfinite
                  else f"values up to {top:g}")
        warnings.warn(f"{where}: float images with {values} are taken as already scaled to "
                      f"[0, 1]; pixel values 0..255 need dividing by 255 first (or give them as "
                      f"uint8, which is scaled)", stacklevel=3)


def to_float32(images: np.ndarray, mean: Sequence[float] | np.ndarray | None = CIFAR10_MEAN,
               std: Sequence[float] | np.ndarray | None = CIFAR10_STD) -> np.ndarray:
    """Decode images to float32 NCHW: ``(x / 255 - mean) / std`` per channel.

    uint8 input is divided by 255, uint16 by 65535 and int16 by 32767 (:func:`pixel_scale`);
    float input is taken as already in [0, 1]. ``mean=None`` /
    ``std=None`` skip the shift / scale (e.g. ``to_float32(x, None, None)`` gives x / 255).
    Returns a new C-contiguous float32 array of the same shape.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"to_float32: expected (N, C, H, W) images, got shape {images.shape}")
    try:
        scale, offset = _affine(mean, std, images.shape[1], pixel_scale(images.dtype))
    except ValueError as e:
        raise ValueError(f"to_float32: {e} (one per channel: axis 1 of images of shape "
                         f"{images.shape}){channels_last_hint(images.shape)}") from None
    if mean is not None or std is not None:
        _warn_if_unscaled(images, "to_float32")
    out = np.multiply(images, scale, dtype=np.float32)
    out += offset
    return out


_AUG_INDEX_CACHE: dict[tuple[int, ...], np.ndarray] = {}


PADDING_MODES = ("zeros", "reflect")


def augment_batch(images: np.ndarray, rng: np.random.Generator, *, pad: int = 4,
                  flip: bool = True, padding_mode: str = "zeros",
                  flips: np.ndarray | None = None,
                  rows: tuple[int, int] | None = None) -> np.ndarray:
    """Random crop with ``pad`` pixels of padding, then horizontal flip.

    Vectorised over the batch (no per-image loop): the batch is padded once to
    (N, C, H+2p, W+2p) and every output pixel is gathered with one ``np.take`` using per-image
    offsets oy, ox ~ U{0..2p} and flips ~ Bernoulli(0.5). Crop offsets are drawn first, then
    flips, so the random stream is fixed for given (rng state, N). ``padding_mode`` "zeros"
    (on uint8, before normalisation, black, as torchvision's ``RandomCrop(32, padding=4)``) or
    "reflect" (mirror without repeating the edge, as ``F.pad(..., 'reflect')``; airbench's
    translation). ``flips``, a bool array (N,), gives the flips instead of drawing them (none
    are drawn then). Works on any dtype. Returns a new (N, C, H, W) array.

    ``rows=(start, total)``: ``images`` are rows ``start .. start + N - 1`` of a batch of
    ``total`` images (one process's share of a batch split across processes). The draws are
    made for the whole batch and those of these rows applied, so the shares together get
    exactly the augmentation of the whole batch.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"augment_batch: expected (N, C, H, W) images, got {images.shape}")
    n, c, h, w = images.shape
    if pad < 0:
        raise ValueError(f"augment_batch: pad must be >= 0, got {pad}")
    start, total = (0, n) if rows is None else (int(rows[0]), int(rows[1]))
    if not 0 <= start <= start + n <= total:
        raise ValueError(f"augment_batch: rows {rows} cannot hold {n} images (start, total)")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"augment_batch: padding_mode must be one of {PADDING_MODES}, got "
                         f"{padding_mode!r}")
    if padding_mode == "reflect" and pad >= min(h, w):
        raise ValueError(f"augment_batch: reflect padding needs pad < H and W, got pad {pad} "
                         f"for images of shape {images.shape}")
    if flips is not None:
        flips = np.asarray(flips)
        if flips.shape != (n,) or flips.dtype != np.bool_:
            raise ValueError(f"augment_batch: flips must be a bool array of shape ({n},), got "
                             f"{flips.dtype} {flips.shape}")
    oy = rng.integers(0, 2 * pad + 1, size=total)[start:start + n]
    ox = rng.integers(0, 2 * pad + 1, size=total)[start:start + n]
    if flips is None:
        flips = (rng.random(total) < 0.5)[start:start + n] if flip else np.zeros(n, bool)
    if n == 0:
        return images.copy()
    hp, wp = h + 2 * pad, w + 2 * pad
    if padding_mode == "reflect":
        padded = np.pad(images, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="reflect")
    else:
        padded = np.zeros((n, c, hp, wp), images.dtype)
        padded[:, :, pad:pad + h, pad:pad + w] = images
    key = (n, c, h, w, pad)
    base = _AUG_INDEX_CACHE.get(key)
    if base is None:
        # offset of (image, channel, row, col) in the padded batch for a zero shift
        base = ((np.arange(n) * (c * hp * wp))[:, None, None, None]
                + (np.arange(c) * (hp * wp))[None, :, None, None]
                + (np.arange(h) * wp)[None, None, :, None]
                + np.arange(w)[None, None, None, :])
        if len(_AUG_INDEX_CACHE) > 16:
            _AUG_INDEX_CACHE.clear()
        _AUG_INDEX_CACHE[key] = base
    # extra column shift that maps output column j to w-1-j on flipped images
    cols = np.where(flips[:, None], (w - 1) - 2 * np.arange(w)[None, :], 0)
    shift = (oy * wp + ox)[:, None, None, None] + cols[:, None, None, :]
    return np.take(padded.reshape(-1), base + shift)
