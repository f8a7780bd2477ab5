// addon_data.h — per-environment state (the addon is context-aware: one instance per
// main thread / worker_thread, no process-wide JS objects).
#pragma once
#include <napi.h>

#include <chrono>
#include <cstdint>

namespace pka {

// What V8 is told about native memory held by JS handles. A training step allocates and frees
// hundreds of MiB of activations; reporting every change made V8 start a mark-compact each time
// the live figure rose 64 MiB above its level at the last GC -- about eight times a step, ~7% of
// the step, all for tensors that dispose()/tidy() free anyway. So V8 is told a high-water mark:
// it rises at once with the live bytes (a leak of undisposed handles still creates GC pressure)
// and falls to the live bytes at most once a second, so a steady alloc/free cycle is invisible.
class ExternalMemoryReport {
 public:
  void add(Napi::Env env, int64_t delta) {
    live_ += delta;
    if (live_ > reported_) {
      Napi::MemoryManagement::AdjustExternalMemory(env, live_ - reported_);
      reported_ = live_;
    } else if (live_ < reported_) {
      const auto now = std::chrono::steady_clock::now();
      if (now - last_fall_ >= std::chrono::seconds(1)) {
        Napi::MemoryManagement::AdjustExternalMemory(env, live_ - reported_);
        reported_ = live_;
        last_fall_ = now;
      }
    }
  }
  int64_t live() const { return live_; }
  int64_t reported() const { return reported_; }

 private:
  int64_t live_ = 0;       // bytes spanned by live handles now
  int64_t reported_ = 0;   // what V8 has been told
  std::chrono::steady_clock::time_point last_fall_{};
};

struct AddonData {
  Napi::FunctionReference tensor_ctor;
  ExternalMemoryReport external;
};

AddonData& addon_data(Napi::Env env);

}  // namespace pka
