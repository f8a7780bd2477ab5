// reduce.h — sum / mean / max over dimensions, and sum_to_shape (the broadcast-gradient reducer).
#pragma once
#include "core/tensor.h"

namespace pk {

// Reduce over `dims` (empty = all). Accumulates in f64 for f32 inputs; result in x's dtype.
Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim);
Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim);
// Max over one dim: values (x's dtype) and indices (i64) of the first maximum. NaN wins.
void max_dim(const Tensor& x, int64_t dim, bool keepdim, Tensor* values, Tensor* indices);
// Sum `g` down to `shape` (undoing NumPy broadcasting): leading dims summed away, size-1 dims kept.
Tensor sum_to_shape(const Tensor& g, const Shape& shape);

}  // namespace pk
