// host_allocator.cpp — size classes, the bounded free-block cache (LRU eviction), mmap/munmap.
#include "host_allocator.h"
#include <cstdlib>
#include <list>
#include <mutex>
#include <unordered_map>
#include <vector>
#if !defined(_WIN32)
#include <sys/mman.h>
#endif

namespace pk {

namespace {

constexpr size_t kLarge = 256 * 1024;

// Round up to a multiple of 1/8 of the next power of two: at most 12.5% slack, few classes.
size_t size_class(size_t n) {
  size_t p = 1;
  while (p < n) p <<= 1;
  size_t step = p >= 8 * 4096 ? p / 8 : 4096;
  return (n + step - 1) / step * step;
}

void* map_block(size_t n) {
#if defined(_WIN32)
  return std::aligned_alloc(64, n);
#else
  void* p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? nullptr : p;
#endif
}

void unmap_block(void* p, size_t n) {
#if defined(_WIN32)
  (void)n; std::free(p);
#else
  munmap(p, n);
#endif
}

struct Block { void* p; size_t size; };

class Cache {
 public:
  Cache() {
    long mb = 2048;
    if (const char* e = std::getenv("PEFTKIT_HOST_CACHE_MB")) mb = std::atol(e);
    limit_ = mb > 0 ? (size_t)mb << 20 : 0;
  }

  void* take(size_t cls) {
    std::lock_guard<std::mutex> lk(m_);
    auto it = by_size_.find(cls);
    if (it == by_size_.end() || it->second.empty()) { misses_++; return nullptr; }
    auto lit = it->second.back();
    it->second.pop_back();
    void* p = lit->p;
    lru_.erase(lit);
    cached_ -= cls;
    hits_++;
    return p;
  }

  void give(void* p, size_t cls) {
    std::vector<Block> evicted;
    {
      std::lock_guard<std::mutex> lk(m_);
      if (cls > limit_) { evicted.push_back({p, cls}); }
      else {
        lru_.push_front({p, cls});
        by_size_[cls].push_back(lru_.begin());
        cached_ += cls;
        while (cached_ > limit_) evicted.push_back(pop_oldest());
      }
    }
    for (auto& b : evicted) unmap_block(b.p, b.size);   // outside the lock: munmap can be slow
  }

  void release_all() {
    std::vector<Block> all;
    {
      std::lock_guard<std::mutex> lk(m_);
      while (!lru_.empty()) all.push_back(pop_oldest());
    }
    for (auto& b : all) unmap_block(b.p, b.size);
  }

  HostCacheStats stats() {
    std::lock_guard<std::mutex> lk(m_);
    HostCacheStats s;
    s.cached_bytes = (int64_t)cached_; s.hits = hits_; s.misses = misses_; s.limit_bytes = (int64_t)limit_;
    return s;
  }

 private:
  Block pop_oldest() {  // lock held
    auto last = std::prev(lru_.end());
    Block b = *last;
    auto& v = by_size_[b.size];
    for (size_t i = 0; i < v.size(); i++) if (v[i] == last) { v.erase(v.begin() + (long)i); break; }
    lru_.pop_back();
    cached_ -= b.size;
    return b;
  }

  std::mutex m_;
  std::list<Block> lru_;   // front = most recently freed
  std::unordered_map<size_t, std::vector<std::list<Block>::iterator>> by_size_;
  size_t cached_ = 0, limit_ = 0;
  int64_t hits_ = 0, misses_ = 0;
};

Cache& cache() {
  static Cache* c = new Cache();  // leaked on purpose: tensors may be freed during static destruction
  return *c;
}

}  // namespace

void* host_alloc(size_t bytes, size_t* capacity) {
  size_t n = (bytes + 63) & ~size_t(63);
  if (n == 0) n = 64;
  if (n < kLarge) {
    *capacity = n;
    return std::aligned_alloc(64, n);
  }
  size_t cls = size_class(n);
  *capacity = cls;
  if (void* p = cache().take(cls)) return p;
  return map_block(cls);
}

void host_free(void* p, size_t capacity) {
  if (!p) return;
  if (capacity < kLarge) { std::free(p); return; }
  cache().give(p, capacity);
}

HostCacheStats host_cache_stats() { return cache().stats(); }
void host_cache_release() { cache().release_all(); }

}  // namespace pk
