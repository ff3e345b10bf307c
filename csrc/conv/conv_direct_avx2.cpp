// AVX2 + FMA register tiles of the direct channels-last convolution (see conv_direct.h): the
// templates of conv_direct_tiles.h on 8-lane ymm vectors, 16 registers.
// This file alone is compiled with -mavx2 -mfma; it runs only after cpuid says the CPU has it.
#include "conv/conv_direct.h"

#if defined(FASTCONV_X86) && defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#include "conv/conv_direct_tiles.h"

namespace fastconv {
namespace {

struct Ymm {
  using V = __m256;
  using Mask = __m256i;
  using Flags = __m256;
  static constexpr int kLanes = 8, kRegisters = 16;
  static Mask first(index_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n >= 8 ? 8 : n)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V load_aligned(const float* p) { return _mm256_load_ps(p); }
  static V masked_load(Mask m, const float* p) { return _mm256_maskload_ps(p, m); }
  // A plain load for whole vectors: vmaskmovps is slower even with every lane set.
  static V load_first(const float* p, Mask m, index_t n) {
    return n >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, m);
  }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static void store_aligned(float* p, V v) { _mm256_store_ps(p, v); }
  // Plain stores of 8, 4, 2 and 1 lanes: a masked store (vmaskmovps) costs ~20 cycles on
  // AMD Zen, where a 3-channel layer's tile ends with 12 of them after ~100 FMAs.
  static void store_first(float* p, Mask, index_t n, V v) {
    if (n >= 8) {
      _mm256_storeu_ps(p, v);
      return;
    }
    __m128 part = _mm256_castps256_ps128(v);
    if (n & 4) {
      _mm_storeu_ps(p, part);
      p += 4;
      part = _mm256_extractf128_ps(v, 1);
    }
    if (n & 2) {
      _mm_storel_pi(reinterpret_cast<__m64*>(p), part);
      p += 2;
      part = _mm_movehl_ps(part, part);
    }
    if (n & 1) _mm_store_ss(p, part);
  }
  static void keep(V& v) { asm("" : "+x"(v)); }
  // x - x is 0 for finite x, NaN for ±inf and NaN: lanes that compare unequal to 0 are set.
  static Flags no_flags() { return _mm256_setzero_ps(); }
  static Flags flag_nonfinite(Flags f, V v) {
    return _mm256_or_ps(f, _mm256_cmp_ps(_mm256_sub_ps(v, v), _mm256_setzero_ps(), _CMP_NEQ_UQ));
  }
  static bool any(Flags f) { return _mm256_movemask_ps(f) != 0; }
  // Each lane rounded to bfloat16 as bf16.h's round_to_bf16: to nearest even (add 0x7fff
  // plus the lowest kept bit, drop the low 16 bits), a NaN truncated with its quiet bit set.
  static V round_bf16(V v) {
    const __m256i u = _mm256_castps_si256(v), high = _mm256_set1_epi32(int(0xffff0000u));
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_and_si256(
        _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), high);
    const __m256i quiet = _mm256_or_si256(_mm256_and_si256(u, high), _mm256_set1_epi32(0x400000));
    return _mm256_blendv_ps(_mm256_castsi256_ps(r), _mm256_castsi256_ps(quiet),
                            _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  }

  // In-register transpose of an 8 x 8 block: r[i] lane j <-> r[j] lane i. 4 x 4 transposes
  // within each 128-bit half, then the halves exchanged.
  static void transpose(V r[8]) {
    V t[8];
    for (int i = 0; i < 8; i += 2) {
      t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
      r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
      r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
      r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
      r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; ++i) {
      t[i] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
      t[i + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
    }
    for (int i = 0; i < 8; ++i) r[i] = t[i];
  }
};

DirectKernels make_kernels() {
  DirectKernels k{};
  // MR*NV accumulators + NV weight vectors + a broadcast in 16 registers (NV = 4: 12 + 4 + 1,
  // the weights then read as memory operands of the FMAs).
  fill_common<Ymm, 14, 6, 4, 3>(k);
  // 12 accumulators each; F = 4 for filter counts that are multiples of 4.
  k.small_shapes[0] = {6, 2};
  k.small_shapes[1] = {4, 3};
  k.small_c_tile[0] = &small_c_tile<Ymm, 6, 2>;
  k.small_c_tile[1] = &small_c_tile<Ymm, 4, 3>;
  // Four 6-tile register tiles; 12 and 48 measured the same on simple_cnn's conv2 (4.4-4.9
  // ms per pass, 1 thread, batch 64), 36 up to 1.2x slower.
  k.winograd_chunk = 24;
  // Measured on AMD Zen 3, batch 64, 1 thread (CPU time): the few-channel weight gradient
  // 3.6x the wide-row GEMM on LeNet's 3 -> 6 layer (0.8 ms, PyTorch 1.2 ms); the weight
  // gradient as a GEMM from weights as many as one image's values (see use_weight_grad_gemm);
  // Winograd 1.4x slower than the direct tiles on 3x3 outputs (256 channels), 1.2-1.3x faster
  // on 7x7 and 4x4.
  k.small_wg_min_filters = 1;
  k.weight_grad_gemm_ratio = 1;
  k.winograd_min_fill = 0.6f;
  // 3x3 images (256 channels): 4-vector blocks, tiles of 3 pixels x 4 vectors (12
  // accumulators, not 6): forward and input gradient 1.25x faster (3 vectors: 1.2x).
  k.short_tile_nv = 4;
  // 1x1 stride-2 shortcuts (ResNet): the im2col GEMM's weight gradient 1.1-1.4x the tiles'
  // (one tap: nothing for a tile to reuse across taps; 128 -> 256: 4.4 vs 6.2 ms, PyTorch 4.7).
  k.direct_wg_min_taps = 2;
  // 3x3 and 4x4 outputs (padding 1) per pixel: 256 channels at 3x3, batch 256, 1.25x the
  // bands (28 -> 22 ms, PyTorch 26 ms), 512 channels at 4x4, batch 64, 1.1x Winograd.
  k.per_pixel_max_pixels = 16;
  return k;
}

}  // namespace

// Built on first use, never at load time: this code may only run on a CPU with AVX2 and FMA.
const DirectKernels* direct_kernels_avx2() {
  static const DirectKernels kernels = make_kernels();
  return &kernels;
}

}  // namespace fastconv

#else

namespace fastconv {
const DirectKernels* direct_kernels_avx2() { return nullptr; }
}  // namespace fastconv

#endif
