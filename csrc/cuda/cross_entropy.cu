// cross_entropy.cu — CUDA twin of cpu/cross_entropy.cpp: fused softmax cross-entropy over a
// vocabulary, forward and backward, that never materialises f32 logits.
//
// Forward: a 256-thread block per row streams the row once with an online (max, sum-exp) — each
// thread folds 16-byte vectors (8 bf16 / 4 f32) into its running pair with one rescale per vector,
// the block merges the pairs — and writes lse_i (f32; f64 for f64 logits) and the row's loss
// lse_i - logits[i, label_i] as f64. A single-block kernel then adds the row losses in f64 (fixed
// order: deterministic) and divides by the normalizer. Nothing but the (N) row buffers is ever
// allocated: bf16 logits are widened only in registers.
// Backward: blocks over (row, vocab chunk) write dlogits = (exp(x - lse) - onehot) · g in logits'
// dtype with 16-byte loads and stores, zero rows for ignored labels; g = dloss / normalizer is
// formed on the device (dloss may be a cuda tensor: no host sync).
//
// Labels: on the CPU they are checked on the host exactly like the CPU op (same message). Labels
// on the GPU are checked by a device scan (count of non-ignored labels and the first bad
// position); the forward reads those two numbers back (one small sync) to raise the CPU op's
// error and to resolve normalizer <= 0. The backward only counts on the device (no sync): a bad
// label there cannot index out of bounds (it is only compared with column indices), and the
// forward on the same labels has already rejected it.
// Any logits strides are read in place (rows through a 64-bit offset calculator); the vector
// path needs unit stride along V and 16-byte aligned rows, anything else uses scalar loads.
#include <cmath>
#include "common.cuh"
#include "core/dispatch.h"
#include "cpu/cpu_common.h"
#include "ops.h"

namespace pk {
namespace cuda {

Tensor cross_entropy_forward(const Tensor& logits, const Tensor& labels, int64_t ignore_index, double normalizer,
                             Tensor* lse);
Tensor cross_entropy_backward(const Tensor& logits, const Tensor& labels, const Tensor& lse, const Tensor& dloss,
                              int64_t ignore_index, double normalizer);

namespace {

constexpr int kThreads = 256;

template <class C> __device__ __forceinline__ C ninf() { return -(C)INFINITY; }
__device__ __forceinline__ float fexp(float v) { return exp2f(v * 1.4426950408889634f); }
__device__ __forceinline__ double fexp(double v) { return exp(v); }
__device__ __forceinline__ float flog(float v) { return logf(v); }
__device__ __forceinline__ double flog(double v) { return log(v); }

// Online (max, sum exp(x - max)); NaN sticks (fmax would drop it), -inf contributes nothing.
template <class C> struct MaxSum {
  C m = ninf<C>(), s = 0;
  // Fold n values with one rescale (their max first).
  template <int N> __device__ __forceinline__ void add(const C (&v)[N]) {
    C vm = v[0];
#pragma unroll
    for (int k = 1; k < N; k++) vm = (v[k] > vm || v[k] != v[k]) ? v[k] : vm;
    if (vm != vm) { m = vm; s = vm; return; }
    if (m != m || vm == ninf<C>()) return;
    if (vm > m) { s = m == ninf<C>() ? (C)0 : s * fexp(m - vm); m = vm; }
#pragma unroll
    for (int k = 0; k < N; k++) s += fexp(v[k] - m);
  }
  __device__ __forceinline__ void merge(C m2, C s2) {
    if (m != m) return;
    if (m2 != m2) { m = m2; s = s2; return; }
    if (m2 == ninf<C>()) return;
    if (m == ninf<C>()) { m = m2; s = s2; return; }
    if (m2 > m) { s = s * fexp(m - m2) + s2; m = m2; }
    else s += s2 * fexp(m2 - m);
  }
};

// Elements per 16-byte vector.
template <class S> struct Vec { static constexpr int N = 16 / sizeof(S); };
template <class S, class C> __device__ __forceinline__ void load_vec(const S* p, C (&v)[Vec<S>::N]) {
  uint4 raw = *reinterpret_cast<const uint4*>(p);
  const S* e = reinterpret_cast<const S*>(&raw);
#pragma unroll
  for (int k = 0; k < Vec<S>::N; k++) v[k] = Conv<C>::load(e[k]);
}
template <class S, class C> __device__ __forceinline__ void store_vec(S* p, const C (&v)[Vec<S>::N]) {
  uint4 raw;
  S* e = reinterpret_cast<S*>(&raw);
#pragma unroll
  for (int k = 0; k < Vec<S>::N; k++) e[k] = Conv<C>::template store<S>(v[k]);
  *reinterpret_cast<uint4*>(p) = raw;
}

// Labels scan: count of labels != ignore_index, and the first position of a label outside [0, V).
__global__ void scan_labels_kernel(const int64_t* __restrict__ lab, int64_t N, int64_t V, int64_t ignore_index,
                                   unsigned long long* __restrict__ out /* [count, first_bad] */) {
  __shared__ unsigned long long sm[kThreads / 32];
  unsigned long long cnt = 0;
  for (int64_t i = global_tid<int64_t>(); i < N; i += grid_stride<int64_t>()) {
    const int64_t l = lab[i];
    if (l == ignore_index) continue;
    if (l < 0 || l >= V) atomicMin(out + 1, (unsigned long long)i);
    else cnt++;
  }
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) cnt += __shfl_xor_sync(0xffffffffu, cnt, d);
  if ((threadIdx.x & 31) == 0) sm[threadIdx.x / 32] = cnt;
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned long long t = 0;
    for (int w = 0; w < kThreads / 32; w++) t += sm[w];
    if (t) atomicAdd(out, t);
  }
}

template <class S, class C, bool VEC>
__global__ void __launch_bounds__(kThreads) ce_forward_kernel(const S* __restrict__ x, OffsetCalc64<1> rc, int64_t N,
                                                               int64_t V, int64_t sv, const int64_t* __restrict__ lab,
                                                               int64_t ignore_index, C* __restrict__ lse,
                                                               double* __restrict__ row_loss) {
  __shared__ C sm_m[kThreads / 32], sm_s[kThreads / 32];
  constexpr int W = Vec<S>::N;
  const int tid = threadIdx.x, lane = tid & 31, wid = tid >> 5;
  for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
    const int64_t y = lab[i];
    if (y == ignore_index) {  // not computed: lse reads 0, the row adds 0
      if (tid == 0) { lse[i] = 0; row_loss[i] = 0; }
      continue;
    }
    int64_t off[1];
    rc.get(i, off);
    const S* xr = x + off[0];
    MaxSum<C> a;
    if constexpr (VEC) {
      for (int64_t j = (int64_t)tid * W; j + W <= V; j += (int64_t)kThreads * W) {
        C v[W];
        load_vec<S, C>(xr + j, v);
        a.add(v);
      }
      for (int64_t j = V / W * W + tid; j < V; j += kThreads) {
        C v[1] = {Conv<C>::load(xr[j])};
        a.add(v);
      }
    } else {
      for (int64_t j = tid; j < V; j += kThreads) {
        C v[1] = {Conv<C>::load(xr[j * sv])};
        a.add(v);
      }
    }
#pragma unroll
    for (int d = 16; d > 0; d >>= 1) {
      C m2 = __shfl_xor_sync(0xffffffffu, a.m, d), s2 = __shfl_xor_sync(0xffffffffu, a.s, d);
      a.merge(m2, s2);
    }
    if (lane == 0) { sm_m[wid] = a.m; sm_s[wid] = a.s; }
    __syncthreads();
    if (tid == 0) {
      MaxSum<C> t;
      for (int w = 0; w < kThreads / 32; w++) t.merge(sm_m[w], sm_s[w]);
      const C l = t.m + flog(t.s);
      lse[i] = l;
      row_loss[i] = (double)l - (double)Conv<C>::load(xr[y * sv]);
    }
    __syncthreads();
  }
}

// loss = sum(row_loss) / norm, norm = normalizer > 0 ? normalizer : count. One block, fixed order.
template <class C>
__global__ void ce_finish_kernel(const double* __restrict__ row_loss, int64_t N, double norm, C* __restrict__ loss) {
  __shared__ double sm[1024 / 32];
  double acc = 0;
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) acc += row_loss[i];
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, d);
  if ((threadIdx.x & 31) == 0) sm[threadIdx.x / 32] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0;
    for (int w = 0; w < (int)(blockDim.x / 32); w++) t += sm[w];
    *loss = (C)(t / norm);
  }
}

// g = count ? dloss / (normalizer > 0 ? normalizer : count) : 0, from device or host values.
template <class C>
__device__ __forceinline__ C grad_scale(const double* dloss_dev, double dloss_host, const unsigned long long* count_dev,
                                        double count_host, double normalizer) {
  const double cnt = count_dev ? (double)*count_dev : count_host;
  const double dl = dloss_dev ? *dloss_dev : dloss_host;
  return cnt != 0 ? (C)(dl / (normalizer > 0 ? normalizer : cnt)) : (C)0;
}

// Block (row i, chunk c) of kThreads·W columns (W = 8 bf16 / 4 f32 in the vector path, 1 otherwise).
template <class S, class C, bool VEC>
__global__ void __launch_bounds__(kThreads) ce_backward_kernel(const S* __restrict__ x, OffsetCalc64<1> rc, int64_t N,
                                                                int64_t V, int64_t sv, int64_t nchunks,
                                                                const int64_t* __restrict__ lab, int64_t ignore_index,
                                                                const C* __restrict__ lse, const double* dloss_dev,
                                                                double dloss_host, const unsigned long long* count_dev,
                                                                double count_host, double normalizer,
                                                                S* __restrict__ out) {
  constexpr int W = VEC ? Vec<S>::N : 1;
  constexpr int64_t CH = (int64_t)kThreads * W;
  const C g = grad_scale<C>(dloss_dev, dloss_host, count_dev, count_host, normalizer);
  for (int64_t t = blockIdx.x; t < N * nchunks; t += gridDim.x) {
    const int64_t i = t / nchunks, c0 = (t - i * nchunks) * CH;
    const int64_t y = lab[i];
    S* orow = out + i * V;
    const int64_t j = c0 + (int64_t)threadIdx.x * W;
    if (y == ignore_index) {
      bool done = false;
      if constexpr (VEC) {
        if (j + W <= V) {
          C z[W];
#pragma unroll
          for (int k = 0; k < W; k++) z[k] = 0;
          store_vec<S, C>(orow + j, z);
          done = true;
        }
      }
      if (!done)
        for (int64_t e = j; e < j + W && e < V; e++) orow[e] = Conv<C>::template store<S>((C)0);
      continue;
    }
    int64_t off[1];
    rc.get(i, off);
    const S* xr = x + off[0];
    const C l = lse[i];
    bool done = false;
    if constexpr (VEC) {
      if (j + W <= V) {
        C v[W];
        load_vec<S, C>(xr + j, v);
#pragma unroll
        for (int k = 0; k < W; k++) v[k] = fexp(v[k] - l) * g - (j + k == y ? g : (C)0);
        store_vec<S, C>(orow + j, v);
        done = true;
      }
    }
    if (!done)
      for (int64_t e = j; e < j + W && e < V; e++)
        orow[e] = Conv<C>::template store<S>(fexp(Conv<C>::load(xr[e * sv]) - l) * g - (e == y ? g : (C)0));
  }
}

struct Prepared {
  Tensor lab;                    // labels as contiguous i64 on the device
  int64_t N = 0, V = 0;
  bool host_count = false;       // count known on the host
  int64_t count = 0;
  Tensor scan;                   // device [count, first_bad] (u64) when labels came from the GPU
};

Prepared prepare(const Tensor& logits_, const Tensor& labels, int64_t ignore_index, const char* op, bool check_now) {
  Tensor logits = on_cuda(logits_, op, "logits");
  check_float(logits, op, "logits");
  PK_CHECK(logits.dim() >= 1, op, ": logits must be (..., V), got ", logits.desc());
  check_defined(labels, op, "labels");
  PK_CHECK(labels.dtype() == DType::I64 || labels.dtype() == DType::I32, op, ": labels must be an i64 or i32 tensor, got ",
           labels.desc());
  Shape lead(logits.shape().begin(), logits.shape().end() - 1);
  PK_CHECK(labels.shape() == lead, op, ": labels ", labels.desc(), " must have the shape of logits ", logits.desc(),
           " without its last (vocabulary) dim, i.e. ", shape_str(lead));
  Prepared p;
  p.V = logits.shape().back();
  PK_CHECK(p.V >= 1, op, ": empty vocabulary in logits ", logits.desc());
  p.N = labels.numel();
  if (labels.device() == Device::CPU) {
    Tensor l = labels.to(DType::I64).contiguous();
    const int64_t* pl = l.data<int64_t>();
    for (int64_t i = 0; i < p.N; i++) {
      if (pl[i] == ignore_index) continue;
      PK_CHECK(pl[i] >= 0 && pl[i] < p.V, op, ": label ", pl[i], " at position ", i, " of labels ", labels.desc(),
               " is out of range [0, V=", p.V, ") and is not ignore_index (", ignore_index, ")");
      p.count++;
    }
    p.host_count = true;
    p.lab = to_device(l, Device::CUDA);
    return p;
  }
  p.lab = contiguous(cast(labels, DType::I64));
  p.scan = Tensor::empty({2}, DType::I64, Device::CUDA);
  unsigned long long init[2] = {0ull, ~0ull};
  cudaStream_t st = cur_stream();
  PK_CUDA_CHECK(cudaMemcpyAsync(p.scan.raw(), init, sizeof(init), cudaMemcpyHostToDevice, st));
  if (p.N > 0) {
    unsigned grid = grid_for(p.N, kThreads, sm_count(), 2);
    scan_labels_kernel<<<grid, kThreads, 0, st>>>(p.lab.data<int64_t>(), p.N, p.V, ignore_index,
                                                   (unsigned long long*)p.scan.raw());
    PK_CUDA_CHECK_LAUNCH();
  }
  if (check_now) {
    unsigned long long res[2];
    PK_CUDA_CHECK(cudaMemcpyAsync(res, p.scan.raw(), sizeof(res), cudaMemcpyDeviceToHost, st));
    PK_CUDA_CHECK(cudaStreamSynchronize(st));
    if (res[1] != ~0ull) {
      int64_t bad = 0;
      PK_CUDA_CHECK(cudaMemcpyAsync(&bad, p.lab.data<int64_t>() + res[1], sizeof(bad), cudaMemcpyDeviceToHost, st));
      PK_CUDA_CHECK(cudaStreamSynchronize(st));
      fail(op, ": label ", bad, " at position ", (int64_t)res[1], " of labels ", labels.desc(), " is out of range [0, V=",
           p.V, ") and is not ignore_index (", ignore_index, ")");
    }
    p.count = (int64_t)res[0];
    p.host_count = true;
  }
  return p;
}

// 16-byte vectors are usable: unit stride along V, every row start 16-byte aligned.
bool vec_ok(const Tensor& t, size_t es) {
  if (t.strides().back() != 1 && t.shape().back() > 1) return false;
  if (ptr_alignment(t.raw(), 16) < 16) return false;
  for (int64_t d = 0; d + 1 < t.dim(); d++)
    if (t.shape()[d] > 1 && ((size_t)t.strides()[d] * es) % 16 != 0) return false;
  return true;
}

OffsetCalc64<1> row_calc(const Tensor& t) {
  Shape lead(t.shape().begin(), t.shape().end() - 1), ls(t.strides().begin(), t.strides().end() - 1);
  return make_calc64<1>(make_layout(lead, {ls}));
}

}  // namespace

Tensor cross_entropy_forward(const Tensor& logits_, const Tensor& labels, int64_t ignore_index, double normalizer,
                             Tensor* lse_out) {
  const char* op = "cross_entropy";
  PK_CHECK(!std::isnan(normalizer), op, ": normalizer is NaN");
  Prepared p = prepare(logits_, labels, ignore_index, op, true);
  Tensor logits = on_cuda(logits_, op, "logits");
  const DType cd = compute_dtype(logits.dtype());
  Tensor lse = Tensor::empty(labels.shape(), cd, Device::CUDA);
  Tensor loss = Tensor::empty({}, cd, Device::CUDA);
  Tensor row_loss = Tensor::empty({std::max<int64_t>(p.N, 1)}, DType::F64, Device::CUDA);
  const double norm = normalizer > 0 ? normalizer : (double)p.count;
  const int64_t sv = logits.strides().back();
  const bool vec = vec_ok(logits, dtype_size(logits.dtype()));
  dispatch_float(logits.dtype(), op, [&](auto tag) {
    using S = decltype(tag);
    using C = typename Compute<S>::type;
    cudaStream_t st = cur_stream();
    if (p.N > 0) {
      unsigned grid = (unsigned)std::min<int64_t>(p.N, (int64_t)sm_count() * 16);
      const S* px = (const S*)logits.raw();
      if (vec) ce_forward_kernel<S, C, true><<<grid, kThreads, 0, st>>>(px, row_calc(logits), p.N, p.V, sv, p.lab.data<int64_t>(), ignore_index, (C*)lse.raw(), row_loss.data<double>());
      else ce_forward_kernel<S, C, false><<<grid, kThreads, 0, st>>>(px, row_calc(logits), p.N, p.V, sv, p.lab.data<int64_t>(), ignore_index, (C*)lse.raw(), row_loss.data<double>());
      PK_CUDA_CHECK_LAUNCH();
    }
    ce_finish_kernel<C><<<1, 1024, 0, st>>>(row_loss.data<double>(), p.N, norm, (C*)loss.raw());
    PK_CUDA_CHECK_LAUNCH();
  });
  if (lse_out) *lse_out = lse;
  return loss;
}

Tensor cross_entropy_backward(const Tensor& logits_, const Tensor& labels, const Tensor& lse_, const Tensor& dloss,
                              int64_t ignore_index, double normalizer) {
  const char* op = "cross_entropy_backward";
  PK_CHECK(!std::isnan(normalizer), op, ": normalizer is NaN");
  Prepared p = prepare(logits_, labels, ignore_index, op, false);
  Tensor logits = on_cuda(logits_, op, "logits");
  check_float(lse_, op, "lse");
  PK_CHECK(lse_.shape() == labels.shape(), op, ": lse ", lse_.desc(), " must have the shape of labels ", labels.desc());
  check_float(dloss, op, "dloss");
  PK_CHECK(dloss.numel() == 1, op, ": dloss must be a scalar (the loss gradient), got ", dloss.desc());
  const DType cd = compute_dtype(logits.dtype());
  Tensor lse = contiguous(cast(lse_.device() == Device::CUDA ? lse_ : to_device(lse_, Device::CUDA), cd));
  double dl_host = 0;
  Tensor dl_dev;
  if (dloss.device() == Device::CPU) dl_host = load_as_double(dloss.contiguous().raw(), dloss.dtype());
  else dl_dev = contiguous(cast(dloss, DType::F64));
  Tensor out = Tensor::empty(logits.shape(), logits.dtype(), Device::CUDA);
  if (p.N == 0) return out;
  const int64_t sv = logits.strides().back();
  const size_t es = dtype_size(logits.dtype());
  const bool vec = vec_ok(logits, es) && ((size_t)p.V * es) % 16 == 0;
  dispatch_float(logits.dtype(), op, [&](auto tag) {
    using S = decltype(tag);
    using C = typename Compute<S>::type;
    const int64_t W = vec ? Vec<S>::N : 1, nchunks = (p.V + kThreads * W - 1) / (kThreads * W);
    unsigned grid = (unsigned)std::min<int64_t>(p.N * nchunks, (int64_t)sm_count() * 32);
    const double* dd = dl_dev.defined() ? dl_dev.data<double>() : nullptr;
    const unsigned long long* cdev = p.host_count ? nullptr : (const unsigned long long*)p.scan.raw();
    cudaStream_t st = cur_stream();
    const S* px = (const S*)logits.raw();
    if (vec) ce_backward_kernel<S, C, true><<<grid, kThreads, 0, st>>>(px, row_calc(logits), p.N, p.V, sv, nchunks, p.lab.data<int64_t>(), ignore_index, (const C*)lse.raw(), dd, dl_host, cdev, (double)p.count, normalizer, (S*)out.raw());
    else ce_backward_kernel<S, C, false><<<grid, kThreads, 0, st>>>(px, row_calc(logits), p.N, p.V, sv, nchunks, p.lab.data<int64_t>(), ignore_index, (const C*)lse.raw(), dd, dl_host, cdev, (double)p.count, normalizer, (S*)out.raw());
    PK_CUDA_CHECK_LAUNCH();
  });
  return out;
}

// ---- registration into the dispatch table (attention / cross-entropy / softmax block) ----
namespace {
struct CrossEntropyRegistrar {
  CrossEntropyRegistrar() {
    CudaOps& o = cuda_ops();
    o.cross_entropy_forward = cross_entropy_forward;
    o.cross_entropy_backward = cross_entropy_backward;
  }
};
CrossEntropyRegistrar cross_entropy_registrar;
}  // namespace

}  // namespace cuda
}  // namespace pk
