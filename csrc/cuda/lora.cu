// lora.cu — CUDA twin of cpu/lora.cpp: the fused LoRA linear layer, forward and backward.
//
//   y = x·Wᵀ (+ b) + s · (drop(x)·Aᵀ)·Bᵀ        W frozen (float, or 4-bit NF4/FP4), A (r,in), B (out,r)
//
// Same semantics, checks, dtypes and saved tensors as the CPU op (lora.h), so lib/ops/lora.ts runs
// unchanged on cuda tensors (the CPU entry points branch here through core/dispatch.h):
//
// Forward
//   1. base GEMM through cuBLASLt in x's dtype with f32 accumulation and the bias in the epilogue
//      (gemm.cu `linear`); the result is rounded to x's dtype, which is exactly the CPU's (and
//      PyTorch's) rounding point of the base term for bf16/f16. A 4-bit base goes through the
//      registered `linear_4bit` (quant.cu: dequantize into the reused scratch buffer + cuBLASLt),
//      so the full-precision weight exists once, in scratch, for the duration of one GEMM.
//   2. the low-rank path reads x once: x is widened to the compute dtype (f32; f64 for f64) — with
//      dropout the same pass applies the Philox mask (random.cu's kernel: the mask is bit-identical
//      to the CPU's for the same seed) — and xa = drop(x)·Aᵀ (T×r, f32) is one skinny GEMM.
//   3. l = xa·Bᵀ (T×out, f32), then one elementwise pass writes y = round_x(base + s·l).
// Backward (dW is never formed)
//   gb = dY·B (T×r);  dB = s·dYᵀ·xa;  dA = s·gbᵀ·drop(x);  dX = dY·W (cuBLASLt in dY's dtype, or the
//   4-bit grad-input path) + drop'(s·gb·A), the last two combined in one elementwise pass.
//   dY is widened to f32 once and shared by dB and gb; drop(x) is recomputed from the saved mask.
//
// Precision: the rank-side products run in f32 (strict f32 unless PEFTKIT_CUDA_TF32=1) like the
// CPU; the base products use bf16/f16 tensor cores with f32 accumulation. Differences vs the CPU:
// GEMM summation order, and dX's base term rounded to x's dtype before the low-rank term is added
// (the CPU keeps it in f32) — within one bf16 ulp of the result.
#include <cmath>
#include "common.cuh"
#include "core/dispatch.h"
#include "cpu/cpu_common.h"
#include "cpu/lora.h"
#include "cpu/quant.h"
#include "ops.h"

namespace pk {
namespace cuda {

namespace {

// out[i] = S(base[i] + v) with v = s·low[i], or with a mask: v = mask[i] ? s·low[i]·inv : 0.
// base in its storage type SB, low in the compute type T, out in SO (all contiguous, n elements).
template <class SB, class SO, class T, bool MASK>
__global__ void combine_kernel(const SB* __restrict__ base, const T* __restrict__ low, const uint8_t* __restrict__ mask,
                               SO* __restrict__ out, int64_t n, T s, T inv) {
  for (int64_t i = global_tid<int64_t>(); i < n; i += grid_stride<int64_t>()) {
    T v = low[i] * s;
    if constexpr (MASK) v = mask[i] ? v * inv : T(0);
    out[i] = Conv<T>::template store<SO>(Conv<T>::load(base[i]) + v);
  }
}

// Vectorised variant for bf16/f16 base and output, f32 low, no mask: 8 elements per step.
template <class S>
__global__ void combine_vec8_kernel(const uint4* __restrict__ base, const float4* __restrict__ low, uint4* __restrict__ out,
                                    int64_t groups, float s) {
  for (int64_t g = global_tid<int64_t>(); g < groups; g += grid_stride<int64_t>()) {
    const uint4 b = base[g];
    const float4 l0 = low[2 * g], l1 = low[2 * g + 1];
    const S* bs = reinterpret_cast<const S*>(&b);
    const float lv[8] = {l0.x, l0.y, l0.z, l0.w, l1.x, l1.y, l1.z, l1.w};
    uint4 o;
    S* os = reinterpret_cast<S*>(&o);
#pragma unroll
    for (int k = 0; k < 8; k++) os[k] = from_f32<S>(to_f32(bs[k]) + lv[k] * s);
    out[g] = o;
  }
}

// y = round_{out dtype}(base + s·low [masked]); base: (T,N) any float dtype, low: (T,N) compute dtype.
Tensor combine(const Tensor& base_in, const Tensor& low_in, const Tensor& mask_in, double s, double p, DType out_dt,
               const char* op) {
  Tensor base = contiguous(base_in), low = contiguous(low_in);
  Tensor mask = mask_in.defined() ? contiguous(mask_in) : mask_in;
  Tensor out = Tensor::empty(base.shape(), out_dt, Device::CUDA);
  const int64_t n = out.numel();
  if (n == 0) return out;
  const bool f64 = low.dtype() == DType::F64;
  const double inv = p > 0 ? 1.0 / (1.0 - p) : 1.0;
  // Fast path: bf16/f16 in and out, f32 low, no mask, 16-byte aligned.
  if (!mask.defined() && !f64 && base.dtype() == out_dt && (out_dt == DType::BF16 || out_dt == DType::F16) && n % 8 == 0 &&
      ptr_alignment(base.raw()) >= 16 && ptr_alignment(low.raw()) >= 16 && ptr_alignment(out.raw()) >= 16) {
    const int64_t groups = n / 8;
    if (out_dt == DType::BF16)
      launch(combine_vec8_kernel<__nv_bfloat16>, groups, (const uint4*)base.raw(), (const float4*)low.raw(), (uint4*)out.raw(),
             groups, (float)s);
    else
      launch(combine_vec8_kernel<__half>, groups, (const uint4*)base.raw(), (const float4*)low.raw(), (uint4*)out.raw(), groups,
             (float)s);
    return out;
  }
  dispatch_float(base.dtype(), op, [&](auto tb) {
    using SB = decltype(tb);
    dispatch_float(out_dt, op, [&](auto to) {
      using SO = decltype(to);
      const uint8_t* mp = mask.defined() ? mask.data<uint8_t>() : nullptr;
      if (f64) {
        if (mp) launch(combine_kernel<SB, SO, double, true>, n, base.data<SB>(), low.data<double>(), mp, out.data<SO>(), n, s, inv);
        else launch(combine_kernel<SB, SO, double, false>, n, base.data<SB>(), low.data<double>(), mp, out.data<SO>(), n, s, inv);
      } else {
        if (mp) launch(combine_kernel<SB, SO, float, true>, n, base.data<SB>(), low.data<float>(), mp, out.data<SO>(), n, (float)s, (float)inv);
        else launch(combine_kernel<SB, SO, float, false>, n, base.data<SB>(), low.data<float>(), mp, out.data<SO>(), n, (float)s, (float)inv);
      }
    });
  });
  return out;
}

void check_inputs(const Tensor& x, const LoraBaseWeight& w, const Tensor& A, const Tensor& B, const char* op, int64_t* in_f,
                  int64_t* out_f, int64_t* r) {
  check_defined(x, op, "x"); check_float(x, op, "x"); check_cuda(x, op, "x");
  int64_t inF, outF;
  if (w.q4) {
    PK_CHECK(w.q4->shape.size() == 2, op, ": a 4-bit base weight must be 2-d (out, in), got shape ", shape_str(w.q4->shape));
    PK_CHECK(!w.transposed, op, ": a 4-bit base weight is always (out, in); weightTransposed must be false");
    check_defined(w.q4->packed, op, "packed weight"); check_cuda(w.q4->packed, op, "packed weight");
    outF = w.q4->shape[0];
    inF = w.q4->shape[1];
  } else {
    const Tensor& W = w.weight;
    check_defined(W, op, "weight"); check_cuda(W, op, "weight");
    PK_CHECK(W.dim() == 2, op, ": base weight must be 2-d, got ", W.desc());
    PK_CHECK(is_float(W.dtype()), op, ": base weight must be f32, bf16, f16 or f64 (or a 4-bit quant state), got ", W.desc());
    inF = w.transposed ? W.size(0) : W.size(1);
    outF = w.transposed ? W.size(1) : W.size(0);
  }
  check_defined(A, op, "lora_A"); check_defined(B, op, "lora_B");
  check_float(A, op, "lora_A"); check_float(B, op, "lora_B");
  check_cuda(A, op, "lora_A"); check_cuda(B, op, "lora_B");
  check_dim(A, 2, op, "lora_A"); check_dim(B, 2, op, "lora_B");
  const std::string wdesc = w.q4 ? std::string(quant4_type_name(w.q4->type)) + shape_str(w.q4->shape) : w.weight.desc();
  PK_CHECK(x.dim() >= 1 && x.size(-1) == inF, op, ": input ", x.desc(), " does not match base weight ", wdesc,
           w.q4 ? " (4-bit, [out, in])" : w.transposed ? " (stored [in, out])" : " (stored [out, in])");
  PK_CHECK(A.size(1) == inF, op, ": lora_A ", A.desc(), " must be [r, ", inF, "]");
  PK_CHECK(B.size(0) == outF && B.size(1) == A.size(0), op, ": lora_B ", B.desc(), " must be [", outF, ", ", A.size(0), "]");
  *in_f = inF; *out_f = outF; *r = A.size(0);
}

bool all_f64(std::initializer_list<const Tensor*> ts) {
  bool any = false, all = true;
  for (const Tensor* t : ts) {
    if (!t->defined()) continue;
    bool f = t->dtype() == DType::F64;
    any |= f; all &= f;
  }
  PK_CHECK(any == all, "lora_linear: f64 inputs need x, weight, bias, lora_A and lora_B all in f64");
  return all && any;
}

// The frozen weight as (out, in) (a transposed view for fan_in_fan_out), or undefined for 4-bit.
Tensor weight_out_in(const LoraBaseWeight& w) { return w.transposed ? w.weight.transpose(0, 1) : w.weight; }

// x·Wᵀ (+ b) in x's dtype (the base term of the forward).
Tensor base_forward(const Tensor& x2, const LoraBaseWeight& w, const Tensor& bias, bool f64) {
  if (w.q4) {
    if (f64) {   // gradient checks: an f64 dequantized copy, like the CPU
      Tensor Wd = cuda_fn(&CudaOps::dequantize_4bit, "lora_linear")(*w.q4, DType::F64);
      return cuda::linear(x2, Wd, bias.defined() ? on_cuda(bias, "lora_linear", "bias") : bias);
    }
    return cuda_fn(&CudaOps::linear_4bit, "lora_linear")(x2, *w.q4, bias);
  }
  Tensor b = bias.defined() ? on_cuda(bias, "lora_linear", "bias") : bias;
  Tensor y = cuda::linear(x2, weight_out_in(w), b);
  return y.dtype() == x2.dtype() ? y : cuda::cast(y, x2.dtype());
}

// dY·W (T×in) in dY's dtype (the base term of dX).
Tensor base_backward(const Tensor& g2, const LoraBaseWeight& w, bool f64) {
  if (w.q4) {
    if (f64) {
      Tensor Wd = cuda_fn(&CudaOps::dequantize_4bit, "lora_linear_backward")(*w.q4, DType::F64);
      return cuda::matmul(g2, Wd, false, false);
    }
    return cuda_fn(&CudaOps::linear_4bit_grad_input, "lora_linear_backward")(g2, *w.q4);
  }
  return cuda::matmul(g2, weight_out_in(w), false, false);
}

// x (T,in) in the compute dtype with the dropout mask applied (mask generated when `gen`).
Tensor dropped_input(const Tensor& xc, double p, uint64_t seed, bool gen, Tensor* mask) {
  if (gen) return cuda_fn(&CudaOps::dropout_forward, "lora_linear")(xc, p, seed, mask);
  return cuda_fn(&CudaOps::dropout_backward, "lora_linear_backward")(xc, *mask, p);
}

LoraForward lora_forward_cuda(const Tensor& x, const LoraBaseWeight& w, const Tensor& bias, const Tensor& A, const Tensor& B,
                              double scale, double p, uint64_t seed) {
  const char* op = "lora_linear";
  int64_t inF, outF, r;
  check_inputs(x, w, A, B, op, &inF, &outF, &r);
  PK_CHECK(p >= 0 && p < 1, op, ": dropout p must be in [0, 1), got ", p);
  PK_CHECK(std::isfinite(scale), op, ": scale must be finite, got ", scale);
  if (bias.defined()) {
    check_float(bias, op, "bias");
    PK_CHECK(bias.dim() == 1 && bias.size(0) == outF, op, ": bias ", bias.desc(), " must be [", outF, "]");
  }
  const bool f64 = all_f64({&x, &w.weight, &bias, &A, &B});
  const DType cd = f64 ? DType::F64 : DType::F32;
  Shape lead(x.shape().begin(), x.shape().end() - 1);
  const int64_t T = shape_numel(lead);
  Tensor x2 = cuda::reshape(x, {T, inF});
  LoraForward res;
  Shape os = lead; os.push_back(outF);
  // No rows: nothing to compute. (out_features == 0 runs the normal path, whose products and
  // combine are then empty, so the dropout mask and xa are the real ones, as on the CPU.)
  if (T == 0) {
    res.y = Tensor::empty(os, x.dtype(), Device::CUDA);
    res.xa = cuda::zeros({T, r}, cd);
    if (p > 0) res.mask = Tensor::empty(x.shape(), DType::U8, Device::CUDA);
    return res;
  }
  // 1. base term, rounded to x's dtype (bias in the cuBLASLt epilogue)
  Tensor base = base_forward(x2, w, bias, f64);
  // 2. the low-rank input: x widened once (and dropped with the Philox mask)
  Tensor xin = cuda::cast(x2, cd);
  if (p > 0) {
    Tensor m;
    xin = dropped_input(xin, p, seed, true, &m);
    res.mask = m.view(x.shape());
  }
  Tensor Ac = cuda::cast(A, cd), Bc = cuda::cast(B, cd);
  Tensor xa = r > 0 && inF > 0 ? cuda::matmul(xin, Ac, false, true) : cuda::zeros({T, r}, cd);   // (T, r)
  xin = Tensor();
  // 3. y = round_x(base + s·xa·Bᵀ)
  Tensor low = r > 0 ? cuda::matmul(xa, Bc, false, true) : cuda::zeros({T, outF}, cd);   // (T, out)
  Tensor y = combine(base, low, Tensor(), scale, 0.0, f64 ? DType::F64 : x.dtype(), op);
  res.y = y.view(os);
  res.xa = xa;
  return res;
}

LoraBackward lora_backward_cuda(const Tensor& dy, const Tensor& x, const Tensor& mask, const LoraBaseWeight& w, const Tensor& A,
                                const Tensor& B, const Tensor& xa_in, double scale, double p, bool need_dx, bool need_dA,
                                bool need_dB) {
  const char* op = "lora_linear_backward";
  int64_t inF, outF, r;
  check_inputs(x, w, A, B, op, &inF, &outF, &r);
  check_defined(dy, op, "grad"); check_float(dy, op, "grad"); check_cuda(dy, op, "grad");
  PK_CHECK(dy.dim() >= 1 && dy.size(-1) == outF, op, ": grad ", dy.desc(), " must end in ", outF);
  const bool f64 = all_f64({&x, &w.weight, &A, &B});
  const DType cd = f64 ? DType::F64 : DType::F32;
  const int64_t T = x.numel() / std::max<int64_t>(inF, 1);
  PK_CHECK(dy.numel() / std::max<int64_t>(outF, 1) == T, op, ": grad ", dy.desc(), " and input ", x.desc(),
           " have different leading dims");
  PK_CHECK(xa_in.defined() && xa_in.dim() == 2 && xa_in.size(0) == T && xa_in.size(1) == r && xa_in.dtype() == cd, op,
           ": saved low-rank activations ", xa_in.desc(), " must be [", T, ", ", r, "] ", dtype_name(cd));
  if (p > 0) PK_CHECK(mask.defined() && mask.numel() == x.numel() && mask.dtype() == DType::U8, op, ": dropout mask missing");
  Tensor xa = on_cuda(xa_in, op, "xa");
  Tensor g2 = cuda::reshape(dy, {T, outF});
  if (f64) g2 = cuda::cast(g2, DType::F64);
  Tensor x2 = cuda::reshape(x, {T, inF});
  Tensor mask2 = p > 0 ? cuda::reshape(on_cuda(mask, op, "mask"), {T, inF}) : Tensor();
  LoraBackward res;
  const bool empty = T == 0 || r == 0;
  Tensor gc = need_dB || need_dA || need_dx ? cuda::cast(g2, cd) : Tensor();   // dY widened once, shared
  Tensor Bc = cuda::cast(B, cd);
  if (need_dB) {  // dB = s·dYᵀ·xa  (out×r)
    Tensor dB = empty ? cuda::zeros({outF, r}, cd) : cuda::scalar_forward(BinaryOp::Mul, cuda::matmul(gc, xa, true, false), scale, false);
    res.dB = cuda::cast(dB, f64 ? DType::F64 : B.dtype());
  }
  Tensor gb;
  if ((need_dA || need_dx) && !empty) gb = outF > 0 ? cuda::matmul(gc, Bc, false, false) : cuda::zeros({T, r}, cd);   // (T, r)
  gc = Tensor();
  if (need_dA) {  // dA = s·gbᵀ·drop(x)  (r×in)
    if (empty || inF == 0) {
      res.dA = cuda::zeros({r, inF}, f64 ? DType::F64 : A.dtype());
    } else {
      Tensor xin = cuda::cast(x2, cd);
      if (p > 0) { Tensor m = mask2; xin = dropped_input(xin, p, 0, false, &m); }
      Tensor dA = cuda::scalar_forward(BinaryOp::Mul, cuda::matmul(gb, xin, true, false), scale, false);
      res.dA = cuda::cast(dA, f64 ? DType::F64 : A.dtype());
    }
  }
  if (need_dx) {  // dX = dY·W (frozen: never dW) + drop'(s·gb·A)
    const DType xd = f64 ? DType::F64 : x.dtype();
    if (T == 0 || inF == 0) {
      res.dx = Tensor::empty(x.shape(), xd, Device::CUDA);
    } else {
      Tensor base = outF > 0 ? base_backward(g2, w, f64) : cuda::zeros({T, inF}, g2.dtype());
      Tensor low = empty ? cuda::zeros({T, inF}, cd) : cuda::matmul(gb, cuda::cast(A, cd), false, false);   // (T, in)
      res.dx = combine(base, low, mask2, scale, p, xd, op).view(x.shape());
    }
  }
  return res;
}

struct Registrar {
  Registrar() {
    CudaOps& o = cuda_ops();
    o.lora_linear_forward = lora_forward_cuda;
    o.lora_linear_backward = lora_backward_cuda;
  }
};
Registrar registrar;

}  // namespace

}  // namespace cuda
}  // namespace pk
