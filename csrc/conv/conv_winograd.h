// Winograd convolution for 3x3, stride-1, undilated layers (float32, on the direct tiles of
// AVX2 or AVX-512), in two tile sizes (Lavin & Gray, 2016; the passes in
// conv_winograd_driver.h):
//   F(2x2, 3x3) (conv_winograd.cpp): each 2x2 block of outputs from a 4x4 input tile, 16
//     multiplies per tile per (input, output) channel pair where direct summation has 36
//     (2.25x fewer). The weight gradient is F(3x3, 2x2): grad_y tiles act as 2x2 kernels
//     over the same input tiles.
//   F(4x4, 3x3) (conv_winograd4.cpp): 4x4 blocks from 6x6 tiles, 36 multiplies where direct
//     summation has 144 (4x fewer; 1.78x fewer than F(2x2)), for more transform work per
//     output and larger float32 errors (below); the dispatch runs it in the gradients only in
//     float32 mode, in every pass in bf16 mode (see use_winograd4). Its forward centres each
//     input plane on its mean and puts the shift back in the bias (exact: conv(x) =
//     conv(x - c) + c sum_taps(w), padding -c).
//
// The transforms add and subtract: in float32 the results differ from direct summation by a
// few units in the last place of the largest terms for F(2x2) (the tests bound it like any
// other path); for F(4x4), whose transforms scale terms by up to 8 (inverse) and 5/2
// (input), by up to ~4e-6 of the largest output on 256-channel layers (measured against
// float64: F(2x2) ~6e-7; PyTorch's float32 CPU paths ~1-2e-6), within the tests' 1e-5.
// Inputs holding ±inf or NaN are left to the direct path (see below).
// Images are summed in fixed chunks and tiles in order: results do not depend on threads.
#pragma once

#include "conv/conv.h"
#include "conv/conv_direct.h"

namespace fastconv {

// 3x3, stride 1, dilation 1, float32 with the direct kernels available (and, unless forced,
// at least 16 channels each way per group, where the GEMMs keep the tiles busy).
bool use_winograd(const ConvShape& s, DirectPass pass, bool forced);

// Each returns false without a usable result when an input (x, grad_y) holds ±inf or NaN:
// the transforms subtract, so an inf would become NaN in outputs that direct summation leaves
// ±inf (and a NaN could reach outputs its window does not cover). The caller then takes
// the direct path, which keeps PyTorch's propagation. Weights must be finite: the callers
// (conv/dispatch.cpp) send non-finite weights to the im2col GEMM before trying Winograd.
// pool (optional): max-pool each image's output planes while they are in cache, as in
// conv2d_forward_small_channels (y is then not written and may be null).
bool conv2d_forward_winograd(const ConvShape& s, const float* x, const float* w,
                             const float* bias, float* y, const PoolAfter* pool = nullptr);
bool conv2d_backward_input_winograd(const ConvShape& s, const float* gy, const float* w,
                                    float* gx);
bool conv2d_backward_weight_winograd(const ConvShape& s, const float* gy, const float* x,
                                     float* gw);

// F(4x4, 3x3): where use_winograd applies (forced or not, its own size rule), the same
// passes with the same contract.
bool use_winograd4(const ConvShape& s, DirectPass pass, bool forced);
bool conv2d_forward_winograd4(const ConvShape& s, const float* x, const float* w,
                              const float* bias, float* y, const PoolAfter* pool = nullptr);
bool conv2d_backward_input_winograd4(const ConvShape& s, const float* gy, const float* w,
                                     float* gx);
bool conv2d_backward_weight_winograd4(const ConvShape& s, const float* gy, const float* x,
                                      float* gw);

}  // namespace fastconv
