// attention_avx2.cpp — AVX2+FMA f32 primitives for the blocked attention (see attention_kernels.h).
// Compiled with AVX2 flags; attention.cpp calls these only when pk::cpu_isa() >= Avx2.
//
// Same scheme as attention_avx512.cpp with 8-lane vectors and 16 registers: tiles of MR x (8·NV)
// with MR <= 4, NV <= 3 (12 accumulators + 3 B vectors + 1 broadcast). Ragged N edges use
// maskload/maskstore on the last vector. exp builds 2^n from the exponent bits.
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "cpu/attention_kernels.h"

namespace pk {
namespace attn {

namespace {

constexpr int kMR = 4;
constexpr int kNV = 3;

inline __m256i lane_mask(int rem) {  // first `rem` lanes set (1..8)
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(rem), idx);
}

template <int MR, int NV>
void tile(int64_t K, const float* A, int64_t a_rs, int64_t a_cs, const float* B, int64_t ldb, float* C,
          int64_t ldc, float alpha, bool accumulate, __m256i last) {
  __m256 acc[MR][NV];
#pragma GCC unroll 8
  for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
    for (int j = 0; j < NV; j++) acc[i][j] = _mm256_setzero_ps();

  for (int64_t k = 0; k < K; k++) {
    const float* b = B + k * ldb;
    __m256 bv[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; j++)
      bv[j] = (j == NV - 1) ? _mm256_maskload_ps(b + 8 * j, last) : _mm256_loadu_ps(b + 8 * j);
    const float* a = A + k * a_cs;
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
      const __m256 ai = _mm256_broadcast_ss(a + i * a_rs);
#pragma GCC unroll 4
      for (int j = 0; j < NV; j++) acc[i][j] = _mm256_fmadd_ps(ai, bv[j], acc[i][j]);
    }
  }

  const __m256 va = _mm256_set1_ps(alpha);
  const __m256i all = _mm256_set1_epi32(-1);
#pragma GCC unroll 8
  for (int i = 0; i < MR; i++) {
    float* c = C + i * ldc;
#pragma GCC unroll 4
    for (int j = 0; j < NV; j++) {
      const __m256i m = (j == NV - 1) ? last : all;
      __m256 r = _mm256_mul_ps(acc[i][j], va);
      if (accumulate) r = _mm256_add_ps(r, _mm256_maskload_ps(c + 8 * j, m));
      _mm256_maskstore_ps(c + 8 * j, m, r);
    }
  }
}

using TileFn = void (*)(int64_t, const float*, int64_t, int64_t, const float*, int64_t, float*, int64_t, float,
                        bool, __m256i);

template <int MR> TileFn row_of(int nv) { return nv == 1 ? tile<MR, 1> : nv == 2 ? tile<MR, 2> : tile<MR, 3>; }

TileFn pick(int mr, int nv) {
  switch (mr) {
    case 1: return row_of<1>(nv);
    case 2: return row_of<2>(nv);
    case 3: return row_of<3>(nv);
    default: return row_of<4>(nv);
  }
}

void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_rs, int64_t a_cs, const float* B, int64_t ldb,
          float* C, int64_t ldc, float alpha, bool accumulate) {
  for (int64_t n0 = 0; n0 < N; n0 += 8 * kNV) {
    const int64_t nr = std::min<int64_t>(8 * kNV, N - n0);
    const int nv = (int)((nr + 7) / 8);
    const __m256i last = lane_mask((int)(nr - 8 * (nv - 1)));
    const TileFn full = pick(kMR, nv);
    int64_t m0 = 0;
    for (; m0 + kMR <= M; m0 += kMR)
      full(K, A + m0 * a_rs, a_rs, a_cs, B + n0, ldb, C + m0 * ldc + n0, ldc, alpha, accumulate, last);
    if (m0 < M)
      pick((int)(M - m0), nv)(K, A + m0 * a_rs, a_rs, a_cs, B + n0, ldb, C + m0 * ldc + n0, ldc, alpha, accumulate, last);
  }
}

// e^x for a vector; lanes with x < -87.3 (incl. -inf) give exactly 0, NaN stays NaN.
inline __m256 exp256(__m256 x) {
  const __m256 live = _mm256_or_ps(_mm256_cmp_ps(x, _mm256_set1_ps(-87.3f), _CMP_GE_OQ),
                                   _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // 2^n from the exponent field: n in [-126, 127] after the clamps above.
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(live, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

float exp_sub_sum(const float* x, float m, float* y, int64_t n) {
  const __m256 vm = _mm256_set1_ps(m);
  __m256 s = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
    _mm256_storeu_ps(y + i, e);
    s = _mm256_add_ps(s, e);
  }
  float tail = 0.f;
  for (; i < n; i++) {  // scalar tail through the same vector routine for identical rounding
    float e = _mm256_cvtss_f32(exp256(_mm256_set1_ps(x[i] - m)));
    y[i] = e;
    tail += e;
  }
  return hsum(s) + tail;
}

float row_max(const float* x, int64_t n) {
  const float ninf = -std::numeric_limits<float>::infinity();
  __m256 mx = _mm256_set1_ps(ninf);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(x + i));
  float r = hmax(mx);
  for (; i < n; i++) r = x[i] > r ? x[i] : r;
  return r;
}

// cap·tanh(x/cap), as in attention_avx512.cpp: 1 − 2/(e^{2|u|} + 1) with u's sign, and the odd
// Taylor series to u⁷ for |u| < 0.1.
inline __m256 softcap256(__m256 x, __m256 cap, __m256 inv) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 u = _mm256_mul_ps(x, inv);
  const __m256 a = _mm256_andnot_ps(sign, u);
  const __m256 e = exp256(_mm256_add_ps(a, a));
  __m256 t = _mm256_sub_ps(_mm256_set1_ps(1.0f), _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(e, _mm256_set1_ps(1.0f))));
  t = _mm256_or_ps(t, _mm256_and_ps(sign, u));
  const __m256 u2 = _mm256_mul_ps(u, u);
  __m256 p = _mm256_set1_ps(-17.0f / 315.0f);
  p = _mm256_fmadd_ps(p, u2, _mm256_set1_ps(2.0f / 15.0f));
  p = _mm256_fmadd_ps(p, u2, _mm256_set1_ps(-1.0f / 3.0f));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, u2), u, u);
  t = _mm256_blendv_ps(t, p, _mm256_cmp_ps(a, _mm256_set1_ps(0.1f), _CMP_LT_OQ));
  return _mm256_mul_ps(t, cap);
}

void softcap(float* x, int64_t n, float cap) {
  const __m256 c = _mm256_set1_ps(cap), inv = _mm256_set1_ps(1.0f / cap);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, softcap256(_mm256_loadu_ps(x + i), c, inv));
  if (i < n) {
    const __m256i m = lane_mask((int)(n - i));
    _mm256_maskstore_ps(x + i, m, softcap256(_mm256_maskload_ps(x + i, m), c, inv));
  }
}

}  // namespace

const AttnKernels<float>& attn_kernels_avx2() {
  static const AttnKernels<float> k{gemm, exp_sub_sum, row_max, softcap, "avx2"};
  return k;
}

}  // namespace attn
}  // namespace pk
#endif  // x86-64
