// Winograd F(4x4, 3x3): the transforms, and the policy that runs them on the shared drivers
// (conv_winograd_driver.h). Each 4x4 block of outputs comes from a 6x6 input tile: 36
// multiplies per 16 outputs per channel pair, against F(2x2, 3x3)'s 16 per 4 (1.78x fewer)
// and direct summation's 144.
//
// Interpolation points 0, 1, -1, 1/2, -2 and infinity (Barabasz et al., "Error analysis and
// improving the accuracy of Winograd convolution for deep neural networks", 2020): their
// float32 error is about half that of the usual 0, ±1, ±2 (Lavin & Gray), whose
// transforms reach 8^2 in the inverse and 5^2 in the input transform. Every coefficient of
// B^T and A^T is a small multiple of a power of two; G's (thirds, fifteenths) are applied in
// double.
//
//   B^T = [ 1 -3/2  -2  3/2   1  0 ]   A^T = [ 1  1  1    1    1  0 ]
//         [ 0   -1 1/2  5/2   1  0 ]         [ 0  1 -1  1/2   -2  0 ]
//         [ 0    1 -5/2 1/2   1  0 ]         [ 0  1  1  1/4    4  0 ]
//         [ 0   -2  -1    2   1  0 ]         [ 0  1 -1  1/8   -8  1 ]
//         [ 0  1/2  -1 -1/2   1  0 ]
//         [ 0    1 -3/2  -2 3/2  1 ]   G = [ 1 0 0; 1/3 1/3 1/3; -1/3 1/3 -1/3;
//                                             -16/15 -8/15 -4/15; 1/15 -2/15 4/15; 0 0 1 ]
#include "conv/conv_winograd.h"

#include <algorithm>

#include "conv/conv_winograd_driver.h"
#include "cpu.h"

namespace fastconv {
namespace {

using winograd::kKernelBatch;


// ---- 1-D transforms of one column or row of a tile ---------------------------------------

// o = B^T v (6 values).
template <typename T>
__attribute__((always_inline)) inline void input_1d(const T v[6], T o[6]) {
  const T s = v[4] - v[2], dd = v[3] - v[1];
  o[0] = (v[0] - T(2) * v[2] + v[4]) + T(1.5) * dd;
  o[1] = (v[4] - v[1]) + T(0.5) * v[2] + T(2.5) * v[3];
  o[2] = (v[4] + v[1]) - T(2.5) * v[2] + T(0.5) * v[3];
  o[3] = s + T(2) * dd;
  o[4] = s - T(0.5) * dd;
  o[5] = (v[1] - T(2) * v[3] + v[5]) + T(1.5) * (v[4] - v[2]);
}

// o = A^T v (6 values to 4).
template <typename T>
__attribute__((always_inline)) inline void output_1d(const T v[6], T o[4]) {
  const T p = v[1] + v[2], q = v[1] - v[2];
  o[0] = v[0] + p + v[3] + v[4];
  o[1] = q + T(0.5) * v[3] - T(2) * v[4];
  o[2] = p + T(0.25) * v[3] + T(4) * v[4];
  o[3] = q + T(0.125) * v[3] - T(8) * v[4] + v[5];
}

// o = A v (4 values to 6): grad_y rows and columns in the weight gradient.
template <typename T>
__attribute__((always_inline)) inline void grad_1d(const T v[4], T o[6]) {
  o[0] = v[0];
  o[1] = (v[0] + v[2]) + (v[1] + v[3]);
  o[2] = (v[0] + v[2]) - (v[1] + v[3]);
  o[3] = v[0] + T(0.5) * v[1] + T(0.25) * v[2] + T(0.125) * v[3];
  o[4] = v[0] - T(2) * v[1] + T(4) * v[2] - T(8) * v[3];
  o[5] = v[3];
}

// o = G v (3 values to 6), double.
inline void kernel_1d(const double v[3], double o[6]) {
  o[0] = v[0];
  o[1] = (v[0] + v[1] + v[2]) / 3;
  o[2] = (v[1] - v[0] - v[2]) / 3;
  o[3] = -(16 * v[0] + 8 * v[1] + 4 * v[2]) / 15;
  o[4] = (v[0] - 2 * v[1] + 4 * v[2]) / 15;
  o[5] = v[2];
}

// o = G^T v (6 values to 3), double.
inline void weight_1d(const double v[6], double o[3]) {
  o[0] = v[0] + (v[1] - v[2]) / 3 + (v[4] - 16 * v[3]) / 15;
  o[1] = (v[1] + v[2]) / 3 - (8 * v[3] + 2 * v[4]) / 15;
  o[2] = (v[1] - v[2]) / 3 + 4 * (v[4] - v[3]) / 15 + v[5];
}

// ---- tile transforms (loops over channels, contiguous in the channels-last buffers) -------
// Element xi = 6*i + j of a 6x6 transformed tile is stored at out + xi*stride + c.

// The 2-D transform M x M^T of one channel's In x In tile x (x[i][j] = load(i, j)), with
// oned(v, o) computing o = M v (In values to Out), each result stored by store(i, j, value).
// Fully unrolled (the channel loops around it then vectorise).
template <int In, int Out, typename T, typename Load, typename OneD, typename Store>
__attribute__((always_inline)) inline void transform_2d(Load load, OneD oned, Store store) {
  T r[Out][In];  // r[i][j] = (M x)[i][j]
#pragma GCC unroll 6
  for (int j = 0; j < In; ++j) {
    T col[In], o[Out];
#pragma GCC unroll 6
    for (int i = 0; i < In; ++i) col[i] = load(i, j);
    oned(col, o);
#pragma GCC unroll 6
    for (int i = 0; i < Out; ++i) r[i][j] = o[i];
  }
#pragma GCC unroll 6
  for (int i = 0; i < Out; ++i) {
    T o[Out];
    oned(r[i], o);
#pragma GCC unroll 6
    for (int j = 0; j < Out; ++j) store(i, j, o[j]);
  }
}

// V = B^T d B; d[6*i + j] points at patch pixel (i, j).
template <typename T>
__attribute__((always_inline)) inline void input_tile(const T* const* d, index_t C, T* out,
                                                      index_t stride) {
#pragma GCC ivdep
  for (index_t c = 0; c < C; ++c)
    transform_2d<6, 6, T>([&](int i, int j) { return d[6 * i + j][c]; },
                          [](const T* v, T* o) { input_1d(v, o); },
                          [&](int i, int j, T v) { out[(6 * i + j) * stride + c] = v; });
}

// The 4x4 outputs A^T s A to o[4*i + j] (+ c).
template <typename T>
__attribute__((always_inline)) inline void output_tile(const T* s, index_t stride, index_t C,
                                                       T* const* o) {
#pragma GCC ivdep
  for (index_t c = 0; c < C; ++c)
    transform_2d<6, 4, T>([&](int i, int j) { return s[(6 * i + j) * stride + c]; },
                          [](const T* v, T* r) { output_1d(v, r); },
                          [&](int i, int j, T v) { o[4 * i + j][c] = v; });
}

// A g A^T of a 4x4 grad_y tile (the weight gradient's "kernel"); g[4*i + j] points at (i, j).
template <typename T>
__attribute__((always_inline)) inline void grad_tile(const T* const* g, index_t C, T* out,
                                                     index_t stride) {
#pragma GCC ivdep
  for (index_t c = 0; c < C; ++c)
    transform_2d<4, 6, T>([&](int i, int j) { return g[4 * i + j][c]; },
                          [](const T* v, T* o) { grad_1d(v, o); },
                          [&](int i, int j, T v) { out[(6 * i + j) * stride + c] = v; });
}

FASTCONV_CLONED(input_tile_any, input_tile,
                (const T* const* d, index_t C, T* out, index_t stride), (d, C, out, stride))
FASTCONV_CLONED(output_tile_any, output_tile, (const T* s, index_t stride, index_t C, T* const* o),
                (s, stride, C, o))
FASTCONV_CLONED(grad_tile_any, grad_tile, (const T* const* g, index_t C, T* out, index_t stride),
                (g, C, out, stride))

// U = G g G^T for `count` 3x3 kernels side by side (g[k][j]: element k of kernel j), in
// double; every loop runs over j and vectorises (cloned per ISA). u[xi * ld + j] = element
// xi (of 36) of kernel j's transform.
FASTCONV_CLONES void kernel_tiles(const double (*g)[kKernelBatch], index_t count, float* u,
                                  index_t ld) {
  alignas(64) double t[6][3][kKernelBatch];  // t[i][c] = (G g)[i][c]
  for (int c = 0; c < 3; ++c)
    for (index_t j = 0; j < count; ++j) {
      const double v[3] = {g[c][j], g[3 + c][j], g[6 + c][j]};
      double o[6];
      kernel_1d(v, o);
      for (int i = 0; i < 6; ++i) t[i][c][j] = o[i];
    }
  for (int i = 0; i < 6; ++i) {
    float* ui = u + 6 * i * ld;
    for (index_t j = 0; j < count; ++j) {
      const double v[3] = {t[i][0][j], t[i][1][j], t[i][2][j]};
      double o[6];
      kernel_1d(v, o);
      for (int k = 0; k < 6; ++k) ui[k * ld + j] = static_cast<float>(o[k]);
    }
  }
}

// The 3x3 weight gradient G^T s G of a summed 6x6 product s (element xi at s[xi*stride]).
void weight_tile(const float* s, index_t stride, float* gw) {
  double t[3][6];  // t[i][j] = (G^T s)[i][j]
  for (int j = 0; j < 6; ++j) {
    double col[6], o[3];
    for (int i = 0; i < 6; ++i) col[i] = s[(6 * i + j) * stride];
    weight_1d(col, o);
    for (int i = 0; i < 3; ++i) t[i][j] = o[i];
  }
  for (int i = 0; i < 3; ++i) {
    double o[3];
    weight_1d(t[i], o);
    for (int j = 0; j < 3; ++j) gw[3 * i + j] = static_cast<float>(o[j]);
  }
}

}  // namespace

namespace winograd {

namespace {

template <bool kRound>
__attribute__((always_inline)) inline void plane_means_of(const float* src, index_t C,
                                                          index_t L, float* mean) {
  // 8 running sums per plane (one vector), then added in order: the same bits on any thread.
  constexpr int kLanes = 8;
  const auto value = [](float v) { return kRound ? round_to_bf16(v) : v; };
  for (index_t c = 0; c < C; ++c) {
    const float* x = src + c * L;
    float acc[kLanes] = {};
    index_t l = 0;
    for (; l + kLanes <= L; l += kLanes)
      for (int k = 0; k < kLanes; ++k) acc[k] += value(x[l + k]);
    for (; l < L; ++l) acc[l % kLanes] += value(x[l]);
    float sum = 0.0f;
    for (int k = 0; k < kLanes; ++k) sum += acc[k];
    mean[c] = L > 0 ? sum / static_cast<float>(L) : 0.0f;
  }
}

}  // namespace

FASTCONV_CLONES void plane_means(const float* src, index_t C, index_t L, float* mean,
                                 bool round_bf16) {
  if (round_bf16) plane_means_of<true>(src, C, L, mean);
  else plane_means_of<false>(src, C, L, mean);
}

FASTCONV_CLONES void subtract_channels(float* x, index_t rows, index_t cols, index_t ld,
                                       const float* shift, index_t C) {
  for (index_t r = 0; r < rows; ++r)
    for (index_t q = 0; q < cols; q += C) {
      float* px = x + r * ld + q;
      for (index_t c = 0; c < C; ++c) px[c] -= shift[c];
    }
}

}  // namespace winograd

namespace {

// F(4x4, 3x3) for the drivers (see conv_winograd_driver.h). The sizes below were measured on
// AVX2 (Zen 3, 2 threads, airbench94's layers at batch 256).
struct F4x4 {
  static constexpr int m = 4, a = 6, n = 36;
  // Forward inputs centred per plane (see centre_image): the transforms' errors scale with
  // the tile's values, and a BatchNorm after the conv divides the output by its spread.
  static constexpr bool centre_inputs = true;
  // Tiles per batch of images (as many outputs as F(2x2)'s 96 tiles); 12-48 measured, 24
  // best or within noise on every layer.
  static index_t batch_tiles() { return 24; }
  static constexpr auto input_tile = &input_tile_any<float>;
  static constexpr auto output_tile = &output_tile_any<float>;
  static constexpr auto grad_tile = &grad_tile_any<float>;
  static constexpr auto kernel_tiles = &fastconv::kernel_tiles;
  static constexpr auto weight_tile = &fastconv::weight_tile;
  // Half of F(2x2)'s chunk (a multiple of the 2-vector tiles' MR): a tile's 36 transformed
  // values, against 16, stay in L2 between the transforms and the GEMMs (6-24 measured: 12
  // best on AVX2).
  static index_t chunk(const DirectKernels& k) {
    return round_up(std::max(1, k.winograd_chunk / 2), k.max_mr[2]);
  }
  // Two partial sums, not kWeightGradChunks: each is 36 x Cg x Fpad (9 MiB at 256 channels),
  // allocated, filled and summed per call (8 measured 1.7x slower at 256 channels on 7x7).
  static index_t weight_grad_chunks(index_t, index_t) { return 2; }
  // Tiles gathered per pass of the weight gradient's GEMMs: at least 4 MiB of transformed
  // tiles, and at least Cg*Fpad/(Cg + Fpad) tiles, so that re-reading and writing the sums
  // (36 x Cg x Fpad) each pass costs less than reading the tiles (36 x cap x (Cg + Fpad)).
  static index_t weight_grad_cap(const DirectKernels& k, index_t Cg, index_t Fpad) {
    return std::max<index_t>({k.winograd_chunk, (index_t(1) << 20) / (36 * (Cg + Fpad)),
                              Cg * Fpad / (Cg + Fpad)});
  }
};

}  // namespace

bool use_winograd4(const ConvShape& s, DirectPass pass, bool forced) {
  if (!use_winograd(s, pass, true)) return false;  // 3x3, stride 1, undilated, direct tiles
  if (forced) return true;
  // Not the forward, whose errors a BatchNorm after the conv divides by the output channel's
  // spread: on vgg_small's activations at init F(4x4) is 1.0-1.6e-5 of that spread off
  // float64, F(2x2) 1.5-2.6e-6, direct summation and PyTorch's float32 3.5-8e-6. Centring the
  // inputs (F4x4::centre_inputs) removes the part that scales with their mean (airbench94's
  // one-step update: 8e-4 off float64 uncentred, 1.9e-4 centred as with F(2x2)), but these
  // activations' mean is about their spread, so the rest stays: it flips max-pool windows
  // whose top two nearly tie (3 in 4 batches of vgg_small, F(2x2) 1, direct 2), and on the
  // benchmark's batch one whose top two differ by 6.5e-7 moved vgg_small's one-step update
  // 1.2e-2 (of the largest change) from float64, against 1.4e-4 with F(2x2) forwards.
  // The gradients (of grad_y, mean-free behind a BatchNorm; of the weights) stay there.
  // In bf16 mode the forward too: rounding the operands to bf16 (2^-9 relative each) puts
  // errors some 100x larger than F(4x4)'s into every output, whatever the algorithm.
  if (pass == DirectPass::forward && s.precision != Precision::bf16) return false;
  // As F(2x2), at least 16 channels each way (F(4x4) measured 1.2-1.5x faster from 16).
  if (s.Cg() < 16 || s.Fg() < 16) return false;
  // The 36 x Cg x Fpad transformed kernels (forward, input gradient: read whole per chunk of
  // tiles) or sums (weight gradient: read and written per pass) within this core's share of
  // L3: 256 x 256 channels (9 MiB) measured 1.5-1.9x faster than F(2x2) or direct, 512 x 512
  // (36 MiB) 2x slower than F(2x2) in the forward.
  const index_t Fpad = round_up(s.Fg(), direct_kernels()->lanes);
  if (checked_mul(36 * sizeof(float), s.Cg(), Fpad) > cpu_info().l3_per_cpu()) return false;
  // And 4x4 tiles mostly inside the output (the input gradient's: dL/dx; the weight
  // gradient's: grad_y): 7x7 (49 of 64 values) and larger, not 5x5 or 6x6; or fewer
  // element-wise multiplies than F(2x2)'s, 36 per 4x4 tile against 16 per 2x2 tile: 13x13
  // (F(2x2) 49 tiles, 784; F(4x4) 16 tiles, 576) and 9x9, 10x10 measured 1.03-1.4x faster
  // than F(2x2) in both passes at batch 64. Images of one 4x4 tile (3x3 and 4x4: 36 against
  // 64) only from kMinImages4 images, which pay for F(4x4)'s larger transformed kernels or
  // sums (36 against 16 x Cg x Fpad per call): 64-256 channels (AVX-512 Zen 4) measured
  // F(4x4) 1.1-1.4x faster than F(2x2) in both passes at batch 192-256, as fast or slower
  // at 128, slower at 64 (with more tiles per image it keeps up at small batches: 16x16 at 8
  // images, 8x8 at 16). The input gradient yields to the direct tiles per pixel of tiny
  // images, as F(2x2) does.
  constexpr index_t kMinImages4 = 160;
  const index_t OH = pass == DirectPass::backward_input ? s.H : s.OH;
  const index_t OW = pass == DirectPass::backward_input ? s.W : s.OW;
  const index_t tiles = ceil_div(OH, 4) * ceil_div(OW, 4);
  const index_t tiles_f2 = ceil_div(OH, 2) * ceil_div(OW, 2);
  const bool filled = 10 * OH * OW >= 7 * 16 * tiles;
  const bool fewer_multiplies = 36 * tiles < 16 * tiles_f2;
  if (tiles == 1 && s.N < kMinImages4) return false;
  return (filled || fewer_multiplies) && !direct_per_pixel(s, pass);
}

bool conv2d_forward_winograd4(const ConvShape& s, const float* x, const float* w,
                              const float* bias, float* y, const PoolAfter* pool) {
  return winograd::forward<F4x4>(s, x, w, bias, y, pool);
}

bool conv2d_backward_input_winograd4(const ConvShape& s, const float* gy, const float* w,
                                     float* gx) {
  return winograd::backward_input<F4x4>(s, gy, w, gx);
}

bool conv2d_backward_weight_winograd4(const ConvShape& s, const float* gy, const float* x,
                                      float* gw) {
  return winograd::backward_weight<F4x4>(s, gy, x, gw);
}

}  // namespace fastconv
