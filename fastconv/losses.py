"""Losses with explicit backward, and numerically stable softmax / log-softmax.

    loss = CrossEntropyLoss()
    value = loss(logits, targets)       # logits (N, C), integer targets (N,) -> float
    grad_logits = loss.backward()       # (softmax(logits) - onehot(targets)) / N

Stability: log_softmax(x) = (x - max x) - log(sum(exp(x - max x))), so every exponent is <= 0
and no logit, however large (but finite), gives inf or NaN.

Class scores against labels: CrossEntropyLoss, NLLLoss. Element-wise losses of an input and a
target of the same shape, on one base (_PointwiseLoss: checks, weights, reductions): MSELoss,
L1Loss, SmoothL1Loss, HuberLoss (regression), BCELoss, BCEWithLogitsLoss (yes/no targets),
KLDivLoss (distributions). Each is ``torch.nn``'s namesake: same arguments, defaults, values
and gradients; where fastconv refuses what PyTorch accepts (targets of another shape) or
raises another exception type, the class says so.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._args import working_dtype

__all__ = ["softmax", "log_softmax", "CrossEntropyLoss", "NLLLoss", "BCEWithLogitsLoss", "BCELoss",
           "MSELoss", "L1Loss", "SmoothL1Loss", "HuberLoss", "KLDivLoss"]


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
    with np.errstate(invalid="ignore"):  # (inf - inf: nan, as PyTorch, without a warning)
        shifted = x - x.max(axis=axis, keepdims=True)
        lse = np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
        shifted -= lse
    return shifted


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp(x) / sum(exp(x)) along `axis`, with the max subtracted first (no overflow)."""
    x = _float(x, "softmax: x")
    with np.errstate(invalid="ignore"):  # (inf - inf: nan, as PyTorch, without a warning)
        e = x - x.max(axis=axis, keepdims=True)
        np.exp(e, out=e)
        e /= e.sum(axis=axis, keepdims=True)
    return e


_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction: str, where: str, allowed: tuple = _REDUCTIONS) -> str:
    """``reduction`` if it is one of ``allowed``, else ValueError listing them."""
    if not isinstance(reduction, str) or reduction not in allowed:
        names = ", ".join(map(repr, allowed[:-1])) + f" or {allowed[-1]!r}"
        raise ValueError(f"{where}: reduction must be {names}, got {reduction!r}")
    return reduction


def _grad_output(grad_output, shape: tuple, reduction: str, dtype, where: str):
    """``backward``'s grad_output checked, in ``dtype``: None (a factor of 1), a 0-d array for
    "mean"/"sum", or an array of the loss's ``shape`` for "none" (required there: that loss
    is not one number)."""
    if reduction == "none" and grad_output is None:
        raise ValueError(f"{where}: reduction='none' gives a loss per element, of shape {shape}; "
                         f"backward needs grad_output of that shape (e.g. np.ones({shape}))")
    if grad_output is None:
        return None
    go = np.asarray(grad_output)
    want = shape if reduction == "none" else ()
    if go.shape != want or go.dtype.kind not in "biuf":
        what = f"the loss's shape {shape}" if reduction == "none" else "a real number (shape ())"
        raise ValueError(f"{where}: grad_output must be {what} for reduction={reduction!r}, "
                         f"got shape {go.shape} and dtype {go.dtype}")
    return go.astype(dtype, copy=False)


def _class_weight(weight, where: str, hint: str = "") -> np.ndarray | None:
    """A loss's per-class `weight`: None or a 1-D array of real numbers, kept in float64."""
    if weight is None:
        return None
    w = np.asarray(weight)
    if w.ndim != 1 or w.dtype.kind not in "biuf":
        raise TypeError(f"{where}: weight must be a 1-D array of real class weights (C,), got "
                        f"{type(weight).__name__} of shape {w.shape}{hint if w.ndim == 0 else ''}")
    return w.astype(np.float64)


def _ignore_index(value, where: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{where}: ignore_index must be an int, got {value!r}")
    if not -2 ** 63 <= int(value) < 2 ** 63:
        raise ValueError(f"{where}: ignore_index {value} is out of int64's range")
    return int(value)


def _class_rows(z: np.ndarray, t: np.ndarray, weight, ignore_index: int, where: str,
                probabilities: bool = True, name: str = "logits"
                ) -> tuple[np.ndarray, np.ndarray, bool]:
    """Class scores z ((N, C), (N, C, d1, ...) or (C,), called `name` in errors) as rows
    (M, C), targets as (M,) class indices or, with `probabilities`, (M, C) class
    probabilities, and whether they are probabilities; every check on shapes and values."""
    if z.ndim == 0:
        raise ValueError(f"{where}: {name} must be (N, C), (N, C, d1, ...) or (C,), got a "
                         f"0-d array")
    C = z.shape[0] if z.ndim == 1 else z.shape[1]
    if C == 0:
        raise ValueError(f"{where}: {name} of shape {z.shape}: no classes (C = 0)")
    if weight is not None and weight.shape != (C,):
        raise ValueError(f"{where}: weight must hold one value per class, shape ({C},) for "
                         f"{name} of shape {z.shape}, got {weight.shape}")
    rows = np.moveaxis(z, 1, -1).reshape(-1, C) if z.ndim > 1 else z[None]
    of = f"{name}'" if name.endswith("s") else f"{name}'s"   # "the logits' shape"
    if probabilities and t.shape == z.shape:  # class probabilities (PyTorch decides by shape)
        if t.dtype.kind != "f":
            raise TypeError(f"{where}: targets of the {of} shape {z.shape} are class "
                            f"probabilities and must be floats, got dtype {t.dtype} (for "
                            f"one-hot rows take targets.argmax(axis=1))")
        probs = t.astype(z.dtype, copy=False)
        return rows, np.moveaxis(probs, 1, -1).reshape(-1, C) if z.ndim > 1 else probs[None], True
    if t.dtype.kind == "f":
        # as PyTorch: float targets of another shape are refused, even whole numbers (a
        # float y usually means regression targets or one-hot rows of the wrong shape)
        also = f" or float class probabilities of the {of} shape {z.shape}" if probabilities else ""
        raise TypeError(f"{where}: targets must be integer class indices{also}, got float "
                        f"labels (dtype {t.dtype}, shape {t.shape}); convert indices with "
                        f"targets.astype(np.int64)")
    if t.dtype.kind not in "iu":
        raise TypeError(f"{where}: targets must be integer class indices, got dtype {t.dtype}")
    want = z.shape[:1] + z.shape[2:] if z.ndim > 1 else ()
    if t.shape != want:
        raise ValueError(f"{where}: index targets must have shape {want} (the {of} "
                         f"{z.shape} without the class axis), got {t.shape}")
    t = t.reshape(-1)
    if t.size:  # (before any cast: 1e20 would wrap around)
        bad = (t < 0) | (t >= C)
        bad &= t != ignore_index
        if bad.any():
            raise ValueError(f"{where}: targets must be in [0, {C}) or equal ignore_index "
                             f"({ignore_index}), got {t[bad][0]}")
    return rows, t.astype(np.intp, copy=False), False


class CrossEntropyLoss:
    """Softmax cross-entropy on logits, as ``torch.nn.CrossEntropyLoss`` (same arguments and
    semantics).

    Logits are (N, C), (N, C, d1, ..., dk) (a class score per position, e.g. per pixel) or (C,)
    (one sample). Targets are either
      * class indices, integers of the logits' shape without the class axis ((N,), (N, d1, ...),
        or a 0-d index), each in [0, C) or equal to ``ignore_index`` (that position then counts
        for nothing, not even in the mean's denominator); or
      * class probabilities, floats of the logits' shape (soft labels, mixup).
    With class ``weight`` w (C,), label smoothing eps and q = (1 - eps) onehot(y) + eps / C,
    the loss of a position with index target y is
        l = -(1 - eps) w_y log p_y - (eps / C) sum_c w_c log p_c,       p = softmax(z)
    and with probability targets t, q = (1 - eps) t + eps / C,  l = -sum_c w_c q_c log p_c.
    ``reduction="mean"`` divides the sum of l by the summed weight w_y of the positions not
    ignored (their count without ``weight``; for probability targets by the number of
    positions), ``"sum"`` sums, ``"none"`` returns l per position.

    ``forward(logits, targets)`` returns a Python float ("mean", "sum") or an array of the
    targets' positions ("none"), and caches softmax for ``backward()``: with
    a_c = w_c q_c (the weighted target), dl/dz = (sum_c a_c) p - a per position.
    """

    def __init__(self, weight=None, *, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0) -> None:
        self.weight = _class_weight(weight, "CrossEntropyLoss",
                                    " (label_smoothing is a keyword argument)")
        self.ignore_index = _ignore_index(ignore_index, "CrossEntropyLoss")
        self.reduction = _check_reduction(reduction, "CrossEntropyLoss")
        try:
            eps = float(label_smoothing)
        except (TypeError, ValueError):
            eps = float("nan")  # refused just below
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"CrossEntropyLoss: label_smoothing must be in [0, 1], got "
                             f"{label_smoothing!r}")
        self.label_smoothing = eps
        self._cache = None

    def check_targets(self, targets, where: str = "") -> None:
        """TypeError unless ``targets``, a dataset's labels, can be this loss's targets
        whatever the logits: integer class labels ((N,) or (N, d1, ...) per position) or
        float class probabilities ((N, C, ...)). ``fit`` and ``evaluate`` call it up front
        (``where``, e.g. "fit: train", starts the message); ``forward`` checks each batch
        against its logits in full."""
        y = np.asarray(targets)
        if not ((y.ndim >= 1 and y.dtype.kind in "iu") or (y.ndim >= 2 and y.dtype.kind == "f")):
            raise TypeError(f"{where + ': ' if where else ''}CrossEntropyLoss needs integer "
                            f"class labels of shape (N,) or float class probabilities (N, C), "
                            f"got dtype {y.dtype} and shape {y.shape}")

    def forward(self, logits: np.ndarray, targets: np.ndarray):
        """The cross-entropy of ``logits`` against ``targets`` (class indices or
        probabilities, see the class): a float for "mean" and "sum", an array of the targets'
        positions for "none"."""
        z = _float(logits, "CrossEntropyLoss: logits")
        rows, tgt, probs = _class_rows(z, np.asarray(targets), self.weight, self.ignore_index,
                                        "CrossEntropyLoss")
        M, C = rows.shape
        dt = rows.dtype.type
        eps = self.label_smoothing
        logp = log_softmax(rows, axis=1) if M else rows.copy()
        w = None if self.weight is None else self.weight.astype(rows.dtype)
        t = wy = keep = a = None
        fast = False  # index targets, no weights, nothing ignored
        if probs:
            if self.ignore_index != -100:  # (as PyTorch: nothing to compare probabilities to)
                raise ValueError(f"CrossEntropyLoss: ignore_index={self.ignore_index} is for "
                                 f"class-index targets, and these are class probabilities "
                                 f"(targets of the logits' shape {z.shape})")
            a = tgt * dt(1.0 - eps) + dt(eps / C) if eps else tgt.copy()
            if w is not None:
                a *= w
            per = -np.einsum("mc,mc->m", a, logp)
            count = M
        else:
            keep = tgt != self.ignore_index
            t = tgt if keep.all() else np.where(keep, tgt, 0)
            per = -logp[np.arange(M), t]  # nll
            if w is None and t is tgt:
                fast, keep, count = True, None, M
                if eps and M:
                    smooth = logp.mean(axis=1)
                    # PyTorch's sums for "mean": (1 - eps) mean(nll) - eps mean(mean_c logp)
                    value = (1.0 - eps) * per.mean() - eps * smooth.mean()
                    per = per * dt(1.0 - eps) - smooth * dt(eps)
                elif M:
                    value = per.mean()
            else:
                wy = keep.astype(rows.dtype) if w is None else np.where(keep, w[t], dt(0))
                count = wy.sum()
                per *= wy
                if eps:
                    smooth = logp.sum(axis=1) if w is None else logp @ w
                    per = per * dt(1.0 - eps) - smooth * keep * dt(eps / C)
        np.exp(logp, out=logp)  # softmax, reused by backward
        scale = _mean_scale(count, keep, dt)
        shape = z.shape[:1] + z.shape[2:] if z.ndim > 1 else ()
        self._cache = _CrossEntropyCache(logp, a, t, wy, keep, w, z.shape, shape, scale)
        if self.reduction == "none":
            return per.reshape(shape)
        if not M:  # PyTorch: nan for the mean over nothing, 0 for the sum
            return 0.0 if self.reduction == "sum" else float("nan")
        if fast:
            return float(value * M if self.reduction == "sum" else value)
        return _reduce(per, self.reduction, count, scale)

    __call__ = forward

    def backward(self, grad_output=None) -> np.ndarray:
        """dL/dlogits for the last forward, in the logits' shape and dtype: per position
        (sum_c a_c) softmax - a with a the weighted target (see the class), divided by the
        mean's denominator for "mean", times ``grad_output`` (an array of the loss's shape,
        required for "none"; a number, default 1, otherwise)."""
        if self._cache is None:
            raise RuntimeError("CrossEntropyLoss.backward called before forward")
        c = self._cache
        M, C = c.p.shape
        dt = c.p.dtype.type
        eps = self.label_smoothing
        g = c.p.copy()
        if c.a is not None:  # probability targets
            g *= c.a.sum(axis=1, keepdims=True)
            g -= c.a
        elif c.wy is None:  # no weights, nothing ignored: sum_c a_c = 1
            if eps:
                g -= dt(eps / C)
            g[np.arange(M), c.t] -= dt(1.0 - eps)
        else:
            total = c.wy * dt(1.0 - eps)  # sum_c a_c per row
            if eps:
                w_sum = dt(C) if c.w is None else c.w.sum(dtype=g.dtype)
                total += c.keep * (dt(eps / C) * w_sum)
            g *= total[:, None]
            if eps:
                smooth = dt(eps / C) if c.w is None else c.w * dt(eps / C)
                g -= c.keep[:, None] * smooth
            g[np.arange(M), c.t] -= c.wy * dt(1.0 - eps)
        if self.reduction == "mean":
            if c.keep is not None and np.isnan(c.scale):
                # Every weight of the kept positions is 0: their gradient is nan, the ignored
                # rows' stays what it is (0 for finite logits), as PyTorch.
                g *= np.where(c.keep, c.scale, dt(1))[:, None]
            else:
                g *= c.scale
        go = _grad_output(grad_output, c.shape, self.reduction, g.dtype,
                          "CrossEntropyLoss.backward")
        if go is not None:
            g *= go.reshape(-1, 1)
        return _from_rows(g, c.zshape)


def _mean_scale(count, keep: np.ndarray | None, dt) -> np.floating:
    """1 / the mean's denominator `count` (summed target weights). When that is 0 the mean is
    nan, and its gradient nan too unless every position is ignored (then 0), as PyTorch."""
    if count:
        return dt(1.0 / float(count))
    return dt(0.0 if keep is not None and not keep.any() else np.nan)


def _reduce(per: np.ndarray, reduction: str, count, scale) -> float:
    """The "sum" or "mean" (sum times `scale`; nan over a zero `count`) of losses `per`."""
    total = per.sum()
    if reduction == "sum":
        return float(total)
    return float(total * scale) if count else float("nan")


def _from_rows(g: np.ndarray, zshape: tuple) -> np.ndarray:
    """Rows (M, C) of _class_rows back to the scores' shape: (N, C, d1, ...) from
    (N * d1 * ..., C), or (N, C) / (C,) as they are."""
    if len(zshape) <= 2:
        return g.reshape(zshape)
    return np.ascontiguousarray(np.moveaxis(g.reshape(zshape[:1] + zshape[2:] + zshape[1:2]), -1, 1))


class _CrossEntropyCache(NamedTuple):
    """What CrossEntropyLoss.backward needs of its forward, rows (M, C) of positions."""
    p: np.ndarray                # softmax
    a: np.ndarray | None         # probability targets: the weighted target w q
    t: np.ndarray | None         # index targets (ignored ones as 0)
    wy: np.ndarray | None        # index targets: the weight of each target, 0 where ignored;
                                 # None: no weights and nothing ignored
    keep: np.ndarray | None      # index targets: not ignored (None with wy)
    w: np.ndarray | None         # class weights in the logits' dtype
    zshape: tuple                # of the logits
    shape: tuple                 # of the per-position loss
    scale: np.floating           # 1 / the mean's denominator


class NLLLoss:
    """Negative log-likelihood of log-probabilities, as ``torch.nn.NLLLoss`` (put after a
    LogSoftmax layer: together they are CrossEntropyLoss). Input (N, C), (N, C, d1, ...) or
    (C,); class-index targets as for CrossEntropyLoss (``ignore_index`` positions count for
    nothing). Per position l = -w_y input_y; ``reduction="mean"`` divides the sum by the summed
    w_y of the positions not ignored, ``"sum"`` sums, ``"none"`` returns l per position.
    Backward: -w_y at each target (divided by that sum for "mean"), 0 elsewhere.
    """

    def __init__(self, weight=None, *, ignore_index: int = -100, reduction: str = "mean") -> None:
        self.weight = _class_weight(weight, "NLLLoss")
        self.ignore_index = _ignore_index(ignore_index, "NLLLoss")
        self.reduction = _check_reduction(reduction, "NLLLoss")
        self._cache = None

    def forward(self, input: np.ndarray, targets: np.ndarray):
        """The loss of log-probabilities ``input`` at class indices ``targets``: a float for
        "mean" and "sum", an array of the targets' positions for "none"."""
        z = _float(input, "NLLLoss: input")
        rows, t, _ = _class_rows(z, np.asarray(targets), self.weight, self.ignore_index,
                                 "NLLLoss", probabilities=False, name="input")
        M = len(rows)
        dt = rows.dtype.type
        keep = t != self.ignore_index
        t = np.where(keep, t, 0)
        wy = keep.astype(rows.dtype) if self.weight is None else \
            np.where(keep, self.weight.astype(rows.dtype)[t], dt(0))
        per = -rows[np.arange(M), t] * wy
        count = wy.sum()
        scale = _mean_scale(count, keep, dt)
        shape = z.shape[:1] + z.shape[2:] if z.ndim > 1 else ()
        self._cache = (t, keep, wy, scale, rows.shape, z.shape, shape, rows.dtype)
        if self.reduction == "none":
            return per.reshape(shape)
        return _reduce(per, self.reduction, count, scale)

    __call__ = forward

    def backward(self, grad_output=None) -> np.ndarray:
        """dL/dinput in the input's shape and dtype: -w_y at each target position (times the
        mean's 1 / sum w_y for "mean", times ``grad_output``: an array of the loss's shape for
        "none", else a number, default 1)."""
        if self._cache is None:
            raise RuntimeError("NLLLoss.backward called before forward")
        t, keep, wy, scale, rows_shape, zshape, shape, dtype = self._cache
        g = np.zeros(rows_shape, dtype)
        # (ignored positions get 0 even when the mean's scale is nan: every weight 0)
        coef = np.where(keep, -wy * scale, 0) if self.reduction == "mean" else -wy
        go = _grad_output(grad_output, shape, self.reduction, dtype, "NLLLoss.backward")
        if go is not None:
            coef = coef * go.reshape(-1)
        g[np.arange(len(t)), t] = coef
        return _from_rows(g, zshape)


def _broadcastable(a: np.ndarray | None, shape: tuple, name: str, where: str) -> None:
    """Refuses an ``a`` (weight, pos_weight) that does not broadcast to ``shape`` itself."""
    if a is None:
        return
    try:
        fits = np.broadcast_shapes(a.shape, shape) == shape
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"{where}: {name} of shape {a.shape} does not broadcast to the "
                         f"input's shape {shape}")




# -- losses of an input and a target of one shape, element by element ---------------------------

class _PointwiseLoss:
    """Base of the losses that compare an input and a target of the same shape element by
    element (MSELoss, L1Loss, SmoothL1Loss, HuberLoss, BCELoss, BCEWithLogitsLoss,
    KLDivLoss). A subclass gives the loss of each element, ``_pointwise(x, y) -> (l, saved)``,
    and its derivative with respect to the input, ``_derivative(saved) -> dl/dx`` (a new
    array); the checks, the optional element ``weight`` w (broadcast against the input), the
    reductions and ``backward``'s ``grad_output`` are here, once.

    * ``input``: floats (float32 or float64; float16 computes in float32). Integer or bool
      input raises TypeError, as in PyTorch (a model's output is floats; integer input is
      usually the arguments swapped).
    * ``target``: real numbers (floats only where the subclass says so), cast to the input's
      dtype: the loss computes in the input's precision.
    * Shapes must be equal, else ValueError naming both. PyTorch broadcasts different shapes
      with a warning (BCELoss raises), which silently turns an (N, 1) output against (N,)
      targets into an (N, N) loss; fastconv refuses them.
    * inf and nan propagate as in PyTorch, without NumPy warnings.
    """

    _reductions: tuple = _REDUCTIONS
    _target_kinds = "biuf"   # dtype kinds a target may have
    weight: np.ndarray | None = None

    def __init__(self, reduction: str) -> None:
        self.reduction = _check_reduction(reduction, type(self).__name__, self._reductions)
        self._cache = None

    def _where(self, where: str = "") -> str:
        name = type(self).__name__
        return f"{where}: {name}" if where else name

    def check_targets(self, targets, where: str = "") -> None:
        """Raises TypeError (ValueError) when ``targets`` cannot be this loss's target
        whatever the input: their dtype (and values, for BCELoss). ``forward`` checks each
        target so, and ``fit``/``evaluate`` check their whole labels up front (``where``, e.g.
        "fit: train", starts the message)."""
        y = np.asarray(targets)
        if y.dtype.kind not in self._target_kinds:
            what = "floats" if self._target_kinds == "f" else "real numbers"
            raise TypeError(f"{self._where(where)}: target must hold {what}, got dtype {y.dtype}")

    def _check_operands(self, x: np.ndarray, where: str) -> None:
        """Checks of the input's values and of the loss's own arrays against the input's
        shape (a subclass adds its own): ``weight`` must broadcast to it."""
        _broadcastable(self.weight, x.shape, "weight", where)

    def forward(self, input: np.ndarray, target: np.ndarray):
        """The loss of ``input`` against ``target`` of the same shape (see the class): a float
        for "mean" (nan for no elements), "batchmean" and "sum", an array of the input's shape
        for "none"."""
        where = self._where()
        x = np.asarray(input)
        if x.dtype.kind != "f":
            raise TypeError(f"{where}: input must hold floats (float32 or float64), got dtype "
                            f"{x.dtype} (a model's output is floats: are input and target "
                            f"swapped?)")
        x = _float(x, f"{where}: input")
        self.check_targets(target)
        y = np.asarray(target)
        if y.shape != x.shape:
            raise ValueError(f"{where}: input of shape {x.shape} and target of shape {y.shape} "
                             f"differ; fastconv does not broadcast them (give the target the "
                             f"input's shape)")
        self._check_operands(x, where)
        y = y.astype(x.dtype, copy=False)
        w = None if self.weight is None else self.weight.astype(x.dtype, copy=False)
        count = (x.shape[0] if x.ndim else 1) if self.reduction == "batchmean" else x.size
        scale = _mean_scale(count, None, x.dtype.type)
        with np.errstate(all="ignore"):  # inf and nan propagate, as in PyTorch
            per, saved = self._pointwise(x, y)
            if w is not None:
                per = per * w
            self._cache = (saved, w, x.shape, scale)
            if self.reduction == "none":
                return np.asarray(per)
            return _reduce(per, self.reduction, count, scale)

    __call__ = forward

    def backward(self, grad_output=None) -> np.ndarray:
        """dL/dinput for the last forward, in the input's shape and dtype: each element's
        derivative (see the class) times its weight, divided by the mean's denominator
        ("mean": the element count, "batchmean": the batch size), times ``grad_output`` (an
        array of the input's shape, required for "none"; a number, default 1, otherwise)."""
        where = self._where()
        if self._cache is None:
            raise RuntimeError(f"{where}.backward called before forward")
        saved, w, shape, scale = self._cache
        go = _grad_output(grad_output, shape, self.reduction, scale.dtype, f"{where}.backward")
        with np.errstate(all="ignore"):
            g = np.asarray(self._derivative(saved))
            if w is not None:
                g *= w
            if self.reduction in ("mean", "batchmean"):
                g *= scale
            if go is not None:
                g *= go
        return g

    def _pointwise(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, object]:
        raise NotImplementedError

    def _derivative(self, saved) -> np.ndarray:
        raise NotImplementedError


def _threshold(value, name: str, where: str, positive: bool = False) -> float:
    """A threshold (SmoothL1Loss' beta, HuberLoss' delta) as a float >= 0 (> 0 with
    ``positive``), else ValueError naming it."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")  # refused just below
    if isinstance(value, (bool, np.bool_)) or not (v > 0 if positive else v >= 0):
        raise ValueError(f"{where}: {name} must be a number {'>' if positive else '>='} 0, got "
                         f"{value!r}")
    return v


class MSELoss(_PointwiseLoss):
    """Squared error l = (x - y)**2 per element, as ``torch.nn.MSELoss``: averaged over all
    elements (``reduction="mean"``), summed (``"sum"``) or returned per element (``"none"``).
    Backward 2 (x - y), divided by the element count for "mean". Input and target: see
    :class:`_PointwiseLoss` (same shape, floats in, the input's dtype out)."""

    def __init__(self, *, reduction: str = "mean") -> None:
        super().__init__(reduction)

    def _pointwise(self, x, y):
        d = x - y
        return d * d, d

    def _derivative(self, d):
        return d * d.dtype.type(2)


class L1Loss(_PointwiseLoss):
    """Absolute error l = |x - y| per element, as ``torch.nn.L1Loss``; reductions as MSELoss.
    Backward sign(x - y) (0 where x = y, and where it is nan, as PyTorch)."""

    def __init__(self, *, reduction: str = "mean") -> None:
        super().__init__(reduction)

    def _pointwise(self, x, y):
        d = x - y
        return np.abs(d), d

    def _derivative(self, d):
        return _sign(d)


def _sign(d: np.ndarray) -> np.ndarray:
    """sign(d) with 0 for nan, as PyTorch's L1 gradient."""
    one = d.dtype.type(1)
    return np.where(d > 0, one, np.where(d < 0, -one, d.dtype.type(0)))


class SmoothL1Loss(_PointwiseLoss):
    """Smooth L1 loss, as ``torch.nn.SmoothL1Loss`` (Fast R-CNN's box regression loss). Per
    element, with z = |x - y|,

        l = 0.5 z**2 / beta   if z < beta,      z - 0.5 beta   otherwise,

    quadratic near 0 and L1 beyond ``beta`` (>= 0; beta = 0 is L1Loss, as in PyTorch).
    Backward: clip((x - y) / beta, -1, 1) (sign(x - y) for beta = 0). Reductions as MSELoss.
    HuberLoss(delta) is delta * SmoothL1Loss(beta=delta).
    """

    def __init__(self, *, reduction: str = "mean", beta: float = 1.0) -> None:
        super().__init__(reduction)
        self.beta = _threshold(beta, "beta", "SmoothL1Loss")

    def _pointwise(self, x, y):
        d = x - y
        z = np.abs(d)
        beta, half = x.dtype.type(self.beta), x.dtype.type(0.5)
        if not beta:
            return z, d
        return np.where(z < beta, half * z * z / beta, z - half * beta), d

    def _derivative(self, d):
        beta = d.dtype.type(self.beta)
        if not beta:
            return _sign(d)
        return np.clip(d / beta, -1, 1)


class HuberLoss(_PointwiseLoss):
    """Huber loss, as ``torch.nn.HuberLoss``. Per element, with z = |x - y|,

        l = 0.5 z**2   if z < delta,      delta (z - 0.5 delta)   otherwise,

    ``delta`` > 0: squared error for small errors, linear (robust to outliers) beyond.
    Backward: clip(x - y, -delta, delta). Reductions as MSELoss; ``reduction`` may be given
    first, as in PyTorch.
    """

    def __init__(self, reduction: str = "mean", delta: float = 1.0) -> None:
        super().__init__(reduction)
        self.delta = _threshold(delta, "delta", "HuberLoss", positive=True)

    def _pointwise(self, x, y):
        d = x - y
        z = np.abs(d)
        delta, half = x.dtype.type(self.delta), x.dtype.type(0.5)
        return np.where(z < delta, half * z * z, delta * (z - half * delta)), d

    def _derivative(self, d):
        delta = d.dtype.type(self.delta)
        return np.clip(d, -delta, delta)


def _in_unit_interval(a: np.ndarray, name: str, where: str) -> None:
    """ValueError unless every element of ``a`` is in [0, 1] (nan is not)."""
    inside = (a >= 0) & (a <= 1)
    if not inside.all():
        at = tuple(int(i) for i in np.unravel_index(np.argmin(inside), a.shape))
        raise ValueError(f"{where}: every element of {name} must be in [0, 1] (a "
                         f"probability), got {a[at]} at index {at}")


_BCE_EPSILON = np.float32(1e-12)
"""BCELoss's floor of x (1 - x) in its gradient: PyTorch's EPSILON, a float 1e-12 (so
9.99999996e-13 in float64 too)."""


class BCELoss(_PointwiseLoss):
    """Binary cross-entropy of probabilities, as ``torch.nn.BCELoss`` (put after a Sigmoid
    layer; BCEWithLogitsLoss does both in one, more stable, step). Per element, with x the
    predicted probability and y the target, both in [0, 1] (else ValueError, where PyTorch
    raises RuntimeError; nan included), and w ``weight`` (broadcast against the input):

        l = -w [ y max(log x, -100) + (1 - y) max(log(1 - x), -100) ]

    the logs clamped at -100 as PyTorch, so x = 0 or 1 gives a finite loss. Backward, as
    PyTorch: w (x - y) / max(x (1 - x), eps) with eps float32's 1e-12 (torch's
    EPSILON). Reductions as MSELoss.
    """

    def __init__(self, weight=None, *, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.weight = None if weight is None else _float(weight, "BCELoss: weight")

    def check_targets(self, targets, where: str = "") -> None:
        """TypeError unless ``targets`` hold real numbers, ValueError unless all are in
        [0, 1] (``where`` starts the message; see :meth:`_PointwiseLoss.check_targets`)."""
        super().check_targets(targets, where)
        _in_unit_interval(np.asarray(targets), "target", self._where(where))

    def _check_operands(self, x, where):
        super()._check_operands(x, where)
        _in_unit_interval(x, "input", where)

    def _pointwise(self, x, y):
        one, floor = x.dtype.type(1), x.dtype.type(-100)
        log_x = np.maximum(np.log(x), floor)
        log_1mx = np.maximum(np.log1p(-x), floor)
        return (y - one) * log_1mx - y * log_x, (x, y)

    def _derivative(self, saved):
        x, y = saved
        one, eps = x.dtype.type(1), x.dtype.type(_BCE_EPSILON)
        return (x - y) / np.maximum((one - x) * x, eps)



class BCEWithLogitsLoss(_PointwiseLoss):
    """Sigmoid and binary cross-entropy in one stable step, as ``torch.nn.BCEWithLogitsLoss``
    (multi-label classification: one independent yes/no per class). Per element, with
    x the logit, y the target in [0, 1], w ``weight`` and r ``pos_weight`` (both broadcast
    against the input, r usually (C,) along the last axis):

        l = -w [ r y log sigmoid(x) + (1 - y) log(1 - sigmoid(x)) ]
          = w [ (1 - y) x - ((r - 1) y + 1) log sigmoid(x) ]

    computed in the second form, as PyTorch, with log sigmoid(x) = min(x, 0) -
    log1p(exp(-|x|)): finite for any finite x; an infinite logit gives what PyTorch gives (inf
    or nan). Reductions as MSELoss.
    Backward: dl/dx = w [ (r y + 1 - y) sigmoid(x) - r y ]  (w (sigmoid(x) - y) without r).
    """

    def __init__(self, weight=None, *, reduction: str = "mean", pos_weight=None) -> None:
        super().__init__(reduction)
        self.weight = None if weight is None else _float(weight, "BCEWithLogitsLoss: weight")
        self.pos_weight = (None if pos_weight is None else
                           _float(pos_weight, "BCEWithLogitsLoss: pos_weight"))

    def _check_operands(self, x, where):
        super()._check_operands(x, where)
        _broadcastable(self.pos_weight, x.shape, "pos_weight", where)

    def _pointwise(self, x, y):
        one, zero = x.dtype.type(1), x.dtype.type(0)
        e = np.exp(-np.abs(x))
        log_sigmoid = np.minimum(x, zero) - np.log1p(e)
        sigmoid = np.where(x >= 0, one / (one + e), e / (one + e))
        if self.pos_weight is None:
            return (one - y) * x - log_sigmoid, (sigmoid, None, y)
        r = self.pos_weight.astype(x.dtype, copy=False)
        return (one - y) * x - ((r - one) * y + one) * log_sigmoid, (sigmoid, r * y, y)

    def _derivative(self, saved):
        sigmoid, ry, y = saved
        if ry is None:
            return sigmoid - y
        return (ry + sigmoid.dtype.type(1) - y) * sigmoid - ry


def _xlogx(t: np.ndarray) -> np.ndarray:
    """t log t with 0 log 0 = 0, as ``torch.xlogy(t, t)``: nan for nan or negative t."""
    return np.where(t == 0, t.dtype.type(0), t * np.log(t))


class KLDivLoss(_PointwiseLoss):
    """Kullback-Leibler divergence, as ``torch.nn.KLDivLoss``. The input holds
    log-probabilities (e.g. a LogSoftmax layer's output), the target probabilities (or
    log-probabilities with ``log_target=True``); per element

        l = y log y - y x   (0 where y = 0, torch.xlogy),     l = e^y (y - x)   (log_target)

    ``reduction="batchmean"`` (sum / batch size, the first axis) gives the divergence
    KL(target || exp(input)) per sample; "mean" divides by the element count (PyTorch's
    default, which PyTorch warns about and fastconv does not), "sum" and "none" as MSELoss.
    Targets must be floats (TypeError otherwise, as PyTorch). Backward: -y (-e^y with
    ``log_target``).
    """

    _reductions = ("mean", "batchmean", "sum", "none")
    _target_kinds = "f"

    def __init__(self, *, reduction: str = "mean", log_target: bool = False) -> None:
        super().__init__(reduction)
        self.log_target = bool(log_target)

    def _pointwise(self, x, y):
        if self.log_target:
            e = np.exp(y)
            return e * (y - x), e
        return _xlogx(y) - y * x, y

    def _derivative(self, minus_grad):
        return np.negative(minus_grad)
