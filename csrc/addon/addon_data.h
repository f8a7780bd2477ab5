// addon_data.h — per-environment state (the addon is context-aware: one instance per
// main thread / worker_thread, no process-wide JS objects).
#pragma once
#include <napi.h>

namespace pka {

struct AddonData {
  Napi::FunctionReference tensor_ctor;
};

AddonData& addon_data(Napi::Env env);

}  // namespace pka
