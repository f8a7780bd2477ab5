// nn_ops_test.cpp — correctness tests of the NN op family: softmax / log_softmax, RMSNorm
// (Llama and Gemma flavours), LayerNorm, RoPE (tables, apply, backward), embedding and fused
// cross-entropy, on the CPU backend.
//
// Every forward is compared with a naive f64 reference written here from the defining formula
// (not from the kernels); every backward is checked twice: against a closed-form f64 reference
// and against central finite differences of the f64 forward (L = sum(y * r) for a random r).
// bf16/f16 runs compare with the reference evaluated on the rounded inputs, and for the ops
// whose HF graph rounds in the middle (RMSNorm, RoPE) with an emulation of that rounding: those
// must match bit for bit. Edge cases: C = 1, odd sizes, non-contiguous views, partial rotary,
// vocabularies spanning several chunks, all labels ignored, thread-count determinism. Bad inputs
// must throw pk::Error with a message naming the op.
//
// Kernel paths: the whole suite runs on every path this CPU has (scalar loops, AVX2, AVX-512,
// AVX-512 with AVX512_BF16 narrowing: the vector row kernels of row_kernels.h). On top,
// test_vector_paths compares each vector path with the scalar one on the same inputs (bf16 / f16
// / f32, ragged vector tails, strided views, NaN / inf / denormal values): RMSNorm, LayerNorm and
// RoPE must agree bit for bit, cross-entropy within the vector exp's ulp; test_conversions checks the
// tables' bf16/f16 narrowing (incl. f32 denormals, ties, NaN) against pk::f32_to_bf16/f16.
//
// Build:  g++ -O2 -std=c++17 -Icsrc csrc/core/*.cpp csrc/cpu/{cpu_common,elementwise,reduce,index,
//         softmax,norm,rope,embedding,cross_entropy}.cpp csrc/tests/nn_ops_test.cpp -o nn_ops_test -lpthread
// Run:    ./nn_ops_test   -> exit 0 on success, 1 and a list of failures otherwise.
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/cpu_features.h"
#include "core/parallel.h"
#include "core/tensor.h"
#include "cpu/cross_entropy.h"
#include "cpu/embedding.h"
#include "cpu/norm.h"
#include "cpu/rope.h"
#include "cpu/row_kernels.h"
#include "cpu/simd_dispatch.h"
#include "cpu/softmax.h"

using namespace pk;

namespace {

int g_failures = 0, g_checks = 0;
std::mt19937_64 g_rng(1234);

#define CHECK(cond, ...)                                              \
  do {                                                                \
    g_checks++;                                                       \
    if (!(cond)) {                                                    \
      g_failures++;                                                   \
      std::printf("FAIL %s:%d: %s  ", __FILE__, __LINE__, #cond);    \
      std::printf(__VA_ARGS__);                                       \
      std::printf("\n");                                              \
    }                                                                 \
  } while (0)

// stmt must throw pk::Error whose message contains `needle`.
#define EXPECT_ERROR(stmt, needle)                                                                  \
  do {                                                                                              \
    g_checks++;                                                                                     \
    bool thrown_ = false;                                                                           \
    try { stmt; } catch (const pk::Error& e_) {                                                     \
      thrown_ = true;                                                                               \
      if (std::string(e_.what()).find(needle) == std::string::npos) {                               \
        g_failures++;                                                                               \
        std::printf("FAIL %s:%d: message '%s' lacks '%s'\n", __FILE__, __LINE__, e_.what(), needle); \
      }                                                                                             \
    } catch (...) { thrown_ = true; g_failures++; std::printf("FAIL %s:%d: non-pk exception\n", __FILE__, __LINE__); } \
    if (!thrown_) { g_failures++; std::printf("FAIL %s:%d: no error from %s\n", __FILE__, __LINE__, #stmt); } \
  } while (0)

// ---------------------------------------------------------------- tensor helpers

Tensor make(const Shape& s, DType dt, const std::vector<double>& v) {
  Tensor t = Tensor::empty(s, dt);
  for (int64_t i = 0; i < t.numel(); i++) store_from_double((char*)t.raw() + i * dtype_size(dt), dt, v[i]);
  return t;
}
std::vector<double> randn(int64_t n, double scale = 1.0) {
  std::normal_distribution<double> N(0.0, 1.0);
  std::vector<double> v(n);
  for (auto& e : v) e = N(g_rng) * scale;
  return v;
}
Tensor rand_t(const Shape& s, DType dt, double scale = 1.0) { return make(s, dt, randn(shape_numel(s), scale)); }
// Values of any (strided) float tensor, row-major, as f64.
std::vector<double> vals(const Tensor& t) {
  Tensor c = t.to(DType::F64).contiguous();
  return std::vector<double>(c.data<double>(), c.data<double>() + c.numel());
}
double rnd(double v, DType dt) {
  if (dt == DType::BF16) return bf16_to_f32(f32_to_bf16((float)v));
  if (dt == DType::F16) return f16_to_f32(f32_to_f16((float)v));
  if (dt == DType::F32) return (float)v;
  return v;
}
double rel_tol(DType dt) {
  switch (dt) {
    case DType::F64: return 1e-12;
    case DType::F32: return 2e-5;
    case DType::F16: return 2e-3;
    default: return 1.6e-2;  // bf16: 8 mantissa bits, one rounding of the output plus f32 noise
  }
}
// max |a - b| / (atol + |b|) style comparison; reports the worst element.
bool close(const std::vector<double>& a, const std::vector<double>& b, double rtol, double atol, const char* what) {
  if (a.size() != b.size()) { std::printf("  %s: size %zu vs %zu\n", what, a.size(), b.size()); return false; }
  double worst = 0; size_t wi = 0;
  for (size_t i = 0; i < a.size(); i++) {
    double d = std::fabs(a[i] - b[i]);
    if (std::isnan(a[i]) != std::isnan(b[i])) d = INFINITY;
    else if (std::isnan(a[i])) d = 0;
    double e = d / (atol + rtol * std::fabs(b[i]));
    if (e > worst) { worst = e; wi = i; }
  }
  if (worst > 1) { std::printf("  %s: element %zu got %.10g want %.10g\n", what, wi, a[wi], b[wi]); return false; }
  return true;
}
double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); i++) s += a[i] * b[i];
  return s;
}

// Central-difference gradient of f at x (f64 tensor, perturbed in place), for every element.
std::vector<double> fd_grad(Tensor x, const std::function<double()>& f, double h = 1e-6) {
  Tensor c = x;  // must be contiguous f64 (the tests build it so)
  double* p = c.data<double>();
  std::vector<double> g(c.numel());
  for (int64_t i = 0; i < c.numel(); i++) {
    double o = p[i];
    p[i] = o + h; double fp = f();
    p[i] = o - h; double fm = f();
    p[i] = o;
    g[i] = (fp - fm) / (2 * h);
  }
  return g;
}

// ---------------------------------------------------------------- softmax

// reference softmax / log_softmax of a contiguous f64 value array of shape s along dim
std::vector<double> ref_softmax(const std::vector<double>& x, const Shape& s, int64_t dim, bool log) {
  int64_t outer = 1, inner = 1, L = s.empty() ? 1 : s[dim];
  for (int64_t d = 0; d < dim; d++) outer *= s[d];
  for (int64_t d = dim + 1; d < (int64_t)s.size(); d++) inner *= s[d];
  std::vector<double> y(x.size());
  for (int64_t o = 0; o < outer; o++)
    for (int64_t in = 0; in < inner; in++) {
      auto at = [&](int64_t l) { return (o * L + l) * inner + in; };
      double m = -INFINITY, z = 0;
      for (int64_t l = 0; l < L; l++) m = std::max(m, x[at(l)]);
      for (int64_t l = 0; l < L; l++) z += std::exp(x[at(l)] - m);
      for (int64_t l = 0; l < L; l++) y[at(l)] = log ? x[at(l)] - m - std::log(z) : std::exp(x[at(l)] - m) / z;
    }
  return y;
}

void test_softmax() {
  for (DType dt : {DType::F32, DType::F64, DType::BF16, DType::F16}) {
    for (Shape s : {Shape{3, 5, 7}, Shape{4, 1}, Shape{1, 33}, Shape{2, 3, 1031}}) {
      for (int64_t dim = 0; dim < (int64_t)s.size(); dim++) {
        Tensor x = rand_t(s, dt, 3.0);
        std::vector<double> xv = vals(x);
        for (bool log : {false, true}) {
          Tensor y = log ? log_softmax_forward(x, dim) : softmax_forward(x, dim);
          CHECK(y.dtype() == dt && y.shape() == s, "dtype/shape");
          std::vector<double> ref = ref_softmax(xv, s, dim, log);
          CHECK(close(vals(y), ref, rel_tol(dt), rel_tol(dt) * (log ? 1 : 0.1), "softmax fwd"), "%s dim %lld log %d %s",
                dtype_name(dt), (long long)dim, log, shape_str(s).c_str());
          // backward vs closed form on the kernel's own y
          Tensor dy = rand_t(s, dt);
          std::vector<double> yv = vals(y), gv = vals(dy), want(yv.size());
          int64_t outer = 1, inner = 1, L = s[dim];
          for (int64_t d = 0; d < dim; d++) outer *= s[d];
          for (int64_t d = dim + 1; d < (int64_t)s.size(); d++) inner *= s[d];
          for (int64_t o = 0; o < outer; o++)
            for (int64_t in = 0; in < inner; in++) {
              double acc = 0;
              for (int64_t l = 0; l < L; l++) { int64_t k = (o * L + l) * inner + in; acc += log ? gv[k] : gv[k] * yv[k]; }
              for (int64_t l = 0; l < L; l++) {
                int64_t k = (o * L + l) * inner + in;
                want[k] = log ? gv[k] - std::exp(yv[k]) * acc : yv[k] * (gv[k] - acc);
              }
            }
          Tensor dx = log ? log_softmax_backward(y, dy, dim) : softmax_backward(y, dy, dim);
          CHECK(close(vals(dx), want, rel_tol(dt) * 4, rel_tol(dt) * 4, "softmax bwd"), "%s dim %lld log %d",
                dtype_name(dt), (long long)dim, log);
        }
      }
    }
  }
  // non-contiguous input: a transposed view, softmax along the (strided) last dim and dim 0
  {
    Tensor base = rand_t({6, 9}, DType::F32, 2.0);
    Tensor xt = base.transpose(0, 1);  // (9,6), strides (1,9)
    for (int64_t dim : {0, 1}) {
      std::vector<double> ref = ref_softmax(vals(xt), xt.shape(), dim, false);
      CHECK(close(vals(softmax_forward(xt, dim)), ref, 2e-6, 1e-7, "softmax strided"), "dim %lld", (long long)dim);
      std::vector<double> lref = ref_softmax(vals(xt), xt.shape(), dim, true);
      CHECK(close(vals(log_softmax_forward(xt, -1 - (1 - dim))), lref, 2e-6, 1e-6, "log_softmax strided"), "neg dim");
    }
  }
  // stability: huge logits, and C = 1
  {
    Tensor x = make({2, 3}, DType::F32, {1000, 1001, 1002, -1e4, 0, 1e4});
    std::vector<double> y = vals(softmax_forward(x, 1)), ly = vals(log_softmax_forward(x, 1));
    bool finite = true;
    for (double v : y) finite = finite && std::isfinite(v);
    CHECK(finite, "softmax of large logits overflowed");
    CHECK(std::fabs(ly[2] - (-0.40760596444)) < 1e-5, "log_softmax large: %g", ly[2]);
    std::vector<double> one = vals(softmax_forward(rand_t({5, 1}, DType::F32), -1));
    CHECK(one == std::vector<double>(5, 1.0), "softmax over size-1 dim must be exactly 1");
    CHECK(vals(softmax_forward(Tensor::scalar(3.0, DType::F32), 0))[0] == 1.0, "0-d softmax");
  }
  // finite differences in f64 (softmax and log_softmax, a middle dim)
  for (bool log : {false, true}) {
    Shape s{2, 5, 3};
    Tensor x = rand_t(s, DType::F64), r = rand_t(s, DType::F64);
    std::vector<double> rv = vals(r);
    auto f = [&] { return dot(vals(log ? log_softmax_forward(x, 1) : softmax_forward(x, 1)), rv); };
    Tensor y = log ? log_softmax_forward(x, 1) : softmax_forward(x, 1);
    Tensor dx = log ? log_softmax_backward(y, r, 1) : softmax_backward(y, r, 1);
    CHECK(close(vals(dx), fd_grad(x, f), 1e-6, 1e-8, "softmax fd"), "log %d", log);
  }
  // errors
  EXPECT_ERROR(softmax_forward(rand_t({2, 3}, DType::F32), 2), "softmax");
  EXPECT_ERROR(softmax_forward(make({2}, DType::I64, {0, 1}), 0), "floating");
  EXPECT_ERROR(softmax_backward(rand_t({2, 3}, DType::F32), rand_t({3, 2}, DType::F32), 1), "softmax_backward");
  EXPECT_ERROR(log_softmax_backward(rand_t({2, 3}, DType::F32), Tensor(), 1), "log_softmax_backward");
}

// ---------------------------------------------------------------- RMSNorm / LayerNorm

// HF LlamaRMSNorm / GemmaRMSNorm emulated in double with the roundings of the eager graph
std::vector<double> ref_rms(const std::vector<double>& x, const std::vector<double>* w, int64_t C, double eps,
                            bool unit_offset, DType xd, DType od, std::vector<double>* rstd) {
  int64_t rows = (int64_t)x.size() / C;
  std::vector<double> y(x.size());
  if (rstd) rstd->assign(rows, 0);
  for (int64_t r = 0; r < rows; r++) {
    double ss = 0;
    for (int64_t i = 0; i < C; i++) ss += x[r * C + i] * x[r * C + i];
    double rs = 1.0 / std::sqrt(ss / C + eps);
    if (rstd) (*rstd)[r] = rs;
    for (int64_t i = 0; i < C; i++) {
      double h = x[r * C + i] * rs;
      if (xd != DType::F64) h = (float)h;  // h is an f32 tensor in HF
      double v;
      if (unit_offset) v = h * (1.0 + (w ? (*w)[i] : 0.0));
      else v = w ? (*w)[i] * rnd(h, xd) : rnd(h, xd);
      y[r * C + i] = rnd(v, od);
    }
  }
  return y;
}

void test_rms_norm() {
  const double eps = 1e-6;
  // forward, all dtypes, Llama and Gemma, with and without weight, odd C and C = 1
  for (DType dt : {DType::F32, DType::F64, DType::BF16, DType::F16}) {
    for (int64_t C : {1, 7, 64, 1000}) {
      for (bool uo : {false, true}) {
        for (bool has_w : {true, false}) {
          Shape s{3, 5, C};
          Tensor x = rand_t(s, dt, 2.0);
          Tensor w = has_w ? rand_t({C}, dt) : Tensor();
          std::vector<double> xv = vals(x), wv = has_w ? vals(w) : std::vector<double>();
          Tensor rstd;
          Tensor y = rms_norm_forward(x, w, eps, uo, &rstd);
          std::vector<double> rref;
          std::vector<double> ref = ref_rms(xv, has_w ? &wv : nullptr, C, eps, uo, dt, dt, &rref);
          CHECK(y.dtype() == dt, "rms dtype");
          CHECK(rstd.dtype() == (dt == DType::F64 ? DType::F64 : DType::F32) && rstd.shape() == Shape({3, 5}), "rstd %s",
                rstd.desc().c_str());
          // low-precision outputs: allow one ulp of the output format (h may round differently
          // when the f32 h sits exactly on a rounding boundary)
          double rt = dt == DType::F64 ? 1e-12 : dt == DType::F32 ? 2e-6 : dt == DType::F16 ? 1e-3 : 8e-3;
          CHECK(close(vals(y), ref, rt, 1e-6, "rms fwd"), "%s C %lld uo %d w %d", dtype_name(dt), (long long)C, uo, has_w);
          CHECK(close(vals(rstd), rref, dt == DType::F64 ? 1e-12 : 2e-6, 0, "rstd"), "%s C %lld", dtype_name(dt), (long long)C);
        }
      }
    }
  }
  // bf16 must match the HF emulation bit for bit in the common case (compare counts of exact hits)
  {
    int64_t C = 256;
    Tensor x = rand_t({64, C}, DType::BF16, 3.0), w = rand_t({C}, DType::BF16);
    std::vector<double> xv = vals(x), wv = vals(w);
    std::vector<double> got = vals(rms_norm_forward(x, w, eps, false, nullptr));
    std::vector<double> ref = ref_rms(xv, &wv, C, eps, false, DType::BF16, DType::BF16, nullptr);
    int64_t exact = 0;
    for (size_t i = 0; i < got.size(); i++) exact += got[i] == ref[i];
    CHECK(exact >= (int64_t)got.size() * 99 / 100, "bf16 rms exact hits %lld / %zu", (long long)exact, got.size());
    // f32 weight with bf16 x promotes to f32 like torch's w * h.to(bf16)
    Tensor w32 = rand_t({C}, DType::F32);
    std::vector<double> w32v = vals(w32);
    Tensor y = rms_norm_forward(x, w32, eps, false, nullptr);
    CHECK(y.dtype() == DType::F32, "promotion: %s", y.desc().c_str());
    CHECK(close(vals(y), ref_rms(xv, &w32v, C, eps, false, DType::BF16, DType::F32, nullptr), 2e-6, 1e-7, "rms promote"), "-");
  }
  // non-contiguous x (transposed view): forward and backward equal to the contiguous copy
  {
    Tensor base = rand_t({12, 4, 5}, DType::F32);
    Tensor xt = base.transpose(0, 2);  // (5,4,12) strided
    Tensor w = rand_t({12}, DType::F32);
    Tensor r1, r2;
    std::vector<double> a = vals(rms_norm_forward(xt, w, eps, false, &r1));
    std::vector<double> b = vals(rms_norm_forward(xt.contiguous(), w, eps, false, &r2));
    CHECK(a == b && vals(r1) == vals(r2), "strided rms fwd differs");
    Tensor dy = rand_t({5, 4, 12}, DType::F32).transpose(0, 1).contiguous().transpose(0, 1);  // strided dy too
    Tensor dx1, dw1, dx2, dw2;
    rms_norm_backward(xt, w, r1, dy, false, &dx1, &dw1);
    rms_norm_backward(xt.contiguous(), w, r2, dy.contiguous(), false, &dx2, &dw2);
    CHECK(vals(dx1) == vals(dx2) && vals(dw1) == vals(dw2), "strided rms bwd differs");
  }
  // finite differences in f64: dx and dw, both flavours, with C = 1 and odd C
  for (int64_t C : {1, 5, 33}) {
    for (bool uo : {false, true}) {
      Shape s{3, 2, C};
      Tensor x = rand_t(s, DType::F64), w = rand_t({C}, DType::F64), r = rand_t(s, DType::F64);
      std::vector<double> rv = vals(r);
      auto f = [&] { return dot(vals(rms_norm_forward(x, w, eps, uo, nullptr)), rv); };
      Tensor rstd;
      rms_norm_forward(x, w, eps, uo, &rstd);
      Tensor dx, dw;
      rms_norm_backward(x, w, rstd, r, uo, &dx, &dw);
      CHECK(close(vals(dx), fd_grad(x, f), 1e-5, 1e-7, "rms fd dx"), "C %lld uo %d", (long long)C, uo);
      CHECK(close(vals(dw), fd_grad(w, f), 1e-5, 1e-7, "rms fd dw"), "C %lld uo %d", (long long)C, uo);
      CHECK(dw.dtype() == DType::F64 && dw.shape() == Shape({C}), "dw %s", dw.desc().c_str());
      // without weight, dx only
      Tensor rs0, dx0, dw0;
      rms_norm_forward(x, Tensor(), eps, false, &rs0);
      auto f0 = [&] { return dot(vals(rms_norm_forward(x, Tensor(), eps, false, nullptr)), rv); };
      rms_norm_backward(x, Tensor(), rs0, r, false, &dx0, &dw0);
      CHECK(close(vals(dx0), fd_grad(x, f0), 1e-5, 1e-7, "rms fd dx no w"), "C %lld", (long long)C);
      CHECK(!dw0.defined(), "dw without weight must be undefined");
    }
  }
  // bf16 backward vs the f64 closed form on the same (rounded) values
  {
    int64_t C = 96;
    Tensor x = rand_t({40, C}, DType::BF16), w = rand_t({C}, DType::BF16), dy = rand_t({40, C}, DType::BF16);
    Tensor rstd;
    rms_norm_forward(x, w, eps, true, &rstd);
    Tensor dx, dw;
    rms_norm_backward(x, w, rstd, dy, true, &dx, &dw);
    Tensor x64 = x.to(DType::F64), w64 = w.to(DType::F64), dy64 = dy.to(DType::F64), r64, dx64, dw64;
    rms_norm_forward(x64, w64, eps, true, &r64);
    rms_norm_backward(x64, w64, r64, dy64, true, &dx64, &dw64);
    CHECK(dx.dtype() == DType::BF16 && dw.dtype() == DType::BF16, "bf16 grads dtype");
    CHECK(close(vals(dx), vals(dx64), 1e-2, 2e-2, "rms bf16 dx"), "-");
    CHECK(close(vals(dw), vals(dw64), 1e-2, 5e-2, "rms bf16 dw"), "-");
  }
  // errors
  Tensor x = rand_t({2, 8}, DType::F32);
  EXPECT_ERROR(rms_norm_forward(x, rand_t({7}, DType::F32), eps, false, nullptr), "rms_norm");
  EXPECT_ERROR(rms_norm_forward(x, rand_t({8, 1}, DType::F32), eps, false, nullptr), "1-d");
  EXPECT_ERROR(rms_norm_forward(Tensor::scalar(1, DType::F32), Tensor(), eps, false, nullptr), "rms_norm");
  EXPECT_ERROR(rms_norm_forward(x, Tensor(), -1.0, false, nullptr), "eps");
  EXPECT_ERROR(rms_norm_forward(make({2, 2}, DType::I32, {1, 2, 3, 4}), Tensor(), eps, false, nullptr), "floating");
  Tensor rstd;
  rms_norm_forward(x, Tensor(), eps, false, &rstd);
  Tensor dx, dw;
  EXPECT_ERROR(rms_norm_backward(x, Tensor(), rand_t({3}, DType::F32), x, false, &dx, &dw), "rstd");
  EXPECT_ERROR(rms_norm_backward(x, Tensor(), rstd, rand_t({2, 9}, DType::F32), false, &dx, &dw), "dy");
}

void test_layer_norm() {
  const double eps = 1e-5;
  for (DType dt : {DType::F32, DType::F64, DType::BF16, DType::F16}) {
    for (int64_t C : {1, 9, 257}) {
      for (int mode = 0; mode < 3; mode++) {  // 0: w and b, 1: w only, 2: neither
        Shape s{4, 3, C};
        // large offset: the two-pass variance must not cancel
        std::vector<double> xs = randn(shape_numel(s));
        for (auto& v : xs) v = v * 0.5 + 3.0;
        Tensor x = make(s, dt, xs);
        Tensor w = mode < 2 ? rand_t({C}, dt) : Tensor(), b = mode == 0 ? rand_t({C}, dt) : Tensor();
        std::vector<double> xv = vals(x), wv = w.defined() ? vals(w) : std::vector<double>(C, 1.0),
                            bv = b.defined() ? vals(b) : std::vector<double>(C, 0.0);
        Tensor mean, rstd;
        Tensor y = layer_norm_forward(x, w, b, eps, &mean, &rstd);
        int64_t rows = x.numel() / C;
        std::vector<double> ref(xv.size()), mref(rows), rref(rows);
        for (int64_t r = 0; r < rows; r++) {
          double m = 0, v = 0;
          for (int64_t i = 0; i < C; i++) m += xv[r * C + i];
          m /= C;
          for (int64_t i = 0; i < C; i++) v += (xv[r * C + i] - m) * (xv[r * C + i] - m);
          double rs = 1.0 / std::sqrt(v / C + eps);
          mref[r] = m; rref[r] = rs;
          for (int64_t i = 0; i < C; i++) ref[r * C + i] = (xv[r * C + i] - m) * rs * wv[i] + bv[i];
        }
        CHECK(close(vals(y), ref, rel_tol(dt) * 4, rel_tol(dt) * 4, "ln fwd"), "%s C %lld mode %d", dtype_name(dt), (long long)C, mode);
        CHECK(close(vals(mean), mref, 1e-6, 1e-6, "ln mean") && close(vals(rstd), rref, 1e-5, 1e-5, "ln rstd"), "%s", dtype_name(dt));
      }
    }
  }
  // finite differences in f64: dx, dw, db; plus a strided x
  for (int64_t C : {1, 6, 31}) {
    Shape s{2, 3, C};
    Tensor x = rand_t(s, DType::F64), w = rand_t({C}, DType::F64), b = rand_t({C}, DType::F64), r = rand_t(s, DType::F64);
    std::vector<double> rv = vals(r);
    auto f = [&] { return dot(vals(layer_norm_forward(x, w, b, eps, nullptr, nullptr)), rv); };
    Tensor mean, rstd, dx, dw, db;
    layer_norm_forward(x, w, b, eps, &mean, &rstd);
    layer_norm_backward(x, w, mean, rstd, r, &dx, &dw, &db);
    if (C > 1) CHECK(close(vals(dx), fd_grad(x, f), 1e-5, 1e-7, "ln fd dx"), "C %lld", (long long)C);
    else CHECK(close(vals(dx), std::vector<double>(x.numel(), 0.0), 0, 1e-6, "ln C=1 dx"), "-");  // y = b: dx = 0
    CHECK(close(vals(dw), fd_grad(w, f), 1e-5, 1e-7, "ln fd dw"), "C %lld", (long long)C);
    CHECK(close(vals(db), fd_grad(b, f), 1e-5, 1e-7, "ln fd db"), "C %lld", (long long)C);
  }
  {
    Tensor base = rand_t({10, 6}, DType::F64);
    Tensor xt = base.transpose(0, 1);  // (6,10) strided
    Tensor w = rand_t({10}, DType::F64), dy = rand_t({6, 10}, DType::F64);
    Tensor m1, r1, m2, r2, dx1, dw1, db1, dx2, dw2, db2;
    std::vector<double> a = vals(layer_norm_forward(xt, w, Tensor(), eps, &m1, &r1));
    std::vector<double> c = vals(layer_norm_forward(xt.contiguous(), w, Tensor(), eps, &m2, &r2));
    CHECK(a == c, "strided ln fwd differs");
    layer_norm_backward(xt, w, m1, r1, dy, &dx1, &dw1, &db1);
    layer_norm_backward(xt.contiguous(), w, m2, r2, dy, &dx2, &dw2, &db2);
    CHECK(vals(dx1) == vals(dx2) && vals(dw1) == vals(dw2) && vals(db1) == vals(db2), "strided ln bwd differs");
    // only the requested gradients are produced
    Tensor only_dx;
    layer_norm_backward(xt, w, m1, r1, dy, &only_dx, nullptr, nullptr);
    CHECK(vals(only_dx) == vals(dx1), "ln dx alone differs");
  }
  Tensor x = rand_t({2, 8}, DType::F32);
  EXPECT_ERROR(layer_norm_forward(x, Tensor(), rand_t({9}, DType::F32), eps, nullptr, nullptr), "bias");
  Tensor mean, rstd, dx;
  layer_norm_forward(x, Tensor(), Tensor(), eps, &mean, &rstd);
  EXPECT_ERROR(layer_norm_backward(x, Tensor(), rstd, mean.view({1, 2}), x, &dx, nullptr, nullptr), "rstd");
}

// ---------------------------------------------------------------- RoPE

// out = x*cos + rotate_half(x)*sin on the first R lanes (all values f64, x (B,H,T,D) row-major),
// with products and sum rounded to od like torch's eager bf16/f16 graph.
std::vector<double> ref_rope(const std::vector<double>& x, const std::vector<double>& c, const std::vector<double>& s,
                             int64_t B, int64_t H, int64_t T, int64_t D, int64_t R, int64_t CB, DType od) {
  std::vector<double> out(x.size());
  int64_t h2 = R / 2;
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t t = 0; t < T; t++) {
        const double* xr = &x[((b * H + h) * T + t) * D];
        int64_t cr = ((CB == 1 ? 0 : b) * T + t) * R;
        double* o = &out[((b * H + h) * T + t) * D];
        for (int64_t j = 0; j < D; j++) {
          if (j >= R) { o[j] = xr[j]; continue; }
          double rot = j < h2 ? -xr[j + h2] : xr[j - h2];
          o[j] = rnd(rnd(xr[j] * c[cr + j], od) + rnd(rot * s[cr + j], od), od);
        }
      }
  return out;
}

void test_rope() {
  // tables: HF computes in f32: freq = float(pos) * inv_freq (f32), cos/sin of that, * scaling
  {
    int64_t B = 2, T = 7, half = 5;
    std::vector<double> pos(B * T);
    for (int64_t i = 0; i < B * T; i++) pos[i] = (double)(i * 37 % 4096);
    std::vector<double> inv(half);
    for (int64_t j = 0; j < half; j++) inv[j] = (float)std::pow(10000.0, -2.0 * j / (2 * half));
    for (DType pd : {DType::I64, DType::I32}) {
      for (DType od : {DType::F32, DType::BF16}) {
        Tensor c, s;
        rope_tables(make({B, T}, pd, pos), make({half}, DType::F32, inv), 0.75, od, &c, &s);
        CHECK(c.shape() == Shape({B, T, 2 * half}) && c.dtype() == od, "tables %s", c.desc().c_str());
        std::vector<double> cv = vals(c), sv = vals(s), cr(cv.size()), sr(cv.size());
        for (int64_t r = 0; r < B * T; r++)
          for (int64_t j = 0; j < 2 * half; j++) {
            float a = (float)pos[r] * (float)inv[j % half];
            cr[r * 2 * half + j] = rnd((double)(float)((float)std::cos((double)a) * 0.75f), od);
            sr[r * 2 * half + j] = rnd((double)(float)((float)std::sin((double)a) * 0.75f), od);
          }
        double rt = od == DType::F32 ? 3e-7 : 8e-3;
        CHECK(close(cv, cr, rt, 3e-7, "rope cos") && close(sv, sr, rt, 3e-7, "rope sin"), "%s", dtype_name(od));
      }
    }
    // f64 inv_freq computes in f64
    Tensor c, s;
    rope_tables(make({1, 3}, DType::I64, {0, 1, 100000}), make({1}, DType::F64, {0.3}), 1.0, DType::F64, &c, &s);
    CHECK(std::fabs(vals(c)[4] - std::cos(100000.0 * 0.3)) < 1e-12 && std::fabs(vals(s)[5] - std::sin(100000.0 * 0.3)) < 1e-12, "f64 tables");
  }
  // apply: full and partial rotary, cos batch 1 or B, all dtypes, strided x
  for (DType dt : {DType::F32, DType::F64, DType::BF16, DType::F16}) {
    for (auto cfg : std::vector<std::array<int64_t, 6>>{{2, 3, 5, 8, 8, 2}, {2, 2, 4, 10, 4, 1}, {1, 1, 1, 6, 2, 1}, {3, 2, 3, 16, 6, 3}}) {
      int64_t B = cfg[0], H = cfg[1], T = cfg[2], D = cfg[3], R = cfg[4], CB = cfg[5];
      // x built as (B,T,H,D) then transposed to (B,H,T,D): the layout attention projections give
      Tensor xbthd = rand_t({B, T, H, D}, dt);
      Tensor x = xbthd.transpose(1, 2);
      std::vector<double> angle = randn(CB * T * R);
      std::vector<double> cvv(angle.size()), svv(angle.size());
      for (size_t i = 0; i < angle.size(); i++) { cvv[i] = std::cos(angle[i]); svv[i] = std::sin(angle[i]); }
      Tensor cos = make({CB, T, R}, dt, cvv), sin = make({CB, T, R}, dt, svv);
      Tensor y = rope_forward(x, cos, sin);
      CHECK(y.shape() == Shape({B, H, T, D}) && y.dtype() == dt, "rope shape %s", y.desc().c_str());
      std::vector<double> ref = ref_rope(vals(x), vals(cos), vals(sin), B, H, T, D, R, CB, dt);
      // emulated rounding: identical bits expected for every dtype
      CHECK(close(vals(y), ref, dt == DType::F64 ? 1e-14 : 1e-7, 1e-12, "rope fwd"), "%s B%lld H%lld T%lld D%lld R%lld",
            dtype_name(dt), (long long)B, (long long)H, (long long)T, (long long)D, (long long)R);
      // backward is the transpose: <rope(x), g> == <x, rope_bwd(g)> (f64 only: exact arithmetic check)
      if (dt == DType::F64) {
        Tensor g = rand_t({B, H, T, D}, dt);
        Tensor dx = rope_backward(g, cos, sin);
        CHECK(std::fabs(dot(vals(y), vals(g)) - dot(vals(x), vals(dx))) < 1e-10, "rope adjoint R %lld", (long long)R);
        auto f = [&] { return dot(vals(rope_forward(x, cos, sin)), vals(g)); };
        Tensor xc = x.contiguous();
        auto fc = [&] { return dot(vals(rope_forward(xc, cos, sin)), vals(g)); };
        CHECK(close(vals(dx), fd_grad(xc, fc), 1e-7, 1e-8, "rope fd"), "R %lld", (long long)R);
        (void)f;
        // strided dy gives the same dx
        Tensor gt = g.transpose(1, 2).contiguous().transpose(1, 2);
        CHECK(vals(rope_backward(gt, cos, sin)) == vals(dx), "rope bwd strided dy");
      } else {
        // bf16/f16/f32 backward: closed form with torch's rounding points
        Tensor g = rand_t({B, H, T, D}, dt);
        std::vector<double> gv = vals(g), cv = vals(cos), sv = vals(sin), want(gv.size());
        int64_t h2 = R / 2;
        for (int64_t b = 0; b < B; b++)
          for (int64_t h = 0; h < H; h++)
            for (int64_t t = 0; t < T; t++) {
              int64_t xr = ((b * H + h) * T + t) * D, cr = ((CB == 1 ? 0 : b) * T + t) * R;
              for (int64_t j = 0; j < D; j++) {
                if (j >= R) { want[xr + j] = gv[xr + j]; continue; }
                double other = j < h2 ? rnd(gv[xr + j + h2] * sv[cr + j + h2], dt) : -rnd(gv[xr + j - h2] * sv[cr + j - h2], dt);
                want[xr + j] = rnd(rnd(gv[xr + j] * cv[cr + j], dt) + other, dt);
              }
            }
        CHECK(close(vals(rope_backward(g, cos, sin)), want, 1e-7, 1e-12, "rope bwd"), "%s R %lld", dtype_name(dt), (long long)R);
      }
    }
  }
  // errors
  Tensor x = rand_t({1, 2, 3, 8}, DType::F32), c = rand_t({1, 3, 8}, DType::F32);
  EXPECT_ERROR(rope_forward(rand_t({2, 3, 8}, DType::F32), c, c), "4-d");
  EXPECT_ERROR(rope_forward(x, rand_t({1, 4, 8}, DType::F32), rand_t({1, 4, 8}, DType::F32)), "positions");
  EXPECT_ERROR(rope_forward(x, rand_t({1, 3, 10}, DType::F32), rand_t({1, 3, 10}, DType::F32)), "rotary dim");
  EXPECT_ERROR(rope_forward(x, rand_t({1, 3, 5}, DType::F32), rand_t({1, 3, 5}, DType::F32)), "even");
  EXPECT_ERROR(rope_forward(x, c, rand_t({1, 3, 6}, DType::F32)), "same shape");
  EXPECT_ERROR(rope_forward(rand_t({2, 2, 3, 8}, DType::F32), rand_t({3, 3, 8}, DType::F32), rand_t({3, 3, 8}, DType::F32)), "batch");
  Tensor co, si;
  EXPECT_ERROR(rope_tables(make({3}, DType::I64, {0, 1, 2}), rand_t({4}, DType::F32), 1.0, DType::F32, &co, &si), "2-d");
  EXPECT_ERROR(rope_tables(rand_t({1, 3}, DType::F32), rand_t({4}, DType::F32), 1.0, DType::F32, &co, &si), "i64");
}

// ---------------------------------------------------------------- embedding

void test_embedding() {
  int64_t V = 11, C = 70;  // C > 64: more than one column block in backward
  for (DType dt : {DType::F32, DType::BF16, DType::F64}) {
    Tensor w = rand_t({V, C}, dt);
    std::vector<double> wv = vals(w);
    for (DType idt : {DType::I64, DType::I32}) {
      std::vector<double> idv = {3, 0, 10, 3, 3, 7};
      Tensor ids = make({2, 3}, idt, idv);
      Tensor y = embedding_forward(w, ids);
      CHECK(y.shape() == Shape({2, 3, C}) && y.dtype() == dt, "emb shape %s", y.desc().c_str());
      std::vector<double> yv = vals(y), want;
      for (double id : idv) for (int64_t c = 0; c < C; c++) want.push_back(wv[(int64_t)id * C + c]);
      CHECK(yv == want, "embedding rows must be exact copies (%s)", dtype_name(dt));
      Tensor dy = rand_t({2, 3, C}, dt);
      std::vector<double> gv = vals(dy), dref(V * C, 0.0);
      for (size_t n = 0; n < idv.size(); n++) for (int64_t c = 0; c < C; c++) dref[(int64_t)idv[n] * C + c] += gv[n * C + c];
      Tensor dw = embedding_backward(dy, ids, V);
      CHECK(dw.shape() == Shape({V, C}) && dw.dtype() == (dt == DType::F64 ? DType::F64 : DType::F32), "dW %s", dw.desc().c_str());
      CHECK(close(vals(dw), dref, dt == DType::F64 ? 1e-15 : 1e-6, 1e-7, "emb bwd"), "%s", dtype_name(dt));
    }
  }
  // strided weight (a transposed (C,V) matrix) and a strided dy; 0-d ids
  {
    Tensor wt = rand_t({C, V}, DType::F32).transpose(0, 1);
    Tensor ids = make({4}, DType::I64, {1, 9, 1, 0});
    CHECK(vals(embedding_forward(wt, ids)) == vals(embedding_forward(wt.contiguous(), ids)), "strided weight");
    Tensor dy = rand_t({C, 4}, DType::F32).transpose(0, 1);
    CHECK(vals(embedding_backward(dy, ids, V)) == vals(embedding_backward(dy.contiguous(), ids, V)), "strided dy");
    Tensor one = embedding_forward(wt, make({}, DType::I64, {5}));
    CHECK(one.shape() == Shape({C}), "0-d ids -> (C), got %s", one.desc().c_str());
  }
  // errors: the message names the bad id, its position and V
  Tensor w = rand_t({V, 4}, DType::F32);
  EXPECT_ERROR(embedding_forward(w, make({3}, DType::I64, {1, 11, 2})), "id 11 at position 1");
  EXPECT_ERROR(embedding_forward(w, make({3}, DType::I32, {1, 2, -1})), "V=11");
  EXPECT_ERROR(embedding_forward(w, rand_t({3}, DType::F32)), "i64 or i32");
  EXPECT_ERROR(embedding_forward(rand_t({11}, DType::F32), make({1}, DType::I64, {0})), "2-d");
  EXPECT_ERROR(embedding_backward(rand_t({3, 4}, DType::F32), make({2}, DType::I64, {0, 1}), V), "embedding_backward");
  EXPECT_ERROR(embedding_backward(rand_t({2, 4}, DType::F32), make({2}, DType::I64, {0, 12}), V), "id 12");
}

// ---------------------------------------------------------------- cross-entropy

// naive f64 reference: loss, lse and dlogits (values of a row-major (N, V) array)
double ref_ce(const std::vector<double>& x, const std::vector<int64_t>& lab, int64_t V, int64_t ignore, double normalizer,
              double dloss, std::vector<double>* lse, std::vector<double>* grad) {
  int64_t N = (int64_t)lab.size(), cnt = 0;
  double total = 0;
  lse->assign(N, 0.0);
  grad->assign(N * V, 0.0);
  for (int64_t i = 0; i < N; i++) if (lab[i] != ignore) cnt++;
  double norm = normalizer > 0 ? normalizer : (double)cnt;
  for (int64_t i = 0; i < N; i++) {
    if (lab[i] == ignore) continue;
    double m = -INFINITY, z = 0;
    for (int64_t v = 0; v < V; v++) m = std::max(m, x[i * V + v]);
    for (int64_t v = 0; v < V; v++) z += std::exp(x[i * V + v] - m);
    double l = m + std::log(z);
    (*lse)[i] = l;
    total += l - x[i * V + lab[i]];
    for (int64_t v = 0; v < V; v++) (*grad)[i * V + v] = (std::exp(x[i * V + v] - l) - (v == lab[i])) * dloss / norm;
  }
  return total / norm;
}

void test_cross_entropy() {
  const int64_t IG = kCrossEntropyIgnoreIndex;
  for (DType dt : {DType::F32, DType::F64, DType::BF16, DType::F16}) {
    for (int64_t V : {1, 5, 4096, 10007}) {  // 10007: three vocab chunks, the last one ragged
      int64_t N = V > 5000 ? 5 : 9;
      Tensor logits = rand_t({N, V}, dt, 4.0);
      std::vector<int64_t> lab(N);
      for (int64_t i = 0; i < N; i++) lab[i] = (i % 4 == 1) ? IG : (int64_t)(g_rng() % V);
      std::vector<double> labd(lab.begin(), lab.end());
      for (double normalizer : {0.0, 7.0}) {
        Tensor labels = make({N}, DType::I64, labd), lse;
        Tensor loss = cross_entropy_forward(logits, labels, IG, normalizer, &lse);
        CHECK(loss.dim() == 0 && loss.dtype() == (dt == DType::F64 ? DType::F64 : DType::F32), "loss %s", loss.desc().c_str());
        std::vector<double> lref, gref;
        double want = ref_ce(vals(logits), lab, V, IG, normalizer, 1.7, &lref, &gref);
        double tol = dt == DType::F64 ? 1e-12 : 1e-5;
        CHECK(std::fabs(vals(loss)[0] - want) <= tol * (1 + std::fabs(want)), "%s V %lld loss %.9g want %.9g", dtype_name(dt),
              (long long)V, vals(loss)[0], want);
        CHECK(close(vals(lse), lref, tol, tol, "ce lse"), "%s V %lld", dtype_name(dt), (long long)V);
        Tensor dl = cross_entropy_backward(logits, labels, lse, Tensor::scalar(1.7, DType::F64), IG, normalizer);
        CHECK(dl.dtype() == dt && dl.shape() == logits.shape(), "dlogits %s", dl.desc().c_str());
        CHECK(close(vals(dl), gref, rel_tol(dt) * 2, dt == DType::F64 ? 1e-14 : 1e-6, "ce grad"), "%s V %lld norm %g",
              dtype_name(dt), (long long)V, normalizer);
      }
    }
  }
  // finite differences in f64 (a strided (B,T-1,V) view of causal-LM logits, i32 labels)
  {
    int64_t B = 2, T = 4, V = 6;
    Tensor full = rand_t({B, T, V}, DType::F64, 2.0);
    Tensor logits = full.narrow(1, 0, T - 1);  // logits[:, :-1]: non-contiguous
    Tensor labels = make({B, T - 1}, DType::I32, {1, 5, IG, 0, 2, 2});
    Tensor lse;
    cross_entropy_forward(logits, labels, IG, 0.0, &lse);
    Tensor dl = cross_entropy_backward(logits, labels, lse, Tensor::scalar(1.0, DType::F64), IG, 0.0);
    auto f = [&] { return vals(cross_entropy_forward(full.narrow(1, 0, T - 1), labels, IG, 0.0, nullptr))[0]; };
    std::vector<double> g = fd_grad(full, f), gn;
    for (int64_t b = 0; b < B; b++) for (int64_t t = 0; t < T - 1; t++) for (int64_t v = 0; v < V; v++) gn.push_back(g[(b * T + t) * V + v]);
    CHECK(close(vals(dl), gn, 1e-6, 1e-8, "ce fd"), "-");
    for (int64_t v = 0; v < V; v++) CHECK(g[(0 * T + 3) * V + v] == 0.0, "last position must not contribute");
    // strided and contiguous agree exactly
    Tensor l2;
    double a = vals(cross_entropy_forward(logits, labels, IG, 0.0, &l2))[0];
    double c = vals(cross_entropy_forward(logits.contiguous(), labels, IG, 0.0, nullptr))[0];
    CHECK(a == c, "strided ce %.17g vs %.17g", a, c);
  }
  // all labels ignored: loss NaN (0/0 like torch), gradient zero; with a normalizer: loss 0
  {
    Tensor logits = rand_t({3, 8}, DType::F32), labels = make({3}, DType::I64, {IG, IG, IG}), lse;
    Tensor loss = cross_entropy_forward(logits, labels, IG, 0.0, &lse);
    CHECK(std::isnan(vals(loss)[0]), "all-ignored loss should be NaN, got %g", vals(loss)[0]);
    Tensor dl = cross_entropy_backward(logits, labels, lse, Tensor::scalar(1.0, DType::F32), IG, 0.0);
    CHECK(vals(dl) == std::vector<double>(24, 0.0), "all-ignored grad must be zero");
    CHECK(vals(cross_entropy_forward(logits, labels, IG, 4.0, nullptr))[0] == 0.0, "all-ignored with normalizer");
    // custom ignore_index, -100 then a regular (out of range) label
    Tensor lab2 = make({3}, DType::I64, {-1, 2, -1});
    std::vector<double> lr, gr;
    double want = ref_ce(vals(logits), {-1, 2, -1}, 8, -1, 0.0, 1.0, &lr, &gr);
    CHECK(std::fabs(vals(cross_entropy_forward(logits, lab2, -1, 0.0, nullptr))[0] - want) < 1e-5, "ignore_index -1");
    EXPECT_ERROR(cross_entropy_forward(logits, make({3}, DType::I64, {IG, 2, -1}), -1, 0.0, nullptr), "label -100 at position 0");
  }
  // errors
  Tensor logits = rand_t({4, 10}, DType::F32);
  EXPECT_ERROR(cross_entropy_forward(logits, make({4}, DType::I64, {1, 2, 10, 3}), IG, 0, nullptr), "label 10 at position 2");
  EXPECT_ERROR(cross_entropy_forward(logits, make({4}, DType::I64, {1, -5, 0, 3}), IG, 0, nullptr), "position 1");
  EXPECT_ERROR(cross_entropy_forward(logits, make({3}, DType::I64, {1, 2, 3}), IG, 0, nullptr), "labels");
  EXPECT_ERROR(cross_entropy_forward(logits, rand_t({4}, DType::F32), IG, 0, nullptr), "i64 or i32");
  EXPECT_ERROR(cross_entropy_forward(make({4}, DType::I64, {0, 0, 0, 0}), make({}, DType::I64, {0}), IG, 0, nullptr), "floating");
  Tensor lse;
  Tensor labels = make({4}, DType::I64, {1, 2, 3, 4});
  cross_entropy_forward(logits, labels, IG, 0, &lse);
  EXPECT_ERROR(cross_entropy_backward(logits, labels, lse, rand_t({2}, DType::F32), IG, 0), "dloss");
  EXPECT_ERROR(cross_entropy_backward(logits, labels, rand_t({5}, DType::F32), Tensor::scalar(1, DType::F32), IG, 0), "lse");
}

// ---------------------------------------------------------------- kernel paths

// A kernel path: ISA level and, at AVX-512, whether the AVX512_BF16 tables may be used.
struct Path {
  Isa isa;
  bool bf16;
  const char* name() const { return bf16 ? "avx512bf16" : isa_name(isa); }
};
std::vector<Path> all_paths() {
  std::vector<Path> v{{Isa::Scalar, false}};
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(PEFTKIT_NO_SIMD_KERNELS)
  set_isa_cap(Isa::Avx512);
  const Isa hw = cpu_isa();
  if (hw >= Isa::Avx2) v.push_back({Isa::Avx2, false});
  if (hw >= Isa::Avx512) v.push_back({Isa::Avx512, false});
  if (hw >= Isa::Avx512 && cpu_features().avx512bf16) v.push_back({Isa::Avx512, true});
#endif
  return v;
}
void use_path(const Path& p) { set_isa_cap(p.isa); set_bf16_allowed(p.bf16); }
Path g_path{Isa::Avx512, true};  // the path the suite is running on (restored after scalar runs)
struct OnPath {
  explicit OnPath(const Path& p) { use_path(p); }
  ~OnPath() { use_path(g_path); }
};

// Bits of every element (as f64 values; NaN compared as NaN) equal?
bool same(const Tensor& a, const Tensor& b, const char* what) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) {
    std::printf("  %s: %s vs %s\n", what, a.desc().c_str(), b.desc().c_str());
    return false;
  }
  std::vector<double> x = vals(a), y = vals(b);
  for (size_t i = 0; i < x.size(); i++) {
    bool eq = std::isnan(x[i]) ? std::isnan(y[i]) : (x[i] == y[i] && std::signbit(x[i]) == std::signbit(y[i]));
    if (!eq) { std::printf("  %s: element %zu: %.10g vs %.10g\n", what, i, x[i], y[i]); return false; }
  }
  return true;
}

// Random values with some specials mixed in: ±0, denormal-range, huge, ±inf, NaN (each rare).
Tensor rand_special(const Shape& s, DType dt, double scale, bool nonfinite) {
  std::vector<double> v = randn(shape_numel(s), scale);
  std::uniform_int_distribution<int> pick(0, 199);
  for (auto& e : v) {
    switch (pick(g_rng)) {
      case 0: e = 0.0; break;
      case 1: e = -0.0; break;
      case 2: e = 3e-39 * (e < 0 ? -1 : 1); break;  // an f32 / bf16 denormal
      case 3: e = 1e-30; break;                     // products with it land in f32 denormals
      case 4: if (nonfinite) e = INFINITY; break;
      case 5: if (nonfinite) e = NAN; break;
      default: break;
    }
  }
  return make(s, dt, v);
}

// Every vector path against the scalar path on the same inputs.
void test_vector_paths() {
  const Path scalar{Isa::Scalar, false};
  const double eps = 1e-6;
  for (const Path& p : all_paths()) {
    if (p.isa == Isa::Scalar) continue;
    const char* pn = p.name();
    auto both = [&](auto f) { OnPath a(scalar); auto r = f(); OnPath b(p); return std::make_pair(r, f()); };
    // RMSNorm: Llama / Gemma / no weight, promoted output, ragged C, strided rows, specials
    for (DType dt : {DType::BF16, DType::F16, DType::F32}) {
      for (int64_t C : {1, 7, 16, 33, 512, 1000}) {
        for (int mode = 0; mode < 4; mode++) {  // 0 Llama, 1 Gemma, 2 no weight, 3 Llama with an f32 weight
          bool strided = C % 2 == 1;
          Tensor x = strided ? rand_special({C, 6}, dt, 2.0, false).transpose(0, 1) : rand_special({3, 4, C}, dt, 2.0, false);
          Tensor w = mode == 2 ? Tensor() : rand_t({C}, mode == 3 ? DType::F32 : dt);
          bool uo = mode == 1;
          auto fwd = [&] { Tensor r; Tensor y = rms_norm_forward(x, w, eps, uo, &r); return std::make_pair(y, r); };
          auto [ys, yv] = both(fwd);
          CHECK(same(yv.first, ys.first, "rms y") && same(yv.second, ys.second, "rms rstd"), "%s rms %s C %lld mode %d",
                pn, dtype_name(dt), (long long)C, mode);
          Tensor dy = strided ? rand_t({C, 6}, dt).transpose(0, 1) : rand_t(x.shape(), dt);
          Tensor rstd = ys.second;
          auto bwd = [&] { Tensor dx, dw; rms_norm_backward(x, w, rstd, dy, uo, &dx, &dw); return std::make_pair(dx, dw); };
          auto [gs, gv] = both(bwd);
          CHECK(same(gv.first, gs.first, "rms dx"), "%s rms bwd %s C %lld mode %d", pn, dtype_name(dt), (long long)C, mode);
          if (mode != 2) CHECK(same(gv.second, gs.second, "rms dw"), "%s rms dw %s C %lld mode %d", pn, dtype_name(dt), (long long)C, mode);
        }
      }
      // non-finite inputs flow the same way (NaN rows, inf)
      Tensor x = rand_special({5, 40}, dt, 1.0, true), w = rand_t({40}, dt);
      auto [a, b] = both([&] { return rms_norm_forward(x, w, eps, false, nullptr); });
      CHECK(same(b, a, "rms specials"), "%s rms specials %s", pn, dtype_name(dt));
    }
    // LayerNorm: weight and bias / weight only / neither, a large mean, ragged C, strided rows
    for (DType dt : {DType::BF16, DType::F16, DType::F32}) {
      for (int64_t C : {1, 9, 16, 257, 768}) {
        for (int mode = 0; mode < 3; mode++) {
          bool strided = C % 2 == 1;
          std::vector<double> v = randn(6 * C, 0.5);
          for (auto& e : v) e += 3.0;  // |mean| >> std: the centred second pass matters
          Tensor xs = strided ? make({C, 6}, dt, v).transpose(0, 1) : make({2, 3, C}, dt, v);
          Tensor w = mode < 2 ? rand_t({C}, dt) : Tensor(), b = mode == 0 ? rand_t({C}, dt) : Tensor();
          struct F { Tensor y, m, r; };
          auto fwd = [&] { F f; f.y = layer_norm_forward(xs, w, b, 1e-5, &f.m, &f.r); return f; };
          auto [fs, fv] = both(fwd);
          CHECK(same(fv.y, fs.y, "ln y") && same(fv.m, fs.m, "ln mean") && same(fv.r, fs.r, "ln rstd"), "%s ln %s C %lld mode %d",
                pn, dtype_name(dt), (long long)C, mode);
          Tensor dy = strided ? rand_t({C, 6}, dt).transpose(0, 1) : rand_t(xs.shape(), dt);
          struct G { Tensor dx, dw, db; };
          auto bwd = [&] { G g; layer_norm_backward(xs, w, fs.m, fs.r, dy, &g.dx, &g.dw, &g.db); return g; };
          auto [gs, gv] = both(bwd);
          CHECK(same(gv.dx, gs.dx, "ln dx") && same(gv.dw, gs.dw, "ln dw") && same(gv.db, gs.db, "ln db"), "%s ln bwd %s C %lld mode %d",
                pn, dtype_name(dt), (long long)C, mode);
        }
      }
    }
    // RoPE: the model's transposed view, partial rotary, R/2 not a multiple of the vector width,
    // a strided last dim, table dtypes, specials (denormal products, inf, NaN)
    struct RC { int64_t B, H, T, D, R, CB; };
    for (RC c : {RC{2, 3, 5, 64, 64, 2}, RC{1, 2, 4, 64, 32, 1}, RC{2, 2, 3, 10, 6, 2}, RC{1, 3, 2, 48, 40, 1}}) {
      for (DType dt : {DType::BF16, DType::F16, DType::F32}) {
        for (DType ct : {DType::F32, DType::BF16}) {
          for (int view = 0; view < 3; view++) {  // 0 contiguous, 1 (B,T,H,D) transposed, 2 strided last dim
            Tensor x;
            if (view == 0) x = rand_special({c.B, c.H, c.T, c.D}, dt, 1.5, true);
            else if (view == 1) x = rand_special({c.B, c.T, c.H, c.D}, dt, 1.5, true).transpose(1, 2);
            else x = rand_special({c.D, c.B, c.H, c.T}, dt, 1.5, true).permute({1, 2, 3, 0});
            Tensor cs = rand_t({c.CB, c.T, c.R}, ct), sn = rand_t({c.CB, c.T, c.R}, ct);
            for (bool bwd : {false, true}) {
              auto [a, b] = both([&] { return bwd ? rope_backward(x, cs, sn) : rope_forward(x, cs, sn); });
              CHECK(same(b, a, "rope"), "%s rope %s cos %s R %lld D %lld view %d bwd %d", pn, dtype_name(dt),
                    dtype_name(ct), (long long)c.R, (long long)c.D, view, bwd);
            }
          }
        }
      }
    }
    // cross-entropy: several chunks with a ragged last one, a strided (B, T-1, V) view, ignored
    // rows, a chunk of all -inf, a NaN row. Vector exp vs std::exp: <= 1 ulp per exp.
    for (DType dt : {DType::BF16, DType::F16, DType::F32}) {
      int64_t B = 2, T = 4, V = 9000;
      Tensor full = rand_t({B, T, V}, dt, 3.0);
      for (int64_t v = 4096; v < 8192; v++) store_from_double((char*)full.raw() + ((0 * T + 1) * V + v) * dtype_size(dt), dt, -INFINITY);
      store_from_double((char*)full.raw() + ((1 * T + 2) * V + 77) * dtype_size(dt), dt, NAN);
      Tensor logits = full.narrow(1, 0, T - 1);
      Tensor labels = make({B, T - 1}, DType::I64, {5, 8999, -100, 4097, 0, 123});
      auto fwd = [&] { Tensor lse; Tensor l = cross_entropy_forward(logits, labels, -100, 0.0, &lse); return std::make_pair(l, lse); };
      auto [fs, fv] = both(fwd);
      CHECK(close(vals(fv.second), vals(fs.second), 1e-6, 1e-6, "ce lse"), "%s ce lse %s", pn, dtype_name(dt));
      CHECK(std::isnan(vals(fv.first)[0]) && std::isnan(vals(fs.first)[0]), "%s ce: the NaN row must make the loss NaN", pn);
      Tensor lse = fs.second;
      auto [gs, gv] = both([&] { return cross_entropy_backward(logits, labels, lse, Tensor::scalar(0.37, DType::F32), -100, 0.0); });
      double ulp = dt == DType::BF16 ? 0x1p-8 : dt == DType::F16 ? 0x1p-11 : 0x1p-22;
      CHECK(close(vals(gv), vals(gs), ulp, 1e-12, "ce grad"), "%s ce grad %s", pn, dtype_name(dt));
      // without the NaN row the loss agrees to f32 rounding
      Tensor lab2 = make({B, T - 1}, DType::I64, {5, 8999, -100, 4097, 0, -100});
      auto [l2s, l2v] = both([&] { return cross_entropy_forward(logits, lab2, -100, 0.0, nullptr); });
      CHECK(std::fabs(vals(l2v)[0] - vals(l2s)[0]) <= 1e-6 * std::fabs(vals(l2s)[0]), "%s ce loss %s: %.9g vs %.9g", pn,
            dtype_name(dt), vals(l2v)[0], vals(l2s)[0]);
    }
  }
}

// The vector tables' bf16/f16 narrowing and widening against pk::f32_to_bf16 / f32_to_f16 and
// back, bit for bit (f16 NaN payloads excepted: F16C keeps / quiets them, the scalar code
// canonicalises): every 16-bit pattern widened; narrowed: every f32 with the low 17 mantissa bits
// exhaustive for the denormal range, the smallest normals and a few other exponents (ties,
// carries into the exponent, overflow to inf), NaNs with payloads, and random bit patterns.
void test_conversions() {
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(PEFTKIT_NO_SIMD_KERNELS)
  std::vector<const rowk::Kernels*> ks;
  set_isa_cap(Isa::Avx512);
  if (cpu_isa() >= Isa::Avx2) ks.push_back(&rowk::kernels_avx2());
  if (cpu_isa() >= Isa::Avx512) ks.push_back(&rowk::kernels_avx512());
  if (cpu_isa() >= Isa::Avx512 && cpu_features().avx512bf16) ks.push_back(&rowk::kernels_avx512bf16());
  use_path(g_path);
  std::vector<uint32_t> bits;
  for (uint32_t sign : {0u, 0x80000000u})
    for (uint32_t e : {0u, 1u, 2u, 100u, 127u, 142u, 143u, 254u}) {
      for (uint32_t hi : {0u, 1u, 0x3fu, 0x7eu, 0x7fu})
        for (uint32_t lo = 0; lo < (1u << 17); lo++) bits.push_back(sign | (e << 23) | (hi << 16 & 0x7fffff) | lo);
    }
  for (uint32_t m : {1u, 0x1u << 15, 0x400000u, 0x7fffffu, 0x12345u}) { bits.push_back(0x7f800000u | m); bits.push_back(0xff800000u | m); }
  bits.push_back(0x7f800000u); bits.push_back(0xff800000u);
  for (int i = 0; i < 1000000; i++) bits.push_back((uint32_t)g_rng());
  bits.push_back(0x3f808000u);  // a tie, odd and even below
  std::vector<float> f(bits.size());
  std::memcpy(f.data(), bits.data(), bits.size() * 4);
  std::vector<uint16_t> got(f.size());
  for (const rowk::Kernels* k : ks) {
    for (DType t : {DType::BF16, DType::F16}) {
      // odd offset and length: unaligned pointers and a partial last vector
      k->store(t, f.data() + 1, got.data() + 1, (int64_t)f.size() - 2);
      int64_t bad = 0, first = -1;
      for (size_t i = 1; i + 1 < f.size(); i++) {
        uint16_t want = t == DType::BF16 ? f32_to_bf16(f[i]) : f32_to_f16(f[i]);
        // f16 NaNs: F16C keeps payload bits that the scalar conversion drops; any NaN will do
        bool nan_ok = t == DType::F16 && std::isnan(f[i]) && (got[i] & 0x7c00) == 0x7c00 && (got[i] & 0x3ff);
        if (got[i] != want && !nan_ok) { bad++; if (first < 0) first = (int64_t)i; }
      }
      CHECK(bad == 0, "%s narrow %s: %lld mismatches, first f32 bits %08x -> %04x want %04x", k->name, dtype_name(t),
            (long long)bad, first >= 0 ? bits[first] : 0u, first >= 0 ? got[first] : 0,
            first >= 0 ? (t == DType::BF16 ? f32_to_bf16(f[first]) : f32_to_f16(f[first])) : 0);
      std::vector<uint16_t> h(65536);
      for (uint32_t i = 0; i < 65536; i++) h[i] = (uint16_t)i;
      std::vector<float> w(65536);
      k->load(t, h.data(), w.data(), 65535);
      int64_t wbad = 0;
      for (uint32_t i = 0; i < 65535; i++) {
        float want = t == DType::BF16 ? bf16_to_f32(h[i]) : f16_to_f32(h[i]);
        uint32_t a, b;
        std::memcpy(&a, &w[i], 4); std::memcpy(&b, &want, 4);
        wbad += a != b && !(t == DType::F16 && std::isnan(want) && std::isnan(w[i]));  // F16C quiets f16 NaNs
      }
      CHECK(wbad == 0, "%s widen %s: %lld mismatches", k->name, dtype_name(t), (long long)wbad);
    }
  }
#endif
}

// ---------------------------------------------------------------- determinism

// The reductions (RMSNorm/LayerNorm dw/db, embedding dW, cross-entropy over vocab chunks) must
// give the same bits on any thread count. Each count runs in a child process
// (PEFTKIT_NUM_THREADS=n) that prints a hash of the results; the parent compares the hashes.
std::string det_hash() {
  std::mt19937_64 rng(99);
  g_rng = rng;
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](const Tensor& t) {
    for (double v : vals(t)) { uint64_t u; std::memcpy(&u, &v, 8); for (int k = 0; k < 8; k++) { h ^= (u >> (8 * k)) & 0xff; h *= 1099511628211ull; } }
  };
  int64_t C = 300, N = 517;
  Tensor x = rand_t({N, C}, DType::F32), w = rand_t({C}, DType::F32), dy = rand_t({N, C}, DType::F32), rstd, mean;
  rms_norm_forward(x, w, 1e-6, false, &rstd);
  Tensor dx, dw, db;
  rms_norm_backward(x, w, rstd, dy, false, &dx, &dw);
  mix(dx); mix(dw);
  layer_norm_forward(x, w, w, 1e-5, &mean, &rstd);
  layer_norm_backward(x, w, mean, rstd, dy, &dx, &dw, &db);
  mix(dx); mix(dw); mix(db);
  std::vector<double> idv(3000);
  for (int64_t i = 0; i < 3000; i++) idv[i] = (double)(i % 3 == 0 ? 2 : i % 11);
  mix(embedding_backward(rand_t({3000, 200}, DType::F32), make({3000}, DType::I64, idv), 11));
  Tensor logits = rand_t({2, 50000}, DType::BF16, 3.0), labels = make({2}, DType::I64, {17, 49999}), lse;
  Tensor loss = cross_entropy_forward(logits, labels, kCrossEntropyIgnoreIndex, 0.0, &lse);
  mix(loss); mix(lse);
  mix(cross_entropy_backward(logits, labels, lse, Tensor::scalar(1.0, DType::F32), kCrossEntropyIgnoreIndex, 0.0));
  char buf[32];
  std::snprintf(buf, sizeof buf, "%016llx", (unsigned long long)h);
  return buf;
}

std::string g_self;  // argv[0], to re-run this binary with another thread count

void test_determinism() {
  std::vector<std::string> hashes;
  for (int nt : {1, 2, 3, 5}) {
    std::string cmd = "PEFTKIT_NUM_THREADS=" + std::to_string(nt) + " '" + g_self + "' --det-hash";
    FILE* f = popen(cmd.c_str(), "r");
    CHECK(f != nullptr, "popen failed");
    if (!f) return;
    char buf[64] = {0};
    if (!std::fgets(buf, sizeof buf, f)) buf[0] = 0;
    pclose(f);
    hashes.push_back(buf);
  }
  for (size_t i = 1; i < hashes.size(); i++)
    CHECK(hashes[i] == hashes[0] && hashes[0].size() >= 16, "thread-count dependence: '%s' vs '%s'", hashes[0].c_str(), hashes[i].c_str());
}

}  // namespace

int main(int argc, char** argv) {
  g_self = argv[0];
  if (argc > 1 && std::string(argv[1]) == "--det-hash") { std::printf("%s\n", det_hash().c_str()); return 0; }
  struct Test { const char* name; void (*fn)(); };
  auto run = [](const Test& t, const char* path) {
    int before = g_failures;
    try {
      t.fn();
    } catch (const std::exception& e) {
      g_failures++;
      std::printf("FAIL %s: unexpected exception: %s\n", t.name, e.what());
    }
    std::printf("%-14s %-11s %s\n", t.name, path, g_failures == before ? "ok" : "FAILED");
  };
  const Test per_path[] = {
      {"softmax", test_softmax}, {"rms_norm", test_rms_norm}, {"layer_norm", test_layer_norm},
      {"rope", test_rope},       {"embedding", test_embedding}, {"cross_entropy", test_cross_entropy},
  };
  // the suite on every kernel path (the best one last, so the cross-path tests start there)
  for (const Path& p : all_paths()) {
    g_path = p;
    use_path(p);
    for (const Test& t : per_path) run(t, p.name());
  }
  run({"vector_paths", test_vector_paths}, "all");
  run({"conversions", test_conversions}, "all");
  run({"determinism", test_determinism}, g_path.name());
  std::printf("%d checks, %d failures\n", g_checks, g_failures);
  return g_failures ? 1 : 0;
}
