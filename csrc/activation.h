// Elementwise activations, one pass over memory, threaded over fixed blocks (results are
// elementwise, so they never depend on the thread count).
#pragma once

#include "common.h"

namespace fastconv {

// y = max(x, 0)   (NaN propagates, as torch.relu)
template <typename T>
void relu_forward(index_t n, const T* x, T* y);
// grad_x = 0 where y <= 0, else grad_y (so NaN outputs pass their gradient, as torch)
template <typename T>
void relu_backward(index_t n, const T* grad_y, const T* y, T* grad_x);

}  // namespace fastconv
