// The machine's multiply-add peak, measured: the yardstick for the kernels' GFLOP/s.
#pragma once

#include "common.h"

namespace fastconv {

// GFLOP/s (a multiply-add counts 2) of the selected ISA's FMA loop (GemmKernel::fma_loop) for
// dtype T, run on every thread (max_threads()) at once for `seconds` after a short warm-up
// (clocks and vector units up to speed). Call outside parallel regions.
template <typename T>
double fma_peak_gflops(double seconds);

// The same for the selected bf16 path's dot-product instruction (Bf16Kernel::peak_loop:
// vdpbf16ps, tdpbf16ps), a product and its add counting 2; 0 on a path without one (the
// emulated path, whose peak is float32's, and the twins).
double bf16_peak_gflops(double seconds);

}  // namespace fastconv
