// reduce.cu — CUDA twins of cpu/reduce.cpp: sum / mean over any set of dims, sum_to_shape, and
// max over one dim (values + i64 indices: argmax for evaluation and greedy decoding).
//
// No permute-and-copy: kept and reduced dims each get an offset calculator over x's own strides.
// When the innermost reduced dim is unit-stride a warp reads each output's elements (coalesced
// "row" reduction); otherwise each thread owns one output and neighbouring threads read
// neighbouring columns ("column" reduction). Long reductions with few outputs are split into
// chunks whose f64 partial sums a second kernel adds up. Accumulation is in f64 as on the CPU.
#include <math_constants.h>
#include "common.cuh"
#include "cpu/cpu_common.h"
#include "ops.h"

namespace pk {
namespace cuda {

namespace {

template <class S, bool Small>
__global__ void reduce_row_kernel(const S* __restrict__ x, CalcT<Small, 1> kc, CalcT<Small, 1> rc, int64_t O, int64_t R,
                                  int64_t chunk, int64_t nchunks, double scale, S* __restrict__ out,
                                  double* __restrict__ partial) {
  using I = typename IdxT<Small>::type;
  const int lane = threadIdx.x;
  const int64_t total = O * nchunks;
  for (int64_t w = (int64_t)blockIdx.x * blockDim.y + threadIdx.y; w < total; w += (int64_t)gridDim.x * blockDim.y) {
    int64_t o = w / nchunks, c = w - o * nchunks;
    I base[1];
    kc.get((I)o, base);
    int64_t j0 = c * chunk, j1 = j0 + chunk < R ? j0 + chunk : R;
    double acc = 0;
    for (int64_t j = j0 + lane; j < j1; j += 32) {
      I r[1];
      rc.get((I)j, r);
      acc += to_f64(x[base[0] + r[0]]);
    }
#pragma unroll
    for (int d = 16; d > 0; d >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, d);
    if (lane == 0) {
      if (nchunks == 1) out[o] = from_f64<S>(acc * scale);
      else partial[o * nchunks + c] = acc;
    }
  }
}

template <class S, bool Small>
__global__ void reduce_col_kernel(const S* __restrict__ x, CalcT<Small, 1> kc, CalcT<Small, 1> rc, int64_t O, int64_t R,
                                  int64_t chunk, int64_t nchunks, double scale, S* __restrict__ out,
                                  double* __restrict__ partial) {
  using I = typename IdxT<Small>::type;
  const int64_t total = O * nchunks;
  for (int64_t t = global_tid<int64_t>(); t < total; t += grid_stride<int64_t>()) {
    int64_t c = t / O, o = t - c * O;   // neighbouring threads: neighbouring outputs
    I base[1];
    kc.get((I)o, base);
    int64_t j0 = c * chunk, j1 = j0 + chunk < R ? j0 + chunk : R;
    double acc = 0;
    for (int64_t j = j0; j < j1; j++) {
      I r[1];
      rc.get((I)j, r);
      acc += to_f64(x[base[0] + r[0]]);
    }
    if (nchunks == 1) out[o] = from_f64<S>(acc * scale);
    else partial[o * nchunks + c] = acc;
  }
}

template <class S>
__global__ void reduce_finish_kernel(const double* __restrict__ partial, int64_t O, int64_t nchunks, double scale,
                                     S* __restrict__ out) {
  for (int64_t o = global_tid<int64_t>(); o < O; o += grid_stride<int64_t>()) {
    double acc = 0;
    for (int64_t c = 0; c < nchunks; c++) acc += partial[o * nchunks + c];
    out[o] = from_f64<S>(acc * scale);
  }
}

// ---- max over one dim ----
// The CPU's order, exactly: the first NaN wins, else the largest value, ties to the smallest index.
// better() is that order as a comparison, so per-thread scans, warp shuffles and the block's
// shared-memory step can combine partial results in any order and still agree with the CPU scan.
// The identity is (-inf, INT64_MAX): any real element, -inf included, beats it by index.
template <class C> __device__ __forceinline__ bool better(C v, int64_t i, C bv, int64_t bi) {
  bool vn = v != v, bn = bv != bv;
  if (vn || bn) return vn && (!bn || i < bi);
  return v > bv || (v == bv && i < bi);
}

template <class C> __device__ __forceinline__ void warp_best(C& v, int64_t& i) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) {
    C ov = __shfl_down_sync(0xffffffffu, v, d);
    long long oi = __shfl_down_sync(0xffffffffu, (long long)i, d);
    if (better(ov, (int64_t)oi, v, i)) { v = ov; i = (int64_t)oi; }
  }
}

constexpr int kMaxBlock = 256;

// Unit-stride reduced dim (logits' vocab dim): one block per output row, threads stride the row.
template <class S, bool Small>
__global__ void max_row_kernel(const S* __restrict__ x, CalcT<Small, 1> kc, int64_t O, int64_t R,
                               S* __restrict__ vout, int64_t* __restrict__ iout) {
  using C = typename Compute<S>::type;
  using I = typename IdxT<Small>::type;
  __shared__ C sv[kMaxBlock / 32];
  __shared__ int64_t si[kMaxBlock / 32];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  for (int64_t o = blockIdx.x; o < O; o += gridDim.x) {
    I base[1];
    kc.get((I)o, base);
    const S* row = x + base[0];
    C bv = -CUDART_INF_F; int64_t bi = INT64_MAX;
    for (int64_t j = threadIdx.x; j < R; j += blockDim.x) {
      C v = Conv<C>::load(row[j]);
      if (better(v, j, bv, bi)) { bv = v; bi = j; }
    }
    warp_best(bv, bi);
    if (lane == 0) { sv[warp] = bv; si[warp] = bi; }
    __syncthreads();
    if (warp == 0) {
      bv = lane < nwarps ? sv[lane] : (C)-CUDART_INF_F;
      bi = lane < nwarps ? si[lane] : INT64_MAX;
      warp_best(bv, bi);
      if (lane == 0) { vout[o] = row[bi]; iout[o] = bi; }
    }
    __syncthreads();   // sv/si are rewritten by the next row
  }
}

// Strided reduced dim: one thread per output; neighbouring threads read neighbouring columns.
template <class S, bool Small>
__global__ void max_col_kernel(const S* __restrict__ x, CalcT<Small, 1> kc, int64_t rs, int64_t O, int64_t R,
                               S* __restrict__ vout, int64_t* __restrict__ iout) {
  using C = typename Compute<S>::type;
  using I = typename IdxT<Small>::type;
  for (int64_t o = global_tid<int64_t>(); o < O; o += grid_stride<int64_t>()) {
    I base[1];
    kc.get((I)o, base);
    const S* p = x + base[0];
    C bv = -CUDART_INF_F; int64_t bi = INT64_MAX;
    for (int64_t j = 0; j < R; j++) {
      C v = Conv<C>::load(p[j * rs]);
      if (better(v, j, bv, bi)) { bv = v; bi = j; }
    }
    vout[o] = p[bi * rs]; iout[o] = bi;
  }
}

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

Tensor reduce_sum(const Tensor& x_, const std::vector<int64_t>& dims_in, bool keepdim, bool average, const char* op) {
  Tensor x = on_cuda(x_, op, "x");
  check_float(x, op, "x");
  int64_t nd = x.dim();
  std::vector<bool> red(nd, dims_in.empty());
  for (int64_t d : dims_in) {
    int64_t w = wrap_dim(d, nd, op);
    if (nd == 0) continue;
    PK_CHECK(!red[w] || dims_in.empty(), op, ": dim ", d, " repeated");
    red[w] = true;
  }
  Shape kept, kshape, kstr, rshape, rstr;
  for (int64_t d = 0; d < nd; d++) {
    if (red[d]) { rshape.push_back(x.shape()[d]); rstr.push_back(x.strides()[d]); }
    else { kept.push_back(x.shape()[d]); kstr.push_back(x.strides()[d]); }
    kshape.push_back(red[d] ? 1 : x.shape()[d]);
  }
  int64_t O = shape_numel(kept), R = shape_numel(rshape);
  Tensor out = Tensor::empty(kept, x.dtype(), Device::CUDA);
  double scale = average ? (R > 0 ? 1.0 / (double)R : NAN) : 1.0;
  if (O > 0 && R == 0) fill(out, 0.0 * scale);
  if (O > 0 && R > 0) {
    Layout Lk = make_layout(kept, {kstr}), Lr = make_layout(rshape, {rstr});
    int64_t span = 0;
    for (int d = 0; d < Lk.ndim(); d++) span += (Lk.sizes[d] - 1) * Lk.strides[0][d];
    for (int d = 0; d < Lr.ndim(); d++) span += (Lr.sizes[d] - 1) * Lr.strides[0][d];
    bool small = O < (int64_t(1) << 31) && R < (int64_t(1) << 31) && span < (int64_t(1) << 31) - 1;
    bool row = Lr.ndim() >= 1 && Lr.strides[0].back() == 1;
    int sms = sm_count();
    int64_t nchunks = 1;
    if (row) {
      int64_t want = (int64_t)sms * 32;   // warps in flight
      if (O < want) nchunks = std::max<int64_t>(1, std::min(cdiv(want, O), cdiv(R, 1024)));
    } else {
      int64_t want = (int64_t)sms * 1024; // threads in flight
      if (O < want) nchunks = std::max<int64_t>(1, std::min<int64_t>(std::min(cdiv(want, O), cdiv(R, 64)), 4096));
    }
    int64_t chunk = cdiv(R, nchunks);
    nchunks = cdiv(R, chunk);
    Tensor partial;
    if (nchunks > 1) partial = Tensor::empty({O * nchunks}, DType::F64, Device::CUDA);
    double* pp = nchunks > 1 ? partial.data<double>() : nullptr;
    dispatch_float(x.dtype(), op, [&](auto tag) {
      using S = decltype(tag);
      const S* px = (const S*)x.raw();
      S* po = (S*)out.raw();
      cudaStream_t st = cur_stream();
      if (row) {
        dim3 block(32, 8);
        unsigned grid = (unsigned)std::min<int64_t>(cdiv(O * nchunks, 8), (int64_t)sms * 8);
        if (small) reduce_row_kernel<S, true><<<grid, block, 0, st>>>(px, make_calc<true, 1>(Lk), make_calc<true, 1>(Lr), O, R, chunk, nchunks, scale, po, pp);
        else reduce_row_kernel<S, false><<<grid, block, 0, st>>>(px, make_calc<false, 1>(Lk), make_calc<false, 1>(Lr), O, R, chunk, nchunks, scale, po, pp);
        PK_CUDA_CHECK_LAUNCH();
      } else {
        if (small) launch(reduce_col_kernel<S, true>, O * nchunks, px, make_calc<true, 1>(Lk), make_calc<true, 1>(Lr), O, R, chunk, nchunks, scale, po, pp);
        else launch(reduce_col_kernel<S, false>, O * nchunks, px, make_calc<false, 1>(Lk), make_calc<false, 1>(Lr), O, R, chunk, nchunks, scale, po, pp);
      }
      if (nchunks > 1) launch(reduce_finish_kernel<S>, O, (const double*)pp, O, nchunks, scale, po);
    });
  }
  return keepdim ? out.view(x.dim() == 0 ? Shape{} : kshape) : out;
}

}  // namespace

Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) { return reduce_sum(x, dims, keepdim, false, "sum"); }
Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) { return reduce_sum(x, dims, keepdim, true, "mean"); }

void max_dim(const Tensor& x_, int64_t dim, bool keepdim, Tensor* values, Tensor* indices) {
  Tensor x = on_cuda(x_, "max", "x");
  check_float(x, "max", "x");
  PK_CHECK(x.dim() == 0 || x.size(dim) > 0, "max: cannot reduce an empty dim of ", x.desc());
  int64_t nd = x.dim();
  int64_t w = wrap_dim(dim, nd, "max");   // the CPU's range check; a 0-d x has no dim to reduce:
  if (nd == 0) w = -1;                    // one output, R = 1
  Shape kept, kstr, kshape;
  for (int64_t d = 0; d < nd; d++) {
    if (d != w) { kept.push_back(x.shape()[d]); kstr.push_back(x.strides()[d]); }
    kshape.push_back(d == w ? 1 : x.shape()[d]);
  }
  int64_t R = w < 0 ? 1 : x.shape()[w], rs = w < 0 ? 0 : x.strides()[w];
  int64_t O = shape_numel(kept);
  Tensor v = Tensor::empty(kept, x.dtype(), Device::CUDA), ix = Tensor::empty(kept, DType::I64, Device::CUDA);
  if (O > 0) {
    Layout Lk = make_layout(kept, {kstr});
    int64_t span = (R - 1) * (rs < 0 ? -rs : rs);
    for (int d = 0; d < Lk.ndim(); d++) span += (Lk.sizes[d] - 1) * Lk.strides[0][d];
    bool small = O < (int64_t(1) << 31) && span < (int64_t(1) << 31) - 1;
    bool row = rs == 1 || R == 1;
    dispatch_float(x.dtype(), "max", [&](auto tag) {
      using S = decltype(tag);
      const S* px = (const S*)x.raw();
      S* pv = (S*)v.raw();
      int64_t* pi = ix.data<int64_t>();
      if (row) {
        // 32 threads per 1024 elements, one to eight warps per row.
        int threads = (int)std::min<int64_t>(kMaxBlock, std::max<int64_t>(32, cdiv(R, 1024) * 32));
        unsigned grid = (unsigned)std::min<int64_t>(O, (int64_t)sm_count() * 32);
        if (small) max_row_kernel<S, true><<<grid, threads, 0, cur_stream()>>>(px, make_calc<true, 1>(Lk), O, R, pv, pi);
        else max_row_kernel<S, false><<<grid, threads, 0, cur_stream()>>>(px, make_calc<false, 1>(Lk), O, R, pv, pi);
        PK_CUDA_CHECK_LAUNCH();
      } else {
        if (small) launch(max_col_kernel<S, true>, O, px, make_calc<true, 1>(Lk), rs, O, R, pv, pi);
        else launch(max_col_kernel<S, false>, O, px, make_calc<false, 1>(Lk), rs, O, R, pv, pi);
      }
    });
  }
  if (keepdim) { v = v.view(kshape); ix = ix.view(kshape); }
  *values = v;
  *indices = ix;
}

Tensor sum_to_shape(const Tensor& g_, const Shape& shape) {
  Tensor g = on_cuda(g_, "sum_to_shape", "grad");
  check_float(g, "sum_to_shape", "grad");
  if (g.shape() == shape) return g;
  int64_t nd = g.dim(), ns = (int64_t)shape.size();
  PK_CHECK(ns <= nd, "sum_to_shape: cannot reduce ", g.desc(), " to ", shape_str(shape));
  std::vector<int64_t> dims;
  int64_t lead = nd - ns;
  for (int64_t d = 0; d < lead; d++) dims.push_back(d);
  for (int64_t d = 0; d < ns; d++) {
    int64_t gd = g.shape()[lead + d];
    PK_CHECK(shape[d] == gd || shape[d] == 1, "sum_to_shape: cannot reduce ", g.desc(), " to ", shape_str(shape));
    if (shape[d] == 1 && gd != 1) dims.push_back(lead + d);
  }
  if (dims.empty()) return cuda::reshape(g, shape);
  Tensor s = cuda::sum(g, dims, true);
  return cuda::reshape(s, shape);
}

}  // namespace cuda
}  // namespace pk
