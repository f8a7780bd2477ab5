// embedding.cpp — CPU embedding gather / scatter-add.
//
// Forward parallelises over tokens (one memcpy per row when the weight rows are dense), in chunks
// of at least 1 MiB.
// Backward parallelises over column ranges of dW: every worker reads all N token rows but only
// its [c0, c1) slice, so no two workers ever write the same element and the token order (hence
// the rounding) is the same on any thread count.
#include "embedding.h"
#include "core/dispatch.h"
#include "cpu_common.h"
#include "row_io.h"

namespace pk {

namespace {


// ids as contiguous i64 after checking dtype and range.
Tensor checked_ids(const Tensor& ids, int64_t V, const char* op) {
  check_cpu(ids, op, "ids");
  PK_CHECK(ids.dtype() == DType::I64 || ids.dtype() == DType::I32, op, ": ids must be an i64 or i32 tensor, got ", ids.desc());
  Tensor c = ids.to(DType::I64).contiguous();
  const int64_t* p = c.data<int64_t>();
  for (int64_t i = 0, n = c.numel(); i < n; i++)
    PK_CHECK(p[i] >= 0 && p[i] < V, op, ": id ", p[i], " at position ", i, " of ids ", ids.desc(),
             " is out of range for a vocabulary of V=", V, " rows (valid ids are 0..", V - 1, ")");
  return c;
}

template <class T> void scatter_cols(const Tensor& dy, const int64_t* id, int64_t N, int64_t C, T* dw) {
  int64_t last = dy.dim() - 1, sc = dy.strides()[last];
  // >= 64 columns per worker: a whole cache line of dW (and dy) per token and no false sharing
  parallel_for(0, C, 64, [&](int64_t c0, int64_t c1) {
    int64_t w = c1 - c0;
    std::vector<T> buf(w);
    for (int64_t n = 0; n < N; n++) {
      load_row(elem_ptr(dy, row_offset(n, dy, last) + c0 * sc), dy.dtype(), w, sc, buf.data());
      T* dst = dw + id[n] * C + c0;
      for (int64_t c = 0; c < w; c++) dst[c] += buf[c];
    }
  });
}

}  // namespace

Tensor embedding_forward(const Tensor& weight, const Tensor& ids) {
  if (any_cuda(weight)) return cuda_fn(&CudaOps::embedding_forward, "embedding")(weight, ids);
  const char* op = "embedding";
  check_cpu(weight, op, "weight");
  PK_CHECK(weight.dim() == 2, op, ": weight must be 2-d (V,C), got ", weight.desc());
  PK_CHECK(weight.dtype() != DType::NF4, op, ": weight ", weight.desc(), " is nf4-packed; dequantize it first");
  int64_t V = weight.shape()[0], C = weight.shape()[1];
  Tensor ix = checked_ids(ids, V, op);
  Shape os = ids.shape(); os.push_back(C);
  Tensor out = Tensor::empty(os, weight.dtype());
  int64_t N = ix.numel(), es = (int64_t)dtype_size(weight.dtype());
  const int64_t* id = ix.data<int64_t>();
  const char* pw = (const char*)weight.raw();
  char* po = (char*)out.raw();
  int64_t s0 = weight.strides()[0], s1 = weight.strides()[1];
  // >= 1 MiB of rows per worker: a smaller gather is a few tens of microseconds of memcpy, less
  // than waking a pool thread costs (and a busy machine can delay that wake-up by milliseconds)
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 20) / std::max<int64_t>(C * es, 1));
  parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; n++) {
      const char* src = pw + id[n] * s0 * es;
      char* dst = po + n * C * es;
      if (s1 == 1) std::memcpy(dst, src, (size_t)(C * es));
      else for (int64_t c = 0; c < C; c++) std::memcpy(dst + c * es, src + c * s1 * es, (size_t)es);
    }
  });
  return out;
}

Tensor embedding_backward(const Tensor& dy, const Tensor& ids, int64_t V) {
  if (any_cuda(dy)) return cuda_fn(&CudaOps::embedding_backward, "embedding_backward")(dy, ids, V);
  const char* op = "embedding_backward";
  check_float(dy, op, "dy"); check_cpu(dy, op, "dy");
  PK_CHECK(V >= 1, op, ": V must be >= 1, got ", V);
  PK_CHECK(dy.dim() == ids.dim() + 1, op, ": dy ", dy.desc(), " must be ids' shape plus C, ids are ", ids.desc());
  Shape lead(dy.shape().begin(), dy.shape().end() - 1);
  PK_CHECK(lead == ids.shape(), op, ": dy ", dy.desc(), " must be ids' shape ", shape_str(ids.shape()), " plus C");
  Tensor ix = checked_ids(ids, V, op);
  int64_t C = dy.shape().back(), N = ix.numel();
  DType cd = compute_dtype(dy.dtype());
  Tensor dw = Tensor::zeros({V, C}, cd);
  dispatch_fp(cd, [&](auto tag) {
    using T = decltype(tag);
    scatter_cols<T>(dy, ix.data<int64_t>(), N, C, dw.data<T>());
    return 0;
  });
  return dw;
}

}  // namespace pk
