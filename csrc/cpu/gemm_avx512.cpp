// gemm_avx512.cpp — AVX-512 micro-kernel and packers for gemm_f32 (compiled with AVX-512 flags;
// called only when pk::cpu_isa() == Avx512).
//
// Micro-kernel: MR x NR = 12 x 32 — 12 rows of A broadcast against two zmm vectors of B per k.
// 24 zmm accumulators + 2 B vectors + 1 broadcast register fit the 32 registers; 24 independent
// FMA chains cover FMA latency x 2 pipes comfortably, and each k step needs 2 vector loads + 12
// broadcasts for 24 FMAs, well within the load ports' budget. Measured on Zen 5 (2 x 512-bit
// FMA): ~95% of peak with operands in cache; 14x32, 8x48 and 6x64 tiles measured within noise.
//
// Packers: converting loaders for f32/bf16/f16 with the two common layouts vectorised —
// "copy" (unit stride along the panel dimension: a row-major B, a transposed A) with masked
// loads for the edges, and "transpose" (unit stride along K: a row-major A, a transposed B /
// nn.Linear weight) with 16 x 16 in-register transposes. Other strides use pack_generic.
// Packing reads its source from DRAM in short strided pieces that the hardware prefetchers do not
// pick up, so both vector packers prefetch explicitly (worth ~7% of a 2048^3 GEMM).
//
// bf16 compute (kernels_avx512_bf16*, used only with GemmCompute::Bf16 on CPUs with AVX512_BF16):
// the same 12 x 32 / 16 x 16 tiles with `vdpbf16ps` instead of `vfmadd231ps` — each instruction
// multiplies a k-pair per lane (bf16 products are exact in f32; accumulation is f32), i.e. twice
// the FLOPs of an FMA at the same issue rate on Zen 4/5 and Sapphire Rapids. The A panel holds one
// 4-byte (k, k+1) pair per row, broadcast as a dword; the B panel holds 16 columns x 1 pair per
// zmm. The packers below write that pair layout, rounding f32/f16 sources to bf16 (RNE, with
// VCVTNE(2)PS2BF16) and, for bf16 sources, only shuffling 16-bit words: the transpose packer
// reads a row of 32 consecutive k as 16 ready-made pairs and reuses the 16 x 16 dword transpose.

// GCC 12 reports -Wmaybe-uninitialized inside its own AVX-512 intrinsic headers (the
// `__m512 __Y = __Y;` idiom behind _mm512_undefined_ps); the warning is spurious.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <algorithm>

#include "cpu/gemm_kernels.h"

namespace pk {
namespace gemm {

namespace {

constexpr int kMR = 12;
constexpr int kNV = 2;  // zmm vectors of B per k
constexpr int kNR = 16 * kNV;

// ---------------------------------------------------------------------------------------------
// Micro-kernel
template <int MR, int NV>
void ukernel(int64_t kc, const float* __restrict a, const float* __restrict b, float* c, int64_t ldc,
             float alpha, float beta) {
  __m512 acc[MR][NV];
#pragma GCC unroll 64
  for (int i = 0; i < MR; i++)
#pragma GCC unroll 8
    for (int j = 0; j < NV; j++) acc[i][j] = _mm512_setzero_ps();

  // Bring the C tile towards L1 while the k loop runs.
#pragma GCC unroll 64
  for (int i = 0; i < MR; i++) _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);

  auto step = [&](int64_t k) {
    __m512 bv[NV];
#pragma GCC unroll 8
    for (int j = 0; j < NV; j++) bv[j] = _mm512_load_ps(b + k * 16 * NV + 16 * j);
#pragma GCC unroll 64
    for (int i = 0; i < MR; i++) {
      const __m512 ai = _mm512_set1_ps(a[k * MR + i]);
#pragma GCC unroll 8
      for (int j = 0; j < NV; j++) acc[i][j] = _mm512_fmadd_ps(ai, bv[j], acc[i][j]);
    }
  };

  int64_t k = 0;
  for (; k + 4 <= kc; k += 4) {
    _mm_prefetch(reinterpret_cast<const char*>(b + (k + 8) * 16 * NV), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(b + (k + 8) * 16 * NV + 64), _MM_HINT_T0);
    step(k);
    step(k + 1);
    step(k + 2);
    step(k + 3);
  }
  for (; k < kc; k++) step(k);

  const __m512 va = _mm512_set1_ps(alpha);
  if (beta == 0.0f) {
#pragma GCC unroll 64
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 8
      for (int j = 0; j < NV; j++) _mm512_storeu_ps(c + i * ldc + 16 * j, _mm512_mul_ps(va, acc[i][j]));
  } else if (beta == 1.0f) {
#pragma GCC unroll 64
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 8
      for (int j = 0; j < NV; j++) {
        float* p = c + i * ldc + 16 * j;
        _mm512_storeu_ps(p, _mm512_fmadd_ps(va, acc[i][j], _mm512_loadu_ps(p)));
      }
  } else {
    const __m512 vb = _mm512_set1_ps(beta);
#pragma GCC unroll 64
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 8
      for (int j = 0; j < NV; j++) {
        float* p = c + i * ldc + 16 * j;
        _mm512_storeu_ps(p, _mm512_fmadd_ps(va, acc[i][j], _mm512_mul_ps(vb, _mm512_loadu_ps(p))));
      }
  }
}

// ---------------------------------------------------------------------------------------------
// bf16-compute micro-kernel: a/b are bf16-pair panels (gemm_kernels.h), kc2 counts k-pairs.
inline __m512bh as_bh(__m512 v) { return (__m512bh)_mm512_castps_si512(v); }

template <int MR, int NV>
void ukernel_bf16(int64_t kc2, const float* __restrict a, const float* __restrict b, float* c, int64_t ldc,
                  float alpha, float beta) {
  __m512 acc[MR][NV];
#pragma GCC unroll 64
  for (int i = 0; i < MR; i++)
#pragma GCC unroll 8
    for (int j = 0; j < NV; j++) acc[i][j] = _mm512_setzero_ps();

#pragma GCC unroll 64
  for (int i = 0; i < MR; i++) _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);

  // One float-sized slot = one bf16 (k, k+1) pair: broadcasting the slot of row i pairs with
  // every column's pair in bv.
  auto step = [&](int64_t k) {
    __m512bh bv[NV];
#pragma GCC unroll 8
    for (int j = 0; j < NV; j++) bv[j] = as_bh(_mm512_load_ps(b + k * 16 * NV + 16 * j));
#pragma GCC unroll 64
    for (int i = 0; i < MR; i++) {
      const __m512bh ai = as_bh(_mm512_set1_ps(a[k * MR + i]));
#pragma GCC unroll 8
      for (int j = 0; j < NV; j++) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], ai, bv[j]);
    }
  };

  int64_t k = 0;
  for (; k + 4 <= kc2; k += 4) {
    _mm_prefetch(reinterpret_cast<const char*>(b + (k + 8) * 16 * NV), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(b + (k + 8) * 16 * NV + 64), _MM_HINT_T0);
    step(k);
    step(k + 1);
    step(k + 2);
    step(k + 3);
  }
  for (; k < kc2; k++) step(k);

  const __m512 va = _mm512_set1_ps(alpha);
  if (beta == 0.0f) {
#pragma GCC unroll 64
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 8
      for (int j = 0; j < NV; j++) _mm512_storeu_ps(c + i * ldc + 16 * j, _mm512_mul_ps(va, acc[i][j]));
  } else if (beta == 1.0f) {
#pragma GCC unroll 64
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 8
      for (int j = 0; j < NV; j++) {
        float* p = c + i * ldc + 16 * j;
        _mm512_storeu_ps(p, _mm512_fmadd_ps(va, acc[i][j], _mm512_loadu_ps(p)));
      }
  } else {
    const __m512 vb = _mm512_set1_ps(beta);
#pragma GCC unroll 64
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 8
      for (int j = 0; j < NV; j++) {
        float* p = c + i * ldc + 16 * j;
        _mm512_storeu_ps(p, _mm512_fmadd_ps(va, acc[i][j], _mm512_mul_ps(vb, _mm512_loadu_ps(p))));
      }
  }
}

// ---------------------------------------------------------------------------------------------
// Converting loads of up to 16 elements (masked: lanes outside `m` read nothing and are zero).
inline __m512 load16(DType t, const void* base, int64_t off, __mmask16 m) {
  switch (t) {
    case DType::BF16: {
      const __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(base) + off);
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    case DType::F16:
      return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(base) + off));
    default:
      return _mm512_maskz_loadu_ps(m, static_cast<const float*>(base) + off);
  }
}

inline __mmask16 first_n(int64_t n) {
  return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

constexpr int64_t elem_size(DType t) { return t == DType::F32 ? 4 : 2; }
constexpr int64_t kPrefetchRows = 4;   // pack_copy: rows ahead
constexpr int64_t kPrefetchK = 64;     // pack_transpose: elements ahead along each row

// Unit stride along the panel dimension: row k of the source is contiguous across all panels.
// k is the outer loop so the source is read as long contiguous rows (a panel-outer order would
// walk kc rows with a large stride per 128-byte panel slice: TLB- and prefetcher-unfriendly).
template <DType T>
void pack_copy(const PanelLoader& L, int64_t k0, int64_t kc, int64_t p0, int64_t np, int w, float* dst) {
  const int64_t npan = (np + w - 1) / w;
  const char* base = static_cast<const char*>(L.data);
  for (int64_t k = 0; k < kc; k++) {
    const int64_t off = p0 + (k0 + k) * L.s_k;
    // Each row slice is short (NC elements) and rows are far apart, so the hardware prefetchers
    // never get trained: fetch the row kPrefetchRows ahead explicitly.
    if (k + kPrefetchRows < kc) {
      const char* pf = base + (off + kPrefetchRows * L.s_k) * elem_size(T);
      for (int64_t x = 0; x < np * elem_size(T); x += 64) _mm_prefetch(pf + x, _MM_HINT_T0);
    }
    for (int64_t q = 0; q < npan; q++) {
      const int64_t rem = std::min<int64_t>(w, np - q * w);
      float* d = dst + (q * kc + k) * w;
      for (int v = 0; v < w; v += 16) {
        const __m512 x = load16(T, L.data, off + q * w + v, first_n(rem - v));
        _mm512_mask_storeu_ps(d + v, first_n(w - v), x);
      }
    }
  }
}

// In-register transpose of a 16 x 16 block of floats.
inline void transpose16(__m512 r[16]) {
  __m512 t[16], u[16];
#pragma GCC unroll 8
  for (int i = 0; i < 8; i++) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; i++) {  // rows 4i..4i+3: u[4i + j] = column j of each 128-bit lane
    const __m512d a0 = _mm512_castps_pd(t[4 * i]), a1 = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d b0 = _mm512_castps_pd(t[4 * i + 2]), b1 = _mm512_castps_pd(t[4 * i + 3]);
    u[4 * i + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, b0));
    u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, b0));
    u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, b1));
    u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, b1));
  }
#pragma GCC unroll 4
  for (int j = 0; j < 4; j++) {  // gather 128-bit lanes: column 4l + j comes from lane l of u[j + 4s]
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

// Unit stride along K: load 16 panel rows x 16 k, transpose, store 16 k rows of the panel.
template <DType T>
void pack_transpose(const PanelLoader& L, int64_t k0, int64_t kc, int64_t p0, int64_t np, int w, float* dst) {
  const int64_t npan = (np + w - 1) / w;
  const char* base = static_cast<const char*>(L.data);
  for (int64_t q = 0; q < npan; q++) {
    const int64_t rem = std::min<int64_t>(w, np - q * w);
    float* dq = dst + q * kc * w;
    for (int64_t kb = 0; kb < kc; kb += 16) {
      const int kn = (int)std::min<int64_t>(16, kc - kb);
      const __mmask16 km = first_n(kn);
      for (int r0 = 0; r0 < w; r0 += 16) {
        __m512 r[16];
        // Rows past the end load nothing (mask 0 reads no memory and yields zeros). Each row is
        // also prefetched kPrefetchK elements ahead, continuing into the next panel's row.
        const int64_t ahead = kb + kPrefetchK;
        const int64_t pf_off = ahead < kc ? ahead : ahead - kc + w * L.s_p;
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) {
          const int64_t src = (p0 + q * w + r0 + i) * L.s_p + k0 + kb;
          _mm_prefetch(base + (src - kb + pf_off) * elem_size(T), _MM_HINT_T0);
          r[i] = load16(T, L.data, src, r0 + i < rem ? km : (__mmask16)0);
        }
        transpose16(r);
        const __mmask16 sm = first_n(w - r0);
#pragma GCC unroll 16
        for (int kk = 0; kk < 16; kk++)  // constant indices keep r[] in registers
          if (kk < kn) _mm512_mask_storeu_ps(dq + (kb + kk) * w + r0, sm, r[kk]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// bf16-pair packers (layout in gemm_kernels.h).

// Up to 16 elements as bf16 bit patterns in the low half of each dword (masked lanes: zero).
template <DType T>
inline __m512i load16_bf16(const void* base, int64_t off, __mmask16 m) {
  if (T == DType::BF16)
    return _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(base) + off));
  return _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(load16(T, base, off, m)));
}

// Up to 32 consecutive k of one row as 16 bf16 pairs (dword j = k 2j | k 2j+1 << 16); lanes past n: zero.
template <DType T>
inline __m512 load_pairs(const void* base, int64_t off, int n) {
  if (T == DType::BF16) {
    const __mmask32 m = n >= 32 ? (__mmask32)0xFFFFFFFFu : n <= 0 ? (__mmask32)0 : (__mmask32)((1u << n) - 1);
    return _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(m, static_cast<const uint16_t*>(base) + off));
  }
  const __m512 lo = load16(T, base, off, first_n(n)), hi = load16(T, base, off + 16, first_n(n - 16));
  return _mm512_castsi512_ps((__m512i)_mm512_cvtne2ps_pbh(hi, lo));
}

// Unit stride along the panel dimension: rows k and k+1 are interleaved word by word.
template <DType T>
void pack_copy_bf16(const PanelLoader& L, int64_t k0, int64_t kc, int64_t p0, int64_t np, int w, uint16_t* dst) {
  const int64_t npan = (np + w - 1) / w, kc2 = (kc + 1) / 2;
  const char* base = static_cast<const char*>(L.data);
  for (int64_t kp = 0; kp < kc2; kp++) {
    const int64_t k = 2 * kp;
    const bool odd_tail = k + 1 >= kc;
    const int64_t off0 = p0 + (k0 + k) * L.s_k, off1 = off0 + L.s_k;
    if (k + 2 + kPrefetchRows < kc) {
      for (int64_t rr = 0; rr < 2; rr++) {
        const char* pf = base + (off0 + (kPrefetchRows + rr) * L.s_k) * elem_size(T);
        for (int64_t x = 0; x < np * elem_size(T); x += 64) _mm_prefetch(pf + x, _MM_HINT_T0);
      }
    }
    for (int64_t q = 0; q < npan; q++) {
      const int64_t rem = std::min<int64_t>(w, np - q * w);
      uint16_t* d = dst + ((q * kc2 + kp) * w) * 2;
      for (int v = 0; v < w; v += 16) {
        const __mmask16 m = first_n(rem - v);
        const __m512i lo = load16_bf16<T>(L.data, off0 + q * w + v, m);
        const __m512i hi = odd_tail ? _mm512_setzero_si512() : load16_bf16<T>(L.data, off1 + q * w + v, m);
        _mm512_mask_storeu_epi32(d + 2 * v, first_n(w - v), _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
      }
    }
  }
}

// Unit stride along K: each panel row yields 16 pairs per 32 k; 16 rows are transposed as dwords.
template <DType T>
void pack_transpose_bf16(const PanelLoader& L, int64_t k0, int64_t kc, int64_t p0, int64_t np, int w,
                         uint16_t* dst) {
  const int64_t npan = (np + w - 1) / w, kc2 = (kc + 1) / 2;
  const char* base = static_cast<const char*>(L.data);
  for (int64_t q = 0; q < npan; q++) {
    const int64_t rem = std::min<int64_t>(w, np - q * w);
    uint16_t* dq = dst + q * kc2 * w * 2;
    for (int64_t kb = 0; kb < kc; kb += 32) {
      const int kn = (int)std::min<int64_t>(32, kc - kb);
      const int pn = (kn + 1) / 2;
      for (int r0 = 0; r0 < w; r0 += 16) {
        __m512 r[16];
        const int64_t ahead = kb + 2 * kPrefetchK;
        const int64_t pf_off = ahead < kc ? ahead : ahead - kc + w * L.s_p;
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++) {
          const int64_t src = (p0 + q * w + r0 + i) * L.s_p + k0 + kb;
          _mm_prefetch(base + (src - kb + pf_off) * elem_size(T), _MM_HINT_T0);
          if (T == DType::F32) _mm_prefetch(base + (src - kb + pf_off + 16) * elem_size(T), _MM_HINT_T0);
          r[i] = r0 + i < rem ? load_pairs<T>(L.data, src, kn) : _mm512_setzero_ps();
        }
        transpose16(r);
        const __mmask16 sm = first_n(w - r0);
#pragma GCC unroll 16
        for (int kk = 0; kk < 16; kk++)
          if (kk < pn) _mm512_mask_storeu_ps(reinterpret_cast<float*>(dq + ((kb / 2 + kk) * w + r0) * 2), sm, r[kk]);
      }
    }
  }
}

template <DType T>
void pack_dense_bf16_t(const PanelLoader& L, int64_t k0, int64_t kc, int64_t p0, int64_t np, int w, uint16_t* dst) {
  if (L.s_p == 1)
    pack_copy_bf16<T>(L, k0, kc, p0, np, w, dst);
  else if (L.s_k == 1)
    pack_transpose_bf16<T>(L, k0, kc, p0, np, w, dst);
  else
    pack_generic_bf16(L, k0, kc, p0, np, w, dst);
}

void pack_dense_bf16(const PanelLoader& L, int64_t k0, int64_t kc, int64_t p0, int64_t np, int w, uint16_t* dst) {
  switch (L.dtype) {
    case DType::F32: return pack_dense_bf16_t<DType::F32>(L, k0, kc, p0, np, w, dst);
    case DType::BF16: return pack_dense_bf16_t<DType::BF16>(L, k0, kc, p0, np, w, dst);
    case DType::F16: return pack_dense_bf16_t<DType::F16>(L, k0, kc, p0, np, w, dst);
    default: return pack_generic_bf16(L, k0, kc, p0, np, w, dst);
  }
}

template <DType T>
void pack_dense_t(const PanelLoader& L, int64_t k0, int64_t kc, int64_t p0, int64_t np, int w, float* dst) {
  if (L.s_p == 1)
    pack_copy<T>(L, k0, kc, p0, np, w, dst);
  else if (L.s_k == 1)
    pack_transpose<T>(L, k0, kc, p0, np, w, dst);
  else
    pack_generic(L, k0, kc, p0, np, w, dst);
}

void pack_dense(const PanelLoader& L, int64_t k0, int64_t kc, int64_t p0, int64_t np, int w, float* dst) {
  switch (L.dtype) {
    case DType::F32: return pack_dense_t<DType::F32>(L, k0, kc, p0, np, w, dst);
    case DType::BF16: return pack_dense_t<DType::BF16>(L, k0, kc, p0, np, w, dst);
    case DType::F16: return pack_dense_t<DType::F16>(L, k0, kc, p0, np, w, dst);
    default: return pack_generic(L, k0, kc, p0, np, w, dst);
  }
}

// ---------------------------------------------------------------------------------------------
// bf16-output epilogue (gemm.h Bf16Epilogue) on one finished tile, in registers: P (+ the earlier
// K blocks' partial sum) + bias, optionally rounded to bf16 precision, plus alpha_lr·Σ_k L[i,k]·R[k,:],
// converted to bf16 and stored. Rows go in groups of NI = 4 and columns in NV <= 4 vectors so the
// rank-r sums (a chain of r FMAs each) run as NI·NV independent chains: at r = 16 the low-rank
// term costs a few percent of the tile's GEMM instead of stalling on FMA latency.

// f32 -> bf16 bits (nearest even; NaN -> quiet NaN) in the low half of each dword: pk::f32_to_bf16.
inline __m512i bf16_bits(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __m512i qnan = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  return _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), r, qnan);
}

template <int NI, int NV>
void epi_block(const Bf16Epilogue& e, const float* tile, int64_t ldt, int64_t i0, int64_t j0, const __mmask16* mk,
               const float* prev, int64_t ldp) {
  // Everything the loops read from `e` in locals: the output stores could alias it otherwise, and
  // GCC would reload the fields (and spill the accumulators) on every k step.
  const float* bias = e.bias ? e.bias + j0 : nullptr;
  const bool round_first = e.round_first;
  const int64_t r = e.r, ldl = e.ldl, ldr = e.ldr, ldo = e.ldo;
  const float* L = e.L ? e.L + i0 * ldl : nullptr;
  const float* R = e.R ? e.R + j0 : nullptr;
  uint16_t* out = e.out + i0 * ldo + j0;
  __mmask16 m[NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; v++) m[v] = mk[v];
  __m512 acc[NI][NV];
#pragma GCC unroll 4
  for (int i = 0; i < NI; i++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) {
      __m512 x = _mm512_maskz_loadu_ps(m[v], tile + i * ldt + 16 * v);
      if (prev) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m[v], prev + i * ldp + 16 * v));
      if (bias) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m[v], bias + 16 * v));
      if (round_first) x = _mm512_castsi512_ps(_mm512_slli_epi32(bf16_bits(x), 16));
      acc[i][v] = x;
    }
  if (r) {
    __m512 lr[NI][NV];
#pragma GCC unroll 4
    for (int i = 0; i < NI; i++)
#pragma GCC unroll 4
      for (int v = 0; v < NV; v++) lr[i][v] = _mm512_setzero_ps();
    for (int64_t k = 0; k < r; k++) {
      __m512 rv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; v++) rv[v] = _mm512_maskz_loadu_ps(m[v], R + k * ldr + 16 * v);
#pragma GCC unroll 4
      for (int i = 0; i < NI; i++) {
        const __m512 b = _mm512_set1_ps(L[i * ldl + k]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++) lr[i][v] = _mm512_fmadd_ps(b, rv[v], lr[i][v]);
      }
    }
    const __m512 va = _mm512_set1_ps(e.alpha_lr);
#pragma GCC unroll 4
    for (int i = 0; i < NI; i++)
#pragma GCC unroll 4
      for (int v = 0; v < NV; v++) acc[i][v] = _mm512_fmadd_ps(va, lr[i][v], acc[i][v]);
  }
#pragma GCC unroll 4
  for (int i = 0; i < NI; i++)
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++)
      _mm256_mask_storeu_epi16(out + i * ldo + 16 * v, m[v], _mm512_cvtepi32_epi16(bf16_bits(acc[i][v])));
}

template <int NI>
void epi_rows(const Bf16Epilogue& e, const float* tile, int64_t ldt, int64_t i0, int64_t j0, int nv, const __mmask16* m,
              const float* prev, int64_t ldp) {
  switch (nv) {
    case 1: epi_block<NI, 1>(e, tile, ldt, i0, j0, m, prev, ldp); break;
    case 2: epi_block<NI, 2>(e, tile, ldt, i0, j0, m, prev, ldp); break;
    case 3: epi_block<NI, 3>(e, tile, ldt, i0, j0, m, prev, ldp); break;
    default: epi_block<NI, 4>(e, tile, ldt, i0, j0, m, prev, ldp); break;
  }
}

void epi_bf16(const Bf16Epilogue& e, const float* tile, int64_t ldt, int64_t i0, int64_t j0, int mr, int nr,
              const float* prev, int64_t ldp) {
  for (int j = 0; j < nr; j += 64) {
    const int cols = std::min(64, nr - j);
    const int nv = (cols + 15) / 16;
    __mmask16 m[4];
    for (int v = 0; v < 4; v++) {
      const int rem = cols - 16 * v;
      m[v] = rem >= 16 ? (__mmask16)0xFFFF : rem > 0 ? (__mmask16)((1u << rem) - 1) : (__mmask16)0;
    }
    for (int i = 0; i < mr; i += 4) {
      const int ni = std::min(4, mr - i);
      const float* t = tile + i * ldt + j;
      const float* p = prev ? prev + i * ldp + j : nullptr;
      switch (ni) {
        case 1: epi_rows<1>(e, t, ldt, i0 + i, j0 + j, nv, m, p, ldp); break;
        case 2: epi_rows<2>(e, t, ldt, i0 + i, j0 + j, nv, m, p, ldp); break;
        case 3: epi_rows<3>(e, t, ldt, i0 + i, j0 + j, nv, m, p, ldp); break;
        default: epi_rows<4>(e, t, ldt, i0 + i, j0 + j, nv, m, p, ldp); break;
      }
    }
  }
}

}  // namespace

// Blocking for the 12 x 32 kernel (Zen 4/5: 32-48 KB L1d, 1 MB L2; Intel SKX+: 32-48 KB, 1-2 MB):
//   KC = 256: A micro-panel 12 x 256 x 4 B = 12 KB stays in L1 next to the streaming B panel;
//             C is read/written once per 256 k steps, i.e. < 2% of the kernel's memory traffic.
//   NC = 512: B block 256 x 512 x 4 B = 512 KB, half the L2, leaving room for the A/C streams.
//   MC = 1536: A block 1536 x 256 x 4 B = 1.5 MB in the shared L3; with M <= MC (typical) every
//             B block is packed exactly once per GEMM.
const KernelSet& kernels_avx512() {
  static const KernelSet ks{"avx512", kMR, kNR, 1536, 256, 512, ukernel<kMR, kNV>, pack_dense, pack_dense_bf16, false, epi_bf16};
  return ks;
}

// Narrow shapes: a 16 x 16 tile (16 accumulators, one B vector per k). With N <= 16 (the LoRA
// products x·Aᵀ, dY·B and dYᵀ·xa at rank 16) the 12 x 32 tile computes twice the columns it keeps
// and sends every tile through the edge buffer; with M <= 16 (gbᵀ·x, r x in) it computes 24 rows
// for 16. gemm.cpp picks this set for those shapes. Same blocking: the A micro-panel
// (16 x 256 x 4 B = 16 KB) and the B micro-panel (16 KB) share L1.
const KernelSet& kernels_avx512_narrow() {
  static const KernelSet ks{"avx512-16x16", 16, 16, 1536, 256, 512, ukernel<16, 1>, pack_dense, pack_dense_bf16, false, epi_bf16};
  return ks;
}

// bf16 compute (AVX512_BF16; gemm.cpp checks pk::cpu_bf16()). KC counts k:
// KC = 768 (384 pairs): A micro-panel 12 x 768 x 2 B = 18 KB in L1, B block 768 x 512 x 2 B =
// 768 KB in L2. Measured on Zen 5 (2 threads): K = 1536 products (FFN down-projection) ~10% faster
// than KC = 512 (two K blocks instead of three), 2048^3 +3%, K <= 512 unchanged; KC = 1024 ties
// with 768 but fills a 1 MB L2.
const KernelSet& kernels_avx512_bf16() {
  static const KernelSet ks{"avx512-bf16", kMR, kNR, 1536, 768, 512, ukernel_bf16<kMR, kNV>, pack_dense, pack_dense_bf16, true, epi_bf16};
  return ks;
}

const KernelSet& kernels_avx512_bf16_narrow() {
  static const KernelSet ks{"avx512-bf16-16x16", 16, 16, 1536, 768, 512, ukernel_bf16<16, 1>, pack_dense, pack_dense_bf16, true, epi_bf16};
  return ks;
}

}  // namespace gemm
}  // namespace pk
