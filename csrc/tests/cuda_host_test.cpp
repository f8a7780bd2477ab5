// cuda_host_test.cpp — host-side logic of the CUDA backend, testable without a GPU or nvcc:
//   - CachingAllocator (csrc/cuda/caching_allocator.h): size classes, reuse, stats, steady state
//     without raw allocations, flush-and-retry on out-of-memory, caching disabled;
//   - make_layout (csrc/cuda/layout.h): dim coalescing, broadcast strides, 32-bit index choice;
//   - FastDiv: the multiply-high division used by the kernels' offset calculators;
//   - dispatch.h: without the backend, a cuda op throws a clear error instead of crashing.
// Build with -DPEFTKIT_NATIVE_TESTS=ON; run ./cuda_host_test -> exit 0 on success.
#include <cstdio>
#include <cstdlib>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "core/dispatch.h"
#include "cuda/caching_allocator.h"
#include "cuda/layout.h"

using namespace pk;
using namespace pk::cuda;

namespace {

int g_fail = 0, g_checks = 0;
#define EXPECT(cond)                                                              \
  do {                                                                            \
    g_checks++;                                                                   \
    if (!(cond)) { g_fail++; std::printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond); } \
  } while (0)

// A fake device heap with a capacity, counting calls.
struct FakeHeap {
  size_t capacity = SIZE_MAX, used = 0;
  int allocs = 0, frees = 0, flushes = 0;
  std::set<void*> live;
  std::vector<std::pair<void*, size_t>> sizes;
};
void* fake_alloc(size_t n, void* ctx) {
  auto* h = (FakeHeap*)ctx;
  if (h->used + n > h->capacity) return nullptr;
  void* p = std::malloc(n);
  h->used += n; h->allocs++; h->live.insert(p); h->sizes.push_back({p, n});
  return p;
}
void fake_free(void* p, void* ctx) {
  auto* h = (FakeHeap*)ctx;
  for (auto& s : h->sizes) if (s.first == p) { h->used -= s.second; s.second = 0; break; }
  h->frees++; h->live.erase(p);
  std::free(p);
}
void fake_flush(void* ctx) { ((FakeHeap*)ctx)->flushes++; }

void test_size_classes() {
  using CA = CachingAllocator;
  EXPECT(CA::round_size(0) == 512);
  EXPECT(CA::round_size(1) == 512);
  EXPECT(CA::round_size(512) == 512);
  EXPECT(CA::round_size(513) == 1024);
  EXPECT(CA::round_size(1 << 20) == (1 << 20));
  EXPECT(CA::round_size((1 << 20) + 1) == (1 << 20) + (1 << 18));          // 1.25 MiB
  EXPECT(CA::round_size(3 << 20) == (3 << 20));                            // 1.5 * 2 MiB
  EXPECT(CA::round_size((3 << 20) + 1) == (7 << 19));                      // 3.5 MiB
  EXPECT(CA::round_size(size_t(256) << 20) == size_t(256) << 20);
  EXPECT(CA::round_size((size_t(256) << 20) + 1) == size_t(288) << 20);    // 32 MiB granule
  // every class covers the request, stays within the waste bound, and is idempotent
  std::mt19937_64 rng(1);
  for (int i = 0; i < 200000; i++) {
    size_t n = (size_t)(rng() % (size_t(1) << (1 + rng() % 34))) + 1;
    size_t c = CA::round_size(n);
    EXPECT(c >= n);
    EXPECT(CA::round_size(c) == c);
    if (n > CA::kSmallLimit) EXPECT((double)c <= (double)n * 1.25 + 1);
    else EXPECT(c - n < 512);
    EXPECT(c % 512 == 0);
    if (g_fail) return;
  }
}

void test_reuse_and_stats() {
  FakeHeap h;
  CachingAllocator a(fake_alloc, fake_free, &h, fake_flush);
  void* p1 = a.allocate(1000);
  void* p2 = a.allocate(1000);
  EXPECT(p1 && p2 && p1 != p2);
  EXPECT(a.block_size(p1) == 1024);
  EXPECT(h.allocs == 2);
  AllocatorStats s = a.stats();
  EXPECT(s.allocated_bytes == 2048 && s.reserved_bytes == 2048 && s.live_blocks == 2);
  EXPECT(a.release(p1));
  EXPECT(!a.release(p1));                 // double release is ignored
  EXPECT(!a.release((void*)0x1234));      // unknown pointers too
  s = a.stats();
  EXPECT(s.allocated_bytes == 1024 && s.reserved_bytes == 2048 && s.cached_blocks == 1);
  void* p3 = a.allocate(600);             // same class (1024) -> the cached block
  EXPECT(p3 == p1);
  EXPECT(h.allocs == 2);
  EXPECT(a.stats().cache_hits == 1);
  // a different class does not reuse it
  a.release(p3);
  void* p4 = a.allocate(4096);
  EXPECT(p4 != p1 && h.allocs == 3);
  a.release(p2); a.release(p4);
  // steady state: a "training step" allocating the same sizes never reaches the raw allocator
  std::vector<size_t> step{3 << 20, 4096, 4096, 777, 100 << 20, 12345, 3 << 20, 64};
  for (int it = 0; it < 5; it++) {
    std::vector<void*> ps;
    for (size_t n : step) ps.push_back(a.allocate(n));
    for (void* p : ps) a.release(p);
    if (it == 0) { h.allocs = 0; }
  }
  EXPECT(h.allocs == 0);
  s = a.stats();
  EXPECT(s.allocated_bytes == 0 && s.live_blocks == 0);
  EXPECT(s.peak_allocated_bytes >= (int64_t)((3 << 20) * 2 + (100 << 20)));
  a.empty_cache();
  s = a.stats();
  EXPECT(s.reserved_bytes == 0 && s.cached_blocks == 0);
  EXPECT(h.live.empty());
  EXPECT(h.flushes == 1);
}

void test_oom_flush() {
  FakeHeap h;
  h.capacity = 10 << 20;
  CachingAllocator a(fake_alloc, fake_free, &h, fake_flush);
  void* p = a.allocate(6 << 20);        // class 6 MiB
  EXPECT(p);
  a.release(p);                         // cached: 6 MiB of 10 held
  void* q = a.allocate(5 << 20);        // class 5 MiB: raw alloc fails, flush, retry succeeds
  EXPECT(q);
  AllocatorStats s = a.stats();
  EXPECT(s.oom_flushes == 1 && s.cached_blocks == 0 && s.reserved_bytes == (5 << 20));
  void* r = a.allocate(8 << 20);        // nothing cached to flush: nullptr, no crash
  EXPECT(r == nullptr);
  a.release(q);
  a.empty_cache();
  EXPECT(h.used == 0);
}

void test_no_cache() {
  FakeHeap h;
  CachingAllocator a(fake_alloc, fake_free, &h);
  a.set_caching(false);
  void* p = a.allocate(100);
  a.release(p);
  EXPECT(h.frees == 1 && a.stats().reserved_bytes == 0);
}

void test_layout() {
  // contiguous 3-d: one dim
  Layout L = make_layout({2, 3, 4}, {{12, 4, 1}, {12, 4, 1}});
  EXPECT(L.ndim() == 1 && L.sizes[0] == 24 && L.dense() && L.small_index);
  // row broadcast (bias add): out (R,C) contiguous, b (C) expanded -> 2 dims
  L = make_layout({5, 7}, {{7, 1}, {7, 1}, {0, 1}});
  EXPECT(L.ndim() == 2 && L.sizes[0] == 5 && L.sizes[1] == 7 && !L.dense());
  // scalar broadcast: stays dense with a stride-0 operand
  L = make_layout({4, 8}, {{8, 1}, {0, 0}});
  EXPECT(L.ndim() == 1 && L.strides[1][0] == 0 && L.dense());
  // transpose: not mergeable
  L = make_layout({3, 4}, {{4, 1}, {1, 3}});
  EXPECT(L.ndim() == 2);
  // size-1 dims vanish; 0-d stays 0-d
  L = make_layout({1, 6, 1}, {{6, 1, 1}, {6, 1, 1}});
  EXPECT(L.ndim() == 1 && L.sizes[0] == 6);
  L = make_layout({}, {{}, {}});
  EXPECT(L.ndim() == 0 && L.numel == 1 && L.dense());
  // narrowed rows (stride 10 over 4 columns) keep two dims
  L = make_layout({3, 4}, {{4, 1}, {10, 1}});
  EXPECT(L.ndim() == 2 && L.strides[1][0] == 10);
  // large offsets force 64-bit indexing
  L = make_layout({2, 3}, {{3, 1}, {int64_t(1) << 31, 1}});
  EXPECT(!L.small_index);
  L = make_layout({int64_t(1) << 31}, {{1}});
  EXPECT(!L.small_index);
  // too many dims after merging -> clear error
  std::vector<int64_t> shape(12, 2), st(12);
  for (int i = 0; i < 12; i++) st[i] = int64_t(1) << (2 * (11 - i) + 1);   // gaps: nothing merges
  bool threw = false;
  try { make_layout(shape, {st}); } catch (const Error& e) { threw = std::string(e.what()).find("contiguous") != std::string::npos; }
  EXPECT(threw);
  EXPECT(grid_for(0, 256, 132) == 1);
  EXPECT(grid_for(1000, 256, 132) == 4);
  EXPECT(grid_for(int64_t(1) << 40, 256, 132) == 132 * 8);
}

void test_fastdiv() {
  std::mt19937 rng(7);
  std::vector<uint32_t> divs;
  for (uint32_t d = 1; d < 3000; d++) divs.push_back(d);
  for (int i = 0; i < 2000; i++) divs.push_back(1 + rng() % 0x7fffffffu);
  divs.push_back(0x7fffffffu);
  for (uint32_t d : divs) {
    FastDiv f(d);
    for (int k = 0; k < 200; k++) {
      uint32_t n = k < 100 ? (uint32_t)k * 7919u % 0x7fffffffu : rng() % 0x7fffffffu;
      if (f.div(n) != n / d) { g_fail++; std::printf("FAIL fastdiv %u / %u: %u\n", n, d, f.div(n)); return; }
    }
    uint32_t edge[] = {d - 1, d, d + 1, 0x7ffffffeu, 0x7fffffffu - 1};
    for (uint32_t n : edge) if (n < 0x7fffffffu && f.div(n) != n / d) { g_fail++; std::printf("FAIL fastdiv edge %u / %u\n", n, d); return; }
    g_checks++;
  }
}

void test_dispatch_without_backend() {
  // This binary links only peftkit_core: the CUDA table must be empty and say so clearly.
  Tensor t = Tensor::empty({2}, DType::F32);
  EXPECT(!any_cuda(t));
  EXPECT(!any_cuda(t, Tensor()));
  bool threw = false;
  try { cuda_fn(&CudaOps::matmul, "matmul"); } catch (const Error& e) {
    threw = std::string(e.what()).find("matmul: tensors on 'cuda' need a peftkit build with the CUDA backend") == 0;
  }
  EXPECT(threw);
  threw = false;
  try { Tensor::empty({2}, DType::F32, Device::CUDA); } catch (const Error& e) { threw = true; }
  EXPECT(threw);
}

}  // namespace

int main() {
  test_size_classes();
  test_reuse_and_stats();
  test_oom_flush();
  test_no_cache();
  test_layout();
  test_fastdiv();
  test_dispatch_without_backend();
  std::printf("cuda_host_test: %d checks, %d failures\n", g_checks, g_fail);
  return g_fail ? 1 : 0;
}
