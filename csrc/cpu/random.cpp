// random.cpp — Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3").
// Element i uses counter i/4, word i%4; normals use Box-Muller on pairs of words.
#include "random.h"
#include "core/dispatch.h"
#include "cpu_common.h"

namespace pk {

void philox4x32(uint64_t seed, uint64_t ctr, uint32_t out[4]) {
  uint32_t c0 = (uint32_t)ctr, c1 = (uint32_t)(ctr >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  for (int r = 0; r < 10; r++) {
    uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
    uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n1 = (uint32_t)p1;
    uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1, n3 = (uint32_t)p0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += 0x9E3779B9u; k1 += 0xBB67AE85u;
  }
  out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

static inline double u01(uint32_t w) { return ((double)w + 0.5) * (1.0 / 4294967296.0); }  // (0,1)

template <class F> static Tensor generate(const Shape& shape, DType dt, const char* op, F f) {
  PK_CHECK(is_float(dt), op, ": dtype must be floating, got ", dtype_name(dt));
  DType cd = compute_dtype(dt);
  Tensor out = Tensor::empty(shape, cd);
  int64_t n = out.numel(), blocks = (n + 3) / 4;
  dispatch_fp(cd, [&](auto tag) {
    using T = decltype(tag);
    T* p = out.data<T>();
    parallel_for(0, blocks, 4096, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; b++) {
        double v[4];
        f(b, v);
        for (int j = 0; j < 4 && b * 4 + j < n; j++) p[b * 4 + j] = (T)v[j];
      }
    });
    return 0;
  });
  return out.to(dt);
}

Tensor rand_uniform(const Shape& shape, uint64_t seed, DType dt, double lo, double hi) {
  return generate(shape, dt, "rand", [&](int64_t b, double* v) {
    uint32_t w[4]; philox4x32(seed, (uint64_t)b, w);
    for (int j = 0; j < 4; j++) v[j] = lo + (hi - lo) * (((double)w[j]) * (1.0 / 4294967296.0));
  });
}

Tensor rand_normal(const Shape& shape, uint64_t seed, DType dt, double mean, double stddev) {
  return generate(shape, dt, "randn", [&](int64_t b, double* v) {
    uint32_t w[4]; philox4x32(seed, (uint64_t)b, w);
    for (int j = 0; j < 4; j += 2) {
      double r = std::sqrt(-2.0 * std::log(u01(w[j]))), th = 6.283185307179586 * u01(w[j + 1]);
      v[j] = mean + stddev * r * std::cos(th);
      v[j + 1] = mean + stddev * r * std::sin(th);
    }
  });
}

Tensor dropout_forward(const Tensor& x, double p, uint64_t seed, Tensor* mask) {
  if (any_cuda(x)) return cuda_fn(&CudaOps::dropout_forward, "dropout")(x, p, seed, mask);
  check_float(x, "dropout", "x"); check_cpu(x, "dropout", "x");
  PK_CHECK(p >= 0 && p < 1, "dropout: p must be in [0, 1), got ", p);
  Tensor m = Tensor::empty(x.shape(), DType::U8);
  uint8_t* pm = m.data<uint8_t>();
  int64_t n = x.numel(), blocks = (n + 3) / 4;
  uint32_t thresh = (uint32_t)std::min(4294967295.0, p * 4294967296.0);
  parallel_for(0, blocks, 4096, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; b++) {
      uint32_t w[4]; philox4x32(seed, (uint64_t)b, w);
      for (int j = 0; j < 4 && b * 4 + j < n; j++) pm[b * 4 + j] = w[j] >= thresh;
    }
  });
  *mask = m;
  return dropout_backward(x, m, p);
}

Tensor dropout_backward(const Tensor& dy, const Tensor& mask, double p) {
  if (any_cuda(dy, mask)) return cuda_fn(&CudaOps::dropout_backward, "dropout_backward")(dy, mask, p);
  check_float(dy, "dropout_backward", "grad"); check_dtype(mask, DType::U8, "dropout_backward", "mask");
  PK_CHECK(dy.shape() == mask.shape(), "dropout_backward: grad ", dy.desc(), " and mask ", mask.desc(), " differ");
  DType cd = compute_dtype(dy.dtype());
  Tensor c = dy.to(cd).contiguous(), mk = mask.contiguous();
  Tensor out = Tensor::empty(dy.shape(), cd);
  dispatch_fp(cd, [&](auto tag) {
    using T = decltype(tag);
    T scale = (T)(1.0 / (1.0 - p));
    const T* s = c.data<T>(); const uint8_t* pm = mk.data<uint8_t>(); T* o = out.data<T>();
    parallel_for(0, out.numel(), 65536, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; i++) o[i] = pm[i] ? s[i] * scale : T(0);
    });
    return 0;
  });
  return out.to(dy.dtype());
}

}  // namespace pk
