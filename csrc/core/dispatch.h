// dispatch.h — how CPU-op entry points reach the CUDA backend without depending on it.
//
// The CUDA backend (csrc/cuda, a separate static library linked into the addon only when
// PEFTKIT_WITH_CUDA) fills this table of function pointers from a static initialiser, exactly as
// it installs cuda_allocator(). CPU code never links against CUDA symbols, so peftkit_core and the
// native C++ tests build and link the same with or without CUDA, and no #ifdef is needed at the
// call sites. An entry point branches at its top:
//
//   Tensor binary_forward(BinaryOp op, const Tensor& a, const Tensor& b) {
//     if (any_cuda(a, b)) return cuda_fn(&CudaOps::binary_forward, "add")(op, a, b);
//     ...CPU path...
//
// Without the backend cuda_fn throws "<op>: tensors on 'cuda' need a peftkit build with the CUDA
// backend ...", a clear JS error, never a crash.
#pragma once
#include <vector>
#include "tensor.h"

namespace pk {

// Opaque declarations: the enums are defined in cpu/elementwise.h (same underlying type).
enum class BinaryOp : int;
enum class UnaryOp : int;

struct CudaOps {
  // ---- copies ----
  Tensor (*to_device)(const Tensor& t, Device d) = nullptr;          // whole-tensor host<->device copy
  void (*copy_into)(const Tensor& dst, const Tensor& src) = nullptr;  // any strides/dtypes; devices may differ
  Tensor (*clone)(const Tensor& t) = nullptr;                          // contiguous copy on t's device
  Tensor (*cast)(const Tensor& t, DType dt) = nullptr;                 // returns t when already dt
  Tensor (*zeros)(const Shape& shape, DType dt) = nullptr;
  Tensor (*full)(const Shape& shape, double value, DType dt) = nullptr;
  // ---- elementwise (cpu/elementwise.h twins) ----
  Tensor (*binary_forward)(BinaryOp op, const Tensor& a, const Tensor& b) = nullptr;
  void (*binary_backward)(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& dy, bool need_a, bool need_b,
                          Tensor* da, Tensor* db) = nullptr;
  Tensor (*scalar_forward)(BinaryOp op, const Tensor& x, double s, bool scalar_first) = nullptr;
  Tensor (*scalar_backward)(BinaryOp op, const Tensor& x, double s, bool scalar_first, const Tensor& dy) = nullptr;
  Tensor (*unary_forward)(UnaryOp op, const Tensor& x) = nullptr;
  Tensor (*unary_backward)(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& dy) = nullptr;
  Tensor (*clamp)(const Tensor& x, double lo, double hi) = nullptr;
  Tensor (*clamp_backward)(const Tensor& x, double lo, double hi, const Tensor& dy) = nullptr;
  // ---- reductions (cpu/reduce.h twins) ----
  Tensor (*sum)(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) = nullptr;
  Tensor (*mean)(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) = nullptr;
  Tensor (*sum_to_shape)(const Tensor& g, const Shape& shape) = nullptr;
  // ---- matmul (cpu/matmul.h twins; cuBLASLt) ----
  Tensor (*matmul)(const Tensor& a, const Tensor& b, bool ta, bool tb) = nullptr;
  Tensor (*linear)(const Tensor& x, const Tensor& w, const Tensor& bias) = nullptr;
  Tensor (*linear_weight_grad)(const Tensor& dy, const Tensor& x, const Tensor& acc) = nullptr;
};

// The one table (an inline function's static: a single instance across the linked libraries).
inline CudaOps& cuda_ops() {
  static CudaOps table;
  return table;
}

// True when any defined argument lives on the GPU.
inline bool any_cuda() { return false; }
template <class... R> inline bool any_cuda(const Tensor& t, const R&... rest) {
  return (t.defined() && t.device() == Device::CUDA) || any_cuda(rest...);
}

// The CUDA implementation of `member`, or a clear error naming `op` when this build has none.
template <class Fn> inline Fn cuda_fn(Fn CudaOps::*member, const char* op) {
  Fn f = cuda_ops().*member;
  if (!f) fail(op, ": tensors on 'cuda' need a peftkit build with the CUDA backend; this addon was built without CUDA "
               "(rebuild with PEFTKIT_CUDA=ON on a machine with the CUDA toolkit and cuBLASLt)");
  return f;
}

}  // namespace pk
