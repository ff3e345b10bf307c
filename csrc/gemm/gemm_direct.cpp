#include "gemm/gemm_direct.h"

#include <algorithm>
#include <vector>

#include "conv/conv_direct.h"
#include "gemm/gemm.h"

namespace fastconv {

bool gemm_abt_direct(index_t M, index_t N, index_t K, const float* A, index_t lda, const float* B,
                     index_t ldb, float* C, index_t ldc, bool accumulate) {
  const DirectKernels* kp = direct_kernels();
  // Worth it when B is the large operand and M fills at least a vector.
  if (!kp || M < 16 || M > 512 || N < 4 * M || K < 64) return false;
  const DirectKernels& k = *kp;
  const index_t Mpad = round_up(M, k.lanes);
  constexpr index_t kKc = 256;  // K block: a 2-vector panel of A^T is 32 KiB (L1)
  const std::vector<ChannelBlock> blocks = channel_blocks(M, k.lanes);

  // A^T packed per (block, k-block): at K*i0 + k0*lanes*nv, [kc][lanes*nv], zero past M.
  struct PackItem {
    index_t f0, width, k0, kc;
  };
  std::vector<PackItem> pack_items;
  for (const ChannelBlock& b : blocks)
    for (index_t k0 = 0; k0 < K; k0 += kKc)
      pack_items.push_back({b.f0, k.lanes * b.nv, k0, std::min(kKc, K - k0)});
  Scratch<float> at = make_scratch<float>(checked_mul(K, Mpad));
  std::vector<index_t> rows(N);  // tile row r of B starts at B + rows[r]
  for (index_t r = 0; r < N; ++r) rows[r] = r * ldb;
  const index_t tap0 = 0;
  Scratch<float> ct = make_scratch<float>(checked_mul(N, Mpad));  // C^T

  // Work items: chunks of rows of B. Each tile's slice of B (at most max_mr rows x 256) stays in
  // L1 while every block of A^T passes over it: B is read from memory once.
  const index_t max_mr = [&] {
    index_t m = DirectKernels::kMaxMR;
    for (const ChannelBlock& b : blocks) m = std::min<index_t>(m, k.max_mr[b.nv]);
    return m;
  }();
  constexpr index_t kRows = 64;
  const index_t chunks = ceil_div(N, kRows);
  const index_t n_items = static_cast<index_t>(pack_items.size());
  const float* t = ct.get();
  constexpr index_t kB = 64;
  // One parallel region for the three phases (a fork and join each cost more than the A^T
  // packing itself, which the second thread used to wait out).
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (index_t it = 0; it < n_items; ++it) {
      const PackItem& pi = pack_items[it];
      float* d = at.get() + K * pi.f0 + pi.k0 * pi.width;
      for (index_t j = 0; j < pi.width; ++j) {
        const index_t i = pi.f0 + j;
        for (index_t p = 0; p < pi.kc; ++p)
          d[p * pi.width + j] = i < M ? A[i * lda + pi.k0 + p] : 0.0f;
      }
    }
#pragma omp for schedule(static)
    for (index_t c = 0; c < chunks; ++c) {
      const index_t r0 = c * kRows;
      for_each_piece(std::min(kRows, N - r0), max_mr, [&](index_t q, index_t mr) {
        const index_t r = r0 + q;
        for (index_t k0 = 0; k0 < K; k0 += kKc) {
          const index_t kc = std::min(kKc, K - k0);
          for (const ChannelBlock& b : blocks)
            k.forward[b.nv][mr](B + k0, rows.data() + r, &tap0, 1, kc,
                                at.get() + K * b.f0 + k0 * k.lanes * b.nv, k.lanes * b.nv,
                                ct.get() + r * Mpad + b.f0, Mpad, k0 > 0);
        }
      });
    }
    // C (+)= (C^T)^T, in 64 x 64 blocks.
#pragma omp for schedule(static)
    for (index_t j0 = 0; j0 < N; j0 += kB)
      for (index_t i0 = 0; i0 < M; i0 += kB)
        for (index_t i = i0; i < std::min(M, i0 + kB); ++i) {
          float* c = C + i * ldc;
          for (index_t j = j0; j < std::min(N, j0 + kB); ++j)
            c[j] = (accumulate ? c[j] : 0.0f) + t[j * Mpad + i];
        }
  }
  return true;
}

template <typename T>
bool gemm_abt_dot(index_t M, index_t N, index_t K, const T* A, index_t lda, const T* B,
                  index_t ldb, T* C, index_t ldc, bool accumulate) {
  if (!gemm_config<T>().nt_rows || K < 16 || (N >= 32 && M >= 16) || M <= 0 || N <= 0)
    return false;
  std::vector<const T*> a_rows(M), b_rows(N);
  for (index_t i = 0; i < M; ++i) a_rows[i] = A + i * lda;
  for (index_t j = 0; j < N; ++j) b_rows[j] = B + j * ldb;
  // Below ~1 MFLOP a fork and join costs more than the second thread saves.
  const int parts = static_cast<double>(M) * N * K < (1 << 20)
                        ? 1
                        : static_cast<int>(std::min<index_t>(max_threads(), N));
#pragma omp parallel num_threads(parts) if (parts > 1)
  {
    const index_t t = thread_id();
    const index_t j0 = N * t / parts, j1 = N * (t + 1) / parts;
    if (j1 > j0)
      gemm_nt_rows<T>(M, j1 - j0, K, a_rows.data(), b_rows.data() + j0, C + j0, ldc,
                      accumulate);
  }
  return true;
}

template bool gemm_abt_dot<float>(index_t, index_t, index_t, const float*, index_t, const float*,
                                  index_t, float*, index_t, bool);
template bool gemm_abt_dot<double>(index_t, index_t, index_t, const double*, index_t,
                                   const double*, index_t, double*, index_t, bool);

}  // namespace fastconv
