// simd_dispatch.cpp — the vector-table flavour for this CPU (simd_dispatch.h).
#include "cpu/simd_dispatch.h"

#include <atomic>

#include "core/cpu_features.h"

namespace pk {
namespace simd {

namespace {
std::atomic<bool> g_native_bf16{true};
}  // namespace

Flavor active_flavor() {
  switch (cpu_isa()) {
    case Isa::Avx512: return cpu_features().avx512bf16 && g_native_bf16.load() ? Flavor::Avx512Bf16 : Flavor::Avx512;
    case Isa::Avx2: return Flavor::Avx2;
    default: return Flavor::Scalar;
  }
}

void set_native_bf16(bool allowed) { g_native_bf16.store(allowed); }

}  // namespace simd
}  // namespace pk
