// embedding.cu — CUDA twins of cpu/embedding.cpp: row gather and its deterministic scatter-add.
//
// Forward: a pure row copy (16-byte vectors when rows are dense and aligned), bit-identical to
// the CPU. ids are validated first (check_index_values in index.cu; one device->host read when
// the ids live on the GPU, none when they come from the CPU).
// Backward, sort-free and without atomics: each thread block owns a range of vocabulary rows and a
// tile of columns, scans all ids in token order (through shared memory) and adds the dy rows of its
// own tokens into its own dW rows. Every dW element is therefore summed in token order, exactly as
// on the CPU (f32 accumulation, f64 for f64 dy): the result is bit-identical and deterministic.
#include "common.cuh"
#include "core/dispatch.h"
#include "cpu/cpu_common.h"
#include "ops.h"

namespace pk {
namespace cuda {

struct IndexCheck {
  Tensor idx;
  int64_t bad_pos = -1;
  int64_t bad_value = 0;
};
IndexCheck check_index_values(const Tensor& idx, int64_t bound, const char* op, const char* arg);   // index.cu

namespace {

Tensor checked_ids(const Tensor& ids, int64_t V, const char* op) {
  IndexCheck c = check_index_values(ids, V, op, "ids");
  PK_CHECK(c.bad_pos < 0, op, ": id ", c.bad_value, " at position ", c.bad_pos, " of ids ", ids.desc(),
           " is out of range for a vocabulary of V=", V, " rows (valid ids are 0..", V - 1, ")");
  return c.idx;
}

// out[n, c] = w[id[n], c] by element width (any weight strides).
template <class W>
__global__ void emb_fwd_kernel(const W* __restrict__ w, const int64_t* __restrict__ id, W* __restrict__ out, int64_t N,
                               int64_t C, int64_t s0, int64_t s1) {
  const int64_t n_el = N * C;
  for (int64_t e = global_tid<int64_t>(); e < n_el; e += grid_stride<int64_t>()) {
    const int64_t n = e / C, c = e - n * C;
    out[e] = w[id[n] * s0 + c * s1];
  }
}
// Dense rows: 16-byte units, U units per row.
__global__ void emb_fwd_vec_kernel(const uint4* __restrict__ w, const int64_t* __restrict__ id, uint4* __restrict__ out,
                                   int64_t N, int64_t U, int64_t rs) {
  const int64_t n_el = N * U;
  for (int64_t e = global_tid<int64_t>(); e < n_el; e += grid_stride<int64_t>()) {
    const int64_t n = e / U, u = e - n * U;
    out[e] = w[id[n] * rs + u];
  }
}

constexpr int kThreads = 256, kColsPerThread = 4, kTile = kThreads * kColsPerThread, kChunk = 256;

template <class SD, class T>
__global__ void emb_bwd_kernel(const SD* __restrict__ dy, const int64_t* __restrict__ id, T* __restrict__ dw, int64_t N,
                               int64_t C, int64_t V, int64_t rows_per_block) {
  __shared__ int64_t sid[kChunk];
  const int64_t v0 = (int64_t)blockIdx.x * rows_per_block;
  const int64_t v1 = min(V, v0 + rows_per_block);
  const int64_t c0 = (int64_t)blockIdx.y * kTile;
  for (int64_t base = 0; base < N; base += kChunk) {
    const int64_t cnt = min((int64_t)kChunk, N - base);
    __syncthreads();
    if (threadIdx.x < cnt) sid[threadIdx.x] = id[base + threadIdx.x];
    __syncthreads();
    for (int64_t k = 0; k < cnt; k++) {
      const int64_t v = sid[k];
      if (v < v0 || v >= v1) continue;   // block-uniform branch
      const SD* src = dy + (base + k) * C;
      T* dst = dw + v * C;
#pragma unroll
      for (int j = 0; j < kColsPerThread; j++) {
        const int64_t c = c0 + threadIdx.x + j * kThreads;
        if (c < C) dst[c] = dst[c] + Conv<T>::load(src[c]);
      }
    }
  }
}

Tensor embedding_forward_cuda(const Tensor& weight, const Tensor& ids) {
  const char* op = "embedding";
  check_cuda(weight, op, "weight");
  PK_CHECK(weight.dim() == 2, op, ": weight must be 2-d (V,C), got ", weight.desc());
  PK_CHECK(weight.dtype() != DType::NF4, op, ": weight ", weight.desc(), " is nf4-packed; dequantize it first");
  const int64_t V = weight.shape()[0], C = weight.shape()[1];
  Tensor ix = checked_ids(ids, V, op);
  Shape os = ids.shape(); os.push_back(C);
  Tensor out = Tensor::empty(os, weight.dtype(), Device::CUDA);
  const int64_t N = ix.numel(), es = (int64_t)dtype_size(weight.dtype());
  if (N == 0 || C == 0) return out;
  const int64_t s0 = weight.strides()[0], s1 = weight.strides()[1];
  const bool vec = s1 == 1 && (C * es) % 16 == 0 && (s0 * es) % 16 == 0 && ptr_alignment(weight.raw()) >= 16 &&
                   ptr_alignment(out.raw()) >= 16;
  if (vec) {
    const int64_t U = C * es / 16;
    launch(emb_fwd_vec_kernel, N * U, (const uint4*)weight.raw(), ix.data<int64_t>(), (uint4*)out.raw(), N, U, s0 * es / 16);
    return out;
  }
  auto go = [&](auto tag) {
    using W = decltype(tag);
    launch(emb_fwd_kernel<W>, N * C, (const W*)weight.raw(), ix.data<int64_t>(), (W*)out.raw(), N, C, s0, s1);
  };
  switch (es) {
    case 1: go(uint8_t{}); break;
    case 2: go(uint16_t{}); break;
    case 4: go(uint32_t{}); break;
    case 8: go(uint64_t{}); break;
    default: fail(op, ": unsupported element size ", es);
  }
  return out;
}

Tensor embedding_backward_cuda(const Tensor& dy_in, const Tensor& ids, int64_t V) {
  const char* op = "embedding_backward";
  check_float(dy_in, op, "dy"); check_cuda(dy_in, op, "dy");
  PK_CHECK(V >= 1, op, ": V must be >= 1, got ", V);
  PK_CHECK(dy_in.dim() == ids.dim() + 1, op, ": dy ", dy_in.desc(), " must be ids' shape plus C, ids are ", ids.desc());
  Shape lead(dy_in.shape().begin(), dy_in.shape().end() - 1);
  PK_CHECK(lead == ids.shape(), op, ": dy ", dy_in.desc(), " must be ids' shape ", shape_str(ids.shape()), " plus C");
  Tensor ix = checked_ids(ids, V, op);
  Tensor dy = contiguous(dy_in);
  const int64_t C = dy.shape().back(), N = ix.numel();
  DType cd = compute_dtype(dy.dtype());
  Tensor dw = zeros({V, C}, cd);
  if (N == 0 || C == 0) return dw;
  const int64_t ctiles = (C + kTile - 1) / kTile;
  const int64_t target = (int64_t)sm_count() * 4;
  int64_t rpb = std::max<int64_t>(1, (V * ctiles + target - 1) / target);
  const int64_t vblocks = (V + rpb - 1) / rpb;
  PK_CHECK(ctiles < 65536, op, ": C=", C, " is too large for the cuda kernel");
  dim3 grid((unsigned)vblocks, (unsigned)ctiles);
  dispatch_float(dy.dtype(), op, [&](auto tag) {
    using SD = decltype(tag);
    using T = typename Compute<SD>::type;
    emb_bwd_kernel<SD, T><<<grid, kThreads, 0, cur_stream()>>>(dy.data<SD>(), ix.data<int64_t>(), dw.data<T>(), N, C, V, rpb);
    PK_CUDA_CHECK_LAUNCH();
  });
  return dw;
}

struct Registrar {
  Registrar() {
    CudaOps& o = cuda_ops();
    o.embedding_forward = embedding_forward_cuda;
    o.embedding_backward = embedding_backward_cuda;
  }
};
Registrar registrar;

}  // namespace

}  // namespace cuda
}  // namespace pk
