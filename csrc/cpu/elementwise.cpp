// elementwise.cpp — CPU kernels for elementwise.h. Inputs are widened to the compute type
// (f32, or f64 for f64 tensors), walked row by row with broadcast strides, and the result is
// narrowed back to the promoted storage dtype.
//
// Fast path: f32/bf16/f16 operands whose innermost stride is 0 or 1 (contiguous tensors, views
// of rows such as a split, scalars, broadcasts of a last-dim vector) go through run_rows and the
// vectorised row kernels of elementwise_kernels.h (AVX-512 / AVX2, by simd::active_flavor());
// bf16/f16 are widened and narrowed chunk by chunk in L1 instead of by whole-tensor casts.
// Everything else (f64, other strides, pow, log, sin, ...) takes the scalar loops below.
#include <cstring>

#include "core/dispatch.h"
#include "elementwise.h"
#include "elementwise_kernels.h"
#include "cpu_common.h"
#include "simd_dispatch.h"

namespace pk {

namespace {

constexpr double kSqrt2OverPi = 0.7978845608028654;
constexpr double kInvSqrt2 = 0.7071067811865476;

template <class T> inline T bin(BinaryOp op, T a, T b) {
  switch (op) {
    case BinaryOp::Add: return a + b;
    case BinaryOp::Sub: return a - b;
    case BinaryOp::Mul: return a * b;
    case BinaryOp::Div: return a / b;
    case BinaryOp::Pow: return std::pow(a, b);
    case BinaryOp::Maximum: return (a != a || a > b) ? a : b;  // NaN propagates like torch.maximum
    case BinaryOp::Minimum: return (a != a || a < b) ? a : b;
  }
  return 0;
}

template <class T> inline T un(UnaryOp op, T x) {
  switch (op) {
    case UnaryOp::Neg: return -x;
    case UnaryOp::Exp: return std::exp(x);
    case UnaryOp::Log: return std::log(x);
    case UnaryOp::Sqrt: return std::sqrt(x);
    case UnaryOp::Rsqrt: return T(1) / std::sqrt(x);
    case UnaryOp::Abs: return std::abs(x);
    case UnaryOp::Sigmoid: return T(1) / (T(1) + std::exp(-x));
    case UnaryOp::Tanh: return std::tanh(x);
    case UnaryOp::Silu: return x / (T(1) + std::exp(-x));
    case UnaryOp::Gelu: return T(0.5) * x * (T(1) + std::erf(x * T(kInvSqrt2)));
    case UnaryOp::GeluTanh: return T(0.5) * x * (T(1) + std::tanh(T(kSqrt2OverPi) * (x + T(0.044715) * x * x * x)));
    case UnaryOp::Relu: return x > 0 ? x : T(0);
    case UnaryOp::Sin: return std::sin(x);
    case UnaryOp::Cos: return std::cos(x);
    case UnaryOp::Square: return x * x;
    case UnaryOp::Reciprocal: return T(1) / x;
    case UnaryOp::Sign: return x > 0 ? T(1) : (x < 0 ? T(-1) : T(0));
    case UnaryOp::Log1p: return std::log1p(x);
    case UnaryOp::Expm1: return std::expm1(x);
  }
  return 0;
}

// d/dx of un(op, x) times dy, given x and (optionally) y = un(op, x).
template <class T> inline T un_grad(UnaryOp op, T x, T y, T dy) {
  switch (op) {
    case UnaryOp::Neg: return -dy;
    case UnaryOp::Exp: return dy * y;
    case UnaryOp::Log: return dy / x;
    case UnaryOp::Sqrt: return dy * T(0.5) / y;
    case UnaryOp::Rsqrt: return dy * T(-0.5) * y * y * y;
    case UnaryOp::Abs: return x > 0 ? dy : (x < 0 ? -dy : T(0));
    case UnaryOp::Sigmoid: return dy * y * (T(1) - y);
    case UnaryOp::Tanh: return dy * (T(1) - y * y);
    case UnaryOp::Silu: { T s = T(1) / (T(1) + std::exp(-x)); return dy * s * (T(1) + x * (T(1) - s)); }
    case UnaryOp::Gelu: {
      T cdf = T(0.5) * (T(1) + std::erf(x * T(kInvSqrt2)));
      T pdf = std::exp(T(-0.5) * x * x) * T(0.3989422804014327);
      return dy * (cdf + x * pdf);
    }
    case UnaryOp::GeluTanh: {
      T inner = T(kSqrt2OverPi) * (x + T(0.044715) * x * x * x);
      T t = std::tanh(inner);
      T dinner = T(kSqrt2OverPi) * (T(1) + T(3) * T(0.044715) * x * x);
      return dy * (T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * dinner);
    }
    case UnaryOp::Relu: return x > 0 ? dy : T(0);
    case UnaryOp::Sin: return dy * std::cos(x);
    case UnaryOp::Cos: return -dy * std::sin(x);
    case UnaryOp::Square: return dy * T(2) * x;
    case UnaryOp::Reciprocal: return -dy * y * y;
    case UnaryOp::Sign: return T(0);
    case UnaryOp::Log1p: return dy / (T(1) + x);
    case UnaryOp::Expm1: return dy * (y + T(1));
  }
  return 0;
}

inline bool needs_y(UnaryOp op) {
  return op == UnaryOp::Exp || op == UnaryOp::Sqrt || op == UnaryOp::Rsqrt || op == UnaryOp::Sigmoid ||
         op == UnaryOp::Tanh || op == UnaryOp::Reciprocal || op == UnaryOp::Expm1;
}

const char* bin_name(BinaryOp op) {
  static const char* n[] = {"add", "sub", "mul", "div", "pow", "maximum", "minimum"};
  return n[(int)op];
}

// Widen to compute dtype `cd` and broadcast-view to `shape` (stride-0 dims; no copy beyond the cast).
Tensor widen_expand(const Tensor& t, DType cd, const Shape& shape) { return t.to(cd).expand(shape); }

// Generic n-ary elementwise loop: out[i] = f(in0[i], in1[i], ...) over broadcast views.
template <class T, class F>
void map_into(const Tensor& out, const std::vector<Tensor>& ins, F f) {
  std::vector<Shape> strides{out.strides()};
  for (auto& t : ins) strides.push_back(t.strides());
  T* o = out.data<T>();
  std::vector<const T*> p;
  for (auto& t : ins) p.push_back(t.data<T>());
  int64_t ninner = out.dim() ? out.shape().back() : 1;
  std::vector<int64_t> is;
  for (auto& s : strides) is.push_back(s.empty() ? 1 : s.back());
  strided_rows(out.shape(), strides, 16384, [&](const int64_t* off, int64_t inner) {
    (void)ninner;
    T* orow = o + off[0];
    if (ins.size() == 1) {
      const T* a = p[0] + off[1]; int64_t sa = is[1];
      if (sa == 1) for (int64_t i = 0; i < inner; i++) orow[i] = f(a[i], T(0), T(0));
      else for (int64_t i = 0; i < inner; i++) orow[i] = f(a[i * sa], T(0), T(0));
    } else if (ins.size() == 2) {
      const T* a = p[0] + off[1]; const T* b = p[1] + off[2];
      int64_t sa = is[1], sb = is[2];
      if (sa == 1 && sb == 1) for (int64_t i = 0; i < inner; i++) orow[i] = f(a[i], b[i], T(0));
      else for (int64_t i = 0; i < inner; i++) orow[i] = f(a[i * sa], b[i * sb], T(0));
    } else {
      const T* a = p[0] + off[1]; const T* b = p[1] + off[2]; const T* c = p[2] + off[3];
      int64_t sa = is[1], sb = is[2], sc = is[3];
      for (int64_t i = 0; i < inner; i++) orow[i] = f(a[i * sa], b[i * sb], c[i * sc]);
    }
  });
}

void check_inputs(const Tensor& t, const char* op, const char* arg) {
  check_float(t, op, arg);
  check_cpu(t, op, arg);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Vector fast path: ISA tables, the row runner.
namespace ew {

const Kernels* active_kernels() {
  // The node-gyp fallback build (PEFTKIT_NO_SIMD_KERNELS) compiles no ISA-specific files.
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(PEFTKIT_NO_SIMD_KERNELS)
  switch (simd::active_flavor()) {
    case simd::Flavor::Avx512Bf16: return &kernels_avx512bf16();
    case simd::Flavor::Avx512: return &kernels_avx512();
    case simd::Flavor::Avx2: return &kernels_avx2();
    default: break;
  }
#endif
  return nullptr;
}

bool vec_binary_ok(BinaryOp op) { return op != BinaryOp::Pow; }
bool vec_binary_grad_ok(BinaryOp op) {
  return op == BinaryOp::Add || op == BinaryOp::Sub || op == BinaryOp::Mul || op == BinaryOp::Div;
}
bool vec_unary_ok(UnaryOp op) {
  switch (op) {
    case UnaryOp::Neg: case UnaryOp::Exp: case UnaryOp::Sqrt: case UnaryOp::Rsqrt: case UnaryOp::Abs:
    case UnaryOp::Sigmoid: case UnaryOp::Tanh: case UnaryOp::Silu: case UnaryOp::Gelu: case UnaryOp::GeluTanh:
    case UnaryOp::Relu: case UnaryOp::Square: case UnaryOp::Reciprocal: case UnaryOp::Sign:
      return true;
    default:
      return false;
  }
}

bool io_ok(DType t, const Shape& shape, std::initializer_list<const Tensor*> ts) {
  if (!vec_dtype(t)) return false;
  for (const Tensor* x : ts)
    if (x->dtype() != t || x->device() != Device::CPU || x->shape() != shape || !x->is_contiguous()) return false;
  return true;
}

void parallel_flat(int64_t n, const std::function<void(int64_t, int64_t)>& body) { parallel_for(0, n, 16384, body); }

bool run_rows(const Kernels& k, const Shape& shape, const std::vector<Tensor>& ins, const std::vector<Tensor>& outs,
              const RowBody& body) {
  constexpr int kMaxIn = 4, kMaxOut = 2;
  const int ni = (int)ins.size(), no = (int)outs.size();
  if (ni > kMaxIn || no > kMaxOut) return false;
  const int64_t nd = (int64_t)shape.size();
  const int64_t n = shape_numel(shape);
  const int64_t inner = nd ? shape[nd - 1] : 1;
  int64_t is[kMaxIn];
  bool flat = true;  // every input contiguous or a broadcast scalar: one row of n elements
  for (int j = 0; j < ni; j++) {
    const Tensor& t = ins[j];
    if (!vec_dtype(t.dtype()) || t.device() != Device::CPU || t.shape() != shape) return false;
    int64_t s = nd ? t.strides()[nd - 1] : 1;
    if (inner == 1) s = 1;
    if (s != 0 && s != 1) return false;
    is[j] = s;
    bool all0 = true;
    for (int64_t d = 0; d < nd; d++) all0 = all0 && (t.strides()[d] == 0 || shape[d] == 1);
    if (all0 && n > 1) is[j] = 0;
    else if (!t.is_contiguous()) flat = false;
  }
  for (int j = 0; j < no; j++) {
    const Tensor& t = outs[j];
    if (!vec_dtype(t.dtype()) || t.device() != Device::CPU || t.shape() != shape || !t.is_contiguous()) return false;
  }
  if (n == 0) return true;

  const char* ib[kMaxIn]; DType it[kMaxIn]; size_t isz[kMaxIn];
  char* ob[kMaxOut]; DType ot[kMaxOut]; size_t osz[kMaxOut];
  for (int j = 0; j < ni; j++) { ib[j] = static_cast<const char*>(ins[j].raw()); it[j] = ins[j].dtype(); isz[j] = dtype_size(it[j]); }
  for (int j = 0; j < no; j++) { ob[j] = static_cast<char*>(outs[j].raw()); ot[j] = outs[j].dtype(); osz[j] = dtype_size(ot[j]); }

  // One row segment: input j starts at element offset ioff[j] (stride is[j]), output j at ooff[j].
  auto segment = [&](const int64_t* ioff, const int64_t* ooff, int64_t len) {
    alignas(64) float ibuf[kMaxIn][kChunk];
    alignas(64) float obuf[kMaxOut][kChunk];
    const float* ip[kMaxIn]; float* op[kMaxOut];
    for (int64_t c0 = 0; c0 < len; c0 += kChunk) {
      const int64_t m = std::min(kChunk, len - c0);
      for (int j = 0; j < ni; j++) {
        const char* src = ib[j] + (ioff[j] + c0 * is[j]) * (int64_t)isz[j];
        if (it[j] == DType::F32) { ip[j] = reinterpret_cast<const float*>(src); continue; }
        if (is[j] == 0) {
          if (c0 == 0) k.to_f32(it[j], src, ibuf[j], 1);
        } else {
          k.to_f32(it[j], src, ibuf[j], m);
        }
        ip[j] = ibuf[j];
      }
      for (int j = 0; j < no; j++)
        op[j] = ot[j] == DType::F32 ? reinterpret_cast<float*>(ob[j] + (ooff[j] + c0) * 4) : obuf[j];
      body(ip, is, op, m);
      for (int j = 0; j < no; j++)
        if (ot[j] != DType::F32) k.from_f32(ot[j], obuf[j], ob[j] + (ooff[j] + c0) * (int64_t)osz[j], m);
    }
  };

  constexpr int64_t kGrain = 16384;
  if (flat) {
    parallel_for(0, n, kGrain, [&](int64_t lo, int64_t hi) {
      int64_t ioff[kMaxIn], ooff[kMaxOut];
      for (int j = 0; j < ni; j++) ioff[j] = lo * is[j];
      for (int j = 0; j < no; j++) ooff[j] = lo;
      segment(ioff, ooff, hi - lo);
    });
    return true;
  }
  std::vector<Shape> strides;
  for (auto& t : outs) strides.push_back(t.strides());
  for (auto& t : ins) strides.push_back(t.strides());
  strided_rows(shape, strides, kGrain, [&](const int64_t* off, int64_t len) {
    segment(off + no, off, len);
  });
  return true;
}

}  // namespace ew

Tensor binary_forward(BinaryOp op, const Tensor& a, const Tensor& b) {
  const char* name = bin_name(op);
  if (any_cuda(a, b)) return cuda_fn(&CudaOps::binary_forward, name)(op, a, b);
  check_inputs(a, name, "a"); check_inputs(b, name, "b");
  Shape shape = broadcast_shapes(a.shape(), b.shape(), name);
  DType rd = promote(a.dtype(), b.dtype()), cd = compute_dtype(rd);
  if (const ew::Kernels* k = ew::active_kernels(); k && cd == DType::F32 && ew::vec_binary_ok(op)) {
    Tensor out = Tensor::empty(shape, rd);
    if (ew::io_ok(rd, shape, {&a, &b})) {  // e.g. a bf16 residual add: in place, no staging
      const size_t es = dtype_size(rd);
      const char* pa = static_cast<const char*>(a.raw()); const char* pb = static_cast<const char*>(b.raw());
      char* po = static_cast<char*>(out.raw());
      ew::parallel_flat(out.numel(), [&](int64_t lo, int64_t hi) {
        k->binary_io(op, rd, pa + lo * es, pb + lo * es, po + lo * es, hi - lo);
      });
      return out;
    }
    if (ew::run_rows(*k, shape, {a.expand(shape), b.expand(shape)}, {out},
                     [&](const float* const* in, const int64_t* s, float* const* o, int64_t n) {
                       k->binary(op, in[0], s[0], in[1], s[1], o[0], n);
                     }))
      return out;
  }
  Tensor out = Tensor::empty(shape, cd);
  dispatch_fp(cd, [&](auto tag) {
    using T = decltype(tag);
    map_into<T>(out, {widen_expand(a, cd, shape), widen_expand(b, cd, shape)}, [op](T x, T y, T) { return bin<T>(op, x, y); });
    return 0;
  });
  return out.to(rd);
}

void binary_backward(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& dy, bool need_a, bool need_b,
                     Tensor* da, Tensor* db) {
  const char* name = bin_name(op);
  if (any_cuda(a, b, dy)) { cuda_fn(&CudaOps::binary_backward, name)(op, a, b, dy, need_a, need_b, da, db); return; }
  check_inputs(a, name, "a"); check_inputs(b, name, "b"); check_inputs(dy, name, "grad");
  Shape shape = broadcast_shapes(a.shape(), b.shape(), name);
  PK_CHECK(dy.shape() == shape, name, "_backward: grad ", dy.desc(), " does not match output shape ", shape_str(shape));
  DType rd = promote(a.dtype(), b.dtype()), cd = compute_dtype(rd);
  if (const ew::Kernels* k = ew::active_kernels(); k && cd == DType::F32 && ew::vec_binary_grad_ok(op) && (need_a || need_b)) {
    Tensor ga = need_a ? Tensor::empty(shape, a.dtype()) : Tensor(), gb = need_b ? Tensor::empty(shape, b.dtype()) : Tensor();
    std::vector<Tensor> outs;
    if (need_a) outs.push_back(ga);
    if (need_b) outs.push_back(gb);
    if (ew::run_rows(*k, shape, {a.expand(shape), b.expand(shape), dy.expand(shape)}, outs,
                     [&](const float* const* in, const int64_t* s, float* const* o, int64_t n) {
                       if (s[2] == 0) {  // a broadcast upstream gradient (rare): materialise the row
                         alignas(64) float d[ew::kChunk];
                         std::fill(d, d + n, in[2][0]);
                         k->binary_grad(op, in[0], s[0], in[1], s[1], d, need_a ? o[0] : nullptr,
                                        need_b ? o[need_a ? 1 : 0] : nullptr, n);
                       } else {
                         k->binary_grad(op, in[0], s[0], in[1], s[1], in[2], need_a ? o[0] : nullptr,
                                        need_b ? o[need_a ? 1 : 0] : nullptr, n);
                       }
                     })) {
      if (need_a) *da = ga;
      if (need_b) *db = gb;
      return;
    }
  }
  std::vector<Tensor> ins{widen_expand(a, cd, shape), widen_expand(b, cd, shape), widen_expand(dy, cd, shape)};
  dispatch_fp(cd, [&](auto tag) {
    using T = decltype(tag);
    if (need_a) {
      Tensor g = Tensor::empty(shape, cd);
      map_into<T>(g, ins, [op](T x, T y, T d) -> T {
        switch (op) {
          case BinaryOp::Add: case BinaryOp::Sub: return d;
          case BinaryOp::Mul: return d * y;
          case BinaryOp::Div: return d / y;
          case BinaryOp::Pow: return d * y * std::pow(x, y - T(1));
          case BinaryOp::Maximum: return x > y ? d : (x == y ? d * T(0.5) : T(0));
          case BinaryOp::Minimum: return x < y ? d : (x == y ? d * T(0.5) : T(0));
        }
        return T(0);
      });
      *da = g.to(a.dtype() == rd ? rd : a.dtype());
    }
    if (need_b) {
      Tensor g = Tensor::empty(shape, cd);
      map_into<T>(g, ins, [op](T x, T y, T d) -> T {
        switch (op) {
          case BinaryOp::Add: return d;
          case BinaryOp::Sub: return -d;
          case BinaryOp::Mul: return d * x;
          case BinaryOp::Div: return -d * x / (y * y);
          case BinaryOp::Pow: return x > 0 ? d * std::pow(x, y) * std::log(x) : T(0);
          case BinaryOp::Maximum: return y > x ? d : (x == y ? d * T(0.5) : T(0));
          case BinaryOp::Minimum: return y < x ? d : (x == y ? d * T(0.5) : T(0));
        }
        return T(0);
      });
      *db = g.to(b.dtype() == rd ? rd : b.dtype());
    }
    return 0;
  });
}

Tensor scalar_forward(BinaryOp op, const Tensor& x, double s, bool scalar_first) {
  const char* name = bin_name(op);
  if (any_cuda(x)) return cuda_fn(&CudaOps::scalar_forward, name)(op, x, s, scalar_first);
  check_inputs(x, name, "x");
  DType cd = compute_dtype(x.dtype());
  if (const ew::Kernels* k = ew::active_kernels(); k && cd == DType::F32 && ew::vec_binary_ok(op)) {
    Tensor out = Tensor::empty(x.shape(), x.dtype());
    const float sv = (float)s;
    if (ew::run_rows(*k, x.shape(), {x}, {out}, [&](const float* const* in, const int64_t* st, float* const* o, int64_t n) {
          if (scalar_first) k->binary(op, &sv, 0, in[0], st[0], o[0], n);
          else k->binary(op, in[0], st[0], &sv, 0, o[0], n);
        }))
      return out;
  }
  Tensor out = Tensor::empty(x.shape(), cd);
  dispatch_fp(cd, [&](auto tag) {
    using T = decltype(tag);
    T sv = (T)s;
    if (scalar_first) map_into<T>(out, {x.to(cd)}, [op, sv](T v, T, T) { return bin<T>(op, sv, v); });
    else map_into<T>(out, {x.to(cd)}, [op, sv](T v, T, T) { return bin<T>(op, v, sv); });
    return 0;
  });
  return out.to(x.dtype());
}

Tensor scalar_backward(BinaryOp op, const Tensor& x, double s, bool scalar_first, const Tensor& dy) {
  const char* name = bin_name(op);
  if (any_cuda(x, dy)) return cuda_fn(&CudaOps::scalar_backward, name)(op, x, s, scalar_first, dy);
  check_inputs(x, name, "x"); check_inputs(dy, name, "grad");
  PK_CHECK(dy.shape() == x.shape(), name, "_backward: grad ", dy.desc(), " does not match ", x.desc());
  DType cd = compute_dtype(x.dtype());
  if (const ew::Kernels* k = ew::active_kernels(); k && cd == DType::F32 && ew::vec_binary_grad_ok(op)) {
    Tensor out = Tensor::empty(x.shape(), x.dtype());
    const float sv = (float)s;
    if (ew::run_rows(*k, x.shape(), {x, dy}, {out}, [&](const float* const* in, const int64_t* st, float* const* o, int64_t n) {
          alignas(64) float d[ew::kChunk];
          const float* dp = in[1];
          if (st[1] == 0) { std::fill(d, d + n, in[1][0]); dp = d; }
          if (scalar_first) k->binary_grad(op, &sv, 0, in[0], st[0], dp, nullptr, o[0], n);
          else k->binary_grad(op, in[0], st[0], &sv, 0, dp, o[0], nullptr, n);
        }))
      return out;
  }
  Tensor out = Tensor::empty(x.shape(), cd);
  dispatch_fp(cd, [&](auto tag) {
    using T = decltype(tag);
    T sv = (T)s;
    map_into<T>(out, {x.to(cd), dy.to(cd)}, [op, sv, scalar_first](T v, T d, T) -> T {
      T a = scalar_first ? sv : v, b = scalar_first ? v : sv;
      switch (op) {
        case BinaryOp::Add: return d;
        case BinaryOp::Sub: return scalar_first ? -d : d;
        case BinaryOp::Mul: return d * sv;
        case BinaryOp::Div: return scalar_first ? -d * a / (b * b) : d / b;
        case BinaryOp::Pow: return scalar_first ? (a > 0 ? d * std::pow(a, b) * std::log(a) : T(0)) : d * b * std::pow(a, b - T(1));
        case BinaryOp::Maximum: return v > sv ? d : (v == sv ? d * T(0.5) : T(0));
        case BinaryOp::Minimum: return v < sv ? d : (v == sv ? d * T(0.5) : T(0));
      }
      return T(0);
    });
    return 0;
  });
  return out.to(x.dtype());
}

Tensor unary_forward(UnaryOp op, const Tensor& x) {
  if (any_cuda(x)) return cuda_fn(&CudaOps::unary_forward, "unary")(op, x);
  check_inputs(x, "unary", "x");
  DType cd = compute_dtype(x.dtype());
  if (const ew::Kernels* k = ew::active_kernels(); k && cd == DType::F32 && ew::vec_unary_ok(op)) {
    Tensor out = Tensor::empty(x.shape(), x.dtype());
    if (ew::run_rows(*k, x.shape(), {x}, {out}, [&](const float* const* in, const int64_t* st, float* const* o, int64_t n) {
          if (st[0] == 0) { alignas(64) float b[ew::kChunk]; std::fill(b, b + n, in[0][0]); k->unary(op, b, o[0], n); }
          else k->unary(op, in[0], o[0], n);
        }))
      return out;
  }
  Tensor out = Tensor::empty(x.shape(), cd);
  dispatch_fp(cd, [&](auto tag) {
    using T = decltype(tag);
    map_into<T>(out, {x.to(cd)}, [op](T v, T, T) { return un<T>(op, v); });
    return 0;
  });
  return out.to(x.dtype());
}

Tensor unary_backward(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& dy) {
  if (any_cuda(x, y, dy)) return cuda_fn(&CudaOps::unary_backward, "unary_backward")(op, x, y, dy);
  check_inputs(x, "unary_backward", "x"); check_inputs(dy, "unary_backward", "grad");
  PK_CHECK(dy.shape() == x.shape(), "unary_backward: grad ", dy.desc(), " does not match input ", x.desc());
  DType cd = compute_dtype(x.dtype());
  Tensor yy = y;
  if (needs_y(op)) {
    if (!yy.defined()) yy = unary_forward(op, x);
    PK_CHECK(yy.shape() == x.shape(), "unary_backward: output ", yy.desc(), " does not match input ", x.desc());
  } else {
    yy = x;  // unused placeholder with the right shape
  }
  if (const ew::Kernels* k = ew::active_kernels(); k && cd == DType::F32 && ew::vec_unary_ok(op)) {
    Tensor out = Tensor::empty(x.shape(), x.dtype());
    if (ew::run_rows(*k, x.shape(), {x, yy, dy}, {out}, [&](const float* const* in, const int64_t* st, float* const* o, int64_t n) {
          alignas(64) float b[3][ew::kChunk];
          const float* p[3];
          for (int j = 0; j < 3; j++) {
            p[j] = in[j];
            if (st[j] == 0) { std::fill(b[j], b[j] + n, in[j][0]); p[j] = b[j]; }
          }
          k->unary_grad(op, p[0], p[1], p[2], o[0], n);
        }))
      return out;
  }
  Tensor out = Tensor::empty(x.shape(), cd);
  dispatch_fp(cd, [&](auto tag) {
    using T = decltype(tag);
    map_into<T>(out, {x.to(cd), yy.to(cd), dy.to(cd)}, [op](T v, T w, T d) { return un_grad<T>(op, v, w, d); });
    return 0;
  });
  return out.to(x.dtype());
}

static bool cmp(CompareOp op, double a, double b) {
  switch (op) {
    case CompareOp::Eq: return a == b;
    case CompareOp::Ne: return a != b;
    case CompareOp::Lt: return a < b;
    case CompareOp::Le: return a <= b;
    case CompareOp::Gt: return a > b;
    case CompareOp::Ge: return a >= b;
  }
  return false;
}

Tensor compare(CompareOp op, const Tensor& a, const Tensor& b) {
  if (any_cuda(a, b)) return cuda_fn(&CudaOps::compare, "compare")(op, a, b);
  check_cpu(a, "compare", "a"); check_cpu(b, "compare", "b");
  PK_CHECK(a.dtype() != DType::NF4 && b.dtype() != DType::NF4, "compare: nf4 tensors are not comparable");
  Shape shape = broadcast_shapes(a.shape(), b.shape(), "compare");
  Tensor out = Tensor::empty(shape, DType::U8);
  Tensor ea = a.expand(shape), eb = b.expand(shape);
  size_t sa = dtype_size(a.dtype()), sb = dtype_size(b.dtype());
  const char* pa = (const char*)ea.raw(); const char* pb = (const char*)eb.raw();
  uint8_t* po = out.data<uint8_t>();
  int64_t ia = ea.dim() ? ea.strides().back() : 1, ib = eb.dim() ? eb.strides().back() : 1;
  strided_rows(shape, {out.strides(), ea.strides(), eb.strides()}, 16384, [&](const int64_t* off, int64_t inner) {
    for (int64_t i = 0; i < inner; i++)
      po[off[0] + i] = cmp(op, load_as_double(pa + (off[1] + i * ia) * sa, a.dtype()), load_as_double(pb + (off[2] + i * ib) * sb, b.dtype()));
  });
  return out;
}

Tensor compare_scalar(CompareOp op, const Tensor& a, double s) {
  Tensor st = Tensor::scalar(s, DType::F64);
  return compare(op, a, st);
}

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  if (any_cuda(cond, a, b)) return cuda_fn(&CudaOps::where, "where")(cond, a, b);
  check_dtype(cond, DType::U8, "where", "cond");
  check_cpu(cond, "where", "cond");
  check_inputs(a, "where", "a"); check_inputs(b, "where", "b");
  Shape shape = broadcast_shapes(broadcast_shapes(cond.shape(), a.shape(), "where"), b.shape(), "where");
  DType rd = promote(a.dtype(), b.dtype()), cd = compute_dtype(rd);
  Tensor out = Tensor::empty(shape, cd);
  Tensor c = cond.expand(shape), ea = widen_expand(a, cd, shape), eb = widen_expand(b, cd, shape);
  dispatch_fp(cd, [&](auto tag) {
    using T = decltype(tag);
    T* o = out.data<T>(); const uint8_t* pc = c.data<uint8_t>(); const T* pa = ea.data<T>(); const T* pb = eb.data<T>();
    int64_t sc = c.dim() ? c.strides().back() : 1, sa = ea.dim() ? ea.strides().back() : 1, sb = eb.dim() ? eb.strides().back() : 1;
    strided_rows(shape, {out.strides(), c.strides(), ea.strides(), eb.strides()}, 16384, [&](const int64_t* off, int64_t inner) {
      for (int64_t i = 0; i < inner; i++) o[off[0] + i] = pc[off[1] + i * sc] ? pa[off[2] + i * sa] : pb[off[3] + i * sb];
    });
    return 0;
  });
  return out.to(rd);
}

Tensor masked_fill(const Tensor& x, const Tensor& mask, double value) {
  if (any_cuda(x, mask)) return cuda_fn(&CudaOps::masked_fill, "masked_fill")(x, mask, value);
  check_dtype(mask, DType::U8, "masked_fill", "mask");
  check_inputs(x, "masked_fill", "x");
  Shape shape = broadcast_shapes(x.shape(), mask.shape(), "masked_fill");
  PK_CHECK(shape == x.shape(), "masked_fill: mask ", mask.desc(), " must broadcast to x ", x.desc());
  Tensor v = Tensor::scalar(value, x.dtype());
  return where(mask, v, x);
}

Tensor clamp(const Tensor& x, double lo, double hi) {
  if (any_cuda(x)) return cuda_fn(&CudaOps::clamp, "clamp")(x, lo, hi);
  check_inputs(x, "clamp", "x");
  DType cd = compute_dtype(x.dtype());
  Tensor out = Tensor::empty(x.shape(), cd);
  dispatch_fp(cd, [&](auto tag) {
    using T = decltype(tag);
    T l = (T)lo, h = (T)hi;
    map_into<T>(out, {x.to(cd)}, [l, h](T v, T, T) { return v < l ? l : (v > h ? h : v); });
    return 0;
  });
  return out.to(x.dtype());
}

Tensor clamp_backward(const Tensor& x, double lo, double hi, const Tensor& dy) {
  if (any_cuda(x, dy)) return cuda_fn(&CudaOps::clamp_backward, "clamp_backward")(x, lo, hi, dy);
  check_inputs(x, "clamp_backward", "x");
  PK_CHECK(dy.shape() == x.shape(), "clamp_backward: grad ", dy.desc(), " does not match ", x.desc());
  DType cd = compute_dtype(x.dtype());
  Tensor out = Tensor::empty(x.shape(), cd);
  dispatch_fp(cd, [&](auto tag) {
    using T = decltype(tag);
    T l = (T)lo, h = (T)hi;
    map_into<T>(out, {x.to(cd), dy.to(cd)}, [l, h](T v, T d, T) { return (v >= l && v <= h) ? d : T(0); });
    return 0;
  });
  return out.to(x.dtype());
}

}  // namespace pk
