// index.h — gather / scatter_add / index_select / index_add / cat: the indexing op family.
// Every index is bounds-checked before any memory is touched.
#pragma once
#include "core/tensor.h"

namespace pk {

// out[..., i, ...] = x[..., idx[..., i, ...], ...] along `dim`; idx (i64/i32) has x's rank.
Tensor gather(const Tensor& x, int64_t dim, const Tensor& idx);
// zeros(shape) then out[..idx..] += src along `dim` (the backward of gather).
Tensor scatter_add(const Shape& shape, int64_t dim, const Tensor& idx, const Tensor& src);
// Select whole slices: out = x.index_select(dim, idx) with a 1-d idx.
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& idx);
// zeros(shape) then out.index_add_(dim, idx, src) (the backward of index_select).
Tensor index_add(const Shape& shape, int64_t dim, const Tensor& idx, const Tensor& src);
// Concatenate along dim (all the same dtype; shapes equal except on dim).
Tensor cat(const std::vector<Tensor>& xs, int64_t dim);

// Validate an index tensor: integer dtype, every value in [0, bound). Returns it as contiguous i64.
Tensor checked_indices(const Tensor& idx, int64_t bound, const char* op, const char* arg);

}  // namespace pk
