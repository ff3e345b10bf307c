// The passes of Winograd convolution F(m x m, 3x3) for 3x3, stride-1, undilated layers, written
// once over the tile size: F(2x2, 3x3) (conv_winograd.cpp) and F(4x4, 3x3)
// (conv_winograd4.cpp) each supply their transforms as a policy type P (below) and
// instantiate these drivers.
//
// Each m x m block of outputs comes from an a x a input tile (a = m + 2),
//   y = A^T [ (G g G^T) (.) (B^T d B) ] A,
// so the a*a element-wise products summed over input channels are a*a independent GEMMs
// (tiles x C) . (C x F), run on the direct register tiles (conv_direct.h) over channels-last
// transformed tiles. The input gradient is the same computation on grad_y with the kernel
// flipped and transposed. The weight gradient is its transpose (grad_y tiles act as m x m
// kernels over the same input tiles), the a*a GEMMs reducing over tiles and images:
//   gw = G^T [ sum_tiles (A gy A^T) (.) (B^T d B) ] G
// Images are summed in fixed chunks and tiles in order: results do not depend on threads.
//
// The policy P provides:
//   m, a = m + 2, n = a*a                       tile sizes
//   input_tile(d, C, out, stride)               out[xi*stride + c] = (B^T d B)[xi], channel c,
//                                               d[a*i + j] pointing at patch pixel (i, j)
//   output_tile(s, stride, C, o)                o[m*i + j][c] = (A^T s A)[i][j], s[xi*stride + c]
//   kernel_tiles(g, count, u, ld)               u[xi*ld + j] = (G g_j G^T)[xi] for `count`
//                                               3x3 kernels g[k][j] (double) side by side
//   grad_tile(g, C, out, stride)                out[xi*stride + c] = (A g A^T)[xi],
//                                               g[m*i + j] pointing at grad_y pixel (i, j)
//   weight_tile(s, stride, gw)                  gw[3*i + j] = (G^T s G)[i][j]
//   chunk(k)                                    tiles per pass of the forward's GEMMs
//   batch_tiles()                               tiles per batch of images (see image_batch)
//   weight_grad_chunks(Cg, Fpad)                fixed chunks of images the weight gradient
//                                               sums apart, then in order (see conv.h)
//   weight_grad_cap(k, Cg, Fpad)                tiles gathered per pass of the weight
//                                               gradient's GEMMs
//   centre_inputs                               whether the forward shifts each input plane
//                                               by minus its mean (see centre_image)
#pragma once

#include <algorithm>
#include <atomic>
#include <vector>

#include "conv/conv.h"
#include "conv/conv_direct.h"

namespace fastconv {
namespace winograd {

// Kernels transformed side by side by kernel_tiles (one output block: up to kMaxNV vectors).
constexpr int kKernelBatch = 16 * DirectKernels::kMaxNV;

// The forward's input centring (see centre_image; cloned per ISA in conv_winograd4.cpp):
// mean[c] = the mean of plane c of src (C planes of L floats, summed in a fixed order; with
// round_bf16, of the values rounded to bfloat16);
// rows x cols floats from x (rows ld apart) minus shift[j % C] (cols a multiple of C).
void plane_means(const float* src, index_t C, index_t L, float* mean, bool round_bf16);
void subtract_channels(float* x, index_t rows, index_t cols, index_t ld, const float* shift,
                       index_t C);

// A stride-1 3x3 convolution on m x m output tiles: each source image (Cin x Hin x Win, NCHW)
// is copied channels-last into a zero-padded Hp x Wp buffer at (pt, pl), so tile (ty, tx)
// reads the a x a patch at (m ty, m tx) and writes outputs (m ty + i, m tx + j) that are
// < OH, OW. `images` images go through the tiles together (copies side by side): tile t of
// the batch is tile t % T of image t / T.
template <typename P>
struct TilePlan {
  index_t Cin, Hin, Win, pt, pl;
  index_t Cout, OH, OW;
  index_t TH, TW, T, Hp, Wp, Cout_pad;
  index_t images;
  // bf16 mode: the source images are rounded to bfloat16 as they are copied (the same values
  // as a rounded copy of them, without the copy).
  bool round_bf16;
  // Tiles per pass of the n GEMMs: the batch's tiles split evenly into passes of at most
  // P::chunk (a pass's transformed tiles, n x chunk x channels, stay in L2 between the
  // transforms and the GEMMs).
  index_t chunk;
  index_t lanes;
  std::vector<ChannelBlock> blocks;
  std::vector<index_t> pix;  // tile q of a chunk at q*Cin in a transformed slice

  // k.to_channels_last (see conv_direct.h), rounding to bfloat16 with round_bf16.
  bool copy_in(const DirectKernels& k, const float* src, index_t C, index_t H, index_t W,
               index_t top, index_t left, index_t hp, index_t wp, index_t ld,
               float* dst) const {
    return (round_bf16 ? k.to_channels_last_bf16 : k.to_channels_last)(src, C, H, W, top, left,
                                                                       hp, wp, ld, dst);
  }

  TilePlan(const DirectKernels& k, index_t cin, index_t hin, index_t win, index_t pt_,
           index_t pl_, index_t cout, index_t oh, index_t ow, index_t images_,
           Precision precision)
      : Cin(cin), Hin(hin), Win(win), pt(pt_), pl(pl_), Cout(cout), OH(oh), OW(ow),
        TH(ceil_div(oh, P::m)), TW(ceil_div(ow, P::m)), T(checked_mul(TH, TW)),
        Hp(P::m * TH + 2), Wp(P::m * TW + 2), Cout_pad(round_up(cout, k.lanes)),
        images(images_), round_bf16(precision == Precision::bf16),
        chunk(ceil_div(checked_mul(images, T), ceil_div(images * T, P::chunk(k)))),
        lanes(k.lanes), blocks(channel_blocks(cout, k.lanes)) {
    // The buffers' sizes checked once (SizeTooLarge): every offset is then under 2^62.
    checked_mul(images, checked_add(padded_size(), out_size()));
    checked_mul(P::n, chunk, std::max(Cin, Cout_pad));
    for (index_t q = 0; q < chunk; ++q) pix.push_back(q * Cin);
  }

  index_t tiles() const { return images * T; }
  index_t padded_size() const { return round_up(checked_mul(Hp, Wp, Cin), 16); }
  index_t v_size() const { return P::n * chunk * Cin; }
  index_t m_size() const { return P::n * chunk * Cout_pad; }
  index_t out_size() const { return round_up(checked_mul(OH, OW, Cout_pad), 16); }
  // Per thread: the padded images, transformed tiles, products, channels-last outputs.
  index_t scratch_size() const {
    return checked_add(checked_mul(images, checked_add(padded_size(), out_size())), v_size(),
                       m_size());
  }

  // Patch pixel pointers of tile t (d[a*i + j]) in the padded buffers from xp.
  void patch(const float* xp, index_t t, const float* d[P::n]) const {
    const index_t ty = t % T / TW, tx = t % TW;
    xp += t / T * padded_size();
    for (int i = 0; i < P::a; ++i)
      for (int j = 0; j < P::a; ++j)
        d[P::a * i + j] = xp + ((P::m * ty + i) * Wp + P::m * tx + j) * Cin;
  }
};

// Transformed kernels for the n GEMMs: U[xi] at xi*Cin*Cout_pad, per output block (f0, nv)
// at Cin*f0 as [cin][n*nv]; kernel(o, i, g) gives the 3x3 kernel (9 floats, row-major) from
// input channel i to output channel o.
template <typename P, typename Kernel>
Scratch<float> transform_kernels(const TilePlan<P>& p, Kernel kernel) {
  Scratch<float> u = make_scratch<float>(checked_mul(P::n, p.Cin, p.Cout_pad));
  float* up = u.get();
  // Pieces of input channels split between threads (the other thread would wait otherwise);
  // within a piece, output block by output block: the block's kernels are then read as a few
  // dozen sequential streams (one per output channel), not every output channel's per input
  // channel, and the n destinations are each written in order.
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
        P::kernel_tiles(gb, width, up + p.Cin * b.f0 + c * width, p.Cin * p.Cout_pad);
      }
    }
  }
  return u;
}

// One chunk of tiles [t0, t0 + tn) of a batch: transform, n GEMMs, inverse transform into
// the channels-last outputs from `out` (OH*OW x Cout_pad each, out_size() apart).
template <typename P>
void forward_chunk(const DirectKernels& k, const TilePlan<P>& p, const float* xp,
                   const float* u, index_t t0, index_t tn, float* v, float* mp, float* out,
                   float* junk) {
  const index_t vs = p.chunk * p.Cin, ms = p.chunk * p.Cout_pad;
  const float* d[P::n];
  for (index_t q = 0; q < tn; ++q) {
    p.patch(xp, t0 + q, d);
    P::input_tile(d, p.Cin, v + q * p.Cin, vs);
  }
  const index_t tap0 = 0;
  for (int xi = 0; xi < P::n; ++xi)
    for (const ChannelBlock& b : p.blocks)
      for_each_piece(tn, k.max_mr[b.nv], [&](index_t q0, index_t mr) {
        k.forward[b.nv][mr](v + xi * vs, p.pix.data() + q0, &tap0, 1, p.Cin,
                            u + xi * p.Cin * p.Cout_pad + p.Cin * b.f0, p.lanes * b.nv,
                            mp + xi * ms + q0 * p.Cout_pad + b.f0, p.Cout_pad, false);
      });
  for (index_t q = 0; q < tn; ++q) {
    const index_t t = t0 + q, ty = t % p.T / p.TW, tx = t % p.TW;
    float* image_out = out + t / p.T * p.out_size();
    float* o[P::m * P::m];
    for (int i = 0; i < P::m; ++i)
      for (int j = 0; j < P::m; ++j) {
        const index_t oh = P::m * ty + i, ow = P::m * tx + j;
        o[P::m * i + j] =
            oh < p.OH && ow < p.OW ? image_out + (oh * p.OW + ow) * p.Cout_pad : junk;
      }
    P::output_tile(mp + q * p.Cout_pad, ms, p.Cout_pad, o);
  }
}

// Shifts one image's padded channels-last copy xp (its padding too) by minus each channel's
// mean c over the image's Hin x Win pixels (src: the image, NCHW), and writes into
// shifted_bias the bias that puts the shift back: a convolution is linear and every output
// sums all 9 taps of the padded input, so exactly
//   conv(x)[f] = conv(x - c)[f] + sum_c c[c] * sum_taps(w[f, c])   (+ bias[f]),
// with x - c padded by -c. The transforms' rounding errors then scale with the planes'
// spread, not their mean (activations after ReLU or pooling have a mean large beside their
// spread). tap_sums[f*Cin + c] = sum_taps(w[f, c]); bias may be null.
template <typename P>
void centre_image(const TilePlan<P>& p, const float* src, float* xp, const double* tap_sums,
                  const float* bias, float* shifted_bias) {
  const index_t C = p.Cin;
  std::vector<float> shift(C);
  plane_means(src, C, p.Hin * p.Win, shift.data(), p.round_bf16);
  // The rows and columns the outputs read (OH + 2 x OW + 2: the image and its padding); the
  // rest, read only by cut-off outputs, stays 0 (centred like the image: at -c it would put
  // a step of c into the tiles at the bottom and right edges, and their rounding errors).
  subtract_channels(xp, std::min(p.Hp, p.OH + 2), std::min(p.Wp, p.OW + 2) * C, p.Wp * C,
                    shift.data(), C);
  for (index_t f = 0; f < p.Cout; ++f) {
    const double* ts = tap_sums + f * C;
    double b = bias ? bias[f] : 0.0;
    for (index_t c = 0; c < C; ++c) b += static_cast<double>(shift[c]) * ts[c];
    shifted_bias[f] = static_cast<float>(b);
  }
}

// Runs the plan over `items` images (src(i) -> dst(i), NCHW, plus bias), kernels u(i), in
// batches of p.images consecutive ones (same group); with pool, each image's output planes
// are max-pooled from a buffer in cache into pool->y (item i holds planes [i*Cout,
// (i+1)*Cout)), and dst is not used.
// With tap_sums (groups x Cout x Cin, see centre_image), each image is centred per input
// plane first.
// Returns false, as soon as it sees one, if an input holds ±inf or NaN (the outputs are then
// unspecified: the caller recomputes them on the direct path, see conv_winograd.h).
template <typename P, typename Src, typename Dst, typename Kernels>
bool run_tiles(const TilePlan<P>& p, index_t items, index_t groups, Src src, Dst dst, Kernels u,
               const float* bias, const PoolAfter* pool = nullptr,
               const double* tap_sums = nullptr) {
  std::atomic<bool> nonfinite{false};
  const DirectKernels& k = *direct_kernels();
  auto bias_of = [&](index_t i) { return bias ? bias + i % groups * p.Cout : nullptr; };
  const index_t part = p.v_size() + p.m_size() + p.Cout_pad;  // transform buffers + junk row
  const index_t L = p.OH * p.OW, ybuf_size = pool ? round_up(checked_mul(p.Cout, L), 16) : 0;
  const index_t batches = ceil_div(items, p.images);
  const index_t shifted_size = tap_sums ? checked_mul(p.images, p.Cout_pad) : 0;
  // Scratch per batch: padded copies, transformed tiles, products, outputs, junk row, with
  // pool the output planes of one image, and with tap_sums the images' shifted biases.
  const index_t per = checked_add(p.scratch_size(), p.Cout_pad, ybuf_size, shifted_size);
  for_each_item(batches, per, [&](index_t bi, float* xp, bool split) {
    const index_t i0 = bi * p.images, count = std::min(p.images, items - i0);
    float* out = xp + p.images * p.padded_size() + p.v_size() + p.m_size();
    float* shifted_bias = xp + p.scratch_size() + p.Cout_pad + ybuf_size;
    for (index_t b = 0; b < count; ++b) {
      if (nonfinite.load(std::memory_order_relaxed)) return;
      if (p.copy_in(k, src(i0 + b), p.Cin, p.Hin, p.Win, p.pt, p.pl, p.Hp, p.Wp, p.Cin,
                    xp + b * p.padded_size())) {
        nonfinite.store(true, std::memory_order_relaxed);
        return;
      }
      if (tap_sums)
        centre_image(p, src(i0 + b), xp + b * p.padded_size(),
                     tap_sums + (i0 + b) % groups * p.Cout * p.Cin, bias_of(i0 + b),
                     shifted_bias + b * p.Cout_pad);
    }
    auto bias_out = [&](index_t b) {
      return tap_sums ? shifted_bias + b * p.Cout_pad : bias_of(i0 + b);
    };
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
        k.from_channels_last(out + b * p.out_size(), p.Cout_pad, p.Cout, L, bias_out(b), dst(i));
        continue;
      }
      float* ybuf = xp + p.scratch_size() + p.Cout_pad;
      k.from_channels_last(out + b * p.out_size(), p.Cout_pad, p.Cout, L, bias_out(b), ybuf);
      pool_planes(*pool, p.Cout, ybuf, i * p.Cout, split);
    }
  });
  return !nonfinite.load();
}

// ---- The passes (see conv_winograd.h) -----------------------------------------------------

template <typename P>
bool forward(const ConvShape& s, const float* x, const float* w, const float* bias, float* y,
             const PoolAfter* pool) {
  const index_t Cg = s.Cg(), Fg = s.Fg(), G = s.G;
  TilePlan<P> p(*direct_kernels(), Cg, s.H, s.W, s.win.PH, s.win.PW, Fg, s.OH, s.OW,
                image_batch(s.N * G, G, ceil_div(s.OH, P::m) * ceil_div(s.OW, P::m),
                            P::batch_tiles()),
                s.precision);
  std::vector<Scratch<float>> u;
  for (index_t g = 0; g < G; ++g)
    u.push_back(transform_kernels(p, [&](index_t f, index_t c, float* k) {
      std::copy_n(w + ((g * Fg + f) * Cg + c) * 9, 9, k);
    }));
  // Each kernel's sum of taps ([g][f][c], as w without the taps) when the inputs are centred.
  std::vector<double> tap_sums(P::centre_inputs ? checked_mul(G, Fg, Cg) : 0);
  for (std::size_t j = 0; j < tap_sums.size(); ++j) {
    double t = 0.0;
    for (int k = 0; k < 9; ++k) t += w[j * 9 + k];
    tap_sums[j] = t;
  }
  return run_tiles(
      p, s.N * G, G, [&](index_t i) { return x + (i / G * s.C + i % G * Cg) * s.H * s.W; },
      [&](index_t i) { return y + (i / G * s.F + i % G * Fg) * s.L(); },
      [&](index_t i) -> const float* { return u[i % G].get(); }, bias, pool,
      P::centre_inputs ? tap_sums.data() : nullptr);
}

template <typename P>
bool backward_input(const ConvShape& s, const float* gy, const float* w, float* gx) {
  // The stride-1 convolution of grad_y placed at (2 - p) with the kernel flipped and its
  // channel axes swapped (see conv_direct.h).
  const index_t Cg = s.Cg(), Fg = s.Fg(), G = s.G;
  TilePlan<P> p(*direct_kernels(), Fg, s.OH, s.OW, 2 - s.win.PH, 2 - s.win.PW, Cg, s.H, s.W,
                image_batch(s.N * G, G, ceil_div(s.H, P::m) * ceil_div(s.W, P::m),
                            P::batch_tiles()),
                s.precision);
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

template <typename P>
bool backward_weight(const ConvShape& s, const float* gy, const float* x, float* gw) {
  constexpr int n = P::n, m = P::m;
  const DirectKernels& k = *direct_kernels();
  const index_t Cg = s.Cg(), Fg = s.Fg(), G = s.G, L = s.L();
  // Tiles over grad_y (m x m, zero past OH x OW), each against the a x a input patch at
  // (m ty, m tx).
  TilePlan<P> p(k, Cg, s.H, s.W, s.win.PH, s.win.PW, Fg, s.OH, s.OW, 1, s.precision);
  const index_t Fpad = p.Cout_pad;
  const index_t gyt_size = round_up(checked_mul(m * p.TH, m * p.TW, Fpad), 16);
  // Transformed tiles of several images are gathered before the n GEMMs run over them: each
  // GEMM pass re-reads its sums (n x Cg x Fpad), so fewer, longer passes.
  const index_t cap = P::weight_grad_cap(k, Cg, Fpad);
  // Each GEMM tile reads one line per gathered tile down a column of v and of ug: row
  // strides of 1 KiB (256 channels) would put them all in 4 of L1's 64 sets (see
  // spread_stride).
  const index_t ldv = spread_stride(Cg), ldu = spread_stride(Fpad);
  const index_t vs = cap * ldv, us = cap * ldu;
  const index_t per = checked_add(p.padded_size(), gyt_size, checked_mul(n, vs + us));
  const index_t sum_size = checked_mul(G, n, Cg, Fpad);  // [g][xi][c][f]
  const index_t chunks = std::min<index_t>(s.N, P::weight_grad_chunks(Cg, Fpad));
  Scratch<float> partial = make_scratch<float>(checked_mul(chunks, sum_size));
  std::atomic<bool> nonfinite{false};  // see run_tiles

  // Sums images [n0, n1) of group g into sum (n x Cg x Fpad). parallel: threads split the n
  // products of each pass (each product is still summed in one fixed order).
  auto sum_images = [&](index_t n0, index_t n1, index_t g, float* buf, float* sum,
                        bool parallel) {
    float* xp = buf;
    float* gyt = xp + p.padded_size();
    float* v = gyt + gyt_size;
    float* ug = v + n * vs;
    index_t filled = 0;
    bool first = true;
    auto product = [&](int xi) {
      for (const ChannelBlock& b : p.blocks)
        for_each_piece(Cg, k.max_mr[b.nv], [&](index_t c0, index_t mr) {
          const DirectKernels::GradPositions at{1, 1, filled, 0, 0, ldv, 0, ldu};
          k.weight_grad[b.nv][mr](v + xi * vs + c0, ug + xi * us + b.f0, at,
                                  sum + (xi * Cg + c0) * Fpad + b.f0, Fpad, !first);
        });
    };
    auto flush = [&] {
      if (parallel) {
#pragma omp parallel for schedule(static)
        for (int xi = 0; xi < n; ++xi) product(xi);
      } else {
        for (int xi = 0; xi < n; ++xi) product(xi);
      }
      first = false;
      filled = 0;
    };
    const float* d[n];
    const float* gp[m * m];
    const auto x_of = [&](index_t i) { return x + (i * s.C + g * Cg) * s.H * s.W; };
    const auto gy_of = [&](index_t i) { return gy + (i * s.F + g * Fg) * L; };
    for (index_t i = n0; i < n1; ++i) {
      if (nonfinite.load(std::memory_order_relaxed)) return;
      const bool bad_x = p.copy_in(k, x_of(i), Cg, s.H, s.W, s.win.PH, s.win.PW, p.Hp, p.Wp,
                                   Cg, xp);
      const bool bad_gy = p.copy_in(k, gy_of(i), Fg, s.OH, s.OW, 0, 0, m * p.TH, m * p.TW,
                                    Fpad, gyt);
      if (bad_x || bad_gy) {
        nonfinite.store(true, std::memory_order_relaxed);
        return;
      }
      // The next image, a slice per tile (see PrefetchSlices).
      const bool more = i + 1 < s.N;
      const PrefetchSlices next_x(more ? x_of(i + 1) : nullptr, sizeof(float) * Cg * s.H * s.W,
                                  p.T);
      const PrefetchSlices next_gy(more ? gy_of(i + 1) : nullptr, sizeof(float) * Fg * L, p.T);
      for (index_t t = 0; t < p.T; ++t) {
        next_x.slice(t);
        next_gy.slice(t);
        const index_t ty = t / p.TW, tx = t % p.TW;
        p.patch(xp, t, d);
        P::input_tile(d, Cg, v + filled * ldv, vs);
        for (int r = 0; r < m; ++r)
          for (int c = 0; c < m; ++c)
            gp[m * r + c] = gyt + ((m * ty + r) * m * p.TW + m * tx + c) * Fpad;
        P::grad_tile(gp, Fpad, ug + filled * ldu, us);
        if (++filled == cap) flush();
      }
    }
    if (filled > 0) flush();
  };
  for_each_item(chunks, per, [&](index_t c, float* buf, bool split) {
    for (index_t g = 0; g < G; ++g)
      sum_images(s.N * c / chunks, s.N * (c + 1) / chunks, g, buf,
                 partial.get() + c * sum_size + g * n * Cg * Fpad, split);
  });
  if (nonfinite.load()) return false;
  // Sum the chunks in order (into chunk 0), then the inverse transform of each (c, f)
  // pair's n sums to its 3x3 kernel.
  float* total = partial.get();
  sum_chunks_in_order(total, chunks, sum_size, total);
#pragma omp parallel for schedule(static)
  for (index_t gc = 0; gc < G * Cg; ++gc) {
    const index_t g = gc / Cg, c = gc % Cg;
    const float* sg = total + g * n * Cg * Fpad + c * Fpad;
    for (index_t f = 0; f < Fg; ++f)
      P::weight_tile(sg + f, Cg * Fpad, gw + ((g * Fg + f) * Cg + c) * 9);
  }
  return true;
}

}  // namespace winograd
}  // namespace fastconv
