"""Losses with explicit backward, and numerically stable softmax / log-softmax.

    loss = CrossEntropyLoss()
    value = loss(logits, targets)       # logits (N, C), integer targets (N,) -> float
    grad_logits = loss.backward()       # (softmax(logits) - onehot(targets)) / N

Stability: log_softmax(x) = (x - max x) - log(sum(exp(x - max x))), so every exponent is <= 0
and no logit, however large (but finite), gives inf or NaN.
"""

from __future__ import annotations

import numpy as np

from ._args import working_dtype

__all__ = ["softmax", "log_softmax", "CrossEntropyLoss", "MSELoss"]


def _float(x, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == np.float32 or x.dtype == np.float64:
        return x
    if x.dtype.kind in "biuf":
        return x.astype(working_dtype(x.dtype))
    raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """log(softmax(x)) along `axis`, computed as (x - max) - log(sum(exp(x - max)))."""
    x = _float(x, "log_softmax: x")
    shifted = x - x.max(axis=axis, keepdims=True)
    lse = np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
    shifted -= lse
    return shifted


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp(x) / sum(exp(x)) along `axis`, with the max subtracted first (no overflow)."""
    x = _float(x, "softmax: x")
    e = x - x.max(axis=axis, keepdims=True)
    np.exp(e, out=e)
    e /= e.sum(axis=axis, keepdims=True)
    return e


class CrossEntropyLoss:
    """Softmax cross-entropy on logits with integer class targets, averaged over the batch
    (``reduction="mean"``) or summed (``"sum"``), as ``torch.nn.CrossEntropyLoss``.

    With label smoothing eps the target distribution is q = (1 - eps) onehot + eps / C, so
        loss = mean_n [ -sum_c q_nc log_softmax(z)_nc ]        (sum_n with "sum")
    (PyTorch's definition). Fused backward: dL/dz = (softmax(z) - q) / N (no / N with "sum").

    ``forward(logits, targets)`` returns a Python float and caches softmax for ``backward()``.
    """

    def __init__(self, label_smoothing: float = 0.0, reduction: str = "mean") -> None:
        if reduction not in ("mean", "sum"):
            raise ValueError(f"CrossEntropyLoss: reduction must be 'mean' or 'sum', got "
                             f"{reduction!r}")
        self.reduction = reduction
        try:
            eps = float(label_smoothing)
        except (TypeError, ValueError):
            eps = float("nan")  # refused just below
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"CrossEntropyLoss: label_smoothing must be in [0, 1], got "
                             f"{label_smoothing!r}")
        self.label_smoothing = eps
        self._cache = None

    def forward(self, logits: np.ndarray, targets: np.ndarray) -> float:
        """Cross-entropy of logits (N, C) against integer targets (N,) in [0, C): the mean
        over the batch, or the sum with ``reduction="sum"``."""
        z = _float(logits, "CrossEntropyLoss: logits")
        t = np.asarray(targets)
        if z.ndim != 2:
            raise ValueError(f"CrossEntropyLoss: logits must be 2-D (N, C), got shape {z.shape}")
        N, C = z.shape
        if t.dtype.kind == "f":
            # as PyTorch: float targets are refused, even whole numbers (a float y usually
            # means regression targets or one-hot rows given by mistake)
            hint = (f"class probabilities (N, C) are not supported: take "
                    f"targets.argmax(axis=1)" if t.ndim == 2 else
                    "convert them with targets.astype(np.int64)")
            raise TypeError(f"CrossEntropyLoss: targets must be integer class indices, got "
                            f"float labels (dtype {t.dtype}, shape {t.shape}); {hint}")
        if t.dtype.kind not in "iu":
            raise TypeError(f"CrossEntropyLoss: targets must be integer class indices, got dtype {t.dtype}")
        if t.shape != (N,):
            raise ValueError(f"CrossEntropyLoss: targets must have shape (N,) = ({N},) to match logits "
                             f"of shape {z.shape}, got {t.shape}")
        if N and (t.min() < 0 or t.max() >= C):  # (before the cast: 1e20 would wrap around)
            raise ValueError(f"CrossEntropyLoss: targets must be in [0, {C}), got values in "
                             f"[{t.min()}, {t.max()}]")
        t = t.astype(np.intp, copy=False)
        if N == 0:
            self._cache = (np.zeros_like(z), t)
            # PyTorch: nan for the mean over an empty batch, 0 for the sum
            return float("nan") if self.reduction == "mean" else 0.0
        logp = log_softmax(z, axis=1)
        rows = np.arange(N)
        eps = self.label_smoothing
        nll = -logp[rows, t]
        if eps:
            loss = (1.0 - eps) * nll.mean() - eps * logp.mean(axis=1).mean()
        else:
            loss = nll.mean()
        if self.reduction == "sum":
            loss = loss * N
        np.exp(logp, out=logp)  # softmax, reused by backward
        self._cache = (logp, t)
        return float(loss)

    __call__ = forward

    def backward(self) -> np.ndarray:
        """dL/dlogits = (softmax - q) / N for the last forward (softmax - q with
        ``reduction="sum"``), same dtype as the logits."""
        if self._cache is None:
            raise RuntimeError("CrossEntropyLoss.backward called before forward")
        p, t = self._cache
        N, C = p.shape
        if N == 0:
            return p.copy()
        g = p.copy()
        eps = self.label_smoothing
        if eps:
            g -= p.dtype.type(eps / C)
        g[np.arange(N), t] -= p.dtype.type(1.0 - eps)
        if self.reduction == "mean":
            g *= p.dtype.type(1.0 / N)
        return g


class MSELoss:
    """Mean squared error: mean((pred - target)**2) over all elements; backward 2 (pred - target) / n."""

    def __init__(self) -> None:
        self._cache = None

    def forward(self, pred: np.ndarray, target: np.ndarray) -> float:
        """Mean of the squared differences; pred and target must have the same shape."""
        p = _float(pred, "MSELoss: pred")
        t = np.asarray(target)
        if p.shape != t.shape:
            raise ValueError(f"MSELoss: pred of shape {p.shape} and target of shape {t.shape} differ")
        diff = p - t.astype(p.dtype, copy=False)
        self._cache = diff
        if diff.size == 0:
            return float("nan")
        return float(np.vdot(diff.ravel(), diff.ravel()) / diff.size)

    __call__ = forward

    def backward(self) -> np.ndarray:
        """dL/dpred = 2 (pred - target) / n."""
        if self._cache is None:
            raise RuntimeError("MSELoss.backward called before forward")
        diff = self._cache
        return diff * diff.dtype.type(2.0 / max(diff.size, 1))
