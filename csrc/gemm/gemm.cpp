// Packed GEMM loop nest (Goto/BLIS): for each nc-wide block of B, for each kc-deep slab,
// pack B into NR-wide micro-panels; for each mc-tall block of A, pack A into MR-tall
// micro-panels; then sweep the register tile over the block. Packing makes every operand
// layout (transposed, strided) look the same to the micro-kernel and keeps its loads
// sequential. Edge panels are zero-padded so the micro-kernel always runs a full tile.
#include "gemm/gemm.h"

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "gemm/gemm_bf16.h"

#if defined(FASTCONV_X86)
#include <immintrin.h>  // _mm_sfence
#endif

namespace fastconv {
namespace {

// Pack rows [0, mc) x cols [0, kc) of A into MR-tall panels: panel r holds A[r*MR + i, p]
// at ap[r*MR*kc + p*MR + i]; rows past mc are zero.
template <typename T>
void pack_a(index_t mc, index_t kc, const T* A, index_t rs, index_t cs, index_t MR, T* ap) {
  for (index_t r = 0; r < mc; r += MR) {
    const index_t m = std::min(MR, mc - r);
    T* dst = ap + r * kc;
    if (cs == 1) {
      for (index_t p = 0; p < kc; ++p) {
        index_t i = 0;
        for (; i < m; ++i) dst[p * MR + i] = A[(r + i) * rs + p];
        for (; i < MR; ++i) dst[p * MR + i] = T(0);
      }
    } else {
      for (index_t p = 0; p < kc; ++p) {
        const T* src = A + r * rs + p * cs;
        index_t i = 0;
        for (; i < m; ++i) dst[p * MR + i] = src[i * rs];
        for (; i < MR; ++i) dst[p * MR + i] = T(0);
      }
    }
  }
}

// Copies one row segment of n <= NR values into a panel row, zero-filling it to NR.
template <typename T>
__attribute__((always_inline)) inline void pack_b_row(const T* src, index_t n, index_t NR,
                                                      T* dst) {
  // An inline loop, not memcpy: a library call per 128-byte row costs more than the copy.
  index_t j = 0;
  for (; j < n; ++j) dst[j] = src[j];
  for (; j < NR; ++j) dst[j] = T(0);
}

// Pack rows [0, kc) x cols [0, nc) of B into NR-wide panels: panel q holds B[p, q*NR + j]
// at bp[q*NR*kc + p*NR + j]; columns past nc are zero.
template <typename T>
__attribute__((always_inline)) inline void pack_b(index_t kc, index_t nc, const T* B, index_t rs,
                                                  index_t cs, index_t NR, T* bp) {
  if (cs == 1) {
    // Rows in blocks of kRows, each block dealt out panel by panel: kRows sequential read
    // streams (B's rows) and one sequential write stream (kRows consecutive panel rows).
    // Row by row instead, the panels are written kc*NR apart: a multiple of 4 KiB, so every
    // panel's row falls in the same L1 set and evicts the last (~1.45x slower on a Linear
    // weight); panel by panel, B is walked down its rows, a new page every row or two.
    constexpr index_t kRows = 4;
    for (index_t p0 = 0; p0 < kc; p0 += kRows) {
      const index_t rows = std::min(kRows, kc - p0);
      for (index_t q = 0; q < nc; q += NR) {
        const index_t n = std::min(NR, nc - q);
        T* dst = bp + q * kc + p0 * NR;
        for (index_t r = 0; r < rows; ++r) pack_b_row(B + (p0 + r) * rs + q, n, NR, dst + r * NR);
      }
    }
    return;
  }
  for (index_t q = 0; q < nc; q += NR) {
    const index_t n = std::min(NR, nc - q);
    T* dst = bp + q * kc;
    for (index_t j = 0; j < n; ++j) {
      const T* src = B + (q + j) * cs;
      for (index_t p = 0; p < kc; ++p) dst[p * NR + j] = src[p * rs];
    }
    for (index_t j = n; j < NR; ++j)
      for (index_t p = 0; p < kc; ++p) dst[p * NR + j] = T(0);
  }
}

// Columns each contiguous in k (ColumnsB) into NR-wide panels, by blocks of 16 k: reads
// run along each column, writes stay within a few panel rows.
template <typename T>
__attribute__((always_inline)) inline void pack_columns(index_t kc, index_t nc, const T* base,
                                                        const index_t* col_off, index_t NR,
                                                        T* bp) {
  constexpr index_t kBlock = 16;
  for (index_t q = 0; q < nc; q += NR) {
    const index_t n = std::min(NR, nc - q);
    T* panel = bp + q * kc;
    for (index_t p0 = 0; p0 < kc; p0 += kBlock) {
      const index_t rows = std::min(kBlock, kc - p0);
      T* dst = panel + p0 * NR;
      for (index_t j = 0; j < n; ++j) {
        const T* src = base + col_off[q + j] + p0;
        for (index_t p = 0; p < rows; ++p) dst[p * NR + j] = src[p];
      }
      for (index_t p = 0; p < rows; ++p) std::fill(dst + p * NR + n, dst + (p + 1) * NR, T(0));
    }
  }
}

// Runs each contiguous along the panel's width (RowsB's rows, ColumnsA's columns) into
// NR-wide panels: element (p, j) of panel q from base[off[p] + q + j].
template <typename T>
__attribute__((always_inline)) inline void pack_runs(index_t kc, index_t nc, const T* base,
                                                     const index_t* off, index_t NR, T* bp) {
  for (index_t q = 0; q < nc; q += NR) {
    const index_t n = std::min(NR, nc - q);
    T* panel = bp + q * kc;
    for (index_t p = 0; p < kc; ++p) {
      const T* src = base + off[p] + q;
      T* dst = panel + p * NR;
      for (index_t j = 0; j < n; ++j) dst[j] = src[j];
      for (index_t j = n; j < NR; ++j) dst[j] = T(0);
    }
  }
}

FASTCONV_CLONED(pack_runs_any, pack_runs,
                (index_t kc, index_t nc, const T* base, const index_t* off, index_t NR, T* bp),
                (kc, nc, base, off, NR, bp))

FASTCONV_CLONED(pack_columns_any, pack_columns,
                (index_t kc, index_t nc, const T* base, const index_t* col_off, index_t NR,
                 T* bp),
                (kc, nc, base, col_off, NR, bp))

// Cloned per ISA: the row copies of the common (contiguous) case become AVX-512 moves.
FASTCONV_CLONED(pack_b_any, pack_b,
                (index_t kc, index_t nc, const T* B, index_t rs, index_t cs, index_t NR, T* bp),
                (kc, nc, B, rs, cs, NR, bp))

}  // namespace

index_t balanced_block(index_t total, index_t max_block) {
  return ceil_div(total, ceil_div(total, max_block));
}

namespace {

// Elements of the packed A block of an M-row product: mc x kc, or fewer rows when M is short.
template <typename T>
index_t a_block_size(const GemmConfig<T>& k, index_t M) {
  return std::min(k.mc, round_up(std::max<index_t>(M, 1), k.mr)) * k.kc;
}

}  // namespace

template <typename T>
index_t gemm_scratch_size(index_t M, index_t N) {
  const GemmConfig<T>& k = gemm_config<T>();
  return a_block_size(k, M) + k.kc * std::min(k.nc, round_up(std::max<index_t>(N, 1), k.nr));
}

template <typename T>
const T* StridedA<T>::block(index_t ic, index_t mc, index_t pc, index_t kc, index_t mr,
                            T* scratch) const {
  pack_a(mc, kc, p + ic * rs + pc * cs, rs, cs, mr, scratch);
  return scratch;
}

template <typename T>
void StridedB<T>::pack(index_t pc, index_t kc, index_t jc, index_t nc, index_t nr, T* dst) const {
  pack_b_any(kc, nc, p + pc * rs + jc * cs, rs, cs, nr, dst);
}

template <typename T>
void ColumnsB<T>::pack(index_t pc, index_t kc, index_t jc, index_t nc, index_t nr, T* dst) const {
  pack_columns_any(kc, nc, base + pc, col_off + jc, nr, dst);
}

template <typename T>
void RowsB<T>::pack(index_t pc, index_t kc, index_t jc, index_t nc, index_t nr, T* dst) const {
  pack_runs_any(kc, nc, base + jc, row_off + pc, nr, dst);
}

// mr-tall panels (panel r at r*kc) are nr-wide panels of A^T: the same runs.
template <typename T>
const T* ColumnsA<T>::block(index_t ic, index_t mc, index_t pc, index_t kc, index_t mr,
                            T* scratch) const {
  pack_runs_any(kc, mc, base + ic, col_off + pc, mr, scratch);
  return scratch;
}

// The block's source lines, as rows of B (cs == 1) or of B^T (rs == 1), in `parts` slices.
template <typename T>
void StridedB<T>::prefetch(index_t pc, index_t kc, index_t jc, index_t nc, index_t part,
                           index_t parts) const {
  const bool by_rows = cs == 1;
  if (!by_rows && rs != 1) return;  // a gather: no lines worth asking for
  const index_t lines = by_rows ? kc : nc;  // contiguous runs of `len` elements
  const index_t len = by_rows ? nc : kc;
  const index_t stride = by_rows ? rs : cs;
  const T* first = p + pc * rs + jc * cs;
  constexpr index_t kLine = 64 / sizeof(T);
  for (index_t r = lines * part / parts; r < lines * (part + 1) / parts; ++r)
    for (index_t e = 0; e < len; e += kLine) __builtin_prefetch(first + r * stride + e, 0, 2);
}

// Layout: the k-block starting at pc holds all of M (padded to MR) at pc*m_pad; within it the
// m-block starting at ic is at ic*kc_eff: exactly what the loop nest asks for, block by block.
template <typename T>
PackedA<T>::PackedA(index_t M, index_t K, const T* A, index_t rs, index_t cs) {
  const GemmConfig<T>& k = gemm_config<T>();
  m_pad_ = ceil_div(M, k.mr) * k.mr;
  data_ = make_scratch<T>(checked_mul(m_pad_, K));
  const index_t kcb = balanced_block(K, k.kc);  // the loop nest's k-blocks
  const index_t panels = m_pad_ / k.mr;
  for_each_panel(ceil_div(K, kcb) * panels, M * K, [&](index_t t) {
    const index_t pc = t / panels * kcb, kc = std::min(kcb, K - pc), i0 = t % panels * k.mr;
    pack_a(std::min(k.mr, M - i0), kc, A + i0 * rs + pc * cs, rs, cs, k.mr,
           data_.get() + pc * m_pad_ + i0 * kc);
  });
}

template <typename T>
const T* PackedA<T>::block(index_t ic, index_t, index_t pc, index_t kc, index_t, T*) const {
  return data_.get() + pc * m_pad_ + ic * kc;
}

template <typename T>
void gemm(index_t M, index_t N, index_t K, const ASource<T>& A, const BSource<T>& B, T* C,
          index_t ldc, bool accumulate, T* pack) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate)
      for (index_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, T(0));
    return;
  }
  const GemmConfig<T>& k = gemm_config<T>();
  Scratch<T> owned;
  if (!pack) {
    owned = make_scratch<T>(gemm_scratch_size<T>(M, N));
    pack = owned.get();
  }
  T* ap = pack;
  T* bp = pack + a_block_size(k, M);
  // K in equal blocks (e.g. 288 = 2 x 144, not 256 + 32): no short block whose C-tile
  // loads and stores would cost as much as its arithmetic.
  const index_t kcb = balanced_block(K, k.kc);
  const index_t panels = ceil_div(M, k.mr);  // row panels of A: the prefetch slices
  // The B blocks (kc x nc), column block by column block and k-block by k-block within.
  // With a single block of rows (M <= mc, e.g. a batch of 64 times a weight), k-blocks
  // outermost instead: each A block is then packed once, not once per column block. Each C
  // element still sums its k-blocks in order, so both orders give the same bits.
  const bool one_row_block = M <= k.mc;
  std::vector<std::pair<index_t, index_t>> blocks;  // (jc, pc)
  if (one_row_block) {
    for (index_t pc = 0; pc < K; pc += kcb)
      for (index_t jc = 0; jc < N; jc += k.nc) blocks.emplace_back(jc, pc);
  } else {
    for (index_t jc = 0; jc < N; jc += k.nc)
      for (index_t pc = 0; pc < K; pc += kcb) blocks.emplace_back(jc, pc);
  }
  // A C larger than L2 that this call writes once (one k-block, nothing to add to), at
  // aligned rows: non-temporal stores (e.g. the 9 MB weight gradient of a Linear layer).
  const bool stream = k.micro_stream && !accumulate && kcb >= K &&
                      M * N * index_t(sizeof(T)) >= (index_t(1) << 21) &&
                      reinterpret_cast<std::uintptr_t>(C) % 64 == 0 &&
                      (ldc * index_t(sizeof(T))) % 64 == 0;
  const MicroKernelFn<T> micro = stream ? k.micro_stream : k.micro;
  const T* a_packed = nullptr;  // with one row block: the A block of k-block a_pc
  index_t a_pc = -1;
  // Each A micro-panel (MR x kc) stays in L1 while the B block's micro-panels (kc x NR) stream
  // past it from L3; the A block (mc x kc) sits in L2 (block sizes: gemm_config.cpp).
  for (std::size_t bi = 0; bi < blocks.size(); ++bi) {
    const auto [jc, pc] = blocks[bi];
    const index_t nc = std::min(k.nc, N - jc);
    const index_t kc = std::min(kcb, K - pc);
    const bool acc = accumulate || pc > 0;
    B.pack(pc, kc, jc, nc, k.nr, bp);
    // The B block packed next, asked for from memory one slice per row panel of A.
    const bool has_next = bi + 1 < blocks.size();
    const auto [next_jc, next_pc] = has_next ? blocks[bi + 1] : std::pair<index_t, index_t>{};
    const index_t next_kc = std::min(kcb, K - next_pc);
    const index_t next_nc = std::min(k.nc, N - next_jc);
    for (index_t ic = 0; ic < M; ic += k.mc) {
      const index_t mc = std::min(k.mc, M - ic);
      const T* a;
      if (one_row_block && a_pc == pc) {
        a = a_packed;
      } else {
        a = A.block(ic, mc, pc, kc, k.mr, ap);
        a_packed = a;
        a_pc = pc;
      }
      for (index_t ir = 0; ir < mc; ir += k.mr) {
        const index_t mr = std::min(k.mr, mc - ir);
        if (has_next) B.prefetch(next_pc, next_kc, next_jc, next_nc, (ic + ir) / k.mr, panels);
        for (index_t jr = 0; jr < nc; jr += k.nr) {
          const index_t nr = std::min(k.nr, nc - jr);
          micro(kc, a + ir * kc, bp + jr * kc, C + (ic + ir) * ldc + jc + jr, ldc, acc, mr, nr);
        }
      }
    }
  }
#if defined(FASTCONV_X86)
  if (stream) _mm_sfence();  // the streamed lines visible before any later read of C
#endif
}

template <typename T>
void gemm_parallel(index_t M, index_t N, index_t K, const ASource<T>& A, const BSource<T>& B,
                   T* C, index_t ldc, bool accumulate) {
  const GemmConfig<T>& k = gemm_config<T>();
  split_gemm(M, N, K, k.mr, k.nr, [&](index_t m0, index_t m, index_t n0, index_t n) {
    gemm(m, n, K, OffsetA<T>(A, m0), OffsetB<T>(B, n0), C + m0 * ldc + n0, ldc, accumulate);
  });
}

template <typename T>
void gemm(index_t M, index_t N, index_t K, const T* A, index_t a_rs, index_t a_cs, const T* B,
          index_t b_rs, index_t b_cs, T* C, index_t ldc, bool accumulate, T* pack) {
  gemm(M, N, K, StridedA<T>(A, a_rs, a_cs), StridedB<T>(B, b_rs, b_cs), C, ldc, accumulate, pack);
}

template <typename T>
void gemm_parallel(index_t M, index_t N, index_t K, const T* A, index_t a_rs, index_t a_cs,
                   const T* B, index_t b_rs, index_t b_cs, T* C, index_t ldc, bool accumulate) {
  gemm_parallel(M, N, K, StridedA<T>(A, a_rs, a_cs), StridedB<T>(B, b_rs, b_cs), C, ldc,
                accumulate);
}

template struct StridedA<float>;
template struct StridedA<double>;
template struct StridedB<float>;
template struct StridedB<double>;
template struct ColumnsB<float>;
template struct ColumnsB<double>;
template struct RowsB<float>;
template struct RowsB<double>;
template struct ColumnsA<float>;
template struct ColumnsA<double>;
template class PackedA<float>;
template class PackedA<double>;
template void gemm<float>(index_t, index_t, index_t, const ASource<float>&, const BSource<float>&,
                          float*, index_t, bool, float*);
template void gemm<double>(index_t, index_t, index_t, const ASource<double>&,
                           const BSource<double>&, double*, index_t, bool, double*);
template void gemm_parallel<float>(index_t, index_t, index_t, const ASource<float>&,
                                   const BSource<float>&, float*, index_t, bool);
template void gemm_parallel<double>(index_t, index_t, index_t, const ASource<double>&,
                                    const BSource<double>&, double*, index_t, bool);
template index_t gemm_scratch_size<float>(index_t, index_t);
template index_t gemm_scratch_size<double>(index_t, index_t);
template void gemm<float>(index_t, index_t, index_t, const float*, index_t, index_t, const float*,
                          index_t, index_t, float*, index_t, bool, float*);
template void gemm<double>(index_t, index_t, index_t, const double*, index_t, index_t,
                           const double*, index_t, index_t, double*, index_t, bool, double*);
template void gemm_parallel<float>(index_t, index_t, index_t, const float*, index_t, index_t,
                                   const float*, index_t, index_t, float*, index_t, bool);
template void gemm_parallel<double>(index_t, index_t, index_t, const double*, index_t, index_t,
                                    const double*, index_t, index_t, double*, index_t, bool);

}  // namespace fastconv

namespace fastconv {
namespace {

// Operands given by row pointers (row i of A: a[i][0..K); row j of B^T: b[j][0..K)),
// packed like any other, for the packed-GEMM form of gemm_nt_rows.
template <typename T>
struct RowsA final : ASource<T> {
  const T* const* rows;
  explicit RowsA(const T* const* r) : rows(r) {}
  const T* block(index_t ic, index_t mc, index_t pc, index_t kc, index_t mr,
                 T* scratch) const override {
    for (index_t r = 0; r < mc; r += mr) {
      T* dst = scratch + r * kc;
      const index_t m = std::min(mr, mc - r);
      for (index_t p = 0; p < kc; ++p) {
        index_t i = 0;
        for (; i < m; ++i) dst[p * mr + i] = rows[ic + r + i][pc + p];
        for (; i < mr; ++i) dst[p * mr + i] = T(0);
      }
    }
    return scratch;
  }
};

template <typename T>
struct RowsBT final : BSource<T> {
  const T* const* rows;  // B(k, j) = rows[j][k]
  explicit RowsBT(const T* const* r) : rows(r) {}
  void pack(index_t pc, index_t kc, index_t jc, index_t nc, index_t nr, T* dst) const override {
    for (index_t q = 0; q < nc; q += nr) {
      T* panel = dst + q * kc;
      const index_t n = std::min(nr, nc - q);
      for (index_t j = 0; j < nr; ++j) {
        if (j < n) {
          const T* src = rows[jc + q + j] + pc;
          for (index_t p = 0; p < kc; ++p) panel[p * nr + j] = src[p];
        } else {
          for (index_t p = 0; p < kc; ++p) panel[p * nr + j] = T(0);
        }
      }
    }
  }
};

}  // namespace

template <typename T>
void gemm_nt_rows(index_t M, index_t N, index_t K, const T* const* a, const T* const* b, T* C,
                  index_t ldc, bool accumulate, bool use_dot, Precision precision) {
  const bool bf16 = std::is_same_v<T, float> && precision == Precision::bf16;
  const NtRowsFn<T> fast = use_dot && !bf16 ? gemm_config<T>().nt_rows : nullptr;
  if (fast) {
    fast(M, N, K, a, b, C, ldc, accumulate);
    return;
  }
  if constexpr (std::is_same_v<T, float>) {
    // The emulated bf16 path gives float32's bits on rounded operands (gemm_bf16.h), so where
    // float32 takes the dot kernel it does too, on rounded copies of the rows.
    const NtRowsFn<float> dot = gemm_config<float>().nt_rows;
    if (bf16 && use_dot && dot && bf16_gemm_config().path == Bf16Path::emulated) {
      // (This thread's buffer, kept: the weight gradient calls this once per image.)
      thread_local std::vector<float> copy;
      copy.resize(checked_mul(checked_add(M, N), K));
      std::vector<const float*> ra(M), rb(N);
      const auto round_rows = [&](const float* const* rows, index_t n, float* dst,
                                  std::vector<const float*>& out) {
        for (index_t i = 0; i < n; ++i, dst += K) {
          for (index_t p = 0; p < K; ++p) dst[p] = round_to_bf16(rows[i][p]);
          out[i] = dst;
        }
      };
      round_rows(a, M, copy.data(), ra);
      round_rows(b, N, copy.data() + M * K, rb);
      dot(M, N, K, ra.data(), rb.data(), C, ldc, accumulate);
      return;
    }
  }
  // Rows at a common stride pack faster as strided operands (no pointer chasing).
  const auto uniform = [K](const T* const* rows, index_t n, index_t& stride) {
    stride = n > 1 ? rows[1] - rows[0] : K;
    for (index_t i = 2; i < n; ++i)
      if (rows[i] - rows[i - 1] != stride) return false;
    return true;
  };
  index_t sa = 0, sb = 0;
  const auto run = [&](const ASource<T>& A, const BSource<T>& B) {
    if constexpr (std::is_same_v<T, float>)
      if (bf16) return gemm_bf16(M, N, K, Bf16FromF32A(A), B, C, ldc, accumulate);
    gemm<T>(M, N, K, A, B, C, ldc, accumulate);
  };
  if (uniform(a, M, sa) && uniform(b, N, sb))
    run(StridedA<T>(a[0], sa, 1), StridedB<T>(b[0], 1, sb));
  else
    run(RowsA<T>(a), RowsBT<T>(b));
}

template void gemm_nt_rows<float>(index_t, index_t, index_t, const float* const*,
                                  const float* const*, float*, index_t, bool, bool, Precision);
template void gemm_nt_rows<double>(index_t, index_t, index_t, const double* const*,
                                   const double* const*, double*, index_t, bool, bool, Precision);

}  // namespace fastconv
