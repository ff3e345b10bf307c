// The GEMM config of each ISA (XNNPACK's *-config.c): which micro-kernels, and the cache
// blocks derived for them from this CPU's caches, filled once per ISA the CPU runs;
// gemm_config() returns the selected ISA's. A new ISA is its gemm_<isa>.cpp and one line in
// kernels_of.
#include <algorithm>
#include <array>

#include "gemm.h"

namespace fastconv {
namespace {

template <typename T>
const GemmKernel<T>* kernels_of(Isa isa) {
  switch (isa) {
    case Isa::avx512: return gemm_kernel_avx512<T>();
    case Isa::avx2: return gemm_kernel_avx2<T>();
    default: return gemm_kernel_generic<T>();
  }
}

index_t round_down(index_t a, index_t b) { return std::max(b, a / b * b); }

template <typename T>
GemmConfig<T> config_of(const GemmKernel<T>& k, Isa isa) {
  const GemmBlocks b = gemm_blocks_for(k.mr, k.nr, sizeof(T), cpu_info());
  return GemmConfig<T>{k, isa, b.mc, b.kc, b.nc};
}

template <typename T>
std::array<GemmConfig<T>, kIsaCount>& configs() {
  static std::array<GemmConfig<T>, kIsaCount> table = [] {
    std::array<GemmConfig<T>, kIsaCount> t{};
    for (int i = 0; i < kIsaCount; ++i) {
      const Isa isa = static_cast<Isa>(i);
      // An ISA this CPU does not run is never selected (select_isa refuses it): its entry
      // stays the generic one.
      const GemmKernel<T>* k = cpu_runs(isa) ? kernels_of<T>(isa) : nullptr;
      t[i] = k ? config_of(*k, isa) : config_of(*gemm_kernel_generic<T>(), Isa::generic);
    }
    return t;
  }();
  return table;
}

}  // namespace

// BLIS's analytical model (Low, Igual, Smith, Quintana-Orti, "Analytical modeling is enough
// for high-performance BLIS", ACM TOMS 2016), for gemm.cpp's loop nest: each mr x kc
// micro-panel of the packed A block stays in L1 while the kc x nr micro-panels of the packed
// B block stream past it.
//   kc  the streaming B micro-panel gets C_B = floor((W1 - 1) / (1 + mr/nr)) of the L1's W1
//       ways, the resident A micro-panel the rest but one (left to C):
//       kc = C_B * (L1 / W1) / (nr * bytes), a multiple of 8 (aligned panel rows);
//   mc  the mc x kc A block in half of L2 (the other half: the B micro-panels streaming in);
//   nc  the kc x nc B block in a quarter of this core's share of L3 (the rest: the sources of
//       the next blocks, C, the other threads' and processes' data).
// E.g. a Zen 3 core (32 KiB 8-way L1, 512 KiB L2, 16 MiB of L3), AVX2 float32 (6 x 16):
// kc 320, mc 204, nc 3264.
GemmBlocks gemm_blocks_for(index_t mr, index_t nr, index_t bytes, const CpuInfo& cpu) {
  const index_t ways = cpu.l1d.ways > 1 ? cpu.l1d.ways : 8;
  const index_t way_bytes = cpu.l1d.bytes / ways;
  const index_t b_ways = std::max<index_t>(1, (ways - 1) * nr / (mr + nr));
  const index_t kc = std::min(kMaxGemmBlock, round_down(b_ways * way_bytes / (nr * bytes), 8));
  const index_t mc =
      std::min(round_down(kMaxGemmBlock, mr), round_down(cpu.l2.bytes / 2 / (kc * bytes), mr));
  const index_t nc = std::min(round_down(kMaxGemmBlock, nr),
                              round_down(cpu.l3_per_cpu() / 4 / (kc * bytes), nr));
  return {mc, kc, nc};
}

template <typename T>
const GemmConfig<T>& gemm_config() {
  return configs<T>()[static_cast<int>(selected_isa())];
}

template <typename T>
bool set_gemm_blocks(index_t mc, index_t kc, index_t nc) {
  GemmConfig<T>& c = configs<T>()[static_cast<int>(selected_isa())];
  if (mc == 0 && kc == 0 && nc == 0) {
    c = config_of<T>(c, c.isa);
    return true;
  }
  if (mc <= 0 || kc <= 0 || nc <= 0 || mc % c.mr || nc % c.nr || mc > kMaxGemmBlock ||
      kc > kMaxGemmBlock || nc > kMaxGemmBlock)
    return false;
  c.mc = mc;
  c.kc = kc;
  c.nc = nc;
  return true;
}

template const GemmConfig<float>& gemm_config<float>();
template const GemmConfig<double>& gemm_config<double>();
template bool set_gemm_blocks<float>(index_t, index_t, index_t);
template bool set_gemm_blocks<double>(index_t, index_t, index_t);

}  // namespace fastconv
