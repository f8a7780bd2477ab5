// attention_bf16.cpp — the bf16 path of the CPU attention (see attention_bf16.h): FlashAttention-2
// with bf16 operands and f32 accumulation, for bf16 inputs on CPUs with AVX512_BF16.
//
// Why: the bf16 LoRA training path feeds attention bf16 q/k/v. The f32 path (attention.cpp)
// widens them (and out/dout in the backward) to f32 copies, transposes K and V, and runs every
// block product on f32 FMAs. vdpbf16ps does two multiply-adds per f32 lane per instruction, and
// the operands can be packed straight from the bf16 storage, so this path follows PyTorch's CPU
// flash attention for reduced-precision inputs (aten/src/ATen/native/cpu/FlashAttentionKernel.cpp):
//   forward   S = scale·Q·Kᵀ       bf16 operands, f32 accumulation
//             online softmax       f32 (row max, exp, row sum, lse all from the unrounded P)
//             O += bf16(P)·V       P rounded to bf16 for the product, O accumulated in f32
//             out = bf16(O / l)
//   backward  S, P = exp(S − lse)  as above (f32 P)
//             dP = dO·Vᵀ           bf16 operands, f32
//             dS = P∘(dP − D)      f32 (D = rowsum(dO∘O) in f32 from the bf16 tensors;
//                                   ∘ (1 − (S/cap)²) under soft-capping)
//             dV += bf16(P)ᵀ·dO,  dK += scale·bf16(dS)ᵀ·Q,  dQ += scale·bf16(dS)·K   (f32 accumulators)
// Precision: products of bf16 values are exact in f32, so S and dP are as accurate as on the f32
// path (f32 sums of the same exact products, in another order). What changes is that P and dS are
// rounded to bf16 (relative error <= 2^-8 each, round-to-nearest-even) before their products, so
// an element of out / dV / dK / dQ can move by up to 2^-8 · Σ|terms of its sum| beyond the f32
// path — e.g. |Δout| <= 2^-8 · Σ_j p_j |v_j| — the same order as the bf16 rounding of the result
// itself, which both paths apply. The tests (csrc/tests/attention_test.cpp, test/attention.test.ts)
// check the bf16 path against f64 references with bounds of that form and against the error of
// the f32 path on the same inputs. The f32 and f64 paths are unchanged (bit for bit).
// (vdpbf16ps and vcvtne2ps2bf16 also treat f32/bf16 denormals as zero: irrelevant at these sizes.)
//
// Operand layouts (AttnBf16Kernels in attention_kernels.h: a "pair" = two bf16 adjacent along
// the reduction dimension in one 32-bit word):
//   Q, dO rows are read in place from the (possibly strided) bf16 inputs when their last dimension
//     is unit-stride and even; otherwise (another dtype, odd head dim) once copied to bf16.
//   Kp (D/2, S) and Vp (Dv/2, S) pair K / V along the head dim: the B of Q·Kᵀ and dO·Vᵀ.
//   Vr, Kr (S/2, ·) pair V / K along keys: the B of P·V and dS·K.
//   Qr, dOr (T/2, ·) pair Q / dO along queries: the B of dSᵀ·Q and Pᵀ·dO.
// These are packed once per call (parallel over heads), straight from bf16 storage: no f32 copies
// of q/k/v/out/dout. Tiles of P / dS are rounded into row-major bf16 (the A of P·V, dS·K) or
// pair-of-rows words (the A of Pᵀ·dO, dSᵀ·Q). Query blocks of the backward start at even rows so
// that they meet the (T/2) pairing of Qr / dOr.
//
// Task partition, masks, skipping of padded / other-segment blocks and the empty-row rule are the
// f32 path's (attention.cpp, attention_common.h); soft-capping is its AVX-512 kernel, and the
// softmax steps (AttnBf16Kernels::softmax_step / grad_tile) use the same vector exp.
#include "cpu/attention_bf16.h"

#include <cmath>
#include <limits>
#include <vector>

#include "core/cpu_features.h"
#include "cpu/attention_kernels.h"

#if (defined(__x86_64__) || defined(_M_X64)) && !defined(PEFTKIT_NO_SIMD_KERNELS)
#define PK_ATTN_BF16 1
#endif

namespace pk {
namespace attn {

#ifndef PK_ATTN_BF16

bool bf16_path_available(DType) { return false; }
void forward_bf16(const Geo&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, double,
                  double, const Tensor&, const Tensor&) {
  fail("attention_forward: the bf16 path is not built");
}
void backward_bf16(const Geo&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                   const Tensor&, const Tensor&, const Tensor&, double, double, Tensor*, Tensor*, Tensor*) {
  fail("attention_backward: the bf16 path is not built");
}

#else

bool bf16_path_available(DType dt) {
  return dt == DType::BF16 && cpu_bf16();
}

namespace {

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// n uninitialised 32-bit words from the tensor allocator (large blocks are reused across calls).
uint32_t* words(Tensor* hold, int64_t n) {
  *hold = Tensor::empty({n}, DType::I32);
  return hold->data<uint32_t>();
}

// A (B,H,L,E) bf16 operand whose rows are read in place: unit stride along E and E even, so the
// pairs (e, e+1) are adjacent. Anything else (another dtype, a strided last dim, odd E) is copied
// once to a contiguous bf16 tensor with E rounded up to even (the pad column is 0).
struct Bf16Rows {
  Tensor hold;  // the copy, when one was needed
  const uint16_t* p = nullptr;
  int64_t sb = 0, sh = 0, sl = 0;  // strides in elements
  int64_t E = 0, Ep = 0;           // row length, and rounded up to even
  const uint16_t* row(int64_t b, int64_t h, int64_t l) const { return p + b * sb + h * sh + l * sl; }
};

Bf16Rows bf16_rows(const Tensor& t) {
  Bf16Rows r;
  r.E = t.size(3);
  r.Ep = r.E + (r.E & 1);
  Tensor src = t;
  if (t.dtype() != DType::BF16 || t.strides()[3] != 1 || r.Ep != r.E) {
    const Shape shape{t.size(0), t.size(1), t.size(2), r.Ep};
    r.hold = r.Ep != r.E ? Tensor::zeros(shape, DType::BF16) : Tensor::empty(shape, DType::BF16);
    copy_into(r.hold.narrow(3, 0, r.E), t);
    src = r.hold;
  }
  r.p = src.data<uint16_t>();
  r.sb = src.strides()[0]; r.sh = src.strides()[1]; r.sl = src.strides()[2];
  return r;
}

// Per-thread scratch, allocated on a thread's first task.
struct Scratch {
  std::vector<float> s, ds, f;   // (kBr,kBc) f32 tiles: scores S, dP, soft-capping derivative
  std::vector<float> o, m, l;    // forward: O accumulator (kBr,Dv), running max and sum
  std::vector<float> dk, dv, dq; // backward: f32 accumulators of a key block's dK, dV, a query block's dQ
  std::vector<float> dqg;        // backward mode A: dQ of a kv head's query-head group (group,T,D)
  std::vector<uint16_t> pb;      // bf16 row-major tile (P or dS): A of P·V, dS·K
  std::vector<uint32_t> pt, dst; // pair-of-rows tiles of P and dS: A of Pᵀ·dO, dSᵀ·Q
};

// Shared by forward and backward: the masks and the packed K.
struct Bf16Ctx : Visibility<float> {
  const AttnKernels<float>* K = nullptr;  // f32 softmax primitives (AVX-512)
  const AttnBf16Kernels* BK = nullptr;
  float scale = 1, cap = 0;
  Bf16Rows q;
  int64_t Dh = 0, Dvh = 0;   // pairs along D, Dv
  int64_t Sw = 0;            // words per Kp / Vp row (S rounded up to 16)
  int64_t Sh = 0, Th = 0;    // pairs along S, T
  const uint32_t* kp = nullptr;  // (B,Hkv,Dh,Sw) K paired along D: B of S = Q·Kᵀ

  const uint32_t* Kp(int64_t b, int64_t kvh) const { return kp + (b * g.Hkv + kvh) * Dh * Sw; }

  // s (br,bc) = scale·Q·Kᵀ for query rows [i0, i0+br) of head (b, h) and keys [j0, j0+bc), then
  // soft-capped (f, when given, gets 1 − (s/cap)²) and masked.
  void scores(int64_t b, int64_t h, int64_t i0, int64_t br, int64_t j0, int64_t bc, float* s, float* f) const {
    BK->gemm(br, bc, Dh, q.row(b, h, i0), q.sl, 2, Kp(b, h / g.group) + j0, Sw, s, kBc, scale, false);
    if (cap > 0)  // before the mask: tanh would turn -inf into a finite -cap
      for (int64_t r = 0; r < br; r++) {
        float* sr = s + r * kBc;
        K->softcap(sr, bc, cap);
        if (f) {
          float* fr = f + r * kBc;
          for (int64_t x = 0; x < bc; x++) { const float t = sr[x] / cap; fr[x] = 1.0f - t * t; }
        }
      }
    mask_tile(b, i0, br, j0, bc, s, kBc);
  }

  void setup(const Geo& geo, const Tensor& qt, const Tensor& key_mask, const Tensor& segment_ids,
             MaskData<float>& md, double sc, double softcap) {
    g = geo;
    K = &attn_kernels_avx512();
    BK = &attn_bf16_kernels_avx512();
    scale = (float)sc; cap = (float)softcap;
    md.attach(*this, key_mask, segment_ids);
    q = bf16_rows(qt);
    Dh = q.Ep / 2;
    Dvh = (g.Dv + 1) / 2;
    Sw = round_up(g.S, 16);
    Sh = (g.S + 1) / 2;
    Th = (g.T + 1) / 2;
  }
};

// ---------------------------------------------------------------------------------------------
// Forward

struct FwdCtx : Bf16Ctx {
  const uint32_t* vr = nullptr;  // (B,Hkv,Sh,Dv) V paired along keys: B of P·V
  uint16_t* out = nullptr;   // (B,Hq,T,Dv) bf16, element strides below (unit along Dv)
  int64_t out_sb = 0, out_sh = 0, out_st = 0;
  float* lse = nullptr;      // (B,Hq,T)

  // One (b, h, query block): out rows [i0, i0+br) of head h (normalised) and their lse.
  void block(int64_t b, int64_t h, int64_t qb, Scratch& w) const {
    const int64_t i0 = qb * kBr, br = std::min(kBr, g.T - i0);
    const uint32_t* Vr = vr + (b * g.Hkv + h / g.group) * Sh * g.Dv;
    float* s = w.s.data();
    float* O = w.o.data();  // (br,Dv) f32 accumulator
    float* m = w.m.data();
    float* l = w.l.data();
    const float ninf = -std::numeric_limits<float>::infinity();
    for (int64_t r = 0; r < br; r++) { m[r] = ninf; l[r] = 0; }
    std::fill(O, O + br * g.Dv, 0.0f);

    const int64_t jlo = g.key_lo(i0), jhi = g.key_hi(i0 + br - 1);
    int64_t qlo, qhi;
    query_segs(b, i0, br, &qlo, &qhi);
    for (int64_t kb = jlo / kBc; jhi > jlo && kb <= (jhi - 1) / kBc; kb++) {
      if (block_skipped(b, kb, qlo, qhi)) continue;
      const int64_t j0 = kb * kBc, bc = std::min(kBc, g.S - j0), bcp = bc + (bc & 1);
      scores(b, h, i0, br, j0, bc, s, nullptr);
      // Online softmax (m, l, O updated in f32), P rounded to bf16 into pb; then O += bf16(P)·V
      // over key pairs: an odd last key pairs with a zero column of P and a zero row of Vr.
      BK->softmax_step(s, kBc, br, bc, bcp, m, l, O, g.Dv, g.Dv, w.pb.data(), kBc);
      BK->gemm(br, g.Dv, bcp / 2, w.pb.data(), kBc, 2, Vr + (j0 / 2) * g.Dv, g.Dv, O, g.Dv, 1.0f, true);
    }

    const int64_t row0 = (b * g.Hq + h) * g.T + i0;
    for (int64_t r = 0; r < br; r++) {
      float* o = O + r * g.Dv;
      if (l[r] > 0) {
        const float inv = 1.0f / l[r];
        for (int64_t x = 0; x < g.Dv; x++) o[x] *= inv;
        lse[row0 + r] = m[r] + std::log(l[r]);
      } else {  // no visible key: out = 0, lse = -inf
        for (int64_t x = 0; x < g.Dv; x++) o[x] = 0;
        lse[row0 + r] = ninf;
      }
    }
    BK->round_rows(O, g.Dv, br, g.Dv, g.Dv, out + b * out_sb + h * out_sh + i0 * out_st, out_st);
  }
};

}  // namespace

void forward_bf16(const Geo& g, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_mask,
                  const Tensor& segment_ids, double scale, double softcap, const Tensor& out, const Tensor& lse) {
  FwdCtx c;
  MaskData<float> md;
  c.setup(g, q, key_mask, segment_ids, md, scale, softcap);
  const Bf16Rows kb = bf16_rows(k), vb = bf16_rows(v);
  Tensor hkp, hvr;
  uint32_t* kp = words(&hkp, g.B * g.Hkv * c.Dh * c.Sw);
  uint32_t* vr = words(&hvr, g.B * g.Hkv * c.Sh * g.Dv);
  parallel_for(0, g.B * g.Hkv, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; t++) {
      const int64_t b = t / g.Hkv, h = t % g.Hkv;
      c.BK->pack_col_pairs(kb.row(b, h, 0), kb.sl, g.S, kb.Ep, kp + t * c.Dh * c.Sw, c.Sw);
      c.BK->pack_row_pairs(vb.row(b, h, 0), vb.sl, g.S, g.Dv, vr + t * c.Sh * g.Dv, g.Dv);
    }
  });
  c.kp = kp; c.vr = vr;
  c.out = out.data<uint16_t>();
  c.out_sb = out.strides()[0]; c.out_sh = out.strides()[1]; c.out_st = out.strides()[2];
  c.lse = lse.data<float>();

  const int nt = num_threads();
  std::vector<Scratch> scratch((size_t)nt);
  run_tasks(g.B * g.Hq * g.nqb, nt, [&](int64_t t, int tid) {
    Scratch& w = scratch[(size_t)tid];
    if (w.s.empty()) {
      w.s.resize((size_t)(kBr * kBc));
      w.pb.resize((size_t)(kBr * kBc));
      w.o.resize((size_t)(kBr * g.Dv));
      w.m.resize((size_t)kBr);
      w.l.resize((size_t)kBr);
    }
    const int64_t bh = t / g.nqb, qb = g.nqb - 1 - t % g.nqb;  // last (heaviest causal) blocks first
    c.block(bh / g.Hq, bh % g.Hq, qb, w);
  });
}

// ---------------------------------------------------------------------------------------------
// Backward

namespace {

struct BwdCtx : Bf16Ctx {
  Bf16Rows dout;
  const uint32_t* vp = nullptr;   // (B,Hkv,Dvh,Sw)  V paired along Dv: B of dP = dO·Vᵀ
  const uint32_t* kr = nullptr;   // (B,Hkv,Sh,D)    K paired along keys: B of dQ = dS·K (dq wanted)
  const uint32_t* qr = nullptr;   // (B,Hq,Th,D)     Q paired along queries: B of dK = dSᵀ·Q (dk/dv wanted)
  const uint32_t* dor = nullptr;  // (B,Hq,Th,Dv)    dO paired along queries: B of dV = Pᵀ·dO (dk/dv wanted)
  const float* L = nullptr;       // (B,Hq,T) lse, -inf replaced by +inf so exp(S - lse) = 0 on empty rows
  const float* Di = nullptr;      // (B,Hq,T) rowsum(dO ∘ O)
  uint16_t* dq = nullptr;         // (B,Hq,T,D) bf16 outputs; null when not wanted
  uint16_t* dk = nullptr;         // (B,Hkv,S,D)
  uint16_t* dv = nullptr;         // (B,Hkv,S,Dv)

  // For query rows [i0, i0+br) of head (b, h) and keys [j0, j0+bc): S (w.s) and dP = dO·Vᵀ
  // (w.ds) in f32, then P = exp(S − lse) and dS = P ∘ (dP − D) (∘ the soft-capping derivative)
  // rounded into the bf16 operands asked for: P pairs of rows (w.pt), dS pairs of rows (w.dst),
  // dS row-major (w.pb).
  void grad_tiles(int64_t b, int64_t h, int64_t i0, int64_t br, int64_t j0, int64_t bc, Scratch& w, bool want_p,
                  bool want_ds_pairs, bool want_ds_rows) const {
    const int64_t row0 = (b * g.Hq + h) * g.T + i0;
    float* f = cap > 0 ? w.f.data() : nullptr;
    scores(b, h, i0, br, j0, bc, w.s.data(), f);
    const uint32_t* Vp = vp + (b * g.Hkv + h / g.group) * Dvh * Sw;
    BK->gemm(br, bc, Dvh, dout.row(b, h, i0), dout.sl, 2, Vp + j0, Sw, w.ds.data(), kBc, 1.0f, false);  // dP
    BK->grad_tile(w.s.data(), w.ds.data(), f, kBc, br, bc, L + row0, Di + row0, want_p ? w.pt.data() : nullptr,
                  want_ds_pairs ? w.dst.data() : nullptr, kBc, want_ds_rows ? w.pb.data() : nullptr, bc + (bc & 1),
                  kBc);
  }

  // dQ (br,D) f32 (row stride D) += scale · bf16(dS) · K_j, dS rows in w.pb (grad_tiles); an odd
  // bc pairs its last key with a zero column of dS and a zero row of Kr.
  void add_dq(int64_t b, int64_t h, int64_t br, int64_t j0, int64_t bc, const Scratch& w, float* dQ) const {
    const uint32_t* Kr = kr + (b * g.Hkv + h / g.group) * Sh * g.D;
    BK->gemm(br, g.D, (bc + 1) / 2, w.pb.data(), kBc, 2, Kr + (j0 / 2) * g.D, g.D, dQ, g.D, scale, true);
  }

  // Key block kb of kv head (b, kvh): dK, dV from every query head of its group, accumulated in
  // f32 scratch and written as bf16 (zeros when nothing sees the block). With dQg (mode A: this
  // task owns the whole (b, kvh)) also adds to the group's dQ, (group,T,D) f32.
  void kv_block(int64_t b, int64_t kvh, int64_t kb, float* dQg, Scratch& w) const {
    const int64_t j0 = kb * kBc, bc = std::min(kBc, g.S - j0);
    float* dK = w.dk.data();  // (bc,D)
    float* dV = w.dv.data();  // (bc,Dv)
    std::fill(dK, dK + bc * g.D, 0.0f);
    std::fill(dV, dV + bc * g.Dv, 0.0f);
    // Start at an even row so query pairs line up with Qr / dOr; a row before query_lo sees no key
    // of this block, so its P and dS are 0 and it adds nothing. A padded block visits no rows.
    const int64_t ilo = g.query_lo(j0) & ~int64_t(1), ihi = block_padded(b, kb) ? 0 : g.query_hi(j0 + bc);
    for (int64_t h = kvh * g.group; h < (kvh + 1) * g.group; h++) {
      const int64_t bh = b * g.Hq + h;
      for (int64_t i0 = ilo; i0 < ihi; i0 += kBr) {
        const int64_t br = std::min(kBr, ihi - i0), brh = (br + 1) / 2;
        if (seg) {  // query rows of other segments only: nothing to add
          int64_t qlo, qhi;
          query_segs(b, i0, br, &qlo, &qhi);
          if (block_skipped(b, kb, qlo, qhi)) continue;
        }
        grad_tiles(b, h, i0, br, j0, bc, w, dv != nullptr, dk != nullptr, dQg != nullptr);
        // An odd br pairs its last row with a zero row of the Pᵀ / dSᵀ tile.
        if (dv)
          BK->gemm(bc, g.Dv, brh, reinterpret_cast<const uint16_t*>(w.pt.data()), 2, 2 * kBc,
                   dor + (bh * Th + i0 / 2) * g.Dv, g.Dv, dV, g.Dv, 1.0f, true);  // dV += Pᵀ·dO
        if (dk)
          BK->gemm(bc, g.D, brh, reinterpret_cast<const uint16_t*>(w.dst.data()), 2, 2 * kBc,
                   qr + (bh * Th + i0 / 2) * g.D, g.D, dK, g.D, scale, true);  // dK += s·dSᵀ·Q
        if (dQg) add_dq(b, h, br, j0, bc, w, dQg + ((h - kvh * g.group) * g.T + i0) * g.D);
      }
    }
    const int64_t row0 = (b * g.Hkv + kvh) * g.S + j0;
    if (dk) BK->round_rows(dK, g.D, bc, g.D, g.D, dk + row0 * g.D, g.D);
    if (dv) BK->round_rows(dV, g.Dv, bc, g.Dv, g.Dv, dv + row0 * g.Dv, g.Dv);
  }

  // dQ of query block qb of head (b, h) (mode B pass 2, or when only dq is wanted), as bf16.
  void q_block(int64_t b, int64_t h, int64_t qb, Scratch& w) const {
    const int64_t i0 = qb * kBr, br = std::min(kBr, g.T - i0);
    float* dQ = w.dq.data();  // (br,D)
    std::fill(dQ, dQ + br * g.D, 0.0f);
    const int64_t jlo = g.key_lo(i0), jhi = g.key_hi(i0 + br - 1);
    int64_t qlo, qhi;
    query_segs(b, i0, br, &qlo, &qhi);
    for (int64_t kb = jlo / kBc; jhi > jlo && kb <= (jhi - 1) / kBc; kb++) {
      if (block_skipped(b, kb, qlo, qhi)) continue;
      const int64_t j0 = kb * kBc, bc = std::min(kBc, g.S - j0);
      grad_tiles(b, h, i0, br, j0, bc, w, false, false, true);
      add_dq(b, h, br, j0, bc, w, dQ);
    }
    BK->round_rows(dQ, g.D, br, g.D, g.D, dq + ((b * g.Hq + h) * g.T + i0) * g.D, g.D);
  }
};

}  // namespace

void backward_bf16(const Geo& g, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_mask,
                   const Tensor& segment_ids, const Tensor& out, const Tensor& lse, const Tensor& dout, double scale,
                   double softcap, Tensor* dq, Tensor* dk, Tensor* dv) {
  const bool need_q = dq != nullptr, need_kv = dk != nullptr || dv != nullptr;
  const int64_t bkv = g.B * g.Hkv, bhq = g.B * g.Hq, rows = bhq * g.T;
  if (rows == 0 || !(need_q || need_kv)) {  // nothing to compute: zero gradients of the right shapes
    if (dq) *dq = Tensor::zeros(q.shape(), DType::BF16);
    if (dk) *dk = Tensor::zeros(k.shape(), DType::BF16);
    if (dv) *dv = Tensor::zeros(v.shape(), DType::BF16);
    return;
  }
  // Written block by block (zeros where nothing is visible), so no zero fill.
  Tensor gq = dq ? Tensor::empty(q.shape(), DType::BF16) : Tensor();
  Tensor gk = dk ? Tensor::empty(k.shape(), DType::BF16) : Tensor();
  Tensor gv = dv ? Tensor::empty(v.shape(), DType::BF16) : Tensor();

  BwdCtx c;
  MaskData<float> md;
  c.setup(g, q, key_mask, segment_ids, md, scale, softcap);
  c.dout = bf16_rows(dout);
  const Bf16Rows kb = bf16_rows(k), vb = bf16_rows(v);

  // Pack the B operands, one (b, head) per task.
  Tensor hkp, hvp, hkr, hqr, hdor;
  uint32_t* kp = words(&hkp, bkv * c.Dh * c.Sw);
  uint32_t* vp = words(&hvp, bkv * c.Dvh * c.Sw);
  uint32_t* kr = need_q ? words(&hkr, bkv * c.Sh * g.D) : nullptr;
  uint32_t* qr = need_kv ? words(&hqr, bhq * c.Th * g.D) : nullptr;
  uint32_t* dor = need_kv ? words(&hdor, bhq * c.Th * g.Dv) : nullptr;
  parallel_for(0, bkv + (need_kv ? bhq : 0), 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; t++) {
      if (t < bkv) {
        const int64_t b = t / g.Hkv, h = t % g.Hkv;
        c.BK->pack_col_pairs(kb.row(b, h, 0), kb.sl, g.S, kb.Ep, kp + t * c.Dh * c.Sw, c.Sw);
        c.BK->pack_col_pairs(vb.row(b, h, 0), vb.sl, g.S, vb.Ep, vp + t * c.Dvh * c.Sw, c.Sw);
        if (kr) c.BK->pack_row_pairs(kb.row(b, h, 0), kb.sl, g.S, g.D, kr + t * c.Sh * g.D, g.D);
      } else {
        const int64_t u = t - bkv, b = u / g.Hq, h = u % g.Hq;
        c.BK->pack_row_pairs(c.q.row(b, h, 0), c.q.sl, g.T, g.D, qr + u * c.Th * g.D, g.D);
        c.BK->pack_row_pairs(c.dout.row(b, h, 0), c.dout.sl, g.T, g.Dv, dor + u * c.Th * g.Dv, g.Dv);
      }
    }
  });
  c.kp = kp; c.vp = vp; c.kr = kr; c.qr = qr; c.dor = dor;

  // D_i = rowsum(dO ∘ O) in f32; lse -inf (row with no visible key) -> +inf so its P row is exactly 0.
  std::vector<float> Di((size_t)rows), L((size_t)rows);
  {
    Tensor lc = lse.to(DType::F32).contiguous();
    const float* pl = lc.data<float>();
    const bool direct = out.dtype() == DType::BF16 && out.strides()[3] == 1 && dout.dtype() == DType::BF16;
    Tensor of, df;  // f32 copies when out / dout are not bf16: D stays exact in f32
    if (!direct) { of = out.to(DType::F32).contiguous(); df = dout.to(DType::F32).contiguous(); }
    const uint16_t* po = direct ? out.data<uint16_t>() : nullptr;
    parallel_for(0, rows, 256, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; r++) {
        const int64_t i = r % g.T, bh = r / g.T, b = bh / g.Hq, h = bh % g.Hq;
        if (direct) {
          const uint16_t* o = po + b * out.strides()[0] + h * out.strides()[1] + i * out.strides()[2];
          Di[(size_t)r] = c.BK->dot(o, c.dout.row(b, h, i), g.Dv);
        } else {
          const float* o = of.data<float>() + r * g.Dv;
          const float* d = df.data<float>() + r * g.Dv;
          float s = 0;
          for (int64_t x = 0; x < g.Dv; x++) s += o[x] * d[x];
          Di[(size_t)r] = s;
        }
        L[(size_t)r] = pl[r] == -std::numeric_limits<float>::infinity() ? std::numeric_limits<float>::infinity() : pl[r];
      }
    });
  }
  c.L = L.data(); c.Di = Di.data();
  c.dq = dq ? gq.data<uint16_t>() : nullptr;
  c.dk = dk ? gk.data<uint16_t>() : nullptr;
  c.dv = dv ? gv.data<uint16_t>() : nullptr;

  const int nt = num_threads();
  // The same task partition as the f32 path (attention.cpp: modes A and B).
  const bool mode_a = need_kv && (bkv >= 2 * nt || bkv % nt == 0);
  std::vector<Scratch> scratch((size_t)nt);
  auto bufs = [&](int tid) -> Scratch& {
    Scratch& w = scratch[(size_t)tid];
    if (w.s.empty()) {
      w.s.resize((size_t)(kBr * kBc));
      w.ds.resize((size_t)(kBr * kBc));
      w.f.resize((size_t)(kBr * kBc));
      w.pb.resize((size_t)(kBr * kBc));
      w.pt.resize((size_t)(kBr / 2 * kBc));
      w.dst.resize((size_t)(kBr / 2 * kBc));
      w.dk.resize((size_t)(kBc * g.D));
      w.dv.resize((size_t)(kBc * g.Dv));
      w.dq.resize((size_t)(kBr * g.D));
      if (mode_a && need_q) w.dqg.resize((size_t)(g.group * g.T * g.D));
    }
    return w;
  };
  if (mode_a) {
    run_tasks(bkv, nt, [&](int64_t t, int tid) {
      Scratch& w = bufs(tid);
      const int64_t b = t / g.Hkv, kvh = t % g.Hkv;
      float* dQg = need_q ? w.dqg.data() : nullptr;  // dQ of the group's query heads
      if (dQg) std::fill(w.dqg.begin(), w.dqg.end(), 0.0f);
      for (int64_t j = 0; j < g.nkb; j++) c.kv_block(b, kvh, j, dQg, w);
      if (dQg)
        c.BK->round_rows(dQg, g.D, g.group * g.T, g.D, g.D, c.dq + (b * g.Hq + kvh * g.group) * g.T * g.D, g.D);
    });
  } else {
    if (need_kv)
      run_tasks(bkv * g.nkb, nt, [&](int64_t t, int tid) {  // kb ascending: causal-heaviest first
        Scratch& w = bufs(tid);
        const int64_t bk = t / g.nkb;
        c.kv_block(bk / g.Hkv, bk % g.Hkv, t % g.nkb, nullptr, w);
      });
    if (need_q)
      run_tasks(bhq * g.nqb, nt, [&](int64_t t, int tid) {
        Scratch& w = bufs(tid);
        const int64_t bh = t / g.nqb, qb = g.nqb - 1 - t % g.nqb;
        c.q_block(bh / g.Hq, bh % g.Hq, qb, w);
      });
  }
  if (dq) *dq = gq;
  if (dk) *dk = gk;
  if (dv) *dv = gv;
}

#endif  // PK_ATTN_BF16

}  // namespace attn
}  // namespace pk
