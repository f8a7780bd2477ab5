// js_tensor.cpp — NativeTensor: accessors, dispose, finalizer, external-memory reporting.
#include "js_tensor.h"
#include "addon_data.h"

namespace pka {

Napi::Function JsTensor::define(Napi::Env env) {
  return DefineClass(env, "NativeTensor", {
    InstanceAccessor<&JsTensor::shape>("shape"),
    InstanceAccessor<&JsTensor::strides>("strides"),
    InstanceAccessor<&JsTensor::offset>("offset"),
    InstanceAccessor<&JsTensor::dtype>("dtype"),
    InstanceAccessor<&JsTensor::device>("device"),
    InstanceAccessor<&JsTensor::disposed>("disposed"),
    InstanceAccessor<&JsTensor::is_contiguous>("isContiguous"),
    InstanceAccessor<&JsTensor::storage_id>("storageId"),
    InstanceMethod<&JsTensor::dispose>("dispose"),
  });
}

Napi::Object JsTensor::create(Napi::Env env, const pk::Tensor& t) {
  Napi::Object o = addon_data(env).tensor_ctor.New({});
  unwrap(o)->set(env, t);
  return o;
}

bool JsTensor::is(Napi::Env env, const Napi::Value& v) {
  if (!v.IsObject()) return false;
  return v.As<Napi::Object>().InstanceOf(addon_data(env).tensor_ctor.Value());
}

JsTensor::JsTensor(const Napi::CallbackInfo& info) : Napi::ObjectWrap<JsTensor>(info) {}

JsTensor::~JsTensor() {}

void JsTensor::Finalize(Napi::Env env) { release(env); }

void JsTensor::set(Napi::Env env, const pk::Tensor& t) {
  release(env);
  t_ = t;
  if (t_.defined() && t_.storage()->counted()) {
    // Each handle reports the bytes its view spans: exact for fresh results, an upper bound when
    // several handles view one storage (V8 only uses it as a GC pressure hint).
    reported_ = (int64_t)t_.nbytes();
    if (reported_ > 0) addon_data(env).external.add(env, reported_);
  }
}

void JsTensor::release(Napi::Env env) {
  if (reported_ > 0) {
    addon_data(env).external.add(env, -reported_);
    reported_ = 0;
  }
  t_ = pk::Tensor();
}

Napi::Value JsTensor::shape(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  auto a = Napi::Array::New(env, t_.shape().size());
  for (size_t i = 0; i < t_.shape().size(); i++) a.Set((uint32_t)i, Napi::Number::New(env, (double)t_.shape()[i]));
  return a;
}
Napi::Value JsTensor::strides(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  auto a = Napi::Array::New(env, t_.strides().size());
  for (size_t i = 0; i < t_.strides().size(); i++) a.Set((uint32_t)i, Napi::Number::New(env, (double)t_.strides()[i]));
  return a;
}
Napi::Value JsTensor::offset(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), (double)t_.offset()); }
Napi::Value JsTensor::dtype(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), pk::dtype_name(t_.dtype())); }
Napi::Value JsTensor::device(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), pk::device_name(t_.device())); }
Napi::Value JsTensor::disposed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), !t_.defined()); }
Napi::Value JsTensor::is_contiguous(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), t_.defined() && t_.is_contiguous());
}
Napi::Value JsTensor::storage_id(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), t_.defined() ? (double)(uintptr_t)t_.storage().get() : 0.0);
}
Napi::Value JsTensor::dispose(const Napi::CallbackInfo& info) {
  release(info.Env());
  return info.Env().Undefined();
}

}  // namespace pka
