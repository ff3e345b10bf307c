// conv2d forward and backward (input, weight, bias), NCHW, groups: the entry points, which
// conv/dispatch.cpp's table hands to one of several algorithms (ConvAlgorithm below).
//
//   x (N, C, H, W), w (F, C/G, KH, KW), bias (F), y (N, F, OH, OW)
//   OH = (H + PH_total - DH*(KH-1) - 1) / SH + 1   (the caller computes OH/OW and the padding)
//
// Every algorithm computes, per image n and group g, with cols = im2col(x[n, g]) (CKK x L):
//   forward          y[n, g]  = w[g] (Fg x CKK) . cols            (+ bias)
//   backward input   gx[n, g] = col2im( w[g]^T (CKK x Fg) . gy[n, g] )
//   backward weight  gw[g]   += gy[n, g] (Fg x L) . cols^T
// each summing in a fixed order, so results do not depend on the number of threads (they
// may differ in the last bits between algorithms and SIMD levels).
#pragma once

#include <string>
#include <vector>

#include "bf16.h"
#include "common.h"
#include "conv/im2col.h"
#include "pool/pool.h"

namespace fastconv {

struct ConvShape {
  index_t N, C, H, W;  // input
  index_t F, G;        // output channels, groups
  index_t OH, OW;      // output size
  Window2d win;
  // bf16 (float32 only): the passes take their operands (x, w, grad_y) rounded to bfloat16 and
  // sum the products in float32 (bf16.h); the bias gradient stays a float32 sum of grad_y.
  Precision precision = Precision::f32;

  index_t Cg() const { return C / G; }
  index_t Fg() const { return F / G; }
  index_t L() const { return OH * OW; }
  index_t CKK() const { return Cg() * win.KH * win.KW; }
  bool pointwise() const {
    return win.KH == 1 && win.KW == 1 && win.SH == 1 && win.SW == 1 && win.PH == 0 &&
           win.PW == 0 && OH == H && OW == W;
  }
};

enum class ConvPass { forward, backward_input, backward_weight };

// The input gradient of a stride-1 convolution s as a forward convolution: of grad_y (F
// channels, OH x OW) by the kernel flipped (tap (i, j) <- (KH-1-i, KW-1-j)) with its channel
// axes swapped, into C channels of H x W, padded DH*(KH-1) - PH before (output h reads grad_y
// at h - (DH*(KH-1) - PH) + i*DH: the outputs whose windows covered h).
inline ConvShape transposed_shape(const ConvShape& s) {
  ConvShape t = s;
  t.C = s.F;
  t.H = s.OH;
  t.W = s.OW;
  t.F = s.C;
  t.OH = s.H;
  t.OW = s.W;
  t.win.PH = s.win.DH * (s.win.KH - 1) - s.win.PH;
  t.win.PW = s.win.DW * (s.win.KW - 1) - s.win.PW;
  return t;
}

// The formulations of a convolution, in the order conv/dispatch.cpp's table tries them (the
// first that takes a shape and pass runs it):
//   subsampled   strided 1x1 layers as pointwise ones on the subsampled image
//                (conv_subsampled.h): every dtype
//   valid_taps   GEMMs over the taps inside the image only (conv_valid_taps.h): small
//                images with many channels; every pass (the input gradient at stride 1,
//                or any stride on the bf16 tap-reduce tile)
//   winograd4    Winograd F(4x4, 3x3) on the direct tiles (conv_winograd.h): 3x3, stride 1
//   winograd     Winograd F(2x2, 3x3) on the direct tiles (conv_winograd.h): 3x3, stride 1
//   direct_nchw  the few-channel NCHW tiles (conv_direct.h): the first layers
//   direct       the channels-last direct tiles (conv_direct.h)
//   wide         the wide-row shifted GEMM (conv_wide.h): stride 1
//   im2col       im2col-packed GEMM (conv_gemm.h): every shape
// winograd4, winograd, direct_nchw and direct need the direct kernels of the selected ISA and
// float32.
// In bf16 mode the GEMMs (valid_taps, wide, im2col) round their operands while packing them
// and run on the bf16 GEMM's path (gemm_bf16.h); the others get rounded copies of their
// operands and run their float32 kernels. Where a bf16 GEMM kernel runs (not the emulated path), the others
// are chosen (unless forced) only where they gain more over the GEMMs than that kernel gains
// in rate: with AVX512_BF16 Winograd and the few-channel weight gradient, with AMX none
// (conv/dispatch.cpp).
enum class ConvAlgorithm {
  subsampled,
  valid_taps,
  winograd4,
  winograd,
  direct_nchw,
  direct,
  wide,
  im2col
};
const char* conv_algorithm_name(ConvAlgorithm algorithm);

// Forces an algorithm by name ("auto": the heuristics) for tests and benchmarks: it then runs
// wherever it applies, the algorithms listed before it and the specialists (winograd4,
// winograd, direct_nchw) never, the others by their heuristics. False for an unknown name.
bool set_conv_algorithm(const std::string& name);
// The names of the table's algorithms, in the order they are tried.
std::vector<std::string> conv_algorithm_names();

// The algorithm the dispatch runs for this shape, pass and dtype T, given finite data
// (non-finite weights take im2col in the forward and input-gradient passes; Winograd, and the
// wide weight gradient, decline non-finite inputs and leave them to the next algorithm).
template <typename T>
ConvAlgorithm conv_algorithm_for(const ConvShape& s, ConvPass pass);

// Weight gradients sum the batch in this many fixed chunks of images (at most), each into a
// partial sum of its own, added in chunk order: the result does not depend on the number of
// threads. (Winograd uses fewer where its partial sums, n x Cg x F each, are large.)
constexpr index_t kWeightGradChunks = 8;

// Whether any of p[0, n) is ±inf or NaN. Formulations that multiply padding or junk
// columns (0 * inf = NaN) or subtract (Winograd: inf - inf) hand such inputs to one that sums
// only the products direct summation has.
template <typename T>
bool has_nonfinite(const T* p, index_t n);

template <typename T>
void conv2d_forward(const ConvShape& s, const T* x, const T* w, const T* bias, T* y);
template <typename T>
void conv2d_backward_input(const ConvShape& s, const T* gy, const T* w, T* gx);
template <typename T>
void conv2d_backward_weight(const ConvShape& s, const T* gy, const T* x, T* gw);
template <typename T>
void conv2d_backward_bias(const ConvShape& s, const T* gy, T* gb);

// y and indices = max_pool2d(conv2d(x, w, bias), ps) (relu: relu of it), without storing the
// conv output, where the few-channel forward (the first layers) or Winograd runs: each
// image's output pooled from cache. Returns false elsewhere, and where Winograd declines
// non-finite values: the caller then runs the two ops (y and indices may be partly written).
// ps: the pooling of the conv output (ps.N, ps.C, ps.H, ps.W = N, F, OH, OW).
template <typename T>
bool conv2d_forward_max_pool(const ConvShape& s, const T* x, const T* w, const T* bias,
                             const PoolShape& ps, bool relu, T* y, std::int64_t* indices);

// The gradient of a convolution's output that went through max pooling (and a ReLU):
// grad_y = max_pool2d_backward(g, indices, relu_y) over (N, F, OH, OW), from the pooled
// gradient g and indices (N, F, PH, PW) and, with a fused ReLU, the pooled output relu_y
// (else null).
template <typename T>
struct PooledGrad {
  const T* g;
  const std::int64_t* indices;
  const T* relu_y;
  index_t PH, PW;
};
// Weight and (gb not null) bias gradients from a PooledGrad: the same bits as
// max_pool2d_backward then conv2d_backward_weight and conv2d_backward_bias. Where the
// few-channel weight gradient runs (the first layers), grad_y is never stored whole: each
// block of its planes is made by the thread that uses it, while it is in L1/L2. Returns false
// if a pooling index lies outside its plane.
template <typename T>
bool conv2d_backward_weight_through_max_pool(const ConvShape& s, const PooledGrad<T>& pg,
                                             const T* x, T* gw, T* gb);

}  // namespace fastconv
