"""fastconv against PyTorch on the benchmarked conv layers, pass by pass: fastconv float32,
fastconv bf16 mode and PyTorch in bf16 (the calls of benchmarks/test_bench_bf16.py:
torch.ops.aten.convolution{,_backward} on bf16 tensors, as under autocast), or fastconv and
PyTorch both in float32. The calls alternate one by one, so drift in the machine's speed hits
them alike.

Usage: python tools/conv_vs_torch.py FILTER [rounds] [threads] [precision]
  FILTER     substrings a layer name must all contain, joined by '&' ("resnet&b64")
  precision  bf16 (default) or f32
Prints per pass the medians in milliseconds and PyTorch's time over fastconv's in the chosen
precision (above 1: fastconv ahead). Needs torch. Run alone on the machine.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import numpy as np  # noqa: E402

import fastconv  # noqa: E402
from layers import AIRBENCH_LAYERS, CONV_LAYERS, RESNET_LAYERS  # noqa: E402
from test_bench_bf16 import conv_calls  # noqa: E402

PASSES = ("forward", "backward_input", "backward_weight")


def torch_f32_call(torch, layer, pass_, x, w, gy):
    """PyTorch float32 for one pass of `layer` (returns a float32 array)."""
    tx, tw, tgy = (torch.from_numpy(a) for a in (x, w, gy))
    s, p = [layer.stride] * 2, [layer.padding] * 2
    if pass_ == "forward":
        return lambda: torch.ops.aten.convolution(tx, tw, None, s, p, [1, 1], False, [0, 0],
                                                  1).numpy()
    i = 0 if pass_ == "backward_input" else 1
    mask = [i == 0, i == 1, False]
    return lambda: torch.ops.aten.convolution_backward(tgy, tx, tw, None, s, p, [1, 1], False,
                                                       [0, 0], 1, mask)[i].numpy()


def main(argv: list[str]) -> None:
    import torch

    wanted = argv[0].split("&")
    rounds = int(argv[1]) if len(argv) > 1 else 9
    threads = int(argv[2]) if len(argv) > 2 else 2
    precision = argv[3] if len(argv) > 3 else "bf16"
    fastconv.set_num_threads(threads)
    torch.set_num_threads(threads)
    info = fastconv.build_info()
    print(f"{info['cpu']['model_name']} (family {info['cpu']['family']} model "
          f"{info['cpu']['model']}), {threads} thread(s), {precision}, bf16 path "
          f"{fastconv.simd_level('bf16')}, PyTorch {torch.__version__}")
    layers = [layer for layer in RESNET_LAYERS + AIRBENCH_LAYERS + CONV_LAYERS
              if all(w in layer.name for w in wanted)]
    for layer in layers:
        for pass_ in PASSES:
            calls, (x, w, gy) = conv_calls(layer, pass_, torch)
            if precision == "f32":
                calls = {"f32": calls["f32"],
                         "torch": torch_f32_call(torch, layer, pass_, x, w, gy)}
                ours = "f32"
            else:
                calls = {"f32": calls["f32"], "bf16": calls["bf16"],
                         "torch": calls["torch_bf16"]}
                ours = "bf16"
            for call in calls.values():
                call()
            times: dict[str, list[float]] = {name: [] for name in calls}
            for _ in range(rounds):
                for name, call in calls.items():
                    t0 = time.perf_counter()
                    call()
                    times[name].append(time.perf_counter() - t0)
            med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
            cols = "  ".join(f"{name} {ms:7.2f}" for name, ms in med.items())
            print(f"{layer.name:36s} {pass_:15s} {cols}  torch/{ours} "
                  f"{med['torch'] / med[ours]:.2f}", flush=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main(sys.argv[1:])
