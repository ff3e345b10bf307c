"""Optimisers and learning-rate schedules, with torch.optim's update rules and semantics.

Optimisers work on :class:`fastconv.nn.Parameter` objects (``.data`` updated in place from
``.grad``)::

    opt = SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    sched = OneCycleLR(opt, max_lr=0.1, total_steps=epochs * batches)
    for x, t in batches:
        opt.zero_grad(); loss = crit(model(x), t); model.backward(crit.backward())
        opt.step(); sched.step()          # OneCycleLR / LinearWarmup: once per batch

``params`` may also be a list of dicts (parameter groups with their own hyper-parameters), as
in PyTorch. ``opt.lr`` reads the first group's learning rate and sets every group's.
Parameters with ``requires_grad=False`` (frozen) may be listed: ``step`` leaves them and keeps
no state for them, as PyTorch does with parameters that get no gradient (their index still
counts in ``state_dict``).

Schedules are closed-form functions of the step count ``last_epoch`` (the number of ``step()``
calls since construction); each ``step()`` writes the new rate into the optimiser. Call
``step()`` once per epoch for StepLR / ExponentialLR / InverseTimeDecay / CosineAnnealingLR when
their periods are given in epochs (or once per batch with periods in batches), and once per
batch for OneCycleLR and LinearWarmup. As in PyTorch, constructing a schedule sets the rate for
step 0, so call ``sched.step()`` *after* ``opt.step()``.

L2 regularisation: either ``weight_decay=lam`` (SGD/RMSprop/Adam add lam * w to the gradient;
AdamW decays the weights directly: w -= lr * lam * w) or, equivalently for SGD, the loss term
:func:`l2_penalty` (lam / 2 * sum w**2, whose gradient lam * w it adds to ``.grad``).
"""

from __future__ import annotations

import copy
import math
import numbers

import numpy as np

__all__ = [
    "Optimizer", "SGD", "RMSprop", "Adam", "AdamW", "l2_penalty",
    "LRScheduler", "StepLR", "ExponentialLR", "InverseTimeDecay", "CosineAnnealingLR",
    "OneCycleLR", "LinearWarmup",
]


def _fused(*arrays) -> bool:
    """Whether the compiled one-pass update applies: the fast backend is active and every
    array is a writable, C-contiguous float32/float64 array of one dtype. The reference
    backend keeps the pure-NumPy update (same arithmetic up to rounding)."""
    from . import backend

    if backend.current_backend() != "fast":
        return False
    dtype = arrays[0].dtype
    return dtype in (np.float32, np.float64) and all(
        isinstance(a, np.ndarray) and a.dtype == dtype and a.flags.c_contiguous for a in arrays
    ) and arrays[0].flags.writeable


def _core():
    from . import _core as core

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


class Optimizer:
    """Base class: parameter groups, per-parameter state, ``zero_grad``, ``state_dict``.

    Subclasses implement ``_update(p, grad, state, group)`` for one parameter.
    """

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

    def zero_grad(self) -> None:
        """Zero the gradients of all parameters."""
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
        whole and >= 0).
        """
        groups = state_dict.get("param_groups")
        saved_state = state_dict.get("state")
        if not isinstance(groups, list) or not isinstance(saved_state, dict):
            raise ValueError(f"{type(self).__name__}.load_state_dict: expected a dict with 'state' "
                             "and 'param_groups'")
        if len(groups) != len(self.param_groups):
            raise ValueError(f"{type(self).__name__}.load_state_dict: the state dict has {len(groups)} "
                             f"parameter groups, the optimiser {len(self.param_groups)}")
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
        for saved, own in zip(groups, self.param_groups):
            for k, v in saved.items():
                if k != "params":
                    own[k] = copy.deepcopy(v)
        self.state = new_state

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(g):
                if k != "params":
                    lines.append(f"    {k}: {g[k]}")
        lines.append(")")
        return "\n".join(lines)


class SGD(Optimizer):
    """Stochastic gradient descent, exactly ``torch.optim.SGD``:

        g = grad + weight_decay * w
        b = g (first step) | momentum * b + (1 - dampening) * g
        g = g + momentum * b (nesterov) | b (momentum > 0)
        w -= lr * g
    """

    elementwise = True

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0) -> None:
        name = "SGD"
        lr = _nonneg(lr, "learning rate", name)
        momentum = _nonneg(momentum, "momentum value", name)
        dampening = float(dampening)
        weight_decay = _nonneg(weight_decay, "weight_decay value", name)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      nesterov=bool(nesterov), weight_decay=weight_decay))

    def _update(self, p, grad, state, group):
        w = p.data
        wd, mom = group["weight_decay"], group["momentum"]
        buf = state.get("momentum_buffer")
        first = mom and buf is None
        if first:
            buf = state["momentum_buffer"] = np.empty_like(w)
        if _fused(w, grad, *([buf] if mom else [])):
            _core().sgd_update(w, grad, buf if mom else None, group["lr"], mom,
                               group["dampening"], wd, group["nesterov"], bool(first))
            return
        if first:
            del state["momentum_buffer"]
        g = grad + wd * w if wd else grad
        if mom:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = np.array(g, dtype=w.dtype, copy=True)
            else:
                buf *= mom
                damp = group["dampening"]
                if damp:
                    buf += (1.0 - damp) * g
                else:
                    buf += g
            g = g + mom * buf if group["nesterov"] else buf
        w -= group["lr"] * g


class RMSprop(Optimizer):
    """RMSprop, exactly ``torch.optim.RMSprop``:

        v = alpha v + (1 - alpha) g**2;  centered: m = alpha m + (1 - alpha) g, v~ = v - m**2
        d = sqrt(v~) + eps;  momentum: b = momentum b + g / d, w -= lr b;  else w -= lr g / d
    """

    elementwise = True

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False) -> None:
        name = "RMSprop"
        super().__init__(params, dict(lr=_nonneg(lr, "learning rate", name),
                                      alpha=_nonneg(alpha, "alpha value", name),
                                      eps=_nonneg(eps, "epsilon value", name),
                                      weight_decay=_nonneg(weight_decay, "weight_decay value", name),
                                      momentum=_nonneg(momentum, "momentum value", name),
                                      centered=bool(centered)))

    def _update(self, p, grad, state, group):
        w = p.data
        if not state:
            state["step"] = 0
            state["square_avg"] = np.zeros_like(w)
            if group["momentum"] > 0:
                state["momentum_buffer"] = np.zeros_like(w)
            if group["centered"]:
                state["grad_avg"] = np.zeros_like(w)
        state["step"] += 1
        wd, alpha, eps = group["weight_decay"], group["alpha"], group["eps"]
        g = grad + wd * w if wd else grad
        sq = state["square_avg"]
        sq *= alpha
        sq += (1.0 - alpha) * (g * g)
        if group["centered"]:
            ga = state["grad_avg"]
            ga += (1.0 - alpha) * (g - ga)  # lerp, as torch
            avg = sq - ga * ga
            np.sqrt(avg, out=avg)
        else:
            avg = np.sqrt(sq)
        avg += eps
        if group["momentum"] > 0:
            buf = state["momentum_buffer"]
            buf *= group["momentum"]
            buf += g / avg
            w -= group["lr"] * buf
        else:
            upd = g / avg
            upd *= group["lr"]
            w -= upd


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction, exactly ``torch.optim.Adam``:

        g = grad + weight_decay * w                (L2 as part of the gradient)
        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g**2;  t += 1
        amsgrad: v_max = max(v_max, v) replaces v below
        w -= lr / (1 - b1**t) * m / (sqrt(v) / sqrt(1 - b2**t) + eps)

    ``decoupled_weight_decay=True`` (a per-group option, as PyTorch's) decays the weights
    instead, w *= 1 - lr * weight_decay before the step, with g = grad: AdamW.
    """

    elementwise = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, *,
                 decoupled_weight_decay: bool = False) -> None:
        name = type(self).__name__
        b1, b2 = (float(b) for b in betas)
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"{name}: invalid betas {tuple(betas)} (each must be in [0, 1))")
        super().__init__(params, dict(lr=_nonneg(lr, "learning rate", name), betas=(b1, b2),
                                      eps=_nonneg(eps, "epsilon value", name),
                                      weight_decay=_nonneg(weight_decay, "weight_decay value", name),
                                      amsgrad=bool(amsgrad),
                                      decoupled_weight_decay=bool(decoupled_weight_decay)))

    def _update(self, p, grad, state, group):
        w = p.data
        if not state:
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(w)
            state["exp_avg_sq"] = np.zeros_like(w)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = np.zeros_like(w)
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        decoupled = bool(group.get("decoupled_weight_decay", False))
        m, v = state["exp_avg"], state["exp_avg_sq"]
        if not group["amsgrad"] and _fused(w, grad, m, v):
            state["step"] += 1
            _core().adam_update(w, grad, m, v, lr, b1, b2, eps, wd, decoupled, state["step"])
            return
        if decoupled:
            if wd:
                w *= 1.0 - lr * wd
            g = grad
        else:
            g = grad + wd * w if wd else grad
        state["step"] += 1
        t = state["step"]

        m += (1.0 - b1) * (g - m)  # lerp, as torch
        v *= b2
        v += (1.0 - b2) * (g * g)
        bc1 = 1.0 - b1 ** t
        bc2_sqrt = math.sqrt(1.0 - b2 ** t)
        if group["amsgrad"]:
            vmax = state["max_exp_avg_sq"]
            np.maximum(vmax, v, out=vmax)
            denom = np.sqrt(vmax)
        else:
            denom = np.sqrt(v)
        denom /= bc2_sqrt
        denom += eps
        upd = m / denom
        upd *= lr / bc1
        w -= upd


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), exactly ``torch.optim.AdamW``:
    w *= 1 - lr * weight_decay, then the Adam step without L2 in the gradient."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, decoupled_weight_decay=True)


def l2_penalty(model_or_params, lam: float, skip_1d: bool = False) -> float:
    """L2 regularisation as a loss term: returns lam / 2 * sum ||w||**2 and adds its gradient
    lam * w to each ``w.grad`` (call it after ``backward``, before ``opt.step()``).

    With plain SGD this equals ``weight_decay=lam``. ``skip_1d=True`` leaves out 1-D parameters
    (biases, normalisation scales), a common choice.
    """
    params = model_or_params.parameters() if hasattr(model_or_params, "parameters") else model_or_params
    lam = float(lam)
    total = 0.0
    for p in params:
        w = p.data
        if skip_1d and w.ndim <= 1:
            continue
        flat = w.reshape(-1)
        total += 0.5 * lam * float(np.dot(flat, flat))
        if lam and getattr(p, "requires_grad", True):  # (a frozen parameter's term is a constant)
            p.grad += lam * w
    return total


# --------------------------------------------------------------------------------------------
# Learning-rate schedules
# --------------------------------------------------------------------------------------------

class LRScheduler:
    """Base class: ``lrs_at(t)`` gives each group's rate after t steps (closed form);
    ``step()`` advances ``last_epoch`` and writes the rates into the optimiser.

    The base rates are the groups' ``initial_lr`` (set to their ``lr`` by the first schedule
    built on the optimiser), as in PyTorch.
    """

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: expected an Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        if last_epoch == -1:
            for g in optimizer.param_groups:
                g.setdefault("initial_lr", g["lr"])
        else:
            for i, g in enumerate(optimizer.param_groups):
                if "initial_lr" not in g:
                    raise KeyError(f"param 'initial_lr' is not specified in param_groups[{i}] "
                                   "when resuming an optimizer")
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_epoch = int(last_epoch)
        self._last_lr: list[float] = []
        self.step()

    def _lr_at(self, t: int, base_lr: float) -> float:
        raise NotImplementedError

    def lrs_at(self, t: int) -> list[float]:
        """Learning rate of each group after `t` calls of ``step()``."""
        return [self._lr_at(t, base) for base in self.base_lrs]

    def get_lr(self) -> list[float]:
        """Learning rate of each group at the current step (``last_epoch``)."""
        return self.lrs_at(self.last_epoch)

    def get_last_lr(self) -> list[float]:
        """The rates last written into the optimiser."""
        return list(self._last_lr)

    def step(self) -> None:
        """Advance one step (epoch or batch) and set the optimiser's learning rates."""
        self.last_epoch += 1
        self._apply(self.get_lr())

    def _apply(self, lrs: list[float]) -> None:
        for g, lr in zip(self.optimizer.param_groups, lrs):
            g["lr"] = float(lr)
        self._last_lr = [float(lr) for lr in lrs]

    def state_dict(self) -> dict:
        """All attributes except the optimiser (copied)."""
        return {k: copy.deepcopy(v) for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the attributes saved by ``state_dict`` and re-apply the current rates."""
        self.__dict__.update(copy.deepcopy(dict(state_dict)))
        if self._last_lr:
            self._apply(self._last_lr)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(last_epoch={self.last_epoch}, lr={self._last_lr})"


class StepLR(LRScheduler):
    """lr = base_lr * gamma ** (t // step_size)."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1) -> None:
        if int(step_size) < 1:
            raise ValueError(f"StepLR: step_size must be positive, got {step_size}")
        self.step_size = int(step_size)
        self.gamma = float(gamma)
        super().__init__(optimizer, last_epoch)

    def _lr_at(self, t, base_lr):
        return base_lr * self.gamma ** (t // self.step_size)


class ExponentialLR(LRScheduler):
    """lr = base_lr * gamma ** t (e.g. alpha0 * 0.95 ** epoch)."""

    def __init__(self, optimizer: Optimizer, gamma: float, last_epoch: int = -1) -> None:
        self.gamma = float(gamma)
        super().__init__(optimizer, last_epoch)

    def _lr_at(self, t, base_lr):
        return base_lr * self.gamma ** t


class InverseTimeDecay(LRScheduler):
    """lr = base_lr / (1 + decay * t / decay_steps); with staircase, t // decay_steps instead
    (Keras' InverseTimeDecay; with decay_steps=1: alpha0 / (1 + decay * epoch))."""

    def __init__(self, optimizer: Optimizer, decay: float, decay_steps: int = 1,
                 staircase: bool = False, last_epoch: int = -1) -> None:
        self.decay = _nonneg(decay, "decay", "InverseTimeDecay")
        if int(decay_steps) < 1:
            raise ValueError(f"InverseTimeDecay: decay_steps must be positive, got {decay_steps}")
        self.decay_steps = int(decay_steps)
        self.staircase = bool(staircase)
        super().__init__(optimizer, last_epoch)

    def _lr_at(self, t, base_lr):
        p = t // self.decay_steps if self.staircase else t / self.decay_steps
        return base_lr / (1.0 + self.decay * p)


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base_lr - eta_min) (1 + cos(pi t / T_max)) / 2 (SGDR without restarts;
    periodic beyond T_max, as PyTorch's closed form)."""

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1) -> None:
        if int(T_max) < 1:
            raise ValueError(f"CosineAnnealingLR: T_max must be positive, got {T_max}")
        self.T_max = int(T_max)
        self.eta_min = float(eta_min)
        super().__init__(optimizer, last_epoch)

    def _lr_at(self, t, base_lr):
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * t / self.T_max)) / 2


class LinearWarmup(LRScheduler):
    """Linear warm-up over `warmup_steps` steps: lr = base_lr * f(t) with
    f(t) = start_factor + (end_factor - start_factor) * min(t, warmup_steps) / warmup_steps
    (``torch.optim.lr_scheduler.LinearLR``). Afterwards the rate stays at base_lr * end_factor,
    or, if `after` is another schedule on the same optimiser, follows ``after.lrs_at(t -
    warmup_steps)`` (warm-up then cosine, say; only call this schedule's ``step()``).
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int, start_factor: float = 0.1,
                 end_factor: float = 1.0, after: LRScheduler | None = None, last_epoch: int = -1) -> None:
        if int(warmup_steps) < 1:
            raise ValueError(f"LinearWarmup: warmup_steps must be positive, got {warmup_steps}")
        if not (0.0 <= start_factor <= 1.0 and 0.0 <= end_factor <= 1.0):
            raise ValueError("LinearWarmup: start_factor and end_factor must be in [0, 1]")
        if after is not None and after.optimizer is not optimizer:
            raise ValueError("LinearWarmup: `after` must schedule the same optimizer")
        self.warmup_steps = int(warmup_steps)
        self.start_factor = float(start_factor)
        self.end_factor = float(end_factor)
        self.after = after
        super().__init__(optimizer, last_epoch)

    def lrs_at(self, t):
        if self.after is not None and t >= self.warmup_steps:
            return self.after.lrs_at(t - self.warmup_steps)
        return super().lrs_at(t)

    def _lr_at(self, t, base_lr):
        f = self.start_factor + (self.end_factor - self.start_factor) * min(t, self.warmup_steps) / self.warmup_steps
        return base_lr * f

    def state_dict(self) -> dict:
        sd = {k: copy.deepcopy(v) for k, v in self.__dict__.items() if k not in ("optimizer", "after")}
        sd["after"] = self.after.state_dict() if self.after is not None else None
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        after = state_dict.pop("after", None)
        if after is not None and self.after is not None:
            self.after.load_state_dict(after)
        super().load_state_dict(state_dict)


class OneCycleLR(LRScheduler):
    """The 1cycle policy (Smith & Topin), with ``torch.optim.lr_scheduler.OneCycleLR``'s semantics.

    The rate goes from max_lr / div_factor up to max_lr over the first pct_start of
    `total_steps` (steps are batches), then anneals to max_lr / div_factor / final_div_factor
    (three_phase: back to the initial rate first, then to the minimum). anneal_strategy 'cos'
    or 'linear'. With cycle_momentum the momentum (or Adam's beta1) moves inversely between
    max_momentum and base_momentum. Call ``step()`` after every batch; stepping past
    `total_steps` raises ValueError. total_steps may be given as epochs * steps_per_epoch.

    Every pct_start in [0, 1] works with every total_steps >= 1. The phase boundaries are
    PyTorch's (phase 1 ends at step pct_start * total_steps - 1, the last at total_steps - 1)
    and so are the rates wherever PyTorch computes them; a phase of zero length, where PyTorch
    divides by zero (pct_start * total_steps == 1, or pct_start=1.0 at the final step), is
    skipped: the rate and momentum take that phase's end values (max_lr at step 0 for a
    one-step warm-up; max_lr / div_factor / final_div_factor after the last step of a run
    that warms up throughout). With three_phase and pct_start above about 0.5 the second
    phase reaches past total_steps; as in PyTorch the run then ends within it.
    """

    def __init__(self, optimizer: Optimizer, max_lr, total_steps: int | None = None,
                 epochs: int | None = None, steps_per_epoch: int | None = None,
                 pct_start: float = 0.3, anneal_strategy: str = "cos", cycle_momentum: bool = True,
                 base_momentum=0.85, max_momentum=0.95, div_factor: float = 25.0,
                 final_div_factor: float = 1e4, three_phase: bool = False, last_epoch: int = -1) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"OneCycleLR: expected an Optimizer, got {type(optimizer).__name__}")
        if total_steps is not None:
            if int(total_steps) <= 0:
                raise ValueError(f"OneCycleLR: expected a positive integer total_steps, got {total_steps}")
            self.total_steps = int(total_steps)
        elif epochs is not None and steps_per_epoch is not None:
            if int(epochs) <= 0 or int(steps_per_epoch) <= 0:
                raise ValueError("OneCycleLR: epochs and steps_per_epoch must be positive")
            self.total_steps = int(epochs) * int(steps_per_epoch)
        else:
            raise ValueError("OneCycleLR: you must define either total_steps OR (epochs AND steps_per_epoch)")
        if not 0.0 <= pct_start <= 1.0:
            raise ValueError(f"OneCycleLR: expected pct_start in [0, 1], got {pct_start}")
        for name, value in (("div_factor", div_factor), ("final_div_factor", final_div_factor)):
            if not value > 0:                       # the rates divide by them
                raise ValueError(f"OneCycleLR: {name} must be > 0, got {value}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"OneCycleLR: anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        self.anneal_strategy = anneal_strategy
        self.cycle_momentum = bool(cycle_momentum)
        self.three_phase = bool(three_phase)
        groups = optimizer.param_groups
        n = len(groups)

        def per_group(value, name):
            if isinstance(value, (list, tuple)):
                if len(value) != n:
                    raise ValueError(f"OneCycleLR: expected {n} values for {name}, got {len(value)}")
                return [float(v) for v in value]
            return [float(value)] * n

        T = self.total_steps
        if self.three_phase:
            self._phases = [
                dict(end_step=float(pct_start * T) - 1, start_lr="initial_lr", end_lr="max_lr",
                     start_momentum="max_momentum", end_momentum="base_momentum"),
                dict(end_step=float(2 * pct_start * T) - 2, start_lr="max_lr", end_lr="initial_lr",
                     start_momentum="base_momentum", end_momentum="max_momentum"),
                dict(end_step=T - 1, start_lr="initial_lr", end_lr="min_lr",
                     start_momentum="max_momentum", end_momentum="max_momentum"),
            ]
        else:
            self._phases = [
                dict(end_step=float(pct_start * T) - 1, start_lr="initial_lr", end_lr="max_lr",
                     start_momentum="max_momentum", end_momentum="base_momentum"),
                dict(end_step=T - 1, start_lr="max_lr", end_lr="min_lr",
                     start_momentum="base_momentum", end_momentum="max_momentum"),
            ]
        if last_epoch == -1:
            for g, mlr in zip(groups, per_group(max_lr, "max_lr")):
                g["initial_lr"] = mlr / div_factor
                g["max_lr"] = mlr
                g["min_lr"] = g["initial_lr"] / final_div_factor
        if self.cycle_momentum:
            self._use_beta1 = "betas" in optimizer.defaults
            if "momentum" not in optimizer.defaults and not self._use_beta1:
                raise ValueError("OneCycleLR: optimizer must support momentum or beta1 with "
                                 "`cycle_momentum` option enabled")
            if last_epoch == -1:
                for g, mm, bm in zip(groups, per_group(max_momentum, "max_momentum"),
                                     per_group(base_momentum, "base_momentum")):
                    if self._use_beta1:
                        g["betas"] = (mm, *g["betas"][1:])
                    else:
                        g["momentum"] = mm
                    g["max_momentum"] = mm
                    g["base_momentum"] = bm
        super().__init__(optimizer, last_epoch)

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _at(self, t: int, group: dict) -> tuple[float, float | None]:
        if t > self.total_steps:
            raise ValueError(f"OneCycleLR: tried to step {t} times; the specified number of total "
                             f"steps is {self.total_steps}")
        start_step = 0.0
        for i, phase in enumerate(self._phases):
            end_step = phase["end_step"]
            if t <= end_step or i == len(self._phases) - 1:
                mom = None
                if end_step == start_step:
                    # a zero-length phase (pct_start * total_steps == 1, or pct_start == 1 at
                    # the final step): skip it, at its end values (PyTorch divides by zero)
                    lr = group[phase["end_lr"]]
                    if self.cycle_momentum:
                        mom = group[phase["end_momentum"]]
                    return lr, mom
                pct = (t - start_step) / (end_step - start_step)
                lr = self._anneal(group[phase["start_lr"]], group[phase["end_lr"]], pct)
                if self.cycle_momentum:
                    mom = self._anneal(group[phase["start_momentum"]], group[phase["end_momentum"]], pct)
                return lr, mom
            start_step = phase["end_step"]
        raise AssertionError("unreachable")

    def lrs_at(self, t):
        return [self._at(t, g)[0] for g in self.optimizer.param_groups]

    def step(self) -> None:
        self.last_epoch += 1
        lrs = []
        for g in self.optimizer.param_groups:
            lr, mom = self._at(self.last_epoch, g)
            lrs.append(lr)
            if mom is not None:
                if self._use_beta1:
                    g["betas"] = (mom, *g["betas"][1:])
                else:
                    g["momentum"] = mom
        self._apply(lrs)
