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

#include "block_cache.h"

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

// ---- Buffer sizes, checked --------------------------------------------------------------
// Every buffer a kernel allocates is sized with checked_mul / checked_add: past kMaxSize
// (2^62, the bound fastconv/_args.py keeps element counts under) they throw SizeTooLarge, a
// std::bad_alloc that the bindings raise as MemoryError, where plain int64 arithmetic would
// wrap to a small size whose buffer is then written past its end (a padding of 2^30 on a 6x6
// image made an 8-byte "padded copy"). Sizes are never negative; a negative operand (itself
// a wrapped size) is refused too.
constexpr index_t kMaxSize = index_t(1) << 62;

struct SizeTooLarge : std::bad_alloc {
  const char* what() const noexcept override {
    return "fastconv: a scratch buffer for this shape would hold more than 2**62 elements";
  }
};

// a * b, or false where an operand is negative or the product exceeds kMaxSize (for
// heuristics that decline a shape instead of failing it).
inline bool mul_fits(index_t a, index_t b, index_t* out) {
  index_t p;
  if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &p) || p > kMaxSize) return false;
  *out = p;
  return true;
}

inline index_t checked_mul(index_t a, index_t b) {
  index_t p;
  if (!mul_fits(a, b, &p)) throw SizeTooLarge();
  return p;
}

template <typename... Rest>
index_t checked_mul(index_t a, index_t b, index_t c, Rest... rest) {
  return checked_mul(checked_mul(a, b), c, rest...);
}

inline index_t checked_add(index_t a, index_t b) {
  if (a < 0 || b < 0 || a > kMaxSize - b) throw SizeTooLarge();
  return a + b;
}

template <typename... Rest>
index_t checked_add(index_t a, index_t b, index_t c, Rest... rest) {
  return checked_add(checked_add(a, b), c, rest...);
}

// 64-byte aligned scratch memory, owned by one call (never static: the GIL is released and
// several Python threads may run kernels at once). count: elements, from checked_mul /
// checked_add (a negative count is a wrapped size: refused). Large blocks come from and go
// back to the block cache (block_cache.h), so a training step reuses the previous step's
// pages; their contents are unspecified, like aligned_alloc's.
struct ScratchFree {
  void operator()(void* p) const noexcept { block_cache::release(p); }
};

template <typename T>
using Scratch = std::unique_ptr<T[], ScratchFree>;

template <typename T>
Scratch<T> make_scratch(index_t count) {
  const index_t bytes = checked_mul(count == 0 ? 1 : count, sizeof(T));
  void* p = block_cache::allocate(static_cast<std::size_t>(bytes));
  if (!p) throw std::bad_alloc();
  return Scratch<T>(static_cast<T*>(p));
}

inline index_t ceil_div(index_t a, index_t b) { return (a + b - 1) / b; }
inline index_t round_up(index_t a, index_t b) { return ceil_div(a, b) * b; }

// The bytes [p, p + bytes) requested into L2 in `parts` slices, slice(part) at a time: the next
// work item's input, asked for a slice per step of the current item, arrives while the
// current one computes instead of stalling the copy that starts the next. (Built once per
// item: no division per slice, where a step can be as short as a few dozen FMAs.)
class PrefetchSlices {
 public:
  PrefetchSlices(const void* p, index_t bytes, index_t parts)
      : p_(static_cast<const char*>(p)), lines_(p ? ceil_div(bytes, 64) : 0),
        per_(ceil_div(lines_, parts > 0 ? parts : 1)) {}
  void slice(index_t part) const { lines(part * per_, (part + 1) * per_); }
  void all() const { lines(0, lines_); }

 private:
  void lines(index_t l0, index_t l1) const {
    for (index_t l = l0; l < l1 && l < lines_; ++l) __builtin_prefetch(p_ + 64 * l, 0, 2);
  }
  const char* p_;
  index_t lines_, per_;
};

// A row stride (in floats) for n values per row, whose rows a kernel reads a line each down a
// column: an odd number of 64-byte lines, so consecutive rows fall in different L1 sets. A
// stride of a multiple of 1 KiB maps every row to 4 of a 32 KiB 8-way L1's 64 sets (32
// lines), so a column of 128 rows evicts itself before its next use.
inline index_t spread_stride(index_t n) {
  const index_t lines = (n + 15) / 16;
  return 16 * (lines % 2 ? lines : lines + 1);
}

// All of [p, p + bytes) requested into L2 at once (small inputs: a few hundred lines at most).
inline void prefetch_all(const void* p, index_t bytes) { PrefetchSlices(p, bytes, 1).all(); }

// Sums n terms in 16 fixed float lanes (acc[k] += term(k), term(16 + k), ... in order): the
// loop vectorises, where one running sum is a serial chain of dependent adds (~4x slower),
// and the order of additions is fixed whatever the number of threads.
constexpr int kLanes = 16;
template <typename T, typename Term>
__attribute__((always_inline)) inline void add_lanes(index_t n, Term term, T acc[kLanes]) {
  index_t s = 0;
  for (; s + kLanes <= n; s += kLanes)
    for (int k = 0; k < kLanes; ++k) acc[k] += term(s + k);
  for (int k = 0; s + k < n; ++k) acc[k] += term(s + k);
}

// out[e] = partial[e] + partial[size + e] + ... over `chunks` chunks of `size` elements, added
// in chunk order (so independent of the thread count); threads take blocks of elements,
// each chunk's run read contiguously. out may be the first chunk itself.
template <typename T>
void sum_chunks_in_order(const T* partial, index_t chunks, index_t size, T* out) {
  constexpr index_t kBlock = 4096;
#pragma omp parallel for schedule(static)
  for (index_t e0 = 0; e0 < size; e0 += kBlock) {
    const index_t e1 = e0 + kBlock < size ? e0 + kBlock : size;
    if (out != partial)
      for (index_t e = e0; e < e1; ++e) out[e] = partial[e];
    for (index_t ch = 1; ch < chunks; ++ch) {
      const T* src = partial + ch * size;
      for (index_t e = e0; e < e1; ++e) out[e] += src[e];
    }
  }
}

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
    Scratch<T> buf = make_scratch<T>(checked_mul(per, threads));
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

// Runs body(t) for t < panels: the panels of a matrix packed once per call (a layer's
// weights), spread over the threads where the matrix has `elements` >= 2^16 (a 512-channel
// 3x3 layer's 2.4M weights took a few milliseconds on one thread while the other waited),
// in order on this thread otherwise. Each panel is written by one thread alone.
template <typename Body>
void for_each_panel(index_t panels, index_t elements, Body&& body) {
#pragma omp parallel for schedule(static) if (elements >= (index_t(1) << 16) && panels > 1)
  for (index_t t = 0; t < panels; ++t) body(t);
}

}  // namespace fastconv
