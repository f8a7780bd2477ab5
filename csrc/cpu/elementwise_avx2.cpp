// elementwise_avx2.cpp — AVX2 (+FMA, F16C) row kernels for the elementwise ops and gated
// activations (compiled with AVX2 flags; used only when pk::cpu_isa() >= Avx2 and the AVX-512
// table is not chosen). The kernels are the ISA-generic templates of elementwise_kernels.h over
// the 8-lane traits of simd_avx2.h.
#include "cpu/simd_avx2.h"

namespace pk {
namespace ew {
namespace {
using VT = simd::Avx2;
}  // namespace
}  // namespace ew
}  // namespace pk

#define PK_EW_VECTOR_IMPL
#include "cpu/elementwise_kernels.h"

namespace pk {
namespace ew {
const Kernels& kernels_avx2() {
  static const Kernels k = make_kernels("avx2");
  return k;
}
}  // namespace ew
}  // namespace pk
