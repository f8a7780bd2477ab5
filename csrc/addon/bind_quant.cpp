// bind_quant.cpp — 4-bit (NF4/FP4) quantization, dequantization and the fused 4-bit linear
// (csrc/cpu/quant.h); used by lib/quant/*.ts.
//
//   quant4_quantize(x, blocksize, 'nf4'|'fp4', doubleQuant) -> {packed, absmax, nestedAbsmax|null, offset}
//   quant4_dequantize(state, outDtype) -> tensor of state.shape
//   quant4_linear(x, state, bias|null) -> y = x·Wᵀ (+ b)        (the fused GEMM, dequantizing while packing)
//   quant4_linear_grad_input(grad, state) -> dx = grad·W
//   quant4_code('nf4'|'fp4') -> f32[16]; quant_dynamic_map() -> f32[256]
//   quant8_blockwise(x, code|null, blocksize) -> [q, absmax]; dequant8_blockwise(q, absmax, code|null, blocksize)
//   quant4_kernels() -> name of the ISA kernels in use
//
// A `state` is a plain object {type, packed, absmax, code?, blocksize, shape, dtype, nestedAbsmax?,
// nestedCode?, nestedBlocksize?, offset?} (lib/quant/nf4.ts QuantizedTensor.nativeState());
// pka::quant4_state_arg parses it and is meant to be shared with other bindings (the fused LoRA
// layer) through a forward declaration.
#include <cstring>

#include "cpu/quant.h"
#include "js_tensor.h"
#include "registry.h"

namespace pka {

static pk::Quant4Type quant_type_of(const std::string& s, const char* what) {
  if (s == "nf4") return pk::Quant4Type::NF4;
  if (s == "fp4") return pk::Quant4Type::FP4;
  pk::fail(what, ": quant type must be 'nf4' or 'fp4', got '", s, "'");
}

static pk::Tensor field_tensor(Napi::Env env, const Napi::Object& o, const char* key, const char* name, bool required) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) {
    PK_CHECK(!required, name, ": missing tensor field '", key, "'");
    return pk::Tensor();
  }
  PK_CHECK(JsTensor::is(env, v), name, ": field '", key, "' must be a NativeTensor");
  const pk::Tensor& t = JsTensor::unwrap(v)->tensor();
  PK_CHECK(t.defined(), name, ": field '", key, "' is a disposed tensor");
  return t;
}

static double field_number(const Napi::Object& o, const char* key, const char* name, double dflt, bool required) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) {
    PK_CHECK(!required, name, ": missing number field '", key, "'");
    return dflt;
  }
  PK_CHECK(v.IsNumber(), name, ": field '", key, "' must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

// Parses a JS quant state object (see the header comment). Exported for other bindings.
pk::Quant4State quant4_state_arg(const Napi::Value& v, const char* name) {
  PK_CHECK(v.IsObject() && !v.IsArray(), name, ": expected a 4-bit quant state object");
  Napi::Env env = v.Env();
  Napi::Object o = v.As<Napi::Object>();
  pk::Quant4State s;
  Napi::Value ty = o.Get("type");
  PK_CHECK(ty.IsString(), name, ": field 'type' must be 'nf4' or 'fp4'");
  s.type = quant_type_of(ty.As<Napi::String>().Utf8Value(), name);
  s.packed = field_tensor(env, o, "packed", name, true);
  s.absmax = field_tensor(env, o, "absmax", name, true);
  s.code = field_tensor(env, o, "code", name, false);
  s.blocksize = (int64_t)field_number(o, "blocksize", name, 64, true);
  Napi::Value sh = o.Get("shape");
  PK_CHECK(sh.IsArray(), name, ": field 'shape' must be an array of integers");
  Napi::Array a = sh.As<Napi::Array>();
  for (uint32_t i = 0; i < a.Length(); i++) {
    Napi::Value e = a.Get(i);
    PK_CHECK(e.IsNumber(), name, ": field 'shape' must be an array of integers");
    const double d = e.As<Napi::Number>().DoubleValue();
    PK_CHECK(d >= 0 && d == (double)(int64_t)d, name, ": bad shape entry ", d);
    s.shape.push_back((int64_t)d);
  }
  Napi::Value dt = o.Get("dtype");
  if (!dt.IsUndefined() && !dt.IsNull()) {
    PK_CHECK(dt.IsString(), name, ": field 'dtype' must be a dtype name");
    PK_CHECK(pk::dtype_from_name(dt.As<Napi::String>().Utf8Value(), &s.dtype) && pk::is_float(s.dtype), name,
             ": field 'dtype' must be f32, bf16, f16 or f64");
  }
  s.nested_absmax = field_tensor(env, o, "nestedAbsmax", name, false);
  s.nested_code = field_tensor(env, o, "nestedCode", name, false);
  s.nested_blocksize = (int64_t)field_number(o, "nestedBlocksize", name, 256, false);
  s.offset = (float)field_number(o, "offset", name, 0.0, false);
  return s;
}

namespace {

using pk::Tensor;

Tensor f32_tensor(const float* p, int64_t n) {
  Tensor t = Tensor::empty({n}, pk::DType::F32);
  std::memcpy(t.raw(), p, (size_t)n * sizeof(float));
  return t;
}

Napi::Value quant4_quantize(const Napi::CallbackInfo& info) {
  Tensor x = tensor_arg(info, 0, "x");
  const int64_t bs = opt_int_arg(info, 1, "blocksize", 64);
  const pk::Quant4Type type = quant_type_of(info.Length() > 2 && info[2].IsString() ? info[2].As<Napi::String>().Utf8Value() : "nf4", "quant4_quantize");
  const bool dq = bool_arg(info, 3, "doubleQuant", false);
  pk::Quant4Packed q = pk::quantize_4bit(x, bs, type);
  Napi::Env env = info.Env();
  Napi::Object r = Napi::Object::New(env);
  r.Set("packed", wrap(env, q.packed));
  if (dq && q.absmax.numel() > 0) {
    pk::NestedAbsmax n = pk::quantize_absmax_nested(q.absmax, 256);
    r.Set("absmax", wrap(env, n.q));
    r.Set("nestedAbsmax", wrap(env, n.absmax2));
    r.Set("offset", Napi::Number::New(env, n.offset));
  } else {
    r.Set("absmax", wrap(env, q.absmax));
    r.Set("nestedAbsmax", env.Null());
    r.Set("offset", Napi::Number::New(env, 0));
  }
  return r;
}

Napi::Value quant4_dequantize(const Napi::CallbackInfo& info) {
  pk::Quant4State s = quant4_state_arg(info[0], "quant4_dequantize");
  pk::DType out = info.Length() > 1 && !info[1].IsUndefined() && !info[1].IsNull() ? dtype_arg(info, 1, "dtype") : s.dtype;
  return wrap(info.Env(), pk::dequantize_4bit(s, out));
}

Napi::Value quant4_linear(const Napi::CallbackInfo& info) {
  Tensor x = tensor_arg(info, 0, "x");
  pk::Quant4State s = quant4_state_arg(info[1], "quant4_linear");
  return wrap(info.Env(), pk::linear_4bit(x, s, opt_tensor_arg(info, 2, "bias")));
}

Napi::Value quant4_linear_grad_input(const Napi::CallbackInfo& info) {
  Tensor g = tensor_arg(info, 0, "grad");
  pk::Quant4State s = quant4_state_arg(info[1], "quant4_linear_grad_input");
  return wrap(info.Env(), pk::linear_4bit_grad_input(g, s));
}

Napi::Value quant4_code(const Napi::CallbackInfo& info) {
  const pk::Quant4Type t = quant_type_of(str_arg(info, 0, "type"), "quant4_code");
  return wrap(info.Env(), f32_tensor(pk::quant4_code(t), 16));
}

Napi::Value quant_dynamic_map(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), f32_tensor(pk::dynamic_map_signed(), 256));
}

Napi::Value quant8_blockwise(const Napi::CallbackInfo& info) {
  pk::Quant8Packed q = pk::quantize_blockwise_8bit(tensor_arg(info, 0, "x"), opt_tensor_arg(info, 1, "code"), int_arg(info, 2, "blocksize"));
  return wrap_list(info.Env(), {q.q, q.absmax});
}

Napi::Value dequant8_blockwise(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::dequantize_blockwise_8bit(tensor_arg(info, 0, "q"), tensor_arg(info, 1, "absmax"),
                                                        opt_tensor_arg(info, 2, "code"), int_arg(info, 3, "blocksize")));
}

Napi::Value quant4_kernels(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), pk::q4::active_kernels().name);
}

PK_BIND("quant4_quantize", quant4_quantize);
PK_BIND("quant4_dequantize", quant4_dequantize);
PK_BIND("quant4_linear", quant4_linear);
PK_BIND("quant4_linear_grad_input", quant4_linear_grad_input);
PK_BIND("quant4_code", quant4_code);
PK_BIND("quant_dynamic_map", quant_dynamic_map);
PK_BIND("quant8_blockwise", quant8_blockwise);
PK_BIND("dequant8_blockwise", dequant8_blockwise);
PK_BIND("quant4_kernels", quant4_kernels);

}  // namespace
}  // namespace pka
