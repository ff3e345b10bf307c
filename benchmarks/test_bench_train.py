"""End-to-end training-step benchmarks (images/s): fastconv vs its own reference backend vs
PyTorch, one group per model, and the peak RSS of a vgg_small training step; the residual
networks (resnet9, resnet18) at batch 64 and 256, fastconv and PyTorch interleaved.

The step is the full training step, float32, model in train mode: forward, cross-entropy,
backward and SGD (lr 0.01, momentum 0.9, Nesterov, weight decay 5e-4); batch 64 unless said.

* "fastconv":  ``fastconv.models.get_model(name, seed=0)`` on the fast backend;
* "reference": the same model with ``model.set_backend("reference")`` (pure NumPy ops);
* "torch":     ``fastconv.export.to_torch(model)``: the same tree of torch.nn modules with a
  copy of the fastconv model's weights (so the same initial weights), with
  ``torch.optim.SGD`` and ``torch.nn.CrossEntropyLoss``.

Before timing, every implementation runs one step from the same initial weights on the same
batch (see :func:`check_one_step`): the losses before and after the update must agree between
implementations (rtol 1e-4), and the change the step makes to every parameter and buffer must
agree with torch run in float64 (the same architecture and optimiser). The loss after the
timed steps is recorded in ``extra_info`` and must be finite.

The memory benchmark runs each implementation in a fresh interpreter (``sys.executable -c``)
and reads its peak RSS there (VmHWM on Linux, else ``ru_maxrss``; see :func:`rss_child`):
after imports + model + data + optimiser (the baseline), and after one warm-up and three
training steps of vgg_small (the peak); both raw values and the difference are recorded.
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import fastconv
from fastconv.export import to_torch
from fastconv.losses import CrossEntropyLoss
from fastconv.models import get_model
from fastconv.optim import SGD

from interleaved import paired_stats, run_interleaved
from layers import BATCH, MODELS

IMPLS = ["fastconv", "reference", "torch"]
BACKEND = {"fastconv": "fast", "reference": "reference"}
NUM_CLASSES = 10
SGD_ARGS = dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
#: Timed rounds per model (the same for every implementation of a model); one warm-up round.
#: The machine's speed moves by tens of percent within seconds here: enough rounds that the
#: median is not one slow stretch (the reference vgg_small step takes ~0.5 s, hence fewer).
ROUNDS = {"simple_cnn": 30, "lenet5": 50, "vgg_small": 15}
#: Relative tolerance on the losses of the check steps. float32 throughout; the implementations
#: sum in different orders (GEMM blocking, pairwise vs BLAS reductions), which moves the loss
#: by ~1e-7..1e-5 relative (measured: at most a few 1e-6 here).
LOSS_RTOL = 1e-4
#: Bound on max |difference| / max |change| of each state entry after one step, against the
#: float64 oracle (see check_one_step). Measured for fastconv and reference: <= ~1e-4 (BatchNorm
#: running statistics of simple_cnn-sized sums; parameters ~2e-6). Dropping the weight decay
#: changes some entries by ~2e-2, lr off by 1% by 1e-2, no Nesterov by far more.
UPDATE_RTOL = 1e-3
#: The same for PyTorch's own float32 step (measured up to ~2e-2 off its float64 step on
#: vgg_small); catches gross differences (optimiser settings, architecture), not the small ones.
TORCH32_UPDATE_RTOL = 0.1
RSS_MODEL = "vgg_small"
RSS_STEPS = 3
THREADS = int(os.environ.get("FASTCONV_BENCH_THREADS", "2"))  # as conftest.py


@functools.lru_cache(maxsize=None)
def batch(name: str, size: int = BATCH) -> tuple[np.ndarray, np.ndarray]:
    """The fixed (seeded) batch of model `name`: x (size, 3, 32, 32) float32, y (size,) int64
    (the batch of 64 is the first 64 of any larger one)."""
    rng = np.random.default_rng(zlib.crc32(f"train {name}".encode()))
    x = rng.standard_normal((max(size, BATCH), 3, 32, 32)).astype(np.float32)[:size]
    y = rng.integers(0, NUM_CLASSES, max(size, BATCH)).astype(np.int64)[:size]
    return np.ascontiguousarray(x), y


# --------------------------------------------------------------------------------------------
# One training step per implementation
# --------------------------------------------------------------------------------------------

@dataclass
class Trainer:
    """One implementation's model + optimiser on a model's fixed batch.

    step() runs one training step and returns its loss (computed before the update); loss()
    is the loss of the current weights (forward only, train mode); state() is a NumPy copy
    of the state dict (parameters and buffers, PyTorch key names)."""

    step: Callable[[], float]
    loss: Callable[[], float]
    state: Callable[[], dict]


def make_trainer(impl: str, name: str, torch=None, batch_size: int = BATCH) -> Trainer:
    """A fresh model `name` (seed 0) with SGD for implementation `impl` ("fastconv",
    "reference", "torch", or "torch64": the torch model in float64, the check's oracle), on
    the model's batch of `batch_size` images."""
    x, y = batch(name, batch_size)
    model = get_model(name, num_classes=NUM_CLASSES, seed=0)
    model.train()
    if impl in ("torch", "torch64"):
        tmodel = to_torch(model)
        del model
        if impl == "torch64":
            tmodel.double()
            x = x.astype(np.float64)
        opt = torch.optim.SGD(tmodel.parameters(), **SGD_ARGS)
        tcrit = torch.nn.CrossEntropyLoss()
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)

        def tstep() -> float:
            opt.zero_grad()
            loss = tcrit(tmodel(xt), yt)
            loss.backward()
            opt.step()
            return loss.item()

        def tloss() -> float:
            with torch.no_grad():
                return tcrit(tmodel(xt), yt).item()

        def tstate() -> dict:
            return {k: v.detach().numpy().copy() for k, v in tmodel.state_dict().items()}

        return Trainer(tstep, tloss, tstate)

    model.set_backend(BACKEND[impl])
    opt = SGD(model, **SGD_ARGS)
    crit = CrossEntropyLoss()

    def step() -> float:
        opt.zero_grad()
        loss = crit.forward(model.forward(x), y)
        model.backward(crit.backward(), input_grad=False)
        opt.step()
        return loss

    def loss() -> float:
        return crit.forward(model.forward(x), y)

    return Trainer(step, loss, model.state_dict)


@functools.lru_cache(maxsize=None)
def _initial_state(name: str) -> dict:
    return get_model(name, num_classes=NUM_CLASSES, seed=0).state_dict()


@functools.lru_cache(maxsize=None)
def _check_step(impl: str, name: str) -> tuple[tuple[float, float], dict] | None:
    """One training step of `impl` from the seed-0 weights: ((loss of the step, loss of the
    updated weights), {key: new value - initial value} for the float state entries, as
    float64), or None when `impl` needs torch and torch is not installed."""
    torch = None
    if impl.startswith("torch"):
        try:
            import torch
        except ImportError:
            return None
    trainer = make_trainer(impl, name, torch)
    losses = (trainer.step(), trainer.loss())
    init = _initial_state(name)
    updates = {k: v.astype(np.float64) - init[k] for k, v in trainer.state().items()
               if v.dtype.kind == "f"}
    return losses, updates


def _update_rel_diff(mine: dict, want: dict) -> tuple[float, str | None]:
    """max over state entries of max |mine - want| / max |want|, and the worst entry's key."""
    assert mine.keys() == want.keys()
    worst, worst_key = 0.0, None
    for key, w in want.items():
        scale = float(np.max(np.abs(w)))
        diff = float(np.max(np.abs(mine[key] - w)))
        rel = diff / scale if scale else (0.0 if diff == 0 else math.inf)
        if rel > worst:
            worst, worst_key = rel, key
    return worst, worst_key


def check_one_step(benchmark, impl: str, name: str) -> None:
    """One training step of `impl` from the shared seed-0 weights must agree with the others:

    * the losses before and after the update, with every other float32 implementation
      (rtol LOSS_RTOL): forward, backward and update as a whole;
    * the change of every parameter and buffer made by the step, with an oracle (max |diff|
      <= UPDATE_RTOL x max |change| per entry): torch in float64 when installed, else the other
      NumPy backend. This sees what barely moves the loss, e.g. the weight decay term. PyTorch's
      own float32 step is up to ~2e-2 off the float64 one (CPU BatchNorm/conv weight gradients
      of vgg_small; fastconv's are ~2e-6 off), so it gets the looser TORCH32_UPDATE_RTOL.
    """
    mine, my_updates = _check_step(impl, name)
    info = benchmark.extra_info
    info["check_losses"] = list(mine)
    for other in IMPLS:
        if other == impl or _check_step(other, name) is None:
            continue
        theirs, _ = _check_step(other, name)
        info[f"check_loss_rel_diff_vs_{other}"] = max(abs(a - b) / abs(b) for a, b in zip(mine, theirs))
        np.testing.assert_allclose(mine, theirs, rtol=LOSS_RTOL, atol=0,
                                   err_msg=f"{name}: {impl} vs {other}, losses before and after "
                                           f"one training step")
    oracle = "torch64" if _check_step("torch64", name) is not None else \
        ("reference" if impl == "fastconv" else "fastconv")
    rel, key = _update_rel_diff(my_updates, _check_step(oracle, name)[1])
    info["check_update_oracle"] = oracle
    info["check_update_rel_diff"] = rel
    bound = TORCH32_UPDATE_RTOL if impl == "torch" else UPDATE_RTOL
    assert rel <= bound, (f"{name}: {impl} vs {oracle}, the change of {key!r} made by one training "
                          f"step differs by {rel:.3g} of its largest value (bound {bound})")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", MODELS)
def test_train_step(benchmark, request, name, impl):
    torch = request.getfixturevalue("torch_or_skip") if impl == "torch" else None
    benchmark.group = f"train {name} step (batch {BATCH})"
    benchmark.extra_info.update(kind="train", model=name, impl=impl, images=BATCH)
    check_one_step(benchmark, impl, name)
    step = make_trainer(impl, name, torch).step
    loss = benchmark.pedantic(step, rounds=ROUNDS[name], iterations=1, warmup_rounds=1)
    benchmark.extra_info["loss_after"] = loss
    benchmark.extra_info["loss_after_finite"] = bool(math.isfinite(loss))
    assert math.isfinite(loss), f"{name} {impl}: loss {loss} after the timed steps"


# --------------------------------------------------------------------------------------------
# fastconv and PyTorch interleaved, step by step
# --------------------------------------------------------------------------------------------

#: Rounds of the interleaved comparison: each round runs one step of each implementation.
PAIRED_ROUNDS = {"simple_cnn": 40, "lenet5": 60, "vgg_small": 20}


@pytest.mark.parametrize("name", MODELS)
def test_train_step_interleaved_with_torch(benchmark, request, name):
    """fastconv's and PyTorch's steps alternated round by round (which goes first alternates
    too), so both meet the same stretches of a shared machine whose speed moves by tens of
    percent within seconds; the separate benchmarks above each time their rounds back to back.
    Records both medians and the median of the per-round ratios (PyTorch / fastconv)."""
    torch = request.getfixturevalue("torch_or_skip")
    steps = {"fastconv": make_trainer("fastconv", name).step,
             "torch": make_trainer("torch", name, torch).step}

    def check(impl: str, loss: float) -> None:
        assert math.isfinite(loss), f"{name} {impl}: loss {loss}"

    benchmark.group = f"train {name} step, fastconv and PyTorch interleaved"
    times = run_interleaved(benchmark, steps, PAIRED_ROUNDS[name], check)
    benchmark.extra_info.update(kind="paired", model=name, images=BATCH, **paired_stats(times))


#: The residual networks, their batch sizes and interleaved rounds (a resnet18 step at batch
#: 256 takes seconds here). With timing disabled (the normal test run) only batch 64 runs,
#: one round.
RESIDUAL_MODELS = ["resnet9", "resnet18"]
RESIDUAL_BATCHES = [BATCH, 256]
RESIDUAL_ROUNDS = {BATCH: 16, 256: 8}


@pytest.mark.parametrize("batch_size", RESIDUAL_BATCHES)
@pytest.mark.parametrize("name", RESIDUAL_MODELS)
def test_residual_train_step_interleaved_with_torch(benchmark, request, name, batch_size):
    """resnet9 and resnet18 training steps, fastconv and PyTorch (to_torch of the same model)
    alternated round by round as above. Both first steps (the untimed warm-up: the same
    weights and batch) must give the same loss (rtol LOSS_RTOL)."""
    torch = request.getfixturevalue("torch_or_skip")
    if benchmark.disabled and batch_size != BATCH:
        pytest.skip(f"batch {batch_size} runs with --benchmark-enable only (its steps take seconds)")
    first: dict[str, float] = {}

    def recording(impl: str, step: Callable[[], float]) -> Callable[[], float]:
        def call() -> float:
            loss = step()
            first.setdefault(impl, loss)
            return loss
        return call

    steps = {"fastconv": recording("fastconv", make_trainer("fastconv", name, batch_size=batch_size).step),
             "torch": recording("torch", make_trainer("torch", name, torch, batch_size).step)}

    def check(impl: str, loss: float) -> None:
        assert math.isfinite(loss), f"{name} {impl}: loss {loss}"

    label = name if batch_size == BATCH else f"{name} (batch {batch_size})"
    benchmark.group = f"train {label} step, fastconv and PyTorch interleaved"
    times = run_interleaved(benchmark, steps, RESIDUAL_ROUNDS[batch_size], check)
    np.testing.assert_allclose(first["fastconv"], first["torch"], rtol=LOSS_RTOL,
                               err_msg=f"{name} batch {batch_size}: the first step's loss")
    benchmark.extra_info.update(kind="paired", model=label, images=batch_size,
                                first_losses=first, **paired_stats(times))


# --------------------------------------------------------------------------------------------
# Peak RSS of a training step, each implementation in a fresh interpreter
# --------------------------------------------------------------------------------------------

def _ru_maxrss_mib() -> float:
    """getrusage(RUSAGE_SELF).ru_maxrss in MiB (KiB on Linux, bytes on macOS)."""
    import resource

    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value / (1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0)


def _vmhwm_mib() -> float | None:
    """Peak RSS of this process's address space (VmHWM in /proc/self/status), MiB; None if absent."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return None


def rss_child(impl: str, name: str = RSS_MODEL, steps: int = RSS_STEPS) -> None:
    """Run in a fresh interpreter: print JSON with the peak RSS in MiB before the first step
    (baseline: after imports, model, optimiser and data) and after one warm-up + `steps`
    training steps of model `name` with implementation `impl` (peak), and their difference.

    On Linux, ru_maxrss survives execve: a child started from a large pytest process starts
    with the parent's peak (measured: every child reported the parent's ~830 MiB, delta 0).
    VmHWM belongs to the child's own address space, so it is used when present; the
    ru_maxrss readings are recorded too."""
    fastconv.set_num_threads(THREADS)
    torch = None
    if impl == "torch":
        import torch

        torch.set_num_threads(THREADS)
    step = make_trainer(impl, name, torch).step
    base_hwm, base_ru = _vmhwm_mib(), _ru_maxrss_mib()
    losses = [step() for _ in range(1 + steps)]
    peak_hwm, peak_ru = _vmhwm_mib(), _ru_maxrss_mib()
    if base_hwm is not None and peak_hwm is not None:
        source, baseline, peak = "VmHWM", base_hwm, peak_hwm
    else:
        source, baseline, peak = "ru_maxrss", base_ru, peak_ru
    print(json.dumps({"baseline": baseline, "peak": peak, "delta": peak - baseline, "source": source,
                      "ru_maxrss_baseline": base_ru, "ru_maxrss_peak": peak_ru, "loss": losses[-1]}))


def run_rss_child(impl: str) -> dict:
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import test_bench_train as t; t.rss_child({impl!r})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"RSS child for {impl} failed:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_train_step_peak_rss(benchmark):
    impls = ["fastconv"]
    try:
        import torch  # noqa: F401

        impls.append("torch")
    except ImportError:
        pass
    benchmark.group = f"memory {RSS_MODEL} step peak RSS"
    benchmark.extra_info.update(kind="memory", model=RSS_MODEL, impl="+".join(impls),
                                steps=1 + RSS_STEPS, batch=BATCH)
    results = benchmark.pedantic(lambda: {impl: run_rss_child(impl) for impl in impls},
                                 rounds=1, iterations=1)
    benchmark.extra_info["rss_mib"] = {
        impl: {k: round(v, 1) if isinstance(v, float) else v for k, v in r.items() if k != "loss"}
        for impl, r in results.items()}
    for impl, r in results.items():
        assert math.isfinite(r["loss"]), f"{impl}: loss {r['loss']} in the RSS child"
        assert r["peak"] >= r["baseline"] > 0
