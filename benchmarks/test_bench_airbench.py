"""airbench94's training step, fastconv against PyTorch (benchmarks/airbench_torch.py: airbench's
source on the CPU, float32, NCHW and channels_last), interleaved round by round.

A step is the recipe's: forward, summed label-smoothed cross-entropy, backward, Nesterov SGD
with airbench's two parameter groups, and the schedule's step; batch 1024 (UNTIMED_BATCH
images with timing disabled, the normal test run), a fixed random batch, the same initial
weights for all three (fastconv's model, whitening conv set from the batch, loaded into
PyTorch's). fastconv's steps run inside ``fastconv.memory.recycling()``, as in ``fit`` (and so
``fastconv-train --recipe airbench94``). Their first steps' losses must agree (rtol LOSS_RTOL). Records each median, the
per-round ratios PyTorch / fastconv and the GFLOP/s of the step (see conv_gflop).

    flock /work/wt/timing.lock pytest benchmarks/test_bench_airbench.py --benchmark-enable
"""

from __future__ import annotations

import math
import os
import statistics

import numpy as np

from fastconv import memory, models
from fastconv.losses import CrossEntropyLoss
from fastconv.training.recipes import Airbench94, airbench94_optimizer, airbench94_schedule

from interleaved import run_interleaved
from layers import UNTIMED_BATCH

BATCH = 1024
#: Timed rounds (each runs one step of every implementation: ~5-10 s each on 2 quiet cores).
ROUNDS = int(os.environ.get("FASTCONV_AIRBENCH_ROUNDS", "3"))
LOSS_RTOL = 1e-4
TOTAL_STEPS = 476
IMPLS = ("fastconv", "torch", "torch_channels_last")


def conv_gflop(batch: int) -> float:
    """GFLOP (2 x multiply-adds) of one training step's convolutions and Linear: forward,
    input gradient and weight gradient of the six 3x3 convs and the Linear, and the forward
    of the whitening conv (724 GFLOP at batch 1024; BatchNorm, GELU and pooling not counted)."""
    # (c_in, c_out, output size) of the 3x3 'same' convs; each group's second conv runs on
    # the pooled map
    convs = [(24, 64, 31), (64, 64, 15), (64, 256, 15), (256, 256, 7), (256, 256, 7),
             (256, 256, 3)]
    flops = sum(3 * 2 * batch * co * s * s * ci * 9 for ci, co, s in convs)
    flops += 2 * batch * 24 * 31 * 31 * 3 * 4          # whitening conv (2x2), forward
    flops += 3 * 2 * batch * 256 * 10                  # Linear
    return flops / 1e9


def fastconv_step_fn(x, y, batch: int, precision: str = "f32"):
    """fastconv's airbench94 step (model, optimiser, schedule of its own) on the batch x, y;
    returns (step, model)."""
    model = models.airbench94(seed=0)
    models.init_whitening_conv(model[0], x)
    model.to(precision=precision)
    hyp = Airbench94(batch_size=batch)
    opt = airbench94_optimizer(model, hyp)
    sched = airbench94_schedule(opt, TOTAL_STEPS, hyp)
    crit = CrossEntropyLoss(label_smoothing=hyp.label_smoothing, reduction="sum")

    def step() -> float:
        model.zero_grad()
        value = crit.forward(model.forward(x), y)
        model.backward(crit.backward(), input_grad=False)
        opt.step()
        sched.step()
        return value

    return step, model


def torch_step_fn(torch, model, x, y, batch: int, channels_last: bool, bf16: bool = False):
    """airbench's own step in PyTorch from fastconv model's weights (under bf16 autocast with
    bf16=True)."""
    import airbench_torch as port

    net = port.make_net(channels_last=channels_last)
    net.load_state_dict(port.torch_state(model))
    net.train()
    xt = torch.from_numpy(x)
    if channels_last:
        xt = xt.contiguous(memory_format=torch.channels_last)
    yt = torch.from_numpy(y)
    topt = port.make_optimizer(net, batch)
    tsched = torch.optim.lr_scheduler.LambdaLR(topt, lambda s: port.lr_factor(s, TOTAL_STEPS))
    tcrit = port.loss_fn()

    def step() -> float:
        if not bf16:
            return port.train_step(net, topt, tsched, xt, yt, tcrit)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return port.train_step(net, topt, tsched, xt, yt, tcrit)

    return step


def fixed_batch(batch: int):
    rng = np.random.default_rng(0)
    return rng.standard_normal((batch, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, batch)


def make_steps(torch, batch: int):
    """{impl: step()} from the same weights and batch; each step returns its loss."""
    x, y = fixed_batch(batch)
    fastconv_step, model = fastconv_step_fn(x, y, batch)
    steps = {"fastconv": fastconv_step}
    for impl, channels_last in (("torch", False), ("torch_channels_last", True)):
        steps[impl] = torch_step_fn(torch, model, x, y, batch, channels_last)
    return steps


def recording_first_losses(steps: dict):
    """({impl: step()} that also keeps each step's first loss, that dict of first losses): the
    untimed warm-up step, the same weights and batch for all."""
    first: dict[str, float] = {}

    def recording(impl: str):
        def call() -> float:
            loss = steps[impl]()
            first.setdefault(impl, loss)
            return loss
        return call

    return {impl: recording(impl) for impl in steps}, first


def test_airbench94_step_interleaved_with_torch(benchmark, request):
    torch = request.getfixturevalue("torch_or_skip")
    batch = UNTIMED_BATCH * 4 if benchmark.disabled else BATCH
    rounds = 1 if benchmark.disabled else ROUNDS
    steps = make_steps(torch, batch)
    calls, first = recording_first_losses(steps)

    def check(impl: str, loss: float) -> None:
        assert math.isfinite(loss), f"{impl}: loss {loss}"

    benchmark.group = f"train airbench94 step (batch {batch}), fastconv and PyTorch interleaved"
    with memory.recycling():  # as fit: each step reuses the last one's large blocks
        times = run_interleaved(benchmark, calls, rounds, check)
    for impl in IMPLS[1:]:
        np.testing.assert_allclose(first[impl], first["fastconv"], rtol=LOSS_RTOL,
                                   err_msg=f"{impl}: the first step's loss")
    med = {impl: statistics.median(t) for impl, t in times.items()}
    ratios = {impl: [t / f for f, t in zip(times["fastconv"], times[impl])] for impl in IMPLS[1:]}
    gflop = conv_gflop(batch)
    benchmark.extra_info.update(
        kind="paired_layouts", model="airbench94", images=batch, rounds=rounds,
        median_s=med, times_s=times, step_gflop=gflop,
        gflop_per_s={impl: gflop / m for impl, m in med.items()},
        ratio_median={impl: statistics.median(r) for impl, r in ratios.items()},
        first_losses=first)


BF16_IMPLS = ("fastconv_f32", "fastconv_bf16", "torch_bf16_channels_last")


def test_airbench94_bf16_step_interleaved(benchmark, request):
    """The step in bf16 mode against fastconv's float32 step and PyTorch's bf16 autocast step
    (channels_last), interleaved round by round, with the bf16 path that ran: the recipe's
    speed in bf16 on this CPU (issue 17's targets)."""
    import fastconv

    torch = request.getfixturevalue("torch_or_skip")
    batch = UNTIMED_BATCH * 4 if benchmark.disabled else BATCH
    rounds = 1 if benchmark.disabled else ROUNDS
    x, y = fixed_batch(batch)
    f32_step, model = fastconv_step_fn(x, y, batch)
    bf16_step, _ = fastconv_step_fn(x, y, batch, "bf16")
    steps = {"fastconv_f32": f32_step, "fastconv_bf16": bf16_step,
             "torch_bf16_channels_last": torch_step_fn(torch, model, x, y, batch, True, True)}
    calls, first = recording_first_losses(steps)
    benchmark.group = f"train airbench94 step (batch {batch}), bf16 mode"
    with memory.recycling():
        times = run_interleaved(benchmark, calls, rounds)
    # bf16 operands: the first losses agree to bf16's rounding, not float32's.
    for impl in BF16_IMPLS[1:]:
        np.testing.assert_allclose(first[impl], first["fastconv_f32"], rtol=2e-2,
                                   err_msg=f"{impl}: the first step's loss")
    med = {impl: statistics.median(t) for impl, t in times.items()}
    info = fastconv.build_info()
    gflop = conv_gflop(batch)
    # As the float32 benchmark's record (report.py's layouts table), ratios against bf16 mode.
    benchmark.extra_info.update(
        kind="paired_layouts", model="airbench94, fastconv bf16 mode against", images=batch,
        rounds=rounds, median_s=med, times_s=times, step_gflop=gflop,
        gflop_per_s={impl: gflop / m for impl, m in med.items()},
        ratio_median={impl: statistics.median([t / b for b, t in zip(times["fastconv_bf16"],
                                                                      times[impl])])
                      for impl in BF16_IMPLS if impl != "fastconv_bf16"},
        first_losses=first, bf16_path=fastconv.simd_level("bf16"),
        cpu_model=info["cpu"]["model_name"], cpu_flags=" ".join(info["cpu"]["features"]))
