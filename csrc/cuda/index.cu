// index.cu — CUDA twins of cpu/index.cpp (gather, scatter_add, index_select, index_add, cat) and
// of the comparison / selection ops of cpu/elementwise.cpp (compare, where, masked_fill).
//
// Indices are validated before any memory is touched, with the CPU's messages: an index tensor on
// the CPU is checked there and uploaded; one on the GPU is checked by a kernel that finds the first
// bad position, which costs one device->host read (a synchronisation) per call.
// scatter_add / index_add are deterministic and bit-identical to the CPU without atomics: one
// thread owns each "line" (all positions that differ only along `dim`) and adds the line's
// sources in index order, which is exactly the CPU's summation order for every output element.
#include <type_traits>
#include "common.cuh"
#include "core/dispatch.h"
#include "cpu/cpu_common.h"
#include "cpu/elementwise.h"
#include "cpu/index.h"
#include "ops.h"

namespace pk {
namespace cuda {

// ---- shared with embedding.cu ----
struct IndexCheck {
  Tensor idx;            // contiguous i64 on the GPU
  int64_t bad_pos = -1;  // first out-of-range position, -1 when all are valid
  int64_t bad_value = 0;
};

namespace {

__global__ void find_bad_kernel(const int64_t* __restrict__ p, int64_t n, int64_t bound, unsigned long long* __restrict__ first) {
  for (int64_t i = global_tid<int64_t>(); i < n; i += grid_stride<int64_t>())
    if (p[i] < 0 || p[i] >= bound) atomicMin(first, (unsigned long long)i);
}

}  // namespace

// idx (i64/i32, CPU or GPU) as contiguous i64 on the GPU, with the first out-of-range position.
IndexCheck check_index_values(const Tensor& idx, int64_t bound, const char* op, const char* arg) {
  check_defined(idx, op, arg);
  PK_CHECK(idx.dtype() == DType::I64 || idx.dtype() == DType::I32, op, ": '", arg, "' must be an i64 or i32 tensor, got ", idx.desc());
  IndexCheck r;
  if (idx.device() == Device::CPU) {
    Tensor c = idx.to(DType::I64).contiguous();
    const int64_t* p = c.data<int64_t>();
    for (int64_t i = 0, n = c.numel(); i < n; i++)
      if (p[i] < 0 || p[i] >= bound) { r.bad_pos = i; r.bad_value = p[i]; break; }
    if (r.bad_pos < 0) r.idx = to_device(c, Device::CUDA);
    return r;
  }
  r.idx = contiguous(cast(idx, DType::I64));
  const int64_t n = r.idx.numel();
  if (n == 0) return r;
  Tensor flag = Tensor::empty({1}, DType::I64, Device::CUDA);
  PK_CUDA_CHECK(cudaMemsetAsync(flag.raw(), 0xff, 8, cur_stream()));
  launch(find_bad_kernel, n, r.idx.data<int64_t>(), n, bound, (unsigned long long*)flag.raw());
  unsigned long long first = 0;
  PK_CUDA_CHECK(cudaMemcpyAsync(&first, flag.raw(), 8, cudaMemcpyDeviceToHost, cur_stream()));
  PK_CUDA_CHECK(cudaStreamSynchronize(cur_stream()));
  if (first != ~0ull) {
    r.bad_pos = (int64_t)first;
    PK_CUDA_CHECK(cudaMemcpy(&r.bad_value, r.idx.data<int64_t>() + first, 8, cudaMemcpyDeviceToHost));
  }
  return r;
}

namespace {

Tensor checked(const Tensor& idx, int64_t bound, const char* op, const char* arg) {
  IndexCheck c = check_index_values(idx, bound, op, arg);
  PK_CHECK(c.bad_pos < 0, op, ": index ", c.bad_value, " at position ", c.bad_pos, " of '", arg, "' is out of range [0, ", bound, ")");
  return c.idx;
}

constexpr int kMaxD = 12;
struct Geo {
  int nd = 0, dim = 0;
  int64_t size[kMaxD];   // iteration shape
  int64_t xs[kMaxD];     // source strides (elements)
  int64_t os[kMaxD];     // destination strides
  int64_t is[kMaxD];     // index strides (contiguous index tensor; 0 where the index does not vary)
};

Geo make_geo(const Shape& shape, int64_t dim, const Shape& xs, const Shape& os, const Shape& is, const char* op) {
  PK_CHECK((int)shape.size() <= kMaxD, op, ": at most ", kMaxD, " dims on cuda, got ", shape.size());
  Geo g;
  g.nd = (int)shape.size();
  g.dim = (int)dim;
  for (int d = 0; d < g.nd; d++) {
    g.size[d] = shape[d]; g.xs[d] = xs[d]; g.os[d] = os[d]; g.is[d] = is[d];
  }
  return g;
}

// Copy gather: out (contiguous, g.size) [e] = x[coords with dim := idx[...]]; idx offset by g.is.
template <class W>
__global__ void gather_kernel(const W* __restrict__ x, const int64_t* __restrict__ idx, W* __restrict__ out, int64_t n, Geo g) {
  for (int64_t e = global_tid<int64_t>(); e < n; e += grid_stride<int64_t>()) {
    int64_t r = e, xo = 0, io = 0;
    for (int d = g.nd - 1; d >= 0; d--) {
      const int64_t c = r % g.size[d];
      r /= g.size[d];
      io += c * g.is[d];
      if (d != g.dim) xo += c * g.xs[d];
    }
    xo += idx[io] * g.xs[g.dim];
    out[e] = x[xo];
  }
}

// Scatter-add by lines: each thread owns the positions that differ only along g.dim and adds them
// in order. src is contiguous with shape g.size; idx offsets by g.is (g.is[dim] walks the line).
template <class T>
__global__ void scatter_lines_kernel(const T* __restrict__ src, const int64_t* __restrict__ idx, T* __restrict__ out,
                                     int64_t lines, Geo g) {
  const int64_t L = g.size[g.dim];
  int64_t sst = 1;   // src stride along dim (contiguous src)
  for (int d = g.nd - 1; d > g.dim; d--) sst *= g.size[d];
  for (int64_t l = global_tid<int64_t>(); l < lines; l += grid_stride<int64_t>()) {
    int64_t r = l, so = 0, oo = 0, io = 0, st = 1;
    for (int d = g.nd - 1; d >= 0; d--) {
      if (d == g.dim) { st *= g.size[d]; continue; }
      const int64_t c = r % g.size[d];
      r /= g.size[d];
      so += c * st;
      oo += c * g.os[d];
      io += c * g.is[d];
      st *= g.size[d];
    }
    for (int64_t i = 0; i < L; i++) {
      const int64_t o = oo + idx[io + i * g.is[g.dim]] * g.os[g.dim];
      out[o] = out[o] + src[so + i * sst];
    }
  }
}

template <class F> void by_width(size_t es, F&& f) {
  switch (es) {
    case 1: f(uint8_t{}); return;
    case 2: f(uint16_t{}); return;
    case 4: f(uint32_t{}); return;
    case 8: f(uint64_t{}); return;
    default: fail("cuda index: unsupported element size ", es);
  }
}

Tensor gather_cuda(const Tensor& x, int64_t dim, const Tensor& idx) {
  check_cuda(x, "gather", "x");
  dim = wrap_dim(dim, x.dim(), "gather");
  PK_CHECK(idx.dim() == x.dim(), "gather: index ", idx.desc(), " must have the rank of x ", x.desc());
  for (int64_t d = 0; d < x.dim(); d++)
    PK_CHECK(d == dim || idx.shape()[d] <= x.shape()[d], "gather: index ", idx.desc(), " larger than x ", x.desc(), " on dim ", d);
  Tensor ix = checked(idx, x.shape()[dim], "gather", "index");
  Tensor out = Tensor::empty(idx.shape(), x.dtype(), Device::CUDA);
  const int64_t n = out.numel();
  if (n == 0) return out;
  Geo g = make_geo(idx.shape(), dim, x.strides(), out.strides(), ix.strides(), "gather");
  by_width(dtype_size(x.dtype()), [&](auto w) {
    using W = decltype(w);
    launch(gather_kernel<W>, n, (const W*)x.raw(), ix.data<int64_t>(), (W*)out.raw(), n, g);
  });
  return out;
}

Tensor index_select_cuda(const Tensor& x, int64_t dim, const Tensor& idx) {
  check_cuda(x, "index_select", "x");
  dim = wrap_dim(dim, x.dim(), "index_select");
  PK_CHECK(idx.dim() == 1, "index_select: index must be 1-d, got ", idx.desc());
  Tensor ix = checked(idx, x.shape()[dim], "index_select", "index");
  Shape os = x.shape(); os[dim] = ix.numel();
  Tensor out = Tensor::empty(os, x.dtype(), Device::CUDA);
  const int64_t n = out.numel();
  if (n == 0) return out;
  Shape is(os.size(), 0);
  is[dim] = 1;   // the index varies along dim only
  Geo g = make_geo(os, dim, x.strides(), out.strides(), is, "index_select");
  by_width(dtype_size(x.dtype()), [&](auto w) {
    using W = decltype(w);
    launch(gather_kernel<W>, n, (const W*)x.raw(), ix.data<int64_t>(), (W*)out.raw(), n, g);
  });
  return out;
}

// out = zeros(shape, compute dtype); lines of src (shape sshape, contiguous) added along dim.
Tensor scatter_lines(const Shape& shape, int64_t dim, const Tensor& ix, const Shape& is, const Tensor& src_in, const char* op) {
  DType cd = compute_dtype(src_in.dtype());
  Tensor out = zeros(shape, cd);
  Tensor src = contiguous(cast(src_in, cd));
  const int64_t L = src.shape()[dim];
  const int64_t lines = L > 0 ? src.numel() / L : 0;
  if (lines > 0) {
    Geo g = make_geo(src.shape(), dim, src.strides(), out.strides(), is, op);
    dispatch_float(cd, op, [&](auto tag) {
      using T = decltype(tag);
      launch(scatter_lines_kernel<T>, lines, src.data<T>(), ix.data<int64_t>(), out.data<T>(), lines, g);
    });
  }
  return cast(out, src_in.dtype());
}

Tensor scatter_add_cuda(const Shape& shape, int64_t dim, const Tensor& idx, const Tensor& src) {
  check_float(src, "scatter_add", "src"); check_cuda(src, "scatter_add", "src");
  dim = wrap_dim(dim, (int64_t)shape.size(), "scatter_add");
  PK_CHECK(idx.shape() == src.shape(), "scatter_add: index ", idx.desc(), " and src ", src.desc(), " must match");
  PK_CHECK(idx.dim() == (int64_t)shape.size(), "scatter_add: index ", idx.desc(), " must have rank ", shape.size());
  for (int64_t d = 0; d < idx.dim(); d++)
    PK_CHECK(d == dim || idx.shape()[d] <= shape[d], "scatter_add: index ", idx.desc(), " larger than output ", shape_str(shape));
  Tensor ix = checked(idx, shape[dim], "scatter_add", "index");
  return scatter_lines(shape, dim, ix, ix.strides(), src, "scatter_add");
}

Tensor index_add_cuda(const Shape& shape, int64_t dim, const Tensor& idx, const Tensor& src) {
  check_float(src, "index_add", "src"); check_cuda(src, "index_add", "src");
  dim = wrap_dim(dim, (int64_t)shape.size(), "index_add");
  PK_CHECK(idx.dim() == 1, "index_add: index must be 1-d, got ", idx.desc());
  Shape want = shape; want[dim] = idx.numel();
  PK_CHECK(src.shape() == want, "index_add: src ", src.desc(), " must have shape ", shape_str(want));
  Tensor ix = checked(idx, shape[dim], "index_add", "index");
  Shape is(shape.size(), 0);
  is[dim] = 1;
  return scatter_lines(shape, dim, ix, is, src, "index_add");
}

Tensor cat_cuda(const std::vector<Tensor>& xs, int64_t dim) {
  PK_CHECK(!xs.empty(), "cat: needs at least one tensor");
  const Tensor& f = xs[0];
  check_cuda(f, "cat", "tensors[0]");
  dim = wrap_dim(dim, f.dim(), "cat");
  int64_t total = 0;
  for (size_t i = 0; i < xs.size(); i++) {
    const Tensor& t = xs[i];
    check_cuda(t, "cat", "tensors[i]");
    PK_CHECK(t.dtype() == f.dtype(), "cat: dtype mismatch between ", f.desc(), " and tensors[", i, "] ", t.desc());
    PK_CHECK(t.dim() == f.dim(), "cat: rank mismatch between ", f.desc(), " and tensors[", i, "] ", t.desc());
    for (int64_t d = 0; d < f.dim(); d++)
      PK_CHECK(d == dim || t.shape()[d] == f.shape()[d], "cat: shape mismatch on dim ", d, " between ", f.desc(), " and tensors[", i, "] ", t.desc());
    total += t.shape()[dim];
  }
  Shape os = f.shape(); os[dim] = total;
  Tensor out = Tensor::empty(os, f.dtype(), Device::CUDA);
  int64_t at = 0;
  for (auto& t : xs) {
    if (t.numel()) cuda::copy_into(out.narrow(dim, at, t.shape()[dim]), t);
    at += t.shape()[dim];
  }
  return out;
}

// ------------------------------------------------------------------- compare / where / masked_fill

__device__ __forceinline__ double load_f64(const char* base, int dt, int64_t off) {
  switch (dt) {
    case (int)DType::F32: return (double)reinterpret_cast<const float*>(base)[off];
    case (int)DType::F64: return reinterpret_cast<const double*>(base)[off];
    case (int)DType::BF16: return (double)__bfloat162float(reinterpret_cast<const __nv_bfloat16*>(base)[off]);
    case (int)DType::F16: return (double)__half2float(reinterpret_cast<const __half*>(base)[off]);
    case (int)DType::I32: return (double)reinterpret_cast<const int32_t*>(base)[off];
    case (int)DType::I64: return (double)reinterpret_cast<const int64_t*>(base)[off];
    default: return (double)reinterpret_cast<const uint8_t*>(base)[off];
  }
}

template <bool Small>
__global__ void compare_kernel(uint8_t* __restrict__ out, const char* __restrict__ a, int adt, const char* __restrict__ b,
                               int bdt, int op, int64_t n, CalcT<Small, 3> calc) {
  using I = typename IdxT<Small>::type;
  for (I i = global_tid<I>(); i < (I)n; i += grid_stride<I>()) {
    I off[3];
    calc.get(i, off);
    const double x = load_f64(a, adt, off[1]), y = load_f64(b, bdt, off[2]);
    bool r;
    switch (op) {
      case 0: r = x == y; break;
      case 1: r = x != y; break;
      case 2: r = x < y; break;
      case 3: r = x <= y; break;
      case 4: r = x > y; break;
      default: r = x >= y; break;
    }
    out[off[0]] = r;
  }
}

template <class SO, bool Small>
__global__ void where_kernel(SO* __restrict__ out, const uint8_t* __restrict__ c, const char* __restrict__ a, int adt,
                             const char* __restrict__ b, int bdt, int64_t n, CalcT<Small, 4> calc) {
  using I = typename IdxT<Small>::type;
  for (I i = global_tid<I>(); i < (I)n; i += grid_stride<I>()) {
    I off[4];
    calc.get(i, off);
    // a and b are float dtypes: their values are exact in f64, and the CPU's widen-select-narrow
    // equals converting the selected value once.
    const double v = c[off[1]] ? load_f64(a, adt, off[2]) : load_f64(b, bdt, off[3]);
    if constexpr (std::is_same<SO, double>::value) out[off[0]] = v;
    else out[off[0]] = from_f32<SO>((float)v);
  }
}

Layout broadcast_layout(const Shape& shape, const std::vector<Tensor>& ts) {
  std::vector<std::vector<int64_t>> st;
  for (const Tensor& t : ts) {
    Tensor e = t.expand(shape);
    st.push_back(e.strides());
  }
  return make_layout(shape, st);
}

Tensor compare_cuda(CompareOp op, const Tensor& a_in, const Tensor& b_in) {
  Tensor a = on_cuda(a_in, "compare", "a"), b = on_cuda(b_in, "compare", "b");
  PK_CHECK(a.dtype() != DType::NF4 && b.dtype() != DType::NF4, "compare: nf4 tensors are not comparable");
  Shape shape = broadcast_shapes(a.shape(), b.shape(), "compare");
  Tensor out = Tensor::empty(shape, DType::U8, Device::CUDA);
  const int64_t n = out.numel();
  if (n == 0) return out;
  Layout L = broadcast_layout(shape, {out, a, b});
  if (L.small_index)
    launch(compare_kernel<true>, n, out.data<uint8_t>(), (const char*)a.raw(), (int)a.dtype(), (const char*)b.raw(),
           (int)b.dtype(), (int)op, n, make_calc<true, 3>(L));
  else
    launch(compare_kernel<false>, n, out.data<uint8_t>(), (const char*)a.raw(), (int)a.dtype(), (const char*)b.raw(),
           (int)b.dtype(), (int)op, n, make_calc<false, 3>(L));
  return out;
}

Tensor where_cuda(const Tensor& cond_in, const Tensor& a_in, const Tensor& b_in) {
  check_dtype(cond_in, DType::U8, "where", "cond");
  Tensor cond = on_cuda(cond_in, "where", "cond"), a = on_cuda(a_in, "where", "a"), b = on_cuda(b_in, "where", "b");
  check_float(a, "where", "a"); check_float(b, "where", "b");
  Shape shape = broadcast_shapes(broadcast_shapes(cond.shape(), a.shape(), "where"), b.shape(), "where");
  DType rd = promote(a.dtype(), b.dtype());
  Tensor out = Tensor::empty(shape, rd, Device::CUDA);
  const int64_t n = out.numel();
  if (n == 0) return out;
  Layout L = broadcast_layout(shape, {out, cond, a, b});
  dispatch_float(rd, "where", [&](auto tag) {
    using SO = decltype(tag);
    if (L.small_index)
      launch(where_kernel<SO, true>, n, out.data<SO>(), cond.data<uint8_t>(), (const char*)a.raw(), (int)a.dtype(),
             (const char*)b.raw(), (int)b.dtype(), n, make_calc<true, 4>(L));
    else
      launch(where_kernel<SO, false>, n, out.data<SO>(), cond.data<uint8_t>(), (const char*)a.raw(), (int)a.dtype(),
             (const char*)b.raw(), (int)b.dtype(), n, make_calc<false, 4>(L));
  });
  return out;
}

Tensor masked_fill_cuda(const Tensor& x, const Tensor& mask, double value) {
  check_dtype(mask, DType::U8, "masked_fill", "mask");
  check_float(x, "masked_fill", "x"); check_cuda(x, "masked_fill", "x");
  Shape shape = broadcast_shapes(x.shape(), mask.shape(), "masked_fill");
  PK_CHECK(shape == x.shape(), "masked_fill: mask ", mask.desc(), " must broadcast to x ", x.desc());
  Tensor v = Tensor::scalar(value, x.dtype());   // 0-d cpu scalar, moved over by where
  return where_cuda(mask, v, x);
}

struct Registrar {
  Registrar() {
    CudaOps& o = cuda_ops();
    o.gather = gather_cuda;
    o.scatter_add = scatter_add_cuda;
    o.index_select = index_select_cuda;
    o.index_add = index_add_cuda;
    o.cat = cat_cuda;
    o.compare = compare_cuda;
    o.where = where_cuda;
    o.masked_fill = masked_fill_cuda;
  }
};
Registrar registrar;

}  // namespace

}  // namespace cuda
}  // namespace pk
