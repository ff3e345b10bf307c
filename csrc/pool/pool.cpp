#include "pool/pool.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>

#include "activation/activation.h"  // relu_value, relu_grad
#include "cpu.h"         // selected_isa

namespace fastconv {
namespace {

// Clipped window of one output position along one axis: [lo, hi) stepping by d, as in
// PyTorch: hi = min(start + (k-1)*d + 1, size), lo = start advanced by d until >= 0.
inline void max_window(index_t start, index_t k, index_t d, index_t size, index_t& lo,
                       index_t& hi) {
  hi = std::min(start + (k - 1) * d + 1, size);
  lo = start;
  if (lo < 0) lo += ceil_div(-lo, d) * d;
}

// Average-pool window along one axis: the window clipped to the padded input gives the
// count_include_pad divisor; clipped to the input gives the summed range.
struct AvgWindow {
  index_t lo, hi, padded;
};
inline AvgWindow avg_window(index_t start, index_t k, index_t size, index_t pad) {
  const index_t end = std::min(start + k, size + pad);
  return {std::max<index_t>(start, 0), std::min(end, size), end - start};
}

// One 2x2 window: a, b on the top row, c, d below (a at offset `at` in a W-wide plane).
// The maximum in PyTorch's order, "v > best || isnan(v)" as blends (first maximum wins; once
// best is NaN only a later NaN replaces it), with its offset; and the average, summed as
// PyTorch's loop (row-major from 0).
template <typename T>
__attribute__((always_inline)) inline void window_max(T a, T b, T c, T d, std::int64_t at,
                                                      index_t W, T& best, std::int64_t& where) {
  best = a;
  where = at;
  bool take = (b > best) | (b != b);
  best = take ? b : best;
  where = take ? at + 1 : where;
  take = (c > best) | (c != c);
  best = take ? c : best;
  where = take ? at + W : where;
  take = (d > best) | (d != d);
  best = take ? d : best;
  where = take ? at + W + 1 : where;
}

template <typename T>
__attribute__((always_inline)) inline T window_mean(T a, T b, T c, T d) {
  return (((T(0) + a) + b) + c + d) / T(4);
}

// The common 2x2 / stride-2 window that lies wholly inside the input: the four candidates
// in PyTorch's order (row-major), first maximum wins, NaN propagates. Outputs are made in
// fixed blocks of 16 from copies of the two input rows, so the loop always vectorises
// (compares and blends, no branches) whatever the width.
template <typename T>
__attribute__((always_inline)) inline void max_pool_2x2_row(const T* r0, const T* r1, index_t W,
                                                            index_t ih, index_t OW, T* y,
                                                            std::int64_t* idx) {
  constexpr int B = 16;
  for (index_t o0 = 0; o0 < OW; o0 += B) {
    const index_t n = std::min<index_t>(B, OW - o0);
    T top[2 * B], bottom[2 * B], best_out[B];
    std::int64_t at_out[B];
    for (index_t t = 0; t < 2 * B; ++t) {
      top[t] = t < 2 * n ? r0[2 * o0 + t] : T(0);
      bottom[t] = t < 2 * n ? r1[2 * o0 + t] : T(0);
    }
    const std::int64_t base = ih * W + 2 * o0;
    for (int t = 0; t < B; ++t)
      window_max(top[2 * t], top[2 * t + 1], bottom[2 * t], bottom[2 * t + 1], base + 2 * t, W,
                 best_out[t], at_out[t]);
    for (index_t t = 0; t < n; ++t) {
      y[o0 + t] = best_out[t];
      idx[o0 + t] = at_out[t];
    }
  }
}

FASTCONV_CLONED(max_pool_2x2_rows, max_pool_2x2_row,
                (const T* r0, const T* r1, index_t W, index_t ih, index_t OW, T* y,
                 std::int64_t* idx),
                (r0, r1, W, ih, OW, y, idx))

// 2x2 / stride-2 average pooling rows, in blocks of 16 like max pooling. Sum order as
// PyTorch's loop (row-major from 0), divisor 4 (the window is wholly inside the input).
template <typename T>
__attribute__((always_inline)) inline void avg_pool_2x2_row(const T* r0, const T* r1, index_t OW,
                                                            T* y) {
  constexpr int B = 16;
  for (index_t o0 = 0; o0 < OW; o0 += B) {
    const index_t n = std::min<index_t>(B, OW - o0);
    T top[2 * B], bottom[2 * B], out[B];
    for (index_t t = 0; t < 2 * B; ++t) {
      top[t] = t < 2 * n ? r0[2 * o0 + t] : T(0);
      bottom[t] = t < 2 * n ? r1[2 * o0 + t] : T(0);
    }
    for (int t = 0; t < B; ++t)
      out[t] = window_mean(top[2 * t], top[2 * t + 1], bottom[2 * t], bottom[2 * t + 1]);
    for (index_t t = 0; t < n; ++t) y[o0 + t] = out[t];
  }
}

// Its gradient: each of the four inputs of a window gets grad / 4 (windows do not overlap).
template <typename T>
__attribute__((always_inline)) inline void avg_pool_2x2_backward_row(const T* gy, index_t OW,
                                                                     T* g0, T* g1) {
  for (index_t ow = 0; ow < OW; ++ow) {
    const T g = gy[ow] / T(4);
    g0[2 * ow] = g0[2 * ow + 1] = g1[2 * ow] = g1[2 * ow + 1] = g;
  }
}

FASTCONV_CLONED(avg_pool_2x2_rows, avg_pool_2x2_row,
                (const T* r0, const T* r1, index_t OW, T* y), (r0, r1, OW, y))
FASTCONV_CLONED(avg_pool_2x2_backward, avg_pool_2x2_backward_row,
                (const T* gy, index_t OW, T* g0, T* g1), (gy, OW, g0, g1))

// Narrow planes (at most 8 outputs per row, e.g. 8x8 -> 4x4) would fill half or less of
// each 16-lane block row by row: they are pooled in flattened blocks of 16 outputs across
// rows instead, gathered lane by lane.
//
// The four candidates of the next n (<= 16) windows from output (oh, ow) on (advanced past
// them): c0..c3 the top-left, top-right, bottom-left, bottom-right inputs, base the
// top-left's offset; lanes past n zero.
template <typename T>
__attribute__((always_inline)) inline void gather_2x2(const T* x, index_t W, index_t OW,
                                                      index_t& oh, index_t& ow, index_t n, T* c0,
                                                      T* c1, T* c2, T* c3, std::int64_t* base) {
  constexpr int B = 16;
  for (index_t t = 0; t < B; ++t) {
    if (t < n) {
      const index_t i = 2 * oh * W + 2 * ow;
      base[t] = i;
      c0[t] = x[i];
      c1[t] = x[i + 1];
      c2[t] = x[i + W];
      c3[t] = x[i + W + 1];
      if (++ow == OW) {
        ow = 0;
        ++oh;
      }
    } else {
      base[t] = 0;
      c0[t] = c1[t] = c2[t] = c3[t] = T(0);
    }
  }
}

// Max pooling of a narrow plane (same rules as max_pool_2x2_row).
template <typename T>
__attribute__((always_inline)) inline void max_pool_2x2_plane(const T* x, index_t W, index_t OH,
                                                              index_t OW, T* y,
                                                              std::int64_t* idx) {
  constexpr int B = 16;
  const index_t OL = OH * OW;
  index_t oh = 0, ow = 0;  // position of output o0
  for (index_t o0 = 0; o0 < OL; o0 += B) {
    const index_t n = std::min<index_t>(B, OL - o0);
    T c0[B], c1[B], c2[B], c3[B], best_out[B];
    std::int64_t base[B], at_out[B];
    gather_2x2(x, W, OW, oh, ow, n, c0, c1, c2, c3, base);
    for (int t = 0; t < B; ++t)
      window_max(c0[t], c1[t], c2[t], c3[t], base[t], W, best_out[t], at_out[t]);
    for (index_t t = 0; t < n; ++t) {
      y[o0 + t] = best_out[t];
      idx[o0 + t] = at_out[t];
    }
  }
}

FASTCONV_CLONED(max_pool_2x2_narrow, max_pool_2x2_plane,
                (const T* x, index_t W, index_t OH, index_t OW, T* y, std::int64_t* idx),
                (x, W, OH, OW, y, idx))

// Average pooling of a narrow plane (same sum order as avg_pool_2x2_row).
template <typename T>
__attribute__((always_inline)) inline void avg_pool_2x2_plane(const T* x, index_t W, index_t OH,
                                                              index_t OW, T* y) {
  constexpr int B = 16;
  const index_t OL = OH * OW;
  index_t oh = 0, ow = 0;
  for (index_t o0 = 0; o0 < OL; o0 += B) {
    const index_t n = std::min<index_t>(B, OL - o0);
    T c0[B], c1[B], c2[B], c3[B], out[B];
    std::int64_t base[B];
    gather_2x2(x, W, OW, oh, ow, n, c0, c1, c2, c3, base);
    for (int t = 0; t < B; ++t) out[t] = window_mean(c0[t], c1[t], c2[t], c3[t]);
    for (index_t t = 0; t < n; ++t) y[o0 + t] = out[t];
  }
}

FASTCONV_CLONED(avg_pool_2x2_narrow, avg_pool_2x2_plane,
                (const T* x, index_t W, index_t OH, index_t OW, T* y), (x, W, OH, OW, y))

// 2x2, stride 2, no padding or dilation, every window inside the input.
inline bool is_plain_2x2(const PoolShape& s) {
  const Window2d& w = s.win;
  return w.KH == 2 && w.KW == 2 && w.SH == 2 && w.SW == 2 && w.PH == 0 && w.PW == 0 &&
         w.DH == 1 && w.DW == 1 && 2 * s.OH <= s.H && 2 * s.OW <= s.W;
}

// The SIMD level's plane kernels for plain 2x2 windows (float32; the max kernel keeps
// offsets within a row in int32).
template <typename T>
const Pool2x2Kernels* fast_2x2(const PoolShape& s) {
  if constexpr (!std::is_same_v<T, float>) {
    return nullptr;
  } else {
    if (!is_plain_2x2(s) || s.W >= (index_t(1) << 30)) return nullptr;
    return pool_2x2_kernels();
  }
}

// One plane of max pooling: the SIMD 2x2 kernels (fast, from fast_2x2), the portable 2x2
// ones (two_by_two, from is_plain_2x2), or any window.
template <typename T>
void max_pool_plane(const PoolShape& s, const Pool2x2Kernels* fast, bool two_by_two, const T* xp,
                    T* yp, std::int64_t* ip) {
  const Window2d& w = s.win;
  if constexpr (std::is_same_v<T, float>) {
    if (fast) {
      fast->max_plane(xp, s.W, s.OH, s.OW, yp, ip);
      return;
    }
  }
  if (two_by_two && s.OW <= 8) {
    max_pool_2x2_narrow(xp, s.W, s.OH, s.OW, yp, ip);
    return;
  }
  if (two_by_two) {
    for (index_t oh = 0; oh < s.OH; ++oh)
      max_pool_2x2_rows(xp + 2 * oh * s.W, xp + (2 * oh + 1) * s.W, s.W, 2 * oh, s.OW,
                        yp + oh * s.OW, ip + oh * s.OW);
    return;
  }
  for (index_t oh = 0; oh < s.OH; ++oh) {
    index_t h0, h1;
    max_window(oh * w.SH - w.PH, w.KH, w.DH, s.H, h0, h1);
    for (index_t ow = 0; ow < s.OW; ++ow) {
      index_t w0, w1;
      max_window(ow * w.SW - w.PW, w.KW, w.DW, s.W, w0, w1);
      index_t best = h0 * s.W + w0;
      T best_val = -std::numeric_limits<T>::infinity();
      for (index_t ih = h0; ih < h1; ih += w.DH) {
        for (index_t iw = w0; iw < w1; iw += w.DW) {
          const T v = xp[ih * s.W + iw];
          if (v > best_val || std::isnan(v)) {
            best_val = v;
            best = ih * s.W + iw;
          }
        }
      }
      yp[oh * s.OW + ow] = best_val;
      ip[oh * s.OW + ow] = best;
    }
  }
}

}  // namespace

const Pool2x2Kernels* pool_2x2_kernels() {
  switch (selected_isa()) {
    case Isa::avx512: return pool_2x2_kernels_avx512();
    case Isa::avx2: return pool_2x2_kernels_avx2();
    default: return nullptr;
  }
}

template <typename T>
void max_pool2d_forward_planes(const PoolShape& s, index_t planes, const T* x, T* y,
                               std::int64_t* indices, bool relu) {
  const index_t HW = s.H * s.W, OL = s.OH * s.OW;
  const bool two_by_two = is_plain_2x2(s);
  const Pool2x2Kernels* fast = fast_2x2<T>(s);
  for (index_t plane = 0; plane < planes; ++plane) {
    T* yp = y + plane * OL;
    max_pool_plane(s, fast, two_by_two, x + plane * HW, yp, indices + plane * OL);
    if (relu)
      for (index_t o = 0; o < OL; ++o) yp[o] = relu_value(yp[o]);
  }
}

template <typename T>
void max_pool2d_forward(const PoolShape& s, const T* x, T* y, std::int64_t* indices, bool relu) {
  const index_t HW = s.H * s.W, OL = s.OH * s.OW, planes = s.N * s.C;
  // A contiguous range of planes per thread.
  const index_t parts = max_threads();
#pragma omp parallel for schedule(static)
  for (index_t t = 0; t < parts; ++t) {
    const index_t p0 = planes * t / parts, p1 = planes * (t + 1) / parts;
    if (p1 > p0)
      max_pool2d_forward_planes(s, p1 - p0, x + p0 * HW, y + p0 * OL, indices + p0 * OL, relu);
  }
}

template <typename T>
bool max_pool_backward_plane(index_t OL, index_t HW, const T* gy, const std::int64_t* indices,
                             const T* relu_y, T* gx) {
  std::fill(gx, gx + HW, T(0));
  bool ok = true;
  for (index_t o = 0; o < OL; ++o) {
    const std::int64_t idx = indices[o];
    if (idx < 0 || idx >= HW) {
      ok = false;
      continue;
    }
    if (relu_y) gx[idx] += relu_grad(gy[o], relu_y[o]);
    else gx[idx] += gy[o];
  }
  return ok;
}

template <typename T>
bool max_pool2d_backward(const PoolShape& s, const T* gy, const std::int64_t* indices, T* gx,
                         const T* relu_y) {
  const index_t HW = s.H * s.W, OL = s.OH * s.OW;
  bool ok = true;
  // One plane per iteration: the scatter-adds of a plane stay on one thread, in order.
#pragma omp parallel for schedule(static) reduction(&& : ok)
  for (index_t plane = 0; plane < s.N * s.C; ++plane)
    ok = max_pool_backward_plane(OL, HW, gy + plane * OL, indices + plane * OL,
                                 relu_y ? relu_y + plane * OL : nullptr, gx + plane * HW) &&
         ok;
  return ok;
}

// The divisor of one average-pooling window (wh x ww): divisor_override when not 0, else the
// window clipped to the padded input (count_include_pad) or to the input.
inline index_t avg_divisor(const AvgWindow& wh, const AvgWindow& ww, bool count_include_pad,
                           index_t divisor_override) {
  if (divisor_override != 0) return divisor_override;
  return count_include_pad ? wh.padded * ww.padded : (wh.hi - wh.lo) * (ww.hi - ww.lo);
}

template <typename T>
void avg_pool2d_forward(const PoolShape& s, bool count_include_pad, const T* x, T* y,
                        index_t divisor_override) {
  const Window2d& w = s.win;
  const index_t HW = s.H * s.W, OL = s.OH * s.OW;
  // (the 2x2 kernels divide by 4: an overridden divisor takes the general loop)
  const bool two_by_two = is_plain_2x2(s) && divisor_override == 0;
  const Pool2x2Kernels* fast = divisor_override == 0 ? fast_2x2<T>(s) : nullptr;
#pragma omp parallel for schedule(static)
  for (index_t plane = 0; plane < s.N * s.C; ++plane) {
    const T* xp = x + plane * HW;
    T* yp = y + plane * OL;
    if constexpr (std::is_same_v<T, float>) {
      if (fast) {
        fast->avg_plane(xp, s.W, s.OH, s.OW, yp);
        continue;
      }
    }
    if (two_by_two && s.OW <= 8) {
      avg_pool_2x2_narrow(xp, s.W, s.OH, s.OW, yp);
      continue;
    }
    if (two_by_two) {
      for (index_t oh = 0; oh < s.OH; ++oh)
        avg_pool_2x2_rows(xp + 2 * oh * s.W, xp + (2 * oh + 1) * s.W, s.OW, yp + oh * s.OW);
      continue;
    }
    for (index_t oh = 0; oh < s.OH; ++oh) {
      const AvgWindow wh = avg_window(oh * w.SH - w.PH, w.KH, s.H, w.PH);
      for (index_t ow = 0; ow < s.OW; ++ow) {
        const AvgWindow ww = avg_window(ow * w.SW - w.PW, w.KW, s.W, w.PW);
        if (wh.lo >= wh.hi || ww.lo >= ww.hi) {
          yp[oh * s.OW + ow] = T(0);
          continue;
        }
        T sum = 0;
        for (index_t ih = wh.lo; ih < wh.hi; ++ih)
          for (index_t iw = ww.lo; iw < ww.hi; ++iw) sum += xp[ih * s.W + iw];
        yp[oh * s.OW + ow] =
            sum / static_cast<T>(avg_divisor(wh, ww, count_include_pad, divisor_override));
      }
    }
  }
}

template <typename T>
void avg_pool2d_backward(const PoolShape& s, bool count_include_pad, const T* gy, T* gx,
                         index_t divisor_override) {
  const Window2d& w = s.win;
  const index_t HW = s.H * s.W, OL = s.OH * s.OW;
  const bool two_by_two = is_plain_2x2(s) && divisor_override == 0;
#pragma omp parallel for schedule(static)
  for (index_t plane = 0; plane < s.N * s.C; ++plane) {
    T* gp = gx + plane * HW;
    const T* gyp = gy + plane * OL;
    if (two_by_two) {
      // Every window is written whole; only a trailing odd row/column stays zero.
      if (2 * s.OH < s.H || 2 * s.OW < s.W) std::fill(gp, gp + HW, T(0));
      for (index_t oh = 0; oh < s.OH; ++oh)
        avg_pool_2x2_backward(gyp + oh * s.OW, s.OW, gp + 2 * oh * s.W, gp + (2 * oh + 1) * s.W);
      continue;
    }
    std::fill(gp, gp + HW, T(0));
    for (index_t oh = 0; oh < s.OH; ++oh) {
      const AvgWindow wh = avg_window(oh * w.SH - w.PH, w.KH, s.H, w.PH);
      for (index_t ow = 0; ow < s.OW; ++ow) {
        const AvgWindow ww = avg_window(ow * w.SW - w.PW, w.KW, s.W, w.PW);
        if (wh.lo >= wh.hi || ww.lo >= ww.hi) continue;
        const T g = gyp[oh * s.OW + ow] /
                    static_cast<T>(avg_divisor(wh, ww, count_include_pad, divisor_override));
        for (index_t ih = wh.lo; ih < wh.hi; ++ih)
          for (index_t iw = ww.lo; iw < ww.hi; ++iw) gp[ih * s.W + iw] += g;
      }
    }
  }
}

#define FASTCONV_INSTANTIATE(T)                                                                \
  template void max_pool2d_forward<T>(const PoolShape&, const T*, T*, std::int64_t*, bool);   \
  template void max_pool2d_forward_planes<T>(const PoolShape&, index_t, const T*, T*,          \
                                             std::int64_t*, bool);                            \
  template bool max_pool2d_backward<T>(const PoolShape&, const T*, const std::int64_t*, T*,   \
                                       const T*);                                             \
  template bool max_pool_backward_plane<T>(index_t, index_t, const T*, const std::int64_t*,    \
                                           const T*, T*);                                     \
  template void avg_pool2d_forward<T>(const PoolShape&, bool, const T*, T*, index_t);         \
  template void avg_pool2d_backward<T>(const PoolShape&, bool, const T*, T*, index_t);
FASTCONV_INSTANTIATE(float)
FASTCONV_INSTANTIATE(double)
#undef FASTCONV_INSTANTIATE

}  // namespace fastconv
