// The im2col and wide-row GEMM passes of a convolution (see conv_gemm.h).
#include "conv/conv_gemm.h"

#include <algorithm>
#include <memory>
#include <type_traits>
#include <vector>

#include "conv/conv_gemm_common.h"
#include "conv/conv_wide.h"
#include "gemm/gemm.h"
#include "gemm/gemm_bf16.h"

namespace fastconv {
namespace {

template <typename T>
std::vector<GroupWeights<T>> pack_weights(const ConvShape& s, const T* w, bool transposed) {
  const index_t Fg = s.Fg(), CKK = s.CKK();
  std::vector<GroupWeights<T>> packed;
  packed.reserve(s.G);
  for (index_t g = 0; g < s.G; ++g) {
    const T* wg = w + g * Fg * CKK;
    if (transposed)
      packed.emplace_back(CKK, Fg, wg, 1, CKK, s.precision);
    else
      packed.emplace_back(Fg, CKK, wg, CKK, 1, s.precision);
  }
  return packed;
}

// The Fg x L maps of consecutive images side by side as one GEMM operand (Fg x images*L):
// B(k, j) = p[(j / L) * image_stride + k * L + j % L]. Small maps (a 4x4 output: L = 16)
// would otherwise each make a GEMM that fills half a register tile and streams all of A
// (the packed weights) for a few columns.
template <typename T>
struct ImagesB final : BSource<T> {
  const T* p;
  index_t L, image_stride;
  ImagesB(const T* p_, index_t L_, index_t stride) : p(p_), L(L_), image_stride(stride) {}
  void pack(index_t pc, index_t kc, index_t jc, index_t nc, index_t nr, T* dst) const override {
    struct Run {
      const T* src;  // row pc of its image's map
      index_t count, off;
    };
    Run runs[64];  // a panel of nr <= 64 columns spans at most nr images
    for (index_t q = 0; q < nc; q += nr) {
      const index_t n = std::min(nr, nc - q);
      index_t nruns = 0;
      for (index_t t = 0; t < n;) {
        const index_t j = jc + q + t, l = j % L, count = std::min(n - t, L - l);
        runs[nruns++] = {p + j / L * image_stride + pc * L + l, count, t};
        t += count;
      }
      T* panel = dst + q * kc;
      for (index_t k = 0; k < kc; ++k) {
        T* d = panel + k * nr;
        for (index_t r = 0; r < nruns; ++r)
          std::copy_n(runs[r].src + k * L, runs[r].count, d + runs[r].off);
        std::fill(d + n, d + nr, T(0));
      }
    }
  }
};

// Images per GEMM of the im2col passes: ~kBatchColumns columns, but at least one batch per
// thread (each thread then runs its own GEMMs, col2im and copies). The bits do not depend on
// it: each column of a GEMM sums over k alone.
constexpr index_t kBatchColumns = 256;
// Images of L columns each for ~kBatchColumns columns, between 1 and `most`.
index_t images_for_columns(index_t L, index_t most) {
  return std::clamp<index_t>(kBatchColumns / std::max<index_t>(L, 1), 1,
                             std::max<index_t>(most, 1));
}
index_t images_per_gemm(const ConvShape& s) {
  return images_for_columns(s.L(), ceil_div(s.N, index_t(max_threads())));
}

}  // namespace

bool wide_fits(const ConvShape& s) {
  return s.win.SH == 1 && s.win.SW == 1 && !s.pointwise();
}

// The wide-row path's packing is plain copies, but its junk columns cost Wp/OW - 1 more
// multiply-adds. Measured (AVX-512, batch 64), it wins where that waste is small or the GEMM
// is narrow (few output channels per group, so packing dominates); elsewhere im2col packing
// is cheaper.
bool wide_pays(const ConvShape& s, ConvPass pass) {
  const index_t Wp = s.OW + (s.win.KW - 1) * s.win.DW;
  switch (pass) {
    case ConvPass::forward: return 20 * Wp <= 23 * s.OW || s.Fg() <= 16;
    case ConvPass::backward_input: return 10 * Wp <= 11 * s.OW || s.Fg() <= 16;
    default: return 10 * Wp <= 11 * s.OW || s.Fg() <= 8;  // few filters: im2col copies dominate
  }
}

template <typename T>
void conv2d_forward_wide(const ConvShape& s, const T* x, const T* w, const T* bias, T* y) {
  const index_t Cg = s.Cg(), Fg = s.Fg(), L = s.L(), CKK = s.CKK(), HW = s.H * s.W;
  const std::vector<GroupWeights<T>> wp = pack_weights(s, w, false);
  const WideGeometry wg(s);
  const index_t xpad_size = round_up(wg.padded_size(), 16);
  run_items<T>(s.N, checked_add(xpad_size, checked_mul(Fg, wg.Lw)), Fg, wg.Lw,
               [&](index_t n, T* scratch, T* pack) {
    T* xpad = scratch;
    T* out = scratch + xpad_size;  // Fg x (OH*Wp)
    for (index_t g = 0; g < s.G; ++g) {
      pad_image(wg, x + (n * s.C + g * Cg) * HW, xpad);
      if (bias)
        for (index_t f = 0; f < Fg; ++f)
          std::fill(out + f * wg.Lw, out + (f + 1) * wg.Lw, bias[g * Fg + f]);
      wp[g].multiply(pack, wg.Lw, WideColsB<T>(wg, xpad), out, wg.Lw, bias != nullptr);
      narrow_rows(wg, Fg, s.OH, out, y + (n * s.F + g * Fg) * L);
    }
  });
}

template <typename T>
void conv2d_forward_im2col(const ConvShape& s, const T* x, const T* w, const T* bias, T* y) {
  const index_t Cg = s.Cg(), Fg = s.Fg(), L = s.L(), CKK = s.CKK(), HW = s.H * s.W;
  const bool direct = s.pointwise();
  const std::vector<GroupWeights<T>> wp = pack_weights(s, w, false);
  // The column matrix is never formed: the GEMM packs its B panels straight from the images.
  // One image: the product goes straight into y; several (small outputs): into out
  // (Fg x nb*L), then copied to each image's y.
  const index_t nb = direct ? 1 : images_per_gemm(s), width = nb * L;
  run_items<T>(ceil_div(s.N, nb), nb > 1 ? checked_mul(Fg, width) : 0, Fg, width,
               [&](index_t b, T* out, T* pack) {
    const index_t n0 = b * nb, count = std::min(nb, s.N - n0), cols = count * L;
    for (index_t g = 0; g < s.G; ++g) {
      const T* xg = x + (n0 * s.C + g * Cg) * HW;
      T* yg = y + (n0 * s.F + g * Fg) * L;
      T* c = nb > 1 ? out : yg;
      const index_t ldc = nb > 1 ? cols : L;
      // Bias first, then accumulate the product onto it.
      if (bias)
        for (index_t f = 0; f < Fg; ++f)
          std::fill(c + f * ldc, c + f * ldc + cols, bias[g * Fg + f]);
      if (direct)
        wp[g].multiply(pack, L, StridedB<T>(xg, L, 1), c, ldc, bias != nullptr);
      else
        wp[g].multiply(pack, cols, Im2colB<T>(xg, Cg, s.H, s.W, s.win, s.OH, s.OW, s.C * HW),
                       c, ldc, bias != nullptr);
      if (nb > 1)
        for (index_t i = 0; i < count; ++i)
          for (index_t f = 0; f < Fg; ++f)
            std::copy_n(out + f * ldc + i * L, L, yg + (i * s.F + f) * L);
    }
  });
}

template <typename T>
void conv2d_backward_input_wide(const ConvShape& s, const T* gy, const T* w, T* gx) {
  const index_t Cg = s.Cg(), Fg = s.Fg(), L = s.L(), CKK = s.CKK(), HW = s.H * s.W;
  const std::vector<GroupWeights<T>> wtp = pack_weights(s, w, true);
  // dcols (CKK x OH*Wp) = w^T . grad_y widened with zero junk columns; the junk columns of
  // dcols are then zero too, so col2im is a plain add of every row into the padded image.
  const WideGeometry wg(s);
  const index_t xpad_size = round_up(wg.padded_size(), 16);
  const index_t gyw_size = round_up(checked_mul(Fg, wg.Lw), 16);
  run_items<T>(s.N, checked_add(xpad_size, gyw_size, checked_mul(CKK, wg.Lw)), CKK, wg.Lw,
               [&](index_t n, T* scratch, T* pack) {
    T* dxpad = scratch;
    T* gyw = scratch + xpad_size;
    T* dcols = gyw + gyw_size;
    for (index_t g = 0; g < s.G; ++g) {
      widen_rows(wg, Fg, s.OH, gy + (n * s.F + g * Fg) * L, gyw);
      wtp[g].multiply(pack, wg.Lw, StridedB<T>(gyw, wg.Lw, 1), dcols, wg.Lw, false);
      std::fill(dxpad, dxpad + wg.padded_size(), T(0));
      col2im_wide(wg, CKK, dcols, dxpad);
      crop_image(wg, dxpad, gx + (n * s.C + g * Cg) * HW);
    }
  });
}

template <typename T>
void conv2d_backward_input_im2col(const ConvShape& s, const T* gy, const T* w, T* gx) {
  const index_t Cg = s.Cg(), Fg = s.Fg(), L = s.L(), CKK = s.CKK(), HW = s.H * s.W;
  const bool direct = s.pointwise();
  const std::vector<GroupWeights<T>> wtp = pack_weights(s, w, true);
  // dcols (CKK x nb*L) = w^T . grad_y of nb images side by side (1x1: one image, written
  // straight into grad_x), then col2im per image.
  const index_t nb = direct ? 1 : images_per_gemm(s), width = nb * L;
  run_items<T>(ceil_div(s.N, nb), direct ? 0 : checked_mul(CKK, width), CKK, width,
               [&](index_t b, T* dcols, T* pack) {
    const index_t n0 = b * nb, count = std::min(nb, s.N - n0);
    for (index_t g = 0; g < s.G; ++g) {
      const T* gyg = gy + (n0 * s.F + g * Fg) * L;
      if (direct) {
        wtp[g].multiply(pack, L, StridedB<T>(gyg, L, 1), gx + (n0 * s.C + g * Cg) * HW, L,
                        false);
        continue;
      }
      wtp[g].multiply(pack, count * L, ImagesB<T>(gyg, L, s.F * L), dcols, count * L, false);
      for (index_t i = 0; i < count; ++i) {
        T* gxg = gx + ((n0 + i) * s.C + g * Cg) * HW;
        std::fill(gxg, gxg + Cg * HW, T(0));
        col2im_image(dcols + i * L, count * L, Cg, s.H, s.W, s.win, s.OH, s.OW, gxg);
      }
    }
  });
}

template <typename T>
void conv2d_backward_weight_gemm(const ConvShape& s, const T* gy, const T* x, T* gw, bool wide) {
  const index_t Cg = s.Cg(), Fg = s.Fg(), L = s.L(), CKK = s.CKK(), HW = s.H * s.W;
  const index_t WSZ = s.F * CKK;
  // gw[g] += grad_y[n, g] (Fg x L) . cols^T: both operands are long contiguous rows over the
  // output positions, so it is computed as dot products of rows (gemm_nt_rows), with no
  // packing. The rows of cols are runs of the padded image on the wide path, else rows of an
  // explicit column buffer of nb images (or of the image itself for 1x1 convolutions).
  const bool direct = s.pointwise();
  // (the wide geometry only where it runs: elsewhere its padded image may not even have a size)
  const WideGeometry wg = wide ? WideGeometry(s) : WideGeometry();
  const index_t xpad_size = round_up(wg.padded_size(), 16);
  // im2col: the column matrices and grad_y maps of nb images side by side (a function of the
  // shape alone: it sets the order of the sums), so that small maps make one long reduction,
  // not one pass over all of gw per image.
  const index_t nb = direct || wide ? 1 : images_for_columns(L, s.N);
  const index_t width = nb * L;
  const index_t scratch = direct ? 0
                          : wide ? checked_add(xpad_size, checked_mul(Fg, wg.Lw))
                                 : checked_mul(checked_add(CKK, Fg), width);
  // Dot products pay one reduction per weight per image: worth it for long rows (many output
  // positions) or few weights; short rows and many weights go to the packed GEMM.
  const bool use_dot = width >= 512 || Fg * CKK <= 4096;
  const index_t chunks = std::min<index_t>(s.N, kWeightGradChunks);
  Scratch<T> partial = make_scratch<T>(chunks > 1 ? checked_mul(chunks, WSZ) : 0);
  // Chunk c sums images [N*c/chunks, N*(c+1)/chunks) into its own partial gradient.
  // (gemm_nt_rows packs for itself: no packing scratch here.)
  run_items<T>(chunks, scratch, 0, 0, [&](index_t c, T* buf, T*) {
    T* dst = chunks > 1 ? partial.get() + c * WSZ : gw;
    std::vector<const T*> a_rows(Fg), b_rows(CKK);
    const index_t n0 = s.N * c / chunks, n1 = s.N * (c + 1) / chunks;
    for (index_t n = n0; n < n1; n += nb) {
      const index_t count = std::min(nb, n1 - n);
      for (index_t g = 0; g < s.G; ++g) {
        const T* xg = x + (n * s.C + g * Cg) * HW;
        const T* gyg = gy + (n * s.F + g * Fg) * L;
        index_t K = L;
        if (wide) {
          T* xpad = buf;
          T* gyw = buf + xpad_size;
          pad_image(wg, xg, xpad);
          widen_rows(wg, Fg, s.OH, gyg, gyw);  // zero junk columns: they add nothing
          for (index_t f = 0; f < Fg; ++f) a_rows[f] = gyw + f * wg.Lw;
          for (index_t r = 0; r < CKK; ++r) b_rows[r] = xpad + wg.row_offset(r);
          K = wg.Lw;
        } else if (direct) {
          for (index_t f = 0; f < Fg; ++f) a_rows[f] = gyg + f * L;
          for (index_t r = 0; r < CKK; ++r) b_rows[r] = xg + r * L;
        } else {
          // rows of count*L: CKK of columns, then Fg of grad_y
          K = count * L;
          T* gyb = buf + CKK * K;
          for (index_t i = 0; i < count; ++i) {
            im2col_image(xg + i * s.C * HW, Cg, s.H, s.W, s.win, s.OH, s.OW, buf + i * L, K);
            for (index_t f = 0; f < Fg; ++f)
              std::copy_n(gyg + (i * s.F + f) * L, L, gyb + f * K + i * L);
          }
          for (index_t f = 0; f < Fg; ++f) a_rows[f] = gyb + f * K;
          for (index_t r = 0; r < CKK; ++r) b_rows[r] = buf + r * K;
        }
        gemm_nt_rows<T>(Fg, CKK, K, a_rows.data(), b_rows.data(), dst + g * Fg * CKK, CKK,
                        n > n0, use_dot, s.precision);
      }
    }
  });
  if (chunks > 1) sum_chunks_in_order(partial.get(), chunks, WSZ, gw);
}

#define FASTCONV_INSTANTIATE(T)                                                                \
  template void conv2d_forward_im2col<T>(const ConvShape&, const T*, const T*, const T*, T*);  \
  template void conv2d_forward_wide<T>(const ConvShape&, const T*, const T*, const T*, T*);    \
  template void conv2d_backward_input_im2col<T>(const ConvShape&, const T*, const T*, T*);     \
  template void conv2d_backward_input_wide<T>(const ConvShape&, const T*, const T*, T*);       \
  template void conv2d_backward_weight_gemm<T>(const ConvShape&, const T*, const T*, T*, bool);
FASTCONV_INSTANTIATE(float)
FASTCONV_INSTANTIATE(double)
#undef FASTCONV_INSTANTIATE

}  // namespace fastconv
