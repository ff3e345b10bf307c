#include "conv/im2col.h"

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

namespace {

// A run of consecutive columns l of one output row oh of the image at `image` (elements from
// Im2colB::x): columns [l0, l0+count) are the output positions (oh, ow0 .. ow0+count-1),
// stored at panel offset `off`.
struct Run {
  index_t oh, ow0, count, off, image;
};

}  // namespace

template <typename T>
__attribute__((always_inline)) inline void pack_im2col(const Im2colB<T>& b, index_t pc,
                                                       index_t kc, index_t jc, index_t nc,
                                                       index_t nr, T* dst) {
  const T* x = b.x;
  const index_t H = b.H, W = b.W, OW = b.OW, L = b.OH * b.OW;
  const Window2d& win = b.win;
  const index_t KK = win.KH * win.KW;
  Run runs[65];  // a panel of nr <= 64 columns spans at most nr runs
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
    index_t c = pc / KK, i = (pc % KK) / win.KW, j = pc % win.KW;
    for (index_t p = 0; p < kc; ++p) {
      T* d = panel + p * nr;
      const T* xc = x + c * H * W;
      const index_t off_w = j * win.DW - win.PW;
      for (index_t r = 0; r < nruns; ++r) {
        const Run& run = runs[r];
        T* out = d + run.off;
        const index_t ih = run.oh * win.SH - win.PH + i * win.DH;
        if (ih < 0 || ih >= H) {
          for (index_t t = 0; t < run.count; ++t) out[t] = T(0);
          continue;
        }
        const T* row = xc + run.image + ih * W;
        if (win.SW == 1) {
          // iw = ow0 + t + off_w must lie in [0, W)
          const index_t base = run.ow0 + off_w;
          const index_t lo = std::min(run.count, std::max<index_t>(0, -base));
          const index_t hi = std::max(lo, std::min(run.count, W - base));
          for (index_t t = 0; t < lo; ++t) out[t] = T(0);
          for (index_t t = lo; t < hi; ++t) out[t] = row[base + t];
          for (index_t t = hi; t < run.count; ++t) out[t] = T(0);
        } else {
          for (index_t t = 0; t < run.count; ++t) {
            const index_t iw = (run.ow0 + t) * win.SW + off_w;
            out[t] = (iw >= 0 && iw < W) ? row[iw] : T(0);
          }
        }
      }
      for (index_t t = n; t < nr; ++t) d[t] = T(0);
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

// One clone per ISA of the whole packing loop (the body above is inlined into each).
FASTCONV_CLONED(pack_im2col_cloned, pack_im2col,
                (const Im2colB<T>& b, index_t pc, index_t kc, index_t jc, index_t nc,
                 index_t nr, T* dst),
                (b, pc, kc, jc, nc, nr, dst))

template <typename T>
void Im2colB<T>::pack(index_t pc, index_t kc, index_t jc, index_t nc, index_t nr, T* dst) const {
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
