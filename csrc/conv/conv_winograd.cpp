// Winograd F(2x2, 3x3): the transforms, and the policy that runs them on the shared drivers
// (conv_winograd_driver.h). 16 multiplies per 4 outputs per channel pair.
#include "conv/conv_winograd.h"

#include <algorithm>

#include "conv/conv_winograd_driver.h"

namespace fastconv {
namespace {

using winograd::kKernelBatch;

// ---- transforms (loops over channels, contiguous in the channels-last buffers) ------------
// Element xi = 4*i + j of a 4x4 transformed tile is stored at out + xi*stride + c.

// V = B^T d B, B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]; d[4*i + j] points at patch
// pixel (i, j).
template <typename T>
__attribute__((always_inline)) inline void input_tile(const T* const* d, index_t C, T* out,
                                                      index_t stride) {
#pragma GCC ivdep
  for (index_t c = 0; c < C; ++c) {
    T r[4][4];
    for (int j = 0; j < 4; ++j) {
      const T d0 = d[j][c], d1 = d[4 + j][c], d2 = d[8 + j][c], d3 = d[12 + j][c];
      r[0][j] = d0 - d2;
      r[1][j] = d1 + d2;
      r[2][j] = d2 - d1;
      r[3][j] = d1 - d3;
    }
    for (int i = 0; i < 4; ++i) {
      out[(4 * i + 0) * stride + c] = r[i][0] - r[i][2];
      out[(4 * i + 1) * stride + c] = r[i][1] + r[i][2];
      out[(4 * i + 2) * stride + c] = r[i][2] - r[i][1];
      out[(4 * i + 3) * stride + c] = r[i][1] - r[i][3];
    }
  }
}

// The 2x2 outputs A^T m A, A^T = [1 1 1 0; 0 1 -1 -1], to o[2*i + j] (+ c).
template <typename T>
__attribute__((always_inline)) inline void output_tile(const T* m, index_t stride, index_t C,
                                                       T* const* o) {
#pragma GCC ivdep
  for (index_t c = 0; c < C; ++c) {
    T s[2][4];
    for (int j = 0; j < 4; ++j) {
      const T m0 = m[j * stride + c], m1 = m[(4 + j) * stride + c], m2 = m[(8 + j) * stride + c],
              m3 = m[(12 + j) * stride + c];
      s[0][j] = m0 + m1 + m2;
      s[1][j] = m1 - m2 - m3;
    }
    for (int i = 0; i < 2; ++i) {
      o[2 * i][c] = s[i][0] + s[i][1] + s[i][2];
      o[2 * i + 1][c] = s[i][1] - s[i][2] - s[i][3];
    }
  }
}

// grad_y tile as a 2x2 kernel of F(3x3, 2x2): G2 g G2^T, G2 = [1 0; 1/2 1/2; 1/2 -1/2; 0 -1]
// (the last row negated from the textbook form so the input tiles share B^T with the
// forward; the signs cancel in the element-wise product). g[2*i + j] points at (i, j).
template <typename T>
__attribute__((always_inline)) inline void grad_tile(const T* const* g, index_t C, T* out,
                                                     index_t stride) {
#pragma GCC ivdep
  for (index_t c = 0; c < C; ++c) {
    T r[4][2];
    for (int j = 0; j < 2; ++j) {
      const T g0 = g[j][c], g1 = g[2 + j][c];
      r[0][j] = g0;
      r[1][j] = T(0.5) * (g0 + g1);
      r[2][j] = T(0.5) * (g0 - g1);
      r[3][j] = -g1;
    }
    for (int i = 0; i < 4; ++i) {
      out[(4 * i + 0) * stride + c] = r[i][0];
      out[(4 * i + 1) * stride + c] = T(0.5) * (r[i][0] + r[i][1]);
      out[(4 * i + 2) * stride + c] = T(0.5) * (r[i][0] - r[i][1]);
      out[(4 * i + 3) * stride + c] = -r[i][1];
    }
  }
}


FASTCONV_CLONED(input_tile_any, input_tile,
                (const T* const* d, index_t C, T* out, index_t stride), (d, C, out, stride))
FASTCONV_CLONED(output_tile_any, output_tile, (const T* m, index_t stride, index_t C, T* const* o),
                (m, stride, C, o))
FASTCONV_CLONED(grad_tile_any, grad_tile, (const T* const* g, index_t C, T* out, index_t stride),
                (g, C, out, stride))

// U = G g G^T for 3x3 kernels g, G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1], in double,
// for n kernels side by side (g[k][j]: element k of kernel j): every loop runs over j and
// vectorises (cloned per ISA). u[xi * ld + j] = element xi (of 16) of kernel j's transform,
// written as 16 runs of n floats (one kernel at a time, 16 scattered scalar stores per
// kernel, bound the transform of large layers: a quarter of a 512-channel forward at 4x4).
FASTCONV_CLONES void kernel_tiles(const double (*g)[kKernelBatch], index_t n, float* u,
                                  index_t ld) {
  alignas(64) double t[4][3][kKernelBatch];
  for (int c = 0; c < 3; ++c)
    for (index_t j = 0; j < n; ++j) {
      const double g0 = g[c][j], g1 = g[3 + c][j], g2 = g[6 + c][j];
      t[0][c][j] = g0;
      t[1][c][j] = 0.5 * (g0 + g1 + g2);
      t[2][c][j] = 0.5 * (g0 - g1 + g2);
      t[3][c][j] = g2;
    }
  for (int i = 0; i < 4; ++i) {
    float* ui = u + 4 * i * ld;
    for (index_t j = 0; j < n; ++j) {
      const double t0 = t[i][0][j], t1 = t[i][1][j], t2 = t[i][2][j];
      ui[j] = static_cast<float>(t0);
      ui[ld + j] = static_cast<float>(0.5 * (t0 + t1 + t2));
      ui[2 * ld + j] = static_cast<float>(0.5 * (t0 - t1 + t2));
      ui[3 * ld + j] = static_cast<float>(t2);
    }
  }
}

// The 3x3 weight gradient A2^T s A2 of a summed 4x4 product s (element xi at s[xi*stride]),
// A2^T = [1 1 1 0; 0 1 -1 0; 0 1 1 1].
void weight_tile(const float* s, index_t stride, float* gw) {
  double t[3][4];
  for (int j = 0; j < 4; ++j) {
    const double s0 = s[j * stride], s1 = s[(4 + j) * stride], s2 = s[(8 + j) * stride],
                 s3 = s[(12 + j) * stride];
    t[0][j] = s0 + s1 + s2;
    t[1][j] = s1 - s2;
    t[2][j] = s1 + s2 + s3;
  }
  for (int i = 0; i < 3; ++i) {
    gw[3 * i + 0] = static_cast<float>(t[i][0] + t[i][1] + t[i][2]);
    gw[3 * i + 1] = static_cast<float>(t[i][1] - t[i][2]);
    gw[3 * i + 2] = static_cast<float>(t[i][1] + t[i][2] + t[i][3]);
  }
}

// F(2x2, 3x3) for the drivers (see conv_winograd_driver.h).
struct F2x2 {
  static constexpr int m = 2, a = 4, n = 16;
  // Forward inputs as they are: F(2x2)'s transforms (coefficients 0, ±1) keep its errors
  // within a few units in the last place of the largest terms, mean included.
  static constexpr bool centre_inputs = false;
  // Tiles per batch of images: enough that each pass of the 16 GEMMs reads the transformed
  // kernels (16 x Cin x Cout: 4 MiB for 256 channels) for a full chunk of tiles, not for the
  // 4 of one 4x4 image.
  static index_t batch_tiles() { return 96; }
  static constexpr auto input_tile = &input_tile_any<float>;
  static constexpr auto output_tile = &output_tile_any<float>;
  static constexpr auto grad_tile = &grad_tile_any<float>;
  static constexpr auto kernel_tiles = &fastconv::kernel_tiles;
  static constexpr auto weight_tile = &fastconv::weight_tile;
  static index_t chunk(const DirectKernels& k) { return k.winograd_chunk; }
  // Partial sums of the weight gradient (16 x Cg x Fpad each): kWeightGradChunks of them
  // where they are small, fewer, down to 2, so that together they stay under 16 MiB (each
  // is allocated, filled and summed per call: 8 of them took 1.75x as long as 2 at 512
  // channels on 4x4 images).
  static index_t weight_grad_chunks(index_t Cg, index_t Fpad) {
    const index_t each = 16 * Cg * Fpad * index_t(sizeof(float));
    return std::clamp<index_t>((index_t(16) << 20) / each, 2, kWeightGradChunks);
  }
  // Tiles gathered per pass of the weight gradient's GEMMs: ~1 MiB of transformed tiles, and
  // at least Cg*Fpad/(Cg + Fpad) tiles, so that re-reading and writing the sums
  // (16 x Cg x Fpad) each pass costs less than reading the tiles (as F(4x4)'s).
  static index_t weight_grad_cap(const DirectKernels& k, index_t Cg, index_t Fpad) {
    return std::max<index_t>({k.winograd_chunk, (index_t(1) << 18) / (16 * (Cg + Fpad)),
                              Cg * Fpad / (Cg + Fpad)});
  }
};

}  // namespace

bool use_winograd(const ConvShape& s, DirectPass pass, bool forced) {
  const Window2d& w = s.win;
  const DirectKernels* k = direct_kernels();
  if (!k || s.N == 0 || w.KH != 3 || w.KW != 3 || w.SH != 1 || w.SW != 1 || w.DH != 1 ||
      w.DW != 1)
    return false;
  if (forced) return true;
  if (s.Cg() < 16 || s.Fg() < 16) return false;
  // The forward and input gradient want their 2x2 tiles mostly inside the output (the
  // table's winograd_min_fill), and yield to the direct tiles per pixel of tiny outputs.
  const index_t OH = pass == DirectPass::backward_input ? s.H : s.OH;
  const index_t OW = pass == DirectPass::backward_input ? s.W : s.OW;
  const index_t tiles = ceil_div(OH, 2) * ceil_div(OW, 2);
  if (pass != DirectPass::backward_weight)
    return OH * OW >= k->winograd_min_fill * 4 * tiles && !direct_per_pixel(s, pass);
  // The weight gradient yields to the direct one where that runs as a GEMM (many channels
  // on small images) and the images have few tiles, or many cut off, or Winograd's 16 sums
  // of Cg x Fpad per chunk of images pass 2 MiB: they then cost more than its fewer
  // multiplies save. Measured on AVX2 (Zen 3), batch 64, 1 thread: the GEMM 2.3x ahead at
  // 4x4 (512 channels), 1.1x at 7x7 (256), 1.05-1.2x at 8x8 (256); Winograd 1.5x ahead at
  // 8x8 with 128 channels.
  const index_t Fpad = round_up(s.Fg(), k->lanes);
  return !(use_weight_grad_gemm(s) &&
           (tiles < 16 || 5 * OH * OW < 4 * 4 * tiles || s.Cg() * Fpad > 32768));
}

bool conv2d_forward_winograd(const ConvShape& s, const float* x, const float* w,
                             const float* bias, float* y, const PoolAfter* pool) {
  return winograd::forward<F2x2>(s, x, w, bias, y, pool);
}

bool conv2d_backward_input_winograd(const ConvShape& s, const float* gy, const float* w,
                                    float* gx) {
  return winograd::backward_input<F2x2>(s, gy, w, gx);
}

bool conv2d_backward_weight_winograd(const ConvShape& s, const float* gy, const float* x,
                                     float* gw) {
  return winograd::backward_weight<F2x2>(s, gy, x, gw);
}

}  // namespace fastconv
