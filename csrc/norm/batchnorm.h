// Batch normalisation over (N, C, S) (S = H*W for 2-D, 1 for 1-D inputs) in training mode:
// statistics per channel over its N*S values. One thread per channel, sums in 16 fixed float
// lanes per row and in double across rows, in a fixed order: results do not depend on the
// number of threads.
#pragma once

#include "common.h"

namespace fastconv {

// y = (x - mean) * invstd * gamma + beta; mean, invstd = 1/sqrt(var + eps) and the biased
// variance var are written per channel. gamma/beta may be null (no affine transform).
// relu: y = relu(y) in the same pass (batch norm followed by ReLU, one pass fewer each way).
template <typename T>
void batch_norm_forward(index_t N, index_t C, index_t S, const T* x, const T* gamma,
                        const T* beta, double eps, bool relu, T* y, T* mean, T* invstd, T* var);

// With xhat = (x - mean) * invstd and k = gamma * invstd (invstd without affine):
//   grad_gamma = sum(gy * xhat), grad_beta = sum(gy)          (per channel, written)
//   gx = k * (gy - grad_beta / M - xhat * grad_gamma / M),  M = N*S   (gx may be null)
// relu_y: the output of a forward with relu, or null. When given, gy is first passed through
// the ReLU's gradient (relu_grad(gy, relu_y)), as if a ReLU layer's backward had run.
template <typename T>
void batch_norm_backward(index_t N, index_t C, index_t S, const T* gy, const T* relu_y,
                         const T* x, const T* mean, const T* invstd, const T* gamma, T* gx,
                         T* grad_gamma, T* grad_beta);

}  // namespace fastconv
