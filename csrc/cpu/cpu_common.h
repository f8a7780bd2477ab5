// cpu_common.h — shared helpers for CPU kernels: compute dtypes, broadcasting, row iteration.
//
// Storage formats bf16/f16 are widened to f32 at the op boundary and narrowed on the way out;
// f64 runs natively (gradient checks). Kernels are templated on the compute type T (float/double).
#pragma once
#include <algorithm>
#include <cmath>
#include <functional>
#include "core/parallel.h"
#include "core/tensor.h"

namespace pk {

inline DType compute_dtype(DType d) { return d == DType::F64 ? DType::F64 : DType::F32; }

// A contiguous tensor in the compute dtype (no copy when already so).
inline Tensor to_compute(const Tensor& t) { return t.to(compute_dtype(t.dtype())).contiguous(); }

// Call f(T{}) with T = double for f64 and float for every other float dtype.
template <class F> inline auto dispatch_fp(DType d, F&& f) {
  if (d == DType::F64) return f(double{});
  return f(float{});
}

// Result dtype of a binary op: the wider float format (f64 > f32 > bf16/f16); mixing bf16 and
// f16 gives f32, as in PyTorch's promotion.
inline DType promote(DType a, DType b) {
  if (a == b) return a;
  if (a == DType::F64 || b == DType::F64) return DType::F64;
  return DType::F32;
}

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);


// Simpler: run body(offsets, n_inner) for each row; offsets[k] is operand k's element offset.
void strided_rows(const Shape& shape, const std::vector<Shape>& strides, int64_t grain_elems,
                  const std::function<void(const int64_t* offsets, int64_t inner)>& body);

}  // namespace pk
