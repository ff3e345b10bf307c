// The FMA throughput loop behind the machine's peak (GemmKernel::fma_loop, peak.h), for the
// vector types of an ISA file (gemm_avx2.cpp, gemm_avx512.cpp), which instantiate it with their
// own compile flags. Vec supplies V, lanes, set1, fma, add and store.
#pragma once

#include "common.h"

namespace fastconv {

// `rounds` rounds of kChains independent vector multiply-adds (kChains: enough in flight to
// cover the FMA latency times the FMA units); returns the sum of the results so that none is
// optimised away. acc <- acc * m + a converges to a / (1 - m) = 1: no overflow, no subnormals.
template <typename Vec, int kChains, typename T>
double fma_loop(index_t rounds) {
  typename Vec::V acc[kChains];
#pragma GCC unroll 32
  for (int i = 0; i < kChains; ++i) acc[i] = Vec::set1(T(i) / kChains);
  const typename Vec::V m = Vec::set1(T(0.9999)), a = Vec::set1(T(1e-4));
  for (index_t r = 0; r < rounds; ++r) {
#pragma GCC unroll 32
    for (int i = 0; i < kChains; ++i) acc[i] = Vec::fma(acc[i], m, a);
  }
#pragma GCC unroll 32
  for (int i = 1; i < kChains; ++i) acc[0] = Vec::add(acc[0], acc[i]);
  T lanes[Vec::lanes];
  Vec::store(lanes, acc[0]);
  double sum = 0;
  for (T v : lanes) sum += v;
  return sum;
}

// Flops per round of fma_loop<Vec, kChains>.
template <typename Vec, int kChains>
constexpr index_t fma_loop_flops = 2 * kChains * Vec::lanes;

}  // namespace fastconv
