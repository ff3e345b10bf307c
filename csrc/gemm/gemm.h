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

#include <cstdint>
#include <type_traits>

#include "bf16.h"
#include "common.h"
#include "cpu.h"

namespace fastconv {

// Micro-kernel: c[0:mr_eff, 0:nr_eff] (+)= a_panel (kc x MR, packed) * b_panel (kc x NR, packed).
template <typename T>
using MicroKernelFn = void (*)(index_t kc, const T* a, const T* b, T* c, index_t ldc,
                               bool accumulate, index_t mr_eff, index_t nr_eff);

// C[M,N] (+)= A . B^T from row pointers, as dot products along K (see gemm_nt_rows).
template <typename T>
using NtRowsFn = void (*)(index_t M, index_t N, index_t K, const T* const* a_rows,
                          const T* const* b_rows, T* C, index_t ldc, bool accumulate);

// The GEMM kernels of one ISA, from gemm_<isa>.cpp.
template <typename T>
struct GemmKernel {
  index_t mr, nr;  // register tile
  MicroKernelFn<T> micro;
  // The same storing C with non-temporal stores (accumulate = false only, C 64-byte aligned
  // with ldc a multiple of 64 bytes), or null: for a large C written once (no read for
  // ownership of lines about to be overwritten, no eviction of the operands).
  MicroKernelFn<T> micro_stream = nullptr;
  // Dot products of rows for gemm_nt_rows, or null: the packed GEMM then.
  NtRowsFn<T> nt_rows = nullptr;
  // This ISA's FMA throughput loop, for the machine's peak (peak.h): `rounds` rounds of
  // independent vector multiply-adds, enough of them to cover the FMA latency times the FMA
  // units (4-5 cycles x 2 units on recent x86 cores), `fma_flops` flops per round. Returns a
  // sum of the results, so that none is optimised away.
  double (*fma_loop)(index_t rounds) = nullptr;
  index_t fma_flops = 0;
  // float only: up to 16 columns of B in place (column j < n at cols[j], 32 k each; the
  // rest zero) as 16 rows of the bf16 GEMM's pairs, the first `words` (<= 16) of each
  // stored (row q at dst + 2q*width: see gemm_bf16.cpp, pairs_from_columns), or null: the
  // portable loop.
  void (*bf16_pairs_16x16)(const float* const* cols, index_t n, index_t words,
                           std::uint16_t* dst, index_t width) = nullptr;
  // float only: rows of floats as pairs of the bf16 GEMM (gemm_bf16.cpp, convert_pairs, whose
  // arguments and bits it has), or null: the portable loop.
  void (*bf16_convert_pairs)(index_t n, index_t width, index_t ld, const index_t* off,
                             index_t kc, index_t kc_pad, const float* src,
                             std::uint16_t* dst) = nullptr;
};

// Per-ISA kernel tables, defined in gemm_<isa>.cpp (nullptr when not compiled in).
template <typename T>
const GemmKernel<T>* gemm_kernel_generic();
template <typename T>
const GemmKernel<T>* gemm_kernel_avx2();
template <typename T>
const GemmKernel<T>* gemm_kernel_avx512();

// Cache blocks of the loop nest (gemm.cpp): an mc x kc block of A, a kc x nc block of B.
struct GemmBlocks {
  index_t mc, kc, nc;
};

// The blocks for an mr x nr register tile of `bytes`-byte elements on a CPU with these caches
// (BLIS's analytical model, see gemm_config.cpp). kc alone decides the order of the sums, so
// float results can differ in the last bits between CPUs with different L1 caches, as they do
// between ISAs; never between thread counts.
GemmBlocks gemm_blocks_for(index_t mr, index_t nr, index_t bytes, const CpuInfo& cpu);

// What every GEMM call uses: the kernels of the selected ISA (cpu.h) and their blocks for
// this CPU, filled once per ISA (gemm_config.cpp).
template <typename T>
struct GemmConfig : GemmKernel<T> {
  Isa isa;
  index_t mc, kc, nc;  // multiples of mr, any, multiple of nr
};
template <typename T>
const GemmConfig<T>& gemm_config();

// Replaces the selected ISA's blocks for T, for tests and benchmarks (no GEMM may run
// meanwhile: the bindings wait for running kernels); all zero: back to gemm_blocks_for's.
// False, and no change, unless mc and nc are positive multiples of mr and nr and kc is
// positive, each at most kMaxGemmBlock.
template <typename T>
bool set_gemm_blocks(index_t mc, index_t kc, index_t nc);
constexpr index_t kMaxGemmBlock = index_t(1) << 16;

// Size of equal blocks covering `total` with blocks of at most `max_block`.
index_t balanced_block(index_t total, index_t max_block);

// ---- Operands -----------------------------------------------------------------------------
// The loop nest asks its operands for packed blocks, so an operand can be a strided matrix
// (packed on the fly), a matrix packed once and reused (conv weights across a batch), or an
// implicit matrix such as the im2col of an image, packed straight from the image.

// The pairs packing of StridedA and StridedB (gemm_bf16.cpp): B(p, j) at b[p*rs + j*cs],
// rows (cs == 1) or columns (rs == 1) contiguous, into nr-wide panels of pairs (see
// BSource::pack_bf16_pairs); false for other strides.
bool bf16_pack_pairs_strided(const float* b, index_t rs, index_t cs, index_t kc, index_t kc_pad,
                             index_t nc, index_t nr, std::uint16_t* dst);
// The same pairs from columns each contiguous in k at its own place: B(p, j) at
// b[col_off[j] + p] (ColumnsB); false for panels wider than its buffers (64).
bool bf16_pack_pairs_columns(const float* b, const index_t* col_off, index_t kc, index_t kc_pad,
                             index_t nc, index_t nr, std::uint16_t* dst);
// The same pairs from runs each contiguous along the panel's width at its own place:
// element (p, j) at b[row_off[p] + j] (RowsB's rows of B; ColumnsA's columns of A, j = i).
void bf16_pack_pairs_runs(const float* b, const index_t* row_off, index_t kc, index_t kc_pad,
                          index_t nc, index_t nr, std::uint16_t* dst);
// The rows packing of StridedA (gemm_bf16.cpp): A(i, p) at a[i*rs + p*cs], rows contiguous
// (cs == 1), into mr-tall panels of rows of 32 k (see ASource::pack_bf16_rows); false for
// other strides.
bool bf16_pack_rows_strided(const float* a, index_t rs, index_t cs, index_t kc, index_t kc_pad,
                            index_t mc, index_t mr, std::uint16_t* dst);

// Supplies packed blocks of A: rows [ic, ic+mc) x cols [pc, pc+kc) as MR-tall panels
// (panel r at r*kc, element (i, p) of a panel at p*MR + i; rows past mc zero). Returns a
// pointer to the block: `scratch` (room for round_up(mc, MR) x kc elements) after packing, or
// memory of its own.
template <typename T>
struct ASource {
  virtual ~ASource() = default;
  virtual const T* block(index_t ic, index_t mc, index_t pc, index_t kc, index_t mr,
                         T* scratch) const = 0;
  // For the bf16 GEMM (gemm_bf16.h): packs the same block straight into mr-tall panels of
  // bf16 pairs along k (panel r at r * mr * kc_pad, element (i, p) at (p/2)*2mr + 2i + p%2;
  // k past kc and rows past mc zero), where the source does that faster than block() and a
  // conversion: the same bits. False (the default): not done.
  virtual bool pack_bf16_pairs(index_t /*ic*/, index_t /*mc*/, index_t /*pc*/, index_t /*kc*/,
                               index_t /*kc_pad*/, index_t /*mr*/,
                               std::uint16_t* /*dst*/) const {
    return false;
  }
  // The same for AMX's A tiles: mr-tall panels (panel r at r * mr * kc_pad) of rows of 32 k,
  // element (i, p) at (p/32)*32mr + 32i + p%32 (k past kc and rows past mc zero).
  virtual bool pack_bf16_rows(index_t /*ic*/, index_t /*mc*/, index_t /*pc*/, index_t /*kc*/,
                              index_t /*kc_pad*/, index_t /*mr*/,
                              std::uint16_t* /*dst*/) const {
    return false;
  }
};

// Packs rows [pc, pc+kc) x cols [jc, jc+nc) of B into NR-wide panels at dst (panel q at
// q*kc, element (p, j) of a panel at p*NR + j; columns past nc zero).
template <typename T>
struct BSource {
  virtual ~BSource() = default;
  virtual void pack(index_t pc, index_t kc, index_t jc, index_t nc, index_t nr, T* dst) const = 0;
  // Asks the caches for part `part` of `parts` of the source of block (pc, kc, jc, nc), to be
  // packed next: the loop nest spreads these requests over the current block's arithmetic, so
  // a B streamed from memory (a Linear weight) arrives while it computes. Optional.
  virtual void prefetch(index_t /*pc*/, index_t /*kc*/, index_t /*jc*/, index_t /*nc*/,
                        index_t /*part*/, index_t /*parts*/) const {}
  // For the bf16 GEMM (gemm_bf16.h): packs the same block straight into bf16 pairs along k
  // (panel q at q * nr * kc_pad, element (p, j) at (p/2)*2nr + 2j + p%2; k past kc and
  // columns past nc zero), where the source does that faster than pack() and a conversion
  // of the packed panels: the same bits. False (the default): not done.
  virtual bool pack_bf16_pairs(index_t /*pc*/, index_t /*kc*/, index_t /*kc_pad*/,
                               index_t /*jc*/, index_t /*nc*/, index_t /*nr*/,
                               std::uint16_t* /*dst*/) const {
    return false;
  }
};


// A strided matrix: element (i, j) at p[i*rs + j*cs].
template <typename T>
struct StridedA final : ASource<T> {
  const T* p;
  index_t rs, cs;
  StridedA(const T* p_, index_t rs_, index_t cs_) : p(p_), rs(rs_), cs(cs_) {}
  const T* block(index_t ic, index_t mc, index_t pc, index_t kc, index_t mr,
                 T* scratch) const override;
  // A's pairs are those of B = A^T (element (p, i)): bf16_pack_pairs_strided with the strides
  // swapped.
  bool pack_bf16_pairs(index_t ic, index_t mc, index_t pc, index_t kc, index_t kc_pad,
                       index_t mr, std::uint16_t* dst) const override {
    if constexpr (std::is_same_v<T, float>)
      return bf16_pack_pairs_strided(p + ic * rs + pc * cs, cs, rs, kc, kc_pad, mc, mr, dst);
    return false;
  }
  bool pack_bf16_rows(index_t ic, index_t mc, index_t pc, index_t kc, index_t kc_pad,
                      index_t mr, std::uint16_t* dst) const override {
    if constexpr (std::is_same_v<T, float>)
      return bf16_pack_rows_strided(p + ic * rs + pc * cs, rs, cs, kc, kc_pad, mc, mr, dst);
    return false;
  }
};

template <typename T>
struct StridedB final : BSource<T> {
  const T* p;
  index_t rs, cs;
  StridedB(const T* p_, index_t rs_, index_t cs_) : p(p_), rs(rs_), cs(cs_) {}
  void pack(index_t pc, index_t kc, index_t jc, index_t nc, index_t nr, T* dst) const override;
  void prefetch(index_t pc, index_t kc, index_t jc, index_t nc, index_t part,
                index_t parts) const override;
  bool pack_bf16_pairs(index_t pc, index_t kc, index_t kc_pad, index_t jc, index_t nc,
                       index_t nr, std::uint16_t* dst) const override {
    if constexpr (std::is_same_v<T, float>)
      return bf16_pack_pairs_strided(p + pc * rs + jc * cs, rs, cs, kc, kc_pad, nc, nr, dst);
    return false;
  }
};

// B with each column contiguous in k at a place of its own: B(p, j) = base[col_off[j] + p],
// e.g. one kernel tap's rows of channels-last images (conv_valid_taps.h).
template <typename T>
struct ColumnsB final : BSource<T> {
  const T* base;
  const index_t* col_off;
  ColumnsB(const T* b, const index_t* off) : base(b), col_off(off) {}
  void pack(index_t pc, index_t kc, index_t jc, index_t nc, index_t nr, T* dst) const override;
  bool pack_bf16_pairs(index_t pc, index_t kc, index_t kc_pad, index_t jc, index_t nc,
                       index_t nr, std::uint16_t* dst) const override {
    if constexpr (std::is_same_v<T, float>)
      return bf16_pack_pairs_columns(base + pc, col_off + jc, kc, kc_pad, nc, nr, dst);
    return false;
  }
};

// B with each row contiguous at a place of its own: B(p, j) = base[row_off[p] + j], e.g. the
// channels-last pixels under one kernel tap (the valid-taps weight gradient).
template <typename T>
struct RowsB final : BSource<T> {
  const T* base;
  const index_t* row_off;
  RowsB(const T* b, const index_t* off) : base(b), row_off(off) {}
  void pack(index_t pc, index_t kc, index_t jc, index_t nc, index_t nr, T* dst) const override;
  bool pack_bf16_pairs(index_t pc, index_t kc, index_t kc_pad, index_t jc, index_t nc,
                       index_t nr, std::uint16_t* dst) const override {
    if constexpr (std::is_same_v<T, float>) {
      bf16_pack_pairs_runs(base + jc, row_off + pc, kc, kc_pad, nc, nr, dst);
      return true;
    }
    return false;
  }
};

// A with each column contiguous at a place of its own: A(i, p) = base[col_off[p] + i], e.g.
// grad_y's channels-last pixels (the valid-taps weight gradient).
template <typename T>
struct ColumnsA final : ASource<T> {
  const T* base;
  const index_t* col_off;
  ColumnsA(const T* b, const index_t* off) : base(b), col_off(off) {}
  const T* block(index_t ic, index_t mc, index_t pc, index_t kc, index_t mr,
                 T* scratch) const override;
  bool pack_bf16_pairs(index_t ic, index_t mc, index_t pc, index_t kc, index_t kc_pad,
                       index_t mr, std::uint16_t* dst) const override {
    if constexpr (std::is_same_v<T, float>) {
      bf16_pack_pairs_runs(base + ic, col_off + pc, kc, kc_pad, mc, mr, dst);
      return true;
    }
    return false;
  }
};

// A matrix packed once, whole, for the current kernel (e.g. conv weights, shared read-only
// by the threads that each multiply it with their own images).
template <typename T>
class PackedA final : public ASource<T> {
 public:
  PackedA(index_t M, index_t K, const T* A, index_t rs, index_t cs);
  const T* block(index_t ic, index_t mc, index_t pc, index_t kc, index_t mr,
                 T* scratch) const override;

 private:
  index_t m_pad_;
  Scratch<T> data_;
};

// Views of a sub-block of an operand: rows from row0 of A, columns from col0 of B (for
// splitting a GEMM across threads).
template <typename T>
struct OffsetA final : ASource<T> {
  const ASource<T>& a;
  index_t row0;
  OffsetA(const ASource<T>& a_, index_t r) : a(a_), row0(r) {}
  const T* block(index_t ic, index_t mc, index_t pc, index_t kc, index_t mr,
                 T* scratch) const override {
    return a.block(row0 + ic, mc, pc, kc, mr, scratch);
  }
};

template <typename T>
struct OffsetB final : BSource<T> {
  const BSource<T>& b;
  index_t col0;
  OffsetB(const BSource<T>& b_, index_t c) : b(b_), col0(c) {}
  void pack(index_t pc, index_t kc, index_t jc, index_t nc, index_t nr, T* dst) const override {
    b.pack(pc, kc, col0 + jc, nc, nr, dst);
  }
  void prefetch(index_t pc, index_t kc, index_t jc, index_t nc, index_t part,
                index_t parts) const override {
    b.prefetch(pc, kc, col0 + jc, nc, part, parts);
  }
  bool pack_bf16_pairs(index_t pc, index_t kc, index_t kc_pad, index_t jc, index_t nc,
                       index_t nr, std::uint16_t* dst) const override {
    return b.pack_bf16_pairs(pc, kc, kc_pad, col0 + jc, nc, nr, dst);
  }
};

// Splits an M x N x K product over the OpenMP threads: each takes a contiguous range of whole
// mr x nr register tiles along the side with more of them and runs
// part(row0, rows, col0, cols) on it; small products (or one thread) run whole on the calling
// thread. Every C element is then computed by one thread over all of K. Call outside
// parallel regions.
template <typename Part>
void split_gemm(index_t M, index_t N, index_t K, index_t mr, index_t nr, Part&& part) {
  const int threads = max_threads();
  const index_t m_blocks = ceil_div(M, mr), n_blocks = ceil_div(N, nr);
  if (threads <= 1 || (m_blocks < 2 && n_blocks < 2) ||
      static_cast<double>(M) * N * K < 64.0 * 64 * 64) {
    part(index_t(0), M, index_t(0), N);
    return;
  }
  const bool split_n = n_blocks >= m_blocks;
  const index_t blocks = split_n ? n_blocks : m_blocks;
  const index_t step = split_n ? nr : mr;
  const int parts = static_cast<int>(blocks < threads ? blocks : threads);
#pragma omp parallel num_threads(parts)
  {
    const index_t t = thread_id();
    const index_t lo = blocks * t / parts * step;
    const index_t end = blocks * (t + 1) / parts * step;
    const index_t hi = end < (split_n ? N : M) ? end : (split_n ? N : M);
    if (hi > lo) {
      if (split_n) part(index_t(0), M, lo, hi - lo);
      else part(lo, hi - lo, index_t(0), N);
    }
  }
}

// General GEMM on the calling thread: C[M,N] (+)= A . B from any operand sources.
// `pack` is scratch of gemm_scratch_size<T>(M, N) elements (nullptr: allocated here).
template <typename T>
void gemm(index_t M, index_t N, index_t K, const ASource<T>& A, const BSource<T>& B, T* C,
          index_t ldc, bool accumulate, T* pack = nullptr);

// The same, split over the OpenMP threads by blocks of M or N. Call outside parallel regions.
template <typename T>
void gemm_parallel(index_t M, index_t N, index_t K, const ASource<T>& A, const BSource<T>& B,
                   T* C, index_t ldc, bool accumulate);

// Serial GEMM on the calling thread. `pack` is per-call scratch (see gemm_scratch_size);
// pass nullptr to allocate internally.
template <typename T>
void gemm(index_t M, index_t N, index_t K, const T* A, index_t a_rs, index_t a_cs, const T* B,
          index_t b_rs, index_t b_cs, T* C, index_t ldc, bool accumulate, T* pack = nullptr);

// Elements of scratch `gemm` needs for an M x N product (A block + B block; for any smaller
// product too).
template <typename T>
index_t gemm_scratch_size(index_t M, index_t N);

// GEMM split over the OpenMP threads by blocks of M or N (whichever has more blocks).
// Call from outside a parallel region.
template <typename T>
void gemm_parallel(index_t M, index_t N, index_t K, const T* A, index_t a_rs, index_t a_cs,
                   const T* B, index_t b_rs, index_t b_cs, T* C, index_t ldc, bool accumulate);

// C[M,N] (+)= A . B^T where row i of A is a_rows[i] and row j of B is b_rows[j], each K
// contiguous elements. With the ISA's dot kernel (GemmKernel::nt_rows, AVX-512): dot products
// vectorised along K (one vector of partial sums per result, reduced in a fixed order), no
// packing at all, which is what the conv weight gradient wants: both operands are long
// contiguous rows (the output positions), and the rows of the column matrix are runs of the
// padded image. use_dot=false (or no dot kernel): the packed GEMM, better when K is short and
// M*N large (the dot form pays one horizontal reduction per result).
// bf16 (float only): operands rounded to bfloat16, the packed bf16 GEMM (gemm_bf16.h); on the
// emulated bf16 path, where float32 takes the dot kernel, that kernel on rounded row copies.
template <typename T>
void gemm_nt_rows(index_t M, index_t N, index_t K, const T* const* a_rows, const T* const* b_rows,
                  T* C, index_t ldc, bool accumulate, bool use_dot = true,
                  Precision precision = Precision::f32);

}  // namespace fastconv
