// elementwise_kernels.h — internal interface between the elementwise/GLU drivers (elementwise.cpp,
// swiglu.cpp) and their vectorised row kernels (elementwise_avx512.cpp, elementwise_avx2.cpp).
//
// Why a separate header: the vector code lives in translation units compiled with per-file ISA
// flags; the drivers (baseline x86-64) only see the function pointers of a Kernels table and call
// them after pk::cpu_isa() said the CPU can run them (the node-gyp PEFTKIT_NO_SIMD_KERNELS build
// and other architectures get no table and use the scalar loops).
//
// Row kernels work on f32: the driver (run_rows) hands them f32 pointers, converting bf16 / f16
// operands chunk by chunk (<= kChunk elements, in L1) with the same ISA's conversion kernels, so
// a bf16 tensor is never cast as a whole. The hot same-dtype contiguous cases (a bf16 residual
// add, the SwiGLU of a bf16 model) have *_io variants that read and write the storage dtype in
// registers instead. f64 always stays on the scalar loops.
//
// The second half of this file (under PK_EW_VECTOR_IMPL) is the ISA-generic implementation,
// templated on a small vector-traits type that each ISA file defines before including it. It is
// in an anonymous namespace so the AVX-512 and AVX2 instantiations can never be merged by the
// linker (an ODR merge could run AVX-512 code on an AVX2-only CPU).
//
// Vector math (f32 exp, erf, tanh, sigmoid) comes from simd_math.h, shared with the row kernels.
#pragma once
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <vector>

#include "core/tensor.h"
#include "cpu/elementwise.h"
#include "cpu/swiglu.h"

namespace pk {
namespace ew {

// Math functions exposed for tests (vmath).
enum class MathFn : int { Exp = 0, Erf, Tanh, Sigmoid };

struct Kernels {
  const char* name;
  // out[i] = a[i·sa] (op) b[i·sb] for i < n; sa, sb ∈ {0, 1} (0: a broadcast scalar).
  // Ops: Add, Sub, Mul, Div, Maximum, Minimum (vec_binary_ok).
  void (*binary)(BinaryOp op, const float* a, int64_t sa, const float* b, int64_t sb, float* out, int64_t n);
  // Gradients of a binary op (Add, Sub, Mul, Div) given upstream d (stride 1); da / db may be null.
  void (*binary_grad)(BinaryOp op, const float* a, int64_t sa, const float* b, int64_t sb, const float* d,
                      float* da, float* db, int64_t n);
  // y = f(x); ops listed by vec_unary_ok.
  void (*unary)(UnaryOp op, const float* x, float* y, int64_t n);
  // dx = f'(x)·d; y is the forward output (used by exp, sqrt, rsqrt, sigmoid, tanh, reciprocal).
  void (*unary_grad)(UnaryOp op, const float* x, const float* y, const float* d, float* dx, int64_t n);
  // Gated activations h = act(g)·u and their backward. `inter` is the dtype the unfused
  // composition would have rounded the intermediates act(g) and dh·u to (F32: no rounding;
  // BF16/F16: round in registers), so fused and unfused results agree.
  void (*glu)(GluAct act, DType inter, const float* g, const float* u, float* h, int64_t n);
  void (*glu_grad)(GluAct act, DType inter, const float* g, const float* u, const float* dh, float* dg, float* du,
                   int64_t n);
  // Conversions with the rounding of pk::f32_to_bf16 / f32_to_f16 (nearest even; NaN stays NaN).
  void (*to_f32)(DType t, const void* src, float* dst, int64_t n);
  void (*from_f32)(DType t, const float* src, void* dst, int64_t n);
  void (*vmath)(MathFn f, const float* x, float* y, int64_t n);
  // In-place variants for the common case of contiguous, unbroadcast operands that all have one
  // dtype t (F32, BF16 or F16): bf16/f16 lanes are widened and narrowed in registers, with no
  // staging through f32 chunk buffers. Same math and roundings as binary / glu / glu_grad (with
  // inter = t), hence the same bits.
  void (*binary_io)(BinaryOp op, DType t, const void* a, const void* b, void* out, int64_t n);
  void (*glu_io)(GluAct act, DType t, const void* g, const void* u, void* h, int64_t n);
  void (*glu_grad_io)(GluAct act, DType t, const void* g, const void* u, const void* dh, void* dg, void* du,
                      int64_t n);
};

bool vec_binary_ok(BinaryOp op);
bool vec_binary_grad_ok(BinaryOp op);
bool vec_unary_ok(UnaryOp op);
inline bool vec_dtype(DType t) { return t == DType::F32 || t == DType::BF16 || t == DType::F16; }

#if (defined(__x86_64__) || defined(_M_X64)) && !defined(PEFTKIT_NO_SIMD_KERNELS)
const Kernels& kernels_avx2();        // elementwise_avx2.cpp
const Kernels& kernels_avx512();      // elementwise_avx512.cpp
const Kernels& kernels_avx512bf16();  // elementwise_bf16_avx512.cpp (needs AVX512_BF16)
#endif

// The vector table for this CPU (simd::active_flavor(): respects PEFTKIT_ISA / set_isa_cap), or
// nullptr: use the scalar loops.
const Kernels* active_kernels();

// Elements per conversion chunk (bf16/f16 operands are widened into stack buffers this long).
constexpr int64_t kChunk = 1024;

// body(in, in_stride, out, n): in[j] points at n f32 values (in_stride[j] = 1) or at one value
// broadcast over the row (in_stride[j] = 0); out[k] receives n f32 values.
using RowBody = std::function<void(const float* const* in, const int64_t* in_stride, float* const* out, int64_t n)>;

// True when every tensor in `ts` is a contiguous CPU tensor of dtype t (F32/BF16/F16) and shape
// `shape`: the in-place (*_io) kernels apply.
bool io_ok(DType t, const Shape& shape, std::initializer_list<const Tensor*> ts);
// body(lo, hi) over [0, n) in parallel chunks of at least the grain run_rows uses.
void parallel_flat(int64_t n, const std::function<void(int64_t, int64_t)>& body);

// Runs `body` over all of `shape`, in parallel, chunk by chunk. `ins` are views of `shape`
// (expand() them first; dtype F32/BF16/F16, innermost stride 0 or 1, at most 4); `outs` are
// fresh contiguous tensors of `shape` (F32/BF16/F16, at most 2). Returns false, doing nothing,
// when an operand does not qualify (the caller then takes its scalar path).
bool run_rows(const Kernels& k, const Shape& shape, const std::vector<Tensor>& ins, const std::vector<Tensor>& outs,
              const RowBody& body);

}  // namespace ew
}  // namespace pk

// =============================================================================================
#ifdef PK_EW_VECTOR_IMPL
// Included by elementwise_avx512.cpp / elementwise_avx2.cpp after they include their traits
// header (simd_avx512.h / simd_avx2.h) and name it `pk::ew::{anon}::VT`:
//   using V (vector of W floats), M (lane mask); static constexpr int W;
//   load/store, loadn/storen (first r lanes; others read nothing / are left alone), set1, zero,
//   add sub mul div fma(a,b,c)=a·b+c, fnma(a,b,c)=c−a·b, min max (NaN in b wins), sqrt, abs, neg,
//   round (to nearest even), ldexp(x, q)=x·2^q (q integral, |q| <= 250), lt gt eq ge isnan,
//   select(m, t, f), mor(m1, m2), xor_sign(x, s) (x with its sign flipped where s is negative),
//   round_bf16(x), round_f16(x) (an f32 value rounded to the nearest bf16 / f16),
//   cvt_to_f32(t, src, dst, n), cvt_from_f32(t, src, dst, n).
#include <cmath>
#include <limits>
#include <utility>

#include "cpu/simd_fmt.h"
#include "cpu/simd_math.h"

namespace pk {
namespace ew {
namespace {

using V = VT::V;
using M = VT::M;
constexpr int W = VT::W;

inline V c(float x) { return VT::set1(x); }

// The vector math of simd_math.h, instantiated for this file's traits.
inline V vexp(V x) { return simd::vexp<VT>(x); }
inline V verf(V x) { return simd::verf<VT>(x); }
inline V vtanh(V x) { return simd::vtanh<VT>(x); }
inline V vsigmoid(V x) { return simd::vsigmoid<VT>(x); }

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kInvSqrt2 = 0.7071067811865476f;
constexpr float kInvSqrt2Pi = 0.3989422804014327f;

inline V gelu_tanh_inner(V x) {
  return VT::mul(c(kSqrt2OverPi), VT::add(x, VT::mul(VT::mul(VT::mul(c(0.044715f), x), x), x)));
}

// Each gated activation as core(x), the transcendental part that act(x) and act'(x) share, and the
// two formulas on top of it: a fused backward that needs both pays for one exp / erf / tanh.
// Same formulas, in the same order, as un() / un_grad() in elementwise.cpp.
template <GluAct A> inline V act_core(V x) {
  if (A == GluAct::Silu) return VT::add(c(1.0f), vexp(VT::neg(x)));  // 1 + e^{-x}
  if (A == GluAct::Gelu) return verf(VT::mul(x, c(kInvSqrt2)));      // erf(x/√2)
  return vtanh(gelu_tanh_inner(x));                                   // tanh(√(2/π)·(x + 0.044715x³))
}
template <GluAct A> inline V act_value(V x, V k) {
  if (A == GluAct::Silu) return VT::div(x, k);
  return VT::mul(VT::mul(c(0.5f), x), VT::add(c(1.0f), k));
}
template <GluAct A> inline V act_grad(V x, V k, V d) {  // act'(x)·d
  if (A == GluAct::Silu) {
    V s = VT::div(c(1.0f), k);  // sigmoid(x)
    return VT::mul(VT::mul(d, s), VT::add(c(1.0f), VT::mul(x, VT::sub(c(1.0f), s))));
  }
  if (A == GluAct::Gelu) {
    V cdf = VT::mul(c(0.5f), VT::add(c(1.0f), k));
    V pdf = VT::mul(vexp(VT::mul(VT::mul(c(-0.5f), x), x)), c(kInvSqrt2Pi));
    return VT::mul(d, VT::add(cdf, VT::mul(x, pdf)));
  }
  V dinner = VT::mul(c(kSqrt2OverPi), VT::add(c(1.0f), VT::mul(VT::mul(c(3.0f * 0.044715f), x), x)));
  V a = VT::mul(c(0.5f), VT::add(c(1.0f), k));
  V b = VT::mul(VT::mul(VT::mul(c(0.5f), x), VT::sub(c(1.0f), VT::mul(k, k))), dinner);
  return VT::mul(d, VT::add(a, b));
}
template <GluAct A> inline V act_f(V x) { return act_value<A>(x, act_core<A>(x)); }
template <GluAct A> inline V act_g(V x, V d) { return act_grad<A>(x, act_core<A>(x), d); }

inline V silu_f(V x) { return act_f<GluAct::Silu>(x); }
inline V gelu_f(V x) { return act_f<GluAct::Gelu>(x); }
inline V gelu_tanh_f(V x) { return act_f<GluAct::GeluTanh>(x); }
inline V silu_g(V x, V d) { return act_g<GluAct::Silu>(x, d); }
inline V gelu_g(V x, V d) { return act_g<GluAct::Gelu>(x, d); }
inline V gelu_tanh_g(V x, V d) { return act_g<GluAct::GeluTanh>(x, d); }

// ---- loops: full vectors, then one partial vector (masked loads/stores) ----
template <class F>
inline void loop1(const float* x, float* y, int64_t n, F f) {
  int64_t i = 0;
  for (; i + W <= n; i += W) VT::store(y + i, f(VT::load(x + i)));
  if (i < n) VT::storen(y + i, f(VT::loadn(x + i, (int)(n - i))), (int)(n - i));
}
template <class F>
inline void loop2(const float* a, const float* b, float* y, int64_t n, F f) {
  int64_t i = 0;
  for (; i + W <= n; i += W) VT::store(y + i, f(VT::load(a + i), VT::load(b + i)));
  if (i < n) {
    const int r = (int)(n - i);
    VT::storen(y + i, f(VT::loadn(a + i, r), VT::loadn(b + i, r)), r);
  }
}
template <class F>
inline void loop3(const float* a, const float* b, const float* d, float* y, int64_t n, F f) {
  int64_t i = 0;
  for (; i + W <= n; i += W) VT::store(y + i, f(VT::load(a + i), VT::load(b + i), VT::load(d + i)));
  if (i < n) {
    const int r = (int)(n - i);
    VT::storen(y + i, f(VT::loadn(a + i, r), VT::loadn(b + i, r), VT::loadn(d + i, r)), r);
  }
}

// a (op) b with either side possibly a broadcast scalar.
template <class F>
inline void map_ab(const float* a, int64_t sa, const float* b, int64_t sb, float* y, int64_t n, F f) {
  if (sa && sb) {
    loop2(a, b, y, n, f);
  } else if (sa) {
    const V bv = c(*b);
    loop1(a, y, n, [&](V x) { return f(x, bv); });
  } else if (sb) {
    const V av = c(*a);
    loop1(b, y, n, [&](V x) { return f(av, x); });
  } else {
    const V r = f(c(*a), c(*b));
    int64_t i = 0;
    for (; i + W <= n; i += W) VT::store(y + i, r);
    if (i < n) VT::storen(y + i, r, (int)(n - i));
  }
}

inline V maxv(V a, V b) { return VT::select(VT::mor(VT::isnan(a), VT::gt(a, b)), a, b); }
inline V minv(V a, V b) { return VT::select(VT::mor(VT::isnan(a), VT::lt(a, b)), a, b); }

// f(lane function of op) for the vectorised binary ops (vec_binary_ok).
template <class F> inline void with_binop(BinaryOp op, F&& f) {
  switch (op) {
    case BinaryOp::Add: return f([](V p, V q) { return VT::add(p, q); });
    case BinaryOp::Sub: return f([](V p, V q) { return VT::sub(p, q); });
    case BinaryOp::Mul: return f([](V p, V q) { return VT::mul(p, q); });
    case BinaryOp::Div: return f([](V p, V q) { return VT::div(p, q); });
    case BinaryOp::Maximum: return f([](V p, V q) { return maxv(p, q); });
    case BinaryOp::Minimum: return f([](V p, V q) { return minv(p, q); });
    default: break;
  }
}

void k_binary(BinaryOp op, const float* a, int64_t sa, const float* b, int64_t sb, float* y, int64_t n) {
  with_binop(op, [&](auto fn) { map_ab(a, sa, b, sb, y, n, fn); });
}

// d·∂(a op b)/∂a and /∂b (same expressions as binary_backward's scalar lambdas).
template <class F>
inline void map_abd(const float* a, int64_t sa, const float* b, int64_t sb, const float* d, float* y, int64_t n, F f) {
  if (sa && sb) {
    loop3(a, b, d, y, n, f);
  } else if (sa) {
    const V bv = c(*b);
    loop2(a, d, y, n, [&](V x, V g) { return f(x, bv, g); });
  } else if (sb) {
    const V av = c(*a);
    loop2(b, d, y, n, [&](V x, V g) { return f(av, x, g); });
  } else {
    const V av = c(*a), bv = c(*b);
    loop1(d, y, n, [&](V g) { return f(av, bv, g); });
  }
}

void k_binary_grad(BinaryOp op, const float* a, int64_t sa, const float* b, int64_t sb, const float* d, float* da,
                   float* db, int64_t n) {
  switch (op) {
    case BinaryOp::Add:
    case BinaryOp::Sub:
      if (da) loop1(d, da, n, [](V g) { return g; });
      if (db) {
        if (op == BinaryOp::Add) loop1(d, db, n, [](V g) { return g; });
        else loop1(d, db, n, [](V g) { return VT::neg(g); });
      }
      return;
    case BinaryOp::Mul:
      if (da) map_abd(a, sa, b, sb, d, da, n, [](V, V y, V g) { return VT::mul(g, y); });
      if (db) map_abd(a, sa, b, sb, d, db, n, [](V x, V, V g) { return VT::mul(g, x); });
      return;
    case BinaryOp::Div:
      if (da) map_abd(a, sa, b, sb, d, da, n, [](V, V y, V g) { return VT::div(g, y); });
      if (db) map_abd(a, sa, b, sb, d, db, n, [](V x, V y, V g) { return VT::div(VT::mul(VT::neg(g), x), VT::mul(y, y)); });
      return;
    default: break;
  }
}

void k_unary(UnaryOp op, const float* x, float* y, int64_t n) {
  switch (op) {
    case UnaryOp::Neg: return loop1(x, y, n, [](V v) { return VT::neg(v); });
    case UnaryOp::Exp: return loop1(x, y, n, [](V v) { return vexp(v); });
    case UnaryOp::Sqrt: return loop1(x, y, n, [](V v) { return VT::sqrt(v); });
    case UnaryOp::Rsqrt: return loop1(x, y, n, [](V v) { return VT::div(c(1.0f), VT::sqrt(v)); });
    case UnaryOp::Abs: return loop1(x, y, n, [](V v) { return VT::abs(v); });
    case UnaryOp::Sigmoid: return loop1(x, y, n, [](V v) { return vsigmoid(v); });
    case UnaryOp::Tanh: return loop1(x, y, n, [](V v) { return vtanh(v); });
    case UnaryOp::Silu: return loop1(x, y, n, [](V v) { return silu_f(v); });
    case UnaryOp::Gelu: return loop1(x, y, n, [](V v) { return gelu_f(v); });
    case UnaryOp::GeluTanh: return loop1(x, y, n, [](V v) { return gelu_tanh_f(v); });
    case UnaryOp::Relu: return loop1(x, y, n, [](V v) { return VT::select(VT::gt(v, VT::zero()), v, VT::zero()); });
    case UnaryOp::Square: return loop1(x, y, n, [](V v) { return VT::mul(v, v); });
    case UnaryOp::Reciprocal: return loop1(x, y, n, [](V v) { return VT::div(c(1.0f), v); });
    case UnaryOp::Sign:
      return loop1(x, y, n, [](V v) {
        return VT::select(VT::gt(v, VT::zero()), c(1.0f), VT::select(VT::lt(v, VT::zero()), c(-1.0f), VT::zero()));
      });
    default: break;
  }
}

void k_unary_grad(UnaryOp op, const float* x, const float* y, const float* d, float* dx, int64_t n) {
  switch (op) {
    case UnaryOp::Neg: return loop1(d, dx, n, [](V g) { return VT::neg(g); });
    case UnaryOp::Exp: return loop2(y, d, dx, n, [](V w, V g) { return VT::mul(g, w); });
    case UnaryOp::Sqrt: return loop2(y, d, dx, n, [](V w, V g) { return VT::div(VT::mul(g, c(0.5f)), w); });
    case UnaryOp::Rsqrt:
      return loop2(y, d, dx, n, [](V w, V g) { return VT::mul(VT::mul(VT::mul(VT::mul(g, c(-0.5f)), w), w), w); });
    case UnaryOp::Abs:
      return loop2(x, d, dx, n, [](V v, V g) {
        return VT::select(VT::gt(v, VT::zero()), g, VT::select(VT::lt(v, VT::zero()), VT::neg(g), VT::zero()));
      });
    case UnaryOp::Sigmoid:
      return loop2(y, d, dx, n, [](V w, V g) { return VT::mul(VT::mul(g, w), VT::sub(c(1.0f), w)); });
    case UnaryOp::Tanh: return loop2(y, d, dx, n, [](V w, V g) { return VT::mul(g, VT::sub(c(1.0f), VT::mul(w, w))); });
    case UnaryOp::Silu: return loop2(x, d, dx, n, [](V v, V g) { return silu_g(v, g); });
    case UnaryOp::Gelu: return loop2(x, d, dx, n, [](V v, V g) { return gelu_g(v, g); });
    case UnaryOp::GeluTanh: return loop2(x, d, dx, n, [](V v, V g) { return gelu_tanh_g(v, g); });
    case UnaryOp::Relu: return loop2(x, d, dx, n, [](V v, V g) { return VT::select(VT::gt(v, VT::zero()), g, VT::zero()); });
    case UnaryOp::Square: return loop2(x, d, dx, n, [](V v, V g) { return VT::mul(VT::mul(g, c(2.0f)), v); });
    case UnaryOp::Reciprocal: return loop2(y, d, dx, n, [](V w, V g) { return VT::mul(VT::mul(VT::neg(g), w), w); });
    case UnaryOp::Sign: return loop1(d, dx, n, [](V) { return VT::zero(); });
    default: break;
  }
}

// ---- gated activations ----
template <DType I> inline V inter_round(V v) {
  if (I == DType::BF16) return VT::round_bf16(v);
  if (I == DType::F16) return VT::round_f16(v);
  return v;
}

template <GluAct A, DType I>
void glu_t(const float* g, const float* u, float* h, int64_t n) {
  loop2(g, u, h, n, [](V gv, V uv) { return VT::mul(inter_round<I>(act_f<A>(gv)), uv); });
}

template <GluAct A, DType I>
void glu_grad_t(const float* g, const float* u, const float* dh, float* dg, float* du, int64_t n) {
  auto one = [&](V gv, V uv, V d, float* pg, float* pu, int r) {
    const V k = act_core<A>(gv);  // shared by du and dg
    if (pu) {
      V a = inter_round<I>(act_value<A>(gv, k));
      V x = VT::mul(d, a);
      if (r == W) VT::store(pu, x); else VT::storen(pu, x, r);
    }
    if (pg) {
      V x = act_grad<A>(gv, k, inter_round<I>(VT::mul(d, uv)));
      if (r == W) VT::store(pg, x); else VT::storen(pg, x, r);
    }
  };
  int64_t i = 0;
  for (; i + W <= n; i += W)
    one(VT::load(g + i), VT::load(u + i), VT::load(dh + i), dg ? dg + i : nullptr, du ? du + i : nullptr, W);
  if (i < n) {
    const int r = (int)(n - i);
    one(VT::loadn(g + i, r), VT::loadn(u + i, r), VT::loadn(dh + i, r), dg ? dg + i : nullptr, du ? du + i : nullptr, r);
  }
}

template <GluAct A>
void glu_a(DType inter, const float* g, const float* u, float* h, int64_t n) {
  if (inter == DType::BF16) glu_t<A, DType::BF16>(g, u, h, n);
  else if (inter == DType::F16) glu_t<A, DType::F16>(g, u, h, n);
  else glu_t<A, DType::F32>(g, u, h, n);
}
template <GluAct A>
void glu_grad_a(DType inter, const float* g, const float* u, const float* dh, float* dg, float* du, int64_t n) {
  if (inter == DType::BF16) glu_grad_t<A, DType::BF16>(g, u, dh, dg, du, n);
  else if (inter == DType::F16) glu_grad_t<A, DType::F16>(g, u, dh, dg, du, n);
  else glu_grad_t<A, DType::F32>(g, u, dh, dg, du, n);
}

void k_glu(GluAct act, DType inter, const float* g, const float* u, float* h, int64_t n) {
  switch (act) {
    case GluAct::Silu: return glu_a<GluAct::Silu>(inter, g, u, h, n);
    case GluAct::Gelu: return glu_a<GluAct::Gelu>(inter, g, u, h, n);
    case GluAct::GeluTanh: return glu_a<GluAct::GeluTanh>(inter, g, u, h, n);
  }
}
void k_glu_grad(GluAct act, DType inter, const float* g, const float* u, const float* dh, float* dg, float* du,
                int64_t n) {
  switch (act) {
    case GluAct::Silu: return glu_grad_a<GluAct::Silu>(inter, g, u, dh, dg, du, n);
    case GluAct::Gelu: return glu_grad_a<GluAct::Gelu>(inter, g, u, dh, dg, du, n);
    case GluAct::GeluTanh: return glu_grad_a<GluAct::GeluTanh>(inter, g, u, dh, dg, du, n);
  }
}

void k_vmath(MathFn f, const float* x, float* y, int64_t n) {
  switch (f) {
    case MathFn::Exp: return loop1(x, y, n, [](V v) { return vexp(v); });
    case MathFn::Erf: return loop1(x, y, n, [](V v) { return verf(v); });
    case MathFn::Tanh: return loop1(x, y, n, [](V v) { return vtanh(v); });
    case MathFn::Sigmoid: return loop1(x, y, n, [](V v) { return vsigmoid(v); });
  }
}

void k_to_f32(DType t, const void* src, float* dst, int64_t n) { VT::cvt_to_f32(t, src, dst, n); }
void k_from_f32(DType t, const float* src, void* dst, int64_t n) { VT::cvt_from_f32(t, src, dst, n); }

// ---- in-place variants: one storage format Fm (simd_fmt.h) for every operand ----
template <class F> inline void with_fmt(DType t, F&& f) { simd::with_fmt<VT>(t, std::forward<F>(f)); }

// one(i, r) over n elements in vectors (r = W lanes, fewer in the tail).
template <class F> inline void for_lanes(int64_t n, F one) {
  int64_t i = 0;
  for (; i + W <= n; i += W) one(i, W);
  if (i < n) one(i, (int)(n - i));
}

void k_binary_io(BinaryOp op, DType t, const void* a, const void* b, void* out, int64_t n) {
  with_fmt(t, [&](auto fm) {
    using Fm = decltype(fm);
    using E = typename Fm::E;
    const E* pa = static_cast<const E*>(a); const E* pb = static_cast<const E*>(b);
    E* po = static_cast<E*>(out);
    with_binop(op, [&](auto fn) {
      for_lanes(n, [&](int64_t i, int r) { Fm::st(po + i, fn(Fm::ld(pa + i, r), Fm::ld(pb + i, r)), r); });
    });
  });
}

template <GluAct A>
void glu_io_a(DType t, const void* g, const void* u, void* h, int64_t n) {
  with_fmt(t, [&](auto fm) {
    using Fm = decltype(fm);
    using E = typename Fm::E;
    const E* pg = static_cast<const E*>(g); const E* pu = static_cast<const E*>(u);
    E* ph = static_cast<E*>(h);
    for_lanes(n, [&](int64_t i, int r) {
      Fm::st(ph + i, VT::mul(inter_round<Fm::dt>(act_f<A>(Fm::ld(pg + i, r))), Fm::ld(pu + i, r)), r);
    });
  });
}

template <GluAct A>
void glu_grad_io_a(DType t, const void* g, const void* u, const void* dh, void* dg, void* du, int64_t n) {
  with_fmt(t, [&](auto fm) {
    using Fm = decltype(fm);
    using E = typename Fm::E;
    const E* pg = static_cast<const E*>(g); const E* pu = static_cast<const E*>(u); const E* pd = static_cast<const E*>(dh);
    E* pdg = static_cast<E*>(dg); E* pdu = static_cast<E*>(du);
    for_lanes(n, [&](int64_t i, int r) {
      const V gv = Fm::ld(pg + i, r), d = Fm::ld(pd + i, r);
      const V k = act_core<A>(gv);  // shared by du and dg
      if (pdu) Fm::st(pdu + i, VT::mul(d, inter_round<Fm::dt>(act_value<A>(gv, k))), r);
      if (pdg) Fm::st(pdg + i, act_grad<A>(gv, k, inter_round<Fm::dt>(VT::mul(d, Fm::ld(pu + i, r)))), r);
    });
  });
}

void k_glu_io(GluAct act, DType t, const void* g, const void* u, void* h, int64_t n) {
  switch (act) {
    case GluAct::Silu: return glu_io_a<GluAct::Silu>(t, g, u, h, n);
    case GluAct::Gelu: return glu_io_a<GluAct::Gelu>(t, g, u, h, n);
    case GluAct::GeluTanh: return glu_io_a<GluAct::GeluTanh>(t, g, u, h, n);
  }
}
void k_glu_grad_io(GluAct act, DType t, const void* g, const void* u, const void* dh, void* dg, void* du, int64_t n) {
  switch (act) {
    case GluAct::Silu: return glu_grad_io_a<GluAct::Silu>(t, g, u, dh, dg, du, n);
    case GluAct::Gelu: return glu_grad_io_a<GluAct::Gelu>(t, g, u, dh, dg, du, n);
    case GluAct::GeluTanh: return glu_grad_io_a<GluAct::GeluTanh>(t, g, u, dh, dg, du, n);
  }
}

Kernels make_kernels(const char* name) {
  return Kernels{name,     k_binary,   k_binary_grad, k_unary, k_unary_grad, k_glu,        k_glu_grad,
                 k_to_f32, k_from_f32, k_vmath,       k_binary_io, k_glu_io, k_glu_grad_io};
}

}  // namespace
}  // namespace ew
}  // namespace pk
#endif  // PK_EW_VECTOR_IMPL
