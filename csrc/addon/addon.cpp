// addon.cpp — module entry: a context-aware Napi::Addon that exports NativeTensor and every
// PK_BIND'ed function, each wrapped so native errors surface as JS Errors.
#include <napi.h>
#include <new>
#include "addon_data.h"
#include "js_tensor.h"
#include "registry.h"

namespace pka {

AddonData& addon_data(Napi::Env env) { return *env.GetInstanceData<AddonData>(); }

// Trampoline: calls the bound function; converts C++ exceptions to JS errors.
static Napi::Value call_guarded(const Napi::CallbackInfo& info) {
  auto* b = static_cast<const Binding*>(info.Data());
  try {
    return b->fn(info);
  } catch (const Napi::Error&) {
    throw;
  } catch (const pk::Error& e) {
    // Kernels name their op in the message; argument errors from registry.cpp do not.
    std::string m = e.what();
    if (m.rfind("argument ", 0) == 0 || m.rfind("data ", 0) == 0 || m.rfind("unknown ", 0) == 0) m = std::string(b->name) + ": " + m;
    throw Napi::Error::New(info.Env(), m);
  } catch (const std::bad_alloc&) {
    throw Napi::Error::New(info.Env(), std::string(b->name) + ": out of memory");
  } catch (const std::exception& e) {
    throw Napi::Error::New(info.Env(), std::string(b->name) + ": " + e.what());
  }
}

static Napi::Object init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  env.SetInstanceData<AddonData>(data);
  Napi::Function ctor = JsTensor::define(env);
  data->tensor_ctor = Napi::Persistent(ctor);
  exports.Set("NativeTensor", ctor);
  for (const Binding& b : bindings())
    exports.Set(b.name, Napi::Function::New(env, call_guarded, b.name, const_cast<Binding*>(&b)));
  return exports;
}

}  // namespace pka

static Napi::Object peftkit_init(Napi::Env env, Napi::Object exports) { return pka::init(env, exports); }
NODE_API_MODULE(peftkit, peftkit_init)
