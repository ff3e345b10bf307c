// The bfloat16 GEMM's packing (float32 panels converted into each path's layout) and loop
// nest (see gemm_bf16.h). Compiled for the baseline ISA, the conversions also cloned per ISA
// (integer arithmetic: the same bits on each): every path, hardware or twin, packs with this
// same code.
#include "gemm/gemm_bf16.h"

#include <algorithm>
#include <cstring>

namespace fastconv {

namespace {

// Rows p < kc of src ((p, j) at p*ld + j, or at off[p] + j given offsets; j < n) into
// `width`-wide pairs along k:
// (p/2)*2width + 2j + p%2, k past kc and columns past n zero. An A panel (n = width = ld = mr,
// (i, p) at p*mr + i), a B panel (nr) or rows of B in place alike. One 32-bit word per pair,
// the even k in its low half (vdpbf16ps's and AMX B tiles' order), written whole: a loop the
// compiler vectorises (cloned per ISA, common.h).
FASTCONV_CLONES void convert_pairs(index_t n, index_t width, index_t ld, const index_t* off,
                                   index_t kc, index_t kc_pad, const float* src,
                                   std::uint16_t* dst) {
  for (index_t p = 0; p < kc_pad; p += 2) {
    std::uint16_t* d = dst + p * width;  // (p/2)*2width
    if (p >= kc) {
      std::fill(d, d + 2 * width, std::uint16_t(0));
      continue;
    }
    const float* s0 = src + (off ? off[p] : p * ld);
    if (p + 1 < kc) {
      const float* s1 = src + (off ? off[p + 1] : (p + 1) * ld);
      for (index_t j = 0; j < n; ++j) {
        const std::uint32_t pair = bf16_bits(s0[j]) | std::uint32_t(bf16_bits(s1[j])) << 16;
        std::memcpy(d + 2 * j, &pair, sizeof pair);
      }
    } else {  // the last k of an odd kc: its pair's odd half zero
      for (index_t j = 0; j < n; ++j) {
        const std::uint32_t pair = bf16_bits(s0[j]);
        std::memcpy(d + 2 * j, &pair, sizeof pair);
      }
    }
    std::fill(d + 2 * n, d + 2 * width, std::uint16_t(0));
  }
}

// convert_pairs in this ISA's registers where its GEMM kernel has them
// (GemmKernel::bf16_convert_pairs): the same bits.
void to_pairs(index_t n, index_t width, index_t ld, index_t kc, index_t kc_pad,
              const float* src, std::uint16_t* dst, const index_t* off = nullptr) {
  if (const auto convert = gemm_config<float>().bf16_convert_pairs)
    convert(n, width, ld, off, kc, kc_pad, src, dst);
  else
    convert_pairs(n, width, ld, off, kc, kc_pad, src, dst);
}

// The widest panel pairs_from_columns packs (the pairs kernels' nr: 32 and 16).
constexpr index_t kMaxPairsWidth = 64;

using Bf16Pairs16x16Fn = void (*)(const float* const* cols, index_t n, index_t words,
                                  std::uint16_t* dst, index_t width);

// The same pairs from columns of B in place, each contiguous in k ((p, j) at cols[j][p]):
// B^T's rows (a Linear weight in the forward pass), rows of A, or a tap's channels-last
// pixels (ColumnsB). A column's bf16 values in
// k order are its pair words already: blocks of 16 pair rows are made column by column and
// stored row by row, by groups of 16 columns with the ISA's `block16`
// (GemmKernel::bf16_pairs_16x16) where it has one, else (and for the last, partial block of
// k) through a small buffer. (A transposing float32 pack and then a conversion cost 2-3x
// more.)
FASTCONV_CLONES void pairs_from_columns(index_t n, index_t width, const float* const* cols,
                                        index_t kc, index_t kc_pad, std::uint16_t* dst,
                                        Bf16Pairs16x16Fn block16) {
  constexpr index_t kRows = 16;
  std::uint32_t block[kRows][kMaxPairsWidth];
  const float* at[16];
  const index_t pairs = kc_pad / 2;
  for (index_t q0 = 0; q0 < pairs; q0 += kRows) {
    const index_t rows = std::min(kRows, pairs - q0), p0 = 2 * q0;
    const bool whole = p0 + 2 * kRows <= kc;
    if (block16 && whole) {
      for (index_t j0 = 0; j0 < width; j0 += 16) {
        const index_t m = std::clamp<index_t>(n - j0, 0, 16);
        for (index_t j = 0; j < m; ++j) at[j] = cols[j0 + j] + p0;
        block16(at, m, std::min<index_t>(16, width - j0), dst + q0 * 2 * width + 2 * j0, width);
      }
      continue;
    }
    for (index_t j = 0; j < width; ++j) {
      const float* col = j < n ? cols[j] + p0 : nullptr;
      if (j >= n) {
        for (index_t q = 0; q < rows; ++q) block[q][j] = 0;
      } else if (whole) {
        for (index_t q = 0; q < kRows; ++q)
          block[q][j] = bf16_bits(col[2 * q]) | std::uint32_t(bf16_bits(col[2 * q + 1])) << 16;
      } else {  // the last block: k past kc zero
        for (index_t q = 0; q < rows; ++q) {
          const index_t p = p0 + 2 * q;
          const std::uint32_t lo = p < kc ? bf16_bits(col[2 * q]) : 0;
          const std::uint32_t hi = p + 1 < kc ? bf16_bits(col[2 * q + 1]) : 0;
          block[q][j] = lo | hi << 16;
        }
      }
    }
    for (index_t q = 0; q < rows; ++q)
      std::memcpy(dst + (q0 + q) * 2 * width, block[q], sizeof(std::uint32_t) * width);
  }
}

// src: mr x kc (i, p) at p*mr + i. Rows of the packed A at (p/2)*2mr + 2i + p%2 (pairs) or
// (p/32)*32mr + 32i + p%32 (amx_rows), k past kc zero.
void convert_a_bits(index_t mr, index_t kc, index_t kc_pad, Bf16Layout layout, const float* src,
                    std::uint16_t* dst) {
  if (layout == Bf16Layout::pairs) {
    to_pairs(mr, mr, mr, kc, kc_pad, src, dst);
    return;
  }
  for (index_t p = 0; p < kc_pad; ++p) {
    std::uint16_t* d = dst + (p / 32) * 32 * mr + (p % 32);
    if (p < kc)
      for (index_t i = 0; i < mr; ++i) d[32 * i] = bf16_bits(src[p * mr + i]);
    else
      for (index_t i = 0; i < mr; ++i) d[32 * i] = 0;
  }
}

FASTCONV_CLONES void round_panel(index_t n, const float* src, float* dst) {
  for (index_t i = 0; i < n; ++i) dst[i] = round_to_bf16(src[i]);
}

}  // namespace

void bf16_convert_a_panel(const Bf16GemmConfig& k, index_t kc, const float* src, void* dst) {
  if (k.layout == Bf16Layout::f32)
    round_panel(k.mr * kc, src, static_cast<float*>(dst));
  else
    convert_a_bits(k.mr, kc, k.pad_k(kc), k.layout, src, static_cast<std::uint16_t*>(dst));
}

void bf16_convert_b_panel(const Bf16GemmConfig& k, index_t kc, const float* src, void* dst) {
  if (k.layout == Bf16Layout::f32)
    round_panel(k.nr * kc, src, static_cast<float*>(dst));
  else
    to_pairs(k.nr, k.nr, k.nr, kc, k.pad_k(kc), src, static_cast<std::uint16_t*>(dst));
}

bool bf16_pack_pairs_strided(const float* b, index_t rs, index_t cs, index_t kc, index_t kc_pad,
                             index_t nc, index_t nr, std::uint16_t* dst) {
  if ((cs != 1 && rs != 1) || nr > kMaxPairsWidth) return false;
  const Bf16Pairs16x16Fn block16 = gemm_config<float>().bf16_pairs_16x16;
  for (index_t q = 0; q * nr < nc; ++q) {
    const index_t n = std::min(nr, nc - q * nr);
    std::uint16_t* panel = dst + q * nr * kc_pad;
    if (cs == 1) {
      to_pairs(n, nr, rs, kc, kc_pad, b + q * nr, panel);
      continue;
    }
    const float* cols[kMaxPairsWidth];
    for (index_t j = 0; j < n; ++j) cols[j] = b + (q * nr + j) * cs;
    pairs_from_columns(n, nr, cols, kc, kc_pad, panel, block16);
  }
  return true;
}

void bf16_pack_pairs_runs(const float* b, const index_t* row_off, index_t kc, index_t kc_pad,
                          index_t nc, index_t nr, std::uint16_t* dst) {
  for (index_t q = 0; q * nr < nc; ++q)
    to_pairs(std::min(nr, nc - q * nr), nr, 0, kc, kc_pad, b + q * nr, dst + q * nr * kc_pad,
             row_off);
}

bool bf16_pack_pairs_columns(const float* b, const index_t* col_off, index_t kc, index_t kc_pad,
                             index_t nc, index_t nr, std::uint16_t* dst) {
  if (nr > kMaxPairsWidth) return false;
  const Bf16Pairs16x16Fn block16 = gemm_config<float>().bf16_pairs_16x16;
  const float* cols[kMaxPairsWidth];
  for (index_t q = 0; q * nr < nc; ++q) {
    const index_t n = std::min(nr, nc - q * nr);
    for (index_t j = 0; j < n; ++j) cols[j] = b + col_off[q * nr + j];
    pairs_from_columns(n, nr, cols, kc, kc_pad, dst + q * nr * kc_pad, block16);
  }
  return true;
}

namespace {

// Rows of A in place (A(i, p) at a[i*rs + p], contiguous in k) are AMX's A tile rows
// already: each 32 k of a row converted to 64 bytes of bf16, a loop the compiler vectorises.
FASTCONV_CLONES void rows_of_32(index_t m, index_t mr, index_t rs, index_t kc, index_t kc_pad,
                                const float* a, std::uint16_t* dst) {
  for (index_t kb = 0; kb < kc_pad; kb += 32) {
    std::uint16_t* block = dst + kb * mr;  // (p/32)*32mr
    const index_t n = std::clamp<index_t>(kc - kb, 0, 32);
    for (index_t i = 0; i < mr; ++i) {
      std::uint16_t* d = block + 32 * i;
      index_t t = 0;
      if (i < m) {
        const float* src = a + i * rs + kb;
        for (; t < n; ++t) d[t] = bf16_bits(src[t]);
      }
      for (; t < 32; ++t) d[t] = 0;
    }
  }
}

}  // namespace

bool bf16_pack_rows_strided(const float* a, index_t rs, index_t cs, index_t kc, index_t kc_pad,
                            index_t mc, index_t mr, std::uint16_t* dst) {
  if (cs != 1) return false;
  for (index_t r = 0; r * mr < mc; ++r)
    rows_of_32(std::min(mr, mc - r * mr), mr, rs, kc, kc_pad, a + r * mr * rs,
               dst + r * mr * kc_pad);
  return true;
}

index_t bf16_k_block(const Bf16GemmConfig& k, index_t K) {
  return std::min(k.pad_k(balanced_block(K, k.kc)), k.pad_k(K));
}

const void* Bf16FromF32A::block(index_t ic, index_t mc, index_t pc, index_t kc, void* scratch,
                                float* f32) const {
  const Bf16GemmConfig& k = bf16_gemm_config();
  auto* bits = static_cast<std::uint16_t*>(scratch);
  const index_t kc_pad = k.pad_k(kc);
  if ((k.layout == Bf16Layout::pairs &&
       a.pack_bf16_pairs(ic, mc, pc, kc, kc_pad, k.mr, bits)) ||
      (k.layout == Bf16Layout::amx_rows && a.pack_bf16_rows(ic, mc, pc, kc, kc_pad, k.mr, bits)))
    return scratch;
  // Panel by panel, as B's (gemm_bf16): the float32 panel stays in L1.
  const index_t panel = k.a_panel_bytes(k.pad_k(kc));
  auto* out = static_cast<unsigned char*>(scratch);
  for (index_t r = 0; r * k.mr < mc; ++r) {
    const index_t m = std::min(k.mr, mc - r * k.mr);
    const float* packed = a.block(ic + r * k.mr, m, pc, kc, k.mr, f32);
    bf16_convert_a_panel(k, kc, packed, out + r * panel);
  }
  return scratch;
}

// Layout: k-block b (of kcb_ k, the last maybe fewer) at b * block_row_bytes_ (all of M, padded
// to mr, as panels of that block's depth); within it the m-block at ic starts ic/mr panels in.
Bf16PackedA::Bf16PackedA(index_t M, index_t K, const float* A, index_t rs, index_t cs) {
  const Bf16GemmConfig& k = bf16_gemm_config();
  m_pad_ = round_up(std::max<index_t>(M, 1), k.mr);
  kcb_ = bf16_k_block(k, std::max<index_t>(K, 1));
  block_row_bytes_ = (m_pad_ / k.mr) * k.a_panel_bytes(kcb_);
  data_ = make_scratch<unsigned char>(ceil_div(std::max<index_t>(K, 1), kcb_) * block_row_bytes_);
  // Panel by panel, straight into bf16 pairs where StridedA has them (else through a float32
  // panel): the bits of packing then converting.
  const StridedA<float> strided(A, rs, cs);
  const Bf16FromF32A src(strided);
  const index_t panels = m_pad_ / k.mr, per = k.mr * kcb_;  // one float32 panel per thread
  Scratch<float> f32 = make_scratch<float>(checked_mul(per, max_threads()));
  for_each_panel(ceil_div(K, kcb_) * panels, M * K, [&](index_t t) {
    const index_t pc = t / panels * kcb_, kc = std::min(kcb_, K - pc), r = t % panels;
    src.block(r * k.mr, std::min(k.mr, M - r * k.mr), pc, kc,
              data_.get() + pc / kcb_ * block_row_bytes_ + r * k.a_panel_bytes(k.pad_k(kc)),
              f32.get() + per * thread_id());
  });
}

const void* Bf16PackedA::block(index_t ic, index_t, index_t pc, index_t kc, void*,
                               float*) const {
  const Bf16GemmConfig& k = bf16_gemm_config();
  return data_.get() + (pc / kcb_) * block_row_bytes_ + (ic / k.mr) * k.a_panel_bytes(k.pad_k(kc));
}

void gemm_bf16(index_t M, index_t N, index_t K, const Bf16ASource& A, const BSource<float>& B,
               float* C, index_t ldc, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate)
      for (index_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, 0.0f);
    return;
  }
  const Bf16GemmConfig& k = bf16_gemm_config();
  const index_t kcb = bf16_k_block(k, K);
  const index_t mc_max = std::min(k.mc, round_up(M, k.mr));
  const index_t nc_max = std::min(k.nc, round_up(N, k.nr));
  // One float32 panel (A's or B's, each converted before the next is packed), and the
  // converted A and B blocks.
  Scratch<float> f32 = make_scratch<float>(std::max(k.mr, k.nr) * kcb);
  Scratch<unsigned char> a_buf =
      make_scratch<unsigned char>((mc_max / k.mr) * k.a_panel_bytes(kcb));
  Scratch<unsigned char> b_buf =
      make_scratch<unsigned char>((nc_max / k.nr) * k.b_panel_bytes(kcb));
  if (k.begin) k.begin();
  // The float32 GEMM's order of blocks (gemm.cpp, several row blocks): each C element sums
  // its k-blocks in order, so the emulated path gives the float32 GEMM's bits.
  for (index_t jc = 0; jc < N; jc += k.nc) {
    const index_t nc = std::min(k.nc, N - jc);
    for (index_t pc = 0; pc < K; pc += kcb) {
      const index_t kc = std::min(kcb, K - pc);
      const index_t kc_pad = k.pad_k(kc);
      const index_t a_panel = k.a_panel_bytes(kc_pad), b_panel = k.b_panel_bytes(kc_pad);
      const bool acc = accumulate || pc > 0;
      // B's panels are pairs in both bf16 layouts (amx_rows: AMX B tiles), f32 in the
      // emulated one.
      if (k.layout == Bf16Layout::f32 ||
          !B.pack_bf16_pairs(pc, kc, kc_pad, jc, nc, k.nr,
                             reinterpret_cast<std::uint16_t*>(b_buf.get()))) {
        // Panel by panel: a float32 panel (kc x nr) stays in L1 until it is converted,
        // where a whole float32 block (kc x nc) would go out to L3 and back.
        for (index_t q = 0; q * k.nr < nc; ++q) {
          B.pack(pc, kc, jc + q * k.nr, std::min(k.nr, nc - q * k.nr), k.nr, f32.get());
          bf16_convert_b_panel(k, kc, f32.get(), b_buf.get() + q * b_panel);
        }
      }
      for (index_t ic = 0; ic < M; ic += k.mc) {
        const index_t mc = std::min(k.mc, M - ic);
        const auto* a = static_cast<const unsigned char*>(
            A.block(ic, mc, pc, kc, a_buf.get(), f32.get()));
        for (index_t ir = 0; ir < mc; ir += k.mr) {
          const index_t mr = std::min(k.mr, mc - ir);
          const unsigned char* ap = a + (ir / k.mr) * a_panel;
          for (index_t jr = 0; jr < nc; jr += k.nr) {
            const index_t nr = std::min(k.nr, nc - jr);
            const unsigned char* bp = b_buf.get() + (jr / k.nr) * b_panel;
            float* c = C + (ic + ir) * ldc + jc + jr;
            if (k.f32_micro)
              k.f32_micro(kc, reinterpret_cast<const float*>(ap),
                          reinterpret_cast<const float*>(bp), c, ldc, acc, mr, nr);
            else
              k.micro(kc_pad, ap, bp, c, ldc, acc, mr, nr);
          }
        }
      }
    }
  }
  if (k.end) k.end();
}

namespace {

struct OffsetBf16A final : Bf16ASource {
  const Bf16ASource& a;
  index_t row0;
  OffsetBf16A(const Bf16ASource& a_, index_t r) : a(a_), row0(r) {}
  const void* block(index_t ic, index_t mc, index_t pc, index_t kc, void* scratch,
                    float* f32) const override {
    return a.block(row0 + ic, mc, pc, kc, scratch, f32);
  }
};

}  // namespace

void gemm_bf16_parallel(index_t M, index_t N, index_t K, const Bf16ASource& A,
                        const BSource<float>& B, float* C, index_t ldc, bool accumulate) {
  const Bf16GemmConfig& k = bf16_gemm_config();
  split_gemm(M, N, K, k.mr, k.nr, [&](index_t m0, index_t m, index_t n0, index_t n) {
    gemm_bf16(m, n, K, OffsetBf16A(A, m0), OffsetB<float>(B, n0), C + m0 * ldc + n0, ldc,
              accumulate);
  });
}

}  // namespace fastconv
