// The GEMM config of each ISA (XNNPACK's *-config.c): which micro-kernels, and the cache
// blocks derived for them from this CPU's caches, filled once per ISA the CPU runs;
// gemm_config() returns the selected ISA's. A new ISA is its gemm_<isa>.cpp and one line in
// kernels_of. Likewise the bf16 GEMM's config per path (bf16_gemm_config(): the selected
// path's; a new path is its gemm_bf16_<path>.cpp and one line in bf16_kernel_of).
#include <algorithm>
#include <array>
#include <type_traits>

#include "gemm/gemm.h"
#include "gemm/gemm_bf16.h"

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



// The emulated path on an ISA: that ISA's float32 kernel and blocks (so its results are the
// float32 GEMM's bits on rounded operands), panels of float32 values.
Bf16GemmConfig emulated_config_of(const GemmConfig<float>& f) {
  Bf16GemmConfig c{};
  c.mr = f.mr;
  c.nr = f.nr;
  c.layout = Bf16Layout::f32;
  c.path = Bf16Path::emulated;
  c.f32_micro = f.micro;
  c.multiply_rate = 1.0;
  c.k_group = 1;
  c.elem_bytes = sizeof(float);
  c.mc = f.mc;
  c.kc = f.kc;
  c.nc = f.nc;
  return c;
}

// A bf16 kernel's blocks: BLIS's model for 2-byte elements (gemm_blocks_for), kc a multiple of
// the layout's k group.
Bf16GemmConfig bf16_config_of(const Bf16Kernel& k, Bf16Path path) {
  Bf16GemmConfig c{};
  static_cast<Bf16Kernel&>(c) = k;
  c.path = path;
  c.k_group = k.layout == Bf16Layout::amx_rows ? 32 : 2;
  c.elem_bytes = 2;
  const GemmBlocks b = gemm_blocks_for(k.mr, k.nr, c.elem_bytes, cpu_info());
  c.mc = b.mc;
  c.kc = std::max(c.k_group, b.kc / c.k_group * c.k_group);
  c.nc = b.nc;
  return c;
}

const Bf16Kernel* bf16_kernel_of(Bf16Path path) {
  switch (path) {
    case Bf16Path::avx512_bf16: return bf16_kernel_avx512();
    case Bf16Path::amx: return bf16_kernel_amx();
    case Bf16Path::avx512_bf16_twin: return bf16_kernel_avx512_twin();
    case Bf16Path::amx_twin: return bf16_kernel_amx_twin();
    default: return nullptr;
  }
}

struct Bf16Configs {
  std::array<Bf16GemmConfig, kIsaCount> emulated;   // per ISA
  std::array<Bf16GemmConfig, kBf16PathCount> kernels;  // the other paths (compiled in)
};

Bf16Configs& bf16_configs() {
  static Bf16Configs table = [] {
    Bf16Configs t{};
    for (int i = 0; i < kIsaCount; ++i) t.emulated[i] = emulated_config_of(configs<float>()[i]);
    for (int p = 1; p < kBf16PathCount; ++p) {
      const Bf16Path path = static_cast<Bf16Path>(p);
      const Bf16Kernel* k = bf16_kernel_of(path);
      // A path not compiled in is never selected (cpu_runs refuses it): the emulated entry.
      t.kernels[p] = k ? bf16_config_of(*k, path) : t.emulated[0];
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
  } else {
    if (mc <= 0 || kc <= 0 || nc <= 0 || mc % c.mr || nc % c.nr || mc > kMaxGemmBlock ||
        kc > kMaxGemmBlock || nc > kMaxGemmBlock)
      return false;
    c.mc = mc;
    c.kc = kc;
    c.nc = nc;
  }
  // The emulated bf16 path runs this ISA's float32 GEMM: the same blocks.
  if constexpr (std::is_same_v<T, float>)
    bf16_configs().emulated[static_cast<int>(selected_isa())] = emulated_config_of(c);
  return true;
}

template const GemmConfig<float>& gemm_config<float>();
template const GemmConfig<double>& gemm_config<double>();
template bool set_gemm_blocks<float>(index_t, index_t, index_t);
template bool set_gemm_blocks<double>(index_t, index_t, index_t);

// ---- bf16 (see gemm_bf16.h) ---------------------------------------------------------------

const Bf16GemmConfig& bf16_gemm_config() {
  const Bf16Path path = selected_bf16_path();
  if (path == Bf16Path::emulated) return bf16_configs().emulated[static_cast<int>(selected_isa())];
  return bf16_configs().kernels[static_cast<int>(path)];
}

bool set_bf16_gemm_blocks(index_t mc, index_t kc, index_t nc) {
  const Bf16Path path = selected_bf16_path();
  if (path == Bf16Path::emulated) return set_gemm_blocks<float>(mc, kc, nc);
  Bf16GemmConfig& c = bf16_configs().kernels[static_cast<int>(path)];
  if (mc == 0 && kc == 0 && nc == 0) {
    c = bf16_config_of(*bf16_kernel_of(path), path);
    return true;
  }
  if (mc <= 0 || kc <= 0 || nc <= 0 || mc % c.mr || nc % c.nr || kc % c.k_group ||
      mc > kMaxGemmBlock || kc > kMaxGemmBlock || nc > kMaxGemmBlock)
    return false;
  c.mc = mc;
  c.kc = kc;
  c.nc = nc;
  return true;
}

}  // namespace fastconv
