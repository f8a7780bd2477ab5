// registry.h — how N-API bindings are declared, and the argument helpers they share.
//
// Each csrc/addon/bind_<family>.cpp registers its functions with PK_BIND("name", fn); addon.cpp
// exports them all. Every bound function runs inside a guard that turns pk::Error (and any
// std::exception) into a JS Error, so no input can take the process down. Arguments are
// validated here (types, presence) and in the kernels (shapes, dtypes, indices).
#pragma once
#include <napi.h>
#include <string>
#include <vector>
#include "core/tensor.h"

namespace pka {

using BoundFn = Napi::Value (*)(const Napi::CallbackInfo&);
struct Binding { const char* name; BoundFn fn; };
std::vector<Binding>& bindings();
struct Registrar { Registrar(const char* name, BoundFn fn) { bindings().push_back({name, fn}); } };

#define PK_CAT2(a, b) a##b
#define PK_CAT(a, b) PK_CAT2(a, b)
#define PK_BIND(name, fn) static ::pka::Registrar PK_CAT(pk_registrar_, __LINE__)(name, fn)

// ---- arguments (i = position; name = what the error message calls it) ----
pk::Tensor tensor_arg(const Napi::CallbackInfo& info, size_t i, const char* name);
pk::Tensor opt_tensor_arg(const Napi::CallbackInfo& info, size_t i, const char* name);  // null/undefined -> undefined
int64_t int_arg(const Napi::CallbackInfo& info, size_t i, const char* name);
int64_t opt_int_arg(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t dflt);
double num_arg(const Napi::CallbackInfo& info, size_t i, const char* name);
double opt_num_arg(const Napi::CallbackInfo& info, size_t i, const char* name, double dflt);
bool bool_arg(const Napi::CallbackInfo& info, size_t i, const char* name, bool dflt);
std::string str_arg(const Napi::CallbackInfo& info, size_t i, const char* name);
std::vector<int64_t> ints_arg(const Napi::CallbackInfo& info, size_t i, const char* name);
std::vector<pk::Tensor> tensors_arg(const Napi::CallbackInfo& info, size_t i, const char* name);
pk::DType dtype_arg(const Napi::CallbackInfo& info, size_t i, const char* name);

// ---- results ----
Napi::Value wrap(Napi::Env env, const pk::Tensor& t);            // undefined tensor -> null
Napi::Value wrap_list(Napi::Env env, const std::vector<pk::Tensor>& ts);

}  // namespace pka
