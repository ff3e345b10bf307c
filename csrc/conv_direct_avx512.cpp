// AVX-512 register tiles of the direct channels-last convolution (see conv_direct.h).
// This file alone is compiled with -mavx512f; it runs only after cpuid says the CPU has it.
// It holds leaf kernels only (no shared inline templates), so no AVX-512 code can leak into
// the portable parts of the library through the linker's choice of an inline copy.
#include "conv_direct.h"

#if defined(FASTCONV_X86) && defined(__AVX512F__)
#include <immintrin.h>

#include <utility>

namespace fastconv {
namespace {

constexpr int kMaxMR[DirectKernels::kMaxNV + 1] = {0, 24, 14, 9, 6};

// MR pixels (one output row, ps apart in the input) x NV*16 output channels. Each step of the
// reduction loads NV weight vectors and broadcasts one input value per pixel.
template <int MR, int NV>
void forward_tile(const float* in, index_t ps, const index_t* tap_off, index_t taps, index_t C,
                  const float* w, float* out, index_t ldo, bool accumulate) {
  __m512 acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j)
      acc[i][j] = accumulate ? _mm512_loadu_ps(out + i * ldo + 16 * j) : _mm512_setzero_ps();
  for (index_t t = 0; t < taps; ++t) {
    const float* p = in + tap_off[t];
    const float* wt = w + t * C * (16 * NV);
    for (index_t c = 0; c < C; ++c) {
      __m512 wv[NV];
      for (int j = 0; j < NV; ++j) wv[j] = _mm512_loadu_ps(wt + c * (16 * NV) + 16 * j);
#pragma GCC unroll 24
      for (int i = 0; i < MR; ++i) {
        const __m512 b = _mm512_set1_ps(p[i * ps + c]);
        for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_fmadd_ps(b, wv[j], acc[i][j]);
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) _mm512_storeu_ps(out + i * ldo + 16 * j, acc[i][j]);
}

// MR input channels (contiguous) x NV*16 output channels of one tap, summed over a grid of
// rows x cols output positions. Each step loads NV gradient vectors and broadcasts MR inputs.
template <int MR, int NV>
void weight_grad_tile(const float* x, index_t ps, index_t xrs, index_t rows, index_t cols,
                      const float* gy, index_t ldg, float* gw, index_t ldw, bool accumulate) {
  __m512 acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j)
      acc[i][j] = accumulate ? _mm512_loadu_ps(gw + i * ldw + 16 * j) : _mm512_setzero_ps();
  for (index_t r = 0; r < rows; ++r) {
    const float* xr = x + r * xrs;
    const float* gr = gy + r * cols * ldg;
    for (index_t q = 0; q < cols; ++q) {
      const float* xq = xr + q * ps;
      __m512 gv[NV];
      for (int j = 0; j < NV; ++j) gv[j] = _mm512_loadu_ps(gr + q * ldg + 16 * j);
#pragma GCC unroll 24
      for (int i = 0; i < MR; ++i) {
        const __m512 b = _mm512_set1_ps(xq[i]);
        for (int j = 0; j < NV; ++j) acc[i][j] = _mm512_fmadd_ps(b, gv[j], acc[i][j]);
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) _mm512_storeu_ps(gw + i * ldw + 16 * j, acc[i][j]);
}

template <int NV, std::size_t... M>
void fill_row(DirectKernels& k, std::index_sequence<M...>) {
  ((k.forward[NV][M + 1] = &forward_tile<M + 1, NV>), ...);
  ((k.weight_grad[NV][M + 1] = &weight_grad_tile<M + 1, NV>), ...);
}

DirectKernels make_kernels() {
  DirectKernels k{};
  for (int nv = 0; nv <= DirectKernels::kMaxNV; ++nv) k.max_mr[nv] = kMaxMR[nv];
  fill_row<1>(k, std::make_index_sequence<kMaxMR[1]>{});
  fill_row<2>(k, std::make_index_sequence<kMaxMR[2]>{});
  fill_row<3>(k, std::make_index_sequence<kMaxMR[3]>{});
  fill_row<4>(k, std::make_index_sequence<kMaxMR[4]>{});
  return k;
}

}  // namespace

// Built on first use, never at load time: this code may only run on a CPU with AVX-512.
const DirectKernels* direct_kernels_avx512() {
  static const DirectKernels kernels = make_kernels();
  return &kernels;
}

}  // namespace fastconv

#else

namespace fastconv {
const DirectKernels* direct_kernels_avx512() { return nullptr; }
}  // namespace fastconv

#endif
