// attention.cpp — fused scaled-dot-product attention, forward and backward (see attention.h).
//
// FlashAttention-2 on a CPU thread pool. Queries are cut into blocks of kBr rows, keys into blocks
// of kBc; a (query block × key block) step only ever touches kBr×kBc scores held in per-thread
// scratch, so nothing scales with T×S.
//
// Forward, per (b, h, query block)  — online softmax, O stays unnormalised until the end:
//   for each key block j visible to the block:
//     S   = scale · Q_i · K_jᵀ                                  (br,bc)
//     S   = cap · tanh(S / cap)   (optional Gemma-2 soft-capping)
//     S  += mask (-inf for causal/window/padding/other segment)
//     m'  = max(m, rowmax S);  P = exp(S - m');  l = l·e^(m-m') + rowsum P
//     O   = O·e^(m-m') + P · V_j                                (br,Dv)
//   out = O / l,   lse = m + log l
//
// Backward, with D_i = rowsum(dO_i ∘ O_i) computed first:
//   P  = exp(S - lse)        (recomputed blockwise; no probabilities were saved)
//   dV_j += Pᵀ · dO_i        dP = dO_i · V_jᵀ        dS = P ∘ (dP − D_i)
//   dK_j += scale · dSᵀ · Q_i                         dQ_i += scale · dS · K_j
//   (with soft-capping, dS also carries the tanh derivative 1 − (S/cap)²)
// dK/dV of a kv head collect contributions from every query head of its GQA group, and dQ_i from
// every key block, so some partition must own each accumulator to avoid races:
//   * mode A (enough (b, kv-head) pairs to fill the pool): one task per (b, kv-head) walks its key
//     blocks and owns dK, dV of that head and dQ of its whole query-head group — 5 GEMMs per step.
//   * mode B (few kv heads, e.g. B=1 MQA): pass 1 tasks per (b, kv-head, key block) produce dK/dV,
//     pass 2 tasks per (b, q-head, query block) recompute S/P/dP and produce dQ — 7 GEMMs per step,
//     but all cores busy.
// Tasks are handed out dynamically (atomic counter) heaviest first: causal blocks are triangular.
//
// Sequence packing (segment ids): each key block carries the [min, max] of its segment ids and a
// (query block × key block) step is skipped when the query rows' id range does not meet it, as are
// key blocks holding only padding. Packed rows have contiguous, increasing ids, so only the blocks
// near the diagonal of each example are visited; tiles spanning a segment boundary get the
// element-wise id comparison, tiles inside one segment none.
//
// Block algebra goes through the AttnKernels table (attention_kernels.h): AVX-512 / AVX2 f32
// kernels when the CPU has them, portable loops (f64, or CPUs without AVX2) otherwise. K and V
// are transposed once per call to (D,S)/(Dv,S) so every GEMM streams unit-stride rows along its
// vector dimension. The geometry, masks and task loop live in attention_common.h.
//
// Paths by input dtype:
//   f32, f16 -> f32 compute here (f16 widened to f32 copies);  f64 -> the portable f64 loops;
//   bf16     -> attention_bf16.cpp when cpu_isa() == Avx512 and the CPU has AVX512_BF16: the same
//               algorithm with bf16 operands and f32 accumulation (vdpbf16ps), P and dS rounded to
//               bf16 before their products (precision in that file's header), operands packed
//               straight from bf16 storage; otherwise (or with PEFTKIT_ISA below avx512) here, in f32.
#include "attention.h"

#include <cmath>
#include <limits>
#include <vector>

#include "core/cpu_features.h"
#include "core/dispatch.h"
#include "cpu/attention_bf16.h"
#include "cpu/attention_common.h"
#include "cpu/attention_kernels.h"
#include "cpu/cpu_common.h"

// The vector kernels exist on x86-64 builds that compile the *_avx*.cpp files (CMake); the
// node-gyp fallback (PEFTKIT_NO_SIMD_KERNELS) and other architectures use the portable loops.
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(PEFTKIT_NO_SIMD_KERNELS)
#define PK_ATTN_SIMD 1
#endif

namespace pk {

namespace {

using attn::AttnKernels;
using attn::Geo;
using attn::kBc;
using attn::kBr;
using attn::MaskData;
using attn::run_tasks;

// ---------------------------------------------------------------------------------------------
// Portable kernels (f64 always; f32 on CPUs without AVX2). Loops are written so the innermost one
// is a unit-stride axpy that compilers vectorise without reassociation.

// C rows are updated with unit-stride axpys (c += a·b_k): at the baseline ISA this measured faster
// than register-tiled variants, which GCC does not keep in registers without intrinsics.
template <class T>
void gemm_ref(int64_t M, int64_t N, int64_t K, const T* A, int64_t a_rs, int64_t a_cs, const T* B, int64_t ldb,
              T* C, int64_t ldc, T alpha, bool accumulate) {
  for (int64_t m = 0; m < M; m++) {
    T* __restrict c = C + m * ldc;
    if (!accumulate)
      for (int64_t n = 0; n < N; n++) c[n] = T(0);
    for (int64_t k = 0; k < K; k++) {
      const T a = alpha * A[m * a_rs + k * a_cs];
      const T* __restrict b = B + k * ldb;
      for (int64_t n = 0; n < N; n++) c[n] += a * b[n];
    }
  }
}

template <class T> T exp_sub_sum_ref(const T* x, T m, T* y, int64_t n) {
  T s = 0;
  for (int64_t i = 0; i < n; i++) {
    const T e = std::exp(x[i] - m);  // exp(-inf) = 0: masked entries vanish
    y[i] = e;
    s += e;
  }
  return s;
}

template <class T> T row_max_ref(const T* x, int64_t n) {
  T r = -std::numeric_limits<T>::infinity();
  for (int64_t i = 0; i < n; i++) r = x[i] > r ? x[i] : r;
  return r;
}

template <class T> void softcap_ref(T* x, int64_t n, T cap) {
  const T inv = T(1) / cap;
  for (int64_t i = 0; i < n; i++) x[i] = cap * std::tanh(x[i] * inv);
}

template <class T> const AttnKernels<T>& kernels_ref() {
  static const AttnKernels<T> k{gemm_ref<T>, exp_sub_sum_ref<T>, row_max_ref<T>, softcap_ref<T>, "scalar"};
  return k;
}

// Chosen per call (not cached) so tests can lower the ISA with set_isa_cap and compare paths.
template <class T> const AttnKernels<T>& kernels_for() { return kernels_ref<T>(); }
template <> const AttnKernels<float>& kernels_for<float>() {
#ifdef PK_ATTN_SIMD
  switch (cpu_isa()) {
    case Isa::Avx512: return attn::attn_kernels_avx512();
    case Isa::Avx2: return attn::attn_kernels_avx2();
    default: break;
  }
#endif
  return kernels_ref<float>();
}

// ---------------------------------------------------------------------------------------------
// Argument checks (the geometry and visibility rules live in attention_common.h).

Geo validate(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_mask, bool causal,
             int64_t window, double scale, double softcap, const Tensor& segment_ids) {
  check_cpu(q, op, "q"); check_cpu(k, op, "k"); check_cpu(v, op, "v");
  if (key_mask.defined()) check_cpu(key_mask, op, "key_mask");
  if (segment_ids.defined()) check_cpu(segment_ids, op, "segment_ids");
  AttentionDims d = check_attention_args(op, q, k, v, key_mask, causal, window, scale, softcap, segment_ids);
  Geo g;
  g.B = d.B; g.Hq = d.Hq; g.Hkv = d.Hkv; g.T = d.T; g.S = d.S; g.D = d.D; g.Dv = d.Dv;
  g.group = g.Hkv ? g.Hq / g.Hkv : 1;
  g.off = g.S - g.T;
  g.causal = causal;
  g.window = window;
  g.nqb = (g.T + kBr - 1) / kBr;
  g.nkb = (g.S + kBc - 1) / kBc;
  return g;
}

void check_shape(const char* op, const Tensor& t, const char* arg, const Shape& want) {
  check_float(t, op, arg);
  check_cpu(t, op, arg);
  PK_CHECK(t.shape() == want, op, ": ", arg, " must have shape ", shape_str(want), ", got ", t.desc());
}

// Everything a block step needs: the masks (attention_common.h) and the operands, all arrays
// contiguous in the compute type T.
template <class T> struct Ctx : attn::Visibility<T> {
  const AttnKernels<T>* K = nullptr;
  T scale = 1;
  T cap = 0;              // logit soft-capping, 0 = none
  const T* q = nullptr;   // (B,Hq,T,D)
  const T* k = nullptr;   // (B,Hkv,S,D)
  const T* v = nullptr;   // (B,Hkv,S,Dv)
  const T* kt = nullptr;  // (B,Hkv,D,S)  k transposed
  const T* vt = nullptr;  // (B,Hkv,Dv,S) v transposed (backward only)
};

// dst (R, C) <- src (C, R) transposed, for `count` independent matrices; blocked for the cache.
template <class T> void transpose_batched(const T* src, T* dst, int64_t count, int64_t R, int64_t C) {
  constexpr int64_t kTile = 32;
  parallel_for(0, count, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t m = c0; m < c1; m++) {
      const T* s = src + m * R * C;
      T* d = dst + m * R * C;
      for (int64_t r0 = 0; r0 < R; r0 += kTile)
        for (int64_t q0 = 0; q0 < C; q0 += kTile)
          for (int64_t r = r0; r < std::min(R, r0 + kTile); r++)
            for (int64_t q = q0; q < std::min(C, q0 + kTile); q++) d[r * C + q] = s[q * R + r];
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Forward

// One (b, h, query block): writes out rows [i0, i0+br) of head h (normalised) and their lse.
template <class T>
void forward_block(const Ctx<T>& c, int64_t b, int64_t h, int64_t qb, T* out, T* lse, T* s, T* m, T* l) {
  const Geo& g = c.g;
  const int64_t i0 = qb * kBr, br = std::min(kBr, g.T - i0);
  const int64_t kvh = h / g.group;
  const T* Q = c.q + ((b * g.Hq + h) * g.T + i0) * g.D;        // (br,D)
  const T* Kt = c.kt + (b * g.Hkv + kvh) * g.D * g.S;          // (D,S)
  const T* V = c.v + (b * g.Hkv + kvh) * g.S * g.Dv;           // (S,Dv)
  T* O = out + ((b * g.Hq + h) * g.T + i0) * g.Dv;             // (br,Dv), the accumulator
  const T ninf = -std::numeric_limits<T>::infinity();
  for (int64_t r = 0; r < br; r++) { m[r] = ninf; l[r] = 0; }
  for (int64_t x = 0; x < br * g.Dv; x++) O[x] = 0;

  // Key blocks that causality/window leave visible to some row of this query block.
  const int64_t jlo = g.key_lo(i0), jhi = g.key_hi(i0 + br - 1);
  int64_t qlo, qhi;
  c.query_segs(b, i0, br, &qlo, &qhi);
  for (int64_t kb = jlo / kBc; jhi > jlo && kb <= (jhi - 1) / kBc; kb++) {
    if (c.block_skipped(b, kb, qlo, qhi)) continue;
    const int64_t j0 = kb * kBc, bc = std::min(kBc, g.S - j0);
    c.K->gemm(br, bc, g.D, Q, g.D, 1, Kt + j0, g.S, s, kBc, c.scale, false);  // S = scale·Q·Kᵀ
    if (c.cap > 0)  // before the mask: tanh would turn -inf into a finite -cap
      for (int64_t r = 0; r < br; r++) c.K->softcap(s + r * kBc, bc, c.cap);
    c.mask_tile(b, i0, br, j0, bc, s, kBc);
    for (int64_t r = 0; r < br; r++) {
      T* sr = s + r * kBc;
      const T mnew = std::max(m[r], c.K->row_max(sr, bc));
      if (mnew == ninf) {  // nothing visible yet in this row: contribute nothing (and no NaN)
        for (int64_t x = 0; x < bc; x++) sr[x] = 0;
        continue;
      }
      const T alpha = std::exp(m[r] - mnew);  // rescale of the old partial sums (0 on first hit)
      l[r] = l[r] * alpha + c.K->exp_sub_sum(sr, mnew, sr, bc);
      if (alpha != T(1)) {
        T* o = O + r * g.Dv;
        for (int64_t x = 0; x < g.Dv; x++) o[x] *= alpha;
      }
      m[r] = mnew;
    }
    c.K->gemm(br, g.Dv, bc, s, kBc, 1, V + j0 * g.Dv, g.Dv, O, g.Dv, T(1), true);  // O += P·V
  }

  T* L = lse + (b * g.Hq + h) * g.T + i0;
  for (int64_t r = 0; r < br; r++) {
    T* o = O + r * g.Dv;
    if (l[r] > 0) {
      const T inv = T(1) / l[r];
      for (int64_t x = 0; x < g.Dv; x++) o[x] *= inv;
      L[r] = m[r] + std::log(l[r]);
    } else {  // no visible key: defined as out = 0, lse = -inf
      for (int64_t x = 0; x < g.Dv; x++) o[x] = 0;
      L[r] = ninf;
    }
  }
}

template <class T>
void forward_impl(const Geo& g, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_mask,
                  const Tensor& segment_ids, double scale, double softcap, const Tensor& out, const Tensor& lse) {
  const DType cd = compute_dtype(q.dtype());
  Tensor qc = to_compute(q), kc = to_compute(k), vc = to_compute(v);
  Tensor kt = Tensor::empty({g.B, g.Hkv, g.D, g.S}, cd);
  transpose_batched<T>(kc.data<T>(), kt.data<T>(), g.B * g.Hkv, g.D, g.S);

  Ctx<T> c;
  c.g = g; c.K = &kernels_for<T>(); c.scale = (T)scale; c.cap = (T)softcap;
  c.q = qc.data<T>(); c.k = kc.data<T>(); c.v = vc.data<T>(); c.kt = kt.data<T>();
  MaskData<T> md;
  md.attach(c, key_mask, segment_ids);

  const int nt = num_threads();
  std::vector<std::vector<T>> scratch((size_t)nt);
  T* po = out.data<T>(); T* pl = lse.data<T>();
  run_tasks(g.B * g.Hq * g.nqb, nt, [&](int64_t t, int tid) {
    std::vector<T>& sc = scratch[(size_t)tid];
    if (sc.empty()) sc.resize((size_t)(kBr * kBc + 2 * kBr));
    const int64_t bh = t / g.nqb, qb = g.nqb - 1 - t % g.nqb;  // last (heaviest causal) blocks first
    forward_block<T>(c, bh / g.Hq, bh % g.Hq, qb, po, pl, sc.data(), sc.data() + kBr * kBc, sc.data() + kBr * kBc + kBr);
  });
}

// ---------------------------------------------------------------------------------------------
// Backward

template <class T> struct BwdCtx : Ctx<T> {
  const T* dout = nullptr;  // (B,Hq,T,Dv)
  const T* lse = nullptr;   // (B,Hq,T), -inf replaced by +inf so that exp(S - lse) = 0 on empty rows
  const T* Di = nullptr;    // (B,Hq,T) rowsum(dO ∘ O)
  T* dq = nullptr;          // (B,Hq,T,D)
  T* dk = nullptr;          // (B,Hkv,S,D)
  T* dv = nullptr;          // (B,Hkv,S,Dv)

  // P = exp(scale·Q·Kᵀ + mask - lse) and dS = P ∘ (dO·Vᵀ - D) for a (br,bc) tile; p, ds (and the
  // soft-capping derivative f) are (br,kBc) scratch. dS is with respect to the raw scaled scores:
  // under soft-capping it carries the extra factor 1 - tanh² = 1 - (S'/cap)².
  void probs_and_dscores(int64_t b, int64_t h, int64_t i0, int64_t br, int64_t j0, int64_t bc, T* p, T* ds) const {
    const Geo& g = this->g;
    const int64_t kvh = h / g.group, bh = b * g.Hq + h;
    const T* Q = this->q + (bh * g.T + i0) * g.D;
    const T* dO = dout + (bh * g.T + i0) * g.Dv;
    const T* Kt = this->kt + (b * g.Hkv + kvh) * g.D * g.S;
    const T* Vt = this->vt + (b * g.Hkv + kvh) * g.Dv * g.S;
    this->K->gemm(br, bc, g.D, Q, g.D, 1, Kt + j0, g.S, p, kBc, this->scale, false);
    T* f = ds + kBr * kBc;  // third scratch tile
    const T cap = this->cap;
    if (cap > 0)
      for (int64_t r = 0; r < br; r++) {
        T* pr = p + r * kBc;
        T* fr = f + r * kBc;
        this->K->softcap(pr, bc, cap);
        for (int64_t x = 0; x < bc; x++) { const T t = pr[x] / cap; fr[x] = T(1) - t * t; }
      }
    this->mask_tile(b, i0, br, j0, bc, p, kBc);
    const T* L = lse + bh * g.T + i0;
    for (int64_t r = 0; r < br; r++) this->K->exp_sub_sum(p + r * kBc, L[r], p + r * kBc, bc);
    this->K->gemm(br, bc, g.Dv, dO, g.Dv, 1, Vt + j0, g.S, ds, kBc, T(1), false);  // dP = dO·Vᵀ
    const T* Dr = Di + bh * g.T + i0;
    for (int64_t r = 0; r < br; r++) {
      const T* pr = p + r * kBc;
      T* dr = ds + r * kBc;
      const T d = Dr[r];
      if (cap > 0) {
        const T* fr = f + r * kBc;
        for (int64_t x = 0; x < bc; x++) dr[x] = pr[x] * (dr[x] - d) * fr[x];
      } else {
        for (int64_t x = 0; x < bc; x++) dr[x] = pr[x] * (dr[x] - d);
      }
    }
  }

  // dK, dV of key block kb of kv head (b, kvh) from every query head of its group; also dQ when
  // this task owns the whole (b, kvh) (mode A).
  void kv_block(int64_t b, int64_t kvh, int64_t kb, bool with_dq, T* p, T* ds) const {
    const Geo& g = this->g;
    if (this->block_padded(b, kb)) return;  // gradients stay 0
    const int64_t j0 = kb * kBc, bc = std::min(kBc, g.S - j0);
    T* dK = dk + ((b * g.Hkv + kvh) * g.S + j0) * g.D;   // (bc,D), owned by this task
    T* dV = dv + ((b * g.Hkv + kvh) * g.S + j0) * g.Dv;  // (bc,Dv)
    const T* Kj = this->k + ((b * g.Hkv + kvh) * g.S + j0) * g.D;
    const int64_t ilo = g.query_lo(j0), ihi = g.query_hi(j0 + bc);
    for (int64_t h = kvh * g.group; h < (kvh + 1) * g.group; h++) {
      const int64_t bh = b * g.Hq + h;
      for (int64_t i0 = ilo; i0 < ihi; i0 += kBr) {
        const int64_t br = std::min(kBr, ihi - i0);
        if (this->seg) {  // query rows of other segments only: nothing to add
          int64_t qlo, qhi;
          this->query_segs(b, i0, br, &qlo, &qhi);
          if (this->block_skipped(b, kb, qlo, qhi)) continue;
        }
        probs_and_dscores(b, h, i0, br, j0, bc, p, ds);
        const T* Q = this->q + (bh * g.T + i0) * g.D;
        const T* dO = dout + (bh * g.T + i0) * g.Dv;
        this->K->gemm(bc, g.Dv, br, p, 1, kBc, dO, g.Dv, dV, g.Dv, T(1), true);        // dV += Pᵀ·dO
        this->K->gemm(bc, g.D, br, ds, 1, kBc, Q, g.D, dK, g.D, this->scale, true);    // dK += s·dSᵀ·Q
        if (with_dq)
          this->K->gemm(br, g.D, bc, ds, kBc, 1, Kj, g.D, dq + (bh * g.T + i0) * g.D, g.D, this->scale, true);
      }
    }
  }

  // dQ of query block qb of head (b, h) (mode B pass 2, or when only dq is wanted).
  void q_block(int64_t b, int64_t h, int64_t qb, T* p, T* ds) const {
    const Geo& g = this->g;
    const int64_t i0 = qb * kBr, br = std::min(kBr, g.T - i0);
    const int64_t kvh = h / g.group, bh = b * g.Hq + h;
    T* dQ = dq + (bh * g.T + i0) * g.D;
    const int64_t jlo = g.key_lo(i0), jhi = g.key_hi(i0 + br - 1);
    int64_t qlo, qhi;
    this->query_segs(b, i0, br, &qlo, &qhi);
    for (int64_t kb = jlo / kBc; jhi > jlo && kb <= (jhi - 1) / kBc; kb++) {
      if (this->block_skipped(b, kb, qlo, qhi)) continue;
      const int64_t j0 = kb * kBc, bc = std::min(kBc, g.S - j0);
      probs_and_dscores(b, h, i0, br, j0, bc, p, ds);
      const T* Kj = this->k + ((b * g.Hkv + kvh) * g.S + j0) * g.D;
      this->K->gemm(br, g.D, bc, ds, kBc, 1, Kj, g.D, dQ, g.D, this->scale, true);  // dQ += s·dS·K
    }
  }
};

template <class T>
void backward_impl(const Geo& g, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_mask,
                   const Tensor& segment_ids, const Tensor& out, const Tensor& lse, const Tensor& dout, double scale, double softcap, bool need_q, bool need_kv,
                   const Tensor& dq, const Tensor& dk, const Tensor& dv) {
  const DType cd = compute_dtype(q.dtype());
  Tensor qc = to_compute(q), kc = to_compute(k), vc = to_compute(v);
  Tensor oc = out.to(cd).contiguous(), doc = dout.to(cd).contiguous(), lc = lse.to(cd).contiguous();
  Tensor kt = Tensor::empty({g.B, g.Hkv, g.D, g.S}, cd), vt = Tensor::empty({g.B, g.Hkv, g.Dv, g.S}, cd);
  transpose_batched<T>(kc.data<T>(), kt.data<T>(), g.B * g.Hkv, g.D, g.S);
  transpose_batched<T>(vc.data<T>(), vt.data<T>(), g.B * g.Hkv, g.Dv, g.S);

  // D_i = rowsum(dO ∘ O); lse -inf (row with no visible key) -> +inf so its P row is exactly 0.
  const int64_t rows = g.B * g.Hq * g.T;
  std::vector<T> Di((size_t)rows), L((size_t)rows);
  {
    const T* po = oc.data<T>(); const T* pd = doc.data<T>(); const T* pl = lc.data<T>();
    parallel_for(0, rows, 256, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; r++) {
        T s = 0;
        for (int64_t x = 0; x < g.Dv; x++) s += po[r * g.Dv + x] * pd[r * g.Dv + x];
        Di[(size_t)r] = s;
        L[(size_t)r] = pl[r] == -std::numeric_limits<T>::infinity() ? std::numeric_limits<T>::infinity() : pl[r];
      }
    });
  }

  BwdCtx<T> c;
  c.g = g; c.K = &kernels_for<T>(); c.scale = (T)scale; c.cap = (T)softcap;
  c.q = qc.data<T>(); c.k = kc.data<T>(); c.v = vc.data<T>(); c.kt = kt.data<T>(); c.vt = vt.data<T>();
  MaskData<T> md;
  md.attach(c, key_mask, segment_ids);
  c.dout = doc.data<T>(); c.lse = L.data(); c.Di = Di.data();
  c.dq = dq.data<T>(); c.dk = dk.data<T>(); c.dv = dv.data<T>();

  const int nt = num_threads();
  std::vector<std::vector<T>> scratch((size_t)nt);
  auto bufs = [&](int tid) {
    std::vector<T>& sc = scratch[(size_t)tid];
    if (sc.empty()) sc.resize((size_t)(3 * kBr * kBc));  // P, dS, soft-capping derivative
    return sc.data();
  };
  const int64_t bkv = g.B * g.Hkv;
  // Mode A when (b, kv-head) tasks alone keep every thread equally busy.
  const bool mode_a = need_kv && (bkv >= 2 * nt || bkv % nt == 0);
  if (mode_a) {
    run_tasks(bkv, nt, [&](int64_t t, int tid) {
      T* p = bufs(tid);
      for (int64_t kb = 0; kb < g.nkb; kb++) c.kv_block(t / g.Hkv, t % g.Hkv, kb, need_q, p, p + kBr * kBc);
    });
    return;
  }
  if (need_kv)
    run_tasks(bkv * g.nkb, nt, [&](int64_t t, int tid) {  // kb ascending: causal-heaviest first
      T* p = bufs(tid);
      const int64_t bk = t / g.nkb;
      c.kv_block(bk / g.Hkv, bk % g.Hkv, t % g.nkb, false, p, p + kBr * kBc);
    });
  if (need_q)
    run_tasks(g.B * g.Hq * g.nqb, nt, [&](int64_t t, int tid) {
      T* p = bufs(tid);
      const int64_t bh = t / g.nqb, qb = g.nqb - 1 - t % g.nqb;
      c.q_block(bh / g.Hq, bh % g.Hq, qb, p, p + kBr * kBc);
    });
}

}  // namespace

Tensor attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_mask, bool causal,
                         int64_t window, double scale, Tensor* lse, double softcap, const Tensor& segment_ids) {
  if (any_cuda(q, k, v, key_mask, segment_ids)) return cuda_fn(&CudaOps::attention_forward, "attention_forward")(q, k, v, key_mask, causal, window, scale, lse, softcap, segment_ids);
  const char* op = "attention_forward";
  const Geo g = validate(op, q, k, v, key_mask, causal, window, scale, softcap, segment_ids);
  const DType cd = compute_dtype(q.dtype());
  if (attn::bf16_path_available(q.dtype())) {  // bf16 operands, f32 accumulation (attention_bf16.cpp)
    // Stored (B,T,Hq,Dv) and returned as the (B,Hq,T,Dv) view: the model's next step,
    // out.transpose(1,2).reshape(B,T,Hq·Dv) for o_proj, is then a view instead of a copy.
    Tensor out = Tensor::empty({g.B, g.T, g.Hq, g.Dv}, DType::BF16).transpose(1, 2);
    Tensor l = Tensor::empty({g.B, g.Hq, g.T}, DType::F32);
    if (out.numel() > 0) attn::forward_bf16(g, q, k, v, key_mask, segment_ids, scale, softcap, out, l);
    if (lse) *lse = l;
    return out;
  }
  Tensor out = Tensor::empty({g.B, g.Hq, g.T, g.Dv}, cd);
  Tensor l = Tensor::empty({g.B, g.Hq, g.T}, cd);
  if (out.numel() > 0) {
    dispatch_fp(cd, [&](auto tag) {
      forward_impl<decltype(tag)>(g, q, k, v, key_mask, segment_ids, scale, softcap, out, l);
      return 0;
    });
  }
  if (lse) *lse = l;
  return out.to(q.dtype());
}

void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_mask, const Tensor& out,
                        const Tensor& lse, const Tensor& dout, bool causal, int64_t window, double scale, Tensor* dq,
                        Tensor* dk, Tensor* dv, double softcap, const Tensor& segment_ids) {
  if (any_cuda(q, k, v, key_mask, out, lse, dout, segment_ids)) return cuda_fn(&CudaOps::attention_backward, "attention_backward")(q, k, v, key_mask, out, lse, dout, causal, window, scale, dq, dk, dv, softcap, segment_ids);
  const char* op = "attention_backward";
  const Geo g = validate(op, q, k, v, key_mask, causal, window, scale, softcap, segment_ids);
  check_shape(op, out, "out", {g.B, g.Hq, g.T, g.Dv});
  check_shape(op, dout, "dout", {g.B, g.Hq, g.T, g.Dv});
  check_shape(op, lse, "lse", {g.B, g.Hq, g.T});
  if (attn::bf16_path_available(q.dtype())) {  // bf16 operands, bf16 gradients written directly (attention_bf16.cpp)
    attn::backward_bf16(g, q, k, v, key_mask, segment_ids, out, lse, dout, scale, softcap, dq, dk, dv);
    return;
  }
  const DType cd = compute_dtype(q.dtype());
  // Zero-filled: blocks that are never visited (padding, causal/window, other segments) keep zero gradients.
  Tensor gq = Tensor::zeros(q.shape(), cd), gk = Tensor::zeros(k.shape(), cd), gv = Tensor::zeros(v.shape(), cd);
  const bool need_q = dq != nullptr, need_kv = dk != nullptr || dv != nullptr;
  if (g.B * g.Hq * g.T > 0 && (need_q || need_kv)) {
    dispatch_fp(cd, [&](auto tag) {
      backward_impl<decltype(tag)>(g, q, k, v, key_mask, segment_ids, out, lse, dout, scale, softcap, need_q, need_kv, gq, gk, gv);
      return 0;
    });
  }
  if (dq) *dq = gq.to(q.dtype());
  if (dk) *dk = gk.to(k.dtype());
  if (dv) *dv = gv.to(v.dtype());
}

AttentionDims check_attention_args(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_mask, bool causal,
             int64_t window, double scale, double softcap, const Tensor& segment_ids) {
  check_float(q, op, "q"); check_float(k, op, "k"); check_float(v, op, "v");
  PK_CHECK(q.dim() == 4, op, ": q must be 4-d (B,Hq,T,D), got ", q.desc());
  PK_CHECK(k.dim() == 4, op, ": k must be 4-d (B,Hkv,S,D), got ", k.desc());
  PK_CHECK(v.dim() == 4, op, ": v must be 4-d (B,Hkv,S,Dv), got ", v.desc());
  PK_CHECK(q.dtype() == k.dtype() && q.dtype() == v.dtype(), op, ": q, k and v must share one dtype, got q ",
           q.desc(), ", k ", k.desc(), ", v ", v.desc());
  AttentionDims g;
  g.B = q.size(0); g.Hq = q.size(1); g.T = q.size(2); g.D = q.size(3);
  g.Hkv = k.size(1); g.S = k.size(2); g.Dv = v.size(3);
  PK_CHECK(k.size(0) == g.B && v.size(0) == g.B, op, ": batch sizes differ: q ", q.desc(), ", k ", k.desc(), ", v ",
           v.desc());
  PK_CHECK(v.size(1) == g.Hkv && v.size(2) == g.S, op, ": k ", k.desc(), " and v ", v.desc(),
           " must agree on (B,Hkv,S)");
  PK_CHECK(k.size(3) == g.D, op, ": q ", q.desc(), " and k ", k.desc(), " must have the same head dim D");
  PK_CHECK(g.D >= 1 && g.Dv >= 1, op, ": head dims must be >= 1, got q ", q.desc(), ", v ", v.desc());
  PK_CHECK(g.Hkv >= 1 && g.Hq % g.Hkv == 0, op, ": query heads Hq=", g.Hq, " must be a multiple of kv heads Hkv=",
           g.Hkv, " (q ", q.desc(), ", k ", k.desc(), ")");
  PK_CHECK(g.T <= g.S, op, ": q has T=", g.T, " positions but k/v only S=", g.S,
           "; queries are the last T of the S key positions, so T <= S (q ", q.desc(), ", k ", k.desc(), ")");
  PK_CHECK(window >= 0, op, ": window must be >= 0 (0 = no sliding window), got ", window);
  PK_CHECK(window == 0 || causal, op, ": a sliding window (window=", window, ") requires causal attention");
  PK_CHECK(std::isfinite(scale), op, ": scale must be finite, got ", scale);
  PK_CHECK(std::isfinite(softcap) && softcap >= 0, op, ": softcap must be finite and >= 0 (0 = none), got ", softcap);
  if (key_mask.defined()) {
    PK_CHECK(key_mask.dtype() == DType::U8, op, ": key_mask must be u8 (1 = token, 0 = padding), got ",
             key_mask.desc());
    PK_CHECK(key_mask.dim() == 2 && key_mask.size(0) == g.B && key_mask.size(1) == g.S, op, ": key_mask must be (B,S) = ",
             shape_str({g.B, g.S}), ", got ", key_mask.desc());
  }
  if (segment_ids.defined()) {
    PK_CHECK(segment_ids.dtype() == DType::I32 || segment_ids.dtype() == DType::I64, op,
             ": segment_ids must be i32 or i64 (one id per packed example), got ", segment_ids.desc());
    PK_CHECK(segment_ids.dim() == 2 && segment_ids.size(0) == g.B && segment_ids.size(1) == g.S, op,
             ": segment_ids must be (B,S) = ", shape_str({g.B, g.S}),
             " (over all key positions; with a KV cache the queries use the last T), got ", segment_ids.desc());
  }
  return g;
}

}  // namespace pk
