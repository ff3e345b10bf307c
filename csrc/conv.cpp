#include "conv.h"

#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "conv_direct.h"
#include "conv_winograd.h"
#include "conv_wide.h"
#include "gemm.h"
#include "pool.h"

namespace fastconv {
namespace {

// Runs body(i, cols, pack) for i in [0, count). With at least as many items as threads, the
// items are spread over the threads, each with its own scratch (cols: cols_size elements;
// pack: GEMM packing buffers), and run whole, independent GEMMs: no barrier per small step.
// Otherwise the items run in order and pack is nullptr: the body then splits each GEMM over
// the threads (see `matmul`). All scratch is allocated here, before any parallel region.
template <typename T, typename Body>
void run_items(index_t count, index_t cols_size, Body&& body) {
  const index_t cols_part = round_up(cols_size, 16);
  for_each_item<T>(count, cols_part + gemm_scratch_size<T>(), [&](index_t i, T* mine, bool split) {
    body(i, mine, split ? static_cast<T*>(nullptr) : mine + cols_part);
  });
}

// *out = whether any of p[0, n) is ±inf or NaN (x - x is 0 exactly for the finite ones).
template <typename T>
__attribute__((always_inline)) inline void any_nonfinite(index_t n, const T* p, int* out) {
  int bad = 0;
  for (index_t i = 0; i < n; ++i) bad |= (p[i] - p[i]) != T(0);
  *out = bad;
}

FASTCONV_CLONED(any_nonfinite_any, any_nonfinite, (index_t n, const T* p, int* out), (n, p, out))

// GEMM on this thread's packing scratch, or split over all threads when there is none.
// Both give the same bits: threads split M or N, never the reduction.
template <typename T>
void matmul(T* pack, index_t M, index_t N, index_t K, const ASource<T>& A, const BSource<T>& B,
            T* C, index_t ldc, bool accumulate) {
  if (pack)
    gemm<T>(M, N, K, A, B, C, ldc, accumulate, pack);
  else
    gemm_parallel<T>(M, N, K, A, B, C, ldc, accumulate);
}

// Each group's weights packed once per call and shared by all images; `transposed` packs
// w[g]^T (CKK x Fg) for the input gradient.
template <typename T>
std::vector<PackedA<T>> pack_weights(const ConvShape& s, const T* w, bool transposed) {
  const index_t Fg = s.Fg(), CKK = s.CKK();
  std::vector<PackedA<T>> packed;
  packed.reserve(s.G);
  for (index_t g = 0; g < s.G; ++g) {
    const T* wg = w + g * Fg * CKK;
    if (transposed)
      packed.emplace_back(CKK, Fg, wg, 1, CKK);
    else
      packed.emplace_back(Fg, CKK, wg, CKK, 1);
  }
  return packed;
}

}  // namespace

template <typename T>
bool has_nonfinite(const T* p, index_t n) {
  int bad = 0;
  any_nonfinite_any(n, p, &bad);
  return bad != 0;
}
template bool has_nonfinite<float>(const float*, index_t);
template bool has_nonfinite<double>(const double*, index_t);

// Stride-1, non-pointwise convolutions may take the wide-row path (see conv_wide.h): its
// packing is plain copies, but its junk columns cost Wp/OW - 1 more multiply-adds. Measured
// here (AVX-512, batch 64), it wins where that waste is small or the GEMM is narrow (few
// output channels per group, so packing dominates); elsewhere im2col packing is cheaper.
// 0 auto, 1 wide wherever possible, 2 im2col (never wide), 3 direct wherever possible,
// 4 Winograd wherever possible, 5 the few-channel NCHW kernels (forward, input and weight
// gradients) wherever possible.
std::atomic<int> g_algorithm{0};

enum class Pass { forward, backward_input, backward_weight };

// float32 convolutions with many channels go to the direct channels-last kernels
// (conv_direct.h) when AVX-512 is in use; "wide" and "im2col" keep them on the GEMM paths.
template <typename T>
bool direct(const ConvShape& s, DirectPass pass) {
  if constexpr (!std::is_same_v<T, float>) return false;
  const int forced = g_algorithm.load(std::memory_order_relaxed);
  if (forced == 1 || forced == 2) return false;
  return use_direct(s, pass, forced == 3);
}

// 3x3 stride-1 float32 layers with many channels take Winograd F(2x2, 3x3) (2.25x fewer
// multiplies) in "auto" mode; "winograd" forces it wherever it applies.
template <typename T>
bool winograd(const ConvShape& s, DirectPass pass) {
  if constexpr (!std::is_same_v<T, float>) return false;
  const int forced = g_algorithm.load(std::memory_order_relaxed);
  if (forced != 0 && forced != 4) return false;
  return use_winograd(s, pass, forced == 4);
}

// The few-channel NCHW kernels (conv_direct.h) where `use` takes the shape in "auto" mode;
// "direct_nchw" forces them wherever they apply.
inline bool few_channels(bool (*use)(const ConvShape&, bool), const ConvShape& s) {
  const int forced = g_algorithm.load(std::memory_order_relaxed);
  return (forced == 0 || forced == 5) && use(s, forced == 5);
}

inline bool use_wide(const ConvShape& s, Pass pass) {
  if (s.win.SH != 1 || s.win.SW != 1 || s.pointwise()) return false;
  const int forced = g_algorithm.load(std::memory_order_relaxed);
  if (forced == 1 || forced == 2) return forced == 1;
  const index_t Wp = s.OW + (s.win.KW - 1) * s.win.DW;
  switch (pass) {
    case Pass::forward: return 20 * Wp <= 23 * s.OW || s.Fg() <= 16;
    case Pass::backward_input: return 10 * Wp <= 11 * s.OW || s.Fg() <= 16;
    default: return 10 * Wp <= 11 * s.OW || s.Fg() <= 8;  // few filters: im2col copies dominate
  }
}

bool set_conv_algorithm(const std::string& name) {
  const int v = name == "auto"     ? 0
                : name == "wide"   ? 1
                : name == "im2col" ? 2
                : name == "direct"   ? 3
                : name == "winograd" ? 4
                : name == "direct_nchw" ? 5
                                        : -1;
  if (v < 0) return false;
  g_algorithm.store(v, std::memory_order_relaxed);
  return true;
}

// Weights holding ±inf or NaN take the plain im2col GEMM in the forward and input-gradient
// passes: it multiplies every tap by every input it covers, zero padding included, once, as
// the reference and PyTorch's native convolution do (0 * inf = NaN where an inf tap meets the
// padding; PyTorch's oneDNN path skips the padding, so it depends on the shape there). The other
// paths skip taps that read only padding (direct, few-channel), or run the input gradient
// over a zero-padded grad_y or junk columns (NaN where the true gradient is finite), and
// Winograd's transforms subtract. One scan of the weights, small beside the images.
template <typename T>
bool nonfinite_weights(const ConvShape& s, const T* w) {
  return has_nonfinite(w, s.F * s.CKK());
}

template <typename T>
void conv2d_forward(const ConvShape& s, const T* x, const T* w, const T* bias, T* y) {
  const bool plain = nonfinite_weights(s, w);
  if constexpr (std::is_same_v<T, float>) {
    if (!plain) {
      if (winograd<T>(s, DirectPass::forward) && conv2d_forward_winograd(s, x, w, bias, y))
        return;
      if (few_channels(use_small_channels, s))
        return conv2d_forward_small_channels(s, x, w, bias, y);
      if (direct<T>(s, DirectPass::forward)) return conv2d_forward_direct(s, x, w, bias, y);
    }
  }
  const index_t Cg = s.Cg(), Fg = s.Fg(), L = s.L(), CKK = s.CKK(), HW = s.H * s.W;
  const bool direct = s.pointwise();
  const std::vector<PackedA<T>> wp = pack_weights(s, w, false);
  if (!plain && use_wide(s, Pass::forward)) {
    const WideGeometry wg(s);
    const index_t xpad_size = round_up(wg.padded_size(), 16);
    run_items<T>(s.N, xpad_size + Fg * wg.Lw, [&](index_t n, T* scratch, T* pack) {
      T* xpad = scratch;
      T* out = scratch + xpad_size;  // Fg x (OH*Wp)
      for (index_t g = 0; g < s.G; ++g) {
        pad_image(wg, x + (n * s.C + g * Cg) * HW, xpad);
        if (bias)
          for (index_t f = 0; f < Fg; ++f)
            std::fill(out + f * wg.Lw, out + (f + 1) * wg.Lw, bias[g * Fg + f]);
        matmul<T>(pack, Fg, wg.Lw, CKK, wp[g], WideColsB<T>(wg, xpad), out, wg.Lw,
                  bias != nullptr);
        narrow_rows(wg, Fg, s.OH, out, y + (n * s.F + g * Fg) * L);
      }
    });
    return;
  }
  // The column matrix is never formed: the GEMM packs its B panels straight from the image.
  run_items<T>(s.N, 0, [&](index_t n, T*, T* pack) {
    for (index_t g = 0; g < s.G; ++g) {
      const T* xg = x + (n * s.C + g * Cg) * HW;
      T* yg = y + (n * s.F + g * Fg) * L;
      // Bias first, then accumulate the product onto it.
      if (bias)
        for (index_t f = 0; f < Fg; ++f) std::fill(yg + f * L, yg + (f + 1) * L, bias[g * Fg + f]);
      if (direct)
        matmul<T>(pack, Fg, L, CKK, wp[g], StridedB<T>(xg, L, 1), yg, L, bias != nullptr);
      else
        matmul<T>(pack, Fg, L, CKK, wp[g], Im2colB<T>(xg, Cg, s.H, s.W, s.win, s.OH, s.OW), yg,
                  L, bias != nullptr);
    }
  });
}

template <typename T>
void conv2d_backward_input(const ConvShape& s, const T* gy, const T* w, T* gx) {
  const bool plain = nonfinite_weights(s, w);  // see conv2d_forward
  if constexpr (std::is_same_v<T, float>) {
    if (!plain) {
      if (winograd<T>(s, DirectPass::backward_input) &&
          conv2d_backward_input_winograd(s, gy, w, gx))
        return;
      if (few_channels(use_small_channels_input_grad, s))
        return conv2d_backward_input_small_channels(s, gy, w, gx);
      if (direct<T>(s, DirectPass::backward_input))
        return conv2d_backward_input_direct(s, gy, w, gx);
    }
  }
  const index_t Cg = s.Cg(), Fg = s.Fg(), L = s.L(), CKK = s.CKK(), HW = s.H * s.W;
  const bool direct = s.pointwise();
  const std::vector<PackedA<T>> wtp = pack_weights(s, w, true);
  if (!plain && use_wide(s, Pass::backward_input)) {
    // dcols (CKK x OH*Wp) = w^T . grad_y widened with zero junk columns; the junk columns of
    // dcols are then zero too, so col2im is a plain add of every row into the padded image.
    const WideGeometry wg(s);
    const index_t xpad_size = round_up(wg.padded_size(), 16);
    const index_t gyw_size = round_up(Fg * wg.Lw, 16);
    run_items<T>(s.N, xpad_size + gyw_size + CKK * wg.Lw, [&](index_t n, T* scratch, T* pack) {
      T* dxpad = scratch;
      T* gyw = scratch + xpad_size;
      T* dcols = gyw + gyw_size;
      for (index_t g = 0; g < s.G; ++g) {
        widen_rows(wg, Fg, s.OH, gy + (n * s.F + g * Fg) * L, gyw);
        matmul<T>(pack, CKK, wg.Lw, Fg, wtp[g], StridedB<T>(gyw, wg.Lw, 1), dcols, wg.Lw, false);
        std::fill(dxpad, dxpad + wg.padded_size(), T(0));
        col2im_wide(wg, CKK, dcols, dxpad);
        crop_image(wg, dxpad, gx + (n * s.C + g * Cg) * HW);
      }
    });
    return;
  }
  run_items<T>(s.N, direct ? 0 : CKK * L, [&](index_t n, T* dcols, T* pack) {
    for (index_t g = 0; g < s.G; ++g) {
      const T* gyg = gy + (n * s.F + g * Fg) * L;
      T* gxg = gx + (n * s.C + g * Cg) * HW;
      matmul<T>(pack, CKK, L, Fg, wtp[g], StridedB<T>(gyg, L, 1), direct ? gxg : dcols, L, false);
      if (!direct) {
        std::fill(gxg, gxg + Cg * HW, T(0));
        col2im_image(dcols, L, Cg, s.H, s.W, s.win, s.OH, s.OW, gxg);
      }
    }
  });
}

template <typename T>
void conv2d_backward_weight(const ConvShape& s, const T* gy, const T* x, T* gw) {
  const index_t Cg = s.Cg(), Fg = s.Fg(), L = s.L(), CKK = s.CKK(), HW = s.H * s.W;
  const index_t WSZ = s.F * CKK;
  if (s.N == 0) {
    std::fill(gw, gw + WSZ, T(0));
    return;
  }
  if constexpr (std::is_same_v<T, float>) {
    if (winograd<T>(s, DirectPass::backward_weight) &&
        conv2d_backward_weight_winograd(s, gy, x, gw))
      return;
    if (few_channels(use_small_channels_weight_grad, s))
      return conv2d_backward_weight_small_channels(s, gy, x, gw);
    if (direct<T>(s, DirectPass::backward_weight))
      return conv2d_backward_weight_direct(s, gy, x, gw);
  }
  // gw[g] += grad_y[n, g] (Fg x L) . cols^T: both operands are long contiguous rows over the
  // output positions, so it is computed as dot products of rows (gemm_nt_rows), with no
  // packing. The rows of cols are runs of the padded image on the wide path, else rows of an
  // explicit per-image column buffer (or of the image itself for 1x1 convolutions).
  const bool direct = s.pointwise();
  // The wide rows' junk columns pair zero gradients with real image values: an inf there
  // would add 0 * inf = NaN to taps that never see it, so such images take im2col.
  const bool wide = !direct && use_wide(s, Pass::backward_weight) &&
                    !has_nonfinite(x, s.N * s.C * s.H * s.W);
  const WideGeometry wg(s);
  const index_t xpad_size = round_up(wg.padded_size(), 16);
  const index_t scratch = direct ? 0 : wide ? xpad_size + Fg * wg.Lw : CKK * L;
  // Dot products pay one reduction per weight per image: worth it for long rows (many output
  // positions) or few weights; short rows and many weights go to the packed GEMM.
  const bool use_dot = L >= 512 || Fg * CKK <= 4096;
  const index_t chunks = std::min<index_t>(s.N, kWeightGradChunks);
  Scratch<T> partial = make_scratch<T>(chunks > 1 ? chunks * WSZ : 0);
  // Chunk c sums images [N*c/chunks, N*(c+1)/chunks) into its own partial gradient.
  run_items<T>(chunks, scratch, [&](index_t c, T* buf, T*) {
    T* dst = chunks > 1 ? partial.get() + c * WSZ : gw;
    std::vector<const T*> a_rows(Fg), b_rows(CKK);
    const index_t n0 = s.N * c / chunks, n1 = s.N * (c + 1) / chunks;
    for (index_t n = n0; n < n1; ++n) {
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
        } else {
          for (index_t f = 0; f < Fg; ++f) a_rows[f] = gyg + f * L;
          if (!direct) im2col_image(xg, Cg, s.H, s.W, s.win, s.OH, s.OW, buf, L);
          for (index_t r = 0; r < CKK; ++r) b_rows[r] = (direct ? xg : buf) + r * L;
        }
        gemm_nt_rows<T>(Fg, CKK, K, a_rows.data(), b_rows.data(), dst + g * Fg * CKK, CKK,
                        n > n0, use_dot);
      }
    }
  });
  if (chunks > 1) sum_chunks_in_order(partial.get(), chunks, WSZ, gw);
}

// Lane sums of one row of n values into out[0..16) (see add_lanes).
template <typename T>
__attribute__((always_inline)) inline void row_lanes(index_t n, const T* p, T* out) {
  T acc[kLanes] = {};
  add_lanes<T>(n, [&](index_t i) { return p[i]; }, acc);
  for (int k = 0; k < kLanes; ++k) out[k] = acc[k];
}

FASTCONV_CLONED(row_lanes_any, row_lanes, (index_t n, const T* p, T* out), (n, p, out))

// gb[f] from the rows' lane sums lp[(n*F + f)*16 + k]: per channel the rows' lanes in image
// order, then the lanes in order (a fixed order whatever the number of threads). Called by
// every thread of an enclosing parallel region (or alone).
template <typename T>
void bias_from_lanes(const ConvShape& s, const T* lp, T* gb) {
#pragma omp for schedule(static)
  for (index_t f = 0; f < s.F; ++f) {
    T acc[kLanes] = {};
    for (index_t n = 0; n < s.N; ++n)
      for (int k = 0; k < kLanes; ++k) acc[k] += lp[(n * s.F + f) * kLanes + k];
    T sum = 0;
    for (int k = 0; k < kLanes; ++k) sum += acc[k];
    gb[f] = sum;
  }
}

template <typename T>
void conv2d_backward_bias(const ConvShape& s, const T* gy, T* gb) {
  // Rows (n, f) in memory order, threads over contiguous ranges (a channel's own rows lie
  // F*L apart: the hardware prefetcher restarts at each), 16 lane sums per row; then
  // bias_from_lanes.
  const index_t L = s.L(), R = s.N * s.F;
  Scratch<T> lanes = make_scratch<T>(R * kLanes);
  T* lp = lanes.get();
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (index_t r = 0; r < R; ++r) row_lanes_any(L, gy + r * L, lp + r * kLanes);
    bias_from_lanes(s, lp, gb);
  }
}

template <typename T>
bool conv2d_forward_max_pool(const ConvShape& s, const T* x, const T* w, const T* bias,
                             const PoolShape& ps, bool relu, T* y, std::int64_t* indices) {
  if constexpr (std::is_same_v<T, float>) {
    // The paths of conv2d_forward that can pool each image's output planes from cache; false
    // elsewhere, and for non-finite weights or inputs: the caller then runs the two calls.
    // The weights are scanned only where a fused path applies (conv2d_forward scans them in
    // the two calls).
    if (s.N == 0) return false;
    const bool wino = winograd<T>(s, DirectPass::forward);
    if (!wino && !few_channels(use_small_channels, s)) return false;
    if (nonfinite_weights(s, w)) return false;
    const PoolAfter pool{ps, relu, y, indices};
    if (wino) return conv2d_forward_winograd(s, x, w, bias, nullptr, &pool);
    conv2d_forward_small_channels(s, x, w, bias, nullptr, &pool);
    return true;
  }
  return false;
}

template <typename T>
bool conv2d_backward_weight_through_max_pool(const ConvShape& s, const PooledGrad<T>& pg,
                                             const T* x, T* gw, T* gb) {
  const index_t L = s.L(), PL = pg.PH * pg.PW;
  if constexpr (std::is_same_v<T, float>) {
    if (s.N > 0 && few_channels(use_small_channels_weight_grad, s)) {
      // Each block of gradient planes made where it is used, in this thread's buffer (L1/L2),
      // with its bias lane sums: the same values, in the same order, as the two passes.
      std::atomic<bool> ok{true};
      Scratch<T> lanes = make_scratch<T>(gb ? s.N * s.F * kLanes : 0);
      conv2d_backward_weight_small_channels(
          s,
          [&](index_t n, index_t f, index_t nf, float* buf) -> const float* {
            // The pooled planes after these (this thread's next block, mostly), asked for now.
            const index_t next = n * s.F + f + nf, count = std::min(nf, s.N * s.F - next);
            if (count > 0) {
              prefetch_all(pg.g + next * PL, sizeof(float) * count * PL);
              prefetch_all(pg.indices + next * PL, sizeof(std::int64_t) * count * PL);
              if (pg.relu_y) prefetch_all(pg.relu_y + next * PL, sizeof(float) * count * PL);
            }
            for (index_t i = 0; i < nf; ++i) {
              const index_t r = n * s.F + f + i;
              if (!max_pool_backward_plane(PL, L, pg.g + r * PL, pg.indices + r * PL,
                                           pg.relu_y ? pg.relu_y + r * PL : nullptr,
                                           buf + i * L))
                ok.store(false, std::memory_order_relaxed);
              if (gb) row_lanes_any(L, buf + i * L, lanes.get() + r * kLanes);
            }
            return buf;
          },
          false, x, gw);
      if (gb) {
#pragma omp parallel
        bias_from_lanes(s, lanes.get(), gb);
      }
      return ok.load();
    }
  }
  // Elsewhere the gradient is stored whole, then the usual passes.
  Scratch<T> gy = make_scratch<T>(s.N * s.F * L);
  const PoolShape ps{s.N, s.F, s.OH, s.OW, pg.PH, pg.PW, {}};
  if (!max_pool2d_backward<T>(ps, pg.g, pg.indices, gy.get(), pg.relu_y)) return false;
  conv2d_backward_weight(s, gy.get(), x, gw);
  if (gb) conv2d_backward_bias(s, gy.get(), gb);
  return true;
}

#define FASTCONV_INSTANTIATE(T)                                                         \
  template void conv2d_forward<T>(const ConvShape&, const T*, const T*, const T*, T*); \
  template void conv2d_backward_input<T>(const ConvShape&, const T*, const T*, T*);     \
  template void conv2d_backward_weight<T>(const ConvShape&, const T*, const T*, T*);    \
  template void conv2d_backward_bias<T>(const ConvShape&, const T*, T*);                \
  template bool conv2d_forward_max_pool<T>(const ConvShape&, const T*, const T*, const T*, \
                                           const PoolShape&, bool, T*, std::int64_t*);     \
  template bool conv2d_backward_weight_through_max_pool<T>(const ConvShape&,              \
                                                           const PooledGrad<T>&, const T*, \
                                                           T*, T*);
FASTCONV_INSTANTIATE(float)
FASTCONV_INSTANTIATE(double)
#undef FASTCONV_INSTANTIATE

}  // namespace fastconv
