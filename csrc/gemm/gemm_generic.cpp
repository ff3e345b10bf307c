// Portable micro-kernel: a 4 x 16 tile in plain loops (the compiler vectorises the j loop for
// the build's baseline ISA). Runs on any CPU; the reference the SIMD kernels are tested against.
#include "gemm/gemm.h"

namespace fastconv {
namespace {

constexpr int MR = 4, NR = 16;

template <typename T>
void micro_kernel(index_t kc, const T* __restrict a, const T* __restrict b, T* __restrict c,
                  index_t ldc, bool accumulate, index_t mr_eff, index_t nr_eff) {
  T acc[MR][NR] = {};
  for (index_t p = 0; p < kc; ++p) {
    const T* ap = a + p * MR;
    const T* bp = b + p * NR;
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i][j] += ap[i] * bp[j];
  }
  for (index_t i = 0; i < mr_eff; ++i)
    for (index_t j = 0; j < nr_eff; ++j)
      c[i * ldc + j] = accumulate ? c[i * ldc + j] + acc[i][j] : acc[i][j];
}

// 12 chains of 16 bytes (the baseline vectors: SSE2, NEON) of multiply-adds, vectorised by
// the compiler; without FMA in the baseline each is a multiply and an add.
constexpr int kFmaChains = 12;

template <typename T>
double fma_loop(index_t rounds) {
  constexpr int L = 16 / sizeof(T), n = kFmaChains * L;
  T acc[n];
  for (int i = 0; i < n; ++i) acc[i] = T(i) / n;
  // acc <- acc * m + a converges to a / (1 - m) = 1: no overflow, no subnormals.
  const T m = T(0.9999), a = T(1e-4);
  for (index_t r = 0; r < rounds; ++r)
    for (int i = 0; i < n; ++i) acc[i] = acc[i] * m + a;
  double sum = 0;
  for (T v : acc) sum += v;
  return sum;
}

// (No non-temporal or dot-product variants: nullptr.)
const GemmKernel<float> kF32{MR,      NR,      &micro_kernel<float>, nullptr,
                             nullptr, &fma_loop<float>, 2 * kFmaChains * 16 / sizeof(float)};
const GemmKernel<double> kF64{MR,      NR,      &micro_kernel<double>, nullptr,
                              nullptr, &fma_loop<double>, 2 * kFmaChains * 16 / sizeof(double)};

}  // namespace

template <>
const GemmKernel<float>* gemm_kernel_generic<float>() {
  return &kF32;
}
template <>
const GemmKernel<double>* gemm_kernel_generic<double>() {
  return &kF64;
}

}  // namespace fastconv
