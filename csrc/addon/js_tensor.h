// js_tensor.h — the JS handle of a native tensor (class NativeTensor in JS).
//
// It holds one pk::Tensor (a shared reference to storage). dispose() drops it at once; the GC
// finalizer drops it otherwise. The bytes each handle spans count towards the native memory
// reported to V8 (as a high-water mark, see ExternalMemoryReport in addon_data.h), so the GC sees
// the pressure of handles that are never disposed.
#pragma once
#include <napi.h>
#include "core/tensor.h"

namespace pka {

class JsTensor : public Napi::ObjectWrap<JsTensor> {
 public:
  static Napi::Function define(Napi::Env env);
  static Napi::Object create(Napi::Env env, const pk::Tensor& t);
  static bool is(Napi::Env env, const Napi::Value& v);
  static JsTensor* unwrap(const Napi::Value& v) { return Napi::ObjectWrap<JsTensor>::Unwrap(v.As<Napi::Object>()); }

  explicit JsTensor(const Napi::CallbackInfo& info);
  ~JsTensor() override;
  void Finalize(Napi::Env env) override;

  const pk::Tensor& tensor() const { return t_; }
  void set(Napi::Env env, const pk::Tensor& t);

 private:
  void release(Napi::Env env);
  Napi::Value shape(const Napi::CallbackInfo& info);
  Napi::Value strides(const Napi::CallbackInfo& info);
  Napi::Value offset(const Napi::CallbackInfo& info);
  Napi::Value dtype(const Napi::CallbackInfo& info);
  Napi::Value device(const Napi::CallbackInfo& info);
  Napi::Value disposed(const Napi::CallbackInfo& info);
  Napi::Value dispose(const Napi::CallbackInfo& info);
  Napi::Value is_contiguous(const Napi::CallbackInfo& info);
  Napi::Value storage_id(const Napi::CallbackInfo& info);

  pk::Tensor t_;
  int64_t reported_ = 0;   // bytes this handle reported to V8
};

}  // namespace pka
