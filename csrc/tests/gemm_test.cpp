// gemm_test.cpp — correctness test of pk::gemm_f32 / pk::gemm_f64 against a naive f64 GEMM.
//
// Covers: odd shapes (1, 3, 17, 255, 1023 and mixes, shapes spanning several MC/KC/NC blocks),
// all four transpose combinations (via strides, with padded leading dimensions), a non-unit
// stride on both axes (generic packer), f32/bf16/f16 operands (reference computed from the
// rounded values), alpha/beta incl. beta == 0 with NaN in C, ldc > N, M/N/K == 0, every ISA
// level this CPU supports (pk::set_isa_cap) and 1 vs 2 threads; plus a custom PanelLoader
// through gemm_f32_loaders (the NF4 extension point) and gemm_f64. bf16 compute
// (GemmCompute::Bf16): the same shape/layout/dtype grid against the f64 GEMM of the bf16-rounded
// operands (f32 accumulation tolerance; the unrounded reference where the CPU or the ISA cap
// leaves only the f32 fallback), the generic and copy/transpose packers, odd K and K blocks, the
// narrow tiles, and a loader without a bf16 packer (the f32-pack-then-convert path).
//
// Build (see gemm_bench.cpp for the flags of the ISA files), run: ./gemm_test  -> exit 0 on success.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/cpu_features.h"
#include "core/parallel.h"
#include "cpu/gemm.h"
#include "cpu/gemm_kernels.h"

using namespace pk;

namespace {

int g_failures = 0;
int g_checks = 0;

struct Mat {  // a logical R x C matrix of `dtype`, stored with strides (rs, cs) inside `buf`
  int64_t R = 0, C = 0, rs = 0, cs = 0;
  DType dtype = DType::F32;
  std::vector<float> f32;
  std::vector<uint16_t> h16;
  std::vector<double> val;  // logical values (after rounding to dtype), row-major R x C
  const void* data() const { return dtype == DType::F32 ? (const void*)f32.data() : (const void*)h16.data(); }
};

// Builds a matrix with random values; layout: trans = false -> row-major (rs = ld, cs = 1),
// trans = true -> column-major (rs = 1, cs = ld); ld is padded by `pad`. stride2 -> both strides
// non-unit (every element 2 apart along the fast axis).
Mat make_mat(int64_t R, int64_t C, DType dt, bool trans, int64_t pad, bool stride2, std::mt19937& rng) {
  Mat m;
  m.R = R; m.C = C; m.dtype = dt;
  const int64_t step = stride2 ? 2 : 1;
  const int64_t fast = trans ? R : C, slow = trans ? C : R;
  const int64_t ld = fast * step + pad;
  if (trans) { m.rs = step; m.cs = ld; } else { m.rs = ld; m.cs = step; }
  const size_t n = (size_t)(std::max<int64_t>(slow, 1) * ld + 1);
  std::uniform_real_distribution<float> U(-1.0f, 1.0f);
  m.val.assign((size_t)(R * C), 0.0);
  if (dt == DType::F32) m.f32.assign(n, std::numeric_limits<float>::quiet_NaN());  // padding poisoned
  else m.h16.assign(n, 0x7e00);
  for (int64_t i = 0; i < R; i++)
    for (int64_t j = 0; j < C; j++) {
      const float x = U(rng);
      const int64_t o = i * m.rs + j * m.cs;
      double v;
      if (dt == DType::F32) { m.f32[o] = x; v = x; }
      else if (dt == DType::BF16) { m.h16[o] = f32_to_bf16(x); v = bf16_to_f32(m.h16[o]); }
      else { m.h16[o] = f32_to_f16(x); v = f16_to_f32(m.h16[o]); }
      m.val[i * C + j] = v;
    }
  return m;
}

struct Ref { std::vector<double> ab, absab; };  // A·B and |A|·|B| (row-major M x N)

Ref naive(const Mat& A, const Mat& B) {
  const int64_t M = A.R, K = A.C, N = B.C;
  Ref r;
  r.ab.assign((size_t)(M * N), 0.0);
  r.absab.assign((size_t)(M * N), 0.0);
  for (int64_t i = 0; i < M; i++)
    for (int64_t k = 0; k < K; k++) {
      const double a = A.val[i * K + k];
      const double* b = &B.val[k * N];
      double* o = &r.ab[i * N];
      double* oa = &r.absab[i * N];
      for (int64_t j = 0; j < N; j++) { o[j] += a * b[j]; oa[j] += std::fabs(a * b[j]); }
    }
  return r;
}

// Runs gemm_f32 and checks every element; returns false (and prints) on the first mismatch.
bool run_check(const char* what, const Mat& A, const Mat& B, const Ref& ref, float alpha, float beta,
               int nthreads, GemmCompute compute = GemmCompute::F32) {
  const int64_t M = A.R, K = A.C, N = B.C, ldc = N + 5;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> U(-1.0f, 1.0f);
  std::vector<float> C((size_t)(std::max<int64_t>(M, 1) * ldc));
  for (auto& c : C) c = beta == 0.0f ? std::numeric_limits<float>::quiet_NaN() : U(rng);
  const std::vector<float> C0 = C;
  GemmOperand a{A.data(), A.dtype, A.rs, A.cs}, b{B.data(), B.dtype, B.rs, B.cs};
  gemm_f32(M, N, K, a, b, C.data(), ldc, alpha, beta, nthreads, compute);
  g_checks++;
  for (int64_t i = 0; i < M; i++)
    for (int64_t j = 0; j < ldc; j++) {
      const float got = C[i * ldc + j];
      if (j >= N) {  // padding of C must be untouched
        const float was = C0[i * ldc + j];
        if (!(got == was || (std::isnan(got) && std::isnan(was)))) {
          std::printf("FAIL %s: wrote C padding at (%ld,%ld)\n", what, (long)i, (long)j);
          return false;
        }
        continue;
      }
      const double c0 = beta == 0.0f ? 0.0 : (double)C0[i * ldc + j];
      const double want = (double)alpha * ref.ab[i * N + j] + (double)beta * c0;
      const double tol = 1e-5 * std::sqrt((double)K + 1.0) * std::fabs(alpha) * ref.absab[i * N + j] +
                         2e-7 * std::fabs(beta * c0) + 1e-30;
      if (!(std::fabs(got - want) <= tol)) {
        std::printf("FAIL %s: M=%ld N=%ld K=%ld at (%ld,%ld): got %.9g want %.9g (tol %.3g)\n", what, (long)M,
                    (long)N, (long)K, (long)i, (long)j, got, want, tol);
        return false;
      }
    }
  return true;
}

struct Shape { int64_t M, N, K; };

void test_f32_shapes(const std::vector<Isa>& isas) {
  // Mixes of 1, 3, 17, 255, 1023, plus shapes crossing the MC (1536), KC (256) and NC (512) blocks.
  const std::vector<Shape> shapes = {
      {1, 1, 1},      {3, 17, 255},    {17, 3, 1},       {255, 1023, 17}, {1023, 17, 255}, {17, 255, 1023},
      {1, 1023, 255}, {1023, 1, 17},   {255, 255, 255},  {3, 3, 1023},    {1, 17, 3},      {1023, 1023, 1023},
      {1600, 40, 30}, {64, 1100, 300}, {13, 529, 513},   {37, 61, 257},
  };
  struct DT { DType a, b; };
  const std::vector<DT> dts = {{DType::F32, DType::F32}, {DType::F32, DType::BF16}, {DType::BF16, DType::BF16},
                               {DType::F16, DType::F32}, {DType::F16, DType::F16}};
  struct AB { float alpha, beta; };
  const AB abs[] = {{1.0f, 0.0f}, {0.5f, 1.0f}, {-1.5f, 0.75f}};
  std::mt19937 rng(1234);
  int shape_idx = 0;
  for (const Shape& s : shapes) {
    const bool big = s.M * s.N * s.K > 50'000'000;
    for (size_t d = 0; d < dts.size(); d++) {
      if (big && d != 0 && d != 2) continue;  // the 1023^3 case: f32 and bf16 only (time)
      // One set of values per (shape, dtype); layouts only change where they are stored.
      Mat A[2], B[2];
      for (int t = 0; t < 2; t++) {
        std::mt19937 ra(100 + shape_idx), rb(200 + shape_idx);  // same values for both layouts
        A[t] = make_mat(s.M, s.K, dts[d].a, t == 1, 3, false, ra);
        B[t] = make_mat(s.K, s.N, dts[d].b, t == 1, 1, false, rb);
      }
      const Ref ref = naive(A[0], B[0]);
      for (Isa isa : isas) {
        set_isa_cap(isa);
        for (int nt = 1; nt <= 2; nt++)
          for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
              const AB ab = abs[(ta * 2 + tb + nt + shape_idx) % 3];
              char what[160];
              std::snprintf(what, sizeof what, "%s %s*%s trans=%d%d threads=%d alpha=%g beta=%g", isa_name(isa),
                            dtype_name(dts[d].a), dtype_name(dts[d].b), ta, tb, nt, ab.alpha, ab.beta);
              if (!run_check(what, A[ta], B[tb], ref, ab.alpha, ab.beta, nt)) g_failures++;
            }
      }
      (void)rng;
    }
    shape_idx++;
  }
}

// Non-unit strides on both axes (generic packer) and a few extra alpha/beta values.
void test_generic_strides(const std::vector<Isa>& isas) {
  std::mt19937 r1(5), r2(6);
  const Mat A = make_mat(37, 45, DType::F32, false, 2, true, r1);
  const Mat B = make_mat(45, 70, DType::BF16, true, 1, true, r2);
  const Ref ref = naive(A, B);
  for (Isa isa : isas) {
    set_isa_cap(isa);
    for (int nt = 1; nt <= 2; nt++) {
      char what[96];
      std::snprintf(what, sizeof what, "%s generic strides threads=%d", isa_name(isa), nt);
      if (!run_check(what, A, B, ref, 2.0f, -1.0f, nt)) g_failures++;
      if (!run_check(what, A, B, ref, 1.0f, 0.0f, nt)) g_failures++;
    }
  }
}

// M, N or K == 0, and alpha == 0 (C = beta * C, A/B not read).
void test_degenerate(const std::vector<Isa>& isas) {
  for (Isa isa : isas) {
    set_isa_cap(isa);
    std::vector<float> C(6 * 9, 2.0f);
    float dummy = 0;
    GemmOperand a{&dummy, DType::F32, 0, 1}, b{&dummy, DType::F32, 4, 1};
    gemm_f32(6, 4, 0, a, b, C.data(), 9, 1.0f, 0.5f, 2);  // K == 0: C = beta * C on the 6 x 4 part
    bool ok = true;
    for (int i = 0; i < 6; i++)
      for (int j = 0; j < 9; j++) ok &= C[i * 9 + j] == (j < 4 ? 1.0f : 2.0f);
    std::vector<float> Cn(6 * 9, std::numeric_limits<float>::quiet_NaN());
    gemm_f32(6, 4, 0, a, b, Cn.data(), 9, 1.0f, 0.0f, 1);  // K == 0, beta == 0: zeros, C not read
    for (int i = 0; i < 6; i++)
      for (int j = 0; j < 4; j++) ok &= Cn[i * 9 + j] == 0.0f;
    gemm_f32(0, 4, 5, a, b, nullptr, 9, 1.0f, 0.0f, 1);  // M == 0
    gemm_f32(6, 0, 5, a, b, C.data(), 9, 1.0f, 0.0f, 1);  // N == 0: untouched
    for (int i = 0; i < 6; i++) ok &= C[i * 9 + 5] == 2.0f && C[i * 9] == 1.0f;
    g_checks++;
    if (!ok) { std::printf("FAIL %s degenerate shapes\n", isa_name(isa)); g_failures++; }
  }
}

// A custom loader through gemm_f32_loaders: B given as int8 codes x per-column scale (a stand-in
// for the NF4 dequantiser), packed by its own function into the standard panel layout.
struct Int8Ctx { const int8_t* q; const float* scale; int64_t ld; };
void pack_int8(const gemm::PanelLoader& L, int64_t k0, int64_t kc, int64_t p0, int64_t np, int w, float* dst) {
  const Int8Ctx& c = *static_cast<const Int8Ctx*>(L.ctx);
  for (int64_t q = 0; q * w < np; q++)
    for (int64_t k = 0; k < kc; k++)
      for (int r = 0; r < w; r++) {
        const int64_t j = p0 + q * w + r;
        dst[(q * kc + k) * w + r] = (q * w + r < np) ? c.q[(k0 + k) * c.ld + j] * c.scale[j] : 0.0f;
      }
}

void test_custom_loader(const std::vector<Isa>& isas) {
  const int64_t M = 70, N = 90, K = 300;
  std::mt19937 rng(9);
  Mat A = make_mat(M, K, DType::F32, false, 0, false, rng);
  std::vector<int8_t> q((size_t)(K * N));
  std::vector<float> scale((size_t)N);
  std::uniform_int_distribution<int> Q(-127, 127);
  for (auto& x : q) x = (int8_t)Q(rng);
  for (int64_t j = 0; j < N; j++) scale[j] = 0.01f * (1 + j % 7);
  Mat B; B.R = K; B.C = N; B.val.resize((size_t)(K * N));
  for (int64_t k = 0; k < K; k++)
    for (int64_t j = 0; j < N; j++) B.val[k * N + j] = (double)(q[k * N + j] * scale[j]);
  const Ref naive_ref = naive(A, B);
  Int8Ctx ctx{q.data(), scale.data(), N};
  Mat Ar = A, Br = B;  // for a bf16-compute kernel set: the operands it multiplies
  for (auto& v : Ar.val) v = bf16_to_f32(f32_to_bf16((float)v));
  for (auto& v : Br.val) v = bf16_to_f32(f32_to_bf16((float)v));
  const Ref ref_bf16 = naive(Ar, Br);
  for (Isa isa : isas) {
    set_isa_cap(isa);
    for (int nt = 1; nt <= 4; nt++) {
      // nt 3, 4: the bf16-compute set (when available): this loader has no pack_bf16, so the
      // driver packs f32 panels through it and converts them.
      const bool bf = nt > 2;
      const gemm::KernelSet& ks = bf ? gemm::kernels_for(M, N, GemmCompute::Bf16) : gemm::active_kernels();
      const Ref& ref = ks.bf16 ? ref_bf16 : naive_ref;
      gemm::PanelLoader lb;
      lb.pack = pack_int8;
      lb.ctx = &ctx;
      std::vector<float> C((size_t)(M * N), std::numeric_limits<float>::quiet_NaN());
      gemm::gemm_f32_loaders(M, N, K, gemm::dense_loader_a({A.data(), DType::F32, A.rs, A.cs}, ks), lb, C.data(), N,
                             1.0f, 0.0f, bf ? nt - 2 : nt, ks);
      g_checks++;
      for (int64_t i = 0; i < M * N; i++) {
        const double tol = 1e-5 * std::sqrt((double)K) * ref.absab[i] + 1e-30;
        if (!(std::fabs(C[i] - ref.ab[i]) <= tol)) {
          std::printf("FAIL %s custom loader%s threads=%d at %ld: %g vs %g\n", isa_name(isa), ks.bf16 ? " (bf16)" : "", nt, (long)i, C[i],
                      ref.ab[i]);
          g_failures++;
          break;
        }
      }
    }
  }
}

// The logical values of m rounded to bf16 (what a bf16-compute GEMM multiplies).
Mat bf16_rounded(const Mat& m) {
  Mat r = m;
  for (auto& v : r.val) v = bf16_to_f32(f32_to_bf16((float)v));
  return r;
}

void test_bf16_compute(const std::vector<Isa>& isas) {
  // Odd K (padded pair), K across the 768-k bf16 blocks, the narrow 16 x 16 tiles (N or M <= 16),
  // M across MC and N across NC.
  const std::vector<Shape> shapes = {
      {1, 1, 1},    {3, 17, 255},  {17, 3, 1},     {255, 1023, 17}, {1023, 17, 255}, {17, 255, 1023},
      {16, 70, 33}, {100, 16, 513}, {37, 61, 1100}, {64, 1100, 300}, {1600, 40, 30},  {13, 529, 2},
  };
  struct DT { DType a, b; };
  const std::vector<DT> dts = {{DType::BF16, DType::BF16}, {DType::F32, DType::F32}, {DType::F32, DType::BF16},
                               {DType::F16, DType::F16}};
  struct AB { float alpha, beta; };
  const AB abs[] = {{1.0f, 0.0f}, {0.5f, 1.0f}, {-1.5f, 0.75f}};
  int shape_idx = 0;
  for (const Shape& s : shapes) {
    for (size_t d = 0; d < dts.size(); d++) {
      Mat A[2], B[2];
      for (int t = 0; t < 2; t++) {
        std::mt19937 ra(300 + shape_idx), rb(400 + shape_idx);
        A[t] = make_mat(s.M, s.K, dts[d].a, t == 1, 3, false, ra);
        B[t] = make_mat(s.K, s.N, dts[d].b, t == 1, 1, false, rb);
      }
      const Ref ref_exact = naive(A[0], B[0]);
      const Ref ref_bf16 = naive(bf16_rounded(A[0]), bf16_rounded(B[0]));
      for (Isa isa : isas) {
        set_isa_cap(isa);
        const Ref& ref = gemm_bf16_compute_available() ? ref_bf16 : ref_exact;
        for (int nt = 1; nt <= 2; nt++)
          for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
              const AB ab = abs[(ta * 2 + tb + nt + shape_idx) % 3];
              char what[160];
              std::snprintf(what, sizeof what, "%s bf16-compute%s %s*%s trans=%d%d threads=%d alpha=%g beta=%g",
                            isa_name(isa), gemm_bf16_compute_available() ? "" : "(fallback)", dtype_name(dts[d].a),
                            dtype_name(dts[d].b), ta, tb, nt, ab.alpha, ab.beta);
              if (!run_check(what, A[ta], B[tb], ref, ab.alpha, ab.beta, nt, GemmCompute::Bf16)) g_failures++;
            }
      }
    }
    shape_idx++;
  }
  // Non-unit strides on both axes: the generic bf16-pair packer.
  {
    std::mt19937 r1(15), r2(16);
    const Mat A = make_mat(37, 45, DType::F32, false, 2, true, r1);
    const Mat B = make_mat(45, 70, DType::BF16, true, 1, true, r2);
    const Ref ref_exact = naive(A, B), ref_bf16 = naive(bf16_rounded(A), bf16_rounded(B));
    for (Isa isa : isas) {
      set_isa_cap(isa);
      const Ref& ref = gemm_bf16_compute_available() ? ref_bf16 : ref_exact;
      for (int nt = 1; nt <= 2; nt++) {
        char what[96];
        std::snprintf(what, sizeof what, "%s bf16-compute generic strides threads=%d", isa_name(isa), nt);
        if (!run_check(what, A, B, ref, 2.0f, -1.0f, nt, GemmCompute::Bf16)) g_failures++;
      }
    }
  }
  // The request is never honoured below AVX-512 (and needs AVX512_BF16).
  for (Isa isa : isas) {
    set_isa_cap(isa);
    const bool want = isa == Isa::Avx512 && cpu_features().avx512bf16;
    g_checks++;
    if (gemm_bf16_compute_available() != want || gemm::kernels_for(64, 64, GemmCompute::Bf16).bf16 != want ||
        gemm::kernels_for(64, 64).bf16) {
      std::printf("FAIL %s: bf16-compute dispatch (available=%d, want %d)\n", isa_name(isa),
                  (int)gemm_bf16_compute_available(), (int)want);
      g_failures++;
    }
    // set_bf16_allowed(false) (PEFTKIT_ISA=avx512-nobf16, setIsa) turns the request into the f32 fallback.
    set_bf16_allowed(false);
    g_checks++;
    if (gemm_bf16_compute_available() || gemm::kernels_for(64, 64, GemmCompute::Bf16).bf16) {
      std::printf("FAIL %s: bf16-compute still dispatched with bf16 disallowed\n", isa_name(isa));
      g_failures++;
    }
    set_bf16_allowed(true);
  }
}

// Thread count never changes the bits (same K blocks and tiles on every path), in particular for
// the skinny single-fork path (N <= NR or M <= MR) against the 1-thread general path.
void test_thread_invariance(const std::vector<Isa>& isas) {
  const std::vector<Shape> shapes = {{1000, 16, 700}, {16, 700, 1000}, {1000, 5, 300}, {3, 900, 600}, {300, 200, 600}};
  int idx = 0;
  for (const Shape& s : shapes) {
    std::mt19937 ra(500 + idx), rb(600 + idx);
    const Mat A = make_mat(s.M, s.K, DType::F32, false, 0, false, ra);
    const Mat B = make_mat(s.K, s.N, DType::BF16, true, 0, false, rb);
    for (Isa isa : isas) {
      set_isa_cap(isa);
      for (GemmCompute cm : {GemmCompute::F32, GemmCompute::Bf16}) {
        std::vector<float> C1((size_t)(s.M * s.N), 0.5f), C2 = C1;
        GemmOperand a{A.data(), A.dtype, A.rs, A.cs}, b{B.data(), B.dtype, B.rs, B.cs};
        gemm_f32(s.M, s.N, s.K, a, b, C1.data(), s.N, 0.75f, 1.0f, 1, cm);
        gemm_f32(s.M, s.N, s.K, a, b, C2.data(), s.N, 0.75f, 1.0f, 2, cm);
        g_checks++;
        if (std::memcmp(C1.data(), C2.data(), C1.size() * sizeof(float)) != 0) {
          std::printf("FAIL %s %s: %ldx%ldx%ld differs between 1 and 2 threads\n", isa_name(isa),
                      cm == GemmCompute::Bf16 ? "bf16-compute" : "f32", (long)s.M, (long)s.N, (long)s.K);
          g_failures++;
        }
      }
    }
    idx++;
  }
}

// The vectorised bf16 epilogue helpers give the bits of f32_to_bf16 (ties, NaN, inf, subnormals).
void test_bf16_helpers() {
  std::vector<float> v;
  std::mt19937 rng(3);
  for (int i = 0; i < 4096; i++) {
    uint32_t u = rng();
    float f;
    std::memcpy(&f, &u, 4);
    v.push_back(f);
  }
  for (uint32_t u : {0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u, 0xffc00001u, 0x7f800001u,
                     0x3f808000u, 0x3f818000u, 0x3f807fffu, 0x7f7fffffu, 0xff7fffffu, 0x00008000u, 0x00018000u,
                     0x007fffffu}) {
    float f;
    std::memcpy(&f, &u, 4);
    v.push_back(f);
  }
  std::vector<uint16_t> h(v.size());
  std::vector<float> r = v;
  f32_to_bf16_run(v.data(), h.data(), (int64_t)v.size());
  bf16_round_run(r.data(), (int64_t)r.size());
  g_checks++;
  for (size_t i = 0; i < v.size(); i++) {
    const uint16_t want = f32_to_bf16(v[i]);
    const float wr = bf16_to_f32(want);
    if (h[i] != want || std::memcmp(&r[i], &wr, 4) != 0) {
      uint32_t u;
      std::memcpy(&u, &v[i], 4);
      std::printf("FAIL bf16 helpers at 0x%08x: %04x / want %04x\n", u, h[i], want);
      g_failures++;
      break;
    }
  }
}

void test_f64() {
  struct S { int64_t M, N, K; bool ta, tb; double alpha, beta; };
  const S cases[] = {{1, 1, 1, false, false, 1, 0},   {17, 255, 3, true, false, 0.5, 2},
                     {255, 17, 1023, false, true, -1, 1}, {70, 600, 130, true, true, 1, 0.25},
                     {5, 7, 0, false, false, 1, 3}};
  std::mt19937 rng(77);
  std::uniform_real_distribution<double> U(-1, 1);
  for (const S& s : cases) {
    const int64_t lda = (s.ta ? s.M : s.K) + 2, ldb = (s.tb ? s.K : s.N) + 1, ldc = s.N + 3;
    std::vector<double> A((size_t)((s.ta ? s.K : s.M) * lda + 1)), B((size_t)((s.tb ? s.N : s.K) * ldb + 1)),
        C((size_t)(s.M * ldc));
    for (auto& x : A) x = U(rng);
    for (auto& x : B) x = U(rng);
    for (auto& x : C) x = s.beta == 0 ? std::numeric_limits<double>::quiet_NaN() : U(rng);
    const int64_t a_rs = s.ta ? 1 : lda, a_cs = s.ta ? lda : 1, b_rs = s.tb ? 1 : ldb, b_cs = s.tb ? ldb : 1;
    std::vector<double> want((size_t)(s.M * s.N));
    for (int64_t i = 0; i < s.M; i++)
      for (int64_t j = 0; j < s.N; j++) {
        long double acc = 0;
        for (int64_t k = 0; k < s.K; k++) acc += (long double)A[i * a_rs + k * a_cs] * B[k * b_rs + j * b_cs];
        want[i * s.N + j] = (double)(s.alpha * acc) + (s.beta == 0 ? 0.0 : s.beta * C[i * ldc + j]);
      }
    gemm_f64(s.M, s.N, s.K, A.data(), a_rs, a_cs, B.data(), b_rs, b_cs, C.data(), ldc, s.alpha, s.beta);
    g_checks++;
    for (int64_t i = 0; i < s.M * s.N; i++) {
      const double got = C[(i / s.N) * ldc + i % s.N];
      if (!(std::fabs(got - want[i]) <= 1e-12 * (1 + std::fabs(want[i])) * std::sqrt((double)s.K + 1))) {
        std::printf("FAIL gemm_f64 M=%ld N=%ld K=%ld at %ld: %.17g vs %.17g\n", (long)s.M, (long)s.N, (long)s.K,
                    (long)i, got, want[i]);
        g_failures++;
        break;
      }
    }
  }
}

}  // namespace

// gemm_bf16_out: the fused bf16-output epilogue (bias, rounding, low-rank term) against the
// unfused sequence — gemm_f32 into an f32 matrix, then the portable epilogue on it — which must
// give the same bits on AVX-512 (same kernels, same K blocks, same order of operations); and
// against the f64 reference within bf16 rounding everywhere. Shapes with edge tiles, several K blocks (K > KC) and N > NC,
// r = 0 / 3 / 16 / 40, f32 and bf16 compute, every ISA level (AVX2 and scalar take the unfused
// fallback inside gemm_bf16_out), 1 and 2 threads.
void test_bf16_epilogue(const std::vector<Isa>& isas) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> U(-1.0f, 1.0f);
  const Shape shapes[] = {{1, 1, 1}, {13, 37, 29}, {64, 96, 512}, {50, 600, 1600}, {200, 33, 2000}, {7, 1100, 300}};
  for (const Shape& sh : shapes)
    for (int r : {0, 3, 16, 40})
      for (int variant = 0; variant < 2; variant++) {
        const bool with_bias = variant == 1, round_first = variant == 0;
        const DType dt = (sh.K % 2 == 0) ? DType::BF16 : DType::F32;
        const Mat A = make_mat(sh.M, sh.K, dt, false, 3, false, rng);
        const Mat B = make_mat(sh.K, sh.N, dt, true, 1, false, rng);   // a transposed (out, in) weight
        std::vector<float> bias((size_t)sh.N), L((size_t)(sh.M * std::max(r, 1))), R((size_t)(std::max(r, 1) * (sh.N + 2)));
        for (auto& x : bias) x = U(rng);
        for (auto& x : L) x = U(rng);
        for (auto& x : R) x = 0.1f * U(rng);
        Bf16Epilogue e;
        e.ldo = sh.N + 4;
        e.bias = with_bias ? bias.data() : nullptr;
        e.round_first = round_first;
        e.r = r; e.L = L.data(); e.ldl = std::max(r, 1); e.R = R.data(); e.ldr = sh.N + 2; e.alpha_lr = 0.75f;
        const Ref ref = naive(A, B);
        GemmOperand a{A.data(), A.dtype, A.rs, A.cs}, b{B.data(), B.dtype, B.rs, B.cs};
        for (GemmCompute compute : {GemmCompute::F32, GemmCompute::Bf16}) {
          if (compute == GemmCompute::Bf16 && dt != DType::BF16) continue;
          for (Isa isa : isas) {
            set_isa_cap(isa);
            for (int nt : {1, 2}) {
              std::vector<uint16_t> got((size_t)(sh.M * e.ldo), 0xBEEF), want((size_t)(sh.M * e.ldo), 0xBEEF);
              e.out = got.data();
              gemm_bf16_out(sh.M, sh.N, sh.K, a, b, e, nt, compute);
              // unfused: f32 product (same kernel set), then the portable epilogue over it
              std::vector<float> P((size_t)(sh.M * sh.N));
              gemm_f32(sh.M, sh.N, sh.K, a, b, P.data(), sh.N, 1.0f, 0.0f, nt, compute);
              Bf16Epilogue e2 = e;
              e2.out = want.data();
              gemm::epi_bf16_generic(e2, P.data(), sh.N, 0, 0, (int)sh.M, (int)sh.N, nullptr, 0);
              g_checks++;
              bool ok = true;
              for (int64_t i = 0; i < sh.M && ok; i++)
                for (int64_t j = 0; j < e.ldo && ok; j++) {
                  const uint16_t g = got[i * e.ldo + j], w = want[i * e.ldo + j];
                  if (j >= sh.N) {
                    if (g != 0xBEEF) { std::printf("FAIL bf16_out: wrote padding at (%ld,%ld)\n", (long)i, (long)j); ok = false; }
                    continue;
                  }
                  // f64 reference of the whole epilogue, within bf16 rounding (+ rounding of the base)
                  double v = ref.ab[i * sh.N + j] + (with_bias ? bias[j] : 0.0);
                  double lr = 0.0;
                  for (int k = 0; k < r; k++) lr += (double)L[i * e.ldl + k] * R[k * e.ldr + j];
                  const double full = v + 0.75 * lr;
                  const double tol = 1e-5 * std::sqrt((double)sh.K + 1.0) * ref.absab[i * sh.N + j] +
                                     (std::fabs(v) + std::fabs(full)) * (1.0 / 256.0) + 1e-6;
                  // bit-exact where the fused vector epilogue runs (AVX-512); the other ISAs compose the
                  // same steps with their GEMM kernels (their K = r product may round differently)
                  if ((isa == Isa::Avx512 && g != w) || !(std::fabs(bf16_to_f32(g) - full) <= tol)) {
                    std::printf("FAIL bf16_out M=%ld N=%ld K=%ld r=%d bias=%d round=%d compute=%d isa=%s nt=%d at (%ld,%ld): "
                                "got %04x (%.6g) unfused %04x (%.6g) f64 %.6g\n", (long)sh.M, (long)sh.N, (long)sh.K, r,
                                (int)with_bias, (int)round_first, (int)compute, isa_name(isa), nt, (long)i, (long)j, g,
                                bf16_to_f32(g), w, bf16_to_f32(w), full);
                    ok = false;
                  }
                }
              if (!ok) g_failures++;
            }
          }
        }
      }
}

int main() {
  if (num_threads() < 2) set_num_threads(2);  // exercise the 2-thread partition even on 1 core
  std::vector<Isa> isas;
  const Isa hw = cpu_isa();
  for (int i = 0; i <= (int)hw; i++) isas.push_back((Isa)i);
  std::printf("gemm_test: ISA levels:");
  for (Isa i : isas) std::printf(" %s", isa_name(i));
  std::printf(" (threads in pool: %d)\n", num_threads());

  test_degenerate(isas);
  test_generic_strides(isas);
  test_custom_loader(isas);
  test_f64();
  test_bf16_helpers();
  test_f32_shapes(isas);
  test_bf16_compute(isas);
  test_thread_invariance(isas);
  test_bf16_epilogue(isas);
  set_isa_cap(hw);

  std::printf("gemm_test: %d checks, %d failures -> %s\n", g_checks, g_failures, g_failures ? "FAIL" : "OK");
  return g_failures ? 1 : 0;
}
