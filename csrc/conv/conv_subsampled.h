// Strided 1x1 convolutions (ResNet's stride-2 shortcuts) as the pointwise convolution of the
// subsampled image:
//
//   y = conv1x1(x, stride s) = conv1x1(xs),   xs[n, c, i, j] = x[n, c, i*SH, j*SW]
//
// Every output reads one input pixel, so the strided layer is the stride-1 pointwise layer
// on xs (N x C x OH x OW), a quarter of the image at stride 2. The other algorithms read or
// copy the whole image for it (the direct tiles copy all of it channels-last; im2col gathers
// one strided column at a time per image). Here xs is copied once and the pointwise passes
// run through the dispatch table as for any 1x1 layer:
//   forward          y  = pointwise forward of xs
//   backward input   gx = zero, with gx[n, c, i*SH, j*SW] = (pointwise input gradient)[n, c, i, j]
//   backward weight  gw = pointwise weight gradient of (gy, xs)
// The pointwise passes sum in their fixed orders: results do not depend on the threads.
#pragma once

#include "conv/conv.h"

namespace fastconv {

// 1x1 kernels with a stride above 1, no padding, every output inside the image (any dtype).
bool use_subsampled(const ConvShape& s);

template <typename T>
void conv2d_forward_subsampled(const ConvShape& s, const T* x, const T* w, const T* bias, T* y);
template <typename T>
void conv2d_backward_input_subsampled(const ConvShape& s, const T* gy, const T* w, T* gx);
template <typename T>
void conv2d_backward_weight_subsampled(const ConvShape& s, const T* gy, const T* x, T* gw);

}  // namespace fastconv
