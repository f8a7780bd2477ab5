// simd_avx2.h — the 8-lane AVX2 (+FMA, F16C) vector traits (simd::Avx2) that the ISA-generic
// kernel templates (elementwise_kernels.h, row_kernels.h, simd_math.h) are written against.
//
// Include it ONLY from translation units compiled with AVX2 flags (elementwise_avx2.cpp,
// row_kernels_avx2.cpp). Everything is in an anonymous namespace: one private copy per file.
// Partial vectors use vmaskmov (masked-off lanes are not read); bf16/f16 narrowing rounds to
// nearest even with the exact bits of pk::f32_to_bf16 / f32_to_f16 (NaN stays NaN).
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "core/dtype.h"

namespace pk {
namespace simd {
namespace {

struct Avx2 {
  using V = __m256;
  using M = __m256;
  static constexpr int W = 8;

  static __m256i first(int r) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(r), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V loadn(const float* p, int r) { return _mm256_maskload_ps(p, first(r)); }
  static void storen(float* p, V v, int r) { _mm256_maskstore_ps(p, first(r), v); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V zero() { return _mm256_setzero_ps(); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V div(V a, V b) { return _mm256_div_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V fnma(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }
  static V min(V a, V b) { return _mm256_min_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static V sqrt(V a) { return _mm256_sqrt_ps(a); }
  static V abs(V a) { return _mm256_and_ps(a, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff))); }
  static V neg(V a) { return _mm256_xor_ps(a, _mm256_castsi256_ps(_mm256_set1_epi32((int)0x80000000u))); }
  static V xor_sign(V x, V s) {
    return _mm256_xor_ps(x, _mm256_and_ps(s, _mm256_castsi256_ps(_mm256_set1_epi32((int)0x80000000u))));
  }
  static V round(V a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // x·2^q in two exact power-of-two steps (each factor stays a normal float for |q| <= 252).
  static V ldexp(V x, V q) {
    const __m256i qi = _mm256_cvtps_epi32(q);
    const __m256i h = _mm256_srai_epi32(qi, 1);
    const __m256i r = _mm256_sub_epi32(qi, h);
    const __m256i bias = _mm256_set1_epi32(127);
    const V p1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(h, bias), 23));
    const V p2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(r, bias), 23));
    return _mm256_mul_ps(_mm256_mul_ps(x, p1), p2);
  }
  static M lt(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  static M gt(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
  static M ge(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
  static M isnan(V a) { return _mm256_cmp_ps(a, a, _CMP_UNORD_Q); }
  static M mor(M a, M b) { return _mm256_or_ps(a, b); }
  static V select(M m, V t, V f) { return _mm256_blendv_ps(f, t, m); }
  static M head(int r) { return _mm256_castsi256_ps(first(r)); }  // lanes [0, r)
  static M lane(int k) {                                            // lane k alone (0 <= k < W)
    return _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_set1_epi32(k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
  }
  static bool any(M m) { return _mm256_movemask_ps(m) != 0; }

  static __m256i bf16_bits(V v) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    const __m256i qnan = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
    return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(r), _mm256_castsi256_ps(qnan), isnan(v)));
  }
  static V round_bf16(V v) { return _mm256_castsi256_ps(_mm256_slli_epi32(bf16_bits(v), 16)); }
  static V round_f16(V v) { return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)); }

  // One vector of 8 bf16/f16 values <-> f32.
  static V widen(DType t, __m128i h) {
    return t == DType::BF16 ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)) : _mm256_cvtph_ps(h);
  }
  static __m128i narrow(DType t, V v) {
    if (t == DType::BF16) {
      const __m256i b = bf16_bits(v);
      return _mm_packus_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
    }
    return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static V load_h(DType t, const uint16_t* p) { return widen(t, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static V load_hn(DType t, const uint16_t* p, int r) {  // no 16-bit masked load in AVX2: copy the r values
    alignas(16) uint16_t tmp[8] = {};
    std::memcpy(tmp, p, (size_t)r * 2);
    return widen(t, _mm_load_si128(reinterpret_cast<const __m128i*>(tmp)));
  }
  static void store_h(DType t, uint16_t* p, V v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), narrow(t, v)); }
  static void store_hn(DType t, uint16_t* p, V v, int r) {
    alignas(16) uint16_t tmp[8];
    _mm_store_si128(reinterpret_cast<__m128i*>(tmp), narrow(t, v));
    std::memcpy(p, tmp, (size_t)r * 2);
  }

  static void cvt_to_f32(DType t, const void* src, float* dst, int64_t n) {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load_h(t, s + i));
    if (i < n) storen(dst + i, load_hn(t, s + i, (int)(n - i)), (int)(n - i));
  }
  static void cvt_from_f32(DType t, const float* src, void* dst, int64_t n) {
    uint16_t* d = static_cast<uint16_t*>(dst);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) store_h(t, d + i, _mm256_loadu_ps(src + i));
    if (i < n) store_hn(t, d + i, loadn(src + i, (int)(n - i)), (int)(n - i));
  }

  // f64 halves, for exact-product accumulations (an f32·f32 product is exact in f64).
  using D = __m256d;
  static constexpr int WD = 4;
  static __m256i dfirst(int r) { return _mm256_cmpgt_epi64(_mm256_set1_epi64x(r), _mm256_setr_epi64x(0, 1, 2, 3)); }
  static D dzero() { return _mm256_setzero_pd(); }
  static D lo_pd(V v) { return _mm256_cvtps_pd(_mm256_castps256_ps128(v)); }
  static D hi_pd(V v) { return _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)); }
  static D dset1(double x) { return _mm256_set1_pd(x); }
  static D dadd(D a, D b) { return _mm256_add_pd(a, b); }
  static D dsub(D a, D b) { return _mm256_sub_pd(a, b); }
  static D dmul(D a, D b) { return _mm256_mul_pd(a, b); }
  static D dfma(D a, D b, D c) { return _mm256_fmadd_pd(a, b, c); }
  static D dkeep(D v, int r) { return _mm256_and_pd(v, _mm256_castsi256_pd(dfirst(r))); }  // lanes >= r zeroed
  static D dload(const double* p) { return _mm256_loadu_pd(p); }
  static void dstore(double* p, D v) { _mm256_storeu_pd(p, v); }
  static D dloadn(const double* p, int r) { return _mm256_maskload_pd(p, dfirst(r)); }
  static void dstoren(double* p, D v, int r) { _mm256_maskstore_pd(p, dfirst(r), v); }
  // Lane sum in a fixed order: (0+2) + (1+3).
  static double dsum(D v) {
    const __m128d q = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(q, _mm_unpackhi_pd(q, q)));
  }
};

}  // namespace
}  // namespace simd
}  // namespace pk
