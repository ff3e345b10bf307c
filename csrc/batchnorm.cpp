#include "batchnorm.h"

#include <cmath>

namespace fastconv {

template <typename T>
void batch_norm_forward(index_t N, index_t C, index_t S, const T* x, const T* gamma,
                        const T* beta, double eps, T* y, T* mean, T* invstd, T* var) {
  const double M = static_cast<double>(N * S);
#pragma omp parallel for schedule(static)
  for (index_t c = 0; c < C; ++c) {
    double sum = 0;
    for (index_t n = 0; n < N; ++n) {
      const T* p = x + (n * C + c) * S;
      for (index_t s = 0; s < S; ++s) sum += p[s];
    }
    const double mu = sum / M;
    double sq = 0;
    for (index_t n = 0; n < N; ++n) {
      const T* p = x + (n * C + c) * S;
      for (index_t s = 0; s < S; ++s) {
        const double d = p[s] - mu;
        sq += d * d;
      }
    }
    const double v = sq / M;
    const double is = 1.0 / std::sqrt(v + eps);
    mean[c] = static_cast<T>(mu);
    invstd[c] = static_cast<T>(is);
    var[c] = static_cast<T>(v);
    const T scale = static_cast<T>(gamma ? is * gamma[c] : is);
    const T shift = static_cast<T>((beta ? beta[c] : 0.0) - mu * static_cast<double>(scale));
    for (index_t n = 0; n < N; ++n) {
      const T* p = x + (n * C + c) * S;
      T* q = y + (n * C + c) * S;
      for (index_t s = 0; s < S; ++s) q[s] = p[s] * scale + shift;
    }
  }
}

template <typename T>
void batch_norm_backward(index_t N, index_t C, index_t S, const T* gy, const T* x, const T* mean,
                         const T* invstd, const T* gamma, T* gx, T* grad_gamma, T* grad_beta) {
  const double M = static_cast<double>(N * S);
#pragma omp parallel for schedule(static)
  for (index_t c = 0; c < C; ++c) {
    const double mu = mean[c], is = invstd[c];
    double sg = 0, sgx = 0;
    for (index_t n = 0; n < N; ++n) {
      const T* g = gy + (n * C + c) * S;
      const T* p = x + (n * C + c) * S;
      for (index_t s = 0; s < S; ++s) {
        sg += g[s];
        sgx += g[s] * (p[s] - mu);
      }
    }
    sgx *= is;  // sum(gy * xhat)
    grad_gamma[c] = static_cast<T>(sgx);
    grad_beta[c] = static_cast<T>(sg);
    if (!gx) continue;
    const double k = gamma ? is * gamma[c] : is;
    // gx = k*gy - k*sg/M - (x - mu) * k*is*sgx/M
    const T a = static_cast<T>(k);
    const T b = static_cast<T>(k * is * sgx / M);
    const T d = static_cast<T>(-k * sg / M + mu * k * is * sgx / M);
    for (index_t n = 0; n < N; ++n) {
      const T* g = gy + (n * C + c) * S;
      const T* p = x + (n * C + c) * S;
      T* q = gx + (n * C + c) * S;
      for (index_t s = 0; s < S; ++s) q[s] = a * g[s] - b * p[s] + d;
    }
  }
}

template void batch_norm_forward<float>(index_t, index_t, index_t, const float*, const float*,
                                        const float*, double, float*, float*, float*, float*);
template void batch_norm_forward<double>(index_t, index_t, index_t, const double*, const double*,
                                         const double*, double, double*, double*, double*,
                                         double*);
template void batch_norm_backward<float>(index_t, index_t, index_t, const float*, const float*,
                                         const float*, const float*, const float*, float*, float*,
                                         float*);
template void batch_norm_backward<double>(index_t, index_t, index_t, const double*, const double*,
                                          const double*, const double*, const double*, double*,
                                          double*, double*);

}  // namespace fastconv
