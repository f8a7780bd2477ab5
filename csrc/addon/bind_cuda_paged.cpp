// bind_cuda_paged.cpp — CUDA managed memory for paged optimizer states, and the CUDA-only kernel
// entry points that have no CPU binding to dispatch through (csrc/cuda/{paged,norm,random,optim}.cu).
//
// Everything goes through the op table of core/dispatch.h, so this file builds the same with and
// without CUDA; without the backend every call throws "... need a peftkit build with the CUDA backend".
//
//   emptyManaged(shape, dtype) -> zero-filled cuda tensor in managed memory. Refused (clear error)
//       when peftkit's managed bytes + the request + 256 MiB exceed the device's free memory.
//   prefetchManaged(tensor | tensor[], 'cuda' | 'cpu') -> undefined: cudaMemPrefetchAsync of each
//       tensor's pages on the backend stream (no-op on devices without concurrent managed access).
//   isManaged(tensor) -> boolean;  managedStats() -> { liveBytes, peakBytes, allocations } (zeros without CUDA)
//   cuda_add_rms_norm(x, residual, weight|null, eps, unitOffset) -> [y, sum, rstd]:
//       sum = x + residual (rounded to x's dtype), y = rms_norm(sum)  (fused residual add)
//   cuda_rand(shape, seed, dtype, lo, hi) / cuda_randn(shape, seed, dtype, mean, std) -> cuda tensor,
//       the same Philox stream as rand/randn on the CPU
//   cuda_adamw_multi(params[], grads[], expAvgs[], expAvgSqs[], lr, beta1, beta2, eps, weightDecay, step):
//       one fused launch over every tensor (identical to adamw_step on each)
#include "core/dispatch.h"
#include "cpu/optim.h"
#include "registry.h"

namespace pka {
namespace {

using pk::Tensor;

Napi::Value empty_managed(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::cuda_fn(&pk::CudaOps::empty_managed, "emptyManaged")(ints_arg(info, 0, "shape"),
                                                                                   dtype_arg(info, 1, "dtype")));
}

Napi::Value prefetch_managed(const Napi::CallbackInfo& info) {
  std::vector<Tensor> ts;
  if (info.Length() > 0 && info[0].IsArray()) ts = tensors_arg(info, 0, "tensors");
  else ts.push_back(tensor_arg(info, 0, "tensor"));
  const std::string to = str_arg(info, 1, "device");
  PK_CHECK(to == "cuda" || to == "cpu", "prefetchManaged: device must be 'cuda' or 'cpu', got '", to, "'");
  auto fn = pk::cuda_fn(&pk::CudaOps::prefetch_managed, "prefetchManaged");
  for (const Tensor& t : ts) fn(t, to == "cuda" ? pk::Device::CUDA : pk::Device::CPU);
  return info.Env().Undefined();
}

Napi::Value is_managed(const Napi::CallbackInfo& info) {
  Tensor t = tensor_arg(info, 0, "tensor");
  auto fn = pk::cuda_ops().is_managed;
  return Napi::Boolean::New(info.Env(), fn != nullptr && fn(t.storage().get()));
}

Napi::Value managed_stats(const Napi::CallbackInfo& info) {
  int64_t live = 0, peak = 0, n = 0;
  if (auto fn = pk::cuda_ops().managed_stats) fn(&live, &peak, &n);
  auto o = Napi::Object::New(info.Env());
  o.Set("liveBytes", (double)live);
  o.Set("peakBytes", (double)peak);
  o.Set("allocations", (double)n);
  return o;
}

Napi::Value add_rms_norm(const Napi::CallbackInfo& info) {
  Tensor sum, rstd;
  Tensor y = pk::cuda_fn(&pk::CudaOps::add_rms_norm_forward, "add_rms_norm")(
      tensor_arg(info, 0, "x"), tensor_arg(info, 1, "residual"), opt_tensor_arg(info, 2, "weight"), num_arg(info, 3, "eps"),
      bool_arg(info, 4, "unitOffset", false), &sum, &rstd);
  return wrap_list(info.Env(), {y, sum, rstd});
}

Napi::Value rand(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::cuda_fn(&pk::CudaOps::rand_uniform, "rand")(ints_arg(info, 0, "shape"), (uint64_t)int_arg(info, 1, "seed"),
                                                                          dtype_arg(info, 2, "dtype"), opt_num_arg(info, 3, "lo", 0.0),
                                                                          opt_num_arg(info, 4, "hi", 1.0)));
}

Napi::Value randn(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::cuda_fn(&pk::CudaOps::rand_normal, "randn")(ints_arg(info, 0, "shape"), (uint64_t)int_arg(info, 1, "seed"),
                                                                          dtype_arg(info, 2, "dtype"), opt_num_arg(info, 3, "mean", 0.0),
                                                                          opt_num_arg(info, 4, "std", 1.0)));
}

Napi::Value adamw_multi(const Napi::CallbackInfo& info) {
  pk::AdamWHyper h;
  h.lr = num_arg(info, 4, "lr");
  h.beta1 = num_arg(info, 5, "beta1");
  h.beta2 = num_arg(info, 6, "beta2");
  h.eps = num_arg(info, 7, "eps");
  h.weight_decay = num_arg(info, 8, "weightDecay");
  h.step = int_arg(info, 9, "step");
  pk::cuda_fn(&pk::CudaOps::adamw_multi, "adamw_multi")(tensors_arg(info, 0, "params"), tensors_arg(info, 1, "grads"),
                                                        tensors_arg(info, 2, "expAvgs"), tensors_arg(info, 3, "expAvgSqs"), h);
  return info.Env().Undefined();
}

PK_BIND("emptyManaged", empty_managed);
PK_BIND("prefetchManaged", prefetch_managed);
PK_BIND("isManaged", is_managed);
PK_BIND("managedStats", managed_stats);
PK_BIND("cuda_add_rms_norm", add_rms_norm);
PK_BIND("cuda_rand", rand);
PK_BIND("cuda_randn", randn);
PK_BIND("cuda_adamw_multi", adamw_multi);

}  // namespace
}  // namespace pka
