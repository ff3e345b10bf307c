// Direct convolution on channels-last (NHWC) copies of the images, float32, AVX-512 or AVX2.
//
// For layers with many channels on small images, im2col packing costs as much as a quarter
// of the multiply-adds (each packed element feeds only Fg of them). Here nothing is packed:
// each image (group) is copied once into a zero-padded channels-last buffer, and the
// register tile (MR output pixels x NV vectors of output channels) reads its operands
// straight from that buffer and from the weights, re-laid out once per call:
//
//   forward          out[p][f]   = sum_{tap, c} xp[p*S + tap_off + c] * wd[tap][c][f]
//   backward input   the forward of grad_y (padded by d(k-1) - p) with the kernel flipped
//                    and transposed (stride-1 convolutions only)
//   backward weight  gw[tap][c][f] += sum_p xp[p*S + tap_off + c] * gy[p][f]
//
// The reduction order of every output value is fixed (taps, then channels; images in
// order), so results do not depend on the number of threads.
#pragma once

#include <functional>
#include <vector>

#include "conv/conv.h"
#include "pool/pool.h"

namespace fastconv {

// Register-tile kernels of one ISA (conv_direct_avx512.cpp, conv_direct_avx2.cpp; the code
// shared by both in conv_direct_tiles.h), with the shapes that ISA's registers allow and
// the sizes its drivers and heuristics use. A vector holds `lanes` floats; output channels
// are padded to a multiple of it.
struct DirectKernels {
  static constexpr int kMaxNV = 4;   // output-channel vectors per tile (bound over ISAs)
  static constexpr int kMaxMR = 24;  // pixels (forward) or input channels (weight grad)
  int lanes;
  // out[i*ldo + j] (+)= sum_{t < taps} sum_{c < C} in[pix[i] + tap_off[t] + c] * w[(t*C + c)*ldw + j]
  // for i < MR, j < lanes*NV.
  using ForwardFn = void (*)(const float* in, const index_t* pix, const index_t* tap_off,
                             index_t taps, index_t C, const float* w, index_t ldw, float* out,
                             index_t ldo, bool accumulate);
  // The output positions a weight-gradient tile sums over: `images` images of rows x cols
  // positions; position (b, r, q) reads inputs at x + b*x_image + r*x_row + q*x_col and the
  // gradient row gy + b*gy_image + (r*cols + q)*ldg.
  struct GradPositions {
    index_t images, rows, cols, x_image, x_row, x_col, gy_image, ldg;
  };
  // gw[i*ldw + j] (+)= sum over the positions of x(b, r, q)[i] * gy(b, r, q)[j], in the order
  // b, r, q, for i < MR, j < lanes*NV.
  using WeightGradFn = void (*)(const float* x, const float* gy, const GradPositions& at,
                                float* gw, index_t ldw, bool accumulate);
  // dst (Hp x Wp x ld, channels last) <- src (C x H x W, NCHW) placed at row pt, column pl;
  // zero everywhere else (border, channels C..ld). Parts of src outside dst are skipped.
  // Returns whether a copied value is ±inf or NaN (checked in the same pass; see Winograd).
  bool (*to_channels_last)(const float* src, index_t C, index_t H, index_t W, index_t pt,
                           index_t pl, index_t Hp, index_t Wp, index_t ld, float* dst);
  // The same with each value rounded to bfloat16 (round_to_bf16, bf16.h).
  bool (*to_channels_last_bf16)(const float* src, index_t C, index_t H, index_t W, index_t pt,
                                index_t pl, index_t Hp, index_t Wp, index_t ld, float* dst);
  // dst (C x L, NCHW) <- src (L x ld, channels last), plus bias[c] when bias is not null.
  void (*from_channels_last)(const float* src, index_t ld, index_t C, index_t L,
                             const float* bias, float* dst);
  // Few input channels, NCHW, stride 1 (the first layers): F output channels x V vectors of
  // `lanes` consecutive output pixels, broadcasting the weights:
  //   out[j][i*fstride + l] = bias[i] + sum_{s < steps} w[s*F + i] * rows[j][off[s] + l]
  // for i < nf (<= F), j < V, l < lanes[j] (vector j skipped when 0); bias may be null.
  // Two shapes, (F, V) = small_shapes[k] for small_c_tile[k]; shape 1 serves filter counts
  // that are multiples of its F (AVX-512: 6 x 4, and 8 x 3 since 32 filters in blocks of 6
  // would compute 36).
  struct SmallShape {
    int nf, nv;
  };
  static constexpr int kSmallMaxV = 4;
  SmallShape small_shapes[2];
  void (*small_c_tile[2])(const float* const* rows, const index_t* off, index_t steps,
                          const float* w, const float* bias, float* const* out, index_t fstride,
                          index_t nf, const index_t* lanes);
  // Few input channels, stride 1, NCHW planes (the first layers' weight gradient): one image
  // and nf output channels, lane sums over the output positions,
  //   acc[(i*taps + t)*lanes + l] += sum_{oh, ow = l (mod lanes)} gy[i*OH*OW + oh*OW + ow]
  //                                    * xp[c*plane + (oh + kh*DH)*Wp + ow + kw*DW]
  // for i < nf, taps t = (c*KH + kh)*KW + kw (c < C); lanes past OW add nothing. xp: zero-
  // padded planes with rows Wp = V + (KW-1)*DW wide, V = lanes*ceil(OW/lanes), or exactly V
  // where V >= OW + (KW-1)*DW (then with `lanes` readable floats past the last plane).
  // finite: xp holds no ±inf or NaN (the spare lanes of a row's last vector, whose gradients
  // are zero, are then read unmasked). gpack: 64-byte aligned scratch of
  // OH * ceil(OW/lanes) * nf * lanes floats. accumulate = false: acc is written, not added to.
  // Indexed [KW][nf], nf <= small_wg_max_nf[KW].
  static constexpr int kSmallWgMaxKW = 7, kSmallWgMaxNF = 15;
  // next, next_bytes: memory the caller needs after this call (the next gradient planes),
  // requested into L2 a slice per output row meanwhile (PrefetchSlices); next may be null.
  using SmallWeightGradFn = void (*)(const float* xp, index_t C, index_t plane, index_t Wp,
                                     const float* gy, index_t OH, index_t OW, index_t KH,
                                     index_t DH, index_t DW, float* acc, float* gpack,
                                     bool accumulate, bool finite, const float* next,
                                     index_t next_bytes);
  SmallWeightGradFn small_c_weight_grad[kSmallWgMaxKW + 1][kSmallWgMaxNF + 1];
  int small_wg_max_nf[kSmallWgMaxKW + 1];
  // Largest MR for each NV (accumulators MR*NV fit the vector registers).
  int max_mr[kMaxNV + 1];
  ForwardFn forward[kMaxNV + 1][kMaxMR + 1];
  WeightGradFn weight_grad[kMaxNV + 1][kMaxMR + 1];
  // Winograd: transformed tiles per pass of its 16 GEMMs (a multiple of max_mr[2]).
  int winograd_chunk;
  // Size rules measured on this ISA (read by the use_* functions):
  // the few-channel weight gradient from this many filters per group;
  int small_wg_min_filters;
  // the direct weight gradient as GEMMs over slabs of the batch where the weights (taps x Cg
  // x Cout_pad) exceed weight_grad_gemm_ratio x one image's channels-last values (input and
  // gradient) (0: never);
  int weight_grad_gemm_ratio;
  // Winograd forward and input gradient where at least this fraction of its 2x2 output
  // tiles' values lie inside the output (3x3 outputs: 9 of 16).
  float winograd_min_fill;
  // the direct weight gradient for kernels of at least this many taps;
  int direct_wg_min_taps;
  // Direct forward / input gradient of tiny images, whose bands of rows with the same kernel
  // rows are a few pixels long (3x3 images: 3): output blocks of short_tile_nv vectors
  // where no band is longer than max_mr[short_tile_nv], so its tiles still fill most of the
  // accumulators (0: always the usual blocks).
  int short_tile_nv;
  // Direct forward / input gradient of outputs of at most this many pixels, in batches of
  // at least max_mr[2] images: tiles across the images at one pixel, over only the taps
  // that read inside the image there (0: never). Winograd yields to them.
  int per_pixel_max_pixels;
};
const DirectKernels* direct_kernels_avx512();
const DirectKernels* direct_kernels_avx2();
// The direct kernels of the selected SIMD level, else nullptr (generic).
const DirectKernels* direct_kernels();

// A block of nv vectors of output channels starting at f0 (channels padded to the lanes).
struct ChannelBlock {
  index_t f0, nv;
};
// Blocks covering `channels` with vectors of `lanes`: two vectors each (the tile shape that
// keeps the most accumulators busy on most shapes: MR up to 14 on AVX-512, 6 on AVX2); an
// odd vector count ends with a 3- or 1-vector block. nv > 2: nv vectors each, ending with a
// shorter block.
std::vector<ChannelBlock> channel_blocks(index_t channels, index_t lanes, index_t nv = 2);

// Images per pass through the tiles for `items` images of `per_image` work units each (output
// pixels, Winograd tiles): small images share passes, so that the weights a pass reads from
// L2 or beyond serve ~target units, not the 16 pixels of a 4x4 image; in a number of batches
// the threads share evenly. 1 for grouped convolutions (consecutive items are different
// groups, with weights of their own) and for images of `target` units or more. Each output's
// sums do not depend on its batch, so neither do the results on the threads.
index_t image_batch(index_t items, index_t groups, index_t per_image, index_t target);
// The target of the direct forward (pixels; Winograd's is in conv_winograd.cpp, in tiles).
constexpr index_t kBatchPixels = 256;

// Splits [0, n) into the fewest pieces of at most `max` elements, of near-equal sizes, and
// calls body(start, size) for each in order.
template <typename Body>
void for_each_piece(index_t n, index_t max, Body&& body) {
  const index_t pieces = ceil_div(n, max);
  for (index_t k = 0, start = 0; k < pieces; ++k) {
    const index_t size = n / pieces + (k < n % pieces ? 1 : 0);
    body(start, size);
    start += size;
  }
}

// Whether the direct kernels take this float32 convolution: AVX-512 or AVX2 selected,
// stride 1 for the input gradient, and (unless forced) enough channels per group for the
// tiles to pay.
enum class DirectPass { forward, backward_input, backward_weight };
bool use_direct(const ConvShape& s, DirectPass pass, bool forced);
// Whether the direct forward (input gradient: backward_input) of this shape runs per pixel
// (DirectKernels::per_pixel_max_pixels) when it runs.
bool direct_per_pixel(const ConvShape& s, DirectPass pass);

// Forward of stride-1 convolutions with few input channels on NCHW planes (small_c_tile):
// 6 output channels x 4 vectors of pixels per tile (AVX-512: 64 pixels; AVX2: 2 vectors, 16
// pixels), the weights broadcast, written straight to y.
bool use_small_channels(const ConvShape& s, bool forced);
// pool (optional): max-pool each image's output planes while they are in cache, into
// pool->y and pool->indices (pooled planes of pool->shape; relu: relu of the pooled values);
// y is then not written (may be null).
struct PoolAfter {
  PoolShape shape;
  bool relu;
  float* y;
  std::int64_t* indices;
};
void conv2d_forward_small_channels(const ConvShape& s, const float* x, const float* w,
                                   const float* bias, float* y, const PoolAfter* pool = nullptr);
// Max-pools `planes` output planes (of pool.shape.H x W each), held in a buffer (ybuf), into
// planes [first, first + planes) of pool.y and pool.indices; split: the threads share the
// planes (the caller runs outside a parallel region), else the calling thread pools them all.
void pool_planes(const PoolAfter& pool, index_t planes, const float* ybuf, index_t first,
                 bool split);
// Input gradient of stride-1 layers with few input channels (at most small_shapes[0].nf: 6),
// as the few-channel forward of grad_y with the kernel flipped and transposed.
bool use_small_channels_input_grad(const ConvShape& s, bool forced);
void conv2d_backward_input_small_channels(const ConvShape& s, const float* gy, const float* w,
                                          float* gx);
// Their weight gradient (small_c_weight_grad): NCHW planes, no column matrix; kernels up to
// 7 wide.
bool use_small_channels_weight_grad(const ConvShape& s, bool forced);
void conv2d_backward_weight_small_channels(const ConvShape& s, const float* gy, const float* x,
                                           float* gw);
// The same with grad_y given plane by plane: planes(n, f, nf, buf) returns nf consecutive
// planes (OH*OW values each) of image n from output channel f; in_memory: it returns them in
// place (a pointer into grad_y, also asked for with nf = 0 and buf = nullptr, to prefetch),
// else it makes them in buf (this thread's, room for nf*OH*OW values). Called once per image
// and block of channels, by the thread that then uses them.
using GradPlanes = std::function<const float*(index_t n, index_t f, index_t nf, float* buf)>;
void conv2d_backward_weight_small_channels(const ConvShape& s, const GradPlanes& planes,
                                           bool in_memory, const float* x, float* gw);

// Whether the direct weight gradient runs as one GEMM over the batch (the table's
// weight_grad_gemm_ratio): many weights beside few image values.
bool use_weight_grad_gemm(const ConvShape& s);

void conv2d_forward_direct(const ConvShape& s, const float* x, const float* w, const float* bias,
                           float* y);
void conv2d_backward_input_direct(const ConvShape& s, const float* gy, const float* w, float* gx);
void conv2d_backward_weight_direct(const ConvShape& s, const float* gy, const float* x, float* gw);

}  // namespace fastconv
