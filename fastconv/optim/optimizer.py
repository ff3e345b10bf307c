"""The optimisers' base class (parameter groups, per-parameter state, state dicts in
PyTorch's format) and the argument checks the optimisers and schedules share."""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Mapping

import numpy as np

__all__ = ["Optimizer"]


def _fused(*arrays) -> bool:
    """Whether the compiled one-pass update applies: the fast backend is active and every
    array is a writable, C-contiguous float32/float64 array of one dtype. The reference
    backend keeps the pure-NumPy update (same arithmetic up to rounding)."""
    from .. import backend

    if backend.current_backend() != "fast":
        return False
    dtype = arrays[0].dtype
    return dtype in (np.float32, np.float64) and all(
        isinstance(a, np.ndarray) and a.dtype == dtype and a.flags.c_contiguous for a in arrays
    ) and arrays[0].flags.writeable


def _core():
    from .. import _core as core

    return core


def _nonneg(value, name: str, opt: str) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not value >= 0.0:
        raise ValueError(f"{opt}: invalid {name}: {value!r} (must be a number >= 0)")
    return float(value)


def _step_count(value, key, opt: str) -> int:
    """A saved per-parameter step count as an int. PyTorch stores it as a float tensor
    (``tensor(3.)``), but the compiled Adam update takes an int and bias correction needs a
    whole number of steps."""
    v = value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value
    if (isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real)
            or not math.isfinite(v) or v < 0 or v != int(v)):
        raise ValueError(f"{opt}.load_state_dict: state 'step' of parameter {key} must be a "
                         f"whole number >= 0, got {value!r}")
    return int(v)


class _Part:
    """Elements of a parameter, as the ``p`` that ``_update`` reads (``data``)."""

    __slots__ = ("data",)

    def __init__(self, data: np.ndarray) -> None:
        self.data = data


def _whole(value, p) -> bool:
    """Whether ``value`` is a state array of the whole parameter ``p``."""
    return isinstance(value, np.ndarray) and value.shape == p.data.shape


# Options of torch's optimiser groups that a torch state dict carries and fastconv has nothing
# to set with: how torch runs an update (not what it computes), and maximize (refused if True).
_TORCH_EXECUTION_OPTIONS = frozenset({"foreach", "fused", "differentiable", "capturable", "maximize"})
# torch's LRScheduler bookkeeping (warnings about the call order), absent from fastconv's.
_TORCH_SCHEDULER_BOOKKEEPING = frozenset({"_step_count", "_get_lr_called_within_step", "_is_initial"})


class Optimizer:
    """Base class: parameter groups, per-parameter state, ``zero_grad``, ``state_dict``.

    Subclasses implement ``_update(p, grad, state, group)`` for one parameter, and name the
    entries of their per-parameter state (``_state_names``) and their hyper-parameters
    (``_group_keys``), by which ``load_state_dict`` tells another optimiser's state dict
    (None: not checked).
    """

    _state_names: frozenset | None = None
    _group_keys: frozenset | None = None

    def __init__(self, params, defaults: dict) -> None:
        self.defaults = dict(defaults)
        if hasattr(params, "parameters") and callable(params.parameters):
            params = params.parameters()  # a Module
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups: list[dict] = []
        self.state: dict = {}
        for g in groups:
            self.add_param_group(g)

    def add_param_group(self, group: dict) -> None:
        """Add a group ``{"params": [...], **hyper-parameters}`` (missing ones from defaults)."""
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"{type(self).__name__}: a parameter group must be a dict with 'params'")
        params = list(group["params"])
        for p in params:
            if not (hasattr(p, "data") and hasattr(p, "grad") and isinstance(p.data, np.ndarray)):
                raise TypeError(f"{type(self).__name__}: expected Parameters (with .data and .grad), "
                                f"got {type(p).__name__}")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params):
            raise ValueError(f"{type(self).__name__}: some parameters appear in more than one group")
        first: dict[int, int] = {}
        for j, p in enumerate(params):
            i = first.setdefault(id(p), j)
            if i != j:  # it would be updated twice per step
                raise ValueError(f"{type(self).__name__}: parameter group {len(self.param_groups)} "
                                 f"lists the same parameter twice (positions {i} and {j})")
        new = dict(self.defaults)
        new.update({k: v for k, v in group.items() if k != "params"})
        new["params"] = params
        self.param_groups.append(new)

    @property
    def lr(self) -> float:
        """Learning rate of the first group; assigning sets it in every group."""
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        for g in self.param_groups:
            g["lr"] = float(value)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the gradients of all parameters. (``set_to_none`` is taken for PyTorch's
        training loops: fastconv's gradients are arrays, zeroed either way.)"""
        for g in self.param_groups:
            for p in g["params"]:
                p.zero_grad() if hasattr(p, "zero_grad") else p.grad.fill(0)

    def step(self) -> None:
        """One update of every parameter from its ``.grad``. Frozen parameters
        (``requires_grad=False``) are skipped and get no state, as PyTorch skips parameters
        without a gradient."""
        for group in self.param_groups:
            for p in group["params"]:
                if not getattr(p, "requires_grad", True) or p.grad is None:
                    continue
                state = self.state.setdefault(p, {})
                self._update(p, p.grad, state, group)

    def _update(self, p, grad: np.ndarray, state: dict, group: dict) -> None:
        raise NotImplementedError

    #: Whether the update of each element of a parameter depends on that element alone (its
    #: value, gradient and state): then :meth:`step_slices` may update parts of a parameter.
    elementwise = False

    def step_slices(self, pieces) -> None:
        """The update :meth:`step` makes, of parts of parameters: ``pieces`` is a list of
        ``(param, start, stop, grad)``, elements ``start:stop`` of the flattened parameter
        (C-contiguous) and their gradient (1-d, ``stop - start`` values), at most one piece
        per parameter. Each element gets the bits ``step`` would give it (the optimisers'
        rules are elementwise: :attr:`elementwise`); the state of every parameter stays
        whole (parameter-shaped arrays, allocated at its first update, zeros outside the
        slice), only the slice's elements change. Parameters of no group, frozen ones and
        empty pieces are skipped. (Data-parallel ranks share the update this way:
        :class:`fastconv.training.distributed.DistributedDataParallel`.)"""
        if not self.elementwise:
            raise TypeError(f"{type(self).__name__}.step_slices: the update is not "
                            f"elementwise (elementwise = False)")
        groups = {id(p): g for g in self.param_groups for p in g["params"]}
        for p, start, stop, grad in pieces:
            group = groups.get(id(p))
            if group is None or not getattr(p, "requires_grad", True) or stop <= start:
                continue
            state = self.state.setdefault(p, {})
            flat = p.data.reshape(-1)
            view = {k: (v.reshape(-1)[start:stop] if _whole(v, p) else v)
                    for k, v in state.items()}
            given = dict(view)
            self._update(_Part(flat[start:stop]), grad, view, group)
            for k, v in view.items():
                if isinstance(v, np.ndarray) and v.ndim == 1 and v.shape[0] == stop - start:
                    if v is given.get(k):
                        continue                    # (updated in place)
                    if not _whole(state.get(k), p):  # (made by this first update)
                        state[k] = np.zeros_like(p.data)
                    state[k].reshape(-1)[start:stop] = v
                else:
                    state[k] = v

    # -- checkpoints -------------------------------------------------------------------------
    def _all_params(self) -> list:
        return [p for g in self.param_groups for p in g["params"]]

    def state_dict(self) -> dict:
        """``{"state": {index: {name: value}}, "param_groups": [{hyper..., "params": [index]}]}``,
        PyTorch's layout; parameters are numbered in group order. Arrays are copies."""
        index = {id(p): i for i, p in enumerate(self._all_params())}
        state = {}
        for p, s in self.state.items():
            if id(p) in index:
                state[index[id(p)]] = {k: (v.copy() if isinstance(v, np.ndarray) else copy.deepcopy(v))
                                       for k, v in s.items()}
        groups = []
        for g in self.param_groups:
            d = {k: copy.deepcopy(v) for k, v in g.items() if k != "params"}
            d["params"] = [index[id(p)] for p in g["params"]]
            groups.append(d)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyper-parameters and per-parameter state (momentum buffers, Adam moments...).

        The groups must have the same sizes as this optimiser's; state arrays must have their
        parameter's shape (ValueError otherwise) and are cast to its dtype. PyTorch state dicts
        load too (tensors become arrays); their float step counts become ints (ValueError unless
        whole and >= 0). Their options that only choose how torch runs the update
        (``foreach``, ``fused``, ``differentiable``, ``capturable``) and ``maximize=False`` are
        dropped; ``maximize=True`` is refused.
        """
        groups = state_dict.get("param_groups")
        saved_state = state_dict.get("state")
        if not isinstance(groups, list) or not isinstance(saved_state, dict):
            raise ValueError(f"{type(self).__name__}.load_state_dict: expected a dict with 'state' "
                             "and 'param_groups'")
        if len(groups) != len(self.param_groups):
            raise ValueError(f"{type(self).__name__}.load_state_dict: the state dict has {len(groups)} "
                             f"parameter groups, the optimiser {len(self.param_groups)}")
        self._check_kind(groups, saved_state)
        mapping = {}
        for i, (saved, own) in enumerate(zip(groups, self.param_groups)):
            if len(saved["params"]) != len(own["params"]):
                raise ValueError(f"{type(self).__name__}.load_state_dict: group {i} has "
                                 f"{len(saved['params'])} parameters in the state dict, "
                                 f"{len(own['params'])} in the optimiser")
            mapping.update(zip(saved["params"], own["params"]))
        new_state = {}
        for key, s in saved_state.items():
            key = int(key)
            if key not in mapping:
                raise ValueError(f"{type(self).__name__}.load_state_dict: state for unknown parameter {key}")
            p = mapping[key]
            entry = {}
            for name, v in s.items():
                if hasattr(v, "detach") and hasattr(v, "cpu"):
                    v = v.detach().cpu().numpy()
                if name == "step":
                    entry[name] = _step_count(v, key, type(self).__name__)
                    continue
                if isinstance(v, np.ndarray) and v.ndim > 0:
                    if v.shape != p.data.shape:
                        raise ValueError(f"{type(self).__name__}.load_state_dict: state {name!r} of "
                                         f"parameter {key} has shape {v.shape}, the parameter {p.data.shape}")
                    v = np.array(v, dtype=p.data.dtype)
                elif isinstance(v, np.ndarray):
                    v = v.item()
                else:
                    v = copy.deepcopy(v)
                entry[name] = v
            new_state[p] = entry
        for i, saved in enumerate(groups):
            if saved.get("maximize"):
                raise ValueError(f"{type(self).__name__}.load_state_dict: group {i} has "
                                 "maximize=True; fastconv's optimisers minimise (negate the loss)")
        for saved, own in zip(groups, self.param_groups):
            for k, v in saved.items():
                if k != "params" and k not in _TORCH_EXECUTION_OPTIONS:
                    own[k] = copy.deepcopy(v)
        self.state = new_state

    def _check_kind(self, groups: list, saved_state: dict) -> None:
        """ValueError if the state dict is another optimiser's: per-parameter state this one
        does not keep (an SGD momentum buffer given to Adam), or a group holding
        hyper-parameters only other optimisers have (SGD's ``nesterov`` given to Adam)."""
        name = type(self).__name__
        if self._state_names is not None:
            for key, s in saved_state.items():
                foreign = sorted(set(s) - self._state_names) if isinstance(s, Mapping) else []
                if foreign:
                    raise ValueError(
                        f"{name}.load_state_dict: the state of parameter {key} holds "
                        f"{', '.join(map(repr, foreign))}, which {name} does not keep (its "
                        f"state: {', '.join(sorted(self._state_names))}): the state dict of "
                        f"another optimiser?")
        if self._group_keys is not None:
            others = set().union(*(c._group_keys for c in _optimizer_classes()
                                   if c._group_keys is not None)) - self._group_keys
            for i, g in enumerate(groups):
                foreign = sorted(others & set(g)) if isinstance(g, Mapping) else []
                if foreign:
                    raise ValueError(
                        f"{name}.load_state_dict: parameter group {i} sets "
                        f"{', '.join(map(repr, foreign))}, hyper-parameters {name} does not "
                        f"have: the state dict of another optimiser?")

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(g):
                if k != "params":
                    lines.append(f"    {k}: {g[k]}")
        lines.append(")")
        return "\n".join(lines)


def _optimizer_classes() -> list[type]:
    """Every subclass of Optimizer defined so far (fastconv's and the user's)."""
    found, todo = [], [Optimizer]
    while todo:
        for c in todo.pop().__subclasses__():
            found.append(c)
            todo.append(c)
    return found
