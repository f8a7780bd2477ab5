// elementwise.cu — CUDA twins of cpu/elementwise.cpp: broadcasting binary ops, scalar ops, unary
// math/activations, clamp, and their backward.
//
// One generic engine: every op is a functor f(a, b, c) in the compute type (f32, f64 for f64)
// applied over up to three same-dtype inputs broadcast to the output shape. Dense layouts run a
// vectorised kernel (16-byte loads/stores: 8 bf16, 4 f32 per thread per step); everything else a
// grid-stride kernel whose index arithmetic uses 32-bit fast division when the layout is small.
// Mixed dtypes are widened to the compute dtype first and the result is narrowed, as on the CPU.
#include <array>
#include "common.cuh"
#include "cpu/cpu_common.h"
#include "ops.h"

namespace pk {
namespace cuda {

namespace {

constexpr double kSqrt2OverPi = 0.7978845608028654;
constexpr double kInvSqrt2 = 0.7071067811865476;

// ---- device math in f32 or f64 ----
__device__ __forceinline__ float m_exp(float x) { return expf(x); }
__device__ __forceinline__ double m_exp(double x) { return exp(x); }
__device__ __forceinline__ float m_log(float x) { return logf(x); }
__device__ __forceinline__ double m_log(double x) { return log(x); }
__device__ __forceinline__ float m_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double m_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float m_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double m_abs(double x) { return fabs(x); }
__device__ __forceinline__ float m_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double m_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float m_erf(float x) { return erff(x); }
__device__ __forceinline__ double m_erf(double x) { return erf(x); }
__device__ __forceinline__ float m_sin(float x) { return sinf(x); }
__device__ __forceinline__ double m_sin(double x) { return sin(x); }
__device__ __forceinline__ float m_cos(float x) { return cosf(x); }
__device__ __forceinline__ double m_cos(double x) { return cos(x); }
__device__ __forceinline__ float m_log1p(float x) { return log1pf(x); }
__device__ __forceinline__ double m_log1p(double x) { return log1p(x); }
__device__ __forceinline__ float m_expm1(float x) { return expm1f(x); }
__device__ __forceinline__ double m_expm1(double x) { return expm1(x); }
__device__ __forceinline__ float m_pow(float x, float y) { return powf(x, y); }
__device__ __forceinline__ double m_pow(double x, double y) { return pow(x, y); }

// The same formulas as cpu/elementwise.cpp (bin, un, un_grad), line for line.
template <class T> __device__ __forceinline__ T bin(BinaryOp op, T a, T b) {
  switch (op) {
    case BinaryOp::Add: return a + b;
    case BinaryOp::Sub: return a - b;
    case BinaryOp::Mul: return a * b;
    case BinaryOp::Div: return a / b;
    case BinaryOp::Pow: return m_pow(a, b);
    case BinaryOp::Maximum: return (a != a || a > b) ? a : b;
    case BinaryOp::Minimum: return (a != a || a < b) ? a : b;
  }
  return T(0);
}

template <class T> __device__ __forceinline__ T un(UnaryOp op, T x) {
  switch (op) {
    case UnaryOp::Neg: return -x;
    case UnaryOp::Exp: return m_exp(x);
    case UnaryOp::Log: return m_log(x);
    case UnaryOp::Sqrt: return m_sqrt(x);
    case UnaryOp::Rsqrt: return T(1) / m_sqrt(x);
    case UnaryOp::Abs: return m_abs(x);
    case UnaryOp::Sigmoid: return T(1) / (T(1) + m_exp(-x));
    case UnaryOp::Tanh: return m_tanh(x);
    case UnaryOp::Silu: return x / (T(1) + m_exp(-x));
    case UnaryOp::Gelu: return T(0.5) * x * (T(1) + m_erf(x * T(kInvSqrt2)));
    case UnaryOp::GeluTanh: return T(0.5) * x * (T(1) + m_tanh(T(kSqrt2OverPi) * (x + T(0.044715) * x * x * x)));
    case UnaryOp::Relu: return x > 0 ? x : T(0);
    case UnaryOp::Sin: return m_sin(x);
    case UnaryOp::Cos: return m_cos(x);
    case UnaryOp::Square: return x * x;
    case UnaryOp::Reciprocal: return T(1) / x;
    case UnaryOp::Sign: return x > 0 ? T(1) : (x < 0 ? T(-1) : T(0));
    case UnaryOp::Log1p: return m_log1p(x);
    case UnaryOp::Expm1: return m_expm1(x);
  }
  return T(0);
}

template <class T> __device__ __forceinline__ T un_grad(UnaryOp op, T x, T y, T dy) {
  switch (op) {
    case UnaryOp::Neg: return -dy;
    case UnaryOp::Exp: return dy * y;
    case UnaryOp::Log: return dy / x;
    case UnaryOp::Sqrt: return dy * T(0.5) / y;
    case UnaryOp::Rsqrt: return dy * T(-0.5) * y * y * y;
    case UnaryOp::Abs: return x > 0 ? dy : (x < 0 ? -dy : T(0));
    case UnaryOp::Sigmoid: return dy * y * (T(1) - y);
    case UnaryOp::Tanh: return dy * (T(1) - y * y);
    case UnaryOp::Silu: { T s = T(1) / (T(1) + m_exp(-x)); return dy * s * (T(1) + x * (T(1) - s)); }
    case UnaryOp::Gelu: {
      T cdf = T(0.5) * (T(1) + m_erf(x * T(kInvSqrt2)));
      T pdf = m_exp(T(-0.5) * x * x) * T(0.3989422804014327);
      return dy * (cdf + x * pdf);
    }
    case UnaryOp::GeluTanh: {
      T inner = T(kSqrt2OverPi) * (x + T(0.044715) * x * x * x);
      T t = m_tanh(inner);
      T dinner = T(kSqrt2OverPi) * (T(1) + T(3) * T(0.044715) * x * x);
      return dy * (T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * dinner);
    }
    case UnaryOp::Relu: return x > 0 ? dy : T(0);
    case UnaryOp::Sin: return dy * m_cos(x);
    case UnaryOp::Cos: return -dy * m_sin(x);
    case UnaryOp::Square: return dy * T(2) * x;
    case UnaryOp::Reciprocal: return -dy * y * y;
    case UnaryOp::Sign: return T(0);
    case UnaryOp::Log1p: return dy / (T(1) + x);
    case UnaryOp::Expm1: return dy * (y + T(1));
  }
  return T(0);
}

bool needs_y(UnaryOp op) {
  return op == UnaryOp::Exp || op == UnaryOp::Sqrt || op == UnaryOp::Rsqrt || op == UnaryOp::Sigmoid ||
         op == UnaryOp::Tanh || op == UnaryOp::Reciprocal || op == UnaryOp::Expm1;
}

const char* bin_name(BinaryOp op) {
  static const char* n[] = {"add", "sub", "mul", "div", "pow", "maximum", "minimum"};
  int i = (int)op;
  return i >= 0 && i < 7 ? n[i] : "binary";
}

// ---- functors: f(a, b, c) over the inputs in order ----
struct BinFwd {
  BinaryOp op;
  template <class T> __device__ __forceinline__ T operator()(T a, T b, T) const { return bin<T>(op, a, b); }
};
struct BinGradA {  // inputs (a, b, dy)
  BinaryOp op;
  template <class T> __device__ __forceinline__ T operator()(T x, T y, T d) const {
    switch (op) {
      case BinaryOp::Add: case BinaryOp::Sub: return d;
      case BinaryOp::Mul: return d * y;
      case BinaryOp::Div: return d / y;
      case BinaryOp::Pow: return d * y * m_pow(x, y - T(1));
      case BinaryOp::Maximum: return x > y ? d : (x == y ? d * T(0.5) : T(0));
      case BinaryOp::Minimum: return x < y ? d : (x == y ? d * T(0.5) : T(0));
    }
    return T(0);
  }
};
struct BinGradB {  // inputs (a, b, dy)
  BinaryOp op;
  template <class T> __device__ __forceinline__ T operator()(T x, T y, T d) const {
    switch (op) {
      case BinaryOp::Add: return d;
      case BinaryOp::Sub: return -d;
      case BinaryOp::Mul: return d * x;
      case BinaryOp::Div: return -d * x / (y * y);
      case BinaryOp::Pow: return x > 0 ? d * m_pow(x, y) * m_log(x) : T(0);
      case BinaryOp::Maximum: return y > x ? d : (x == y ? d * T(0.5) : T(0));
      case BinaryOp::Minimum: return y < x ? d : (x == y ? d * T(0.5) : T(0));
    }
    return T(0);
  }
};
struct ScalarFwd {  // inputs (x)
  BinaryOp op;
  double s;
  bool first;
  template <class T> __device__ __forceinline__ T operator()(T v, T, T) const {
    T sv = (T)s;
    return first ? bin<T>(op, sv, v) : bin<T>(op, v, sv);
  }
};
struct ScalarGrad {  // inputs (x, dy)
  BinaryOp op;
  double s;
  bool first;
  template <class T> __device__ __forceinline__ T operator()(T v, T d, T) const {
    T sv = (T)s;
    T a = first ? sv : v, b = first ? v : sv;
    switch (op) {
      case BinaryOp::Add: return d;
      case BinaryOp::Sub: return first ? -d : d;
      case BinaryOp::Mul: return d * sv;
      case BinaryOp::Div: return first ? -d * a / (b * b) : d / b;
      case BinaryOp::Pow: return first ? (a > 0 ? d * m_pow(a, b) * m_log(a) : T(0)) : d * b * m_pow(a, b - T(1));
      case BinaryOp::Maximum: return v > sv ? d : (v == sv ? d * T(0.5) : T(0));
      case BinaryOp::Minimum: return v < sv ? d : (v == sv ? d * T(0.5) : T(0));
    }
    return T(0);
  }
};
struct UnFwd {  // inputs (x)
  UnaryOp op;
  template <class T> __device__ __forceinline__ T operator()(T v, T, T) const { return un<T>(op, v); }
};
struct UnGrad {  // inputs (x, y, dy)
  UnaryOp op;
  template <class T> __device__ __forceinline__ T operator()(T v, T w, T d) const { return un_grad<T>(op, v, w, d); }
};
struct ClampFwd {  // inputs (x)
  double lo, hi;
  template <class T> __device__ __forceinline__ T operator()(T v, T, T) const {
    T l = (T)lo, h = (T)hi;
    return v < l ? l : (v > h ? h : v);
  }
};
struct ClampGrad {  // inputs (x, dy)
  double lo, hi;
  template <class T> __device__ __forceinline__ T operator()(T v, T d, T) const {
    T l = (T)lo, h = (T)hi;
    return (v >= l && v <= h) ? d : T(0);
  }
};

// ---- kernels ----
template <class S, int N> struct Ins { const S* p[N]; };
template <class S, int VEC> struct alignas(sizeof(S) * VEC) Vec { S v[VEC]; };

// Dense: every input is unit-stride or a broadcast scalar (bit k of `bcast`); output unit-stride.
template <class S, class F, int NIN, int VEC>
__global__ void ew_dense_kernel(S* __restrict__ out, Ins<S, NIN> in, unsigned bcast, int64_t n, F f) {
  using C = typename Compute<S>::type;
  C scal[3] = {C(0), C(0), C(0)};
#pragma unroll
  for (int k = 0; k < NIN; k++) if (bcast & (1u << k)) scal[k] = Conv<C>::load(in.p[k][0]);
  const int64_t nv = n / VEC;
  const int64_t stride = grid_stride<int64_t>();
  for (int64_t v = global_tid<int64_t>(); v < nv; v += stride) {
    C x[3][VEC];
#pragma unroll
    for (int k = 0; k < 3; k++) {
      if (k < NIN && !(bcast & (1u << k))) {
        Vec<S, VEC> t = reinterpret_cast<const Vec<S, VEC>*>(in.p[k])[v];
#pragma unroll
        for (int j = 0; j < VEC; j++) x[k][j] = Conv<C>::load(t.v[j]);
      } else {
#pragma unroll
        for (int j = 0; j < VEC; j++) x[k][j] = scal[k];
      }
    }
    Vec<S, VEC> o;
#pragma unroll
    for (int j = 0; j < VEC; j++) o.v[j] = Conv<C>::template store<S>(f(x[0][j], x[1][j], x[2][j]));
    reinterpret_cast<Vec<S, VEC>*>(out)[v] = o;
  }
  for (int64_t i = nv * VEC + global_tid<int64_t>(); i < n; i += stride) {
    C x[3] = {scal[0], scal[1], scal[2]};
#pragma unroll
    for (int k = 0; k < NIN; k++) if (!(bcast & (1u << k))) x[k] = Conv<C>::load(in.p[k][i]);
    out[i] = Conv<C>::template store<S>(f(x[0], x[1], x[2]));
  }
}

template <class S, class F, int NIN, bool Small>
__global__ void ew_strided_kernel(S* __restrict__ out, Ins<S, NIN> in, int64_t n, CalcT<Small, NIN + 1> calc, F f) {
  using C = typename Compute<S>::type;
  using I = typename IdxT<Small>::type;
  for (I i = global_tid<I>(); i < (I)n; i += grid_stride<I>()) {
    I off[NIN + 1];
    calc.get(i, off);
    C x[3] = {C(0), C(0), C(0)};
#pragma unroll
    for (int k = 0; k < NIN; k++) x[k] = Conv<C>::load(in.p[k][off[k + 1]]);
    out[off[0]] = Conv<C>::template store<S>(f(x[0], x[1], x[2]));
  }
}

// out (fresh, contiguous) <- f(ins...) with every input already of out's dtype and shape.
template <int NIN, class F>
void run(const Tensor& out, const std::array<Tensor, NIN>& ins, F f, const char* op) {
  int64_t n = out.numel();
  if (n == 0) return;
  std::vector<std::vector<int64_t>> strides{out.strides()};
  for (auto& t : ins) strides.push_back(t.strides());
  Layout L = make_layout(out.shape(), strides);
  dispatch_float(out.dtype(), op, [&](auto tag) {
    using S = decltype(tag);
    Ins<S, NIN> p;
    for (int k = 0; k < NIN; k++) p.p[k] = (const S*)ins[k].raw();
    S* o = (S*)out.raw();
    bool dense = L.dense() && (L.ndim() == 0 || L.strides[0][0] == 1);
    if (dense) {
      unsigned bcast = 0;
      bool aligned = ptr_alignment(o) >= 16;
      for (int k = 0; k < NIN; k++) {
        if (L.ndim() == 1 && L.strides[k + 1][0] == 0) bcast |= 1u << k;
        else if (ptr_alignment(p.p[k]) < 16) aligned = false;
      }
      constexpr int VEC = 16 / (int)sizeof(S);
      if (aligned) {
        launch(ew_dense_kernel<S, F, NIN, VEC>, (n + VEC - 1) / VEC, o, p, bcast, n, f);
        return;
      }
    }
    if (L.small_index) launch(ew_strided_kernel<S, F, NIN, true>, n, o, p, n, make_calc<true, NIN + 1>(L), f);
    else launch(ew_strided_kernel<S, F, NIN, false>, n, o, p, n, make_calc<false, NIN + 1>(L), f);
  });
}

// Apply f over inputs broadcast to `shape`, returning `out_dtype`. When every input already has
// out_dtype the kernel reads and writes it directly (f32 math inside); otherwise inputs are
// widened to the compute dtype and the result narrowed — the CPU's semantics.
// `cd` is the CPU op's compute dtype (f64 when any operand of the op is f64).
template <int NIN, class F>
Tensor map(std::array<Tensor, NIN> ins, const Shape& shape, DType out_dtype, DType cd, F f, const char* op) {
  bool uniform = compute_dtype(out_dtype) == cd;
  for (auto& t : ins) uniform = uniform && t.dtype() == out_dtype;
  DType kd = uniform ? out_dtype : cd;
  for (auto& t : ins) t = cast(t, kd).expand(shape);
  Tensor out = Tensor::empty(shape, kd, Device::CUDA);
  run<NIN>(out, ins, f, op);
  return kd == out_dtype ? out : cast(out, out_dtype);
}

Tensor checked(const Tensor& t, const char* op, const char* arg) {
  Tensor c = on_cuda(t, op, arg);
  check_float(c, op, arg);
  return c;
}

}  // namespace

Tensor binary_forward(BinaryOp op, const Tensor& a_, const Tensor& b_) {
  const char* name = bin_name(op);
  Tensor a = checked(a_, name, "a"), b = checked(b_, name, "b");
  Shape shape = broadcast_shapes(a.shape(), b.shape(), name);
  DType rd = promote(a.dtype(), b.dtype());
  return map<2>({a, b}, shape, rd, compute_dtype(rd), BinFwd{op}, name);
}

void binary_backward(BinaryOp op, const Tensor& a_, const Tensor& b_, const Tensor& dy_, bool need_a, bool need_b,
                     Tensor* da, Tensor* db) {
  const char* name = bin_name(op);
  Tensor a = checked(a_, name, "a"), b = checked(b_, name, "b"), dy = checked(dy_, name, "grad");
  Shape shape = broadcast_shapes(a.shape(), b.shape(), name);
  PK_CHECK(dy.shape() == shape, name, "_backward: grad ", dy.desc(), " does not match output shape ", shape_str(shape));
  DType cd = compute_dtype(promote(a.dtype(), b.dtype()));
  if (need_a) *da = map<3>({a, b, dy}, shape, a.dtype(), cd, BinGradA{op}, name);
  if (need_b) *db = map<3>({a, b, dy}, shape, b.dtype(), cd, BinGradB{op}, name);
}

Tensor scalar_forward(BinaryOp op, const Tensor& x_, double s, bool scalar_first) {
  const char* name = bin_name(op);
  Tensor x = checked(x_, name, "x");
  return map<1>({x}, x.shape(), x.dtype(), compute_dtype(x.dtype()), ScalarFwd{op, s, scalar_first}, name);
}

Tensor scalar_backward(BinaryOp op, const Tensor& x_, double s, bool scalar_first, const Tensor& dy_) {
  const char* name = bin_name(op);
  Tensor x = checked(x_, name, "x"), dy = checked(dy_, name, "grad");
  PK_CHECK(dy.shape() == x.shape(), name, "_backward: grad ", dy.desc(), " does not match ", x.desc());
  return map<2>({x, dy}, x.shape(), x.dtype(), compute_dtype(x.dtype()), ScalarGrad{op, s, scalar_first}, name);
}

Tensor unary_forward(UnaryOp op, const Tensor& x_) {
  Tensor x = checked(x_, "unary", "x");
  return map<1>({x}, x.shape(), x.dtype(), compute_dtype(x.dtype()), UnFwd{op}, "unary");
}

Tensor unary_backward(UnaryOp op, const Tensor& x_, const Tensor& y_, const Tensor& dy_) {
  Tensor x = checked(x_, "unary_backward", "x"), dy = checked(dy_, "unary_backward", "grad");
  PK_CHECK(dy.shape() == x.shape(), "unary_backward: grad ", dy.desc(), " does not match input ", x.desc());
  Tensor y;
  if (needs_y(op)) {
    y = y_.defined() ? checked(y_, "unary_backward", "y") : cuda::unary_forward(op, x);
    PK_CHECK(y.shape() == x.shape(), "unary_backward: output ", y.desc(), " does not match input ", x.desc());
  } else {
    y = x;  // unused placeholder with the right shape
  }
  return map<3>({x, y, dy}, x.shape(), x.dtype(), compute_dtype(x.dtype()), UnGrad{op}, "unary_backward");
}

Tensor clamp(const Tensor& x_, double lo, double hi) {
  Tensor x = checked(x_, "clamp", "x");
  return map<1>({x}, x.shape(), x.dtype(), compute_dtype(x.dtype()), ClampFwd{lo, hi}, "clamp");
}

Tensor clamp_backward(const Tensor& x_, double lo, double hi, const Tensor& dy_) {
  Tensor x = checked(x_, "clamp_backward", "x"), dy = checked(dy_, "clamp_backward", "grad");
  PK_CHECK(dy.shape() == x.shape(), "clamp_backward: grad ", dy.desc(), " does not match ", x.desc());
  return map<2>({x, dy}, x.shape(), x.dtype(), compute_dtype(x.dtype()), ClampGrad{lo, hi}, "clamp_backward");
}

}  // namespace cuda
}  // namespace pk
