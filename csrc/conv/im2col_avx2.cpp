// AVX2 row copies of the im2col packing and column matrices (float32), the twin of
// im2col_avx512.cpp on 8-lane vectors, see im2col_rows.h.
// This file alone is compiled with -mavx2 -mfma; it runs only after cpuid says the CPU has it.
// A row of up to 8 columns is one masked load (two and a shuffle at stride 2) and one store;
// the masks skip the padding, whose lanes the loads zero. Partial rows are stored through a
// stack block, not vmaskmovps: its store form is microcoded and slow on AMD's cores.
#include "conv/im2col_rows.h"

#if defined(FASTCONV_X86) && defined(__AVX2__)
#include <immintrin.h>

#include <algorithm>

namespace fastconv {
namespace {

// All ones in the lanes whose entry of `index` lies in [a, b).
inline __m256i within(__m256i index, index_t a, index_t b) {
  const __m256i lo = _mm256_set1_epi32(static_cast<int>(std::clamp<index_t>(a, -1, 16)));
  const __m256i hi = _mm256_set1_epi32(static_cast<int>(std::clamp<index_t>(b, -1, 16)));
  // index >= a and index < b
  return _mm256_andnot_si256(_mm256_cmpgt_epi32(lo, index), _mm256_cmpgt_epi32(hi, index));
}

struct Avx2Rows {
  // The span, and for a row of up to 8 columns the lanes its loads read (two loads at
  // stride 2).
  struct Plan {
    im2col_detail::RowSpan span;
    __m256i load0, load1;
  };

  // The load masks of columns [a, b) of 8 at stride S: at stride 2 source lane v of the two
  // loads holds column v / 2 (4 + v / 2) if v is even; the odd lanes' -1 is in no range.
  template <index_t S>
  static inline void masks(index_t a, index_t b, __m256i& load0, __m256i& load1) {
    if constexpr (S == 1) {
      load0 = within(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), a, b);
    } else {
      a = std::max<index_t>(a, 0);
      load0 = within(_mm256_setr_epi32(0, -1, 1, -1, 2, -1, 3, -1), a, b);
      load1 = within(_mm256_setr_epi32(4, -1, 5, -1, 6, -1, 7, -1), a, b);
    }
  }

  template <index_t S>
  static inline Plan plan(index_t W, index_t first, index_t stride, index_t count) {
    Plan p{im2col_detail::row_span<S>(W, first, stride, count), _mm256_setzero_si256(),
           _mm256_setzero_si256()};
    if constexpr (S != 0) masks<S>(p.span.lo, p.span.hi, p.load0, p.load1);
    return p;
  }

  // Columns [t, t + 8) of the row, from src = row + first + S*t; unread lanes are zero.
  template <index_t S>
  static inline __m256 columns(const float* src, __m256i load0, __m256i load1) {
    if constexpr (S == 1) {
      return _mm256_maskload_ps(src, load0);
    } else {
      const __m256 e0 = _mm256_maskload_ps(src, load0), e1 = _mm256_maskload_ps(src + 8, load1);
      // [e0_0 e0_2 e1_0 e1_2 | e0_4 e0_6 e1_4 e1_6] -> [e0_0 e0_2 e0_4 e0_6 e1_0 .. e1_6]
      return _mm256_castpd_ps(
          _mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(e0, e1, 0x88)), 0xD8));
    }
  }

  static inline void store(float* out, index_t n, __m256 v) {
    if (n >= 8) {
      _mm256_storeu_ps(out, v);
    } else {
      alignas(32) float block[8];
      _mm256_store_ps(block, v);
      std::copy_n(block, n, out);
    }
  }

  template <index_t S>
  static inline void copy(const Plan& p, const float* row, index_t stride, float* out) {
    const im2col_detail::RowSpan& r = p.span;
    if constexpr (S == 0) {
      im2col_detail::ScalarRows<float>::copy<0>(r, row, stride, out);
    } else if (r.count <= 8) {
      store(out, r.count, columns<S>(row + r.first, p.load0, p.load1));
    } else {
      for (index_t t = 0; t < r.count; t += 8) {
        __m256i load0 = _mm256_setzero_si256(), load1 = load0;
        masks<S>(r.lo - t, r.hi - t, load0, load1);
        store(out + t, r.count - t, columns<S>(row + (r.first + S * t), load0, load1));
      }
    }
  }
};

void pack_avx2(const Im2colB<float>& b, index_t pc, index_t kc, index_t jc, index_t nc,
               index_t nr, float* dst) {
  im2col_detail::pack_rows<float, Avx2Rows>(b, pc, kc, jc, nc, nr, dst);
}

void image_avx2(const float* x, index_t C, index_t H, index_t W, const Window2d& win,
                index_t OH, index_t OW, float* cols, index_t ld) {
  im2col_detail::image_rows<float, Avx2Rows>(x, C, H, W, win, OH, OW, cols, ld);
}

}  // namespace

const Im2colKernels* im2col_kernels_avx2() {
  static const Im2colKernels k{&pack_avx2, &image_avx2, nullptr};
  return &k;
}

}  // namespace fastconv

#else

namespace fastconv {
const Im2colKernels* im2col_kernels_avx2() { return nullptr; }
}  // namespace fastconv

#endif
