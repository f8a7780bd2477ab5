// bind_tensor.cpp — tensor creation, data in/out, views, copies, memory and thread settings.
#include <cmath>
#include <cstring>
#include "core/cpu_features.h"
#include "core/dispatch.h"
#include "core/host_allocator.h"
#include "core/parallel.h"
#include "cpu/random.h"
#include "registry.h"

namespace pka {
namespace {

using pk::Shape;
using pk::Tensor;

Shape shape_arg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Shape s = ints_arg(info, i, name);
  for (auto d : s) PK_CHECK(d >= 0, "argument '", name, "': negative dimension in ", pk::shape_str(s));
  return s;
}

// fromBuffer(bytes: ArrayBuffer | TypedArray, shape, dtype) — copies the bytes into new storage.
Napi::Value from_buffer(const Napi::CallbackInfo& info) {
  Napi::Value v = info[0];
  const uint8_t* data = nullptr;
  size_t len = 0;
  if (v.IsArrayBuffer()) { auto ab = v.As<Napi::ArrayBuffer>(); data = (const uint8_t*)ab.Data(); len = ab.ByteLength(); }
  else if (v.IsTypedArray()) { auto ta = v.As<Napi::TypedArray>(); data = (const uint8_t*)ta.ArrayBuffer().Data() + ta.ByteOffset(); len = ta.ByteLength(); }
  else if (v.IsDataView()) { auto dv = v.As<Napi::DataView>(); data = (const uint8_t*)dv.ArrayBuffer().Data() + dv.ByteOffset(); len = dv.ByteLength(); }
  else pk::fail("argument 'data' must be an ArrayBuffer or a typed array");
  Shape shape = shape_arg(info, 1, "shape");
  pk::DType dt = dtype_arg(info, 2, "dtype");
  Tensor t = Tensor::empty(shape, dt);
  PK_CHECK(len == t.nbytes(), "data has ", len, " bytes but ", t.desc(), " needs ", t.nbytes());
  if (len) std::memcpy(t.raw(), data, len);
  return wrap(info.Env(), t);
}

// toBuffer(t) — a new ArrayBuffer with t's elements in row-major order, in t's dtype.
Napi::Value to_buffer(const Napi::CallbackInfo& info) {
  Tensor t = tensor_arg(info, 0, "tensor");
  if (t.device() == pk::Device::CUDA) t = pk::cuda_fn(&pk::CudaOps::to_device, "toBuffer")(t, pk::Device::CPU);
  Tensor c = t.contiguous();
  auto ab = Napi::ArrayBuffer::New(info.Env(), c.nbytes());
  if (c.nbytes()) std::memcpy(ab.Data(), c.raw(), c.nbytes());
  return ab;
}

// copyFromBuffer(t, bytes) — overwrite a contiguous tensor's bytes in place (optimizer states, loaders).
Napi::Value copy_from_buffer(const Napi::CallbackInfo& info) {
  Tensor t = tensor_arg(info, 0, "tensor");
  pk::check_cpu(t, "copyFromBuffer", "tensor");
  PK_CHECK(t.is_contiguous(), "copyFromBuffer: tensor ", t.desc(), " must be contiguous");
  Napi::Value v = info[1];
  PK_CHECK(v.IsTypedArray() || v.IsArrayBuffer(), "argument 'data' must be an ArrayBuffer or a typed array");
  const uint8_t* data; size_t len;
  if (v.IsArrayBuffer()) { auto ab = v.As<Napi::ArrayBuffer>(); data = (const uint8_t*)ab.Data(); len = ab.ByteLength(); }
  else { auto ta = v.As<Napi::TypedArray>(); data = (const uint8_t*)ta.ArrayBuffer().Data() + ta.ByteOffset(); len = ta.ByteLength(); }
  PK_CHECK(len == t.nbytes(), "copyFromBuffer: data has ", len, " bytes but ", t.desc(), " holds ", t.nbytes());
  if (len) std::memcpy(t.raw(), data, len);
  return info.Env().Undefined();
}

Napi::Value empty(const Napi::CallbackInfo& info) { return wrap(info.Env(), Tensor::empty(shape_arg(info, 0, "shape"), dtype_arg(info, 1, "dtype"))); }
Napi::Value zeros(const Napi::CallbackInfo& info) { return wrap(info.Env(), Tensor::zeros(shape_arg(info, 0, "shape"), dtype_arg(info, 1, "dtype"))); }
Napi::Value full(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), Tensor::full(shape_arg(info, 0, "shape"), num_arg(info, 1, "value"), dtype_arg(info, 2, "dtype")));
}
Napi::Value arange(const Napi::CallbackInfo& info) {
  double start = num_arg(info, 0, "start"), end = num_arg(info, 1, "end"), step = opt_num_arg(info, 2, "step", 1.0);
  pk::DType dt = dtype_arg(info, 3, "dtype");
  PK_CHECK(step != 0, "arange: step must not be 0");
  double cnt = std::ceil((end - start) / step);
  PK_CHECK(cnt < 1e12, "arange: too many elements");
  int64_t n = cnt > 0 ? (int64_t)cnt : 0;
  Tensor t = Tensor::empty({n}, dt);
  for (int64_t i = 0; i < n; i++) pk::store_from_double((char*)t.raw() + i * pk::dtype_size(dt), dt, start + i * step);
  return wrap(info.Env(), t);
}

Napi::Value rand(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::rand_uniform(shape_arg(info, 0, "shape"), (uint64_t)int_arg(info, 1, "seed"), dtype_arg(info, 2, "dtype"),
                                           opt_num_arg(info, 3, "low", 0.0), opt_num_arg(info, 4, "high", 1.0)));
}
Napi::Value randn(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::rand_normal(shape_arg(info, 0, "shape"), (uint64_t)int_arg(info, 1, "seed"), dtype_arg(info, 2, "dtype"),
                                          opt_num_arg(info, 3, "mean", 0.0), opt_num_arg(info, 4, "std", 1.0)));
}
Napi::Value dropout_forward(const Napi::CallbackInfo& info) {
  Tensor mask;
  Tensor y = pk::dropout_forward(tensor_arg(info, 0, "x"), num_arg(info, 1, "p"), (uint64_t)int_arg(info, 2, "seed"), &mask);
  return wrap_list(info.Env(), {y, mask});
}
Napi::Value dropout_backward(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::dropout_backward(tensor_arg(info, 0, "grad"), tensor_arg(info, 1, "mask"), num_arg(info, 2, "p")));
}

// ---- views ----
Napi::Value view(const Napi::CallbackInfo& info) { return wrap(info.Env(), tensor_arg(info, 0, "x").view(ints_arg(info, 1, "shape"))); }
Napi::Value reshape(const Napi::CallbackInfo& info) { return wrap(info.Env(), tensor_arg(info, 0, "x").reshape(ints_arg(info, 1, "shape"))); }
Napi::Value transpose(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), tensor_arg(info, 0, "x").transpose(int_arg(info, 1, "dim0"), int_arg(info, 2, "dim1")));
}
Napi::Value permute(const Napi::CallbackInfo& info) { return wrap(info.Env(), tensor_arg(info, 0, "x").permute(ints_arg(info, 1, "order"))); }
Napi::Value narrow(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), tensor_arg(info, 0, "x").narrow(int_arg(info, 1, "dim"), int_arg(info, 2, "start"), int_arg(info, 3, "length")));
}
Napi::Value slice(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), tensor_arg(info, 0, "x").slice(int_arg(info, 1, "dim"), int_arg(info, 2, "start"), int_arg(info, 3, "end"),
                                                       opt_int_arg(info, 4, "step", 1)));
}
Napi::Value expand(const Napi::CallbackInfo& info) { return wrap(info.Env(), tensor_arg(info, 0, "x").expand(ints_arg(info, 1, "shape"))); }
Napi::Value unsqueeze(const Napi::CallbackInfo& info) { return wrap(info.Env(), tensor_arg(info, 0, "x").unsqueeze(int_arg(info, 1, "dim"))); }
Napi::Value squeeze(const Napi::CallbackInfo& info) { return wrap(info.Env(), tensor_arg(info, 0, "x").squeeze(int_arg(info, 1, "dim"))); }
// alias(t): a second handle on the same view (autograd saves these; disposing one keeps the other).
Napi::Value alias(const Napi::CallbackInfo& info) { return wrap(info.Env(), tensor_arg(info, 0, "x")); }
Napi::Value contiguous(const Napi::CallbackInfo& info) { return wrap(info.Env(), tensor_arg(info, 0, "x").contiguous()); }
Napi::Value clone(const Napi::CallbackInfo& info) { return wrap(info.Env(), tensor_arg(info, 0, "x").clone()); }
Napi::Value cast(const Napi::CallbackInfo& info) { return wrap(info.Env(), tensor_arg(info, 0, "x").to(dtype_arg(info, 1, "dtype"))); }
// copy_(dst, src): in-place copy with conversion (src broadcast to dst's shape).
Napi::Value copy_(const Napi::CallbackInfo& info) {
  Tensor dst = tensor_arg(info, 0, "dst"), src = tensor_arg(info, 1, "src");
  pk::copy_into(dst, src.expand(dst.shape()));
  return info.Env().Undefined();
}
// item(t): the single element as a number.
Napi::Value item(const Napi::CallbackInfo& info) {
  Tensor t = tensor_arg(info, 0, "x");
  if (t.device() == pk::Device::CUDA) t = pk::cuda_fn(&pk::CudaOps::to_device, "item")(t, pk::Device::CPU);
  PK_CHECK(t.numel() == 1, "item: tensor ", t.desc(), " has ", t.numel(), " elements, expected 1");
  return Napi::Number::New(info.Env(), pk::load_as_double(t.raw(), t.dtype()));
}

// ---- runtime info ----
Napi::Value memory_stats(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  auto o = Napi::Object::New(env);
  for (auto d : {pk::Device::CPU, pk::Device::CUDA}) {
    auto& c = pk::memory_counters(d);
    auto e = Napi::Object::New(env);
    e.Set("liveBytes", Napi::Number::New(env, (double)c.live_bytes.load()));
    e.Set("peakBytes", Napi::Number::New(env, (double)c.peak_bytes.load()));
    e.Set("allocations", Napi::Number::New(env, (double)c.allocations.load()));
    o.Set(pk::device_name(d), e);
  }
  pk::HostCacheStats hc = pk::host_cache_stats();
  auto c = Napi::Object::New(env);
  c.Set("cachedBytes", Napi::Number::New(env, (double)hc.cached_bytes));
  c.Set("limitBytes", Napi::Number::New(env, (double)hc.limit_bytes));
  c.Set("hits", Napi::Number::New(env, (double)hc.hits));
  c.Set("misses", Napi::Number::New(env, (double)hc.misses));
  o.Set("hostCache", c);
  return o;
}
// releaseHostCache(): return the host allocator's cached free blocks to the OS.
Napi::Value release_host_cache(const Napi::CallbackInfo& info) {
  pk::host_cache_release();
  return info.Env().Undefined();
}
Napi::Value reset_peak(const Napi::CallbackInfo& info) {
  for (auto d : {pk::Device::CPU, pk::Device::CUDA}) {
    auto& c = pk::memory_counters(d);
    c.peak_bytes.store(c.live_bytes.load());
  }
  return info.Env().Undefined();
}
Napi::Value num_threads(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), pk::num_threads()); }
Napi::Value set_num_threads(const Napi::CallbackInfo& info) {
  int64_t n = int_arg(info, 0, "n");
  PK_CHECK(n >= 1 && n <= 1024, "setNumThreads: n must be in [1, 1024], got ", n);
  pk::set_num_threads((int)n);
  return info.Env().Undefined();
}
Napi::Value cpu_info(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  const auto& f = pk::cpu_features();
  auto o = Napi::Object::New(env);
  o.Set("isa", Napi::String::New(env, pk::isa_name(pk::cpu_isa())));
  o.Set("avx2", f.avx2); o.Set("fma", f.fma); o.Set("avx512f", f.avx512f); o.Set("avx512bf16", f.avx512bf16);
  o.Set("amxBf16", f.amx_bf16);
  o.Set("bf16Kernels", pk::cpu_bf16());   // AVX512-BF16 kernels in use now (see setIsa)
#ifdef PEFTKIT_WITH_CUDA
  o.Set("cudaBuild", true);
#else
  o.Set("cudaBuild", false);
#endif
  return o;
}
Napi::Value set_isa(const Napi::CallbackInfo& info) {
  std::string s = str_arg(info, 0, "isa");
  pk::Isa i;
  if (s == "scalar") i = pk::Isa::Scalar; else if (s == "avx2") i = pk::Isa::Avx2;
  else if (s == "avx512" || s == "avx512-nobf16") i = pk::Isa::Avx512;
  else pk::fail("setIsa: expected 'scalar', 'avx2', 'avx512' or 'avx512-nobf16', got '", s, "'");
  pk::set_isa_cap(i);
  pk::set_bf16_allowed(s != "avx512-nobf16");
  return Napi::String::New(info.Env(), pk::isa_name(pk::cpu_isa()));
}

PK_BIND("fromBuffer", from_buffer);
PK_BIND("toBuffer", to_buffer);
PK_BIND("copyFromBuffer", copy_from_buffer);
PK_BIND("empty", empty);
PK_BIND("zeros", zeros);
PK_BIND("full", full);
PK_BIND("arange", arange);
PK_BIND("rand", rand);
PK_BIND("randn", randn);
PK_BIND("dropout_forward", dropout_forward);
PK_BIND("dropout_backward", dropout_backward);
PK_BIND("view", view);
PK_BIND("reshape", reshape);
PK_BIND("transpose", transpose);
PK_BIND("permute", permute);
PK_BIND("narrow", narrow);
PK_BIND("slice", slice);
PK_BIND("expand", expand);
PK_BIND("unsqueeze", unsqueeze);
PK_BIND("squeeze", squeeze);
PK_BIND("contiguous", contiguous);
PK_BIND("alias", alias);
PK_BIND("clone", clone);
PK_BIND("cast", cast);
PK_BIND("copy_", copy_);
PK_BIND("item", item);
PK_BIND("memoryStats", memory_stats);
PK_BIND("resetPeakMemory", reset_peak);
PK_BIND("releaseHostCache", release_host_cache);
PK_BIND("numThreads", num_threads);
PK_BIND("setNumThreads", set_num_threads);
PK_BIND("cpuInfo", cpu_info);
PK_BIND("setIsa", set_isa);

}  // namespace
}  // namespace pka
