"""Upsampling layers (run on the backend's ops)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from .. import _args
from .module import Module, _as_input, _check_4d, _shape_4d


# (torch.nn.Upsample takes no unbatched image: its interpolate resamples 3-D input as 1-D data)
_REFUSED_3D = ("PyTorch's Upsample takes 3-D input as 1-D data (N, C, L), which fastconv does "
               "not implement (it resamples (N, C, H, W)); for one (C, H, W) image use x[None]")


class Upsample(Module):
    """Nearest-neighbour resampling of (N, C, H, W) to `size` or by `scale_factor` (give one),
    as torch.nn.Upsample(mode='nearest'), the only mode implemented: output row i copies input
    row min(floor(i / scale_factor), H - 1) (PyTorch's float32 arithmetic, for float64 too;
    PyTorch 2.13 uses double for float64 on some shapes, which can pick the next pixel where
    i / scale_factor is a whole number that float32 rounds down). The gradient of an input
    pixel is the sum of those of the outputs that copy it.

    3-D input is refused (ValueError): PyTorch's Upsample resamples it as 1-D data (N, C, L),
    which is not implemented here, rather than as one unbatched image."""

    def __init__(self, size=None, scale_factor=None, mode: str = "nearest", align_corners=None,
                 recompute_scale_factor=None) -> None:
        super().__init__()
        name = "Upsample"
        if mode != "nearest":
            raise ValueError(f"{name}: only mode='nearest' is implemented, got mode={mode!r}")
        if align_corners is not None:
            raise ValueError(f"{name}: align_corners can only be set with the interpolating modes "
                             f"(linear, bilinear, bicubic, trilinear), as in PyTorch")
        if (size is None) == (scale_factor is None):
            raise ValueError(f"{name}: give exactly one of size and scale_factor (got "
                             f"size={size!r}, scale_factor={scale_factor!r})")
        if size is not None:
            _args.positive_pair(size, "size", name)
        else:
            factors = _args.scale_factors(scale_factor, name)
            scale_factor = factors if isinstance(scale_factor, (tuple, list)) else factors[0]
        if recompute_scale_factor is not None:
            _args.flag(recompute_scale_factor, "recompute_scale_factor", name)
        self.size = size
        self.scale_factor = scale_factor
        self.mode = mode
        self.align_corners = align_corners
        self.recompute_scale_factor = recompute_scale_factor

    def _resampling(self) -> dict:
        return dict(size=self.size, scale_factor=self.scale_factor,
                    recompute_scale_factor=self.recompute_scale_factor)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _as_input(self, x, None)
        _check_4d(self, x, refused_3d=_REFUSED_3D)
        ops = self._ops()
        y = ops.upsample_nearest2d(x, **self._resampling())
        self._cache = (ops, x.shape, y.shape, y.dtype)
        return y

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray:
        ops, x_shape, y_shape, dtype = self._get_cache()
        return ops.upsample_nearest2d_backward(self._check_grad(grad_y, y_shape, dtype), x_shape,
                                               **self._resampling())

    def output_shape(self, input_shape):
        return _args.upsample_nearest2d_geometry(_shape_4d(self, input_shape,
                                                           refused_3d=_REFUSED_3D), op=repr(self),
                                                 name="input", **self._resampling()).output_shape

    def _receptive(self, input_shape):
        """(kernel, stride, dilation, padding) per axis for the summary's receptive field: an
        output pixel copies one input pixel, and neighbouring outputs are H / OH input pixels
        apart on average (a fraction when upsampling)."""
        shape = _shape_4d(self, input_shape, refused_3d=_REFUSED_3D)
        out = self.output_shape(shape)
        return (1, 1), tuple(Fraction(n, o) for n, o in zip(shape[2:], out[2:])), (1, 1), (0, 0)

    def extra_repr(self) -> str:
        if self.scale_factor is not None:
            info = f"scale_factor={self.scale_factor!r}"
        else:
            info = f"size={self.size!r}"
        return info + f", mode={self.mode!r}"
