// The bfloat16 GEMM: C[M,N] (+)= bf16(A) . bf16(B), products summed in float32.
//
// The same loop nest as gemm.h (blocks of B, then of A, a register tile swept over them),
// with one more step in the packing: each float32 panel a source packs is converted, while it
// is in L1, into the layout of the bf16 path's micro-kernel, its values rounded to bfloat16
// (bf16.h) -- once per panel, not once per use. The paths (cpu.h, Bf16Path):
//   emulated          panels stay float32, rounded to bf16 values, and the selected ISA's
//                     float32 micro-kernel multiplies them: bf16 numbers, float32 speed.
//                     With the float32 GEMM's blocks and kernel it gives the float32 GEMM's
//                     bits on rounded operands.
//   avx512_bf16       vdpbf16ps on pairs of k (gemm_bf16_avx512.cpp)
//   amx               tdpbf16ps on 16 x 32 tiles (gemm_bf16_amx.cpp)
//   *_twin            portable C++ twins of those two (gemm_bf16_twin.cpp): the same packed
//                     layouts and the instructions' arithmetic emulated per element, so the
//                     packing, blocking, edges and dispatch of the hardware paths are tested
//                     on any CPU.
// Threads split M or N, never K: results are bit-identical for any thread count.
#pragma once

#include <cstdint>

#include "bf16.h"
#include "cpu.h"
#include "gemm/gemm.h"

namespace fastconv {

// How a micro-kernel wants its packed panels (element (i, p) of an MR-tall A panel, (p, j) of
// an NR-wide B panel, the panels kc_pad = kc rounded up to k_group deep, zero-filled):
//   f32       float32 values rounded to bf16:   A at p*MR + i,           B at p*NR + j
//   pairs     bf16 bits in pairs along k:        A at (p/2)*2MR + 2i + p%2, B at (p/2)*2NR + 2j + p%2
//             (one 32-bit lane holds the two k of a row or column: vdpbf16ps's operands)
//   amx_rows  A as rows of 32 k (an AMX A tile row, 64 bytes): A at (p/32)*32MR + 32i + p%32;
//             B in pairs (an AMX B tile: 16 rows of k pairs)
enum class Bf16Layout { f32, pairs, amx_rows };

// A bf16 micro-kernel: c[0:mr_eff, 0:nr_eff] (+)= a_panel . b_panel over kc_pad (a multiple of
// the path's k_group) packed k, in the path's layout.
using Bf16MicroFn = void (*)(index_t kc_pad, const void* a, const void* b, float* c, index_t ldc,
                             bool accumulate, index_t mr_eff, index_t nr_eff);

// A tap-reduce tile (pairs layout; valid_taps' bf16 convolutions, conv_valid_taps.cpp): for
// rows i < rows (the kernel's mr, or kTapRowsShort; those with c[i] null skipped) and
// columns j < nr_eff,
//   c[i][j] = sum over taps t < taps, in order, and k pairs p < kp, in order, of
//             pair p of row a[i] + a_off[t]  .  pair p of column j of b[t],
// a[i] + a_off[t] pointing at 2*kp bfloat16 values (a pixel's channels, channels-last), b[t]
// a packed pairs panel (kp pairs x nr columns, as a B panel). The sums stay in registers
// over all taps: C is written once, and nothing is packed per tap.
// Each output's sum is the same whatever the rows: a short tile (8 rows: 8 | 64 images, where
// 12 would leave a third of some tiles empty) gives the same bits.
using Bf16TapsFn = void (*)(index_t rows, index_t taps, const index_t* a_off, index_t kp,
                            const std::uint16_t* const* a, const std::uint16_t* const* b,
                            float* const* c, index_t nr_eff);
constexpr index_t kTapRowsShort = 8;

// The kernel of one bf16 path, from its gemm_bf16_<path>.cpp.
struct Bf16Kernel {
  index_t mr, nr;
  Bf16Layout layout;
  Bf16MicroFn micro;
  // Run by each thread around its share of a GEMM (AMX: load the tile configuration, then
  // release the tiles), or null.
  void (*begin)() = nullptr;
  void (*end)() = nullptr;
  // How much faster its GEMM multiplies than float32's, roughly (vdpbf16ps: 2, its peak over
  // the float32 FMA's on Intel and on AMD Zen 4, where its 2048^3 GEMM measured 1.95x
  // float32's; AMX: 16, Intel's figure, unmeasured; a twin: its hardware kernel's; the
  // emulated path: 1). The conv dispatch weighs it against what the algorithms without a
  // bf16 kernel gain over the GEMMs (conv/dispatch.cpp).
  double multiply_rate = 1.0;
  // The hardware instruction's throughput loop behind the bf16 peak (peak.h): `rounds`
  // rounds of independent dot-product chains, peak_flops each (products and adds); null for
  // the twins (nothing to time).
  double (*peak_loop)(index_t rounds) = nullptr;
  index_t peak_flops = 0;
  // Its tap-reduce tile (the pairs layout's kernels), or null.
  Bf16TapsFn taps = nullptr;
};

// nullptr where the translation unit was compiled without the instructions.
const Bf16Kernel* bf16_kernel_avx512();
const Bf16Kernel* bf16_kernel_amx();
const Bf16Kernel* bf16_kernel_avx512_twin();
const Bf16Kernel* bf16_kernel_amx_twin();

// What every bf16 GEMM call uses: the selected path's kernel (the emulated path: the selected
// ISA's float32 micro-kernel, f32_micro) and its blocks (gemm_config.cpp).
struct Bf16GemmConfig : Bf16Kernel {
  Bf16Path path;
  MicroKernelFn<float> f32_micro = nullptr;  // the emulated path's kernel
  index_t k_group;     // kc_pad is a multiple of it: 1 (f32), 2 (pairs), 32 (amx_rows)
  index_t elem_bytes;  // of a packed element: 4 (f32) or 2
  index_t mc, kc, nc;  // mc, nc multiples of mr, nr; kc a multiple of k_group

  // Bytes of one packed A panel (mr x kc_pad) or B panel (kc_pad x nr).
  index_t a_panel_bytes(index_t kc_pad) const { return mr * kc_pad * elem_bytes; }
  index_t b_panel_bytes(index_t kc_pad) const { return nr * kc_pad * elem_bytes; }
  index_t pad_k(index_t kc) const { return round_up(kc, k_group); }
};
const Bf16GemmConfig& bf16_gemm_config();

// Replaces the selected path's blocks (the emulated path: the float32 GEMM's, set_gemm_blocks),
// for tests; all zero: back to the derived ones. False, and no change, unless mc and nc are
// positive multiples of mr and nr and kc a positive multiple of k_group, each at most
// kMaxGemmBlock.
bool set_bf16_gemm_blocks(index_t mc, index_t kc, index_t nc);

// Converts one float32 panel packed by an ASource (mr x kc, (i, p) at p*mr + i) or a BSource
// (kc x nr, (p, j) at p*nr + j) into the config's layout at dst (a_panel_bytes(pad_k(kc))).
void bf16_convert_a_panel(const Bf16GemmConfig& k, index_t kc, const float* src, void* dst);
void bf16_convert_b_panel(const Bf16GemmConfig& k, index_t kc, const float* src, void* dst);

// Supplies the converted A blocks: rows [ic, ic+mc) x cols [pc, pc+kc) as the config's
// mr-tall panels (panel r at r * a_panel_bytes(pad_k(kc))). `scratch` has room for the
// converted block, `f32` for one float32 panel (mr x kc floats).
struct Bf16ASource {
  virtual ~Bf16ASource() = default;
  virtual const void* block(index_t ic, index_t mc, index_t pc, index_t kc, void* scratch,
                            float* f32) const = 0;
};

// Any float32 A source: each block packed by it, then converted panel by panel.
struct Bf16FromF32A final : Bf16ASource {
  const ASource<float>& a;
  explicit Bf16FromF32A(const ASource<float>& a_) : a(a_) {}
  const void* block(index_t ic, index_t mc, index_t pc, index_t kc, void* scratch,
                    float* f32) const override;
};

// A matrix packed and converted once, whole (conv weights shared by the images of a batch).
class Bf16PackedA final : public Bf16ASource {
 public:
  Bf16PackedA(index_t M, index_t K, const float* A, index_t rs, index_t cs);
  const void* block(index_t ic, index_t mc, index_t pc, index_t kc, void* scratch,
                    float* f32) const override;

 private:
  index_t m_pad_, kcb_, block_row_bytes_;
  Scratch<unsigned char> data_;
};

// The k-blocks of a bf16 GEMM over K: equal blocks of at most the config's kc, each a
// multiple of its k_group (the last may be shorter; its packing is zero-padded).
index_t bf16_k_block(const Bf16GemmConfig& k, index_t K);

// C[M,N] (+)= A . B on the calling thread (scratch allocated here).
void gemm_bf16(index_t M, index_t N, index_t K, const Bf16ASource& A, const BSource<float>& B,
               float* C, index_t ldc, bool accumulate);
// The same split over the OpenMP threads by blocks of M or N. Call outside parallel regions.
void gemm_bf16_parallel(index_t M, index_t N, index_t K, const Bf16ASource& A,
                        const BSource<float>& B, float* C, index_t ldc, bool accumulate);

}  // namespace fastconv
