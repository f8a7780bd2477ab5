// row_io.h — strided row I/O shared by the row-at-a-time kernels (softmax, norms, RoPE,
// embedding, cross-entropy): a worker widens one row (the run of elements along a dim, any
// stride, any float dtype) into a private f32/f64 buffer, computes there, and narrows back with
// round-to-nearest-even. These scalar loops serve the f64 / fallback paths; the vector row
// kernels (row_kernels.h) read rows in place and only need contiguous_run for strided ones.
#pragma once
#include <cstring>
#include <vector>

#include "core/tensor.h"

namespace pk {
namespace rowio {

// Widen n elements of a strided run (any float dtype) into T, and narrow T back with RNE.
template <class S, class T, class C> inline void load_run(const S* s, int64_t n, int64_t st, T* out, C cvt) {
  if (st == 1) for (int64_t i = 0; i < n; i++) out[i] = (T)cvt(s[i]);
  else for (int64_t i = 0; i < n; i++) out[i] = (T)cvt(s[i * st]);
}
template <class T> void load_row(const char* p, DType dt, int64_t n, int64_t st, T* out) {
  switch (dt) {
    case DType::F32: load_run((const float*)p, n, st, out, [](float v) { return v; }); break;
    case DType::F64: load_run((const double*)p, n, st, out, [](double v) { return v; }); break;
    case DType::BF16: load_run((const uint16_t*)p, n, st, out, [](uint16_t v) { return bf16_to_f32(v); }); break;
    case DType::F16: load_run((const uint16_t*)p, n, st, out, [](uint16_t v) { return f16_to_f32(v); }); break;
    default: fail("load_row: ", dtype_name(dt), " is not a float dtype");
  }
}
template <class D, class T, class C> inline void store_run(const T* in, int64_t n, int64_t st, D* d, C cvt) {
  if (st == 1) for (int64_t i = 0; i < n; i++) d[i] = cvt(in[i]);
  else for (int64_t i = 0; i < n; i++) d[i * st] = cvt(in[i]);
}
template <class T> void store_row(const T* in, char* p, DType dt, int64_t n, int64_t st) {
  switch (dt) {
    case DType::F32: store_run(in, n, st, (float*)p, [](T v) { return (float)v; }); break;
    case DType::F64: store_run(in, n, st, (double*)p, [](T v) { return (double)v; }); break;
    case DType::BF16: store_run(in, n, st, (uint16_t*)p, [](T v) { return f32_to_bf16((float)v); }); break;
    case DType::F16: store_run(in, n, st, (uint16_t*)p, [](T v) { return f32_to_f16((float)v); }); break;
    default: fail("store_row: ", dtype_name(dt), " is not a float dtype");
  }
}
// Element offset of row r of t, where a "row" runs along `dim` and all other dims enumerate rows
// in C order. Works for any strides (transposes, narrows, expands).
inline int64_t row_offset(int64_t r, const Tensor& t, int64_t dim) {
  int64_t off = 0;
  for (int64_t d = t.dim() - 1; d >= 0; d--) {
    if (d == dim) continue;
    int64_t n = t.shape()[d];
    off += (r % n) * t.strides()[d];
    r /= n;
  }
  return off;
}
inline char* elem_ptr(const Tensor& t, int64_t off) { return (char*)t.raw() + off * (int64_t)dtype_size(t.dtype()); }

// n elements of t's dtype starting at element offset `off`, `st` elements apart, as one contiguous
// run: a pointer into t when st == 1, else the elements copied (bit for bit, same dtype) into
// `scratch`. Lets the vector row kernels see strided and contiguous rows the same way.
inline const void* contiguous_run(const Tensor& t, int64_t off, int64_t n, int64_t st, std::vector<char>& scratch) {
  const char* p = elem_ptr(t, off);
  if (st == 1) return p;
  const size_t es = dtype_size(t.dtype());
  scratch.resize((size_t)n * es);
  for (int64_t i = 0; i < n; i++) std::memcpy(scratch.data() + i * es, p + i * st * (int64_t)es, es);
  return scratch.data();
}

}  // namespace rowio
using rowio::contiguous_run;
using rowio::elem_ptr;
using rowio::load_row;
using rowio::row_offset;
using rowio::store_row;
}  // namespace pk
