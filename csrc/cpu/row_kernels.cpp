// row_kernels.cpp — picks the row-kernel table (row_kernels.h) for the CPU at run time.
#include "cpu/row_kernels.h"

#include "cpu/simd_dispatch.h"

namespace pk {
namespace rowk {

const Kernels* active_kernels() {
  // The node-gyp fallback build (PEFTKIT_NO_SIMD_KERNELS) compiles no ISA-specific files.
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(PEFTKIT_NO_SIMD_KERNELS)
  switch (simd::active_flavor()) {
    case simd::Flavor::Avx512Bf16: return &kernels_avx512bf16();
    case simd::Flavor::Avx512: return &kernels_avx512();
    case simd::Flavor::Avx2: return &kernels_avx2();
    default: break;
  }
#endif
  return nullptr;
}

}  // namespace rowk
}  // namespace pk
