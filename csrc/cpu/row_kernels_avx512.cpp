// row_kernels_avx512.cpp — AVX-512 row kernels (RMSNorm, RoPE, cross-entropy): the ISA-generic
// templates of row_kernels.h over the 16-lane traits of simd_avx512.h. Compiled with AVX-512
// flags; used only when pk::cpu_isa() == Avx512.
//
// Contraction off for the whole file (before any include, so the intrinsics' inline bodies get it
// too): GCC would otherwise fuse a product and a sum into one FMA (it does so by default in
// gnu++17 mode), and the kernels must round exactly where the scalar paths do.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#elif defined(__clang__)
#pragma clang fp contract(off)
#endif
#include "cpu/simd_avx512.h"

namespace pk {
namespace rowk {
namespace {
using VT = simd::Avx512;
}  // namespace
}  // namespace rowk
}  // namespace pk

#define PK_ROW_VECTOR_IMPL
#include "cpu/row_kernels.h"

namespace pk {
namespace rowk {
const Kernels& kernels_avx512() {
  static const Kernels k = make_kernels("avx512");
  return k;
}
}  // namespace rowk
}  // namespace pk
