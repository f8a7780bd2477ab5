// elementwise.h — broadcasting binary ops, unary math/activations and their backward twins,
// scalar ops, comparisons, where/masked_fill, clamp.
//
// Forward: out = f(x) (or f(a, b) with NumPy broadcasting). Backward twins take the forward's
// input x (and output y where cheaper) and the upstream gradient dy and return dx; broadcast
// reductions of binary-op gradients are done by sum_to_shape (reduce.h).
#pragma once
#include "core/tensor.h"

namespace pk {

enum class BinaryOp : int { Add = 0, Sub, Mul, Div, Pow, Maximum, Minimum };
enum class CompareOp : int { Eq = 0, Ne, Lt, Le, Gt, Ge };
enum class UnaryOp : int {
  Neg = 0, Exp, Log, Sqrt, Rsqrt, Abs, Sigmoid, Tanh, Silu, Gelu, GeluTanh, Relu, Sin, Cos, Square,
  Reciprocal, Sign, Log1p, Expm1
};

Tensor binary_forward(BinaryOp op, const Tensor& a, const Tensor& b);
// Gradients of a binary op w.r.t. a and b at the broadcast output shape (caller reduces to
// the inputs' shapes with sum_to_shape). Either may be skipped with need_a / need_b.
void binary_backward(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& dy, bool need_a, bool need_b,
                     Tensor* da, Tensor* db);

// x (op) s, or s (op) x when `scalar_first`.
Tensor scalar_forward(BinaryOp op, const Tensor& x, double s, bool scalar_first);
Tensor scalar_backward(BinaryOp op, const Tensor& x, double s, bool scalar_first, const Tensor& dy);

Tensor unary_forward(UnaryOp op, const Tensor& x);
// y is the forward output (used by exp, sqrt, rsqrt, sigmoid, tanh, reciprocal; may be undefined otherwise).
Tensor unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& dy);

Tensor compare(CompareOp op, const Tensor& a, const Tensor& b);          // u8 result, broadcasting
Tensor compare_scalar(CompareOp op, const Tensor& a, double s);
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);      // cond u8; broadcasting
Tensor masked_fill(const Tensor& x, const Tensor& mask, double value);   // mask u8, broadcast to x
Tensor clamp(const Tensor& x, double lo, double hi);
Tensor clamp_backward(const Tensor& x, double lo, double hi, const Tensor& dy);

}  // namespace pk
