// The GEMM config of each ISA (XNNPACK's *-config.c): which micro-kernels, filled once per
// ISA the CPU runs; gemm_config() returns the selected ISA's. A new ISA is its gemm_<isa>.cpp
// and one line in kernels_of.
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

template <typename T>
std::array<GemmConfig<T>, kIsaCount> make_configs() {
  std::array<GemmConfig<T>, kIsaCount> configs{};
  for (int i = 0; i < kIsaCount; ++i) {
    const Isa isa = static_cast<Isa>(i);
    // An ISA this CPU does not run is never selected (select_isa refuses it): its entry
    // stays the generic one.
    const GemmKernel<T>* k = cpu_runs(isa) ? kernels_of<T>(isa) : nullptr;
    if (!k) k = gemm_kernel_generic<T>();
    configs[i] = GemmConfig<T>{*k, k == gemm_kernel_generic<T>() ? Isa::generic : isa};
  }
  return configs;
}

}  // namespace

template <typename T>
const GemmConfig<T>& gemm_config() {
  static const std::array<GemmConfig<T>, kIsaCount> configs = make_configs<T>();
  return configs[static_cast<int>(selected_isa())];
}

template const GemmConfig<float>& gemm_config<float>();
template const GemmConfig<double>& gemm_config<double>();

}  // namespace fastconv
