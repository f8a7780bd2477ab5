// bind_cuda.cpp — the CUDA backend's JS surface.
//
// Always present (CPU-only builds too):
//   cudaInfo() -> { built, available, emulated, reason, driverVersion, runtimeVersion, cublasLt, devices: [...] }
//     (emulated: true for the dev/CI host-memory emulator, -DPEFTKIT_CUDA_EMU=ON: no GPU, CPU kernels)
//   toDevice(t, 'cpu' | 'cuda') -> tensor on that device (t itself when already there)
//   cudaSynchronize(), cudaMemoryStats(), cudaEmptyCache()
// With PEFTKIT_WITH_CUDA, direct entry points into the CUDA kernels for the GPU test suite
// (test/gpu), named cuda_<cpu binding> with the CPU bindings' arguments: they call pk::cuda::*
// without going through op dispatch, so the suite checks each CUDA twin against its CPU op.
#include <cmath>
#include "cpu/elementwise.h"
#include "registry.h"
#ifdef PEFTKIT_WITH_CUDA
#include "cuda/ops.h"
#include "cuda/runtime.h"
#endif

namespace pka {
namespace {

using pk::Tensor;

pk::Device device_arg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  std::string s = str_arg(info, i, name);
  if (s == "cpu") return pk::Device::CPU;
  if (s == "cuda" || s == "cuda:0") return pk::Device::CUDA;
  pk::fail("argument '", name, "' must be 'cpu' or 'cuda', got '", s, "'");
}

#ifdef PEFTKIT_WITH_CUDA

Napi::Value cuda_info(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  pk::cuda::RuntimeInfo r = pk::cuda::query();
  auto o = Napi::Object::New(env);
  o.Set("built", true);
  o.Set("available", r.available);
  o.Set("emulated", r.emulated);   // the host-memory emulator (csrc/cuda_emu): no GPU, CPU kernels
  o.Set("reason", r.reason);
  o.Set("driverVersion", r.driver_version);
  o.Set("runtimeVersion", r.runtime_version);
  o.Set("cublasLt", pk::cuda::have_cublaslt());
  auto devs = Napi::Array::New(env, r.devices.size());
  for (size_t i = 0; i < r.devices.size(); i++) {
    const auto& d = r.devices[i];
    auto e = Napi::Object::New(env);
    e.Set("index", d.index);
    e.Set("name", d.name);
    e.Set("computeCapability", std::to_string(d.major) + "." + std::to_string(d.minor));
    e.Set("multiprocessors", d.multiprocessors);
    e.Set("totalBytes", (double)d.total_bytes);
    e.Set("freeBytes", (double)d.free_bytes);
    devs.Set((uint32_t)i, e);
  }
  o.Set("devices", devs);
  return o;
}

Napi::Value to_device(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::cuda::to_device(tensor_arg(info, 0, "tensor"), device_arg(info, 1, "device")));
}

Napi::Value cuda_synchronize(const Napi::CallbackInfo& info) {
  if (pk::cuda::available()) pk::cuda::synchronize();
  return info.Env().Undefined();
}

Napi::Value cuda_memory_stats(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  pk::cuda::AllocatorStats s = pk::cuda::allocator_stats();
  auto o = Napi::Object::New(env);
  o.Set("allocatedBytes", (double)s.allocated_bytes);
  o.Set("reservedBytes", (double)s.reserved_bytes);
  o.Set("peakAllocatedBytes", (double)s.peak_allocated_bytes);
  o.Set("peakReservedBytes", (double)s.peak_reserved_bytes);
  o.Set("requests", (double)s.requests);
  o.Set("cacheHits", (double)s.cache_hits);
  o.Set("deviceAllocs", (double)s.device_allocs);
  o.Set("deviceFrees", (double)s.device_frees);
  o.Set("oomFlushes", (double)s.oom_flushes);
  o.Set("liveBlocks", (double)s.live_blocks);
  o.Set("cachedBlocks", (double)s.cached_blocks);
  return o;
}

Napi::Value cuda_empty_cache(const Napi::CallbackInfo& info) {
  if (pk::cuda::available()) pk::cuda::synchronize();
  pk::cuda::empty_cache();
  return info.Env().Undefined();
}

// ---- direct kernel entry points (GPU tests) ----
pk::BinaryOp binary_op(const std::string& s) {
  static const char* n[] = {"add", "sub", "mul", "div", "pow", "maximum", "minimum"};
  for (int i = 0; i < 7; i++) if (s == n[i]) return (pk::BinaryOp)i;
  pk::fail("unknown binary op '", s, "'");
}
pk::UnaryOp unary_op(const std::string& s) {
  static const char* n[] = {"neg", "exp", "log", "sqrt", "rsqrt", "abs", "sigmoid", "tanh", "silu", "gelu", "gelu_tanh",
                            "relu", "sin", "cos", "square", "reciprocal", "sign", "log1p", "expm1"};
  for (int i = 0; i < 19; i++) if (s == n[i]) return (pk::UnaryOp)i;
  pk::fail("unknown unary op '", s, "'");
}

Napi::Value c_binary(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::cuda::binary_forward(binary_op(str_arg(info, 0, "op")), tensor_arg(info, 1, "a"), tensor_arg(info, 2, "b")));
}
Napi::Value c_binary_backward(const Napi::CallbackInfo& info) {
  Tensor da, db;
  pk::cuda::binary_backward(binary_op(str_arg(info, 0, "op")), tensor_arg(info, 1, "a"), tensor_arg(info, 2, "b"),
                            tensor_arg(info, 3, "grad"), bool_arg(info, 4, "needA", true), bool_arg(info, 5, "needB", true), &da, &db);
  return wrap_list(info.Env(), {da, db});
}
Napi::Value c_scalar(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::cuda::scalar_forward(binary_op(str_arg(info, 0, "op")), tensor_arg(info, 1, "x"), num_arg(info, 2, "scalar"),
                                                   bool_arg(info, 3, "scalarFirst", false)));
}
Napi::Value c_scalar_backward(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::cuda::scalar_backward(binary_op(str_arg(info, 0, "op")), tensor_arg(info, 1, "x"), num_arg(info, 2, "scalar"),
                                                    bool_arg(info, 3, "scalarFirst", false), tensor_arg(info, 4, "grad")));
}
Napi::Value c_unary(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::cuda::unary_forward(unary_op(str_arg(info, 0, "op")), tensor_arg(info, 1, "x")));
}
Napi::Value c_unary_backward(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::cuda::unary_backward(unary_op(str_arg(info, 0, "op")), tensor_arg(info, 1, "x"), opt_tensor_arg(info, 2, "y"),
                                                   tensor_arg(info, 3, "grad")));
}
Napi::Value c_clamp(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::cuda::clamp(tensor_arg(info, 0, "x"), opt_num_arg(info, 1, "min", -INFINITY), opt_num_arg(info, 2, "max", INFINITY)));
}
Napi::Value c_clamp_backward(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::cuda::clamp_backward(tensor_arg(info, 0, "x"), opt_num_arg(info, 1, "min", -INFINITY),
                                                   opt_num_arg(info, 2, "max", INFINITY), tensor_arg(info, 3, "grad")));
}
Napi::Value c_sum(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::cuda::sum(tensor_arg(info, 0, "x"), ints_arg(info, 1, "dims"), bool_arg(info, 2, "keepdim", false)));
}
Napi::Value c_mean(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::cuda::mean(tensor_arg(info, 0, "x"), ints_arg(info, 1, "dims"), bool_arg(info, 2, "keepdim", false)));
}
Napi::Value c_sum_to_shape(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::cuda::sum_to_shape(tensor_arg(info, 0, "grad"), ints_arg(info, 1, "shape")));
}
Napi::Value c_max_dim(const Napi::CallbackInfo& info) {
  Tensor v, i;
  pk::cuda::max_dim(tensor_arg(info, 0, "x"), int_arg(info, 1, "dim"), bool_arg(info, 2, "keepdim", false), &v, &i);
  return wrap_list(info.Env(), {v, i});
}
Napi::Value c_matmul(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::cuda::matmul(tensor_arg(info, 0, "a"), tensor_arg(info, 1, "b"), bool_arg(info, 2, "transA", false),
                                           bool_arg(info, 3, "transB", false)));
}
Napi::Value c_linear(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::cuda::linear(tensor_arg(info, 0, "x"), tensor_arg(info, 1, "weight"), opt_tensor_arg(info, 2, "bias")));
}
Napi::Value c_linear_weight_grad(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::cuda::linear_weight_grad(tensor_arg(info, 0, "grad"), tensor_arg(info, 1, "x"), opt_tensor_arg(info, 2, "acc")));
}
Napi::Value c_cast(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::cuda::cast(tensor_arg(info, 0, "x"), dtype_arg(info, 1, "dtype")));
}
Napi::Value c_contiguous(const Napi::CallbackInfo& info) { return wrap(info.Env(), pk::cuda::contiguous(tensor_arg(info, 0, "x"))); }
Napi::Value c_clone(const Napi::CallbackInfo& info) { return wrap(info.Env(), pk::cuda::clone(tensor_arg(info, 0, "x"))); }
// cuda_copy_(dst, src): src broadcast to dst's shape, converted; devices may differ.
Napi::Value c_copy_(const Napi::CallbackInfo& info) {
  Tensor dst = tensor_arg(info, 0, "dst"), src = tensor_arg(info, 1, "src");
  pk::cuda::copy_into(dst, src.expand(dst.shape()));
  return info.Env().Undefined();
}
Napi::Value c_fill_(const Napi::CallbackInfo& info) {
  pk::cuda::fill(tensor_arg(info, 0, "x"), num_arg(info, 1, "value"));
  return info.Env().Undefined();
}
Napi::Value c_full(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::cuda::full(ints_arg(info, 0, "shape"), num_arg(info, 1, "value"), dtype_arg(info, 2, "dtype")));
}
Napi::Value c_zeros(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::cuda::zeros(ints_arg(info, 0, "shape"), dtype_arg(info, 1, "dtype")));
}

PK_BIND("cuda_binary", c_binary);
PK_BIND("cuda_binary_backward", c_binary_backward);
PK_BIND("cuda_scalar", c_scalar);
PK_BIND("cuda_scalar_backward", c_scalar_backward);
PK_BIND("cuda_unary", c_unary);
PK_BIND("cuda_unary_backward", c_unary_backward);
PK_BIND("cuda_clamp", c_clamp);
PK_BIND("cuda_clamp_backward", c_clamp_backward);
PK_BIND("cuda_sum", c_sum);
PK_BIND("cuda_mean", c_mean);
PK_BIND("cuda_sum_to_shape", c_sum_to_shape);
PK_BIND("cuda_max_dim", c_max_dim);
PK_BIND("cuda_matmul", c_matmul);
PK_BIND("cuda_linear", c_linear);
PK_BIND("cuda_linear_weight_grad", c_linear_weight_grad);
PK_BIND("cuda_cast", c_cast);
PK_BIND("cuda_contiguous", c_contiguous);
PK_BIND("cuda_clone", c_clone);
PK_BIND("cuda_copy_", c_copy_);
PK_BIND("cuda_fill_", c_fill_);
PK_BIND("cuda_full", c_full);
PK_BIND("cuda_zeros", c_zeros);

#else  // CPU-only build

Napi::Value cuda_info(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  auto o = Napi::Object::New(env);
  o.Set("built", false);
  o.Set("available", false);
  o.Set("emulated", false);
  o.Set("reason", "built without CUDA");
  o.Set("driverVersion", 0);
  o.Set("runtimeVersion", 0);
  o.Set("cublasLt", false);
  o.Set("devices", Napi::Array::New(env, 0));
  return o;
}

Napi::Value to_device(const Napi::CallbackInfo& info) {
  Tensor t = tensor_arg(info, 0, "tensor");
  pk::Device d = device_arg(info, 1, "device");
  PK_CHECK(d == pk::Device::CPU, "toDevice: cannot move ", t.desc(), " to 'cuda': this peftkit addon was built without CUDA "
           "(rebuild with PEFTKIT_CUDA=ON on a machine with the CUDA toolkit and cuBLASLt)");
  return wrap(info.Env(), t);
}

Napi::Value cuda_synchronize(const Napi::CallbackInfo& info) { return info.Env().Undefined(); }

Napi::Value cuda_memory_stats(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  auto o = Napi::Object::New(env);
  for (const char* k : {"allocatedBytes", "reservedBytes", "peakAllocatedBytes", "peakReservedBytes", "requests", "cacheHits",
                        "deviceAllocs", "deviceFrees", "oomFlushes", "liveBlocks", "cachedBlocks"})
    o.Set(k, 0);
  return o;
}

Napi::Value cuda_empty_cache(const Napi::CallbackInfo& info) { return info.Env().Undefined(); }

#endif

PK_BIND("cudaInfo", cuda_info);
PK_BIND("toDevice", to_device);
PK_BIND("cudaSynchronize", cuda_synchronize);
PK_BIND("cudaMemoryStats", cuda_memory_stats);
PK_BIND("cudaEmptyCache", cuda_empty_cache);

}  // namespace
}  // namespace pka
