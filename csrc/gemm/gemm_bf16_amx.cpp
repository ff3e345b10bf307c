// AMX micro-kernel: a 32 x 32 tile of C in four 16 x 16 float32 tiles (tmm0-3), A as two
// 16-row tiles of 32 k (tmm4-5), B as two tiles of 16 k pairs x 16 columns (tmm6-7);
// tdpbf16ps per k-block of 32. This file alone is compiled with -mamx-tile -mamx-bf16 (and
// AVX-512, which every AMX CPU has: the epilogue's adds vectorise); it runs only after cpuid
// says the CPU has AMX-BF16, the SIMD level is avx512 and Linux granted the process the tile
// data state (cpu.cpp asks once, arch_prctl ARCH_REQ_XCOMP_PERM). The tile configuration is
// per thread: loaded by `begin` on each thread before its share of a GEMM, released by
// `end`. Its portable twin is in gemm_bf16_twin.cpp.
#include "gemm/gemm_bf16.h"
#include "gemm/gemm_bf16_store.h"

#if defined(FASTCONV_X86) && defined(__AMX_TILE__) && defined(__AMX_BF16__)
#include <immintrin.h>

namespace fastconv {
namespace {

constexpr int MR = 32, NR = 32;

// The 64-byte tile configuration (palette 1): 8 tiles of 16 rows x 64 bytes.
struct alignas(64) TileConfig {
  std::uint8_t palette_id;
  std::uint8_t start_row;
  std::uint8_t reserved[14];
  std::uint16_t colsb[16];
  std::uint8_t rows[16];
};

void begin_tiles() {
  TileConfig cfg{};
  cfg.palette_id = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  _tile_loadconfig(&cfg);
}

void end_tiles() { _tile_release(); }

void micro_kernel(index_t kc_pad, const void* a_, const void* b_, float* c, index_t ldc,
                  bool accumulate, index_t mr_eff, index_t nr_eff) {
  const auto* a = static_cast<const std::uint16_t*>(a_);  // (p/32)*32MR + 32i + p%32
  const auto* b = static_cast<const std::uint16_t*>(b_);  // (p/2)*2NR + 2j + p%2
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (index_t kb = 0; kb < kc_pad / 32; ++kb) {
    const std::uint16_t* ak = a + kb * 32 * MR;  // rows of 64 bytes
    const std::uint16_t* bk = b + kb * 32 * NR;  // 16 rows of 2NR values (128 bytes)
    _tile_loadd(4, ak, 64);
    _tile_loadd(5, ak + 16 * 32, 64);
    _tile_loadd(6, bk, 4 * NR);
    _tile_loadd(7, bk + 32, 4 * NR);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  if (!accumulate && mr_eff == MR && nr_eff == NR) {
    // Nothing to add: the tiles go straight into C (the bits of the path below).
    const index_t stride = ldc * index_t(sizeof(float));
    _tile_stored(0, c, stride);
    _tile_stored(1, c + 16, stride);
    _tile_stored(2, c + 16 * ldc, stride);
    _tile_stored(3, c + 16 * ldc + 16, stride);
    return;
  }
  alignas(64) float tile[MR * NR];
  _tile_stored(0, tile, 4 * NR);
  _tile_stored(1, tile + 16, 4 * NR);
  _tile_stored(2, tile + 16 * NR, 4 * NR);
  _tile_stored(3, tile + 16 * NR + 16, 4 * NR);
  bf16_store_tile(tile, NR, c, ldc, accumulate, mr_eff, nr_eff);
}

// tdpbf16ps into the four C tiles in turn, `rounds` times, from A and B tiles of 2^-10 (no
// overflow, no subnormals); returns a result so that none is optimised away.
double peak_loop(index_t rounds) {
  begin_tiles();
  alignas(64) std::uint16_t small[16 * 32];
  for (std::uint16_t& v : small) v = 0x3a80;  // 2^-10 in bf16
  _tile_loadd(4, small, 64);
  _tile_loadd(6, small, 64);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (index_t r = 0; r < rounds; ++r) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 6);
    _tile_dpbf16ps(2, 4, 6);
    _tile_dpbf16ps(3, 4, 6);
  }
  alignas(64) float out[16 * 16];
  _tile_stored(3, out, 64);
  end_tiles();
  return out[0];
}

// tdpbf16ps: 16 x 16 x 32 products per instruction (Intel's figure: 16x the float32 FMA rate).
// Per peak round: 4 instructions of 16 x 16 x 32 x 2 flops.
const Bf16Kernel kKernel{MR, NR, Bf16Layout::amx_rows, &micro_kernel, &begin_tiles, &end_tiles,
                         16.0, &peak_loop, 4 * 16 * 16 * 32 * 2};

}  // namespace

const Bf16Kernel* bf16_kernel_amx() { return &kKernel; }

}  // namespace fastconv

#else

namespace fastconv {
const Bf16Kernel* bf16_kernel_amx() { return nullptr; }
}  // namespace fastconv

#endif
