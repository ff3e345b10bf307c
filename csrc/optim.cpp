#include "optim.h"

#include <cmath>

namespace fastconv {

template <typename T>
void sgd_update(index_t n, T* p, const T* g, T* buf, T lr, T momentum, T dampening,
                T weight_decay, bool nesterov, bool first_step) {
#pragma omp parallel for simd schedule(static) if (n > 65536)
  for (index_t i = 0; i < n; ++i) {
    T d = g[i] + weight_decay * p[i];
    if (momentum != T(0)) {
      const T b = first_step ? d : momentum * buf[i] + (T(1) - dampening) * d;
      buf[i] = b;
      d = nesterov ? d + momentum * b : b;
    }
    p[i] -= lr * d;
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
