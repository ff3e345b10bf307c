// Adaptive average pooling, NCHW, PyTorch's windows: output row i averages input rows
// [floor(i H / OH), ceil((i + 1) H / OH)), columns likewise (windows of neighbouring outputs
// overlap by a row where OH does not divide H; OH > H repeats rows). Planes are independent:
// threads take whole planes, so results do not depend on their number.
#pragma once

#include "common.h"

namespace fastconv {

struct AdaptivePoolShape {
  index_t planes;  // N * C
  index_t H, W;    // input
  index_t OH, OW;  // output (each >= 1; H, W >= 1)
};

// y = the mean of each window: its sum (rows added in order, then the window's columns)
// divided by the window's height and then by its width, as PyTorch divides.
template <typename T>
void adaptive_avg_pool2d_forward(const AdaptivePoolShape& s, const T* x, T* y);
// grad_x: each grad_y entry divided by its window's height and width, added over the window.
template <typename T>
void adaptive_avg_pool2d_backward(const AdaptivePoolShape& s, const T* grad_y, T* grad_x);

}  // namespace fastconv
