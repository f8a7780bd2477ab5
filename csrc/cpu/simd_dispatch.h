// simd_dispatch.h — which flavour of the vector kernel tables (elementwise_kernels.h,
// row_kernels.h) the drivers use on this CPU.
//
// Why a flavour beyond pk::cpu_isa(): AVX-512 CPUs with AVX512_BF16 get tables whose bf16
// narrowing is one vcvtneps2bf16 instead of ~9 integer ops (same bits; see simd_avx512.h).
#pragma once

namespace pk {
namespace simd {

enum class Flavor : int { Scalar = 0, Avx2, Avx512, Avx512Bf16 };

// From pk::cpu_isa() and pk::cpu_bf16() (so PEFTKIT_ISA, set_isa_cap and set_bf16_allowed apply).
Flavor active_flavor();

}  // namespace simd
}  // namespace pk
