// gemm_kernels.h — internal interface between the GEMM driver (gemm.cpp) and its ISA-specific
// micro-kernels and packers (gemm_avx512.cpp, gemm_avx2.cpp).
//
// Why a separate header: the vector code lives in translation units compiled with per-file ISA
// flags; the driver (baseline x86-64) only sees function pointers collected in a KernelSet and
// calls them after pk::cpu_isa() said the CPU can run them.
//
// Data layout (BLIS/GotoBLAS style, with the vector dimension along N because C is row-major):
//   * A is packed into MR-row panels:  panel q holds rows [q*MR, q*MR+MR) of the A block, k-major:
//       Ap[q][k][r] = A(m0 + q*MR + r, k0 + k)      (the micro-kernel broadcasts these)
//   * B is packed into NR-column panels, k-major:
//       Bp[q][k][c] = B(k0 + k, n0 + q*NR + c)      (the micro-kernel loads these as vectors)
//   Rows/columns past the end of the matrix are zero-filled, so a micro-kernel always runs on
//   full MR x NR tiles; only the write-back of an edge tile is special.
//   bf16-compute kernel sets (KernelSet::bf16) use the same panels with K taken in pairs, the
//   layout `vdpbf16ps` consumes: with kp = k / 2 and h = k % 2 (kc2 = ceil(kc / 2) pairs),
//       Ap[q][kp][r][h] = bf16(A(m0 + q*MR + r, k0 + k)),  Bp[q][kp][c][h] = bf16(B(k0 + k, n0 + q*NR + c))
//   (uint16 elements; an odd kc is padded with a zero k). One (r, kp) pair is 4 bytes, so a panel
//   of width w takes w * kc2 floats of the same float buffers, and the micro-kernel's `kc` argument
//   counts pairs.
//
// Both packings are the same operation seen from the "panel" side: a source indexed by
// (p, k) — p runs along the panel (i for A, j for B) — is written as width-w panels, k-major.
// A PanelLoader bundles a pack function with its source; dense f32/bf16/f16 loaders exist for
// every ISA, and other loaders (e.g. an NF4 dequantizer for B) plug in without touching the
// micro-kernels: they only have to honour the packed layout above.
#pragma once
#include <cstdint>
#include "cpu/gemm.h"

namespace pk {
namespace gemm {

struct PanelLoader;

// Writes panels of width w for k in [k0, k0+kc) and p in [p0, p0+np) into dst:
//   dst[(p / w) * kc * w + k * w + (p % w)] = src(p0 + p, k0 + k), zero for p >= np in the last panel.
// kc >= 1, np >= 1. dst has no alignment guarantee (A panels start at any panel offset).
using PackFn = void (*)(const PanelLoader& L, int64_t k0, int64_t kc, int64_t p0, int64_t np, int w, float* dst);

// The bf16-pair packing of a bf16-compute kernel set (layout above): writes panels of width w for
// k in [k0, k0+kc) into dst as ceil(kc/2) pairs per panel row, rounding f32/f16 sources to bf16
// (nearest even) and zero-filling p >= np and the odd k of the last pair. k0 is even.
using PackBf16Fn = void (*)(const PanelLoader& L, int64_t k0, int64_t kc, int64_t p0, int64_t np, int w,
                            uint16_t* dst);

struct PanelLoader {
  PackFn pack = nullptr;
  PackBf16Fn pack_bf16 = nullptr;  // optional: without it a bf16-compute GEMM packs through `pack`
                                   // (f32 panels) and converts (so the NF4 loader works unchanged)
  const void* data = nullptr;
  DType dtype = DType::F32;
  int64_t s_p = 0;            // element stride along the panel dimension (i for A, j for B)
  int64_t s_k = 0;            // element stride along K
  const void* ctx = nullptr;  // extra loader state (quantisation tables, ...); unused by dense loaders
};

// C[MR x NR] (row-major, leading dimension ldc) = alpha * Ap·Bp + beta * C over kc steps.
// beta == 0: C is not read. Always a full tile; the driver routes edge tiles through a buffer.
// bf16-compute sets: a and b point at bf16-pair panels and kc counts k-pairs.
using MicroKernel = void (*)(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                             float alpha, float beta);

// Applies a Bf16Epilogue (gemm.h) to one finished tile: tile[i*ldt + j] holds P for rows
// [i0, i0+mr) and columns [j0, j0+nr); prev (ld ldp, may be null) holds the f32 sum of the earlier K
// blocks for the same tile, added first.
using EpiFn = void (*)(const Bf16Epilogue& e, const float* tile, int64_t ldt, int64_t i0, int64_t j0, int mr, int nr,
                       const float* prev, int64_t ldp);

struct KernelSet {
  const char* name;
  int mr, nr;               // micro-tile
  int64_t mc, kc, nc;       // cache blocking (see gemm.cpp for how they are used)
  MicroKernel kernel;
  PackFn pack_dense;        // f32/bf16/f16 loader with this ISA's fast paths (falls back to generic)
  PackBf16Fn pack_dense_bf16 = nullptr;  // the same for bf16-pair panels (bf16-compute sets)
  bool bf16 = false;        // kernel consumes bf16-pair panels (layout above)
  EpiFn epi_bf16 = nullptr; // vectorised Bf16Epilogue for this ISA (null: the portable one)
};

// The portable Bf16Epilogue tile function (gemm.cpp); ISA files provide vector versions.
void epi_bf16_generic(const Bf16Epilogue& e, const float* tile, int64_t ldt, int64_t i0, int64_t j0, int mr, int nr,
                      const float* prev, int64_t ldp);

// Portable loader for any dtype/stride (scalar code, used by every ISA for odd strides).
void pack_generic(const PanelLoader& L, int64_t k0, int64_t kc, int64_t p0, int64_t np, int w, float* dst);
// Its bf16-pair counterpart (any dtype/stride; f32/f16 rounded to nearest even).
void pack_generic_bf16(const PanelLoader& L, int64_t k0, int64_t kc, int64_t p0, int64_t np, int w, uint16_t* dst);

const KernelSet& kernels_scalar();
#if defined(__x86_64__) || defined(_M_X64)
const KernelSet& kernels_avx2();     // defined in gemm_avx2.cpp
const KernelSet& kernels_avx512();   // defined in gemm_avx512.cpp
const KernelSet& kernels_avx512_narrow();  // gemm_avx512.cpp: 16 x 16 tile for N <= 16 or M <= 16 (LoRA's rank side)
const KernelSet& kernels_avx512_bf16();         // gemm_avx512.cpp: AVX512-BF16 12 x 32 (needs avx512bf16)
const KernelSet& kernels_avx512_bf16_narrow();  // gemm_avx512.cpp: AVX512-BF16 16 x 16
#endif

// The kernel set the driver uses now (pk::cpu_isa()).
const KernelSet& active_kernels();

// The kernel set gemm_f32 uses for an M x N product with this compute request (narrow tiles for
// LoRA's rank-r sides; bf16 sets only when the CPU can run them, else the f32 set).
const KernelSet& kernels_for(int64_t M, int64_t N, GemmCompute compute = GemmCompute::F32);

// Dense loaders for an operand of gemm_f32 (A: p = row i; B: p = column j).
PanelLoader dense_loader_a(const GemmOperand& A, const KernelSet& ks);
PanelLoader dense_loader_b(const GemmOperand& B, const KernelSet& ks);

// The driver behind gemm_f32, with explicit loaders: C[M,N] = alpha * A·B + beta * C, where A is
// read through `a` (p = i) and B through `b` (p = j). An NF4 (or other) weight loader calls this.
// With a bf16-compute `ks` each loader packs through its pack_bf16 (or pack + conversion).
// With `epi` set, C/ldc/beta are ignored and the result goes through the epilogue instead (see
// gemm_bf16_out).
void gemm_f32_loaders(int64_t M, int64_t N, int64_t K, const PanelLoader& a, const PanelLoader& b,
                      float* C, int64_t ldc, float alpha, float beta, int nthreads, const KernelSet& ks,
                      const Bf16Epilogue* epi = nullptr);

}  // namespace gemm
}  // namespace pk
