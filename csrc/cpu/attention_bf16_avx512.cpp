// attention_bf16_avx512.cpp — AVX512-BF16 primitives for the bf16 attention path
// (attention_bf16.cpp; interface in attention_kernels.h, AttnBf16Kernels).
// Compiled with AVX-512 flags (incl. -mavx512bf16); called only when pk::cpu_isa() == Avx512 and
// pk::cpu_bf16() (the CPU has AVX512_BF16 and PEFTKIT_ISA / setIsa allow it).
//
// Why: vdpbf16ps multiplies a pair of bf16 values per f32 lane and adds both products to the
// lane (products of bf16 are exact in f32, the accumulation is f32), so one instruction does the
// work of two f32 FMAs — the way PyTorch's CPU flash attention runs bf16 inputs. The operands
// must hold the two elements of the reduction dimension side by side in one 32-bit word (a
// "pair"). The packers build that layout straight from bf16 storage (16-bit shuffles only, no
// rounding); the fused softmax steps compute P (forward) or P and dS (backward) in f32 and round
// them into the pair layouts the next products read (RNE, VCVTNE2PS2BF16), in one pass per tile.
//
// gemm: the register-tiled block product of attention_avx512_tile.h with a vdpbf16ps per k-pair;
// the A pair is broadcast from any address (so A may be a strided bf16 view of q / dO, or a tile),
// B rows are packed pair words. exp: exp512 from attention_avx512_math.h, shared with the f32 kernels.
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "cpu/attention_avx512_math.h"
#include "cpu/attention_avx512_tile.h"
#include "cpu/attention_kernels.h"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace pk {
namespace attn {

namespace {

inline __mmask16 first16(int64_t n) {
  return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}
inline __mmask32 first32(int64_t n) {
  return n >= 32 ? (__mmask32)0xFFFFFFFFu : n <= 0 ? (__mmask32)0 : (__mmask32)((1u << n) - 1);
}

// One pair (two bf16) from any address, broadcast to every lane.
inline __m512bh bcast_pair(const uint16_t* p) {
  uint32_t w;
  std::memcpy(&w, p, 4);
  return (__m512bh)_mm512_set1_epi32((int)w);
}

// One pair step of the bf16 block product (attention_avx512_tile.h): a vdpbf16ps per k-pair.
struct Bf16PairOps {
  using A = uint16_t;
  using B = uint32_t;
  using AVec = __m512bh;
  using BVec = __m512bh;
  static __m512bh bcast_a(const uint16_t* p) { return bcast_pair(p); }
  static __m512bh load_b(const uint32_t* p, __mmask16 m) {
    return (__m512bh)(m == 0xffff ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi32(m, p));
  }
  static __m512 madd(__m512 acc, __m512bh a, __m512bh b) { return _mm512_dpbf16_ps(acc, a, b); }
};

void gemm(int64_t M, int64_t N, int64_t P, const uint16_t* A, int64_t a_rs, int64_t a_cs, const uint32_t* B,
          int64_t ldb, float* C, int64_t ldc, float alpha, bool accumulate) {
  tile_gemm<Bf16PairOps>(M, N, P, A, a_rs, a_cs, B, ldb, C, ldc, alpha, accumulate);
}

// ---------------------------------------------------------------------------------------------
// Rounding f32 tiles to bf16 operands.

void round_rows(const float* x, int64_t ldx, int64_t rows, int64_t n, int64_t n_pad, uint16_t* y, int64_t ldy) {
  for (int64_t r = 0; r < rows; r++) {
    const float* xr = x + r * ldx;
    uint16_t* yr = y + r * ldy;
    for (int64_t c = 0; c < n_pad; c += 32) {
      // Lanes past n read as 0 (masked loads), so the pad columns come out as bf16 zeros.
      const __m512 lo = _mm512_maskz_loadu_ps(first16(n - c), xr + c);
      const __m512 hi = _mm512_maskz_loadu_ps(first16(n - c - 16), xr + c + 16);
      _mm512_mask_storeu_epi16(yr + c, first32(n_pad - c), (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Fused softmax steps: one pass over a tile instead of separate max / exp / round / rescale
// calls per row; rows are processed several at a time so that their exps overlap (a single
// 64-wide row is too short to hide exp512's latency).

// Word w of the result = (a[w], b[w]) for the 16-lane f32 vectors a, b, rounded to bf16.
inline __m512i pair_words(__m512 a, __m512 b, __m512i idx) {
  return _mm512_permutexvar_epi16(idx, (__m512i)_mm512_cvtne2ps_pbh(b, a));
}
inline __m512i pair_index() {  // interleave the two 16-word halves of a cvtne2ps result
  return _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
                          19, 3, 18, 2, 17, 1, 16, 0);
}

// Rows [r0, r0+R) of the forward step (see AttnBf16Kernels::softmax_step).
template <int R>
void softmax_rows(const float* s, int64_t lds, int64_t r0, int64_t bc, int64_t bcp, float* m, float* l, float* O,
                  int64_t ldo, int64_t dv, uint16_t* pb, int64_t ldp) {
  const __m512 ninf = _mm512_set1_ps(-__builtin_inff());
  __m512 mx[R];
#pragma GCC unroll 4
  for (int i = 0; i < R; i++) mx[i] = ninf;
  for (int64_t c = 0; c < bc; c += 16) {
    const __mmask16 k = first16(bc - c);
#pragma GCC unroll 4
    for (int i = 0; i < R; i++) mx[i] = _mm512_max_ps(mx[i], _mm512_mask_loadu_ps(ninf, k, s + (r0 + i) * lds + c));
  }
  __m512 mnew[R], sum[R];
  bool live[R];
#pragma GCC unroll 4
  for (int i = 0; i < R; i++) {
    const float mr = std::max(m[r0 + i], _mm512_reduce_max_ps(mx[i]));
    live[i] = mr != -__builtin_inff();  // a row with nothing visible yet: P = 0, state unchanged
    mnew[i] = _mm512_set1_ps(live[i] ? mr : 0.0f);
    sum[i] = _mm512_setzero_ps();
  }
  for (int64_t c = 0; c < bcp; c += 32) {
    const __mmask16 k0 = first16(bc - c), k1 = first16(bc - c - 16);
    const __mmask32 ks = first32(bcp - c);
#pragma GCC unroll 4
    for (int i = 0; i < R; i++) {
      const float* sr = s + (r0 + i) * lds + c;
      // Lanes past bc read -inf, so exp gives the zero pad of P.
      __m512 e0 = exp512(_mm512_sub_ps(_mm512_mask_loadu_ps(ninf, k0, sr), mnew[i]));
      __m512 e1 = exp512(_mm512_sub_ps(_mm512_mask_loadu_ps(ninf, k1, sr + 16), mnew[i]));
      if (!live[i]) { e0 = _mm512_setzero_ps(); e1 = _mm512_setzero_ps(); }
      sum[i] = _mm512_add_ps(sum[i], _mm512_add_ps(e0, e1));
      _mm512_mask_storeu_epi16(pb + (r0 + i) * ldp + c, ks, (__m512i)_mm512_cvtne2ps_pbh(e1, e0));
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < R; i++) {
    if (!live[i]) continue;
    const float mn = _mm512_cvtss_f32(mnew[i]);
    // e^(m - mnew): 0 on a row's first visible block (m = -inf), 1 when the max did not move.
    const float alpha = _mm512_cvtss_f32(exp512(_mm512_set1_ps(m[r0 + i] - mn)));
    l[r0 + i] = l[r0 + i] * alpha + _mm512_reduce_add_ps(sum[i]);
    m[r0 + i] = mn;
    if (alpha != 1.0f) {
      float* o = O + (r0 + i) * ldo;
      const __m512 va = _mm512_set1_ps(alpha);
      for (int64_t x = 0; x < dv; x += 16) {
        const __mmask16 k = first16(dv - x);
        _mm512_mask_storeu_ps(o + x, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, o + x), va));
      }
    }
  }
}

void softmax_step(const float* s, int64_t lds, int64_t br, int64_t bc, int64_t bcp, float* m, float* l, float* O,
                  int64_t ldo, int64_t dv, uint16_t* pb, int64_t ldp) {
  int64_t r = 0;
  for (; r + 4 <= br; r += 4) softmax_rows<4>(s, lds, r, bc, bcp, m, l, O, ldo, dv, pb, ldp);
  for (; r < br; r++) softmax_rows<1>(s, lds, r, bc, bcp, m, l, O, ldo, dv, pb, ldp);
}

// Backward tile (see AttnBf16Kernels::grad_tile): two rows at a time, which is what the pair
// outputs consume; a missing second row is all zeros.
void grad_tile(const float* s, const float* dp, const float* f, int64_t ld, int64_t br, int64_t bc, const float* L,
               const float* D, uint32_t* pt, uint32_t* dst, int64_t ldt, uint16_t* dsb, int64_t bcp, int64_t ldb) {
  const __m512 ninf = _mm512_set1_ps(-__builtin_inff());
  const __m512i idx = pair_index();
  for (int64_t r = 0; r < br; r += 2) {
    const bool has1 = r + 1 < br;
    const int64_t r1 = has1 ? r + 1 : r;  // a missing row reads row r and is then zeroed
    const __m512 L0 = _mm512_set1_ps(L[r]), L1 = _mm512_set1_ps(L[r1]);
    const __m512 D0 = _mm512_set1_ps(D[r]), D1 = _mm512_set1_ps(D[r1]);
    for (int64_t c = 0; c < bcp; c += 16) {
      const __mmask16 k = first16(bc - c), kp = first16(bcp - c);
      // Lanes past bc: s = -inf so P = 0, dP = 0 so dS = 0 (the zero pad of the bf16 tiles).
      __m512 p0 = exp512(_mm512_sub_ps(_mm512_mask_loadu_ps(ninf, k, s + r * ld + c), L0));
      __m512 p1 = exp512(_mm512_sub_ps(_mm512_mask_loadu_ps(ninf, k, s + r1 * ld + c), L1));
      if (!has1) p1 = _mm512_setzero_ps();
      __m512 d0 = _mm512_mul_ps(p0, _mm512_sub_ps(_mm512_maskz_loadu_ps(k, dp + r * ld + c), D0));
      __m512 d1 = _mm512_mul_ps(p1, _mm512_sub_ps(_mm512_maskz_loadu_ps(k, dp + r1 * ld + c), D1));
      if (f) {
        d0 = _mm512_mul_ps(d0, _mm512_maskz_loadu_ps(k, f + r * ld + c));
        d1 = _mm512_mul_ps(d1, _mm512_maskz_loadu_ps(k, f + r1 * ld + c));
      }
      if (pt) _mm512_mask_storeu_epi32(pt + (r / 2) * ldt + c, k, pair_words(p0, p1, idx));
      if (dst) _mm512_mask_storeu_epi32(dst + (r / 2) * ldt + c, k, pair_words(d0, d1, idx));
      if (dsb) {
        const __m512i h = (__m512i)_mm512_cvtne2ps_pbh(d1, d0);  // [row r | row r+1]
        _mm256_mask_storeu_epi16(dsb + r * ldb + c, kp, _mm512_castsi512_si256(h));
        if (has1) _mm256_mask_storeu_epi16(dsb + (r + 1) * ldb + c, kp, _mm512_extracti64x4_epi64(h, 1));
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Packing bf16 storage into pair words (no rounding: the bits are moved, never changed).

// In-register transpose of a 16 x 16 block of 32-bit words.
inline void transpose16(__m512i r[16]) {
  __m512i t[16], u[16];
#pragma GCC unroll 8
  for (int i = 0; i < 8; i++) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; i++) {
    u[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
#pragma GCC unroll 4
  for (int j = 0; j < 4; j++) {
    const __m512i v0 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0x88);
    const __m512i w0 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0xDD);
    const __m512i v1 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0x88);
    const __m512i w1 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0xDD);
    r[j] = _mm512_shuffle_i32x4(v0, v1, 0x88);
    r[8 + j] = _mm512_shuffle_i32x4(v0, v1, 0xDD);
    r[4 + j] = _mm512_shuffle_i32x4(w0, w1, 0x88);
    r[12 + j] = _mm512_shuffle_i32x4(w0, w1, 0xDD);
  }
}

// y[p*ldy + r] = (X[r][2p], X[r][2p+1]): X viewed as R x C/2 words, transposed 16 x 16 at a time.
void pack_col_pairs(const uint16_t* x, int64_t rs, int64_t R, int64_t C, uint32_t* y, int64_t ldy) {
  const int64_t W = C / 2;  // words per row (C is even)
  for (int64_t r0 = 0; r0 < R; r0 += 16) {
    const int64_t nr = std::min<int64_t>(16, R - r0);
    for (int64_t w0 = 0; w0 < W; w0 += 16) {
      const __mmask16 wm = first16(W - w0);
      __m512i t[16];
#pragma GCC unroll 16
      for (int i = 0; i < 16; i++)
        t[i] = i < nr ? _mm512_maskz_loadu_epi32(wm, x + (r0 + i) * rs + 2 * w0) : _mm512_setzero_si512();
      transpose16(t);
      const __mmask16 rm = first16(nr);
#pragma GCC unroll 16
      for (int k = 0; k < 16; k++)
        if (w0 + k < W) _mm512_mask_storeu_epi32(y + (w0 + k) * ldy + r0, rm, t[k]);
    }
  }
}

// y[p*ldy + c] = (X[2p][c], X[2p+1][c]); a missing row 2p+1 (R odd) reads as 0.
void pack_row_pairs(const uint16_t* x, int64_t rs, int64_t R, int64_t C, uint32_t* y, int64_t ldy) {
  // permutex2var picks words of the two rows alternately: lo takes columns 0..15, hi 16..31.
  const __m512i ilo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6,
                                       37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  const __m512i ihi = _mm512_add_epi16(ilo, _mm512_set1_epi16(16));
  for (int64_t r = 0; r < R; r += 2) {
    const uint16_t* x0 = x + r * rs;
    const uint16_t* x1 = x0 + rs;
    const bool has1 = r + 1 < R;
    uint32_t* yr = y + (r / 2) * ldy;
    for (int64_t c = 0; c < C; c += 32) {
      const __mmask32 m = first32(C - c);
      const __m512i a = _mm512_maskz_loadu_epi16(m, x0 + c);
      const __m512i b = has1 ? _mm512_maskz_loadu_epi16(m, x1 + c) : _mm512_setzero_si512();
      _mm512_mask_storeu_epi32(yr + c, first16(C - c), _mm512_permutex2var_epi16(a, ilo, b));
      if (C - c > 16) _mm512_mask_storeu_epi32(yr + c + 16, first16(C - c - 16), _mm512_permutex2var_epi16(a, ihi, b));
    }
  }
}

// sum x[i]·y[i] over bf16 vectors, f32 accumulation (exact products).
float dot(const uint16_t* x, const uint16_t* y, int64_t n) {
  __m512 s = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 32) {
    const __mmask32 m = first32(n - i);
    s = _mm512_dpbf16_ps(s, (__m512bh)_mm512_maskz_loadu_epi16(m, x + i), (__m512bh)_mm512_maskz_loadu_epi16(m, y + i));
  }
  return _mm512_reduce_add_ps(s);
}

}  // namespace

const AttnBf16Kernels& attn_bf16_kernels_avx512() {
  static const AttnBf16Kernels k{gemm,         round_rows, pack_col_pairs, pack_row_pairs,
                                 softmax_step, grad_tile,  dot,            "avx512-bf16"};
  return k;
}

}  // namespace attn
}  // namespace pk
#endif  // x86-64
