// AVX-512F micro-kernels: an 8 x 32 float (8 x 16 double) register tile, 16 zmm accumulators.
// This file alone is compiled with -mavx512f; it runs only after cpuid says the CPU has it.
#include "gemm/fma_loop.h"
#include "gemm/gemm.h"
#include "simd_avx512.h"

#if defined(FASTCONV_X86) && defined(__AVX512F__)
#include <immintrin.h>

namespace fastconv {
namespace {

template <typename T>
struct Zmm;

template <>
struct Zmm<float> {
  using V = __m512;
  using Mask = __mmask16;
  static constexpr int lanes = 16;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V bcast(const float* p) { return _mm512_set1_ps(*p); }
  static V set1(float v) { return _mm512_set1_ps(v); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static void stream(float* p, V v) { _mm512_stream_ps(p, v); }
  static Mask mask(index_t n) { return static_cast<Mask>((1u << n) - 1u); }
  static V mload(const float* p, Mask m) { return _mm512_maskz_loadu_ps(m, p); }
  static void mstore(float* p, Mask m, V v) { _mm512_mask_storeu_ps(p, m, v); }
  static float reduce(V v) { return _mm512_reduce_add_ps(v); }
};

template <>
struct Zmm<double> {
  using V = __m512d;
  using Mask = __mmask8;
  static constexpr int lanes = 8;
  static V zero() { return _mm512_setzero_pd(); }
  static V load(const double* p) { return _mm512_loadu_pd(p); }
  static V bcast(const double* p) { return _mm512_set1_pd(*p); }
  static V set1(double v) { return _mm512_set1_pd(v); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static V add(V a, V b) { return _mm512_add_pd(a, b); }
  static void store(double* p, V v) { _mm512_storeu_pd(p, v); }
  static void stream(double* p, V v) { _mm512_stream_pd(p, v); }
  static Mask mask(index_t n) { return static_cast<Mask>((1u << n) - 1u); }
  static V mload(const double* p, Mask m) { return _mm512_maskz_loadu_pd(m, p); }
  static void mstore(double* p, Mask m, V v) { _mm512_mask_storeu_pd(p, m, v); }
  static double reduce(V v) { return _mm512_reduce_add_pd(v); }
};

constexpr int MR = 8;

template <typename T, bool kStream = false>
void micro_kernel(index_t kc, const T* __restrict a, const T* __restrict b, T* __restrict c,
                  index_t ldc, bool accumulate, index_t mr_eff, index_t nr_eff) {
  using Z = Zmm<T>;
  constexpr int L = Z::lanes;
  constexpr int NR = 2 * L;
  typename Z::V acc0[MR], acc1[MR];
  for (int i = 0; i < MR; ++i) acc0[i] = acc1[i] = Z::zero();
  for (index_t p = 0; p < kc; ++p) {
    const typename Z::V b0 = Z::load(b + p * NR);
    const typename Z::V b1 = Z::load(b + p * NR + L);
    const T* ap = a + p * MR;
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const typename Z::V ai = Z::bcast(ap + i);
      acc0[i] = Z::fma(ai, b0, acc0[i]);
      acc1[i] = Z::fma(ai, b1, acc1[i]);
    }
  }
  if constexpr (kStream) {
    if (nr_eff == NR) {
      for (int i = 0; i < MR; ++i) {
        if (i >= mr_eff) break;
        Z::stream(c + i * ldc, acc0[i]);
        Z::stream(c + i * ldc + L, acc1[i]);
      }
      return;
    }
  }
  if (nr_eff == NR) {
    for (int i = 0; i < MR; ++i) {
      if (i >= mr_eff) break;
      T* ci = c + i * ldc;
      if (accumulate) {
        acc0[i] = Z::add(acc0[i], Z::load(ci));
        acc1[i] = Z::add(acc1[i], Z::load(ci + L));
      }
      Z::store(ci, acc0[i]);
      Z::store(ci + L, acc1[i]);
    }
  } else {
    const index_t n0 = nr_eff < L ? nr_eff : L;
    const index_t n1 = nr_eff - n0;
    const typename Z::Mask m0 = Z::mask(n0), m1 = Z::mask(n1);
    for (int i = 0; i < MR; ++i) {
      if (i >= mr_eff) break;
      T* ci = c + i * ldc;
      if (accumulate) {
        acc0[i] = Z::add(acc0[i], Z::mload(ci, m0));
        if (n1 > 0) acc1[i] = Z::add(acc1[i], Z::mload(ci + L, m1));
      }
      Z::mstore(ci, m0, acc0[i]);
      if (n1 > 0) Z::mstore(ci + L, m1, acc1[i]);
    }
  }
}

// Dot products of rows for gemm_nt_rows: an MF x NF tile of accumulators, one vector of
// partial sums each, masked loads for the tail, one fixed-order reduction per result.
template <typename T, int MF, int NF>
inline void dot_tile(index_t K, const T* const* a, const T* const* b, T* c, index_t ldc,
                     bool accumulate) {
  using Z = Zmm<T>;
  constexpr int L = Z::lanes;
  typename Z::V s[MF][NF];
  for (int i = 0; i < MF; ++i)
    for (int j = 0; j < NF; ++j) s[i][j] = Z::zero();
  index_t k = 0;
  for (; k + L <= K; k += L) {
    typename Z::V av[MF], bv[NF];
    for (int i = 0; i < MF; ++i) av[i] = Z::load(a[i] + k);
    for (int j = 0; j < NF; ++j) bv[j] = Z::load(b[j] + k);
    for (int i = 0; i < MF; ++i)
      for (int j = 0; j < NF; ++j) s[i][j] = Z::fma(av[i], bv[j], s[i][j]);
  }
  if (k < K) {
    const typename Z::Mask m = Z::mask(K - k);
    typename Z::V av[MF], bv[NF];
    for (int i = 0; i < MF; ++i) av[i] = Z::mload(a[i] + k, m);
    for (int j = 0; j < NF; ++j) bv[j] = Z::mload(b[j] + k, m);
    for (int i = 0; i < MF; ++i)
      for (int j = 0; j < NF; ++j) s[i][j] = Z::fma(av[i], bv[j], s[i][j]);
  }
  for (int i = 0; i < MF; ++i)
    for (int j = 0; j < NF; ++j) {
      const T t = Z::reduce(s[i][j]);
      T& out = c[i * ldc + j];
      out = accumulate ? out + t : t;
    }
}

template <typename T>
void nt_rows(index_t M, index_t N, index_t K, const T* const* a, const T* const* b, T* C,
             index_t ldc, bool accumulate) {
  constexpr int MF = 4, NF = 4;
  index_t i = 0;
  for (; i + MF <= M; i += MF) {
    index_t j = 0;
    for (; j + NF <= N; j += NF)
      dot_tile<T, MF, NF>(K, a + i, b + j, C + i * ldc + j, ldc, accumulate);
    for (; j < N; ++j) dot_tile<T, MF, 1>(K, a + i, b + j, C + i * ldc + j, ldc, accumulate);
  }
  for (; i < M; ++i) {
    index_t j = 0;
    for (; j + NF <= N; j += NF)
      dot_tile<T, 1, NF>(K, a + i, b + j, C + i * ldc + j, ldc, accumulate);
    for (; j < N; ++j) dot_tile<T, 1, 1>(K, a + i, b + j, C + i * ldc + j, ldc, accumulate);
  }
}

// GemmKernel::bf16_pairs_16x16: per column, its 32 floats' bf16 bits gathered into 16 pair
// words (the even k's in the low halves) in one vector; then the 16 x 16 words transposed in
// registers (r[j] lane q -> r[q] lane j) and each row's first `words` stored.
void bf16_pairs_16x16(const float* const* cols, index_t n, index_t words, std::uint16_t* dst,
                      index_t width) {
  const __m512i even =
      _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const __m512i high = _mm512_set1_epi32(int(0xffff0000u));
  __m512 r[16];
  for (int j = 0; j < 16; ++j) {
    if (j >= n) {
      r[j] = _mm512_setzero_ps();
      continue;
    }
    const float* col = cols[j];
    const __m512i a = bf16_high_halves(_mm512_loadu_ps(col));
    const __m512i b = bf16_high_halves(_mm512_loadu_ps(col + 16));
    const __m512i lo = _mm512_srli_epi32(_mm512_permutex2var_epi32(a, even, b), 16);
    const __m512i hi = _mm512_and_si512(_mm512_permutex2var_epi32(a, odd, b), high);
    r[j] = _mm512_castsi512_ps(_mm512_or_si512(lo, hi));
  }
  transpose16x16(r);
  const __mmask16 m = words >= 16 ? __mmask16(0xffff) : __mmask16((1u << words) - 1u);
  for (int q = 0; q < 16; ++q) _mm512_mask_storeu_ps(dst + 2 * q * width, m, r[q]);
}

// GemmKernel::bf16_convert_pairs: per pair of rows, 16 columns at a time, the two rows' bf16
// bits (masked loads: columns past n read as zero) joined into pair words, the even k in the
// low halves, and `width` words stored. The portable loop runs 16 wide only on whole groups of
// 16, which an A panel (12 rows of the bf16 kernel) never has. Row p at src + off[p], or
// src + p*ld without offsets.
void bf16_convert_pairs(index_t n, index_t width, index_t ld, const index_t* off, index_t kc,
                        index_t kc_pad, const float* src, std::uint16_t* dst) {
  const __m512i high = _mm512_set1_epi32(int(0xffff0000u));
  const auto row = [&](index_t p) { return p >= kc ? src : src + (off ? off[p] : p * ld); };
  for (index_t p = 0; p < kc_pad; p += 2) {
    std::uint16_t* d = dst + p * width;  // (p/2)*2width
    const float* s0 = row(p);
    const float* s1 = row(p + 1);
    for (index_t j = 0; j < width; j += 16) {
      const __mmask16 in = p < kc ? first_lanes(n - j) : __mmask16(0);
      const __m512i lo =
          _mm512_srli_epi32(bf16_high_halves(_mm512_maskz_loadu_ps(in, s0 + j)), 16);
      const __mmask16 in1 = p + 1 < kc ? in : __mmask16(0);
      const __m512i hi =
          _mm512_and_si512(bf16_high_halves(_mm512_maskz_loadu_ps(in1, s1 + j)), high);
      _mm512_mask_storeu_epi32(d + 2 * j, first_lanes(width - j), _mm512_or_si512(lo, hi));
    }
  }
}

// 16 chains of FMAs for the peak: 8-10 in flight cover the latency x units of AVX-512 cores
// (4 cycles x 2 units), with 32 zmm registers to spare.
constexpr int kFmaChains = 16;

const GemmKernel<float> kF32{MR,
                             32,
                             &micro_kernel<float>,
                             &micro_kernel<float, true>,
                             &nt_rows<float>,
                             &fma_loop<Zmm<float>, kFmaChains, float>,
                             fma_loop_flops<Zmm<float>, kFmaChains>,
                             &bf16_pairs_16x16,
                             &bf16_convert_pairs};
const GemmKernel<double> kF64{MR,
                              16,
                              &micro_kernel<double>,
                              &micro_kernel<double, true>,
                              &nt_rows<double>,
                              &fma_loop<Zmm<double>, kFmaChains, double>,
                              fma_loop_flops<Zmm<double>, kFmaChains>};

}  // namespace

template <>
const GemmKernel<float>* gemm_kernel_avx512<float>() {
  return &kF32;
}
template <>
const GemmKernel<double>* gemm_kernel_avx512<double>() {
  return &kF64;
}

}  // namespace fastconv

#else

namespace fastconv {
template <>
const GemmKernel<float>* gemm_kernel_avx512<float>() {
  return nullptr;
}
template <>
const GemmKernel<double>* gemm_kernel_avx512<double>() {
  return nullptr;
}
}  // namespace fastconv

#endif
