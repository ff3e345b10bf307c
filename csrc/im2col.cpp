#include "im2col.h"

#include <algorithm>
#include <cstring>

namespace fastconv {
namespace {

// Range of ow for which iw = ow*S - P + off lies in [0, W): [lo, hi).
inline void valid_range(index_t OW, index_t W, index_t S, index_t off, index_t& lo, index_t& hi) {
  // iw >= 0  <=>  ow >= ceil(-off / S);  iw < W  <=>  ow <= (W - 1 - off) / S
  lo = off >= 0 ? 0 : (-off + S - 1) / S;
  hi = (W - 1 - off) < 0 ? 0 : (W - 1 - off) / S + 1;
  lo = std::min(lo, OW);
  hi = std::max(lo, std::min(hi, OW));
}

}  // namespace

template <typename T>
void im2col_image(const T* x, index_t C, index_t H, index_t W, const Window2d& w, index_t OH,
                  index_t OW, T* cols, index_t ld) {
  for (index_t c = 0; c < C; ++c) {
    const T* xc = x + c * H * W;
    for (index_t i = 0; i < w.KH; ++i) {
      for (index_t j = 0; j < w.KW; ++j) {
        T* row = cols + ((c * w.KH + i) * w.KW + j) * ld;
        const index_t off_w = j * w.DW - w.PW;
        index_t lo, hi;
        valid_range(OW, W, w.SW, off_w, lo, hi);
        for (index_t oh = 0; oh < OH; ++oh) {
          T* dst = row + oh * OW;
          const index_t ih = oh * w.SH - w.PH + i * w.DH;
          if (ih < 0 || ih >= H) {
            std::fill(dst, dst + OW, T(0));
            continue;
          }
          const T* src = xc + ih * W;  // src[ow*SW + off_w] is in range for ow in [lo, hi)
          std::fill(dst, dst + lo, T(0));
          if (w.SW == 1) {
            if (hi > lo) std::memcpy(dst + lo, src + lo + off_w, sizeof(T) * (hi - lo));
          } else {
            for (index_t ow = lo; ow < hi; ++ow) dst[ow] = src[ow * w.SW + off_w];
          }
          std::fill(dst + hi, dst + OW, T(0));
        }
      }
    }
  }
}

template <typename T>
void col2im_image(const T* cols, index_t ld, index_t C, index_t H, index_t W, const Window2d& w,
                  index_t OH, index_t OW, T* x) {
  for (index_t c = 0; c < C; ++c) {
    T* xc = x + c * H * W;
    for (index_t i = 0; i < w.KH; ++i) {
      for (index_t j = 0; j < w.KW; ++j) {
        const T* row = cols + ((c * w.KH + i) * w.KW + j) * ld;
        const index_t off_w = j * w.DW - w.PW;
        index_t lo, hi;
        valid_range(OW, W, w.SW, off_w, lo, hi);
        for (index_t oh = 0; oh < OH; ++oh) {
          const index_t ih = oh * w.SH - w.PH + i * w.DH;
          if (ih < 0 || ih >= H) continue;
          const T* src = row + oh * OW;
          T* dst = xc + ih * W;
          for (index_t ow = lo; ow < hi; ++ow) dst[ow * w.SW + off_w] += src[ow];
        }
      }
    }
  }
}

template <typename T>
void im2col(const T* x, index_t N, index_t C, index_t H, index_t W, const Window2d& win,
            index_t OH, index_t OW, T* cols) {
  const index_t L = OH * OW, rows = win.KH * win.KW;
#pragma omp parallel for schedule(static)
  for (index_t nc = 0; nc < N * C; ++nc)
    im2col_image(x + nc * H * W, 1, H, W, win, OH, OW, cols + nc * rows * L, L);
}

template <typename T>
void col2im(const T* cols, index_t N, index_t C, index_t H, index_t W, const Window2d& win,
            index_t OH, index_t OW, T* x) {
  const index_t L = OH * OW, rows = win.KH * win.KW;
#pragma omp parallel for schedule(static)
  for (index_t nc = 0; nc < N * C; ++nc) {
    T* xi = x + nc * H * W;
    std::fill(xi, xi + H * W, T(0));
    col2im_image(cols + nc * rows * L, L, 1, H, W, win, OH, OW, xi);
  }
}

#define FASTCONV_INSTANTIATE(T)                                                              \
  template void im2col_image<T>(const T*, index_t, index_t, index_t, const Window2d&, index_t, \
                                index_t, T*, index_t);                                       \
  template void col2im_image<T>(const T*, index_t, index_t, index_t, index_t, const Window2d&, \
                                index_t, index_t, T*);                                       \
  template void im2col<T>(const T*, index_t, index_t, index_t, index_t, const Window2d&,      \
                          index_t, index_t, T*);                                             \
  template void col2im<T>(const T*, index_t, index_t, index_t, index_t, const Window2d&,      \
                          index_t, index_t, T*);
FASTCONV_INSTANTIATE(float)
FASTCONV_INSTANTIATE(double)
#undef FASTCONV_INSTANTIATE

}  // namespace fastconv
