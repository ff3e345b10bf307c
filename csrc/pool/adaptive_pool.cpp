#include "pool/adaptive_pool.h"

#include <algorithm>
#include <vector>

namespace fastconv {
namespace {

// Window bounds of every output along one axis: [start[i], end[i]).
struct Windows {
  std::vector<index_t> start, end;
  Windows(index_t in, index_t out) : start(out), end(out) {
    for (index_t i = 0; i < out; ++i) {
      start[i] = (i * in) / out;                // floor(i in / out)
      end[i] = ((i + 1) * in + out - 1) / out;  // ceil((i + 1) in / out)
    }
  }
};

// Global average pooling of `planes` planes of H x W: each plane's sum in kLanes fixed lanes.
template <typename T>
__attribute__((always_inline)) inline void global_mean_impl(index_t planes, index_t H, index_t W,
                                                            const T* x, T* y) {
  for (index_t p = 0; p < planes; ++p) {
    T acc[kLanes] = {};
    const T* xp = x + p * H * W;
    add_lanes<T>(H * W, [&](index_t i) { return xp[i]; }, acc);
    T sum = 0;
    for (int k = 0; k < kLanes; ++k) sum += acc[k];
    y[p] = sum / static_cast<T>(H) / static_cast<T>(W);
  }
}

// col[0, W) = the sum of `rows` rows of W values (the column sums of a window's rows).
template <typename T>
__attribute__((always_inline)) inline void column_sums_impl(index_t rows, index_t W, const T* x,
                                                            T* col) {
  std::copy(x, x + W, col);
  for (index_t r = 1; r < rows; ++r)
    for (index_t w = 0; w < W; ++w) col[w] += x[r * W + w];
}

// rows x W values at x += row[0, W) each.
template <typename T>
__attribute__((always_inline)) inline void add_to_rows_impl(index_t rows, index_t W, const T* row,
                                                            T* x) {
  for (index_t r = 0; r < rows; ++r)
    for (index_t w = 0; w < W; ++w) x[r * W + w] += row[w];
}

FASTCONV_CLONED(global_mean, global_mean_impl,
                (index_t planes, index_t H, index_t W, const T* x, T* y), (planes, H, W, x, y))
FASTCONV_CLONED(column_sums, column_sums_impl, (index_t rows, index_t W, const T* x, T* col),
                (rows, W, x, col))
FASTCONV_CLONED(add_to_rows, add_to_rows_impl, (index_t rows, index_t W, const T* row, T* x),
                (rows, W, row, x))

// Global pooling: threads take blocks of planes (a plane may be only a few values).
constexpr index_t kPlaneBlock = 64;

}  // namespace

template <typename T>
void adaptive_avg_pool2d_forward(const AdaptivePoolShape& s, const T* x, T* y) {
  const index_t HW = s.H * s.W, OL = s.OH * s.OW;
  if (s.OH == 1 && s.OW == 1) {
    const index_t blocks = ceil_div(s.planes, kPlaneBlock);
#pragma omp parallel for schedule(static)
    for (index_t b = 0; b < blocks; ++b) {
      const index_t p = b * kPlaneBlock;
      global_mean<T>(std::min(kPlaneBlock, s.planes - p), s.H, s.W, x + p * HW, y + p);
    }
    return;
  }
  const Windows rows(s.H, s.OH), cols(s.W, s.OW);
  for_each_item<T>(s.planes, s.W, [&](index_t p, T* col, bool split) {
    (void)split;  // a plane is small work: one thread each, even for fewer planes than threads
    const T* xp = x + p * HW;
    T* yp = y + p * OL;
    for (index_t oh = 0; oh < s.OH; ++oh) {
      const index_t h0 = rows.start[oh], kh = rows.end[oh] - h0;
      column_sums<T>(kh, s.W, xp + h0 * s.W, col);
      for (index_t ow = 0; ow < s.OW; ++ow) {
        const index_t w0 = cols.start[ow], w1 = cols.end[ow];
        T sum = 0;
        for (index_t w = w0; w < w1; ++w) sum += col[w];
        yp[oh * s.OW + ow] = sum / static_cast<T>(kh) / static_cast<T>(w1 - w0);
      }
    }
  });
}

template <typename T>
void adaptive_avg_pool2d_backward(const AdaptivePoolShape& s, const T* grad_y, T* grad_x) {
  const index_t HW = s.H * s.W, OL = s.OH * s.OW;
  const Windows rows(s.H, s.OH), cols(s.W, s.OW);
  for_each_item<T>(s.planes, s.W, [&](index_t p, T* row, bool split) {
    (void)split;
    const T* gy = grad_y + p * OL;
    T* gx = grad_x + p * HW;
    if (OL == 1) {
      std::fill(gx, gx + HW, gy[0] / static_cast<T>(s.H) / static_cast<T>(s.W));
      return;
    }
    std::fill(gx, gx + HW, T(0));
    for (index_t oh = 0; oh < s.OH; ++oh) {
      const index_t h0 = rows.start[oh], kh = rows.end[oh] - h0;
      std::fill(row, row + s.W, T(0));
      for (index_t ow = 0; ow < s.OW; ++ow) {
        const index_t w0 = cols.start[ow], w1 = cols.end[ow];
        const T g = gy[oh * s.OW + ow] / static_cast<T>(kh) / static_cast<T>(w1 - w0);
        for (index_t w = w0; w < w1; ++w) row[w] += g;
      }
      add_to_rows<T>(kh, s.W, row, gx + h0 * s.W);
    }
  });
}

#define FASTCONV_INSTANTIATE(T)                                                          \
  template void adaptive_avg_pool2d_forward<T>(const AdaptivePoolShape&, const T*, T*); \
  template void adaptive_avg_pool2d_backward<T>(const AdaptivePoolShape&, const T*, T*);
FASTCONV_INSTANTIATE(float)
FASTCONV_INSTANTIATE(double)
#undef FASTCONV_INSTANTIATE

}  // namespace fastconv
