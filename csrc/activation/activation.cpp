#include "activation/activation.h"

#include <algorithm>

#include "activation/vecmath.h"

namespace fastconv {
namespace {

// Unconditional loads and selects: the loops vectorise (no branches, whose mispredictions on
// random signs would cost more than the memory traffic; vecmath.h has no libm calls).
template <typename T>
__attribute__((always_inline)) inline void relu_block(index_t n, const T* x, T* y) {
  for (index_t i = 0; i < n; ++i) y[i] = relu_value(x[i]);
}

template <typename T>
__attribute__((always_inline)) inline void relu_backward_block(index_t n, const T* gy, const T* y,
                                                               T* gx) {
  for (index_t i = 0; i < n; ++i) gx[i] = relu_grad(gy[i], y[i]);
}

// GELU's tanh form: 1 + tanh(u) = 2 sigmoid(2u), and
// d/dx [x sigmoid(v)] = s + x s (1 - s) dv/dx, v = 2u = 2k (x + kappa x^3)
// (torch's formula: 1 - tanh(u)^2 = 4 s (1 - s)).
template <typename T>
struct GeluTanh {
  static constexpr T two_k = T(2 * 0.79788456080286535588);  // 2 sqrt(2/pi)
  static constexpr T kappa = T(0.044715);
  __attribute__((always_inline)) static T v(T x) { return two_k * x * (T(1) + kappa * (x * x)); }
  __attribute__((always_inline)) static T dv(T x) {
    return two_k * (T(1) + T(3) * kappa * (x * x));
  }
};

template <typename T>
__attribute__((always_inline)) inline void gelu_block(index_t n, const T* x, T* y) {
  for (index_t i = 0; i < n; ++i) y[i] = x[i] * normal_at(x[i]).cdf;
}

template <typename T>
__attribute__((always_inline)) inline void gelu_backward_block(index_t n, const T* gy,
                                                               const T* x, T* gx) {
  for (index_t i = 0; i < n; ++i) {
    const NormalAt<T> phi = normal_at(x[i]);
    gx[i] = gy[i] * (phi.cdf + x[i] * phi.density);
  }
}

template <typename T>
__attribute__((always_inline)) inline void gelu_tanh_block(index_t n, const T* x, T* y) {
  for (index_t i = 0; i < n; ++i) y[i] = x[i] * sigmoid_pair(GeluTanh<T>::v(x[i])).s;
}

template <typename T>
__attribute__((always_inline)) inline void gelu_tanh_backward_block(index_t n, const T* gy,
                                                                    const T* x, T* gx) {
  for (index_t i = 0; i < n; ++i) {
    const SigmoidPair<T> s = sigmoid_pair(GeluTanh<T>::v(x[i]));
    gx[i] = gy[i] * (s.s + x[i] * (s.s * s.one_minus_s) * GeluTanh<T>::dv(x[i]));
  }
}

template <typename T>
__attribute__((always_inline)) inline void silu_block(index_t n, const T* x, T* y) {
  for (index_t i = 0; i < n; ++i) y[i] = x[i] * sigmoid_pair(x[i]).s;
}

template <typename T>
__attribute__((always_inline)) inline void silu_backward_block(index_t n, const T* gy,
                                                               const T* x, T* gx) {
  for (index_t i = 0; i < n; ++i) {
    const SigmoidPair<T> s = sigmoid_pair(x[i]);
    gx[i] = gy[i] * (s.s * (T(1) + x[i] * s.one_minus_s));
  }
}

FASTCONV_CLONED(relu_any, relu_block, (index_t n, const T* x, T* y), (n, x, y))
FASTCONV_CLONED(relu_bwd_any, relu_backward_block, (index_t n, const T* g, const T* y, T* gx),
                (n, g, y, gx))
FASTCONV_CLONED(gelu_any, gelu_block, (index_t n, const T* x, T* y), (n, x, y))
FASTCONV_CLONED(gelu_bwd_any, gelu_backward_block, (index_t n, const T* g, const T* x, T* gx),
                (n, g, x, gx))
FASTCONV_CLONED(gelu_tanh_any, gelu_tanh_block, (index_t n, const T* x, T* y), (n, x, y))
FASTCONV_CLONED(gelu_tanh_bwd_any, gelu_tanh_backward_block,
                (index_t n, const T* g, const T* x, T* gx), (n, g, x, gx))
FASTCONV_CLONED(silu_any, silu_block, (index_t n, const T* x, T* y), (n, x, y))
FASTCONV_CLONED(silu_bwd_any, silu_backward_block, (index_t n, const T* g, const T* x, T* gx),
                (n, g, x, gx))

constexpr index_t kBlock = 16384;  // elements per work item

// block(i, count) over [0, n) in blocks of kBlock, spread over the threads.
template <typename Block>
void for_blocks(index_t n, Block block) {
  const index_t blocks = ceil_div(n, kBlock);
#pragma omp parallel for schedule(static) if (blocks > 1)
  for (index_t b = 0; b < blocks; ++b) block(b * kBlock, std::min(kBlock, n - b * kBlock));
}

}  // namespace

template <typename T>
void relu_forward(index_t n, const T* x, T* y) {
  for_blocks(n, [&](index_t i, index_t m) { relu_any(m, x + i, y + i); });
}

template <typename T>
void relu_backward(index_t n, const T* grad_y, const T* y, T* grad_x) {
  for_blocks(n, [&](index_t i, index_t m) { relu_bwd_any(m, grad_y + i, y + i, grad_x + i); });
}

template <typename T>
void gelu_forward(index_t n, const T* x, T* y, bool tanh_approx) {
  for_blocks(n, [&](index_t i, index_t m) {
    if (tanh_approx) gelu_tanh_any(m, x + i, y + i);
    else gelu_any(m, x + i, y + i);
  });
}

template <typename T>
void gelu_backward(index_t n, const T* grad_y, const T* x, T* grad_x, bool tanh_approx) {
  for_blocks(n, [&](index_t i, index_t m) {
    if (tanh_approx) gelu_tanh_bwd_any(m, grad_y + i, x + i, grad_x + i);
    else gelu_bwd_any(m, grad_y + i, x + i, grad_x + i);
  });
}

template <typename T>
void silu_forward(index_t n, const T* x, T* y) {
  for_blocks(n, [&](index_t i, index_t m) { silu_any(m, x + i, y + i); });
}

template <typename T>
void silu_backward(index_t n, const T* grad_y, const T* x, T* grad_x) {
  for_blocks(n, [&](index_t i, index_t m) { silu_bwd_any(m, grad_y + i, x + i, grad_x + i); });
}

#define FASTCONV_INSTANTIATE(T)                                                   \
  template void relu_forward<T>(index_t, const T*, T*);                           \
  template void relu_backward<T>(index_t, const T*, const T*, T*);                \
  template void gelu_forward<T>(index_t, const T*, T*, bool);                     \
  template void gelu_backward<T>(index_t, const T*, const T*, T*, bool);          \
  template void silu_forward<T>(index_t, const T*, T*);                           \
  template void silu_backward<T>(index_t, const T*, const T*, T*);
FASTCONV_INSTANTIATE(float)
FASTCONV_INSTANTIATE(double)
#undef FASTCONV_INSTANTIATE

}  // namespace fastconv
