#include "fma_peak.h"

#include <cstring>
#include <string>

#include "gemm.h"  // simd_level

#if defined(FASTCONV_X86)
#include <immintrin.h>
#endif

namespace fastconv {
namespace {

// Chains per thread: enough that the FMA pipes never wait for a result (latency 4-5 cycles x
// 2 pipes < 12; AVX-512 on two 512-bit ports wants ~8-10), few enough to stay in registers
// (16 ymm with AVX2). The empty asm keeps each chain in its own register and stops the
// compiler merging or removing chains whose values it could predict.
constexpr int kChains = 12;

#if defined(FASTCONV_X86) && defined(__GNUC__)
// Twelve named chains (an array of vectors ended up on the stack); returns a sum of them.
#define FASTCONV_PEAK_LOOP(V, set1, fma, add, constraint)                                     \
  const V b = set1(0.999f), c = set1(0.001f);                                                  \
  V a0 = set1(0.01f), a1 = set1(0.02f), a2 = set1(0.03f), a3 = set1(0.04f), a4 = set1(0.05f),  \
    a5 = set1(0.06f), a6 = set1(0.07f), a7 = set1(0.08f), a8 = set1(0.09f), a9 = set1(0.1f),   \
    a10 = set1(0.11f), a11 = set1(0.12f);                                                      \
  for (index_t k = 0; k < iterations; ++k) {                                                   \
    a0 = fma(a0, b, c), a1 = fma(a1, b, c), a2 = fma(a2, b, c), a3 = fma(a3, b, c);            \
    a4 = fma(a4, b, c), a5 = fma(a5, b, c), a6 = fma(a6, b, c), a7 = fma(a7, b, c);            \
    a8 = fma(a8, b, c), a9 = fma(a9, b, c), a10 = fma(a10, b, c), a11 = fma(a11, b, c);        \
    asm("" : "+" constraint(a0), "+" constraint(a1), "+" constraint(a2), "+" constraint(a3),   \
        "+" constraint(a4), "+" constraint(a5), "+" constraint(a6), "+" constraint(a7),        \
        "+" constraint(a8), "+" constraint(a9), "+" constraint(a10), "+" constraint(a11));     \
  }                                                                                            \
  const V s = add(add(add(add(a0, a1), add(a2, a3)), add(add(a4, a5), add(a6, a7))),           \
                  add(add(a8, a9), add(a10, a11)));                                            \
  float out[sizeof(V) / sizeof(float)];                                                        \
  std::memcpy(out, &s, sizeof(V));                                                             \
  return out[0];

__attribute__((target("avx512f"))) float chains_avx512(index_t iterations) {
  FASTCONV_PEAK_LOOP(__m512, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps, "v")
}

__attribute__((target("avx2,fma"))) float chains_avx2(index_t iterations) {
  FASTCONV_PEAK_LOOP(__m256, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps, "x")
}
#undef FASTCONV_PEAK_LOOP
#endif

float chains_generic(index_t iterations, int lanes) {
  float a[kChains][16];
  for (int i = 0; i < kChains; ++i)
    for (int l = 0; l < lanes; ++l) a[i][l] = 0.001f * static_cast<float>(i + 1);
  for (index_t k = 0; k < iterations; ++k)
    for (int i = 0; i < kChains; ++i)
      for (int l = 0; l < lanes; ++l) a[i][l] = a[i][l] * 0.999f + 0.001f;
  float s = 0;
  for (int i = 0; i < kChains; ++i) s += a[i][0];
  return s;
}

}  // namespace

double fma_peak(index_t iterations) {
  const std::string level = simd_level();
  const int lanes = level == "avx512" ? 16 : level == "avx2" ? 8 : 4;
  const int threads = max_threads();
  volatile float sink = 0;
#pragma omp parallel num_threads(threads)
  {
    float r;
#if defined(FASTCONV_X86) && defined(__GNUC__)
    if (level == "avx512") r = chains_avx512(iterations);
    else if (level == "avx2") r = chains_avx2(iterations);
    else r = chains_generic(iterations, lanes);
#else
    r = chains_generic(iterations, lanes);
#endif
    if (r == 12345.0f) sink = r;  // (keeps the result live)
  }
  (void)sink;
  return 2.0 * static_cast<double>(iterations) * kChains * lanes * threads;
}

}  // namespace fastconv
