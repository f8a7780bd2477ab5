// caching_allocator.h — size-class caching of device memory blocks (host logic only).
//
// Why: cudaMalloc/cudaFree synchronise the device and cost tens of microseconds; a training step
// allocates thousands of tensors. Freed blocks go to a free list keyed by their size class and are
// handed out again for any request of the same class, so after the first step a steady-state loop
// never reaches the driver. Blocks are never split or merged (simple, and exact reuse is what a
// fixed-shape training loop needs); the rounding bounds the waste.
//
// Size classes (bytes): up to 1 MiB, multiples of 512; up to 256 MiB, the next of {4,5,6,7}·2^k
// (≤ 25% over, 12.5% on average); above that, multiples of 32 MiB (≤ 12.5%).
// When the raw allocator fails, all cached blocks are released and the allocation is retried once.
//
// The class is plain C++ with the raw alloc/free injected, so its logic is unit-tested on hosts
// without a GPU (csrc/tests/cuda_host_test.cpp); runtime.cu instantiates it over cudaMalloc.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace pk {
namespace cuda {

struct AllocatorStats {
  int64_t allocated_bytes = 0;       // class bytes of live blocks (held by tensors)
  int64_t reserved_bytes = 0;        // bytes obtained from the driver and not yet returned (live + cached)
  int64_t peak_allocated_bytes = 0;
  int64_t peak_reserved_bytes = 0;
  int64_t requests = 0;              // allocate() calls
  int64_t cache_hits = 0;            // served from a free list
  int64_t device_allocs = 0;         // raw (cudaMalloc) calls that succeeded
  int64_t device_frees = 0;          // raw (cudaFree) calls
  int64_t oom_flushes = 0;           // times the cache was emptied to satisfy a failed raw allocation
  int64_t live_blocks = 0;
  int64_t cached_blocks = 0;
};

class CachingAllocator {
 public:
  using RawAlloc = void* (*)(size_t bytes, void* ctx);   // nullptr when out of memory
  using RawFree = void (*)(void* p, void* ctx);
  using Flush = void (*)(void* ctx);                     // called before cached blocks are released

  CachingAllocator(RawAlloc raw_alloc, RawFree raw_free, void* ctx, Flush before_release = nullptr)
      : raw_alloc_(raw_alloc), raw_free_(raw_free), before_release_(before_release), ctx_(ctx) {}
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  static constexpr size_t kSmallLimit = size_t(1) << 20;      // 1 MiB
  static constexpr size_t kSmallGranule = 512;
  static constexpr size_t kHugeLimit = size_t(256) << 20;     // 256 MiB
  static constexpr size_t kHugeGranule = size_t(32) << 20;    // 32 MiB

  // The size class (bytes actually reserved) of a request.
  static size_t round_size(size_t bytes) {
    if (bytes == 0) bytes = 1;
    if (bytes <= kSmallLimit) return (bytes + kSmallGranule - 1) / kSmallGranule * kSmallGranule;
    if (bytes > kHugeLimit) return (bytes + kHugeGranule - 1) / kHugeGranule * kHugeGranule;
    // quarter steps between powers of two: 2^k·{1, 1.25, 1.5, 1.75}
    int k = 63 - __builtin_clzll((unsigned long long)bytes);     // 2^k <= bytes < 2^(k+1)
    size_t base = size_t(1) << k, step = base >> 2;
    size_t r = (bytes + step - 1) / step * step;
    return r;
  }

  // A block of at least `bytes` (nullptr when the raw allocator fails even after flushing).
  void* allocate(size_t bytes) {
    size_t cls = round_size(bytes);
    std::lock_guard<std::mutex> lk(mu_);
    st_.requests++;
    auto it = free_.find(cls);
    void* p = nullptr;
    if (it != free_.end() && !it->second.empty()) {
      p = it->second.back();
      it->second.pop_back();
      st_.cache_hits++;
      st_.cached_blocks--;
    } else {
      p = raw_alloc_(cls, ctx_);
      if (!p && st_.cached_blocks > 0) {
        release_cached_locked();
        st_.oom_flushes++;
        p = raw_alloc_(cls, ctx_);
      }
      if (!p) return nullptr;
      st_.device_allocs++;
      st_.reserved_bytes += (int64_t)cls;
      if (st_.reserved_bytes > st_.peak_reserved_bytes) st_.peak_reserved_bytes = st_.reserved_bytes;
    }
    live_[p] = cls;
    st_.live_blocks++;
    st_.allocated_bytes += (int64_t)cls;
    if (st_.allocated_bytes > st_.peak_allocated_bytes) st_.peak_allocated_bytes = st_.allocated_bytes;
    return p;
  }

  // Return a block to its free list. Unknown pointers are ignored (returns false).
  bool release(void* p) {
    if (!p) return false;
    std::lock_guard<std::mutex> lk(mu_);
    auto it = live_.find(p);
    if (it == live_.end()) return false;
    size_t cls = it->second;
    live_.erase(it);
    st_.live_blocks--;
    st_.allocated_bytes -= (int64_t)cls;
    if (caching_) {
      free_[cls].push_back(p);
      st_.cached_blocks++;
    } else {
      raw_free_(p, ctx_);
      st_.device_frees++;
      st_.reserved_bytes -= (int64_t)cls;
    }
    return true;
  }

  // Give every cached block back to the raw allocator.
  void empty_cache() {
    std::lock_guard<std::mutex> lk(mu_);
    release_cached_locked();
  }

  // Disable caching (debugging with compute-sanitizer: PEFTKIT_CUDA_NO_CACHE=1).
  void set_caching(bool on) {
    std::lock_guard<std::mutex> lk(mu_);
    caching_ = on;
    if (!on) release_cached_locked();
  }

  AllocatorStats stats() const {
    std::lock_guard<std::mutex> lk(mu_);
    return st_;
  }
  void reset_peaks() {
    std::lock_guard<std::mutex> lk(mu_);
    st_.peak_allocated_bytes = st_.allocated_bytes;
    st_.peak_reserved_bytes = st_.reserved_bytes;
  }
  // Class size of a live block (0 when unknown).
  size_t block_size(void* p) const {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = live_.find(p);
    return it == live_.end() ? 0 : it->second;
  }

 private:
  void release_cached_locked() {
    if (st_.cached_blocks == 0) return;
    if (before_release_) before_release_(ctx_);
    for (auto& kv : free_) {
      for (void* p : kv.second) {
        raw_free_(p, ctx_);
        st_.device_frees++;
        st_.reserved_bytes -= (int64_t)kv.first;
      }
      kv.second.clear();
    }
    free_.clear();
    st_.cached_blocks = 0;
  }

  RawAlloc raw_alloc_;
  RawFree raw_free_;
  Flush before_release_;
  void* ctx_;
  bool caching_ = true;
  mutable std::mutex mu_;
  std::unordered_map<void*, size_t> live_;
  std::map<size_t, std::vector<void*>> free_;
  AllocatorStats st_;
};

}  // namespace cuda
}  // namespace pk
