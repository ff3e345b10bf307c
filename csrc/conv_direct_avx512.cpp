// AVX-512 register tiles of the direct channels-last convolution (see conv_direct.h).
// This file alone is compiled with -mavx512f; it runs only after cpuid says the CPU has it.
// It holds leaf kernels only (no shared inline templates), so no AVX-512 code can leak into
// the portable parts of the library through the linker's choice of an inline copy.
#include "conv_direct.h"

#if defined(FASTCONV_X86) && defined(__AVX512F__)
#include <immintrin.h>

#include <cstring>
#include <utility>

namespace fastconv {
namespace {

constexpr int kMaxMR[DirectKernels::kMaxNV + 1] = {0, 24, 14, 9, 6};

// MR pixels (pixel i at in + pix[i]) x NV*16 output channels. Each step of the reduction
// loads NV weight vectors and broadcasts one input value per pixel.
template <int MR, int NV>
void forward_tile(const float* in, const index_t* pix, const index_t* tap_off, index_t taps,
                  index_t C, const float* w, index_t ldw, float* out, index_t ldo,
                  bool accumulate) {
  __m512 acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j)
      acc[i][j] = accumulate ? _mm512_loadu_ps(out + i * ldo + 16 * j) : _mm512_setzero_ps();
  for (index_t t = 0; t < taps; ++t) {
    const float* px[MR];
    for (int i = 0; i < MR; ++i) px[i] = in + pix[i] + tap_off[t];
    const float* wt = w + t * C * ldw;
    for (index_t c = 0; c < C; ++c) {
      __m512 wv[NV];
      for (int j = 0; j < NV; ++j) wv[j] = _mm512_loadu_ps(wt + c * ldw + 16 * j);
#pragma GCC unroll 24
      for (int i = 0; i < MR; ++i) {
        const __m512 b = _mm512_set1_ps(px[i][c]);
        for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_fmadd_ps(b, wv[j], acc[i][j]);
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) _mm512_storeu_ps(out + i * ldo + 16 * j, acc[i][j]);
}

// MR input channels (contiguous) x NV*16 output channels of one tap, summed over a grid of
// rows x cols output positions. Each step loads NV gradient vectors and broadcasts MR inputs.
template <int MR, int NV>
void weight_grad_tile(const float* x, index_t ps, index_t xrs, index_t rows, index_t cols,
                      const float* gy, index_t ldg, float* gw, index_t ldw, bool accumulate) {
  __m512 acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j)
      acc[i][j] = accumulate ? _mm512_loadu_ps(gw + i * ldw + 16 * j) : _mm512_setzero_ps();
  for (index_t r = 0; r < rows; ++r) {
    const float* xr = x + r * xrs;
    const float* gr = gy + r * cols * ldg;
    for (index_t q = 0; q < cols; ++q) {
      const float* xq = xr + q * ps;
      __m512 gv[NV];
      for (int j = 0; j < NV; ++j) gv[j] = _mm512_loadu_ps(gr + q * ldg + 16 * j);
#pragma GCC unroll 24
      for (int i = 0; i < MR; ++i) {
        const __m512 b = _mm512_set1_ps(xq[i]);
        for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_fmadd_ps(b, gv[j], acc[i][j]);
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) _mm512_storeu_ps(gw + i * ldw + 16 * j, acc[i][j]);
}

// In-register transpose of a 16 x 16 block: r[i] lane j <-> r[j] lane i.
inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int h = 0; h < 16; h += 8)
    for (int i = 0; i < 4; ++i) {
      t[h + i] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0x88);
      t[h + i + 4] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0xDD);
    }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
  }
}

inline __mmask16 first(index_t n) { return static_cast<__mmask16>(n >= 16 ? 0xFFFF : (1u << n) - 1u); }

// dst (Hp x Wp x ld, channels last) <- src (C x H x W) at offset (pt, pl), zero elsewhere.
// Transposes 16 channels x 16 consecutive pixels of the flattened plane at a time (so narrow
// images fill whole vectors: an 8-wide image gives two rows per load); only the border
// pixels are zeroed separately.
bool to_channels_last(const float* src, index_t C, index_t H, index_t W, index_t pt, index_t pl,
                      index_t Hp, index_t Wp, index_t ld, float* dst) {
  const index_t h0 = pt < 0 ? -pt : 0, h1 = H < Hp - pt ? H : Hp - pt;
  const index_t w0 = pl < 0 ? -pl : 0, w1 = W < Wp - pl ? W : Wp - pl;
  // Border (and any channel lanes the stores below do not write): zero.
  // Whole 16-lane stores when the channels fill the row to a multiple of 16 (they also zero
  // the channel padding), else masked stores.
  const bool full_lanes = ld % 16 == 0 && ld - C < 16;
  for (index_t r = 0; r < Hp; ++r) {
    float* row = dst + r * Wp * ld;
    const index_t h = r - pt;
    if (h < h0 || h >= h1 || !full_lanes) {
      std::memset(row, 0, sizeof(float) * Wp * ld);
    } else {
      std::memset(row, 0, sizeof(float) * (w0 + pl) * ld);
      std::memset(row + (w1 + pl) * ld, 0, sizeof(float) * (Wp - w1 - pl) * ld);
    }
  }
  if (h1 <= h0 || w1 <= w0) return false;
  const index_t HW = H * W;
  const index_t l_begin = h0 * W, l_end = (h1 - 1) * W + W;
  __m512 r[16];
  // x - x is 0 for finite x, NaN for ±inf and NaN: one compare per loaded vector.
  __mmask16 nonfinite = 0;
  for (index_t c0 = 0; c0 < C; c0 += 16) {
    const index_t cb = C - c0 < 16 ? C - c0 : 16;
    const __mmask16 mc = first(cb);
    for (index_t l0 = l_begin; l0 < l_end; l0 += 16) {
      const index_t lb = l_end - l0 < 16 ? l_end - l0 : 16;
      const __mmask16 m = first(lb);
      for (int c = 0; c < 16; ++c) {
        if (c < cb) {
          const float* p = src + (c0 + c) * HW + l0;
          // 16 planes read side by side, often 4 KiB apart: more streams than the hardware
          // prefetcher follows well; fetch each a few lines ahead.
          _mm_prefetch(reinterpret_cast<const char*>(p + 64), _MM_HINT_T0);
          r[c] = _mm512_maskz_loadu_ps(m, p);
          nonfinite |= _mm512_cmp_ps_mask(_mm512_sub_ps(r[c], r[c]), _mm512_setzero_ps(),
                                          _CMP_NEQ_UQ);
        } else {
          r[c] = _mm512_setzero_ps();
        }
      }
      transpose16(r);
      index_t h = l0 / W, w = l0 % W;
      // A constant trip count, fully unrolled: r[q] then names a register (a variable index
      // spilled all 16 vectors to the stack).
#pragma GCC unroll 16
      for (int q = 0; q < 16; ++q) {
        if (q >= lb) break;
        if (w >= w0 && w < w1) {
          float* d = dst + ((h + pt) * Wp + w + pl) * ld + c0;
          if (full_lanes) _mm512_storeu_ps(d, r[q]);
          else _mm512_mask_storeu_ps(d, mc, r[q]);
        }
        if (++w == W) {
          w = 0;
          ++h;
        }
      }
    }
  }
  return nonfinite != 0;
}

// dst (C x L) <- src (L x ld, channels last) + bias[c] (when given).
void from_channels_last(const float* src, index_t ld, index_t C, index_t L, const float* bias,
                        float* dst) {
  __m512 r[16];
  for (index_t c0 = 0; c0 < C; c0 += 16) {
    const index_t cb = C - c0 < 16 ? C - c0 : 16;
    const __mmask16 mc = first(cb);
    for (index_t l = 0; l < L; l += 16) {
      const index_t lb = L - l < 16 ? L - l : 16;
      for (int q = 0; q < 16; ++q)
        r[q] = q < lb ? _mm512_maskz_loadu_ps(mc, src + (l + q) * ld + c0) : _mm512_setzero_ps();
      transpose16(r);
      const __mmask16 m = first(lb);
      for (index_t c = 0; c < cb; ++c) {
        const __m512 v = bias ? _mm512_add_ps(r[c], _mm512_set1_ps(bias[c0 + c])) : r[c];
        _mm512_mask_storeu_ps(dst + (c0 + c) * L + l, m, v);
      }
    }
  }
}

// See DirectKernels::small_c_tile: F output channels x V vectors (F*V = 24 accumulators).
template <int F, int V>
void small_c_tile(const float* const* rows, const index_t* off, index_t steps, const float* w,
                  const float* bias, float* const* out, index_t fstride, index_t nf,
                  const index_t* lanes) {
  __m512 acc[F][V];
  for (int i = 0; i < F; ++i) {
    const __m512 b = _mm512_set1_ps(bias && i < nf ? bias[i] : 0.0f);
    for (int j = 0; j < V; ++j) acc[i][j] = b;
  }
  const float* r[V];
  for (int j = 0; j < V; ++j) r[j] = rows[j];
  for (index_t s = 0; s < steps; ++s) {
    const index_t o = off[s];
    __m512 x[V];
    for (int j = 0; j < V; ++j) x[j] = _mm512_loadu_ps(r[j] + o);
    const float* ws = w + s * F;
#pragma GCC unroll 8
    for (int i = 0; i < F; ++i) {
      const __m512 wi = _mm512_set1_ps(ws[i]);
      for (int j = 0; j < V; ++j) acc[i][j] = _mm512_fmadd_ps(wi, x[j], acc[i][j]);
    }
  }
  for (int j = 0; j < V; ++j) {
    if (lanes[j] <= 0) continue;
    const __mmask16 m = first(lanes[j]);
    for (int i = 0; i < F; ++i)
      if (i < nf) _mm512_mask_storeu_ps(out[j] + i * fstride, m, acc[i][j]);
  }
}

// See DirectKernels::small_c_weight_grad. Registers: NF*KW accumulators, NF gradient vectors
// and one input vector (NF*KW + NF + 1 <= 32); each input vector serves NF channels.
template <int NF, int KW>
void small_c_weight_grad(const float* xp, index_t C, index_t plane, index_t Wp, const float* gy,
                         index_t OH, index_t OW, index_t KH, index_t DH, index_t DW, float* acc,
                         float* gpack, bool accumulate, const float* next, index_t next_bytes) {
  const index_t L = OH * OW, taps = C * KH * KW;
  const index_t vecs = (OW + 15) / 16, full = OW / 16;
  const __mmask16 tail = first(OW % 16);
  // The NF gradient planes lie L*4 bytes apart (4 KiB for 32x32 outputs: the same L1 sets,
  // which thrash). Interleave them once, [oh][vector][i][16] with zero lanes past OW; every
  // (c, kh) pass then reads them in order.
  for (int i = 0; i < NF; ++i) {
    const float* src = gy + i * L;
    float* dst = gpack + 16 * i;
    for (index_t oh = 0; oh < OH; ++oh, src += OW) {
      for (index_t v = 0; v < full; ++v, dst += NF * 16)
        _mm512_store_ps(dst, _mm512_loadu_ps(src + 16 * v));
      if (tail) {
        _mm512_store_ps(dst, _mm512_maskz_loadu_ps(tail, src + 16 * full));
        dst += NF * 16;
      }
    }
  }
  const PrefetchSlices next_planes(next, next_bytes, C * KH * OH);  // a slice per output row
  for (index_t c = 0; c < C; ++c)
    for (index_t kh = 0; kh < KH; ++kh) {
      float* at = acc + (c * KH + kh) * KW * 16;
      __m512 a[NF][KW];
      for (int i = 0; i < NF; ++i)
        for (int j = 0; j < KW; ++j)
          a[i][j] = accumulate ? _mm512_loadu_ps(at + (i * taps + j) * 16) : _mm512_setzero_ps();
      for (index_t oh = 0; oh < OH; ++oh) {
        next_planes.slice((c * KH + kh) * OH + oh);
        const float* xr = xp + c * plane + (oh + kh * DH) * Wp;
        for (index_t v = 0; v < vecs; ++v) {
          const float* gv = gpack + (oh * vecs + v) * NF * 16;
          __m512 g[NF];
          for (int i = 0; i < NF; ++i) {
            g[i] = _mm512_load_ps(gv + 16 * i);
            // Keep g in registers: GCC otherwise re-reads it as a memory operand of every
            // FMA (NF*KW loads per step instead of NF + KW; the loads then bound the loop).
            asm("" : "+v"(g[i]));
          }
          // The last vector's spare lanes read image columns this tap never pairs with an
          // output: masked off, or an inf there would add 0 * inf = NaN.
          const __mmask16 m = v < full ? __mmask16(0xFFFF) : tail;
          for (int j = 0; j < KW; ++j) {
            const __m512 xv = _mm512_maskz_loadu_ps(m, xr + 16 * v + j * DW);
            for (int i = 0; i < NF; ++i) a[i][j] = _mm512_fmadd_ps(g[i], xv, a[i][j]);
          }
        }
      }
      for (int i = 0; i < NF; ++i)
        for (int j = 0; j < KW; ++j) _mm512_storeu_ps(at + (i * taps + j) * 16, a[i][j]);
    }
}

constexpr int small_wg_max_nf(int kw) {
  return 31 / (kw + 1) < DirectKernels::kSmallWgMaxNF ? 31 / (kw + 1)
                                                        : DirectKernels::kSmallWgMaxNF;
}

template <int KW, std::size_t... NF>
void fill_small_wg(DirectKernels& k, std::index_sequence<NF...>) {
  k.small_wg_max_nf[KW] = small_wg_max_nf(KW);
  ((k.small_c_weight_grad[KW][NF + 1] = &small_c_weight_grad<NF + 1, KW>), ...);
}

template <int NV, std::size_t... M>
void fill_row(DirectKernels& k, std::index_sequence<M...>) {
  ((k.forward[NV][M + 1] = &forward_tile<M + 1, NV>), ...);
  ((k.weight_grad[NV][M + 1] = &weight_grad_tile<M + 1, NV>), ...);
}

DirectKernels make_kernels() {
  DirectKernels k{};
  for (int nv = 0; nv <= DirectKernels::kMaxNV; ++nv) k.max_mr[nv] = kMaxMR[nv];
  k.to_channels_last = &to_channels_last;
  static_assert(DirectKernels::kSmallShapes[0].nf == 6 && DirectKernels::kSmallShapes[0].nv == 4 &&
                DirectKernels::kSmallShapes[1].nf == 8 && DirectKernels::kSmallShapes[1].nv == 3);
  k.small_c_tile[0] = &small_c_tile<6, 4>;
  k.small_c_tile[1] = &small_c_tile<8, 3>;
  k.from_channels_last = &from_channels_last;
  fill_row<1>(k, std::make_index_sequence<kMaxMR[1]>{});
  fill_row<2>(k, std::make_index_sequence<kMaxMR[2]>{});
  fill_row<3>(k, std::make_index_sequence<kMaxMR[3]>{});
  fill_row<4>(k, std::make_index_sequence<kMaxMR[4]>{});
  fill_small_wg<1>(k, std::make_index_sequence<small_wg_max_nf(1)>{});
  fill_small_wg<2>(k, std::make_index_sequence<small_wg_max_nf(2)>{});
  fill_small_wg<3>(k, std::make_index_sequence<small_wg_max_nf(3)>{});
  fill_small_wg<4>(k, std::make_index_sequence<small_wg_max_nf(4)>{});
  fill_small_wg<5>(k, std::make_index_sequence<small_wg_max_nf(5)>{});
  fill_small_wg<6>(k, std::make_index_sequence<small_wg_max_nf(6)>{});
  fill_small_wg<7>(k, std::make_index_sequence<small_wg_max_nf(7)>{});
  return k;
}

}  // namespace

// Built on first use, never at load time: this code may only run on a CPU with AVX-512.
const DirectKernels* direct_kernels_avx512() {
  static const DirectKernels kernels = make_kernels();
  return &kernels;
}

}  // namespace fastconv

#else

namespace fastconv {
const DirectKernels* direct_kernels_avx512() { return nullptr; }
}  // namespace fastconv

#endif
