// AVX2 kernels of 2x2 / stride-2 max and average pooling (float32), the twin of
// pool_avx512.cpp on 8-lane vectors.
// This file alone is compiled with -mavx2 -mfma; it runs only after cpuid says the CPU has it.
// The four candidates of 8 windows are split out of the two input rows by shuffles, compared
// with compare masks and blends, and the indices widened to int64 only for the stores.
#include "pool.h"

#if defined(FASTCONV_X86) && defined(__AVX2__)
#include <immintrin.h>

#include <algorithm>

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

// Lanes [0, n) of v to p (0 < n <= 8): plain stores of 4, 2 and 1 lanes.
inline void store_first(float* p, __m256 v, index_t n) {
  __m128 part = _mm256_castps256_ps128(v);
  if (n >= 4) {
    _mm_storeu_ps(p, part);
    part = _mm256_extractf128_ps(v, 1);
    p += 4;
    n -= 4;
    if (n == 4) {
      _mm_storeu_ps(p, part);
      return;
    }
  }
  if (n & 2) {
    _mm_storel_pi(reinterpret_cast<__m64*>(p), part);
    part = _mm_movehl_ps(part, part);
    p += 2;
  }
  if (n & 1) _mm_store_ss(p, part);
}

// Four int64 lanes, [0, n) loaded, zero elsewhere.
inline __m256i load_first_i64(const std::int64_t* p, index_t n) {
  if (n >= 4) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  const __m256i m = _mm256_cmpgt_epi64(_mm256_set1_epi64x(n < 0 ? 0 : n),
                                       _mm256_setr_epi64x(0, 1, 2, 3));
  return _mm256_maskload_epi64(reinterpret_cast<const long long*>(p), m);
}

// The 8 windows' lanes where rel (two vectors of 4 int64) equals `value`, as a float mask.
inline __m256 lanes_equal(__m256i rel0, __m256i rel1, __m256i value) {
  return evens(_mm256_castsi256_ps(_mm256_cmpeq_epi64(rel0, value)),
               _mm256_castsi256_ps(_mm256_cmpeq_epi64(rel1, value)));
}

// See Pool2x2Kernels::max_backward_plane. 8 windows per step: their gradients (through the
// ReLU's: 0 where relu_y <= 0), each placed at the one of its four inputs its index names
// (0 + g: the scatter's sum onto zero, so -0.0 becomes +0.0 there too) by masking, the two
// rows of 16 inputs made by interleaving; an index naming none of the four fails the plane.
bool max_backward_plane(const float* gy, const std::int64_t* indices, const float* relu_y,
                        index_t PH, index_t PW, index_t H, index_t W, float* gx) {
  const __m256i step = _mm256_setr_epi64x(0, 2, 4, 6), eight = _mm256_set1_epi64x(8);
  const __m256i right = _mm256_set1_epi64x(1), below = _mm256_set1_epi64x(W),
                below_right = _mm256_set1_epi64x(W + 1), zero_i = _mm256_setzero_si256();
  const __m256 zero = _mm256_setzero_ps();
  int bad = 0;
  for (index_t oh = 0; oh < PH; ++oh) {
    float* top = gx + 2 * oh * W;
    float* bottom = top + W;
    for (index_t ow = 0; ow < PW; ow += 8) {
      const index_t n = PW - ow < 8 ? PW - ow : 8, o = oh * PW + ow;
      __m256 g = load_first(gy + o, n);
      if (relu_y)
        g = _mm256_andnot_ps(_mm256_cmp_ps(load_first(relu_y + o, n), zero, _CMP_LE_OQ), g);
      const __m256 v = _mm256_add_ps(zero, g);
      // Offsets of the indices from the windows' top-left inputs (wrapping: any int64 index)
      const __m256i base = _mm256_add_epi64(_mm256_set1_epi64x(2 * oh * W + 2 * ow), step);
      const __m256i rel0 = _mm256_sub_epi64(load_first_i64(indices + o, n), base);
      const __m256i rel1 = _mm256_sub_epi64(load_first_i64(indices + o + 4, n - 4),
                                            _mm256_add_epi64(base, eight));
      const __m256 at_a = lanes_equal(rel0, rel1, zero_i),
                   at_b = lanes_equal(rel0, rel1, right),
                   at_c = lanes_equal(rel0, rel1, below),
                   at_d = lanes_equal(rel0, rel1, below_right);
      const int found = _mm256_movemask_ps(
          _mm256_or_ps(_mm256_or_ps(at_a, at_b), _mm256_or_ps(at_c, at_d)));
      const int want = (1 << n) - 1;
      bad |= (found & want) != want;
      const __m256 a = _mm256_and_ps(v, at_a), b = _mm256_and_ps(v, at_b);
      const __m256 c = _mm256_and_ps(v, at_c), d = _mm256_and_ps(v, at_d);
      // [a0 b0 a1 b1 ... a7 b7] and [c0 d0 ... c7 d7]
      const __m256 ab_lo = _mm256_unpacklo_ps(a, b), ab_hi = _mm256_unpackhi_ps(a, b);
      const __m256 cd_lo = _mm256_unpacklo_ps(c, d), cd_hi = _mm256_unpackhi_ps(c, d);
      const __m256 t0 = _mm256_permute2f128_ps(ab_lo, ab_hi, 0x20),
                   t1 = _mm256_permute2f128_ps(ab_lo, ab_hi, 0x31);
      const __m256 u0 = _mm256_permute2f128_ps(cd_lo, cd_hi, 0x20),
                   u1 = _mm256_permute2f128_ps(cd_lo, cd_hi, 0x31);
      if (n == 8) {
        _mm256_storeu_ps(top + 2 * ow, t0);
        _mm256_storeu_ps(top + 2 * ow + 8, t1);
        _mm256_storeu_ps(bottom + 2 * ow, u0);
        _mm256_storeu_ps(bottom + 2 * ow + 8, u1);
      } else {
        store_first(top + 2 * ow, t0, std::min<index_t>(2 * n, 8));
        store_first(bottom + 2 * ow, u0, std::min<index_t>(2 * n, 8));
        if (n > 4) {
          store_first(top + 2 * ow + 8, t1, 2 * n - 8);
          store_first(bottom + 2 * ow + 8, u1, 2 * n - 8);
        }
      }
    }
    for (index_t c = 2 * PW; c < W; ++c) top[c] = bottom[c] = 0.0f;
  }
  std::fill(gx + 2 * PH * W, gx + H * W, 0.0f);
  return !bad;
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
  static const Pool2x2Kernels k{&max_pool_2x2_plane, &avg_pool_2x2_plane, &max_backward_plane};
  return &k;
}

}  // namespace fastconv

#else

namespace fastconv {
const Pool2x2Kernels* pool_2x2_kernels_avx2() { return nullptr; }
}  // namespace fastconv

#endif
