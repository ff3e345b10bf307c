// A process-wide cache of large memory blocks, so that a training step's big buffers (kernel
// scratch, and NumPy arrays while fastconv.memory.recycling() is active) reuse the pages of
// the previous step instead of coming fresh from mmap: the kernel zeroes every fresh page on
// first touch (a 2 MiB huge page per fault where THP is on), which cost a quarter of an
// airbench94 step at batch 1024 on a 2-core EPYC.
//
// allocate/release are thread-safe and never touch Python (NumPy may call them without the
// GIL). Blocks of at least kMinCachedBytes go to the cache when released; the cache holds at
// most 1.5x what was recently in use at once (see block_cache.cpp), and release_cached()
// returns every free block to the OS.
#pragma once

#include <cstddef>

namespace fastconv::block_cache {

// Smaller blocks are plain aligned_alloc/free: glibc's heap already reuses them.
constexpr std::size_t kMinCachedBytes = std::size_t(1) << 20;

// Every block's usable memory starts on this boundary.
constexpr std::size_t kAlignment = 64;

// `bytes` of kAlignment-aligned memory (a unique non-null pointer for 0), or nullptr when the
// system is out of memory or `bytes` is absurd. Contents are unspecified.
void* allocate(std::size_t bytes) noexcept;

// The same, zero-filled (calloc's contract; nullptr where nelem * elsize overflows).
void* allocate_zeroed(std::size_t nelem, std::size_t elsize) noexcept;

// A block of `bytes` holding the first min(bytes, old size) bytes of p, p released (realloc's
// contract: on failure nullptr and p untouched; p == nullptr allocates).
void* reallocate(void* p, std::size_t bytes) noexcept;

// Gives back a block from allocate (nullptr: nothing).
void release(void* p) noexcept;

// The usable size of a block from allocate (at least the bytes asked for).
std::size_t capacity(const void* p) noexcept;

// Frees every cached (not in use) block; returns the bytes freed.
std::size_t release_cached() noexcept;

struct Stats {
  std::size_t in_use_bytes;    // cache-sized blocks handed out and not yet released
  std::size_t cached_bytes;    // free blocks held for reuse
  std::size_t cached_blocks;
  std::size_t bound_bytes;     // in_use + cached is kept at or under this
  std::size_t hits;            // requests served from the cache
  std::size_t misses;          // cache-sized requests that had to go to the OS
};

Stats stats() noexcept;

}  // namespace fastconv::block_cache
