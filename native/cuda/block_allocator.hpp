// block_allocator.hpp — the CUDA backend's caching allocator policy, plain C++17 (no CUDA), so that
// it is tested on any machine (native/cuda/tests/test_allocator_host.cpp). runtime.cu gives it
// cudaMalloc / cudaFree; the tests give it malloc or a fake address space.
//
// Memory comes from the raw allocator in *segments*; a segment is cut into *blocks* (contiguous
// sub-ranges, kept in address order as a doubly linked list). A request is served by the smallest
// free block that is large enough (best fit: an ordered set of free blocks keyed by (size, address),
// so ties go to the lowest address); the block is split when the rest is worth keeping, and on free a
// block is merged with its free neighbours in the same segment, so a segment that was cut up for
// small tensors serves one big tensor again once they are gone. Segments are only given back by
// release_cached() (entirely free ones) and, automatically, when the raw allocator fails: then every
// entirely-free segment is released and the raw allocation is tried once more.
//
// Choices (the defaults of Config; the figures behind them are in bench/gpu_notes.md, "Caching
// allocator"):
//  - Requests are rounded up to 512 bytes (keeps every block 512-byte aligned; cudaMalloc gives 256).
//  - Two pools that never lend to each other. Small requests (<= 1 MiB) come from 2 MiB segments of
//    the small pool; large ones from the large pool, whose segments are the request rounded up to
//    2 MiB. The split pools are what stops a huge block from being chopped up for tiny tensors: a
//    long-lived bias or scalar can only pin a 2 MiB small segment, never a 500 MiB activation one.
//  - No minimum large segment by default. PyTorch gives requests under 10 MiB a 20 MiB segment
//    (fewer cudaMalloc calls, 1-10 MiB tensors share segments); that is Config::min_large_segment /
//    min_segment_below, off because on the recorded training steps (U-Net and CMC, 64^3 and 128^3)
//    it reserved 4-30 MiB more at the peak and saved only 5-50 cudaMalloc calls, all in the first step.
//  - Split rule: in the small pool any remainder (>= 512 B) is split off; in the large pool only a
//    remainder above 1 MiB (a smaller one could never serve a large request on its own, so the
//    block is handed out whole, wasting at most 1 MiB, and the sliver comes back with it on free).
//  - Oversize cap (Config::max_split, off by default): blocks of max_split bytes or more are never
//    split; such a block serves a request only if it is at most `oversize_slack` (20 MiB) larger than
//    the request, and never serves a request below max_split. This bounds the waste of using a block
//    whole. Off by default because with one stream and steady-state training steps the measured
//    reserved/live ratio was best with unrestricted splitting plus coalescing.
//  - Requests for 0 bytes return nullptr and change nothing; freeing nullptr does nothing; freeing a
//    pointer the allocator does not own returns false.
//
// Stream semantics: the CUDA backend runs all work of a backend on its one stream, in order. A
// block freed after queuing work that reads it can therefore be handed to later work at once: that
// work is queued behind the reads. Releasing segments (cudaFree) needs the stream idle: the caller
// synchronises before release_cached(), and `before_release` (called before the automatic release
// on a failed raw allocation) does it for the out-of-memory retry.
//
// Thread safety: none here; runtime.cu holds its pool mutex around every call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <unordered_map>
#include <utility>

namespace cmo_alloc {

struct Config {
  size_t round = 512;                        // request granularity (a power of two)
  size_t small_max = size_t(1) << 20;        // requests up to this come from the small pool
  size_t small_segment = size_t(2) << 20;    // size of a small-pool segment
  size_t large_round = size_t(2) << 20;      // large segments are multiples of this
  size_t min_large_segment = size_t(20) << 20;  // smallest large segment ...
  size_t min_segment_below = 0;  // ... for requests below this (0: off; PyTorch: 20 MiB below 10 MiB)
  size_t large_split_min = size_t(1) << 20;  // large pool: split only if the rest is above this
  size_t max_split = SIZE_MAX;               // blocks at least this big are never split (off)
  size_t oversize_slack = size_t(20) << 20;  // an unsplittable block may exceed the request by this
};

struct Stats {
  size_t reserved = 0;       // sum of segment sizes (bytes held from the raw allocator)
  size_t allocated = 0;      // sum of the sizes of live blocks (requests rounded)
  size_t requested = 0;      // sum of the live requests as asked (unrounded)
  size_t peak_reserved = 0;  // high-water mark of reserved
  size_t peak_allocated = 0;
  size_t segments = 0;       // segments held now
  size_t live_blocks = 0;
  size_t free_blocks = 0;
  uint64_t raw_allocs = 0;   // successful raw allocations so far
  uint64_t raw_frees = 0;
  uint64_t raw_failures = 0;  // raw allocations that returned nullptr
  size_t cached() const { return reserved - allocated; }
};

class BlockAllocator {
 public:
  using RawAlloc = std::function<void*(size_t)>;  // nullptr on failure
  using RawFree = std::function<void(void*)>;

  BlockAllocator(RawAlloc raw_alloc, RawFree raw_free, Config cfg = Config())
      : raw_alloc_(std::move(raw_alloc)), raw_free_(std::move(raw_free)), cfg_(cfg) {}
  BlockAllocator(const BlockAllocator&) = delete;
  BlockAllocator& operator=(const BlockAllocator&) = delete;
  ~BlockAllocator() { release_all(); }

  // Called before segments are released after a failed raw allocation (e.g. to synchronise).
  void set_before_release(std::function<void()> f) { before_release_ = std::move(f); }

  // The size a request of `bytes` occupies (0 for 0 bytes).
  size_t rounded(size_t bytes) const { return (bytes + cfg_.round - 1) & ~(cfg_.round - 1); }

  // A block of at least `bytes` bytes, or nullptr (for 0 bytes, or when the raw allocator fails
  // even after every entirely-free segment was released).
  void* allocate(size_t bytes) {
    if (bytes == 0) return nullptr;
    if (bytes > SIZE_MAX / 2) return nullptr;  // no raw allocator serves this; avoids overflow
    size_t size = rounded(bytes);
    bool small = size <= cfg_.small_max;
    FreeSet& pool = small ? free_small_ : free_large_;
    Block* b = best_fit(pool, size, small);
    if (b != nullptr) {
      pool.erase(b);
      stats_.free_blocks--;
    } else {
      b = new_segment(size, small);
      if (b == nullptr) return nullptr;
    }
    if (should_split(b->size, size, small)) {
      Block* rest = new Block{b->ptr + size, b->size - size, b->segment, b, b->next, true, small};
      if (b->next) b->next->prev = rest;
      b->next = rest;
      b->size = size;
      pool.insert(rest);
      stats_.free_blocks++;
    }
    b->free = false;
    b->requested = bytes;
    live_.emplace(b->ptr, b);
    stats_.live_blocks++;
    stats_.allocated += b->size;
    stats_.requested += bytes;
    if (stats_.allocated > stats_.peak_allocated) stats_.peak_allocated = stats_.allocated;
    return b->ptr;
  }

  // Returns the block to the cache (merged with free neighbours). False when p is not a live block.
  bool free(void* p) {
    if (p == nullptr) return true;
    auto it = live_.find(static_cast<char*>(p));
    if (it == live_.end()) return false;
    Block* b = it->second;
    live_.erase(it);
    stats_.live_blocks--;
    stats_.allocated -= b->size;
    stats_.requested -= b->requested;
    b->free = true;
    b->requested = 0;
    FreeSet& pool = b->small ? free_small_ : free_large_;
    if (b->prev && b->prev->free) b = merge(pool, b->prev, b);
    if (b->next && b->next->free) b = merge(pool, b, b->next);
    pool.insert(b);
    stats_.free_blocks++;
    return true;
  }

  // Size of the live block at p (0 if none).
  size_t block_size(const void* p) const {
    auto it = live_.find(static_cast<char*>(const_cast<void*>(p)));
    return it == live_.end() ? 0 : it->second->size;
  }

  // Gives every entirely-free segment back to the raw allocator; returns the bytes released.
  size_t release_cached() {
    size_t freed = 0;
    for (FreeSet* pool : {&free_small_, &free_large_}) {
      for (auto it = pool->begin(); it != pool->end();) {
        Block* b = *it;
        if (b->prev == nullptr && b->next == nullptr) {
          it = pool->erase(it);
          stats_.free_blocks--;
          freed += b->size;
          drop_segment(b->segment);
          delete b;
        } else {
          ++it;
        }
      }
    }
    return freed;
  }

  // Gives every segment back, live blocks included (the backend is going away).
  void release_all() {
    for (auto& kv : segments_) {
      Block* b = kv.second.head;
      while (b) {
        Block* n = b->next;
        delete b;
        b = n;
      }
      raw_free_(kv.first);
      stats_.raw_frees++;
    }
    segments_.clear();
    live_.clear();
    free_small_.clear();
    free_large_.clear();
    size_t peak_r = stats_.peak_reserved, peak_a = stats_.peak_allocated;
    uint64_t ra = stats_.raw_allocs, rf = stats_.raw_frees, fails = stats_.raw_failures;
    stats_ = Stats();
    stats_.peak_reserved = peak_r;
    stats_.peak_allocated = peak_a;
    stats_.raw_allocs = ra;
    stats_.raw_frees = rf;
    stats_.raw_failures = fails;
  }

  const Stats& stats() const { return stats_; }
  void reset_peaks() {
    stats_.peak_reserved = stats_.reserved;
    stats_.peak_allocated = stats_.allocated;
  }
  const Config& config() const { return cfg_; }

  // Visits every block, segment by segment in address order, blocks in address order:
  // f(segment_base, segment_size, segment_is_small, block_ptr, block_size, block_is_free).
  template <class F>
  void for_each_block(F&& f) const {
    for (auto& kv : segments_)
      for (const Block* b = kv.second.head; b; b = b->next)
        f(static_cast<const void*>(kv.first), kv.second.size, kv.second.small,
          static_cast<const void*>(b->ptr), b->size, b->free);
  }

 private:
  struct Segment;
  struct Block {
    char* ptr;
    size_t size;
    Segment* segment;
    Block* prev;  // neighbours in the same segment, by address
    Block* next;
    bool free;
    bool small;
    size_t requested = 0;
  };
  struct Segment {
    size_t size = 0;
    bool small = false;
    Block* head = nullptr;
  };
  struct BySizeThenAddress {
    bool operator()(const Block* a, const Block* b) const {
      if (a->size != b->size) return a->size < b->size;
      return std::less<const char*>()(a->ptr, b->ptr);
    }
  };
  using FreeSet = std::set<Block*, BySizeThenAddress>;

  Block* best_fit(FreeSet& pool, size_t size, bool small) {
    Block key{nullptr, size, nullptr, nullptr, nullptr, true, small};
    auto it = pool.lower_bound(&key);
    if (it == pool.end()) return nullptr;
    Block* b = *it;
    if (!small && b->size >= cfg_.max_split) {
      // Unsplittable: only whole, only for a request that is itself that big, and not far larger.
      if (size < cfg_.max_split || b->size - size > cfg_.oversize_slack) return nullptr;
    }
    return b;
  }

  bool should_split(size_t block, size_t size, bool small) const {
    size_t rest = block - size;
    if (small) return rest >= cfg_.round;
    if (block >= cfg_.max_split) return false;
    return rest > cfg_.large_split_min;
  }

  size_t segment_size(size_t size, bool small) const {
    if (small) return cfg_.small_segment;
    size_t s = (size + cfg_.large_round - 1) / cfg_.large_round * cfg_.large_round;
    if (size < cfg_.min_segment_below && s < cfg_.min_large_segment) s = cfg_.min_large_segment;
    return s;
  }

  // A new segment for a request of `size` (rounded) as one free block that is not in any free set;
  // on failure releases the cached segments and tries again (with the smallest segment that fits).
  Block* new_segment(size_t size, bool small) {
    size_t want = segment_size(size, small);
    void* p = raw(want);
    if (p == nullptr) {
      if (before_release_) before_release_();
      release_cached();
      p = raw(want);
      if (p == nullptr && !small) {
        size_t minimal = (size + cfg_.large_round - 1) / cfg_.large_round * cfg_.large_round;
        if (minimal < want) {
          want = minimal;
          p = raw(want);
        }
      }
      if (p == nullptr) return nullptr;
    }
    char* base = static_cast<char*>(p);
    Segment& seg = segments_[base];
    seg.size = want;
    seg.small = small;
    seg.head = new Block{base, want, &seg, nullptr, nullptr, true, small};
    stats_.segments++;
    stats_.reserved += want;
    if (stats_.reserved > stats_.peak_reserved) stats_.peak_reserved = stats_.reserved;
    return seg.head;
  }

  void* raw(size_t n) {
    void* p = raw_alloc_(n);
    if (p == nullptr)
      stats_.raw_failures++;
    else
      stats_.raw_allocs++;
    return p;
  }

  void drop_segment(Segment* seg) {
    char* base = seg->head->ptr;
    stats_.reserved -= seg->size;
    stats_.segments--;
    segments_.erase(base);
    raw_free_(base);
    stats_.raw_frees++;
  }

  // Merges two free neighbours, a right before c, into a. Exactly one of them is the block being
  // freed (not in the free set); the other is taken out of the set. Returns a.
  Block* merge(FreeSet& pool, Block* a, Block* c) {
    if (pool.erase(a) == 1 || pool.erase(c) == 1) stats_.free_blocks--;
    a->size += c->size;
    a->next = c->next;
    if (c->next) c->next->prev = a;
    delete c;
    return a;
  }

  RawAlloc raw_alloc_;
  RawFree raw_free_;
  std::function<void()> before_release_;
  Config cfg_;
  Stats stats_;
  FreeSet free_small_, free_large_;
  std::unordered_map<char*, Block*> live_;
  std::map<char*, Segment, std::less<char*>> segments_;
};

}  // namespace cmo_alloc
