// Cache-blocked, packed GEMM (the BLIS/GotoBLAS loop nest) with a register-blocked
// micro-kernel chosen at run time: AVX-512, AVX2+FMA, or portable C++.
//
//   C[M,N] = op(A)[M,K] * op(B)[K,N]  (+ C if accumulate)
//
// Matrices are given by a pointer and a (row stride, column stride) pair, so transposed and
// strided operands need no copy: A(i,k) = A[i*a_rs + k*a_cs], B(k,j) = B[k*b_rs + j*b_cs],
// C(i,j) = C[i*ldc + j]. The reduction over K runs in the same order whatever the number of
// threads (threads split M or N, never K), so results are bit-identical for any thread count.
#pragma once

#include <string>

#include "common.h"

namespace fastconv {

// Micro-kernel: c[0:mr_eff, 0:nr_eff] (+)= a_panel (kc x MR, packed) * b_panel (kc x NR, packed).
template <typename T>
using MicroKernelFn = void (*)(index_t kc, const T* a, const T* b, T* c, index_t ldc,
                               bool accumulate, index_t mr_eff, index_t nr_eff);

template <typename T>
struct GemmKernel {
  const char* isa;
  index_t mr, nr;      // register tile
  index_t mc, kc, nc;  // cache blocks (multiples of mr / nr)
  MicroKernelFn<T> micro;
};

template <typename T>
const GemmKernel<T>& gemm_kernel();

// Name of the instruction set the micro-kernels use ("avx512", "avx2", "generic").
std::string simd_level();
// Force a level (for tests and benchmarks); returns false if this CPU cannot run it.
bool set_simd_level(const std::string& level);
// The best level this CPU supports.
std::string best_simd_level();

// Serial GEMM on the calling thread. `pack` is per-call scratch (see gemm_scratch_size);
// pass nullptr to allocate internally.
template <typename T>
void gemm(index_t M, index_t N, index_t K, const T* A, index_t a_rs, index_t a_cs, const T* B,
          index_t b_rs, index_t b_cs, T* C, index_t ldc, bool accumulate, T* pack = nullptr);

// Elements of scratch `gemm` needs for one call (A block + B block).
template <typename T>
index_t gemm_scratch_size();

// GEMM split over the OpenMP threads by blocks of M or N (whichever has more blocks).
// Call from outside a parallel region.
template <typename T>
void gemm_parallel(index_t M, index_t N, index_t K, const T* A, index_t a_rs, index_t a_cs,
                   const T* B, index_t b_rs, index_t b_cs, T* C, index_t ldc, bool accumulate);

// Per-ISA kernel tables, defined in gemm_<isa>.cpp (nullptr when not compiled in).
const GemmKernel<float>* gemm_kernel_avx512_f32();
const GemmKernel<double>* gemm_kernel_avx512_f64();
const GemmKernel<float>* gemm_kernel_avx2_f32();
const GemmKernel<double>* gemm_kernel_avx2_f64();

}  // namespace fastconv
