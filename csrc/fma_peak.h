// The machine's float32 multiply-add peak, measured: what the convolution benchmarks compare
// their GFLOP/s with (benchmarks/test_bench_kernels.py records both in every run).
#pragma once

#include "common.h"

namespace fastconv {

// Runs `iterations` steps of independent multiply-add chains on every OpenMP thread, with
// the vectors of the selected SIMD level (zmm for avx512, ymm for avx2, the compiler's choice
// for generic), and returns the floating-point operations done in all (2 per multiply-add
// and lane). Time the call to get the peak rate.
double fma_peak(index_t iterations);

}  // namespace fastconv
