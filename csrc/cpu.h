// The CPU the kernels run on: its features and cache sizes, read once at start-up, and the
// instruction set (ISA) whose kernels are in use. Every choice of SIMD code goes through
// selected_isa(): each op family keeps a config per ISA (a struct of function pointers and
// parameters, filled once) and looks up the one of the selected ISA (see gemm.h's
// gemm_config); nothing compares strings or asks the CPU again.
#pragma once

#include <string>
#include <vector>

#include "common.h"

namespace fastconv {

// The instruction sets kernels are written for, from the plainest up. `generic` is portable
// C++ (whatever the compiler vectorises for the build's baseline); the others are the
// translation units compiled with those flags (CMakeLists.txt).
enum class Isa : int { generic = 0, avx2 = 1, avx512 = 2 };
constexpr int kIsaCount = 3;

// "generic", "avx2", "avx512".
const char* isa_name(Isa isa);
// The ISA of that name; false for an unknown name.
bool isa_from_name(const std::string& name, Isa* isa);

// One cache level as seen by one core: its size, and how many logical CPUs share it.
struct CacheLevel {
  index_t bytes = 0;
  int ways = 0;        // associativity (0: unknown)
  int line = 64;       // line size in bytes
  int shared_by = 1;   // logical CPUs sharing this cache
};

struct CpuInfo {
  std::string vendor;      // "GenuineIntel", "AuthenticAMD", ... ("" off x86)
  std::string model_name;  // the brand string, e.g. "AMD EPYC 7B13"
  int family = 0, model = 0;
  // Features the CPU has and the OS has enabled (XCR0 saves the registers they use).
  bool sse4_2 = false, avx = false, avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512vl = false, avx512dq = false, avx512bw = false,
       avx512_vnni = false, avx512_bf16 = false, avx512_fp16 = false;
  bool amx_tile = false, amx_bf16 = false, amx_int8 = false;  // the process must still ask
                                                              // Linux for the tile state
  CacheLevel l1d, l2, l3;
  // Where the cache sizes came from: "cpuid", "sysfs" or "defaults" (neither answered).
  std::string cache_source;

  // Names of the features present, in a fixed order (for build_info).
  std::vector<std::string> feature_names() const;
  // L3 bytes per logical CPU sharing it (the share one thread can count on).
  index_t l3_per_cpu() const { return l3.bytes / (l3.shared_by > 0 ? l3.shared_by : 1); }
};

// Read on first use (thread-safe), never again.
const CpuInfo& cpu_info();

// Whether this CPU and build run the kernels of `isa` (its features present and enabled by
// the OS, its translation units compiled in).
bool cpu_runs(Isa isa);
// The best ISA cpu_runs.
Isa best_isa();

// The ISA whose kernels every op uses: best_isa() unless select_isa changed it. Switching
// while kernels run is the caller's business (the bindings wait for running kernels).
Isa selected_isa();
// Selects `isa` for every op (tests and benchmarks force the plainer ones); false, and no
// change, if this CPU cannot run it.
bool select_isa(Isa isa);

// The paths of the bfloat16 GEMM (gemm_bf16.h), from the plainest up: `emulated` rounds
// float32 operands to bf16 and multiplies them with the selected ISA's float32 kernels (any
// CPU, no speed-up); the twins are portable C++ emulating the hardware kernels' instructions
// (tests); `avx512_bf16` (vdpbf16ps) and `amx` (tdpbf16ps) are the hardware kernels.
enum class Bf16Path : int { emulated = 0, avx512_bf16_twin = 1, amx_twin = 2, avx512_bf16 = 3, amx = 4 };
constexpr int kBf16PathCount = 5;

// "emulated", "avx512_bf16_twin", "amx_twin", "avx512_bf16", "amx".
const char* bf16_path_name(Bf16Path path);
// The path of that name; false for an unknown name.
bool bf16_path_from_name(const std::string& name, Bf16Path* path);

// Whether this CPU, OS and build run the path: the emulated path and the twins always; the
// hardware ones when their translation unit is compiled in, the CPU has the features, the
// selected ISA is avx512 (forcing a plainer ISA keeps them off) and, for AMX, Linux granted
// this process the tile data state (asked once, on first use).
bool cpu_runs(Bf16Path path);
// Why cpu_runs(path) is false, e.g. "CPU lacks avx512_bf16"; nullptr when it is true.
const char* bf16_path_unavailable_reason(Bf16Path path);
// The best hardware path cpu_runs, else emulated (never a twin).
Bf16Path best_bf16_path();
// The path every bf16 GEMM uses: best_bf16_path() unless select_bf16_path forced one.
Bf16Path selected_bf16_path();
// Forces `path` (tests and benchmarks); false, and no change, if !cpu_runs(path).
bool select_bf16_path(Bf16Path path);
// Back to best_bf16_path().
void select_best_bf16_path();

}  // namespace fastconv
