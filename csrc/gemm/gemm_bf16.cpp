// The bfloat16 GEMM's packing (float32 panels converted into each path's layout) and loop
// nest (see gemm_bf16.h). Compiled for the baseline ISA, the conversions also cloned per ISA
// (integer arithmetic: the same bits on each): every path, hardware or twin, packs with this
// same code.
#include "gemm/gemm_bf16.h"

#include <algorithm>
#include <cstring>

namespace fastconv {

namespace {

// src: kc x n ((p, j) at p*n + j), into pairs along k, (p/2)*2n + 2j + p%2, k past kc zero:
// an A panel (n = mr, (i, p) at p*mr + i) or a B panel (n = nr) alike. One 32-bit word per
// pair, the even k in its low half (vdpbf16ps's and AMX B tiles' order), written whole: a
// loop the compiler vectorises (cloned per ISA, common.h).
FASTCONV_CLONES void convert_pairs(index_t n, index_t kc, index_t kc_pad, const float* src,
                                   std::uint16_t* dst) {
  for (index_t p = 0; p < kc_pad; p += 2) {
    std::uint16_t* d = dst + p * n;  // (p/2)*2n
    if (p >= kc) {
      std::fill(d, d + 2 * n, std::uint16_t(0));
      continue;
    }
    const float* s0 = src + p * n;
    if (p + 1 < kc) {
      const float* s1 = s0 + n;
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
  }
}

// src: mr x kc (i, p) at p*mr + i. Rows of the packed A at (p/2)*2mr + 2i + p%2 (pairs) or
// (p/32)*32mr + 32i + p%32 (amx_rows), k past kc zero.
void convert_a_bits(index_t mr, index_t kc, index_t kc_pad, Bf16Layout layout, const float* src,
                    std::uint16_t* dst) {
  if (layout == Bf16Layout::pairs) {
    convert_pairs(mr, kc, kc_pad, src, dst);
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
    convert_pairs(k.nr, kc, k.pad_k(kc), src, static_cast<std::uint16_t*>(dst));
}

index_t bf16_k_block(const Bf16GemmConfig& k, index_t K) {
  return std::min(k.pad_k(balanced_block(K, k.kc)), k.pad_k(K));
}

const void* Bf16FromF32A::block(index_t ic, index_t mc, index_t pc, index_t kc, void* scratch,
                                float* f32) const {
  const Bf16GemmConfig& k = bf16_gemm_config();
  const float* packed = a.block(ic, mc, pc, kc, k.mr, f32);
  const index_t panel = k.a_panel_bytes(k.pad_k(kc));
  auto* out = static_cast<unsigned char*>(scratch);
  for (index_t r = 0; r * k.mr < mc; ++r)
    bf16_convert_a_panel(k, kc, packed + r * k.mr * kc, out + r * panel);
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
  Scratch<float> f32 = make_scratch<float>(m_pad_ * kcb_);
  const StridedA<float> src(A, rs, cs);
  for (index_t pc = 0; pc < K; pc += kcb_) {
    const index_t kc = std::min(kcb_, K - pc);
    const index_t panel = k.a_panel_bytes(k.pad_k(kc));
    unsigned char* dst = data_.get() + (pc / kcb_) * block_row_bytes_;
    const float* packed = src.block(0, M, pc, kc, k.mr, f32.get());
    for (index_t r = 0; r * k.mr < M; ++r)
      bf16_convert_a_panel(k, kc, packed + r * k.mr * kc, dst + r * panel);
  }
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
  // One float32 block (A's or B's, in turn: B's is converted before A's is packed), and the
  // converted A and B blocks.
  Scratch<float> f32 = make_scratch<float>(std::max(mc_max, nc_max) * kcb);
  Scratch<unsigned char> a_buf = make_scratch<unsigned char>((mc_max / k.mr) * k.a_panel_bytes(kcb));
  Scratch<unsigned char> b_buf = make_scratch<unsigned char>((nc_max / k.nr) * k.b_panel_bytes(kcb));
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
      B.pack(pc, kc, jc, nc, k.nr, f32.get());
      for (index_t q = 0; q * k.nr < nc; ++q)
        bf16_convert_b_panel(k, kc, f32.get() + q * k.nr * kc, b_buf.get() + q * b_panel);
      for (index_t ic = 0; ic < M; ic += k.mc) {
        const index_t mc = std::min(k.mc, M - ic);
        const auto* a = static_cast<const unsigned char*>(A.block(ic, mc, pc, kc, a_buf.get(), f32.get()));
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
