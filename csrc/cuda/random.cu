// random.cu — CUDA twins of cpu/random.cpp: Philox-4x32-10 uniform/normal generators and dropout.
//
// Counter-based exactly like the CPU: element i uses counter i/4, word i%4 under key `seed`, so a
// seed gives the same stream on both devices. Uniforms and dropout masks are bit-identical to the
// CPU (integer Philox, then correctly rounded f64 arithmetic with no FMA contraction); normals use
// the device's f64 log/cos/sin (within an ulp or two of glibc's in f64, so f32/bf16 results match
// the CPU except in rare last-bit cases).
#include "common.cuh"
#include "core/dispatch.h"
#include "cpu/cpu_common.h"
#include "ops.h"

namespace pk {
namespace cuda {

namespace {

__device__ __forceinline__ void philox(uint64_t seed, uint64_t ctr, uint32_t out[4]) {
  uint32_t c0 = (uint32_t)ctr, c1 = (uint32_t)(ctr >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
#pragma unroll
  for (int r = 0; r < 10; r++) {
    const uint32_t hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
    const uint32_t hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
    const uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += 0x9E3779B9u; k1 += 0xBB67AE85u;
  }
  out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

// CPU: T = float for every non-f64 dtype, then .to(dt); from_f64 rounds through f32 the same way.
template <class S>
__global__ void uniform_kernel(S* __restrict__ out, int64_t n, uint64_t seed, double lo, double span) {
  const int64_t blocks = (n + 3) / 4;
  for (int64_t b = global_tid<int64_t>(); b < blocks; b += grid_stride<int64_t>()) {
    uint32_t w[4];
    philox(seed, (uint64_t)b, w);
#pragma unroll
    for (int j = 0; j < 4; j++) {
      if (b * 4 + j >= n) break;
      const double v = __dadd_rn(lo, __dmul_rn(span, (double)w[j] * (1.0 / 4294967296.0)));
      out[b * 4 + j] = from_f64<S>(v);
    }
  }
}

__device__ __forceinline__ double u01(uint32_t w) { return ((double)w + 0.5) * (1.0 / 4294967296.0); }

template <class S>
__global__ void normal_kernel(S* __restrict__ out, int64_t n, uint64_t seed, double mean, double stddev) {
  const int64_t blocks = (n + 3) / 4;
  for (int64_t b = global_tid<int64_t>(); b < blocks; b += grid_stride<int64_t>()) {
    uint32_t w[4];
    philox(seed, (uint64_t)b, w);
    double v[4];
#pragma unroll
    for (int j = 0; j < 4; j += 2) {
      const double r = sqrt(-2.0 * log(u01(w[j]))), th = __dmul_rn(6.283185307179586, u01(w[j + 1]));
      const double sr = __dmul_rn(stddev, r);
      v[j] = __dadd_rn(mean, __dmul_rn(sr, cos(th)));
      v[j + 1] = __dadd_rn(mean, __dmul_rn(sr, sin(th)));
    }
#pragma unroll
    for (int j = 0; j < 4; j++) {
      if (b * 4 + j >= n) break;
      out[b * 4 + j] = from_f64<S>(v[j]);
    }
  }
}

// mask = u >= thresh (when `gen`; else read), y = mask ? x * scale : 0 in T, stored in x's dtype.
template <class S, class T, bool GEN>
__global__ void dropout_kernel(const S* __restrict__ x, uint8_t* __restrict__ mask, S* __restrict__ y, int64_t n,
                               uint64_t seed, uint32_t thresh, T scale) {
  const int64_t blocks = (n + 3) / 4;
  for (int64_t b = global_tid<int64_t>(); b < blocks; b += grid_stride<int64_t>()) {
    uint32_t w[4] = {0, 0, 0, 0};
    if constexpr (GEN) philox(seed, (uint64_t)b, w);
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const int64_t i = b * 4 + j;
      if (i >= n) break;
      uint8_t m;
      if constexpr (GEN) { m = w[j] >= thresh; mask[i] = m; }
      else m = mask[i];
      const T v = m ? Conv<T>::load(x[i]) * scale : T(0);
      y[i] = Conv<T>::template store<S>(v);
    }
  }
}

Tensor rand_uniform_cuda(const Shape& shape, uint64_t seed, DType dt, double lo, double hi) {
  PK_CHECK(is_float(dt), "rand: dtype must be floating, got ", dtype_name(dt));
  Tensor out = Tensor::empty(shape, dt, Device::CUDA);
  const int64_t n = out.numel();
  dispatch_float(dt, "rand", [&](auto tag) {
    using S = decltype(tag);
    launch(uniform_kernel<S>, (n + 3) / 4, out.data<S>(), n, seed, lo, hi - lo);
  });
  return out;
}

Tensor rand_normal_cuda(const Shape& shape, uint64_t seed, DType dt, double mean, double stddev) {
  PK_CHECK(is_float(dt), "randn: dtype must be floating, got ", dtype_name(dt));
  Tensor out = Tensor::empty(shape, dt, Device::CUDA);
  const int64_t n = out.numel();
  dispatch_float(dt, "randn", [&](auto tag) {
    using S = decltype(tag);
    launch(normal_kernel<S>, (n + 3) / 4, out.data<S>(), n, seed, mean, stddev);
  });
  return out;
}

Tensor dropout_run(const Tensor& x_in, const Tensor& mask_in, double p, uint64_t seed, bool gen, Tensor* mask_out) {
  Tensor x = contiguous(x_in);
  Tensor mask = gen ? Tensor::empty(x.shape(), DType::U8, Device::CUDA) : contiguous(mask_in);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), Device::CUDA);
  const int64_t n = x.numel();
  const uint32_t thresh = (uint32_t)std::min(4294967295.0, p * 4294967296.0);
  dispatch_float(x.dtype(), gen ? "dropout" : "dropout_backward", [&](auto tag) {
    using S = decltype(tag);
    using T = typename Compute<S>::type;
    const T scale = (T)(1.0 / (1.0 - p));
    if (gen) launch(dropout_kernel<S, T, true>, (n + 3) / 4, x.data<S>(), mask.data<uint8_t>(), y.data<S>(), n, seed, thresh, scale);
    else launch(dropout_kernel<S, T, false>, (n + 3) / 4, x.data<S>(), mask.data<uint8_t>(), y.data<S>(), n, seed, thresh, scale);
  });
  if (mask_out) *mask_out = mask;
  return y;
}

Tensor dropout_forward_cuda(const Tensor& x, double p, uint64_t seed, Tensor* mask) {
  check_float(x, "dropout", "x"); check_cuda(x, "dropout", "x");
  PK_CHECK(p >= 0 && p < 1, "dropout: p must be in [0, 1), got ", p);
  PK_CHECK(mask, "dropout: a mask output is required");
  return dropout_run(x, Tensor(), p, seed, true, mask);
}

Tensor dropout_backward_cuda(const Tensor& dy, const Tensor& mask, double p) {
  check_float(dy, "dropout_backward", "grad"); check_dtype(mask, DType::U8, "dropout_backward", "mask");
  check_cuda(dy, "dropout_backward", "grad"); check_cuda(mask, "dropout_backward", "mask");
  PK_CHECK(dy.shape() == mask.shape(), "dropout_backward: grad ", dy.desc(), " and mask ", mask.desc(), " differ");
  return dropout_run(dy, mask, p, 0, false, nullptr);
}

struct Registrar {
  Registrar() {
    CudaOps& o = cuda_ops();
    o.rand_uniform = rand_uniform_cuda;
    o.rand_normal = rand_normal_cuda;
    o.dropout_forward = dropout_forward_cuda;
    o.dropout_backward = dropout_backward_cuda;
  }
};
Registrar registrar;

}  // namespace

}  // namespace cuda
}  // namespace pk
