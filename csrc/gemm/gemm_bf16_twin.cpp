// Portable twins of the hardware bf16 micro-kernels: the same tiles and packed layouts as
// gemm_bf16_avx512.cpp and gemm_bf16_amx.cpp, with the instructions' arithmetic emulated per
// element as Intel's SDM specifies it: every multiply-add a float32 FMA rounded to nearest
// even, denormal inputs read as zero (DAZ) and denormal results flushed to zero (FTZ), MXCSR
// ignored. The order of the sums is the instructions':
//   vdpbf16ps  per lane: acc += a[2i+1] * b[2i+1], then acc += a[2i] * b[2i]
//   tdpbf16ps  per element of C and tile (16 k pairs): the even and the odd products summed
//              separately from zero, k in order; their sum then added to C
// They run on any CPU (slowly: one scalar fmaf per product), so that the packing, blocking,
// edge handling and dispatch of the hardware paths are tested where the instructions do not
// exist; on a CPU that has them, the tests compare the hardware kernels with these.
#include <algorithm>
#include <cfloat>
#include <cmath>

#include "gemm/gemm_bf16.h"
#include "gemm/gemm_bf16_store.h"

namespace fastconv {
namespace {

// DAZ on an input, FTZ on a result (NaN and inf pass).
inline float flush(float x) { return std::fabs(x) < FLT_MIN ? std::copysign(0.0f, x) : x; }

inline float fma_daz_ftz(std::uint16_t a, std::uint16_t b, float acc) {
  return flush(std::fma(flush(bf16_value(a)), flush(bf16_value(b)), acc));
}

// ---- vdpbf16ps: gemm_bf16_avx512.cpp's 12 x 32 tile -----------------------------------------

constexpr int kDpMR = 12, kDpNR = 32;

void dp_micro_kernel(index_t kc_pad, const void* a_, const void* b_, float* c, index_t ldc,
                     bool accumulate, index_t mr_eff, index_t nr_eff) {
  const auto* a = static_cast<const std::uint16_t*>(a_);
  const auto* b = static_cast<const std::uint16_t*>(b_);
  float acc[kDpMR * kDpNR] = {};
  for (index_t kp = 0; kp < kc_pad / 2; ++kp) {
    const std::uint16_t* ap = a + kp * 2 * kDpMR;
    const std::uint16_t* bp = b + kp * 2 * kDpNR;
    for (int i = 0; i < kDpMR; ++i)
      for (int j = 0; j < kDpNR; ++j) {
        float& s = acc[i * kDpNR + j];
        s = fma_daz_ftz(ap[2 * i + 1], bp[2 * j + 1], s);
        s = fma_daz_ftz(ap[2 * i], bp[2 * j], s);
      }
  }
  bf16_store_tile(acc, kDpNR, c, ldc, accumulate, mr_eff, nr_eff);
}

// The tap-reduce tile of the same kernel (Bf16TapsFn).
void dp_taps_kernel(index_t rows, index_t taps, const index_t* a_off, index_t kp,
                    const std::uint16_t* const* a, const std::uint16_t* const* b,
                    float* const* c, index_t nr_eff) {
  float acc[kDpMR * kDpNR] = {};
  for (index_t t = 0; t < taps; ++t)
    for (index_t p = 0; p < kp; ++p) {
      const std::uint16_t* bp = b[t] + p * 2 * kDpNR;
      for (int i = 0; i < rows; ++i) {
        const std::uint16_t* ap = a[i] + a_off[t] + 2 * p;
        for (int j = 0; j < kDpNR; ++j) {
          float& s = acc[i * kDpNR + j];
          s = fma_daz_ftz(ap[1], bp[2 * j + 1], s);
          s = fma_daz_ftz(ap[0], bp[2 * j], s);
        }
      }
    }
  for (int i = 0; i < rows; ++i)
    if (c[i]) std::copy_n(acc + i * kDpNR, nr_eff, c[i]);
}

// ---- tdpbf16ps: gemm_bf16_amx.cpp's 32 x 32 tile of four 16 x 16 tiles -------------------

constexpr int kAmxMR = 32, kAmxNR = 32, kTile = 16;

void amx_micro_kernel(index_t kc_pad, const void* a_, const void* b_, float* c, index_t ldc,
                      bool accumulate, index_t mr_eff, index_t nr_eff) {
  const auto* a = static_cast<const std::uint16_t*>(a_);
  const auto* b = static_cast<const std::uint16_t*>(b_);
  float acc[kAmxMR * kAmxNR] = {};  // the four C tiles, zeroed (_tile_zero)
  for (index_t kb = 0; kb < kc_pad / 32; ++kb) {
    const std::uint16_t* ak = a + kb * 32 * kAmxMR;  // row m: ak[32m + k], k < 32
    const std::uint16_t* bk = b + kb * 32 * kAmxNR;  // pair row k: bk[2NR k + 2n + e]
    for (int m = 0; m < kAmxMR; ++m)
      for (int n = 0; n < kAmxNR; ++n) {  // tile (m/16, n/16), its row m%16, column n%16
        float even = 0.0f, odd = 0.0f;
        for (int k = 0; k < kTile; ++k) {
          even = fma_daz_ftz(ak[32 * m + 2 * k], bk[2 * kAmxNR * k + 2 * n], even);
          odd = fma_daz_ftz(ak[32 * m + 2 * k + 1], bk[2 * kAmxNR * k + 2 * n + 1], odd);
        }
        float& s = acc[m * kAmxNR + n];
        s = flush(s + flush(even + odd));
      }
  }
  bf16_store_tile(acc, kAmxNR, c, ldc, accumulate, mr_eff, nr_eff);
}

// (The hardware kernels' rates, so the dispatch picks for a twin what it picks for its kernel.)
const Bf16Kernel kDpTwin{kDpMR, kDpNR, Bf16Layout::pairs, &dp_micro_kernel, nullptr, nullptr,
                         2.0, nullptr, 0, &dp_taps_kernel};
const Bf16Kernel kAmxTwin{kAmxMR, kAmxNR, Bf16Layout::amx_rows, &amx_micro_kernel, nullptr,
                          nullptr, 16.0};

}  // namespace

const Bf16Kernel* bf16_kernel_avx512_twin() { return &kDpTwin; }
const Bf16Kernel* bf16_kernel_amx_twin() { return &kAmxTwin; }

}  // namespace fastconv
