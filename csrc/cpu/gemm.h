// gemm.h — peftkit's packed, cache-blocked GEMM (the hottest code in the library).
//
//   C[M,N] = alpha * A[M,K] · B[K,N] + beta * C          (f32 accumulation, f32 output)
//
// Operands are described by element strides so every transpose combination is just a stride
// swap: element (i,k) of A is at A.data[i*A.rs + k*A.cs]. The packing stage reads operands through
// a per-dtype loader (f32, bf16, f16 today), converting to f32 panels; the NF4 issue adds a loader
// that dequantizes 4-bit blocks while packing, so the full-precision weight never exists.
// Micro-kernels: AVX-512 and AVX2 (+FMA), chosen at run time (pk::cpu_isa()), scalar fallback.
#pragma once
#include <cstdint>
#include "core/dtype.h"

namespace pk {

struct GemmOperand {
  const void* data = nullptr;
  DType dtype = DType::F32;   // F32, BF16 or F16 (others are rejected by the op layer before this)
  int64_t rs = 0;             // stride between rows, in elements
  int64_t cs = 1;             // stride between columns, in elements
};

// C is row-major with leading dimension ldc (>= N). beta == 0 means C is not read (may hold NaN).
// nthreads <= 0: use the pool's size.
void gemm_f32(int64_t M, int64_t N, int64_t K, const GemmOperand& A, const GemmOperand& B,
              float* C, int64_t ldc, float alpha, float beta, int nthreads = 0);

// f64 reference-grade GEMM for gradient checks (blocked, not tuned). Same conventions.
void gemm_f64(int64_t M, int64_t N, int64_t K, const double* A, int64_t a_rs, int64_t a_cs,
              const double* B, int64_t b_rs, int64_t b_cs, double* C, int64_t ldc, double alpha, double beta);

}  // namespace pk
