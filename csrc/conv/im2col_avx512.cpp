// AVX-512 row copies of the im2col packing and column matrices (float32), see im2col_rows.h,
// and col2im of small planes in registers.
// This file alone is compiled with -mavx512f; it runs only after cpuid says the CPU has it.
// A row of up to 16 columns is one masked load (two and a permute at stride 2) and one masked
// store: the masks skip the padding, whose lanes the loads zero, so no element outside the
// row is read and no bounds are checked per element.
#include "conv/im2col_rows.h"

#if defined(FASTCONV_X86) && defined(__AVX512F__)
#include <immintrin.h>

#include <cstdint>

#include "simd_avx512.h"

namespace fastconv {
namespace {

// Lanes [a, b) of 16, a and b clamped to [0, 16].
inline __mmask16 lanes(index_t a, index_t b) {
  return static_cast<__mmask16>(first_lanes(b) & ~first_lanes(a));
}

// Bit u of m moved to bit 2u (the even source lanes of a stride-2 row).
inline std::uint32_t spread_to_even(std::uint32_t m) {
  m = (m | (m << 8)) & 0x00FF00FFu;
  m = (m | (m << 4)) & 0x0F0F0F0Fu;
  m = (m | (m << 2)) & 0x33333333u;
  return (m | (m << 1)) & 0x55555555u;
}

struct Avx512Rows {
  // The span, and for a row of up to 16 columns its masks: the lanes loaded (two loads at
  // stride 2: source lanes 2u) and stored.
  struct Plan {
    im2col_detail::RowSpan span;
    __mmask16 load0, load1, store;
  };

  template <index_t S>
  static inline Plan plan(index_t W, index_t first, index_t stride, index_t count) {
    Plan p{im2col_detail::row_span<S>(W, first, stride, count), 0, 0, 0};
    const __mmask16 in = lanes(p.span.lo, p.span.hi);
    const std::uint32_t m = S == 2 ? spread_to_even(in) : in;
    p.load0 = static_cast<__mmask16>(m);
    p.load1 = static_cast<__mmask16>(m >> 16);
    p.store = lanes(0, count);
    return p;
  }

  // Columns [t, t + 16) of the row: lane u reads row[first + S*(t + u)] where `load0`
  // (`load1`: the second source vector at stride 2) has its bit; the other lanes are zero.
  template <index_t S>
  static inline __m512 columns(const float* src, __mmask16 load0, __mmask16 load1) {
    if constexpr (S == 1) {
      return _mm512_maskz_loadu_ps(load0, src);
    } else {
      const __m512i even =
          _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
      return _mm512_permutex2var_ps(_mm512_maskz_loadu_ps(load0, src), even,
                                    _mm512_maskz_loadu_ps(load1, src + 16));
    }
  }

  template <index_t S>
  static inline void copy(const Plan& p, const float* row, index_t stride, float* out) {
    const im2col_detail::RowSpan& r = p.span;
    if constexpr (S == 0) {
      im2col_detail::ScalarRows<float>::copy<0>(r, row, stride, out);
    } else if (r.count <= 16) {
      _mm512_mask_storeu_ps(out, p.store, columns<S>(row + r.first, p.load0, p.load1));
    } else {
      for (index_t t = 0; t < r.count; t += 16) {
        const __mmask16 in = lanes(r.lo - t, r.hi - t);
        const std::uint32_t m = S == 2 ? spread_to_even(in) : in;
        _mm512_mask_storeu_ps(out + t, lanes(0, r.count - t),
                              columns<S>(row + (r.first + S * t), static_cast<__mmask16>(m),
                                         static_cast<__mmask16>(m >> 16)));
      }
    }
  }
};

void pack_avx512(const Im2colB<float>& b, index_t pc, index_t kc, index_t jc, index_t nc,
                 index_t nr, float* dst) {
  im2col_detail::pack_rows<float, Avx512Rows>(b, pc, kc, jc, nc, nr, dst);
}

void image_avx512(const float* x, index_t C, index_t H, index_t W, const Window2d& win,
                  index_t OH, index_t OW, float* cols, index_t ld) {
  im2col_detail::image_rows<float, Avx512Rows>(x, C, H, W, win, OH, OW, cols, ld);
}

// col2im for outputs of at most 16 values on planes of at most 64 (the last stages of a
// ResNet on 32x32 images: 4x4 outputs of 4x4 or, at stride 2, 8x8 images): each channel's
// plane is up to 4 registers, each column row one, and each tap (i, j) adds its row moved
// into place by one permute per register it reaches, masked to the positions it reaches,
// where the scalar loop spent a row's setup on every 1-4 values. Every element takes at most
// one term per tap, in the scalar loop's (i, j) order: the same sums.
bool col2im_small_avx512(const float* cols, index_t ld, index_t C, index_t H, index_t W,
                         const Window2d& w, index_t OH, index_t OW, float* x) {
  constexpr index_t kMaxTaps = 64, kMaxParts = 4;
  const index_t HW = H * W, L = OH * OW, taps = w.KH * w.KW, parts = ceil_div(HW, 16);
  if (HW > 16 * kMaxParts || L > 16 || taps > kMaxTaps) return false;
  // index[t][q][e]: the column of tap t's row that plane element 16q + e takes.
  alignas(64) std::int32_t index[kMaxTaps][kMaxParts][16];
  __mmask16 reach[kMaxTaps][kMaxParts];
  for (index_t i = 0; i < w.KH; ++i)
    for (index_t j = 0; j < w.KW; ++j) {
      const index_t t = i * w.KW + j;
      for (index_t q = 0; q < parts; ++q) {
        reach[t][q] = 0;
        for (index_t e = 0; e < 16; ++e) {
          const index_t v = 16 * q + e;
          index[t][q][e] = 0;
          if (v >= HW) continue;
          // Input (ih, iw) takes column (oh, ow) of this tap where ih = oh*SH - PH + i*DH.
          const index_t dh = v / W + w.PH - i * w.DH, dw = v % W + w.PW - j * w.DW;
          if (dh < 0 || dw < 0 || dh % w.SH || dw % w.SW || dh / w.SH >= OH || dw / w.SW >= OW)
            continue;
          index[t][q][e] = static_cast<std::int32_t>(dh / w.SH * OW + dw / w.SW);
          reach[t][q] = static_cast<__mmask16>(reach[t][q] | (1u << e));
        }
      }
    }
  const __mmask16 row_lanes = lanes(0, L);
  for (index_t c = 0; c < C; ++c) {
    float* xc = x + c * HW;
    __m512 plane[kMaxParts];
    for (index_t q = 0; q < parts; ++q)
      plane[q] = _mm512_maskz_loadu_ps(lanes(0, HW - 16 * q), xc + 16 * q);
    for (index_t t = 0; t < taps; ++t) {
      const __m512 row = _mm512_maskz_loadu_ps(row_lanes, cols + (c * taps + t) * ld);
      for (index_t q = 0; q < parts; ++q)
        if (reach[t][q])
          plane[q] = _mm512_mask_add_ps(
              plane[q], reach[t][q], plane[q],
              _mm512_permutexvar_ps(_mm512_load_si512(index[t][q]), row));
    }
    for (index_t q = 0; q < parts; ++q)
      _mm512_mask_storeu_ps(xc + 16 * q, lanes(0, HW - 16 * q), plane[q]);
  }
  return true;
}

}  // namespace

const Im2colKernels* im2col_kernels_avx512() {
  static const Im2colKernels k{&pack_avx512, &image_avx512, &col2im_small_avx512};
  return &k;
}

}  // namespace fastconv

#else

namespace fastconv {
const Im2colKernels* im2col_kernels_avx512() { return nullptr; }
}  // namespace fastconv

#endif
