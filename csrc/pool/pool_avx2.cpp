// AVX2 kernels of 2x2 / stride-2 max and average pooling (float32), the twin of
// pool_avx512.cpp on 8-lane vectors.
// This file alone is compiled with -mavx2 -mfma; it runs only after cpuid says the CPU has it.
// The four candidates of 8 windows are split out of the two input rows by shuffles, compared
// with compare masks and blends, and the indices widened to int64 only for the stores.
#include "pool/pool.h"

#if defined(FASTCONV_X86) && defined(__AVX2__)
#include <immintrin.h>

namespace fastconv {
namespace {

// Lanes [0, n) set, as a load mask (n <= 8).
inline __m256i first(index_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n < 0 ? 0 : n)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

inline __m256 load_first(const float* p, index_t n) {
  return n >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, first(n));
}

// The even (odd) elements of t0 then t1: the left (right) inputs of 8 windows over the 16
// values t0, t1 (a shuffle within 128-bit halves, then the 64-bit quarters put in order).
inline __m256 evens(__m256 t0, __m256 t1) {
  const __m256 s = _mm256_shuffle_ps(t0, t1, 0x88);
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(s), 0xD8));
}
inline __m256 odds(__m256 t0, __m256 t1) {
  const __m256 s = _mm256_shuffle_ps(t0, t1, 0xDD);
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(s), 0xD8));
}

// The four candidates of 8 windows: a, b on the top row, c, d below (PyTorch's row-major
// order). Lane t < 4 is window t of the inputs t0 (top) and u0 (below), lane 4 + t window t
// of (t1, u1): the second half of one wide row of windows, or the next row of windows of a
// narrow plane. Vectors hold 8 input columns each.
struct Candidates {
  __m256 a, b, c, d;
};
inline Candidates candidates(__m256 t0, __m256 t1, __m256 u0, __m256 u1) {
  return {evens(t0, t1), odds(t0, t1), evens(u0, u1), odds(u0, u1)};
}

// v > best (ordered: false against NaN) or v is NaN: PyTorch's rule, first maximum wins and
// a NaN is replaced only by a later NaN.
inline __m256 takes(__m256 v, __m256 best) {
  return _mm256_or_ps(_mm256_cmp_ps(v, best, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
}

// The maximum of each window in the rule of `takes`, with its offset from the window's
// top-left input (0, 1, W or W + 1) as int32 lanes.
inline __m256 window_max(const Candidates& w, index_t W, __m256i& off) {
  const __m256 right = _mm256_castsi256_ps(_mm256_set1_epi32(1));
  const __m256 below = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(W)));
  const __m256 below_right = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(W + 1)));
  __m256 best = w.a, where = _mm256_setzero_ps();
  __m256 take = takes(w.b, best);
  best = _mm256_blendv_ps(best, w.b, take);
  where = _mm256_blendv_ps(where, right, take);
  take = takes(w.c, best);
  best = _mm256_blendv_ps(best, w.c, take);
  where = _mm256_blendv_ps(where, below, take);
  take = takes(w.d, best);
  best = _mm256_blendv_ps(best, w.d, take);
  where = _mm256_blendv_ps(where, below_right, take);
  off = _mm256_castps_si256(where);
  return best;
}

// Summed in PyTorch's order from 0, (((0 + a) + b) + c) + d, then divided by 4.
inline __m256 window_mean(const Candidates& w) {
  const __m256 sum = _mm256_add_ps(_mm256_setzero_ps(), w.a);
  return _mm256_div_ps(_mm256_add_ps(_mm256_add_ps(_mm256_add_ps(sum, w.b), w.c), w.d),
                       _mm256_set1_ps(4.0f));
}

// Lanes [0, n) (n <= 4) of the window results v and, for max pooling, of their int64 input
// indices ix to y and idx: plain vector stores of 4, 2 and 1 lanes (a masked store costs ~20
// cycles on AMD Zen; results staged through memory for scalar copies stall on store-to-load
// forwarding).
template <bool kMax>
inline void store_lanes(__m128 v, __m256i ix, index_t n, float* y, std::int64_t* idx) {
  if (n == 4) {
    _mm_storeu_ps(y, v);
    if constexpr (kMax) _mm256_storeu_si256(reinterpret_cast<__m256i*>(idx), ix);
    return;
  }
  __m128i part = _mm256_castsi256_si128(ix);
  if (n & 2) {
    _mm_storel_pi(reinterpret_cast<__m64*>(y), v);
    if constexpr (kMax) _mm_storeu_si128(reinterpret_cast<__m128i*>(idx), part);
    v = _mm_movehl_ps(v, v);
    part = _mm256_extracti128_si256(ix, 1);
    y += 2;
    if constexpr (kMax) idx += 2;
  }
  if (n & 1) {
    _mm_store_ss(y, v);
    if constexpr (kMax) _mm_storel_epi64(reinterpret_cast<__m128i*>(idx), part);
  }
}

// Stores the results of 8 windows, lanes 0-3 and lanes 4-7 each to a place of their own (the
// two halves of a wide row of windows, or two narrow rows): n_lo / n_hi windows (<= 4) at the
// outputs at_lo / at_hi, and lane l's index is base_lo / base_hi + 2l + its offset.
template <bool kMax>
inline void store_windows(const Candidates& w, index_t W, index_t n_lo, index_t n_hi,
                          index_t at_lo, index_t at_hi, std::int64_t base_lo,
                          std::int64_t base_hi, float* y, std::int64_t* idx) {
  __m256 v;
  __m256i ix_lo = _mm256_setzero_si256(), ix_hi = _mm256_setzero_si256();
  if constexpr (kMax) {
    __m256i off;
    v = window_max(w, W, off);
    const __m256i rel = _mm256_add_epi32(_mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14), off);
    ix_lo = _mm256_add_epi64(_mm256_set1_epi64x(base_lo),
                             _mm256_cvtepi32_epi64(_mm256_castsi256_si128(rel)));
    ix_hi = _mm256_add_epi64(_mm256_set1_epi64x(base_hi),
                             _mm256_cvtepi32_epi64(_mm256_extracti128_si256(rel, 1)));
  } else {
    v = window_mean(w);
  }
  if (n_lo > 0)
    store_lanes<kMax>(_mm256_castps256_ps128(v), ix_lo, n_lo, y + at_lo,
                      kMax ? idx + at_lo : nullptr);
  if (n_hi > 0)
    store_lanes<kMax>(_mm256_extractf128_ps(v, 1), ix_hi, n_hi, y + at_hi,
                      kMax ? idx + at_hi : nullptr);
}

// One plane (W wide, OH x OW windows wholly inside it). Rows of windows at most 4 wide go two
// per step, one in each half of the vectors; wider rows 8 windows per step.
template <bool kMax>
void pool_plane(const float* x, index_t W, index_t OH, index_t OW, float* y, std::int64_t* idx) {
  if (OW <= 4) {
    for (index_t oh = 0; oh < OH; oh += 2) {
      const bool pair = oh + 1 < OH;  // else the upper half is zero and not stored
      const float* r = x + 2 * oh * W;
      const __m256 t0 = load_first(r, 2 * OW), u0 = load_first(r + W, 2 * OW);
      const __m256 t1 = pair ? load_first(r + 2 * W, 2 * OW) : _mm256_setzero_ps();
      const __m256 u1 = pair ? load_first(r + 3 * W, 2 * OW) : _mm256_setzero_ps();
      // Lane 4 + t is window t of input row 2oh + 2: base (2oh + 2)W - 8.
      store_windows<kMax>(candidates(t0, t1, u0, u1), W, OW, pair ? OW : 0, oh * OW,
                          (oh + 1) * OW, 2 * oh * W, (2 * oh + 2) * W - 8, y, idx);
    }
    return;
  }
  for (index_t oh = 0; oh < OH; ++oh) {
    const float* r0 = x + 2 * oh * W;
    const float* r1 = r0 + W;
    for (index_t o0 = 0; o0 < OW; o0 += 8) {
      const index_t n = OW - o0 < 8 ? OW - o0 : 8;
      const float* p0 = r0 + 2 * o0;
      const float* p1 = r1 + 2 * o0;
      const Candidates w =
          candidates(load_first(p0, 2 * n), load_first(p0 + 8, 2 * n - 8),
                     load_first(p1, 2 * n), load_first(p1 + 8, 2 * n - 8));
      const index_t at = oh * OW + o0;
      const std::int64_t base = 2 * oh * W + 2 * o0;
      store_windows<kMax>(w, W, n < 4 ? n : 4, n > 4 ? n - 4 : 0, at, at + 4, base, base, y,
                          idx);
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

const Pool2x2Kernels* pool_2x2_kernels_avx2() {
  static const Pool2x2Kernels k{&max_pool_2x2_plane, &avg_pool_2x2_plane};
  return &k;
}

}  // namespace fastconv

#else

namespace fastconv {
const Pool2x2Kernels* pool_2x2_kernels_avx2() { return nullptr; }
}  // namespace fastconv

#endif
