// ops.cpp (emulator) — ops.h's elementwise, reduction and matrix-product twins: the device rules
// of elementwise.cu / reduce.cu / gemm.cu (0-d CPU scalars mix with cuda tensors in elementwise
// ops and reductions; matmul/linear take cuda tensors only), then the CPU op via emu_call.
#include "cpu/elementwise.h"
#include "cpu/matmul.h"
#include "cpu/reduce.h"
#include "cuda/ops.h"
#include "emu.h"

namespace pk {
namespace cuda {

using emu::emu_call;

namespace {

const char* bin_name(BinaryOp op) {
  static const char* n[] = {"add", "sub", "mul", "div", "pow", "maximum", "minimum"};
  int i = (int)op;
  return i >= 0 && i < 7 ? n[i] : "binary";
}

// elementwise.cu: the ops whose backward reads the forward output.
bool needs_y(UnaryOp op) {
  return op == UnaryOp::Exp || op == UnaryOp::Sqrt || op == UnaryOp::Rsqrt || op == UnaryOp::Sigmoid ||
         op == UnaryOp::Tanh || op == UnaryOp::Reciprocal || op == UnaryOp::Expm1;
}

// gemm.cu's `checked`: on cuda and floating.
Tensor gemm_arg(const Tensor& t, const char* op, const char* arg) {
  check_cuda(t, op, arg);
  check_float(t, op, arg);
  return t;
}

}  // namespace

// ---- elementwise ----
Tensor binary_forward(BinaryOp op, const Tensor& a, const Tensor& b) {
  const char* n = bin_name(op);
  return emu_call(pk::binary_forward, op, on_cuda(a, n, "a"), on_cuda(b, n, "b"));
}

void binary_backward(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& dy, bool need_a, bool need_b,
                     Tensor* da, Tensor* db) {
  const char* n = bin_name(op);
  emu_call(pk::binary_backward, op, on_cuda(a, n, "a"), on_cuda(b, n, "b"), on_cuda(dy, n, "grad"), need_a, need_b, da, db);
}

Tensor scalar_forward(BinaryOp op, const Tensor& x, double s, bool scalar_first) {
  return emu_call(pk::scalar_forward, op, on_cuda(x, bin_name(op), "x"), s, scalar_first);
}

Tensor scalar_backward(BinaryOp op, const Tensor& x, double s, bool scalar_first, const Tensor& dy) {
  const char* n = bin_name(op);
  return emu_call(pk::scalar_backward, op, on_cuda(x, n, "x"), s, scalar_first, on_cuda(dy, n, "grad"));
}

Tensor unary_forward(UnaryOp op, const Tensor& x) { return emu_call(pk::unary_forward, op, on_cuda(x, "unary", "x")); }

Tensor unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& dy) {
  Tensor xc = on_cuda(x, "unary_backward", "x"), dyc = on_cuda(dy, "unary_backward", "grad");
  // y is read only by the ops that need it (elsewhere the real backend ignores it, wherever it is)
  Tensor yc = needs_y(op) && y.defined() ? on_cuda(y, "unary_backward", "y") : Tensor();
  return emu_call(pk::unary_backward, op, xc, yc, dyc);
}

Tensor clamp(const Tensor& x, double lo, double hi) { return emu_call(pk::clamp, on_cuda(x, "clamp", "x"), lo, hi); }

Tensor clamp_backward(const Tensor& x, double lo, double hi, const Tensor& dy) {
  return emu_call(pk::clamp_backward, on_cuda(x, "clamp_backward", "x"), lo, hi, on_cuda(dy, "clamp_backward", "grad"));
}

// ---- reductions ----
Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  return emu_call(pk::sum, on_cuda(x, "sum", "x"), dims, keepdim);
}

Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  return emu_call(pk::mean, on_cuda(x, "mean", "x"), dims, keepdim);
}

Tensor sum_to_shape(const Tensor& g, const Shape& shape) {
  return emu_call(pk::sum_to_shape, on_cuda(g, "sum_to_shape", "grad"), shape);
}

void max_dim(const Tensor& x, int64_t dim, bool keepdim, Tensor* values, Tensor* indices) {
  emu_call(pk::max_dim, on_cuda(x, "max", "x"), dim, keepdim, values, indices);
}

// ---- matrix products ----
Tensor matmul(const Tensor& a, const Tensor& b, bool ta, bool tb) {
  return emu_call(pk::matmul, gemm_arg(a, "matmul", "a"), gemm_arg(b, "matmul", "b"), ta, tb);
}

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias) {
  Tensor xc = gemm_arg(x, "linear", "x"), wc = gemm_arg(w, "linear", "weight");
  Tensor bc = bias.defined() ? gemm_arg(bias, "linear", "bias") : bias;
  return emu_call(pk::linear, xc, wc, bc);
}

Tensor linear_weight_grad(const Tensor& dy, const Tensor& x, const Tensor& acc) {
  Tensor dyc = gemm_arg(dy, "linear_weight_grad", "grad"), xc = gemm_arg(x, "linear_weight_grad", "x");
  Tensor ac = acc.defined() ? gemm_arg(acc, "linear_weight_grad", "accumulator") : acc;
  return emu_call(pk::linear_weight_grad, dyc, xc, ac);
}

}  // namespace cuda
}  // namespace pk
