// AVX2+FMA micro-kernels: a 6 x 16 float (6 x 8 double) register tile, 12 ymm accumulators.
// This file alone is compiled with -mavx2 -mfma; it runs only after cpuid says the CPU has it.
#include "gemm/fma_loop.h"
#include "gemm/gemm.h"

#if defined(FASTCONV_X86) && defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

namespace fastconv {
namespace {

template <typename T>
struct Ymm;

template <>
struct Ymm<float> {
  using V = __m256;
  static constexpr int lanes = 8;
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static V set1(float v) { return _mm256_set1_ps(v); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  // Lanes [0, n) set (n <= 8): for the masked loads and stores of a partial tile.
  static __m256i mask(index_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static V mload(const float* p, __m256i m) { return _mm256_maskload_ps(p, m); }
  static void mstore(float* p, __m256i m, V v) { _mm256_maskstore_ps(p, m, v); }
};

template <>
struct Ymm<double> {
  using V = __m256d;
  static constexpr int lanes = 4;
  static V zero() { return _mm256_setzero_pd(); }
  static V load(const double* p) { return _mm256_loadu_pd(p); }
  static V bcast(const double* p) { return _mm256_broadcast_sd(p); }
  static V set1(double v) { return _mm256_set1_pd(v); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static V add(V a, V b) { return _mm256_add_pd(a, b); }
  static void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  static __m256i mask(index_t n) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
  }
  static V mload(const double* p, __m256i m) { return _mm256_maskload_pd(p, m); }
  static void mstore(double* p, __m256i m, V v) { _mm256_maskstore_pd(p, m, v); }
};

constexpr int MR = 6;

template <typename T>
void micro_kernel(index_t kc, const T* __restrict a, const T* __restrict b, T* __restrict c,
                  index_t ldc, bool accumulate, index_t mr_eff, index_t nr_eff) {
  using Y = Ymm<T>;
  constexpr int L = Y::lanes;
  constexpr int NR = 2 * L;
  typename Y::V acc0[MR], acc1[MR];
  // Every loop over the accumulators fully unrolled, so acc0[i] and acc1[i] name registers:
  // one loop left rolled (this one was) and GCC keeps them in memory, storing them after
  // every FMA of the k loop.
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    acc0[i] = Y::zero();
    acc1[i] = Y::zero();
  }
  for (index_t p = 0; p < kc; ++p) {
    const typename Y::V b0 = Y::load(b + p * NR);
    const typename Y::V b1 = Y::load(b + p * NR + L);
    const T* ap = a + p * MR;
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const typename Y::V ai = Y::bcast(ap + i);
      acc0[i] = Y::fma(ai, b0, acc0[i]);
      acc1[i] = Y::fma(ai, b1, acc1[i]);
    }
  }
  if (nr_eff == NR) {
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      if (i >= mr_eff) break;
      T* ci = c + i * ldc;
      if (accumulate) {
        acc0[i] = Y::add(acc0[i], Y::load(ci));
        acc1[i] = Y::add(acc1[i], Y::load(ci + L));
      }
      Y::store(ci, acc0[i]);
      Y::store(ci + L, acc1[i]);
    }
    return;
  }
  // Partial tile: masked loads and stores.
  const index_t n0 = nr_eff < L ? nr_eff : L;
  const index_t n1 = nr_eff - n0;
  const __m256i m0 = Y::mask(n0), m1 = Y::mask(n1);
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    if (i >= mr_eff) break;
    T* ci = c + i * ldc;
    if (accumulate) {
      acc0[i] = Y::add(acc0[i], Y::mload(ci, m0));
      if (n1 > 0) acc1[i] = Y::add(acc1[i], Y::mload(ci + L, m1));
    }
    Y::mstore(ci, m0, acc0[i]);
    if (n1 > 0) Y::mstore(ci + L, m1, acc1[i]);
  }
}

// 12 chains of FMAs for the peak: 8-10 in flight cover the latency x units of Zen 3 and Intel
// cores, and 12 accumulators + 2 constants fit the 16 ymm registers.
constexpr int kFmaChains = 12;

// (No non-temporal or dot-product variants: nullptr.)
const GemmKernel<float> kF32{MR,
                             16,
                             &micro_kernel<float>,
                             nullptr,
                             nullptr,
                             &fma_loop<Ymm<float>, kFmaChains, float>,
                             fma_loop_flops<Ymm<float>, kFmaChains>};
const GemmKernel<double> kF64{MR,
                              8,
                              &micro_kernel<double>,
                              nullptr,
                              nullptr,
                              &fma_loop<Ymm<double>, kFmaChains, double>,
                              fma_loop_flops<Ymm<double>, kFmaChains>};

}  // namespace

template <>
const GemmKernel<float>* gemm_kernel_avx2<float>() {
  return &kF32;
}
template <>
const GemmKernel<double>* gemm_kernel_avx2<double>() {
  return &kF64;
}

}  // namespace fastconv

#else

namespace fastconv {
template <>
const GemmKernel<float>* gemm_kernel_avx2<float>() {
  return nullptr;
}
template <>
const GemmKernel<double>* gemm_kernel_avx2<double>() {
  return nullptr;
}
}  // namespace fastconv

#endif
