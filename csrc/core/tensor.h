// tensor.h — the n-d tensor: shape, strides (in elements), offset, dtype, device, shared storage.
//
// Views (reshape of contiguous data, transpose, permute, narrow/slice, expand, squeeze/unsqueeze)
// share storage and never copy; contiguous() copies only when the layout requires it.
// Kernels in csrc/cpu take Tensors, validate them with the helpers below and read data<T>().
#pragma once
#include <memory>
#include <string>
#include <vector>
#include "dtype.h"
#include "error.h"
#include "storage.h"

namespace pk {

using Shape = std::vector<int64_t>;

int64_t shape_numel(const Shape& s);
Shape contiguous_strides(const Shape& s);

class Tensor {
 public:
  Tensor() = default;
  Tensor(std::shared_ptr<Storage> st, Shape shape, Shape strides, int64_t offset, DType dt);

  static Tensor empty(const Shape& shape, DType dt, Device dev = Device::CPU);
  static Tensor zeros(const Shape& shape, DType dt, Device dev = Device::CPU);
  static Tensor full(const Shape& shape, double value, DType dt);   // CPU only
  static Tensor scalar(double value, DType dt);                     // 0-d tensor

  bool defined() const { return (bool)storage_; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int64_t offset() const { return offset_; }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device() : Device::CPU; }
  int64_t dim() const { return (int64_t)shape_.size(); }
  int64_t numel() const { return shape_numel(shape_); }
  int64_t size(int64_t d) const;            // negative d counts from the end
  size_t nbytes() const { return (size_t)numel() * dtype_size(dtype_); }
  const std::shared_ptr<Storage>& storage() const { return storage_; }
  bool is_contiguous() const;

  void* raw() const { return static_cast<char*>(storage_->data()) + offset_ * (int64_t)dtype_size(dtype_); }
  template <class T> T* data() const { return reinterpret_cast<T*>(raw()); }

  // ---- views (no copy) ----
  Tensor view(const Shape& shape) const;            // requires a compatible (contiguous) layout
  Tensor reshape(const Shape& shape) const;         // view when possible, else copy
  Tensor transpose(int64_t a, int64_t b) const;
  Tensor permute(const std::vector<int64_t>& order) const;
  Tensor narrow(int64_t d, int64_t start, int64_t length) const;
  Tensor slice(int64_t d, int64_t start, int64_t end, int64_t step = 1) const;
  Tensor expand(const Shape& shape) const;          // broadcast size-1 dims (stride 0)
  Tensor unsqueeze(int64_t d) const;
  Tensor squeeze(int64_t d) const;

  // ---- copies ----
  Tensor contiguous() const;
  Tensor clone() const;
  Tensor to(DType dt) const;                        // cast (returns *this when already dt)

  std::string desc() const;                         // e.g. "f32[2,3]"

 private:
  std::shared_ptr<Storage> storage_;
  Shape shape_, strides_;
  int64_t offset_ = 0;
  DType dtype_ = DType::F32;
};

// Copy src into dst (same shape, any strides, any dtypes: converts). CPU only.
void copy_into(const Tensor& dst, const Tensor& src);

// Normalise a possibly-negative dim, throwing "<op>: dim d out of range for <desc>".
int64_t wrap_dim(int64_t d, int64_t ndim, const char* op);

// Common validation helpers; each throws a pk::Error naming the op.
void check_defined(const Tensor& t, const char* op, const char* arg);
void check_float(const Tensor& t, const char* op, const char* arg);
void check_dtype(const Tensor& t, DType dt, const char* op, const char* arg);
void check_same_dtype(const Tensor& a, const Tensor& b, const char* op);
void check_cpu(const Tensor& t, const char* op, const char* arg);
void check_dim(const Tensor& t, int64_t ndim, const char* op, const char* arg);

// Read/write one element as double, whatever the dtype (slow path, for small helpers and tests).
double load_as_double(const void* p, DType dt);
void store_from_double(void* p, DType dt, double v);

}  // namespace pk
