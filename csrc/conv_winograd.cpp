#include "conv_winograd.h"

#include <algorithm>
#include <atomic>
#include <vector>

namespace fastconv {
namespace {

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
constexpr int kKernelBatch = 16 * DirectKernels::kMaxNV;
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

// ---- geometry ------------------------------------------------------------------------------

// A stride-1 3x3 convolution on 2x2 output tiles: each source image (Cin x Hin x Win, NCHW)
// is copied channels-last into a zero-padded Hp x Wp buffer at (pt, pl), so tile (ty, tx)
// reads the 4x4 patch at (2ty, 2tx) and writes outputs (2ty + i, 2tx + j) that are < OH, OW.
// `images` images go through the tiles together (copies side by side): tile t of the batch
// is tile t % T of image t / T.
struct TilePlan {
  index_t Cin, Hin, Win, pt, pl;
  index_t Cout, OH, OW;
  index_t TH, TW, T, Hp, Wp, Cout_pad;
  index_t images;
  // Tiles per pass of the 16 GEMMs: the batch's tiles split evenly into passes of at most
  // the table's winograd_chunk (a pass's transformed tiles, 16 x chunk x channels, stay in
  // L2 between the transforms and the GEMMs).
  index_t chunk;
  index_t lanes;
  std::vector<ChannelBlock> blocks;
  std::vector<index_t> pix;  // tile q of a chunk at q*Cin in a transformed slice

  TilePlan(const DirectKernels& k, index_t cin, index_t hin, index_t win, index_t pt_,
           index_t pl_, index_t cout, index_t oh, index_t ow, index_t images_ = 1)
      : Cin(cin), Hin(hin), Win(win), pt(pt_), pl(pl_), Cout(cout), OH(oh), OW(ow),
        TH(ceil_div(oh, 2)), TW(ceil_div(ow, 2)), T(checked_mul(TH, TW)), Hp(2 * TH + 2),
        Wp(2 * TW + 2), Cout_pad(round_up(cout, k.lanes)), images(images_),
        chunk(ceil_div(checked_mul(images, T), ceil_div(images * T, k.winograd_chunk))),
        lanes(k.lanes),
        blocks(channel_blocks(cout, k.lanes)) {
    // The buffers' sizes checked once (SizeTooLarge): every offset is then under 2^62.
    checked_mul(images, checked_add(padded_size(), out_size()));
    checked_mul(16, chunk, std::max(Cin, Cout_pad));
    for (index_t q = 0; q < chunk; ++q) pix.push_back(q * Cin);
  }

  index_t tiles() const { return images * T; }
  index_t padded_size() const { return round_up(checked_mul(Hp, Wp, Cin), 16); }
  index_t v_size() const { return 16 * chunk * Cin; }
  index_t m_size() const { return 16 * chunk * Cout_pad; }
  index_t out_size() const { return round_up(checked_mul(OH, OW, Cout_pad), 16); }
  // Per thread: the padded images, transformed tiles, products, channels-last outputs.
  index_t scratch_size() const {
    return checked_add(checked_mul(images, checked_add(padded_size(), out_size())), v_size(),
                       m_size());
  }

  // Patch pixel pointers of tile t (d[4*i + j]) in the padded buffers from xp.
  void patch(const float* xp, index_t t, const float* d[16]) const {
    const index_t ty = t % T / TW, tx = t % TW;
    xp += t / T * padded_size();
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j) d[4 * i + j] = xp + ((2 * ty + i) * Wp + 2 * tx + j) * Cin;
  }
};

// Tiles per batch of images (see image_batch): enough that each pass of the 16 GEMMs reads
// the transformed kernels (16 x Cin x Cout: 4 MiB for 256 channels) for a full chunk of tiles,
// not for the 4 of one 4x4 image.
constexpr index_t kBatchTiles = 96;

// Transformed kernels for the 16 GEMMs: U[xi] at xi*Cin*Cout_pad, per output block (f0, nv)
// at Cin*f0 as [cin][16*nv]; value(o, i) gives the 3x3 kernel (9 floats, row-major) from
// input channel i to output channel o.
template <typename Kernel>
Scratch<float> transform_kernels(const TilePlan& p, Kernel kernel) {
  Scratch<float> u = make_scratch<float>(checked_mul(16, p.Cin, p.Cout_pad));
  float* up = u.get();
  // Pieces of input channels split between threads (the other thread would wait otherwise);
  // within a piece, output block by output block: the block's kernels are then read as a few
  // dozen sequential streams (one per output channel), not every output channel's per input
  // channel, and the 16 destinations are each written in order.
  constexpr index_t kPiece = 32;
#pragma omp parallel for schedule(static) if (p.Cin * p.Cout >= 1024)
  for (index_t c0 = 0; c0 < p.Cin; c0 += kPiece) {
    float g[9];
    alignas(64) double gb[9][kKernelBatch];
    for (const ChannelBlock& b : p.blocks) {
      const index_t width = p.lanes * b.nv;
      for (index_t c = c0; c < std::min(p.Cin, c0 + kPiece); ++c) {
        for (index_t j = 0; j < width; ++j) {
          if (b.f0 + j < p.Cout) kernel(b.f0 + j, c, g);
          else std::fill(g, g + 9, 0.0f);  // padding channels
          for (int k = 0; k < 9; ++k) gb[k][j] = g[k];
        }
        kernel_tiles(gb, width, up + p.Cin * b.f0 + c * width, p.Cin * p.Cout_pad);
      }
    }
  }
  return u;
}

// One chunk of tiles [t0, t0 + tn) of a batch: transform, 16 GEMMs, inverse transform into
// the channels-last outputs from `out` (OH*OW x Cout_pad each, out_size() apart).
void forward_chunk(const DirectKernels& k, const TilePlan& p, const float* xp, const float* u,
                   index_t t0, index_t tn, float* v, float* m, float* out, float* junk) {
  const index_t vs = p.chunk * p.Cin, ms = p.chunk * p.Cout_pad;
  const float* d[16];
  for (index_t q = 0; q < tn; ++q) {
    p.patch(xp, t0 + q, d);
    input_tile_any(d, p.Cin, v + q * p.Cin, vs);
  }
  const index_t tap0 = 0;
  for (int xi = 0; xi < 16; ++xi)
    for (const ChannelBlock& b : p.blocks)
      for_each_piece(tn, k.max_mr[b.nv], [&](index_t q0, index_t mr) {
        k.forward[b.nv][mr](v + xi * vs, p.pix.data() + q0, &tap0, 1, p.Cin,
                            u + xi * p.Cin * p.Cout_pad + p.Cin * b.f0, p.lanes * b.nv,
                            m + xi * ms + q0 * p.Cout_pad + b.f0, p.Cout_pad, false);
      });
  for (index_t q = 0; q < tn; ++q) {
    const index_t t = t0 + q, ty = t % p.T / p.TW, tx = t % p.TW;
    float* image_out = out + t / p.T * p.out_size();
    float* o[4];
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 2; ++j) {
        const index_t oh = 2 * ty + i, ow = 2 * tx + j;
        o[2 * i + j] = oh < p.OH && ow < p.OW ? image_out + (oh * p.OW + ow) * p.Cout_pad : junk;
      }
    output_tile_any(m + q * p.Cout_pad, ms, p.Cout_pad, o);
  }
}

// Runs the plan over `items` images (src(i) -> dst(i), NCHW, plus bias), kernels u(i), in
// batches of p.images consecutive ones (same group); with pool, each image's output planes
// are max-pooled from a buffer in cache into pool->y (item i holds planes [i*Cout,
// (i+1)*Cout)), and dst is not used.
// Returns false, as soon as it sees one, if an input holds ±inf or NaN (the outputs are then
// unspecified: the caller recomputes them on the direct path, see use_winograd).
template <typename Src, typename Dst, typename Kernels>
bool run_tiles(const TilePlan& p, index_t items, index_t groups, Src src, Dst dst, Kernels u,
               const float* bias, const PoolAfter* pool = nullptr) {
  std::atomic<bool> nonfinite{false};
  const DirectKernels& k = *direct_kernels();
  auto bias_of = [&](index_t i) { return bias ? bias + i % groups * p.Cout : nullptr; };
  const index_t part = p.v_size() + p.m_size() + p.Cout_pad;  // transform buffers + junk row
  const index_t L = p.OH * p.OW, ybuf_size = pool ? round_up(checked_mul(p.Cout, L), 16) : 0;
  const index_t batches = ceil_div(items, p.images);
  // Scratch per batch: padded copies, transformed tiles, products, outputs, junk row, and
  // with pool the output planes of one image.
  const index_t per = checked_add(p.scratch_size(), p.Cout_pad, ybuf_size);
  for_each_item(batches, per, [&](index_t bi, float* xp, bool split) {
    const index_t i0 = bi * p.images, count = std::min(p.images, items - i0);
    float* out = xp + p.images * p.padded_size() + p.v_size() + p.m_size();
    for (index_t b = 0; b < count; ++b) {
      if (nonfinite.load(std::memory_order_relaxed)) return;
      if (k.to_channels_last(src(i0 + b), p.Cin, p.Hin, p.Win, p.pt, p.pl, p.Hp, p.Wp, p.Cin,
                             xp + b * p.padded_size())) {
        nonfinite.store(true, std::memory_order_relaxed);
        return;
      }
    }
    const float* ui = u(i0);
    const index_t tiles = count * p.T, chunks = ceil_div(tiles, p.chunk);
    // The next batch (this thread's, mostly), a slice per chunk (see PrefetchSlices).
    const index_t next = i0 + count;
    const PrefetchSlices next_src(next < items && !split ? src(next) : nullptr,
                                  sizeof(float) * p.Cin * p.Hin * p.Win *
                                      std::min(p.images, items - next),
                                  chunks);
    // Transformed tiles v, products m = v + v_size, and a junk row for cut-off outputs.
    auto run_chunk = [&](index_t c, float* v, float* junk) {
      next_src.slice(c);
      forward_chunk(k, p, xp, ui, c * p.chunk, std::min(p.chunk, tiles - c * p.chunk), v,
                    v + p.v_size(), out, junk);
    };
    if (split) {
      // Threads split the chunks of this batch, each with transform buffers of its own.
      Scratch<float> bufs = make_scratch<float>(checked_mul(part, max_threads()));
#pragma omp parallel
      {
        float* v = bufs.get() + part * thread_id();
#pragma omp for schedule(static)
        for (index_t c = 0; c < chunks; ++c) run_chunk(c, v, v + p.v_size() + p.m_size());
      }
    } else {
      float* v = xp + p.images * p.padded_size();
      for (index_t c = 0; c < chunks; ++c) run_chunk(c, v, out + p.images * p.out_size());
    }
    for (index_t b = 0; b < count; ++b) {
      const index_t i = i0 + b;
      if (!pool) {
        k.from_channels_last(out + b * p.out_size(), p.Cout_pad, p.Cout, L, bias_of(i), dst(i));
        continue;
      }
      float* ybuf = xp + p.scratch_size() + p.Cout_pad;
      k.from_channels_last(out + b * p.out_size(), p.Cout_pad, p.Cout, L, bias_of(i), ybuf);
      pool_planes(*pool, p.Cout, ybuf, i * p.Cout, split);
    }
  });
  return !nonfinite.load();
}

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
  const index_t Cg = s.Cg(), Fg = s.Fg(), G = s.G;
  const TilePlan p(*direct_kernels(), Cg, s.H, s.W, s.win.PH, s.win.PW, Fg, s.OH, s.OW,
                   image_batch(s.N * G, G, ceil_div(s.OH, 2) * ceil_div(s.OW, 2), kBatchTiles));
  std::vector<Scratch<float>> u;
  for (index_t g = 0; g < G; ++g)
    u.push_back(transform_kernels(p, [&](index_t f, index_t c, float* k) {
      std::copy_n(w + ((g * Fg + f) * Cg + c) * 9, 9, k);
    }));
  return run_tiles(
      p, s.N * G, G, [&](index_t i) { return x + (i / G * s.C + i % G * Cg) * s.H * s.W; },
      [&](index_t i) { return y + (i / G * s.F + i % G * Fg) * s.L(); },
      [&](index_t i) -> const float* { return u[i % G].get(); }, bias, pool);
}

bool conv2d_backward_input_winograd(const ConvShape& s, const float* gy, const float* w,
                                    float* gx) {
  // The stride-1 convolution of grad_y placed at (2 - p) with the kernel flipped and its
  // channel axes swapped (see conv_direct.h).
  const index_t Cg = s.Cg(), Fg = s.Fg(), G = s.G;
  const TilePlan p(*direct_kernels(), Fg, s.OH, s.OW, 2 - s.win.PH, 2 - s.win.PW, Cg, s.H, s.W,
                   image_batch(s.N * G, G, ceil_div(s.H, 2) * ceil_div(s.W, 2), kBatchTiles));
  std::vector<Scratch<float>> u;
  for (index_t g = 0; g < G; ++g)
    u.push_back(transform_kernels(p, [&](index_t c, index_t f, float* k) {
      const float* src = w + ((g * Fg + f) * Cg + c) * 9;
      for (int t = 0; t < 9; ++t) k[t] = src[8 - t];
    }));
  return run_tiles(
      p, s.N * G, G, [&](index_t i) { return gy + (i / G * s.F + i % G * Fg) * s.L(); },
      [&](index_t i) { return gx + (i / G * s.C + i % G * Cg) * s.H * s.W; },
      [&](index_t i) -> const float* { return u[i % G].get(); }, nullptr);
}

bool conv2d_backward_weight_winograd(const ConvShape& s, const float* gy, const float* x,
                                     float* gw) {
  const DirectKernels& k = *direct_kernels();
  const index_t Cg = s.Cg(), Fg = s.Fg(), G = s.G, L = s.L();
  // Tiles over grad_y (2x2, zero past OH x OW), each against the 4x4 input patch at (2ty, 2tx).
  const TilePlan p(*direct_kernels(), Cg, s.H, s.W, s.win.PH, s.win.PW, Fg, s.OH, s.OW);
  const index_t Fpad = p.Cout_pad;
  const index_t gyt_size = round_up(checked_mul(2 * p.TH, 2 * p.TW, Fpad), 16);
  // Transformed tiles of several images are gathered (~1 MiB) before the 16 GEMMs run over
  // them: each GEMM pass re-reads its sums (16 x Cg x Fpad), so fewer, longer passes.
  const index_t cap =
      std::max<index_t>(k.winograd_chunk, (index_t(1) << 18) / (16 * (Cg + Fpad)));
  const index_t vs = cap * Cg, us = cap * Fpad;
  const index_t per = checked_add(p.padded_size(), gyt_size, checked_mul(16, vs + us));
  const index_t sum_size = checked_mul(G, 16, Cg, Fpad);  // [g][xi][c][f]
  const index_t chunks = std::min<index_t>(s.N, kWeightGradChunks);
  Scratch<float> partial = make_scratch<float>(checked_mul(chunks, sum_size));
  std::atomic<bool> nonfinite{false};  // see run_tiles

  // Sums images [n0, n1) of group g into sum (16 x Cg x Fpad). parallel: threads split the 16
  // products of each pass (each product is still summed in one fixed order).
  auto sum_images = [&](index_t n0, index_t n1, index_t g, float* buf, float* sum, bool parallel) {
    float* xp = buf;
    float* gyt = xp + p.padded_size();
    float* v = gyt + gyt_size;
    float* ug = v + 16 * vs;
    index_t filled = 0;
    bool first = true;
    auto product = [&](int xi) {
      for (const ChannelBlock& b : p.blocks)
        for_each_piece(Cg, k.max_mr[b.nv], [&](index_t c0, index_t mr) {
          const DirectKernels::GradPositions at{1, 1, filled, 0, 0, Cg, 0, Fpad};
          k.weight_grad[b.nv][mr](v + xi * vs + c0, ug + xi * us + b.f0, at,
                                  sum + (xi * Cg + c0) * Fpad + b.f0, Fpad, !first);
        });
    };
    auto flush = [&] {
      if (parallel) {
#pragma omp parallel for schedule(static)
        for (int xi = 0; xi < 16; ++xi) product(xi);
      } else {
        for (int xi = 0; xi < 16; ++xi) product(xi);
      }
      first = false;
      filled = 0;
    };
    const float* d[16];
    const float* gp[4];
    const auto x_of = [&](index_t n) { return x + (n * s.C + g * Cg) * s.H * s.W; };
    const auto gy_of = [&](index_t n) { return gy + (n * s.F + g * Fg) * L; };
    for (index_t n = n0; n < n1; ++n) {
      if (nonfinite.load(std::memory_order_relaxed)) return;
      const bool bad_x = k.to_channels_last(x_of(n), Cg, s.H, s.W, s.win.PH, s.win.PW, p.Hp,
                                            p.Wp, Cg, xp);
      const bool bad_gy = k.to_channels_last(gy_of(n), Fg, s.OH, s.OW, index_t(0), index_t(0),
                                             2 * p.TH, 2 * p.TW, Fpad, gyt);
      if (bad_x || bad_gy) {
        nonfinite.store(true, std::memory_order_relaxed);
        return;
      }
      // The next image, a slice per tile (see PrefetchSlices).
      const bool more = n + 1 < s.N;
      const PrefetchSlices next_x(more ? x_of(n + 1) : nullptr, sizeof(float) * Cg * s.H * s.W,
                                  p.T);
      const PrefetchSlices next_gy(more ? gy_of(n + 1) : nullptr, sizeof(float) * Fg * L, p.T);
      for (index_t t = 0; t < p.T; ++t) {
        next_x.slice(t);
        next_gy.slice(t);
        const index_t ty = t / p.TW, tx = t % p.TW;
        p.patch(xp, t, d);
        input_tile_any(d, Cg, v + filled * Cg, vs);
        for (int i = 0; i < 2; ++i)
          for (int j = 0; j < 2; ++j)
            gp[2 * i + j] = gyt + ((2 * ty + i) * 2 * p.TW + 2 * tx + j) * Fpad;
        grad_tile_any(gp, Fpad, ug + filled * Fpad, us);
        if (++filled == cap) flush();
      }
    }
    if (filled > 0) flush();
  };
  for_each_item(chunks, per, [&](index_t c, float* buf, bool split) {
    for (index_t g = 0; g < G; ++g)
      sum_images(s.N * c / chunks, s.N * (c + 1) / chunks, g, buf,
                 partial.get() + c * sum_size + g * 16 * Cg * Fpad, split);
  });
  if (nonfinite.load()) return false;
  // Sum the chunks in order (into chunk 0), then the inverse transform of each (c, f)
  // pair's 16 sums to its 3x3 kernel.
  float* total = partial.get();
  sum_chunks_in_order(total, chunks, sum_size, total);
#pragma omp parallel for schedule(static)
  for (index_t gc = 0; gc < G * Cg; ++gc) {
    const index_t g = gc / Cg, c = gc % Cg;
    const float* sg = total + g * 16 * Cg * Fpad + c * Fpad;
    for (index_t f = 0; f < Fg; ++f)
      weight_tile(sg + f, Cg * Fpad, gw + ((g * Fg + f) * Cg + c) * 9);
  }
  return true;
}

}  // namespace fastconv
