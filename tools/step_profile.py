"""Where a fastconv training step's time goes: the step of benchmarks/test_bench_train.py
(forward, cross-entropy, backward, Nesterov SGD), timed per step of the fusion plan (a layer
or a fused run such as BatchNorm2d+ReLU; nested containers' time counted in their children,
the residual additions in the Residual rows) and per optimiser update. The shape shown is the
step's input (forward) or output gradient (backward), without the batch.

Usage: python tools/step_profile.py MODEL [batch] [steps] [threads] [precision]   (MODEL:
simple_cnn, lenet5, vgg_small, resnet9, resnet18, ... or airbench94, whose step is the
recipe's; precision: f32, the default, or bf16: the steps run under fastconv.autocast)
One thread by default, in this thread's CPU time (other processes on a shared machine do not
count); with more threads, wall time. Run under `flock /work/wt/timing.lock` where others share
the machine.
"""

from __future__ import annotations

import collections
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import fastconv  # noqa: E402
from fastconv import memory  # noqa: E402
from fastconv.cli.train import keep_freed_memory  # noqa: E402
from fastconv.nn import fusion  # noqa: E402
from fastconv.optim import SGD  # noqa: E402
import test_bench_train as T  # noqa: E402


def describe(step, x) -> str:
    names = "+".join(type(layer).__name__ for layer in step.layers)
    convs = [layer for layer in step.layers if type(layer).__name__ == "Conv2d"]
    if convs:
        c = convs[0]
        names += f" {c.in_channels}-{c.out_channels} k{c.kernel_size[0]}s{c.stride[0]}"
    return f"{names} {tuple(x.shape[1:])}"


def make_step(name: str, batch: int, precision: str = "f32"):
    """One training step of `name` on a fixed random batch: the recipe's own for airbench94
    (benchmarks/test_bench_airbench.py), else benchmarks/test_bench_train.py's. main runs the
    steps inside one memory.recycling block, as fit does. The airbench94 model runs in
    `precision` of its own (as the recipe's `--precision`), the others under main's autocast."""
    if name != "airbench94":
        return T.make_trainer("fastconv", name, None, batch).step
    import numpy as np

    import test_bench_airbench as A

    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, batch)
    return A.fastconv_step_fn(x, y, batch, precision)[0]


def main(argv: list[str]) -> None:
    name = argv[0]
    batch = int(argv[1]) if len(argv) > 1 else 64
    steps = int(argv[2]) if len(argv) > 2 else 3
    threads = int(argv[3]) if len(argv) > 3 else 1
    precision = argv[4] if len(argv) > 4 else "f32"
    keep_freed_memory()  # as fastconv-train and the benchmarks
    fastconv.set_num_threads(threads)
    clock = time.thread_time if threads == 1 else time.perf_counter
    spent: dict[tuple[str, str], float] = collections.defaultdict(float)
    nested: list[float] = []  # time of the steps run inside the current one

    def timed(cls, method):
        run = getattr(cls, method)

        def wrapper(self, x, *args, **kwargs):
            nested.append(0.0)
            t0 = clock()
            out = run(self, x, *args, **kwargs)
            dt = clock() - t0
            inner = nested.pop()
            if nested:
                nested[-1] += dt
            spent[(method, describe(self, x))] += dt - inner
            return out
        setattr(cls, method, wrapper)

    for cls in (fusion.LayerStep, fusion.ConvMaxPoolStep, fusion.BatchNormReLUStep,
                fusion.ReLUMaxPoolStep):
        timed(cls, "forward")
        timed(cls, "backward")
    update = SGD.step

    def timed_update(self, *args, **kwargs):
        t0 = clock()
        out = update(self, *args, **kwargs)
        spent[("update", "SGD.step")] += clock() - t0
        return out
    SGD.step = timed_update

    step = make_step(name, batch, precision)
    # One recycling block over every step, as fit's: leaving it hands the cached blocks back
    # to the OS, so a block per step would time fresh pages being zeroed (~10% of airbench94's
    # step at batch 1024).
    with memory.recycling(), fastconv.autocast(precision):
        # Warm up until a step takes every large block from the cache: until then, a step's
        # new blocks are fresh pages, zeroed on first touch (airbench94's first 3 steps).
        for _ in range(6):
            misses = memory.stats()["misses"]
            step()
            if memory.stats()["misses"] == misses:
                break
        spent.clear()
        t0 = clock()
        for _ in range(steps):
            step()
        total = (clock() - t0) / steps
    print(f"{name} batch {batch}, {threads} thread(s), {precision}: {total * 1e3:.0f} ms per "
          "step")
    accounted = 0.0
    for (method, what), t in sorted(spent.items(), key=lambda kv: -kv[1]):
        accounted += t / steps
        print(f"{t / steps * 1e3:8.1f} ms {100 * t / steps / total:5.1f}%  {method:8s} {what}")
    print(f"{100 * accounted / total:.1f}% of the step in these rows (the rest: loss, Python)")


if __name__ == "__main__":
    main(sys.argv[1:])
