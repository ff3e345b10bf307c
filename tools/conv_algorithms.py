"""Each conv algorithm forced on the benchmarked layers, pass by pass: which one the dispatch
picks (marked *) and how it stands against the others on this CPU. Algorithms alternate call
by call (one call of each per round), so drift in the machine's speed hits them alike.

Usage: python tools/conv_algorithms.py FILTER [rounds] [threads] [passes] [precision]
  FILTER     substrings a layer name must all contain, joined by '&' ("airbench&b1024")
  passes     comma-separated, default forward,backward_input,backward_weight
  precision  f32 (default), bf16, or f64 (float64 arrays)
Prints per pass each algorithm that takes the shape when forced: median milliseconds and
GFLOP/s counted as direct convolution. Wall time with several threads, this thread's CPU time
with one. Run alone on the machine (no other timing, tests or builds beside it).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import numpy as np  # noqa: E402

import fastconv  # noqa: E402
from fastconv import _core  # noqa: E402
from layers import AIRBENCH_LAYERS, CONV_LAYERS, RESNET_LAYERS  # noqa: E402

PASSES = ("forward", "backward_input", "backward_weight")


def dtype_and_precision(precision: str):
    """The arrays' dtype and the kernels' precision for the tool's precision argument."""
    return (np.float64, "f32") if precision == "f64" else (np.float32, precision)


def pass_call(layer, pass_: str, precision: str, rng):
    """A call running one pass of `layer` into preallocated outputs."""
    dtype, precision = dtype_and_precision(precision)
    x = rng.standard_normal(layer.x_shape).astype(dtype)
    w = (rng.standard_normal(layer.w_shape) * 0.1).astype(dtype)
    o = layer.out_size
    y = np.empty((layer.batch, layer.c_out, o, o), dtype)
    gy = rng.standard_normal(y.shape).astype(dtype)
    window = (layer.stride, layer.stride, layer.padding, layer.padding, 1, 1, 1)
    if pass_ == "forward":
        return lambda: _core.conv2d_forward(x, w, None, y, *window, precision)
    if pass_ == "backward_input":
        gx = np.empty_like(x)
        return lambda: _core.conv2d_backward_input(gy, w, gx, *window, precision)
    gw = np.empty_like(w)
    return lambda: _core.conv2d_backward_weight(gy, x, gw, *window, precision)


def algorithm(layer, pass_: str, precision: str) -> str:
    """The algorithm the dispatch runs (or, forced, whether the forced one takes the shape)."""
    o = layer.out_size
    dtype, precision = dtype_and_precision(precision)
    return _core.conv_algorithm(pass_, dtype, layer.x_shape, layer.w_shape, o, o,
                                layer.stride, layer.stride, layer.padding, layer.padding, 1, 1,
                                1, precision)


def main(argv: list[str]) -> None:
    wanted = argv[0].split("&")
    rounds = int(argv[1]) if len(argv) > 1 else 5
    threads = int(argv[2]) if len(argv) > 2 else 1
    passes = argv[3].split(",") if len(argv) > 3 else list(PASSES)
    precision = argv[4] if len(argv) > 4 else "f32"
    fastconv.set_num_threads(threads)
    clock = time.thread_time if threads == 1 else time.perf_counter
    rng = np.random.default_rng(0)
    layers = [lay for lay in CONV_LAYERS + RESNET_LAYERS + AIRBENCH_LAYERS
              if all(s in lay.name for s in wanted)]
    print(f"{fastconv.build_info()['cpu']['model_name']}, {fastconv.simd_level()}, "
          f"{threads} thread(s), {precision}; FMA peak "
          f"{max(_core.fma_peak_gflops(0.2, 'float32') for _ in range(3)):.0f} GFLOP/s "
          "(best of 3: the first wakes the threads)")
    try:
        for layer in layers:
            for pass_ in passes:
                call = pass_call(layer, pass_, precision, rng)
                _core.set_conv_algorithm("auto")
                chosen = algorithm(layer, pass_, precision)
                times = {}
                for name in _core.conv_algorithms():
                    _core.set_conv_algorithm(name)
                    if algorithm(layer, pass_, precision) == name:  # takes the shape forced
                        times[name] = []
                for _ in range(rounds):
                    for name, t in times.items():
                        _core.set_conv_algorithm(name)
                        t0 = clock()
                        call()
                        t.append(clock() - t0)
                gflop = layer.flops / 1e9
                cells = [f"{name}{'*' if name == chosen else ''} "
                         f"{statistics.median(t) * 1e3:.1f} ms "
                         f"{gflop / statistics.median(t):.0f}"
                         for name, t in times.items()]
                print(f"{layer.name} {pass_}: " + ", ".join(cells), flush=True)
    finally:
        _core.set_conv_algorithm("auto")


if __name__ == "__main__":
    main(sys.argv[1:])
