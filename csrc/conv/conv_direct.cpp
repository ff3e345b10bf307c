// Orchestration of the direct channels-last convolution (see conv_direct.h): layout copies,
// weight re-layout, tiling and threads. Portable code; the tiles live in conv_direct_avx512.cpp
// and conv_direct_avx2.cpp and are reached only when that level is selected.
#include "conv/conv_direct.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "gemm/gemm.h"

namespace fastconv {

const DirectKernels* direct_kernels() {
  switch (selected_isa()) {
    case Isa::avx512: return direct_kernels_avx512();
    case Isa::avx2: return direct_kernels_avx2();
    default: return nullptr;
  }
}

std::vector<ChannelBlock> channel_blocks(index_t channels, index_t lanes, index_t nv) {
  const index_t vecs = ceil_div(channels, lanes);
  std::vector<ChannelBlock> blocks;
  index_t v = 0;
  if (nv > 2) {
    for (; vecs - v >= nv; v += nv) blocks.push_back({lanes * v, nv});
    if (vecs > v) blocks.push_back({lanes * v, vecs - v});
    return blocks;
  }
  for (; vecs - v >= 2 && vecs - v != 3; v += 2) blocks.push_back({lanes * v, 2});
  if (vecs - v == 3) blocks.push_back({lanes * v, 3});
  if (vecs - v == 1) blocks.push_back({lanes * v, 1});
  return blocks;
}

index_t image_batch(index_t items, index_t groups, index_t per_image, index_t target) {
  if (groups > 1 || per_image >= target || items < 2) return 1;
  const index_t batches = round_up(ceil_div(items * per_image, target), max_threads());
  return ceil_div(items, batches);
}

namespace {

// Splits [0, n) into the fewest pieces of at most `max` elements, each a multiple of `align`
// (but the last), as (start, size) pairs.
std::vector<std::pair<index_t, index_t>> pieces(index_t n, index_t max, index_t align) {
  std::vector<std::pair<index_t, index_t>> out;
  const index_t size = std::min(n, round_up(ceil_div(n, ceil_div(n, max)), align));
  for (index_t start = 0; start < n; start += size) out.push_back({start, std::min(size, n - start)});
  return out;
}

// MR consecutive output pixels from `first`, summed over the kernel taps [t0, t0 + taps).
struct Tile {
  index_t first, mr, t0, taps;
};

// A stride-s convolution of a channels-last padded image with `taps` kernel taps, written as
// the forward tiles see it. Serves the forward pass and (on grad_y) the input gradient.
struct ForwardPlan {
  index_t Cin, Hin, Win;  // NCHW source image (one group)
  index_t pt, pl, Hp, Wp;  // where it sits in the padded channels-last copy
  index_t Cout, OH, OW, SH, SW;
  index_t KH, KW, DH;
  index_t lanes, Cout_pad;
  std::vector<index_t> tap_off;  // kernel row-major
  std::vector<index_t> pix;      // output pixel q (row-major) reads from xp + pix[q] + tap_off
  std::vector<ChannelBlock> blocks;
  // Register tiles for nv-vector blocks: consecutive pixels, which may span rows.
  std::vector<Tile> tiles[DirectKernels::kMaxNV + 1];
  // Input-channel blocks (start, size): one block's weights for one output block stay in L1
  // while every row of the image uses them.
  std::vector<std::pair<index_t, index_t>> cin_blocks;
  // With one input block and undilated rows, a kernel row's KW taps read KW*Cin consecutive
  // values of the channels-last copy, against weights laid out [kw][c] consecutively too:
  // the tiles then run one step per kernel row over KW*Cin channels (row_off: its taps at
  // kw = 0) instead of one per tap over Cin. Few input channels (LeNet's 6) otherwise spend
  // as much on each tap's set-up of MR pixel pointers as on its few multiply-adds.
  bool merge_rows = false;
  std::vector<index_t> row_off;
  // Images per pass through the tiles (image_batch). Tiny images in batches of at least a
  // tile's height run per pixel instead (per_pixel): a tile covers one output pixel in
  // consecutive images of the batch (image_off[b]: image b's copy) and sums only the taps
  // that read inside the image there, kernel rows [kh0, kh1) x columns [kw0, kw1), a call per
  // kernel row; the bands skip padding rows only (3x3 outputs with padding 1: 63 of 81 taps
  // computed, per pixel 49; 4x4: 120 of 144, per pixel 100).
  struct PixelTaps {
    index_t kh0, kh1, kw0, kw1;
  };
  index_t batch = 1;
  bool per_pixel = false;
  std::vector<PixelTaps> pixel_taps;  // per output pixel
  std::vector<index_t> image_off;

  index_t taps() const { return static_cast<index_t>(tap_off.size()); }
  index_t padded_size() const { return round_up(Hp * Wp * Cin, 16); }
  index_t out_size() const { return round_up(OH * OW * Cout_pad, 16); }
  index_t weight_size() const { return taps() * Cin * Cout_pad; }
};

// Whether outputs of `pixels` pixels in batches of `batch` images run per pixel.
bool per_pixel_fits(const DirectKernels& k, index_t pixels, index_t batch) {
  return pixels <= k.per_pixel_max_pixels && batch >= k.max_mr[2];
}

// Images per pass through the forward tiles (input gradient: backward_input).
index_t direct_batch(const ConvShape& s, DirectPass pass) {
  const index_t pixels = pass == DirectPass::backward_input ? s.H * s.W : s.L();
  return image_batch(s.N * s.G, s.G, pixels, kBatchPixels);
}

// batch: images per pass through the tiles (direct_batch; 1 for the weight gradient, which
// uses the plan's geometry only).
ForwardPlan make_plan(index_t Cin, index_t Hin, index_t Win, index_t pt, index_t pl, index_t Cout,
                      index_t OH, index_t OW, index_t KH, index_t KW, index_t SH, index_t SW,
                      index_t DH, index_t DW, const DirectKernels& k, index_t batch = 1) {
  const index_t Hp = checked_add(checked_mul(OH - 1, SH), checked_mul(KH - 1, DH), 1);
  const index_t Wp = checked_add(checked_mul(OW - 1, SW), checked_mul(KW - 1, DW), 1);
  ForwardPlan p{Cin, Hin, Win, pt, pl, Hp, Wp, Cout, OH, OW, SH, SW, KH, KW, DH,
                k.lanes, round_up(Cout, k.lanes), {}, {}, channel_blocks(Cout, k.lanes), {}, {}};
  // The buffers' sizes checked once (SizeTooLarge): every offset below is then under 2^62.
  checked_mul(p.Hp, p.Wp, Cin);
  checked_mul(OH, OW, p.Cout_pad);
  checked_mul(KH, KW, Cin, p.Cout_pad);
  for (index_t i = 0; i < KH; ++i)
    for (index_t j = 0; j < KW; ++j) p.tap_off.push_back((i * DH * p.Wp + j * DW) * Cin);
  for (index_t oh = 0; oh < OH; ++oh)
    for (index_t ow = 0; ow < OW; ++ow) p.pix.push_back((oh * SH * p.Wp + ow * SW) * Cin);
  // Kernel rows wholly in the zero padding above or below the image are skipped: at the
  // borders (and for the input gradient of an unpadded convolution) that is real work saved.
  // Rows with the same kernel rows form a band; tiles run along a band across its rows.
  auto kernel_rows = [&](index_t oh) {  // row i reads padded row oh*SH + i*DH
    index_t i0 = 0, i1 = KH;
    while (i0 < i1 && oh * SH + i0 * DH < pt) ++i0;
    while (i1 > i0 && oh * SH + (i1 - 1) * DH >= pt + Hin) --i1;
    return std::pair<index_t, index_t>(i0, i1);
  };
  index_t longest_band = 0;
  for (index_t ra = 0, rb; ra < OH; ra = rb) {
    for (rb = ra + 1; rb < OH && kernel_rows(rb) == kernel_rows(ra); ++rb) {
    }
    longest_band = std::max(longest_band, (rb - ra) * OW);
  }
  p.batch = batch;
  p.per_pixel = per_pixel_fits(k, OH * OW, batch);
  if (p.per_pixel) {
    auto kernel_cols = [&](index_t ow) {  // column j reads padded column ow*SW + j*DW
      index_t j0 = 0, j1 = KW;
      while (j0 < j1 && ow * SW + j0 * DW < pl) ++j0;
      while (j1 > j0 && ow * SW + (j1 - 1) * DW >= pl + Win) --j1;
      return std::pair<index_t, index_t>(j0, j1);
    };
    for (index_t oh = 0; oh < OH; ++oh)
      for (index_t ow = 0; ow < OW; ++ow) {
        const auto [kh0, kh1] = kernel_rows(oh);
        const auto [kw0, kw1] = kernel_cols(ow);
        p.pixel_taps.push_back({kh0, kh1, kw0, kw1});
      }
  } else if (k.short_tile_nv > 0 && longest_band <= k.max_mr[k.short_tile_nv]) {
    p.blocks = channel_blocks(Cout, k.lanes, k.short_tile_nv);
  }
  for (const ChannelBlock& b : p.blocks) {
    std::vector<Tile>& tiles = p.tiles[b.nv];
    if (!tiles.empty()) continue;
    for (index_t ra = 0, rb; ra < OH; ra = rb) {
      const auto rows = kernel_rows(ra);
      for (rb = ra + 1; rb < OH && kernel_rows(rb) == rows; ++rb) {
      }
      for_each_piece((rb - ra) * OW, k.max_mr[b.nv], [&](index_t q0, index_t mr) {
        tiles.push_back({ra * OW + q0, mr, rows.first * KW, (rows.second - rows.first) * KW});
      });
    }
  }
  // ~16 KiB of weights per input block for the widest output block (counted as at most 2
  // vectors): on AVX-512 14 channels of a 3x3 kernel for 32 filters, LeNet's 6 of a 5x5 for
  // 16 filters (up to 10).
  index_t nv_max = 1;
  for (const ChannelBlock& b : p.blocks) nv_max = std::max<index_t>(nv_max, b.nv);
  const index_t vecs = std::min<index_t>(nv_max, 2);
  const index_t max_cin =
      std::max<index_t>(1, 16384 / (p.taps() * k.lanes * vecs * sizeof(float)));
  // Per pixel, one block: a tile then sums whole kernel rows in one step (merge_rows), where
  // 16-channel blocks stored and reloaded its sums every 48 steps (1.2x slower on 512
  // channels at 4x4, measured on AVX2; the weights then come from L2).
  p.cin_blocks = p.per_pixel ? pieces(Cin, Cin, 1) : pieces(Cin, max_cin, max_cin >= 16 ? 16 : 1);
  p.merge_rows = p.cin_blocks.size() == 1 && DW == 1 && KW > 1;
  for (index_t i = 0; i < KH; ++i) p.row_off.push_back(p.tap_off[i * KW]);
  checked_mul(batch, checked_add(p.padded_size(), p.out_size()));  // (run_forward's scratch)
  for (index_t b = 0; b < batch; ++b) p.image_off.push_back(b * p.padded_size());
  return p;
}

// Re-lays out weights for the tiles: for output block (f0, nv) and input block (c0, kc), at
// offset taps*(f0*Cin + c0*width), the array [tap][c < kc][j < width] = value(f0 + j, c0 + c,
// tap), zero for f0 + j >= Cout (width = lanes*nv).
template <typename Value>
void relayout_weights(const ForwardPlan& p, Value value, float* wd) {
  const index_t taps = p.taps();
  for (const ChannelBlock& b : p.blocks)
    for (const auto& [c0, kc] : p.cin_blocks) {
      const index_t width = p.lanes * b.nv;
      float* d = wd + taps * (b.f0 * p.Cin + c0 * width);
      for (index_t t = 0; t < taps; ++t)
        for (index_t c = 0; c < kc; ++c)
          for (index_t j = 0; j < width; ++j)
            d[(t * kc + c) * width + j] = b.f0 + j < p.Cout ? value(b.f0 + j, c0 + c, t) : 0.0f;
    }
}

// out (OH*OW x Cout_pad, channels last) = the convolution of xp with weights wd (see
// relayout_weights), for output block `block` and its tiles [first, last), for `images`
// images (xp and out advanced by padded_size() and out_size() each): each input block's
// weights stay in L1 while every image's tiles use them.
void forward_tiles(const DirectKernels& k, const ForwardPlan& p, const float* xp, const float* wd,
                   float* out, index_t block, index_t first, index_t last, index_t images = 1) {
  const ChannelBlock blk = p.blocks[block];
  const index_t taps = p.taps(), width = p.lanes * blk.nv;
  const std::vector<Tile>& tiles = p.tiles[blk.nv];
  for (const auto& [c0, kc] : p.cin_blocks) {
    const float* w = wd + taps * (blk.f0 * p.Cin + c0 * width);
    for (index_t b = 0; b < images; ++b)
      for (index_t i = first; i < last; ++i) {
        const Tile& t = tiles[i];
        // Tiles cover whole kernel rows (t0 and taps multiples of KW).
        const index_t* off =
            p.merge_rows ? p.row_off.data() + t.t0 / p.KW : p.tap_off.data() + t.t0;
        const index_t steps = p.merge_rows ? t.taps / p.KW : t.taps;
        const index_t depth = p.merge_rows ? p.KW * kc : kc;
        k.forward[blk.nv][t.mr](xp + b * p.padded_size() + c0, p.pix.data() + t.first, off, steps,
                                depth, w + t.t0 * kc * width, width,
                                out + b * p.out_size() + t.first * p.Cout_pad + blk.f0,
                                p.Cout_pad, c0 > 0);
      }
  }
}

// The same per pixel (ForwardPlan::per_pixel), for output block `block` and output pixels
// [first, last) of `images` images: each tile is one pixel of up to MR consecutive images, a
// call per kernel row that reads inside the image (its taps contiguous in the weights).
void forward_pixels(const DirectKernels& k, const ForwardPlan& p, const float* xp,
                    const float* wd, float* out, index_t block, index_t first, index_t last,
                    index_t images) {
  const ChannelBlock blk = p.blocks[block];
  const index_t taps = p.taps(), width = p.lanes * blk.nv, out_size = p.out_size();
  for (const auto& [c0, kc] : p.cin_blocks) {
    const float* w = wd + taps * (blk.f0 * p.Cin + c0 * width);
    for (index_t q = first; q < last; ++q) {
      const ForwardPlan::PixelTaps& pt = p.pixel_taps[q];
      const float* in = xp + p.pix[q] + c0;
      float* o = out + q * p.Cout_pad + blk.f0;
      // Rows merged into one step where one input block holds every channel (as the bands).
      const bool merge = p.merge_rows;
      const index_t row_taps = pt.kw1 - pt.kw0;
      for_each_piece(images, k.max_mr[blk.nv], [&](index_t b0, index_t mr) {
        if (c0 == 0 && (pt.kh0 == pt.kh1 || row_taps == 0))  // every tap in the padding: 0
          k.forward[blk.nv][mr](in, p.image_off.data() + b0, p.tap_off.data(), 0, kc, w, width,
                                o + b0 * out_size, out_size, false);
        if (row_taps == 0) return;
        for (index_t kh = pt.kh0; kh < pt.kh1; ++kh) {
          const index_t t = kh * p.KW + pt.kw0;
          k.forward[blk.nv][mr](in, p.image_off.data() + b0, p.tap_off.data() + t,
                                merge ? 1 : row_taps, merge ? row_taps * kc : kc,
                                w + t * kc * width, width, o + b0 * out_size, out_size,
                                c0 > 0 || kh > pt.kh0);
        }
      });
    }
  }
}

// Runs the plan over `items` images (image i: src(i) NCHW -> dst(i) NCHW, plus bias), with
// per-group weights wd(i), in batches of p.batch consecutive images. Threads take
// whole batches when there are enough of them, else split the tiles of each image. Each
// output value is summed by one thread in the same order whatever the batches.
template <typename Src, typename Dst, typename Weights>
void run_forward(const ForwardPlan& p, index_t items, index_t groups, Src src, Dst dst, Weights wd,
                 const float* bias) {
  auto bias_of = [&](index_t i) { return bias ? bias + i % groups * p.Cout : nullptr; };
  const DirectKernels& k = *direct_kernels();
  const index_t batch = p.batch;
  const index_t per = checked_mul(batch, checked_add(p.padded_size(), p.out_size()));
  const index_t nblocks = static_cast<index_t>(p.blocks.size());
  auto tile_count = [&](index_t b) {
    return static_cast<index_t>(p.tiles[p.blocks[b].nv].size());
  };
  index_t per_block = 0;  // tiles of the longest block
  for (index_t b = 0; b < nblocks; ++b) per_block = std::max(per_block, tile_count(b));
  const index_t L = p.OH * p.OW;
  for_each_item(ceil_div(items, batch), per, [&](index_t bi, float* xp, bool split) {
    const index_t i0 = bi * batch, images = std::min(batch, items - i0);
    float* out = xp + batch * p.padded_size();
    for (index_t b = 0; b < images; ++b)
      k.to_channels_last(src(i0 + b), p.Cin, p.Hin, p.Win, p.pt, p.pl, p.Hp, p.Wp, p.Cin,
                         xp + b * p.padded_size());
    if (p.per_pixel && split) {
      // (block, pixel) work items over the batch's images.
#pragma omp parallel for schedule(static)
      for (index_t r = 0; r < nblocks * L; ++r)
        forward_pixels(k, p, xp, wd(i0), out, r / L, r % L, r % L + 1, images);
    } else if (p.per_pixel) {
      for (index_t b = 0; b < nblocks; ++b) forward_pixels(k, p, xp, wd(i0), out, b, 0, L, images);
    } else if (split) {
      // (image, block, tile) work items: each output value is still summed by one thread.
      const index_t per_image = nblocks * per_block;
#pragma omp parallel for schedule(static)
      for (index_t r = 0; r < images * per_image; ++r) {
        const index_t i = r / per_image, b = r % per_image / per_block, t = r % per_block;
        if (t < tile_count(b))
          forward_tiles(k, p, xp + i * p.padded_size(), wd(i0), out + i * p.out_size(), b, t,
                        t + 1);
      }
    } else {
      // The next batch (this thread's, mostly), a slice per block (see PrefetchSlices).
      const index_t next = i0 + images;
      const PrefetchSlices next_src(
          next < items ? src(next) : nullptr,
          sizeof(float) * p.Cin * p.Hin * p.Win * std::min(batch, items - next), nblocks);
      for (index_t b = 0; b < nblocks; ++b) {
        next_src.slice(b);
        forward_tiles(k, p, xp, wd(i0), out, b, 0, tile_count(b), images);
      }
    }
    for (index_t b = 0; b < images; ++b)
      k.from_channels_last(out + b * p.out_size(), p.Cout_pad, p.Cout, L, bias_of(i0 + b),
                           dst(i0 + b));
  });
}

}  // namespace

bool direct_per_pixel(const ConvShape& s, DirectPass pass) {
  const DirectKernels* k = direct_kernels();
  const index_t pixels = pass == DirectPass::backward_input ? s.H * s.W : s.L();
  return k && pass != DirectPass::backward_weight &&
         per_pixel_fits(*k, pixels, direct_batch(s, pass));
}

bool use_direct(const ConvShape& s, DirectPass pass, bool forced) {
  if (!direct_kernels() || s.N == 0) return false;
  if (pass == DirectPass::backward_input && (s.win.SH != 1 || s.win.SW != 1)) return false;
  if (forced) return true;
  // 1x1 convolutions are plain GEMMs already. The forward and weight-gradient tiles broadcast
  // input channels along a reduction of Cg*KH*KW steps (and 16-lane vectors of output
  // channels): measured here, they win from ~64 steps with >= 16 output channels, e.g.
  // LeNet's 6->16 5x5 (3x on the weight gradient), not the 3-channel first layers. The input
  // gradient reduces over Fg and vectorises Cg, and wants both wide.
  // (Measured with AVX-512; the weight gradient's minimum kernel taps are the ISA's.)
  if (s.pointwise()) return false;
  if (pass == DirectPass::backward_input) return s.Cg() >= 16 && s.Fg() >= 16;
  if (pass == DirectPass::backward_weight &&
      s.win.KH * s.win.KW < direct_kernels()->direct_wg_min_taps)
    return false;
  return s.Fg() >= 16 && s.CKK() >= 64;
}

namespace {

// Zero-padded NCHW planes of one image (group) for the few-channel kernels: the image at
// (PH, PW), rows wide enough that every vector of `lanes` pixels of an output row reads inside
// the row, or (snug, where the padded image fits) exactly `vecs` vectors wide, so that a row's
// last vector reads its spare lanes from the next row (and the last plane's from `lanes`
// floats of slack).
struct SmallPlanes {
  index_t vecs, Hp, Wp, plane, padded;
  SmallPlanes(const ConvShape& s, index_t lanes, bool snug = false)
      : vecs(ceil_div(s.OW, lanes)),
        Hp(checked_add(s.OH, checked_mul(s.win.KH - 1, s.win.DH))),
        Wp(snug && s.OW + (s.win.KW - 1) * s.win.DW <= lanes * vecs
               ? lanes * vecs
               : checked_add(lanes * vecs, checked_mul(s.win.KW - 1, s.win.DW))),
        plane(checked_mul(Hp, Wp)),
        padded(round_up(checked_add(checked_mul(s.Cg(), plane), lanes), 16)) {}
  void fill(const ConvShape& s, const float* src, float* xp) const {
    const Window2d& win = s.win;
    std::fill(xp, xp + padded, 0.0f);
    const index_t w0 = std::max<index_t>(0, -win.PW), w1 = std::min(s.W, Wp - win.PW);
    for (index_t c = 0; c < s.Cg(); ++c)
      for (index_t h = 0; h < s.H && h + win.PH < Hp; ++h)
        std::copy(src + (c * s.H + h) * s.W + w0, src + (c * s.H + h) * s.W + w1,
                  xp + c * plane + (h + win.PH) * Wp + w0 + win.PW);
  }
};

}  // namespace

bool use_small_channels(const ConvShape& s, bool forced) {
  if (!direct_kernels() || s.N == 0 || s.win.SH != 1 || s.win.SW != 1) return false;
  // The first layers (RGB input): broadcasting weights over 64 output pixels (AVX-512; 16 on
  // AVX2) beats both the GEMM and the channels-last tiles there (1.2x); from ~6 channels the
  // tiles win.
  return forced || (s.Cg() <= 4 && !s.pointwise());
}

void pool_planes(const PoolAfter& pool, index_t planes, const float* ybuf, index_t first,
                 bool split) {
  const index_t PL = pool.shape.OH * pool.shape.OW;
  float* y = pool.y + first * PL;
  std::int64_t* indices = pool.indices + first * PL;
  if (!split) {
    max_pool2d_forward_planes(pool.shape, planes, ybuf, y, indices, pool.relu);
    return;
  }
  PoolShape shape = pool.shape;  // the planes as one image, split by max_pool2d_forward
  shape.N = 1;
  shape.C = planes;
  max_pool2d_forward(shape, ybuf, y, indices, pool.relu);
}

void conv2d_forward_small_channels(const ConvShape& s, const float* x, const float* w,
                                   const float* bias, float* y, const PoolAfter* pool) {
  const DirectKernels& k = *direct_kernels();
  const int shape = s.Fg() % k.small_shapes[1].nf == 0 ? 1 : 0;
  const index_t NF = k.small_shapes[shape].nf, NVEC = k.small_shapes[shape].nv;
  const index_t Cg = s.Cg(), Fg = s.Fg(), G = s.G, L = s.L(), CKK = s.CKK();
  const Window2d& win = s.win;
  const index_t lanes = k.lanes;
  const SmallPlanes sp(s, lanes);
  const index_t vecs = sp.vecs, Wp = sp.Wp, plane = sp.plane;
  const index_t taps = win.KH * win.KW;
  // Weights per group and block of NF output channels: [step][NF], zero past Fg; step
  // (c, kh, kw) reads the padded planes at c*plane + kh*DH*Wp + kw*DW.
  const index_t fblocks = ceil_div(Fg, NF);
  auto weight = [&](index_t g, index_t b, index_t st, index_t i) {
    const index_t f = b * NF + i;
    return f < Fg ? w[(g * Fg + f) * CKK + st] : 0.0f;
  };
  const index_t row_vecs = s.OH * vecs, tiles = ceil_div(row_vecs, NVEC);
  // Row vector rv (`lanes` outputs of row rv / vecs): its offsets in the padded image and in
  // an output plane, and its lanes; past the last (a tile's spare vectors): the last, none.
  struct RowVec {
    index_t in, out, lanes;
  };
  std::vector<RowVec> rvs(checked_mul(tiles, NVEC));
  for (index_t rv = 0; rv < tiles * NVEC; ++rv) {
    const index_t r = std::min(rv, row_vecs - 1), oh = r / vecs, v = r % vecs;
    rvs[rv] = {oh * Wp + lanes * v, oh * s.OW + lanes * v,
               rv < row_vecs ? std::min<index_t>(lanes, s.OW - lanes * v) : 0};
  }
  // Kernel rows that read only the zero padding above or below the image for every row of
  // a tile are left out of its steps: the input gradient's padding of d(k-1) - p is wide
  // (LeNet's 16 -> 6 5x5: a fifth of all steps). Tiles with the same kernel rows [kh0, kh1)
  // share a step set: the remaining steps in their usual order, so the sums keep their order.
  struct StepSet {
    index_t kh0, kh1;
    std::vector<index_t> off;  // one per step
    Scratch<float> wq;
    index_t steps() const { return static_cast<index_t>(off.size()); }
  };
  std::vector<StepSet> sets;
  std::vector<index_t> tile_set(tiles);
  for (index_t t = 0; t < tiles; ++t) {
    const index_t oh_min = std::min(NVEC * t, row_vecs - 1) / vecs;
    const index_t oh_max = std::min(NVEC * (t + 1) - 1, row_vecs - 1) / vecs;
    // Kernel row kh reads padded rows oh + kh*DH; the image's are [PH, PH + H).
    index_t kh0 = 0, kh1 = win.KH;
    while (kh0 < kh1 && oh_max + kh0 * win.DH < win.PH) ++kh0;
    while (kh1 > kh0 && oh_min + (kh1 - 1) * win.DH >= win.PH + s.H) --kh1;
    const auto found = std::find_if(sets.begin(), sets.end(), [&](const StepSet& ss) {
      return ss.kh0 == kh0 && ss.kh1 == kh1;
    });
    tile_set[t] = found - sets.begin();
    if (found != sets.end()) continue;
    StepSet ss{kh0, kh1, {},
               make_scratch<float>(checked_mul(G, fblocks, Cg, kh1 - kh0, win.KW, NF))};
    float* wq = ss.wq.get();
    for (index_t g = 0; g < G; ++g)
      for (index_t b = 0; b < fblocks; ++b)
        for (index_t c = 0; c < Cg; ++c)
          for (index_t i = kh0; i < kh1; ++i)
            for (index_t j = 0; j < win.KW; ++j) {
              if (g == 0 && b == 0) ss.off.push_back(c * plane + i * win.DH * Wp + j * win.DW);
              const index_t st = c * taps + i * win.KW + j;
              for (index_t f = 0; f < NF; ++f) *wq++ = weight(g, b, st, f);
            }
    sets.push_back(std::move(ss));
  }
  // Tile t of block b: row vectors [NVEC*t, NVEC*(t + 1)).
  // The item's output planes: in y, or with pool in the item's buffer ybuf.
  // Of group g, its output planes at ys.
  auto tile = [&](index_t g, const float* xp, float* ys, index_t b, index_t t) {
    constexpr int kMaxV = DirectKernels::kSmallMaxV;
    float* yi = ys + b * NF * L;
    const float* rows[kMaxV];
    float* out[kMaxV];
    index_t lanes[kMaxV];
    for (index_t j = 0; j < NVEC; ++j) {
      const RowVec& r = rvs[NVEC * t + j];
      rows[j] = xp + r.in;
      out[j] = yi + r.out;
      lanes[j] = r.lanes;
    }
    const StepSet& ss = sets[tile_set[t]];
    k.small_c_tile[shape](rows, ss.off.data(), ss.steps(),
                          ss.wq.get() + (g * fblocks + b) * ss.steps() * NF,
                          bias ? bias + g * Fg + b * NF : nullptr, out, L,
                          std::min(NF, Fg - b * NF), lanes);
  };
  const index_t ybuf_size = pool ? round_up(checked_mul(Fg, L), 16) : 0;
  for_each_item(s.N * G, checked_add(sp.padded, ybuf_size), [&](index_t i, float* xp, bool split) {
    const index_t g = i % G, first = i / G * s.F + g * Fg;  // (first output plane)
    float* ys = pool ? xp + sp.padded : y + first * L;
    sp.fill(s, x + (i / G * s.C + g * Cg) * s.H * s.W, xp);
#pragma omp parallel for collapse(2) schedule(static) if (split)
    for (index_t b = 0; b < fblocks; ++b)
      for (index_t t = 0; t < tiles; ++t) tile(g, xp, ys, b, t);
    if (pool) pool_planes(*pool, Fg, ys, first, split);
  });
}

// The input gradient of a stride-1 layer is the forward convolution of grad_y, padded by
// d(k-1) - p, with the kernel flipped and its channel axes swapped: Fg input channels and Cg
// output channels. Few output channels (LeNet's 16 -> 6) fill the 6-channel tiles of the
// few-channel forward exactly, where the GEMM paths have a reduction of only Fg.

bool use_small_channels_input_grad(const ConvShape& s, bool forced) {
  // Padding beyond the kernel would need grad_y cropped (negative padding): not here.
  if (s.win.PH > s.win.DH * (s.win.KH - 1) || s.win.PW > s.win.DW * (s.win.KW - 1)) return false;
  if (!use_small_channels(transposed_shape(s), true)) return false;
  // Measured at batch 64, 2 threads: 1.3x the GEMM paths on LeNet's 16 -> 6 5x5, 1.0-1.5x
  // on the RGB first layers.
  return forced || (s.Cg() <= direct_kernels()->small_shapes[0].nf && !s.pointwise());
}

void conv2d_backward_input_small_channels(const ConvShape& s, const float* gy, const float* w,
                                          float* gx) {
  const ConvShape t = transposed_shape(s);
  const index_t Cg = s.Cg(), Fg = s.Fg(), taps = s.win.KH * s.win.KW;
  // wt[g*Cg + c][f][tap] = w[g*Fg + f][c][taps - 1 - tap]
  std::vector<float> wt(checked_mul(s.F, Cg, taps));
  for (index_t g = 0; g < s.G; ++g)
    for (index_t c = 0; c < Cg; ++c)
      for (index_t f = 0; f < Fg; ++f)
        for (index_t k = 0; k < taps; ++k)
          wt[((g * Cg + c) * Fg + f) * taps + k] = w[((g * Fg + f) * Cg + c) * taps + taps - 1 - k];
  conv2d_forward_small_channels(t, gy, wt.data(), nullptr, gx);
}

bool use_small_channels_weight_grad(const ConvShape& s, bool forced) {
  if (!direct_kernels() || s.N == 0 || s.win.SH != 1 || s.win.SW != 1 ||
      s.win.KW > DirectKernels::kSmallWgMaxKW)
    return false;
  // 3-channel layers with many filters (measured with AVX-512 at batch 64, 2 threads: 32
  // filters 3x3, 1.1-1.25x the GEMM paths); with few filters (LeNet's 6) the ISA's rule.
  return forced ||
         (s.Cg() <= 4 && s.Fg() >= direct_kernels()->small_wg_min_filters && !s.pointwise());
}

void conv2d_backward_weight_small_channels(const ConvShape& s, const float* gy, const float* x,
                                           float* gw) {
  conv2d_backward_weight_small_channels(
      s,
      [&](index_t n, index_t f, index_t, float*) -> const float* {
        return gy + (n * s.F + f) * s.L();
      },
      true, x, gw);
}

void conv2d_backward_weight_small_channels(const ConvShape& s, const GradPlanes& planes,
                                           bool in_memory, const float* x, float* gw) {
  const DirectKernels& k = *direct_kernels();
  const index_t Cg = s.Cg(), Fg = s.Fg(), G = s.G, L = s.L(), CKK = s.CKK();
  const index_t KW = s.win.KW, lanes = k.lanes;
  const SmallPlanes sp(s, lanes, true);
  const index_t max_nf = k.small_wg_max_nf[KW];
  const index_t acc_size = checked_mul(s.F, CKK, lanes);  // lane sums [f][tap][lane]
  // Fixed chunks of images, each summed into its own lane sums and added in chunk order: the
  // result does not depend on the number of threads.
  const index_t chunks = std::min<index_t>(s.N, kWeightGradChunks);
  Scratch<float> partial = make_scratch<float>(checked_mul(chunks, acc_size));
  std::vector<std::pair<index_t, index_t>> fblocks;  // (first channel, count) per group
  for_each_piece(Fg, max_nf, [&](index_t f0, index_t nf) { fblocks.emplace_back(f0, nf); });
  const index_t nb = static_cast<index_t>(fblocks.size());
  // Scratch per thread: the padded image, then the interleaved gradient of one block, then
  // room for the block's gradient planes when `planes` makes them.
  const index_t pack_size = checked_mul(s.OH, sp.vecs, max_nf, lanes);
  const index_t block_size = in_memory ? 0 : round_up(checked_mul(max_nf, L), 16);
  // (split: the threads share an image, each with buffers of its own)
  Scratch<float> packs =
      make_scratch<float>(checked_mul(max_threads(), checked_add(pack_size, block_size)));
  const index_t per = checked_add(sp.padded, pack_size, block_size);
  for_each_item(chunks, per, [&](index_t c, float* xp, bool split) {
    float* acc = partial.get() + c * acc_size;
    const index_t n0 = s.N * c / chunks;
    for (index_t n = n0; n < s.N * (c + 1) / chunks; ++n)
      for (index_t g = 0; g < G; ++g) {
        const float* xi = x + (n * s.C + g * Cg) * s.H * s.W;
        sp.fill(s, xi, xp);
        const bool finite = !has_nonfinite(xi, Cg * s.H * s.W);
#pragma omp parallel for schedule(static) if (split)
        for (index_t b = 0; b < nb; ++b) {
          const index_t f = g * Fg + fblocks[b].first, nf = fblocks[b].second;
          float* gpack = split ? packs.get() + thread_id() * (pack_size + block_size)
                               : xp + sp.padded;
          const float* gy = planes(n, f, nf, gpack + pack_size);
          // Unsplit, this thread's next gradient planes when they are in memory: the next
          // block's, or the next image's first block (and that image's input, asked for
          // with the last block).
          const float* next = nullptr;
          index_t next_bytes = 0;
          if (!split && b + 1 < nb && in_memory) {
            next = planes(n, g * Fg + fblocks[b + 1].first, 0, nullptr);
            next_bytes = sizeof(float) * fblocks[b + 1].second * L;
          } else if (!split && b + 1 == nb && n + 1 < s.N) {
            if (in_memory) {
              next = planes(n + 1, g * Fg, 0, nullptr);
              next_bytes = sizeof(float) * fblocks[0].second * L;
            }
            prefetch_all(x + ((n + 1) * s.C + g * Cg) * s.H * s.W, sizeof(float) * Cg * s.H * s.W);
          }
          k.small_c_weight_grad[KW][nf](xp, Cg, sp.plane, sp.Wp, gy, s.OH, s.OW, s.win.KH,
                                        s.win.DH, s.win.DW, acc + f * CKK * lanes, gpack, n > n0,
                                        finite, next, next_bytes);
        }
      }
  });
  const float* part = partial.get();
#pragma omp parallel for schedule(static)
  for (index_t e = 0; e < s.F * CKK; ++e) {
    float sum = 0;
    for (index_t c = 0; c < chunks; ++c) {
      const float* lane = part + c * acc_size + e * lanes;
      float chunk = 0;
      for (index_t l = 0; l < lanes; ++l) chunk += lane[l];
      sum += chunk;
    }
    gw[e] = sum;
  }
}

void conv2d_forward_direct(const ConvShape& s, const float* x, const float* w, const float* bias,
                           float* y) {
  const index_t Cg = s.Cg(), Fg = s.Fg(), G = s.G;
  const Window2d& win = s.win;
  const ForwardPlan p = make_plan(Cg, s.H, s.W, win.PH, win.PW, Fg, s.OH, s.OW, win.KH, win.KW,
                                  win.SH, win.SW, win.DH, win.DW, *direct_kernels(),
                                  direct_batch(s, DirectPass::forward));
  const index_t taps = win.KH * win.KW;
  Scratch<float> wd = make_scratch<float>(checked_mul(G, p.weight_size()));
  for (index_t g = 0; g < G; ++g)
    relayout_weights(
        p, [&](index_t f, index_t c, index_t t) { return w[((g * Fg + f) * Cg + c) * taps + t]; },
        wd.get() + g * p.weight_size());
  run_forward(
      p, s.N * G, G, [&](index_t i) { return x + (i / G * s.C + i % G * Cg) * s.H * s.W; },
      [&](index_t i) { return y + (i / G * s.F + i % G * Fg) * s.L(); },
      [&](index_t i) -> const float* { return wd.get() + i % G * p.weight_size(); }, bias);
}

void conv2d_backward_input_direct(const ConvShape& s, const float* gy, const float* w, float* gx) {
  // gx = the stride-1 convolution of grad_y, padded by d(k-1) - p (cropped where that is
  // negative), with the kernel flipped and its channel axes swapped.
  const index_t Cg = s.Cg(), Fg = s.Fg(), G = s.G;
  const Window2d& win = s.win;
  const index_t pt = (win.KH - 1) * win.DH - win.PH, pl = (win.KW - 1) * win.DW - win.PW;
  const ForwardPlan p = make_plan(Fg, s.OH, s.OW, pt, pl, Cg, s.H, s.W, win.KH, win.KW, 1, 1,
                                  win.DH, win.DW, *direct_kernels(),
                                  direct_batch(s, DirectPass::backward_input));
  const index_t taps = win.KH * win.KW;
  Scratch<float> wd = make_scratch<float>(checked_mul(G, p.weight_size()));
  for (index_t g = 0; g < G; ++g)
    relayout_weights(
        p,
        [&](index_t c, index_t f, index_t t) {
          return w[((g * Fg + f) * Cg + c) * taps + (taps - 1 - t)];
        },
        wd.get() + g * p.weight_size());
  run_forward(
      p, s.N * G, G, [&](index_t i) { return gy + (i / G * s.F + i % G * Fg) * s.L(); },
      [&](index_t i) { return gx + (i / G * s.C + i % G * Cg) * s.H * s.W; },
      [&](index_t i) -> const float* { return wd.get() + i % G * p.weight_size(); }, nullptr);
}

namespace {

// gw[g*Fg + f][c][t] = sum over chunks (in order) of partial[chunk][g][t][c][f] (chunks of
// part_size floats); rows of the partials are read contiguously.
void gather_weight_grad(const ConvShape& s, const ForwardPlan& p, const float* part,
                        index_t chunks, index_t part_size, float* gw) {
  const index_t Cg = s.Cg(), Fg = s.Fg(), taps = p.taps(), Fpad = p.Cout_pad;
#pragma omp parallel for schedule(static)
  for (index_t row = 0; row < s.G * taps * Cg; ++row) {
    const index_t g = row / (taps * Cg), t = row / Cg % taps, c = row % Cg;
    for (index_t f = 0; f < Fg; ++f) {
      const index_t e = row * Fpad + f;
      float sum = part[e];
      for (index_t ch = 1; ch < chunks; ++ch) sum += part[ch * part_size + e];
      gw[((g * Fg + f) * Cg + c) * taps + t] = sum;
    }
  }
}

}  // namespace

// Where the weight gradient is large beside the images (many channels on few pixels: 512 ->
// 512 3x3 on 4x4 images has 2.4M weights and 16 positions per image), the register tiles
// sum few positions per weight: the batch goes through the packed GEMM instead (a slab of
// images per call), whose blocking keeps its operands in cache. The GEMM's rows are the
// output channels: from 32 of them (LeNet's 16 leave its 6-row register tiles 2x slower than
// the direct tiles). Measured on AVX2 (Zen 3), 1 thread, batch 64: the GEMM ahead from weights
// as many as one image's values (input + gradient, channels-last): 1.2x on 64 -> 128 stride 2
// at 32x32 (1.5x), 1.07x on 64 -> 64 stride 2 at 32x32 (1.1x), 1.04x on 48 -> 64 5x5 at
// 16x16 (2.7x), level on 32 -> 64 5x5 at 16x16 (2.1x); earlier (the tiles against the whole
// batch in one GEMM) 1.25x on 256 -> 256 at 8x8 (18x), 2.3x on 256 -> 512 stride 2 at 8x8.
bool use_weight_grad_gemm(const ConvShape& s) {
  const DirectKernels* k = direct_kernels();
  if (!k || k->weight_grad_gemm_ratio == 0 || s.Fg() < 32) return false;
  const index_t Fpad = round_up(s.Fg(), k->lanes);
  return s.win.KH * s.win.KW * s.Cg() * Fpad >
         k->weight_grad_gemm_ratio * s.L() * (s.Cg() + Fpad);
}

namespace {

// dst[p*n + j] = base[pos[p] + j] for p < kc, j < n: rows of n consecutive values at the
// given offsets, as one packed panel (cloned per ISA: the row copies become vector moves).
template <typename T>
__attribute__((always_inline)) inline void gather_rows(index_t kc, const T* base,
                                                       const index_t* pos, index_t n, T* dst) {
  for (index_t p = 0; p < kc; ++p) {
    const T* src = base + pos[p];
    for (index_t j = 0; j < n; ++j) dst[p * n + j] = src[j];
  }
}

FASTCONV_CLONED(gather_rows_any, gather_rows,
                (index_t kc, const T* base, const index_t* pos, index_t n, T* dst),
                (kc, base, pos, n, dst))

// B(k, j) of that GEMM: row k = a position of the slab, column j = (tap t, input channel c):
// x_t(k)[c], read from the images' channels-last copies at pos[k] + col_off[j]. The taps of a
// kernel row lie Cg apart, so the columns of a whole kernel row are consecutive values of the
// copy: a panel's nr columns are then one contiguous run per position (run[panel]).
struct TapPositionsB final : BSource<float> {
  const float* xp;
  std::vector<index_t> col_off, pos;
  std::vector<char> run;  // per panel of nr columns from column 0

  TapPositionsB(const float* xp_, std::vector<index_t> cols, index_t nr)
      : xp(xp_), col_off(std::move(cols)) {
    const index_t n = static_cast<index_t>(col_off.size());
    for (index_t j0 = 0; j0 < n; j0 += nr) {
      bool r = j0 + nr <= n;
      for (index_t j = j0 + 1; r && j < j0 + nr; ++j) r = col_off[j] == col_off[j - 1] + 1;
      run.push_back(r);
    }
  }
  void pack(index_t pc, index_t kc, index_t jc, index_t nc, index_t nr,
            float* dst) const override {
    // (The loop nest's column blocks, and the threads' shares, start at multiples of nr.)
    for (index_t q = 0; q < nc; q += nr) {
      float* panel = dst + q * kc;
      const index_t* co = col_off.data() + jc + q;
      if (run[(jc + q) / nr]) {
        gather_rows_any(kc, xp + co[0], pos.data() + pc, nr, panel);
        continue;
      }
      const index_t n = std::min(nr, nc - q);
      for (index_t k = 0; k < kc; ++k) {
        const float* src = xp + pos[pc + k];
        index_t j = 0;
        for (; j < n; ++j) panel[k * nr + j] = src[co[j]];
        for (; j < nr; ++j) panel[k * nr + j] = 0.0f;
      }
    }
  }
};

// Images per GEMM of the weight gradient's batch: ~kSlabPositions output positions, and at
// most kSlabBytes of channels-last copies (input and gradient). A function of the shape
// only: the slabs set the order of the sums.
constexpr index_t kSlabPositions = 2048;
constexpr index_t kSlabBytes = index_t(8) << 20;
index_t slab_images(const ConvShape& s, const ForwardPlan& p) {
  const index_t per_image =
      checked_mul(sizeof(float), checked_add(p.padded_size(), checked_mul(s.L(), p.Cout_pad)));
  return std::max<index_t>(1, std::min({s.N, ceil_div(kSlabPositions, s.L()),
                                        kSlabBytes / per_image}));
}

// gw[g*Fg + f][c][t] = sum over the batch's positions of x_t(p)[c] * gy(p)[f], for group g:
// per slab of images (slab_images), each copied channels-last (threads split the images),
// part (Fg x taps*Cg, columns (t, c)) (+)= gy (Fg x positions) . B (positions x taps*Cg) on
// the packed GEMM, whose threads split rows or columns, never the sum; slabs added in order.
// The same bits for any number of threads.
void weight_grad_gemm(const DirectKernels& k, const ForwardPlan& p, const ConvShape& s, index_t g,
                      const float* x, const float* gy, float* gw) {
  const index_t Cg = s.Cg(), Fg = s.Fg(), L = s.L(), Fpad = p.Cout_pad, taps = p.taps();
  const index_t padded = p.padded_size(), cols = checked_mul(taps, Cg);
  const index_t slab = slab_images(s, p);
  Scratch<float> xp = make_scratch<float>(checked_mul(slab, padded));
  Scratch<float> gyt = make_scratch<float>(checked_mul(slab, L, Fpad));
  Scratch<float> part = make_scratch<float>(checked_mul(Fg, cols));
  std::vector<index_t> col_off;
  for (index_t t = 0; t < taps; ++t)
    for (index_t c = 0; c < Cg; ++c) col_off.push_back(p.tap_off[t] + c);
  TapPositionsB b(xp.get(), std::move(col_off), gemm_config<float>().nr);
  for (index_t i = 0; i < slab; ++i)
    for (index_t q = 0; q < L; ++q) b.pos.push_back(i * padded + p.pix[q]);
  for (index_t n0 = 0; n0 < s.N; n0 += slab) {
    const index_t images = std::min(slab, s.N - n0);
#pragma omp parallel for schedule(static)
    for (index_t i = 0; i < images; ++i) {
      const index_t n = n0 + i;
      k.to_channels_last(x + (n * s.C + g * Cg) * s.H * s.W, Cg, s.H, s.W, p.pt, p.pl, p.Hp,
                         p.Wp, Cg, xp.get() + i * padded);
      k.to_channels_last(gy + (n * s.F + g * Fg) * L, Fg, s.OH, s.OW, index_t(0), index_t(0),
                         s.OH, s.OW, Fpad, gyt.get() + i * L * Fpad);
    }
    gemm_parallel<float>(Fg, cols, images * L, StridedA<float>(gyt.get(), 1, Fpad), b,
                         part.get(), cols, n0 > 0);
  }
  // part[f][t][c] -> gw[g*Fg + f][c][t]
  const float* pt = part.get();
#pragma omp parallel for schedule(static)
  for (index_t f = 0; f < Fg; ++f)
    for (index_t c = 0; c < Cg; ++c)
      for (index_t t = 0; t < taps; ++t)
        gw[((g * Fg + f) * Cg + c) * taps + t] = pt[f * cols + t * Cg + c];
}

}  // namespace

void conv2d_backward_weight_direct(const ConvShape& s, const float* gy, const float* x,
                                   float* gw) {
  const DirectKernels& k = *direct_kernels();
  const index_t Cg = s.Cg(), Fg = s.Fg(), G = s.G, L = s.L();
  const Window2d& win = s.win;
  const ForwardPlan p = make_plan(Cg, s.H, s.W, win.PH, win.PW, Fg, s.OH, s.OW, win.KH, win.KW,
                                  win.SH, win.SW, win.DH, win.DW, *direct_kernels());
  const index_t taps = win.KH * win.KW;
  const index_t part_size = checked_mul(G, p.weight_size());  // [g][tap][c][Fpad]
  const index_t gyt_size = round_up(L * p.Cout_pad, 16);
  if (use_weight_grad_gemm(s)) {
    for (index_t g = 0; g < G; ++g) weight_grad_gemm(k, p, s, g, x, gy, gw);
    return;
  }
  // Fixed chunks of images, each summed into its own partial gradient and added in chunk
  // order: the result does not depend on the number of threads.
  const index_t chunks = std::min<index_t>(s.N, kWeightGradChunks);
  // A chunk's images go through the tiles `batch` at a time (copies side by side), so each
  // tile sums ~kBatchPositions positions before it stores its sums: small images would
  // otherwise read and write the whole partial gradient (taps x Cg x Fpad) once per image.
  constexpr index_t kBatchPositions = 256;
  const index_t batch = std::min(ceil_div(s.N, chunks), ceil_div(kBatchPositions, L));
  const index_t per = checked_mul(batch, checked_add(p.padded_size(), gyt_size));
  Scratch<float> partial = make_scratch<float>(checked_mul(chunks, part_size));
  // Work items: a tap and a piece of input channels (as tall as a 2-vector tile), over every
  // output block; the piece's inputs stay in L1 while the blocks' gradients pass by.
  std::vector<std::pair<index_t, index_t>> pieces;
  for_each_piece(Cg, k.max_mr[2], [&](index_t c0, index_t mr) { pieces.emplace_back(c0, mr); });
  const index_t npieces = static_cast<index_t>(pieces.size());

  // Adds `images` images (group g; xp, gyt their channels-last copies) into part, for work
  // item (tap, piece); accumulate: onto what is there.
  auto batch_item = [&](const float* xp, const float* gyt, index_t images, float* part, index_t g,
                        index_t item, bool accumulate) {
    const index_t t = item / npieces;
    const auto [c0, mc] = pieces[item % npieces];
    float* dst = part + ((g * taps + t) * Cg + c0) * p.Cout_pad;
    const DirectKernels::GradPositions at{images,           s.OH,     s.OW,       p.padded_size(),
                                          p.SH * p.Wp * Cg, p.SW * Cg, gyt_size, p.Cout_pad};
    for (const ChannelBlock& blk : p.blocks)
      for_each_piece(mc, k.max_mr[blk.nv], [&](index_t c1, index_t mr) {
        k.weight_grad[blk.nv][mr](xp + p.tap_off[t] + c0 + c1, gyt + blk.f0, at,
                                  dst + c1 * p.Cout_pad + blk.f0, p.Cout_pad, accumulate);
      });
  };
  const auto x_of = [&](index_t n, index_t g) { return x + (n * s.C + g * Cg) * s.H * s.W; };
  const auto gy_of = [&](index_t n, index_t g) { return gy + (n * s.F + g * Fg) * L; };
  auto prepare = [&](index_t n, index_t g, float* xp, float* gyt) {
    k.to_channels_last(x_of(n, g), Cg, s.H, s.W, win.PH, win.PW, p.Hp, p.Wp, Cg, xp);
    k.to_channels_last(gy_of(n, g), Fg, s.OH, s.OW, index_t(0), index_t(0), s.OH, s.OW,
                       p.Cout_pad, gyt);
  };
  const index_t items = taps * npieces;
  for_each_item(chunks, per, [&](index_t c, float* xp, bool split) {
    float* gyt = xp + batch * p.padded_size();
    const index_t n0 = s.N * c / chunks, n1 = s.N * (c + 1) / chunks;
    for (index_t na = n0; na < n1; na += batch)
      for (index_t g = 0; g < G; ++g) {
        const index_t images = std::min(batch, n1 - na);
        for (index_t b = 0; b < images; ++b)
          prepare(na + b, g, xp + b * p.padded_size(), gyt + b * gyt_size);
        if (split) {
#pragma omp parallel for schedule(static)
          for (index_t item = 0; item < items; ++item)
            batch_item(xp, gyt, images, partial.get() + c * part_size, g, item, na > n0);
          continue;
        }
        // The next batch's planes (same group), a slice per item (see PrefetchSlices).
        const index_t next = na + images, next_images = std::min(batch, n1 - next);
        const bool more = next < n1;
        const PrefetchSlices next_x(more ? x_of(next, g) : nullptr,
                                    sizeof(float) * Cg * s.H * s.W * next_images, items);
        const PrefetchSlices next_gy(more ? gy_of(next, g) : nullptr,
                                     sizeof(float) * Fg * L * next_images, items);
        for (index_t item = 0; item < items; ++item) {
          next_x.slice(item);
          next_gy.slice(item);
          batch_item(xp, gyt, images, partial.get() + c * part_size, g, item, na > n0);
        }
      }
  });
  gather_weight_grad(s, p, partial.get(), chunks, part_size, gw);
}

}  // namespace fastconv
