// softmax.h — softmax / log_softmax over any dim, and their backward twins.
//
// Forward: y = softmax(x, dim) or log_softmax(x, dim), in x's dtype, computed in f32 (f64 for
// f64) with max subtraction so large logits never overflow. Backward twins take the forward
// OUTPUT y (not x): both gradients are cheap functions of y, so autograd saves only y.
//   softmax:      dx = y * (dy - sum(dy * y))
//   log_softmax:  dx = dy - exp(y) * sum(dy)
// x may be any strided view; results are contiguous. A row of all -inf gives NaN (as torch).
#pragma once
#include "core/tensor.h"

namespace pk {

Tensor softmax_forward(const Tensor& x, int64_t dim);
Tensor softmax_backward(const Tensor& y, const Tensor& dy, int64_t dim);
Tensor log_softmax_forward(const Tensor& x, int64_t dim);
Tensor log_softmax_backward(const Tensor& y, const Tensor& dy, int64_t dim);

}  // namespace pk
