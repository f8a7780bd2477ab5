// index.cpp — indexing kernels. Indices are validated up front (checked_indices) so the loops
// below can trust them.
#include "index.h"
#include "core/dispatch.h"
#include "cpu_common.h"

namespace pk {

Tensor checked_indices(const Tensor& idx, int64_t bound, const char* op, const char* arg) {
  check_cpu(idx, op, arg);
  PK_CHECK(idx.dtype() == DType::I64 || idx.dtype() == DType::I32, op, ": '", arg, "' must be an i64 or i32 tensor, got ", idx.desc());
  Tensor c = idx.to(DType::I64).contiguous();
  const int64_t* p = c.data<int64_t>();
  int64_t n = c.numel();
  for (int64_t i = 0; i < n; i++)
    PK_CHECK(p[i] >= 0 && p[i] < bound, op, ": index ", p[i], " at position ", i, " of '", arg, "' is out of range [0, ", bound, ")");
  return c;
}

// Shared walker for gather/scatter: visits every element position of idx's shape.
template <class F> static void walk_index(const Shape& shape, F f) {
  int64_t n = shape_numel(shape), nd = (int64_t)shape.size();
  std::vector<int64_t> pos(nd, 0);
  for (int64_t e = 0; e < n; e++) {
    f(pos, e);
    for (int64_t d = nd - 1; d >= 0; d--) { if (++pos[d] < shape[d]) break; pos[d] = 0; }
  }
}

Tensor gather(const Tensor& x, int64_t dim, const Tensor& idx) {
  if (any_cuda(x)) return cuda_fn(&CudaOps::gather, "gather")(x, dim, idx);
  check_cpu(x, "gather", "x");
  dim = wrap_dim(dim, x.dim(), "gather");
  PK_CHECK(idx.dim() == x.dim(), "gather: index ", idx.desc(), " must have the rank of x ", x.desc());
  for (int64_t d = 0; d < x.dim(); d++)
    PK_CHECK(d == dim || idx.shape()[d] <= x.shape()[d], "gather: index ", idx.desc(), " larger than x ", x.desc(), " on dim ", d);
  Tensor ix = checked_indices(idx, x.shape()[dim], "gather", "index");
  Tensor out = Tensor::empty(idx.shape(), x.dtype());
  size_t es = dtype_size(x.dtype());
  const char* px = (const char*)x.raw(); char* po = (char*)out.raw();
  const int64_t* pi = ix.data<int64_t>();
  walk_index(idx.shape(), [&](const std::vector<int64_t>& pos, int64_t e) {
    int64_t off = 0;
    for (int64_t d = 0; d < x.dim(); d++) off += (d == dim ? pi[e] : pos[d]) * x.strides()[d];
    std::memcpy(po + e * es, px + off * es, es);
  });
  return out;
}

Tensor scatter_add(const Shape& shape, int64_t dim, const Tensor& idx, const Tensor& src) {
  if (any_cuda(src)) return cuda_fn(&CudaOps::scatter_add, "scatter_add")(shape, dim, idx, src);
  check_float(src, "scatter_add", "src"); check_cpu(src, "scatter_add", "src");
  dim = wrap_dim(dim, (int64_t)shape.size(), "scatter_add");
  PK_CHECK(idx.shape() == src.shape(), "scatter_add: index ", idx.desc(), " and src ", src.desc(), " must match");
  PK_CHECK(idx.dim() == (int64_t)shape.size(), "scatter_add: index ", idx.desc(), " must have rank ", shape.size());
  for (int64_t d = 0; d < idx.dim(); d++)
    PK_CHECK(d == dim || idx.shape()[d] <= shape[d], "scatter_add: index ", idx.desc(), " larger than output ", shape_str(shape));
  Tensor ix = checked_indices(idx, shape[dim], "scatter_add", "index");
  DType cd = compute_dtype(src.dtype());
  Tensor out = Tensor::zeros(shape, cd);
  Tensor s = src.to(cd).contiguous();
  Shape ost = out.strides();
  dispatch_fp(cd, [&](auto tag) {
    using T = decltype(tag);
    T* po = out.data<T>(); const T* ps = s.data<T>(); const int64_t* pi = ix.data<int64_t>();
    walk_index(idx.shape(), [&](const std::vector<int64_t>& pos, int64_t e) {
      int64_t off = 0;
      for (int64_t d = 0; d < (int64_t)shape.size(); d++) off += (d == dim ? pi[e] : pos[d]) * ost[d];
      po[off] += ps[e];
    });
    return 0;
  });
  return out.to(src.dtype());
}

Tensor index_select(const Tensor& x, int64_t dim, const Tensor& idx) {
  if (any_cuda(x)) return cuda_fn(&CudaOps::index_select, "index_select")(x, dim, idx);
  check_cpu(x, "index_select", "x");
  dim = wrap_dim(dim, x.dim(), "index_select");
  PK_CHECK(idx.dim() == 1, "index_select: index must be 1-d, got ", idx.desc());
  Tensor ix = checked_indices(idx, x.shape()[dim], "index_select", "index");
  Shape os = x.shape(); os[dim] = ix.numel();
  Tensor out = Tensor::empty(os, x.dtype());
  const int64_t* pi = ix.data<int64_t>();
  for (int64_t i = 0; i < ix.numel(); i++) copy_into(out.narrow(dim, i, 1), x.narrow(dim, pi[i], 1));
  return out;
}

Tensor index_add(const Shape& shape, int64_t dim, const Tensor& idx, const Tensor& src) {
  if (any_cuda(src)) return cuda_fn(&CudaOps::index_add, "index_add")(shape, dim, idx, src);
  check_float(src, "index_add", "src"); check_cpu(src, "index_add", "src");
  dim = wrap_dim(dim, (int64_t)shape.size(), "index_add");
  PK_CHECK(idx.dim() == 1, "index_add: index must be 1-d, got ", idx.desc());
  Shape want = shape; want[dim] = idx.numel();
  PK_CHECK(src.shape() == want, "index_add: src ", src.desc(), " must have shape ", shape_str(want));
  Tensor ix = checked_indices(idx, shape[dim], "index_add", "index");
  DType cd = compute_dtype(src.dtype());
  Tensor out = Tensor::zeros(shape, cd);
  Tensor s = src.to(cd);
  const int64_t* pi = ix.data<int64_t>();
  dispatch_fp(cd, [&](auto tag) {
    using T = decltype(tag);
    for (int64_t i = 0; i < ix.numel(); i++) {
      Tensor o = out.narrow(dim, pi[i], 1), v = s.narrow(dim, i, 1);
      T* po = o.data<T>(); const T* pv = v.data<T>();
      strided_rows(o.shape(), {o.strides(), v.strides()}, 1 << 30, [&](const int64_t* off, int64_t inner) {
        int64_t so = o.dim() ? o.strides().back() : 1, sv = v.dim() ? v.strides().back() : 1;
        for (int64_t k = 0; k < inner; k++) po[off[0] + k * so] += pv[off[1] + k * sv];
      });
    }
    return 0;
  });
  return out.to(src.dtype());
}

Tensor cat(const std::vector<Tensor>& xs, int64_t dim) {
  for (const Tensor& t : xs) if (any_cuda(t)) return cuda_fn(&CudaOps::cat, "cat")(xs, dim);
  PK_CHECK(!xs.empty(), "cat: needs at least one tensor");
  const Tensor& f = xs[0];
  check_cpu(f, "cat", "tensors[0]");
  dim = wrap_dim(dim, f.dim(), "cat");
  int64_t total = 0;
  for (size_t i = 0; i < xs.size(); i++) {
    const Tensor& t = xs[i];
    check_cpu(t, "cat", "tensors[i]");
    PK_CHECK(t.dtype() == f.dtype(), "cat: dtype mismatch between ", f.desc(), " and tensors[", i, "] ", t.desc());
    PK_CHECK(t.dim() == f.dim(), "cat: rank mismatch between ", f.desc(), " and tensors[", i, "] ", t.desc());
    for (int64_t d = 0; d < f.dim(); d++)
      PK_CHECK(d == dim || t.shape()[d] == f.shape()[d], "cat: shape mismatch on dim ", d, " between ", f.desc(), " and tensors[", i, "] ", t.desc());
    total += t.shape()[dim];
  }
  Shape os = f.shape(); os[dim] = total;
  Tensor out = Tensor::empty(os, f.dtype());
  int64_t at = 0;
  for (auto& t : xs) { copy_into(out.narrow(dim, at, t.shape()[dim]), t); at += t.shape()[dim]; }
  return out;
}

}  // namespace pk
