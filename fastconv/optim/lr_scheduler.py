"""Learning-rate schedules with ``torch.optim.lr_scheduler``'s names and semantics: closed-form
functions of the step count, each ``step()`` writing the rate into the optimiser."""

from __future__ import annotations

import bisect
import copy
import math
import numbers
import types
from collections.abc import Mapping

import numpy as np

from .optimizer import _TORCH_SCHEDULER_BOOKKEEPING, Optimizer, _nonneg

__all__ = [
    "LRScheduler", "StepLR", "ExponentialLR", "InverseTimeDecay", "CosineAnnealingLR",
    "OneCycleLR", "LinearWarmup", "MultiStepLR", "LambdaLR", "CosineAnnealingWarmRestarts",
    "ReduceLROnPlateau",
]


class LRScheduler:
    """Base class: ``lrs_at(t)`` gives each group's rate after t steps (closed form);
    ``step()`` advances ``last_epoch`` and writes the rates into the optimiser.

    The base rates are the groups' ``initial_lr`` (set to their ``lr`` by the first schedule
    built on the optimiser), as in PyTorch.
    """

    # torch's names of attributes that a schedule keeps under another name (a torch state of
    # the same kind of schedule loads under these).
    _torch_state_names: dict[str, str] = {}

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
        """Restore the attributes saved by ``state_dict`` and re-apply the current rates.

        A PyTorch schedule's state of the same kind loads (its call-order bookkeeping is
        dropped); a state with attributes this schedule lacks (another kind of schedule's) is
        refused, where torch's would add them silently.
        """
        state = {self._torch_state_names.get(k, k): v for k, v in dict(state_dict).items()
                 if k not in _TORCH_SCHEDULER_BOOKKEEPING}
        unknown = sorted(k for k in state if k not in self.__dict__ or k == "optimizer")
        if unknown:
            raise ValueError(f"{type(self).__name__}.load_state_dict: the state has {unknown}, "
                             f"which a {type(self).__name__} does not have (another schedule's "
                             "state?)")
        self.__dict__.update(copy.deepcopy(state))
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
    A LinearLR's state dict loads (its ``total_iters`` is ``warmup_steps``).
    """

    _torch_state_names = {"total_iters": "warmup_steps"}

    def __init__(self, optimizer: Optimizer, warmup_steps: int, start_factor: float = 0.1,
                 end_factor: float = 1.0, after: LRScheduler | None = None, last_epoch: int = -1) -> None:
        if int(warmup_steps) < 1:
            raise ValueError(f"LinearWarmup: warmup_steps must be positive, got {warmup_steps}")
        if not (0.0 <= start_factor <= 1.0 and 0.0 <= end_factor <= 1.0):
            raise ValueError("LinearWarmup: start_factor and end_factor must be in [0, 1]")
        if isinstance(after, ReduceLROnPlateau):
            raise TypeError("LinearWarmup: `after` must be a schedule of the step count; "
                            "ReduceLROnPlateau has none")
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

    _torch_state_names = {"_schedule_phases": "_phases", "_anneal_func_type": "anneal_strategy",
                          "use_beta1": "_use_beta1"}

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


def _whole_number(value, name: str, where: str, minimum: int) -> int:
    """An int argument (a NumPy integer too, not a bool) >= ``minimum``; ValueError naming
    it otherwise (torch's schedulers raise ValueError for these)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) \
            or value < minimum:
        raise ValueError(f"{where}: expected an integer {name} >= {minimum}, got {value!r}")
    return int(value)


def _real(value, name: str, where: str) -> float:
    """A finite real argument as a float; ValueError naming it otherwise."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value):
        raise ValueError(f"{where}: expected a finite number for {name}, got {value!r}")
    return float(value)


class MultiStepLR(LRScheduler):
    """lr = base_lr * gamma ** (the number of milestones <= t), as
    ``torch.optim.lr_scheduler.MultiStepLR``: the rate is multiplied by `gamma` each time the
    step count reaches a milestone (``milestones=[30, 80]``: base_lr until step 29,
    base_lr * gamma from 30, base_lr * gamma**2 from 80).

    `milestones` are integers >= 0 (ValueError otherwise) in any order; one given twice
    multiplies by gamma twice there, as PyTorch's Counter of milestones does. The rate is the
    closed form above, like every schedule here: PyTorch multiplies the optimiser's current
    rate at each milestone instead, which gives the same rates (to rounding) unless something
    else changes the rate meanwhile.
    """

    def __init__(self, optimizer: Optimizer, milestones, gamma: float = 0.1,
                 last_epoch: int = -1) -> None:
        self.milestones = self._checked_milestones(milestones, "MultiStepLR")
        self.gamma = _real(gamma, "gamma", "MultiStepLR")
        super().__init__(optimizer, last_epoch)

    @staticmethod
    def _checked_milestones(milestones, where: str) -> list[int]:
        """The milestones sorted, each as often as given (torch keeps a Counter
        {milestone: count}; one of those loads too)."""
        if isinstance(milestones, Mapping):
            counts = {_whole_number(m, "milestone", where, 0): _whole_number(
                c, "milestone count", where, 0) for m, c in milestones.items()}
            return sorted(m for m, c in counts.items() for _ in range(c))
        try:
            given = list(milestones)
        except TypeError:
            raise TypeError(f"{where}: milestones must be a list of step counts, got "
                            f"{type(milestones).__name__}") from None
        return sorted(_whole_number(m, "milestone", where, 0) for m in given)

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the schedule; torch's state (milestones as a Counter) loads too."""
        state_dict = dict(state_dict)
        if "milestones" in state_dict:
            state_dict["milestones"] = self._checked_milestones(state_dict["milestones"],
                                                                "MultiStepLR.load_state_dict")
        super().load_state_dict(state_dict)

    def _lr_at(self, t, base_lr):
        return base_lr * self.gamma ** bisect.bisect_right(self.milestones, t)


class LambdaLR(LRScheduler):
    """lr = base_lr * lr_lambda(t), as ``torch.optim.lr_scheduler.LambdaLR``.

    `lr_lambda` is one function of the step count ``t`` (an int) returning a factor, used for
    every parameter group, or a list or tuple of such functions, one per group::

        LambdaLR(opt, lambda t: 0.95 ** t)
        LambdaLR(opt, [lambda t: t // 30, lambda t: 0.95 ** t])   # two groups

    As in PyTorch, ``state_dict`` keeps no functions: a plain function or lambda is saved as
    None (the one given to the constructor is used after loading), a callable object as a
    copy of its ``__dict__``, which ``load_state_dict`` puts back into the object.
    """

    def __init__(self, optimizer: Optimizer, lr_lambda, last_epoch: int = -1) -> None:
        where = "LambdaLR"
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{where}: expected an Optimizer, got {type(optimizer).__name__}")
        n = len(optimizer.param_groups)
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != n:
                raise ValueError(f"{where}: expected {n} lr_lambdas (one per parameter "
                                 f"group), got {len(lr_lambda)}")
            lambdas = list(lr_lambda)
        else:
            lambdas = [lr_lambda] * n
        for i, fn in enumerate(lambdas):
            if not callable(fn):
                raise TypeError(f"{where}: lr_lambda must be a function of the step count (or "
                                f"a list of them), got {type(fn).__name__}"
                                + (f" at index {i}" if isinstance(lr_lambda, (list, tuple))
                                   else ""))
        self.lr_lambdas = lambdas
        super().__init__(optimizer, last_epoch)

    def lrs_at(self, t):
        """Learning rate of each group after `t` steps: its base rate times its function of t."""
        return [base * fn(t) for fn, base in zip(self.lr_lambdas, self.base_lrs)]

    def state_dict(self) -> dict:
        """The attributes, with each function as None (a plain function or lambda) or a copy
        of its ``__dict__`` (a callable object), as PyTorch's."""
        sd = {k: copy.deepcopy(v) for k, v in self.__dict__.items()
              if k not in ("optimizer", "lr_lambdas")}
        sd["lr_lambdas"] = [None if isinstance(fn, types.FunctionType)
                            else copy.deepcopy(fn.__dict__) for fn in self.lr_lambdas]
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the attributes and the callable objects' ``__dict__``; the functions stay
        those given to the constructor."""
        state_dict = dict(state_dict)
        saved = state_dict.pop("lr_lambdas", None) or []
        if len(saved) not in (0, len(self.lr_lambdas)):
            raise ValueError(f"LambdaLR.load_state_dict: the state has {len(saved)} "
                             f"lr_lambdas, this schedule {len(self.lr_lambdas)}")
        for fn, attrs in zip(self.lr_lambdas, saved):
            if attrs is not None:
                fn.__dict__.update(copy.deepcopy(attrs))
        super().load_state_dict(state_dict)


class CosineAnnealingWarmRestarts(LRScheduler):
    """SGDR (Loshchilov & Hutter, arXiv 1608.03983), as
    ``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts``:

        lr = eta_min + (base_lr - eta_min) (1 + cos(pi T_cur / T_i)) / 2

    where T_cur counts the steps since the last restart and the cycle length T_i is `T_0`,
    then T_0 * T_mult, T_0 * T_mult**2, ... (restarts at T_0, T_0 (1 + T_mult), ...).

    ``step()`` advances one step; ``step(epoch)`` jumps to ``epoch``, which may be fractional
    (``step(epoch + i / batches_per_epoch)`` after batch i: restarts measured in epochs, the
    rate moving every batch) and may be mixed with ``step()`` as in PyTorch (the next
    ``step()`` counts on from ``floor(epoch)``'s T_cur + 1). `T_0` >= 1 and `T_mult` >= 1 are
    integers (ValueError otherwise). Two places where PyTorch's arithmetic goes astray are
    exact here: the cycle of ``step(epoch)`` is found with integers (PyTorch's floating
    logarithm can land one cycle early: T_0=1, T_mult=3, epoch=121 = 1 + 3 + 9 + 27 + 81), and
    ``last_epoch`` >= 0 given to the constructor resumes at that step's place in its cycle.
    """

    def __init__(self, optimizer: Optimizer, T_0: int, T_mult: int = 1, eta_min: float = 0.0,
                 last_epoch: int = -1) -> None:
        where = "CosineAnnealingWarmRestarts"
        self.T_0 = _whole_number(T_0, "T_0", where, 1)
        self.T_mult = _whole_number(T_mult, "T_mult", where, 1)
        self.eta_min = _real(eta_min, "eta_min", where)
        if last_epoch >= 0:
            self.T_i, self.T_cur = self._cycle(last_epoch)
        else:
            self.T_i, self.T_cur = self.T_0, last_epoch
        super().__init__(optimizer, last_epoch)

    def _cycle_start(self, n: int) -> int:
        """The step at which cycle ``n`` (0-based) starts: T_0 (T_mult**n - 1) / (T_mult - 1)."""
        return self.T_0 * n if self.T_mult == 1 else \
            self.T_0 * (self.T_mult ** n - 1) // (self.T_mult - 1)

    def _cycle(self, epoch) -> tuple[int, float]:
        """(T_i, T_cur) at ``epoch`` >= 0 (an int or a float), with PyTorch's expressions."""
        T_0, T_mult = self.T_0, self.T_mult
        if epoch < T_0:
            return T_0, epoch
        if T_mult == 1:
            return T_0, epoch % T_0
        n = int(math.log(epoch / T_0 * (T_mult - 1) + 1, T_mult))
        while self._cycle_start(n + 1) <= epoch:   # (the logarithm rounded down)
            n += 1
        while n > 0 and self._cycle_start(n) > epoch:
            n -= 1
        return T_0 * T_mult ** n, epoch - T_0 * (T_mult ** n - 1) / (T_mult - 1)

    def _lr(self, T_cur, T_i, base_lr: float) -> float:
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * T_cur / T_i)) / 2

    def lrs_at(self, t):
        """Learning rate of each group after `t` steps (t's place in its cycle)."""
        T_i, T_cur = self._cycle(t)
        return [self._lr(T_cur, T_i, base) for base in self.base_lrs]

    def get_lr(self) -> list[float]:
        """Learning rate of each group at the current position (``T_cur`` in cycle ``T_i``)."""
        return [self._lr(self.T_cur, self.T_i, base) for base in self.base_lrs]

    def step(self, epoch: float | None = None) -> None:
        """Advance one step, or go to ``epoch`` (a number >= 0, fractional allowed), and set
        the optimiser's learning rates."""
        if epoch is None and self.last_epoch < 0:
            epoch = 0
        if epoch is None:
            epoch = self.last_epoch + 1
            self.T_cur = self.T_cur + 1
            if self.T_cur >= self.T_i:
                self.T_cur = self.T_cur % self.T_i
                self.T_i = self.T_i * self.T_mult
        else:
            if isinstance(epoch, (bool, np.bool_)) or not isinstance(epoch, numbers.Real) \
                    or not math.isfinite(epoch) or epoch < 0:
                raise ValueError(f"CosineAnnealingWarmRestarts.step: expected a non-negative "
                                 f"epoch, got {epoch!r}")
            self.T_i, self.T_cur = self._cycle(epoch)
        self.last_epoch = math.floor(epoch)
        self._apply(self.get_lr())


class ReduceLROnPlateau(LRScheduler):
    """Reduce the learning rate when a metric stops improving, as
    ``torch.optim.lr_scheduler.ReduceLROnPlateau``::

        sched = ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=3)
        for epoch in range(epochs):
            train(...); val_loss = validate(...)
            sched.step(val_loss)             # once per epoch, with the metric

    ``step(metrics)`` compares the metric with the best so far: in mode 'min' it improves when
    below best * (1 - threshold) (threshold_mode 'rel') or best - threshold ('abs'); in mode
    'max' when above best * (1 + threshold) or best + threshold. After more than `patience`
    steps in a row without improvement, every group's rate becomes max(lr * factor, min_lr)
    (a change smaller than `eps` is skipped), and the next `cooldown` steps count no bad
    steps. `min_lr` is one number or one per parameter group. Unlike the other schedules the
    rate is no function of the step count: ``lrs_at`` raises TypeError, and the current rates
    live in the optimiser. ``fit(..., scheduler=ReduceLROnPlateau(...))`` steps it once per
    epoch with the validation loss (see :func:`fastconv.training.fit`).

    Bad arguments raise ValueError (TypeError for `optimizer`): factor outside [0, 1), mode
    not 'min'/'max', threshold_mode not 'rel'/'abs', negative patience, cooldown, threshold,
    eps or min_lr, a min_lr list of the wrong length.
    """

    def __init__(self, optimizer: Optimizer, mode: str = "min", factor: float = 0.1,
                 patience: int = 10, threshold: float = 1e-4, threshold_mode: str = "rel",
                 cooldown: int = 0, min_lr=0, eps: float = 1e-8) -> None:
        where = "ReduceLROnPlateau"
        factor = _real(factor, "factor", where)
        if not 0.0 <= factor < 1.0:
            raise ValueError(f"{where}: factor must be in [0, 1) (new_lr = lr * factor), "
                             f"got {factor!r}")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{where}: expected an Optimizer, got {type(optimizer).__name__}")
        if mode not in ("min", "max"):
            raise ValueError(f"{where}: mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"{where}: threshold_mode must be 'rel' or 'abs', got "
                             f"{threshold_mode!r}")
        n = len(optimizer.param_groups)
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != n:
                raise ValueError(f"{where}: expected {n} min_lrs (one per parameter group), "
                                 f"got {len(min_lr)}")
            self.default_min_lr = None
            self.min_lrs = [_nonneg(v, "min_lr", where) for v in min_lr]
        else:
            self.default_min_lr = _nonneg(min_lr, "min_lr", where)
            self.min_lrs = [self.default_min_lr] * n
        self.optimizer = optimizer
        self.mode = mode
        self.factor = factor
        self.patience = _whole_number(patience, "patience", where, 0)
        self.threshold = _nonneg(threshold, "threshold", where)
        self.threshold_mode = threshold_mode
        self.cooldown = _whole_number(cooldown, "cooldown", where, 0)
        self.eps = _nonneg(eps, "eps", where)
        self.mode_worse = math.inf if mode == "min" else -math.inf
        self.last_epoch = 0
        self._last_lr = [float(g["lr"]) for g in optimizer.param_groups]
        self._reset()

    def _reset(self) -> None:
        """Forget the best value, the bad steps and the cooldown."""
        self.best = self.mode_worse
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    @property
    def in_cooldown(self) -> bool:
        """Whether bad steps are being ignored after a reduction."""
        return self.cooldown_counter > 0

    def is_better(self, a: float, best: float) -> bool:
        """Whether the metric ``a`` improves on ``best`` by more than the threshold."""
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min":
            return a < best - self.threshold
        if self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    def lrs_at(self, t):
        """Not defined: TypeError (the rate follows the metrics, not the step count)."""
        raise TypeError("ReduceLROnPlateau: the rate depends on the metrics seen, not on the "
                        "step count: it has no lrs_at (read get_last_lr())")

    def step(self, metrics) -> None:  # type: ignore[override]
        """One step (an epoch) with the monitored value ``metrics`` (a number, or a 0-d
        array); reduces the rates after more than ``patience`` steps without improvement."""
        try:
            current = float(metrics)
        except (TypeError, ValueError):
            raise TypeError(f"ReduceLROnPlateau.step: metrics must be a number, got "
                            f"{type(metrics).__name__}") from None
        self.last_epoch += 1
        if self.is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # (bad steps in the cooldown are ignored)
        if self.num_bad_epochs > self.patience:
            self._reduce_lr()
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = [float(g["lr"]) for g in self.optimizer.param_groups]

    def _reduce_lr(self) -> None:
        groups = self.optimizer.param_groups
        if len(groups) != len(self.min_lrs):  # (a group was added since)
            if self.default_min_lr is None:
                raise RuntimeError(f"ReduceLROnPlateau: the optimizer has {len(groups)} "
                                   f"parameter groups, {len(self.min_lrs)} when the schedule "
                                   f"was made: set min_lrs to one value per group")
            self.min_lrs = [self.default_min_lr] * len(groups)
        for g, min_lr in zip(groups, self.min_lrs):
            old_lr = float(g["lr"])
            new_lr = max(old_lr * self.factor, min_lr)
            if old_lr - new_lr > self.eps:
                g["lr"] = new_lr

    def __repr__(self) -> str:
        return (f"ReduceLROnPlateau(mode={self.mode!r}, factor={self.factor}, patience="
                f"{self.patience}, best={self.best}, num_bad_epochs={self.num_bad_epochs}, "
                f"lr={self._last_lr})")
