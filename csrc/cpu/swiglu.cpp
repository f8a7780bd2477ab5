// swiglu.cpp — CPU driver for the fused gated activations (swiglu.h): argument checks, the
// vectorised path (the glu row kernels of elementwise_avx512/avx2.cpp, which share the vector
// exp/erf/tanh of the elementwise ops: in place for same-dtype contiguous operands, else through
// ew::run_rows) and a scalar path for f64 and for builds or CPUs without the vector kernels.
#include "cpu/swiglu.h"

#include <cmath>

#include "core/dispatch.h"
#include "cpu/cpu_common.h"
#include "cpu/elementwise_kernels.h"

namespace pk {

namespace {

// Scalar formulas: the same expressions, in the same order, as un()/un_grad() in elementwise.cpp.
template <class T> inline T act_f(GluAct a, T x) {
  switch (a) {
    case GluAct::Silu: return x / (T(1) + std::exp(-x));
    case GluAct::Gelu: return T(0.5) * x * (T(1) + std::erf(x * T(0.7071067811865476)));
    case GluAct::GeluTanh:
      return T(0.5) * x * (T(1) + std::tanh(T(0.7978845608028654) * (x + T(0.044715) * x * x * x)));
  }
  return 0;
}
template <class T> inline T act_g(GluAct a, T x, T dy) {
  switch (a) {
    case GluAct::Silu: { T s = T(1) / (T(1) + std::exp(-x)); return dy * s * (T(1) + x * (T(1) - s)); }
    case GluAct::Gelu: {
      T cdf = T(0.5) * (T(1) + std::erf(x * T(0.7071067811865476)));
      T pdf = std::exp(T(-0.5) * x * x) * T(0.3989422804014327);
      return dy * (cdf + x * pdf);
    }
    case GluAct::GeluTanh: {
      T inner = T(0.7978845608028654) * (x + T(0.044715) * x * x * x);
      T t = std::tanh(inner);
      T dinner = T(0.7978845608028654) * (T(1) + T(3) * T(0.044715) * x * x);
      return dy * (T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * dinner);
    }
  }
  return 0;
}
// Rounds an f32 intermediate to the dtype the unfused composition would have stored it in.
inline float round_to(float v, DType t) {
  if (t == DType::BF16) return bf16_to_f32(f32_to_bf16(v));
  if (t == DType::F16) return f16_to_f32(f32_to_f16(v));
  return v;
}
inline double round_to(double v, DType) { return v; }

void check_args(GluAct act, const Tensor& gate, const Tensor& up) {
  const char* op = glu_name(act);
  PK_CHECK(gate.defined() && up.defined(), op, ": gate and up are required");
  check_float(gate, op, "gate"); check_float(up, op, "up");
  check_cpu(gate, op, "gate"); check_cpu(up, op, "up");
  PK_CHECK(gate.shape() == up.shape(), op, ": gate ", gate.desc(), " and up ", up.desc(), " must have the same shape");
}

}  // namespace

const char* glu_name(GluAct a) {
  switch (a) {
    case GluAct::Silu: return "swiglu";
    case GluAct::Gelu: return "geglu";
    case GluAct::GeluTanh: return "geglu_tanh";
  }
  return "glu";
}

Tensor glu_forward(GluAct act, const Tensor& gate, const Tensor& up) {
  if (any_cuda(gate, up)) return cuda_fn(&CudaOps::glu_forward, glu_name(act))(act, gate, up);
  check_args(act, gate, up);
  const DType rd = promote(gate.dtype(), up.dtype()), cd = compute_dtype(rd);
  const DType inter = gate.dtype();  // act(gate) is stored in the gate's dtype by the composition
  if (const ew::Kernels* k = ew::active_kernels(); k && cd == DType::F32) {
    Tensor h = Tensor::empty(gate.shape(), rd);
    if (ew::io_ok(rd, gate.shape(), {&gate, &up})) {  // one dtype, contiguous: in place, no staging
      const size_t es = dtype_size(rd);
      const char* pg = static_cast<const char*>(gate.raw()); const char* pu = static_cast<const char*>(up.raw());
      char* ph = static_cast<char*>(h.raw());
      ew::parallel_flat(h.numel(), [&](int64_t lo, int64_t hi) {
        k->glu_io(act, rd, pg + lo * es, pu + lo * es, ph + lo * es, hi - lo);
      });
      return h;
    }
    if (ew::run_rows(*k, gate.shape(), {gate, up}, {h}, [&](const float* const* in, const int64_t* s, float* const* o, int64_t n) {
          alignas(64) float b[2][ew::kChunk];
          const float* p[2];
          for (int j = 0; j < 2; j++) {
            p[j] = in[j];
            if (s[j] == 0) { std::fill(b[j], b[j] + n, in[j][0]); p[j] = b[j]; }
          }
          k->glu(act, inter, p[0], p[1], o[0], n);
        }))
      return h;
  }
  Tensor g = to_compute(gate), u = to_compute(up);
  Tensor h = Tensor::empty(gate.shape(), cd);
  const int64_t n = h.numel();
  dispatch_fp(cd, [&](auto tag) {
    using T = decltype(tag);
    const T* pg = g.data<T>(); const T* pu = u.data<T>(); T* ph = h.data<T>();
    parallel_for(0, n, 16384, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; i++) ph[i] = round_to(act_f<T>(act, pg[i]), inter) * pu[i];
    });
    return 0;
  });
  return h.to(rd);
}

void glu_backward(GluAct act, const Tensor& gate, const Tensor& up, const Tensor& dh, bool need_gate, bool need_up,
                  Tensor* dgate, Tensor* dup) {
  if (any_cuda(gate, up, dh)) return cuda_fn(&CudaOps::glu_backward, glu_name(act))(act, gate, up, dh, need_gate, need_up, dgate, dup);
  check_args(act, gate, up);
  const char* op = glu_name(act);
  check_float(dh, op, "grad"); check_cpu(dh, op, "grad");
  PK_CHECK(dh.shape() == gate.shape(), op, "_backward: grad ", dh.desc(), " does not match ", gate.desc());
  if (!need_gate && !need_up) return;
  const DType rd = promote(gate.dtype(), up.dtype()), cd = compute_dtype(rd);
  const DType inter = gate.dtype();
  if (const ew::Kernels* k = ew::active_kernels(); k && cd == DType::F32) {
    Tensor dg = need_gate ? Tensor::empty(gate.shape(), gate.dtype()) : Tensor();
    Tensor du = need_up ? Tensor::empty(up.shape(), up.dtype()) : Tensor();
    if (ew::io_ok(rd, gate.shape(), {&gate, &up, &dh})) {  // one dtype, contiguous: in place
      const size_t es = dtype_size(rd);
      const char* pg = static_cast<const char*>(gate.raw()); const char* pu = static_cast<const char*>(up.raw());
      const char* pd = static_cast<const char*>(dh.raw());
      char* pdg = need_gate ? static_cast<char*>(dg.raw()) : nullptr;
      char* pdu = need_up ? static_cast<char*>(du.raw()) : nullptr;
      ew::parallel_flat(gate.numel(), [&](int64_t lo, int64_t hi) {
        k->glu_grad_io(act, rd, pg + lo * es, pu + lo * es, pd + lo * es, pdg ? pdg + lo * es : nullptr,
                       pdu ? pdu + lo * es : nullptr, hi - lo);
      });
      if (need_gate) *dgate = dg;
      if (need_up) *dup = du;
      return;
    }
    std::vector<Tensor> outs;
    if (need_gate) outs.push_back(dg);
    if (need_up) outs.push_back(du);
    if (ew::run_rows(*k, gate.shape(), {gate, up, dh}, outs, [&](const float* const* in, const int64_t* s, float* const* o, int64_t n) {
          alignas(64) float b[3][ew::kChunk];
          const float* p[3];
          for (int j = 0; j < 3; j++) {
            p[j] = in[j];
            if (s[j] == 0) { std::fill(b[j], b[j] + n, in[j][0]); p[j] = b[j]; }
          }
          k->glu_grad(act, inter, p[0], p[1], p[2], need_gate ? o[0] : nullptr, need_up ? o[need_gate ? 1 : 0] : nullptr, n);
        })) {
      if (need_gate) *dgate = dg;
      if (need_up) *dup = du;
      return;
    }
  }
  Tensor g = to_compute(gate), u = to_compute(up), d = to_compute(dh);
  Tensor dg = need_gate ? Tensor::empty(gate.shape(), cd) : Tensor();
  Tensor du = need_up ? Tensor::empty(up.shape(), cd) : Tensor();
  const int64_t n = g.numel();
  dispatch_fp(cd, [&](auto tag) {
    using T = decltype(tag);
    const T* pg = g.data<T>(); const T* pu = u.data<T>(); const T* pd = d.data<T>();
    T* pdg = need_gate ? dg.data<T>() : nullptr; T* pdu = need_up ? du.data<T>() : nullptr;
    parallel_for(0, n, 16384, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; i++) {
        if (pdu) pdu[i] = pd[i] * round_to(act_f<T>(act, pg[i]), inter);
        if (pdg) pdg[i] = act_g<T>(act, pg[i], round_to(pd[i] * pu[i], inter));
      }
    });
    return 0;
  });
  if (need_gate) *dgate = dg.to(gate.dtype());
  if (need_up) *dup = du.to(up.dtype());
}

}  // namespace pk
