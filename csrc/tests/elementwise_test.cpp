// elementwise_test.cpp — the vectorised elementwise and gated-activation kernels against the
// scalar loops and the C library.
//
// 1. Vector math (exp, erf, tanh, sigmoid) on every vector ISA this CPU has, against the f64
//    std:: functions over wide ranges (dense sweeps, random points, tiny/huge/special values):
//    max error in ulps of the correctly rounded result (exp <= 1, erf/tanh <= 2, sigmoid <= 3).
// 2. Every vectorised op (binary add/sub/mul/div/max/min and their gradients, scalar ops, the
//    unary activations and their backward) on each vector ISA (AVX-512 with and without the
//    AVX512_BF16 narrowing) vs the scalar ISA
//    (pk::set_isa_cap): f32/bf16/f16 operands and mixes, contiguous and odd lengths (vector
//    tails), broadcasts (last-dim vector, [...,1] column, 0-d scalar), row views with an outer
//    stride (a split), transposed inputs (scalar fallback), multi-threaded sizes; f64 unchanged.
// 3. glu_forward / glu_backward (SwiGLU, GeGLU erf/tanh) vs the unfused composition
//    (unary + mul and their backward twins) on every ISA, f32/bf16/f16, strided halves; the
//    in-place kernels (same-dtype contiguous operands) vs the staged run_rows path, bit for bit.
//
// Run: ./elementwise_test  -> exit 0 on success.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/cpu_features.h"
#include "core/parallel.h"
#include "cpu/elementwise.h"
#include "cpu/elementwise_kernels.h"
#include "cpu/simd_dispatch.h"
#include "cpu/swiglu.h"

using namespace pk;

namespace {

int g_failures = 0, g_checks = 0;

#define CHECK(cond, ...)                                   \
  do {                                                     \
    g_checks++;                                            \
    if (!(cond)) {                                         \
      if (g_failures < 40) std::printf("FAIL: " __VA_ARGS__); \
      g_failures++;                                        \
    }                                                      \
  } while (0)

// Error of `got` in ulps of the float nearest to `ref`.
double ulps(float got, double ref) {
  if (std::isnan(ref)) return std::isnan(got) ? 0 : 1e9;
  if (std::isinf(ref)) return got == (float)ref ? 0 : 1e9;
  const float r = (float)ref;
  float ulp;
  if (std::fabs(r) < std::numeric_limits<float>::min()) ulp = std::numeric_limits<float>::denorm_min();
  else ulp = std::nextafter(std::fabs(r), std::numeric_limits<float>::infinity()) - std::fabs(r);
  if (std::isinf((double)ulp)) ulp = std::numeric_limits<float>::max() * 0x1p-23f;
  if (std::isinf(got)) return std::fabs(ref) > std::numeric_limits<float>::max() ? 0 : 1e9;
  return std::fabs((double)got - ref) / (double)ulp;
}

// A kernel path: an ISA level and, at AVX-512, whether the AVX512_BF16 tables (vcvtneps2bf16
// narrowing) may be used.
struct Path {
  Isa isa;
  bool bf16;
  Path(Isa i, bool b = false) : isa(i), bf16(b) {}
  const char* name() const { return bf16 ? "avx512bf16" : isa_name(isa); }
};

std::vector<Path> vector_isas() {
  std::vector<Path> v;
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(PEFTKIT_NO_SIMD_KERNELS)
  set_isa_cap(Isa::Avx512);
  const Isa hw = cpu_isa();
  if (hw >= Isa::Avx2) v.push_back(Isa::Avx2);
  if (hw >= Isa::Avx512) v.push_back(Isa::Avx512);
  if (hw >= Isa::Avx512 && cpu_features().avx512bf16) v.push_back(Path(Isa::Avx512, true));
#endif
  return v;
}

// ---------------------------------------------------------------------------------------------
void test_math(const ew::Kernels& k) {
  std::mt19937 rng(42);
  struct Fn { ew::MathFn f; const char* name; double lo, hi, max_ulp; double (*ref)(double); };
  const Fn fns[] = {
      {ew::MathFn::Exp, "exp", -110.0, 95.0, 1.0, [](double x) { return std::exp(x); }},
      {ew::MathFn::Erf, "erf", -6.0, 6.0, 2.0, [](double x) { return std::erf(x); }},
      {ew::MathFn::Tanh, "tanh", -12.0, 12.0, 2.0, [](double x) { return std::tanh(x); }},
      {ew::MathFn::Sigmoid, "sigmoid", -87.0, 110.0, 3.0, [](double x) { return 1.0 / (1.0 + std::exp(-x)); }},
  };
  for (const Fn& fn : fns) {
    std::vector<float> x;
    const int dense = 2000000;
    for (int i = 0; i <= dense; i++) x.push_back((float)(fn.lo + (fn.hi - fn.lo) * i / dense));
    std::uniform_real_distribution<double> U(fn.lo, fn.hi);
    for (int i = 0; i < 500000; i++) x.push_back((float)U(rng));
    // tiny magnitudes (relative accuracy near 0), both signs, and specials
    for (int e = -149; e <= 0; e++)
      for (float m : {1.0f, 1.37f, 1.9999f}) { x.push_back(std::ldexp(m, e)); x.push_back(-std::ldexp(m, e)); }
    for (float v : {0.0f, -0.0f, 0.875f, -0.875f, 0.625f, 3.95f, -3.95f, 88.72f, 88.73f, -87.33f, -103.9f, -104.0f, 104.0f,
                    std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                    std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::max(), -std::numeric_limits<float>::max()})
      x.push_back(v);
    std::vector<float> y(x.size());
    k.vmath(fn.f, x.data(), y.data(), (int64_t)x.size());
    double worst = 0; float worst_x = 0;
    for (size_t i = 0; i < x.size(); i++) {
      // 1/(1 + e^{-x}) overflows e^{-x} below x = -88.7 (the scalar formula too): a subnormal
      // result becomes 0, so sigmoid is checked where e^{-x} is finite.
      if (fn.f == ew::MathFn::Sigmoid && x[i] < -87.0f) continue;
      const double e = ulps(y[i], fn.ref((double)x[i]));
      if (e > worst) { worst = e; worst_x = x[i]; }
    }
    std::printf("  %-7s %-8s max error %.3f ulp (at x = %.9g)\n", k.name, fn.name, worst, worst_x);
    CHECK(worst <= fn.max_ulp, "%s %s: %.3f ulp at x = %.9g (limit %.1f)\n", k.name, fn.name, worst, worst_x, fn.max_ulp);
    // signed zero in, signed zero out for the odd functions
    if (fn.f == ew::MathFn::Erf || fn.f == ew::MathFn::Tanh) {
      float z[2] = {0.0f, -0.0f}, o[2];
      k.vmath(fn.f, z, o, 2);
      CHECK(o[0] == 0.0f && !std::signbit(o[0]) && o[1] == 0.0f && std::signbit(o[1]), "%s %s: signed zero\n", k.name, fn.name);
    }
  }
}

// ---------------------------------------------------------------------------------------------
Tensor rand_tensor(const Shape& s, DType dt, std::mt19937& rng, float lo = -4.0f, float hi = 4.0f) {
  Tensor t = Tensor::empty(s, DType::F64);
  std::uniform_real_distribution<double> U(lo, hi);
  double* p = t.data<double>();
  for (int64_t i = 0; i < t.numel(); i++) p[i] = U(rng);
  if (t.numel() > 3) { p[0] = 0.0; p[1] = -0.0; p[2] = 1e-30; }
  return t.to(dt);
}

std::vector<double> values(const Tensor& t) {
  Tensor c = t.to(DType::F64).contiguous();
  const double* p = c.data<double>();
  return std::vector<double>(p, p + c.numel());
}

// ulp of a dtype at magnitude v (relative tolerance unit).
double unit(DType dt) { return dt == DType::BF16 ? 0x1p-8 : dt == DType::F16 ? 0x1p-11 : 0x1p-23; }

// |a - b| <= tol_ulps · unit(dt) · max(|a|,|b|) + abs_tol (exact when tol_ulps == 0 && abs_tol == 0)
void compare(const std::string& what, const Tensor& got, const Tensor& ref, double tol_ulps, double abs_tol) {
  CHECK(got.shape() == ref.shape(), "%s: shape %s vs %s\n", what.c_str(), got.desc().c_str(), ref.desc().c_str());
  CHECK(got.dtype() == ref.dtype(), "%s: dtype %s vs %s\n", what.c_str(), got.desc().c_str(), ref.desc().c_str());
  if (got.shape() != ref.shape()) return;
  auto a = values(got), b = values(ref);
  const double u = unit(got.dtype());
  double worst = 0; size_t wi = 0;
  bool ok = true;
  for (size_t i = 0; i < a.size(); i++) {
    if (std::isnan(a[i]) || std::isnan(b[i])) { if (std::isnan(a[i]) != std::isnan(b[i])) { ok = false; wi = i; } continue; }
    if (a[i] == b[i]) continue;
    const double d = std::fabs(a[i] - b[i]);
    const double lim = tol_ulps * u * std::max(std::fabs(a[i]), std::fabs(b[i])) + abs_tol;
    if (d > lim && d - lim > worst) { worst = d - lim; wi = i; ok = false; }
  }
  CHECK(ok, "%s: element %zu: %.9g vs %.9g\n", what.c_str(), wi, a.empty() ? 0.0 : a[wi], b.empty() ? 0.0 : b[wi]);
}

// The same values laid out with an outer stride (a narrow of a twice-as-wide tensor): not
// contiguous, so the ops stage them through run_rows instead of their in-place kernels.
Tensor strided_copy(const Tensor& t) {
  Shape s = t.shape();
  s.back() *= 2;
  Tensor v = Tensor::zeros(s, t.dtype()).narrow(t.dim() - 1, 0, t.shape().back());
  copy_into(v, t);
  return v;
}

struct IsaScope {
  explicit IsaScope(Path p) { set_isa_cap(p.isa); set_bf16_allowed(p.bf16); }
  ~IsaScope() { set_isa_cap(Isa::Avx512); set_bf16_allowed(true); }
};

const char* bname(BinaryOp op) { static const char* n[] = {"add", "sub", "mul", "div", "pow", "max", "min"}; return n[(int)op]; }
const char* uname(UnaryOp op) {
  static const char* n[] = {"neg", "exp", "log", "sqrt", "rsqrt", "abs", "sigmoid", "tanh", "silu", "gelu", "gelu_tanh", "relu",
                            "sin", "cos", "square", "reciprocal", "sign", "log1p", "expm1"};
  return n[(int)op];
}
bool exact_unary(UnaryOp op) {
  return op == UnaryOp::Neg || op == UnaryOp::Abs || op == UnaryOp::Relu || op == UnaryOp::Square || op == UnaryOp::Sqrt ||
         op == UnaryOp::Reciprocal || op == UnaryOp::Sign || op == UnaryOp::Rsqrt;
}

// Operand pairs: (a, b) in several layouts.
struct Case { std::string name; Tensor a, b; };

std::vector<Case> binary_cases(DType da, DType db, std::mt19937& rng) {
  std::vector<Case> cs;
  cs.push_back({"contig[3,1031]", rand_tensor({3, 1031}, da, rng), rand_tensor({3, 1031}, db, rng)});
  cs.push_back({"contig[4,128,97](mt)", rand_tensor({4, 128, 97}, da, rng), rand_tensor({4, 128, 97}, db, rng)});
  cs.push_back({"lastdim[5,37]x[37]", rand_tensor({5, 37}, da, rng), rand_tensor({37}, db, rng)});
  cs.push_back({"col[64,300]x[64,1]", rand_tensor({64, 300}, da, rng), rand_tensor({64, 1}, db, rng, 0.5f, 3.0f)});
  cs.push_back({"scalar[2,2100]x[]", rand_tensor({2, 2100}, da, rng), rand_tensor({}, db, rng, 0.5f, 3.0f)});
  cs.push_back({"[1]x[17,19]", rand_tensor({1}, da, rng, 0.5f, 3.0f), rand_tensor({17, 19}, db, rng)});
  Tensor wide = rand_tensor({40, 2 * 300}, da, rng), wideb = rand_tensor({40, 2 * 300}, db, rng);
  cs.push_back({"split-views", wide.narrow(1, 300, 300), wideb.narrow(1, 0, 300)});
  cs.push_back({"transposed", rand_tensor({33, 20}, da, rng).transpose(0, 1), rand_tensor({20, 33}, db, rng)});
  cs.push_back({"single", rand_tensor({1}, da, rng), rand_tensor({1}, db, rng, 0.5f, 2.0f)});
  cs.push_back({"empty", rand_tensor({0, 5}, da, rng), rand_tensor({0, 5}, db, rng)});
  return cs;
}

void test_ops(Path isa) {
  std::mt19937 rng(7);
  const char* iname = isa.name();
  const std::vector<std::pair<DType, DType>> dts = {{DType::F32, DType::F32}, {DType::BF16, DType::BF16}, {DType::F16, DType::F16},
                                                    {DType::BF16, DType::F32}, {DType::F64, DType::F64}};
  const BinaryOp bops[] = {BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Maximum, BinaryOp::Minimum};
  for (auto [da, db] : dts) {
    for (const Case& c : binary_cases(da, db, rng)) {
      for (BinaryOp op : bops) {
        const std::string w = std::string(iname) + " " + bname(op) + " " + dtype_name(da) + "/" + dtype_name(db) + " " + c.name;
        Tensor ref, got;
        { IsaScope s(Isa::Scalar); ref = binary_forward(op, c.a, c.b); }
        { IsaScope s(isa); got = binary_forward(op, c.a, c.b); }
        compare(w, got, ref, 0, 0);  // + - * / max min are exact in every path
        if (op == BinaryOp::Maximum || op == BinaryOp::Minimum) continue;
        Tensor dy = rand_tensor(ref.shape(), ref.dtype(), rng);
        Tensor ra, rb, ga, gb;
        { IsaScope s(Isa::Scalar); binary_backward(op, c.a, c.b, dy, true, true, &ra, &rb); }
        { IsaScope s(isa); binary_backward(op, c.a, c.b, dy, true, true, &ga, &gb); }
        compare(w + " grad a", ga, ra, 0, 0);
        compare(w + " grad b", gb, rb, 0, 0);
        Tensor ga2, gb2;
        { IsaScope s(isa); binary_backward(op, c.a, c.b, dy, false, true, &ga2, &gb2); }
        CHECK(!ga2.defined(), "%s: need_a=false gave a gradient\n", w.c_str());
        compare(w + " grad b only", gb2, rb, 0, 0);
      }
    }
    // scalar ops
    Tensor x = rand_tensor({3, 1000}, da, rng, 0.25f, 4.0f);
    for (BinaryOp op : bops)
      for (bool first : {false, true}) {
        const std::string w = std::string(iname) + " scalar " + bname(op) + (first ? " (s op x) " : " (x op s) ") + dtype_name(da);
        Tensor ref, got, dy = rand_tensor(x.shape(), x.dtype(), rng);
        { IsaScope s(Isa::Scalar); ref = scalar_forward(op, x, 1.7, first); }
        { IsaScope s(isa); got = scalar_forward(op, x, 1.7, first); }
        compare(w, got, ref, 0, 0);
        if (op == BinaryOp::Maximum || op == BinaryOp::Minimum) continue;
        { IsaScope s(Isa::Scalar); ref = scalar_backward(op, x, 1.7, first, dy); }
        { IsaScope s(isa); got = scalar_backward(op, x, 1.7, first, dy); }
        compare(w + " grad", got, ref, 0, 0);
      }
  }

  // unary forward / backward
  const UnaryOp uops[] = {UnaryOp::Neg, UnaryOp::Exp, UnaryOp::Sqrt, UnaryOp::Rsqrt, UnaryOp::Abs, UnaryOp::Sigmoid, UnaryOp::Tanh,
                          UnaryOp::Silu, UnaryOp::Gelu, UnaryOp::GeluTanh, UnaryOp::Relu, UnaryOp::Square, UnaryOp::Reciprocal,
                          UnaryOp::Sign, UnaryOp::Log};
  for (DType dt : {DType::F32, DType::BF16, DType::F16, DType::F64}) {
    std::vector<std::pair<std::string, Tensor>> xs;
    xs.push_back({"[5,1027]", rand_tensor({5, 1027}, dt, rng, -9.0f, 9.0f)});
    xs.push_back({"[4,64,130](mt)", rand_tensor({4, 64, 130}, dt, rng, -6.0f, 6.0f)});
    Tensor wide = rand_tensor({30, 400}, dt, rng, -5.0f, 5.0f);
    xs.push_back({"split-view", wide.narrow(1, 200, 200)});
    xs.push_back({"transposed", rand_tensor({31, 17}, dt, rng).transpose(0, 1)});
    xs.push_back({"broadcast", rand_tensor({1, 7}, dt, rng).expand({9, 7})});
    for (auto& [xn, x0] : xs)
      for (UnaryOp op : uops) {
        Tensor x = x0;
        if (op == UnaryOp::Sqrt || op == UnaryOp::Rsqrt || op == UnaryOp::Log) x = unary_forward(UnaryOp::Abs, x0);
        const std::string w = std::string(iname) + " " + uname(op) + " " + dtype_name(dt) + " " + xn;
        const bool exact = exact_unary(op) || dt == DType::F64;
        // f32: a few ulps; bf16/f16: the f32 results may straddle a rounding boundary (1 ulp of
        // the binade, <= 2 units of the value). gelu's 1 + erf/tanh cancels for x << 0, where
        // one ulp of erf/tanh is ~|x|·3e-8 absolute: hence the absolute term.
        const bool gelu = op == UnaryOp::Gelu || op == UnaryOp::GeluTanh;
        const double tol = exact ? 0 : (dt == DType::F32 ? 8 : 2.01), atol = exact ? 0 : gelu ? 2e-6 : 1e-30;
        Tensor ref, got;
        { IsaScope s(Isa::Scalar); ref = unary_forward(op, x); }
        { IsaScope s(isa); got = unary_forward(op, x); }
        compare(w, got, ref, tol, atol);
        Tensor dy = rand_tensor(x.shape(), x.dtype(), rng);
        { IsaScope s(Isa::Scalar); ref = unary_backward(op, x, Tensor(), dy); }
        { IsaScope s(isa); got = unary_backward(op, x, Tensor(), dy); }
        // gradients recompute y and take 1 − y, 1 − y², 1 − t² (cancellation near |y| = 1): a few
        // ulps relative plus ~ulp(1)·|dy|·|x|² absolute.
        compare(w + " grad", got, ref, exact ? 0 : (dt == DType::F32 ? 16 : 2.01), exact ? 0 : 3e-5);
      }
  }
}

// ---------------------------------------------------------------------------------------------
UnaryOp unary_of(GluAct a) { return a == GluAct::Silu ? UnaryOp::Silu : a == GluAct::Gelu ? UnaryOp::Gelu : UnaryOp::GeluTanh; }

void test_glu(Path isa) {
  std::mt19937 rng(11);
  for (DType dt : {DType::F32, DType::BF16, DType::F16, DType::F64}) {
    std::vector<std::pair<std::string, std::pair<Tensor, Tensor>>> cs;
    cs.push_back({"[3,1029]", {rand_tensor({3, 1029}, dt, rng, -7, 7), rand_tensor({3, 1029}, dt, rng)}});
    cs.push_back({"[4,64,192](mt)", {rand_tensor({4, 64, 192}, dt, rng, -7, 7), rand_tensor({4, 64, 192}, dt, rng)}});
    Tensor gu = rand_tensor({2, 50, 2 * 96}, dt, rng, -6, 6);  // fused gate_up halves
    cs.push_back({"halves", {gu.narrow(2, 0, 96), gu.narrow(2, 96, 96)}});
    cs.push_back({"transposed", {rand_tensor({40, 9}, dt, rng).transpose(0, 1), rand_tensor({9, 40}, dt, rng)}});
    for (auto& [cn, gu2] : cs) {
      const Tensor& g = gu2.first;
      const Tensor& u = gu2.second;
      for (GluAct act : {GluAct::Silu, GluAct::Gelu, GluAct::GeluTanh}) {
        const std::string w = std::string(isa.name()) + " " + glu_name(act) + " " + dtype_name(dt) + " " + cn;
        const bool f64 = dt == DType::F64;
        const double tol = f64 ? 1e-6 : dt == DType::F32 ? 16 : 2.01, atol = f64 ? 1e-15 : 1e-5;
        Tensor dh = rand_tensor(g.shape(), dt, rng);
        // composition on the scalar ISA (the reference), fused on `isa`
        Tensor ref_h, ref_dg, ref_du;
        {
          IsaScope s(Isa::Scalar);
          Tensor a = unary_forward(unary_of(act), g);
          ref_h = binary_forward(BinaryOp::Mul, a, u);
          Tensor da, du;
          binary_backward(BinaryOp::Mul, a, u, dh, true, true, &da, &du);
          ref_dg = unary_backward(unary_of(act), g, Tensor(), da);
          ref_du = du;
        }
        Tensor h, dg, du, dg2, du2;
        {
          IsaScope s(isa);
          h = glu_forward(act, g, u);
          glu_backward(act, g, u, dh, true, true, &dg, &du);
          glu_backward(act, g, u, dh, true, false, &dg2, &du2);
        }
        compare(w + " fwd", h, ref_h, tol, atol);
        compare(w + " dgate", dg, ref_dg, f64 ? tol : tol * 2, f64 ? atol : 1e-4);
        compare(w + " dup", du, ref_du, tol, atol);
        CHECK(!du2.defined(), "%s: need_up=false gave dup\n", w.c_str());
        compare(w + " dgate only", dg2, dg, 0, 0);
        // same-dtype contiguous operands take the in-place kernels (glu_io / glu_grad_io); the
        // same values laid out with an outer stride take run_rows: same bits required
        if (!f64 && g.is_contiguous() && u.is_contiguous() && g.dtype() == u.dtype()) {
          Tensor gs = strided_copy(g), us = strided_copy(u), ds = strided_copy(dh), hs, dgs, dus;
          {
            IsaScope s(isa);
            hs = glu_forward(act, gs, us);
            glu_backward(act, gs, us, ds, true, true, &dgs, &dus);
          }
          compare(w + " in-place vs staged fwd", h, hs, 0, 0);
          compare(w + " in-place vs staged dgate", dg, dgs, 0, 0);
          compare(w + " in-place vs staged dup", du, dus, 0, 0);
        }
      }
    }
  }
  // shape mismatch is an error
  bool threw = false;
  try { glu_forward(GluAct::Silu, Tensor::zeros({2, 3}, DType::F32), Tensor::zeros({3, 2}, DType::F32)); } catch (const std::exception&) { threw = true; }
  CHECK(threw, "glu_forward accepted mismatched shapes\n");
}

}  // namespace

int main() {
  set_num_threads(2);
  const std::vector<Path> isas = vector_isas();
  std::printf("elementwise_test: vector ISAs:");
  for (const Path& i : isas) std::printf(" %s", i.name());
  std::printf("%s\n", isas.empty() ? " none (scalar build or CPU)" : "");
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(PEFTKIT_NO_SIMD_KERNELS)
  for (const Path& i : isas)
    test_math(i.bf16 ? ew::kernels_avx512bf16() : i.isa == Isa::Avx512 ? ew::kernels_avx512() : ew::kernels_avx2());
#endif
  for (const Path& i : isas) { test_ops(i); test_glu(i); }
  test_glu(Isa::Scalar);  // the scalar fused path vs the scalar composition
  set_isa_cap(Isa::Avx512);
  std::printf("elementwise_test: %d checks, %d failures\n", g_checks, g_failures);
  return g_failures ? 1 : 0;
}
