// attention_kernels.h — the three inner primitives of the blocked attention (attention.cpp), with
// ISA-specific f32 versions in attention_avx512.cpp / attention_avx2.cpp.
//
// Why so few: every block step of FlashAttention forward and backward is one of
//   * a small GEMM  C[M,N] (+)= alpha · A[M,K] · B[K,N]  with M,N,K <= ~128, where A is read
//     through (row, col) strides (so Pᵀ·dO and dSᵀ·Q need no transpose copy) and is broadcast,
//     while B and C are row-major with unit stride along N (the vector dimension);
//   * y = exp(x - m) over a row, returning sum(y) (the online-softmax numerator);
//   * max over a row;
//   * x = cap·tanh(x / cap) over a row (Gemma-2 logit soft-capping; only called when cap > 0).
// The driver (baseline x86-64) calls them through an AttnKernels table chosen by pk::cpu_isa().
#pragma once
#include <cstdint>

namespace pk {
namespace attn {

template <class T> struct AttnKernels {
  // C[m*ldc + n] = (accumulate ? C[m*ldc + n] : 0) + alpha * sum_k A[m*a_rs + k*a_cs] * B[k*ldb + n]
  void (*gemm)(int64_t M, int64_t N, int64_t K, const T* A, int64_t a_rs, int64_t a_cs,
               const T* B, int64_t ldb, T* C, int64_t ldc, T alpha, bool accumulate);
  // y[i] = exp(x[i] - m) (0 where x[i] - m is -inf or below the f32 range); returns sum(y).
  // y may alias x.
  T (*exp_sub_sum)(const T* x, T m, T* y, int64_t n);
  // max(x[0..n)) (-inf for n == 0).
  T (*row_max)(const T* x, int64_t n);
  // x[i] = cap * tanh(x[i] / cap), in place.
  void (*softcap)(T* x, int64_t n, T cap);
  const char* name;
};

// Defined in attention_avx512.cpp / attention_avx2.cpp (call only when cpu_isa() allows).
const AttnKernels<float>& attn_kernels_avx512();
const AttnKernels<float>& attn_kernels_avx2();

}  // namespace attn
}  // namespace pk
