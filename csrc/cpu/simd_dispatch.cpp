// simd_dispatch.cpp — the vector-table flavour for this CPU (simd_dispatch.h).
#include "cpu/simd_dispatch.h"

#include "core/cpu_features.h"

namespace pk {
namespace simd {

Flavor active_flavor() {
  switch (cpu_isa()) {
    case Isa::Avx512: return cpu_bf16() ? Flavor::Avx512Bf16 : Flavor::Avx512;
    case Isa::Avx2: return Flavor::Avx2;
    default: return Flavor::Scalar;
  }
}

}  // namespace simd
}  // namespace pk
