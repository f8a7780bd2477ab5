// paged.cpp (emulator) — paged.cu's managed-memory entries over host memory: emptyManaged returns
// a zero-filled cuda-tagged tensor outside the caching allocator (as cudaMallocManaged is), with
// paged.cu's refusal to oversubscribe the (emulated) device and its live/peak/count statistics;
// prefetchManaged validates its argument as paged.cu does and moves nothing (host memory already).
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_set>
#include "emu.h"

namespace pk {
namespace cuda {

namespace {

constexpr size_t kMargin = size_t(256) << 20;

struct ManagedState {
  std::mutex mu;
  std::unordered_set<const void*> ptrs;
  std::atomic<int64_t> live{0}, peak{0}, count{0};
};
ManagedState& ms() {
  static ManagedState* s = new ManagedState();   // outlives static destructors (storages may die late)
  return *s;
}

Tensor empty_managed_emu(const Shape& shape, DType dt) {
  const char* op = "emptyManaged";
  for (int64_t d : shape) PK_CHECK(d >= 0, op, ": negative dimension in shape ", shape_str(shape));
  const size_t nbytes = (size_t)shape_numel(shape) * dtype_size(dt);
  const size_t alloc = std::max<size_t>(nbytes, 256);
  ManagedState& s = ms();
  const size_t live = (size_t)s.live.load();
  const size_t fr = emu_free_bytes(), tot = emu_total_bytes();   // paged.cu's cudaMemGetInfo
  PK_CHECK(live + alloc + kMargin <= fr, op, ": refusing to allocate ", alloc, " bytes of CUDA managed memory: peftkit already holds ",
           live, " managed bytes and the device has ", fr, " of ", tot, " bytes free (keeping a ", kMargin >> 20,
           " MiB margin); oversubscribing managed memory can hang the GPU. Use 8-bit states, fewer trainable parameters, "
           "or non-paged states");
  void* p = nullptr;
  if (posix_memalign(&p, 4096, alloc) != 0) fail(op, ": allocating ", alloc, " bytes of (emulated) managed memory failed");
  std::memset(p, 0, alloc);
  {
    std::lock_guard<std::mutex> lk(s.mu);
    s.ptrs.insert(p);
  }
  int64_t now = s.live.fetch_add((int64_t)alloc) + (int64_t)alloc;
  int64_t pk = s.peak.load();
  while (now > pk && !s.peak.compare_exchange_weak(pk, now)) {}
  s.count.fetch_add(1);
  auto st = Storage::wrap(p, alloc, Device::CUDA, [p, alloc] {
    ManagedState& m = ms();
    {
      std::lock_guard<std::mutex> lk(m.mu);
      m.ptrs.erase(p);
    }
    std::free(p);
    m.live.fetch_sub((int64_t)alloc);
    m.count.fetch_sub(1);
  });
  return Tensor(st, shape, contiguous_strides(shape), 0, dt);
}

bool is_managed_emu(const Storage* st) {
  if (!st || st->device() != Device::CUDA) return false;
  ManagedState& s = ms();
  std::lock_guard<std::mutex> lk(s.mu);
  return s.ptrs.count(st->data()) > 0;
}

void prefetch_managed_emu(const Tensor& t, Device) {
  const char* op = "prefetchManaged";
  check_defined(t, op, "tensor");
  PK_CHECK(is_managed_emu(t.storage().get()), op, ": ", t.desc(), " is not in CUDA managed memory (make it with emptyManaged)");
}

void managed_stats_emu(int64_t* live, int64_t* peak, int64_t* count) {
  ManagedState& s = ms();
  if (live) *live = s.live.load();
  if (peak) *peak = s.peak.load();
  if (count) *count = s.count.load();
}

struct Registrar {
  Registrar() {
    CudaOps& o = cuda_ops();
    o.empty_managed = empty_managed_emu;
    o.prefetch_managed = prefetch_managed_emu;
    o.is_managed = is_managed_emu;
    o.managed_stats = managed_stats_emu;
  }
};
Registrar registrar;

}  // namespace
}  // namespace cuda
}  // namespace pk
