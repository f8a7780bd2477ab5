// attention_test.cpp — correctness test of pk::attention_forward / attention_backward.
//
// Reference: a naive f64 implementation written here (materialise the T×S scores, mask, softmax,
// matmul; backward via dS = P∘(dP − rowsum(P∘dP))), run on the values the kernel actually sees
// (inputs rounded to their dtype). Covers causal T == S, KV-cache T < S, non-causal, GQA
// (Hq=4/Hkv=2, Hq=8/Hkv=1), left/right key padding incl. fully padded query rows, sliding window,
// non-contiguous inputs, bf16/f16/f64, odd sizes (T=1, S=17, D=16/64/80, Dv != D), both backward
// modes (thread counts 1 and 2 with few/many kv heads), every ISA level the CPU has, a long
// sequence (T=S=2048) forward checked row-by-row, a finite-difference gradient check in f64,
// sequence packing (segment ids: packed rows straddling blocks, with padding / KV cache / window /
// softcap, arbitrary ids, each example equal to the example run alone), and bad inputs ->
// pk::Error with a clear message.
// The bf16 path (attention_bf16.cpp, on CPUs with AVX512_BF16) gets its own cases: every feature
// above, odd sizes (odd D/Dv/T/S, odd KV-cache offset), strided inputs, both backward modes and
// partial requests, each checked element by element against bounds derived from its bf16
// rounding of P and dS (see magnitudes()) and against the f32 path's error on the same inputs;
// plus its kernels (pair GEMM, fused softmax steps, packers) against scalar loops.
//
// Build and run (CMake: -DPEFTKIT_NATIVE_TESTS=ON, target attention_test), or by hand from the
// repository root (the ISA files need their flags, as CMakeLists.txt gives):
//   F512="-mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -mavx2 -mfma -mf16c"
//   g++ -O3 -std=c++17 -Icsrc -c csrc/cpu/attention_avx512.cpp $F512 -o /tmp/a512.o
//   g++ -O3 -std=c++17 -Icsrc -c csrc/cpu/attention_bf16_avx512.cpp $F512 -o /tmp/ab512.o
//   g++ -O3 -std=c++17 -Icsrc -c csrc/cpu/attention_avx2.cpp -mavx2 -mfma -mf16c -o /tmp/a2.o
//   g++ -O2 -std=c++17 -Icsrc csrc/core/*.cpp csrc/cpu/cpu_common.cpp csrc/cpu/attention.cpp
//       csrc/cpu/attention_bf16.cpp csrc/tests/attention_test.cpp /tmp/a512.o /tmp/ab512.o /tmp/a2.o
//       -o /tmp/attention_test -lpthread
//   /tmp/attention_test            -> exit 0 on success
//   /tmp/attention_test bench 2    -> timings on 2 threads
//   /tmp/attention_test bench 1 bf16 -> only the bf16 training shape (for profiling)
#include "expect.h"
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/cpu_features.h"
#include "core/parallel.h"
#include "core/tensor.h"
#include "cpu/attention.h"
#include "cpu/attention_kernels.h"

using namespace pk;

namespace {

const double kInf = std::numeric_limits<double>::infinity();


// ---- tensors <-> f64 vectors ----
Tensor from_values(const Shape& shape, const std::vector<double>& vals, DType dt) {
  Tensor t = Tensor::empty(shape, dt);
  char* p = (char*)t.raw();
  for (size_t i = 0; i < vals.size(); i++) store_from_double(p + i * dtype_size(dt), dt, vals[i]);
  return t;
}
std::vector<double> values(const Tensor& t) {
  Tensor c = t.contiguous();
  std::vector<double> r((size_t)c.numel());
  const char* p = (const char*)c.raw();
  for (size_t i = 0; i < r.size(); i++) r[i] = load_as_double(p + i * dtype_size(c.dtype()), c.dtype());
  return r;
}
std::vector<double> randn(int64_t n, std::mt19937& rng, double sd = 1.0) {
  std::normal_distribution<double> N(0.0, sd);
  std::vector<double> r((size_t)n);
  for (auto& x : r) x = N(rng);
  return r;
}
// Round-trip through dtype so the reference sees what the kernel sees.
std::vector<double> rounded(const std::vector<double>& v, DType dt) {
  return values(from_values({(int64_t)v.size()}, v, dt));
}

// ---- naive f64 reference ----
struct Problem {
  int64_t B, Hq, Hkv, T, S, D, Dv;
  bool causal = true;
  int64_t window = 0;
  double scale = 0;                 // 0 -> 1/sqrt(D)
  double softcap = 0;
  std::vector<uint8_t> mask;        // empty or B*S
  std::vector<int64_t> seg;         // empty or B*S segment ids (sequence packing)
  bool seg_i32 = false;             // pass the ids as i32 instead of i64
};

// Packed segment ids: row b holds examples of lengths rows[b] (ids 1, 2, ...), then `pad_id`.
std::vector<int64_t> packed_segs(const std::vector<std::vector<int64_t>>& rows, int64_t S, int64_t pad_id = 0) {
  std::vector<int64_t> out;
  for (const auto& lens : rows) {
    std::vector<int64_t> r((size_t)S, pad_id);
    int64_t o = 0, id = 1;
    for (int64_t L : lens) { for (int64_t t = 0; t < L; t++) r[(size_t)(o + t)] = id; o += L; id++; }
    out.insert(out.end(), r.begin(), r.end());
  }
  return out;
}

bool visible(const Problem& p, int64_t b, int64_t i, int64_t j) {
  const int64_t pos = p.S - p.T + i;
  if (p.causal && j > pos) return false;
  if (p.window > 0 && pos - j >= p.window) return false;
  if (!p.mask.empty() && !p.mask[(size_t)(b * p.S + j)]) return false;
  if (!p.seg.empty() && p.seg[(size_t)(b * p.S + j)] != p.seg[(size_t)(b * p.S + pos)]) return false;
  return true;
}

struct RefOut { std::vector<double> out, lse, dq, dk, dv; };

// Probabilities of one (b, h, i) row: p[j] (0 where masked); returns lse (-inf if empty).
// fac[j] = d(score)/d(scale·q·k) (1, or 1 - tanh² under soft-capping).
double ref_row(const Problem& p, const std::vector<double>& q, const std::vector<double>& k, int64_t b, int64_t h,
               int64_t i, std::vector<double>& pr, std::vector<double>* fac = nullptr) {
  if (fac) fac->assign((size_t)p.S, 1.0);
  const int64_t kvh = h / (p.Hq / p.Hkv);
  pr.assign((size_t)p.S, 0.0);
  double mx = -kInf;
  for (int64_t j = 0; j < p.S; j++) {
    if (!visible(p, b, i, j)) { pr[(size_t)j] = -kInf; continue; }
    double s = 0;
    for (int64_t d = 0; d < p.D; d++)
      s += q[(size_t)(((b * p.Hq + h) * p.T + i) * p.D + d)] * k[(size_t)(((b * p.Hkv + kvh) * p.S + j) * p.D + d)];
    s *= p.scale;
    if (p.softcap > 0) {
      const double t = std::tanh(s / p.softcap);
      s = p.softcap * t;
      if (fac) (*fac)[(size_t)j] = 1 - t * t;
    }
    pr[(size_t)j] = s;
    mx = std::max(mx, s);
  }
  if (mx == -kInf) { pr.assign((size_t)p.S, 0.0); return -kInf; }
  double sum = 0;
  for (auto& x : pr) { x = x == -kInf ? 0.0 : std::exp(x - mx); sum += x; }
  for (auto& x : pr) x /= sum;
  return mx + std::log(sum);
}

RefOut reference(const Problem& p, const std::vector<double>& q, const std::vector<double>& k,
                 const std::vector<double>& v, const std::vector<double>& dout) {
  RefOut r;
  r.out.assign((size_t)(p.B * p.Hq * p.T * p.Dv), 0);
  r.lse.assign((size_t)(p.B * p.Hq * p.T), 0);
  r.dq.assign(q.size(), 0); r.dk.assign(k.size(), 0); r.dv.assign(v.size(), 0);
  std::vector<double> pr, dp, fac;
  for (int64_t b = 0; b < p.B; b++)
    for (int64_t h = 0; h < p.Hq; h++) {
      const int64_t kvh = h / (p.Hq / p.Hkv);
      for (int64_t i = 0; i < p.T; i++) {
        const size_t row = (size_t)((b * p.Hq + h) * p.T + i);
        r.lse[row] = ref_row(p, q, k, b, h, i, pr, &fac);
        for (int64_t j = 0; j < p.S; j++)
          for (int64_t e = 0; e < p.Dv; e++)
            r.out[row * p.Dv + e] += pr[(size_t)j] * v[(size_t)(((b * p.Hkv + kvh) * p.S + j) * p.Dv + e)];
        if (dout.empty()) continue;
        // dP = dO·Vᵀ, dS = P∘(dP − Σ P∘dP)
        dp.assign((size_t)p.S, 0);
        double dsum = 0;
        for (int64_t j = 0; j < p.S; j++) {
          for (int64_t e = 0; e < p.Dv; e++)
            dp[(size_t)j] += dout[row * p.Dv + e] * v[(size_t)(((b * p.Hkv + kvh) * p.S + j) * p.Dv + e)];
          dsum += pr[(size_t)j] * dp[(size_t)j];
        }
        for (int64_t j = 0; j < p.S; j++) {
          const double P = pr[(size_t)j];
          const double ds = P * (dp[(size_t)j] - dsum) * fac[(size_t)j];
          const size_t kr = (size_t)((b * p.Hkv + kvh) * p.S + j);
          for (int64_t e = 0; e < p.Dv; e++) r.dv[kr * p.Dv + e] += P * dout[row * p.Dv + e];
          for (int64_t d = 0; d < p.D; d++) {
            r.dq[row * p.D + d] += p.scale * ds * k[kr * p.D + d];
            r.dk[kr * p.D + d] += p.scale * ds * q[row * p.D + d];
          }
        }
      }
    }
  return r;
}

// max |a-b| / max(1, max|b|)
double rel_err(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return kInf;
  double m = 0, s = 1;
  for (size_t i = 0; i < a.size(); i++) {
    if (std::isinf(b[i]) || std::isinf(a[i])) {
      if (a[i] != b[i]) return kInf;
      continue;
    }
    if (std::isnan(a[i])) return kInf;
    m = std::max(m, std::abs(a[i] - b[i]));
    s = std::max(s, std::abs(b[i]));
  }
  return m / s;
}

Tensor mask_tensor(const Problem& p) {
  if (p.mask.empty()) return Tensor();
  Tensor m = Tensor::empty({p.B, p.S}, DType::U8);
  std::memcpy(m.raw(), p.mask.data(), p.mask.size());
  return m;
}

Tensor seg_tensor(const Problem& p) {
  if (p.seg.empty()) return Tensor();
  Tensor m = Tensor::empty({p.B, p.S}, DType::I64);
  std::memcpy(m.raw(), p.seg.data(), p.seg.size() * sizeof(int64_t));
  return p.seg_i32 ? m.to(DType::I32) : m;
}

// Make a (B,H,L,E) tensor of `dt` holding vals; transposed=true builds it as a (B,L,H,E) buffer
// viewed through transpose(1,2), i.e. the non-contiguous layout HF attention gets.
Tensor make_input(const std::vector<double>& vals, int64_t B, int64_t H, int64_t L, int64_t E, DType dt, bool transposed) {
  if (!transposed) return from_values({B, H, L, E}, vals, dt);
  std::vector<double> t(vals.size());
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t l = 0; l < L; l++)
        for (int64_t e = 0; e < E; e++)
          t[(size_t)(((b * L + l) * H + h) * E + e)] = vals[(size_t)(((b * H + h) * L + l) * E + e)];
  Tensor x = from_values({B, L, H, E}, t, dt).transpose(1, 2);
  return x;
}

void run_case(const char* name, Problem p, DType dt, bool transposed, uint32_t seed, bool check_bwd = true) {
  if (p.scale == 0) p.scale = 1.0 / std::sqrt((double)p.D);
  std::mt19937 rng(seed);
  auto qv = rounded(randn(p.B * p.Hq * p.T * p.D, rng), dt);
  auto kv = rounded(randn(p.B * p.Hkv * p.S * p.D, rng), dt);
  auto vv = rounded(randn(p.B * p.Hkv * p.S * p.Dv, rng), dt);
  auto dov = rounded(randn(p.B * p.Hq * p.T * p.Dv, rng), dt);
  Tensor q = make_input(qv, p.B, p.Hq, p.T, p.D, dt, transposed);
  Tensor k = make_input(kv, p.B, p.Hkv, p.S, p.D, dt, transposed);
  Tensor v = make_input(vv, p.B, p.Hkv, p.S, p.Dv, dt, transposed);
  Tensor dout = make_input(dov, p.B, p.Hq, p.T, p.Dv, dt, transposed);
  Tensor mask = mask_tensor(p), seg = seg_tensor(p);
  RefOut ref = reference(p, qv, kv, vv, check_bwd ? dov : std::vector<double>());

  const double tol_f = dt == DType::F64 ? 1e-11 : dt == DType::F32 ? 2e-5 : dt == DType::BF16 ? 1.6e-2 : 2e-3;
  const double tol_b = dt == DType::F64 ? 1e-10 : dt == DType::F32 ? 1e-4 : dt == DType::BF16 ? 3e-2 : 4e-3;

  std::vector<Isa> isas{Isa::Scalar};
  if (dt != DType::F64) {  // f64 always runs the portable kernels
    const Isa hw = cpu_isa();
    if ((int)hw >= (int)Isa::Avx2) isas.push_back(Isa::Avx2);
    if ((int)hw >= (int)Isa::Avx512) isas.push_back(Isa::Avx512);
  }
  const int nt = num_threads();
  for (Isa isa : isas) {
      set_isa_cap(isa);
      Tensor lse;
      Tensor out = attention_forward(q, k, v, mask, p.causal, p.window, p.scale, &lse, p.softcap, seg);
      EXPECT(out.dtype() == dt && out.shape() == Shape({p.B, p.Hq, p.T, p.Dv}), "%s: out %s", name, out.desc().c_str());
      EXPECT(lse.shape() == Shape({p.B, p.Hq, p.T}) && lse.dtype() == (dt == DType::F64 ? DType::F64 : DType::F32),
             "%s: lse %s", name, lse.desc().c_str());
      double eo = rel_err(values(out), ref.out), el = rel_err(values(lse), ref.lse);
      EXPECT(eo <= tol_f, "%s [%s, %d thr]: forward out error %.3g > %.3g", name, isa_name(isa), nt, eo, tol_f);
      EXPECT(el <= tol_f * 4, "%s [%s, %d thr]: lse error %.3g", name, isa_name(isa), nt, el);
      if (!check_bwd) continue;
      Tensor dq, dk, dvv;
      attention_backward(q, k, v, mask, out, lse, dout, p.causal, p.window, p.scale, &dq, &dk, &dvv, p.softcap, seg);
      EXPECT(dq.dtype() == dt && dq.shape() == q.shape() && dk.shape() == k.shape() && dvv.shape() == v.shape(),
             "%s: grad shapes/dtypes", name);
      double eq = rel_err(values(dq), ref.dq), ek = rel_err(values(dk), ref.dk), ev = rel_err(values(dvv), ref.dv);
      EXPECT(eq <= tol_b && ek <= tol_b && ev <= tol_b, "%s [%s, %d thr]: backward errors dq %.3g dk %.3g dv %.3g > %.3g",
             name, isa_name(isa), nt, eq, ek, ev, tol_b);
      // Partial requests (only dq / only dk,dv) take other code paths.
      Tensor dq2, dk2;
      attention_backward(q, k, v, mask, out, lse, dout, p.causal, p.window, p.scale, &dq2, nullptr, nullptr, p.softcap, seg);
      attention_backward(q, k, v, mask, out, lse, dout, p.causal, p.window, p.scale, nullptr, &dk2, nullptr, p.softcap, seg);
      EXPECT(rel_err(values(dq2), ref.dq) <= tol_b && rel_err(values(dk2), ref.dk) <= tol_b,
             "%s [%s, %d thr]: partial backward mismatch", name, isa_name(isa), nt);
    }
  set_isa_cap(Isa::Avx512);
  std::printf("ok  %-44s %s%s\n", name, dtype_name(dt), transposed ? " (strided)" : "");
}

// ---- the bf16 path (attention_bf16.cpp: bf16 inputs on CPUs with AVX512_BF16) ----
//
// That path rounds the probabilities P and the score gradients dS to bf16 before their products
// (f32 accumulation), so it is checked element by element against bounds built from that
// rounding, with the f64 reference computed here on the same (bf16) inputs:
//   out:  |out - ref| <= u·(Σ_j p_j·|v_j| + |ref|)                 P rounded, then out rounded
//   dV:   |dV - ref|  <= u·(Σ_i p_ij·|dO_i| + |ref|)               P rounded, then dV rounded
//   dK:   |dK - ref|  <= u·(s·Σ_i |dS_ij|·|q_i| + |ref|) + s·Σ_i p_ij·f_ij·|ΔD_i|·|q_i|
//   dQ:   |dQ - ref|  <= u·(s·Σ_j |dS_ij|·|k_j| + |ref|) + s·Σ_j p_ij·f_ij·|ΔD_i|·|k_j|
// with u = 2^-8 (bf16 round-to-nearest-even), s the scale, f the soft-capping factor and ΔD_i the
// error of rowsum(dO∘out) that comes from the out the backward is given (the forward's bf16
// output) — the f32 path carries that term too. Each bound also gets the f32 path's own
// tolerance (relative to max(1, max|ref|)) for its f32 arithmetic. The result must also stay
// within a small factor of the f32 path's error on the same inputs.
struct Mags { std::vector<double> out, dq1, dq2, dk1, dk2, dv1; };

Mags magnitudes(const Problem& p, const std::vector<double>& q, const std::vector<double>& k,
                const std::vector<double>& v, const std::vector<double>& dout, const RefOut& ref,
                const std::vector<double>& out_given) {
  Mags m;
  m.out.assign(ref.out.size(), 0);
  m.dq1.assign(q.size(), 0); m.dq2.assign(q.size(), 0);
  m.dk1.assign(k.size(), 0); m.dk2.assign(k.size(), 0);
  m.dv1.assign(v.size(), 0);
  std::vector<double> pr, dp, fac;
  for (int64_t b = 0; b < p.B; b++)
    for (int64_t h = 0; h < p.Hq; h++) {
      const int64_t kvh = h / (p.Hq / p.Hkv);
      for (int64_t i = 0; i < p.T; i++) {
        const size_t row = (size_t)((b * p.Hq + h) * p.T + i);
        ref_row(p, q, k, b, h, i, pr, &fac);
        double dD = 0, dDn = 0;  // ΔD_i, and a 1e-5 relative margin for its f32 sum
        for (int64_t e = 0; e < p.Dv; e++) {
          dD += dout[row * p.Dv + e] * (out_given[row * p.Dv + e] - ref.out[row * p.Dv + e]);
          dDn += std::abs(dout[row * p.Dv + e] * out_given[row * p.Dv + e]);
        }
        dD = std::abs(dD) + 1e-5 * dDn;
        dp.assign((size_t)p.S, 0);
        double dsum = 0;
        for (int64_t j = 0; j < p.S; j++) {
          for (int64_t e = 0; e < p.Dv; e++)
            dp[(size_t)j] += dout[row * p.Dv + e] * v[(size_t)(((b * p.Hkv + kvh) * p.S + j) * p.Dv + e)];
          dsum += pr[(size_t)j] * dp[(size_t)j];
        }
        for (int64_t j = 0; j < p.S; j++) {
          const double P = pr[(size_t)j];
          if (P == 0) continue;
          const double ads = std::abs(P * (dp[(size_t)j] - dsum) * fac[(size_t)j]), pd = P * fac[(size_t)j] * dD;
          const size_t kr = (size_t)((b * p.Hkv + kvh) * p.S + j);
          for (int64_t e = 0; e < p.Dv; e++) {
            m.out[row * p.Dv + e] += P * std::abs(v[kr * p.Dv + e]);
            m.dv1[kr * p.Dv + e] += P * std::abs(dout[row * p.Dv + e]);
          }
          for (int64_t d = 0; d < p.D; d++) {
            m.dq1[row * p.D + d] += p.scale * ads * std::abs(k[kr * p.D + d]);
            m.dq2[row * p.D + d] += p.scale * pd * std::abs(k[kr * p.D + d]);
            m.dk1[kr * p.D + d] += p.scale * ads * std::abs(q[row * p.D + d]);
            m.dk2[kr * p.D + d] += p.scale * pd * std::abs(q[row * p.D + d]);
          }
        }
      }
    }
  return m;
}

// Largest |x - ref| / (u·(m1 + |ref|) + m2 + f32_tol·max(1, max|ref|)) (m2 may be empty); <= 1 passes.
double bound_ratio(const std::vector<double>& x, const std::vector<double>& ref, const std::vector<double>& m1,
                   const std::vector<double>* m2, double f32_tol) {
  const double u = 1.0 / 256;
  double mx = 1, worst = 0;
  for (double r : ref) if (std::isfinite(r)) mx = std::max(mx, std::abs(r));
  for (size_t i = 0; i < x.size(); i++) {
    if (std::isinf(ref[i]) || std::isnan(x[i])) { if (x[i] != ref[i]) return kInf; continue; }
    const double tol = 1.01 * u * (m1[i] + std::abs(ref[i])) + (m2 ? 1.01 * (*m2)[i] : 0.0) + f32_tol * mx;
    worst = std::max(worst, std::abs(x[i] - ref[i]) / tol);
  }
  return worst;
}

bool bf16_path_here() { return cpu_isa() == Isa::Avx512 && cpu_features().avx512bf16; }

struct PathErr { double out = 0, lse = 0, dq = 0, dk = 0, dv = 0; };

// Forward + backward at the current ISA cap; errors against ref (rel_err); the outputs in *o.
PathErr run_path(const Problem& p, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout,
                 const RefOut& ref, std::vector<std::vector<double>>* o) {
  const Tensor mask = mask_tensor(p), seg = seg_tensor(p);
  Tensor lse, dq, dk, dv;
  Tensor out = attention_forward(q, k, v, mask, p.causal, p.window, p.scale, &lse, p.softcap, seg);
  attention_backward(q, k, v, mask, out, lse, dout, p.causal, p.window, p.scale, &dq, &dk, &dv, p.softcap, seg);
  EXPECT(out.dtype() == DType::BF16 && lse.dtype() == DType::F32 && dq.dtype() == DType::BF16 &&
         dk.dtype() == DType::BF16 && dv.dtype() == DType::BF16 && dq.shape() == q.shape() &&
         dk.shape() == k.shape() && dv.shape() == v.shape() && out.shape() == Shape({p.B, p.Hq, p.T, p.Dv}),
         "bf16 outputs: out %s lse %s dq %s dk %s dv %s", out.desc().c_str(), lse.desc().c_str(), dq.desc().c_str(),
         dk.desc().c_str(), dv.desc().c_str());
  *o = {values(out), values(lse), values(dq), values(dk), values(dv)};
  PathErr e;
  e.out = rel_err((*o)[0], ref.out); e.lse = rel_err((*o)[1], ref.lse);
  e.dq = rel_err((*o)[2], ref.dq); e.dk = rel_err((*o)[3], ref.dk); e.dv = rel_err((*o)[4], ref.dv);
  return e;
}

// Worst error ratio bf16 path / f32 path seen over all cases (printed at the end).
double g_worst_vs_f32 = 0;

void run_bf16_case(const char* name, Problem p, bool transposed, uint32_t seed) {
  if (!bf16_path_here()) return;
  if (p.scale == 0) p.scale = 1.0 / std::sqrt((double)p.D);
  const DType dt = DType::BF16;
  std::mt19937 rng(seed);
  auto qv = rounded(randn(p.B * p.Hq * p.T * p.D, rng), dt);
  auto kv = rounded(randn(p.B * p.Hkv * p.S * p.D, rng), dt);
  auto vv = rounded(randn(p.B * p.Hkv * p.S * p.Dv, rng), dt);
  auto dov = rounded(randn(p.B * p.Hq * p.T * p.Dv, rng), dt);
  Tensor q = make_input(qv, p.B, p.Hq, p.T, p.D, dt, transposed);
  Tensor k = make_input(kv, p.B, p.Hkv, p.S, p.D, dt, transposed);
  Tensor v = make_input(vv, p.B, p.Hkv, p.S, p.Dv, dt, transposed);
  Tensor dout = make_input(dov, p.B, p.Hq, p.T, p.Dv, dt, transposed);
  const RefOut ref = reference(p, qv, kv, vv, dov);
  const int nt = num_threads();

  // The f32 path on the same bf16 inputs (the best ISA below AVX-512 that this CPU has).
  std::vector<std::vector<double>> o32, o16;
  set_isa_cap((int)cpu_isa() >= (int)Isa::Avx2 ? Isa::Avx2 : Isa::Scalar);
  const PathErr e32 = run_path(p, q, k, v, dout, ref, &o32);
  set_isa_cap(Isa::Avx512);
  const PathErr e16 = run_path(p, q, k, v, dout, ref, &o16);

  // Element-wise bounds (see above); f32 tolerances as in run_case.
  const Mags m = magnitudes(p, qv, kv, vv, dov, ref, o16[0]);
  const double ro = bound_ratio(o16[0], ref.out, m.out, nullptr, 2e-5);
  const double rq = bound_ratio(o16[2], ref.dq, m.dq1, &m.dq2, 1e-4);
  const double rk = bound_ratio(o16[3], ref.dk, m.dk1, &m.dk2, 1e-4);
  const double rv = bound_ratio(o16[4], ref.dv, m.dv1, nullptr, 1e-4);
  EXPECT(ro <= 1 && rq <= 1 && rk <= 1 && rv <= 1, "%s [bf16 path, %d thr]: error / bound out %.3g dq %.3g dk %.3g dv %.3g",
         name, nt, ro, rq, rk, rv);
  EXPECT(e16.lse <= 1e-5, "%s [bf16 path]: lse error %.3g (the softmax stays f32)", name, e16.lse);
  // No worse than the f32 path by more than a small factor (floor: bf16's own resolution 2^-9).
  double worst = 0;
  const double pairs[4][2] = {{e16.out, e32.out}, {e16.dq, e32.dq}, {e16.dk, e32.dk}, {e16.dv, e32.dv}};
  for (const auto& pr : pairs) worst = std::max(worst, pr[0] / std::max(pr[1], 1.0 / 512));
  g_worst_vs_f32 = std::max(g_worst_vs_f32, worst);
  EXPECT(worst <= 2.5, "%s: bf16 path error up to %.2fx the f32 path's (out %.3g/%.3g dq %.3g/%.3g dk %.3g/%.3g dv %.3g/%.3g)",
         name, worst, e16.out, e32.out, e16.dq, e32.dq, e16.dk, e32.dk, e16.dv, e32.dv);

  // Partial requests take other task partitions (dq alone: per query block; dk or dv alone).
  const Tensor mask = mask_tensor(p), seg = seg_tensor(p);
  Tensor lse;
  Tensor out = attention_forward(q, k, v, mask, p.causal, p.window, p.scale, &lse, p.softcap, seg);
  Tensor dq2, dk2, dv2;
  attention_backward(q, k, v, mask, out, lse, dout, p.causal, p.window, p.scale, &dq2, nullptr, nullptr, p.softcap, seg);
  attention_backward(q, k, v, mask, out, lse, dout, p.causal, p.window, p.scale, nullptr, &dk2, nullptr, p.softcap, seg);
  attention_backward(q, k, v, mask, out, lse, dout, p.causal, p.window, p.scale, nullptr, nullptr, &dv2, p.softcap, seg);
  const double pq = bound_ratio(values(dq2), ref.dq, m.dq1, &m.dq2, 1e-4);
  const double pk = bound_ratio(values(dk2), ref.dk, m.dk1, &m.dk2, 1e-4);
  const double pv = bound_ratio(values(dv2), ref.dv, m.dv1, nullptr, 1e-4);
  EXPECT(pq <= 1 && pk <= 1 && pv <= 1, "%s [bf16 path]: partial backward error / bound dq %.3g dk %.3g dv %.3g", name, pq,
         pk, pv);
  std::printf("ok  %-44s bf16 path%s: err/bound <= %.2f; err out %.2g dq %.2g dk %.2g dv %.2g (f32 path %.2g %.2g %.2g %.2g)\n",
              name, transposed ? " (strided)" : "", std::max({ro, rq, rk, rv}), e16.out, e16.dq, e16.dk, e16.dv, e32.out,
              e32.dq, e32.dk, e32.dv);
}

// The AVX512-BF16 primitives against scalar loops: pair GEMM (ragged M/N, strided A, alpha,
// accumulate), rounding of results (bit-exact vs f32_to_bf16), the fused softmax steps (P and dS
// within bf16 rounding of f64 values) and the pair packers.
void check_bf16_kernels() {
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(PEFTKIT_NO_SIMD_KERNELS)
  if (!bf16_path_here()) { std::printf("--  %-44s (no AVX512_BF16 here)\n", "bf16 kernels"); return; }
  const attn::AttnBf16Kernels& K = attn::attn_bf16_kernels_avx512();
  std::mt19937 rng(77);
  std::normal_distribution<float> N(0.f, 1.f);
  auto bf = [&] { return f32_to_bf16(N(rng)); };
  bool ok = true;
  // gemm: C (M,N) = alpha·Σ_p A_p(m)·B_p(n) (+ C), A read with row stride a_rs and pair stride a_cs.
  for (int64_t M : {1, 5, 6, 13, 64})
    for (int64_t Nn : {1, 16, 17, 50, 64, 70})
      for (int64_t P : {1, 3, 32}) {
        const int64_t a_rs = 2 * P + 6, a_cs = 2, ldb = Nn + 3, ldc = Nn + 1;
        std::vector<uint16_t> A((size_t)(M * a_rs));
        for (auto& x : A) x = bf();
        std::vector<uint32_t> B((size_t)(P * ldb));
        for (auto& w : B) w = (uint32_t)bf() | ((uint32_t)bf() << 16);
        std::vector<float> C((size_t)(M * ldc), 0.5f), C0 = C;
        const bool acc = (M + Nn) % 2 == 0;
        K.gemm(M, Nn, P, A.data() + 1, a_rs, a_cs, B.data(), ldb, C.data(), ldc, 0.75f, acc);
        for (int64_t i = 0; i < M; i++)
          for (int64_t j = 0; j < ldc; j++) {
            double r = 0, mag = 0;
            for (int64_t pp = 0; pp < P; pp++) {
              const uint16_t* a = A.data() + 1 + i * a_rs + pp * a_cs;
              const uint32_t w = B[(size_t)(pp * ldb + j)];
              const double t = (double)bf16_to_f32(a[0]) * bf16_to_f32((uint16_t)w) + (double)bf16_to_f32(a[1]) * bf16_to_f32((uint16_t)(w >> 16));
              r += t; mag += std::abs(t);
            }
            const double want = j >= Nn ? C0[(size_t)(i * ldc + j)] : 0.75 * r + (acc ? 0.5 : 0.0);
            ok &= std::abs(C[(size_t)(i * ldc + j)] - want) <= 1e-6 * (mag + 1);
          }
      }
  EXPECT(ok, "bf16 pair gemm vs scalar");
  // round_rows: bit-exact RNE, zero pad columns.
  for (int64_t rows : {1, 2, 7, 64})
    for (int64_t n : {1, 15, 16, 33, 64}) {
      const int64_t ldx = 70;
      std::vector<float> x((size_t)(rows * ldx));
      for (auto& f : x) f = N(rng) * 3.f;
      x[0] = 1.0f + 1.0f / 256;  // a tie: rounds to even (1.0)
      const int64_t npad = n + (n & 1);
      std::vector<uint16_t> y((size_t)(rows * 66), 0xFFFF);
      K.round_rows(x.data(), ldx, rows, n, npad, y.data(), 66);
      for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < 66; c++) {
          const uint16_t want = c < n ? f32_to_bf16(x[(size_t)(r * ldx + c)]) : c < npad ? 0 : 0xFFFF;
          ok &= y[(size_t)(r * 66 + c)] == want;
        }
    }
  EXPECT(ok, "bf16 rounding of result rows");
  // A bf16 value of P / dS matches the f64 value it rounds within half a bf16 ulp (u = 2^-8
  // relative) plus the exp's f32 error.
  auto near_bf16 = [](uint16_t got, double want) {
    return std::abs(bf16_to_f32(got) - want) <= std::abs(want) * (1.0 / 256 + 1e-6) + 1e-30;
  };
  // softmax_step: rows fresh (m = -inf), continuing (finite m, the max moves or not), and rows
  // that stay empty; ragged bc with a zero pad column.
  for (int64_t br : {1, 5, 8})
    for (int64_t bc : {1, 17, 64}) {
      const int64_t bcp = bc + (bc & 1), lds = 70, dv = 20;
      std::vector<float> sc((size_t)(br * lds)), m((size_t)br), l((size_t)br), O((size_t)(br * dv));
      for (auto& x : sc) x = 2.f * N(rng);
      for (auto& x : O) x = N(rng);
      for (int64_t r = 0; r < br; r++) {
        m[(size_t)r] = r % 3 == 0 ? -__builtin_inff() : r % 3 == 1 ? 0.5f : 9.f;  // 9: max does not move
        l[(size_t)r] = m[(size_t)r] == -__builtin_inff() ? 0.f : 1.5f;
        if (r % 4 == 3)  // nothing visible in this tile
          for (int64_t c = 0; c < bc; c++) sc[(size_t)(r * lds + c)] = -__builtin_inff();
        else if (bc > 2)
          sc[(size_t)(r * lds + 1)] = -__builtin_inff();  // one masked key
      }
      const std::vector<float> m0 = m, l0 = l, O0 = O;
      std::vector<uint16_t> pb((size_t)(br * 66), 0xFFFF);
      K.softmax_step(sc.data(), lds, br, bc, bcp, m.data(), l.data(), O.data(), dv, dv, pb.data(), 66);
      for (int64_t r = 0; r < br; r++) {
        double mx = m0[(size_t)r];
        for (int64_t c = 0; c < bc; c++) mx = std::max(mx, (double)sc[(size_t)(r * lds + c)]);
        const bool live = mx != -kInf;
        const double alpha = live ? std::exp(m0[(size_t)r] - mx) : 1.0;
        double sum = 0;
        for (int64_t c = 0; c < 66; c++) {
          const uint16_t got = pb[(size_t)(r * 66 + c)];
          if (c >= bcp) { ok &= got == 0xFFFF; continue; }
          const double e = c < bc && live ? std::exp((double)sc[(size_t)(r * lds + c)] - mx) : 0.0;
          sum += e;
          ok &= near_bf16(got, e);
        }
        ok &= m[(size_t)r] == (float)mx || (!live && m[(size_t)r] == m0[(size_t)r]);
        ok &= std::abs(l[(size_t)r] - (l0[(size_t)r] * alpha + sum)) <= 1e-5 * (l0[(size_t)r] * alpha + sum);
        for (int64_t x = 0; x < dv; x++)
          ok &= std::abs(O[(size_t)(r * dv + x)] - O0[(size_t)(r * dv + x)] * alpha) <= 1e-6 * std::abs(O0[(size_t)(r * dv + x)]);
      }
    }
  EXPECT(ok, "bf16 softmax_step (max, exp, sum, rescale, rounding of P)");
  // grad_tile: P, dS (with and without the soft-capping factor) as pairs of rows and rows; odd
  // br / bc, an empty row (L = +inf), masked scores.
  for (int64_t br : {1, 6, 7})
    for (int64_t bc : {1, 16, 33})
      for (bool with_f : {false, true}) {
        const int64_t ld = 40, bcp = bc + (bc & 1);
        std::vector<float> sc((size_t)(br * ld)), dp((size_t)(br * ld)), f((size_t)(br * ld)), L((size_t)br), D((size_t)br);
        for (auto& x : sc) x = N(rng);
        for (auto& x : dp) x = 3.f * N(rng);
        for (auto& x : f) x = 0.5f + 0.1f * N(rng);
        for (int64_t r = 0; r < br; r++) {
          L[(size_t)r] = r == 2 ? __builtin_inff() : 1.5f + 0.2f * N(rng);
          D[(size_t)r] = N(rng);
          if (bc > 3) sc[(size_t)(r * ld + 3)] = -__builtin_inff();
        }
        const int64_t brh = (br + 1) / 2;
        std::vector<uint32_t> pt((size_t)(brh * 40), 7u), dst((size_t)(brh * 40), 7u);
        std::vector<uint16_t> dsb((size_t)(br * 40), 0xFFFF);
        K.grad_tile(sc.data(), dp.data(), with_f ? f.data() : nullptr, ld, br, bc, L.data(), D.data(), pt.data(),
                    dst.data(), 40, dsb.data(), bcp, 40);
        auto P = [&](int64_t r, int64_t c) {
          return r < br && c < bc ? std::exp((double)sc[(size_t)(r * ld + c)] - L[(size_t)r]) : 0.0;
        };
        auto dS = [&](int64_t r, int64_t c) {
          if (r >= br || c >= bc) return 0.0;
          return P(r, c) * ((double)dp[(size_t)(r * ld + c)] - D[(size_t)r]) * (with_f ? f[(size_t)(r * ld + c)] : 1.0);
        };
        for (int64_t r = 0; r < br; r++)
          for (int64_t c = 0; c < 40; c++) {
            const uint16_t got = dsb[(size_t)(r * 40 + c)];
            ok &= c < bcp ? near_bf16(got, dS(r, c)) : got == 0xFFFF;
          }
        for (int64_t q = 0; q < brh; q++)
          for (int64_t c = 0; c < 40; c++) {
            const uint32_t wp = pt[(size_t)(q * 40 + c)], wd = dst[(size_t)(q * 40 + c)];
            if (c >= bc) { ok &= wp == 7u && wd == 7u; continue; }
            ok &= near_bf16((uint16_t)wp, P(2 * q, c)) && near_bf16((uint16_t)(wp >> 16), P(2 * q + 1, c));
            ok &= near_bf16((uint16_t)wd, dS(2 * q, c)) && near_bf16((uint16_t)(wd >> 16), dS(2 * q + 1, c));
          }
      }
  EXPECT(ok, "bf16 grad_tile (P, dS and their bf16 operands)");
  // pack_col_pairs / pack_row_pairs from a strided bf16 matrix; dot.
  for (int64_t R : {1, 15, 16, 17, 130})
    for (int64_t C : {2, 16, 32, 34, 64, 80}) {
      const int64_t rs = C + 10, ldy = R + 5;
      std::vector<uint16_t> x((size_t)(R * rs));
      for (auto& e : x) e = bf();
      std::vector<uint32_t> y((size_t)(C / 2 * ldy), 7u);
      K.pack_col_pairs(x.data(), rs, R, C, y.data(), ldy);
      for (int64_t pp = 0; pp < C / 2; pp++)
        for (int64_t r = 0; r < ldy; r++)
          ok &= y[(size_t)(pp * ldy + r)] ==
                (r < R ? (uint32_t)x[(size_t)(r * rs + 2 * pp)] | (uint32_t)x[(size_t)(r * rs + 2 * pp + 1)] << 16 : 7u);
      std::vector<uint32_t> z((size_t)((R + 1) / 2 * (C + 2)), 7u);
      K.pack_row_pairs(x.data(), rs, R, C, z.data(), C + 2);
      for (int64_t r = 0; r < R; r += 2)
        for (int64_t c = 0; c < C + 2; c++) {
          const uint32_t hi = r + 1 < R ? x[(size_t)((r + 1) * rs + c)] : 0;
          ok &= z[(size_t)(r / 2 * (C + 2) + c)] == (c < C ? (uint32_t)x[(size_t)(r * rs + c)] | hi << 16 : 7u);
        }
      double d = 0, mag = 0;
      for (int64_t c = 0; c < C; c++) {
        const double t = (double)bf16_to_f32(x[(size_t)c]) * bf16_to_f32(x[(size_t)(rs + c)] );
        d += t; mag += std::abs(t);
      }
      if (R > 1) ok &= std::abs(K.dot(x.data(), x.data() + rs, C) - d) <= 1e-6 * (mag + 1);
    }
  EXPECT(ok, "bf16 pair packers / dot");
  std::printf("ok  %-44s\n", "bf16 kernels (gemm, softmax steps, packers)");
#endif
}

// Fully-masked query rows: out = 0, lse = -inf, zero gradients, no NaN anywhere (f32, and bf16
// which takes the bf16 path where the CPU has AVX512_BF16).
void check_empty_rows(DType dt) {
  Problem p{2, 2, 1, 12, 12, 16, 16};
  p.scale = 0.25;
  p.mask.assign(24, 1);
  for (int j = 0; j < 5; j++) p.mask[(size_t)j] = 0;          // batch 0: left padding 5
  for (int j = 8; j < 12; j++) p.mask[(size_t)(12 + j)] = 0;  // batch 1: right padding 4
  std::mt19937 rng(7);
  auto qv = randn(2 * 2 * 12 * 16, rng), kv = randn(2 * 12 * 16, rng), vv = randn(2 * 12 * 16, rng);
  Tensor q = from_values({2, 2, 12, 16}, qv, dt), k = from_values({2, 1, 12, 16}, kv, dt),
         v = from_values({2, 1, 12, 16}, vv, dt);
  Tensor lse;
  Tensor out = attention_forward(q, k, v, mask_tensor(p), true, 0, p.scale, &lse);
  auto o = values(out), l = values(lse);
  bool ok = true;
  for (int h = 0; h < 2; h++)
    for (int i = 0; i < 5; i++) {
      ok &= l[(size_t)(h * 12 + i)] == -kInf;
      for (int e = 0; e < 16; e++) ok &= o[(size_t)((h * 12 + i) * 16 + e)] == 0.0;
    }
  for (double x : o) ok &= !std::isnan(x);
  EXPECT(ok, "left-padded rows must give out = 0, lse = -inf (%s)", dtype_name(dt));
  Tensor dq, dk, dv;
  attention_backward(q, k, v, mask_tensor(p), out, lse, Tensor::full({2, 2, 12, 16}, 1.0, dt), true, 0,
                     p.scale, &dq, &dk, &dv);
  auto g = values(dq), gk = values(dk), gv = values(dv);
  bool fin = true;
  for (auto* vec : {&g, &gk, &gv}) for (double x : *vec) fin &= std::isfinite(x);
  for (int h = 0; h < 2; h++)
    for (int i = 0; i < 5 * 16; i++) fin &= g[(size_t)(h * 12 * 16 + i)] == 0.0;
  for (int j = 0; j < 5 * 16; j++) fin &= gk[(size_t)j] == 0.0 && gv[(size_t)j] == 0.0;  // padded keys
  EXPECT(fin, "padded rows/keys must get zero, finite gradients (%s)", dtype_name(dt));
  std::printf("ok  %-44s %s\n", "fully padded query rows", dtype_name(dt));
}

// A packed row of several examples (f32, both ISA paths the CPU has) gives, for each example, the
// same out / lse / gradients as the example run alone — including an example longer than a block
// and ones straddling block boundaries. Keys of other examples get exactly zero gradient from
// them, so the packed gradients are the per-example ones side by side.
void check_packed_vs_alone() {
  const std::vector<int64_t> lens{37, 100, 5, 64, 50};
  int64_t S = 0;
  for (int64_t L : lens) S += L;
  const int64_t H = 4, Hkv = 2, D = 32;
  std::mt19937 rng(23);
  auto qv = randn(H * S * D, rng), kv = randn(Hkv * S * D, rng), vv = randn(Hkv * S * D, rng), dov = randn(H * S * D, rng);
  Tensor q = from_values({1, H, S, D}, qv, DType::F32), k = from_values({1, Hkv, S, D}, kv, DType::F32),
         v = from_values({1, Hkv, S, D}, vv, DType::F32), dout = from_values({1, H, S, D}, dov, DType::F32);
  Problem pp{1, H, Hkv, S, S, D, D};
  pp.seg = packed_segs({lens}, S);
  pp.seg_i32 = true;
  Tensor lse, dq, dk, dv;
  Tensor out = attention_forward(q, k, v, Tensor(), true, 0, 0.2, &lse, 0, seg_tensor(pp));
  attention_backward(q, k, v, Tensor(), out, lse, dout, true, 0, 0.2, &dq, &dk, &dv, 0, seg_tensor(pp));
  double worst = 0;
  int64_t o = 0;
  for (int64_t L : lens) {
    auto part = [&](const Tensor& t) { return t.narrow(2, o, L).contiguous(); };
    Tensor l1, q1, k1, v1;
    Tensor out1 = attention_forward(part(q), part(k), part(v), Tensor(), true, 0, 0.2, &l1);
    attention_backward(part(q), part(k), part(v), Tensor(), out1, l1, part(dout), true, 0, 0.2, &q1, &k1, &v1);
    worst = std::max({worst, rel_err(values(part(out)), values(out1)), rel_err(values(lse.narrow(2, o, L)), values(l1)),
                      rel_err(values(part(dq)), values(q1)), rel_err(values(part(dk)), values(k1)),
                      rel_err(values(part(dv)), values(v1))});
    o += L;
  }
  EXPECT(worst < 1e-5, "packed row vs examples alone: max rel error %.3g", worst);
  std::printf("ok  %-44s max err %.2g\n", "packed row == each example alone", worst);
}

// Central differences of L = Σ out ∘ W in f64 against attention_backward.
void check_fd(double softcap) {
  Problem p{1, 4, 2, 5, 9, 6, 7};
  p.window = 4;
  p.scale = 0.4;
  p.softcap = softcap;
  p.mask = {1, 1, 1, 0, 1, 1, 1, 1, 1};
  std::mt19937 rng(11);
  auto qv = randn(1 * 4 * 5 * 6, rng), kv = randn(2 * 9 * 6, rng), vv = randn(2 * 9 * 7, rng), w = randn(4 * 5 * 7, rng);
  auto loss = [&](const std::vector<double>& a, const std::vector<double>& b, const std::vector<double>& c) {
    Tensor out = attention_forward(from_values({1, 4, 5, 6}, a, DType::F64), from_values({1, 2, 9, 6}, b, DType::F64),
                                   from_values({1, 2, 9, 7}, c, DType::F64), mask_tensor(p), true, p.window, p.scale,
                                   nullptr, p.softcap);
    auto o = values(out);
    double s = 0;
    for (size_t i = 0; i < o.size(); i++) s += o[i] * w[i];
    return s;
  };
  Tensor q = from_values({1, 4, 5, 6}, qv, DType::F64), k = from_values({1, 2, 9, 6}, kv, DType::F64),
         v = from_values({1, 2, 9, 7}, vv, DType::F64);
  Tensor lse;
  Tensor out = attention_forward(q, k, v, mask_tensor(p), true, p.window, p.scale, &lse, p.softcap);
  Tensor dq, dk, dv;
  attention_backward(q, k, v, mask_tensor(p), out, lse, from_values({1, 4, 5, 7}, w, DType::F64), true, p.window,
                     p.scale, &dq, &dk, &dv, p.softcap);
  const double h = 1e-6;
  double worst = 0;
  auto fd = [&](std::vector<double>& x, const std::vector<double>& g, int which) {
    for (size_t i = 0; i < x.size(); i++) {
      double x0 = x[i];
      x[i] = x0 + h; double lp = which == 0 ? loss(x, kv, vv) : which == 1 ? loss(qv, x, vv) : loss(qv, kv, x);
      x[i] = x0 - h; double lm = which == 0 ? loss(x, kv, vv) : which == 1 ? loss(qv, x, vv) : loss(qv, kv, x);
      x[i] = x0;
      worst = std::max(worst, std::abs((lp - lm) / (2 * h) - g[i]));
    }
  };
  auto gq = values(dq), gk = values(dk), gv = values(dv);
  auto qx = qv, kx = kv, vx = vv;
  fd(qx, gq, 0); fd(kx, gk, 1); fd(vx, gv, 2);
  EXPECT(worst < 1e-7, "finite-difference gradient check: max error %.3g", worst);
  std::printf("ok  finite differences (f64, GQA+mask+window%s)%*s max err %.2g\n", softcap > 0 ? "+softcap" : "",
              softcap > 0 ? 1 : 9, "", worst);
}

// T = S = 2048: forward only, a few rows against the naive per-row reference.
void check_long() {
  Problem p{1, 2, 2, 2048, 2048, 64, 64};
  p.scale = 0.125;
  std::mt19937 rng(3);
  auto qv = randn(2 * 2048 * 64, rng), kv = randn(2 * 2048 * 64, rng), vv = randn(2 * 2048 * 64, rng);
  Tensor q = from_values({1, 2, 2048, 64}, qv, DType::F32), k = from_values({1, 2, 2048, 64}, kv, DType::F32),
         v = from_values({1, 2, 2048, 64}, vv, DType::F32);
  for (int64_t window : {0, 300}) {
    p.window = window;
    Tensor lse;
    auto o = values(attention_forward(q, k, v, Tensor(), true, window, p.scale, &lse));
    auto l = values(lse);
    std::vector<double> pr;
    double worst = 0;
    for (int64_t h = 0; h < 2; h++)
      for (int64_t i : {0, 1, 63, 64, 777, 1500, 2047}) {
        double ls = ref_row(p, qv, kv, 0, h, i, pr);
        worst = std::max(worst, std::abs(ls - l[(size_t)(h * 2048 + i)]));
        for (int64_t e = 0; e < 64; e++) {
          double s = 0;
          for (int64_t j = 0; j < 2048; j++) s += pr[(size_t)j] * vv[(size_t)((h * 2048 + j) * 64 + e)];
          worst = std::max(worst, std::abs(s - o[(size_t)((h * 2048 + i) * 64 + e)]));
        }
      }
    EXPECT(worst < 5e-5, "long sequence (window %lld): max error %.3g", (long long)window, worst);
  }
  std::printf("ok  %-44s\n", "long sequence T=S=2048 (rows)");
}

// The vector exp / soft-capping against libm on awkward inputs (-inf, underflow, tiny and huge
// tanh arguments) and every tail length.
void check_kernels() {
  std::vector<const attn::AttnKernels<float>*> ks;
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(PEFTKIT_NO_SIMD_KERNELS)
  if ((int)cpu_isa() >= (int)Isa::Avx2) ks.push_back(&attn::attn_kernels_avx2());
  if ((int)cpu_isa() >= (int)Isa::Avx512) ks.push_back(&attn::attn_kernels_avx512());
#endif
  std::vector<float> x;
  for (float v = -100.f; v <= 0.f; v += 0.037f) x.push_back(v);
  x.push_back(-std::numeric_limits<float>::infinity());
  x.push_back(-87.4f); x.push_back(-87.2f); x.push_back(0.f); x.push_back(-1e-8f);
  for (auto* k : ks) {
    for (int64_t n : {(int64_t)x.size(), (int64_t)1, (int64_t)7, (int64_t)15, (int64_t)17}) {
      std::vector<float> y((size_t)n);
      double sum = k->exp_sub_sum(x.data(), 0.5f, y.data(), n), ref_sum = 0, worst = 0;
      for (int64_t i = 0; i < n; i++) {
        double r = std::exp((double)(x[(size_t)i] - 0.5f));  // the kernel subtracts in f32 too
        ref_sum += r;
        worst = std::max(worst, std::abs(y[(size_t)i] - r) / std::max(r, 1e-30));
        if (x[(size_t)i] - 0.5f < -87.3f) worst = std::max(worst, y[(size_t)i] == 0.f ? 0.0 : 1.0);
      }
      EXPECT(worst < 4e-7 || n == 0, "%s exp: rel error %.3g (n=%lld)", k->name, worst, (long long)n);
      EXPECT(std::abs(sum - ref_sum) <= 1e-6 * ref_sum + 1e-30, "%s exp sum %.9g vs %.9g", k->name, sum, ref_sum);
      float mx = k->row_max(x.data(), n), rmx = -std::numeric_limits<float>::infinity();
      for (int64_t i = 0; i < n; i++) rmx = std::max(rmx, x[(size_t)i]);
      EXPECT(mx == rmx, "%s row_max %g vs %g", k->name, mx, rmx);
    }
    std::vector<float> u;
    for (float v = -300.f; v <= 300.f; v += 0.0917f) u.push_back(v);
    for (float v : {1e-6f, -1e-6f, 0.f, 0.0999f, 0.1001f, -0.1f, 1e30f, -1e30f}) u.push_back(v);
    std::vector<float> y = u;
    k->softcap(y.data(), (int64_t)y.size(), 30.f);
    double worst = 0;
    for (size_t i = 0; i < u.size(); i++) {
      double r = 30.0 * std::tanh((double)u[i] / 30.0);
      worst = std::max(worst, std::abs(y[i] - r) / std::max(std::abs(r), 1.0));  // abs error for |r| < 1
    }
    EXPECT(worst < 1e-6, "%s softcap: error %.3g", k->name, worst);
  }
  std::printf("ok  %-44s\n", "vector exp / max / softcap kernels");
}

void expect_error(const char* what, const std::function<void()>& f, const char* needle) {
  try {
    f();
    EXPECT(false, "%s: expected pk::Error", what);
  } catch (const Error& e) {
    EXPECT(std::strstr(e.what(), needle) != nullptr, "%s: message '%s' lacks '%s'", what, e.what(), needle);
  }
}

void check_errors() {
  Tensor q = Tensor::zeros({1, 4, 3, 8}, DType::F32), k = Tensor::zeros({1, 2, 5, 8}, DType::F32),
         v = Tensor::zeros({1, 2, 5, 8}, DType::F32);
  auto fwd = [&](Tensor a, Tensor b, Tensor c, Tensor m, bool causal, int64_t w, double s) {
    return [=] { attention_forward(a, b, c, m, causal, w, s, nullptr); };
  };
  expect_error("rank", fwd(Tensor::zeros({4, 3, 8}, DType::F32), k, v, Tensor(), true, 0, 1), "q must be 4-d");
  expect_error("heads", fwd(Tensor::zeros({1, 3, 3, 8}, DType::F32), k, v, Tensor(), true, 0, 1), "multiple of kv heads");
  expect_error("head dim", fwd(Tensor::zeros({1, 4, 3, 7}, DType::F32), k, v, Tensor(), true, 0, 1), "same head dim");
  expect_error("T > S", fwd(Tensor::zeros({1, 4, 6, 8}, DType::F32), k, v, Tensor(), true, 0, 1), "T <= S");
  expect_error("batch", fwd(Tensor::zeros({2, 4, 3, 8}, DType::F32), k, v, Tensor(), true, 0, 1), "batch sizes differ");
  expect_error("kv S", fwd(q, k, Tensor::zeros({1, 2, 6, 8}, DType::F32), Tensor(), true, 0, 1), "must agree");
  expect_error("dtype", fwd(q, k.to(DType::BF16), v, Tensor(), true, 0, 1), "share one dtype");
  expect_error("int", fwd(Tensor::zeros({1, 4, 3, 8}, DType::I32), k, v, Tensor(), true, 0, 1), "floating");
  expect_error("mask dtype", fwd(q, k, v, Tensor::zeros({1, 5}, DType::F32), true, 0, 1), "key_mask must be u8");
  expect_error("mask shape", fwd(q, k, v, Tensor::zeros({1, 4}, DType::U8), true, 0, 1), "key_mask must be (B,S)");
  expect_error("window<0", fwd(q, k, v, Tensor(), true, -1, 1), "window must be >= 0");
  expect_error("window noncausal", fwd(q, k, v, Tensor(), false, 4, 1), "requires causal");
  expect_error("scale", fwd(q, k, v, Tensor(), true, 0, std::nan("")), "scale must be finite");
  expect_error("softcap", [&] { attention_forward(q, k, v, Tensor(), true, 0, 1, nullptr, -1); }, "softcap must be finite and >= 0");
  expect_error("undefined", fwd(Tensor(), k, v, Tensor(), true, 0, 1), "undefined");
  expect_error("segment dtype", [&] { attention_forward(q, k, v, Tensor(), true, 0, 1, nullptr, 0, Tensor::zeros({1, 5}, DType::F32)); },
               "segment_ids must be i32 or i64");
  expect_error("segment u8", [&] { attention_forward(q, k, v, Tensor(), true, 0, 1, nullptr, 0, Tensor::zeros({1, 5}, DType::U8)); },
               "segment_ids must be i32 or i64");
  expect_error("segment shape (B,T)", [&] { attention_forward(q, k, v, Tensor(), true, 0, 1, nullptr, 0, Tensor::zeros({1, 3}, DType::I32)); },
               "segment_ids must be (B,S) = [1,5]");
  expect_error("segment rank", [&] { attention_forward(q, k, v, Tensor(), true, 0, 1, nullptr, 0, Tensor::zeros({5}, DType::I64)); },
               "segment_ids must be (B,S)");
  Tensor lse;
  Tensor out = attention_forward(q, k, v, Tensor(), true, 0, 1, &lse);
  Tensor dq;
  expect_error("bwd dout", [&] { attention_backward(q, k, v, Tensor(), out, lse, Tensor::zeros({1, 4, 3, 7}, DType::F32), true, 0, 1, &dq, nullptr, nullptr); }, "dout must have shape");
  expect_error("bwd lse", [&] { attention_backward(q, k, v, Tensor(), out, Tensor::zeros({1, 4, 2}, DType::F32), out, true, 0, 1, &dq, nullptr, nullptr); }, "lse must have shape");
  std::printf("ok  %-44s\n", "bad inputs -> pk::Error");
}

void bench(bool bf16_only) {
  {
    // The bf16 LoRA training shape (35M Llama layer): B=4, T=256, 8 query / 4 kv heads, D=64,
    // bf16 (B,H,T,D) views of (B,T,H,D) storage. The f32 path is timed at the AVX2 cap.
    const int nt = num_threads();
    std::mt19937 rng(1);
    const int64_t B = 4, T = 256, Hq = 8, Hkv = 4, D = 64;
    Tensor q = make_input(randn(B * Hq * T * D, rng), B, Hq, T, D, DType::BF16, true);
    Tensor k = make_input(randn(B * Hkv * T * D, rng), B, Hkv, T, D, DType::BF16, true);
    Tensor v = make_input(randn(B * Hkv * T * D, rng), B, Hkv, T, D, DType::BF16, true);
    Tensor g = make_input(randn(B * Hq * T * D, rng), B, Hq, T, D, DType::BF16, false);
    for (Isa isa : {Isa::Avx512, Isa::Avx2}) {
      if ((int)cpu_isa() < (int)isa || (bf16_only && isa != Isa::Avx512)) continue;
      set_isa_cap(isa);
      const int reps = 50;
      double bf = 1e30, bb = 1e30;
      Tensor lse, dq, dk, dv, out;
      for (int r = 0; r < reps; r++) {
        auto t0 = std::chrono::steady_clock::now();
        out = attention_forward(q, k, v, Tensor(), true, 0, 0.125, &lse);
        auto t1 = std::chrono::steady_clock::now();
        attention_backward(q, k, v, Tensor(), out, lse, g, true, 0, 0.125, &dq, &dk, &dv);
        auto t2 = std::chrono::steady_clock::now();
        bf = std::min(bf, std::chrono::duration<double, std::milli>(t1 - t0).count());
        bb = std::min(bb, std::chrono::duration<double, std::milli>(t2 - t1).count());
      }
      std::printf("B=4 T=256 Hq=8 Hkv=4 D=64 bf16 strided causal, %d thr [%s%s]: fwd %.3f ms, bwd %.3f ms (best of %d)\n",
                  nt, isa_name(cpu_isa()), bf16_path_here() ? ", bf16 path" : ", f32 path", bf, bb, reps);
    }
    set_isa_cap(Isa::Avx512);
    if (bf16_only) return;
  }
  {
    const int nt = num_threads();
    for (auto cfg : {std::make_tuple(8, 1024, 64), std::make_tuple(8, 2048, 128)}) {
      int H = std::get<0>(cfg), T = std::get<1>(cfg), D = std::get<2>(cfg);
      std::mt19937 rng(1);
      Tensor q = from_values({1, H, T, D}, randn((int64_t)H * T * D, rng), DType::F32);
      Tensor k = from_values({1, H, T, D}, randn((int64_t)H * T * D, rng), DType::F32);
      Tensor v = from_values({1, H, T, D}, randn((int64_t)H * T * D, rng), DType::F32);
      Tensor lse, dq, dk, dv;
      Tensor out = attention_forward(q, k, v, Tensor(), true, 0, 1.0 / std::sqrt(D), &lse);
      const int reps = 3;
      auto t0 = std::chrono::steady_clock::now();
      for (int r = 0; r < reps; r++) out = attention_forward(q, k, v, Tensor(), true, 0, 1.0 / std::sqrt(D), &lse);
      auto t1 = std::chrono::steady_clock::now();
      for (int r = 0; r < reps; r++)
        attention_backward(q, k, v, Tensor(), out, lse, out, true, 0, 1.0 / std::sqrt(D), &dq, &dk, &dv);
      auto t2 = std::chrono::steady_clock::now();
      double f = std::chrono::duration<double, std::milli>(t1 - t0).count() / reps;
      double b = std::chrono::duration<double, std::milli>(t2 - t1).count() / reps;
      double flops = 4.0 * H * T * (double)T / 2 * D;  // causal forward: 2 GEMMs over half the scores
      std::printf("B=1 H=%d T=S=%d D=%d f32 causal, %d thr [%s]: fwd %.1f ms (%.1f GFLOP/s), bwd %.1f ms (%.1f GFLOP/s)\n",
                  H, T, D, nt, isa_name(cpu_isa()), f, flops / f / 1e6, b, 2.5 * flops / b / 1e6);
      // The same row packed with 8 examples of T/8 tokens: only ~1/8 of the causal work remains.
      Problem pp{1, H, H, T, T, D, D};
      pp.seg = packed_segs({std::vector<int64_t>(8, T / 8)}, T);
      const Tensor seg = seg_tensor(pp);
      auto t3 = std::chrono::steady_clock::now();
      for (int r = 0; r < reps; r++) out = attention_forward(q, k, v, Tensor(), true, 0, 1.0 / std::sqrt(D), &lse, 0, seg);
      auto t4 = std::chrono::steady_clock::now();
      for (int r = 0; r < reps; r++)
        attention_backward(q, k, v, Tensor(), out, lse, out, true, 0, 1.0 / std::sqrt(D), &dq, &dk, &dv, 0, seg);
      auto t5 = std::chrono::steady_clock::now();
      std::printf("  packed 8 x %d (segment ids): fwd %.1f ms, bwd %.1f ms\n", T / 8,
                  std::chrono::duration<double, std::milli>(t4 - t3).count() / reps,
                  std::chrono::duration<double, std::milli>(t5 - t4).count() / reps);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  // Threads are set once, before the pool has run anything (resizing a pool that has run jobs is
  // unsafe in the current parallel.cpp). 2 threads exercise both backward modes: B*Hkv = 1 -> mode
  // B, B*Hkv even -> mode A. `attention_test bench [threads]` prints timings instead.
  if (argc > 1 && !std::strcmp(argv[1], "bench")) {
    set_num_threads(argc > 2 ? std::atoi(argv[2]) : 1);
    bench(argc > 3 && !std::strcmp(argv[3], "bf16"));
    return 0;
  }
  set_num_threads(2);
  const DType F32 = DType::F32, F64 = DType::F64;
  run_case("causal T==S", {2, 2, 2, 70, 70, 16, 16}, F64, false, 1);
  run_case("causal T==S", {2, 2, 2, 130, 130, 64, 64}, F32, false, 2);
  run_case("kv-cache T<S", {1, 2, 2, 5, 133, 64, 64}, F32, false, 3);
  run_case("kv-cache T<S", {2, 2, 1, 70, 150, 16, 24}, F64, false, 4);
  run_case("non-causal", [] { Problem p{2, 2, 2, 33, 80, 32, 32}; p.causal = false; return p; }(), F32, false, 5);
  run_case("GQA Hq=4 Hkv=2", {2, 4, 2, 67, 67, 64, 64}, F32, false, 6);
  run_case("MQA Hq=8 Hkv=1 (backward mode B)", {1, 8, 1, 100, 100, 64, 64}, F32, false, 7);
  run_case("MQA Hq=8 Hkv=1 f64", {1, 8, 1, 40, 75, 16, 16}, F64, false, 8);
  {
    Problem p{2, 2, 2, 90, 90, 32, 32};
    p.mask.assign(180, 1);
    for (int j = 0; j < 70; j++) p.mask[(size_t)j] = 0;          // left padding incl. a whole key block
    for (int j = 80; j < 90; j++) p.mask[(size_t)(90 + j)] = 0;  // right padding
    run_case("key padding left+right", p, F32, false, 9);
    run_case("key padding left+right", p, F64, false, 9);
  }
  {
    Problem p{1, 4, 2, 150, 150, 16, 16};
    p.window = 37;
    run_case("sliding window 37", p, F32, false, 10);
    p.window = 64;
    run_case("sliding window 64", p, F64, false, 10);
    Problem c{2, 2, 2, 20, 200, 16, 16};
    c.window = 50;
    c.mask.assign(400, 1);
    for (int j = 0; j < 30; j++) c.mask[(size_t)(200 + j)] = 0;
    run_case("window + kv cache + padding", c, F32, false, 11);
  }
  run_case("strided q/k/v (from B,T,H,D)", {2, 4, 2, 45, 45, 32, 32}, F32, true, 12);
  run_case("bf16", {1, 2, 2, 80, 80, 64, 64}, DType::BF16, false, 13);
  run_case("bf16 strided GQA", {1, 4, 1, 33, 33, 64, 64}, DType::BF16, true, 14);
  run_case("f16", {1, 2, 2, 40, 40, 64, 64}, DType::F16, false, 15);
  run_case("T=1 S=17 D=16", {2, 2, 2, 1, 17, 16, 16}, F32, false, 16);
  run_case("T=1 S=17 D=80", {1, 4, 2, 1, 17, 80, 80}, F32, false, 17);
  run_case("T=S=17 D=80 Dv=16", {1, 2, 2, 17, 17, 80, 16}, F32, false, 18);
  run_case("T=S=17 D=80 f64", {1, 2, 2, 17, 17, 80, 80}, F64, false, 19);
  run_case("scale 0.3 T=3 S=65 D=64", [] { Problem p{3, 2, 2, 3, 65, 64, 64}; p.scale = 0.3; return p; }(), F32, false, 20);
  {
    Problem p{2, 4, 2, 70, 90, 32, 32};
    p.scale = 0.5;  // scores ~N(0, 2): the cap of 2 bends them well into tanh's curve
    p.softcap = 2;
    run_case("softcap 2 (Gemma-2) + kv cache", p, F32, false, 21);
    run_case("softcap 2 (Gemma-2) + kv cache", p, F64, false, 21);
    p.window = 20;
    p.mask.assign(180, 1);
    for (int j = 0; j < 15; j++) p.mask[(size_t)j] = 0;
    run_case("softcap + window + padding", p, F32, false, 22);
  }
  {
    // Sequence packing: segment boundaries inside and across the 64-wide blocks.
    Problem p{2, 2, 1, 200, 200, 32, 32};  // B*Hkv = 2: backward mode A on 2 threads
    p.seg = packed_segs({{40, 70, 60, 30}, {64, 64, 1, 50, 21}}, 200);
    run_case("packed rows (segment ids)", p, F32, false, 30);
    run_case("packed rows (segment ids)", p, F64, false, 30);
    Problem m{1, 4, 1, 150, 150, 16, 16};  // B*Hkv = 1: backward mode B
    m.seg = packed_segs({{10, 90, 45}}, 150);  // 5 padding tokens with id 0 ...
    m.mask.assign(150, 1);
    for (int j = 145; j < 150; j++) m.mask[(size_t)j] = 0;  // ... also masked
    m.seg_i32 = true;
    run_case("packed + padding, MQA (mode B), i32 ids", m, F32, false, 31);
    run_case("packed + padding, MQA (mode B), i32 ids", m, F64, false, 31);
    Problem c{2, 2, 2, 30, 160, 16, 16};
    c.seg = packed_segs({{100, 40, 20}, {150, 10}}, 160);
    c.window = 45;
    run_case("packed + kv cache T<S + window", c, F32, false, 32);
    Problem sc{1, 2, 2, 140, 140, 16, 16};
    sc.seg = packed_segs({{66, 74}}, 140);
    sc.scale = 0.5; sc.softcap = 2;
    run_case("packed + softcap", sc, F32, false, 33);
    Problem nc{1, 2, 2, 130, 130, 16, 8};
    nc.causal = false;
    nc.seg = packed_segs({{20, 80, 30}}, 130);
    run_case("packed non-causal", nc, F64, false, 34);
    Problem ar{2, 2, 1, 90, 90, 16, 16};  // arbitrary, interleaved ids: the element-wise rule only
    std::mt19937 rng(35);
    for (int i = 0; i < 180; i++) ar.seg.push_back((int64_t)(rng() % 3) - 1);
    run_case("arbitrary segment ids", ar, F32, false, 35);
    Problem bf{1, 2, 2, 100, 100, 64, 64};
    bf.seg = packed_segs({{30, 70}}, 100);
    run_case("packed bf16", bf, DType::BF16, false, 36);
  }
  // The bf16 path (AVX512_BF16 CPUs): every feature, odd sizes, both backward modes, strided.
  check_bf16_kernels();
  if (bf16_path_here()) {
    run_bf16_case("bf16: causal GQA Hq=4 Hkv=2 (mode A)", {2, 4, 2, 130, 130, 64, 64}, true, 40);
    run_bf16_case("bf16: MQA Hq=8 Hkv=1 (mode B)", {1, 8, 1, 100, 100, 64, 64}, false, 41);
    run_bf16_case("bf16: kv-cache T<S, odd offset", {2, 2, 1, 37, 150, 32, 48}, true, 42);
    run_bf16_case("bf16: non-causal (mode B)", [] { Problem p{1, 2, 1, 33, 80, 32, 32}; p.causal = false; return p; }(), false, 43);
    run_bf16_case("bf16: odd D=15 Dv=9, T=S=17", {1, 2, 2, 17, 17, 15, 9}, true, 44);
    run_bf16_case("bf16: T=1 S=17 D=80", {1, 4, 2, 1, 17, 80, 80}, false, 45);
    run_bf16_case("bf16: odd T=S=67, D=Dv=16", {1, 2, 2, 67, 67, 16, 16}, false, 46);
    {
      Problem p{2, 2, 2, 90, 90, 32, 32};
      p.mask.assign(180, 1);
      for (int j = 0; j < 70; j++) p.mask[(size_t)j] = 0;          // left padding incl. a whole key block
      for (int j = 80; j < 90; j++) p.mask[(size_t)(90 + j)] = 0;  // right padding
      run_bf16_case("bf16: key padding left+right, empty rows", p, false, 47);
      Problem c{2, 2, 2, 20, 200, 16, 16};
      c.window = 50;
      c.mask.assign(400, 1);
      for (int j = 0; j < 30; j++) c.mask[(size_t)(200 + j)] = 0;
      run_bf16_case("bf16: window + kv cache + padding", c, true, 48);
      Problem w{1, 4, 2, 150, 150, 16, 16};
      w.window = 37;
      run_bf16_case("bf16: sliding window 37", w, false, 49);
    }
    {
      Problem p{2, 4, 2, 70, 90, 32, 32};
      p.scale = 0.5;
      p.softcap = 2;
      run_bf16_case("bf16: softcap 2 + kv cache", p, false, 50);
      p.window = 20;
      p.mask.assign(180, 1);
      for (int j = 0; j < 15; j++) p.mask[(size_t)j] = 0;
      run_bf16_case("bf16: softcap + window + padding", p, true, 51);
    }
    {
      Problem p{2, 2, 1, 200, 200, 32, 32};  // mode A
      p.seg = packed_segs({{40, 70, 60, 30}, {64, 64, 1, 50, 21}}, 200);
      run_bf16_case("bf16: packed rows (segment ids)", p, true, 52);
      Problem m{1, 4, 1, 150, 150, 16, 16};  // mode B
      m.seg = packed_segs({{10, 90, 45}}, 150);
      m.mask.assign(150, 1);
      for (int j = 145; j < 150; j++) m.mask[(size_t)j] = 0;
      m.seg_i32 = true;
      run_bf16_case("bf16: packed + padding, MQA (mode B), i32", m, false, 53);
      Problem c{2, 2, 2, 30, 160, 16, 16};
      c.seg = packed_segs({{100, 40, 20}, {150, 10}}, 160);
      c.window = 45;
      run_bf16_case("bf16: packed + kv cache T<S + window", c, false, 54);
      Problem ar{2, 2, 1, 90, 90, 16, 16};
      std::mt19937 rng(55);
      for (int i = 0; i < 180; i++) ar.seg.push_back((int64_t)(rng() % 3) - 1);
      run_bf16_case("bf16: arbitrary segment ids", ar, false, 55);
    }
    std::printf("    bf16 path error <= %.2fx the f32 path's (worst over the cases above)\n", g_worst_vs_f32);
  }
  check_packed_vs_alone();
  check_kernels();
  check_empty_rows(F32);
  check_empty_rows(DType::BF16);
  check_fd(0);
  check_fd(1.5);
  check_long();
  check_errors();
  return pktest::finish("attention_test");
}
