// swiglu.cu — CUDA twins of cpu/swiglu.cpp: the fused gated activations of gated MLPs
//
//   h = act(gate) · up          act = silu (SwiGLU), gelu (erf) or gelu_tanh (GeGLU)
//
// one pass forward (read gate, up; write h) and one backward (read gate, up, dh; write dgate and/or
// dup), instead of act, mul and their backward twins (torch eager: 2 kernels forward, 3–4 backward,
// plus an act(gate) tensor kept for backward).
//
// Semantics are the CPU twin's: math in compute_dtype(promote(gate, up)) (f32, or f64 for an f64
// operand); act(gate) and dh·up are rounded to the gate's dtype exactly where the unfused
// composition stores them (f32 math only, as on the CPU); h has the promoted dtype, dgate the
// gate's and dup the up's. Mixed dtypes and strided views (e.g. the halves of a fused gate_up
// projection) are first widened / made contiguous in the promoted dtype (exact), so the kernels
// see one storage type and unit strides; same-dtype contiguous operands (every Llama-family MLP)
// go straight in.
#include "common.cuh"
#include "core/dispatch.h"
#include "cpu/cpu_common.h"
#include "cpu/swiglu.h"
#include "ops.h"

namespace pk {
namespace cuda {

namespace {

constexpr double kInvSqrt2 = 0.7071067811865476, kSqrt2OverPi = 0.7978845608028654, kInvSqrt2Pi = 0.3989422804014327;

__device__ __forceinline__ float m_exp(float x) { return expf(x); }
__device__ __forceinline__ double m_exp(double x) { return exp(x); }
__device__ __forceinline__ float m_erf(float x) { return erff(x); }
__device__ __forceinline__ double m_erf(double x) { return erf(x); }
__device__ __forceinline__ float m_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double m_tanh(double x) { return tanh(x); }

// The formulas of cpu/swiglu.cpp act_f / act_g (= cpu/elementwise.cpp un / un_grad), line for line.
template <class T> __device__ __forceinline__ T act_f(GluAct a, T x) {
  switch (a) {
    case GluAct::Silu: return x / (T(1) + m_exp(-x));
    case GluAct::Gelu: return T(0.5) * x * (T(1) + m_erf(x * T(kInvSqrt2)));
    case GluAct::GeluTanh: return T(0.5) * x * (T(1) + m_tanh(T(kSqrt2OverPi) * (x + T(0.044715) * x * x * x)));
  }
  return T(0);
}
template <class T> __device__ __forceinline__ T act_g(GluAct a, T x, T dy) {
  switch (a) {
    case GluAct::Silu: { T s = T(1) / (T(1) + m_exp(-x)); return dy * s * (T(1) + x * (T(1) - s)); }
    case GluAct::Gelu: {
      T cdf = T(0.5) * (T(1) + m_erf(x * T(kInvSqrt2)));
      T pdf = m_exp(T(-0.5) * x * x) * T(kInvSqrt2Pi);
      return dy * (cdf + x * pdf);
    }
    case GluAct::GeluTanh: {
      T inner = T(kSqrt2OverPi) * (x + T(0.044715) * x * x * x);
      T t = m_tanh(inner);
      T dinner = T(kSqrt2OverPi) * (T(1) + T(3) * T(0.044715) * x * x);
      return dy * (T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * dinner);
    }
  }
  return T(0);
}

// Rounds an f32 intermediate to the gate's dtype (`inter`); f64 math is never rounded (CPU twin).
__device__ __forceinline__ float round_inter(float v, int inter) {
  if (inter == (int)DType::BF16) return __bfloat162float(from_f32<__nv_bfloat16>(v));
  if (inter == (int)DType::F16) return __half2float(from_f32<__half>(v));
  return v;
}
__device__ __forceinline__ double round_inter(double v, int) { return v; }

// (n) h = round(act(g)) · u
template <class S, class I>
__global__ void glu_fwd_kernel(GluAct act, int inter, const S* __restrict__ g, const S* __restrict__ u, S* __restrict__ h,
                               I n) {
  using T = typename Compute<S>::type;
  for (I i = global_tid<I>(); i < n; i += grid_stride<I>()) {
    const T x = Conv<T>::load(g[i]);
    h[i] = Conv<T>::template store<S>(round_inter(act_f<T>(act, x), inter) * Conv<T>::load(u[i]));
  }
}

// (n) dup = dh · round(act(g));  dgate = act'(g) · round(dh · u). Either output may be null.
template <class S, class SD, class I>
__global__ void glu_bwd_kernel(GluAct act, int inter, const S* __restrict__ g, const S* __restrict__ u,
                               const SD* __restrict__ dh, S* __restrict__ dg, S* __restrict__ du, I n) {
  using T = typename Compute<S>::type;
  for (I i = global_tid<I>(); i < n; i += grid_stride<I>()) {
    const T x = Conv<T>::load(g[i]), d = Conv<T>::load(dh[i]);
    if (du) du[i] = Conv<T>::template store<S>(d * round_inter(act_f<T>(act, x), inter));
    if (dg) dg[i] = Conv<T>::template store<S>(act_g<T>(act, x, round_inter(d * Conv<T>::load(u[i]), inter)));
  }
}

void check_args(GluAct act, const Tensor& gate, const Tensor& up, const char* op) {
  PK_CHECK(act == GluAct::Silu || act == GluAct::Gelu || act == GluAct::GeluTanh, op, ": unknown activation ", (int)act);
  PK_CHECK(gate.defined() && up.defined(), op, ": gate and up are required");
  check_float(gate, op, "gate"); check_float(up, op, "up");
  check_cuda(gate, op, "gate"); check_cuda(up, op, "up");
  PK_CHECK(gate.shape() == up.shape(), op, ": gate ", gate.desc(), " and up ", up.desc(), " must have the same shape");
}

// t in dtype dt with unit strides (t itself when it already is).
Tensor dense_as(const Tensor& t, DType dt) { return contiguous(cast(t, dt)); }

Tensor glu_forward_cuda(GluAct act, const Tensor& gate, const Tensor& up) {
  const char* op = glu_name(act);
  check_args(act, gate, up, op);
  const DType rd = promote(gate.dtype(), up.dtype());
  const Tensor g = dense_as(gate, rd), u = dense_as(up, rd);
  Tensor h = Tensor::empty(gate.shape(), rd, Device::CUDA);
  const int64_t n = h.numel();
  if (n == 0) return h;
  const int inter = (int)gate.dtype();
  dispatch_float(rd, op, [&](auto tag) {
    using S = decltype(tag);
    if (n < (int64_t(1) << 31)) launch(glu_fwd_kernel<S, uint32_t>, n, act, inter, g.data<S>(), u.data<S>(), h.data<S>(), (uint32_t)n);
    else launch(glu_fwd_kernel<S, int64_t>, n, act, inter, g.data<S>(), u.data<S>(), h.data<S>(), n);
  });
  return h;
}

void glu_backward_cuda(GluAct act, const Tensor& gate, const Tensor& up, const Tensor& dh, bool need_gate, bool need_up,
                       Tensor* dgate, Tensor* dup) {
  const char* op = glu_name(act);
  check_args(act, gate, up, op);
  PK_CHECK(dh.defined(), op, "_backward: grad is required");
  check_float(dh, op, "grad"); check_cuda(dh, op, "grad");
  PK_CHECK(dh.shape() == gate.shape(), op, "_backward: grad ", dh.desc(), " does not match ", gate.desc());
  PK_CHECK(!need_gate || dgate, op, "_backward: need_gate without a dgate output");
  PK_CHECK(!need_up || dup, op, "_backward: need_up without a dup output");
  if (!need_gate && !need_up) return;
  const DType rd = promote(gate.dtype(), up.dtype()), cd = compute_dtype(rd);
  // dh as the CPU twin reads it: in the compute dtype (f32 or f64). Kept in its own storage when
  // that is gate/up's dtype (the usual case), else converted to the compute dtype.
  const bool dh_own = dh.dtype() == rd;
  const Tensor g = dense_as(gate, rd), u = dense_as(up, rd), d = dense_as(dh, dh_own ? rd : cd);
  Tensor dg = need_gate ? Tensor::empty(gate.shape(), rd, Device::CUDA) : Tensor();
  Tensor du = need_up ? Tensor::empty(up.shape(), rd, Device::CUDA) : Tensor();
  const int64_t n = g.numel();
  const int inter = (int)gate.dtype();
  if (n > 0) {
    dispatch_float(rd, op, [&](auto tag) {
      using S = decltype(tag);
      S* pdg = need_gate ? dg.data<S>() : nullptr;
      S* pdu = need_up ? du.data<S>() : nullptr;
      using C = typename Compute<S>::type;
      const bool small = n < (int64_t(1) << 31);
      if (dh_own) {
        if (small) launch(glu_bwd_kernel<S, S, uint32_t>, n, act, inter, g.data<S>(), u.data<S>(), d.data<S>(), pdg, pdu, (uint32_t)n);
        else launch(glu_bwd_kernel<S, S, int64_t>, n, act, inter, g.data<S>(), u.data<S>(), d.data<S>(), pdg, pdu, n);
      } else {
        if (small) launch(glu_bwd_kernel<S, C, uint32_t>, n, act, inter, g.data<S>(), u.data<S>(), d.data<C>(), pdg, pdu, (uint32_t)n);
        else launch(glu_bwd_kernel<S, C, int64_t>, n, act, inter, g.data<S>(), u.data<S>(), d.data<C>(), pdg, pdu, n);
      }
    });
  }
  if (need_gate) *dgate = cast(dg, gate.dtype());
  if (need_up) *dup = cast(du, up.dtype());
}

struct Registrar {
  Registrar() {
    CudaOps& o = cuda_ops();
    o.glu_forward = glu_forward_cuda;
    o.glu_backward = glu_backward_cuda;
  }
};
Registrar registrar;

}  // namespace

}  // namespace cuda
}  // namespace pk
