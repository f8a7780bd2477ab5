// gemm.h — peftkit's packed, cache-blocked GEMM (the hottest code in the library).
//
//   C[M,N] = alpha * A[M,K] · B[K,N] + beta * C          (f32 accumulation, f32 output)
//
// Operands are described by element strides so every transpose combination is just a stride
// swap: element (i,k) of A is at A.data[i*A.rs + k*A.cs]. The packing stage reads operands through
// a per-dtype loader (f32, bf16, f16 today), converting to f32 panels; the NF4 issue adds a loader
// that dequantizes 4-bit blocks while packing, so the full-precision weight never exists.
// Micro-kernels: AVX-512 and AVX2 (+FMA), chosen at run time (pk::cpu_isa()), scalar fallback.
//
// Compute precision: GemmCompute::F32 (the default) multiplies in f32. GemmCompute::Bf16 is an
// opt-in for callers whose operands are bf16 anyway (a bf16 model's matmuls, as torch computes
// them): operands are packed as bf16 k-pairs (f32/f16 values rounded to nearest even while
// packing) and multiplied with AVX512-BF16 `vdpbf16ps` (exact bf16 products, f32 accumulation;
// like the instruction, subnormal inputs/results are flushed to zero), ~2x the f32 throughput.
// It is used only where the CPU has AVX512_BF16 (and the ISA level is AVX-512); elsewhere the
// request falls back to f32 compute on the unrounded operands. Never chosen for F32 callers.
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

enum class GemmCompute : int { F32 = 0, Bf16 = 1 };

// C is row-major with leading dimension ldc (>= N). beta == 0 means C is not read (may hold NaN).
// nthreads <= 0: use the pool's size. compute: see above (C and alpha/beta are f32 either way).
void gemm_f32(int64_t M, int64_t N, int64_t K, const GemmOperand& A, const GemmOperand& B,
              float* C, int64_t ldc, float alpha, float beta, int nthreads = 0,
              GemmCompute compute = GemmCompute::F32);

// A bf16 result written straight from each finished tile of the product P = A·B (the f32 C
// matrix is never formed when K fits one K block; with more K blocks only the partial sums of the
// earlier blocks go through an f32 buffer):
//
//   out[i, j] = bf16( pre(P[i, j] + bias[j]) + alpha_lr · Σ_k L[i, k] · R[k, j] )
//
// pre rounds to bf16 precision when round_first (PyTorch rounds a bf16 linear's result before the
// f32 LoRA term is added), identity otherwise. bias (N f32) is optional; the low-rank term (a
// LoRA layer's s·xa·Bᵀ in forward, s·gb·A in backward) is optional (r = 0): L is M×r f32 with row
// stride ldl, R is r×N f32 with row stride ldr (unit column stride). The low-rank sum runs k = 0..r-1 with FMAs, then
// alpha_lr·sum is added with one FMA: the same operations, in the same order, as a K = r GEMM
// accumulated onto the rounded result, so the fused and unfused layers give the same bits.
// Conversion: nearest even, NaN stays (quiet) NaN, as pk::f32_to_bf16.
struct Bf16Epilogue {
  uint16_t* out = nullptr;
  int64_t ldo = 0;
  const float* bias = nullptr;
  bool round_first = false;
  int64_t r = 0;
  const float* L = nullptr;
  int64_t ldl = 0;
  const float* R = nullptr;
  int64_t ldr = 0;
  float alpha_lr = 1.0f;
};

// out (see Bf16Epilogue) from A·B. A, B, compute, nthreads as gemm_f32 (alpha 1).
void gemm_bf16_out(int64_t M, int64_t N, int64_t K, const GemmOperand& A, const GemmOperand& B, const Bf16Epilogue& epi,
                   int nthreads = 0, GemmCompute compute = GemmCompute::F32);

// The same epilogue applied after the fact to a finished f32 product P (M×N, row stride N;
// overwritten): bias, rounding, a K = r GEMM accumulated with beta = 1, conversion, per L2-sized
// row block. The fallback of ISAs without a vector epilogue (gemm_bf16_out, gemm_4bit_bf16_out).
void bf16_epilogue_unfused(int64_t M, int64_t N, float* P, const Bf16Epilogue& epi);

// True when GemmCompute::Bf16 really runs the bf16 kernels now (CPU + ISA cap), not the fallback.
bool gemm_bf16_compute_available();

// f64 reference-grade GEMM for gradient checks (blocked, not tuned). Same conventions.
void gemm_f64(int64_t M, int64_t N, int64_t K, const double* A, int64_t a_rs, int64_t a_cs,
              const double* B, int64_t b_rs, int64_t b_cs, double* C, int64_t ldc, double alpha, double beta);

}  // namespace pk
