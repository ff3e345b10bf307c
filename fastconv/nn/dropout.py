"""Inverted dropout: of elements (Dropout) and of whole channels (Dropout2d)."""

from __future__ import annotations

import numbers
import warnings

import numpy as np

from .. import init as _init
from .activation import _InplaceArg
from .module import _as_input


class Dropout(_InplaceArg):
    """Inverted dropout: in training, each element is zeroed with probability p and the others
    are scaled by 1/(1-p), so eval mode (the identity) needs no rescaling.

    The (scaled) mask of the last forward is ``self.mask``. ``freeze_mask()`` keeps reusing it
    (or a given mask) in later forwards, for gradient checks; ``unfreeze_mask()`` undoes that.

    Arguments as torch.nn.Dropout's (``inplace`` accepted, the input never overwritten), then
    ``rng`` (keyword only): a seed or a NumPy Generator for the masks.
    """

    def __init__(self, p: float = 0.5, inplace: bool = False, *, rng=None) -> None:
        super().__init__(inplace)
        if not isinstance(p, (numbers.Real, np.floating, np.integer)):
            # (float() would take the string "0.5"; torch raises TypeError for it)
            raise TypeError(f"{type(self).__name__}: p must be a number, got {p!r}")
        p = float(p)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{type(self).__name__}: probability has to be between 0 and 1, "
                             f"got {p}")
        self.p = p
        self.rng = _init.as_generator(rng)
        self.mask: np.ndarray | None = None
        self.frozen = False

    def freeze_mask(self, mask: np.ndarray | None = None) -> None:
        """Reuse a fixed mask in every training forward: `mask` (a boolean keep-mask, or already
        scaled values) or, if None, the mask of the last forward (or of the next one)."""
        if mask is not None:
            mask = np.asarray(mask)
            if mask.dtype == np.bool_:
                scale = 0.0 if self.p >= 1.0 else 1.0 / (1.0 - self.p)
                mask = mask * scale
            self.mask = mask
        self.frozen = True

    def unfreeze_mask(self) -> None:
        """Draw a new mask at every forward again."""
        self.frozen = False

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = _as_input(self, x, None)
        if not self.training or self.p == 0.0:
            self._cache = (None, x.shape, x.dtype)
            return x
        dt = x.dtype
        mask = self.mask
        shape = self._mask_shape(x.shape)
        if self.frozen and mask is not None:
            if mask.shape != shape:
                raise ValueError(f"{self!r}: frozen mask has shape {mask.shape} but the input of "
                                 f"shape {x.shape} needs {shape}")
            if mask.dtype != dt:
                mask = mask.astype(dt)
        elif self.p >= 1.0:
            mask = np.zeros(shape, dt)
        else:
            mask = (self.rng.random(shape, dtype=np.float32) >= np.float32(self.p)).astype(dt)
            mask *= dt.type(1.0 / (1.0 - self.p))
        self.mask = mask
        self._cache = (mask, x.shape, dt)
        return x * mask

    def _mask_shape(self, shape: tuple) -> tuple:
        """The shape of the mask for an input of `shape` (one draw per element)."""
        return shape

    def backward(self, grad_y: np.ndarray, input_grad: bool = True) -> np.ndarray:
        mask, shape, dt = self._get_cache()
        grad_y = self._check_grad(grad_y, shape, dt)
        return grad_y if mask is None else grad_y * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Dropout2d(Dropout):
    """Channel dropout, as ``torch.nn.Dropout2d``: in training, each channel of each sample of
    (N, C, H, W) input is zeroed whole with probability p, the others scaled by 1/(1-p). The
    mask has shape (N, C, 1, 1).

    3-D input is taken as PyTorch 2.13's Dropout2d takes it, with its warning: as (N, C, L)
    data, each row (n, c) of L values dropped whole (mask (N, C, 1)), not as one unbatched
    (C, H, W) image; for that, use x[None] (or Dropout1d's semantics, as the warning says)."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        if np.ndim(x) == 3:
            warnings.warn(_DROPOUT2D_3D, UserWarning, stacklevel=2)
        return super().forward(x)

    def _mask_shape(self, shape: tuple) -> tuple:
        if len(shape) not in (3, 4):
            raise ValueError(f"{self!r}: input must be (N, C, H, W), or (N, C, L) as PyTorch "
                             f"takes 3-D input, got shape {shape}")
        return shape[:2] + (1,) * (len(shape) - 2)


# PyTorch 2.13's warning for 3-D input to Dropout2d, word for word.
_DROPOUT2D_3D = (
    "dropout2d: Received a 3D input to dropout2d and assuming that channel-wise 1D dropout "
    "behavior is desired - input is interpreted as shape (N, C, L), where C is the channel dim. "
    "This behavior will change in a future release to interpret the input as one without a "
    "batch dimension, i.e. shape (C, H, W). To maintain the 1D channel-wise dropout behavior, "
    "please switch to using dropout1d instead.")
