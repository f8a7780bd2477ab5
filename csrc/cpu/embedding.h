// embedding.h — token embedding lookup and its gradient.
//
// Forward: out (..., C) = weight (V, C)[ids (...)], in weight's dtype (a pure row copy, so bf16
// weights give bf16 rows bit-for-bit). ids are i64 or i32 of any shape; every id is checked
// against [0, V) before anything is read (the error names the offending id, its position and V).
// Backward: dW (V, C) = scatter-add of dy rows into the rows named by ids, accumulated in f32
// (f64 for f64 dy). Deterministic and parallel without atomics: threads own disjoint column
// ranges and each walks the tokens in order, so the sum order per element is fixed.
#pragma once
#include "core/tensor.h"

namespace pk {

Tensor embedding_forward(const Tensor& weight, const Tensor& ids);
Tensor embedding_backward(const Tensor& dy, const Tensor& ids, int64_t V);

}  // namespace pk
