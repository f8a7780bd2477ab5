// bind_optim.cpp — optimizer kernels (AdamW 32/8-bit), paged memory, gradient norms and scaling.
#include <cstring>
#include "core/mapped_storage.h"
#include "cpu/optim.h"
#include "registry.h"

namespace pka {
namespace {

using pk::Tensor;

pk::AdamWHyper hyper_args(const Napi::CallbackInfo& info, size_t i) {
  pk::AdamWHyper h;
  h.lr = num_arg(info, i, "lr");
  h.beta1 = num_arg(info, i + 1, "beta1");
  h.beta2 = num_arg(info, i + 2, "beta2");
  h.eps = num_arg(info, i + 3, "eps");
  h.weight_decay = num_arg(info, i + 4, "weightDecay");
  h.step = int_arg(info, i + 5, "step");
  return h;
}

// adamw_step(param, grad, expAvg, expAvgSq, lr, beta1, beta2, eps, weightDecay, step) — in place.
Napi::Value adamw_step(const Napi::CallbackInfo& info) {
  pk::adamw_step(tensor_arg(info, 0, "param"), tensor_arg(info, 1, "grad"), tensor_arg(info, 2, "expAvg"),
                 tensor_arg(info, 3, "expAvgSq"), hyper_args(info, 4));
  return info.Env().Undefined();
}

// adamw8bit_step(param, grad, state1, state2, absmax1, absmax2, lr, beta1, beta2, eps, weightDecay, step) — in place.
Napi::Value adamw8bit_step(const Napi::CallbackInfo& info) {
  pk::adamw8bit_step(tensor_arg(info, 0, "param"), tensor_arg(info, 1, "grad"), tensor_arg(info, 2, "state1"),
                     tensor_arg(info, 3, "state2"), tensor_arg(info, 4, "absmax1"), tensor_arg(info, 5, "absmax2"),
                     hyper_args(info, 6));
  return info.Env().Undefined();
}

// dynamicMap(signed) — the 256 f32 values of bitsandbytes' dynamic map.
Napi::Value dynamic_map(const Napi::CallbackInfo& info) {
  bool s = bool_arg(info, 0, "signed", true);
  Tensor t = Tensor::empty({256}, pk::DType::F32);
  std::memcpy(t.raw(), pk::dynamic_map(s), 256 * sizeof(float));
  return wrap(info.Env(), t);
}

// quantizeBlockwise(x, signed) -> [codes u8, absmax f32]
Napi::Value quantize_blockwise(const Napi::CallbackInfo& info) {
  Tensor codes, absmax;
  pk::quantize_blockwise(tensor_arg(info, 0, "x"), bool_arg(info, 1, "signed", true), &codes, &absmax);
  return wrap_list(info.Env(), {codes, absmax});
}

// dequantizeBlockwise(codes, absmax, signed) -> f32
Napi::Value dequantize_blockwise(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::dequantize_blockwise(tensor_arg(info, 0, "codes"), tensor_arg(info, 1, "absmax"),
                                                   bool_arg(info, 2, "signed", true)));
}

// emptyPaged(shape, dtype, dir?) — zero-filled tensor in paged (file-backed mmap) memory.
Napi::Value empty_paged(const Napi::CallbackInfo& info) {
  std::string dir;
  if (info.Length() > 2 && !info[2].IsUndefined() && !info[2].IsNull()) dir = str_arg(info, 2, "dir");
  return wrap(info.Env(), pk::empty_mapped(ints_arg(info, 0, "shape"), dtype_arg(info, 1, "dtype"), dir));
}

// isPaged(t) — does t's storage live in paged memory?
Napi::Value is_paged(const Napi::CallbackInfo& info) {
  Tensor t = tensor_arg(info, 0, "tensor");
  return Napi::Boolean::New(info.Env(), pk::is_mapped(t.storage().get()));
}

// pagedStats() — { liveBytes, peakBytes, mappings, dir }
Napi::Value paged_stats(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  pk::MappedStats s = pk::mapped_stats();
  auto o = Napi::Object::New(env);
  o.Set("liveBytes", Napi::Number::New(env, (double)s.live_bytes));
  o.Set("peakBytes", Napi::Number::New(env, (double)s.peak_bytes));
  o.Set("mappings", Napi::Number::New(env, (double)s.mappings));
  o.Set("dir", Napi::String::New(env, pk::default_mapped_dir()));
  return o;
}

// grad_norm(tensors, normType) — global norm (f64 accumulation, deterministic).
Napi::Value grad_norm(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), pk::global_norm(tensors_arg(info, 0, "tensors"), opt_num_arg(info, 1, "normType", 2.0)));
}

// scale_(t, s) — t *= s in place.
Napi::Value scale_(const Napi::CallbackInfo& info) {
  pk::scale_inplace(tensor_arg(info, 0, "tensor"), num_arg(info, 1, "scale"));
  return info.Env().Undefined();
}

PK_BIND("adamw_step", adamw_step);
PK_BIND("adamw8bit_step", adamw8bit_step);
PK_BIND("dynamicMap", dynamic_map);
PK_BIND("quantizeBlockwise", quantize_blockwise);
PK_BIND("dequantizeBlockwise", dequantize_blockwise);
PK_BIND("emptyPaged", empty_paged);
PK_BIND("isPaged", is_paged);
PK_BIND("pagedStats", paged_stats);
PK_BIND("grad_norm", grad_norm);
PK_BIND("scale_", scale_);

}  // namespace
}  // namespace pka
