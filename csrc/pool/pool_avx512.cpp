// AVX-512F kernels of 2x2 / stride-2 max and average pooling (float32), the common pooling
// of CNNs.
// This file alone is compiled with -mavx512f; it runs only after cpuid says the CPU has it.
// The portable kernels (pool.cpp) spend ~8-16 cycles per output on copies through stack
// blocks; here the four candidates of 16 windows are split out of the two input rows by
// permutes, compared with masks, and the indices widened to int64 only for the stores.
#include "pool/pool.h"

#if defined(FASTCONV_X86) && defined(__AVX512F__)
#include <immintrin.h>

#include "simd_avx512.h"

namespace fastconv {
namespace {

// v > best (ordered: false against NaN) or v is NaN: PyTorch's rule, first maximum wins and
// a NaN is replaced only by a later NaN.
inline __mmask16 takes(__m512 v, __m512 best) {
  return _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
}

// The four candidates of 16 windows: a, b on the top row, c, d below (PyTorch's row-major
// order). Lane t < 8 is window t of the input rows (t0 top, u0 below), lane 8 + t window t of
// (t1, u1): the second half of one wide row of windows, or the next row of windows of a
// narrow plane. Vectors hold 16 input columns each.
struct Candidates {
  __m512 a, b, c, d;
};
inline Candidates candidates(__m512 t0, __m512 t1, __m512 u0, __m512 u1) {
  const __m512i even =
      _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  return {_mm512_permutex2var_ps(t0, even, t1), _mm512_permutex2var_ps(t0, odd, t1),
          _mm512_permutex2var_ps(u0, even, u1), _mm512_permutex2var_ps(u0, odd, u1)};
}

// The maximum of each window in the rule of `takes`, with its offset from the window's
// top-left input: 0, 1, W or W + 1.
inline __m512 window_max(const Candidates& w, index_t W, __m512i& off) {
  const __m512i right = _mm512_set1_epi32(1), below = _mm512_set1_epi32(static_cast<int>(W)),
                below_right = _mm512_set1_epi32(static_cast<int>(W + 1));
  __m512 best = w.a;
  off = _mm512_setzero_si512();
  __mmask16 take = takes(w.b, best);
  best = _mm512_mask_mov_ps(best, take, w.b);
  off = _mm512_mask_mov_epi32(off, take, right);
  take = takes(w.c, best);
  best = _mm512_mask_mov_ps(best, take, w.c);
  off = _mm512_mask_mov_epi32(off, take, below);
  take = takes(w.d, best);
  best = _mm512_mask_mov_ps(best, take, w.d);
  off = _mm512_mask_mov_epi32(off, take, below_right);
  return best;
}

// Summed in PyTorch's order from 0, (((0 + a) + b) + c) + d, then divided by 4.
inline __m512 window_mean(const Candidates& w) {
  const __m512 sum = _mm512_add_ps(_mm512_setzero_ps(), w.a);
  return _mm512_div_ps(_mm512_add_ps(_mm512_add_ps(_mm512_add_ps(sum, w.b), w.c), w.d),
                       _mm512_set1_ps(4.0f));
}

// Flat indices of the 8 windows of one half of the vectors (hi: lanes 8-15): base + 2l +
// off[l] for lane l, the small part in int32 (2l + off <= W + 31), the sum in int64.
inline __m512i indices(__m512i off, bool hi, std::int64_t base) {
  const __m512i twice =
      _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i rel = _mm512_add_epi32(twice, off);
  const __m256i half = hi ? _mm512_extracti64x4_epi64(rel, 1) : _mm512_castsi512_si256(rel);
  return _mm512_add_epi64(_mm512_set1_epi64(base), _mm512_cvtepi32_epi64(half));
}

// Stores the results of 16 windows, lanes 0-7 and lanes 8-15 each to a place of their own (the
// two halves of a wide row of windows, or two narrow rows): k_lo / k_hi select the windows,
// at_lo / at_hi are the outputs of the halves' first lanes (lanes 0 and 8), and lane l's
// index is base_lo / base_hi + 2l + its offset.
template <bool kMax>
inline void store_windows(const Candidates& w, index_t W, __mmask8 k_lo, __mmask8 k_hi,
                          index_t at_lo, index_t at_hi, std::int64_t base_lo,
                          std::int64_t base_hi, float* y, std::int64_t* idx) {
  __m512 v;
  if constexpr (kMax) {
    __m512i off;
    v = window_max(w, W, off);
    _mm512_mask_storeu_epi64(idx + at_lo, k_lo, indices(off, false, base_lo));
    _mm512_mask_storeu_epi64(idx + at_hi, k_hi, indices(off, true, base_hi));
  } else {
    v = window_mean(w);
  }
  _mm512_mask_storeu_ps(y + at_lo, k_lo, v);
  _mm512_mask_storeu_ps(y + at_hi - 8, static_cast<__mmask16>(k_hi) << 8, v);
}

// One plane (W wide, OH x OW windows wholly inside it). Rows of windows at most 8 wide go two
// per step, one in each half of the vectors; wider rows 16 windows per step.
template <bool kMax>
void pool_plane(const float* x, index_t W, index_t OH, index_t OW, float* y, std::int64_t* idx) {
  if (OW <= 8) {
    const __mmask16 k = first_lanes(2 * OW);
    const __mmask8 ko = static_cast<__mmask8>(first_lanes(OW));
    for (index_t oh = 0; oh < OH; oh += 2) {
      const bool pair = oh + 1 < OH;  // else the upper half is zero and not stored
      const float* r = x + 2 * oh * W;
      const __m512 t0 = _mm512_maskz_loadu_ps(k, r), u0 = _mm512_maskz_loadu_ps(k, r + W);
      const __m512 t1 = pair ? _mm512_maskz_loadu_ps(k, r + 2 * W) : _mm512_setzero_ps();
      const __m512 u1 = pair ? _mm512_maskz_loadu_ps(k, r + 3 * W) : _mm512_setzero_ps();
      // Lane 8 + t is window t of input row 2oh + 2: base (2oh + 2)W - 16.
      store_windows<kMax>(candidates(t0, t1, u0, u1), W, ko, pair ? ko : 0, oh * OW,
                          (oh + 1) * OW, 2 * oh * W, (2 * oh + 2) * W - 16, y, idx);
    }
    return;
  }
  for (index_t oh = 0; oh < OH; ++oh) {
    const float* r0 = x + 2 * oh * W;
    const float* r1 = r0 + W;
    for (index_t o0 = 0; o0 < OW; o0 += 16) {
      const index_t n = OW - o0 < 16 ? OW - o0 : 16;
      const __mmask16 k0 = first_lanes(2 * n), k1 = first_lanes(2 * n - 16);
      const float* p0 = r0 + 2 * o0;
      const float* p1 = r1 + 2 * o0;
      const Candidates w =
          candidates(_mm512_maskz_loadu_ps(k0, p0), _mm512_maskz_loadu_ps(k1, p0 + 16),
                     _mm512_maskz_loadu_ps(k0, p1), _mm512_maskz_loadu_ps(k1, p1 + 16));
      const __mmask16 ko = first_lanes(n);
      const index_t at = oh * OW + o0;
      const std::int64_t base = 2 * oh * W + 2 * o0;
      store_windows<kMax>(w, W, static_cast<__mmask8>(ko), static_cast<__mmask8>(ko >> 8), at,
                          at + 8, base, base, y, idx);
    }
  }
}

void max_pool_2x2_plane(const float* x, index_t W, index_t OH, index_t OW, float* y,
                        std::int64_t* idx) {
  pool_plane<true>(x, W, OH, OW, y, idx);
}

void avg_pool_2x2_plane(const float* x, index_t W, index_t OH, index_t OW, float* y) {
  pool_plane<false>(x, W, OH, OW, y, nullptr);
}

}  // namespace

const Pool2x2Kernels* pool_2x2_kernels_avx512() {
  static const Pool2x2Kernels k{&max_pool_2x2_plane, &avg_pool_2x2_plane};
  return &k;
}

}  // namespace fastconv

#else

namespace fastconv {
const Pool2x2Kernels* pool_2x2_kernels_avx512() { return nullptr; }
}  // namespace fastconv

#endif
