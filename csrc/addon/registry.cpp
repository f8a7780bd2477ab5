// registry.cpp — argument parsing with errors that name the argument and what was expected.
#include "registry.h"
#include "js_tensor.h"

namespace pka {

std::vector<Binding>& bindings() {
  static std::vector<Binding> b;
  return b;
}

static Napi::Value at(const Napi::CallbackInfo& info, size_t i) { return i < info.Length() ? info[i] : info.Env().Undefined(); }

static const char* js_type(const Napi::Value& v) {
  if (v.IsUndefined()) return "undefined";
  if (v.IsNull()) return "null";
  if (v.IsNumber()) return "number";
  if (v.IsString()) return "string";
  if (v.IsBoolean()) return "boolean";
  if (v.IsArray()) return "array";
  return "object";
}

pk::Tensor tensor_arg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Value v = at(info, i);
  PK_CHECK(JsTensor::is(info.Env(), v), "argument '", name, "' must be a NativeTensor, got ", js_type(v));
  const pk::Tensor& t = JsTensor::unwrap(v)->tensor();
  PK_CHECK(t.defined(), "argument '", name, "' is a disposed tensor");
  return t;
}

pk::Tensor opt_tensor_arg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Value v = at(info, i);
  if (v.IsUndefined() || v.IsNull()) return pk::Tensor();
  return tensor_arg(info, i, name);
}

static double number(const Napi::Value& v, const char* name) {
  PK_CHECK(v.IsNumber(), "argument '", name, "' must be a number, got ", js_type(v));
  return v.As<Napi::Number>().DoubleValue();
}

static int64_t integer(const Napi::Value& v, const char* name) {
  double d = number(v, name);
  PK_CHECK(d == (double)(int64_t)d && d > -9.0e15 && d < 9.0e15, "argument '", name, "' must be an integer, got ", d);
  return (int64_t)d;
}

int64_t int_arg(const Napi::CallbackInfo& info, size_t i, const char* name) { return integer(at(info, i), name); }
int64_t opt_int_arg(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t dflt) {
  Napi::Value v = at(info, i);
  return (v.IsUndefined() || v.IsNull()) ? dflt : integer(v, name);
}
double num_arg(const Napi::CallbackInfo& info, size_t i, const char* name) { return number(at(info, i), name); }
double opt_num_arg(const Napi::CallbackInfo& info, size_t i, const char* name, double dflt) {
  Napi::Value v = at(info, i);
  return (v.IsUndefined() || v.IsNull()) ? dflt : number(v, name);
}
bool bool_arg(const Napi::CallbackInfo& info, size_t i, const char* name, bool dflt) {
  Napi::Value v = at(info, i);
  if (v.IsUndefined() || v.IsNull()) return dflt;
  PK_CHECK(v.IsBoolean(), "argument '", name, "' must be a boolean, got ", js_type(v));
  return v.As<Napi::Boolean>().Value();
}
std::string str_arg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Value v = at(info, i);
  PK_CHECK(v.IsString(), "argument '", name, "' must be a string, got ", js_type(v));
  return v.As<Napi::String>().Utf8Value();
}
std::vector<int64_t> ints_arg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Value v = at(info, i);
  PK_CHECK(v.IsArray(), "argument '", name, "' must be an array of integers, got ", js_type(v));
  auto a = v.As<Napi::Array>();
  PK_CHECK(a.Length() <= 64, "argument '", name, "' has ", a.Length(), " entries (at most 64)");
  std::vector<int64_t> out(a.Length());
  for (uint32_t k = 0; k < a.Length(); k++) out[k] = integer(a.Get(k), name);
  return out;
}
std::vector<pk::Tensor> tensors_arg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Value v = at(info, i);
  PK_CHECK(v.IsArray(), "argument '", name, "' must be an array of tensors, got ", js_type(v));
  auto a = v.As<Napi::Array>();
  std::vector<pk::Tensor> out;
  for (uint32_t k = 0; k < a.Length(); k++) {
    Napi::Value e = a.Get(k);
    PK_CHECK(JsTensor::is(info.Env(), e), "argument '", name, "[", k, "]' must be a NativeTensor, got ", js_type(e));
    const pk::Tensor& t = JsTensor::unwrap(e)->tensor();
    PK_CHECK(t.defined(), "argument '", name, "[", k, "]' is a disposed tensor");
    out.push_back(t);
  }
  return out;
}
pk::DType dtype_arg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  std::string s = str_arg(info, i, name);
  pk::DType dt;
  PK_CHECK(pk::dtype_from_name(s, &dt), "argument '", name, "': unknown dtype '", s, "' (expected f32, bf16, f16, f64, i32, i64, u8)");
  return dt;
}

Napi::Value wrap(Napi::Env env, const pk::Tensor& t) {
  if (!t.defined()) return env.Null();
  return JsTensor::create(env, t);
}
Napi::Value wrap_list(Napi::Env env, const std::vector<pk::Tensor>& ts) {
  auto a = Napi::Array::New(env, ts.size());
  for (size_t i = 0; i < ts.size(); i++) a.Set((uint32_t)i, wrap(env, ts[i]));
  return a;
}

}  // namespace pka
