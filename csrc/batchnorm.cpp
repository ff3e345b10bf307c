#include "batchnorm.h"

#include <cmath>

namespace fastconv {
namespace {

// Per-channel sums: each row of S contiguous values is summed in 16 fixed float lanes (the
// loops vectorise; a single running sum is a serial chain of dependent adds, ~4x slower), and
// the rows' lane totals are added in double, in row order. The order of every addition is
// fixed, whatever the number of threads; a lane adds S/16 values in float (64 for 32x32).
constexpr int kLanes = 16;

template <typename T, typename Term>
__attribute__((always_inline)) inline double row_total(index_t S, Term term) {
  T acc[kLanes] = {};
  index_t s = 0;
  for (; s + kLanes <= S; s += kLanes)
    for (int k = 0; k < kLanes; ++k) acc[k] += term(s + k);
  for (int k = 0; s + k < S; ++k) acc[k] += term(s + k);
  double sum = 0;
  for (int k = 0; k < kLanes; ++k) sum += acc[k];
  return sum;
}

template <typename T>
__attribute__((always_inline)) inline void row_sum(index_t S, const T* p, double* total) {
  *total += row_total<T>(S, [&](index_t s) { return p[s]; });
}

template <typename T>
__attribute__((always_inline)) inline void row_sq_dev(index_t S, const T* p, double mu,
                                                      double* total) {
  const T m = static_cast<T>(mu);
  *total += row_total<T>(S, [&](index_t s) {
    const T d = p[s] - m;
    return d * d;
  });
}

template <typename T>
__attribute__((always_inline)) inline void row_affine(index_t S, const T* p, T scale, T shift,
                                                      T* q) {
  for (index_t s = 0; s < S; ++s) q[s] = p[s] * scale + shift;
}

// total_g += sum(gy), total_gx += sum(gy * (x - mu)) over one row.
template <typename T>
__attribute__((always_inline)) inline void row_grad_sums(index_t S, const T* g, const T* p,
                                                         double mu, double* total_g,
                                                         double* total_gx) {
  const T m = static_cast<T>(mu);
  T acc_g[kLanes] = {}, acc_gx[kLanes] = {};
  index_t s = 0;
  for (; s + kLanes <= S; s += kLanes)
    for (int k = 0; k < kLanes; ++k) {
      acc_g[k] += g[s + k];
      acc_gx[k] += g[s + k] * (p[s + k] - m);
    }
  for (int k = 0; s + k < S; ++k) {
    acc_g[k] += g[s + k];
    acc_gx[k] += g[s + k] * (p[s + k] - m);
  }
  double sg = 0, sgx = 0;
  for (int k = 0; k < kLanes; ++k) {
    sg += acc_g[k];
    sgx += acc_gx[k];
  }
  *total_g += sg;
  *total_gx += sgx;
}

template <typename T>
__attribute__((always_inline)) inline void row_grad_x(index_t S, const T* g, const T* p, T a, T b,
                                                      T d, T* q) {
  for (index_t s = 0; s < S; ++s) q[s] = a * g[s] - b * p[s] + d;
}

FASTCONV_CLONED(row_sum_any, row_sum, (index_t S, const T* p, double* total), (S, p, total))
FASTCONV_CLONED(row_sq_dev_any, row_sq_dev, (index_t S, const T* p, double mu, double* total),
                (S, p, mu, total))
FASTCONV_CLONED(row_affine_any, row_affine, (index_t S, const T* p, T scale, T shift, T* q),
                (S, p, scale, shift, q))
FASTCONV_CLONED(row_grad_sums_any, row_grad_sums,
                (index_t S, const T* g, const T* p, double mu, double* total_g, double* total_gx),
                (S, g, p, mu, total_g, total_gx))
FASTCONV_CLONED(row_grad_x_any, row_grad_x, (index_t S, const T* g, const T* p, T a, T b, T d, T* q),
                (S, g, p, a, b, d, q))

}  // namespace

template <typename T>
void batch_norm_forward(index_t N, index_t C, index_t S, const T* x, const T* gamma,
                        const T* beta, double eps, T* y, T* mean, T* invstd, T* var) {
  const double M = static_cast<double>(N * S);
#pragma omp parallel for schedule(static)
  for (index_t c = 0; c < C; ++c) {
    double sum = 0;
    for (index_t n = 0; n < N; ++n) row_sum_any(S, x + (n * C + c) * S, &sum);
    const double mu = sum / M;
    // Two passes (mean, then squared deviations): no cancellation for large means.
    double sq = 0;
    for (index_t n = 0; n < N; ++n) row_sq_dev_any(S, x + (n * C + c) * S, mu, &sq);
    const double v = sq / M;
    const double is = 1.0 / std::sqrt(v + eps);
    mean[c] = static_cast<T>(mu);
    invstd[c] = static_cast<T>(is);
    var[c] = static_cast<T>(v);
    const T scale = static_cast<T>(gamma ? is * gamma[c] : is);
    const T shift = static_cast<T>((beta ? beta[c] : 0.0) - mu * static_cast<double>(scale));
    for (index_t n = 0; n < N; ++n)
      row_affine_any(S, x + (n * C + c) * S, scale, shift, y + (n * C + c) * S);
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
    for (index_t n = 0; n < N; ++n)
      row_grad_sums_any(S, gy + (n * C + c) * S, x + (n * C + c) * S, mu, &sg, &sgx);
    sgx *= is;  // sum(gy * xhat)
    grad_gamma[c] = static_cast<T>(sgx);
    grad_beta[c] = static_cast<T>(sg);
    if (!gx) continue;
    const double k = gamma ? is * gamma[c] : is;
    // gx = k*gy - k*sg/M - (x - mu) * k*is*sgx/M
    const T a = static_cast<T>(k);
    const T b = static_cast<T>(k * is * sgx / M);
    const T d = static_cast<T>(-k * sg / M + mu * k * is * sgx / M);
    for (index_t n = 0; n < N; ++n)
      row_grad_x_any(S, gy + (n * C + c) * S, x + (n * C + c) * S, a, b, d, gx + (n * C + c) * S);
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
