#include "optim/optim.h"

#include <algorithm>
#include <cmath>

namespace fastconv {

namespace {

// One block of the SGD update, the branches on the flags hoisted out of the loop so that it
// vectorises (and, cloned per ISA, uses AVX-512 / AVX2 where present).
template <typename T, bool kMomentum, bool kFirst, bool kNesterov>
__attribute__((always_inline)) inline void sgd_loop(index_t n, T* p, const T* g, T* buf, T lr,
                                                    T momentum, T dampening, T weight_decay) {
  for (index_t i = 0; i < n; ++i) {
    T d = g[i] + weight_decay * p[i];
    if (kMomentum) {
      const T b = kFirst ? d : momentum * buf[i] + (T(1) - dampening) * d;
      buf[i] = b;
      d = kNesterov ? d + momentum * b : b;
    }
    p[i] -= lr * d;
  }
}

template <typename T>
__attribute__((always_inline)) inline void sgd_block(index_t n, T* p, const T* g, T* buf, T lr,
                                                     T momentum, T dampening, T weight_decay,
                                                     bool nesterov, bool first_step) {
  if (momentum == T(0))
    sgd_loop<T, false, false, false>(n, p, g, buf, lr, momentum, dampening, weight_decay);
  else if (first_step && nesterov)
    sgd_loop<T, true, true, true>(n, p, g, buf, lr, momentum, dampening, weight_decay);
  else if (first_step)
    sgd_loop<T, true, true, false>(n, p, g, buf, lr, momentum, dampening, weight_decay);
  else if (nesterov)
    sgd_loop<T, true, false, true>(n, p, g, buf, lr, momentum, dampening, weight_decay);
  else
    sgd_loop<T, true, false, false>(n, p, g, buf, lr, momentum, dampening, weight_decay);
}

FASTCONV_CLONED(sgd_block_any, sgd_block,
                (index_t n, T* p, const T* g, T* buf, T lr, T momentum, T dampening,
                 T weight_decay, bool nesterov, bool first_step),
                (n, p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first_step))

constexpr index_t kBlock = 16384;  // elements per work item

}  // namespace

template <typename T>
void sgd_update(index_t n, T* p, const T* g, T* buf, T lr, T momentum, T dampening,
                T weight_decay, bool nesterov, bool first_step) {
  const index_t blocks = ceil_div(n, kBlock);
#pragma omp parallel for schedule(static) if (blocks > 4)
  for (index_t b = 0; b < blocks; ++b) {
    const index_t i = b * kBlock, m = std::min(kBlock, n - i);
    sgd_block_any(m, p + i, g + i, buf + i, lr, momentum, dampening, weight_decay, nesterov,
                  first_step);
  }
}

template <typename T>
void adam_update(index_t n, T* p, const T* g, T* m, T* v, T lr, T beta1, T beta2, T eps,
                 T weight_decay, bool decoupled, index_t step) {
  const T bc1 = T(1) - std::pow(beta1, static_cast<T>(step));
  const T bc2_sqrt = std::sqrt(T(1) - std::pow(beta2, static_cast<T>(step)));
  const T step_size = lr / bc1;
  const T decay = decoupled ? T(1) - lr * weight_decay : T(1);
#pragma omp parallel for simd schedule(static) if (n > 65536)
  for (index_t i = 0; i < n; ++i) {
    T pi = p[i] * decay;
    const T gi = decoupled ? g[i] : g[i] + weight_decay * pi;
    const T mi = m[i] + (T(1) - beta1) * (gi - m[i]);  // lerp, as torch
    const T vi = beta2 * v[i] + (T(1) - beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = pi - step_size * (mi / (std::sqrt(vi) / bc2_sqrt + eps));
  }
}

template void sgd_update<float>(index_t, float*, const float*, float*, float, float, float, float,
                                bool, bool);
template void sgd_update<double>(index_t, double*, const double*, double*, double, double, double,
                                 double, bool, bool);
template void adam_update<float>(index_t, float*, const float*, float*, float*, float, float,
                                 float, float, float, bool, index_t);
template void adam_update<double>(index_t, double*, const double*, double*, double*, double,
                                  double, double, double, double, bool, index_t);

}  // namespace fastconv
