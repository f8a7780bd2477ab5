// quant_avx2.cpp — AVX2 (+FMA, F16C) loops of the 4-bit quantizer: block encode, decode and the
// GEMM panel loaders (compiled with -mavx2 -mfma -mf16c; called only when pk::cpu_isa() >= Avx2
// and AVX-512 is not selected). Same algorithms as quant_avx512.cpp at 8 lanes: the 16-entry
// code table is looked up with two vpermps over its halves blended on bit 3 of the index, the
// encode counts the midpoints below x (= bnb's decision trees, NaN -> 0), and the B = Wᵀ loader
// transposes 8 x 8 blocks in registers.
#include <immintrin.h>

#include <algorithm>
#include <cfloat>
#include <cstring>

#include "cpu/quant.h"

namespace pk {
namespace q4 {

namespace {

inline __m256 round_to(__m256 v, DType r) {
  if (r == DType::BF16) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i t = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), lsb));
    t = _mm256_and_si256(t, _mm256_set1_epi32((int)0xFFFF0000u));
    const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
    return _mm256_blendv_ps(_mm256_castsi256_ps(t), v, nan);
  }
  if (r == DType::F16) return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  return v;
}

inline __m256 lut16(__m256 lo, __m256 hi, __m256i idx) {
  const __m256 a = _mm256_permutevar8x32_ps(lo, idx), b = _mm256_permutevar8x32_ps(hi, idx);
  const __m256 sel = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));   // bit 3 -> sign bit
  return _mm256_blendv_ps(a, b, sel);
}

inline __m256i lane_lt(int64_t n) {  // lanes i < n all-ones
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)std::min<int64_t>(std::max<int64_t>(n, 0), 8)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// 8 elements from even flat index e; lanes >= count are zero.
inline __m256 decode8(const Decode& d, __m256 lo, __m256 hi, int64_t e, int64_t count) {
  const int64_t byte = e >> 1;
  uint32_t w = 0;
  if (count >= 8 && byte + 4 <= d.nbytes) std::memcpy(&w, d.packed + byte, 4);
  else std::memcpy(&w, d.packed + byte, (size_t)std::min<int64_t>((std::min<int64_t>(count, 8) + 1) >> 1, d.nbytes - byte));
  const __m128i raw = _mm_cvtsi32_si128((int)w);
  const __m128i m4 = _mm_set1_epi8(0x0F);
  const __m128i h = _mm_and_si128(_mm_srli_epi16(raw, 4), m4);
  const __m128i l = _mm_and_si128(raw, m4);
  const __m256i idx = _mm256_cvtepu8_epi32(_mm_unpacklo_epi8(h, l));
  __m256 v = lut16(lo, hi, idx);
  const int64_t last = e + std::min<int64_t>(count, 8) - 1;
  const int64_t b0 = e / d.bs, b1 = last / d.bs;
  __m256 sc = _mm256_set1_ps(d.absmax[b0]);
  if (b1 != b0) sc = _mm256_blendv_ps(_mm256_set1_ps(d.absmax[b1]), sc, _mm256_castsi256_ps(lane_lt(b1 * d.bs - e)));
  v = round_to(_mm256_mul_ps(v, sc), d.round_to);
  return count >= 8 ? v : _mm256_and_ps(v, _mm256_castsi256_ps(lane_lt(count)));
}

inline __m256 decode8_any(const Decode& d, __m256 lo, __m256 hi, int64_t e, int64_t count) {
  if (!(e & 1)) return decode8(d, lo, hi, e, count);
  alignas(32) float t[8] = {};
  for (int64_t i = 0; i < std::min<int64_t>(count, 8); i++) t[i] = decode_one(d, e + i);
  return _mm256_load_ps(t);
}

inline void store_n(float* p, __m256 v, int64_t n) {
  if (n >= 8) { _mm256_storeu_ps(p, v); return; }
  if (n > 0) _mm256_maskstore_ps(p, lane_lt(n), v);
}

void decode(const Decode& d, int64_t e0, int64_t count, float* dst) {
  const __m256 lo = _mm256_loadu_ps(d.lut), hi = _mm256_loadu_ps(d.lut + 8);
  int64_t i = 0;
  if (e0 & 1) { dst[0] = decode_one(d, e0); i = 1; }
  for (; i + 8 <= count; i += 8) _mm256_storeu_ps(dst + i, decode8(d, lo, hi, e0 + i, 8));
  if (i < count) store_n(dst + i, decode8(d, lo, hi, e0 + i, count - i), count - i);
}

inline void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 4; i++) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; i++) {
    u[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int j = 0; j < 4; j++) {
    r[j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x20);
    r[4 + j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x31);
  }
}

constexpr int64_t kPrefetchBytes = 128;

void pack_wt(const gemm::PanelLoader& L, int64_t k0, int64_t kc, int64_t p0, int64_t np, int w, float* dst) {
  const Decode& d = *static_cast<const Decode*>(L.ctx);
  const __m256 lo = _mm256_loadu_ps(d.lut), hi = _mm256_loadu_ps(d.lut + 8);
  const int64_t npan = (np + w - 1) / w;
  for (int64_t q = 0; q < npan; q++) {
    const int64_t rem = std::min<int64_t>(w, np - q * w);
    float* dq = dst + q * kc * w;
    for (int64_t kb = 0; kb < kc; kb += 8) {
      const int64_t kn = std::min<int64_t>(8, kc - kb);
      for (int r0 = 0; r0 < w; r0 += 8) {
        __m256 r[8];
        for (int i = 0; i < 8; i++) {
          if (r0 + i < rem) {
            const int64_t e = (p0 + q * w + r0 + i) * d.cols + k0 + kb;
            _mm_prefetch(reinterpret_cast<const char*>(d.packed + (e >> 1) + kPrefetchBytes), _MM_HINT_T0);
            r[i] = decode8_any(d, lo, hi, e, kn);
          } else {
            r[i] = _mm256_setzero_ps();
          }
        }
        transpose8(r);
        const int64_t wn = w - r0;
        for (int kk = 0; kk < 8; kk++)
          if (kk < kn) store_n(dq + (kb + kk) * w + r0, r[kk], wn);
      }
    }
  }
}

void pack_w(const gemm::PanelLoader& L, int64_t k0, int64_t kc, int64_t p0, int64_t np, int w, float* dst) {
  const Decode& d = *static_cast<const Decode*>(L.ctx);
  const __m256 lo = _mm256_loadu_ps(d.lut), hi = _mm256_loadu_ps(d.lut + 8);
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
      for (int v = 0; v < w; v += 8) {
        const int64_t cnt = rem - v;
        const __m256 x = cnt > 0 ? decode8_any(d, lo, hi, e + q * w + v, cnt) : _mm256_setzero_ps();
        store_n(dk + v, x, w - v);
      }
    }
  }
}

inline __m256 load8(const void* src, DType dt, int64_t i, int64_t cnt) {
  if (cnt >= 8) {
    switch (dt) {
      case DType::F32: return _mm256_loadu_ps(static_cast<const float*>(src) + i);
      case DType::BF16: {
        const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(src) + i));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
      }
      default:
        return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(src) + i)));
    }
  }
  alignas(32) float t[8] = {};
  for (int64_t j = 0; j < cnt; j++) {
    switch (dt) {
      case DType::F32: t[j] = static_cast<const float*>(src)[i + j]; break;
      case DType::BF16: t[j] = bf16_to_f32(static_cast<const uint16_t*>(src)[i + j]); break;
      default: t[j] = f16_to_f32(static_cast<const uint16_t*>(src)[i + j]); break;
    }
  }
  return _mm256_load_ps(t);
}

void quantize(const void* src, DType dt, int64_t n, int64_t bs, Quant4Type t, int64_t b0, int64_t b1, uint8_t* packed,
              float* absmax) {
  if (dt != DType::F32 && dt != DType::BF16 && dt != DType::F16) {
    quantize_blocks_scalar(src, dt, n, bs, t, b0, b1, packed, absmax);
    return;
  }
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 thn[15], thf[7];
  for (int i = 0; i < 15; i++) thn[i] = _mm256_set1_ps(kNf4Thresholds[i]);
  for (int i = 0; i < 7; i++) thf[i] = _mm256_set1_ps(kFp4Thresholds[i]);
  for (int64_t b = b0; b < b1; b++) {
    const int64_t s = b * bs, e = std::min(n, s + bs);
    __m256 mx = _mm256_set1_ps(-FLT_MAX);
    for (int64_t i = s; i < e; i += 8)
      mx = _mm256_max_ps(_mm256_and_ps(load8(src, dt, i, e - i), absmask), mx);
    alignas(32) float red[8];
    _mm256_store_ps(red, mx);
    float m = red[0];
    for (int j = 1; j < 8; j++) m = std::max(m, red[j]);
    if (e - s < bs) m = std::max(m, 0.0f);
    absmax[b] = m;
    const __m256 r = _mm256_set1_ps(1.0f / m);
    for (int64_t i = s; i < e; i += 8) {
      const int64_t cnt = std::min<int64_t>(8, e - i);
      const __m256 x = _mm256_mul_ps(load8(src, dt, i, cnt), r);
      __m256i idx = _mm256_setzero_si256();
      alignas(32) int32_t q[8];
      if (t == Quant4Type::NF4) {
        for (int k = 0; k < 15; k++) idx = _mm256_sub_epi32(idx, _mm256_castps_si256(_mm256_cmp_ps(x, thn[k], _CMP_GT_OQ)));
        _mm256_store_si256(reinterpret_cast<__m256i*>(q), idx);
      } else {
        const __m256 a = _mm256_and_ps(x, absmask);
        for (int k = 0; k < 7; k++) idx = _mm256_sub_epi32(idx, _mm256_castps_si256(_mm256_cmp_ps(a, thf[k], _CMP_GT_OQ)));
        const int neg = _mm256_movemask_ps(_mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ));
        _mm256_store_si256(reinterpret_cast<__m256i*>(q), idx);
        for (int j = 0; j < 8; j++) q[j] = kFp4CodeOfRank[q[j]] | ((neg >> j) & 1 ? 8 : 0);
      }
      for (int64_t j = 0; j < cnt; j += 2) packed[(i + j) >> 1] = (uint8_t)((q[j] << 4) | (j + 1 < 8 ? q[j + 1] : 0));
    }
  }
}

}  // namespace

const Kernels& kernels_avx2() {
  static const Kernels k{"avx2", quantize, decode, pack_wt, pack_w};
  return k;
}

}  // namespace q4
}  // namespace pk
