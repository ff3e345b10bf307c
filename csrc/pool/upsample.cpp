#include "pool/upsample.h"

#include <algorithm>
#include <vector>

namespace fastconv {
namespace {

// y[ow] = x[cols[ow]] for one row.
template <typename T>
__attribute__((always_inline)) inline void gather_row_impl(index_t OW, const std::int64_t* cols,
                                                           const T* x, T* y) {
  for (index_t ow = 0; ow < OW; ++ow) y[ow] = x[cols[ow]];
}

// y[2w] = y[2w + 1] = x[w]: the 2x case of gather_row (cols[ow] = ow / 2), without gathers.
template <typename T>
__attribute__((always_inline)) inline void double_row_impl(index_t W, const T* x, T* y) {
  for (index_t w = 0; w < W; ++w) {
    y[2 * w] = x[w];
    y[2 * w + 1] = x[w];
  }
}

// gx[cols[ow]] += gy[ow] for one row, ow in order.
template <typename T>
__attribute__((always_inline)) inline void scatter_row_impl(index_t OW, const std::int64_t* cols,
                                                            const T* gy, T* gx) {
  for (index_t ow = 0; ow < OW; ++ow) gx[cols[ow]] += gy[ow];
}

// gx[w] += gy[2w] + gy[2w + 1]: the 2x case of scatter_row.
template <typename T>
__attribute__((always_inline)) inline void halve_row_impl(index_t W, const T* gy, T* gx) {
  for (index_t w = 0; w < W; ++w) gx[w] += gy[2 * w] + gy[2 * w + 1];
}

FASTCONV_CLONED(gather_row, gather_row_impl,
                (index_t OW, const std::int64_t* cols, const T* x, T* y), (OW, cols, x, y))
FASTCONV_CLONED(double_row, double_row_impl, (index_t W, const T* x, T* y), (W, x, y))
FASTCONV_CLONED(scatter_row, scatter_row_impl,
                (index_t OW, const std::int64_t* cols, const T* gy, T* gx), (OW, cols, gy, gx))
FASTCONV_CLONED(halve_row, halve_row_impl, (index_t W, const T* gy, T* gx), (W, gy, gx))

// Whether cols is the 2x map ow / 2 (then OW = 2 W).
bool doubles(const UpsampleShape& s) {
  if (s.OW != 2 * s.W) return false;
  for (index_t ow = 0; ow < s.OW; ++ow)
    if (s.cols[ow] != ow / 2) return false;
  return true;
}

}  // namespace

template <typename T>
void upsample_nearest2d_forward(const UpsampleShape& s, const T* x, T* y) {
  const bool two = doubles(s);
  // Items of one plane's consecutive output rows: a repeated row is copied from the row above
  // when that row is in the same item.
  constexpr index_t kRows = 8;
  const index_t row_blocks = ceil_div(s.OH, kRows);
#pragma omp parallel for schedule(static)
  for (index_t item = 0; item < s.planes * row_blocks; ++item) {
    const index_t p = item / row_blocks, oh0 = (item % row_blocks) * kRows;
    const index_t oh1 = std::min(s.OH, oh0 + kRows);
    for (index_t oh = oh0; oh < oh1; ++oh) {
      T* yr = y + (p * s.OH + oh) * s.OW;
      if (oh > oh0 && s.rows[oh] == s.rows[oh - 1]) {
        std::copy(yr - s.OW, yr, yr);
        continue;
      }
      const T* xr = x + (p * s.H + s.rows[oh]) * s.W;
      if (two) double_row<T>(s.W, xr, yr);
      else gather_row<T>(s.OW, s.cols, xr, yr);
    }
  }
}

template <typename T>
void upsample_nearest2d_backward(const UpsampleShape& s, const T* grad_y, T* grad_x) {
  const bool two = doubles(s);
  // The output rows of input row r: [first[r], first[r + 1]) (rows is non-decreasing).
  std::vector<index_t> first(s.H + 1, s.OH);
  for (index_t oh = s.OH; oh-- > 0;) first[s.rows[oh]] = oh;
  for (index_t r = s.H; r-- > 0;) first[r] = std::min(first[r], first[r + 1]);
#pragma omp parallel for schedule(static)
  for (index_t item = 0; item < s.planes * s.H; ++item) {
    const index_t p = item / s.H, r = item % s.H;
    T* gx = grad_x + item * s.W;
    std::fill(gx, gx + s.W, T(0));
    for (index_t oh = first[r]; oh < first[r + 1]; ++oh) {
      const T* gy = grad_y + (p * s.OH + oh) * s.OW;
      if (two) halve_row<T>(s.W, gy, gx);
      else scatter_row<T>(s.OW, s.cols, gy, gx);
    }
  }
}

#define FASTCONV_INSTANTIATE(T)                                                        \
  template void upsample_nearest2d_forward<T>(const UpsampleShape&, const T*, T*);    \
  template void upsample_nearest2d_backward<T>(const UpsampleShape&, const T*, T*);
FASTCONV_INSTANTIATE(float)
FASTCONV_INSTANTIATE(double)
#undef FASTCONV_INSTANTIATE

}  // namespace fastconv
