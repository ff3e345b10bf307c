// What the GEMM formulations of a convolution share (conv_gemm.cpp, conv_valid_taps.cpp):
// the items of a pass spread over the threads with their scratch, and a group's weights
// packed once per call for the float32 or the bf16 GEMM.
#pragma once

#include <algorithm>
#include <memory>
#include <type_traits>

#include "common.h"
#include "gemm/gemm.h"
#include "gemm/gemm_bf16.h"

namespace fastconv {

// Runs body(i, cols, pack) for i in [0, count). With at least as many items as threads, the
// items are spread over the threads, each with its own scratch (cols: cols_size elements;
// pack: packing buffers for GEMMs of up to M x N), and run whole, independent GEMMs: no
// barrier per small step. Otherwise the items run in order and pack is nullptr: the body then
// splits each GEMM over the threads (see `matmul`). All scratch is allocated here, before any
// parallel region.
template <typename T, typename Body>
void run_items(index_t count, index_t cols_size, index_t M, index_t N, Body&& body) {
  const index_t cols_part = round_up(cols_size, 16);
  const index_t pack_size = gemm_scratch_size<T>(M, N);
  for_each_item<T>(count, checked_add(cols_part, pack_size), [&](index_t i, T* mine, bool split) {
    body(i, mine, split ? static_cast<T*>(nullptr) : mine + cols_part);
  });
}

// GEMM on this thread's packing scratch, or split over all threads when there is none.
// Both give the same bits: threads split M or N, never the reduction.
template <typename T>
void matmul(T* pack, index_t M, index_t N, index_t K, const ASource<T>& A, const BSource<T>& B,
            T* C, index_t ldc, bool accumulate) {
  if (pack)
    gemm<T>(M, N, K, A, B, C, ldc, accumulate, pack);
  else
    gemm_parallel<T>(M, N, K, A, B, C, ldc, accumulate);
}

// C[M, N] (+)= A . B with both operands packed on the fly: the float32 GEMM, or in bf16 mode
// (float only) the bf16 one, whose packing rounds them; on this thread's scratch `pack` (the
// float32 GEMM's), or split over the threads when there is none (see matmul).
template <typename T>
void multiply_operands(T* pack, Precision precision, index_t M, index_t N, index_t K,
                       const ASource<T>& A, const BSource<T>& B, T* C, index_t ldc,
                       bool accumulate) {
  if constexpr (std::is_same_v<T, float>)
    if (precision == Precision::bf16) {
      const Bf16FromF32A a(A);
      if (pack) gemm_bf16(M, N, K, a, B, C, ldc, accumulate);
      else gemm_bf16_parallel(M, N, K, a, B, C, ldc, accumulate);
      return;
    }
  matmul<T>(pack, M, N, K, A, B, C, ldc, accumulate);
}

// One group's weights (w[g], or w[g]^T for the input gradient), packed once per call and
// shared by all images: for the float32 GEMM, or converted for the bf16 one (bf16 mode).
template <typename T>
class GroupWeights {
 public:
  GroupWeights(index_t M, index_t K, const T* w, index_t rs, index_t cs, Precision precision)
      : M_(M), K_(K) {
    if constexpr (std::is_same_v<T, float>)
      if (precision == Precision::bf16) {
        bf16_ = std::make_unique<Bf16PackedA>(M, K, w, rs, cs);
        return;
      }
    f32_ = std::make_unique<PackedA<T>>(M, K, w, rs, cs);
  }

  // C[M, N] (+)= weights . B, on this thread's scratch `pack` (the float32 GEMM's; the bf16
  // GEMM allocates its own), or split over the threads when there is none (see matmul).
  void multiply(T* pack, index_t N, const BSource<T>& B, T* C, index_t ldc,
                bool accumulate) const {
    if constexpr (std::is_same_v<T, float>)
      if (bf16_) {
        if (pack) gemm_bf16(M_, N, K_, *bf16_, B, C, ldc, accumulate);
        else gemm_bf16_parallel(M_, N, K_, *bf16_, B, C, ldc, accumulate);
        return;
      }
    matmul<T>(pack, M_, N, K_, *f32_, B, C, ldc, accumulate);
  }

 private:
  index_t M_, K_;
  std::unique_ptr<PackedA<T>> f32_;
  std::unique_ptr<Bf16PackedA> bf16_;
};

}  // namespace fastconv
