// The valid-taps GEMM formulation of a convolution (see conv_valid_taps.h).
#include "conv/conv_valid_taps.h"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <vector>

#include "conv/conv_direct.h"
#include "conv/conv_gemm_common.h"

namespace fastconv {
namespace {

// Outputs [o0, o1) of one axis whose windows keep taps [t0, t1) inside the image: tap t of
// output o reads o*stride - pad + t*dilation, inside if in [0, in).
struct AxisRun {
  index_t o0, o1, t0, t1;
};

std::vector<AxisRun> axis_runs(index_t in, index_t out, index_t k, index_t stride,
                               index_t dilation, index_t pad) {
  std::vector<AxisRun> runs;
  for (index_t o = 0; o < out; ++o) {
    const index_t first = o * stride - pad;  // where tap 0 reads
    const index_t t0 = std::min(k, first >= 0 ? 0 : ceil_div(-first, dilation));
    const index_t t1 =
        std::max(t0, std::min(k, first > in - 1 ? 0 : (in - 1 - first) / dilation + 1));
    if (!runs.empty() && runs.back().t0 == t0 && runs.back().t1 == t1)
      runs.back().o1 = o + 1;
    else
      runs.push_back({o, o + 1, t0, t1});
  }
  return runs;
}

// The runs of both axes of convolution v.
struct Runs {
  std::vector<AxisRun> rows, cols;
  explicit Runs(const ConvShape& v)
      : rows(axis_runs(v.H, v.OH, v.win.KH, v.win.SH, v.win.DH, v.win.PH)),
        cols(axis_runs(v.W, v.OW, v.win.KW, v.win.SW, v.win.DW, v.win.PW)) {}
};

// dst (HW x C, pixel-major) <- src (C x HW), by blocks of 16 channels: each block's rows
// are read once, and its pixels written 16 values at a time.
template <typename T>
__attribute__((always_inline)) inline void to_channels_last(index_t C, index_t HW, const T* src,
                                                            T* dst) {
  constexpr index_t kBlock = 16;
  for (index_t c0 = 0; c0 < C; c0 += kBlock) {
    const index_t n = std::min(kBlock, C - c0);
    for (index_t p = 0; p < HW; ++p)
      for (index_t c = 0; c < n; ++c) dst[p * C + c0 + c] = src[(c0 + c) * HW + p];
  }
}

FASTCONV_CLONED(to_channels_last_any, to_channels_last,
                (index_t C, index_t HW, const T* src, T* dst), (C, HW, src, dst))

// Output positions per GEMM column block: the smallest group's columns over a batch of
// images reach about this many (a few register tiles' width), so that no GEMM is a sliver.
constexpr index_t kMinColumns = 64;

// A batch's channels-last copies and output blocks take at most about this much per thread
// (large images, where valid_taps runs only forced, take fewer images per batch).
constexpr index_t kMaxBatchBytes = index_t(64) << 20;

// Images per batch of `per_image` bytes of scratch each: `wanted`, or fewer to keep the batch
// within kMaxBatchBytes, at least 1.
index_t images_within_budget(index_t wanted, index_t per_image) {
  return std::clamp<index_t>(kMaxBatchBytes / std::max<index_t>(per_image, 1), 1,
                             std::max<index_t>(wanted, 1));
}

// The convolution v (a forward pass's shape: C input channels, F output channels) of `in` by
// the per-tap weights taps[g*KH*KW + t] (Fg x Cg each; null where no output uses the tap)
// into out, bias (F) first where given. Batches of nb images per item: each group of its
// images copied channels-last (xt: pixel-major, Cg values per pixel), then per rectangle of
// axis runs and per tap inside it, a GEMM onto the rectangle's block (Fg x images*positions,
// the blocks side by side: Fg x nb*L in all); then each image's output written whole, its
// rows contiguous (writing each block out on its own scatters a few values per row).
template <typename T>
void valid_taps_conv(const ConvShape& v, const Runs& runs, const T* in,
                     const std::vector<std::unique_ptr<GroupWeights<T>>>& taps, const T* bias,
                     T* out) {
  const index_t Cg = v.Cg(), Fg = v.Fg(), HW = v.H * v.W, L = v.L();
  const index_t KH = v.win.KH, KW = v.win.KW;
  const std::vector<AxisRun>& rows = runs.rows;
  const std::vector<AxisRun>& cols = runs.cols;
  // Per output position, its rectangle's index and its place within it.
  struct Place {
    index_t rect, at;
  };
  std::vector<Place> place(L);
  std::vector<index_t> rect_positions;
  index_t least = L, most = 0;  // positions of the smallest and largest rectangle
  for (std::size_t rh = 0; rh < rows.size(); ++rh)
    for (std::size_t rw = 0; rw < cols.size(); ++rw) {
      const AxisRun &r = rows[rh], &c = cols[rw];
      const index_t pw = c.o1 - c.o0, P = (r.o1 - r.o0) * pw;
      rect_positions.push_back(P);
      least = std::min(least, P);
      most = std::max(most, P);
      for (index_t oh = r.o0; oh < r.o1; ++oh)
        for (index_t ow = c.o0; ow < c.o1; ++ow)
          place[oh * v.OW + ow] = {index_t(rh * cols.size() + rw), (oh - r.o0) * pw + ow - c.o0};
    }
  const index_t nb = images_within_budget(
      std::clamp<index_t>(ceil_div(kMinColumns, std::max<index_t>(least, 1)), 1,
                          std::max<index_t>(ceil_div(v.N, max_threads()), 1)),
      checked_mul(checked_add(checked_mul(HW, Cg), checked_mul(Fg, L)), sizeof(T)));
  const index_t xt_size = round_up(checked_mul(nb, HW, Cg), 16);
  run_items<T>(ceil_div(v.N, nb), checked_add(xt_size, checked_mul(Fg, nb, L)), Fg, nb * most,
               [&](index_t b, T* scratch, T* pack) {
    const index_t n0 = b * nb, count = std::min(nb, v.N - n0);
    T* xt = scratch;
    std::vector<index_t> col_off(count * most);
    std::vector<const T*> rect_block(rows.size() * cols.size());
    for (index_t g = 0; g < v.G; ++g) {
      for (index_t i = 0; i < count; ++i)
        to_channels_last_any(Cg, HW, in + ((n0 + i) * v.C + g * Cg) * HW, xt + i * HW * Cg);
      T* block = scratch + xt_size;
      for (std::size_t rh = 0; rh < rows.size(); ++rh)
        for (std::size_t rw = 0; rw < cols.size(); ++rw) {
          const AxisRun &r = rows[rh], &c = cols[rw];
          const index_t pw = c.o1 - c.o0, P = (r.o1 - r.o0) * pw, N = count * P;
          rect_block[rh * cols.size() + rw] = block;
          // Column (i, oh, ow): the pixel under tap 0 of image i, relative to xt.
          for (index_t i = 0; i < count; ++i)
            for (index_t oh = r.o0; oh < r.o1; ++oh)
              for (index_t ow = c.o0; ow < c.o1; ++ow)
                col_off[i * P + (oh - r.o0) * pw + ow - c.o0] =
                    (i * HW + (oh * v.win.SH - v.win.PH) * v.W + ow * v.win.SW - v.win.PW) *
                    Cg;
          if (bias)
            for (index_t f = 0; f < Fg; ++f)
              std::fill(block + f * N, block + (f + 1) * N, bias[g * Fg + f]);
          else if (r.t0 == r.t1 || c.t0 == c.t1)
            std::fill(block, block + Fg * N, T(0));  // outputs that see only padding
          bool sum = bias != nullptr;
          for (index_t i = r.t0; i < r.t1; ++i)
            for (index_t j = c.t0; j < c.t1; ++j) {
              const T* tap = xt + (i * v.win.DH * v.W + j * v.win.DW) * Cg;
              taps[g * KH * KW + i * KW + j]->multiply(pack, N, ColumnsB<T>(tap, col_off.data()),
                                                       block, N, sum);
              sum = true;
            }
          block += Fg * N;
        }
      for (index_t i = 0; i < count; ++i)
        for (index_t f = 0; f < Fg; ++f) {
          T* dst = out + ((n0 + i) * v.F + g * Fg + f) * L;
          for (index_t l = 0; l < L; ++l) {
            const Place pl = place[l];
            const index_t P = rect_positions[pl.rect];
            dst[l] = rect_block[pl.rect][(f * count + i) * P + pl.at];
          }
        }
    }
  });
}

// Whether tap (i, j) is inside the image for some output of v.
bool tap_used(const std::vector<AxisRun>& rows, const std::vector<AxisRun>& cols, index_t i,
              index_t j) {
  const auto covers = [](const std::vector<AxisRun>& runs, index_t t) {
    return std::any_of(runs.begin(), runs.end(),
                       [t](const AxisRun& r) { return r.t0 <= t && t < r.t1; });
  };
  return covers(rows, i) && covers(cols, j);
}

// The weights of v's taps, packed once per call (see valid_taps_conv): tap (i, j) of group
// g is w_tap(g, i, j) with strides rs (output channel), cs (input channel).
template <typename T, typename WTap>
std::vector<std::unique_ptr<GroupWeights<T>>> pack_taps(const ConvShape& v, const Runs& runs,
                                                        index_t rs, index_t cs, WTap w_tap) {
  std::vector<std::unique_ptr<GroupWeights<T>>> taps;
  for (index_t g = 0; g < v.G; ++g)
    for (index_t i = 0; i < v.win.KH; ++i)
      for (index_t j = 0; j < v.win.KW; ++j)
        taps.push_back(tap_used(runs.rows, runs.cols, i, j)
                           ? std::make_unique<GroupWeights<T>>(v.Fg(), v.Cg(), w_tap(g, i, j),
                                                               rs, cs, v.precision)
                           : nullptr);
  return taps;
}

// ---- The bf16 tap-reduce path (a bf16 kernel with a Bf16TapsFn: vdpbf16ps and its twin) ----
//
// The same sums without a GEMM per tap: the images are copied once, channels-last, into
// bfloat16 (each pixel's channels are then the kernel's pairs, read where they lie), the
// weights packed once per tap into B panels, and a register tile of mr output positions
// (of one rectangle: the same valid taps) by nr output channels sums every valid tap and
// channel before it is stored. Per output, its taps in an order fixed by the shape, each
// over the channels in pairs, in order: the bits do not depend on the batch or the threads.
// The input gradient reads grad_y the same way at any stride (input_grad_groups).

// Images per batch for the tap-reduce path: the batch's bf16 copy about half of L2 (the
// tiles of each output block re-read it), within the threads' share and kMaxBatchBytes.
index_t tap_reduce_images(const ConvShape& v, index_t Cpad, index_t Fpad) {
  const index_t copy = checked_mul(v.H * v.W, Cpad, 2);
  const index_t half_l2 = std::max<index_t>(cpu_info().l2.bytes / 2, 64 << 10);
  return images_within_budget(
      std::clamp<index_t>(half_l2 / std::max<index_t>(copy, 1), 1,
                          std::max<index_t>(ceil_div(v.N, max_threads()), 1)),
      checked_add(copy, checked_mul(v.L(), Fpad, sizeof(float))));
}

// dst[i] = bf16_bits(src[i]) for i < n, vectorised per ISA.
FASTCONV_CLONES void bf16_bits_of(const float* src, index_t n, std::uint16_t* dst) {
  for (index_t i = 0; i < n; ++i) dst[i] = bf16_bits(src[i]);
}

// dst (H*W x Cpad bf16, pixel-major; channels Cg..Cpad zero) <- src (Cg x H x W), rounded:
// the channels-last float32 copy first (in f32: H*W x Cg floats; the direct kernels'
// register transposer where the ISA has them), then its bits (a scalar loop doing both was
// a quarter of a 64-channel 32x32 layer's time).
void to_channels_last_bf16_pairs(index_t Cg, index_t Cpad, index_t H, index_t W,
                                 const float* src, float* f32, std::uint16_t* dst) {
  const index_t HW = H * W;
  if (const DirectKernels* k = direct_kernels())
    k->to_channels_last(src, Cg, H, W, 0, 0, H, W, Cg, f32);
  else
    to_channels_last_any(Cg, HW, src, f32);
  if (Cpad == Cg) return bf16_bits_of(f32, HW * Cg, dst);
  for (index_t p = 0; p < HW; ++p) {
    bf16_bits_of(f32 + p * Cg, Cg, dst + p * Cpad);
    std::fill(dst + p * Cpad + Cg, dst + (p + 1) * Cpad, 0);
  }
}

// One axis of a tap-reduce convolution: a group of destination indices that read their
// sources through the same taps, in the order listed. Position q: destination dst[q], and
// source src[q] where the first tap reads; tap e: kernel index tap[e], source src[q] +
// delta[e] (delta >= 0).
struct TapGroup {
  std::vector<index_t> dst, src, tap, delta;
};

// A forward convolution's groups along one axis: its runs (stride S, padding P, dilation D),
// taps in order.
std::vector<TapGroup> forward_groups(const std::vector<AxisRun>& runs, index_t S, index_t P,
                                     index_t D) {
  std::vector<TapGroup> groups;
  for (const AxisRun& r : runs) {
    TapGroup g;
    for (index_t o = r.o0; o < r.o1; ++o) {
      g.dst.push_back(o);
      g.src.push_back(o * S - P + r.t0 * D);
    }
    for (index_t t = r.t0; t < r.t1; ++t) {
      g.tap.push_back(t);
      g.delta.push_back((t - r.t0) * D);
    }
    groups.push_back(std::move(g));
  }
  return groups;
}

// The input gradient's groups along one axis of a convolution of `in` inputs into `out`
// outputs (kernel K, stride S, padding P, dilation D): input x gathers the gradient of output
// (x + P - t*D) / S through tap t wherever that divides and lies in [0, out). Inputs with the
// same taps form a group (at stride S, inputs of one residue class); taps from the last
// down, as the flipped kernel of a stride-1 input gradient lists them, so the first reads
// the smallest source and tap t reads (first - t)*D/S further.
std::vector<TapGroup> input_grad_groups(index_t in, index_t out, index_t K, index_t S, index_t P,
                                        index_t D) {
  std::vector<TapGroup> groups;
  std::vector<std::vector<index_t>> keys;  // each group's taps
  for (index_t x = 0; x < in; ++x) {
    std::vector<index_t> taps;
    for (index_t t = K - 1; t >= 0; --t) {
      const index_t at = x + P - t * D;
      if (at >= 0 && at % S == 0 && at / S < out) taps.push_back(t);
    }
    const std::size_t gi = std::find(keys.begin(), keys.end(), taps) - keys.begin();
    if (gi == keys.size()) {
      TapGroup g;
      for (index_t t : taps) {
        g.tap.push_back(t);
        g.delta.push_back((taps[0] - t) * D / S);
      }
      keys.push_back(taps);
      groups.push_back(std::move(g));
    }
    groups[gi].dst.push_back(x);
    groups[gi].src.push_back(taps.empty() ? 0 : (x + P - taps[0] * D) / S);
  }
  return groups;
}

// The convolution-like pass v (sources: N x C channels of H x W; destinations: N x F
// channels of OH x OW; G groups; a KH x KW kernel) of `in` (NCHW float32) into out, on kernel
// k's tap-reduce tile: destination (y, x) of a rectangle rows[a] x cols[b] sums, over the
// rectangle's taps (rows' outer, cols' inner) and the source channels, the source pixel
// (rows[a].src[y] + delta, cols[b].src[x] + delta') times tap (tap, tap') of the weights;
// w_tap(g, i, j) points at tap (i, j) of group g's weights, element (destination channel f,
// source channel c) at f*rs + c*cs.
template <typename WTap>
void valid_taps_conv_tap_reduce(const ConvShape& v, const std::vector<TapGroup>& rows,
                                const std::vector<TapGroup>& cols, const Bf16GemmConfig& k,
                                const float* in, index_t rs, index_t cs, WTap w_tap,
                                const float* bias, float* out) {
  const index_t Cg = v.Cg(), Fg = v.Fg(), HW = v.H * v.W, L = v.L();
  const index_t KH = v.win.KH, KW = v.win.KW, KK = KH * KW, MR = k.mr, NR = k.nr;
  const index_t Cpad = round_up(Cg, 2), kp = Cpad / 2, Fpad = round_up(Fg, NR);
  const index_t blocks = Fpad / NR, panel = kp * 2 * NR;  // uint16 per tap panel
  std::vector<bool> used_rows(KH), used_cols(KW);  // kernel rows and columns some group uses
  for (const TapGroup& r : rows)
    for (index_t i : r.tap) used_rows[i] = true;
  for (const TapGroup& c : cols)
    for (index_t j : c.tap) used_cols[j] = true;
  // The weights: panel (g, tap, block), pair p of column j at (p/2)*2NR + 2j + p%2, i.e. the
  // 32-bit word p*NR + j holding channels 2p and 2p+1. Each (g, block) packs all its taps'
  // panels, 16 channels at a time: the block's weights of those channels (NR x 16 x taps,
  // side by side in either layout) stay in L1 while each tap's words are written in order
  // (column by column, the words of one channel pair went to as many cache lines as pairs).
  Scratch<std::uint16_t> wp = make_scratch<std::uint16_t>(checked_mul(v.G * KK, blocks, panel));
  for_each_panel(v.G * blocks, checked_mul(v.G * KK, Fpad, Cpad), [&](index_t q) {
    const index_t g = q / blocks, jb = q % blocks, nf = std::min(NR, Fg - jb * NR);
    std::vector<const float*> src;
    std::vector<std::uint32_t*> dst;
    for (index_t t = 0; t < KK; ++t)
      if (used_rows[t / KW] && used_cols[t % KW]) {
        src.push_back(w_tap(g, t / KW, t % KW) + jb * NR * rs);
        dst.push_back(
            reinterpret_cast<std::uint32_t*>(wp.get() + ((g * KK + t) * blocks + jb) * panel));
      }
    constexpr index_t kChunk = 16;  // channels (8 pairs)
    for (index_t c0 = 0; c0 < Cg; c0 += kChunk)
      for (std::size_t t = 0; t < src.size(); ++t) {
        const float* w = src[t];
        for (index_t c = c0; c < std::min(c0 + kChunk, Cg); c += 2) {
          std::uint32_t* d = dst[t] + (c / 2) * NR;
          const bool odd = c + 1 < Cg;
          for (index_t j = 0; j < nf; ++j) {
            const std::uint32_t lo = bf16_bits(w[j * rs + c * cs]);
            const std::uint32_t hi = odd ? bf16_bits(w[j * rs + (c + 1) * cs]) : 0u;
            d[j] = lo | hi << 16;
          }
          std::fill(d + nf, d + NR, 0u);  // columns past Fg
        }
      }
  });
  // Batches in a multiple of the threads where there are enough images (3 batches on 2
  // threads would leave one thread idle a third of the time).
  const index_t threads = max_threads(), most = tap_reduce_images(v, Cpad, Fpad);
  index_t batches = ceil_div(v.N, most);
  if (v.N >= threads) batches = round_up(batches, threads);
  const index_t nb = ceil_div(v.N, batches);
  const index_t xt_size = round_up(checked_mul(nb, HW, Cpad), 32);  // uint16
  const index_t y_size = round_up(checked_mul(nb, L, Fpad), 16);
  const index_t per = checked_add(xt_size / 2, y_size, checked_mul(HW, Cg));  // floats
  for_each_item(ceil_div(v.N, nb), per, [&](index_t b, float* scratch, bool split) {
    const index_t n0 = b * nb, count = std::min(nb, v.N - n0);
    auto* xt = reinterpret_cast<std::uint16_t*>(scratch);
    float* ybuf = scratch + xt_size / 2;  // [image][position][Fpad]
    float* f32 = ybuf + y_size;           // one image channels-last, float32
    for (index_t g = 0; g < v.G; ++g) {
      for (index_t m = 0; m < count; ++m)
        to_channels_last_bf16_pairs(Cg, Cpad, v.H, v.W, in + ((n0 + m) * v.C + g * Cg) * HW,
                                    f32, xt + m * HW * Cpad);
      // One output block of NR channels: every rectangle's tiles of MR positions.
      auto block = [&](index_t jb) {
        std::vector<index_t> a_off;
        std::vector<const std::uint16_t*> b_tap, a(MR);
        std::vector<float*> c(MR);
        for (const TapGroup& r : rows)
          for (const TapGroup& cr : cols) {
            a_off.clear();
            b_tap.clear();
            for (std::size_t e = 0; e < r.tap.size(); ++e)
              for (std::size_t f = 0; f < cr.tap.size(); ++f) {
                a_off.push_back((r.delta[e] * v.W + cr.delta[f]) * Cpad);
                b_tap.push_back(wp.get() + ((g * KK + r.tap[e] * KW + cr.tap[f]) * blocks + jb) *
                                               panel);
              }
            const index_t pw = index_t(cr.dst.size()), P = index_t(r.dst.size()) * pw,
                          positions = count * P;
            // The short tile where it leaves fewer rows empty (a rectangle of 64 positions:
            // 8 tiles of 8, not 6 of 12 with 8 rows empty).
            const auto empty = [&](index_t m) { return round_up(positions, m) - positions; };
            const index_t R = empty(kTapRowsShort) < empty(MR) ? kTapRowsShort : MR;
            for (index_t q0 = 0; q0 < positions; q0 += R) {
              for (index_t i = 0; i < R; ++i) {
                if (q0 + i >= positions) {
                  a[i] = a[0];
                  c[i] = nullptr;
                  continue;
                }
                const index_t q = q0 + i, m = q / P, y = q % P / pw, x = q % pw;
                // Where the rectangle's first tap reads (inside the image, when it has taps).
                a[i] = a_off.empty() ? xt : xt + (m * HW + r.src[y] * v.W + cr.src[x]) * Cpad;
                c[i] = ybuf + (m * L + r.dst[y] * v.OW + cr.dst[x]) * Fpad + jb * NR;
              }
              k.taps(R, index_t(a_off.size()), a_off.data(), kp, a.data(), b_tap.data(),
                     c.data(), NR);
            }
          }
      };
#pragma omp parallel for schedule(static) if (split)
      for (index_t jb = 0; jb < blocks; ++jb) block(jb);
      // Channels-last sums -> NCHW planes, plus the bias.
      for (index_t m = 0; m < count; ++m) {
        const float* src = ybuf + m * L * Fpad;
        float* dst = out + ((n0 + m) * v.F + g * Fg) * L;
        for (index_t f = 0; f < Fg; ++f) {
          const float bf = bias ? bias[g * Fg + f] : 0.0f;
          for (index_t l = 0; l < L; ++l) dst[f * L + l] = src[l * Fpad + f] + bf;
        }
      }
    }
  });
}

// Whether the tap-reduce path runs v's pass: bf16 mode on a kernel that has the tile.
template <typename T>
bool tap_reduce_runs(const ConvShape& v) {
  return std::is_same_v<T, float> && v.precision == Precision::bf16 &&
         bf16_gemm_config().taps != nullptr;
}

// The outputs [o0, o1) of one axis whose windows keep tap t inside the image: the runs
// holding t, which are consecutive (a tap's first and last readable outputs bound them).
struct TapSpan {
  index_t o0 = 0, o1 = 0;
};

TapSpan tap_span(const std::vector<AxisRun>& runs, index_t t) {
  TapSpan span;
  for (const AxisRun& r : runs)
    if (r.t0 <= t && t < r.t1) {
      if (span.o1 == span.o0) span.o0 = r.o0;
      span.o1 = r.o1;
    }
  return span;
}

// The weight gradient's blocking: each tap's GEMM sums at least kMinPixels pixels (its K;
// images per chunk permitting), so that its C block (Fg x Cg) is not reloaded for a few k,
// and at most about kMaxPixels (the images' channels-last copies stay a few MiB); the
// chunks' partial gradients take at most kMaxPartialBytes in all (512 x 512 channels: 9 MiB
// each).
constexpr index_t kMinPixels = 256;
constexpr index_t kMaxPixels = 4096;
constexpr index_t kMaxPartialBytes = index_t(32) << 20;

}  // namespace

bool valid_taps_fits(const ConvShape& s, ConvPass pass) {
  switch (pass) {
    case ConvPass::forward: return true;
    case ConvPass::backward_input:
      return (s.win.SH == 1 && s.win.SW == 1) || tap_reduce_runs<float>(s);
    default: return true;
  }
}

// Where the skipped taps outweigh the GEMMs' smaller blocks (K = Cg per tap, not Cg*KH*KW):
// small padded outputs with at least 256 x 256 channels per group. Measured on the AMD EPYC
// Zen 4, 2 threads, against the best other algorithm (docs/benchmarks.md):
//   bf16 GEMM (vdpbf16ps), 3x3 and 4x4 outputs, every pass: 1.04-2.1x (512 x 512 on 4x4,
//     batch 64: 10.5 ms against im2col's 14.7 forward, 10.8 against Winograd's 14.1 input
//     gradient, 13.8 against 17.2 weight gradient; 256 x 256 on 3x3, batch 1024: 22.0
//     against 45.7, 24.4 against 36.9, 21.3 against 36.0); ResNet's 256 -> 512 stride-2
//     layer (4x4 output, the first row and column short of taps): forward level with
//     im2col, weight gradient 1.2x; on 7x7 and 8x8 level with F(4x4) forward, behind it in
//     the gradients.
//   float32 GEMM (float32 mode, the emulated bf16 path) beside Winograd: the forward of 3x3
//     outputs, 1.1-1.2x ahead of F(2x2); on 4x4 and in the gradients Winograd, which
//     multiplies less than the taps inside the image, leads or ties at larger batches.
//   the GEMMs alone (float64): every pass 1.2-2.5x ahead of im2col (256 x 256 on 3x3,
//     batch 256: forward 26.7 ms against 43.1, input gradient 24.5 against 60.2, weight
//     gradient 51.8 against 62.6; 512 x 512 on 4x4, batch 64: 50.0 against 61.0, 46.8
//     against 79.3, 45.1 against 75.4).
//   the tap-reduce tile (vdpbf16ps and its twin), from 64 x 128 channels: the forward of
//     stride-1 outputs up to 8x8, where it leads F(4x4) by 1.1-1.25x (airbench94's 256 x
//     256 on 7x7, batch 1024: 129.7 ms against 161.7; ResNet's 256 x 256 on 8x8, batch 64:
//     11.3 against 13.6; vgg_small's 64 x 128 and 128 x 128 on 8x8: 1.6 against 1.8 and 3.1
//     against 3.7; their input gradients tie with or trail Winograd's, and on 15x15 and
//     16x16 Winograd leads every pass by 1.2-1.5x); strided layers' forward and input
//     gradient of outputs up to 16x16, where it leads im2col by 1.05-1.2x (ResNet's
//     stride-2 layers at batch 64: 64 -> 128 on 32x32 7.9 ms against 9.6 forward, 8.6
//     against 10.3 input gradient; 128 -> 256 on 16x16 6.6 against 7.4, 7.1 against 7.4).
bool valid_taps_pays(const ConvShape& s, ConvPass pass, bool gemms_only) {
  if (!valid_taps_fits(s, pass) || (s.win.PH == 0 && s.win.PW == 0)) return false;
  if (s.precision == Precision::bf16 && bf16_gemm_config().taps != nullptr &&
      s.Cg() * s.Fg() >= 64 * 128) {
    const bool strided = s.win.SH > 1 || s.win.SW > 1;
    if (strided && pass != ConvPass::backward_weight && s.OH * s.OW <= 256) return true;
    if (!strided && pass == ConvPass::forward && s.OH * s.OW <= 64) return true;
  }
  if (s.Cg() * s.Fg() < 256 * 256) return false;
  if (gemms_only || (s.precision == Precision::bf16 && bf16_gemm_config().multiply_rate > 1))
    return s.OH * s.OW <= 16;
  return pass == ConvPass::forward && s.OH * s.OW <= 9;
}

template <typename T>
void conv2d_forward_valid_taps(const ConvShape& s, const T* x, const T* w, const T* bias, T* y) {
  const index_t CKK = s.CKK(), KK = s.win.KH * s.win.KW, KW = s.win.KW;
  const Runs runs(s);
  const auto w_tap = [&](index_t g, index_t i, index_t j) {
    return w + g * s.Fg() * CKK + i * KW + j;
  };
  if constexpr (std::is_same_v<T, float>)
    if (tap_reduce_runs<T>(s))
      return valid_taps_conv_tap_reduce(
          s, forward_groups(runs.rows, s.win.SH, s.win.PH, s.win.DH),
          forward_groups(runs.cols, s.win.SW, s.win.PW, s.win.DW), bf16_gemm_config(), x, CKK,
          KK, w_tap, bias, y);
  valid_taps_conv(s, runs, x, pack_taps<T>(s, runs, CKK, KK, w_tap), bias, y);
}

template <typename T>
void conv2d_backward_input_valid_taps(const ConvShape& s, const T* gy, const T* w, T* gx) {
  const ConvShape v = transposed_shape(s);  // its sizes and channels (conv.h)
  const index_t CKK = s.CKK(), KK = s.win.KH * s.win.KW, KH = s.win.KH, KW = s.win.KW;
  if constexpr (std::is_same_v<T, float>)
    if (tap_reduce_runs<T>(v)) {
      // grad_x[c, x] = sum over taps t with x + P - t*D = S*o, o an output, of
      // w[f, c, t] grad_y[f, o]: any stride (input_grad_groups), w's taps as they are.
      return valid_taps_conv_tap_reduce(
          v, input_grad_groups(s.H, s.OH, KH, s.win.SH, s.win.PH, s.win.DH),
          input_grad_groups(s.W, s.OW, KW, s.win.SW, s.win.PW, s.win.DW), bf16_gemm_config(), gy,
          KK, CKK, [&](index_t g, index_t i, index_t j) { return w + g * s.Fg() * CKK + i * KW + j; },
          nullptr, gx);
    }
  // Stride 1: grad_x = the forward convolution v of grad_y: tap (i, j) is w's tap
  // (KH-1-i, KW-1-j), transposed (Cg x Fg).
  const Runs runs(v);
  valid_taps_conv<T>(v, runs, gy,
                     pack_taps<T>(v, runs, KK, CKK,
                                  [&](index_t g, index_t i, index_t j) {
                                    return w + g * s.Fg() * CKK + (KH - 1 - i) * KW +
                                           (KW - 1 - j);
                                  }),
                     nullptr, gx);
}

template <typename T>
void conv2d_backward_weight_valid_taps(const ConvShape& s, const T* gy, const T* x, T* gw) {
  // gw[g][f, c, (i, j)] = sum over images n and the outputs (oh, ow) whose window keeps tap
  // (i, j) inside the image of gy[n, f, oh, ow] x[n, c, oh*SH - PH + i*DH, ow*SW - PW + j*DW]:
  // per tap a GEMM (Fg x Cg, K = images x those outputs) of grad_y's and the image's
  // channels-last pixels (ColumnsA, RowsB: each pixel a contiguous run of channels). The
  // batch is summed in at most kWeightGradChunks fixed chunks of images (each into a partial
  // gradient of its own, laid out tap by tap, added in chunk order), each chunk in batches
  // of nb images: functions of the shape alone, so the sums' order ignores the threads.
  const index_t Cg = s.Cg(), Fg = s.Fg(), HW = s.H * s.W, L = s.L(), CKK = s.CKK();
  const index_t KH = s.win.KH, KW = s.win.KW, KK = KH * KW, WSZ = s.F * CKK;
  const Runs runs(s);
  std::vector<TapSpan> span_h(KH), span_w(KW);
  for (index_t i = 0; i < KH; ++i) span_h[i] = tap_span(runs.rows, i);
  for (index_t j = 0; j < KW; ++j) span_w[j] = tap_span(runs.cols, j);
  index_t least = L, most = 0;  // outputs of the tap seen by fewest and most (of those seen)
  for (const TapSpan& h : span_h)
    for (const TapSpan& w : span_w) {
      const index_t P = (h.o1 - h.o0) * (w.o1 - w.o0);
      if (P > 0) least = std::min(least, P);
      most = std::max(most, P);
    }
  least = std::max<index_t>(least, 1);
  const index_t nb_min = ceil_div(kMinPixels, least);
  // (a power of 2, which the usual thread counts divide: 3 chunks on 2 threads took 1.3x)
  const index_t most_chunks =
      std::min({kWeightGradChunks, s.N / nb_min,
                kMaxPartialBytes / std::max<index_t>(WSZ * index_t(sizeof(T)), 1)});
  index_t chunks = 1;
  while (2 * chunks <= most_chunks) chunks *= 2;
  // Images per GEMM: the chunk in equal batches of at most max(nb_min, kMaxPixels / least)
  // images, fewer where their copies would pass kMaxBatchBytes.
  const index_t per_chunk = ceil_div(s.N, chunks);
  const index_t nb = ceil_div(
      per_chunk,
      ceil_div(per_chunk,
               images_within_budget(
                   std::max(nb_min, ceil_div(kMaxPixels, least)),
                   checked_mul(checked_add(checked_mul(HW, Cg), checked_mul(L, Fg)), sizeof(T)))));
  const index_t xt_size = round_up(checked_mul(nb, HW, Cg), 16);
  Scratch<T> partial = make_scratch<T>(checked_mul(chunks, WSZ));
  run_items<T>(chunks, checked_add(xt_size, checked_mul(nb, L, Fg)), Fg, Cg,
               [&](index_t ch, T* scratch, T* pack) {
    T* xt = scratch;
    T* gyt = scratch + xt_size;
    T* part = partial.get() + ch * WSZ;  // [g][tap][f][c]
    std::vector<index_t> a_off(nb * most), b_off(nb * most);
    const index_t n0 = s.N * ch / chunks, n1 = s.N * (ch + 1) / chunks;
    for (index_t n = n0; n < n1; n += nb) {
      const index_t count = std::min(nb, n1 - n);
      for (index_t g = 0; g < s.G; ++g) {
        for (index_t m = 0; m < count; ++m) {
          to_channels_last_any(Cg, HW, x + ((n + m) * s.C + g * Cg) * HW, xt + m * HW * Cg);
          to_channels_last_any(Fg, L, gy + ((n + m) * s.F + g * Fg) * L, gyt + m * L * Fg);
        }
        for (index_t i = 0; i < KH; ++i)
          for (index_t j = 0; j < KW; ++j) {
            const TapSpan h = span_h[i], w = span_w[j];
            T* c = part + ((g * KK + i * KW + j) * Fg) * Cg;
            const index_t pw = w.o1 - w.o0, K = count * (h.o1 - h.o0) * pw;
            if (K == 0) {  // a tap inside no window: no gradient
              if (n == n0) std::fill(c, c + Fg * Cg, T(0));
              continue;
            }
            index_t k = 0;
            for (index_t m = 0; m < count; ++m)
              for (index_t oh = h.o0; oh < h.o1; ++oh)
                for (index_t ow = w.o0; ow < w.o1; ++ow, ++k) {
                  a_off[k] = (m * L + oh * s.OW + ow) * Fg;
                  b_off[k] = (m * HW + (oh * s.win.SH - s.win.PH + i * s.win.DH) * s.W +
                              ow * s.win.SW - s.win.PW + j * s.win.DW) *
                             Cg;
                }
            multiply_operands<T>(pack, s.precision, Fg, Cg, K, ColumnsA<T>(gyt, a_off.data()),
                                 RowsB<T>(xt, b_off.data()), c, Cg, n > n0);
          }
      }
    }
  });
  // The chunks summed in order, then each tap's Fg x Cg block put in place in gw.
  if (chunks > 1) sum_chunks_in_order(partial.get(), chunks, WSZ, partial.get());
  const T* sum = partial.get();
#pragma omp parallel for schedule(static)
  for (index_t gf = 0; gf < s.F; ++gf) {
    const index_t g = gf / Fg, f = gf % Fg;
    for (index_t c = 0; c < Cg; ++c)
      for (index_t t = 0; t < KK; ++t)
        gw[(gf * Cg + c) * KK + t] = sum[((g * KK + t) * Fg + f) * Cg + c];
  }
}

#define FASTCONV_INSTANTIATE(T)                                                          \
  template void conv2d_forward_valid_taps<T>(const ConvShape&, const T*, const T*, const T*, \
                                             T*);                                        \
  template void conv2d_backward_input_valid_taps<T>(const ConvShape&, const T*, const T*, T*); \
  template void conv2d_backward_weight_valid_taps<T>(const ConvShape&, const T*, const T*, T*);
FASTCONV_INSTANTIATE(float)
FASTCONV_INSTANTIATE(double)
#undef FASTCONV_INSTANTIATE

}  // namespace fastconv
