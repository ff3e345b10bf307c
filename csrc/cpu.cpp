// CPU features and cache sizes, read once: cpuid where there is one (x86), else Linux's sysfs,
// else defaults; the selected ISA and bf16 path.
#include "cpu.h"

#include <atomic>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "gemm/gemm_bf16.h"

#if defined(FASTCONV_X86) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#if defined(FASTCONV_X86) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#define FASTCONV_CPUID 1
#endif

namespace fastconv {
namespace {

#ifdef FASTCONV_CPUID
struct Regs {
  unsigned a = 0, b = 0, c = 0, d = 0;
};

Regs cpuid(unsigned leaf, unsigned sub = 0) {
  Regs r;
  __cpuid_count(leaf, sub, r.a, r.b, r.c, r.d);
  return r;
}

bool bit(unsigned reg, int i) { return (reg >> i) & 1u; }

// XCR0: which register states the OS saves on a context switch (a feature whose registers
// it does not save is unusable, whatever cpuid says).
unsigned long long xcr0() {
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<unsigned long long>(hi) << 32) | lo;
}

void read_features(CpuInfo& info) {
  const unsigned max_leaf = cpuid(0).a;
  const Regs v = cpuid(0);
  char vendor[13] = {};
  for (int i = 0; i < 4; ++i) {
    vendor[i] = static_cast<char>(v.b >> (8 * i));
    vendor[4 + i] = static_cast<char>(v.d >> (8 * i));
    vendor[8 + i] = static_cast<char>(v.c >> (8 * i));
  }
  info.vendor = vendor;
  const unsigned max_ext = cpuid(0x80000000u).a;
  if (max_ext >= 0x80000004u) {
    char brand[49] = {};
    for (unsigned l = 0; l < 3; ++l) {
      const Regs r = cpuid(0x80000002u + l);
      const unsigned words[4] = {r.a, r.b, r.c, r.d};
      for (int w = 0; w < 4; ++w)
        for (int i = 0; i < 4; ++i)
          brand[16 * l + 4 * w + i] = static_cast<char>(words[w] >> (8 * i));
    }
    std::string name(brand);
    const auto first = name.find_first_not_of(' '), last = name.find_last_not_of(' ');
    info.model_name = first == std::string::npos ? "" : name.substr(first, last - first + 1);
  }
  if (max_leaf < 1) return;
  const Regs l1 = cpuid(1);
  const unsigned base_family = (l1.a >> 8) & 0xf, base_model = (l1.a >> 4) & 0xf;
  info.family = static_cast<int>(base_family == 0xf ? base_family + ((l1.a >> 20) & 0xff)
                                                    : base_family);
  info.model = static_cast<int>(base_family >= 0x6 ? base_model + (((l1.a >> 16) & 0xf) << 4)
                                                   : base_model);
  info.sse4_2 = bit(l1.c, 20);
  const bool osxsave = bit(l1.c, 27);
  const unsigned long long xcr = osxsave ? xcr0() : 0;
  const bool ymm_state = (xcr & 0x6) == 0x6;             // SSE + AVX
  const bool zmm_state = ymm_state && (xcr & 0xe0) == 0xe0;  // opmask, ZMM0-15 high, ZMM16-31
  const bool tile_state = (xcr & 0x60000) == 0x60000;    // XTILECFG, XTILEDATA
  info.avx = bit(l1.c, 28) && ymm_state;
  info.fma = bit(l1.c, 12) && ymm_state;
  info.f16c = bit(l1.c, 29) && ymm_state;
  if (max_leaf < 7) return;
  const Regs l7 = cpuid(7, 0);
  info.avx2 = bit(l7.b, 5) && ymm_state;
  info.avx512f = bit(l7.b, 16) && zmm_state;
  info.avx512dq = bit(l7.b, 17) && zmm_state;
  info.avx512bw = bit(l7.b, 30) && zmm_state;
  info.avx512vl = bit(l7.b, 31) && zmm_state;
  info.avx512_vnni = bit(l7.c, 11) && zmm_state;
  info.avx512_fp16 = bit(l7.d, 23) && zmm_state;
  info.amx_bf16 = bit(l7.d, 22) && tile_state;
  info.amx_tile = bit(l7.d, 24) && tile_state;
  info.amx_int8 = bit(l7.d, 25) && tile_state;
  if (l7.a >= 1) info.avx512_bf16 = bit(cpuid(7, 1).a, 5) && zmm_state;
}

// Deterministic cache parameters: leaf 4 (Intel) or 0x8000001D (AMD, with topology
// extensions), one subleaf per cache, the same layout in both. False if neither exists.
bool read_caches_cpuid(CpuInfo& info) {
  unsigned leaf = 0;
  const unsigned max_ext = cpuid(0x80000000u).a;
  if (max_ext >= 0x8000001Du && bit(cpuid(0x80000001u).c, 22))
    leaf = 0x8000001Du;
  else if (cpuid(0).a >= 4)
    leaf = 4;
  else
    return false;
  for (unsigned sub = 0; sub < 16; ++sub) {
    const Regs r = cpuid(leaf, sub);
    const unsigned type = r.a & 0x1f;  // 0 none (the end), 1 data, 2 instruction, 3 unified
    if (type == 0) break;
    if (type == 2) continue;
    CacheLevel c;
    c.line = static_cast<int>((r.b & 0xfff) + 1);
    const index_t partitions = ((r.b >> 12) & 0x3ff) + 1;
    c.ways = static_cast<int>(((r.b >> 22) & 0x3ff) + 1);
    const index_t sets = index_t(r.c) + 1;
    c.bytes = index_t(c.ways) * partitions * c.line * sets;
    c.shared_by = static_cast<int>(((r.a >> 14) & 0xfff) + 1);
    switch ((r.a >> 5) & 0x7) {
      case 1: info.l1d = c; break;
      case 2: info.l2 = c; break;
      case 3: info.l3 = c; break;
      default: break;
    }
  }
  return info.l1d.bytes > 0 && info.l2.bytes > 0;
}
#endif

// A number from a sysfs file ("8", "32K", "1M"), or 0.
index_t read_sysfs_number(const std::string& path) {
  std::ifstream f(path);
  index_t v = 0;
  char unit = 0;
  if (!(f >> v)) return 0;
  if (f >> unit) {
    if (unit == 'K') v <<= 10;
    else if (unit == 'M') v <<= 20;
    else if (unit == 'G') v <<= 30;
  }
  return v;
}

// Logical CPUs in a sysfs CPU list ("0-1,4,6-7").
int count_cpu_list(const std::string& path) {
  std::ifstream f(path);
  std::string list;
  if (!(f >> list)) return 1;
  int count = 0;
  std::stringstream ss(list);
  std::string part;
  while (std::getline(ss, part, ',')) {
    int a = 0, b = 0;
    if (std::sscanf(part.c_str(), "%d-%d", &a, &b) == 2) count += b - a + 1;
    else ++count;
  }
  return count > 0 ? count : 1;
}

bool read_caches_sysfs(CpuInfo& info) {
  for (int i = 0; i < 16; ++i) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    std::ifstream type_file(dir + "type");
    std::string type;
    if (!(type_file >> type)) break;
    if (type == "Instruction") continue;
    CacheLevel c;
    c.bytes = read_sysfs_number(dir + "size");
    c.ways = static_cast<int>(read_sysfs_number(dir + "ways_of_associativity"));
    const index_t line = read_sysfs_number(dir + "coherency_line_size");
    if (line > 0) c.line = static_cast<int>(line);
    c.shared_by = count_cpu_list(dir + "shared_cpu_list");
    switch (read_sysfs_number(dir + "level")) {
      case 1: info.l1d = c; break;
      case 2: info.l2 = c; break;
      case 3: info.l3 = c; break;
      default: break;
    }
  }
  return info.l1d.bytes > 0 && info.l2.bytes > 0;
}

// /proc/cpuinfo's "model name" (off x86, where there is no brand string), or "".
std::string proc_cpuinfo_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) {
      const auto start = line.find_first_not_of(" \t", line.find(':') + 1);
      return start == std::string::npos ? "" : line.substr(start);
    }
  return "";
}

CpuInfo read_cpu() {
  CpuInfo info;
#ifdef FASTCONV_CPUID
  read_features(info);
  if (read_caches_cpuid(info)) info.cache_source = "cpuid";
#endif
  if (info.cache_source.empty()) {
    info.l1d = info.l2 = info.l3 = CacheLevel{};  // no partial answers
    if (read_caches_sysfs(info)) info.cache_source = "sysfs";
  }
  if (info.cache_source.empty()) {
    // What most x86-64 and ARM cores of the last decade have at least.
    info.l1d = {32 << 10, 8, 64, 1};
    info.l2 = {512 << 10, 8, 64, 1};
    info.l3 = {2 << 20, 16, 64, 1};
    info.cache_source = "defaults";
  }
  if (info.l3.bytes == 0) info.l3 = info.l2;  // no L3: the L2 is the last level
  if (info.model_name.empty()) info.model_name = proc_cpuinfo_model();
  return info;
}

// -1 until first asked: then best_isa(), or what select_isa set.
std::atomic<int> g_isa{-1};

}  // namespace

std::vector<std::string> CpuInfo::feature_names() const {
  const std::pair<const char*, bool> all[] = {
      {"sse4_2", sse4_2},         {"avx", avx},           {"avx2", avx2},
      {"fma", fma},               {"f16c", f16c},         {"avx512f", avx512f},
      {"avx512vl", avx512vl},     {"avx512dq", avx512dq}, {"avx512bw", avx512bw},
      {"avx512_vnni", avx512_vnni}, {"avx512_bf16", avx512_bf16},
      {"avx512_fp16", avx512_fp16}, {"amx_tile", amx_tile}, {"amx_bf16", amx_bf16},
      {"amx_int8", amx_int8}};
  std::vector<std::string> names;
  for (const auto& [name, present] : all)
    if (present) names.emplace_back(name);
  return names;
}

const CpuInfo& cpu_info() {
  static const CpuInfo info = read_cpu();
  return info;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "generic";
  }
}

bool isa_from_name(const std::string& name, Isa* isa) {
  for (int i = 0; i < kIsaCount; ++i)
    if (name == isa_name(static_cast<Isa>(i))) {
      *isa = static_cast<Isa>(i);
      return true;
    }
  return false;
}

bool cpu_runs(Isa isa) {
  if (isa == Isa::generic) return true;
#if defined(FASTCONV_X86)
  // CMakeLists.txt compiles the *_avx2.cpp and *_avx512.cpp files with these features' flags
  // on x86 builds: their code may use any of them.
  const CpuInfo& c = cpu_info();
  if (isa == Isa::avx2) return c.avx2 && c.fma;
  if (isa == Isa::avx512) return c.avx512f && c.avx512vl && c.avx512dq && c.fma;
#endif
  return false;
}

Isa best_isa() {
  for (int i = kIsaCount - 1; i > 0; --i)
    if (cpu_runs(static_cast<Isa>(i))) return static_cast<Isa>(i);
  return Isa::generic;
}

Isa selected_isa() {
  int v = g_isa.load(std::memory_order_relaxed);
  if (v < 0) {
    v = static_cast<int>(best_isa());
    g_isa.store(v, std::memory_order_relaxed);
  }
  return static_cast<Isa>(v);
}

bool select_isa(Isa isa) {
  if (!cpu_runs(isa)) return false;
  g_isa.store(static_cast<int>(isa), std::memory_order_relaxed);
  return true;
}

// ---- bf16 paths ---------------------------------------------------------------------------

namespace {

constexpr const char* kBf16PathNames[kBf16PathCount] = {"emulated", "avx512_bf16_twin",
                                                        "amx_twin", "avx512_bf16", "amx"};

// -1: the best path; else the forced Bf16Path.
std::atomic<int> g_bf16_path{-1};

// Linux gives a process AMX's 8 KiB tile data state only on request (arch_prctl
// ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA; Linux 5.16+); a tile instruction before that is
// a SIGILL. Asked once per process, only on a CPU with AMX.
bool amx_tile_data_granted() {
#if defined(FASTCONV_X86) && defined(__linux__)
  static const bool granted = [] {
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return granted;
#else
  return false;
#endif
}

}  // namespace

const char* bf16_path_name(Bf16Path path) {
  const int i = static_cast<int>(path);
  return i >= 0 && i < kBf16PathCount ? kBf16PathNames[i] : "?";
}

bool bf16_path_from_name(const std::string& name, Bf16Path* path) {
  for (int i = 0; i < kBf16PathCount; ++i)
    if (name == kBf16PathNames[i]) {
      *path = static_cast<Bf16Path>(i);
      return true;
    }
  return false;
}

const char* bf16_path_unavailable_reason(Bf16Path path) {
  const CpuInfo& c = cpu_info();
  switch (path) {
    case Bf16Path::avx512_bf16:
      if (!bf16_kernel_avx512()) return "avx512_bf16 kernel not compiled in";
      if (!c.avx512_bf16) return "CPU lacks avx512_bf16";
      if (selected_isa() != Isa::avx512) return "SIMD level is not avx512";
      return nullptr;
    case Bf16Path::amx:
      if (!bf16_kernel_amx()) return "amx kernel not compiled in";
      if (!c.amx_bf16 || !c.amx_tile) return "CPU lacks amx_bf16";
      if (selected_isa() != Isa::avx512) return "SIMD level is not avx512";
      if (!amx_tile_data_granted()) return "Linux refused the AMX tile data state";
      return nullptr;
    default:
      return nullptr;
  }
}

bool cpu_runs(Bf16Path path) { return bf16_path_unavailable_reason(path) == nullptr; }

Bf16Path best_bf16_path() {
  if (cpu_runs(Bf16Path::amx)) return Bf16Path::amx;
  if (cpu_runs(Bf16Path::avx512_bf16)) return Bf16Path::avx512_bf16;
  return Bf16Path::emulated;
}

Bf16Path selected_bf16_path() {
  const int v = g_bf16_path.load(std::memory_order_relaxed);
  // A forced hardware path the selected ISA no longer allows gives way to the best one.
  if (v >= 0 && cpu_runs(static_cast<Bf16Path>(v))) return static_cast<Bf16Path>(v);
  return best_bf16_path();
}

bool select_bf16_path(Bf16Path path) {
  if (!cpu_runs(path)) return false;
  g_bf16_path.store(static_cast<int>(path), std::memory_order_relaxed);
  return true;
}

void select_best_bf16_path() { g_bf16_path.store(-1, std::memory_order_relaxed); }

}  // namespace fastconv
