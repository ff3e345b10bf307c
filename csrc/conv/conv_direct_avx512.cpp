// AVX-512 register tiles of the direct channels-last convolution (see conv_direct.h): the
// templates of conv_direct_tiles.h on 16-lane zmm vectors, 32 registers.
// This file alone is compiled with -mavx512f; it runs only after cpuid says the CPU has it.
#include "conv/conv_direct.h"

#if defined(FASTCONV_X86) && defined(__AVX512F__)
#include <immintrin.h>

#include "conv/conv_direct_tiles.h"
#include "simd_avx512.h"

namespace fastconv {
namespace {

struct Zmm {
  using V = __m512;
  using Mask = __mmask16;
  using Flags = __mmask16;
  static constexpr int kLanes = 16, kRegisters = 32;
  static Mask first(index_t n) {
    return static_cast<__mmask16>(n >= 16 ? 0xFFFF : (1u << n) - 1u);
  }
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V load_aligned(const float* p) { return _mm512_load_ps(p); }
  static V masked_load(Mask m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
  static V load_first(const float* p, Mask m, index_t) { return _mm512_maskz_loadu_ps(m, p); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static void store_aligned(float* p, V v) { _mm512_store_ps(p, v); }
  static void store_first(float* p, Mask m, index_t, V v) { _mm512_mask_storeu_ps(p, m, v); }
  static void keep(V& v) { asm("" : "+v"(v)); }
  // x - x is 0 for finite x, NaN for ±inf and NaN: one compare per vector.
  static Flags no_flags() { return 0; }
  static Flags flag_nonfinite(Flags f, V v) {
    return f | _mm512_cmp_ps_mask(_mm512_sub_ps(v, v), _mm512_setzero_ps(), _CMP_NEQ_UQ);
  }
  static bool any(Flags f) { return f != 0; }
  // Each lane rounded to bfloat16 as bf16.h's round_to_bf16: to nearest even (add 0x7fff
  // plus the lowest kept bit, drop the low 16 bits), a NaN truncated with its quiet bit set.
  static V round_bf16(V v) {
    return _mm512_castsi512_ps(
        _mm512_and_si512(bf16_high_halves(v), _mm512_set1_epi32(int(0xffff0000u))));
  }

  // In-register transpose of a 16 x 16 block: r[i] lane j <-> r[j] lane i.
  static void transpose(V r[16]) { transpose16x16(r); }
};

DirectKernels make_kernels() {
  DirectKernels k{};
  // Largest MR per NV with MR*NV accumulators + NV weight vectors + a broadcast in 32.
  fill_common<Zmm, 24, 14, 9, 6>(k);
  // 24 accumulators each; F = 8 for filter counts that are multiples of 8.
  k.small_shapes[0] = {6, 4};
  k.small_shapes[1] = {8, 3};
  k.small_c_tile[0] = &small_c_tile<Zmm, 6, 4>;
  k.small_c_tile[1] = &small_c_tile<Zmm, 8, 3>;
  // Two 14-row register tiles of 32 output channels; measured against 42, 37, 32, 22 and 16
  // (interleaved in one process): layers of 64 tiles per image (simple_cnn's conv2 input
  // gradient, vgg_small's 16x16 layers) 9-11% faster than with 42 (passes of 22 tiles
  // instead of 32); 256- and 16-tile layers unchanged.
  k.winograd_chunk = 28;
  // Measured with AVX-512: the wide-row GEMM ahead on LeNet's 3 -> 6 weight gradient; the
  // other rules not measured here (off).
  k.small_wg_min_filters = 16;
  k.weight_grad_gemm_ratio = 0;
  k.winograd_min_fill = 0.0f;
  k.short_tile_nv = 0;
  k.direct_wg_min_taps = 1;
  k.per_pixel_max_pixels = 0;
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
