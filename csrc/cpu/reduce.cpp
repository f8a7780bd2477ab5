// reduce.cpp — reductions move the reduced dims last (a permuted view), make that contiguous,
// and reduce each row; rows are split across the thread pool.
#include "core/dispatch.h"
#include "reduce.h"
#include "cpu_common.h"

namespace pk {

namespace {

// Returns x permuted so that reduced dims are innermost, plus the kept shape and reduced count.
Tensor move_reduced_last(const Tensor& x, const std::vector<int64_t>& dims_in, const char* op,
                         Shape* kept_shape, Shape* keepdim_shape, int64_t* inner) {
  int64_t nd = x.dim();
  std::vector<bool> red(nd, dims_in.empty());
  for (int64_t d : dims_in) {
    int64_t w = wrap_dim(d, nd, op);
    if (nd == 0) continue;
    PK_CHECK(!red[w] || dims_in.empty(), op, ": dim ", d, " repeated");
    red[w] = true;
  }
  std::vector<int64_t> order;
  kept_shape->clear(); keepdim_shape->clear();
  *inner = 1;
  for (int64_t d = 0; d < nd; d++) if (!red[d]) { order.push_back(d); kept_shape->push_back(x.shape()[d]); }
  for (int64_t d = 0; d < nd; d++) if (red[d]) { order.push_back(d); *inner *= x.shape()[d]; }
  for (int64_t d = 0; d < nd; d++) keepdim_shape->push_back(red[d] ? 1 : x.shape()[d]);
  return x.permute(order);
}

template <class T> void sum_rows(const T* src, T* dst, int64_t rows, int64_t inner, double scale) {
  parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(inner, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
      const T* p = src + r * inner;
      // 4-way f64 accumulation: accurate for f32 and still vectorisable
      double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
      int64_t i = 0;
      for (; i + 4 <= inner; i += 4) { a0 += p[i]; a1 += p[i + 1]; a2 += p[i + 2]; a3 += p[i + 3]; }
      for (; i < inner; i++) a0 += p[i];
      dst[r] = (T)(((a0 + a1) + (a2 + a3)) * scale);
    }
  });
}

Tensor reduce_sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim, bool average, const char* op) {
  check_float(x, op, "x"); check_cpu(x, op, "x");
  Shape kept, kshape; int64_t inner;
  Tensor p = move_reduced_last(x, dims, op, &kept, &kshape, &inner);
  DType cd = compute_dtype(x.dtype());
  Tensor c = p.to(cd).contiguous();
  int64_t rows = shape_numel(kept);
  Tensor out = Tensor::empty(kept, cd);
  double scale = average ? (inner > 0 ? 1.0 / (double)inner : NAN) : 1.0;
  dispatch_fp(cd, [&](auto tag) { using T = decltype(tag); sum_rows<T>(c.data<T>(), out.data<T>(), rows, inner, scale); return 0; });
  Tensor r = keepdim ? out.view(x.dim() == 0 ? Shape{} : kshape) : out;
  return r.to(x.dtype());
}

}  // namespace

Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  if (any_cuda(x)) return cuda_fn(&CudaOps::sum, "sum")(x, dims, keepdim);
  return reduce_sum(x, dims, keepdim, false, "sum"); }
Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  if (any_cuda(x)) return cuda_fn(&CudaOps::mean, "mean")(x, dims, keepdim);
  return reduce_sum(x, dims, keepdim, true, "mean"); }

void max_dim(const Tensor& x, int64_t dim, bool keepdim, Tensor* values, Tensor* indices) {
  if (any_cuda(x)) return cuda_fn(&CudaOps::max_dim, "max")(x, dim, keepdim, values, indices);
  check_float(x, "max", "x"); check_cpu(x, "max", "x");
  PK_CHECK(x.dim() == 0 || x.size(dim) > 0, "max: cannot reduce an empty dim of ", x.desc());
  Shape kept, kshape; int64_t inner;
  Tensor p = move_reduced_last(x, {dim}, "max", &kept, &kshape, &inner);
  DType cd = compute_dtype(x.dtype());
  Tensor c = p.to(cd).contiguous();
  int64_t rows = shape_numel(kept);
  Tensor v = Tensor::empty(kept, cd), ix = Tensor::empty(kept, DType::I64);
  dispatch_fp(cd, [&](auto tag) {
    using T = decltype(tag);
    const T* s = c.data<T>(); T* pv = v.data<T>(); int64_t* pi = ix.data<int64_t>();
    parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(inner, 1)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; r++) {
        const T* q = s + r * inner;
        T best = q[0]; int64_t bi = 0;
        for (int64_t i = 1; i < inner; i++) {
          if (best != best) break;  // NaN already wins
          if (q[i] > best || q[i] != q[i]) { best = q[i]; bi = i; }
        }
        pv[r] = best; pi[r] = bi;
      }
    });
    return 0;
  });
  if (keepdim) { v = v.view(kshape); ix = ix.view(kshape); }
  *values = v.to(x.dtype());
  *indices = ix;
}

Tensor sum_to_shape(const Tensor& g, const Shape& shape) {
  if (any_cuda(g)) return cuda_fn(&CudaOps::sum_to_shape, "sum_to_shape")(g, shape);
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
  if (dims.empty()) return g.reshape(shape);
  Tensor s = sum(g, dims, true);
  // drop the leading dims (now size 1)
  return s.reshape(shape);
}

}  // namespace pk
