// copy.cpp (emulator) — ops.h's copies, casts and fills (copy.cu's twins) with copy.cu's checks:
// the conversions are core/tensor.cpp's copy_into on CPU aliases of the cuda bytes.
#include <cstring>
#include "cuda/ops.h"
#include "emu.h"

namespace pk {
namespace cuda {

void copy_into(const Tensor& dst, const Tensor& src) {
  check_defined(dst, "copy", "dst");
  check_defined(src, "copy", "src");
  PK_CHECK(dst.shape() == src.shape(), "copy: shape mismatch ", dst.desc(), " <- ", src.desc());
  PK_CHECK(dst.dtype() != DType::NF4 && src.dtype() != DType::NF4, "copy: nf4 is a packed format; use dequantize");
  emu::Ctx ctx;
  pk::copy_into(ctx.host(dst), ctx.host(src));   // devices may differ, as on the GPU
}

Tensor contiguous(const Tensor& t) {
  check_cuda(t, "contiguous", "self");
  if (t.is_contiguous()) return t;
  return clone(t);
}

Tensor clone(const Tensor& t) {
  check_cuda(t, "clone", "self");
  Tensor out = Tensor::empty(t.shape(), t.dtype(), Device::CUDA);
  emu::Ctx ctx;
  pk::copy_into(ctx.host(out), ctx.host(t));
  return out;
}

Tensor cast(const Tensor& t, DType dt) {
  check_cuda(t, "cast", "self");
  if (dt == t.dtype()) return t;
  PK_CHECK(dt != DType::NF4 && t.dtype() != DType::NF4, "cast: nf4 tensors are produced by quantize/dequantize, not cast");
  Tensor out = Tensor::empty(t.shape(), dt, Device::CUDA);
  emu::Ctx ctx;
  pk::copy_into(ctx.host(out), ctx.host(t));
  return out;
}

void fill(const Tensor& t, double value) {
  check_cuda(t, "fill", "self");
  PK_CHECK(t.dtype() != DType::NF4, "fill: nf4 tensors cannot be filled");
  if (t.numel() == 0) return;
  // The host conversion, identical to the CPU fill and copy.cu: one element's bits, broadcast.
  Tensor one = Tensor::empty({}, t.dtype());
  store_from_double(one.raw(), t.dtype(), value);
  emu::Ctx ctx;
  pk::copy_into(ctx.host(t), one.expand(t.shape()));
}

Tensor zeros(const Shape& shape, DType dt) {
  Tensor t = Tensor::empty(shape, dt, Device::CUDA);
  if (t.nbytes()) std::memset(t.raw(), 0, t.nbytes());
  return t;
}

Tensor full(const Shape& shape, double value, DType dt) {
  Tensor t = Tensor::empty(shape, dt, Device::CUDA);
  fill(t, value);
  return t;
}

Tensor reshape(const Tensor& t, const Shape& shape) {
  if (t.is_contiguous()) return t.view(shape);
  try {
    return t.view(shape);
  } catch (const Error&) {
    return contiguous(t).view(shape);
  }
}

}  // namespace cuda
}  // namespace pk
