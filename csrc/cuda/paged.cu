// paged.cu — paged optimizer states on the GPU: CUDA managed (unified) memory, the twin of
// core/mapped_storage's file-backed host mappings.
//
// empty_managed(shape, dtype) returns a zero-filled tensor whose storage comes from
// cudaMallocManaged (device = cuda: every kernel takes it as it is). The driver migrates its pages
// on demand; prefetch_managed() moves a tensor's pages to the GPU (or back to the host) ahead of
// use with cudaMemPrefetchAsync on the backend stream (CUDA 13 signature, with a cudaMemLocation),
// so the optimizer step does not fault page by page.
//
// Managed memory must never oversubscribe the device (it can hang the GPU): an allocation is
// refused when the managed bytes peftkit holds plus the request plus a 256 MiB margin exceed the
// device's free memory at that moment. Allocate paged states up front, before prefetching any.
#include <atomic>
#include <mutex>
#include <unordered_set>
#include "common.cuh"
#include "core/dispatch.h"
#include "ops.h"

namespace pk {
namespace cuda {

namespace {

constexpr size_t kMargin = size_t(256) << 20;

struct ManagedState {
  std::mutex mu;
  std::unordered_set<const void*> ptrs;
  std::atomic<int64_t> live{0}, peak{0}, count{0};
  int concurrent = -1;   // cudaDevAttrConcurrentManagedAccess of device 0 (-1: not read yet)
};
ManagedState& ms() {
  static ManagedState* s = new ManagedState();   // outlives static destructors (storages may die late)
  return *s;
}

bool concurrent_access() {
  ManagedState& s = ms();
  if (s.concurrent < 0) {
    int v = 0;
    if (cudaDeviceGetAttribute(&v, cudaDevAttrConcurrentManagedAccess, 0) != cudaSuccess) { cudaGetLastError(); v = 0; }
    s.concurrent = v;
  }
  return s.concurrent > 0;
}

Tensor empty_managed_cuda(const Shape& shape, DType dt) {
  const char* op = "emptyManaged";
  ensure_available(op);
  for (int64_t d : shape) PK_CHECK(d >= 0, op, ": negative dimension in shape ", shape_str(shape));
  const size_t nbytes = (size_t)shape_numel(shape) * dtype_size(dt);
  const size_t alloc = std::max<size_t>(nbytes, 256);
  ManagedState& s = ms();
  size_t fr = 0, tot = 0;
  PK_CUDA_CHECK(cudaMemGetInfo(&fr, &tot));
  const size_t live = (size_t)s.live.load();
  PK_CHECK(live + alloc + kMargin <= fr, op, ": refusing to allocate ", alloc, " bytes of CUDA managed memory: peftkit already holds ",
           live, " managed bytes and the device has ", fr, " of ", tot, " bytes free (keeping a ", kMargin >> 20,
           " MiB margin); oversubscribing managed memory can hang the GPU. Use 8-bit states, fewer trainable parameters, "
           "or non-paged states");
  void* p = nullptr;
  cudaError_t e = cudaMallocManaged(&p, alloc, cudaMemAttachGlobal);
  if (e != cudaSuccess) {
    cudaGetLastError();
    fail(op, ": cudaMallocManaged of ", alloc, " bytes failed: ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ")");
  }
  PK_CUDA_CHECK(cudaMemsetAsync(p, 0, alloc, cur_stream()));
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
    cudaStream_t str = static_cast<cudaStream_t>(stream());
    cudaStreamSynchronize(str);   // kernels queued on the stream may still read it
    cudaFree(p);
    cudaGetLastError();
    {
      std::lock_guard<std::mutex> lk(m.mu);
      m.ptrs.erase(p);
    }
    m.live.fetch_sub((int64_t)alloc);
    m.count.fetch_sub(1);
  });
  return Tensor(st, shape, contiguous_strides(shape), 0, dt);
}

bool is_managed_cuda(const Storage* st) {
  if (!st || st->device() != Device::CUDA) return false;
  ManagedState& s = ms();
  std::lock_guard<std::mutex> lk(s.mu);
  return s.ptrs.count(st->data()) > 0;
}

void prefetch_managed_cuda(const Tensor& t, Device to) {
  const char* op = "prefetchManaged";
  check_defined(t, op, "tensor");
  PK_CHECK(is_managed_cuda(t.storage().get()), op, ": ", t.desc(), " is not in CUDA managed memory (make it with emptyManaged)");
  if (!concurrent_access()) return;   // the driver migrates on launch; prefetch is unsupported here
  cudaMemLocation loc{};
  if (to == Device::CUDA) { loc.type = cudaMemLocationTypeDevice; loc.id = 0; }
  else { loc.type = cudaMemLocationTypeHost; loc.id = 0; }
  // the whole storage: views share it, and page granularity makes partial ranges pointless
  PK_CUDA_CHECK(cudaMemPrefetchAsync(t.storage()->data(), t.storage()->nbytes(), loc, 0, cur_stream()));
}

void managed_stats_cuda(int64_t* live, int64_t* peak, int64_t* count) {
  ManagedState& s = ms();
  if (live) *live = s.live.load();
  if (peak) *peak = s.peak.load();
  if (count) *count = s.count.load();
}

struct Registrar {
  Registrar() {
    CudaOps& o = cuda_ops();
    o.empty_managed = empty_managed_cuda;
    o.prefetch_managed = prefetch_managed_cuda;
    o.is_managed = is_managed_cuda;
    o.managed_stats = managed_stats_cuda;
  }
};
Registrar registrar;

}  // namespace

}  // namespace cuda
}  // namespace pk
