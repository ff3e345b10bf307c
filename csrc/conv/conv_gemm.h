// The GEMM formulations of a convolution, any dtype and shape: im2col (the column matrix
// packed straight from the image; a 1x1 / stride-1 / unpadded convolution multiplies the image
// itself) and the wide-row shifted GEMM of conv_wide.h (stride 1). Per image n and group g:
//   forward          y[n, g]  = w[g] (Fg x CKK) . cols            (+ bias)
//   backward input   gx[n, g] = col2im( w[g]^T (CKK x Fg) . gy[n, g] )
//   backward weight  gw[g]   += gy[n, g] (Fg x L) . cols^T
// conv/dispatch.cpp's table decides which runs.
#pragma once

#include "conv/conv.h"

namespace fastconv {

// Whether the wide-row path is worth its junk columns for this stride-1, non-pointwise
// convolution (measured heuristics, see conv_gemm.cpp).
bool wide_pays(const ConvShape& s, ConvPass pass);
// Whether the wide-row path can run the shape at all: stride 1, not pointwise.
bool wide_fits(const ConvShape& s);

template <typename T>
void conv2d_forward_im2col(const ConvShape& s, const T* x, const T* w, const T* bias, T* y);
template <typename T>
void conv2d_forward_wide(const ConvShape& s, const T* x, const T* w, const T* bias, T* y);
template <typename T>
void conv2d_backward_input_im2col(const ConvShape& s, const T* gy, const T* w, T* gx);
template <typename T>
void conv2d_backward_input_wide(const ConvShape& s, const T* gy, const T* w, T* gx);
// wide: the rows of cols are runs of the padded image (junk columns paired with zero
// gradients), else rows of a per-image column buffer (or the image itself when pointwise).
// The wide rows pair junk columns with real image values: an image holding ±inf or NaN must
// take wide = false (0 * inf = NaN).
template <typename T>
void conv2d_backward_weight_gemm(const ConvShape& s, const T* gy, const T* x, T* gw, bool wide);

}  // namespace fastconv
