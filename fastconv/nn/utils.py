"""Gradient clipping and flat parameter vectors, as ``torch.nn.utils``.

::

    model.backward(loss.backward())
    total = nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)   # before opt.step()
    nn.utils.clip_grad_value_(model.parameters(), clip_value=0.5)

    vec = nn.utils.parameters_to_vector(model.parameters())              # (n,) copy
    nn.utils.vector_to_parameters(vec, model.parameters())               # written back

Parameters without a gradient (``grad`` None) and frozen ones (``requires_grad=False``, whose
gradient no backward computes) are skipped, as PyTorch skips parameters whose ``grad`` is
None. Gradients are changed in place.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .module import Parameter

__all__ = ["clip_grad_norm_", "clip_grad_value_", "get_total_norm", "parameters_to_vector",
           "vector_to_parameters"]


def _parameter_list(parameters, where: str) -> list:
    """``parameters`` (one Parameter, or an iterable of them, e.g. ``model.parameters()``)
    as a list; TypeError for anything else."""
    if isinstance(parameters, Parameter):
        return [parameters]
    if isinstance(parameters, np.ndarray) or not hasattr(parameters, "__iter__"):
        raise TypeError(f"{where}: parameters must be a Parameter or an iterable of them "
                        f"(model.parameters()), got {type(parameters).__name__}")
    params = list(parameters)
    for i, p in enumerate(params):
        if not (hasattr(p, "data") and hasattr(p, "grad")):
            raise TypeError(f"{where}: parameters[{i}] is a {type(p).__name__}, not a "
                            f"Parameter (with .data and .grad)")
    return params


def _gradients(params: list) -> list[np.ndarray]:
    """The gradients to clip: those of parameters that have one and are not frozen."""
    return [p.grad for p in params
            if getattr(p, "requires_grad", True) and p.grad is not None]


def _norm_type(norm_type, where: str) -> float:
    """``norm_type`` as a float (inf, or 'inf' as PyTorch's ``float(norm_type)`` takes it)."""
    try:
        if isinstance(norm_type, (bool, np.bool_)):
            raise TypeError
        p = float(norm_type)
    except (TypeError, ValueError):
        raise TypeError(f"{where}: norm_type must be a number (or inf), got "
                        f"{norm_type!r}") from None
    if math.isnan(p):
        raise ValueError(f"{where}: norm_type must not be NaN")
    return p


def _check_foreach(foreach, where: str) -> None:
    if foreach is not None and not isinstance(foreach, (bool, np.bool_)):
        raise TypeError(f"{where}: foreach must be None, True or False, got {foreach!r}")


def _vector_norm(x: np.ndarray, p: float) -> float:
    """torch.linalg.vector_norm of the flattened ``x`` of order ``p``, in float64: max |x|
    (inf), min |x| (-inf), the count of non-zeros (0), else (sum |x|**p)**(1/p). The norm of
    no elements is 0."""
    flat = np.asarray(x).reshape(-1)
    if flat.size == 0:
        return 0.0
    flat = flat.astype(np.float64, copy=False)
    with np.errstate(all="ignore"):  # (inf, NaN and 0 ** -p follow IEEE, as in torch)
        if p == 2.0:
            return float(np.sqrt(np.dot(flat, flat)))
        return float(np.linalg.norm(flat, ord=p))


def get_total_norm(tensors, norm_type: float = 2.0, error_if_nonfinite: bool = False,
                   foreach: bool | None = None) -> np.ndarray:
    """The norm of order ``norm_type`` of the arrays ``tensors`` taken together (the norm of
    their per-array norms, as ``torch.nn.utils.get_total_norm``), as a 0-d array of their
    common dtype (float64 inside; a float32 result is rounded from it). No arrays: 0.

    Raises RuntimeError when ``error_if_nonfinite`` and the norm is NaN or infinite.
    ``foreach`` is accepted for PyTorch compatibility; NumPy has one implementation.
    """
    where = "get_total_norm"
    p = _norm_type(norm_type, where)
    _check_foreach(foreach, where)
    if isinstance(tensors, np.ndarray):
        tensors = [tensors]
    arrays = [np.asarray(t) for t in tensors]
    dtype = np.result_type(*arrays) if arrays else np.dtype(np.float32)
    if dtype.kind != "f":
        dtype = np.dtype(np.float64)
    norms = np.array([_vector_norm(a, p) for a in arrays], dtype=np.float64)
    total = _vector_norm(norms, p) if arrays else 0.0
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(
            f"The total norm of order {p} for gradients from `parameters` is non-finite, so "
            f"it cannot be clipped. To disable this error and scale the gradients by the "
            f"non-finite norm anyway, set `error_if_nonfinite=False`")
    return np.array(total, dtype=dtype)


def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False, foreach: bool | None = None) -> np.ndarray:
    """Scale the gradients of ``parameters`` in place so that their total norm is at most
    ``max_norm``, as ``torch.nn.utils.clip_grad_norm_``.

    The total norm is that of all gradients concatenated into one vector, of order
    ``norm_type`` (2.0; ``math.inf`` for the largest |g|; any p > 0; 0 and negative orders
    as PyTorch's ``vector_norm``). Every gradient is multiplied by
    ``min(1, max_norm / (total + 1e-6))`` (computed in the gradients' dtype, as PyTorch).

    Args:
        parameters: a Parameter or an iterable of them (``model.parameters()``); those whose
            ``grad`` is None and frozen ones are skipped.
        max_norm: the largest total norm kept (a number >= 0).
        norm_type: the order of the norm.
        error_if_nonfinite: raise RuntimeError when the total norm is NaN or infinite
            (otherwise the gradients are scaled by it anyway, as PyTorch: NaN gradients).
        foreach: accepted for PyTorch compatibility (None, True or False); no effect.

    Returns:
        the total norm of the gradients *before* clipping, as a 0-d NumPy array of the
        gradients' dtype (``float(total)`` or ``total.item()`` gives the number, as with
        PyTorch's 0-d tensor).

    Raises:
        TypeError: a bad ``parameters``, ``norm_type`` or ``foreach``.
        ValueError: ``max_norm`` negative or not a number.
        RuntimeError: a non-finite total norm with ``error_if_nonfinite``.
    """
    where = "clip_grad_norm_"
    params = _parameter_list(parameters, where)
    if isinstance(max_norm, (bool, np.bool_)) or not isinstance(max_norm, numbers.Real) \
            or not max_norm >= 0:
        raise ValueError(f"{where}: max_norm must be a number >= 0, got {max_norm!r}")
    grads = _gradients(params)
    total = get_total_norm(grads, norm_type, error_if_nonfinite, foreach)
    _scale_gradients(grads, max_norm, total)
    return total


def _scale_gradients(grads: list[np.ndarray], max_norm: float, total: np.ndarray) -> None:
    """Multiply ``grads`` in place by min(1, max_norm / (total + 1e-6)), computed in the
    dtype of the 0-d array ``total`` (PyTorch's clipping coefficient)."""
    dtype = total.dtype.type
    coef = np.minimum(dtype(max_norm) / (total + dtype(1e-6)), dtype(1.0))  # (NaN stays)
    with np.errstate(invalid="ignore"):  # (a non-finite norm: inf * 0 is NaN, as torch)
        for g in grads:
            g *= coef


def clip_grad_value_(parameters, clip_value: float, foreach: bool | None = None) -> None:
    """Clip every gradient of ``parameters`` in place to [-clip_value, clip_value], as
    ``torch.nn.utils.clip_grad_value_`` (NaN stays NaN). Parameters whose ``grad`` is None
    and frozen ones are skipped; ``foreach`` is accepted for PyTorch compatibility.

    Raises TypeError for bad ``parameters``/``foreach``, ValueError for a negative or
    non-numeric ``clip_value``.
    """
    where = "clip_grad_value_"
    params = _parameter_list(parameters, where)
    _check_foreach(foreach, where)
    if isinstance(clip_value, (bool, np.bool_)) or not isinstance(clip_value, numbers.Real) \
            or not clip_value >= 0:
        raise ValueError(f"{where}: clip_value must be a number >= 0, got {clip_value!r}")
    c = float(clip_value)
    for g in _gradients(params):
        np.clip(g, -c, c, out=g)


def parameters_to_vector(parameters) -> np.ndarray:
    """The values of ``parameters`` flattened and concatenated into one new 1-d array (of
    their common dtype), as ``torch.nn.utils.parameters_to_vector``."""
    params = _parameter_list(parameters, "parameters_to_vector")
    if not params:
        raise ValueError("parameters_to_vector: got no parameters")
    return np.concatenate([np.asarray(p.data).reshape(-1) for p in params])


def vector_to_parameters(vec: np.ndarray, parameters) -> None:
    """Copy the 1-d array ``vec`` into the values of ``parameters``, in order, as
    ``torch.nn.utils.vector_to_parameters``: the inverse of :func:`parameters_to_vector`.

    The values are written in place (each parameter keeps its array and dtype, so
    optimisers holding it see the change); PyTorch makes each parameter a view of ``vec``
    instead. ``vec`` must have exactly as many elements as the parameters (ValueError;
    PyTorch ignores extra ones).
    """
    where = "vector_to_parameters"
    if not isinstance(vec, np.ndarray):
        raise TypeError(f"{where}: expected a NumPy array, but got: {type(vec).__name__}")
    params = _parameter_list(parameters, where)
    if vec.ndim != 1:
        raise ValueError(f"{where}: vec must be 1-d, got shape {vec.shape}")
    needed = sum(int(p.data.size) for p in params)
    if vec.shape[0] != needed:
        raise ValueError(f"{where}: vec has {vec.shape[0]} elements, the parameters "
                         f"{needed}")
    start = 0
    for p in params:
        n = int(p.data.size)
        p.data[...] = vec[start:start + n].reshape(p.data.shape)
        start += n
