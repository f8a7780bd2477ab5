// quant_avx512.cpp — AVX-512 (F/BW/VL) loops of the 4-bit quantizer: block encode, decode, and the
// two GEMM panel loaders that dequantize NF4/FP4 while packing B (compiled with AVX-512 flags,
// called only when pk::cpu_isa() == Avx512; see quant.h for the format).
//
// Decode of 16 elements (8 bytes): split the bytes into high/low nibbles, interleave them (element
// 2j = high nibble of byte j), widen to 16 x i32 and look the code values up with one vpermps
// from a zmm holding the 16-entry table; multiply by the block's absmax (a block boundary inside
// the 16 lanes — block size 32 or an odd row length — blends two broadcasts). Encode: the NF4 /
// FP4 decision trees become a 4- (3-) step vectorised binary search over the midpoints with vpermps
// lookups; it is exactly "count the thresholds below x" = bnb's trees (NaN -> 0).
//
// Loaders: B = Wᵀ (forward) decodes 16 k-values of 16 weight rows and transposes them in registers
// (as the dense f32 packer does); B = W (backward dX) decodes contiguous runs straight into the
// k-major panel. Odd element offsets (odd row length) fall back to the scalar decode.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"   // the same idiom (_mm512_undefined_epi32) in vpmovzx
#endif
#include <immintrin.h>

#include <algorithm>
#include <cfloat>

#include "cpu/quant.h"

namespace pk {
namespace q4 {

namespace {

inline __mmask16 first_n(int64_t n) {
  return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

inline __m512 round_to(__m512 v, DType r) {
  if (r == DType::BF16) {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i t = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), lsb));
    t = _mm512_and_si512(t, _mm512_set1_epi32((int)0xFFFF0000u));
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    return _mm512_mask_blend_ps(nan, _mm512_castsi512_ps(t), v);
  }
  if (r == DType::F16) return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  return v;
}

// 16 elements from even flat index e; lanes >= count are zero.
inline __m512 decode16(const Decode& d, const __m512 lut, int64_t e, int64_t count) {
  const int64_t byte = e >> 1;
  __m128i raw;
  if (count >= 16 && byte + 8 <= d.nbytes) {
    raw = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(d.packed + byte));
  } else {
    const int64_t nb = std::min<int64_t>((std::min<int64_t>(count, 16) + 1) >> 1, d.nbytes - byte);
    raw = _mm_maskz_loadu_epi8((__mmask16)((1u << nb) - 1), d.packed + byte);
  }
  const __m128i m4 = _mm_set1_epi8(0x0F);
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), m4);
  const __m128i lo = _mm_and_si128(raw, m4);
  const __m512i idx = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(hi, lo));
  __m512 v = _mm512_permutexvar_ps(idx, lut);
  const int64_t last = e + std::min<int64_t>(count, 16) - 1;
  const int64_t b0 = e / d.bs, b1 = last / d.bs;
  __m512 sc = _mm512_set1_ps(d.absmax[b0]);
  if (b1 != b0) sc = _mm512_mask_blend_ps((__mmask16)~first_n(b1 * d.bs - e), sc, _mm512_set1_ps(d.absmax[b1]));
  v = round_to(_mm512_mul_ps(v, sc), d.round_to);
  return count >= 16 ? v : _mm512_maskz_mov_ps(first_n(count), v);
}

inline __m512 decode16_any(const Decode& d, const __m512 lut, int64_t e, int64_t count) {
  if (!(e & 1)) return decode16(d, lut, e, count);
  alignas(64) float t[16] = {};
  for (int64_t i = 0; i < std::min<int64_t>(count, 16); i++) t[i] = decode_one(d, e + i);
  return _mm512_load_ps(t);
}

void decode(const Decode& d, int64_t e0, int64_t count, float* dst) {
  const __m512 lut = _mm512_loadu_ps(d.lut);
  int64_t i = 0;
  if (e0 & 1) { dst[0] = decode_one(d, e0); i = 1; }
  for (; i + 16 <= count; i += 16) _mm512_storeu_ps(dst + i, decode16(d, lut, e0 + i, 16));
  if (i < count) _mm512_mask_storeu_ps(dst + i, first_n(count - i), decode16(d, lut, e0 + i, count - i));
}

// In-register transpose of a 16 x 16 block of floats (the dense packer's, gemm_avx512.cpp).
inline void transpose16(__m512 r[16]) {
  __m512 t[16], u[16];
#pragma GCC unroll 8
  for (int i = 0; i < 8; i++) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; i++) {
    const __m512d a0 = _mm512_castps_pd(t[4 * i]), a1 = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d b0 = _mm512_castps_pd(t[4 * i + 2]), b1 = _mm512_castps_pd(t[4 * i + 3]);
    u[4 * i + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, b0));
    u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, b0));
    u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, b1));
    u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, b1));
  }
#pragma GCC unroll 4
  for (int j = 0; j < 4; j++) {
    const __m512 v0 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x88);
    const __m512 w0 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xDD);
    const __m512 v1 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x88);
    const __m512 w1 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xDD);
    r[j] = _mm512_shuffle_f32x4(v0, v1, 0x88);
    r[8 + j] = _mm512_shuffle_f32x4(v0, v1, 0xDD);
    r[4 + j] = _mm512_shuffle_f32x4(w0, w1, 0x88);
    r[12 + j] = _mm512_shuffle_f32x4(w0, w1, 0xDD);
  }
}

constexpr int64_t kPrefetchBytes = 128;   // along each weight row (B = Wᵀ): 256 elements ahead

// B = Wᵀ: B(k, p) = W[p0 + p, k0 + k] (element (p0+p)*cols + k0 + k).
void pack_wt(const gemm::PanelLoader& L, int64_t k0, int64_t kc, int64_t p0, int64_t np, int w, float* dst) {
  const Decode& d = *static_cast<const Decode*>(L.ctx);
  const __m512 lut = _mm512_loadu_ps(d.lut);
  const int64_t npan = (np + w - 1) / w;
  for (int64_t q = 0; q < npan; q++) {
    const int64_t rem = std::min<int64_t>(w, np - q * w);
    float* dq = dst + q * kc * w;
    for (int64_t kb = 0; kb < kc; kb += 16) {
      const int64_t kn = std::min<int64_t>(16, kc - kb);
      for (int r0 = 0; r0 < w; r0 += 16) {
        __m512 r[16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) {
          if (r0 + i < rem) {
            const int64_t e = (p0 + q * w + r0 + i) * d.cols + k0 + kb;
            _mm_prefetch(reinterpret_cast<const char*>(d.packed + (e >> 1) + kPrefetchBytes), _MM_HINT_T0);
            r[i] = decode16_any(d, lut, e, kn);
          } else {
            r[i] = _mm512_setzero_ps();
          }
        }
        transpose16(r);
        const __mmask16 sm = first_n(w - r0);
#pragma GCC unroll 16
        for (int kk = 0; kk < 16; kk++)
          if (kk < kn) _mm512_mask_storeu_ps(dq + (kb + kk) * w + r0, sm, r[kk]);
      }
    }
  }
}

// B = W: B(k, p) = W[k0 + k, p0 + p] (element (k0+k)*cols + p0 + p): contiguous along the panel.
void pack_w(const gemm::PanelLoader& L, int64_t k0, int64_t kc, int64_t p0, int64_t np, int w, float* dst) {
  const Decode& d = *static_cast<const Decode*>(L.ctx);
  const __m512 lut = _mm512_loadu_ps(d.lut);
  const int64_t npan = (np + w - 1) / w;
  for (int64_t k = 0; k < kc; k++) {
    const int64_t e = (k0 + k) * d.cols + p0;
    if (k + 2 < kc) {
      const char* pf = reinterpret_cast<const char*>(d.packed + ((e + 2 * d.cols) >> 1));
      for (int64_t x = 0; x < (np + 1) / 2; x += 64) _mm_prefetch(pf + x, _MM_HINT_T0);
    }
    for (int64_t q = 0; q < npan; q++) {
      const int64_t rem = std::min<int64_t>(w, np - q * w);
      float* dk = dst + (q * kc + k) * w;
      for (int v = 0; v < w; v += 16) {
        const int64_t cnt = rem - v;
        const __m512 x = cnt > 0 ? decode16_any(d, lut, e + q * w + v, cnt) : _mm512_setzero_ps();
        _mm512_mask_storeu_ps(dk + v, first_n(w - v), x);
      }
    }
  }
}

inline __m512 load16(const void* src, DType dt, int64_t i, __mmask16 m) {
  switch (dt) {
    case DType::F32: return _mm512_maskz_loadu_ps(m, static_cast<const float*>(src) + i);
    case DType::BF16: {
      const __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(src) + i);
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    default: {  // F16
      const __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(src) + i);
      return _mm512_cvtph_ps(h);
    }
  }
}

// Quantize blocks [b0, b1) of n elements (bs >= 32, a multiple of 16).
void quantize(const void* src, DType dt, int64_t n, int64_t bs, Quant4Type t, int64_t b0, int64_t b1, uint8_t* packed,
              float* absmax) {
  if (dt != DType::F32 && dt != DType::BF16 && dt != DType::F16) {
    quantize_blocks_scalar(src, dt, n, bs, t, b0, b1, packed, absmax);
    return;
  }
  // Threshold tables for the binary search (unused tail entries +inf).
  alignas(64) float thr[16], thr_fp4[16];
  for (int i = 0; i < 16; i++) {
    thr[i] = i < 15 ? kNf4Thresholds[i] : __builtin_inff();
    thr_fp4[i] = i < 7 ? kFp4Thresholds[i] : __builtin_inff();
  }
  const __m512 tn = _mm512_load_ps(thr), tf = _mm512_load_ps(thr_fp4);
  alignas(64) int32_t rank_code[16] = {};
  for (int i = 0; i < 8; i++) rank_code[i] = kFp4CodeOfRank[i];
  const __m512i rc = _mm512_load_si512(rank_code);
  const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FFFFFFF));
  const __m128i pairw = _mm_set1_epi16(0x0110);   // maddubs: byte 2j * 16 + byte 2j+1
  for (int64_t b = b0; b < b1; b++) {
    const int64_t s = b * bs, e = std::min(n, s + bs);
    __m512 mx = _mm512_set1_ps(-FLT_MAX);
    for (int64_t i = s; i < e; i += 16) {
      const __m512 v = _mm512_and_ps(load16(src, dt, i, first_n(e - i)), absmask);
      mx = _mm512_max_ps(v, mx);   // NaN in v keeps mx (fmaxf semantics); masked lanes are 0
    }
    float m = _mm512_reduce_max_ps(mx);
    if (e - s < bs) m = std::max(m, 0.0f);
    absmax[b] = m;
    const __m512 r = _mm512_set1_ps(1.0f / m);
    for (int64_t i = s; i < e; i += 16) {
      const int64_t cnt = std::min<int64_t>(16, e - i);
      const __m512 x = _mm512_mul_ps(load16(src, dt, i, first_n(cnt)), r);
      __m512i idx = _mm512_setzero_si512();
      if (t == Quant4Type::NF4) {
#pragma GCC unroll 4
        for (int st = 8; st >= 1; st >>= 1) {
          const __m512 th = _mm512_permutexvar_ps(_mm512_add_epi32(idx, _mm512_set1_epi32(st - 1)), tn);
          idx = _mm512_mask_add_epi32(idx, _mm512_cmp_ps_mask(x, th, _CMP_GT_OQ), idx, _mm512_set1_epi32(st));
        }
      } else {
        const __m512 a = _mm512_and_ps(x, absmask);
#pragma GCC unroll 3
        for (int st = 4; st >= 1; st >>= 1) {
          const __m512 th = _mm512_permutexvar_ps(_mm512_add_epi32(idx, _mm512_set1_epi32(st - 1)), tf);
          idx = _mm512_mask_add_epi32(idx, _mm512_cmp_ps_mask(a, th, _CMP_GT_OQ), idx, _mm512_set1_epi32(st));
        }
        idx = _mm512_permutexvar_epi32(idx, rc);
        const __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
        idx = _mm512_mask_or_epi32(idx, neg, idx, _mm512_set1_epi32(8));
      }
      const __m128i bytes = _mm512_cvtepi32_epi8(idx);
      const __m128i words = _mm_maddubs_epi16(bytes, pairw);
      const __m128i out = _mm_packus_epi16(words, words);
      const int64_t nbytes = (cnt + 1) / 2;
      _mm_mask_storeu_epi8(packed + (i >> 1), (__mmask16)((1u << nbytes) - 1), out);
    }
  }
}

}  // namespace

const Kernels& kernels_avx512() {
  static const Kernels k{"avx512", quantize, decode, pack_wt, pack_w};
  return k;
}

}  // namespace q4
}  // namespace pk
