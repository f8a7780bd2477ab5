// rope.cu — CUDA twins of cpu/rope.cpp: HF-exact cos/sin tables, apply (rotate_half layout,
// partial rotary) and its transpose for backward.
//
// Tables: one thread per (position, frequency) pair, the angle as one rounded f32 product (HF's
// K=1 matmul); cos/sin are evaluated in f64 and rounded to f32, i.e. the correctly rounded f32
// value (glibc's cosf/sinf agree except in rare last-ulp cases), then scaled in f32.
// Apply: one thread per output element of the contiguous (B,H,T,D) result; x is read through its
// own strides (the usual (B,T,H,D).transpose(1,2) view needs no copy), cos/sin (B|1,T,R) likewise.
// Products and sums are rounded to the output dtype exactly where torch's eager graph rounds them.
#include <type_traits>
#include "common.cuh"
#include "core/dispatch.h"
#include "cpu/cpu_common.h"
#include "ops.h"

namespace pk {
namespace cuda {

namespace {

__device__ __forceinline__ float mul_(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float sub_(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double sub_(double a, double b) { return __dsub_rn(a, b); }

template <class S, class T> __device__ __forceinline__ T round_s(T v) {
  return Conv<T>::load(Conv<T>::template store<S>(v));
}
template <class T> __device__ __forceinline__ T load_dyn(const void* p, int dt, int64_t i) {
  switch (dt) {
    case (int)DType::F32: return (T)static_cast<const float*>(p)[i];
    case (int)DType::F64: return (T)static_cast<const double*>(p)[i];
    case (int)DType::BF16: return (T)__bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default: return (T)__half2float(static_cast<const __half*>(p)[i]);
  }
}

__device__ __forceinline__ float cos_t(float a) { return (float)cos((double)a); }
__device__ __forceinline__ double cos_t(double a) { return cos(a); }
__device__ __forceinline__ float sin_t(float a) { return (float)sin((double)a); }
__device__ __forceinline__ double sin_t(double a) { return sin(a); }

template <class T, class SO>
__global__ void tables_kernel(const int64_t* __restrict__ pos, const T* __restrict__ invf, int64_t rows, int64_t half,
                              T sc, SO* __restrict__ cos_out, SO* __restrict__ sin_out) {
  const int64_t n = rows * half, R = 2 * half;
  for (int64_t i = global_tid<int64_t>(); i < n; i += grid_stride<int64_t>()) {
    const int64_t r = i / half, j = i - r * half;
    const T p = (T)pos[r];
    const T a = mul_(p, invf[j]);
    const T c = mul_(cos_t(a), sc), s = mul_(sin_t(a), sc);
    const SO cs = Conv<T>::template store<SO>(c), ss = Conv<T>::template store<SO>(s);
    cos_out[r * R + j] = cs; cos_out[r * R + j + half] = cs;
    sin_out[r * R + j] = ss; sin_out[r * R + j + half] = ss;
  }
}

struct ApplyGeom {
  int64_t B, H, T, D, R;
  int64_t xs[4];          // x strides (b, h, t, d)
  int64_t cs[3], ss[3];   // cos / sin strides (b, t, r); b stride 0 when broadcast
  int ct;                 // cos/sin dtype
};

template <class SX, class SO, class T, bool Small, bool BWD>
__global__ void apply_kernel(const SX* __restrict__ x, const void* __restrict__ cosp, const void* __restrict__ sinp,
                             SO* __restrict__ out, ApplyGeom g, FastDiv dD, FastDiv dT, FastDiv dH) {
  using I = typename IdxT<Small>::type;
  const I n = (I)(g.B * g.H * g.T * g.D);
  const int64_t h2 = g.R / 2;
  for (I o = global_tid<I>(); o < n; o += grid_stride<I>()) {
    I j, t, h, b;
    if constexpr (Small) {
      I q = dD.div(o); j = o - q * (I)g.D;
      I q2 = dT.div(q); t = q - q2 * (I)g.T;
      b = dH.div(q2); h = q2 - b * (I)g.H;
    } else {
      I q = o / g.D; j = o - q * g.D;
      I q2 = q / g.T; t = q - q2 * g.T;
      b = q2 / g.H; h = q2 - b * g.H;
    }
    const int64_t xb = (int64_t)b * g.xs[0] + (int64_t)h * g.xs[1] + (int64_t)t * g.xs[2];
    const T xj = Conv<T>::load(x[xb + (int64_t)j * g.xs[3]]);
    T r;
    if ((int64_t)j >= g.R) {
      r = xj;
    } else {
      const int64_t cb = (int64_t)b * g.cs[0] + (int64_t)t * g.cs[1], sb = (int64_t)b * g.ss[0] + (int64_t)t * g.ss[1];
      const bool lo = (int64_t)j < h2;
      const int64_t jp = lo ? (int64_t)j + h2 : (int64_t)j - h2;   // partner lane
      const T xp = Conv<T>::load(x[xb + jp * g.xs[3]]);
      const T cj = load_dyn<T>(cosp, g.ct, cb + (int64_t)j * g.cs[2]);
      const T a = round_s<SO>(mul_(xj, cj));
      if constexpr (!BWD) {
        // rotate_half(x)_j = -x_(j+R/2) for j < R/2, x_(j-R/2) otherwise
        const T sj = load_dyn<T>(sinp, g.ct, sb + (int64_t)j * g.ss[2]);
        r = add_(a, round_s<SO>(mul_(lo ? -xp : xp, sj)));
      } else {
        // transpose: lane j receives the lane it was rotated into, times that lane's sin
        const T sp = load_dyn<T>(sinp, g.ct, sb + jp * g.ss[2]);
        const T bterm = round_s<SO>(mul_(xp, sp));
        r = lo ? add_(a, bterm) : sub_(a, bterm);
      }
    }
    out[o] = Conv<T>::template store<SO>(r);
  }
}

int64_t check_apply(const Tensor& x, const Tensor& cos, const Tensor& sin, const char* op, const char* xname) {
  check_float(x, op, xname); check_cuda(x, op, xname);
  check_float(cos, op, "cos"); check_cuda(cos, op, "cos");
  check_float(sin, op, "sin"); check_cuda(sin, op, "sin");
  PK_CHECK(x.dim() == 4, op, ": ", xname, " must be 4-d (B,H,T,D), got ", x.desc());
  PK_CHECK(cos.dim() == 3, op, ": cos must be 3-d (B,T,R), got ", cos.desc());
  PK_CHECK(sin.shape() == cos.shape(), op, ": sin ", sin.desc(), " and cos ", cos.desc(), " must have the same shape");
  PK_CHECK(sin.dtype() == cos.dtype(), op, ": sin ", sin.desc(), " and cos ", cos.desc(), " must have the same dtype");
  int64_t B = x.shape()[0], T = x.shape()[2], D = x.shape()[3], R = cos.shape()[2];
  PK_CHECK(cos.shape()[0] == B || cos.shape()[0] == 1, op, ": cos ", cos.desc(), " batch must be 1 or B=", B, " of ",
           xname, " ", x.desc());
  PK_CHECK(cos.shape()[1] == T, op, ": cos ", cos.desc(), " has ", cos.shape()[1], " positions but ", xname, " ",
           x.desc(), " has T=", T, " (x must be (B,H,T,D))");
  PK_CHECK(R % 2 == 0 && R >= 2 && R <= D, op, ": rotary dim R=", R, " (cos ", cos.desc(), ") must be even, >= 2 and <= D=", D,
           " of ", xname, " ", x.desc());
  return R;
}

Tensor apply(const Tensor& x, const Tensor& cos, const Tensor& sin, bool bwd) {
  const char* op = bwd ? "rope_backward" : "rope";
  check_apply(x, cos, sin, op, bwd ? "dy" : "x");
  DType od = promote(x.dtype(), cos.dtype());
  Tensor out = Tensor::empty(x.shape(), od, Device::CUDA);
  ApplyGeom g;
  g.B = x.shape()[0]; g.H = x.shape()[1]; g.T = x.shape()[2]; g.D = x.shape()[3]; g.R = cos.shape()[2];
  for (int k = 0; k < 4; k++) g.xs[k] = x.strides()[k];
  const bool cb1 = cos.shape()[0] == 1;
  for (int k = 0; k < 3; k++) { g.cs[k] = cos.strides()[k]; g.ss[k] = sin.strides()[k]; }
  if (cb1) { g.cs[0] = 0; g.ss[0] = 0; }
  g.ct = (int)cos.dtype();
  const int64_t n = out.numel();
  if (n == 0) return out;
  int64_t span = 0;
  for (int k = 0; k < 4; k++) span += (x.shape()[k] - 1) * std::abs(x.strides()[k]);
  for (int k = 0; k < 4; k++) PK_CHECK(x.strides()[k] >= 0, op, ": negative strides are not supported on cuda");
  const bool small = n < (int64_t(1) << 31) - 1 && span < (int64_t(1) << 31) - 1;
  FastDiv dD((uint32_t)g.D), dT((uint32_t)std::max<int64_t>(1, g.T)), dH((uint32_t)std::max<int64_t>(1, g.H));
  dispatch_float(x.dtype(), op, [&](auto tx) {
    using SX = decltype(tx);
    auto go = [&](auto to) {
      using SO = decltype(to);
      // the CPU computes in compute_dtype(promote(x, cos)): f64 only for an f64 result
      using TC = typename std::conditional<std::is_same<SO, double>::value, double, float>::type;
      if (small) {
        if (bwd) launch(apply_kernel<SX, SO, TC, true, true>, n, x.data<SX>(), cos.raw(), sin.raw(), out.data<SO>(), g, dD, dT, dH);
        else launch(apply_kernel<SX, SO, TC, true, false>, n, x.data<SX>(), cos.raw(), sin.raw(), out.data<SO>(), g, dD, dT, dH);
      } else {
        if (bwd) launch(apply_kernel<SX, SO, TC, false, true>, n, x.data<SX>(), cos.raw(), sin.raw(), out.data<SO>(), g, dD, dT, dH);
        else launch(apply_kernel<SX, SO, TC, false, false>, n, x.data<SX>(), cos.raw(), sin.raw(), out.data<SO>(), g, dD, dT, dH);
      }
    };
    if (od == x.dtype()) go(SX{});
    else if (od == DType::F64) go(double{});
    else go(float{});
  });
  return out;
}

void rope_tables_cuda(const Tensor& positions, const Tensor& inv_freq_in, double attention_scaling, DType dtype,
                      Tensor* cos, Tensor* sin) {
  const char* op = "rope_tables";
  check_cuda(positions, op, "positions");
  PK_CHECK(positions.dtype() == DType::I64 || positions.dtype() == DType::I32, op,
           ": positions must be an i64 or i32 tensor, got ", positions.desc());
  PK_CHECK(positions.dim() == 2, op, ": positions must be 2-d (B,T), got ", positions.desc());
  check_float(inv_freq_in, op, "inv_freq");
  PK_CHECK(inv_freq_in.dim() == 1 && inv_freq_in.numel() >= 1, op, ": inv_freq must be 1-d (R/2) and non-empty, got ", inv_freq_in.desc());
  PK_CHECK(is_float(dtype), op, ": dtype must be a float dtype, got ", dtype_name(dtype));
  PK_CHECK(std::isfinite(attention_scaling), op, ": attention_scaling must be finite, got ", attention_scaling);
  PK_CHECK(cos && sin, op, ": cos and sin outputs are required");
  Tensor pos = contiguous(cast(positions, DType::I64));
  // HF forces f32 for the tables whatever the model dtype; f64 only on request (gradient checks)
  const bool f64 = inv_freq_in.dtype() == DType::F64;
  Tensor invf = inv_freq_in.device() == Device::CUDA ? inv_freq_in : to_device(inv_freq_in, Device::CUDA);
  invf = contiguous(cast(invf, f64 ? DType::F64 : DType::F32));
  const int64_t half = invf.numel(), rows = pos.numel();
  Shape os{positions.shape()[0], positions.shape()[1], 2 * half};
  Tensor c = Tensor::empty(os, dtype, Device::CUDA), s = Tensor::empty(os, dtype, Device::CUDA);
  dispatch_float(dtype, op, [&](auto to) {
    using SO = decltype(to);
    if (f64) launch(tables_kernel<double, SO>, rows * half, pos.data<int64_t>(), invf.data<double>(), rows, half,
                    (double)attention_scaling, c.data<SO>(), s.data<SO>());
    else launch(tables_kernel<float, SO>, rows * half, pos.data<int64_t>(), invf.data<float>(), rows, half,
                (float)attention_scaling, c.data<SO>(), s.data<SO>());
  });
  *cos = c; *sin = s;
}

Tensor rope_forward_cuda(const Tensor& x, const Tensor& cos, const Tensor& sin) { return apply(x, cos, sin, false); }
Tensor rope_backward_cuda(const Tensor& dy, const Tensor& cos, const Tensor& sin) { return apply(dy, cos, sin, true); }

struct Registrar {
  Registrar() {
    CudaOps& o = cuda_ops();
    o.rope_tables = rope_tables_cuda;
    o.rope_forward = rope_forward_cuda;
    o.rope_backward = rope_backward_cuda;
  }
};
Registrar registrar;

}  // namespace

}  // namespace cuda
}  // namespace pk
