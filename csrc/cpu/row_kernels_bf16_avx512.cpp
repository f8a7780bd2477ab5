// row_kernels_bf16_avx512.cpp — the AVX-512 row kernels again, with bf16 narrowing by
// vcvtneps2bf16 (simd::Avx512Bf16); chosen on CPUs with AVX512_BF16 (simd_dispatch.h).
// Contraction off for the whole file, as in row_kernels_avx512.cpp (the kernels must round
// exactly where the scalar paths do).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#elif defined(__clang__)
#pragma clang fp contract(off)
#endif
#include "cpu/simd_avx512.h"

namespace pk {
namespace rowk {
namespace {
using VT = simd::Avx512Bf16;
}  // namespace
}  // namespace rowk
}  // namespace pk

#define PK_ROW_VECTOR_IMPL
#include "cpu/row_kernels.h"

namespace pk {
namespace rowk {
const Kernels& kernels_avx512bf16() {
  static const Kernels k = make_kernels("avx512bf16");
  return k;
}
}  // namespace rowk
}  // namespace pk
