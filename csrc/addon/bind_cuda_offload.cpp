// bind_cuda_offload.cpp — activation offload to page-locked host memory (csrc/cuda/offload.cu), for
// gradient checkpointing with `offload` (lib/train/recompute.ts).
//
// Through the op table of core/dispatch.h, so this file builds the same with and without CUDA;
// without the backend every call throws "... need a peftkit build with the CUDA backend".
//
//   offloadToHost(cudaTensor) -> host tensor (pinned); the copy runs on the copy stream, the call
//       returns at once; the host bytes are valid for prefetchToDevice (never read them from JS
//       before cudaSynchronize()).
//   prefetchToDevice(hostTensor, deferWait = false) -> cuda tensor; with deferWait the backend
//       stream waits for the copy only at waitCopy(tensor), which must come before its first use.
//   waitCopy(cudaTensor) -> undefined
//   offloadStats() -> { pinnedBytes, pinnedReservedBytes, pinnedPeakBytes, pendingCopies,
//                        d2hBytes, h2dBytes, d2hCopies, h2dCopies } (zeros without CUDA)
#include "core/dispatch.h"
#include "registry.h"

namespace pka {
namespace {

Napi::Value offload_to_host(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::cuda_fn(&pk::CudaOps::offload_to_host, "offloadToHost")(tensor_arg(info, 0, "tensor")));
}

Napi::Value prefetch_to_device(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::cuda_fn(&pk::CudaOps::prefetch_to_device, "prefetchToDevice")(tensor_arg(info, 0, "tensor"),
                                                                                            bool_arg(info, 1, "deferWait", false)));
}

Napi::Value wait_copy(const Napi::CallbackInfo& info) {
  pk::cuda_fn(&pk::CudaOps::wait_copy, "waitCopy")(tensor_arg(info, 0, "tensor"));
  return info.Env().Undefined();
}

Napi::Value offload_stats(const Napi::CallbackInfo& info) {
  pk::OffloadStats s;
  if (pk::cuda_ops().offload_stats) pk::cuda_ops().offload_stats(&s);
  auto o = Napi::Object::New(info.Env());
  o.Set("pinnedBytes", (double)s.pinned_bytes);
  o.Set("pinnedReservedBytes", (double)s.pinned_reserved_bytes);
  o.Set("pinnedPeakBytes", (double)s.pinned_peak_bytes);
  o.Set("pendingCopies", (double)s.pending_copies);
  o.Set("d2hBytes", (double)s.d2h_bytes);
  o.Set("h2dBytes", (double)s.h2d_bytes);
  o.Set("d2hCopies", (double)s.d2h_copies);
  o.Set("h2dCopies", (double)s.h2d_copies);
  return o;
}

PK_BIND("offloadToHost", offload_to_host);
PK_BIND("prefetchToDevice", prefetch_to_device);
PK_BIND("waitCopy", wait_copy);
PK_BIND("offloadStats", offload_stats);

}  // namespace
}  // namespace pka
