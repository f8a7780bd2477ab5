// elementwise_avx512.cpp — AVX-512 row kernels for the elementwise ops and gated activations
// (compiled with AVX-512 flags; used only when pk::cpu_isa() == Avx512). The kernels themselves
// are the ISA-generic templates of elementwise_kernels.h; this file supplies the 16-lane traits.
// Partial vectors use masked loads/stores (masked-off lanes touch no memory).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC's own _mm512_undefined_ps idiom
#endif
#include <immintrin.h>

#include <cstdint>

#include "core/dtype.h"

namespace pk {
namespace ew {
namespace {

struct VT {
  using V = __m512;
  using M = __mmask16;
  static constexpr int W = 16;

  static __mmask16 first(int r) { return r >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << r) - 1); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V loadn(const float* p, int r) { return _mm512_maskz_loadu_ps(first(r), p); }
  static void storen(float* p, V v, int r) { _mm512_mask_storeu_ps(p, first(r), v); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V zero() { return _mm512_setzero_ps(); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V div(V a, V b) { return _mm512_div_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V fnma(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }
  static V min(V a, V b) { return _mm512_min_ps(a, b); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static V sqrt(V a) { return _mm512_sqrt_ps(a); }
  static V abs(V a) { return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(a), _mm512_set1_epi32(0x7fffffff))); }
  static V neg(V a) { return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(a), _mm512_set1_epi32((int)0x80000000u))); }
  static V xor_sign(V x, V s) {
    const __m512i sign = _mm512_and_si512(_mm512_castps_si512(s), _mm512_set1_epi32((int)0x80000000u));
    return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(x), sign));
  }
  static V round(V a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static V ldexp(V x, V q) { return _mm512_scalef_ps(x, q); }
  static M lt(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  static M gt(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
  static M ge(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
  static M isnan(V a) { return _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q); }
  static M mor(M a, M b) { return (M)(a | b); }
  static V select(M m, V t, V f) { return _mm512_mask_blend_ps(m, f, t); }

  // f32 -> bf16 bits (nearest even; NaN -> quiet NaN), in the low 16 bits of each lane.
  static __m512i bf16_bits(V v) {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    const __m512i qnan = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    return _mm512_mask_blend_epi32(isnan(v), r, qnan);
  }
  static V round_bf16(V v) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(bf16_bits(v), 16));
  }
  static V round_f16(V v) {
    return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }

  static void cvt_to_f32(DType t, const void* src, float* dst, int64_t n) {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 m = first((int)(n - i < 16 ? n - i : 16));
      const __m256i h = _mm256_maskz_loadu_epi16(m, s + i);
      V v = t == DType::BF16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)) : _mm512_cvtph_ps(h);
      _mm512_mask_storeu_ps(dst + i, m, v);
    }
  }
  static void cvt_from_f32(DType t, const float* src, void* dst, int64_t n) {
    uint16_t* d = static_cast<uint16_t*>(dst);
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 m = first((int)(n - i < 16 ? n - i : 16));
      const V v = _mm512_maskz_loadu_ps(m, src + i);
      const __m256i h = t == DType::BF16 ? _mm512_cvtepi32_epi16(bf16_bits(v))
                                         : _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      _mm256_mask_storeu_epi16(d + i, m, h);
    }
  }
};

}  // namespace
}  // namespace ew
}  // namespace pk

#define PK_EW_VECTOR_IMPL
#include "cpu/elementwise_kernels.h"

namespace pk {
namespace ew {
const Kernels& kernels_avx512() {
  static const Kernels k = make_kernels("avx512");
  return k;
}
}  // namespace ew
}  // namespace pk
