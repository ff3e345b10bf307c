"""The machine's multiply-add peak, measured in the same run as the kernels (an FMA loop with
enough independent accumulators, on 1 thread and on the benchmark threads: _core.fma_peak_gflops;
"bfloat16": the bf16 path's dot-product instruction, _core.bf16_peak_gflops, where the CPU has
one), and the packed GEMM on large and Linear-layer shapes beside it (bfloat16: the bf16 GEMM
on float32 arrays). report.py prints the peak and every kernel's GFLOP/s as a share of it."""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
from fastconv import _core
from fastconv.precision import round_to_bf16

#: Seconds per measurement (the best of ROUNDS is the peak: load from outside only lowers it).
SECONDS, ROUNDS = 0.5, 3


def skip_without_bf16_instructions():
    path = fastconv.simd_level("bf16")
    if path not in ("avx512_bf16", "amx"):
        pytest.skip(f"bf16 path {path}: no bf16 instruction on this CPU")


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
@pytest.mark.parametrize("on", ["one thread", "benchmark threads"])
def test_fma_peak(benchmark, on, dtype):
    bench_threads = fastconv.get_num_threads()  # set for the session by conftest.py
    threads = 1 if on == "one thread" else bench_threads
    if on != "one thread" and threads == 1:
        pytest.skip("the benchmarks run on one thread")
    if dtype == "bfloat16":
        skip_without_bf16_instructions()
    measure = (_core.bf16_peak_gflops if dtype == "bfloat16"
               else lambda seconds: _core.fma_peak_gflops(seconds, dtype))
    seconds, rounds = (0.02, 1) if benchmark.disabled else (SECONDS, ROUNDS)
    benchmark.group = f"fma peak {dtype} {threads} thread{'s' if threads > 1 else ''}"
    results = []
    fastconv.set_num_threads(threads)
    try:
        benchmark.pedantic(lambda: results.append(measure(seconds)),
                           rounds=rounds, iterations=1, warmup_rounds=0)
    finally:
        fastconv.set_num_threads(bench_threads)
    benchmark.extra_info.update(kind="peak", dtype=dtype, threads=threads,
                                simd_level=fastconv.simd_level(),
                                bf16_path=fastconv.simd_level("bf16"), gflops=max(results),
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


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
@pytest.mark.parametrize("gemm", GEMMS, ids=lambda g: g[0])
def test_gemm(benchmark, rng, gemm, dtype):
    """bfloat16: float32 arrays, the bf16 GEMM (operands rounded while packed), timed on the
    CPU's bf16 instruction only (the emulated path is float32's GEMM plus rounding)."""
    name, M, N, K, trans_a, trans_b = gemm
    bf16 = dtype == "bfloat16"
    if bf16 and not benchmark.disabled:
        skip_without_bf16_instructions()
    arrays = "float32" if bf16 else dtype
    a = rng.standard_normal((K, M) if trans_a else (M, K)).astype(arrays)
    b = rng.standard_normal((N, K) if trans_b else (K, N)).astype(arrays)
    c = np.empty((M, N), arrays)
    precision = "bf16" if bf16 else "f32"
    benchmark.group = f"gemm {name} {dtype}"
    benchmark.extra_info.update(kind="gemm", impl="fastconv", dtype=dtype, flops=2 * M * N * K,
                                bf16_path=fastconv.simd_level("bf16") if bf16 else None)
    benchmark(_core.gemm, a, b, c, trans_a, trans_b, precision=precision)
    if bf16:
        a, b = round_to_bf16(a), round_to_bf16(b)
    want = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
    np.testing.assert_allclose(c, want, rtol=1e-3 if arrays == "float32" else 1e-10,
                               atol=1e-3 * np.sqrt(K))
