// offload.cu — asynchronous activation offload: cuda tensors <-> page-locked host memory on a copy
// stream of their own, for gradient checkpointing (lib/train/recompute.ts, `offload`).
//
// Why: with per-layer recompute the only activations kept through a step are each decoder layer's
// input (B,T,C); offloading them bounds activation memory by one layer whatever the depth. The
// copies only pay off if they overlap compute, hence a second stream, page-locked (pinned) host
// buffers (a pageable copy is synchronous) and events instead of stream synchronisations:
//
//   offload_to_host(x):  main ──E0──► copy stream: D2H into a pinned buffer ──E1
//                        returns the host tensor at once; x's device bytes stay alive (held by the
//                        pending-copy list) until E1 has completed, so the caching allocator (which
//                        is ordered on the main stream only) can never hand them out mid-copy.
//   prefetch_to_device(h): main ──E2──► copy stream: H2D into a fresh cuda tensor ──E3
//                        E2 orders the copy after every kernel already queued on the main stream
//                        (the fresh block may have been freed by one of them). The main stream waits
//                        for E3 either at once (default) or only when wait_copy(y) is called right
//                        before y's first use (defer_wait: the copy overlaps the kernels in between).
//                        Both the host buffer and y's storage are held until E3 has completed.
// Completed copies are retired (storages released, events recycled) by a cheap cudaEventQuery poll
// at every call, i.e. about one layer later. Pinned buffers come from a caching allocator over
// cudaHostAlloc (the same size classes as device memory: cudaHostAlloc costs milliseconds).
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>
#include "common.cuh"
#include "core/dispatch.h"
#include "ops.h"

namespace pk {
namespace cuda {

namespace {

void* pinned_alloc(size_t bytes, void*) {
  void* p = nullptr;
  if (cudaHostAlloc(&p, bytes, cudaHostAllocDefault) != cudaSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  return p;
}
void pinned_free(void* p, void*) { cudaFreeHost(p); }

struct Pending {
  cudaEvent_t done;
  std::shared_ptr<Storage> a, b;   // kept alive until `done` has completed
  const void* ready_key;           // device pointer whose users must wait for `done` (H2D), or null
};

struct OffloadState {
  std::mutex mu;
  cudaStream_t copy = nullptr;
  CachingAllocator* pinned = nullptr;          // leaked on purpose (storages may die late)
  std::vector<cudaEvent_t> free_events;
  std::vector<Pending> pending;
  std::unordered_map<const void*, cudaEvent_t> ready;   // H2D destination -> its completion event
  int64_t d2h_bytes = 0, h2d_bytes = 0, d2h_copies = 0, h2d_copies = 0;
};
OffloadState& os() {
  static OffloadState* s = new OffloadState();
  return *s;
}

// Lazily creates the copy stream and the pinned allocator. Caller holds s.mu.
void init_locked(OffloadState& s, const char* op) {
  ensure_available(op);
  if (!s.copy) PK_CUDA_CHECK(cudaStreamCreateWithFlags(&s.copy, cudaStreamNonBlocking));
  if (!s.pinned) s.pinned = new CachingAllocator(pinned_alloc, pinned_free, nullptr, nullptr);
}

cudaEvent_t take_event_locked(OffloadState& s) {
  if (!s.free_events.empty()) {
    cudaEvent_t e = s.free_events.back();
    s.free_events.pop_back();
    return e;
  }
  cudaEvent_t e;
  PK_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  return e;
}

// Retires completed copies (in order of issue: the copy stream runs them in that order).
void poll_locked(OffloadState& s) {
  size_t k = 0;
  for (; k < s.pending.size(); k++) {
    cudaError_t q = cudaEventQuery(s.pending[k].done);
    if (q == cudaErrorNotReady) break;
    if (q != cudaSuccess) PK_CUDA_CHECK(q);   // a failed copy: report it (sticky errors surface here)
  }
  for (size_t i = 0; i < k; i++) {
    Pending& p = s.pending[i];
    if (p.ready_key) {
      auto it = s.ready.find(p.ready_key);
      if (it != s.ready.end() && it->second == p.done) s.ready.erase(it);
    }
    s.free_events.push_back(p.done);
  }
  s.pending.erase(s.pending.begin(), s.pending.begin() + (std::ptrdiff_t)k);
}

Tensor pinned_empty_locked(OffloadState& s, const Shape& shape, DType dt, const char* op) {
  const size_t nbytes = (size_t)shape_numel(shape) * dtype_size(dt);
  void* p = s.pinned->allocate(std::max<size_t>(nbytes, 1));
  PK_CHECK(p, op, ": could not allocate ", nbytes, " bytes of page-locked host memory (cudaHostAlloc failed; ",
           s.pinned->stats().reserved_bytes, " bytes already pinned)");
  CachingAllocator* pool = s.pinned;
  auto st = Storage::wrap(p, nbytes, Device::CPU, [pool, p] { pool->release(p); });
  return Tensor(st, shape, contiguous_strides(shape), 0, dt);
}

Tensor offload_to_host_cuda(const Tensor& t) {
  const char* op = "offloadToHost";
  check_cuda(t, op, "tensor");
  const Tensor src = contiguous(t);   // a device copy when strided (on the main stream, before E0)
  OffloadState& s = os();
  std::lock_guard<std::mutex> lk(s.mu);
  init_locked(s, op);
  poll_locked(s);
  Tensor host = pinned_empty_locked(s, t.shape(), t.dtype(), op);
  if (host.nbytes() == 0) return host;
  cudaEvent_t e0 = take_event_locked(s), e1 = take_event_locked(s);
  PK_CUDA_CHECK(cudaEventRecord(e0, cur_stream()));
  PK_CUDA_CHECK(cudaStreamWaitEvent(s.copy, e0, 0));
  PK_CUDA_CHECK(cudaMemcpyAsync(host.raw(), src.raw(), host.nbytes(), cudaMemcpyDeviceToHost, s.copy));
  PK_CUDA_CHECK(cudaEventRecord(e1, s.copy));
  s.free_events.push_back(e0);   // recording again later is fine once the copy stream has consumed the wait
  s.pending.push_back({e1, src.storage(), host.storage(), nullptr});
  s.d2h_bytes += (int64_t)host.nbytes();
  s.d2h_copies++;
  return host;
}

Tensor prefetch_to_device_cuda(const Tensor& host, bool defer_wait) {
  const char* op = "prefetchToDevice";
  check_defined(host, op, "tensor");
  PK_CHECK(host.device() == Device::CPU, op, ": argument 'tensor' is ", host.desc(), " on ", device_name(host.device()),
           "; expected a host tensor (from offloadToHost)");
  OffloadState& s = os();
  std::lock_guard<std::mutex> lk(s.mu);
  init_locked(s, op);
  poll_locked(s);
  // A pageable source would make the copy synchronous (and unsafe to overlap): stage it in pinned memory.
  Tensor src = host.contiguous();
  unsigned int flags = 0;
  if (cudaHostGetFlags(&flags, src.raw()) != cudaSuccess) {
    cudaGetLastError();
    Tensor staged = pinned_empty_locked(s, src.shape(), src.dtype(), op);
    if (staged.nbytes()) std::memcpy(staged.raw(), src.raw(), staged.nbytes());
    src = staged;
  }
  Tensor out = Tensor::empty(host.shape(), host.dtype(), Device::CUDA);
  if (out.nbytes() == 0) return out;
  cudaEvent_t e2 = take_event_locked(s), e3 = take_event_locked(s);
  PK_CUDA_CHECK(cudaEventRecord(e2, cur_stream()));
  PK_CUDA_CHECK(cudaStreamWaitEvent(s.copy, e2, 0));
  PK_CUDA_CHECK(cudaMemcpyAsync(out.raw(), src.raw(), out.nbytes(), cudaMemcpyHostToDevice, s.copy));
  PK_CUDA_CHECK(cudaEventRecord(e3, s.copy));
  s.free_events.push_back(e2);
  if (defer_wait) {
    s.ready[out.raw()] = e3;
    s.pending.push_back({e3, out.storage(), src.storage(), out.raw()});
  } else {
    PK_CUDA_CHECK(cudaStreamWaitEvent(cur_stream(), e3, 0));
    s.pending.push_back({e3, out.storage(), src.storage(), nullptr});
  }
  s.h2d_bytes += (int64_t)out.nbytes();
  s.h2d_copies++;
  return out;
}

void wait_copy_cuda(const Tensor& t) {
  const char* op = "waitCopy";
  check_cuda(t, op, "tensor");
  OffloadState& s = os();
  std::lock_guard<std::mutex> lk(s.mu);
  if (!s.copy) return;   // nothing was ever prefetched
  auto it = s.ready.find(t.raw());
  if (it != s.ready.end()) {
    PK_CUDA_CHECK(cudaStreamWaitEvent(cur_stream(), it->second, 0));
    s.ready.erase(it);
  }
  poll_locked(s);
}

void offload_stats_cuda(OffloadStats* out) {
  OffloadState& s = os();
  std::lock_guard<std::mutex> lk(s.mu);
  if (s.copy) poll_locked(s);
  OffloadStats r;
  if (s.pinned) {
    AllocatorStats a = s.pinned->stats();
    r.pinned_bytes = a.allocated_bytes;
    r.pinned_reserved_bytes = a.reserved_bytes;
    r.pinned_peak_bytes = a.peak_allocated_bytes;
  }
  r.pending_copies = (int64_t)s.pending.size();
  r.d2h_bytes = s.d2h_bytes;
  r.h2d_bytes = s.h2d_bytes;
  r.d2h_copies = s.d2h_copies;
  r.h2d_copies = s.h2d_copies;
  *out = r;
}

struct Registrar {
  Registrar() {
    CudaOps& o = cuda_ops();
    o.offload_to_host = offload_to_host_cuda;
    o.prefetch_to_device = prefetch_to_device_cuda;
    o.wait_copy = wait_copy_cuda;
    o.offload_stats = offload_stats_cuda;
  }
};
Registrar registrar;

}  // namespace

// Unused pinned blocks go back to the driver. A block in the pool has no copy in flight: storages
// stay alive (and their blocks allocated) until their copy's event completed (Pending).
void offload_empty_cache() {
  OffloadState& s = os();
  std::lock_guard<std::mutex> lk(s.mu);
  if (s.copy) poll_locked(s);
  if (s.pinned) s.pinned->empty_cache();
}

}  // namespace cuda
}  // namespace pk
