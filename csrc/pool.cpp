#include "pool.h"

#include <algorithm>
#include <cmath>
#include <limits>

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

}  // namespace

template <typename T>
void max_pool2d_forward(const PoolShape& s, const T* x, T* y, std::int64_t* indices) {
  const Window2d& w = s.win;
  const index_t HW = s.H * s.W, OL = s.OH * s.OW;
#pragma omp parallel for schedule(static)
  for (index_t plane = 0; plane < s.N * s.C; ++plane) {
    const T* xp = x + plane * HW;
    T* yp = y + plane * OL;
    std::int64_t* ip = indices + plane * OL;
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
}

template <typename T>
bool max_pool2d_backward(const PoolShape& s, const T* gy, const std::int64_t* indices, T* gx) {
  const index_t HW = s.H * s.W, OL = s.OH * s.OW;
  bool ok = true;
  // One plane per iteration: the scatter-adds of a plane stay on one thread, in order.
#pragma omp parallel for schedule(static) reduction(&& : ok)
  for (index_t plane = 0; plane < s.N * s.C; ++plane) {
    T* gp = gx + plane * HW;
    std::fill(gp, gp + HW, T(0));
    const T* gyp = gy + plane * OL;
    const std::int64_t* ip = indices + plane * OL;
    for (index_t o = 0; o < OL; ++o) {
      const std::int64_t idx = ip[o];
      if (idx < 0 || idx >= HW) {
        ok = false;
        continue;
      }
      gp[idx] += gyp[o];
    }
  }
  return ok;
}

template <typename T>
void avg_pool2d_forward(const PoolShape& s, bool count_include_pad, const T* x, T* y) {
  const Window2d& w = s.win;
  const index_t HW = s.H * s.W, OL = s.OH * s.OW;
#pragma omp parallel for schedule(static)
  for (index_t plane = 0; plane < s.N * s.C; ++plane) {
    const T* xp = x + plane * HW;
    T* yp = y + plane * OL;
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
        const index_t count = count_include_pad ? wh.padded * ww.padded
                                                : (wh.hi - wh.lo) * (ww.hi - ww.lo);
        yp[oh * s.OW + ow] = sum / static_cast<T>(count);
      }
    }
  }
}

template <typename T>
void avg_pool2d_backward(const PoolShape& s, bool count_include_pad, const T* gy, T* gx) {
  const Window2d& w = s.win;
  const index_t HW = s.H * s.W, OL = s.OH * s.OW;
#pragma omp parallel for schedule(static)
  for (index_t plane = 0; plane < s.N * s.C; ++plane) {
    T* gp = gx + plane * HW;
    std::fill(gp, gp + HW, T(0));
    const T* gyp = gy + plane * OL;
    for (index_t oh = 0; oh < s.OH; ++oh) {
      const AvgWindow wh = avg_window(oh * w.SH - w.PH, w.KH, s.H, w.PH);
      for (index_t ow = 0; ow < s.OW; ++ow) {
        const AvgWindow ww = avg_window(ow * w.SW - w.PW, w.KW, s.W, w.PW);
        if (wh.lo >= wh.hi || ww.lo >= ww.hi) continue;
        const index_t count = count_include_pad ? wh.padded * ww.padded
                                                : (wh.hi - wh.lo) * (ww.hi - ww.lo);
        const T g = gyp[oh * s.OW + ow] / static_cast<T>(count);
        for (index_t ih = wh.lo; ih < wh.hi; ++ih)
          for (index_t iw = ww.lo; iw < ww.hi; ++iw) gp[ih * s.W + iw] += g;
      }
    }
  }
}

#define FASTCONV_INSTANTIATE(T)                                                                \
  template void max_pool2d_forward<T>(const PoolShape&, const T*, T*, std::int64_t*);         \
  template bool max_pool2d_backward<T>(const PoolShape&, const T*, const std::int64_t*, T*);  \
  template void avg_pool2d_forward<T>(const PoolShape&, bool, const T*, T*);                  \
  template void avg_pool2d_backward<T>(const PoolShape&, bool, const T*, T*);
FASTCONV_INSTANTIATE(float)
FASTCONV_INSTANTIATE(double)
#undef FASTCONV_INSTANTIATE

}  // namespace fastconv
