// softmax.cu — CUDA twins of cpu/softmax.cpp: softmax / log_softmax over any dim, and their
// backward twins (which take the forward OUTPUT y, like the CPU ops).
//
// A "row" is the run of elements along `dim`; every other dim enumerates rows (offsets through a
// 64-bit offset calculator over x's own strides, so strided views are read in place). Two shapes:
//   * unit-stride rows: a warp per row (rows up to 2048 long) or a 256-thread block per row (longer
//     rows, e.g. a 150k vocabulary); threads stride along the row (coalesced). The forward is one
//     online (max, sum-exp) pass plus one output pass, so the row is read twice, never widened
//     into a buffer.
//   * strided rows (dim is not the innermost dim): a thread per row, neighbouring threads own
//     neighbouring rows, which are adjacent in memory for a contiguous tensor (coalesced).
// Math in f32 (f64 for f64) with max subtraction; NaN sticks in the max like the CPU (fmaxf would
// drop it); a row of all -inf gives NaN (as torch and the CPU). Results are contiguous.
#include "common.cuh"
#include "core/dispatch.h"
#include "cpu/cpu_common.h"
#include "ops.h"

namespace pk {
namespace cuda {

Tensor softmax_forward(const Tensor& x, int64_t dim);
Tensor softmax_backward(const Tensor& y, const Tensor& dy, int64_t dim);
Tensor log_softmax_forward(const Tensor& x, int64_t dim);
Tensor log_softmax_backward(const Tensor& y, const Tensor& dy, int64_t dim);

namespace {

constexpr int kWarpRowMax = 2048;  // rows up to this length get a warp, longer ones a block

template <class C> __device__ __forceinline__ C ninf() { return -(C)INFINITY; }
template <class C> __device__ __forceinline__ C exp_c(C v);
template <> __device__ __forceinline__ float exp_c<float>(float v) { return expf(v); }
template <> __device__ __forceinline__ double exp_c<double>(double v) { return exp(v); }
template <class C> __device__ __forceinline__ C log_c(C v);
template <> __device__ __forceinline__ float log_c<float>(float v) { return logf(v); }
template <> __device__ __forceinline__ double log_c<double>(double v) { return log(v); }

// Online (max, sum exp(x - max)) of a stream of values; NaN sticks, -inf contributes nothing.
template <class C> struct MaxSum {
  C m, s;
  __device__ __forceinline__ void init() { m = ninf<C>(); s = 0; }
  __device__ __forceinline__ void add(C v) {
    if (v != v) { m = v; s = v; }
    else if (v > m) { s = s * exp_c<C>(m - v) + (C)1; m = v; }
    else if (v != ninf<C>()) s += exp_c<C>(v - m);
  }
  __device__ __forceinline__ void merge(C m2, C s2) {
    if (m != m) return;
    if (m2 != m2) { m = m2; s = s2; return; }
    if (m2 == ninf<C>()) return;
    if (m == ninf<C>()) { m = m2; s = s2; return; }
    if (m2 > m) { s = s * exp_c<C>(m - m2) + s2; m = m2; }
    else s += s2 * exp_c<C>(m2 - m);
  }
};

template <class C> __device__ __forceinline__ void warp_merge(MaxSum<C>& a) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) {
    C m2 = __shfl_xor_sync(0xffffffffu, a.m, d), s2 = __shfl_xor_sync(0xffffffffu, a.s, d);
    a.merge(m2, s2);
  }
}
template <class C> __device__ __forceinline__ C warp_sum(C v) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) v += __shfl_xor_sync(0xffffffffu, v, d);
  return v;
}

// Block of (32, 8) threads. BLOCK: the whole block owns one row; else each warp owns one.
template <class S, class C, bool BLOCK, bool LOG>
__global__ void fwd_rows_kernel(const S* __restrict__ x, S* __restrict__ y, OffsetCalc64<2> rc, int64_t rows, int64_t L,
                                int64_t sx, int64_t sy) {
  __shared__ C sm_m[8], sm_s[8];
  const int lane = threadIdx.x, wy = threadIdx.y;
  const int nthr = BLOCK ? 256 : 32, tid = BLOCK ? wy * 32 + lane : lane;
  const int64_t step = BLOCK ? gridDim.x : (int64_t)gridDim.x * 8;
  for (int64_t r = BLOCK ? blockIdx.x : (int64_t)blockIdx.x * 8 + wy; r < rows; r += step) {
    int64_t off[2];
    rc.get(r, off);
    const S* xr = x + off[0];
    S* yr = y + off[1];
    MaxSum<C> a;
    a.init();
    for (int64_t i = tid; i < L; i += nthr) a.add(Conv<C>::load(xr[i * sx]));
    warp_merge(a);
    if (BLOCK) {
      if (lane == 0) { sm_m[wy] = a.m; sm_s[wy] = a.s; }
      __syncthreads();
      a.init();
      for (int w = 0; w < 8; w++) a.merge(sm_m[w], sm_s[w]);
      __syncthreads();  // sm_* is reused by the next row
    }
    const C M = a.m;
    if (LOG) {
      const C ls = log_c<C>(a.s);
      for (int64_t i = tid; i < L; i += nthr) yr[i * sy] = Conv<C>::template store<S>((Conv<C>::load(xr[i * sx]) - M) - ls);
    } else {
      const C inv = (C)1 / a.s;
      for (int64_t i = tid; i < L; i += nthr) yr[i * sy] = Conv<C>::template store<S>(exp_c<C>(Conv<C>::load(xr[i * sx]) - M) * inv);
    }
  }
}

// A thread per row (rows strided along dim).
template <class S, class C, bool LOG>
__global__ void fwd_cols_kernel(const S* __restrict__ x, S* __restrict__ y, OffsetCalc64<2> rc, int64_t rows, int64_t L,
                                int64_t sx, int64_t sy) {
  for (int64_t r = global_tid<int64_t>(); r < rows; r += grid_stride<int64_t>()) {
    int64_t off[2];
    rc.get(r, off);
    const S* xr = x + off[0];
    S* yr = y + off[1];
    MaxSum<C> a;
    a.init();
    for (int64_t i = 0; i < L; i++) a.add(Conv<C>::load(xr[i * sx]));
    const C M = a.m;
    if (LOG) {
      const C ls = log_c<C>(a.s);
      for (int64_t i = 0; i < L; i++) yr[i * sy] = Conv<C>::template store<S>((Conv<C>::load(xr[i * sx]) - M) - ls);
    } else {
      const C inv = (C)1 / a.s;
      for (int64_t i = 0; i < L; i++) yr[i * sy] = Conv<C>::template store<S>(exp_c<C>(Conv<C>::load(xr[i * sx]) - M) * inv);
    }
  }
}

// softmax:     dx = y * (dy - sum(dy * y))
// log_softmax: dx = dy - exp(y) * sum(dy)
template <class S, class SG, class C, bool LOG>
__device__ __forceinline__ C bwd_term(const S* yr, const SG* gr, int64_t i, int64_t sy, int64_t sg) {
  const C g = Conv<C>::load(gr[i * sg]);
  return LOG ? g : g * Conv<C>::load(yr[i * sy]);
}
template <class S, class SG, class C, bool LOG>
__device__ __forceinline__ C bwd_out(const S* yr, const SG* gr, int64_t i, int64_t sy, int64_t sg, C st) {
  const C g = Conv<C>::load(gr[i * sg]), yv = Conv<C>::load(yr[i * sy]);
  return LOG ? g - exp_c<C>(yv) * st : yv * (g - st);
}

template <class S, class SG, class C, bool BLOCK, bool LOG>
__global__ void bwd_rows_kernel(const S* __restrict__ y, const SG* __restrict__ dy, S* __restrict__ dx,
                                OffsetCalc64<3> rc, int64_t rows, int64_t L, int64_t sy, int64_t sg, int64_t sd) {
  __shared__ C sm[8];
  const int lane = threadIdx.x, wy = threadIdx.y;
  const int nthr = BLOCK ? 256 : 32, tid = BLOCK ? wy * 32 + lane : lane;
  const int64_t step = BLOCK ? gridDim.x : (int64_t)gridDim.x * 8;
  for (int64_t r = BLOCK ? blockIdx.x : (int64_t)blockIdx.x * 8 + wy; r < rows; r += step) {
    int64_t off[3];
    rc.get(r, off);
    const S* yr = y + off[0];
    const SG* gr = dy + off[1];
    S* dr = dx + off[2];
    C acc = 0;
    for (int64_t i = tid; i < L; i += nthr) acc += bwd_term<S, SG, C, LOG>(yr, gr, i, sy, sg);
    acc = warp_sum(acc);
    if (BLOCK) {
      if (lane == 0) sm[wy] = acc;
      __syncthreads();
      acc = 0;
      for (int w = 0; w < 8; w++) acc += sm[w];
      __syncthreads();
    }
    for (int64_t i = tid; i < L; i += nthr) dr[i * sd] = Conv<C>::template store<S>(bwd_out<S, SG, C, LOG>(yr, gr, i, sy, sg, acc));
  }
}

template <class S, class SG, class C, bool LOG>
__global__ void bwd_cols_kernel(const S* __restrict__ y, const SG* __restrict__ dy, S* __restrict__ dx,
                                OffsetCalc64<3> rc, int64_t rows, int64_t L, int64_t sy, int64_t sg, int64_t sd) {
  for (int64_t r = global_tid<int64_t>(); r < rows; r += grid_stride<int64_t>()) {
    int64_t off[3];
    rc.get(r, off);
    const S* yr = y + off[0];
    const SG* gr = dy + off[1];
    S* dr = dx + off[2];
    C acc = 0;
    for (int64_t i = 0; i < L; i++) acc += bwd_term<S, SG, C, LOG>(yr, gr, i, sy, sg);
    for (int64_t i = 0; i < L; i++) dr[i * sd] = Conv<C>::template store<S>(bwd_out<S, SG, C, LOG>(yr, gr, i, sy, sg, acc));
  }
}

// Row geometry of `dim` over tensors that share a shape: rows, row length, per-operand stride
// along dim, and an offset calculator over the other dims.
template <int N> struct Rows {
  int64_t rows = 0, L = 1;
  int64_t st[N] = {};
  OffsetCalc64<N> calc;
};
template <int N> Rows<N> plan_rows(const Tensor* const (&ts)[N], int64_t dim) {
  Rows<N> R;
  const Tensor& t0 = *ts[0];
  Shape other;
  std::vector<std::vector<int64_t>> ostr(N);
  for (int64_t d = 0; d < t0.dim(); d++) {
    if (d == dim) continue;
    other.push_back(t0.shape()[d]);
    for (int k = 0; k < N; k++) ostr[k].push_back(ts[k]->strides()[d]);
  }
  R.L = t0.dim() ? t0.shape()[dim] : 1;
  for (int k = 0; k < N; k++) R.st[k] = t0.dim() ? ts[k]->strides()[dim] : 1;
  R.rows = R.L ? t0.numel() / R.L : 0;
  R.calc = make_calc64<N>(make_layout(other, ostr));
  return R;
}

enum class Kind { Softmax, LogSoftmax };

Tensor forward(const Tensor& x_, int64_t dim, Kind kind, const char* op) {
  Tensor x = on_cuda(x_, op, "x");
  check_float(x, op, "x");
  dim = wrap_dim(dim, x.dim(), op);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), Device::CUDA);
  const Tensor* ts[2] = {&x, &y};
  Rows<2> R = plan_rows<2>(ts, dim);
  if (R.rows == 0 || R.L == 0) return y;
  const bool lg = kind == Kind::LogSoftmax;
  dispatch_float(x.dtype(), op, [&](auto tag) {
    using S = decltype(tag);
    using C = typename Compute<S>::type;
    const S* px = (const S*)x.raw();
    S* py = (S*)y.raw();
    cudaStream_t st = cur_stream();
    const int sms = sm_count();
    if (R.st[0] == 1 || R.rows == 1) {
      const bool block = R.L > kWarpRowMax;
      unsigned grid = (unsigned)std::min<int64_t>(block ? R.rows : (R.rows + 7) / 8, (int64_t)sms * 16);
      dim3 bd(32, 8);
      if (block) {
        if (lg) fwd_rows_kernel<S, C, true, true><<<grid, bd, 0, st>>>(px, py, R.calc, R.rows, R.L, R.st[0], R.st[1]);
        else fwd_rows_kernel<S, C, true, false><<<grid, bd, 0, st>>>(px, py, R.calc, R.rows, R.L, R.st[0], R.st[1]);
      } else {
        if (lg) fwd_rows_kernel<S, C, false, true><<<grid, bd, 0, st>>>(px, py, R.calc, R.rows, R.L, R.st[0], R.st[1]);
        else fwd_rows_kernel<S, C, false, false><<<grid, bd, 0, st>>>(px, py, R.calc, R.rows, R.L, R.st[0], R.st[1]);
      }
      PK_CUDA_CHECK_LAUNCH();
    } else {
      if (lg) launch(fwd_cols_kernel<S, C, true>, R.rows, px, py, R.calc, R.rows, R.L, R.st[0], R.st[1]);
      else launch(fwd_cols_kernel<S, C, false>, R.rows, px, py, R.calc, R.rows, R.L, R.st[0], R.st[1]);
    }
  });
  return y;
}

Tensor backward(const Tensor& y_, const Tensor& dy_, int64_t dim, Kind kind, const char* op) {
  Tensor y = on_cuda(y_, op, "y");
  check_float(y, op, "y");
  dim = wrap_dim(dim, y.dim(), op);
  Tensor dy = on_cuda(dy_, op, "dy");
  check_float(dy, op, "dy");
  PK_CHECK(dy.shape() == y.shape(), op, ": dy ", dy.desc(), " does not match y ", y.desc());
  Tensor dx = Tensor::empty(y.shape(), y.dtype(), Device::CUDA);
  const Tensor* ts[3] = {&y, &dy, &dx};
  Rows<3> R = plan_rows<3>(ts, dim);
  if (R.rows == 0 || R.L == 0) return dx;
  const bool lg = kind == Kind::LogSoftmax;
  dispatch_float(y.dtype(), op, [&](auto tag) {
    using S = decltype(tag);
    dispatch_float(dy.dtype(), op, [&](auto gtag) {
      using SG = decltype(gtag);
      // compute in f64 when either side is f64, as the CPU (which widens both to y's compute type)
      using C = typename Compute<S>::type;
      const S* py = (const S*)y.raw();
      const SG* pg = (const SG*)dy.raw();
      S* pd = (S*)dx.raw();
      cudaStream_t st = cur_stream();
      const int sms = sm_count();
      if (R.st[0] == 1 || R.rows == 1) {
        const bool block = R.L > kWarpRowMax;
        unsigned grid = (unsigned)std::min<int64_t>(block ? R.rows : (R.rows + 7) / 8, (int64_t)sms * 16);
        dim3 bd(32, 8);
        if (block) {
          if (lg) bwd_rows_kernel<S, SG, C, true, true><<<grid, bd, 0, st>>>(py, pg, pd, R.calc, R.rows, R.L, R.st[0], R.st[1], R.st[2]);
          else bwd_rows_kernel<S, SG, C, true, false><<<grid, bd, 0, st>>>(py, pg, pd, R.calc, R.rows, R.L, R.st[0], R.st[1], R.st[2]);
        } else {
          if (lg) bwd_rows_kernel<S, SG, C, false, true><<<grid, bd, 0, st>>>(py, pg, pd, R.calc, R.rows, R.L, R.st[0], R.st[1], R.st[2]);
          else bwd_rows_kernel<S, SG, C, false, false><<<grid, bd, 0, st>>>(py, pg, pd, R.calc, R.rows, R.L, R.st[0], R.st[1], R.st[2]);
        }
        PK_CUDA_CHECK_LAUNCH();
      } else {
        if (lg) launch(bwd_cols_kernel<S, SG, C, true>, R.rows, py, pg, pd, R.calc, R.rows, R.L, R.st[0], R.st[1], R.st[2]);
        else launch(bwd_cols_kernel<S, SG, C, false>, R.rows, py, pg, pd, R.calc, R.rows, R.L, R.st[0], R.st[1], R.st[2]);
      }
    });
  });
  return dx;
}

}  // namespace

Tensor softmax_forward(const Tensor& x, int64_t dim) { return forward(x, dim, Kind::Softmax, "softmax"); }
Tensor log_softmax_forward(const Tensor& x, int64_t dim) { return forward(x, dim, Kind::LogSoftmax, "log_softmax"); }
Tensor softmax_backward(const Tensor& y, const Tensor& dy, int64_t dim) {
  return backward(y, dy, dim, Kind::Softmax, "softmax_backward");
}
Tensor log_softmax_backward(const Tensor& y, const Tensor& dy, int64_t dim) {
  return backward(y, dy, dim, Kind::LogSoftmax, "log_softmax_backward");
}

// ---- registration into the dispatch table (attention / cross-entropy / softmax block) ----
namespace {
struct SoftmaxRegistrar {
  SoftmaxRegistrar() {
    CudaOps& o = cuda_ops();
    o.softmax_forward = softmax_forward;
    o.softmax_backward = softmax_backward;
    o.log_softmax_forward = log_softmax_forward;
    o.log_softmax_backward = log_softmax_backward;
  }
};
SoftmaxRegistrar softmax_registrar;
}  // namespace

}  // namespace cuda
}  // namespace pk
