// simd_avx512.h — the 16-lane AVX-512 vector traits (simd::Avx512) that the ISA-generic kernel
// templates (elementwise_kernels.h, row_kernels.h, simd_math.h) are written against.
//
// Why a header: several translation units compiled with AVX-512 flags (elementwise_avx512.cpp,
// row_kernels_avx512.cpp) share these traits. Include it ONLY from such files. Everything is in an
// anonymous namespace, so each translation unit gets its own copy and the linker can never merge an
// AVX-512 function into a file that must run on an AVX2-only CPU.
//
// Partial vectors use masked loads/stores (masked-off lanes touch no memory). bf16/f16 narrowing
// rounds to nearest even with the exact bits of pk::f32_to_bf16 / f32_to_f16 (NaN stays NaN).
//
// Two flavours: Avx512 narrows to bf16 with integer ops (~9 per vector); Avx512Bf16 (for CPUs
// with AVX512_BF16, the caller checks) uses vcvtneps2bf16, which rounds identically except that
// it flushes f32 denormals to ±0: a vector holding one takes the integer path instead.
#pragma once
#if defined(__GNUC__) && !defined(__clang__)
// GCC's own _mm512_undefined_ps idiom (`__m512 __Y = __Y;`) trips these once inlined deeply
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>

#include <cstdint>

#include "core/dtype.h"

namespace pk {
namespace simd {
namespace {

template <bool kNativeBf16> struct Avx512T {
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
  static M head(int r) { return first(r); }          // lanes [0, r)
  static M lane(int k) { return (M)(1u << k); }      // lane k alone (0 <= k < W)
  static bool any(M m) { return m != 0; }

  // f32 -> bf16 bits (nearest even; NaN -> quiet NaN), in the low 16 bits of each lane.
  static __m512i bf16_bits(V v) {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    const __m512i qnan = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    return _mm512_mask_blend_epi32(isnan(v), r, qnan);
  }
  // f32 -> 16 packed bf16 values.
  static __m256i pack_bf16(V v) {
    if constexpr (kNativeBf16) {
      if (__builtin_expect(_mm512_fpclass_ps_mask(v, 0x20) == 0, 1))  // 0x20: denormal
        return (__m256i)_mm512_cvtneps_pbh(v);
    }
    return _mm512_cvtepi32_epi16(bf16_bits(v));
  }
  static V round_bf16(V v) {
    if constexpr (kNativeBf16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(pack_bf16(v)), 16));
    return _mm512_castsi512_ps(_mm512_slli_epi32(bf16_bits(v), 16));
  }
  static V round_f16(V v) {
    return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }

  // One vector of 16 bf16/f16 values <-> f32.
  static V widen(DType t, __m256i h) {
    return t == DType::BF16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)) : _mm512_cvtph_ps(h);
  }
  static __m256i narrow(DType t, V v) {
    return t == DType::BF16 ? pack_bf16(v) : _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static V load_h(DType t, const uint16_t* p) { return widen(t, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static V load_hn(DType t, const uint16_t* p, int r) { return widen(t, _mm256_maskz_loadu_epi16(first(r), p)); }
  static void store_h(DType t, uint16_t* p, V v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), narrow(t, v)); }
  static void store_hn(DType t, uint16_t* p, V v, int r) { _mm256_mask_storeu_epi16(p, first(r), narrow(t, v)); }

  static void cvt_to_f32(DType t, const void* src, float* dst, int64_t n) {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, load_h(t, s + i));
    if (i < n) storen(dst + i, load_hn(t, s + i, (int)(n - i)), (int)(n - i));
  }
  static void cvt_from_f32(DType t, const float* src, void* dst, int64_t n) {
    uint16_t* d = static_cast<uint16_t*>(dst);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) store_h(t, d + i, _mm512_loadu_ps(src + i));
    if (i < n) store_hn(t, d + i, loadn(src + i, (int)(n - i)), (int)(n - i));
  }

  // f64 halves, for exact-product accumulations (an f32·f32 product is exact in f64).
  using D = __m512d;
  static constexpr int WD = 8;
  static __mmask8 dfirst(int r) { return r >= 8 ? (__mmask8)0xFF : (__mmask8)((1u << r) - 1); }
  static D dzero() { return _mm512_setzero_pd(); }
  static D lo_pd(V v) { return _mm512_cvtps_pd(_mm512_castps512_ps256(v)); }
  static D hi_pd(V v) { return _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1)); }
  static D dset1(double x) { return _mm512_set1_pd(x); }
  static D dadd(D a, D b) { return _mm512_add_pd(a, b); }
  static D dsub(D a, D b) { return _mm512_sub_pd(a, b); }
  static D dmul(D a, D b) { return _mm512_mul_pd(a, b); }
  static D dfma(D a, D b, D c) { return _mm512_fmadd_pd(a, b, c); }
  static D dkeep(D v, int r) { return _mm512_maskz_mov_pd(dfirst(r), v); }  // lanes >= r zeroed
  static D dload(const double* p) { return _mm512_loadu_pd(p); }
  static void dstore(double* p, D v) { _mm512_storeu_pd(p, v); }
  static D dloadn(const double* p, int r) { return _mm512_maskz_loadu_pd(dfirst(r), p); }
  static void dstoren(double* p, D v, int r) { _mm512_mask_storeu_pd(p, dfirst(r), v); }
  // Lane sum in a fixed order: ((0+4)+(2+6)) + ((1+5)+(3+7)).
  static double dsum(D v) {
    const __m256d h = _mm256_add_pd(_mm512_castpd512_pd256(v), _mm512_extractf64x4_pd(v, 1));
    const __m128d q = _mm_add_pd(_mm256_castpd256_pd128(h), _mm256_extractf128_pd(h, 1));
    return _mm_cvtsd_f64(_mm_add_sd(q, _mm_unpackhi_pd(q, q)));
  }
};

using Avx512 = Avx512T<false>;
using Avx512Bf16 = Avx512T<true>;

}  // namespace
}  // namespace simd
}  // namespace pk
