// AVX-512F kernels of 2x2 / stride-2 max and average pooling (float32), the common pooling
// of CNNs.
// This file alone is compiled with -mavx512f; it runs only after cpuid says the CPU has it.
// The portable kernels (pool.cpp) spend ~8-16 cycles per output on copies through stack
// blocks; here the four candidates of 16 windows are split out of the two input rows by
// permutes, compared with masks, and the indices widened to int64 only for the stores.
#include "pool.h"

#if defined(FASTCONV_X86) && defined(__AVX512F__)
#include <immintrin.h>

namespace fastconv {
namespace {

inline __mmask16 first(index_t n) {
  return static_cast<__mmask16>(n >= 16 ? 0xFFFF : n <= 0 ? 0 : (1u << n) - 1u);
}

// v > best (ordered: false against NaN) or v is NaN: PyTorch's rule, first maximum wins and
// a NaN is replaced only by a later NaN.
inline __mmask16 takes(__m512 v, __m512 best) {
  return _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
}

// The four candidates of windows [o0, o0 + n) (n <= 16) of one row of windows, rows r0 and
// r1: a, b on the top row, c, d below (PyTorch's row-major order); lanes past n zero.
struct Candidates {
  __m512 a, b, c, d;
};
inline Candidates candidates(const float* r0, const float* r1, index_t o0, index_t n) {
  const __m512i even =
      _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  const __mmask16 k0 = first(2 * n), k1 = first(2 * n - 16);
  const float* p0 = r0 + 2 * o0;
  const float* p1 = r1 + 2 * o0;
  const __m512 t0 = _mm512_maskz_loadu_ps(k0, p0), t1 = _mm512_maskz_loadu_ps(k1, p0 + 16);
  const __m512 u0 = _mm512_maskz_loadu_ps(k0, p1), u1 = _mm512_maskz_loadu_ps(k1, p1 + 16);
  return {_mm512_permutex2var_ps(t0, even, t1), _mm512_permutex2var_ps(t0, odd, t1),
          _mm512_permutex2var_ps(u0, even, u1), _mm512_permutex2var_ps(u0, odd, u1)};
}

// One row of windows: inputs rows r0 (row ih of the plane) and r1 = r0 + W, OW outputs.
// Same values and indices as max_pool_2x2_row in pool.cpp.
void max_pool_2x2_row(const float* r0, const float* r1, index_t W, index_t ih, index_t OW,
                      float* y, std::int64_t* idx) {
  const __m512i twice =
      _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i right = _mm512_set1_epi32(1), below = _mm512_set1_epi32(static_cast<int>(W)),
                below_right = _mm512_set1_epi32(static_cast<int>(W + 1));
  for (index_t o0 = 0; o0 < OW; o0 += 16) {
    const index_t n = OW - o0 < 16 ? OW - o0 : 16;
    const Candidates w = candidates(r0, r1, o0, n);
    __m512 best = w.a;
    __m512i off = _mm512_setzero_si512();  // offset of the maximum from the window's corner
    __mmask16 take = takes(w.b, best);
    best = _mm512_mask_mov_ps(best, take, w.b);
    off = _mm512_mask_mov_epi32(off, take, right);
    take = takes(w.c, best);
    best = _mm512_mask_mov_ps(best, take, w.c);
    off = _mm512_mask_mov_epi32(off, take, below);
    take = takes(w.d, best);
    best = _mm512_mask_mov_ps(best, take, w.d);
    off = _mm512_mask_mov_epi32(off, take, below_right);
    // index = ih*W + 2*(o0 + t) + off: the small part in int32 (2t + off <= W + 31), then
    // widened and added to the row's base in int64.
    const __m512i rel = _mm512_add_epi32(twice, off);
    const __m512i base = _mm512_set1_epi64(ih * W + 2 * o0);
    const __m512i lo = _mm512_add_epi64(base, _mm512_cvtepi32_epi64(_mm512_castsi512_si256(rel)));
    const __m512i hi =
        _mm512_add_epi64(base, _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(rel, 1)));
    const __mmask16 ko = first(n);
    _mm512_mask_storeu_ps(y + o0, ko, best);
    _mm512_mask_storeu_epi64(idx + o0, static_cast<__mmask8>(ko), lo);
    _mm512_mask_storeu_epi64(idx + o0 + 8, static_cast<__mmask8>(ko >> 8), hi);
  }
}

// The average of each window, summed in PyTorch's order from 0 (((0 + a) + b) + c) + d, then
// divided by 4: the same bits as avg_pool_2x2_row in pool.cpp.
void avg_pool_2x2_row(const float* r0, const float* r1, index_t OW, float* y) {
  const __m512 four = _mm512_set1_ps(4.0f);
  for (index_t o0 = 0; o0 < OW; o0 += 16) {
    const index_t n = OW - o0 < 16 ? OW - o0 : 16;
    const Candidates w = candidates(r0, r1, o0, n);
    __m512 sum = _mm512_add_ps(_mm512_setzero_ps(), w.a);
    sum = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(sum, w.b), w.c), w.d);
    _mm512_mask_storeu_ps(y + o0, first(n), _mm512_div_ps(sum, four));
  }
}

}  // namespace

const Pool2x2Kernels* pool_2x2_kernels_avx512() {
  static const Pool2x2Kernels k{&max_pool_2x2_row, &avg_pool_2x2_row};
  return &k;
}

}  // namespace fastconv

#else

namespace fastconv {
const Pool2x2Kernels* pool_2x2_kernels_avx512() { return nullptr; }
}  // namespace fastconv

#endif
