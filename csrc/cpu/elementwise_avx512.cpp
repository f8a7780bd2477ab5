// elementwise_avx512.cpp — AVX-512 row kernels for the elementwise ops and gated activations
// (compiled with AVX-512 flags; used only when pk::cpu_isa() == Avx512). The kernels themselves
// are the ISA-generic templates of elementwise_kernels.h over the 16-lane traits of simd_avx512.h.
#include "cpu/simd_avx512.h"

namespace pk {
namespace ew {
namespace {
using VT = simd::Avx512;
}  // namespace
}  // namespace ew
}  // namespace pk

#define PK_EW_VECTOR_IMPL
#include "cpu/elementwise_kernels.h"

namespace pk {
namespace ew {
const Kernels& kernels_avx512() {
  static const Kernels k = make_kernels("avx512");
  return k;
}
}  // namespace ew
}  // namespace pk
