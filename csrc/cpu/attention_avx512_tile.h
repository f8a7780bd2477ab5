// attention_avx512_tile.h — the register-tiled block product shared by the AVX-512 attention
// kernels: C[M,N] (+)= alpha · A[M,K] · B[K,N] with MR x (16·NV) tiles, MR <= 6, NV <= 4
// (24 zmm accumulators + 4 B vectors + 1 broadcast fit the 32 registers). The attention blocks
// are small (N = key block 64 or head dim 64..128), so there is no packing: A is broadcast
// straight from its strided source, B rows are loaded as (masked) vectors; a ragged N edge uses a
// masked last vector.
//
// One template for both paths; `Ops` says what a K step is:
//   attention_avx512.cpp       f32: A, B f32, one FMA per k            (K counts k)
//   attention_bf16_avx512.cpp  bf16: A bf16 pairs, B pair words, one vdpbf16ps per pair (K counts pairs)
// Ops provides A / B element types, bcast_a(const A*) -> a vector type, load_b(const B*, mask) and
// madd(acc, a, b). Include only from translation units compiled with AVX-512 flags (*_avx512.cpp).
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace pk {
namespace attn {
namespace {

template <class Ops, int MR, int NV>
void tile(int64_t K, const typename Ops::A* A, int64_t a_rs, int64_t a_cs, const typename Ops::B* B, int64_t ldb,
          float* C, int64_t ldc, float alpha, bool accumulate, __mmask16 last) {
  __m512 acc[MR][NV];
#pragma GCC unroll 8
  for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
    for (int j = 0; j < NV; j++) acc[i][j] = _mm512_setzero_ps();

  for (int64_t k = 0; k < K; k++) {
    const typename Ops::B* b = B + k * ldb;
    typename Ops::BVec bv[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; j++) bv[j] = Ops::load_b(b + 16 * j, (j == NV - 1) ? last : (__mmask16)0xffff);
    const typename Ops::A* a = A + k * a_cs;
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
      const typename Ops::AVec ai = Ops::bcast_a(a + i * a_rs);
#pragma GCC unroll 4
      for (int j = 0; j < NV; j++) acc[i][j] = Ops::madd(acc[i][j], ai, bv[j]);
    }
  }

  const __m512 va = _mm512_set1_ps(alpha);
#pragma GCC unroll 8
  for (int i = 0; i < MR; i++) {
    float* c = C + i * ldc;
#pragma GCC unroll 4
    for (int j = 0; j < NV; j++) {
      const __mmask16 m = (j == NV - 1) ? last : (__mmask16)0xffff;
      __m512 r = _mm512_mul_ps(acc[i][j], va);
      if (accumulate) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(m, c + 16 * j));
      _mm512_mask_storeu_ps(c + 16 * j, m, r);
    }
  }
}

template <class Ops>
using TileFn = void (*)(int64_t, const typename Ops::A*, int64_t, int64_t, const typename Ops::B*, int64_t, float*,
                        int64_t, float, bool, __mmask16);

template <class Ops, int MR> TileFn<Ops> row_of(int nv) {
  return nv == 1 ? tile<Ops, MR, 1> : nv == 2 ? tile<Ops, MR, 2> : nv == 3 ? tile<Ops, MR, 3> : tile<Ops, MR, 4>;
}

template <class Ops> TileFn<Ops> pick(int mr, int nv) {
  switch (mr) {
    case 1: return row_of<Ops, 1>(nv);
    case 2: return row_of<Ops, 2>(nv);
    case 3: return row_of<Ops, 3>(nv);
    case 4: return row_of<Ops, 4>(nv);
    case 5: return row_of<Ops, 5>(nv);
    default: return row_of<Ops, 6>(nv);
  }
}

// The whole product: 64-column strips, full MR-row tiles, then one ragged tile.
template <class Ops>
void tile_gemm(int64_t M, int64_t N, int64_t K, const typename Ops::A* A, int64_t a_rs, int64_t a_cs,
               const typename Ops::B* B, int64_t ldb, float* C, int64_t ldc, float alpha, bool accumulate) {
  constexpr int kMR = 6;
  for (int64_t n0 = 0; n0 < N; n0 += 64) {
    const int64_t nr = std::min<int64_t>(64, N - n0);
    const int nv = (int)((nr + 15) / 16);
    const int rem = (int)(nr - 16 * (nv - 1));
    const __mmask16 last = (__mmask16)(rem == 16 ? 0xffff : ((1u << rem) - 1));
    const TileFn<Ops> full = pick<Ops>(kMR, nv);
    int64_t m0 = 0;
    for (; m0 + kMR <= M; m0 += kMR)
      full(K, A + m0 * a_rs, a_rs, a_cs, B + n0, ldb, C + m0 * ldc + n0, ldc, alpha, accumulate, last);
    if (m0 < M)
      pick<Ops>((int)(M - m0), nv)(K, A + m0 * a_rs, a_rs, a_cs, B + n0, ldb, C + m0 * ldc + n0, ldc, alpha,
                                   accumulate, last);
  }
}

}  // namespace
}  // namespace attn
}  // namespace pk
