// tensor.cpp — views, the strided copy/cast kernel, and validation helpers.
#include "dispatch.h"
#include "tensor.h"
#include "parallel.h"
#include <algorithm>
#include <cmath>
#include <cstring>

namespace pk {

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& s) {
  Shape st(s.size());
  int64_t acc = 1;
  for (int64_t i = (int64_t)s.size() - 1; i >= 0; i--) { st[i] = acc; acc *= std::max<int64_t>(s[i], 1); }
  return st;
}

Tensor::Tensor(std::shared_ptr<Storage> st, Shape shape, Shape strides, int64_t offset, DType dt)
    : storage_(std::move(st)), shape_(std::move(shape)), strides_(std::move(strides)), offset_(offset), dtype_(dt) {}

static void check_shape(const Shape& shape, const char* op) {
  for (auto d : shape) PK_CHECK(d >= 0, op, ": negative dimension in shape ", shape_str(shape));
  // guard against overflow: numel * 8 must fit in int64
  long double n = 1;
  for (auto d : shape) n *= (long double)d;
  PK_CHECK(n < 9.2e17L, op, ": shape ", shape_str(shape), " is too large");
}

Tensor Tensor::empty(const Shape& shape, DType dt, Device dev) {
  check_shape(shape, "empty");
  size_t bytes = (size_t)shape_numel(shape) * dtype_size(dt);
  return Tensor(Storage::allocate(bytes, dev, false), shape, contiguous_strides(shape), 0, dt);
}

Tensor Tensor::zeros(const Shape& shape, DType dt, Device dev) {
  check_shape(shape, "zeros");
  if (dev == Device::CUDA) return cuda_fn(&CudaOps::zeros, "zeros")(shape, dt);
  size_t bytes = (size_t)shape_numel(shape) * dtype_size(dt);
  return Tensor(Storage::allocate(bytes, dev, true), shape, contiguous_strides(shape), 0, dt);
}

Tensor Tensor::full(const Shape& shape, double value, DType dt) {
  Tensor t = empty(shape, dt);
  int64_t n = t.numel();
  if (dt == DType::F32) { float v = (float)value; float* p = t.data<float>(); std::fill(p, p + n, v); }
  else for (int64_t i = 0; i < n; i++) store_from_double((char*)t.raw() + i * dtype_size(dt), dt, value);
  return t;
}

Tensor Tensor::scalar(double value, DType dt) { return full({}, value, dt); }

int64_t wrap_dim(int64_t d, int64_t ndim, const char* op) {
  int64_t n = ndim == 0 ? 1 : ndim;
  PK_CHECK(d >= -n && d < n, op, ": dim ", d, " out of range for a ", ndim, "-d tensor");
  return d < 0 ? d + n : d;
}

int64_t Tensor::size(int64_t d) const { return shape_[wrap_dim(d, dim(), "size")]; }

bool Tensor::is_contiguous() const {
  int64_t acc = 1;
  for (int64_t i = dim() - 1; i >= 0; i--) {
    if (shape_[i] == 1) continue;
    if (strides_[i] != acc) return false;
    acc *= shape_[i];
  }
  return true;
}

std::string Tensor::desc() const {
  if (!defined()) return "undefined";
  std::string s = std::string(dtype_name(dtype_)) + shape_str(shape_);
  if (device() != Device::CPU) s += std::string("@") + device_name(device());
  return s;
}

// Try to express `shape` as a view of this tensor's strides (PyTorch's computeStride logic).
static bool view_strides(const Shape& oshape, const Shape& ostride, const Shape& nshape, Shape& nstride) {
  int64_t numel = shape_numel(oshape);
  nstride.assign(nshape.size(), 0);
  if (numel == 0 || numel == 1 || oshape.empty()) { nstride = contiguous_strides(nshape); return true; }
  int64_t view_d = (int64_t)nshape.size() - 1;
  int64_t chunk_base_stride = ostride.empty() ? 1 : ostride.back();
  int64_t tensor_numel = 1, view_numel = 1;
  for (int64_t tensor_d = (int64_t)oshape.size() - 1; tensor_d >= 0; tensor_d--) {
    tensor_numel *= oshape[tensor_d];
    if (tensor_d == 0 || (oshape[tensor_d - 1] != 1 && ostride[tensor_d - 1] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || nshape[view_d] == 1)) {
        nstride[view_d] = view_numel * chunk_base_stride;
        view_numel *= nshape[view_d];
        view_d--;
      }
      if (view_numel != tensor_numel) return false;
      if (tensor_d > 0) { chunk_base_stride = ostride[tensor_d - 1]; tensor_numel = 1; view_numel = 1; }
    }
  }
  return view_d == -1;
}

static Shape infer_shape(const Shape& shape, int64_t numel, const char* op, const Tensor& t) {
  Shape s = shape;
  int64_t infer = -1, known = 1;
  for (size_t i = 0; i < s.size(); i++) {
    if (s[i] == -1) { PK_CHECK(infer < 0, op, ": only one dimension can be -1, got ", shape_str(shape)); infer = (int64_t)i; }
    else { PK_CHECK(s[i] >= 0, op, ": invalid shape ", shape_str(shape)); known *= s[i]; }
  }
  if (infer >= 0) {
    PK_CHECK(known != 0 && numel % known == 0, op, ": shape ", shape_str(shape), " is invalid for ", t.desc());
    s[infer] = numel / known;
  }
  PK_CHECK(shape_numel(s) == numel, op, ": shape ", shape_str(shape), " is invalid for ", t.desc(), " (", numel, " elements)");
  return s;
}

Tensor Tensor::view(const Shape& shape) const {
  Shape s = infer_shape(shape, numel(), "view", *this);
  Shape st;
  PK_CHECK(view_strides(shape_, strides_, s, st), "view: ", desc(), " with strides ", shape_str(strides_),
           " cannot be viewed as ", shape_str(s), "; call contiguous() or reshape()");
  return Tensor(storage_, s, st, offset_, dtype_);
}

Tensor Tensor::reshape(const Shape& shape) const {
  Shape s = infer_shape(shape, numel(), "reshape", *this);
  Shape st;
  if (view_strides(shape_, strides_, s, st)) return Tensor(storage_, s, st, offset_, dtype_);
  return contiguous().view(s);
}

Tensor Tensor::transpose(int64_t a, int64_t b) const {
  a = wrap_dim(a, dim(), "transpose"); b = wrap_dim(b, dim(), "transpose");
  Shape s = shape_, st = strides_;
  std::swap(s[a], s[b]); std::swap(st[a], st[b]);
  return Tensor(storage_, s, st, offset_, dtype_);
}

Tensor Tensor::permute(const std::vector<int64_t>& order) const {
  PK_CHECK((int64_t)order.size() == dim(), "permute: order has ", order.size(), " entries for ", desc());
  std::vector<bool> seen(dim(), false);
  Shape s(dim()), st(dim());
  for (int64_t i = 0; i < dim(); i++) {
    int64_t d = wrap_dim(order[i], dim(), "permute");
    PK_CHECK(!seen[d], "permute: dim ", d, " repeated in order");
    seen[d] = true; s[i] = shape_[d]; st[i] = strides_[d];
  }
  return Tensor(storage_, s, st, offset_, dtype_);
}

Tensor Tensor::narrow(int64_t d, int64_t start, int64_t length) const {
  d = wrap_dim(d, dim(), "narrow");
  if (start < 0) start += shape_[d];
  PK_CHECK(start >= 0 && length >= 0 && start + length <= shape_[d], "narrow: range [", start, ", ", start + length,
           ") out of bounds for dim ", d, " of ", desc());
  Shape s = shape_; s[d] = length;
  return Tensor(storage_, s, strides_, offset_ + start * strides_[d], dtype_);
}

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end, int64_t step) const {
  d = wrap_dim(d, dim(), "slice");
  PK_CHECK(step > 0, "slice: step must be positive, got ", step);
  int64_t n = shape_[d];
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  Shape s = shape_, st = strides_;
  s[d] = (end - start + step - 1) / step;
  st[d] = strides_[d] * step;
  return Tensor(storage_, s, st, offset_ + start * strides_[d], dtype_);
}

Tensor Tensor::expand(const Shape& shape) const {
  PK_CHECK((int64_t)shape.size() >= dim(), "expand: cannot expand ", desc(), " to fewer dims ", shape_str(shape));
  int64_t lead = (int64_t)shape.size() - dim();
  Shape s(shape.size()), st(shape.size());
  for (int64_t i = 0; i < (int64_t)shape.size(); i++) {
    if (i < lead) { PK_CHECK(shape[i] >= 0, "expand: bad size in ", shape_str(shape)); s[i] = shape[i]; st[i] = 0; continue; }
    int64_t od = shape_[i - lead], want = shape[i] == -1 ? od : shape[i];
    PK_CHECK(od == want || od == 1, "expand: cannot expand ", desc(), " to ", shape_str(shape));
    s[i] = want; st[i] = (od == want) ? strides_[i - lead] : 0;
  }
  return Tensor(storage_, s, st, offset_, dtype_);
}

Tensor Tensor::unsqueeze(int64_t d) const {
  d = wrap_dim(d, dim() + 1, "unsqueeze");
  Shape s = shape_, st = strides_;
  int64_t stride = d < dim() ? shape_[d] * strides_[d] : 1;
  s.insert(s.begin() + d, 1); st.insert(st.begin() + d, stride);
  return Tensor(storage_, s, st, offset_, dtype_);
}

Tensor Tensor::squeeze(int64_t d) const {
  d = wrap_dim(d, dim(), "squeeze");
  if (shape_[d] != 1) return *this;
  Shape s = shape_, st = strides_;
  s.erase(s.begin() + d); st.erase(st.begin() + d);
  return Tensor(storage_, s, st, offset_, dtype_);
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  if (device() == Device::CUDA) return cuda_fn(&CudaOps::clone, "clone")(*this);
  check_cpu(*this, "clone", "self");
  Tensor out = empty(shape_, dtype_);
  copy_into(out, *this);
  return out;
}

Tensor Tensor::to(DType dt) const {
  if (dt == dtype_) return *this;
  if (device() == Device::CUDA) return cuda_fn(&CudaOps::cast, "cast")(*this, dt);
  check_cpu(*this, "cast", "self");
  PK_CHECK(dt != DType::NF4 && dtype_ != DType::NF4, "cast: nf4 tensors are produced by quantize/dequantize, not cast");
  Tensor out = empty(shape_, dt);
  copy_into(out, *this);
  return out;
}

// ---- element conversion ----
double load_as_double(const void* p, DType dt) {
  switch (dt) {
    case DType::F32: return *(const float*)p;
    case DType::BF16: return bf16_to_f32(*(const uint16_t*)p);
    case DType::F16: return f16_to_f32(*(const uint16_t*)p);
    case DType::F64: return *(const double*)p;
    case DType::I32: return *(const int32_t*)p;
    case DType::I64: return (double)*(const int64_t*)p;
    case DType::U8: case DType::NF4: return *(const uint8_t*)p;
  }
  return 0;
}

void store_from_double(void* p, DType dt, double v) {
  switch (dt) {
    case DType::F32: *(float*)p = (float)v; break;
    case DType::BF16: *(uint16_t*)p = f32_to_bf16((float)v); break;
    case DType::F16: *(uint16_t*)p = f32_to_f16((float)v); break;
    case DType::F64: *(double*)p = v; break;
    case DType::I32: *(int32_t*)p = (int32_t)v; break;
    case DType::I64: *(int64_t*)p = (int64_t)v; break;
    case DType::U8: case DType::NF4: *(uint8_t*)p = (uint8_t)v; break;
  }
}

// Signed compares: (u & 0x7fffffff) fits an int32, and SSE2 has no unsigned dword compare.
void f32_to_bf16_run(const float* __restrict src, uint16_t* __restrict dst, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    uint32_t u;
    std::memcpy(&u, &src[i], 4);
    const uint32_t rne = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const uint32_t qnan = (u >> 16) | 0x40u;
    dst[i] = (uint16_t)((int32_t)(u & 0x7fffffffu) > (int32_t)0x7f800000 ? qnan : rne);
  }
}

void bf16_round_run(float* __restrict p, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    uint32_t u;
    std::memcpy(&u, &p[i], 4);
    const uint32_t rne = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    const uint32_t qnan = (u & 0xffff0000u) | 0x00400000u;
    const uint32_t r = (int32_t)(u & 0x7fffffffu) > (int32_t)0x7f800000 ? qnan : rne;
    std::memcpy(&p[i], &r, 4);
  }
}

// Convert a contiguous run of n elements from one dtype to another (source stride `ss`, elements).
template <class S, class D> static inline D cvt(S v) { return (D)v; }

static void convert_run(char* dst, DType dd, const char* src, DType sd, int64_t n, int64_t ss) {
  size_t es = dtype_size(sd), ed = dtype_size(dd);
  if (dd == sd && ss == 1) { std::memcpy(dst, src, (size_t)n * es); return; }
  if (dd == sd) {
    for (int64_t i = 0; i < n; i++) std::memcpy(dst + i * ed, src + i * ss * es, es);
    return;
  }
  // fast paths for the float formats the models use
  // (unit-stride loops spelled out separately: with a run-time stride the compiler does not
  // vectorise them, and these conversions run on every bf16 activation that is made contiguous)
  if (sd == DType::BF16 && dd == DType::F32) {
    auto* s = (const uint16_t*)src; auto* d = (float*)dst;
    if (ss == 1) for (int64_t i = 0; i < n; i++) d[i] = bf16_to_f32(s[i]);
    else for (int64_t i = 0; i < n; i++) d[i] = bf16_to_f32(s[i * ss]);
    return;
  }
  if (sd == DType::F32 && dd == DType::BF16) {
    auto* s = (const float*)src; auto* d = (uint16_t*)dst;
    if (ss == 1) f32_to_bf16_run(s, d, n);
    else for (int64_t i = 0; i < n; i++) d[i] = f32_to_bf16(s[i * ss]);
    return;
  }
  if (sd == DType::F16 && dd == DType::F32) {
    auto* s = (const uint16_t*)src; auto* d = (float*)dst;
    for (int64_t i = 0; i < n; i++) d[i] = f16_to_f32(s[i * ss]);
    return;
  }
  if (sd == DType::F32 && dd == DType::F16) {
    auto* s = (const float*)src; auto* d = (uint16_t*)dst;
    for (int64_t i = 0; i < n; i++) d[i] = f32_to_f16(s[i * ss]);
    return;
  }
  if (sd == DType::F32 && dd == DType::F64) {
    auto* s = (const float*)src; auto* d = (double*)dst;
    for (int64_t i = 0; i < n; i++) d[i] = s[i * ss];
    return;
  }
  if (sd == DType::F64 && dd == DType::F32) {
    auto* s = (const double*)src; auto* d = (float*)dst;
    for (int64_t i = 0; i < n; i++) d[i] = (float)s[i * ss];
    return;
  }
  // generic path: integers and any float<->int (float->int truncates toward zero, like torch)
  for (int64_t i = 0; i < n; i++) store_from_double(dst + i * ed, dd, load_as_double(src + i * ss * es, sd));
}

void copy_into(const Tensor& dst, const Tensor& src) {
  PK_CHECK(dst.shape() == src.shape(), "copy: shape mismatch ", dst.desc(), " <- ", src.desc());
  if (any_cuda(dst, src)) return cuda_fn(&CudaOps::copy_into, "copy")(dst, src);
  check_cpu(dst, "copy", "dst"); check_cpu(src, "copy", "src");
  PK_CHECK(dst.dtype() != DType::NF4 && src.dtype() != DType::NF4, "copy: nf4 is a packed format; use dequantize");
  int64_t n = dst.numel();
  if (n == 0) return;
  int64_t nd = dst.dim();
  // Rows over the last dim; the destination is written through its own strides.
  int64_t inner = nd ? dst.shape()[nd - 1] : 1;
  int64_t rows = n / inner;
  int64_t ss = nd ? src.strides()[nd - 1] : 1, ds = nd ? dst.strides()[nd - 1] : 1;
  size_t es = dtype_size(src.dtype()), ed = dtype_size(dst.dtype());
  char* dbase = (char*)dst.raw();
  const char* sbase = (const char*)src.raw();
  bool dense_dst = dst.is_contiguous();
  auto body = [&](int64_t r0, int64_t r1) {
    std::vector<int64_t> idx(nd > 0 ? nd - 1 : 0, 0);
    // unravel r0
    int64_t r = r0;
    for (int64_t d = nd - 2; d >= 0; d--) { idx[d] = r % dst.shape()[d]; r /= dst.shape()[d]; }
    for (int64_t row = r0; row < r1; row++) {
      int64_t so = 0, dof = 0;
      for (int64_t d = 0; d < nd - 1; d++) { so += idx[d] * src.strides()[d]; dof += idx[d] * dst.strides()[d]; }
      if (dense_dst || ds == 1) convert_run(dbase + dof * ed, dst.dtype(), sbase + so * es, src.dtype(), inner, ss);
      else for (int64_t i = 0; i < inner; i++)
        convert_run(dbase + (dof + i * ds) * ed, dst.dtype(), sbase + (so + i * ss) * es, src.dtype(), 1, 1);
      for (int64_t d = nd - 2; d >= 0; d--) { if (++idx[d] < dst.shape()[d]) break; idx[d] = 0; }
    }
  };
  int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(inner, 1));
  parallel_for(0, rows, grain, body);
}

// ---- validation ----
void check_defined(const Tensor& t, const char* op, const char* arg) {
  PK_CHECK(t.defined(), op, ": argument '", arg, "' is an undefined (disposed?) tensor");
}
void check_float(const Tensor& t, const char* op, const char* arg) {
  check_defined(t, op, arg);
  PK_CHECK(is_float(t.dtype()), op, ": argument '", arg, "' must be a floating tensor (f32, bf16, f16, f64), got ", t.desc());
}
void check_dtype(const Tensor& t, DType dt, const char* op, const char* arg) {
  check_defined(t, op, arg);
  PK_CHECK(t.dtype() == dt, op, ": argument '", arg, "' must be ", dtype_name(dt), ", got ", t.desc());
}
void check_same_dtype(const Tensor& a, const Tensor& b, const char* op) {
  PK_CHECK(a.dtype() == b.dtype(), op, ": dtype mismatch ", a.desc(), " vs ", b.desc());
}
void check_cpu(const Tensor& t, const char* op, const char* arg) {
  check_defined(t, op, arg);
  PK_CHECK(t.device() == Device::CPU, op, ": argument '", arg, "' is on ", device_name(t.device()),
           " but this op runs on the cpu backend");
}
void check_dim(const Tensor& t, int64_t ndim, const char* op, const char* arg) {
  check_defined(t, op, arg);
  PK_CHECK(t.dim() == ndim, op, ": argument '", arg, "' must be ", ndim, "-d, got ", t.desc());
}

}  // namespace pk
