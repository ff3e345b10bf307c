"""The machine's multiply-add peak, measured in the same run as the kernels (an FMA loop with
enough independent accumulators, on 1 thread and on the benchmark threads: _core.fma_peak_gflops),
and the packed GEMM on large and Linear-layer shapes beside it. report.py prints the peak and
every kernel's GFLOP/s as a share of it."""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
from fastconv import _core

#: Seconds per measurement (the best of ROUNDS is the peak: load from outside only lowers it).
SECONDS, ROUNDS = 0.5, 3


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("on", ["one thread", "benchmark threads"])
def test_fma_peak(benchmark, on, dtype):
    bench_threads = fastconv.get_num_threads()  # set for the session by conftest.py
    threads = 1 if on == "one thread" else bench_threads
    if on != "one thread" and threads == 1:
        pytest.skip("the benchmarks run on one thread")
    seconds, rounds = (0.02, 1) if benchmark.disabled else (SECONDS, ROUNDS)
    benchmark.group = f"fma peak {dtype} {threads} thread{'s' if threads > 1 else ''}"
    results = []
    fastconv.set_num_threads(threads)
    try:
        benchmark.pedantic(lambda: results.append(_core.fma_peak_gflops(seconds, dtype)),
                           rounds=rounds, iterations=1, warmup_rounds=0)
    finally:
        fastconv.set_num_threads(bench_threads)
    benchmark.extra_info.update(kind="peak", dtype=dtype, threads=threads,
                                simd_level=fastconv.simd_level(), gflops=max(results),
                                gflops_rounds=results)
    assert max(results) > 0


# (name, M, N, K, trans_a, trans_b): C (M x N) = op(A) op(B), as _core.gemm runs them.
GEMMS = [
    ("square 2048", 2048, 2048, 2048, False, False),
    # simple_cnn's Linear(2304, 1024), batch 64: forward x W^T, input grad gy W, weight grad gy^T x
    ("linear 2304-1024 forward", 64, 1024, 2304, False, True),
    ("linear 2304-1024 input grad", 64, 2304, 1024, False, False),
    ("linear 2304-1024 weight grad", 1024, 2304, 64, True, False),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("gemm", GEMMS, ids=lambda g: g[0])
def test_gemm(benchmark, rng, gemm, dtype):
    name, M, N, K, trans_a, trans_b = gemm
    a = rng.standard_normal((K, M) if trans_a else (M, K)).astype(dtype)
    b = rng.standard_normal((N, K) if trans_b else (K, N)).astype(dtype)
    c = np.empty((M, N), dtype)
    benchmark.group = f"gemm {name} {dtype}"
    benchmark.extra_info.update(kind="gemm", impl="fastconv", dtype=dtype, flops=2 * M * N * K)
    benchmark(_core.gemm, a, b, c, trans_a, trans_b)
    want = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
    np.testing.assert_allclose(c, want, rtol=1e-3 if dtype == "float32" else 1e-10,
                               atol=1e-3 * np.sqrt(K))
