// lora.cpp — the fused LoRA linear layer on the packed GEMM (see lora.h for the math).
//
// Every product is one gemm call on strided operands (transposes are stride swaps, bf16/f16
// operands are widened while packing; a bf16 base weight with bf16 activations multiplies in bf16,
// f32 accumulation), so the only temporaries are the T×r low-rank activations,
// the u8 dropout mask and — only with dropout — the dropped input.
#include "lora.h"

#include <cmath>
#include <cstring>

#include "core/dispatch.h"
#include "core/parallel.h"
#include "cpu_common.h"
#include "gemm.h"
#include "quant.h"
#include "random.h"

namespace pk {

namespace {

// A 2-d operand: element (i, k) at data[i*rs + k*cs] (in elements of dt).
struct Op {
  const void* p;
  DType dt;
  int64_t rs, cs;
};

Op op_of(const Tensor& t, bool trans) {
  // t is 2-d; trans = use tᵀ.
  int64_t r = t.strides()[0], c = t.strides()[1];
  return trans ? Op{t.raw(), t.dtype(), c, r} : Op{t.raw(), t.dtype(), r, c};
}

// C[M,N] (row-major, ldc, dtype f32 or f64) = alpha·A·B + beta·C. compute: GemmCompute::Bf16 only
// for the base product with bf16 activations and a bf16 weight (see base_gemm).
void mm(int64_t M, int64_t N, int64_t K, const Op& a, const Op& b, void* c, DType cdt, int64_t ldc, double alpha,
        double beta, GemmCompute compute = GemmCompute::F32, int nthreads = 0) {
  if (M == 0 || N == 0) return;
  if (cdt == DType::F64) {
    PK_CHECK(a.dt == DType::F64 && b.dt == DType::F64, "lora_linear: f64 computation needs every operand in f64 (got ",
             dtype_name(a.dt), " and ", dtype_name(b.dt), ")");
    if (K == 0) {
      double* C = static_cast<double*>(c);
      for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) C[i * ldc + j] = beta == 0 ? 0.0 : beta * C[i * ldc + j];
      return;
    }
    gemm_f64(M, N, K, static_cast<const double*>(a.p), a.rs, a.cs, static_cast<const double*>(b.p), b.rs, b.cs,
             static_cast<double*>(c), ldc, alpha, beta);
    return;
  }
  if (K == 0) {
    float* C = static_cast<float*>(c);
    for (int64_t i = 0; i < M; i++)
      for (int64_t j = 0; j < N; j++) C[i * ldc + j] = beta == 0 ? 0.0f : (float)beta * C[i * ldc + j];
    return;
  }
  GemmOperand A{a.p, a.dt, a.rs, a.cs}, B{b.p, b.dt, b.rs, b.cs};
  gemm_f32(M, N, K, A, B, static_cast<float*>(c), ldc, (float)alpha, (float)beta, nthreads, compute);
}

// The base weight as a GEMM operand: Wᵀ (use_t, forward X·Wᵀ) or W (backward dY·W). Stored (out,in),
// Wᵀ is the stride swap; stored (in,out) (fan_in_fan_out), the other way.
Op weight_op(const LoraBaseWeight& w, bool use_t) { return op_of(w.weight, use_t != w.transposed); }

// A bf16 model (bf16 weight, bf16 activations / output gradients) multiplies in bf16 with f32
// accumulation, like torch's bf16 linear; so does a 4-bit base whose compute dtype is bf16 (as
// bitsandbytes: dequantize to bf16, bf16 matmul). Anything involving f32/f16 stays f32 compute.
GemmCompute base_compute(DType a, const LoraBaseWeight& w) {
  if (w.q4) return quant4_compute(a, *w.q4);
  return a == DType::BF16 && w.weight.dtype() == DType::BF16 ? GemmCompute::Bf16 : GemmCompute::F32;
}

// Reads the base weight for the f32/f64 paths (the bf16 paths call the bf16-output GEMMs with
// weight_op / base_compute directly). `use` selects the product:
//   forward  (use_t = true):  C = X·Wᵀ   (K = in,  N = out)
//   backward (use_t = false): C = G·W    (K = out, N = in)
void base_gemm(int64_t M, int64_t N, int64_t K, const Op& a, const LoraBaseWeight& w, bool use_t, void* c, DType cdt,
               int64_t ldc, double alpha, double beta) {
  if (w.q4) {
    // 4-bit base: the fused NF4/FP4 GEMM dequantizes blocks while packing the B panels (the
    // full-precision weight never exists). f64 (gradient checks): an f64 dequantized copy.
    if (cdt == DType::F64) {
      Tensor Wd = dequantize_4bit(*w.q4, DType::F64);
      mm(M, N, K, a, op_of(Wd, use_t), c, cdt, ldc, alpha, beta);
      return;
    }
    if (M == 0 || N == 0) return;
    if (K == 0) {
      mm(M, N, K, a, a, c, cdt, ldc, alpha, beta);   // C = beta·C (no operand is read)
      return;
    }
    GemmOperand A{a.p, a.dt, a.rs, a.cs};
    gemm_4bit(M, A, *w.q4, use_t, static_cast<float*>(c), ldc, (float)alpha, (float)beta, 0, base_compute(a.dt, w));
    return;
  }
  mm(M, N, K, a, weight_op(w, use_t), c, cdt, ldc, alpha, beta, base_compute(a.dt, w));
}

void check_inputs(const Tensor& x, const LoraBaseWeight& w, const Tensor& A, const Tensor& B, const char* op,
                  int64_t* in_f, int64_t* out_f, int64_t* r) {
  check_float(x, op, "x"); check_cpu(x, op, "x");
  int64_t inF, outF;
  if (w.q4) {
    check_quant4_state(*w.q4, op);
    PK_CHECK(w.q4->shape.size() == 2, op, ": a 4-bit base weight must be 2-d (out, in), got shape ",
             shape_str(w.q4->shape));
    PK_CHECK(!w.transposed, op, ": a 4-bit base weight is always (out, in); weightTransposed must be false");
    outF = w.q4->shape[0];
    inF = w.q4->shape[1];
  } else {
    const Tensor& W = w.weight;
    check_defined(W, op, "weight"); check_cpu(W, op, "weight");
    PK_CHECK(W.dim() == 2, op, ": base weight must be 2-d, got ", W.desc());
    PK_CHECK(is_float(W.dtype()), op, ": base weight must be f32, bf16, f16 or f64 (or a 4-bit quant state), got ", W.desc());
    inF = w.transposed ? W.size(0) : W.size(1);
    outF = w.transposed ? W.size(1) : W.size(0);
  }
  check_float(A, op, "lora_A"); check_float(B, op, "lora_B");
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

// Round an f32 buffer to f16 precision, in place (an f16 layer's base result; bf16 layers round
// in the GEMM epilogue, forward_bf16).
void round_to_f16(float* p, int64_t n) {
  parallel_for(0, n, 1 << 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; i++) p[i] = f16_to_f32(f32_to_f16(p[i]));
  });
}

// x (T,in) with the dropout mask applied and scaled by 1/(1-p), in the compute dtype.
template <class T>
Tensor dropped(const Tensor& x2, const Tensor& mask2, double p) {
  Tensor xc = x2.to(std::is_same<T, double>::value ? DType::F64 : DType::F32).contiguous();
  Tensor mk = mask2.contiguous();
  Tensor out = Tensor::empty(xc.shape(), xc.dtype());
  const T* s = xc.data<T>(); const uint8_t* m = mk.data<uint8_t>(); T* o = out.data<T>();
  T scale = (T)(1.0 / (1.0 - p));
  parallel_for(0, out.numel(), 1 << 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; i++) o[i] = m[i] ? s[i] * scale : T(0);
  });
  return out;
}

// The u8 keep-mask of pk::dropout_forward for n elements (element i uses Philox counter i/4,
// word i%4; kept iff word >= p·2³²), so the fused and unfused layers drop the same elements.
Tensor dropout_mask(int64_t n, double p, uint64_t seed) {
  Tensor m = Tensor::empty({n}, DType::U8);
  uint8_t* pm = m.data<uint8_t>();
  const int64_t blocks = (n + 3) / 4;
  const uint32_t thresh = (uint32_t)std::min(4294967295.0, p * 4294967296.0);
  parallel_for(0, blocks, 4096, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; b++) {
      uint32_t wd[4]; philox4x32(seed, (uint64_t)b, wd);
      for (int j = 0; j < 4 && b * 4 + j < n; j++) pm[b * 4 + j] = wd[j] >= thresh;
    }
  });
  return m;
}

// R (r×N f32, contiguous) of the low-rank epilogue term from a (N×r) or (r×N) f32 operand.
Tensor low_rank_rows(const Tensor& t, bool transpose) {
  Tensor m = transpose ? t.transpose(0, 1) : t;
  return m.to(DType::F32).contiguous();
}

GemmOperand gemm_operand(const Op& o) { return GemmOperand{o.p, o.dt, o.rs, o.cs}; }

// Forward of a bf16 layer (float or 4-bit base weight): xa first, then ONE GEMM whose epilogue adds the
// bias, rounds the base result to bf16 (as PyTorch does before adding the f32 LoRA term), adds
// s·xa·Bᵀ and writes bf16 — no T×out f32 buffer, no extra passes over the output.
LoraForward forward_bf16(const Tensor& x, const Tensor& x2, const LoraBaseWeight& w, const Tensor& bias, const Tensor& A,
                         const Tensor& B, double scale, double p, uint64_t seed, int64_t T, int64_t inF, int64_t outF,
                         int64_t r) {
  LoraForward res;
  Tensor xin = x2;
  if (p > 0) {
    Tensor m2 = dropout_mask(T * inF, p, seed).view({T, inF});
    xin = dropped<float>(x2, m2, p);
    res.mask = m2.view(x.shape());
  }
  Tensor xa = Tensor::empty({T, r}, DType::F32);
  mm(T, r, inF, op_of(xin, false), op_of(A, true), xa.raw(), DType::F32, r, 1.0, 0.0);
  Tensor Bt = low_rank_rows(B, true);   // (r, out)
  Tensor bc = bias.defined() ? bias.to(DType::F32).contiguous() : Tensor();
  Shape os(x.shape().begin(), x.shape().end() - 1);
  os.push_back(outF);
  Tensor yb = Tensor::empty(os, DType::BF16);
  Bf16Epilogue e;
  e.out = yb.data<uint16_t>(); e.ldo = outF;
  e.bias = bc.defined() ? bc.data<float>() : nullptr;
  e.round_first = true;
  e.r = r; e.L = xa.data<float>(); e.ldl = r; e.R = Bt.data<float>(); e.ldr = outF; e.alpha_lr = (float)scale;
  const GemmOperand X = gemm_operand(op_of(x2, false));
  if (w.q4) gemm_4bit_bf16_out(T, X, *w.q4, true, e, 0, base_compute(x2.dtype(), w));
  else gemm_bf16_out(T, outF, inF, X, gemm_operand(weight_op(w, true)), e, 0, base_compute(x2.dtype(), w));
  res.y = yb;
  res.xa = xa;
  return res;
}

}  // namespace

LoraForward lora_linear_forward(const Tensor& x, const LoraBaseWeight& w, const Tensor& bias, const Tensor& A,
                                const Tensor& B, double scale, double p, uint64_t seed) {
  if (any_cuda(x, w.weight, bias, A, B) || (w.q4 && any_cuda(w.q4->packed))) return cuda_fn(&CudaOps::lora_linear_forward, "lora_linear")(x, w, bias, A, B, scale, p, seed);
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
  Tensor x2 = x.reshape({T, inF});

  LoraForward res;
  const bool bf16_x = !f64 && x.dtype() == DType::BF16;
  if (bf16_x) return forward_bf16(x, x2, w, bias, A, B, scale, p, seed, T, inF, outF, r);
  // 1. base: y = x·Wᵀ (+ b)
  Tensor y = Tensor::empty({T, outF}, cd);
  base_gemm(T, outF, inF, op_of(x2, false), w, true, y.raw(), cd, outF, 1.0, 0.0);
  if (bias.defined()) {
    Tensor bc = bias.to(cd).contiguous();
    dispatch_fp(cd, [&](auto tag) {
      using V = decltype(tag);
      V* py = y.data<V>(); const V* pb = bc.data<V>();
      parallel_for(0, T, std::max<int64_t>(1, 65536 / std::max<int64_t>(outF, 1)), [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; t++) for (int64_t j = 0; j < outF; j++) py[t * outF + j] += pb[j];
      });
      return 0;
    });
  }
  // PyTorch rounds the base result to a half-precision x's dtype before adding the f32 LoRA term
  // (bf16: in forward_bf16's epilogue).
  if (!f64 && x.dtype() == DType::F16) round_to_f16(y.data<float>(), y.numel());

  // 2. dropout (same Philox stream as pk::dropout_forward)
  Tensor xin = x2;
  if (p > 0) {
    Tensor m2 = dropout_mask(T * inF, p, seed).view({T, inF});
    xin = f64 ? dropped<double>(x2, m2, p) : dropped<float>(x2, m2, p);
    res.mask = m2.view(x.shape());
  }

  // 3. xa = drop(x)·Aᵀ (T×r), then y += s·xa·Bᵀ (accumulated into the same output)
  Tensor xa = Tensor::empty({T, r}, cd);
  mm(T, r, inF, op_of(xin, false), op_of(A, true), xa.raw(), cd, r, 1.0, 0.0);
  Shape os = lead; os.push_back(outF);
  mm(T, outF, r, Op{xa.raw(), cd, r, 1}, op_of(B, true), y.raw(), cd, outF, scale, 1.0);
  res.y = y.view(os).to(f64 ? DType::F64 : x.dtype());
  res.xa = xa;
  return res;
}

LoraBackward lora_linear_backward(const Tensor& dy, const Tensor& x, const Tensor& mask, const LoraBaseWeight& w,
                                  const Tensor& A, const Tensor& B, const Tensor& xa, double scale, double p,
                                  bool need_dx, bool need_dA, bool need_dB) {
  if (any_cuda(dy, x, w.weight, A, B) || (w.q4 && any_cuda(w.q4->packed))) return cuda_fn(&CudaOps::lora_linear_backward, "lora_linear_backward")(dy, x, mask, w, A, B, xa, scale, p, need_dx, need_dA, need_dB);
  const char* op = "lora_linear_backward";
  int64_t inF, outF, r;
  check_inputs(x, w, A, B, op, &inF, &outF, &r);
  check_float(dy, op, "grad");
  PK_CHECK(dy.dim() >= 1 && dy.size(-1) == outF, op, ": grad ", dy.desc(), " must end in ", outF);
  const bool f64 = all_f64({&x, &w.weight, &A, &B});
  const DType cd = f64 ? DType::F64 : DType::F32;
  const int64_t T = x.numel() / std::max<int64_t>(inF, 1);
  PK_CHECK(dy.numel() / std::max<int64_t>(outF, 1) == T, op, ": grad ", dy.desc(), " and input ", x.desc(),
           " have different leading dims");
  PK_CHECK(xa.defined() && xa.dim() == 2 && xa.size(0) == T && xa.size(1) == r && xa.dtype() == cd, op,
           ": saved low-rank activations ", xa.desc(), " must be [", T, ", ", r, "] ", dtype_name(cd));
  if (p > 0) PK_CHECK(mask.defined() && mask.numel() == x.numel() && mask.dtype() == DType::U8, op, ": dropout mask missing");
  Tensor g2 = dy.reshape({T, outF});
  if (f64) g2 = g2.to(DType::F64);
  Tensor x2 = x.reshape({T, inF});
  const Op G = op_of(g2, false);
  LoraBackward res;

  if (need_dB) {  // dB = s·dYᵀ·xa  (out×r)
    Tensor dB = Tensor::empty({outF, r}, cd);
    mm(outF, r, T, op_of(g2, true), Op{xa.raw(), cd, r, 1}, dB.raw(), cd, r, scale, 0.0);
    res.dB = dB.to(f64 ? DType::F64 : B.dtype());
  }
  Tensor gb;
  if (need_dA || need_dx) {  // gb = dY·B  (T×r)
    gb = Tensor::empty({T, r}, cd);
    mm(T, r, outF, G, op_of(B, false), gb.raw(), cd, r, 1.0, 0.0);
  }
  Tensor mask2 = p > 0 ? mask.reshape({T, inF}) : Tensor();
  if (need_dA) {  // dA = s·gbᵀ·drop(x)  (r×in)
    Tensor xin = x2;
    if (p > 0) xin = f64 ? dropped<double>(x2, mask2, p) : dropped<float>(x2, mask2, p);
    Tensor dA = Tensor::empty({r, inF}, cd);
    mm(r, inF, T, Op{gb.raw(), cd, 1, r}, op_of(xin, false), dA.raw(), cd, inF, scale, 0.0);
    res.dA = dA.to(f64 ? DType::F64 : A.dtype());
  }
  if (need_dx && p == 0 && !f64 && x.dtype() == DType::BF16) {
    // bf16: one GEMM whose epilogue adds s·gb·A and writes bf16 (no T×in f32 buffer)
    Tensor dxb = Tensor::empty(x.shape(), DType::BF16);
    Tensor Ar = low_rank_rows(A, false);   // (r, in)
    Bf16Epilogue e;
    e.out = dxb.data<uint16_t>(); e.ldo = inF;
    e.r = r; e.L = gb.data<float>(); e.ldl = r; e.R = Ar.data<float>(); e.ldr = inF; e.alpha_lr = (float)scale;
    const GemmOperand GA = gemm_operand(G);
    if (w.q4) gemm_4bit_bf16_out(T, GA, *w.q4, false, e, 0, base_compute(g2.dtype(), w));
    else gemm_bf16_out(T, inF, outF, GA, gemm_operand(weight_op(w, false)), e, 0, base_compute(g2.dtype(), w));
    res.dx = dxb;
    return res;
  }
  if (need_dx) {  // dX = dY·W (frozen: never dW) + drop'(s·gb·A)
    Tensor dx = Tensor::empty({T, inF}, cd);
    base_gemm(T, inF, outF, G, w, false, dx.raw(), cd, inF, 1.0, 0.0);
    if (p == 0) {
      mm(T, inF, r, Op{gb.raw(), cd, r, 1}, op_of(A, false), dx.raw(), cd, inF, scale, 1.0);
    } else {
      Tensor tmp = Tensor::empty({T, inF}, cd);
      mm(T, inF, r, Op{gb.raw(), cd, r, 1}, op_of(A, false), tmp.raw(), cd, inF, scale, 0.0);
      Tensor mk = mask2.contiguous();
      const uint8_t* pm = mk.data<uint8_t>();
      dispatch_fp(cd, [&](auto tag) {
        using V = decltype(tag);
        V* pd = dx.data<V>(); const V* pt = tmp.data<V>();
        V inv = (V)(1.0 / (1.0 - p));
        parallel_for(0, T * inF, 1 << 16, [&](int64_t i0, int64_t i1) {
          for (int64_t i = i0; i < i1; i++) if (pm[i]) pd[i] += pt[i] * inv;
        });
        return 0;
      });
    }
    res.dx = dx.view(x.shape()).to(f64 ? DType::F64 : x.dtype());
  }
  return res;
}

}  // namespace pk
