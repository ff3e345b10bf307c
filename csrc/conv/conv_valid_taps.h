// Convolutions over the taps inside the image only ("valid_taps"): a GEMM formulation that,
// like a direct convolution, never multiplies the kernel taps that fall in the padding.
//
// Along each axis the outputs split into runs whose windows keep the same taps inside the
// image (with a 3x3 kernel and padding 1: the first output, the middle ones, the last). Per
// rectangle of such runs (a group of output positions sharing their valid taps) and per tap,
// one GEMM of the tap's weights (Fg x Cg) by the group's pixels under that tap, taken from a
// channels-last copy of the images, where each is a contiguous run of Cg values:
//     y[n, f, p] = bias[f] + sum over valid taps t of  sum_c  w[f, c, t] x[n, c, p + t]
// (taps in order, summed onto the group's output block). On small images this skips much
// of im2col's work: 40% of a 3x3 kernel's taps on a 3x3 output, 31% on 4x4, 18% on 7x7.
// The input gradient of a stride-1 convolution is the same computation on grad_y with the
// kernel flipped and transposed (padding DH*(KH-1) - PH); the weight gradient, per tap, a
// GEMM of grad_y's and the image's channels-last pixels over the outputs that keep the tap.
// In bf16 mode on a kernel with a tap-reduce tile (vdpbf16ps and its twin: Bf16TapsFn,
// gemm_bf16.h), the forward and the input gradient run that tile instead of a GEMM per tap:
// the images copied once into bfloat16 channels-last, each tile of output positions summing
// all its valid taps and channels in registers before one store. The tile's input gradient
// takes any stride: per axis, the inputs of one residue class with the same taps read
// grad_y through them (the sub-pixel decomposition of a transposed convolution).
#pragma once

#include "conv/conv.h"

namespace fastconv {

// Whether the pass can run this way: the forward and weight gradient any convolution, the
// input gradient stride-1 ones, and strided ones too where the tap-reduce tile runs.
bool valid_taps_fits(const ConvShape& s, ConvPass pass);
// Whether it pays over the other formulations (measured heuristics, conv_valid_taps.cpp);
// gemms_only: the other formulations are the GEMMs alone (float64, or no direct kernels).
bool valid_taps_pays(const ConvShape& s, ConvPass pass, bool gemms_only);

template <typename T>
void conv2d_forward_valid_taps(const ConvShape& s, const T* x, const T* w, const T* bias, T* y);
template <typename T>
void conv2d_backward_input_valid_taps(const ConvShape& s, const T* gy, const T* w, T* gx);
template <typename T>
void conv2d_backward_weight_valid_taps(const ConvShape& s, const T* gy, const T* x, T* gw);

}  // namespace fastconv
