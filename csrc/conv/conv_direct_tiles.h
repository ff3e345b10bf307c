// The register tiles of the direct convolution (see conv_direct.h), written once over a
// vector type and included by each ISA's file (conv_direct_avx512.cpp, conv_direct_avx2.cpp),
// which instantiates them with its own vector traits and compiles them with its own flags.
//
// A traits type Vec provides: V (the vector), kLanes (floats per vector), kRegisters (vector
// registers), Mask and first(n) (lanes [0, n) set), zero, load, load_aligned, masked_load
// (zero elsewhere), load_first(p, m, n) (the same for m = first(n): each ISA uses the
// cheaper), set1, add, fma(a, b, c) = a*b + c, store, store_aligned, store_first(p, m, n, v)
// (lanes [0, n) of v to p; m = first(n): each ISA uses the cheaper), keep(v) (an empty asm
// that pins v to a register), transpose(r) (r[i] lane j <-> r[j] lane i, kLanes vectors),
// and Flags with no_flags(), flag_nonfinite(flags, v) (notes whether a lane of v is ±inf or
// NaN) and any(flags); round_bf16(v) (each lane as bf16.h's round_to_bf16).
//
// Everything here has internal linkage (an unnamed namespace): each ISA file gets its own
// copy, so the linker can never hand one file's instructions to another (an inline function
// compiled with -mavx512f chosen for the AVX2 build would crash on an AVX2 CPU).
#pragma once

#include <immintrin.h>

#include <cstring>
#include <utility>

#include "conv/conv_direct.h"

namespace fastconv {
namespace {

// MR pixels (pixel i at in + pix[i]) x NV vectors of output channels. Each step of the
// reduction loads NV weight vectors and broadcasts one input value per pixel.
template <typename Vec, int MR, int NV>
void forward_tile(const float* in, const index_t* pix, const index_t* tap_off, index_t taps,
                  index_t C, const float* w, index_t ldw, float* out, index_t ldo,
                  bool accumulate) {
  constexpr int L = Vec::kLanes;
  typename Vec::V acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j)
      acc[i][j] = accumulate ? Vec::load(out + i * ldo + L * j) : Vec::zero();
  for (index_t t = 0; t < taps; ++t) {
    const float* px[MR];
    for (int i = 0; i < MR; ++i) px[i] = in + pix[i] + tap_off[t];
    const float* wt = w + t * C * ldw;
    for (index_t c = 0; c < C; ++c) {
      typename Vec::V wv[NV];
      for (int j = 0; j < NV; ++j) wv[j] = Vec::load(wt + c * ldw + L * j);
#pragma GCC unroll 24
      for (int i = 0; i < MR; ++i) {
        const typename Vec::V b = Vec::set1(px[i][c]);
        for (int j = 0; j < NV; ++j) acc[i][j] = Vec::fma(b, wv[j], acc[i][j]);
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) Vec::store(out + i * ldo + L * j, acc[i][j]);
}

// MR input channels (contiguous) x NV vectors of output channels of one tap, summed over the
// positions `at` (DirectKernels::GradPositions). Each step loads NV gradient vectors and
// broadcasts MR inputs.
template <typename Vec, int MR, int NV>
void weight_grad_tile(const float* x, const float* gy, const DirectKernels::GradPositions& at,
                      float* gw, index_t ldw, bool accumulate) {
  constexpr int L = Vec::kLanes;
  typename Vec::V acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j)
      acc[i][j] = accumulate ? Vec::load(gw + i * ldw + L * j) : Vec::zero();
  const index_t rows = at.rows, cols = at.cols, ps = at.x_col, ldg = at.ldg;
  for (index_t n = 0; n < at.images; ++n)
    for (index_t r = 0; r < rows; ++r) {
      const float* xr = x + n * at.x_image + r * at.x_row;
      const float* gr = gy + n * at.gy_image + r * cols * ldg;
      for (index_t q = 0; q < cols; ++q) {
        const float* xq = xr + q * ps;
        typename Vec::V gv[NV];
        for (int j = 0; j < NV; ++j) gv[j] = Vec::load(gr + q * ldg + L * j);
#pragma GCC unroll 24
        for (int i = 0; i < MR; ++i) {
          const typename Vec::V b = Vec::set1(xq[i]);
          for (int j = 0; j < NV; ++j) acc[i][j] = Vec::fma(b, gv[j], acc[i][j]);
        }
      }
    }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) Vec::store(gw + i * ldw + L * j, acc[i][j]);
}

// dst (Hp x Wp x ld, channels last) <- src (C x H x W) at offset (pt, pl), zero elsewhere;
// kRound: each value rounded to bfloat16 (bf16 mode: no rounded copy of src needed).
// Transposes kLanes channels x kLanes consecutive pixels of the flattened plane at a time (so
// narrow images fill whole vectors: an 8-wide image gives two rows per 16-lane load); only
// the border pixels are zeroed separately.
template <typename Vec, bool kRound = false>
bool to_channels_last(const float* src, index_t C, index_t H, index_t W, index_t pt, index_t pl,
                      index_t Hp, index_t Wp, index_t ld, float* dst) {
  constexpr int L = Vec::kLanes;
  const index_t h0 = pt < 0 ? -pt : 0, h1 = H < Hp - pt ? H : Hp - pt;
  const index_t w0 = pl < 0 ? -pl : 0, w1 = W < Wp - pl ? W : Wp - pl;
  // Border (and any channel lanes the stores below do not write): zero.
  // Whole stores when the channels fill the row to a multiple of the vector (they also zero
  // the channel padding), else masked stores.
  // (Rows the image misses, or whose columns it misses wholly, zeroed whole.)
  const bool full_lanes = ld % L == 0 && ld - C < L;
  for (index_t r = 0; r < Hp; ++r) {
    float* row = dst + r * Wp * ld;
    const index_t h = r - pt;
    if (h < h0 || h >= h1 || w1 <= w0 || !full_lanes) {
      std::memset(row, 0, sizeof(float) * Wp * ld);
    } else {
      std::memset(row, 0, sizeof(float) * (w0 + pl) * ld);
      std::memset(row + (w1 + pl) * ld, 0, sizeof(float) * (Wp - w1 - pl) * ld);
    }
  }
  if (h1 <= h0 || w1 <= w0) return false;
  const index_t HW = H * W;
  const index_t l_begin = h0 * W, l_end = (h1 - 1) * W + W;
  typename Vec::V r[L];
  typename Vec::Flags nonfinite = Vec::no_flags();
  for (index_t c0 = 0; c0 < C; c0 += L) {
    const index_t cb = C - c0 < L ? C - c0 : L;
    const typename Vec::Mask mc = Vec::first(cb);
    for (index_t l0 = l_begin; l0 < l_end; l0 += L) {
      const index_t lb = l_end - l0 < L ? l_end - l0 : L;
      const typename Vec::Mask m = Vec::first(lb);
      for (int c = 0; c < L; ++c) {
        if (c < cb) {
          const float* p = src + (c0 + c) * HW + l0;
          // kLanes planes read side by side, often 4 KiB apart: more streams than the
          // hardware prefetcher follows well; fetch each a few lines ahead.
          _mm_prefetch(reinterpret_cast<const char*>(p + 64), _MM_HINT_T0);
          r[c] = Vec::load_first(p, m, lb);
          if constexpr (kRound) r[c] = Vec::round_bf16(r[c]);
          nonfinite = Vec::flag_nonfinite(nonfinite, r[c]);
        } else {
          r[c] = Vec::zero();
        }
      }
      Vec::transpose(r);
      index_t h = l0 / W, w = l0 % W;
      // A constant trip count, fully unrolled: r[q] then names a register (a variable index
      // spilled all the vectors to the stack).
#pragma GCC unroll 16
      for (int q = 0; q < L; ++q) {
        if (q >= lb) break;
        if (w >= w0 && w < w1) {
          float* d = dst + ((h + pt) * Wp + w + pl) * ld + c0;
          if (full_lanes) Vec::store(d, r[q]);
          else Vec::store_first(d, mc, cb, r[q]);
        }
        if (++w == W) {
          w = 0;
          ++h;
        }
      }
    }
  }
  return Vec::any(nonfinite);
}

// dst (C x L) <- src (L x ld, channels last) + bias[c] (when given).
template <typename Vec>
void from_channels_last(const float* src, index_t ld, index_t C, index_t L, const float* bias,
                        float* dst) {
  constexpr int V = Vec::kLanes;
  typename Vec::V r[V];
  for (index_t c0 = 0; c0 < C; c0 += V) {
    const index_t cb = C - c0 < V ? C - c0 : V;
    const typename Vec::Mask mc = Vec::first(cb);
    for (index_t l = 0; l < L; l += V) {
      const index_t lb = L - l < V ? L - l : V;
      for (int q = 0; q < V; ++q)
        r[q] = q < lb ? Vec::load_first(src + (l + q) * ld + c0, mc, cb) : Vec::zero();
      Vec::transpose(r);
      const typename Vec::Mask m = Vec::first(lb);
      for (index_t c = 0; c < cb; ++c) {
        const typename Vec::V v = bias ? Vec::add(r[c], Vec::set1(bias[c0 + c])) : r[c];
        Vec::store_first(dst + (c0 + c) * L + l, m, lb, v);
      }
    }
  }
}

// See DirectKernels::small_c_tile: F output channels x V vectors of pixels.
template <typename Vec, int F, int V>
void small_c_tile(const float* const* rows, const index_t* off, index_t steps, const float* w,
                  const float* bias, float* const* out, index_t fstride, index_t nf,
                  const index_t* lanes) {
  typename Vec::V acc[F][V];
  for (int i = 0; i < F; ++i) {
    const typename Vec::V b = Vec::set1(bias && i < nf ? bias[i] : 0.0f);
    for (int j = 0; j < V; ++j) acc[i][j] = b;
  }
  const float* r[V];
  for (int j = 0; j < V; ++j) r[j] = rows[j];
  for (index_t s = 0; s < steps; ++s) {
    const index_t o = off[s];
    typename Vec::V x[V];
    for (int j = 0; j < V; ++j) x[j] = Vec::load(r[j] + o);
    const float* ws = w + s * F;
#pragma GCC unroll 8
    for (int i = 0; i < F; ++i) {
      const typename Vec::V wi = Vec::set1(ws[i]);
      for (int j = 0; j < V; ++j) acc[i][j] = Vec::fma(wi, x[j], acc[i][j]);
    }
  }
  for (int j = 0; j < V; ++j) {
    if (lanes[j] <= 0) continue;
    const typename Vec::Mask m = Vec::first(lanes[j]);
    for (int i = 0; i < F; ++i)
      if (i < nf) Vec::store_first(out[j] + i * fstride, m, lanes[j], acc[i][j]);
  }
}

// See DirectKernels::small_c_weight_grad. Registers: NF*KW accumulators, NF gradient vectors
// and one input vector (NF*KW + NF + 1 <= kRegisters); each input vector serves NF channels.
template <typename Vec, int NF, int KW>
void small_c_weight_grad(const float* xp, index_t C, index_t plane, index_t Wp, const float* gy,
                         index_t OH, index_t OW, index_t KH, index_t DH, index_t DW, float* acc,
                         float* gpack, bool accumulate, bool finite, const float* next,
                         index_t next_bytes) {
  constexpr int L = Vec::kLanes;
  const index_t L_out = OH * OW, taps = C * KH * KW;
  const index_t vecs = (OW + L - 1) / L, full = OW / L;
  const typename Vec::Mask tail = Vec::first(OW % L);
  // The NF gradient planes lie L_out*4 bytes apart (4 KiB for 32x32 outputs: the same L1
  // sets, which thrash). Interleave them once, [oh][vector][i][lane] with zero lanes past
  // OW; every (c, kh) pass then reads them in order.
  for (int i = 0; i < NF; ++i) {
    const float* src = gy + i * L_out;
    float* dst = gpack + L * i;
    for (index_t oh = 0; oh < OH; ++oh, src += OW) {
      for (index_t v = 0; v < full; ++v, dst += NF * L)
        Vec::store_aligned(dst, Vec::load(src + L * v));
      if (OW % L) {
        Vec::store_aligned(dst, Vec::masked_load(tail, src + L * full));
        dst += NF * L;
      }
    }
  }
  // The last vector of a row pairs its spare lanes (zero gradients) with image columns this
  // tap never reads for an output (or, rows exactly `vecs` vectors wide, the next row's
  // first columns): harmless in finite images (sums start at +0, so none is -0, and adding
  // 0 * x = ±0 changes none), masked off otherwise (0 * inf = NaN). Finite rows exactly
  // vecs vectors wide are then one run of OH * vecs vectors, in the pack's order.
  const index_t plain = finite ? vecs : full;
  const bool flat = finite && Wp == L * vecs;
  const PrefetchSlices next_planes(next, next_bytes, C * KH * OH);  // a slice per output row
  for (index_t c = 0; c < C; ++c)
    for (index_t kh = 0; kh < KH; ++kh) {
      float* at = acc + (c * KH + kh) * KW * L;
      typename Vec::V a[NF][KW];
      for (int i = 0; i < NF; ++i)
        for (int j = 0; j < KW; ++j)
          a[i][j] = accumulate ? Vec::load(at + (i * taps + j) * L) : Vec::zero();
      // Gradient vectors g[i] of pack vector gv against input vectors at xv + j*DW.
      auto step = [&](const float* gv, const float* xv, bool masked) {
        typename Vec::V g[NF];
        for (int i = 0; i < NF; ++i) {
          g[i] = Vec::load_aligned(gv + L * i);
          // Keep g in registers: GCC otherwise re-reads it as a memory operand of every
          // FMA (NF*KW loads per step instead of NF + KW; the loads then bound the loop).
          Vec::keep(g[i]);
        }
        for (int j = 0; j < KW; ++j) {
          typename Vec::V x = masked ? Vec::masked_load(tail, xv + j * DW) : Vec::load(xv + j * DW);
          Vec::keep(x);  // (likewise: one load, not one per FMA)
          for (int i = 0; i < NF; ++i) a[i][j] = Vec::fma(g[i], x, a[i][j]);
        }
      };
      if (flat) {
        for (index_t oh = 0; oh < OH; ++oh) next_planes.slice((c * KH + kh) * OH + oh);
        const float* xr = xp + c * plane + kh * DH * Wp;
        for (index_t v = 0; v < OH * vecs; ++v) step(gpack + v * NF * L, xr + L * v, false);
      }
      for (index_t oh = 0; oh < (flat ? 0 : OH); ++oh) {
        next_planes.slice((c * KH + kh) * OH + oh);
        const float* xr = xp + c * plane + (oh + kh * DH) * Wp;
        const float* gr = gpack + oh * vecs * NF * L;
        for (index_t v = 0; v < plain; ++v) step(gr + v * NF * L, xr + L * v, false);
        if (plain < vecs) step(gr + full * NF * L, xr + L * full, true);
      }
      for (int i = 0; i < NF; ++i)
        for (int j = 0; j < KW; ++j) Vec::store(at + (i * taps + j) * L, a[i][j]);
    }
}

// ---- filling a table -------------------------------------------------------------------

// The most gradient planes small_c_weight_grad takes for a KW-wide kernel.
template <typename Vec>
constexpr int small_wg_max_nf(int kw) {
  return (Vec::kRegisters - 1) / (kw + 1) < DirectKernels::kSmallWgMaxNF
             ? (Vec::kRegisters - 1) / (kw + 1)
             : DirectKernels::kSmallWgMaxNF;
}

template <typename Vec, int KW, std::size_t... NF>
void fill_small_wg(DirectKernels& k, std::index_sequence<NF...>) {
  k.small_wg_max_nf[KW] = small_wg_max_nf<Vec>(KW);
  ((k.small_c_weight_grad[KW][NF + 1] = &small_c_weight_grad<Vec, NF + 1, KW>), ...);
}

template <typename Vec, std::size_t... KW>
void fill_small_wgs(DirectKernels& k, std::index_sequence<KW...>) {
  (fill_small_wg<Vec, KW + 1>(k, std::make_index_sequence<small_wg_max_nf<Vec>(KW + 1)>{}), ...);
}

template <typename Vec, int NV, std::size_t... M>
void fill_tiles(DirectKernels& k, std::index_sequence<M...>) {
  k.max_mr[NV] = sizeof...(M);
  ((k.forward[NV][M + 1] = &forward_tile<Vec, M + 1, NV>), ...);
  ((k.weight_grad[NV][M + 1] = &weight_grad_tile<Vec, M + 1, NV>), ...);
}

// The parts of a table that are the same code on every ISA: the lane width, the layout
// copies, the forward and weight-gradient tiles up to MRn pixels (or input channels) for n
// vectors, and the few-channel weight gradient for every kernel width.
template <typename Vec, int MR1, int MR2, int MR3, int MR4>
void fill_common(DirectKernels& k) {
  static_assert(DirectKernels::kMaxNV == 4);
  k.lanes = Vec::kLanes;
  k.to_channels_last = &to_channels_last<Vec>;
  k.to_channels_last_bf16 = &to_channels_last<Vec, true>;
  k.from_channels_last = &from_channels_last<Vec>;
  fill_tiles<Vec, 1>(k, std::make_index_sequence<MR1>{});
  fill_tiles<Vec, 2>(k, std::make_index_sequence<MR2>{});
  fill_tiles<Vec, 3>(k, std::make_index_sequence<MR3>{});
  fill_tiles<Vec, 4>(k, std::make_index_sequence<MR4>{});
  fill_small_wgs<Vec>(k, std::make_index_sequence<DirectKernels::kSmallWgMaxKW>{});
}

}  // namespace
}  // namespace fastconv
