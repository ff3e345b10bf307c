// Winograd convolution for 3x3, stride-1, undilated layers (float32, AVX-512).
//
// F(2x2, 3x3) (Lavin & Gray, 2016): each 2x2 block of outputs comes from a 4x4 input tile,
//   y = A^T [ (G g G^T) (.) (B^T d B) ] A
// so per tile 16 multiplies per (input, output) channel pair replace 36 (2.25x fewer). The
// 16 element-wise products summed over input channels are 16 independent GEMMs
// (tiles x C) . (C x F), run on the direct register tiles (conv_direct.h) over channels-last
// transformed tiles. The input gradient is the same computation on grad_y with the kernel
// flipped and transposed. The weight gradient uses F(3x3, 2x2) (grad_y tiles act as 2x2
// kernels over the same input tiles), with the 16 GEMMs reducing over tiles and images:
//   gw = A2^T [ sum_tiles (G2 gy G2^T) (.) (B^T d B) ] A2
//
// The transforms add and subtract: in float32 the results differ from direct summation by a
// few units in the last place of the largest terms (the tests bound it like any other path);
// inputs holding ±inf or NaN are left to the direct path (see below).
// Images are summed in fixed chunks and tiles in order: results do not depend on threads.
#pragma once

#include "conv.h"
#include "conv_direct.h"

namespace fastconv {

// 3x3, stride 1, dilation 1, float32 with the direct kernels available (and, unless forced,
// at least 16 channels each way per group, where the GEMMs keep the tiles busy).
bool use_winograd(const ConvShape& s, DirectPass pass, bool forced);

// Each returns false without a usable result when an input (x, grad_y) holds ±inf or NaN:
// the transforms subtract, so an inf would become NaN in outputs that direct summation leaves
// ±inf (and a NaN could reach outputs its window does not cover). The caller then takes
// the direct path, which keeps PyTorch's propagation. Weights must be finite: the callers
// (conv.cpp) send non-finite weights to the im2col GEMM before trying Winograd.
// pool (optional): max-pool each image's output planes while they are in cache, as in
// conv2d_forward_small_channels (y is then not written and may be null).
bool conv2d_forward_winograd(const ConvShape& s, const float* x, const float* w,
                             const float* bias, float* y, const PoolAfter* pool = nullptr);
bool conv2d_backward_input_winograd(const ConvShape& s, const float* gy, const float* w,
                                    float* gx);
bool conv2d_backward_weight_winograd(const ConvShape& s, const float* gy, const float* x,
                                     float* gw);

}  // namespace fastconv
