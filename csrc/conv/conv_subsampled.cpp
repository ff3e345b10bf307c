// Strided 1x1 convolutions as pointwise ones on the subsampled image (see conv_subsampled.h).
#include "conv/conv_subsampled.h"

#include <algorithm>

namespace fastconv {
namespace {

// The pointwise layer on the subsampled image: OH x OW inputs, stride 1.
ConvShape pointwise_shape(const ConvShape& s) {
  ConvShape p = s;
  p.H = s.OH;
  p.W = s.OW;
  p.win = Window2d{1, 1, 1, 1, 0, 0, 1, 1};
  return p;
}

// xs[plane][i][j] = x[plane][i*SH][j*SW] for the N*C planes, threads over planes.
template <typename T>
void subsample(const ConvShape& s, const T* x, T* xs) {
  const index_t planes = s.N * s.C, HW = s.H * s.W, L = s.L(), SH = s.win.SH, SW = s.win.SW;
#pragma omp parallel for schedule(static)
  for (index_t q = 0; q < planes; ++q)
    for (index_t i = 0; i < s.OH; ++i) {
      const T* src = x + q * HW + i * SH * s.W;
      T* dst = xs + q * L + i * s.OW;
      for (index_t j = 0; j < s.OW; ++j) dst[j] = src[j * SW];
    }
}

}  // namespace

bool use_subsampled(const ConvShape& s) {
  const Window2d& win = s.win;
  return s.N > 0 && win.KH == 1 && win.KW == 1 && (win.SH > 1 || win.SW > 1) && win.PH == 0 &&
         win.PW == 0 && s.OH > 0 && s.OW > 0 && (s.OH - 1) * win.SH < s.H &&
         (s.OW - 1) * win.SW < s.W;
}

template <typename T>
void conv2d_forward_subsampled(const ConvShape& s, const T* x, const T* w, const T* bias, T* y) {
  Scratch<T> xs = make_scratch<T>(s.N * s.C * s.L());
  subsample(s, x, xs.get());
  conv2d_forward(pointwise_shape(s), xs.get(), w, bias, y);
}

template <typename T>
void conv2d_backward_input_subsampled(const ConvShape& s, const T* gy, const T* w, T* gx) {
  const index_t planes = s.N * s.C, HW = s.H * s.W, L = s.L(), SH = s.win.SH, SW = s.win.SW;
  Scratch<T> gxs = make_scratch<T>(planes * L);
  conv2d_backward_input(pointwise_shape(s), gy, w, gxs.get());
  // Pixels between the strides get no gradient.
#pragma omp parallel for schedule(static)
  for (index_t q = 0; q < planes; ++q) {
    T* dst = gx + q * HW;
    std::fill(dst, dst + HW, T(0));
    const T* src = gxs.get() + q * L;
    for (index_t i = 0; i < s.OH; ++i)
      for (index_t j = 0; j < s.OW; ++j) dst[i * SH * s.W + j * SW] = src[i * s.OW + j];
  }
}

template <typename T>
void conv2d_backward_weight_subsampled(const ConvShape& s, const T* gy, const T* x, T* gw) {
  Scratch<T> xs = make_scratch<T>(s.N * s.C * s.L());
  subsample(s, x, xs.get());
  conv2d_backward_weight(pointwise_shape(s), gy, xs.get(), gw);
}

#define FASTCONV_INSTANTIATE(T)                                                                  \
  template void conv2d_forward_subsampled<T>(const ConvShape&, const T*, const T*, const T*, T*); \
  template void conv2d_backward_input_subsampled<T>(const ConvShape&, const T*, const T*, T*);   \
  template void conv2d_backward_weight_subsampled<T>(const ConvShape&, const T*, const T*, T*);
FASTCONV_INSTANTIATE(float)
FASTCONV_INSTANTIATE(double)
#undef FASTCONV_INSTANTIATE

}  // namespace fastconv
