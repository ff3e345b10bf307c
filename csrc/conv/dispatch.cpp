// Convolution dispatch: one ordered table of algorithms, each with its heuristic (`takes`) and
// its passes (null where it has none, for a dtype), walked by one function per pass: the
// first entry that applies runs, and an entry that declines its inputs at run time (returns
// false: Winograd and the wide weight gradient on non-finite values) leaves them to the next.
// Adding an algorithm is its file and one entry here. Also the bias gradient and the entry
// points of the passes fused with max pooling.
#include "conv/conv.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <type_traits>

#include "conv/conv_direct.h"
#include "conv/conv_gemm.h"
#include "conv/conv_subsampled.h"
#include "conv/conv_valid_taps.h"
#include "conv/conv_winograd.h"
#include "gemm/gemm_bf16.h"
#include "pool/pool.h"

namespace fastconv {
namespace {

// *out = whether any of p[0, n) is ±inf or NaN (x - x is 0 exactly for the finite ones).
template <typename T>
__attribute__((always_inline)) inline void any_nonfinite(index_t n, const T* p, int* out) {
  int bad = 0;
  for (index_t i = 0; i < n; ++i) bad |= (p[i] - p[i]) != T(0);
  *out = bad;
}

FASTCONV_CLONED(any_nonfinite_any, any_nonfinite, (index_t n, const T* p, int* out), (n, p, out))

// Whether any of p[0, n) is ±inf or NaN once rounded to bfloat16, without rounding it: NaN,
// or |v| at or past 0x1.FFp127, halfway between bf16's largest (0x1.FEp127) and 2^128, which
// round-to-nearest-even takes up to inf (0x1.FEp127's last bit is odd).
FASTCONV_CLONES bool any_nonfinite_in_bf16(index_t n, const float* p) {
  int bad = 0;
  for (index_t i = 0; i < n; ++i) bad |= !(std::fabs(p[i]) < 0x1.FFp127f);
  return bad != 0;
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

}  // namespace

template <typename T>
bool has_nonfinite(const T* p, index_t n) {
  int bad = 0;
  any_nonfinite_any(n, p, &bad);
  return bad != 0;
}
template bool has_nonfinite<float>(const float*, index_t);
template bool has_nonfinite<double>(const double*, index_t);

namespace {

// ---- The algorithms' passes as the table calls them --------------------------------------
// Each returns false when it declines its inputs (the next entry then runs).

template <typename T>
using ForwardFn = bool (*)(const ConvShape& s, const T* x, const T* w, const T* bias, T* y);
template <typename T>
using InputGradFn = bool (*)(const ConvShape& s, const T* gy, const T* w, T* gx);
template <typename T>
using WeightGradFn = bool (*)(const ConvShape& s, const T* gy, const T* x, T* gw);
// The forward pass with each image's output max-pooled from cache (see
// conv2d_forward_max_pool), and the weight (and bias) gradient from a pooled gradient (see
// conv2d_backward_weight_through_max_pool).
template <typename T>
using ForwardPoolFn = bool (*)(const ConvShape& s, const T* x, const T* w, const T* bias,
                               const PoolShape& ps, bool relu, T* y, std::int64_t* indices);
template <typename T>
using WeightGradPoolFn = bool (*)(const ConvShape& s, const PooledGrad<T>& pg, const T* x,
                                  T* gw, T* gb);

template <typename T>
struct ConvPasses {
  ForwardFn<T> forward = nullptr;
  InputGradFn<T> backward_input = nullptr;
  WeightGradFn<T> backward_weight = nullptr;
  ForwardPoolFn<T> forward_max_pool = nullptr;
  WeightGradPoolFn<T> backward_weight_through_max_pool = nullptr;
};

// A pass that never declines, as a table entry.
template <auto pass, typename... Args>
bool always(Args... args) {
  pass(args...);
  return true;
}

bool winograd_forward(const ConvShape& s, const float* x, const float* w, const float* bias,
                      float* y) {
  return conv2d_forward_winograd(s, x, w, bias, y);
}

bool winograd_forward_pool(const ConvShape& s, const float* x, const float* w, const float* bias,
                           const PoolShape& ps, bool relu, float* y, std::int64_t* indices) {
  const PoolAfter pool{ps, relu, y, indices};
  return conv2d_forward_winograd(s, x, w, bias, nullptr, &pool);
}

bool winograd4_forward(const ConvShape& s, const float* x, const float* w, const float* bias,
                       float* y) {
  return conv2d_forward_winograd4(s, x, w, bias, y);
}

bool winograd4_forward_pool(const ConvShape& s, const float* x, const float* w,
                            const float* bias, const PoolShape& ps, bool relu, float* y,
                            std::int64_t* indices) {
  const PoolAfter pool{ps, relu, y, indices};
  return conv2d_forward_winograd4(s, x, w, bias, nullptr, &pool);
}

bool direct_nchw_forward(const ConvShape& s, const float* x, const float* w, const float* bias,
                         float* y) {
  conv2d_forward_small_channels(s, x, w, bias, y);
  return true;
}

bool direct_nchw_forward_pool(const ConvShape& s, const float* x, const float* w,
                              const float* bias, const PoolShape& ps, bool relu, float* y,
                              std::int64_t* indices) {
  const PoolAfter pool{ps, relu, y, indices};
  conv2d_forward_small_channels(s, x, w, bias, nullptr, &pool);
  return true;
}

// Each block of gradient planes made where it is used, in this thread's buffer (L1/L2), with
// its bias lane sums: the same values, in the same order, as max_pool2d_backward followed by
// the weight and bias gradients. False if a pooling index lies outside its plane.
bool direct_nchw_weight_through_pool(const ConvShape& s, const PooledGrad<float>& pg,
                                     const float* x, float* gw, float* gb) {
  const index_t L = s.L(), PL = pg.PH * pg.PW;
  std::atomic<bool> ok{true};
  Scratch<float> lanes = make_scratch<float>(gb ? checked_mul(s.N, s.F, kLanes) : 0);
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
                                       pg.relu_y ? pg.relu_y + r * PL : nullptr, buf + i * L))
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

// The wide rows' junk columns pair zero gradients with real image values: an inf there would
// add 0 * inf = NaN to taps that never see it, so such images go on to im2col.
template <typename T>
bool wide_weight(const ConvShape& s, const T* gy, const T* x, T* gw) {
  if (has_nonfinite(x, s.N * s.C * s.H * s.W)) return false;
  conv2d_backward_weight_gemm(s, gy, x, gw, true);
  return true;
}

// The valid-taps weight gradient pairs grad_y only with pixels inside the image: a ±inf or
// NaN in grad_y would miss the NaN (0 * inf) the padding makes of it in the reference and
// the im2col GEMM, so such gradients go on to the next algorithm (bf16: as rounded).
template <typename T>
bool valid_taps_weight(const ConvShape& s, const T* gy, const T* x, T* gw) {
  const index_t n = s.N * s.F * s.L();
  bool bad = false;
  if constexpr (std::is_same_v<T, float>)
    bad = s.precision == Precision::bf16 ? any_nonfinite_in_bf16(n, gy) : has_nonfinite(gy, n);
  else
    bad = has_nonfinite(gy, n);
  if (bad) return false;
  conv2d_backward_weight_valid_taps(s, gy, x, gw);
  return true;
}

template <typename T>
bool im2col_weight(const ConvShape& s, const T* gy, const T* x, T* gw) {
  conv2d_backward_weight_gemm(s, gy, x, gw, false);
  return true;
}

template <typename T>
constexpr ConvPasses<T> subsampled_passes{&always<&conv2d_forward_subsampled<T>>,
                                          &always<&conv2d_backward_input_subsampled<T>>,
                                          &always<&conv2d_backward_weight_subsampled<T>>};
template <typename T>
constexpr ConvPasses<T> valid_taps_passes{&always<&conv2d_forward_valid_taps<T>>,
                                          &always<&conv2d_backward_input_valid_taps<T>>,
                                          &valid_taps_weight<T>};
template <typename T>
constexpr ConvPasses<T> wide_passes{&always<&conv2d_forward_wide<T>>,
                                    &always<&conv2d_backward_input_wide<T>>, &wide_weight<T>};
template <typename T>
constexpr ConvPasses<T> im2col_passes{&always<&conv2d_forward_im2col<T>>,
                                      &always<&conv2d_backward_input_im2col<T>>,
                                      &im2col_weight<T>};

// ---- Which shapes each algorithm takes ------------------------------------------------------
// forced: the algorithm is forced (then wherever it can run), else its heuristic decides.

DirectPass direct_pass(ConvPass pass) {
  switch (pass) {
    case ConvPass::forward: return DirectPass::forward;
    case ConvPass::backward_input: return DirectPass::backward_input;
    default: return DirectPass::backward_weight;
  }
}

bool takes_valid_taps(const ConvShape& s, ConvPass pass, bool forced, bool float64) {
  // Float64 has only the GEMMs (the direct kernels are float32), as has float32 where the
  // selected ISA has no direct kernels.
  return forced ? valid_taps_fits(s, pass)
                : valid_taps_pays(s, pass, float64 || direct_kernels() == nullptr);
}

bool takes_winograd(const ConvShape& s, ConvPass pass, bool forced, bool) {
  return use_winograd(s, direct_pass(pass), forced);
}

bool takes_winograd4(const ConvShape& s, ConvPass pass, bool forced, bool) {
  return use_winograd4(s, direct_pass(pass), forced);
}

bool takes_direct_nchw(const ConvShape& s, ConvPass pass, bool forced, bool) {
  switch (pass) {
    case ConvPass::forward: return use_small_channels(s, forced);
    case ConvPass::backward_input: return use_small_channels_input_grad(s, forced);
    default: return use_small_channels_weight_grad(s, forced);
  }
}

bool takes_direct(const ConvShape& s, ConvPass pass, bool forced, bool) {
  return use_direct(s, direct_pass(pass), forced);
}

bool takes_wide(const ConvShape& s, ConvPass pass, bool forced, bool) {
  return wide_fits(s) && (forced || wide_pays(s, pass));
}

bool takes_subsampled(const ConvShape& s, ConvPass, bool, bool) { return use_subsampled(s); }

bool takes_every_shape(const ConvShape&, ConvPass, bool, bool) { return true; }

// The algorithms that copy each image (group) into a zero-padded buffer first make planes as
// far as the windows reach, (OH-1)*SH + (KH-1)*DH + 1 rows (forward, weight gradient), or as
// the flipped windows reach over grad_y, H + (KH-1)*DH rows (input gradient; columns alike).
// Where those planes are mostly padding, far larger than the image and the output (padding
// or dilation far beyond the image), a copy is the wrong algorithm and may not even fit in
// memory: such shapes go to im2col, which reads the image in place. Small planes always pass.
bool padded_copy_pays(const ConvShape& s) {
  constexpr index_t kRatio = 16, kSmallPlane = index_t(1) << 16;
  const Window2d& w = s.win;
  index_t rows, cols, taps_h, taps_w, plane, image, output, bound;
  if (!mul_fits(s.OH - 1, w.SH, &rows) || !mul_fits(s.OW - 1, w.SW, &cols) ||
      !mul_fits(w.KH - 1, w.DH, &taps_h) || !mul_fits(w.KW - 1, w.DW, &taps_w))
    return false;
  rows = std::max(rows + 1, s.H);  // each term below 2^62: no overflow
  cols = std::max(cols + 1, s.W);
  if (rows > kMaxSize - taps_h || cols > kMaxSize - taps_w) return false;
  return mul_fits(rows + taps_h, cols + taps_w, &plane) && mul_fits(s.H, s.W, &image) &&
         mul_fits(s.OH, s.OW, &output) && image <= kMaxSize - output &&
         mul_fits(kRatio, image + output, &bound) && plane <= bound + kSmallPlane;
}

// ---- The table ------------------------------------------------------------------------------

struct ConvEntry {
  ConvAlgorithm algorithm;
  const char* name;  // for set_conv_algorithm
  // Runs only in "auto" mode or when forced itself (not as a fallback of another forced one).
  bool specialist;
  // Takes weights holding ±inf or NaN in the forward and input-gradient passes. Only the plain
  // im2col GEMM does: it multiplies every tap by every input it covers, zero padding
  // included, once, as the reference and PyTorch's native convolution do (0 * inf = NaN where
  // an inf tap meets the padding; PyTorch's oneDNN path skips the padding, so it depends on
  // the shape there). The other paths skip taps that read only padding (direct, few-channel),
  // or run the input gradient over a zero-padded grad_y or junk columns (NaN where the true
  // gradient is finite), and Winograd's transforms subtract.
  bool nonfinite_weights;
  // Copies each image into a zero-padded buffer: only where padded_copy_pays, forced or not.
  bool copies_padded;
  // A GEMM of gemm.h: in bf16 mode its packing rounds the operands and the bf16 GEMM
  // multiplies them; the other algorithms get rounded copies (see conv.h).
  bool bf16_gemm;
  // Rounds the images (x, grad_y) to bf16 as it copies them (Winograd, TilePlan::round_bf16):
  // in bf16 mode it takes them as they are, and rounded copies of the weights only.
  bool rounds_images;
  // The other algorithms: per pass (forward, input gradient, weight gradient), how much
  // faster than the GEMMs they are where their heuristics take a shape, at equal multiply
  // rates. In bf16 mode one is chosen only where that is at least the bf16 GEMM kernel's
  // multiply rate over float32's (Bf16Kernel::multiply_rate). Winograd: its fewer
  // multiplies (F(4x4, 3x3): 144 / 36 = 4; F(2x2, 3x3): 36 / 16 = 2.25). The few-channel
  // tiles' weight gradient: the GEMMs' form of it is a tiny F x C*k*k product over long
  // rows, which the bf16 GEMM runs packed, without float32's dot kernel. Measured on the AMD
  // EPYC Zen 4 (vdpbf16ps, 2x): on rounded copies both Winograds 1.1-2.2x faster than the bf16
  // GEMMs on airbench94's 3x3 layers, every pass; the few-channel tiles 2.3-3.4x in the weight
  // gradient of 3-channel first layers, even with the GEMMs elsewhere. With AMX (16x) only
  // the GEMMs.
  double speedup[3];
  // (float64: the dtype is float64.)
  bool (*takes)(const ConvShape& s, ConvPass pass, bool forced, bool float64);
  ConvPasses<float> f32;
  ConvPasses<double> f64;  // the direct kernels are float32 only
};

// In the order they are tried. Strided 1x1 layers first, as pointwise layers on the subsampled
// image (their passes walk the table again for that shape); the valid-taps GEMMs on small
// padded images with many channels (they skip the taps in the padding); Winograd where it
// applies, F(4x4) (4x fewer multiplies; gradients only, the forward too in bf16 mode), else
// F(2x2) (2.25x fewer); the few-channel tiles for the first layers, the channels-last tiles
// for many channels, then the GEMMs: wide rows where their junk columns cost little, im2col
// everywhere else.
constexpr ConvEntry kConvTable[] = {
    {ConvAlgorithm::subsampled, "subsampled", true, false, false, false, false, {1, 1, 1},
     &takes_subsampled, subsampled_passes<float>, subsampled_passes<double>},
    {ConvAlgorithm::valid_taps, "valid_taps", true, false, false, true, false, {1, 1, 1},
     &takes_valid_taps, valid_taps_passes<float>, valid_taps_passes<double>},
    {ConvAlgorithm::winograd4, "winograd4", true, false, true, false, true, {4, 4, 4},
     &takes_winograd4,
     {&winograd4_forward, &conv2d_backward_input_winograd4, &conv2d_backward_weight_winograd4,
      &winograd4_forward_pool, nullptr},
     {}},
    {ConvAlgorithm::winograd, "winograd", true, false, true, false, true, {2.25, 2.25, 2.25},
     &takes_winograd,
     {&winograd_forward, &conv2d_backward_input_winograd, &conv2d_backward_weight_winograd,
      &winograd_forward_pool, nullptr},
     {}},
    {ConvAlgorithm::direct_nchw, "direct_nchw", true, false, true, false, false, {1, 1, 3},
     &takes_direct_nchw,
     {&direct_nchw_forward, &always<&conv2d_backward_input_small_channels>,
      &always<static_cast<void (*)(const ConvShape&, const float*, const float*, float*)>(
          &conv2d_backward_weight_small_channels)>,
      &direct_nchw_forward_pool, &direct_nchw_weight_through_pool},
     {}},
    {ConvAlgorithm::direct, "direct", false, false, true, false, false, {1, 1, 1}, &takes_direct,
     {&always<&conv2d_forward_direct>, &always<&conv2d_backward_input_direct>,
      &always<&conv2d_backward_weight_direct>},
     {}},
    {ConvAlgorithm::wide, "wide", false, false, true, true, false, {1, 1, 1}, &takes_wide,
     wide_passes<float>, wide_passes<double>},
    {ConvAlgorithm::im2col, "im2col", false, true, false, true, false, {1, 1, 1},
     &takes_every_shape, im2col_passes<float>, im2col_passes<double>},
};
constexpr int kConvEntries = sizeof(kConvTable) / sizeof(kConvTable[0]);

// The forced entry (an index into kConvTable), or -1: "auto".
std::atomic<int> g_forced{-1};

template <typename T>
const ConvPasses<T>& passes_of(const ConvEntry& e) {
  if constexpr (std::is_same_v<T, float>) return e.f32;
  else return e.f64;
}

template <typename T>
bool has_pass(const ConvPasses<T>& p, ConvPass pass) {
  switch (pass) {
    case ConvPass::forward: return p.forward != nullptr;
    case ConvPass::backward_input: return p.backward_input != nullptr;
    default: return p.backward_weight != nullptr;
  }
}

// Where the bf16 GEMMs outrun Winograd despite its fewer multiplies: the forward of outputs
// of at most 16 values (3x3, 4x4: one 4x4 tile or four 2x2 tiles per image) with at least
// 256 x 256 channels per group, given a bf16 kernel faster than float32's. Winograd
// multiplies in float32, and reads its transformed kernels (4-17 MiB there) whole per chunk
// of a few tiles. Measured on the AMD EPYC Zen 4 (vdpbf16ps), 2 threads, im2col against the
// best Winograd: 512 x 512 on 4x4 1.38x faster at batch 64, 1.08x at 256; 256 x 256 on 3x3
// 1.14x at 256, 1.16x at 1024, on 4x4 as fast at 64; with 64-128 channels Winograd 1.3-1.8x
// ahead, and from 7x7 (and 8x8) at 256. The gradients keep Winograd (ahead on 4x4 too).
// (Padded outputs go to valid_taps first, which skips the taps in the padding.)
bool bf16_gemm_takes_tiny_forward(const ConvShape& s, ConvPass pass) {
  return s.precision == Precision::bf16 && pass == ConvPass::forward && s.OH * s.OW <= 16 &&
         s.Cg() * s.Fg() >= 256 * 256 && bf16_gemm_config().multiply_rate > 1;
}

// Whether entry i takes (s, pass) for dtype T, given whether the weights hold ±inf or NaN
// (forward and input gradient only) and the forced algorithm.
template <typename T>
bool applies(int i, const ConvShape& s, ConvPass pass, bool nonfinite_weights) {
  const ConvEntry& e = kConvTable[i];
  if (!has_pass(passes_of<T>(e), pass)) return false;
  if (nonfinite_weights && !e.nonfinite_weights) return false;
  if (e.copies_padded && !padded_copy_pays(s)) return false;
  const int forced = g_forced.load(std::memory_order_relaxed);
  constexpr bool float64 = std::is_same_v<T, double>;
  if (forced == i) return e.takes(s, pass, true, float64);
  if (forced >= 0 && (i < forced || e.specialist)) return false;
  if (s.precision == Precision::bf16 && !e.bf16_gemm &&
      (e.speedup[static_cast<int>(pass)] < bf16_gemm_config().multiply_rate ||
       bf16_gemm_takes_tiny_forward(s, pass)))
    return false;  // the bf16 GEMMs are faster (see ConvEntry::speedup)
  return e.takes(s, pass, false, float64);
}

// Runs run(entry, passes) for the entries that apply, in order, until one returns true.
// im2col, last, takes every shape and never declines.
template <typename T, typename Run>
void run_first(const ConvShape& s, ConvPass pass, bool nonfinite_weights, Run run) {
  for (int i = 0; i < kConvEntries; ++i)
    if (applies<T>(i, s, pass, nonfinite_weights) &&
        run(kConvTable[i], passes_of<T>(kConvTable[i])))
      return;
}

// An operand of a bf16-mode pass as the algorithms that do not round while packing need it:
// a copy rounded to bfloat16, made on first use. Otherwise (float32 mode, float64) the
// operand itself.
template <typename T>
class Bf16Operand {
 public:
  // image: x or grad_y (see ConvEntry::rounds_images), not the weights.
  Bf16Operand(const ConvShape& s, const T* p, index_t n, bool image)
      : p_(p), n_(n), bf16_(is_bf16(s)), image_(image) {}
  static bool is_bf16(const ConvShape& s) {
    return std::is_same_v<T, float> && s.precision == Precision::bf16;
  }
  // The operand as entry e takes it.
  const T* for_entry(const ConvEntry& e) {
    return e.bf16_gemm || (image_ && e.rounds_images) ? p_ : rounded();
  }
  // Whether the operand's values as every pass multiplies them hold ±inf or NaN (one scan,
  // small beside the images for the weights; see ConvEntry::nonfinite_weights).
  bool nonfinite() const {
    if constexpr (std::is_same_v<T, float>)
      if (bf16_) return any_nonfinite_in_bf16(n_, p_);
    return has_nonfinite(p_, n_);
  }
  // The operand's values as every pass multiplies them.
  const T* rounded() {
    if constexpr (std::is_same_v<T, float>) {
      if (!bf16_) return p_;
      if (!copy_) {
        copy_ = make_scratch<float>(n_);
        round_to_bf16(p_, n_, copy_.get());
      }
      return copy_.get();
    } else {
      return p_;
    }
  }

 private:
  const T* p_;
  index_t n_;
  bool bf16_, image_;
  Scratch<T> copy_;
};

// The entry the walk would start with for finite data.
template <typename T>
const ConvEntry& first_entry(const ConvShape& s, ConvPass pass) {
  for (int i = 0; i < kConvEntries; ++i)
    if (applies<T>(i, s, pass, false)) return kConvTable[i];
  return kConvTable[kConvEntries - 1];
}

}  // namespace

const char* conv_algorithm_name(ConvAlgorithm algorithm) {
  for (const ConvEntry& e : kConvTable)
    if (e.algorithm == algorithm) return e.name;
  return "?";
}

bool set_conv_algorithm(const std::string& name) {
  int v = -2;
  if (name == "auto") v = -1;
  for (int i = 0; i < kConvEntries; ++i)
    if (name == kConvTable[i].name) v = i;
  if (v < -1) return false;
  g_forced.store(v, std::memory_order_relaxed);
  return true;
}

std::vector<std::string> conv_algorithm_names() {
  std::vector<std::string> names;
  for (const ConvEntry& e : kConvTable) names.emplace_back(e.name);
  return names;
}

template <typename T>
ConvAlgorithm conv_algorithm_for(const ConvShape& s, ConvPass pass) {
  return first_entry<T>(s, pass).algorithm;
}

// (bf16: the weights' rounded values decide what is finite; rounding turns values past
// bf16's largest into inf.)
template <typename T>
void conv2d_forward(const ConvShape& s, const T* x, const T* w, const T* bias, T* y) {
  Bf16Operand<T> xr(s, x, s.N * s.C * s.H * s.W, true), wr(s, w, s.F * s.CKK(), false);
  run_first<T>(s, ConvPass::forward, wr.nonfinite(),
               [&](const ConvEntry& e, const ConvPasses<T>& p) {
                 return p.forward(s, xr.for_entry(e), wr.for_entry(e), bias, y);
               });
}

template <typename T>
void conv2d_backward_input(const ConvShape& s, const T* gy, const T* w, T* gx) {
  Bf16Operand<T> gyr(s, gy, s.N * s.F * s.L(), true), wr(s, w, s.F * s.CKK(), false);
  run_first<T>(s, ConvPass::backward_input, wr.nonfinite(),
               [&](const ConvEntry& e, const ConvPasses<T>& p) {
                 return p.backward_input(s, gyr.for_entry(e), wr.for_entry(e), gx);
               });
}

template <typename T>
void conv2d_backward_weight(const ConvShape& s, const T* gy, const T* x, T* gw) {
  if (s.N == 0) {
    std::fill(gw, gw + s.F * s.CKK(), T(0));
    return;
  }
  Bf16Operand<T> gyr(s, gy, s.N * s.F * s.L(), true), xr(s, x, s.N * s.C * s.H * s.W, true);
  run_first<T>(s, ConvPass::backward_weight, false,
               [&](const ConvEntry& e, const ConvPasses<T>& p) {
                 return p.backward_weight(s, gyr.for_entry(e), xr.for_entry(e), gw);
               });
}

template <typename T>
void conv2d_backward_bias(const ConvShape& s, const T* gy, T* gb) {
  // Rows (n, f) in memory order, threads over contiguous ranges (a channel's own rows lie
  // F*L apart: the hardware prefetcher restarts at each), 16 lane sums per row; then
  // bias_from_lanes.
  const index_t L = s.L(), R = s.N * s.F;
  Scratch<T> lanes = make_scratch<T>(checked_mul(R, kLanes));
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
  // Where the algorithm conv2d_forward would run has a fused pass; false elsewhere, and for
  // non-finite weights or inputs: the caller then runs the two calls. The weights are
  // scanned only where a fused pass applies (conv2d_forward scans them in the two calls).
  if (s.N == 0) return false;
  const ConvEntry& e = first_entry<T>(s, ConvPass::forward);
  const ConvPasses<T>& p = passes_of<T>(e);
  if (!p.forward_max_pool) return false;
  Bf16Operand<T> xr(s, x, s.N * s.C * s.H * s.W, true), wr(s, w, s.F * s.CKK(), false);
  if (wr.nonfinite()) return false;
  return p.forward_max_pool(s, xr.for_entry(e), wr.for_entry(e), bias, ps, relu, y, indices);
}

template <typename T>
bool conv2d_backward_weight_through_max_pool(const ConvShape& s, const PooledGrad<T>& pg,
                                             const T* x, T* gw, T* gb) {
  // (bf16: grad_y must be whole to be rounded, so not fused.)
  if (s.N > 0 && s.precision == Precision::f32) {
    const ConvPasses<T>& p = passes_of<T>(first_entry<T>(s, ConvPass::backward_weight));
    if (p.backward_weight_through_max_pool)
      return p.backward_weight_through_max_pool(s, pg, x, gw, gb);
  }
  // Elsewhere the gradient is stored whole, then the usual passes.
  Scratch<T> gy = make_scratch<T>(checked_mul(s.N, s.F, s.OH, s.OW));
  const PoolShape ps{s.N, s.F, s.OH, s.OW, pg.PH, pg.PW, {}};
  if (!max_pool2d_backward<T>(ps, pg.g, pg.indices, gy.get(), pg.relu_y)) return false;
  conv2d_backward_weight(s, gy.get(), x, gw);
  if (gb) conv2d_backward_bias(s, gy.get(), gb);
  return true;
}

#define FASTCONV_INSTANTIATE(T)                                                            \
  template ConvAlgorithm conv_algorithm_for<T>(const ConvShape&, ConvPass);                \
  template void conv2d_forward<T>(const ConvShape&, const T*, const T*, const T*, T*);    \
  template void conv2d_backward_input<T>(const ConvShape&, const T*, const T*, T*);        \
  template void conv2d_backward_weight<T>(const ConvShape&, const T*, const T*, T*);       \
  template void conv2d_backward_bias<T>(const ConvShape&, const T*, T*);                   \
  template bool conv2d_forward_max_pool<T>(const ConvShape&, const T*, const T*, const T*, \
                                           const PoolShape&, bool, T*, std::int64_t*);     \
  template bool conv2d_backward_weight_through_max_pool<T>(                                \
      const ConvShape&, const PooledGrad<T>&, const T*, T*, T*);
FASTCONV_INSTANTIATE(float)
FASTCONV_INSTANTIATE(double)
#undef FASTCONV_INSTANTIATE

}  // namespace fastconv
