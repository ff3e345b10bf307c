// AVX512_BF16 micro-kernel: a 12 x 32 tile (24 zmm accumulators of 16 floats), vdpbf16ps on
// pairs of k: per k pair, one 32-bit broadcast of a row's pair of A against two vectors of 16
// column pairs of B (other tiles measured no faster: docs/benchmarks.md). This file alone is
// compiled with -mavx512bf16; it runs only after cpuid says the CPU has it (cpu.h,
// Bf16Path::avx512_bf16). Its portable twin, with the same packed layout and the
// instruction's arithmetic, is in gemm_bf16_twin.cpp.
#include "gemm/gemm_bf16.h"

#if defined(FASTCONV_X86) && defined(__AVX512F__) && defined(__AVX512BF16__)
#include <immintrin.h>

namespace fastconv {
namespace {

constexpr int MR = 12, NV = 2, NR = 16 * NV;  // NV vectors of 16 column pairs

// One k pair of the R x 32 tile: acc[i][v] += the pair at row(i) . B's vector v of pairs
// (at b: NR column pairs).
template <int R = MR, typename Row>
__attribute__((always_inline)) inline void dp_pair(__m512 (&acc)[R][NV], const std::uint16_t* b,
                                                   Row row) {
  __m512bh bv[NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) bv[v] = (__m512bh)_mm512_loadu_si512(b + 32 * v);
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i) {
    std::uint32_t pair;
    __builtin_memcpy(&pair, row(i), sizeof pair);
    const __m512bh ai = (__m512bh)_mm512_set1_epi32(static_cast<int>(pair));
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], ai, bv[v]);
  }
}

template <int R>
__attribute__((always_inline)) inline void zero(__m512 (&acc)[R][NV]) {
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
}

// The store masks of the tile's NV vectors for nr_eff columns.
__attribute__((always_inline)) inline void column_masks(index_t nr_eff, __mmask16 (&mask)[NV]) {
  for (int v = 0; v < NV; ++v) {
    const index_t n = nr_eff - 16 * v;
    mask[v] = n >= 16 ? 0xffff : n > 0 ? static_cast<__mmask16>((1u << n) - 1) : 0;
  }
}

void micro_kernel(index_t kc_pad, const void* a_, const void* b_, float* c, index_t ldc,
                  bool accumulate, index_t mr_eff, index_t nr_eff) {
  const auto* a = static_cast<const std::uint16_t*>(a_);  // (p/2)*2MR + 2i + p%2
  const auto* b = static_cast<const std::uint16_t*>(b_);  // (p/2)*2NR + 2j + p%2
  __m512 acc[MR][NV];
  zero(acc);
  for (index_t kp = 0; kp < kc_pad / 2; ++kp) {
    const std::uint16_t* ap = a + kp * 2 * MR;
    dp_pair(acc, b + kp * 2 * NR, [&](int i) { return ap + 2 * i; });
  }
  __mmask16 mask[NV];
  column_masks(nr_eff, mask);
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    if (i >= mr_eff) break;
    float* ci = c + i * ldc;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      if (accumulate)
        acc[i][v] = _mm512_add_ps(acc[i][v], _mm512_maskz_loadu_ps(mask[v], ci + 16 * v));
      _mm512_mask_storeu_ps(ci + 16 * v, mask[v], acc[i][v]);
    }
  }
}

// The tap-reduce tile (Bf16TapsFn) on the same registers, R = 12 or 8 rows: per tap, the
// rows' pixel pairs broadcast from where they lie, B's panel of the tap streamed.
template <int R>
void taps_tile(index_t taps, const index_t* a_off, index_t kp, const std::uint16_t* const* a,
               const std::uint16_t* const* b, float* const* c, index_t nr_eff) {
  __m512 acc[R][NV];
  zero(acc);
  for (index_t t = 0; t < taps; ++t) {
    const std::uint16_t* ap[R];
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) ap[i] = a[i] + a_off[t];
    const std::uint16_t* bt = b[t];
    for (index_t p = 0; p < kp; ++p)
      dp_pair<R>(acc, bt + p * 2 * NR, [&](int i) { return ap[i] + 2 * p; });
  }
  __mmask16 mask[NV];
  column_masks(nr_eff, mask);
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i) {
    if (!c[i]) continue;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) _mm512_mask_storeu_ps(c[i] + 16 * v, mask[v], acc[i][v]);
  }
}

void taps_kernel(index_t rows, index_t taps, const index_t* a_off, index_t kp,
                 const std::uint16_t* const* a, const std::uint16_t* const* b, float* const* c,
                 index_t nr_eff) {
  static_assert(kTapRowsShort == 8, "taps_tile<8> below");
  if (rows == kTapRowsShort) taps_tile<8>(taps, a_off, kp, a, b, c, nr_eff);
  else taps_tile<MR>(taps, a_off, kp, a, b, c, nr_eff);
}

// kPeakChains independent vdpbf16ps chains (enough in flight to cover the latency times the
// units), `rounds` times; returns the sum of the results so that none is optimised away.
// acc += 2^-10 * 2^-10 per pair: no overflow, no subnormals. Each chain starts from its own
// value: chains alike from zero are one chain to the compiler, which merges them (GCC 12 did:
// the loop timed vdpbf16ps's latency, not its throughput).
constexpr int kPeakChains = 12;
double peak_loop(index_t rounds) {
  __m512 acc[kPeakChains];
#pragma GCC unroll 12
  for (int i = 0; i < kPeakChains; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
  const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3a80);  // 2^-10 in bf16
  for (index_t r = 0; r < rounds; ++r) {
#pragma GCC unroll 12
    for (int i = 0; i < kPeakChains; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], a, a);
  }
#pragma GCC unroll 12
  for (int i = 1; i < kPeakChains; ++i) acc[0] = _mm512_add_ps(acc[0], acc[i]);
  return _mm512_reduce_add_ps(acc[0]);
}

// vdpbf16ps: 32 products per zmm instruction against vfmadd's 16, at the same rate on Zen 4
// (one per cycle per core: 2x float32's FMA peak; see Bf16Kernel::multiply_rate). Per peak
// round: 16 lanes x 2 products x 2 flops per chain.
const Bf16Kernel kKernel{MR, NR, Bf16Layout::pairs, &micro_kernel, nullptr, nullptr, 2.0,
                         &peak_loop, 4 * 16 * kPeakChains, &taps_kernel};

}  // namespace

const Bf16Kernel* bf16_kernel_avx512() { return &kKernel; }

}  // namespace fastconv

#else

namespace fastconv {
const Bf16Kernel* bf16_kernel_avx512() { return nullptr; }
}  // namespace fastconv

#endif
