// cpu_features.h — run-time CPU feature detection for kernel dispatch.
//
// Shipped builds never use -march=native: vector kernels live in their own translation units
// compiled with per-file ISA flags, and are called only when these checks pass.
// PEFTKIT_ISA=scalar|avx2|avx512|avx512-nobf16 caps the level (for tests that compare every path,
// and to reproduce results across machines); avx512-nobf16 keeps AVX-512 but not its BF16
// instructions (bf16-compute GEMMs, bf16 attention and bf16 row kernels fall back to f32 math).
#pragma once

namespace pk {

enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512 = 2 };

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false, avx512bf16 = false;
  bool amx_tile = false, amx_bf16 = false;
};

const CpuFeatures& cpu_features();
Isa cpu_isa();            // best level usable now (respects PEFTKIT_ISA and set_isa_cap)
void set_isa_cap(Isa cap);// lower the level at run time (tests); cannot raise above the hardware
// Whether the AVX512-BF16 kernels may run now: cpu_isa() is Avx512, the CPU has AVX512_BF16, and
// neither PEFTKIT_ISA=avx512-nobf16 nor set_bf16_allowed(false) turned them off. The one check
// every bf16-instruction path (gemm, attention, row/elementwise tables) dispatches on.
bool cpu_bf16();
void set_bf16_allowed(bool allowed);  // run time (tests, setIsa); cannot enable what the CPU lacks
const char* isa_name(Isa i);

}  // namespace pk
