"""Per-layer kernel benchmarks: fastconv vs the pure-NumPy reference vs PyTorch, grouped by
layer and pass so each group reads side by side. Every call's result is compared with the
reference (max abs difference recorded in extra_info, and bounded). The ResNet and airbench94
layers run interleaved with PyTorch only (the reference would take minutes), with their
GFLOP/s beside this machine's float32 FMA peak, measured in the same run (_core.fma_peak_gflops)."""

from __future__ import annotations

import functools
import statistics
import time
import zlib

import numpy as np
import pytest

from fastconv import _core
from fastconv import functional as F
from fastconv import reference as R

from interleaved import paired_stats, rounds_for, run_interleaved
from layers import AIRBENCH_LAYERS, CONV_LAYERS, POOL_LAYERS, RESNET_LAYERS, UNTIMED_BATCH

IMPLS = ["fastconv", "reference", "torch"]
CONV_PASSES = ["forward", "backward_input", "backward_weight"]
POOL_PASSES = ["max_forward", "max_forward_backward", "avg_forward_backward"]


def make_conv_data(layer):
    """x, w, b (None without bias) and a grad_y for `layer`, float32, seeded by its name."""
    rng = np.random.default_rng(zlib.crc32(layer.name.encode()))
    x = rng.standard_normal(layer.x_shape).astype(np.float32)
    w = (rng.standard_normal(layer.w_shape) / np.sqrt(layer.c_in * layer.kernel**2)).astype(np.float32)
    b = rng.standard_normal(layer.c_out).astype(np.float32) if layer.bias else None
    gy = rng.standard_normal((x.shape[0], layer.c_out, layer.out_size, layer.out_size)).astype(np.float32)
    return x, w, b, gy


#: The batch-64 layers' data, made once per session (the large ResNet / airbench batches are
#: made per benchmark and freed after it: hundreds of MiB each).
conv_data = functools.lru_cache(maxsize=None)(make_conv_data)


def conv_call(module, layer, pass_, data=None):
    x, w, b, gy = data or conv_data(layer)
    p, s = layer.padding, layer.stride
    if pass_ == "forward":
        return lambda: module.conv2d(x, w, b, stride=s, padding=p)
    mask = (True, False, False) if pass_ == "backward_input" else (False, True, False)
    index = 0 if pass_ == "backward_input" else 1
    return lambda: module.conv2d_backward(gy, x, w, stride=s, padding=p, output_mask=mask)[index]


def torch_conv_call(torch, layer, pass_, data=None, channels_last=False):
    """PyTorch's pass of `layer`; with channels_last, x, w and grad_y are converted to that
    memory format first (outside the timed call), as a channels_last model holds them."""
    x, w, b, gy = (None if a is None else torch.from_numpy(a) for a in data or conv_data(layer))
    if channels_last:
        x, w, gy = (a.contiguous(memory_format=torch.channels_last) for a in (x, w, gy))
    p, s = layer.padding, layer.stride
    if pass_ == "forward":
        return lambda: torch.nn.functional.conv2d(x, w, b, stride=s, padding=p).numpy()
    mask = [pass_ == "backward_input", pass_ == "backward_weight", False]
    index = 0 if pass_ == "backward_input" else 1
    conv_backward = torch.ops.aten.convolution_backward
    return lambda: conv_backward(gy, x, w, None, [s, s], [p, p], [1, 1], False, [0, 0], 1,
                                 mask)[index].numpy()


@functools.lru_cache(maxsize=None)
def conv_expected(layer, pass_):
    return conv_call(R, layer, pass_)()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("pass_", CONV_PASSES)
@pytest.mark.parametrize("layer", CONV_LAYERS, ids=lambda layer: layer.name)
def test_conv(benchmark, request, layer, pass_, impl):
    if impl == "torch":
        fn = torch_conv_call(request.getfixturevalue("torch_or_skip"), layer, pass_)
    else:
        fn = conv_call(F if impl == "fastconv" else R, layer, pass_)
    benchmark.group = f"conv {layer.name} {pass_}"
    benchmark.extra_info.update(kind="conv", layer=layer.name, pass_=pass_, impl=impl,
                                flops=layer.flops, batch=layer.x_shape[0])
    out = benchmark(fn)
    want = conv_expected(layer, pass_)
    diff = float(np.max(np.abs(out - want)))
    benchmark.extra_info["max_abs_diff_vs_reference"] = diff
    assert diff <= 1e-4 * max(1.0, float(np.max(np.abs(want))))


@pytest.fixture(scope="session")
def peak_gflops():
    """This machine's float32 multiply-add peak in GFLOP/s on the benchmark threads, measured
    once per session (the best of 3: the rate the cores reach when they are ours); its own
    benchmark is test_bench_peak.py's."""
    return max(_core.fma_peak_gflops(0.2, "float32") for _ in range(3))


def interleaved_conv(benchmark, torch, layer, pass_, peak, data=None, min_rounds=20,
                     torch_channels_last=False):
    """fastconv's and PyTorch's pass of `layer` alternated call by call (which goes first
    alternates too), ~1 s in all (at least min_rounds rounds): a slow stretch of the machine
    then meets both. With torch_channels_last, PyTorch runs in both memory formats in each
    round and the faster (lower median) is the one compared (`torch_layout`; both medians
    kept). Records both medians, the median and quartiles of the per-call ratios (PyTorch /
    fastconv), both GFLOP/s and fastconv's share of the measured FMA peak."""
    calls = {"fastconv": conv_call(F, layer, pass_, data),
             "torch": torch_conv_call(torch, layer, pass_, data)}
    if torch_channels_last:
        calls["torch_channels_last"] = torch_conv_call(torch, layer, pass_, data, True)
    benchmark.group = f"conv {layer.name} {pass_}, fastconv and PyTorch interleaved"
    times = run_interleaved(benchmark, calls, rounds_for(calls, 1.0, min_rounds, 2000))
    medians = {name: statistics.median(t) for name, t in times.items() if name != "fastconv"}
    faster = min(medians, key=medians.get)
    stats = paired_stats({"fastconv": times["fastconv"], "torch": times[faster]})
    layout = {"torch": "nchw", "torch_channels_last": "channels_last"}
    benchmark.extra_info.update(torch_layout=layout[faster],
                                torch_medians_s={layout[k]: v for k, v in medians.items()})
    benchmark.extra_info.update(
        kind="paired_conv", layer=layer.name, pass_=pass_, flops=layer.flops,
        batch=layer.batch, fastconv_gflops=layer.flops / stats["fastconv_median_s"] / 1e9,
        torch_gflops=layer.flops / stats["torch_median_s"] / 1e9, peak_gflops=peak,
        fastconv_peak_share=layer.flops / stats["fastconv_median_s"] / 1e9 / peak, **stats)


@pytest.mark.parametrize("pass_", CONV_PASSES)
@pytest.mark.parametrize("layer", CONV_LAYERS, ids=lambda layer: layer.name)
def test_conv_interleaved_with_torch(benchmark, request, peak_gflops, layer, pass_):
    """Each conv pass of the batch-64 models' layers, interleaved with PyTorch."""
    interleaved_conv(benchmark, request.getfixturevalue("torch_or_skip"), layer, pass_,
                     peak_gflops)


def big_layer(benchmark, layer):
    """`layer` at its batch when timing, else at UNTIMED_BATCH (the normal test run)."""
    return layer if not benchmark.disabled else layer.with_batch(UNTIMED_BATCH)


@pytest.mark.parametrize("pass_", CONV_PASSES)
@pytest.mark.parametrize("layer", RESNET_LAYERS + AIRBENCH_LAYERS, ids=lambda layer: layer.name)
def test_resnet_airbench_conv_interleaved_with_torch(benchmark, request, peak_gflops, layer,
                                                     pass_):
    """Each conv pass of the ResNet-style and airbench94 layers (batches 64-1024), interleaved
    with PyTorch in both memory formats (compared with the faster); each layer's data made
    for this benchmark only."""
    torch = request.getfixturevalue("torch_or_skip")
    layer = big_layer(benchmark, layer)
    interleaved_conv(benchmark, torch, layer, pass_, peak_gflops, make_conv_data(layer),
                     min_rounds=5, torch_channels_last=True)


@functools.lru_cache(maxsize=None)
def pool_data(layer):
    rng = np.random.default_rng(zlib.crc32(layer.name.encode()))
    x = rng.standard_normal(layer.x_shape).astype(np.float32)
    out = layer.size // layer.kernel
    gy = rng.standard_normal((x.shape[0], layer.channels, out, out)).astype(np.float32)
    return x, gy


def pool_call(module, layer, pass_):
    x, gy = pool_data(layer)
    k = layer.kernel
    if pass_ == "max_forward":
        return lambda: module.max_pool2d(x, k)
    if pass_ == "max_forward_backward":
        def run():
            _, idx = module.max_pool2d(x, k, return_indices=True)
            return module.max_pool2d_backward(gy, idx, x.shape)
        return run
    return lambda: (module.avg_pool2d(x, k), module.avg_pool2d_backward(gy, x.shape, k))[1]


def torch_pool_call(torch, layer, pass_):
    x, gy = (torch.from_numpy(a) for a in pool_data(layer))
    k = [layer.kernel] * 2
    aten = torch.ops.aten
    if pass_ == "max_forward":
        return lambda: torch.nn.functional.max_pool2d(x, k).numpy()
    if pass_ == "max_forward_backward":
        def run():
            _, idx = torch.nn.functional.max_pool2d(x, k, return_indices=True)
            return aten.max_pool2d_with_indices_backward(gy, x, k, k, [0, 0], [1, 1], False, idx).numpy()
        return run

    def run():
        torch.nn.functional.avg_pool2d(x, k)
        return aten.avg_pool2d_backward(gy, x, k, k, [0, 0], False, True, None).numpy()
    return run


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("pass_", POOL_PASSES)
@pytest.mark.parametrize("layer", POOL_LAYERS, ids=lambda layer: layer.name)
def test_pool(benchmark, request, layer, pass_, impl):
    if impl == "torch":
        fn = torch_pool_call(request.getfixturevalue("torch_or_skip"), layer, pass_)
    else:
        fn = pool_call(F if impl == "fastconv" else R, layer, pass_)
    benchmark.group = f"pool {layer.name} {pass_}"
    benchmark.extra_info.update(kind="pool", layer=layer.name, pass_=pass_, impl=impl,
                                batch=layer.x_shape[0])
    out = benchmark(fn)
    want = pool_call(R, layer, pass_)()
    diff = float(np.max(np.abs(out - want)))
    benchmark.extra_info["max_abs_diff_vs_reference"] = diff
    assert diff <= 1e-5
