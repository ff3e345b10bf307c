// Shared helpers for the fastconv kernels: index type, OpenMP shims, aligned scratch memory.
//
// Dimension legend used in every kernel:
//   N = batch, C = input channels, H/W = input height/width, F = output channels,
//   KH/KW = kernel height/width, OH/OW = output height/width, G = groups,
//   L = OH*OW (positions per image), CKK = (C/G)*KH*KW (rows of one group's column matrix).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>

#ifdef _OPENMP
#include <omp.h>
#endif

// Memory-bound loops (packing, im2col, pooling) are compiled for several ISAs and picked at
// load time by the dynamic loader (GCC's target_clones + ifunc), so they use AVX-512 / AVX2
// where the CPU has them while the build stays portable.
#if defined(FASTCONV_X86) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__) && \
    !defined(FASTCONV_NO_CLONES)
#define FASTCONV_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTCONV_CLONES
#endif

// FASTCONV_CLONED(name, impl, (params using T), (argument names)) defines the function
// template `name<T>` for T = float and double, each one function cloned per ISA that runs the
// always-inline template `impl<T>` (target_clones cannot apply to templates themselves).
#define FASTCONV_CLONED(name, impl, PARAMS, ARGS)                              \
  namespace name##_f32 {                                                       \
  using T = float;                                                             \
  FASTCONV_CLONES void run PARAMS { impl<T> ARGS; }                            \
  }                                                                            \
  namespace name##_f64 {                                                       \
  using T = double;                                                            \
  FASTCONV_CLONES void run PARAMS { impl<T> ARGS; }                            \
  }                                                                            \
  template <typename T>                                                        \
  inline void name PARAMS {                                                    \
    if constexpr (sizeof(T) == sizeof(float)) name##_f32::run ARGS;            \
    else name##_f64::run ARGS;                                                 \
  }

namespace fastconv {

using index_t = std::int64_t;

inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

inline void set_max_threads(int n) {
#ifdef _OPENMP
  omp_set_num_threads(n);
#else
  (void)n;
#endif
}

inline bool openmp_enabled() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

// 64-byte aligned scratch memory, owned by one call (never static: the GIL is released and
// several Python threads may run kernels at once).
struct AlignedFree {
  void operator()(void* p) const noexcept { std::free(p); }
};

template <typename T>
using Scratch = std::unique_ptr<T[], AlignedFree>;

template <typename T>
Scratch<T> make_scratch(index_t count) {
  std::size_t bytes = static_cast<std::size_t>(count > 0 ? count : 1) * sizeof(T);
  bytes = (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes);
  if (!p) throw std::bad_alloc();
  return Scratch<T>(static_cast<T*>(p));
}

inline index_t ceil_div(index_t a, index_t b) { return (a + b - 1) / b; }

// Runs body(i, scratch, split) for i < items. With at least as many items as threads, the
// items are spread over the threads, each with its own `per` elements of scratch, and run whole
// (split = false: no barrier per small step). Otherwise they run in order with one scratch
// and split = true: the body then spreads its own work over the threads
// (`#pragma omp parallel for if (split)`). Either way each output is computed by one thread
// in one order, so results do not depend on the number of threads.
template <typename T = float, typename Body>
void for_each_item(index_t items, index_t per, Body&& body) {
  const int threads = max_threads();
  if (threads > 1 && items >= threads) {
    Scratch<T> buf = make_scratch<T>(per * threads);
#pragma omp parallel num_threads(threads)
    {
      T* mine = buf.get() + per * thread_id();
#pragma omp for schedule(static)
      for (index_t i = 0; i < items; ++i) body(i, mine, false);
    }
  } else {
    Scratch<T> buf = make_scratch<T>(per);
    for (index_t i = 0; i < items; ++i) body(i, buf.get(), true);
  }
}

}  // namespace fastconv
