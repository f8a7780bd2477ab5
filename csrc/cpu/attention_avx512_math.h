// attention_avx512_math.h — the AVX-512 f32 exp shared by the attention kernels
// (attention_avx512.cpp: the f32 path; attention_bf16_avx512.cpp: the bf16 path), so both paths
// compute the softmax numerators the same way.
// Include only from translation units compiled with AVX-512 flags (*_avx512.cpp).
#pragma once
#include <immintrin.h>

// GCC 12 reports its own _mm512_undefined_ps() pass-through operands (inside max/roundscale
// intrinsics) as uninitialised; they are not.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace pk {
namespace attn {
namespace {

// exp: Cephes-style range reduction x = n·ln2 + r, degree-6 polynomial for e^r, 2^n by scalef;
// ~1 ulp against expf on the range attention uses (x <= 0).
// e^x for a vector; lanes with x < -87.3 (incl. -inf) give exactly 0, NaN stays NaN.
inline __m512 exp512(__m512 x) {
  const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3f), _CMP_GE_OQ) |
                         _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-88.0f)), _mm512_set1_ps(88.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_maskz_mov_ps(live, _mm512_scalef_ps(p, n));
}

}  // namespace
}  // namespace attn
}  // namespace pk
