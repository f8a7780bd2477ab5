// attention_avx512.cpp — AVX-512 f32 primitives for the blocked attention (see attention_kernels.h).
// Compiled with AVX-512 flags; attention.cpp calls these only when pk::cpu_isa() == Avx512.
//
// gemm: the register-tiled block product of attention_avx512_tile.h with an f32 FMA per k.
// exp: exp512 (attention_avx512_math.h), ~1 ulp against expf on the range attention uses (x <= 0).
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "cpu/attention_avx512_math.h"
#include "cpu/attention_avx512_tile.h"
#include "cpu/attention_kernels.h"

// GCC 12 reports its own _mm512_undefined_ps() pass-through operands (inside max/roundscale/
// extract intrinsics) as uninitialised; they are not.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace pk {
namespace attn {

namespace {

// One k step of the f32 block product (attention_avx512_tile.h): an FMA per k.
struct F32Ops {
  using A = float;
  using B = float;
  using AVec = __m512;
  using BVec = __m512;
  static __m512 bcast_a(const float* p) { return _mm512_set1_ps(*p); }
  static __m512 load_b(const float* p, __mmask16 m) { return m == 0xffff ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(m, p); }
  static __m512 madd(__m512 acc, __m512 a, __m512 b) { return _mm512_fmadd_ps(a, b, acc); }
};

void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t a_rs, int64_t a_cs, const float* B, int64_t ldb,
          float* C, int64_t ldc, float alpha, bool accumulate) {
  tile_gemm<F32Ops>(M, N, K, A, a_rs, a_cs, B, ldb, C, ldc, alpha, accumulate);
}

float exp_sub_sum(const float* x, float m, float* y, int64_t n) {
  const __m512 vm = _mm512_set1_ps(m);
  __m512 s = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm));
    _mm512_storeu_ps(y + i, e);
    s = _mm512_add_ps(s, e);
  }
  if (i < n) {
    const __mmask16 k = (__mmask16)((1u << (n - i)) - 1);
    const __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), vm));
    _mm512_mask_storeu_ps(y + i, k, e);
    s = _mm512_add_ps(s, _mm512_maskz_mov_ps(k, e));
  }
  return _mm512_reduce_add_ps(s);
}

float row_max(const float* x, int64_t n) {
  const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512 mx = ninf;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(x + i));
  if (i < n) mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(ninf, (__mmask16)((1u << (n - i)) - 1), x + i));
  return _mm512_reduce_max_ps(mx);
}

// cap·tanh(x/cap). tanh(u) = sign(u)·(1 − 2/(e^{2|u|} + 1)), which loses relative precision as
// u → 0, so |u| < 0.1 uses the odd Taylor series to u⁷ (truncation < 3e-10 relative).
inline __m512 softcap512(__m512 x, __m512 cap, __m512 inv) {
  const __m512 u = _mm512_mul_ps(x, inv);
  const __m512 a = _mm512_abs_ps(u);
  const __m512 e = exp512(_mm512_add_ps(a, a));
  __m512 t = _mm512_sub_ps(_mm512_set1_ps(1.0f), _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(e, _mm512_set1_ps(1.0f))));
  const __m512 u2 = _mm512_mul_ps(u, u);
  __m512 p = _mm512_set1_ps(-17.0f / 315.0f);
  p = _mm512_fmadd_ps(p, u2, _mm512_set1_ps(2.0f / 15.0f));
  p = _mm512_fmadd_ps(p, u2, _mm512_set1_ps(-1.0f / 3.0f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, u2), u, u);
  // Put u's sign on t (t >= 0), then take the series where |u| is small.
  t = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(t),
                                           _mm512_and_si512(_mm512_castps_si512(u), _mm512_set1_epi32((int)0x80000000u))));
  t = _mm512_mask_mov_ps(t, _mm512_cmp_ps_mask(a, _mm512_set1_ps(0.1f), _CMP_LT_OQ), p);
  return _mm512_mul_ps(t, cap);
}

void softcap(float* x, int64_t n, float cap) {
  const __m512 c = _mm512_set1_ps(cap), inv = _mm512_set1_ps(1.0f / cap);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, softcap512(_mm512_loadu_ps(x + i), c, inv));
  if (i < n) {
    const __mmask16 k = (__mmask16)((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(x + i, k, softcap512(_mm512_maskz_loadu_ps(k, x + i), c, inv));
  }
}

}  // namespace

const AttnKernels<float>& attn_kernels_avx512() {
  static const AttnKernels<float> k{gemm, exp_sub_sum, row_max, softcap, "avx512"};
  return k;
}

}  // namespace attn
}  // namespace pk
#endif  // x86-64
