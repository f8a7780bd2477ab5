// matmul.cpp — shape checks, batch broadcasting and dtype handling around gemm_f32/gemm_f64.
// Many small products (attention-sized) are spread over threads one batch each; big ones let
// the GEMM use all threads itself. bf16 x bf16 products (a bf16 model's linears) multiply in bf16
// with f32 accumulation (GemmCompute::Bf16, AVX512-BF16 where the CPU has it), as torch's bf16
// matmul does; every other dtype combination computes in f32, unchanged.
#include "core/dispatch.h"
#include "matmul.h"
#include "cpu_common.h"
#include "elementwise.h"
#include "gemm.h"

namespace pk {

namespace {

bool gemm_dtype(DType d) { return d == DType::F32 || d == DType::BF16 || d == DType::F16; }

// Result dtype: both the same half format -> that format; f64 only with f64; otherwise f32.
DType result_dtype(DType a, DType b, const char* op) {
  PK_CHECK((a == DType::F64) == (b == DType::F64), op, ": f64 operands must both be f64 (got ", dtype_name(a), " and ", dtype_name(b), ")");
  if (a == b) return a;
  return DType::F32;
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b, bool ta, bool tb) {
  if (any_cuda(a, b)) return cuda_fn(&CudaOps::matmul, "matmul")(a, b, ta, tb);
  check_float(a, "matmul", "a"); check_float(b, "matmul", "b");
  check_cpu(a, "matmul", "a"); check_cpu(b, "matmul", "b");
  PK_CHECK(a.dim() >= 2 && b.dim() >= 2, "matmul: operands must be at least 2-d, got ", a.desc(), " and ", b.desc());
  DType rd = result_dtype(a.dtype(), b.dtype(), "matmul");
  Tensor A = ta ? a.transpose(-1, -2) : a, B = tb ? b.transpose(-1, -2) : b;
  int64_t M = A.size(-2), K = A.size(-1), N = B.size(-1);
  PK_CHECK(B.size(-2) == K, "matmul: inner dimensions differ: ", a.desc(), (ta ? "ᵀ" : ""), " · ", b.desc(), (tb ? "ᵀ" : ""),
           " (K ", K, " vs ", B.size(-2), ")");
  Shape ab(A.shape().begin(), A.shape().end() - 2), bb(B.shape().begin(), B.shape().end() - 2);
  Shape batch = broadcast_shapes(ab, bb, "matmul");
  Shape as = batch, bs = batch, os = batch;
  as.push_back(M); as.push_back(K); bs.push_back(K); bs.push_back(N); os.push_back(M); os.push_back(N);
  Tensor Ae = A.expand(as), Be = B.expand(bs);
  int64_t nb = shape_numel(batch);
  DType cd = rd == DType::F64 ? DType::F64 : DType::F32;
  // A bf16 result is written by the GEMM's epilogue, tile by tile (no f32 buffer, no extra pass).
  const bool bf16_out = rd == DType::BF16;
  Tensor out = Tensor::empty(os, bf16_out ? DType::BF16 : cd);
  if (out.numel() == 0) return out.to(rd);
  // Element offsets of each batch slice (expanded views may have stride-0 batch dims).
  std::vector<int64_t> aoff(nb), boff(nb);
  {
    int64_t nd = (int64_t)batch.size();
    std::vector<int64_t> idx(nd, 0);
    for (int64_t i = 0; i < nb; i++) {
      int64_t oa = 0, ob = 0;
      for (int64_t d = 0; d < nd; d++) { oa += idx[d] * Ae.strides()[d]; ob += idx[d] * Be.strides()[d]; }
      aoff[i] = oa; boff[i] = ob;
      for (int64_t d = nd - 1; d >= 0; d--) { if (++idx[d] < batch[d]) break; idx[d] = 0; }
    }
  }
  int64_t ars = Ae.strides()[Ae.dim() - 2], acs = Ae.strides()[Ae.dim() - 1];
  int64_t brs = Be.strides()[Be.dim() - 2], bcs = Be.strides()[Be.dim() - 1];
  if (cd == DType::F64) {
    const double* pa = Ae.data<double>(); const double* pb = Be.data<double>(); double* po = out.data<double>();
    parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t i = b0; i < b1; i++)
        gemm_f64(M, N, K, pa + aoff[i], ars, acs, pb + boff[i], brs, bcs, po + i * M * N, N, 1.0, 0.0);
    });
    return out;
  }
  PK_CHECK(gemm_dtype(a.dtype()) && gemm_dtype(b.dtype()), "matmul: unsupported dtypes ", a.desc(), " and ", b.desc());
  size_t ea = dtype_size(a.dtype()), eb = dtype_size(b.dtype());
  const GemmCompute compute =
      a.dtype() == DType::BF16 && b.dtype() == DType::BF16 ? GemmCompute::Bf16 : GemmCompute::F32;
  float* po = bf16_out ? nullptr : out.data<float>();
  auto one = [&](int64_t i, int nthreads) {
    GemmOperand GA{(const char*)Ae.raw() + aoff[i] * (int64_t)ea, a.dtype(), ars, acs};
    GemmOperand GB{(const char*)Be.raw() + boff[i] * (int64_t)eb, b.dtype(), brs, bcs};
    if (bf16_out) {
      Bf16Epilogue e;
      e.out = out.data<uint16_t>() + i * M * N;
      e.ldo = N;
      gemm_bf16_out(M, N, K, GA, GB, e, nthreads, compute);
    } else {
      gemm_f32(M, N, K, GA, GB, po + i * M * N, N, 1.0f, 0.0f, nthreads, compute);
    }
  };
  double flops = 2.0 * (double)M * (double)N * (double)K;
  if (nb > 1 && flops < 4.0e7) {
    parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) { for (int64_t i = b0; i < b1; i++) one(i, 1); });
  } else {
    for (int64_t i = 0; i < nb; i++) one(i, 0);
  }
  return out.to(rd);
}

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias) {
  if (any_cuda(x, w, bias)) return cuda_fn(&CudaOps::linear, "linear")(x, w, bias);
  check_float(x, "linear", "x"); check_float(w, "linear", "weight");
  PK_CHECK(w.dim() == 2, "linear: weight must be 2-d (out, in), got ", w.desc());
  PK_CHECK(x.dim() >= 1 && x.size(-1) == w.size(1), "linear: input ", x.desc(), " does not match weight ", w.desc(),
           " (in_features ", w.size(1), ")");
  Shape lead(x.shape().begin(), x.shape().end() - 1);
  int64_t rows = shape_numel(lead);
  Tensor x2 = x.reshape({rows, x.size(-1)});
  Tensor y = matmul(x2, w, false, true);
  if (bias.defined()) {
    check_float(bias, "linear", "bias");
    PK_CHECK(bias.dim() == 1 && bias.size(0) == w.size(0), "linear: bias ", bias.desc(), " must be (", w.size(0), ")");
    y = binary_forward(BinaryOp::Add, y, bias);
  }
  Shape os = lead; os.push_back(w.size(0));
  return y.view(os);
}

Tensor linear_weight_grad(const Tensor& dy, const Tensor& x, const Tensor& acc) {
  if (any_cuda(dy, x, acc)) return cuda_fn(&CudaOps::linear_weight_grad, "linear_weight_grad")(dy, x, acc);
  check_float(dy, "linear_weight_grad", "grad"); check_float(x, "linear_weight_grad", "x");
  PK_CHECK(dy.dim() >= 1 && x.dim() >= 1, "linear_weight_grad: bad ranks ", dy.desc(), ", ", x.desc());
  int64_t out = dy.size(-1), in = x.size(-1);
  int64_t rows = dy.numel() / std::max<int64_t>(out, 1);
  PK_CHECK(x.numel() / std::max<int64_t>(in, 1) == rows, "linear_weight_grad: grad ", dy.desc(), " and input ", x.desc(), " have different leading dims");
  Tensor g = matmul(dy.reshape({rows, out}), x.reshape({rows, in}), true, false);  // (out, in)
  if (acc.defined()) {
    PK_CHECK(acc.shape() == g.shape(), "linear_weight_grad: accumulator ", acc.desc(), " must be ", g.desc());
    g = binary_forward(BinaryOp::Add, acc, g);
  }
  return g;
}

}  // namespace pk
