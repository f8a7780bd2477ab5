// copy.cu — strided copies with dtype conversion, contiguous/clone/cast, fills.
//
// Conversions mirror csrc/core/tensor.cpp exactly: float formats convert through f32, anything
// involving f64 or an integer type through f64, narrowing rounds to nearest even.
#include <type_traits>
#include "common.cuh"
#include "ops.h"

namespace pk {
namespace cuda {

namespace {

template <class S, class D> __device__ __forceinline__ D convert(S v) {
  constexpr bool via64 = std::is_same<S, double>::value || std::is_same<D, double>::value || std::is_integral<S>::value ||
                         std::is_integral<D>::value;
  if constexpr (std::is_same<S, D>::value) return v;
  else if constexpr (via64) return from_f64<D>(to_f64(v));
  else return from_f32<D>(to_f32(v));
}

template <class S, class D, bool Small>
__global__ void convert_kernel(D* __restrict__ dst, const S* __restrict__ src, int64_t n, CalcT<Small, 2> calc) {
  using I = typename IdxT<Small>::type;
  for (I i = global_tid<I>(); i < (I)n; i += grid_stride<I>()) {
    I off[2];
    calc.get(i, off);
    dst[off[0]] = convert<S, D>(src[off[1]]);
  }
}

// Same-dtype copy of elements of sizeof(W) bytes.
template <class W, bool Small>
__global__ void move_kernel(W* __restrict__ dst, const W* __restrict__ src, int64_t n, CalcT<Small, 2> calc) {
  using I = typename IdxT<Small>::type;
  for (I i = global_tid<I>(); i < (I)n; i += grid_stride<I>()) {
    I off[2];
    calc.get(i, off);
    dst[off[0]] = src[off[1]];
  }
}

template <class W, bool Small>
__global__ void fill_kernel(W* __restrict__ dst, W value, int64_t n, CalcT<Small, 1> calc) {
  using I = typename IdxT<Small>::type;
  for (I i = global_tid<I>(); i < (I)n; i += grid_stride<I>()) {
    I off[1];
    calc.get(i, off);
    dst[off[0]] = value;
  }
}

template <class F> void by_width(size_t es, F&& f) {
  switch (es) {
    case 1: f(uint8_t{}); return;
    case 2: f(uint16_t{}); return;
    case 4: f(uint32_t{}); return;
    case 8: f(uint64_t{}); return;
    default: fail("cuda copy: unsupported element size ", es);
  }
}

// dst <- src, both on the device, equal shapes; same dtype may be nf4 (raw bytes).
void device_copy(const Tensor& dst, const Tensor& src) {
  int64_t n = dst.numel();
  if (n == 0) return;
  Layout L = make_layout(dst.shape(), {dst.strides(), src.strides()});
  if (dst.dtype() == src.dtype()) {
    bool flat = L.ndim() == 0 || (L.ndim() == 1 && L.strides[0][0] == 1 && L.strides[1][0] == 1);
    if (flat) {
      PK_CUDA_CHECK(cudaMemcpyAsync(dst.raw(), src.raw(), dst.nbytes(), cudaMemcpyDeviceToDevice, cur_stream()));
      return;
    }
    by_width(dtype_size(dst.dtype()), [&](auto w) {
      using W = decltype(w);
      if (L.small_index) launch(move_kernel<W, true>, n, (W*)dst.raw(), (const W*)src.raw(), n, make_calc<true, 2>(L));
      else launch(move_kernel<W, false>, n, (W*)dst.raw(), (const W*)src.raw(), n, make_calc<false, 2>(L));
    });
    return;
  }
  dispatch_any(src.dtype(), "copy", [&](auto s) {
    using S = decltype(s);
    dispatch_any(dst.dtype(), "copy", [&](auto d) {
      using D = decltype(d);
      if (L.small_index) launch(convert_kernel<S, D, true>, n, (D*)dst.raw(), (const S*)src.raw(), n, make_calc<true, 2>(L));
      else launch(convert_kernel<S, D, false>, n, (D*)dst.raw(), (const S*)src.raw(), n, make_calc<false, 2>(L));
    });
  });
}

}  // namespace

void copy_into(const Tensor& dst, const Tensor& src) {
  check_defined(dst, "copy", "dst");
  check_defined(src, "copy", "src");
  PK_CHECK(dst.shape() == src.shape(), "copy: shape mismatch ", dst.desc(), " <- ", src.desc());
  PK_CHECK(dst.dtype() != DType::NF4 && src.dtype() != DType::NF4, "copy: nf4 is a packed format; use dequantize");
  if (dst.device() == Device::CPU && src.device() == Device::CPU) { pk::copy_into(dst, src); return; }
  if (dst.device() == Device::CPU) { pk::copy_into(dst, to_device(src, Device::CPU)); return; }
  Tensor s = src.device() == Device::CUDA ? src : to_device(src, Device::CUDA);
  device_copy(dst, s);
}

Tensor contiguous(const Tensor& t) {
  check_cuda(t, "contiguous", "self");
  if (t.is_contiguous()) return t;
  Tensor out = Tensor::empty(t.shape(), t.dtype(), Device::CUDA);
  device_copy(out, t);
  return out;
}

Tensor clone(const Tensor& t) {
  check_cuda(t, "clone", "self");
  Tensor out = Tensor::empty(t.shape(), t.dtype(), Device::CUDA);
  device_copy(out, t);
  return out;
}

Tensor cast(const Tensor& t, DType dt) {
  check_cuda(t, "cast", "self");
  if (dt == t.dtype()) return t;
  PK_CHECK(dt != DType::NF4 && t.dtype() != DType::NF4, "cast: nf4 tensors are produced by quantize/dequantize, not cast");
  Tensor out = Tensor::empty(t.shape(), dt, Device::CUDA);
  device_copy(out, t);
  return out;
}

void fill(const Tensor& t, double value) {
  check_cuda(t, "fill", "self");
  PK_CHECK(t.dtype() != DType::NF4, "fill: nf4 tensors cannot be filled");
  int64_t n = t.numel();
  if (n == 0) return;
  uint64_t bits = 0;
  store_from_double(&bits, t.dtype(), value);   // the host conversion, identical to the CPU fill
  Layout L = make_layout(t.shape(), {t.strides()});
  bool flat = L.ndim() == 0 || (L.ndim() == 1 && L.strides[0][0] == 1);
  if (flat && bits == 0) {
    PK_CUDA_CHECK(cudaMemsetAsync(t.raw(), 0, t.nbytes(), cur_stream()));
    return;
  }
  by_width(dtype_size(t.dtype()), [&](auto w) {
    using W = decltype(w);
    W v;
    std::memcpy(&v, &bits, sizeof(W));
    if (L.small_index) launch(fill_kernel<W, true>, n, (W*)t.raw(), v, n, make_calc<true, 1>(L));
    else launch(fill_kernel<W, false>, n, (W*)t.raw(), v, n, make_calc<false, 1>(L));
  });
}

Tensor zeros(const Shape& shape, DType dt) {
  Tensor t = Tensor::empty(shape, dt, Device::CUDA);
  if (t.nbytes()) PK_CUDA_CHECK(cudaMemsetAsync(t.raw(), 0, t.nbytes(), cur_stream()));
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
