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
// bf16 inputs on CPUs with AVX512_BF16 take a second table, AttnBf16Kernels (below): the same
// GEMMs with bf16 operands, plus the packers and rounding that make those operands.
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

// The bf16 path (attention_bf16.cpp, for bf16 inputs on CPUs with AVX512_BF16): block products
// with bf16 operands and f32 accumulation through vdpbf16ps. Its operands are "pairs": one 32-bit
// word holding two bf16 values adjacent along the reduction dimension (the even-indexed element in
// the low half), which is what one f32 lane of vdpbf16ps consumes.
struct AttnBf16Kernels {
  // C[m*ldc + n] = (accumulate ? C[m*ldc + n] : 0) + alpha * sum_{p < P} A_p(m)·B_p(n), where A_p(m)
  // is the pair at A + m*a_rs + p*a_cs (strides in bf16 elements, any alignment: A may be a strided
  // bf16 view of q or dO, or a tile from softmax_step / grad_tile), B_p(n) the pair B[p*ldb + n], and
  // a·b = a.lo·b.lo + a.hi·b.hi in f32.
  void (*gemm)(int64_t M, int64_t N, int64_t P, const uint16_t* A, int64_t a_rs, int64_t a_cs,
               const uint32_t* B, int64_t ldb, float* C, int64_t ldc, float alpha, bool accumulate);
  // y[r*ldy + c] = bf16(x[r*ldx + c]) (RNE) for c < n, 0 for n <= c < n_pad (the bf16 results
  // from their f32 accumulators).
  void (*round_rows)(const float* x, int64_t ldx, int64_t rows, int64_t n, int64_t n_pad, uint16_t* y, int64_t ldy);
  // Pack a bf16 matrix X (R rows, C columns, row stride rs, unit column stride) without rounding:
  //   pack_col_pairs: y[p*ldy + r] = (X[r][2p], X[r][2p+1]) for r < R, p < C/2 (C even) — B of X·Yᵀ
  //   pack_row_pairs: y[p*ldy + c] = (X[2p][c], X[2p+1][c]) for 2p < R, c < C; row R reads as 0 — B of Y·X
  void (*pack_col_pairs)(const uint16_t* x, int64_t rs, int64_t R, int64_t C, uint32_t* y, int64_t ldy);
  void (*pack_row_pairs)(const uint16_t* x, int64_t rs, int64_t R, int64_t C, uint32_t* y, int64_t ldy);
  // Forward online-softmax step on a (br,bc) score tile s (row stride lds, masked scores -inf),
  // with the running row max m, row sum l and the f32 output accumulator O (br rows of dv, row
  // stride ldo): per row, mnew = max(m, max s); a row that has seen nothing yet (mnew = -inf) gets
  // P = 0 and keeps its state; otherwise P = exp(s − mnew), l = l·e^(m−mnew) + ΣP (f32, before
  // rounding), O ·= e^(m−mnew), m = mnew. P goes to pb as bf16 (row stride ldp), zero for
  // bc <= c < bcp.
  void (*softmax_step)(const float* s, int64_t lds, int64_t br, int64_t bc, int64_t bcp, float* m, float* l,
                       float* O, int64_t ldo, int64_t dv, uint16_t* pb, int64_t ldp);
  // Backward tile: P = exp(s − L[r]) and dS = P∘(dP − D[r]) (∘ f when f is not null) over a
  // (br,bc) tile (s, dp, f with row stride ld; L = +inf gives a zero row), written as bf16
  // operands, each skipped when null: pt / dst = P / dS as pairs of rows (ceil(br/2) rows of bc
  // words, stride ldt; a missing last row is 0), dsb = dS row-major (stride ldb, zero for
  // bc <= c < bcp).
  void (*grad_tile)(const float* s, const float* dp, const float* f, int64_t ld, int64_t br, int64_t bc,
                    const float* L, const float* D, uint32_t* pt, uint32_t* dst, int64_t ldt, uint16_t* dsb,
                    int64_t bcp, int64_t ldb);
  // sum_i x[i]·y[i] over bf16 vectors, in f32.
  float (*dot)(const uint16_t* x, const uint16_t* y, int64_t n);
  const char* name;
};

// Defined in attention_bf16_avx512.cpp (call only when cpu_isa() == Avx512 and the CPU has
// AVX512_BF16).
const AttnBf16Kernels& attn_bf16_kernels_avx512();

}  // namespace attn
}  // namespace pk
