// host_allocator.h — where CPU tensor memory comes from.
//
// Small blocks (< 256 KiB) come from malloc. Large blocks are mapped from the OS in size classes
// and, when freed, kept in a bounded cache for reuse: a training step frees and re-allocates the
// same large activations every iteration, and reusing them avoids both page faults on fresh
// mappings and glibc's habit of keeping freed large blocks (unbounded RSS growth). The cache is
// capped (PEFTKIT_HOST_CACHE_MB, default 2048; 0 disables it) and evicts least recently freed
// blocks first, returning them to the OS.
#pragma once
#include <cstddef>
#include <cstdint>

namespace pk {

// 64-byte aligned block of at least `bytes`; *capacity receives the bytes actually reserved
// (pass it back to host_free). Returns nullptr when the OS refuses.
void* host_alloc(size_t bytes, size_t* capacity);
void host_free(void* p, size_t capacity);

struct HostCacheStats {
  int64_t cached_bytes = 0;   // freed blocks kept for reuse
  int64_t hits = 0;           // large allocations served from the cache
  int64_t misses = 0;         // large allocations mapped fresh
  int64_t limit_bytes = 0;    // the cap
};
HostCacheStats host_cache_stats();
// Return every cached block to the OS now.
void host_cache_release();

}  // namespace pk
