#include "conv/conv_wide.h"

#include <algorithm>
#include <cstring>

namespace fastconv {

template <typename T>
void pad_image(const WideGeometry& g, const T* x, T* xpad) {
  std::fill(xpad, xpad + g.padded_size(), T(0));
  // Input columns that land inside the padded row (all of them for stride-1 geometry).
  const index_t w_count = std::min(g.W, g.Wp - g.PW);
  for (index_t c = 0; c < g.Cg; ++c)
    for (index_t ih = 0; ih < g.H && ih + g.PH < g.Hp; ++ih)
      std::memcpy(xpad + c * g.plane + (ih + g.PH) * g.Wp + g.PW, x + (c * g.H + ih) * g.W,
                  sizeof(T) * w_count);
}

template <typename T>
void crop_image(const WideGeometry& g, const T* xpad, T* x) {
  const index_t w_count = std::min(g.W, g.Wp - g.PW);
  for (index_t c = 0; c < g.Cg; ++c)
    for (index_t ih = 0; ih < g.H; ++ih) {
      T* dst = x + (c * g.H + ih) * g.W;
      if (ih + g.PH < g.Hp) {
        std::memcpy(dst, xpad + c * g.plane + (ih + g.PH) * g.Wp + g.PW, sizeof(T) * w_count);
        std::fill(dst + w_count, dst + g.W, T(0));
      } else {
        std::fill(dst, dst + g.W, T(0));  // rows no window reaches get no gradient
      }
    }
}

template <typename T>
void widen_rows(const WideGeometry& g, index_t rows, index_t OH, const T* src, T* dst) {
  for (index_t r = 0; r < rows * OH; ++r) {
    std::memcpy(dst + r * g.Wp, src + r * g.OW, sizeof(T) * g.OW);
    std::fill(dst + r * g.Wp + g.OW, dst + (r + 1) * g.Wp, T(0));
  }
}

template <typename T>
void narrow_rows(const WideGeometry& g, index_t rows, index_t OH, const T* src, T* dst) {
  for (index_t r = 0; r < rows * OH; ++r)
    std::memcpy(dst + r * g.OW, src + r * g.Wp, sizeof(T) * g.OW);
}

namespace {

template <typename T>
__attribute__((always_inline)) inline void add_rows(const WideGeometry& g, index_t rows,
                                                    const T* cols, T* xpad) {
  for (index_t r = 0; r < rows; ++r) {
    T* dst = xpad + g.row_offset(r);
    const T* src = cols + r * g.Lw;
    for (index_t l = 0; l < g.Lw; ++l) dst[l] += src[l];
  }
}

template <typename T>
__attribute__((always_inline)) inline void copy_panels(const WideGeometry& g, const T* xpad,
                                                       index_t pc, index_t kc, index_t jc,
                                                       index_t nc, index_t nr, T* dst) {
  for (index_t p = 0; p < kc; ++p) {
    const T* src = xpad + g.row_offset(pc + p) + jc;
    for (index_t q = 0; q < nc; q += nr) {
      T* d = dst + q * kc + p * nr;
      const index_t n = std::min(nr, nc - q);
      for (index_t t = 0; t < n; ++t) d[t] = src[q + t];
      for (index_t t = n; t < nr; ++t) d[t] = T(0);
    }
  }
}

FASTCONV_CLONED(add_rows_any, add_rows,
                (const WideGeometry& g, index_t rows, const T* cols, T* xpad),
                (g, rows, cols, xpad))
FASTCONV_CLONED(copy_panels_any, copy_panels,
                (const WideGeometry& g, const T* xpad, index_t pc, index_t kc, index_t jc,
                 index_t nc, index_t nr, T* dst),
                (g, xpad, pc, kc, jc, nc, nr, dst))

}  // namespace

template <typename T>
void col2im_wide(const WideGeometry& g, index_t rows, const T* cols, T* xpad) {
  add_rows_any(g, rows, cols, xpad);
}

template <typename T>
void WideColsB<T>::pack(index_t pc, index_t kc, index_t jc, index_t nc, index_t nr, T* dst) const {
  copy_panels_any(g, xpad, pc, kc, jc, nc, nr, dst);
}

template <typename T>
const T* WideColsA<T>::block(index_t ic, index_t mc, index_t pc, index_t kc, index_t mr,
                             T* scratch) const {
  for (index_t r = 0; r < mc; r += mr) {
    T* dst = scratch + r * kc;
    const T* src[64];
    const index_t m = std::min(mr, mc - r);
    for (index_t i = 0; i < m; ++i) src[i] = xpad + g.row_offset(ic + r + i) + pc;
    for (index_t p = 0; p < kc; ++p) {
      index_t i = 0;
      for (; i < m; ++i) dst[p * mr + i] = src[i][p];
      for (; i < mr; ++i) dst[p * mr + i] = T(0);
    }
  }
  return scratch;
}

#define FASTCONV_INSTANTIATE(T)                                                         \
  template void pad_image<T>(const WideGeometry&, const T*, T*);                       \
  template void crop_image<T>(const WideGeometry&, const T*, T*);                      \
  template void widen_rows<T>(const WideGeometry&, index_t, index_t, const T*, T*);    \
  template void narrow_rows<T>(const WideGeometry&, index_t, index_t, const T*, T*);   \
  template void col2im_wide<T>(const WideGeometry&, index_t, const T*, T*);            \
  template struct WideColsB<T>;                                                        \
  template struct WideColsA<T>;
FASTCONV_INSTANTIATE(float)
FASTCONV_INSTANTIATE(double)
#undef FASTCONV_INSTANTIATE

}  // namespace fastconv
