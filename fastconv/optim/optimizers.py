"""SGD, RMSprop, Adam and AdamW with torch.optim's update rules, and the L2 loss term."""

from __future__ import annotations

import math

import numpy as np

from .optimizer import Optimizer, _core, _fused, _nonneg

__all__ = ["SGD", "RMSprop", "Adam", "AdamW", "l2_penalty"]


class SGD(Optimizer):
    """Stochastic gradient descent, exactly ``torch.optim.SGD``:

        g = grad + weight_decay * w
        b = g (first step) | momentum * b + (1 - dampening) * g
        g = g + momentum * b (nesterov) | b (momentum > 0)
        w -= lr * g
    """

    elementwise = True
    _state_names = frozenset({"momentum_buffer"})
    _group_keys = frozenset({"lr", "momentum", "dampening", "nesterov", "weight_decay"})

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
    _state_names = frozenset({"step", "square_avg", "momentum_buffer", "grad_avg"})
    _group_keys = frozenset({"lr", "alpha", "eps", "weight_decay", "momentum", "centered"})

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
    _state_names = frozenset({"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"})
    _group_keys = frozenset({"lr", "betas", "eps", "weight_decay", "amsgrad",
                             "decoupled_weight_decay"})

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
