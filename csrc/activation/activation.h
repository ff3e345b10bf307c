// Elementwise activations, one pass over memory, threaded over fixed blocks (results are
// elementwise, so they never depend on the thread count).
#pragma once

#include "common.h"

namespace fastconv {

// The elementwise rules, shared with the kernels that fuse ReLU (batch norm). Written as
// selects so loops over them vectorise to compare + blend.
template <typename T>
__attribute__((always_inline)) inline T relu_value(T v) {
  return (v > T(0) || v != v) ? v : T(0);  // NaN propagates
}
template <typename T>
__attribute__((always_inline)) inline T relu_grad(T grad_y, T y) {
  return y <= T(0) ? T(0) : grad_y;  // NaN outputs pass their gradient
}

// y = max(x, 0)   (NaN propagates, as torch.relu)
template <typename T>
void relu_forward(index_t n, const T* x, T* y);
// grad_x = 0 where y <= 0, else grad_y (so NaN outputs pass their gradient, as torch)
template <typename T>
void relu_backward(index_t n, const T* grad_y, const T* y, T* grad_x);

// GELU, as torch.nn.functional.gelu: y = x Phi(x), Phi the standard normal CDF, or with
// tanh_approx (approximate='tanh') y = x/2 (1 + tanh(u)) = x sigmoid(2u),
// u = sqrt(2/pi) (x + 0.044715 x^3). Within a few ulp of the exact values in either precision.
template <typename T>
void gelu_forward(index_t n, const T* x, T* y, bool tanh_approx);
// grad_x = grad_y * GELU'(x): Phi(x) + x phi(x), or for the tanh form
// sigmoid(2u) + 2 x sigmoid(2u) (1 - sigmoid(2u)) du/dx.
template <typename T>
void gelu_backward(index_t n, const T* grad_y, const T* x, T* grad_x, bool tanh_approx);

// SiLU (swish), as torch.nn.functional.silu: y = x sigmoid(x), no overflow for any x.
template <typename T>
void silu_forward(index_t n, const T* x, T* y);
// grad_x = grad_y * s (1 + x (1 - s)), s = sigmoid(x)
template <typename T>
void silu_backward(index_t n, const T* grad_y, const T* x, T* grad_x);

}  // namespace fastconv
