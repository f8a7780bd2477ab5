// offload.cpp (emulator) — offload.cu's activation offload with its device rules and its protocol:
// offload_to_host takes a cuda tensor and returns a host copy; prefetch_to_device takes a host
// tensor and returns a cuda tensor.
//
// A deferred prefetch (defer_wait) is the part a GPU can get wrong silently: until wait_copy(t)
// the copy may not have landed. The emulator makes that visible: a deferred destination is filled
// with NaN and receives its bytes only at wait_copy, so a caller that uses it before waiting
// computes NaNs here instead of racing on the GPU.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <unordered_map>
#include "emu.h"

namespace pk {
namespace cuda {

namespace {

struct Deferred {
  std::weak_ptr<Storage> dst;
  Tensor src;   // contiguous host bytes to copy at wait_copy
};

struct EmuOffload {
  std::mutex mu;
  std::unordered_map<const void*, Deferred> deferred;   // destination data pointer -> its pending copy
  int64_t d2h_bytes = 0, h2d_bytes = 0, d2h_copies = 0, h2d_copies = 0;
  int64_t host_live = 0, host_peak = 0;
};
EmuOffload& eo() {
  static EmuOffload* s = new EmuOffload();
  return *s;
}

// Deferred copies whose destination is gone are dropped (the caller released it without using it).
void sweep_locked(EmuOffload& s) {
  for (auto it = s.deferred.begin(); it != s.deferred.end();) {
    if (it->second.dst.expired()) it = s.deferred.erase(it);
    else ++it;
  }
}

Tensor offload_to_host_emu(const Tensor& t) {
  check_cuda(t, "offloadToHost", "tensor");
  emu::Ctx c;
  const Tensor src = c.host(t).contiguous();
  EmuOffload& s = eo();
  std::lock_guard<std::mutex> lk(s.mu);
  sweep_locked(s);
  // The "pinned" host buffer: counted while alive, as offload.cu's pinned pool.
  const size_t n = src.nbytes();
  void* p = std::malloc(std::max<size_t>(n, 1));
  PK_CHECK(p, "offloadToHost: out of host memory allocating ", n, " bytes");
  if (n) std::memcpy(p, src.raw(), n);
  s.host_live += (int64_t)n;
  s.host_peak = std::max(s.host_peak, s.host_live);
  auto st = Storage::wrap(p, n, Device::CPU, [p, n] {
    std::free(p);
    EmuOffload& e = eo();
    std::lock_guard<std::mutex> g(e.mu);
    e.host_live -= (int64_t)n;
  });
  s.d2h_bytes += (int64_t)n;
  if (n) s.d2h_copies++;   // as offload.cu: an empty tensor issues no copy
  return Tensor(st, t.shape(), contiguous_strides(t.shape()), 0, t.dtype());
}

Tensor prefetch_to_device_emu(const Tensor& host, bool defer_wait) {
  const char* op = "prefetchToDevice";
  check_defined(host, op, "tensor");
  PK_CHECK(host.device() == Device::CPU, op, ": argument 'tensor' is ", host.desc(), " on ", device_name(host.device()),
           "; expected a host tensor (from offloadToHost)");
  const Tensor src = host.contiguous();
  Tensor out = Tensor::empty(host.shape(), host.dtype(), Device::CUDA);
  const size_t n = out.nbytes();
  EmuOffload& s = eo();
  std::lock_guard<std::mutex> lk(s.mu);
  sweep_locked(s);
  if (defer_wait && n) {
    if (is_float(out.dtype())) {
      const Tensor nan = Tensor::full(out.shape(), std::numeric_limits<double>::quiet_NaN(), out.dtype());
      std::memcpy(out.raw(), nan.raw(), n);
    } else {
      std::memset(out.raw(), 0xA5, n);
    }
    s.deferred[out.raw()] = {out.storage(), src.clone()};
  } else if (n) {
    std::memcpy(out.raw(), src.raw(), n);
  }
  s.h2d_bytes += (int64_t)n;
  if (n) s.h2d_copies++;
  return out;
}

void wait_copy_emu(const Tensor& t) {
  check_cuda(t, "waitCopy", "tensor");
  EmuOffload& s = eo();
  std::lock_guard<std::mutex> lk(s.mu);
  auto it = s.deferred.find(t.raw());
  if (it != s.deferred.end()) {
    if (auto dst = it->second.dst.lock()) std::memcpy(dst->data(), it->second.src.raw(), it->second.src.nbytes());
    s.deferred.erase(it);
  }
  sweep_locked(s);
}

void offload_stats_emu(OffloadStats* out) {
  EmuOffload& s = eo();
  std::lock_guard<std::mutex> lk(s.mu);
  sweep_locked(s);
  OffloadStats r;
  r.pinned_bytes = s.host_live;
  r.pinned_reserved_bytes = s.host_live;
  r.pinned_peak_bytes = s.host_peak;
  r.pending_copies = (int64_t)s.deferred.size();
  r.d2h_bytes = s.d2h_bytes;
  r.h2d_bytes = s.h2d_bytes;
  r.d2h_copies = s.d2h_copies;
  r.h2d_copies = s.h2d_copies;
  *out = r;
}

struct Registrar {
  Registrar() {
    CudaOps& o = cuda_ops();
    o.offload_to_host = offload_to_host_emu;
    o.prefetch_to_device = prefetch_to_device_emu;
    o.wait_copy = wait_copy_emu;
    o.offload_stats = offload_stats_emu;
  }
};
Registrar registrar;

}  // namespace
}  // namespace cuda
}  // namespace pk
