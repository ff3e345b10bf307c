// The im2col loops over rows, written once for every ISA: im2col.cpp instantiates them with
// ScalarRows (any CPU, float64), im2col_avx512.cpp and im2col_avx2.cpp with row copies in
// vector registers. Each output row is a strided copy of part of one input row,
//   out[t] = row[first + t*S]  for t in [0, count),  zero where first + t*S leaves [0, W),
// and a Rows policy supplies that copy in two steps, a plan made once per row shape and the
// copy run per row:
//   template <index_t S> static Plan plan(index_t W, index_t first, index_t stride,
//                                         index_t count);
//   template <index_t S> static void copy(const Plan& p, const T* row, index_t stride, T* out);
// S is the stride as a constant (1, 2) or 0 for `stride` at run time. Strided layers' rows
// are short (8 columns for a 16x16 image at stride 2), so the copy's fixed cost counts: the
// vector policies plan their masks once and copy a row of up to 16 in one masked load (two
// and a permute at stride 2) and one store, where the scalar loop spent ~4 cycles per
// element.
#pragma once

#include <algorithm>

#include "conv/im2col.h"

namespace fastconv {
namespace im2col_detail {

// Range of t for which first + t*S lies in [0, W), clamped to [0, count): [lo, hi).
inline void valid_range(index_t count, index_t W, index_t S, index_t first, index_t& lo,
                        index_t& hi) {
  // first + t*S >= 0  <=>  t >= ceil(-first / S);  first + t*S < W  <=>  t <= (W-1-first) / S
  lo = first >= 0 ? 0 : (-first + S - 1) / S;
  hi = (W - 1 - first) < 0 ? 0 : (W - 1 - first) / S + 1;
  lo = std::min(lo, count);
  hi = std::max(lo, std::min(hi, count));
}

// Where a row copy reads: columns [lo, hi) of its `count` come from the row (the others are
// padding), column t from row[first + t*stride].
struct RowSpan {
  index_t first, count, lo, hi;
};
template <index_t S>
inline RowSpan row_span(index_t W, index_t first, index_t stride, index_t count) {
  RowSpan r{first, count, 0, 0};
  valid_range(count, W, S ? S : stride, first, r.lo, r.hi);
  return r;
}

// The copy as plain loops (the compiler vectorises long rows; short ones run scalar).
template <typename T>
struct ScalarRows {
  using Plan = RowSpan;
  template <index_t S>
  static inline Plan plan(index_t W, index_t first, index_t stride, index_t count) {
    return row_span<S>(W, first, stride, count);
  }
  template <index_t S>
  static inline void copy(const Plan& p, const T* row, index_t stride, T* out) {
    const index_t s = S ? S : stride;
    for (index_t t = 0; t < p.lo; ++t) out[t] = T(0);
    for (index_t t = p.lo; t < p.hi; ++t) out[t] = row[p.first + s * t];
    for (index_t t = p.hi; t < p.count; ++t) out[t] = T(0);
  }
};

// A run of consecutive columns of one output row oh of the image at `image` (elements from
// Im2colB::x): the output positions (oh, ow0 .. ow0+count-1), stored at panel offset `off`.
struct Run {
  index_t oh, ow0, count, off, image;
};

// Im2colB::pack (see im2col.h) with Rows' copies at stride S (0: win.SW at run time). A row's
// plan depends on its run and the kernel column j alone, so each panel plans its runs' rows
// once per j (where they fit on the stack) and its kc rows reuse them.
template <typename T, typename Rows, index_t S>
__attribute__((always_inline)) inline void pack_rows_at(const Im2colB<T>& b, index_t pc,
                                                        index_t kc, index_t jc, index_t nc,
                                                        index_t nr, T* dst) {
  using Plan = typename Rows::Plan;
  const T* x = b.x;
  const index_t H = b.H, W = b.W, OW = b.OW, L = b.OH * b.OW;
  const Window2d& win = b.win;
  const index_t KK = win.KH * win.KW, SW = S ? S : win.SW;
  constexpr index_t kPlans = 128;
  Run runs[65];  // a panel of nr <= 64 columns spans at most nr runs
  Plan plans[kPlans];
  for (index_t q = 0; q < nc; q += nr) {
    const index_t n = std::min(nr, nc - q);
    T* panel = dst + q * kc;
    // Split the panel's columns into runs along output rows.
    index_t nruns = 0;
    for (index_t t = 0; t < n;) {
      const index_t col = jc + q + t, l = col % L;
      const index_t oh = l / OW, ow = l % OW;
      const index_t count = std::min(n - t, OW - ow);
      runs[nruns++] = {oh, ow, count, t, col / L * b.image_stride};
      t += count;
    }
    const bool planned = nruns * win.KW <= kPlans;
    if (planned)
      for (index_t j = 0; j < win.KW; ++j)
        for (index_t r = 0; r < nruns; ++r)
          plans[j * nruns + r] = Rows::template plan<S>(
              W, runs[r].ow0 * SW + j * win.DW - win.PW, SW, runs[r].count);
    index_t c = pc / KK, i = (pc % KK) / win.KW, j = pc % win.KW;
    for (index_t p = 0; p < kc; ++p) {
      T* d = panel + p * nr;
      const T* xc = x + c * H * W;
      for (index_t r = 0; r < nruns; ++r) {
        const Run& run = runs[r];
        T* out = d + run.off;
        const index_t ih = run.oh * win.SH - win.PH + i * win.DH;
        if (ih < 0 || ih >= H) {
          std::fill(out, out + run.count, T(0));
          continue;
        }
        const T* row = xc + run.image + ih * W;
        if (planned)
          Rows::template copy<S>(plans[j * nruns + r], row, SW, out);
        else
          Rows::template copy<S>(
              Rows::template plan<S>(W, run.ow0 * SW + j * win.DW - win.PW, SW, run.count), row,
              SW, out);
      }
      std::fill(d + n, d + nr, T(0));
      if (++j == win.KW) {
        j = 0;
        if (++i == win.KH) {
          i = 0;
          ++c;
        }
      }
    }
  }
}

// pack_rows_at with the stride as a constant where it is 1 or 2.
template <typename T, typename Rows>
__attribute__((always_inline)) inline void pack_rows(const Im2colB<T>& b, index_t pc,
                                                     index_t kc, index_t jc, index_t nc,
                                                     index_t nr, T* dst) {
  switch (b.win.SW) {
    case 1: pack_rows_at<T, Rows, 1>(b, pc, kc, jc, nc, nr, dst); break;
    case 2: pack_rows_at<T, Rows, 2>(b, pc, kc, jc, nc, nr, dst); break;
    default: pack_rows_at<T, Rows, 0>(b, pc, kc, jc, nc, nr, dst);
  }
}

// im2col_image (see im2col.h) with Rows' copies at stride S (0: w.SW at run time).
template <typename T, typename Rows, index_t S>
void image_rows_at(const T* x, index_t C, index_t H, index_t W, const Window2d& w, index_t OH,
                   index_t OW, T* cols, index_t ld) {
  const index_t SW = S ? S : w.SW;
  for (index_t c = 0; c < C; ++c) {
    const T* xc = x + c * H * W;
    for (index_t i = 0; i < w.KH; ++i) {
      for (index_t j = 0; j < w.KW; ++j) {
        const typename Rows::Plan plan = Rows::template plan<S>(W, j * w.DW - w.PW, SW, OW);
        T* row = cols + ((c * w.KH + i) * w.KW + j) * ld;
        for (index_t oh = 0; oh < OH; ++oh) {
          T* dst = row + oh * OW;
          const index_t ih = oh * w.SH - w.PH + i * w.DH;
          if (ih < 0 || ih >= H)
            std::fill(dst, dst + OW, T(0));
          else
            Rows::template copy<S>(plan, xc + ih * W, SW, dst);
        }
      }
    }
  }
}

// image_rows_at with the stride as a constant where it is 1 or 2.
template <typename T, typename Rows>
void image_rows(const T* x, index_t C, index_t H, index_t W, const Window2d& w, index_t OH,
                index_t OW, T* cols, index_t ld) {
  switch (w.SW) {
    case 1: image_rows_at<T, Rows, 1>(x, C, H, W, w, OH, OW, cols, ld); break;
    case 2: image_rows_at<T, Rows, 2>(x, C, H, W, w, OH, OW, cols, ld); break;
    default: image_rows_at<T, Rows, 0>(x, C, H, W, w, OH, OW, cols, ld);
  }
}
}  // namespace im2col_detail
}  // namespace fastconv
