// ops.h — CUDA twins of the CPU ops: the same signatures as csrc/cpu/{elementwise,reduce,matmul}.h
// and the Tensor copy helpers, in namespace pk::cuda. Plain C++ header (no CUDA types).
//
// Semantics follow the CPU ops exactly: bf16/f16 are storage formats widened to f32 for the math
// (f64 stays f64), results are narrowed back to the same dtype the CPU op returns, and the same
// checks run first with the same messages. Inputs must be on the GPU; a 0-d CPU tensor is
// accepted as a scalar operand (copied over), like PyTorch.
#pragma once
#include <vector>
#include "core/tensor.h"
#include "cpu/elementwise.h"

namespace pk {
namespace cuda {

// ---- copies, casts, fills (copy.cu) ----
void copy_into(const Tensor& dst, const Tensor& src);   // same shape; any strides/dtypes; src may be on the CPU
Tensor contiguous(const Tensor& t);                      // t itself when already contiguous
Tensor clone(const Tensor& t);
Tensor cast(const Tensor& t, DType dt);                  // t itself when already dt
void fill(const Tensor& t, double value);                // in place, any strides
Tensor zeros(const Shape& shape, DType dt);
Tensor full(const Shape& shape, double value, DType dt);
// A view when the layout allows, else a contiguous copy (Tensor::reshape is CPU-only for copies).
Tensor reshape(const Tensor& t, const Shape& shape);

// ---- elementwise (elementwise.cu) ----
Tensor binary_forward(BinaryOp op, const Tensor& a, const Tensor& b);
void binary_backward(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& dy, bool need_a, bool need_b,
                     Tensor* da, Tensor* db);
Tensor scalar_forward(BinaryOp op, const Tensor& x, double s, bool scalar_first);
Tensor scalar_backward(BinaryOp op, const Tensor& x, double s, bool scalar_first, const Tensor& dy);
Tensor unary_forward(UnaryOp op, const Tensor& x);
Tensor unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& dy);
Tensor clamp(const Tensor& x, double lo, double hi);
Tensor clamp_backward(const Tensor& x, double lo, double hi, const Tensor& dy);

// ---- reductions (reduce.cu); f64 accumulation, like the CPU ----
Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim);
Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim);
Tensor sum_to_shape(const Tensor& g, const Shape& shape);
// Values in x's dtype and i64 indices; the CPU's order (first NaN, else first maximum).
void max_dim(const Tensor& x, int64_t dim, bool keepdim, Tensor* values, Tensor* indices);

// ---- matrix products (gemm.cu, cuBLASLt; f32 accumulation) ----
Tensor matmul(const Tensor& a, const Tensor& b, bool ta = false, bool tb = false);
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias);
Tensor linear_weight_grad(const Tensor& dy, const Tensor& x, const Tensor& acc);
// Whether this build has cuBLASLt (gemm.cu compiled against it).
bool have_cublaslt();

}  // namespace cuda
}  // namespace pk
