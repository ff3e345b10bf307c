#include "norm/batchnorm.h"

#include <cmath>
#include <vector>

#include "activation/activation.h"

namespace fastconv {
namespace {

// Per-channel sums: each row of S contiguous values is summed in 16 fixed float lanes
// (add_lanes), and the rows' lane totals are added in double, in row order. The order of
// every addition is fixed, whatever the number of threads; a lane adds S/16 values in float
// (64 for 32x32).
template <typename T, typename Term>
__attribute__((always_inline)) inline double row_total(index_t S, Term term) {
  T acc[kLanes] = {};
  add_lanes<T>(S, term, acc);
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

// The kRelu variants fuse a following ReLU; the cloned entry points below take it as a flag
// and branch once per row, outside the loops.
template <typename T, bool kRelu>
__attribute__((always_inline)) inline void row_affine_impl(index_t S, const T* p, T scale,
                                                           T shift, T* q) {
  for (index_t s = 0; s < S; ++s) {
    const T v = p[s] * scale + shift;
    q[s] = kRelu ? relu_value(v) : v;
  }
}

// The gradient reaching the batch norm: gy, or gy through the fused ReLU's gradient.
template <typename T, bool kRelu>
__attribute__((always_inline)) inline T bn_grad(const T* g, const T* y, index_t s) {
  return kRelu ? relu_grad(g[s], y[s]) : g[s];
}

// total_g += sum(g), total_gx += sum(g * (x - mu)) over one row. Two lane sums rather than
// one loop with both: GCC turns the joint loop into a shuffle-bound interleave (~4x slower);
// the row (S values) is still in L1 for the second sum.
template <typename T, bool kRelu>
__attribute__((always_inline)) inline void row_grad_sums_impl(index_t S, const T* g, const T* y,
                                                              const T* p, double mu,
                                                              double* total_g, double* total_gx) {
  const T m = static_cast<T>(mu);
  *total_g += row_total<T>(S, [&](index_t s) { return bn_grad<T, kRelu>(g, y, s); });
  *total_gx += row_total<T>(S, [&](index_t s) { return bn_grad<T, kRelu>(g, y, s) * (p[s] - m); });
}

// gx = a * g - b * x + d
template <typename T, bool kRelu>
__attribute__((always_inline)) inline void row_grad_x_impl(index_t S, const T* g, const T* y,
                                                           const T* p, T a, T b, T d, T* q) {
  for (index_t s = 0; s < S; ++s) q[s] = a * bn_grad<T, kRelu>(g, y, s) - b * p[s] + d;
}

template <typename T>
__attribute__((always_inline)) inline void row_affine(bool relu, index_t S, const T* p, T scale,
                                                      T shift, T* q) {
  if (relu) row_affine_impl<T, true>(S, p, scale, shift, q);
  else row_affine_impl<T, false>(S, p, scale, shift, q);
}

template <typename T>
__attribute__((always_inline)) inline void row_grad_sums(const T* y, index_t S, const T* g,
                                                         const T* p, double mu, double* total_g,
                                                         double* total_gx) {
  if (y) row_grad_sums_impl<T, true>(S, g, y, p, mu, total_g, total_gx);
  else row_grad_sums_impl<T, false>(S, g, y, p, mu, total_g, total_gx);
}

template <typename T>
__attribute__((always_inline)) inline void row_grad_x(const T* y, index_t S, const T* g,
                                                      const T* p, T a, T b, T d, T* q) {
  if (y) row_grad_x_impl<T, true>(S, g, y, p, a, b, d, q);
  else row_grad_x_impl<T, false>(S, g, y, p, a, b, d, q);
}

FASTCONV_CLONED(row_sum_any, row_sum, (index_t S, const T* p, double* total), (S, p, total))
FASTCONV_CLONED(row_sq_dev_any, row_sq_dev, (index_t S, const T* p, double mu, double* total),
                (S, p, mu, total))
FASTCONV_CLONED(row_affine_any, row_affine, (bool relu, index_t S, const T* p, T scale, T shift, T* q),
                (relu, S, p, scale, shift, q))
FASTCONV_CLONED(row_grad_sums_any, row_grad_sums,
                (const T* y, index_t S, const T* g, const T* p, double mu, double* total_g,
                 double* total_gx),
                (y, S, g, p, mu, total_g, total_gx))
FASTCONV_CLONED(row_grad_x_any, row_grad_x,
                (const T* y, index_t S, const T* g, const T* p, T a, T b, T d, T* q),
                (y, S, g, p, a, b, d, q))

// Sum over the images of per-row totals, in image order: the same additions, in the same
// order, as one running sum per channel, whichever thread made each row's total.
inline double channel_total(const double* row_totals, index_t N, index_t C, index_t c) {
  double sum = 0;
  for (index_t n = 0; n < N; ++n) sum += row_totals[n * C + c];
  return sum;
}

}  // namespace

// Every pass sweeps the rows (n, c) in memory order, threads over contiguous ranges of rows:
// a channel's own rows lie C * S apart, too far for the hardware prefetcher, which restarts at
// each row (~2x slower per pass when threads walked channel by channel). The per-row totals
// are combined per channel between passes.
template <typename T>
void batch_norm_forward(index_t N, index_t C, index_t S, const T* x, const T* gamma,
                        const T* beta, double eps, bool relu, T* y, T* mean, T* invstd, T* var) {
  const double M = static_cast<double>(N * S);
  const index_t R = N * C;
  std::vector<double> row_totals(static_cast<size_t>(R));
  std::vector<double> mu(static_cast<size_t>(C));
  std::vector<T> scale(static_cast<size_t>(C)), shift(static_cast<size_t>(C));
  double* rt = row_totals.data();
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (index_t r = 0; r < R; ++r) {
      double t = 0;
      row_sum_any(S, x + r * S, &t);
      rt[r] = t;
    }
#pragma omp single
    for (index_t c = 0; c < C; ++c) mu[c] = channel_total(rt, N, C, c) / M;
    // Two passes (mean, then squared deviations): no cancellation for large means.
#pragma omp for schedule(static)
    for (index_t r = 0; r < R; ++r) {
      double t = 0;
      row_sq_dev_any(S, x + r * S, mu[r % C], &t);
      rt[r] = t;
    }
#pragma omp single
    for (index_t c = 0; c < C; ++c) {
      const double v = channel_total(rt, N, C, c) / M;
      const double is = 1.0 / std::sqrt(v + eps);
      mean[c] = static_cast<T>(mu[c]);
      invstd[c] = static_cast<T>(is);
      var[c] = static_cast<T>(v);
      scale[c] = static_cast<T>(gamma ? is * gamma[c] : is);
      shift[c] = static_cast<T>((beta ? beta[c] : 0.0) - mu[c] * static_cast<double>(scale[c]));
    }
#pragma omp for schedule(static)
    for (index_t r = 0; r < R; ++r)
      row_affine_any(relu, S, x + r * S, scale[r % C], shift[r % C], y + r * S);
  }
}

template <typename T>
void batch_norm_backward(index_t N, index_t C, index_t S, const T* gy, const T* relu_y,
                         const T* x, const T* mean, const T* invstd, const T* gamma, T* gx,
                         T* grad_gamma, T* grad_beta) {
  const double M = static_cast<double>(N * S);
  const index_t R = N * C;
  std::vector<double> totals_g(static_cast<size_t>(R)), totals_gx(static_cast<size_t>(R));
  std::vector<T> a(static_cast<size_t>(C)), b(static_cast<size_t>(C)), d(static_cast<size_t>(C));
  double* tg = totals_g.data();
  double* tgx = totals_gx.data();
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (index_t r = 0; r < R; ++r) {
      double sg = 0, sgx = 0;
      const index_t o = r * S;
      row_grad_sums_any(relu_y ? relu_y + o : nullptr, S, gy + o, x + o, double(mean[r % C]),
                        &sg, &sgx);
      tg[r] = sg;
      tgx[r] = sgx;
    }
#pragma omp single
    for (index_t c = 0; c < C; ++c) {
      const double mu = mean[c], is = invstd[c];
      const double sg = channel_total(tg, N, C, c);
      const double sgx = channel_total(tgx, N, C, c) * is;  // sum(gy * xhat)
      grad_gamma[c] = static_cast<T>(sgx);
      grad_beta[c] = static_cast<T>(sg);
      const double k = gamma ? is * gamma[c] : is;
      // gx = k*gy - k*sg/M - (x - mu) * k*is*sgx/M
      a[c] = static_cast<T>(k);
      b[c] = static_cast<T>(k * is * sgx / M);
      d[c] = static_cast<T>(-k * sg / M + mu * k * is * sgx / M);
    }
    if (gx) {
#pragma omp for schedule(static)
      for (index_t r = 0; r < R; ++r) {
        const index_t o = r * S, c = r % C;
        row_grad_x_any(relu_y ? relu_y + o : nullptr, S, gy + o, x + o, a[c], b[c], d[c], gx + o);
      }
    }
  }
}

#define FASTCONV_BN_INSTANTIATE(T)                                                          \
  template void batch_norm_forward<T>(index_t, index_t, index_t, const T*, const T*, const T*, \
                                      double, bool, T*, T*, T*, T*);                        \
  template void batch_norm_backward<T>(index_t, index_t, index_t, const T*, const T*,        \
                                       const T*, const T*, const T*, const T*, T*, T*, T*);
FASTCONV_BN_INSTANTIATE(float)
FASTCONV_BN_INSTANTIATE(double)

}  // namespace fastconv
