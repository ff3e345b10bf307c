// The bf16 micro-kernels' epilogue: a finished mr x nr tile of float32 sums stored into C, or
// added onto it (an ordinary float32 add) when accumulating.
//
// Internal linkage on purpose: each kernel file compiles its own copy with its own ISA flags
// (gemm_bf16_amx.cpp's vectorised for AVX-512, the twins' for the baseline). One shared
// inline definition would let the linker keep any one of them, an AVX-512 copy included,
// for every caller.
#pragma once

#include "common.h"

namespace fastconv {
namespace {

[[maybe_unused]] inline void bf16_store_tile(const float* tile, index_t nr, float* c,
                                             index_t ldc, bool accumulate, index_t mr_eff,
                                             index_t nr_eff) {
  for (index_t i = 0; i < mr_eff; ++i) {
    const float* t = tile + i * nr;
    float* ci = c + i * ldc;
    if (accumulate)
      for (index_t j = 0; j < nr_eff; ++j) ci[j] += t[j];
    else
      for (index_t j = 0; j < nr_eff; ++j) ci[j] = t[j];
  }
}

}  // namespace
}  // namespace fastconv
