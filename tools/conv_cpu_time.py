"""Conv passes of the benchmarked layers, fastconv and PyTorch alternated call by call, timed in
this thread's CPU time: on a shared machine, the time other processes take from the core does
not count (cache sharing with them still does). One thread by default (the thread clock sees
only the calling thread; with more threads wall time is used).

Usage: python tools/conv_cpu_time.py FILTER [rounds] [threads] [passes]
  FILTER  substrings a layer name must all contain, joined by '&' ("resnet&b64", "k1s2")
  passes  comma-separated, default forward,backward_input,backward_weight
Prints per pass both medians, GFLOP/s (direct-convolution FLOPs) and the median, minimum and
maximum of the per-round ratios PyTorch / fastconv. Run under `flock /work/wt/timing.lock`
where others share the machine.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import torch  # noqa: E402

import fastconv  # noqa: E402
from fastconv import functional as F  # noqa: E402
import test_bench_kernels as K  # noqa: E402
from layers import AIRBENCH_LAYERS, CONV_LAYERS, RESNET_LAYERS  # noqa: E402


def main(argv: list[str]) -> None:
    pattern = argv[0]
    rounds = int(argv[1]) if len(argv) > 1 else 7
    threads = int(argv[2]) if len(argv) > 2 else 1
    passes = argv[3].split(",") if len(argv) > 3 else K.CONV_PASSES
    fastconv.set_num_threads(threads)
    torch.set_num_threads(threads)
    clock = time.thread_time if threads == 1 else time.perf_counter
    for layer in CONV_LAYERS + RESNET_LAYERS + AIRBENCH_LAYERS:
        if not all(part in layer.name for part in pattern.split("&")):
            continue
        data = K.make_conv_data(layer)
        for pass_ in passes:
            calls = {"fastconv": K.conv_call(F, layer, pass_, data),
                     "torch": K.torch_conv_call(torch, layer, pass_, data)}
            for call in calls.values():  # warm-up
                call()
            times: dict[str, list[float]] = {name: [] for name in calls}
            for r in range(rounds):
                for name in (list(calls) if r % 2 == 0 else list(calls)[::-1]):
                    t0 = clock()
                    calls[name]()
                    times[name].append(clock() - t0)
            ratios = sorted(t / f for f, t in zip(times["fastconv"], times["torch"]))
            fm, tm = statistics.median(times["fastconv"]), statistics.median(times["torch"])
            print(f"{layer.name:36s} {pass_:15s} fastconv {fm * 1e3:8.2f} ms "
                  f"{layer.flops / fm / 1e9:6.1f} GFLOP/s  torch {tm * 1e3:8.2f} ms "
                  f"{layer.flops / tm / 1e9:6.1f} GFLOP/s  ratio {statistics.median(ratios):.2f} "
                  f"[{ratios[0]:.2f}-{ratios[-1]:.2f}]", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
