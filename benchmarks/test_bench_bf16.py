"""bf16 mode against float32 (and PyTorch's bf16 autocast), interleaved call by call: the large
3x3 conv of issue 17's targets (256 -> 256 channels on 16x16 images), a vgg_small layer, a
strided resnet18 layer and simple_cnn's first Linear, every pass. Each record carries the bf16 path that ran and the CPU's
flags next to its figures: on a CPU without AVX512_BF16 or AMX the emulated path runs, and the
ratio says what it costs over float32 (no speed-up is expected there)."""

from __future__ import annotations

import statistics
import zlib

import numpy as np
import pytest

import fastconv
from fastconv import functional as F
from fastconv.precision import round_to_bf16

from interleaved import rounds_for, run_interleaved
from layers import UNTIMED_BATCH, ConvLayer

CONV_LAYERS = [ConvLayer("wide 256-256 k3p1 16x16", 256, 256, 16, 3, 1, bias=False, batch=256),
               ConvLayer("vgg_small.conv4 64-64 k3p1 16x16", 64, 64, 16, 3, 1, bias=False),
               # strided: the im2col GEMM in both precisions
               ConvLayer("resnet18.layer3.0.conv1 128-256 k3s2p1 16x16", 128, 256, 16, 3, 1,
                         bias=False, stride=2, batch=128)]
PASSES = ["forward", "backward_input", "backward_weight"]


def conv_calls(layer, pass_, torch):
    """fastconv float32, fastconv bf16 and (torch given) PyTorch under bf16 autocast, for one
    pass of `layer`; each returns a float32 array."""
    rng = np.random.default_rng(zlib.crc32(layer.name.encode()))
    x = rng.standard_normal(layer.x_shape).astype(np.float32)
    w = (rng.standard_normal(layer.w_shape) / np.sqrt(layer.c_in * layer.kernel**2)
         ).astype(np.float32)
    gy = rng.standard_normal((layer.batch, layer.c_out, layer.out_size,
                              layer.out_size)).astype(np.float32)
    p, s = layer.padding, layer.stride
    mask = {"backward_input": (True, False, False), "backward_weight": (False, True, False)}

    def ours(precision):
        if pass_ == "forward":
            return lambda: F.conv2d(x, w, stride=s, padding=p, precision=precision)
        i = 0 if pass_ == "backward_input" else 1
        return lambda: F.conv2d_backward(gy, x, w, stride=s, padding=p,
                                         output_mask=mask[pass_], precision=precision)[i]

    calls = {"f32": ours("f32"), "bf16": ours("bf16")}
    if torch is not None:
        tx, tw, tgy = (torch.from_numpy(a).bfloat16() for a in (x, w, gy))
        if pass_ == "forward":
            def run():
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return torch.nn.functional.conv2d(tx, tw, stride=s,
                                                      padding=p).float().numpy()
        else:
            i = 0 if pass_ == "backward_input" else 1
            tmask = [pass_ == "backward_input", pass_ == "backward_weight", False]

            def run():
                return torch.ops.aten.convolution_backward(
                    tgy, tx, tw, None, [s, s], [p, p], [1, 1], False, [0, 0], 1,
                    tmask)[i].float().numpy()
        calls["torch_bf16"] = run
    return calls, (x, w, gy)


def record(benchmark, times, **info):
    """Medians, the per-round ratios float32 / bf16 (and float32 / PyTorch bf16), and what ran:
    the bf16 path, SIMD level, CPU model and flags, threads."""
    f32_over_bf16 = [f / b for f, b in zip(times["f32"], times["bf16"])]
    info_now = fastconv.build_info()
    out = dict(kind="bf16", bf16_path=fastconv.simd_level("bf16"),
               best_bf16_path=info_now["bf16"]["best"], simd_level=fastconv.simd_level(),
               cpu_model=info_now["cpu"]["model_name"],
               cpu_flags=" ".join(info_now["cpu"]["features"]),
               threads=fastconv.get_num_threads(), rounds=len(f32_over_bf16),
               **{f"{name}_median_s": statistics.median(t) for name, t in times.items()},
               speedup_bf16_over_f32_median=statistics.median(f32_over_bf16), **info)
    if "torch_bf16" in times:
        out["speedup_torch_bf16_over_f32_median"] = statistics.median(
            [f / t for f, t in zip(times["f32"], times["torch_bf16"])])
    benchmark.extra_info.update(out)


def torch_or_none():
    try:
        import torch
    except ImportError:
        return None
    return torch


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("layer", CONV_LAYERS, ids=lambda layer: layer.name)
def test_conv_bf16_interleaved(benchmark, layer, pass_):
    if benchmark.disabled:
        layer = layer.with_batch(UNTIMED_BATCH)
    calls, (x, w, gy) = conv_calls(layer, pass_, torch_or_none())
    benchmark.group = f"bf16 conv {layer.name} {pass_}"
    # bf16 against float32: within the rounding of the operands (2^-8 relative each).
    y32, y16 = calls["f32"](), calls["bf16"]()
    assert np.max(np.abs(y16 - y32)) <= 2 ** -6 * max(1.0, float(np.max(np.abs(y32))))
    times = run_interleaved(benchmark, calls, rounds_for(calls, 2.0, 3, 200))
    record(benchmark, times, layer=layer.name, pass_=pass_, batch=layer.batch,
           flops=layer.flops,
           bf16_gflops=layer.flops / statistics.median(times["bf16"]) / 1e9)


@pytest.mark.parametrize("pass_", ["forward", "backward"])
def test_linear_bf16_interleaved(benchmark, pass_):
    """simple_cnn's fc1 (2304 -> 1024) at batch 128."""
    batch = 128 if not benchmark.disabled else UNTIMED_BATCH
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, 2304)).astype(np.float32)
    w = (rng.standard_normal((1024, 2304)) / 48).astype(np.float32)
    gy = rng.standard_normal((batch, 1024)).astype(np.float32)

    def ours(precision):
        if pass_ == "forward":
            return lambda: F.linear(x, w, precision=precision)
        return lambda: F.linear_backward(gy, x, w, output_mask=(True, True, False),
                                         precision=precision)[1]

    calls = {"f32": ours("f32"), "bf16": ours("bf16")}
    benchmark.group = f"bf16 linear 2304-1024 {pass_}"
    want = (round_to_bf16(x).astype(np.float64) @ round_to_bf16(w).astype(np.float64).T
            if pass_ == "forward" else None)
    if want is not None:
        assert np.max(np.abs(calls["bf16"]() - want)) <= 1e-4 * max(1.0, np.max(np.abs(want)))
    times = run_interleaved(benchmark, calls, rounds_for(calls, 2.0, 3, 200))
    record(benchmark, times, layer="linear 2304-1024", pass_=pass_, batch=batch,
           flops=2 * batch * 2304 * 1024 * (1 if pass_ == "forward" else 2))
