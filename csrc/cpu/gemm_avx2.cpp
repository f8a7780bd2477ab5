// gemm_avx2.cpp — AVX2+FMA micro-kernel and packers for gemm_f32 (compiled with -mavx2 -mfma
// -mf16c; called only when pk::cpu_isa() >= Avx2 and the AVX-512 path is not selected).
//
// Micro-kernel: MR x NR = 6 x 16 — the classic Haswell/Zen tile: 12 ymm accumulators, 2 B
// vectors and 1 broadcast register fit the 16 ymm registers; 12 independent FMA chains cover
// 2 FMA pipes x 4-5 cycles latency; per k: 2 vector loads + 6 broadcasts for 12 FMAs.
//
// Packers: f32/bf16/f16 converting loaders; unit stride along the panel dimension is a copy
// (scalar-converted edges), unit stride along K uses 8 x 8 in-register transposes; both prefetch
// their strided source explicitly (see gemm_avx512.cpp).
#include <immintrin.h>

#include <algorithm>

#include "cpu/gemm_kernels.h"

namespace pk {
namespace gemm {

namespace {

constexpr int kMR = 6;
constexpr int kNR = 16;

void ukernel(int64_t kc, const float* __restrict a, const float* __restrict b, float* c, int64_t ldc,
             float alpha, float beta) {
  __m256 acc[kMR][2];
#pragma GCC unroll 16
  for (int i = 0; i < kMR; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
#pragma GCC unroll 16
  for (int i = 0; i < kMR; i++) _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);

  auto step = [&](int64_t k) {
    const __m256 b0 = _mm256_load_ps(b + k * kNR), b1 = _mm256_load_ps(b + k * kNR + 8);
#pragma GCC unroll 16
    for (int i = 0; i < kMR; i++) {
      const __m256 ai = _mm256_broadcast_ss(a + k * kMR + i);
      acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
    }
  };
  int64_t k = 0;
  for (; k + 4 <= kc; k += 4) {
    step(k);
    step(k + 1);
    step(k + 2);
    step(k + 3);
  }
  for (; k < kc; k++) step(k);

  const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
#pragma GCC unroll 16
  for (int i = 0; i < kMR; i++) {
    float* p = c + i * ldc;
    __m256 r0 = _mm256_mul_ps(va, acc[i][0]), r1 = _mm256_mul_ps(va, acc[i][1]);
    if (beta != 0.0f) {  // beta == 0: C is not read
      r0 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(p), r0);
      r1 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(p + 8), r1);
    }
    _mm256_storeu_ps(p, r0);
    _mm256_storeu_ps(p + 8, r1);
  }
}

// ---------------------------------------------------------------------------------------------
inline float load1(DType t, const void* base, int64_t off) {
  switch (t) {
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(base)[off]);
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(base)[off]);
    default: return static_cast<const float*>(base)[off];
  }
}

// Converting load of 8 contiguous elements.
inline __m256 load8(DType t, const void* base, int64_t off) {
  switch (t) {
    case DType::BF16: {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + off));
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    case DType::F16:
      return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + off)));
    default:
      return _mm256_loadu_ps(static_cast<const float*>(base) + off);
  }
}

// Up to 8 contiguous elements, zero beyond n (n in [0, 8]).
inline __m256 load8_n(DType t, const void* base, int64_t off, int n) {
  if (n >= 8) return load8(t, base, off);
  alignas(32) float tmp[8] = {};
  for (int i = 0; i < n; i++) tmp[i] = load1(t, base, off + i);
  return _mm256_load_ps(tmp);
}

// Stores the first n (1..8) lanes.
inline void store8_n(float* d, __m256 x, int n) {
  if (n >= 8) { _mm256_storeu_ps(d, x); return; }
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  _mm256_maskstore_ps(d, _mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx), x);
}

constexpr int64_t elem_size(DType t) { return t == DType::F32 ? 4 : 2; }
constexpr int64_t kPrefetchRows = 4;   // pack_copy: rows ahead
constexpr int64_t kPrefetchK = 64;     // pack_transpose: elements ahead along each row

// Unit stride along the panel dimension: k outer, so each source row is read contiguously.
template <DType T>
void pack_copy(const PanelLoader& L, int64_t k0, int64_t kc, int64_t p0, int64_t np, int w, float* dst) {
  const int64_t npan = (np + w - 1) / w;
  const char* base = static_cast<const char*>(L.data);
  for (int64_t k = 0; k < kc; k++) {
    const int64_t off = p0 + (k0 + k) * L.s_k;
    if (k + kPrefetchRows < kc) {  // short strided row slices: the hardware prefetchers miss them
      const char* pf = base + (off + kPrefetchRows * L.s_k) * elem_size(T);
      for (int64_t x = 0; x < np * elem_size(T); x += 64) _mm_prefetch(pf + x, _MM_HINT_T0);
    }
    for (int64_t q = 0; q < npan; q++) {
      const int64_t rem = std::min<int64_t>(w, np - q * w);
      float* d = dst + (q * kc + k) * w;
      for (int v = 0; v < w; v += 8)
        store8_n(d + v, load8_n(T, L.data, off + q * w + v, (int)std::max<int64_t>(0, std::min<int64_t>(8, rem - v))),
                 std::min(8, w - v));
    }
  }
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

template <DType T>
void pack_transpose(const PanelLoader& L, int64_t k0, int64_t kc, int64_t p0, int64_t np, int w, float* dst) {
  const int64_t npan = (np + w - 1) / w;
  const char* base = static_cast<const char*>(L.data);
  for (int64_t q = 0; q < npan; q++) {
    const int64_t rem = std::min<int64_t>(w, np - q * w);
    float* dq = dst + q * kc * w;
    for (int64_t kb = 0; kb < kc; kb += 8) {
      const int kn = (int)std::min<int64_t>(8, kc - kb);
      for (int r0 = 0; r0 < w; r0 += 8) {
        __m256 r[8];
        const int64_t ahead = kb + kPrefetchK;  // prefetch along the row, then the next panel's row
        const int64_t pf_off = ahead < kc ? ahead : ahead - kc + w * L.s_p;
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) {
          const int64_t src = (p0 + q * w + r0 + i) * L.s_p + k0 + kb;
          if (r0 + i < rem) {
            _mm_prefetch(base + (src - kb + pf_off) * elem_size(T), _MM_HINT_T0);
            r[i] = load8_n(T, L.data, src, kn);
          } else {
            r[i] = _mm256_setzero_ps();
          }
        }
        transpose8(r);
        const int sn = std::min(8, w - r0);
#pragma GCC unroll 8
        for (int kk = 0; kk < 8; kk++)  // constant indices keep r[] in registers
          if (kk < kn) store8_n(dq + (kb + kk) * w + r0, r[kk], sn);
      }
    }
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

}  // namespace

// Blocking for the 6 x 16 kernel: KC = 256 (A micro-panel 6 KB in L1 beside a 16 KB B panel),
// NC = 384 (B block 384 KB: fits a 512 KB-1 MB L2), MC = 1536 (A block 1.5 MB in L3).
const KernelSet& kernels_avx2() {
  static const KernelSet ks{"avx2", kMR, kNR, 1536, 256, 384, ukernel, pack_dense, pack_generic_bf16, false};
  return ks;
}

}  // namespace gemm
}  // namespace pk
