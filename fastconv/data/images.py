"""Image files to arrays, as the models see them: decoded with Pillow (an optional dependency,
``pip install pillow``), converted to RGB, the shorter side resized to the model's input size
(bicubic), then centre-cropped to a square; uint8 (3, size, size).

This is torchvision's ``Resize(size)`` + ``CenterCrop(size)`` on an ``ImageFolder`` image, and
what :mod:`fastconv.cli.predict` does to the files it classifies, so that images are prepared
in the same way for training and for prediction.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .archive import DatasetError

__all__ = ["IMAGE_EXTENSIONS", "ImageReadError", "read_image", "is_image_file"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
                    ".gif")
"""File name endings read as images (case-insensitive), as torchvision's ``IMG_EXTENSIONS``."""


class ImageReadError(DatasetError):
    """An image file could not be read (missing, not an image, truncated, or Pillow is not
    installed); the message names the file."""


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` ends with one of :data:`IMAGE_EXTENSIONS` and is not hidden."""
    name = os.path.basename(os.fspath(path))
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def read_image(path: str | os.PathLike, size: int = 32) -> np.ndarray:
    """Read an image file as uint8 (3, size, size): RGB, shorter side resized to ``size``
    (bicubic), centre crop. Any size and mode (grey, palette, RGBA: alpha dropped, CMYK) is
    accepted. 16-bit greyscale images (PNG, TIFF: Pillow's modes "I;16..." and "I") are scaled
    to 8 bits, v -> round(v / 257) clipped to 0..255, as 16-bit colour images already are by
    Pillow (a plain ``convert("RGB")``, as torchvision's loader does, clips them at 255: white).
    Floating-point greyscale images (mode "F", TIFF) are read as 0..1 when all their values
    lie there (v -> round(255 v)), else as 0..255 (where a plain conversion would truncate a
    0..1 image to black). :class:`ImageReadError` naming the file when it cannot be read, is
    larger than Pillow's decompression-bomb limit, or is a float image outside 0..255."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as e:
        raise ImageReadError("reading images needs Pillow: pip install pillow") from e
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"read_image: size must be a positive int, got {size!r}")
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.draft("RGB", (size, size))    # JPEG: decode at a reduced scale >= size
            if im.mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")      # (Pillow warns on a direct P -> RGB here)
            if im.mode.startswith("I"):
                im = _sixteen_bit_grey_as_l(im)
            elif im.mode == "F":
                im = _float_grey_as_l(im)
            im = im.convert("RGB")
    except FileNotFoundError as e:
        raise ImageReadError(f"image {path} not found") from e
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"{path} is too large to read safely ({e})") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"cannot read {path} as an image ({e})") from e
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), getattr(Image, "Resampling", Image).BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    im = im.crop((left, top, left + size, top + size))
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy()


def _sixteen_bit_grey_as_l(im):
    """A greyscale image of 16 bits per pixel (Pillow mode "I;16", "I;16B", ..., or "I",
    which Pillow before 10 gave 16-bit PNGs) as 8 bits ("L"): round(v / 257), v clipped to
    0..65535, so that 257 v reads as v, as the same picture saved in 8 bits."""
    from PIL import Image

    v = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
    return Image.fromarray(((v + 128) // 257).astype(np.uint8), "L")


def _float_grey_as_l(im):
    """A floating-point greyscale image (Pillow mode "F") as 8 bits ("L"): round(255 v) when
    every value lies in 0..1, round(v) when in 0..255; ValueError otherwise (NaN included)."""
    from PIL import Image

    v = np.asarray(im, dtype=np.float64)
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
    if not (np.isfinite(v).all() and lo >= 0.0 and hi <= 255.0):
        raise ValueError(f"a floating-point image with values {lo:g}..{hi:g}, not in 0..1 "
                         f"or 0..255")
    scale = 255.0 if hi <= 1.0 else 1.0
    return Image.fromarray(np.rint(v * scale).astype(np.uint8), "L")
