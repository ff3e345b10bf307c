"""Numerical gradient checking of layers and whole models (central differences, float64).

    rel_error(a, b) = ||a - b|| / (||a|| + ||b||)     (~1e-7 or less: good; ~1e-3: a bug)

:func:`gradcheck_layer` compares a layer's backward with central differences of the scalar
loss L = sum(layer(x) * r) for a fixed random r (a random projection of the output), with
respect to the input and every parameter. :func:`gradcheck_model` does the same through
CrossEntropyLoss. Both work on a float64 *copy* of the layer/model (the original is not
touched), keep the training/eval mode, freeze Dropout masks so the function is deterministic,
and restore BatchNorm running statistics between evaluations. Large tensors are checked on a
random subset of their entries (``max_checks``). For a Sequential, the numerical derivative
with respect to a parameter of layer k re-runs only layers k, k+1, ... from the cached input of
layer k.

Any module works, containers included (Residual, Concat, nested trees). Frozen parameters
(``requires_grad=False``) get no gradient, so they are not checked.

Pass/fail as torch.autograd.gradcheck: with ``atol`` and/or ``rtol`` (the one not given takes
torch's default, atol=1e-5, rtol=1e-3), every checked entry must satisfy
|analytical - numerical| <= atol + rtol |numerical|, else :class:`GradcheckError` (naming the
tensor and its worst entry) is raised; the relative errors are returned either way.

A parameter whose exact gradient is zero (the bias of a convolution followed by BatchNorm in
training mode) gives a relative error near 1, as both gradients are rounding noise: leave such
biases out (``bias=False``, as in VGG with BatchNorm) or skip them with ``params``.
"""

from __future__ import annotations

import copy
import math
import numbers
import warnings
from typing import Callable

import numpy as np

from .init import as_generator
from .losses import CrossEntropyLoss
from .nn import Dropout, Module, Sequential

__all__ = ["eval_numerical_gradient", "rel_error", "gradcheck_layer", "gradcheck_model",
           "GradcheckError"]

#: torch.autograd.gradcheck's default tolerances, taken for the one of atol / rtol not given
TORCH_ATOL, TORCH_RTOL = 1e-5, 1e-3


class GradcheckError(RuntimeError):
    """A gradient check with tolerances (``atol`` / ``rtol``) failed; as
    ``torch.autograd.gradcheck.GradcheckError``, a RuntimeError. The message names each
    tensor with entries outside the tolerances, how many, and the worst one."""


def rel_error(a, b) -> float:
    """||a - b|| / (||a|| + ||b||) (Frobenius norms); 0.0 when both are zero."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error: shapes {a.shape} and {b.shape} differ")
    denom = np.linalg.norm(a) + np.linalg.norm(b)
    if denom == 0.0:
        return 0.0
    return float(np.linalg.norm(a - b) / denom)


def eval_numerical_gradient(f: Callable[[np.ndarray], float], x: np.ndarray, eps: float = 1e-6,
                            indices=None, robust: bool = False) -> np.ndarray:
    """Central-difference gradient of the scalar function f at x: (f(x + eps e_i) - f(x - eps e_i)) / 2 eps.

    `x` is perturbed in place (one entry at a time) and restored; f(x) must read it. With
    `indices` (a sequence of flat indices) only those entries are computed and a 1-D array of
    them is returned; otherwise an array of x's shape.

    robust: guard against kinks (ReLU, max pooling) inside [x - eps, x + eps], where the central
    difference is wrong. Each entry is also computed with step eps/2; if the two disagree by more
    than 1e-6 relative (plus the rounding-noise floor), both are recomputed with steps eps/10
    and eps/100, and the most self-consistent pair wins. Costs 4 evaluations per entry instead
    of 2; for a smooth f the result is the plain central difference.
    """
    op = "eval_numerical_gradient"
    if not callable(f):
        raise TypeError(f"{op}: f must be a function of x, got {type(f).__name__}")
    if not isinstance(x, np.ndarray) or not x.flags.writeable:
        raise TypeError(f"{op}: x must be a writeable ndarray")
    if x.dtype.kind != "f":
        raise TypeError(f"{op}: x must be a floating-point array (a step of {eps} is lost in "
                        f"dtype {x.dtype}), got dtype {x.dtype}")
    if x.dtype != np.float64:
        # as torch.autograd.gradcheck: the step and the differences drown in float32 rounding
        warnings.warn(f"{op}: x is {x.dtype}, not float64: central differences with step "
                      f"{eps} are dominated by rounding; check in float64", stacklevel=2)
    eps = _positive_step(eps, op)
    flat = x.reshape(-1)
    if not np.shares_memory(flat, x):
        raise ValueError(f"{op}: x must be contiguous (it is perturbed in place)")
    idx = range(flat.size) if indices is None else _flat_indices(indices, flat.size, op)
    out = np.zeros(len(idx), dtype=np.float64)
    tiny = np.finfo(np.float64).eps

    def value(v) -> float:
        if isinstance(v, np.ndarray) and v.size != 1 or not isinstance(
                v, (numbers.Real, np.ndarray, np.generic)) or isinstance(v, (str, bytes)):
            raise TypeError(f"{op}: f must return a scalar, got "
                            + (f"an array of shape {v.shape}" if isinstance(v, np.ndarray)
                               else type(v).__name__))
        return float(np.asarray(v).reshape(()))

    def central(i, old, h):
        flat[i] = old + h
        fp = value(f(x))
        flat[i] = old - h
        fm = value(f(x))
        flat[i] = old
        return (fp - fm) / (2 * h), abs(fp) + abs(fm)

    for n, i in enumerate(idx):
        old = flat[i]
        d, scale = central(i, old, eps)
        if robust:
            best = None
            h = eps
            for _ in range(3):
                d_half, _ = central(i, old, h / 2)
                gap = abs(d - d_half)
                if best is None or gap < best[0]:
                    best = (gap, d)
                if gap <= 1e-6 * max(abs(d), abs(d_half)) + 256 * tiny * scale / h:
                    break
                h /= 10
                d, scale = central(i, old, h)
            d = best[1]
        out[n] = d
    return out.reshape(x.shape) if indices is None else out


def _positive_step(eps, op: str) -> float:
    """The finite-difference step: a finite number > 0 (0 divides by zero, NaN gives NaN)."""
    if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, (numbers.Real, np.floating)) \
            or not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"{op}: eps must be a finite number > 0, got {eps!r}")
    return float(eps)


def _flat_indices(indices, size: int, op: str) -> list[int]:
    """`indices` as ints in [0, size); a float or an index out of range is an error (not
    truncated, nor wrapped around as a negative NumPy index would be)."""
    out = []
    for i in np.asarray(indices).reshape(-1).tolist() if not isinstance(indices, range) \
            else indices:
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise TypeError(f"{op}: indices must be ints (flat indices of x), got {i!r}")
        if not 0 <= i < size:
            raise ValueError(f"{op}: index {i} is out of range for x of {size} entries")
        out.append(int(i))
    return out


def _input(x_or_shape, gen: np.random.Generator, op: str) -> np.ndarray:
    """A float64 copy of the input array, or a N(0, 1) one of the given shape (positive ints:
    a float or a string is an error, not truncated)."""
    if isinstance(x_or_shape, np.ndarray):
        if x_or_shape.dtype.kind not in "biuf":
            raise TypeError(f"{op}: the input must hold real numbers, got dtype "
                            f"{x_or_shape.dtype}")
        return np.array(x_or_shape, dtype=np.float64, copy=True)
    shape = x_or_shape
    if not isinstance(shape, (tuple, list)) or not shape or not all(
            isinstance(n, (numbers.Integral, np.integer)) and not isinstance(n, (bool, np.bool_))
            for n in shape):
        raise TypeError(f"{op}: x_or_shape must be an input array or a shape of positive ints, "
                        f"got {x_or_shape!r}")
    if min(shape) < 1:
        raise ValueError(f"{op}: the input shape must be positive ints, got {tuple(shape)}")
    return gen.standard_normal(tuple(int(n) for n in shape))


def _tolerances(atol, rtol, op: str):
    """None (no pass/fail check) when neither is given, else (atol, rtol) as floats, the one not
    given at torch.autograd.gradcheck's default; each a finite number >= 0."""
    if atol is None and rtol is None:
        return None
    out = []
    for name, value, default in (("atol", atol, TORCH_ATOL), ("rtol", rtol, TORCH_RTOL)):
        if value is None:
            value = default
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.floating)) \
                or not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{op}: {name} must be a finite number >= 0 (or None), got {value!r}")
        out.append(float(value))
    return tuple(out)


def _outside(name: str, ana, num, idx, shape, tol) -> str | None:
    """Why the checked entries of tensor `name` fail |ana - num| <= atol + rtol |num| (None if
    they do not): how many, and the worst (largest excess; NaN first) with its index."""
    atol, rtol = tol
    ana = np.asarray(ana, dtype=np.float64).reshape(-1)
    num = np.asarray(num, dtype=np.float64).reshape(-1)
    excess = np.abs(ana - num) - (atol + rtol * np.abs(num))
    bad = ~(excess <= 0)                                      # (NaN fails)
    if not bad.any():
        return None
    k = int(np.argmax(np.where(bad, np.nan_to_num(excess, nan=np.inf), -np.inf)))
    flat = k if idx is None else int(idx[k])
    at = tuple(int(i) for i in np.unravel_index(flat, shape))
    return (f"{name!r}: {int(bad.sum())} of {ana.size} checked entries differ by more than "
            f"atol + rtol |numerical| (atol={atol!r}, rtol={rtol!r}); worst: entry {flat} "
            f"{at}, analytical {ana[k]:.10g}, numerical {num[k]:.10g}")


def _check_options(module, max_checks, eps, params, op: str) -> None:
    """The arguments gradcheck_layer and gradcheck_model share."""
    if not isinstance(module, Module):
        raise TypeError(f"{op}: expected a fastconv.nn.Module, got {type(module).__name__}")
    if max_checks is not None and (isinstance(max_checks, (bool, np.bool_)) or not isinstance(
            max_checks, (numbers.Integral, np.integer)) or max_checks < 1):
        # (0 would check nothing and report every error as 0.0: a pass)
        raise ValueError(f"{op}: max_checks must be None (every entry) or an int >= 1, got "
                         f"{max_checks!r}")
    _positive_step(eps, op)
    if params is not None and (isinstance(params, str) or not all(isinstance(n, str)
                                                                  for n in params)):
        raise TypeError(f"{op}: params must be a list of parameter names, got {params!r}")


def _sample(analytic: np.ndarray, max_checks: int | None, gen: np.random.Generator):
    """None (check every entry) or sorted flat indices: half drawn among the entries with a
    non-zero analytical gradient (so a sample is not all trivially zero behind a ReLU), the
    rest uniformly (so wrongly-zero gradients are caught too)."""
    size = analytic.size
    if max_checks is None or size <= max_checks:
        return None
    nonzero = np.flatnonzero(analytic)
    k = min(max_checks // 2, nonzero.size)
    picked = set(gen.choice(nonzero, size=k, replace=False).tolist()) if k else set()
    while len(picked) < max_checks:
        picked.update(gen.choice(size, size=max_checks - len(picked), replace=False).tolist())
    return np.array(sorted(picked), dtype=np.intp)


def _prepare(module: Module) -> Module:
    """float64 deep copy (cached activations are not copied, see Module.__getstate__); a
    module in bf16 mode is checked as its float64 computation."""
    return copy.deepcopy(module).to(np.float64, precision="auto")


def _check(module: Module, x: np.ndarray, loss_and_grad, eps: float, max_checks: int | None,
           gen: np.random.Generator, check_input: bool, params=None,
           robust: bool = False, tol=None, op: str = "gradcheck") -> dict[str, float]:
    buffers = [(b, b.copy()) for b in module.buffers()]

    def restore():
        for b, saved in buffers:
            np.copyto(b, saved)

    # Analytical gradients (first forward also draws the dropout masks, then frozen).
    module.forward(x)
    for m in module.modules():
        if isinstance(m, Dropout):
            m.freeze_mask()
    restore()
    module.zero_grad()
    _, grad_y = loss_and_grad(module.forward(x))
    grad_x = module.backward(grad_y)
    restore()

    # For a Sequential, perturbing a parameter of layer k only changes layers k, k+1, ...:
    # start those evaluations from the cached input of layer k.
    children = list(module.named_children()) if isinstance(module, Sequential) else []
    owner: dict[int, int] = {}
    acts = [x]
    if children:
        for k, (_, child) in enumerate(children):
            for p in child.parameters():
                owner.setdefault(id(p), k)
        h = x
        for _, child in children[:-1]:
            h = child.forward(h)
            acts.append(h)
        restore()

    def f_from(k: int):
        def f(_):
            if children:
                h = acts[k]
                for _, child in children[k:]:
                    h = child.forward(h)
            else:
                h = module.forward(x)
            out = loss_and_grad(h, need_grad=False)
            restore()
            return out
        return f

    errors: dict[str, float] = {}
    failures: list[str] = []

    def record(name, ana, num, idx, shape):
        errors[name] = rel_error(ana, num)
        why = None if tol is None else _outside(name, ana, num, idx, shape, tol)
        if why is not None:
            failures.append(why)

    if check_input:
        idx = _sample(grad_x, max_checks, gen)
        num = eval_numerical_gradient(f_from(0), x, eps, idx, robust)
        ana = grad_x if idx is None else grad_x.reshape(-1)[idx]
        record("input", ana, num, idx, x.shape)
    named = dict(module.named_parameters())
    if params is not None:
        unknown = [n for n in params if n not in named]
        if unknown:
            raise ValueError(f"gradcheck: unknown parameter names {unknown}; the module has {list(named)}")
        frozen = [n for n in params if not named[n].requires_grad]
        if frozen:
            raise ValueError(f"gradcheck: parameters {frozen} are frozen (requires_grad=False): "
                             f"backward computes no gradient for them")
        named = {n: named[n] for n in params}
    else:  # (frozen parameters get no gradient to check)
        named = {n: p for n, p in named.items() if p.requires_grad}
    for name, p in named.items():
        idx = _sample(p.grad, max_checks, gen)
        num = eval_numerical_gradient(f_from(owner.get(id(p), 0)), p.data, eps, idx, robust)
        ana = p.grad if idx is None else p.grad.reshape(-1)[idx]
        record(name, ana, num, idx, p.shape)
    if failures:
        raise GradcheckError(f"{op}: " + "; ".join(failures))
    return errors


def gradcheck_layer(layer: Module, x_or_shape, seed=0, eps: float = 1e-6,
                    max_checks: int | None = None, check_input: bool = True,
                    params=None, robust: bool = False, *, atol: float | None = None,
                    rtol: float | None = None) -> dict[str, float]:
    """Check `layer`'s backward against central differences of L = sum(layer(x) * r), r ~ N(0, 1).

    x_or_shape: an input array, or a shape for a N(0, 1) input drawn from `seed`. Runs on a
    float64 copy of the layer. Returns {"input": err, "<param name>": err, ...} of relative
    errors (at most `max_checks` random entries per tensor when given; only the parameters
    named in `params` when given). robust: see :func:`eval_numerical_gradient`.

    atol, rtol: as torch.autograd.gradcheck's (the one not given at torch's default, 1e-5 /
    1e-3): every checked entry must satisfy |analytical - numerical| <= atol + rtol
    |numerical|, else :class:`GradcheckError` names the tensors and their worst entries.
    Neither given (the default): no pass/fail, only the errors.
    """
    op = "gradcheck_layer"
    _check_options(layer, max_checks, eps, params, op)
    tol = _tolerances(atol, rtol, op)
    gen = as_generator(seed)
    x = _input(x_or_shape, gen, "gradcheck_layer")
    module = _prepare(layer)
    r = None

    def loss_and_grad(y, need_grad=True):
        nonlocal r
        if r is None:
            r = gen.standard_normal(y.shape)
        value = float(np.vdot(y.reshape(-1), r.reshape(-1)))
        return (value, r) if need_grad else value

    return _check(module, x, loss_and_grad, eps, max_checks, gen, check_input, params, robust,
                  tol, op)


def gradcheck_model(model: Module, x_or_shape, targets=None, num_classes: int | None = None,
                    seed=0, eps: float = 1e-5, max_checks: int | None = 20,
                    check_input: bool = True, label_smoothing: float = 0.0,
                    params=None, robust: bool = True, *, atol: float | None = None,
                    rtol: float | None = None) -> dict[str, float]:
    """Check a classifier's backward through CrossEntropyLoss against central differences.

    x_or_shape: an input batch or its shape (N(0, 1) input from `seed`); targets: integer
    labels (random ones in [0, num_classes) if None, num_classes defaulting to the model's
    output width). Runs on a float64 copy; checks at most `max_checks` random entries of the
    input and of each parameter (None: all), of the parameters named in `params` only if given.
    Returns {"input": err, "0.weight": err, ...}. `robust` (on by default here: a deep ReLU
    network has many kinks) re-checks each entry with smaller steps when a kink is suspected,
    see :func:`eval_numerical_gradient`. The default step eps=1e-5 (larger than
    gradcheck_layer's 1e-6) keeps the rounding noise of a deep forward pass, ~1e-13 * loss / eps,
    well below the gradients; the kink guard makes the larger step safe.

    Deep nets at PyTorch's default initialisation can have gradients so small (~1e-6) that the
    central-difference noise (~1e-16 * loss / eps) is no longer negligible; re-initialise with
    ``fastconv.init.kaiming_normal_`` for a sharper check.

    atol, rtol: pass/fail with torch.autograd.gradcheck's criterion, as in
    :func:`gradcheck_layer` (:class:`GradcheckError` on failure).
    """
    op = "gradcheck_model"
    _check_options(model, max_checks, eps, params, op)
    tol = _tolerances(atol, rtol, op)
    gen = as_generator(seed)
    x = _input(x_or_shape, gen, "gradcheck_model")
    module = _prepare(model)
    if targets is None:
        if num_classes is None:
            num_classes = module.output_shape(x.shape)[-1]
        if isinstance(num_classes, (bool, np.bool_)) or not isinstance(
                num_classes, (numbers.Integral, np.integer)) or num_classes < 1:
            raise ValueError(f"gradcheck_model: num_classes must be an int >= 1, got "
                             f"{num_classes!r}")
        targets = gen.integers(0, num_classes, size=x.shape[0])
    targets = np.asarray(targets)
    crit = CrossEntropyLoss(label_smoothing=label_smoothing)

    def loss_and_grad(y, need_grad=True):
        value = crit.forward(y, targets)
        return (value, crit.backward()) if need_grad else value

    return _check(module, x, loss_and_grad, eps, max_checks, gen, check_input, params, robust,
                  tol, op)
