#include "conv/im2col.h"

#include <algorithm>
#include <type_traits>

#include "conv/im2col_rows.h"
#include "cpu.h"

namespace fastconv {

template <typename T>
void im2col_image(const T* x, index_t C, index_t H, index_t W, const Window2d& w, index_t OH,
                  index_t OW, T* cols, index_t ld) {
  if constexpr (std::is_same_v<T, float>)
    if (const Im2colKernels* k = im2col_kernels()) {
      k->image(x, C, H, W, w, OH, OW, cols, ld);
      return;
    }
  im2col_detail::image_rows<T, im2col_detail::ScalarRows<T>>(x, C, H, W, w, OH, OW, cols, ld);
}

template <typename T>
void col2im_image(const T* cols, index_t ld, index_t C, index_t H, index_t W, const Window2d& w,
                  index_t OH, index_t OW, T* x) {
  if constexpr (std::is_same_v<T, float>)
    if (const Im2colKernels* k = im2col_kernels())
      if (k->col2im && k->col2im(cols, ld, C, H, W, w, OH, OW, x)) return;
  for (index_t c = 0; c < C; ++c) {
    T* xc = x + c * H * W;
    for (index_t i = 0; i < w.KH; ++i) {
      for (index_t j = 0; j < w.KW; ++j) {
        const T* row = cols + ((c * w.KH + i) * w.KW + j) * ld;
        const index_t off_w = j * w.DW - w.PW;
        index_t lo, hi;
        im2col_detail::valid_range(OW, W, w.SW, off_w, lo, hi);
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

const Im2colKernels* im2col_kernels() {
  switch (selected_isa()) {
    case Isa::avx512: return im2col_kernels_avx512();
    case Isa::avx2: return im2col_kernels_avx2();
    default: return nullptr;
  }
}

// One clone per ISA of the whole packing loop (the body is inlined into each), for float64
// and for float32 where no vector kernels run.
template <typename T>
__attribute__((always_inline)) inline void pack_scalar_rows(const Im2colB<T>& b, index_t pc,
                                                            index_t kc, index_t jc, index_t nc,
                                                            index_t nr, T* dst) {
  im2col_detail::pack_rows<T, im2col_detail::ScalarRows<T>>(b, pc, kc, jc, nc, nr, dst);
}
FASTCONV_CLONED(pack_im2col_cloned, pack_scalar_rows,
                (const Im2colB<T>& b, index_t pc, index_t kc, index_t jc, index_t nc,
                 index_t nr, T* dst),
                (b, pc, kc, jc, nc, nr, dst))

template <typename T>
void Im2colB<T>::pack(index_t pc, index_t kc, index_t jc, index_t nc, index_t nr, T* dst) const {
  if constexpr (std::is_same_v<T, float>)
    if (const Im2colKernels* k = im2col_kernels()) {
      k->pack(*this, pc, kc, jc, nc, nr, dst);
      return;
    }
  pack_im2col_cloned(*this, pc, kc, jc, nc, nr, dst);
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
template struct Im2colB<float>;
template struct Im2colB<double>;

}  // namespace fastconv
