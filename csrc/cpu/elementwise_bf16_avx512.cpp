// elementwise_bf16_avx512.cpp — the AVX-512 elementwise / GLU kernels again, with bf16 narrowing
// by vcvtneps2bf16 (simd::Avx512Bf16); chosen on CPUs with AVX512_BF16 (simd_dispatch.h).
#include "cpu/simd_avx512.h"

namespace pk {
namespace ew {
namespace {
using VT = simd::Avx512Bf16;
}  // namespace
}  // namespace ew
}  // namespace pk

#define PK_EW_VECTOR_IMPL
#include "cpu/elementwise_kernels.h"

namespace pk {
namespace ew {
const Kernels& kernels_avx512bf16() {
  static const Kernels k = make_kernels("avx512bf16");
  return k;
}
}  // namespace ew
}  // namespace pk
