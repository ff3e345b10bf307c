#include "activation.h"

#include <algorithm>

namespace fastconv {
namespace {

// Unconditional loads and a select: the loops vectorise to compare + blend (no branches,
// whose mispredictions on random signs would cost more than the memory traffic).
template <typename T>
__attribute__((always_inline)) inline void relu_block(index_t n, const T* x, T* y) {
  for (index_t i = 0; i < n; ++i) y[i] = relu_value(x[i]);
}

template <typename T>
__attribute__((always_inline)) inline void relu_backward_block(index_t n, const T* gy, const T* y,
                                                               T* gx) {
  for (index_t i = 0; i < n; ++i) gx[i] = relu_grad(gy[i], y[i]);
}

FASTCONV_CLONED(relu_any, relu_block, (index_t n, const T* x, T* y), (n, x, y))
FASTCONV_CLONED(relu_bwd_any, relu_backward_block, (index_t n, const T* g, const T* y, T* gx),
                (n, g, y, gx))

constexpr index_t kBlock = 16384;  // elements per work item

}  // namespace

template <typename T>
void relu_forward(index_t n, const T* x, T* y) {
  const index_t blocks = ceil_div(n, kBlock);
#pragma omp parallel for schedule(static) if (blocks > 1)
  for (index_t b = 0; b < blocks; ++b) {
    const index_t i = b * kBlock;
    relu_any(std::min(kBlock, n - i), x + i, y + i);
  }
}

template <typename T>
void relu_backward(index_t n, const T* grad_y, const T* y, T* grad_x) {
  const index_t blocks = ceil_div(n, kBlock);
#pragma omp parallel for schedule(static) if (blocks > 1)
  for (index_t b = 0; b < blocks; ++b) {
    const index_t i = b * kBlock;
    relu_bwd_any(std::min(kBlock, n - i), grad_y + i, y + i, grad_x + i);
  }
}

template void relu_forward<float>(index_t, const float*, float*);
template void relu_forward<double>(index_t, const double*, double*);
template void relu_backward<float>(index_t, const float*, const float*, float*);
template void relu_backward<double>(index_t, const double*, const double*, double*);

}  // namespace fastconv
