// norm.cu — CUDA twins of cpu/norm.cpp: RMSNorm (Llama / Gemma flavours, HF rounding) and
// LayerNorm, forward and backward, plus a fused residual-add + RMSNorm forward.
//
// Layout: x is made contiguous (a copy only for strided inputs), one thread block per row.
// Rows whose length is a multiple of 16 bytes and whose base is 16-byte aligned are read and
// written with 16-byte vectors (8 bf16 / 4 f32 per thread step). Row statistics accumulate in f64
// (the CPU does too), everything else runs in the compute type with explicitly rounded operations
// (__fmul_rn & co: no FMA contraction), so y, dx and the statistics match the CPU bit for bit
// except for the reduction order of the f64 sums.
//
// Backward parameter gradients are deterministic: rows are cut into kBlocks fixed blocks; each
// thread block walks its rows in order and adds dy·ĥ into a private f64 partial row (each column
// owned by one thread), then a second kernel adds the partials per column in block order.
#include "common.cuh"
#include "core/dispatch.h"
#include "cpu/cpu_common.h"
#include "ops.h"

namespace pk {
namespace cuda {

namespace {

// ---- explicitly rounded arithmetic (never contracted into FMAs, like the CPU build) ----
__device__ __forceinline__ float mul_(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float sub_(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double sub_(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ float div_(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double div_(double a, double b) { return __ddiv_rn(a, b); }
__device__ __forceinline__ float sqrt_(float a) { return __fsqrt_rn(a); }
__device__ __forceinline__ double sqrt_(double a) { return __dsqrt_rn(a); }

// v rounded to storage type S and widened back (the `.to(x.dtype)` of HF's graph).
template <class S, class T> __device__ __forceinline__ T round_s(T v) {
  return Conv<T>::load(Conv<T>::template store<S>(v));
}

// A run-time typed load (dy and statistics may come in any float dtype).
template <class T> __device__ __forceinline__ T load_dyn(const void* p, int dt, int64_t i) {
  switch (dt) {
    case (int)DType::F32: return (T)static_cast<const float*>(p)[i];
    case (int)DType::F64: return (T)static_cast<const double*>(p)[i];
    case (int)DType::BF16: return (T)__bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default: return (T)__half2float(static_cast<const __half*>(p)[i]);
  }
}

// N consecutive elements (16 bytes when VEC) of a row.
template <class S, bool VEC> struct Pack { static constexpr int N = VEC ? int(16 / sizeof(S)) : 1; };
template <class S, bool VEC, class T> __device__ __forceinline__ void load_pack(const S* p, T* v) {
  if constexpr (VEC) {
    uint4 u = *reinterpret_cast<const uint4*>(p);
    const S* s = reinterpret_cast<const S*>(&u);
#pragma unroll
    for (int k = 0; k < Pack<S, VEC>::N; k++) v[k] = Conv<T>::load(s[k]);
  } else {
    v[0] = Conv<T>::load(*p);
  }
}
template <class S, bool VEC, class T> __device__ __forceinline__ void store_pack(S* p, const T* v) {
  if constexpr (VEC) {
    uint4 u;
    S* s = reinterpret_cast<S*>(&u);
#pragma unroll
    for (int k = 0; k < Pack<S, VEC>::N; k++) s[k] = Conv<T>::template store<S>(v[k]);
    *reinterpret_cast<uint4*>(p) = u;
  } else {
    *p = Conv<T>::template store<S>(v[0]);
  }
}

// Block-wide f64 sum (blockDim a multiple of 32, <= 1024); every thread gets the total.
__device__ double block_sum(double v, double* sh) {
  for (int d = 16; d > 0; d >>= 1) v += __shfl_xor_sync(0xffffffffu, v, d);
  const int w = threadIdx.x >> 5, l = threadIdx.x & 31, nw = blockDim.x >> 5;
  __syncthreads();   // sh may still be read by a previous call
  if (l == 0) sh[w] = v;
  __syncthreads();
  double t = 0;
  for (int i = 0; i < nw; i++) t += sh[i];   // same order in every thread
  return t;
}

constexpr int64_t kBlocks = 256;   // fixed row blocks of the deterministic parameter-gradient sums

int threads_for(int64_t packs) {
  int64_t t = (packs + 31) / 32 * 32;
  return (int)std::max<int64_t>(32, std::min<int64_t>(t, 512));
}

bool can_vec(const void* p, int64_t C, size_t es) { return (C * (int64_t)es) % 16 == 0 && ptr_alignment(p) >= 16; }

// ------------------------------------------------------------------------------------- RMSNorm
// mode: 0 no weight, 1 Llama (y = g * round(h)), 2 Gemma (y = round(h * (1 + w))).
template <class SX, class SO, class T, bool VEC, bool RESID>
__global__ void rms_fwd_kernel(const SX* __restrict__ x, const SX* __restrict__ res, SX* __restrict__ hsum,
                               const T* __restrict__ g, SO* __restrict__ y, T* __restrict__ rstd, int64_t C, T teps,
                               int mode) {
  __shared__ double sh[32];
  constexpr int N = Pack<SX, VEC>::N;
  const int64_t row = blockIdx.x;
  const SX* xr = x + row * C;
  const int64_t packs = C / N;
  double ss = 0;
  for (int64_t q = threadIdx.x; q < packs; q += blockDim.x) {
    T v[N];
    load_pack<SX, VEC>(xr + q * N, v);
    if constexpr (RESID) {
      T r[N];
      load_pack<SX, VEC>(res + row * C + q * N, r);
#pragma unroll
      for (int k = 0; k < N; k++) v[k] = round_s<SX>(add_(v[k], r[k]));
      store_pack<SX, VEC>(hsum + row * C + q * N, v);
    }
#pragma unroll
    for (int k = 0; k < N; k++) ss += (double)v[k] * (double)v[k];
  }
  ss = block_sum(ss, sh);
  const T var = (T)(ss / (double)C);
  const T rs = div_(T(1), sqrt_(add_(var, teps)));
  if (threadIdx.x == 0) rstd[row] = rs;
  const SX* src = RESID ? hsum + row * C : xr;
  if constexpr (RESID) __syncthreads();   // hsum written by other threads of this block (global, same block)
  for (int64_t q = threadIdx.x; q < packs; q += blockDim.x) {
    T v[N];
    load_pack<SX, VEC>(src + q * N, v);
#pragma unroll
    for (int k = 0; k < N; k++) {
      const int64_t c = q * N + k;
      T h = mul_(v[k], rs);
      if (mode == 1) v[k] = mul_(g[c], round_s<SX>(h));
      else if (mode == 2) v[k] = mul_(h, add_(g[c], T(1)));
      else v[k] = h;
    }
    if constexpr (VEC && sizeof(SO) == sizeof(SX)) {
      store_pack<SO, true>(y + row * C + q * N, v);
    } else {
#pragma unroll
      for (int k = 0; k < N; k++) y[row * C + q * N + k] = Conv<T>::template store<SO>(v[k]);
    }
  }
}

// Backward: grid = nblk row blocks; part (nblk, C) f64 when dw is wanted.
template <class SX, class T>
__global__ void rms_bwd_kernel(const SX* __restrict__ x, const void* __restrict__ dy, int dyt, const T* __restrict__ g,
                               const T* __restrict__ rstd, SX* __restrict__ dx, double* __restrict__ part, int64_t rows,
                               int64_t C, int64_t nblk, int mode) {
  __shared__ double sh[32];
  const int64_t b = blockIdx.x;
  double* pb = part ? part + b * C : nullptr;
  if (pb) for (int64_t c = threadIdx.x; c < C; c += blockDim.x) pb[c] = 0.0;
  const int64_t r0 = b * rows / nblk, r1 = (b + 1) * rows / nblk;
  for (int64_t r = r0; r < r1; r++) {
    const SX* xr = x + r * C;
    const int64_t off = r * C;
    const T rs = rstd[r];
    double dot = 0;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      const T xv = Conv<T>::load(xr[c]), gv = load_dyn<T>(dy, dyt, off + c);
      const T h = mul_(xv, rs);
      if (pb) pb[c] += (double)gv * (double)(mode == 1 ? round_s<SX>(h) : h);
      if (dx) {
        const T gg = mode ? mul_(gv, mode == 2 ? add_(g[c], T(1)) : g[c]) : gv;
        dot += (double)gg * (double)h;
      }
    }
    if (!dx) continue;
    dot = block_sum(dot, sh);
    const T k = (T)(dot / (double)C);
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      const T xv = Conv<T>::load(xr[c]), gv = load_dyn<T>(dy, dyt, off + c);
      const T gg = mode ? mul_(gv, mode == 2 ? add_(g[c], T(1)) : g[c]) : gv;
      const T h = mul_(xv, rs);
      dx[off + c] = Conv<T>::template store<SX>(mul_(rs, sub_(gg, mul_(h, k))));
    }
  }
}

// out[k][c] = sum over blocks (in order) of part[b][k][c]; written in the parameter's dtype.
template <class SP>
__global__ void partial_finish_kernel(const double* __restrict__ part, int64_t nblk, int64_t nsums, int64_t C, int k,
                                      SP* __restrict__ out) {
  for (int64_t c = global_tid<int64_t>(); c < C; c += grid_stride<int64_t>()) {
    double s = 0;
    for (int64_t b = 0; b < nblk; b++) s += part[(b * nsums + k) * C + c];
    out[c] = from_f64<SP>(s);
  }
}

Tensor finish_param_grad(const Tensor& part, int64_t nblk, int64_t nsums, int64_t C, int k, DType dt) {
  Tensor out = Tensor::empty({C}, dt, Device::CUDA);
  dispatch_float(dt, "norm backward", [&](auto tag) {
    using SP = decltype(tag);
    launch(partial_finish_kernel<SP>, C, (const double*)part.data<double>(), nblk, nsums, C, k, out.data<SP>());
  });
  return out;
}

// ---- checks (same messages as the CPU ops) ----
Shape stat_shape(const Tensor& x) { return Shape(x.shape().begin(), x.shape().end() - 1); }

int64_t check_x(const Tensor& x, const char* op) {
  check_float(x, op, "x"); check_cuda(x, op, "x");
  PK_CHECK(x.dim() >= 1, op, ": x must have at least 1 dim (..., C), got ", x.desc());
  PK_CHECK(x.shape().back() >= 1, op, ": x has an empty normalised dim: ", x.desc());
  return x.shape().back();
}
void check_param(const Tensor& p, int64_t C, const char* op, const char* arg, const Tensor& x) {
  if (!p.defined()) return;
  check_float(p, op, arg); check_cuda(p, op, arg);
  PK_CHECK(p.dim() == 1 && p.shape()[0] == C, op, ": ", arg, " ", p.desc(), " must be 1-d of size C=", C,
           " (the last dim of x ", x.desc(), ")");
}
void check_stat(const Tensor& s, const Tensor& x, const char* op, const char* arg) {
  check_float(s, op, arg); check_cuda(s, op, arg);
  PK_CHECK(s.shape() == stat_shape(x), op, ": ", arg, " ", s.desc(), " must have shape ", shape_str(stat_shape(x)),
           " (x ", x.desc(), " without its last dim)");
}
void check_dy(const Tensor& dy, const Tensor& x, const char* op) {
  check_float(dy, op, "dy"); check_cuda(dy, op, "dy");
  PK_CHECK(dy.shape() == x.shape(), op, ": dy ", dy.desc(), " does not match x ", x.desc());
}

// The parameter widened to the compute dtype, contiguous (undefined stays undefined).
Tensor param_c(const Tensor& p, DType cd) { return p.defined() ? contiguous(cast(p, cd)) : Tensor(); }

template <class SX, class SO, class T, bool RESID>
void rms_fwd_launch(const Tensor& x, const Tensor& res, const Tensor& hsum, const Tensor& g, const Tensor& y,
                    const Tensor& rstd, int64_t rows, int64_t C, double eps, int mode) {
  const SX* px = x.data<SX>();
  const SX* pr = RESID ? res.data<SX>() : nullptr;
  SX* ph = RESID ? hsum.data<SX>() : nullptr;
  bool vec = can_vec(px, C, sizeof(SX)) && can_vec(y.raw(), C, sizeof(SO)) &&
             (!RESID || (can_vec(pr, C, sizeof(SX)) && can_vec(ph, C, sizeof(SX))));
  const T* pg = g.defined() ? g.data<T>() : nullptr;
  const T teps = (T)eps;
  if (vec && sizeof(SO) == sizeof(SX)) {
    int th = threads_for(C / Pack<SX, true>::N);
    rms_fwd_kernel<SX, SO, T, true, RESID><<<(unsigned)rows, th, 0, cur_stream()>>>(px, pr, ph, pg, y.data<SO>(), rstd.data<T>(), C, teps, mode);
  } else {
    int th = threads_for(C);
    rms_fwd_kernel<SX, SO, T, false, RESID><<<(unsigned)rows, th, 0, cur_stream()>>>(px, pr, ph, pg, y.data<SO>(), rstd.data<T>(), C, teps, mode);
  }
  PK_CUDA_CHECK_LAUNCH();
}

// Output storage type dispatch: SO is SX, float or double.
template <class SX, class F> void dispatch_out(DType od, F&& f) {
  if (od == DType::F32) f(float{});
  else if (od == DType::F64) f(double{});
  else f(SX{});
}

Tensor rms_forward_impl(const Tensor& x_in, const Tensor& res_in, const Tensor& w, double eps, bool unit_offset,
                        Tensor* hsum_out, Tensor* rstd_out, const char* op) {
  int64_t C = check_x(x_in, op);
  check_param(w, C, op, "weight", x_in);
  PK_CHECK(eps >= 0 && std::isfinite(eps), op, ": eps must be finite and >= 0, got ", eps);
  const bool resid = res_in.defined();
  if (resid) {
    check_cuda(res_in, op, "residual");
    PK_CHECK(res_in.shape() == x_in.shape() && res_in.dtype() == x_in.dtype(), op, ": residual ", res_in.desc(),
             " must match x ", x_in.desc());
  }
  Tensor x = contiguous(x_in), res = resid ? contiguous(res_in) : Tensor();
  int64_t rows = x.numel() / C;
  DType xd = x.dtype(), cd = compute_dtype(xd);
  DType od = (w.defined() && !unit_offset) ? promote(xd, w.dtype()) : xd;
  Tensor y = Tensor::empty(x.shape(), od, Device::CUDA);
  Tensor rstd = Tensor::empty(stat_shape(x), cd, Device::CUDA);
  Tensor hsum = resid ? Tensor::empty(x.shape(), xd, Device::CUDA) : Tensor();
  Tensor g = param_c(w, cd);
  int mode = !w.defined() ? 0 : unit_offset ? 2 : 1;
  if (rows > 0) {
    dispatch_float(xd, op, [&](auto tx) {
      using SX = decltype(tx);
      using T = typename Compute<SX>::type;
      dispatch_out<SX>(od, [&](auto to) {
        using SO = decltype(to);
        if (resid) rms_fwd_launch<SX, SO, T, true>(x, res, hsum, g, y, rstd, rows, C, eps, mode);
        else rms_fwd_launch<SX, SO, T, false>(x, res, hsum, g, y, rstd, rows, C, eps, mode);
      });
    });
  }
  if (rstd_out) *rstd_out = rstd;
  if (hsum_out) *hsum_out = hsum;
  return y;
}

Tensor rms_norm_forward_cuda(const Tensor& x, const Tensor& w, double eps, bool unit_offset, Tensor* rstd) {
  return rms_forward_impl(x, Tensor(), w, eps, unit_offset, nullptr, rstd, "rms_norm");
}

// h = x + residual (rounded to x's dtype, as torch's bf16 `residual + hidden`), y = rms_norm(h).
Tensor add_rms_norm_forward_cuda(const Tensor& x, const Tensor& residual, const Tensor& w, double eps, bool unit_offset,
                                 Tensor* sum, Tensor* rstd) {
  check_defined(residual, "add_rms_norm", "residual");
  return rms_forward_impl(x, residual, w, eps, unit_offset, sum, rstd, "add_rms_norm");
}

void rms_norm_backward_cuda(const Tensor& x_in, const Tensor& w, const Tensor& rstd_in, const Tensor& dy_in, bool unit_offset,
                            Tensor* dx_out, Tensor* dw_out) {
  const char* op = "rms_norm_backward";
  int64_t C = check_x(x_in, op);
  check_param(w, C, op, "weight", x_in);
  check_stat(rstd_in, x_in, op, "rstd");
  check_dy(dy_in, x_in, op);
  Tensor x = contiguous(x_in), dy = contiguous(dy_in);
  DType xd = x.dtype(), cd = compute_dtype(xd);
  Tensor rstd = contiguous(cast(rstd_in, cd));
  int64_t rows = x.numel() / C;
  bool want_dx = dx_out != nullptr, want_dw = dw_out != nullptr && w.defined();
  Tensor dx = want_dx ? Tensor::empty(x.shape(), xd, Device::CUDA) : Tensor();
  Tensor g = param_c(w, cd);
  int mode = !w.defined() ? 0 : unit_offset ? 2 : 1;
  int64_t nblk = std::max<int64_t>(1, std::min(rows, kBlocks));
  Tensor part = want_dw ? Tensor::empty({nblk, C}, DType::F64, Device::CUDA) : Tensor();
  if (rows > 0 && (want_dx || want_dw)) {
    dispatch_float(xd, op, [&](auto tx) {
      using SX = decltype(tx);
      using T = typename Compute<SX>::type;
      rms_bwd_kernel<SX, T><<<(unsigned)nblk, threads_for(C), 0, cur_stream()>>>(
          x.data<SX>(), dy.raw(), (int)dy.dtype(), g.defined() ? g.data<T>() : nullptr, rstd.data<T>(),
          want_dx ? dx.data<SX>() : nullptr, want_dw ? part.data<double>() : nullptr, rows, C, nblk, mode);
      PK_CUDA_CHECK_LAUNCH();
    });
  }
  if (want_dx) *dx_out = dx;
  if (dw_out) {
    if (!want_dw) *dw_out = Tensor();
    else if (rows == 0) *dw_out = zeros({C}, w.dtype());
    else *dw_out = finish_param_grad(part, nblk, 1, C, 0, w.dtype());
  }
}

// ------------------------------------------------------------------------------------ LayerNorm

template <class SX, class T>
__global__ void ln_fwd_kernel(const SX* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                              SX* __restrict__ y, T* __restrict__ mean, T* __restrict__ rstd, int64_t C, double eps) {
  __shared__ double sh[32];
  const int64_t row = blockIdx.x;
  const SX* xr = x + row * C;
  double s = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s += (double)Conv<T>::load(xr[c]);
  s = block_sum(s, sh);
  const double mu = s / (double)C;
  double v = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    double d = (double)Conv<T>::load(xr[c]) - mu;
    v += d * d;
  }
  v = block_sum(v, sh);
  const T m = (T)mu, rs = (T)(1.0 / sqrt(v / (double)C + eps));
  if (threadIdx.x == 0) { mean[row] = m; rstd[row] = rs; }
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    T o = mul_(mul_(sub_(Conv<T>::load(xr[c]), m), rs), w ? w[c] : T(1));
    o = add_(o, bias ? bias[c] : T(0));
    y[row * C + c] = Conv<T>::template store<SX>(o);
  }
}

template <class SX, class T>
__global__ void ln_bwd_kernel(const SX* __restrict__ x, const void* __restrict__ dy, int dyt, const T* __restrict__ w,
                              const T* __restrict__ mean, const T* __restrict__ rstd, SX* __restrict__ dx,
                              double* __restrict__ part, int64_t rows, int64_t C, int64_t nblk, int kw, int kb, int nsums) {
  __shared__ double sh[32];
  const int64_t b = blockIdx.x;
  double* pb = part ? part + b * nsums * C : nullptr;
  // Zero each sum's row with the column -> thread mapping the accumulation below uses, so every
  // element is zeroed and then accumulated by the same thread (there is no barrier in between).
  if (pb)
    for (int k = 0; k < nsums; k++)
      for (int64_t c = threadIdx.x; c < C; c += blockDim.x) pb[k * C + c] = 0.0;
  const int64_t r0 = b * rows / nblk, r1 = (b + 1) * rows / nblk;
  for (int64_t r = r0; r < r1; r++) {
    const SX* xr = x + r * C;
    const int64_t off = r * C;
    const T m = mean[r], rs = rstd[r];
    double sg = 0, sgx = 0;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      const T xh = mul_(sub_(Conv<T>::load(xr[c]), m), rs), gv = load_dyn<T>(dy, dyt, off + c);
      if (kw >= 0) pb[kw * C + c] += (double)gv * (double)xh;
      if (kb >= 0) pb[kb * C + c] += (double)gv;
      if (dx) {
        const T gg = mul_(gv, w ? w[c] : T(1));
        sg += (double)gg;
        sgx += (double)gg * (double)xh;
      }
    }
    if (!dx) continue;
    sg = block_sum(sg, sh);
    sgx = block_sum(sgx, sh);
    const T a = (T)(sg / (double)C), cc = (T)(sgx / (double)C);
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      const T xh = mul_(sub_(Conv<T>::load(xr[c]), m), rs), gv = load_dyn<T>(dy, dyt, off + c);
      const T gg = mul_(gv, w ? w[c] : T(1));
      dx[off + c] = Conv<T>::template store<SX>(mul_(rs, sub_(sub_(gg, a), mul_(xh, cc))));
    }
  }
}

Tensor layer_norm_forward_cuda(const Tensor& x_in, const Tensor& w, const Tensor& b, double eps, Tensor* mean_out, Tensor* rstd_out) {
  const char* op = "layer_norm";
  int64_t C = check_x(x_in, op);
  check_param(w, C, op, "weight", x_in);
  check_param(b, C, op, "bias", x_in);
  PK_CHECK(eps >= 0 && std::isfinite(eps), op, ": eps must be finite and >= 0, got ", eps);
  Tensor x = contiguous(x_in);
  int64_t rows = x.numel() / C;
  DType xd = x.dtype(), cd = compute_dtype(xd);
  Tensor y = Tensor::empty(x.shape(), xd, Device::CUDA);
  Tensor mean = Tensor::empty(stat_shape(x), cd, Device::CUDA), rstd = Tensor::empty(stat_shape(x), cd, Device::CUDA);
  Tensor wc = param_c(w, cd), bc = param_c(b, cd);
  if (rows > 0) {
    dispatch_float(xd, op, [&](auto tx) {
      using SX = decltype(tx);
      using T = typename Compute<SX>::type;
      ln_fwd_kernel<SX, T><<<(unsigned)rows, threads_for(C), 0, cur_stream()>>>(
          x.data<SX>(), wc.defined() ? wc.data<T>() : nullptr, bc.defined() ? bc.data<T>() : nullptr, y.data<SX>(),
          mean.data<T>(), rstd.data<T>(), C, eps);
      PK_CUDA_CHECK_LAUNCH();
    });
  }
  if (mean_out) *mean_out = mean;
  if (rstd_out) *rstd_out = rstd;
  return y;
}

void layer_norm_backward_cuda(const Tensor& x_in, const Tensor& w, const Tensor& mean_in, const Tensor& rstd_in,
                              const Tensor& dy_in, Tensor* dx_out, Tensor* dw_out, Tensor* db_out) {
  const char* op = "layer_norm_backward";
  int64_t C = check_x(x_in, op);
  check_param(w, C, op, "weight", x_in);
  check_stat(mean_in, x_in, op, "mean");
  check_stat(rstd_in, x_in, op, "rstd");
  check_dy(dy_in, x_in, op);
  Tensor x = contiguous(x_in), dy = contiguous(dy_in);
  DType xd = x.dtype(), cd = compute_dtype(xd);
  Tensor mean = contiguous(cast(mean_in, cd)), rstd = contiguous(cast(rstd_in, cd));
  int64_t rows = x.numel() / C;
  bool want_dx = dx_out != nullptr;
  int nsums = (dw_out ? 1 : 0) + (db_out ? 1 : 0);
  int kw = dw_out ? 0 : -1, kb = db_out ? (dw_out ? 1 : 0) : -1;
  Tensor dx = want_dx ? Tensor::empty(x.shape(), xd, Device::CUDA) : Tensor();
  Tensor wc = param_c(w, cd);
  int64_t nblk = std::max<int64_t>(1, std::min(rows, kBlocks));
  Tensor part = nsums ? Tensor::empty({nblk, nsums, C}, DType::F64, Device::CUDA) : Tensor();
  if (rows > 0 && (want_dx || nsums)) {
    dispatch_float(xd, op, [&](auto tx) {
      using SX = decltype(tx);
      using T = typename Compute<SX>::type;
      ln_bwd_kernel<SX, T><<<(unsigned)nblk, threads_for(C), 0, cur_stream()>>>(
          x.data<SX>(), dy.raw(), (int)dy.dtype(), wc.defined() ? wc.data<T>() : nullptr, mean.data<T>(), rstd.data<T>(),
          want_dx ? dx.data<SX>() : nullptr, nsums ? part.data<double>() : nullptr, rows, C, nblk, kw, kb, nsums);
      PK_CUDA_CHECK_LAUNCH();
    });
  }
  if (want_dx) *dx_out = dx;
  DType pd = w.defined() ? w.dtype() : xd;   // the parameter's dtype (x's when absent), as on the CPU
  auto grad = [&](int k) { return rows == 0 ? zeros({C}, pd) : finish_param_grad(part, nblk, nsums, C, k, pd); };
  if (dw_out) *dw_out = grad(kw);
  if (db_out) *db_out = grad(kb);
}

struct Registrar {
  Registrar() {
    CudaOps& o = cuda_ops();
    o.rms_norm_forward = rms_norm_forward_cuda;
    o.rms_norm_backward = rms_norm_backward_cuda;
    o.add_rms_norm_forward = add_rms_norm_forward_cuda;
    o.layer_norm_forward = layer_norm_forward_cuda;
    o.layer_norm_backward = layer_norm_backward_cuda;
  }
};
Registrar registrar;

}  // namespace

}  // namespace cuda
}  // namespace pk
