// The block cache (block_cache.h).
//
// Layout: every block is [Header | usable bytes], the usable part kAlignment-aligned, so a
// release needs only the pointer (NumPy's realloc does not pass the old size).
//
// Bound: the cache keeps in_use + cached <= bound, bound = 1.5x the largest in_use seen in
// the current or the previous window, a window ending once it has handed out 8x the bound in
// bytes (several training steps: a step allocates at least its peak). So a steady loop keeps
// what its steps need, and after a change to smaller work the extra blocks go back to the OS
// within two windows. A miss or a release that leaves the cache over the bound frees the
// least recently released cached blocks (in a training step, the blocks freed first in the
// backward pass are the last the next forward pass needs).
#include "block_cache.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace fastconv::block_cache {
namespace {

struct Header {
  void* base;             // what aligned_alloc returned (for free)
  std::size_t capacity;   // usable bytes after the header
};
static_assert(sizeof(Header) <= kAlignment);

// Blocks from 4 MiB (NumPy's own threshold for asking for huge pages) start on a 2 MiB
// boundary, are a whole number of 2 MiB pages long and are advised as huge pages: the kernels
// stream through them, and a 4 KiB page per TLB entry would cost misses.
constexpr std::size_t kHugePage = std::size_t(2) << 20;
constexpr std::size_t kHugeFrom = std::size_t(4) << 20;
// Cache-sized blocks below kHugeFrom are rounded up to this, so near-equal sizes share blocks.
constexpr std::size_t kGranule = std::size_t(64) << 10;
// A cached block serves a request when it is at most this fraction larger (1/4: 25%), or
// one huge page (the header and offset push a request of whole huge pages into one more).
constexpr std::size_t kSlackShift = 2;
// The bound is the recent peak in use plus this fraction of it (1/2: 50%). Blocks are reused
// by size, so a loop needs, for each size, as many blocks as it ever holds of that size at
// once: more than its peak total. airbench94 at batch 1024 still missed ~9 of ~90 requests a
// step with 25%, none with 50%.
constexpr std::size_t kBoundSlackShift = 1;
// A window ends after handing out this many times the bound.
constexpr std::size_t kWindowBounds = 8;
// Above this, sizes are refused (nullptr) before any rounding could overflow.
constexpr std::size_t kMaxBytes = std::size_t(1) << 62;

std::size_t round_up(std::size_t a, std::size_t b) { return (a + b - 1) / b * b; }

Header* header_of(const void* p) {
  return reinterpret_cast<Header*>(static_cast<char*>(const_cast<void*>(p)) - kAlignment);
}

// Cache-sized blocks start at staggered offsets from their page boundary (the header's 64
// bytes, then 0, 256, ..., 3840 more, one block after another): blocks that all began at the
// same offset would map their starts to the same L1/L2 cache sets, and kernels that stream
// through several at once (GEMM panels, im2col columns) would evict their own lines. glibc's
// heap staggers blocks by their sizes; fresh mmaps do not.
constexpr std::size_t kColourStep = 256;
constexpr std::size_t kColours = 16;
constexpr std::size_t kColourSpan = kAlignment + kColourStep * (kColours - 1);

// Block alignment and usable capacity for a request of `bytes`.
void block_shape(std::size_t bytes, std::size_t* align, std::size_t* capacity) {
  if (bytes < kMinCachedBytes) {
    *align = kAlignment;
    *capacity = round_up(bytes, kAlignment);
  } else if (bytes < kHugeFrom) {
    *align = kAlignment;
    *capacity = round_up(bytes, kGranule);
  } else {
    // whole huge pages with room for any offset
    *align = kHugePage;
    *capacity = round_up(bytes + kColourSpan, kHugePage) - kColourSpan;
  }
}

// A new block straight from the system, or nullptr.
void* system_block(std::size_t align, std::size_t capacity) {
  std::size_t offset = kAlignment;
  if (capacity >= kMinCachedBytes) {
    static std::atomic<std::size_t> blocks{0};
    offset += kColourStep * (blocks.fetch_add(1, std::memory_order_relaxed) % kColours);
  }
  const std::size_t total = round_up(offset + capacity, align);
  void* base = std::aligned_alloc(align, total);
  if (!base) return nullptr;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (align == kHugePage) madvise(base, total, MADV_HUGEPAGE);  // advice only: errors ignored
#endif
  void* p = static_cast<char*>(base) + offset;
  *header_of(p) = Header{base, capacity};
  return p;
}

void system_free(void* p) { std::free(header_of(p)->base); }

class Cache {
 public:
  // A cached block of at least `capacity` bytes (and at most 25% or one huge page more),
  // or nullptr.
  void* take(std::size_t capacity) {
    std::lock_guard<std::mutex> lock(mutex_);
    const std::size_t most = capacity + std::max(capacity >> kSlackShift, kHugePage);
    std::size_t best = free_.size();
    for (std::size_t i = 0; i < free_.size(); ++i) {
      const std::size_t c = free_[i].capacity;
      // smallest fit; among equals the most recently released (its pages may still be in
      // cache)
      if (c >= capacity && c <= most &&
          (best == free_.size() || c < free_[best].capacity ||
           (c == free_[best].capacity && free_[i].stamp > free_[best].stamp)))
        best = i;
    }
    if (best == free_.size()) return nullptr;
    void* p = pop(free_.begin() + best);
    ++hits_;
    hand_out(header_of(p)->capacity);
    return p;
  }

  // Accounts for a block of `capacity` bytes just obtained from the system.
  void note_miss(std::size_t capacity) {
    std::lock_guard<std::mutex> lock(mutex_);
    ++misses_;
    hand_out(capacity);
  }

  // Takes back a cache-sized block (bad_alloc: not taken, the accounts as before).
  void put(void* p) {
    std::lock_guard<std::mutex> lock(mutex_);
    const std::size_t capacity = header_of(p)->capacity;
    free_.push_back(Entry{p, capacity, ++clock_});
    in_use_ -= capacity;
    cached_ += capacity;
  }

  // The least recently released cached block while in_use + cached > bound (the caller
  // frees it outside the lock), else nullptr.
  void* pop_over_bound() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (free_.empty() || in_use_ + cached_ <= bound()) return nullptr;
    return pop(std::min_element(free_.begin(), free_.end(), [](const Entry& a, const Entry& b) {
             return a.stamp < b.stamp;
           }));
  }

  // Accounts for a cache-sized block freed without passing through the cache.
  void note_untracked_free(std::size_t capacity) {
    std::lock_guard<std::mutex> lock(mutex_);
    in_use_ -= capacity;
  }

  // Any cached block, or nullptr when none is left.
  void* pop_any() {
    std::lock_guard<std::mutex> lock(mutex_);
    return free_.empty() ? nullptr : pop(free_.end() - 1);
  }

  Stats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return Stats{in_use_, cached_, free_.size(), bound(), hits_, misses_};
  }

 private:
  struct Entry {
    void* block;
    std::size_t capacity;
    std::uint64_t stamp;  // when released: larger is more recent
  };

  std::size_t bound() const {
    const std::size_t peak = std::max(peak_, previous_peak_);
    return peak + (peak >> kBoundSlackShift);
  }

  void hand_out(std::size_t capacity) {
    in_use_ += capacity;
    peak_ = std::max(peak_, in_use_);
    traffic_ += capacity;
    if (traffic_ >= kWindowBounds * bound()) {
      previous_peak_ = peak_;
      peak_ = in_use_;
      traffic_ = 0;
    }
  }

  void* pop(std::vector<Entry>::iterator e) {
    void* p = e->block;
    cached_ -= e->capacity;
    *e = free_.back();
    free_.pop_back();
    return p;
  }

  std::mutex mutex_;
  std::vector<Entry> free_;
  std::size_t in_use_ = 0, cached_ = 0, peak_ = 0, previous_peak_ = 0, traffic_ = 0;
  std::size_t hits_ = 0, misses_ = 0;
  std::uint64_t clock_ = 0;
};

// Never destroyed: NumPy arrays made through the cache may be freed during interpreter
// shutdown, after static destructors would have run.
Cache& cache() {
  static Cache* c = new Cache;
  return *c;
}

// Frees cached blocks until the cache is within its bound.
void keep_bound() {
  while (void* b = cache().pop_over_bound()) system_free(b);
}

}  // namespace

void* allocate(std::size_t bytes) noexcept {
  if (bytes > kMaxBytes) return nullptr;
  std::size_t align, capacity;
  block_shape(bytes, &align, &capacity);
  if (capacity < kMinCachedBytes) return system_block(align, capacity);
  if (void* p = cache().take(capacity)) return p;
  void* p = system_block(align, capacity);
  if (!p) {
    // out of memory: what the cache holds may make room
    release_cached();
    p = system_block(align, capacity);
    if (!p) return nullptr;
  }
  cache().note_miss(capacity);
  keep_bound();
  return p;
}

void* allocate_zeroed(std::size_t nelem, std::size_t elsize) noexcept {
  std::size_t bytes;
  if (__builtin_mul_overflow(nelem, elsize, &bytes)) return nullptr;
  void* p = allocate(bytes);
  if (p) std::memset(p, 0, bytes);
  return p;
}

void* reallocate(void* p, std::size_t bytes) noexcept {
  if (!p) return allocate(bytes);
  const std::size_t old = capacity(p);
  if (bytes <= old && bytes >= old / 2) return p;  // fits without wasting half the block
  void* q = allocate(bytes);
  if (!q) return nullptr;
  std::memcpy(q, p, std::min(old, bytes));
  release(p);
  return q;
}

void release(void* p) noexcept {
  if (!p) return;
  if (capacity(p) < kMinCachedBytes) {
    system_free(p);
    return;
  }
  try {
    cache().put(p);
  } catch (const std::bad_alloc&) {
    // no room to record it: give it back instead
    cache().note_untracked_free(capacity(p));
    system_free(p);
  }
  keep_bound();
}

std::size_t capacity(const void* p) noexcept { return header_of(p)->capacity; }

std::size_t release_cached() noexcept {
  std::size_t bytes = 0;
  while (void* b = cache().pop_any()) {
    bytes += capacity(b);
    system_free(b);
  }
  return bytes;
}

Stats stats() noexcept { return cache().stats(); }

}  // namespace fastconv::block_cache
