// row_kernels.h — internal interface between the row-op drivers (norm.cpp: RMSNorm and LayerNorm,
// rope.cpp, cross_entropy.cpp) and their vectorised kernels (row_kernels_avx512.cpp,
// row_kernels_avx2.cpp, row_kernels_bf16_avx512.cpp).
//
// Why: these ops work one row at a time (a normalised row of C elements, a head of D lanes, a
// vocabulary chunk). Widening each row element by element into a buffer and doing the math in
// scalar code made them compute-bound at ~2 GB/s; these kernels read bf16/f16/f32 rows directly
// into vector registers, compute there and narrow on the way out, so an op costs about one pass
// over its memory.
//
// Contract with the drivers (which keep all argument checks and the scalar paths for f64, for
// other dtypes and for builds/CPUs without the vector kernels):
//  - rows are contiguous runs of a float storage dtype (F32/BF16/F16); a driver gathers a strided
//    row into a contiguous buffer OF THE SAME DTYPE first, so strided and contiguous inputs go
//    through the very same code (same reduction order, same bits);
//  - the element-wise math keeps the scalar path's operations and rounding points exactly
//    (products, then roundings to the storage dtype, then sums; no fused multiply-adds: the kernel
//    files are compiled with contraction off), so those results are bit-identical to it;
//  - reductions accumulate in f64 like the scalar path, only in another (fixed) order: results
//    may differ from it in the last bits of the f64 sum, never with the thread count (the
//    cross-entropy's sum of exps adds blocks of 256 lanes in f32 first, see k_sum_exp);
//  - exps use the vector exp of simd_math.h (<= 1 ulp, where the scalar path calls std::exp).
//
// The second half of this file (under PK_ROW_VECTOR_IMPL) is the ISA-generic implementation,
// included by the ISA files after they name their traits `pk::rowk::{anon}::VT`.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace pk {
namespace rowk {

// How RMSNorm scales the normalised row h = x·rstd (g is the weight vector, all ones without one):
//   Plain: y = h;  Weight (Llama): y = g·round(h, dtype of x);  UnitOffset (Gemma, g = 1 + w): y = h·g.
enum class RmsMode : int { Plain = 0, Weight = 1, UnitOffset = 2 };

struct Kernels {
  const char* name;
  // Contiguous run of dtype t <-> f32 (widening is exact; narrowing rounds to nearest even with
  // the bits of pk::f32_to_bf16 / f32_to_f16).
  void (*load)(DType t, const void* src, float* dst, int64_t n);
  void (*store)(DType t, const float* src, void* dst, int64_t n);

  // RMSNorm forward: Σ x_i² in f64 over one row of dtype xt.
  double (*sum_sq)(DType xt, const void* x, int64_t n);
  // RMSNorm forward: y (dtype yt) = the scaling `m` of h = x·rs (see RmsMode); g has n floats.
  void (*rms_scale)(DType xt, const void* x, float rs, RmsMode m, const float* g, DType yt, void* y, int64_t n);
  // RMSNorm backward, pass 1 over a row: when `part` is non-null, part_i += dy_i·h'_i in f64
  // (h' = h for UnitOffset, round(h, xt) otherwise: the tensor the weight multiplied); returns
  // Σ (dy_i·g_i)·h_i in f64.
  double (*rms_bwd_dot)(DType xt, const void* x, DType dyt, const void* dy, float rs, RmsMode m, const float* g,
                        double* part, int64_t n);
  // RMSNorm backward, pass 2: dx (dtype xt) = rs·(dy·g − h·k), h = x·rs.
  void (*rms_bwd_dx)(DType xt, const void* x, DType dyt, const void* dy, float rs, float k, const float* g, void* dx,
                     int64_t n);

  // LayerNorm forward: Σ x_i, then Σ (x_i − mu)² (each square rounded, then added), in f64.
  double (*sum)(DType xt, const void* x, int64_t n);
  double (*sum_sq_dev)(DType xt, const void* x, double mu, int64_t n);
  // LayerNorm forward: y (dtype xt) = ((x − m)·rs)·w + b; w, b: n floats each.
  void (*ln_scale)(DType xt, const void* x, float m, float rs, const float* w, const float* b, void* y, int64_t n);
  // LayerNorm backward, pass 1 over a row, xh = (x − m)·rs: dw_part_i += dy_i·xh_i and
  // db_part_i += dy_i in f64 (each when non-null); sums[0] = Σ dy_i·w_i, sums[1] = Σ (dy_i·w_i)·xh_i.
  void (*ln_bwd_sums)(DType xt, const void* x, DType dyt, const void* dy, float m, float rs, const float* w,
                      double* dw_part, double* db_part, double* sums, int64_t n);
  // LayerNorm backward, pass 2: dx (dtype xt) = rs·((dy·w − a) − xh·c).
  void (*ln_bwd_dx)(DType xt, const void* x, DType dyt, const void* dy, float m, float rs, float a, float c,
                    const float* w, void* dx, int64_t n);

  // RoPE over the H heads of one position: head h reads D contiguous elements of dtype xt at
  // x + h·x_head_stride and writes D elements of dtype ot at out + h·out_head_stride (strides in
  // elements). cos/sin: the position's R widened table entries. Lanes < R are rotated (backward:
  // the transpose), each product rounded to ot, then summed; lanes >= R pass through.
  void (*rope)(bool backward, DType xt, const void* x, int64_t x_head_stride, int64_t H, const float* cos,
               const float* sin, int64_t R, int64_t D, DType ot, void* out, int64_t out_head_stride);

  // Cross-entropy over a vocabulary chunk of dtype xt: its max (NaN if it holds a NaN; -inf if
  // all -inf), Σ e^{x_i − m} (f32 within blocks, f64 across them), and the gradient row
  // out_i = e^{x_i − lse}·g (minus g at `label`, when 0 <= label < n) in xt.
  float (*row_max)(DType xt, const void* x, int64_t n);
  double (*sum_exp)(DType xt, const void* x, int64_t n, float m);
  void (*ce_grad)(DType xt, const void* x, int64_t n, float lse, float g, int64_t label, void* out);
};

inline bool vec_dtype(DType t) { return t == DType::F32 || t == DType::BF16 || t == DType::F16; }

#if (defined(__x86_64__) || defined(_M_X64)) && !defined(PEFTKIT_NO_SIMD_KERNELS)
const Kernels& kernels_avx2();        // row_kernels_avx2.cpp
const Kernels& kernels_avx512();      // row_kernels_avx512.cpp
const Kernels& kernels_avx512bf16();  // row_kernels_bf16_avx512.cpp (needs AVX512_BF16)
#endif

// The table for this CPU (simd::active_flavor(): respects PEFTKIT_ISA / set_isa_cap), or
// nullptr: scalar paths.
const Kernels* active_kernels();

}  // namespace rowk
}  // namespace pk

// =============================================================================================
#ifdef PK_ROW_VECTOR_IMPL
// Needs, besides the traits of elementwise_kernels.h: head(r) / lane(k) masks, any(m),
// load_h / load_hn / store_h / store_hn (one vector of bf16/f16 values: simd_fmt.h), and the f64
// half-vectors D (WD lanes): lo_pd / hi_pd (widen the low / high half of a V), dadd, dfma,
// dload(n) / dstore(n), dsum (lane sum in a fixed order).
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "cpu/simd_fmt.h"
#include "cpu/simd_math.h"

namespace pk {
namespace rowk {
namespace {

using V = VT::V;
using M = VT::M;
using D = VT::D;
constexpr int W = VT::W;
constexpr int WD = VT::WD;

// storage formats (simd_fmt.h) over this file's traits
template <class F> inline void with_fmt(DType t, F&& f) { simd::with_fmt<VT>(t, std::forward<F>(f)); }
template <class Fmt> inline V round_as(V v) { return simd::round_as<VT, Fmt>(v); }

inline V ldf(const float* p, int r) { return r == W ? VT::load(p) : VT::loadn(p, r); }

// body(i, r, acc_lo, acc_hi) over a row of n elements in vectors (r = lanes, W but for the tail),
// alternating two pairs of f64 accumulators so consecutive vectors do not wait on each other's
// adds; returns their lane sum. The order depends on n only.
template <class F> inline double reduce_row(int64_t n, F body) {
  D a0 = VT::dzero(), a1 = VT::dzero(), a2 = VT::dzero(), a3 = VT::dzero();
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    body(i, W, a0, a1);
    body(i + W, W, a2, a3);
  }
  for (; i < n; i += W) body(i, (int)std::min<int64_t>(W, n - i), a0, a1);
  return VT::dsum(VT::dadd(VT::dadd(a0, a2), VT::dadd(a1, a3)));
}
// acc_lo/hi += a·b per lane, in f64 (the f32 products are exact there: one rounding per add).
inline void dot_acc(V a, V b, D& lo, D& hi) {
  lo = VT::dfma(VT::lo_pd(a), VT::lo_pd(b), lo);
  hi = VT::dfma(VT::hi_pd(a), VT::hi_pd(b), hi);
}

// ---- load / store ----
void k_load(DType t, const void* src, float* dst, int64_t n) {
  if (t == DType::F32) std::memcpy(dst, src, (size_t)n * 4);
  else VT::cvt_to_f32(t, src, dst, n);
}
void k_store(DType t, const float* src, void* dst, int64_t n) {
  if (t == DType::F32) std::memcpy(dst, src, (size_t)n * 4);
  else VT::cvt_from_f32(t, src, dst, n);
}

// ---- RMSNorm ----
double k_sum_sq(DType xt, const void* x, int64_t n) {
  double s = 0;
  with_fmt(xt, [&](auto xf) {
    using X = decltype(xf);
    const typename X::E* p = static_cast<const typename X::E*>(x);
    s = reduce_row(n, [&](int64_t i, int r, D& lo, D& hi) { V v = X::ld(p + i, r); dot_acc(v, v, lo, hi); });
  });
  return s;
}

template <class X, class Y, RmsMode Mo>
void rms_scale_t(const typename X::E* x, float rs, const float* g, typename Y::E* y, int64_t n) {
  const V s = VT::set1(rs);
  auto one = [&](int64_t i, int r) {
    const V h = VT::mul(X::ld(x + i, r), s);
    V out = h;
    if (Mo == RmsMode::Weight) out = VT::mul(ldf(g + i, r), round_as<X>(h));
    else if (Mo == RmsMode::UnitOffset) out = VT::mul(h, ldf(g + i, r));
    Y::st(y + i, out, r);
  };
  int64_t i = 0;
  for (; i + W <= n; i += W) one(i, W);
  if (i < n) one(i, (int)(n - i));
}

void k_rms_scale(DType xt, const void* x, float rs, RmsMode m, const float* g, DType yt, void* y, int64_t n) {
  with_fmt(xt, [&](auto xf) {
    with_fmt(yt, [&](auto yf) {
      using X = decltype(xf);
      using Y = decltype(yf);
      const auto* px = static_cast<const typename X::E*>(x);
      auto* py = static_cast<typename Y::E*>(y);
      switch (m) {
        case RmsMode::Plain: rms_scale_t<X, Y, RmsMode::Plain>(px, rs, g, py, n); break;
        case RmsMode::Weight: rms_scale_t<X, Y, RmsMode::Weight>(px, rs, g, py, n); break;
        case RmsMode::UnitOffset: rms_scale_t<X, Y, RmsMode::UnitOffset>(px, rs, g, py, n); break;
      }
    });
  });
}

// part += dy·h' column by column (r lanes), h' as in Kernels::rms_bwd_dot.
inline void add_part(double* part, V d, V hp, int r) {
  const int rl = std::min(r, WD), rh = std::max(0, r - WD);
  if (r == W) {
    VT::dstore(part, VT::dfma(VT::lo_pd(d), VT::lo_pd(hp), VT::dload(part)));
    VT::dstore(part + WD, VT::dfma(VT::hi_pd(d), VT::hi_pd(hp), VT::dload(part + WD)));
    return;
  }
  VT::dstoren(part, VT::dfma(VT::lo_pd(d), VT::lo_pd(hp), VT::dloadn(part, rl)), rl);
  if (rh) VT::dstoren(part + WD, VT::dfma(VT::hi_pd(d), VT::hi_pd(hp), VT::dloadn(part + WD, rh)), rh);
}

template <class X, class Y>
double rms_bwd_dot_t(const typename X::E* x, const typename Y::E* dy, float rs, RmsMode m, const float* g,
                     double* part, int64_t n) {
  const V s = VT::set1(rs);
  const bool unit = m == RmsMode::UnitOffset;
  return reduce_row(n, [&](int64_t i, int r, D& lo, D& hi) {
    const V h = VT::mul(X::ld(x + i, r), s);
    const V d = Y::ld(dy + i, r);
    if (part) add_part(part + i, d, unit ? h : round_as<X>(h), r);
    dot_acc(VT::mul(d, ldf(g + i, r)), h, lo, hi);
  });
}

double k_rms_bwd_dot(DType xt, const void* x, DType dyt, const void* dy, float rs, RmsMode m, const float* g,
                     double* part, int64_t n) {
  double s = 0;
  with_fmt(xt, [&](auto xf) {
    with_fmt(dyt, [&](auto yf) {
      using X = decltype(xf);
      using Y = decltype(yf);
      s = rms_bwd_dot_t<X, Y>(static_cast<const typename X::E*>(x), static_cast<const typename Y::E*>(dy), rs, m, g,
                              part, n);
    });
  });
  return s;
}

template <class X, class Y>
void rms_bwd_dx_t(const typename X::E* x, const typename Y::E* dy, float rs, float k, const float* g,
                  typename X::E* dx, int64_t n) {
  const V s = VT::set1(rs), kv = VT::set1(k);
  auto one = [&](int64_t i, int r) {
    const V gd = VT::mul(Y::ld(dy + i, r), ldf(g + i, r));
    const V h = VT::mul(X::ld(x + i, r), s);
    X::st(dx + i, VT::mul(s, VT::sub(gd, VT::mul(h, kv))), r);
  };
  int64_t i = 0;
  for (; i + W <= n; i += W) one(i, W);
  if (i < n) one(i, (int)(n - i));
}

void k_rms_bwd_dx(DType xt, const void* x, DType dyt, const void* dy, float rs, float k, const float* g, void* dx,
                  int64_t n) {
  with_fmt(xt, [&](auto xf) {
    with_fmt(dyt, [&](auto yf) {
      using X = decltype(xf);
      using Y = decltype(yf);
      rms_bwd_dx_t<X, Y>(static_cast<const typename X::E*>(x), static_cast<const typename Y::E*>(dy), rs, k, g,
                         static_cast<typename X::E*>(dx), n);
    });
  });
}

// ---- LayerNorm ----
double k_sum(DType xt, const void* x, int64_t n) {
  double s = 0;
  with_fmt(xt, [&](auto xf) {
    using X = decltype(xf);
    const auto* p = static_cast<const typename X::E*>(x);
    s = reduce_row(n, [&](int64_t i, int r, D& lo, D& hi) {
      const V v = X::ld(p + i, r);  // unread lanes are 0
      lo = VT::dadd(lo, VT::lo_pd(v));
      hi = VT::dadd(hi, VT::hi_pd(v));
    });
  });
  return s;
}

// Σ (x − mu)²: the square rounded in f64, then added (as the scalar loop; no fused multiply-add).
double k_sum_sq_dev(DType xt, const void* x, double mu, int64_t n) {
  double s = 0;
  with_fmt(xt, [&](auto xf) {
    using X = decltype(xf);
    const auto* p = static_cast<const typename X::E*>(x);
    const D m = VT::dset1(mu);
    s = reduce_row(n, [&](int64_t i, int r, D& lo, D& hi) {
      const V v = X::ld(p + i, r);
      D dl = VT::dsub(VT::lo_pd(v), m), dh = VT::dsub(VT::hi_pd(v), m);
      if (r < W) {  // lanes past the row end hold 0, i.e. −mu here
        dl = VT::dkeep(dl, std::min(r, WD));
        dh = VT::dkeep(dh, std::max(0, r - WD));
      }
      lo = VT::dadd(lo, VT::dmul(dl, dl));
      hi = VT::dadd(hi, VT::dmul(dh, dh));
    });
  });
  return s;
}

void k_ln_scale(DType xt, const void* x, float m, float rs, const float* w, const float* b, void* y, int64_t n) {
  with_fmt(xt, [&](auto xf) {
    using X = decltype(xf);
    const auto* px = static_cast<const typename X::E*>(x);
    auto* py = static_cast<typename X::E*>(y);
    const V mv = VT::set1(m), sv = VT::set1(rs);
    auto one = [&](int64_t i, int r) {
      const V xh = VT::mul(VT::sub(X::ld(px + i, r), mv), sv);
      X::st(py + i, VT::add(VT::mul(xh, ldf(w + i, r)), ldf(b + i, r)), r);
    };
    int64_t i = 0;
    for (; i + W <= n; i += W) one(i, W);
    if (i < n) one(i, (int)(n - i));
  });
}

// part += v column by column in f64 (r lanes).
inline void add_part1(double* part, V v, int r) {
  const int rl = std::min(r, WD), rh = std::max(0, r - WD);
  if (r == W) {
    VT::dstore(part, VT::dadd(VT::dload(part), VT::lo_pd(v)));
    VT::dstore(part + WD, VT::dadd(VT::dload(part + WD), VT::hi_pd(v)));
    return;
  }
  VT::dstoren(part, VT::dadd(VT::dloadn(part, rl), VT::lo_pd(v)), rl);
  if (rh) VT::dstoren(part + WD, VT::dadd(VT::dloadn(part + WD, rh), VT::hi_pd(v)), rh);
}

void k_ln_bwd_sums(DType xt, const void* x, DType dyt, const void* dy, float m, float rs, const float* w,
                   double* dw_part, double* db_part, double* sums, int64_t n) {
  with_fmt(xt, [&](auto xf) {
    with_fmt(dyt, [&](auto yf) {
      using X = decltype(xf);
      using Y = decltype(yf);
      const auto* px = static_cast<const typename X::E*>(x);
      const auto* pd = static_cast<const typename Y::E*>(dy);
      const V mv = VT::set1(m), sv = VT::set1(rs);
      D sgx_lo = VT::dzero(), sgx_hi = VT::dzero();  // Σ (dy·w)·xh alongside Σ dy·w
      sums[0] = reduce_row(n, [&](int64_t i, int r, D& lo, D& hi) {
        const V xh = VT::mul(VT::sub(X::ld(px + i, r), mv), sv);
        const V d = Y::ld(pd + i, r);
        if (dw_part) add_part(dw_part + i, d, xh, r);
        if (db_part) add_part1(db_part + i, d, r);
        const V g = VT::mul(d, ldf(w + i, r));
        lo = VT::dadd(lo, VT::lo_pd(g));
        hi = VT::dadd(hi, VT::hi_pd(g));
        dot_acc(g, xh, sgx_lo, sgx_hi);
      });
      sums[1] = VT::dsum(VT::dadd(sgx_lo, sgx_hi));
    });
  });
}

void k_ln_bwd_dx(DType xt, const void* x, DType dyt, const void* dy, float m, float rs, float a, float c,
                 const float* w, void* dx, int64_t n) {
  with_fmt(xt, [&](auto xf) {
    with_fmt(dyt, [&](auto yf) {
      using X = decltype(xf);
      using Y = decltype(yf);
      const auto* px = static_cast<const typename X::E*>(x);
      const auto* pd = static_cast<const typename Y::E*>(dy);
      auto* po = static_cast<typename X::E*>(dx);
      const V mv = VT::set1(m), sv = VT::set1(rs), av = VT::set1(a), cv = VT::set1(c);
      auto one = [&](int64_t i, int r) {
        const V xh = VT::mul(VT::sub(X::ld(px + i, r), mv), sv);
        const V g = VT::mul(Y::ld(pd + i, r), ldf(w + i, r));
        X::st(po + i, VT::mul(sv, VT::sub(VT::sub(g, av), VT::mul(xh, cv))), r);
      };
      int64_t i = 0;
      for (; i + W <= n; i += W) one(i, W);
      if (i < n) one(i, (int)(n - i));
    });
  });
}

// ---- RoPE ----
// One head: lanes j < R/2 pair with j + R/2 (rotate_half); forward
//   out_j = r(x_j c_j) + r(−x_{j+h} s_j),   out_{j+h} = r(x_{j+h} c_{j+h}) + r(x_j s_{j+h}),
// backward (the transpose)
//   out_j = r(x_j c_j) + r(x_{j+h} s_{j+h}), out_{j+h} = r(x_{j+h} c_{j+h}) − r(x_j s_j),
// r() rounding to the output dtype; (−a)·b is −(a·b) exactly and r() is odd, so negating after
// rounding is the same value.
template <class X, class O, bool Bwd>
void rope_head(const typename X::E* x, const float* c, const float* s, int64_t R, int64_t D, typename O::E* o) {
  const int64_t h2 = R / 2;
  auto pair = [&](int64_t j, int r) {  // lanes [j, j + r) and their partners j + h2
    const V xl = X::ld(x + j, r), xh = X::ld(x + j + h2, r);
    const V cl = ldf(c + j, r), ch = ldf(c + j + h2, r), sl = ldf(s + j, r), sh = ldf(s + j + h2, r);
    V ol, oh;
    if (!Bwd) {
      ol = VT::add(round_as<O>(VT::mul(xl, cl)), VT::neg(round_as<O>(VT::mul(xh, sl))));
      oh = VT::add(round_as<O>(VT::mul(xh, ch)), round_as<O>(VT::mul(xl, sh)));
    } else {
      ol = VT::add(round_as<O>(VT::mul(xl, cl)), round_as<O>(VT::mul(xh, sh)));
      oh = VT::sub(round_as<O>(VT::mul(xh, ch)), round_as<O>(VT::mul(xl, sl)));
    }
    O::st(o + j, ol, r);
    O::st(o + j + h2, oh, r);
  };
  int64_t j = 0;
  for (; j + W <= h2; j += W) pair(j, W);  // full vectors: r is a constant here
  if (j < h2) pair(j, (int)(h2 - j));
  for (j = R; j < D; j += W) {  // pass-through lanes
    const int r = (int)std::min<int64_t>(W, D - j);
    O::st(o + j, X::ld(x + j, r), r);
  }
}

void k_rope(bool backward, DType xt, const void* x, int64_t xsh, int64_t H, const float* cos, const float* sin,
            int64_t R, int64_t D, DType ot, void* out, int64_t osh) {
  with_fmt(xt, [&](auto xf) {
    with_fmt(ot, [&](auto of) {
      using X = decltype(xf);
      using O = decltype(of);
      const auto* px = static_cast<const typename X::E*>(x);
      auto* po = static_cast<typename O::E*>(out);
      for (int64_t h = 0; h < H; h++) {
        if (backward) rope_head<X, O, true>(px + h * xsh, cos, sin, R, D, po + h * osh);
        else rope_head<X, O, false>(px + h * xsh, cos, sin, R, D, po + h * osh);
      }
    });
  });
}

// ---- cross-entropy ----
float k_row_max(DType xt, const void* x, int64_t n) {
  float out = 0;
  with_fmt(xt, [&](auto xf) {
    using X = decltype(xf);
    const auto* p = static_cast<const typename X::E*>(x);
    const V ninf = VT::set1(-std::numeric_limits<float>::infinity());
    V m = ninf;
    M nan = VT::isnan(VT::zero());  // all false
    int64_t i = 0;
    for (; i + W <= n; i += W) {
      const V v = X::ld(p + i, W);
      m = VT::max(v, m);  // a NaN v keeps m (the second operand); NaNs are tracked apart
      nan = VT::mor(nan, VT::isnan(v));
    }
    if (i < n) {
      const int r = (int)(n - i);
      const V v = VT::select(VT::head(r), X::ld(p + i, r), ninf);
      m = VT::max(v, m);
      nan = VT::mor(nan, VT::isnan(v));
    }
    if (VT::any(nan)) { out = std::numeric_limits<float>::quiet_NaN(); return; }
    alignas(64) float lanes[W];
    VT::store(lanes, m);
    out = lanes[0];
    for (int k = 1; k < W; k++) out = std::max(out, lanes[k]);
  });
  return out;
}

// Σ e^{x_i − m}: the exps of kBlock consecutive vectors are added per lane in f32 (two
// alternating accumulators, then their sum), each block's lane sums then go to f64. Widening
// every exp to f64 cost as much as the exp itself; an f32 sum of kBlock terms (each <= 1) per lane
// is off by a few ulps of that partial sum, i.e. ~1e-7 relative in the total, and the f64 adds of
// the blocks keep that from growing with the vocabulary size.
double k_sum_exp(DType xt, const void* x, int64_t n, float m) {
  constexpr int64_t kBlock = 16;
  double s = 0;
  with_fmt(xt, [&](auto xf) {
    using X = decltype(xf);
    const auto* p = static_cast<const typename X::E*>(x);
    const V mv = VT::set1(m);
    auto ex = [&](int64_t i, int r) {
      const V e = simd::vexp<VT>(VT::sub(X::ld(p + i, r), mv));
      return r == W ? e : VT::select(VT::head(r), e, VT::zero());
    };
    D lo = VT::dzero(), hi = VT::dzero();
    for (int64_t b = 0; b < n; b += kBlock * W) {
      const int64_t e = std::min(n, b + kBlock * W);
      V a0 = VT::zero(), a1 = VT::zero();
      int64_t i = b;
      for (; i + 2 * W <= e; i += 2 * W) {
        a0 = VT::add(a0, ex(i, W));
        a1 = VT::add(a1, ex(i + W, W));
      }
      for (; i < e; i += W) a0 = VT::add(a0, ex(i, (int)std::min<int64_t>(W, e - i)));
      const V a = VT::add(a0, a1);
      lo = VT::dadd(lo, VT::lo_pd(a));
      hi = VT::dadd(hi, VT::hi_pd(a));
    }
    s = VT::dsum(VT::dadd(lo, hi));
  });
  return s;
}

void k_ce_grad(DType xt, const void* x, int64_t n, float lse, float g, int64_t label, void* out) {
  with_fmt(xt, [&](auto xf) {
    using X = decltype(xf);
    const auto* p = static_cast<const typename X::E*>(x);
    auto* o = static_cast<typename X::E*>(out);
    const V lv = VT::set1(lse), gv = VT::set1(g);
    auto one = [&](int64_t i, int r) {
      V v = VT::mul(simd::vexp<VT>(VT::sub(X::ld(p + i, r), lv)), gv);
      if ((uint64_t)(label - i) < (uint64_t)r) v = VT::select(VT::lane((int)(label - i)), VT::sub(v, gv), v);
      X::st(o + i, v, r);
    };
    int64_t i = 0;
    for (; i + W <= n; i += W) one(i, W);
    if (i < n) one(i, (int)(n - i));
  });
}

Kernels make_kernels(const char* name) {
  return Kernels{name,      k_load,       k_store,    k_sum_sq,      k_rms_scale, k_rms_bwd_dot, k_rms_bwd_dx,
                 k_sum,     k_sum_sq_dev, k_ln_scale, k_ln_bwd_sums, k_ln_bwd_dx, k_rope,        k_row_max,
                 k_sum_exp, k_ce_grad};
}

}  // namespace
}  // namespace rowk
}  // namespace pk
#endif  // PK_ROW_VECTOR_IMPL
