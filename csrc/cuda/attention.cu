// attention.cu — CUDA twin of cpu/attention.cpp: fused causal scaled-dot-product attention,
// forward and backward (FlashAttention-2 on the GPU), with the same semantics (attention.h):
// GQA/MQA (query head h reads kv head h / (Hq/Hkv)), key padding mask (B,S) u8, sliding window,
// segment ids (sequence packing), Gemma-2 logit soft-capping, a KV cache (T < S: the queries are
// the last T positions), lse output, and the no-visible-key rule (out = 0, lse = -inf, zero grads).
//
// Two implementations, chosen per call:
//
// * Tensor cores (bf16/f16, D == Dv in {64, 128}, sm_80+, rows 16-byte aligned): mma.sync
//   m16n8k16 with f32 accumulation, fragments held in registers as in FlashAttention-2.
//   Forward: a CTA of 4 warps owns 64 query rows of one (b, h) — 16 rows per warp, Q fragments
//   in registers — and walks the visible 64-key blocks: K and V tiles arrive by cp.async (V
//   overlaps S = Q·Kᵀ), the online softmax runs on the accumulator fragments (row max/sum across
//   the 4 threads of a row with two shuffles), P is re-packed from the S accumulators straight
//   into A fragments, and O += P·V reads V with ldmatrix.trans. CTAs are launched heaviest
//   (last, causal) query blocks first.
//   Backward: a CTA owns one 64-key block of one (b, kv head) and walks every query block of
//   every query head of its GQA group, so dK/dV accumulate in registers with no races:
//   Sᵀ = K·Qᵀ, Pᵀ = exp(Sᵀ − lse) (recomputed; no probabilities are stored), dV += Pᵀ·dO,
//   dPᵀ = V·dOᵀ, dSᵀ = Pᵀ∘(dPᵀ − D), dK += dSᵀ·Q; dS goes through shared memory for
//   dQ += dS·K, which is accumulated in an f32 buffer with atomics (one red.add per element per
//   key block) and scaled/narrowed by a final pass. D = rowsum(dO∘O) and the lse (with -inf
//   turned into +inf so that empty rows give P = 0) come from a small pre-pass.
// * Portable kernels (f32, f64, any head dims, sm_75, unaligned views): a warp per query row
//   (forward, dQ) or per key row (dK/dV, looping over the GQA group), lanes take 32 keys (or
//   queries) at a time for the scores and own strided slices of the accumulators in shared
//   memory. f64 inputs compute in f64 (finite-difference checks); the rest in f32.
//
// Block skipping (both paths): causal/window limits give each query block its key range (and
// each key block its query range); per-block summaries of the mask (any / all real tokens) and
// segment ids ([min, max], computed by a tiny pre-kernel) skip tiles that are all padding or
// belong to other packed examples, and let tiles that are fully visible skip the per-element
// mask. Set PEFTKIT_CUDA_ATTENTION=generic to force the portable kernels (tests compare both).
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include "common.cuh"
#include "core/dispatch.h"
#include "cpu/attention.h"
#include "cpu/cpu_common.h"
#include "mma_frag.h"
#include "ops.h"

// Below sm_80 the tensor-core kernels compile to empty bodies, leaving their helpers unreferenced.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#pragma nv_diag_suppress 177
#endif

namespace pk {
namespace cuda {

Tensor attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_mask, bool causal,
                         int64_t window, double scale, Tensor* lse, double softcap, const Tensor& segment_ids);
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_mask, const Tensor& out,
                        const Tensor& lse, const Tensor& dout, bool causal, int64_t window, double scale, Tensor* dq,
                        Tensor* dk, Tensor* dv, double softcap, const Tensor& segment_ids);

namespace {

constexpr float kLog2e = 1.4426950408889634f;

// ---------------------------------------------------------------------------------------------
// Geometry and visibility (attention.h), shared by host and device.

struct Geo {
  int64_t B = 0, Hq = 0, Hkv = 0, T = 0, S = 0, D = 0, Dv = 0;
  int64_t group = 1, off = 0;   // query heads per kv head; absolute position of query 0 = S - T
  int64_t window = 0;
  bool causal = true;
  __host__ __device__ int64_t key_lo(int64_t i) const { return window > 0 ? max64(0, off + i - window + 1) : 0; }
  __host__ __device__ int64_t key_hi(int64_t i) const { return causal ? min64(S, off + i + 1) : S; }
  __host__ __device__ int64_t query_lo(int64_t j0) const { return causal ? min64(T, max64(0, j0 - off)) : 0; }
  __host__ __device__ int64_t query_hi(int64_t j1) const { return window > 0 ? min64(T, max64(0, j1 - 1 + window - off)) : T; }
  __host__ __device__ static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
  __host__ __device__ static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
};

// Per-row strides of a 4-d (B,H,rows,dim) tensor whose last dim is unit-stride.
struct St4 {
  int64_t b = 0, h = 0, t = 0;
  __host__ __device__ int64_t at(int64_t bi, int64_t hi, int64_t ti) const { return bi * b + hi * h + ti * t; }
};
St4 st4(const Tensor& t) { return St4{t.strides()[0], t.strides()[1], t.strides()[2]}; }

// Mask inputs on the device (null when absent), plus per-block summaries for skipping.
struct BlkInfo {
  long long lo, hi;   // [min, max] segment id of the block
  int any, all;       // some / every position of the block is a real token (key_mask)
};
struct Masks {
  const uint8_t* mask = nullptr;   // (B,S) contiguous
  const int64_t* seg = nullptr;    // (B,S) contiguous
};

__device__ __forceinline__ bool visible(const Geo& g, const Masks& mk, int64_t b, int64_t i, int64_t j) {
  if (i >= g.T || j >= g.S || i < 0 || j < 0) return false;
  const int64_t p = g.off + i;
  if (g.causal && j > p) return false;
  if (g.window > 0 && p - j >= g.window) return false;
  if (mk.mask && !mk.mask[b * g.S + j]) return false;
  if (mk.seg && mk.seg[b * g.S + p] != mk.seg[b * g.S + j]) return false;
  return true;
}

// Summaries of blocks of `bs` positions starting at `start` (keys: 0, queries: off), len positions.
__global__ void block_info_kernel(const uint8_t* __restrict__ mask, const int64_t* __restrict__ seg, int64_t B, int64_t S,
                                  int64_t start, int64_t len, int bs, int64_t nblk, BlkInfo* __restrict__ out) {
  for (int64_t t = global_tid<int64_t>(); t < B * nblk; t += grid_stride<int64_t>()) {
    const int64_t b = t / nblk, blk = t - b * nblk;
    const int64_t p0 = start + blk * bs, p1 = start + len < p0 + bs ? start + len : p0 + bs;
    BlkInfo r{LLONG_MAX, LLONG_MIN, 0, 1};
    for (int64_t p = p0; p < p1; p++) {
      const bool m = mask ? mask[b * S + p] != 0 : true;
      r.any |= m;
      r.all &= m;
      if (seg) {
        const long long s = seg[b * S + p];
        r.lo = s < r.lo ? s : r.lo;
        r.hi = s > r.hi ? s : r.hi;
      }
    }
    out[t] = r;
  }
}

// Tile decisions shared by the tensor-core kernels (uniform across a CTA).
struct TileCtl {
  const BlkInfo* kinfo = nullptr;   // (B, nkb) for key blocks of Bc
  const BlkInfo* qinfo = nullptr;   // (B, nqb) for query blocks of Br
  bool has_mask = false, has_seg = false;
  __device__ bool skip(int64_t b, int64_t nkb, int64_t kb, int64_t nqb, int64_t qb) const {
    if (!has_mask && !has_seg) return false;
    const BlkInfo& k = kinfo[b * nkb + kb];
    if (has_mask && !k.any) return true;
    if (has_seg) {
      const BlkInfo& q = qinfo[b * nqb + qb];
      if (k.hi < q.lo || k.lo > q.hi) return true;
    }
    return false;
  }
  __device__ bool need_mask(const Geo& g, int64_t b, int64_t nkb, int64_t kb, int64_t j0, int Bc, int64_t nqb,
                            int64_t qb, int64_t i0, int Br) const {
    if (j0 + Bc > g.S || i0 + Br > g.T) return true;
    if (g.causal && j0 + Bc - 1 > g.off + i0) return true;
    if (g.window > 0 && g.off + i0 + Br - 1 - j0 >= g.window) return true;
    if (has_mask && !kinfo[b * nkb + kb].all) return true;
    if (has_seg) {
      const BlkInfo& k = kinfo[b * nkb + kb];
      const BlkInfo& q = qinfo[b * nqb + qb];
      if (!(q.lo == q.hi && k.lo == k.hi && q.lo == k.lo)) return true;
    }
    return false;
  }
};

// ---------------------------------------------------------------------------------------------
// Math helpers (compute type C = float or double).

template <class C> __device__ __forceinline__ C c_exp(C v);
template <> __device__ __forceinline__ float c_exp<float>(float v) { return expf(v); }
template <> __device__ __forceinline__ double c_exp<double>(double v) { return exp(v); }
template <class C> __device__ __forceinline__ C c_log(C v);
template <> __device__ __forceinline__ float c_log<float>(float v) { return logf(v); }
template <> __device__ __forceinline__ double c_log<double>(double v) { return log(v); }
template <class C> __device__ __forceinline__ C c_tanh(C v);
template <> __device__ __forceinline__ float c_tanh<float>(float v) { return tanhf(v); }
template <> __device__ __forceinline__ double c_tanh<double>(double v) { return tanh(v); }
template <class C> __device__ __forceinline__ C c_inf() { return (C)INFINITY; }

template <class C> __device__ __forceinline__ C warp_sum(C v) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) v += __shfl_xor_sync(0xffffffffu, v, d);
  return v;
}
template <class C> __device__ __forceinline__ C warp_max(C v) {
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) { C o = __shfl_xor_sync(0xffffffffu, v, d); v = o > v ? o : v; }
  return v;
}

// ---------------------------------------------------------------------------------------------
// Backward pre-pass: Dsum = rowsum(dO ∘ O), Ladj = lse with -inf -> +inf (P = exp(S - Ladj) = 0).
// A warp per row; any dtype, any Dv.

template <class S, class C>
__global__ void bwd_pre_kernel(const S* __restrict__ o, St4 so, const S* __restrict__ dout, St4 sd,
                               const C* __restrict__ lse, Geo g, C* __restrict__ dsum, C* __restrict__ ladj) {
  const int lane = threadIdx.x & 31;
  const int64_t rows = g.B * g.Hq * g.T;
  for (int64_t r = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32; r < rows;
       r += (int64_t)gridDim.x * blockDim.x / 32) {
    const int64_t t = r % g.T, bh = r / g.T, h = bh % g.Hq, b = bh / g.Hq;
    const S* orow = o + so.at(b, h, t);
    const S* drow = dout + sd.at(b, h, t);
    C acc = 0;
    for (int64_t d = lane; d < g.Dv; d += 32) acc += Conv<C>::load(orow[d]) * Conv<C>::load(drow[d]);
    acc = warp_sum(acc);
    if (lane == 0) {
      dsum[r] = acc;
      const C l = lse[r];
      ladj[r] = l == -c_inf<C>() ? c_inf<C>() : l;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Portable kernels. Shared memory per warp is carved from a dynamic buffer of C.

template <class C> __device__ __forceinline__ C* warp_smem(int per_warp) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  return reinterpret_cast<C*>(smem_raw) + (threadIdx.x / 32) * per_warp;
}

// Score of (i, j) with soft-capping; sets *f to the capping derivative 1 - tanh² (1 without).
template <class C> __device__ __forceinline__ C capped(C s, C cap, C* f) {
  if (cap > 0) {
    const C t = c_tanh<C>(s / cap);
    *f = (C)1 - t * t;
    return cap * t;
  }
  *f = 1;
  return s;
}

// Forward: a warp per query row (b, h, i).
template <class S, class C>
__global__ void fwd_generic_kernel(const S* __restrict__ q, St4 sq, const S* __restrict__ k, St4 sk,
                                   const S* __restrict__ v, St4 sv, Geo g, Masks mk, C scale, C cap,
                                   S* __restrict__ out, C* __restrict__ lse) {
  const int lane = threadIdx.x & 31;
  const int per = (int)(g.D + g.Dv) + 32;
  C* qs = warp_smem<C>(per);
  C* os = qs + g.D;
  C* ps = os + g.Dv;   // the chunk's 32 probabilities, broadcast through shared memory
  const int64_t rows = g.B * g.Hq * g.T;
  const int64_t r = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
  if (r >= rows) return;
  const int64_t i = r % g.T, bh = r / g.T, h = bh % g.Hq, b = bh / g.Hq, kvh = h / g.group;
  const S* qr = q + sq.at(b, h, i);
  for (int64_t d = lane; d < g.D; d += 32) qs[d] = Conv<C>::load(qr[d]);
  for (int64_t d = lane; d < g.Dv; d += 32) os[d] = 0;
  __syncwarp();
  C m = -c_inf<C>(), l = 0;
  const int64_t jlo = g.key_lo(i), jhi = g.key_hi(i);
  for (int64_t jc = jlo; jc < jhi; jc += 32) {
    const int64_t j = jc + lane;
    C s = -c_inf<C>();
    if (j < jhi && visible(g, mk, b, i, j)) {
      const S* kr = k + sk.at(b, kvh, j);
      C acc = 0;
      for (int64_t d = 0; d < g.D; d++) acc += qs[d] * Conv<C>::load(kr[d]);
      C f;
      s = capped<C>(acc * scale, cap, &f);
    }
    const C mnew = max(m, warp_max(s));
    if (mnew == -c_inf<C>()) continue;   // nothing visible yet: contribute nothing (and no NaN)
    const C alpha = c_exp<C>(m - mnew);
    const C p = c_exp<C>(s - mnew);
    l = l * alpha + warp_sum(p);
    m = mnew;
    const int n = (int)(jhi - jc < 32 ? jhi - jc : 32);
    ps[lane] = p;
    __syncwarp();
    for (int64_t d = lane; d < g.Dv; d += 32) {
      C acc = os[d] * alpha;
      for (int jj = 0; jj < n; jj++) {
        const C pj = ps[jj];
        if (pj != 0) acc += pj * Conv<C>::load(v[sv.at(b, kvh, jc + jj) + d]);
      }
      os[d] = acc;
    }
    __syncwarp();
  }
  __syncwarp();
  S* orow = out + (bh * g.T + i) * g.Dv;
  const C inv = l > 0 ? (C)1 / l : (C)0;
  for (int64_t d = lane; d < g.Dv; d += 32) orow[d] = Conv<C>::template store<S>(l > 0 ? os[d] * inv : (C)0);
  if (lane == 0) lse[r] = l > 0 ? m + c_log<C>(l) : -c_inf<C>();
}

// dK/dV: a warp per key row (b, kvh, j), looping over the query heads of the group.
template <class S, class C>
__global__ void dkdv_generic_kernel(const S* __restrict__ q, St4 sq, const S* __restrict__ k, St4 sk,
                                    const S* __restrict__ v, St4 sv, const S* __restrict__ dout, St4 sdo, Geo g,
                                    Masks mk, C scale, C cap, const C* __restrict__ dsum, const C* __restrict__ ladj,
                                    S* __restrict__ dk, S* __restrict__ dv) {
  const int lane = threadIdx.x & 31;
  const int per = (int)(2 * g.D + 2 * g.Dv) + 64;
  C* ks = warp_smem<C>(per);
  C* vs = ks + g.D;
  C* dks = vs + g.Dv;
  C* dvs = dks + g.D;
  C* ps = dvs + g.Dv;   // 32 probabilities and 32 score gradients of the chunk
  C* dss = ps + 32;
  const int64_t rows = g.B * g.Hkv * g.S;
  const int64_t r = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
  if (r >= rows) return;
  const int64_t j = r % g.S, bk = r / g.S, kvh = bk % g.Hkv, b = bk / g.Hkv;
  for (int64_t d = lane; d < g.D; d += 32) { ks[d] = Conv<C>::load(k[sk.at(b, kvh, j) + d]); dks[d] = 0; }
  for (int64_t d = lane; d < g.Dv; d += 32) { vs[d] = Conv<C>::load(v[sv.at(b, kvh, j) + d]); dvs[d] = 0; }
  __syncwarp();
  const int64_t ilo = g.query_lo(j), ihi = g.query_hi(j + 1);
  for (int64_t h = kvh * g.group; h < (kvh + 1) * g.group; h++) {
    const int64_t bh = b * g.Hq + h;
    for (int64_t ic = ilo; ic < ihi; ic += 32) {
      const int64_t i = ic + lane;
      C p = 0, ds = 0;
      if (i < ihi && visible(g, mk, b, i, j)) {
        const S* qr = q + sq.at(b, h, i);
        const S* dr = dout + sdo.at(b, h, i);
        C acc = 0, dp = 0;
        for (int64_t d = 0; d < g.D; d++) acc += Conv<C>::load(qr[d]) * ks[d];
        for (int64_t d = 0; d < g.Dv; d++) dp += Conv<C>::load(dr[d]) * vs[d];
        C f;
        const C s = capped<C>(acc * scale, cap, &f);
        p = c_exp<C>(s - ladj[bh * g.T + i]);
        ds = p * (dp - dsum[bh * g.T + i]) * f;
      }
      const int n = (int)(ihi - ic < 32 ? ihi - ic : 32);
      ps[lane] = p;
      dss[lane] = ds;
      __syncwarp();
      for (int jj = 0; jj < n; jj++) {
        const C pj = ps[jj], dsj = dss[jj];
        if (pj == 0 && dsj == 0) continue;
        const S* qr = q + sq.at(b, h, ic + jj);
        const S* dr = dout + sdo.at(b, h, ic + jj);
        for (int64_t d = lane; d < g.Dv; d += 32) dvs[d] += pj * Conv<C>::load(dr[d]);
        for (int64_t d = lane; d < g.D; d += 32) dks[d] += dsj * Conv<C>::load(qr[d]);
      }
      __syncwarp();
    }
  }
  __syncwarp();
  S* dkr = dk + ((b * g.Hkv + kvh) * g.S + j) * g.D;
  S* dvr = dv + ((b * g.Hkv + kvh) * g.S + j) * g.Dv;
  for (int64_t d = lane; d < g.D; d += 32) dkr[d] = Conv<C>::template store<S>(dks[d] * scale);
  for (int64_t d = lane; d < g.Dv; d += 32) dvr[d] = Conv<C>::template store<S>(dvs[d]);
}

// dQ: a warp per query row (b, h, i).
template <class S, class C>
__global__ void dq_generic_kernel(const S* __restrict__ q, St4 sq, const S* __restrict__ k, St4 sk,
                                  const S* __restrict__ v, St4 sv, const S* __restrict__ dout, St4 sdo, Geo g,
                                  Masks mk, C scale, C cap, const C* __restrict__ dsum, const C* __restrict__ ladj,
                                  S* __restrict__ dq) {
  const int lane = threadIdx.x & 31;
  const int per = (int)(2 * g.D + g.Dv) + 32;
  C* qs = warp_smem<C>(per);
  C* dos = qs + g.D;
  C* acc = dos + g.Dv;
  C* dss = acc + g.D;   // the chunk's 32 score gradients
  const int64_t rows = g.B * g.Hq * g.T;
  const int64_t r = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
  if (r >= rows) return;
  const int64_t i = r % g.T, bh = r / g.T, h = bh % g.Hq, b = bh / g.Hq, kvh = h / g.group;
  for (int64_t d = lane; d < g.D; d += 32) { qs[d] = Conv<C>::load(q[sq.at(b, h, i) + d]); acc[d] = 0; }
  for (int64_t d = lane; d < g.Dv; d += 32) dos[d] = Conv<C>::load(dout[sdo.at(b, h, i) + d]);
  __syncwarp();
  const C L = ladj[r], Dr = dsum[r];
  const int64_t jlo = g.key_lo(i), jhi = g.key_hi(i);
  for (int64_t jc = jlo; jc < jhi; jc += 32) {
    const int64_t j = jc + lane;
    C ds = 0;
    if (j < jhi && visible(g, mk, b, i, j)) {
      const S* kr = k + sk.at(b, kvh, j);
      const S* vr = v + sv.at(b, kvh, j);
      C a = 0, dp = 0;
      for (int64_t d = 0; d < g.D; d++) a += qs[d] * Conv<C>::load(kr[d]);
      for (int64_t d = 0; d < g.Dv; d++) dp += dos[d] * Conv<C>::load(vr[d]);
      C f;
      const C s = capped<C>(a * scale, cap, &f);
      const C p = c_exp<C>(s - L);
      ds = p * (dp - Dr) * f;
    }
    const int n = (int)(jhi - jc < 32 ? jhi - jc : 32);
    dss[lane] = ds;
    __syncwarp();
    for (int jj = 0; jj < n; jj++) {
      const C dsj = dss[jj];
      if (dsj == 0) continue;
      const S* kr = k + sk.at(b, kvh, jc + jj);
      for (int64_t d = lane; d < g.D; d += 32) acc[d] += dsj * Conv<C>::load(kr[d]);
    }
    __syncwarp();
  }
  __syncwarp();
  S* dqr = dq + (bh * g.T + i) * g.D;
  for (int64_t d = lane; d < g.D; d += 32) dqr[d] = Conv<C>::template store<S>(acc[d] * scale);
}

// ---------------------------------------------------------------------------------------------
// Tensor-core kernels (sm_80+, bf16/f16, D == Dv in {64, 128}).

template <class S> __device__ __forceinline__ uint32_t pack2(float a, float b);
template <> __device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float a, float b) {
  __nv_bfloat162 v = __floats2bfloat162_rn(a, b);   // .x = a (low half), .y = b
  return *reinterpret_cast<uint32_t*>(&v);
}
template <> __device__ __forceinline__ uint32_t pack2<__half>(float a, float b) {
  __half2 v = __floats2half2_rn(a, b);
  return *reinterpret_cast<uint32_t*>(&v);
}

// D(16x8 f32) += A(16x16, row) · B(16x8, col).
template <class S> __device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <> __device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(PEFTKIT_CUDA_SIM)   // the CUDA simulator (csrc/cuda_sim) emulates the instruction
  ::pk::sim::mma_m16n8k16_f32(true, c, a, b0, b1);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}
template <> __device__ __forceinline__ void mma16816<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(PEFTKIT_CUDA_SIM)   // the CUDA simulator (csrc/cuda_sim) emulates the instruction
  ::pk::sim::mma_m16n8k16_f32(false, c, a, b0, b1);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// Four 8x8 b16 matrices, transposed: lanes 8m..8m+7 address the rows of matrix m.
__device__ __forceinline__ void ldsm_x4_trans(const void* p, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
#if defined(PEFTKIT_CUDA_SIM)   // the CUDA simulator (csrc/cuda_sim) emulates the instruction
  ::pk::sim::ldmatrix_x4_trans(p, r0, r1, r2, r3);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(a));
#endif
}

// 16-byte global -> shared copy (zero-filled when !valid).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
#if defined(PEFTKIT_CUDA_SIM)   // the CUDA simulator (csrc/cuda_sim) emulates the instruction
  if (valid) std::memcpy(smem, gmem, 16); else std::memset(smem, 0, 16);   // synchronous: wait_group is a no-op
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const uint32_t s = (uint32_t)__cvta_generic_to_shared(smem);
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n));
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(PEFTKIT_CUDA_SIM)   // the CUDA simulator (csrc/cuda_sim) emulates the instruction
  (void)0;
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N> __device__ __forceinline__ void cp_async_wait() {
#if defined(PEFTKIT_CUDA_SIM)   // the CUDA simulator (csrc/cuda_sim) emulates the instruction
  (void)0;
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

__device__ __forceinline__ uint32_t lds32(const void* p) { return *reinterpret_cast<const uint32_t*>(p); }

// Load `rows` rows of D elements (row r = base + r·rstride, valid when r < nvalid) into a shared
// tile with row pitch LD, by all NT threads of the CTA.
template <class S, int D, int LD, int NT>
__device__ __forceinline__ void load_tile_async(S* tile, const S* base, int64_t rstride, int rows, int64_t nvalid) {
  constexpr int CH = D / 8;   // 16-byte chunks per row
  for (int x = threadIdx.x; x < rows * CH; x += NT) {
    const int r = x / CH, c = x - r * CH;
    const bool ok = r < nvalid;
    cp_async16(tile + r * LD + c * 8, ok ? base + r * rstride + c * 8 : base, ok);
  }
}

// ---- forward ----
template <class S, int D>
__global__ void __launch_bounds__(128) fwd_mma_kernel(const S* __restrict__ q, St4 sq, const S* __restrict__ k, St4 sk,
                                                      const S* __restrict__ v, St4 sv, Geo g, Masks mk, TileCtl tc,
                                                      float scale, float cap, S* __restrict__ out,
                                                      float* __restrict__ lse) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  constexpr int Br = 64, Bc = 64, LD = D + 8, KS = D / 16, NO = D / 8;
  __shared__ __align__(16) S Ks[Bc * LD];
  __shared__ __align__(16) S Vs[Bc * LD];
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, tq = mma::thread_in_group(lane);
  const int64_t nqb = (g.T + Br - 1) / Br, nkb = (g.S + Bc - 1) / Bc, BH = g.B * g.Hq;
  const int64_t qb = nqb - 1 - (int64_t)blockIdx.x / BH, bh = (int64_t)blockIdx.x % BH;  // heaviest first
  const int64_t b = bh / g.Hq, h = bh % g.Hq, kvh = h / g.group;
  const int64_t i0 = qb * Br;

  // Q tile (staged in Ks) -> A fragments in registers.
  load_tile_async<S, D, LD, 128>(Ks, q + sq.at(b, h, i0), sq.t, Br, g.T - i0);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  uint32_t qf[KS][4];
  {
    const S* qw = Ks + w * 16 * LD;   // this warp's 16 query rows
#pragma unroll
    for (int ks = 0; ks < KS; ks++)
#pragma unroll
      for (int r = 0; r < 4; r++) qf[ks][r] = lds32(qw + ks * 16 + mma::a_off(lane, r, LD));
  }
  float o[NO][4];
#pragma unroll
  for (int n = 0; n < NO; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

  const int64_t ilast = (i0 + Br < g.T ? i0 + Br : g.T) - 1;
  const int64_t jlo = g.key_lo(i0), jhi = g.key_hi(ilast);
  for (int64_t kb = jlo / Bc; jhi > jlo && kb <= (jhi - 1) / Bc; kb++) {
    if (tc.skip(b, nkb, kb, nqb, qb)) continue;
    const int64_t j0 = kb * Bc;
    const bool nm = tc.need_mask(g, b, nkb, kb, j0, Bc, nqb, qb, i0, Br);
    __syncthreads();   // everyone is done with the previous K/V (and the staged Q)
    load_tile_async<S, D, LD, 128>(Ks, k + sk.at(b, kvh, j0), sk.t, Bc, g.S - j0);
    cp_async_commit();
    load_tile_async<S, D, LD, 128>(Vs, v + sv.at(b, kvh, j0), sv.t, Bc, g.S - j0);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();   // K landed

    float s[Bc / 8][4];
#pragma unroll
    for (int n = 0; n < Bc / 8; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < KS; ks++) {
#pragma unroll
      for (int n = 0; n < Bc / 8; n++) {
        const S* kt = Ks + n * 8 * LD + ks * 16;   // keys n*8.. as the n-major B operand
        mma16816<S>(s[n], qf[ks], lds32(kt + mma::b_off_nmajor(lane, 0, LD)), lds32(kt + mma::b_off_nmajor(lane, 1, LD)));
      }
    }
    // scores (log2 units), soft-capping, mask; row max over the 4 threads of each row
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < Bc / 8; n++) {
#pragma unroll
      for (int e = 0; e < 4; e++) {
        float x = s[n][e] * scale;
        if (cap > 0.f) x = cap * tanhf(x / cap);
        x *= kLog2e;
        if (nm) {
          const int64_t i = i0 + w * 16 + mma::c_row(lane, e), j = j0 + n * 8 + mma::c_col(lane, 0) + (e & 1);
          if (!visible(g, mk, b, i, j)) x = -INFINITY;
        }
        s[n][e] = x;
        mx[e >> 1] = fmaxf(mx[e >> 1], x);
      }
    }
    float alpha[2], ms[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      const float mn = fmaxf(m[r], mx[r]);
      ms[r] = mn == -INFINITY ? 0.f : mn;       // nothing visible yet: p = exp2(-inf) = 0
      alpha[r] = exp2f(m[r] - ms[r]);           // 0 on the first visible block
      m[r] = mn;
      l[r] *= alpha[r];
    }
#pragma unroll
    for (int n = 0; n < Bc / 8; n++) {
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const float p = exp2f(s[n][e] - ms[e >> 1]);
        s[n][e] = p;
        l[e >> 1] += p;
      }
    }
#pragma unroll
    for (int n = 0; n < NO; n++) {
      o[n][0] *= alpha[0]; o[n][1] *= alpha[0];
      o[n][2] *= alpha[1]; o[n][3] *= alpha[1];
    }
    cp_async_wait<0>();
    __syncthreads();   // V landed
    // O += P·V: P's accumulators are the A fragments; V through ldmatrix.trans
#pragma unroll
    for (int kk = 0; kk < Bc / 16; kk++) {
      uint32_t pa[4];
#pragma unroll
      for (int r = 0; r < 4; r++) {
        const int t = 2 * kk + mma::acc_tile(r), e = mma::acc_elem(r);
        pa[r] = pack2<S>(s[t][e], s[t][e + 1]);
      }
#pragma unroll
      for (int n2 = 0; n2 < D / 16; n2++) {
        uint32_t b0, b1, b2, b3;
        ldsm_x4_trans(Vs + kk * 16 * LD + n2 * 16 + mma::ldsm_x4t_off(lane, LD), b0, b1, b2, b3);
        mma16816<S>(o[2 * n2], pa, b0, b1);
        mma16816<S>(o[2 * n2 + 1], pa, b2, b3);
      }
    }
  }
  // finish: full row sums, normalise, write out (B,Hq,T,D) and lse
#pragma unroll
  for (int r = 0; r < 2; r++) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }
#pragma unroll
  for (int r = 0; r < 2; r++) {
    const int64_t i = i0 + w * 16 + mma::c_row(lane, 0) + r * 8;
    if (i >= g.T) continue;
    const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
    S* orow = out + (bh * g.T + i) * D;
#pragma unroll
    for (int n = 0; n < NO; n++)
      *reinterpret_cast<uint32_t*>(orow + n * 8 + mma::c_col(lane, 0)) = pack2<S>(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
    if (tq == 0) lse[bh * g.T + i] = l[r] > 0.f ? m[r] / kLog2e + logf(l[r]) : -INFINITY;
  }
#endif
}

// ---- backward: dK, dV (and dQ through f32 atomics) ----
template <int D, int Br> struct BwdSmem {
  static constexpr int Bc = 64, LD = D + 8, LDS = Bc + 8;
  static constexpr size_t k_off = 0, v_off = k_off + (size_t)Bc * LD, q_off = v_off + (size_t)Bc * LD,
                          do_off = q_off + (size_t)Br * LD, ds_off = do_off + (size_t)Br * LD,
                          end = ds_off + (size_t)Br * LDS;   // in elements of 2 bytes
  static constexpr size_t bytes = end * 2 + 2 * Br * sizeof(float);
};

template <class S, int D, int Br, bool CAP>
__global__ void __launch_bounds__(128) bwd_mma_kernel(const S* __restrict__ q, St4 sq, const S* __restrict__ k, St4 sk,
                                                      const S* __restrict__ v, St4 sv, const S* __restrict__ dout,
                                                      St4 sdo, Geo g, Masks mk, TileCtl tc, float scale, float cap,
                                                      const float* __restrict__ dsum, const float* __restrict__ ladj,
                                                      bool want_dq, float* __restrict__ dq_acc, S* __restrict__ dk,
                                                      S* __restrict__ dv) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using L = BwdSmem<D, Br>;
  constexpr int Bc = L::Bc, LD = L::LD, LDS = L::LDS, KS = D / 16, NO = D / 8, NQ = Br / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  S* Ks = reinterpret_cast<S*>(smem_raw) + L::k_off;
  S* Vs = reinterpret_cast<S*>(smem_raw) + L::v_off;
  S* Qs = reinterpret_cast<S*>(smem_raw) + L::q_off;
  S* dOs = reinterpret_cast<S*>(smem_raw) + L::do_off;
  S* dSs = reinterpret_cast<S*>(smem_raw) + L::ds_off;
  float* Ls = reinterpret_cast<float*>(reinterpret_cast<S*>(smem_raw) + L::end);
  float* Dsm = Ls + Br;

  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  const int64_t nkb = (g.S + Bc - 1) / Bc, nqb = (g.T + Br - 1) / Br, BK = g.B * g.Hkv;
  const int64_t kb = (int64_t)blockIdx.x / BK, bk = (int64_t)blockIdx.x % BK;  // kb ascending: causal-heaviest first
  const int64_t b = bk / g.Hkv, kvh = bk % g.Hkv, j0 = kb * Bc;

  load_tile_async<S, D, LD, 128>(Ks, k + sk.at(b, kvh, j0), sk.t, Bc, g.S - j0);
  load_tile_async<S, D, LD, 128>(Vs, v + sv.at(b, kvh, j0), sv.t, Bc, g.S - j0);
  cp_async_commit();

  float dka[NO][4], dva[NO][4];
#pragma unroll
  for (int n = 0; n < NO; n++)
#pragma unroll
    for (int e = 0; e < 4; e++) dka[n][e] = dva[n][e] = 0.f;

  const bool padded = tc.has_mask && !tc.kinfo[b * nkb + kb].any;
  const int64_t j1 = j0 + Bc < g.S ? j0 + Bc : g.S;
  const int64_t ilo = g.query_lo(j0), ihi = g.query_hi(j1);
  const int kw = w * 16;   // this warp's 16 key rows within the block

  for (int64_t h = kvh * g.group; !padded && h < (kvh + 1) * g.group; h++) {
    const int64_t bh = b * g.Hq + h;
    for (int64_t qb = ilo / Br; ilo < ihi && qb <= (ihi - 1) / Br; qb++) {
      if (tc.skip(b, nkb, kb, nqb, qb)) continue;
      const int64_t i0 = qb * Br;
      const bool nm = tc.need_mask(g, b, nkb, kb, j0, Bc, nqb, qb, i0, Br);
      __syncthreads();   // previous step done with Qs, dOs, dSs
      load_tile_async<S, D, LD, 128>(Qs, q + sq.at(b, h, i0), sq.t, Br, g.T - i0);
      load_tile_async<S, D, LD, 128>(dOs, dout + sdo.at(b, h, i0), sdo.t, Br, g.T - i0);
      cp_async_commit();
      for (int x = threadIdx.x; x < Br; x += 128) {
        const bool ok = i0 + x < g.T;
        Ls[x] = ok ? ladj[bh * g.T + i0 + x] * kLog2e : INFINITY;
        Dsm[x] = ok ? dsum[bh * g.T + i0 + x] : 0.f;
      }
      cp_async_wait<0>();
      __syncthreads();

      // Sᵀ = K·Qᵀ  (this warp: 16 keys × Br queries)
      float st[NQ][4];
#pragma unroll
      for (int n = 0; n < NQ; n++) st[n][0] = st[n][1] = st[n][2] = st[n][3] = 0.f;
#pragma unroll
      for (int ks = 0; ks < KS; ks++) {
        uint32_t a[4];
#pragma unroll
        for (int r = 0; r < 4; r++) a[r] = lds32(Ks + kw * LD + ks * 16 + mma::a_off(lane, r, LD));
#pragma unroll
        for (int n = 0; n < NQ; n++) {
          const S* bt = Qs + n * 8 * LD + ks * 16;   // queries n*8.. as the n-major B operand
          mma16816<S>(st[n], a, lds32(bt + mma::b_off_nmajor(lane, 0, LD)), lds32(bt + mma::b_off_nmajor(lane, 1, LD)));
        }
      }
      // Pᵀ = exp(Sᵀ - lse) (masked -> 0); the capping derivative when CAP
      float fc[CAP ? NQ : 1][4];
#pragma unroll
      for (int n = 0; n < NQ; n++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
          const int qc = n * 8 + mma::c_col(lane, e), kr = kw + mma::c_row(lane, e);
          float x = st[n][e] * scale;
          if constexpr (CAP) {
            const float t = tanhf(x / cap);
            x = cap * t;
            fc[n][e] = 1.f - t * t;
          }
          float p = exp2f(x * kLog2e - Ls[qc]);
          if (nm && !visible(g, mk, b, i0 + qc, j0 + kr)) p = 0.f;
          st[n][e] = p;
        }
      }
      // dV += Pᵀ·dO
#pragma unroll
      for (int kk = 0; kk < Br / 16; kk++) {
        uint32_t pa[4];
#pragma unroll
        for (int r = 0; r < 4; r++) {
          const int t = 2 * kk + mma::acc_tile(r), e = mma::acc_elem(r);
          pa[r] = pack2<S>(st[t][e], st[t][e + 1]);
        }
#pragma unroll
        for (int n2 = 0; n2 < D / 16; n2++) {
          uint32_t b0, b1, b2, b3;
          ldsm_x4_trans(dOs + kk * 16 * LD + n2 * 16 + mma::ldsm_x4t_off(lane, LD), b0, b1, b2, b3);
          mma16816<S>(dva[2 * n2], pa, b0, b1);
          mma16816<S>(dva[2 * n2 + 1], pa, b2, b3);
        }
      }
      // dPᵀ = V·dOᵀ
      float dp[NQ][4];
#pragma unroll
      for (int n = 0; n < NQ; n++) dp[n][0] = dp[n][1] = dp[n][2] = dp[n][3] = 0.f;
#pragma unroll
      for (int ks = 0; ks < KS; ks++) {
        uint32_t a[4];
#pragma unroll
        for (int r = 0; r < 4; r++) a[r] = lds32(Vs + kw * LD + ks * 16 + mma::a_off(lane, r, LD));
#pragma unroll
        for (int n = 0; n < NQ; n++) {
          const S* bt = dOs + n * 8 * LD + ks * 16;
          mma16816<S>(dp[n], a, lds32(bt + mma::b_off_nmajor(lane, 0, LD)), lds32(bt + mma::b_off_nmajor(lane, 1, LD)));
        }
      }
      // dSᵀ = Pᵀ ∘ (dPᵀ − D) [∘ (1 − tanh²)], into dp; also dS (query-major) into shared memory
#pragma unroll
      for (int n = 0; n < NQ; n++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
          const int qc = n * 8 + mma::c_col(lane, e), kr = kw + mma::c_row(lane, e);
          float ds = st[n][e] * (dp[n][e] - Dsm[qc]);
          if constexpr (CAP) ds *= fc[n][e];
          dp[n][e] = ds;
          dSs[qc * LDS + kr] = Conv<float>::store<S>(ds);
        }
      }
      // dK += dSᵀ·Q
#pragma unroll
      for (int kk = 0; kk < Br / 16; kk++) {
        uint32_t da[4];
#pragma unroll
        for (int r = 0; r < 4; r++) {
          const int t = 2 * kk + mma::acc_tile(r), e = mma::acc_elem(r);
          da[r] = pack2<S>(dp[t][e], dp[t][e + 1]);
        }
#pragma unroll
        for (int n2 = 0; n2 < D / 16; n2++) {
          uint32_t b0, b1, b2, b3;
          ldsm_x4_trans(Qs + kk * 16 * LD + n2 * 16 + mma::ldsm_x4t_off(lane, LD), b0, b1, b2, b3);
          mma16816<S>(dka[2 * n2], da, b0, b1);
          mma16816<S>(dka[2 * n2 + 1], da, b2, b3);
        }
      }
      if (!want_dq) continue;
      __syncthreads();   // dS complete
      // dQ(Br × D) += dS·K: warp w takes query row tile w % RT and NPW output column tiles
      constexpr int RT = Br / 16, NPW = NO * RT / 4;
      const int rt = w % RT, nbase = (w / RT) * NPW;
#pragma unroll
      for (int np = 0; np < NPW / 2; np++) {
        const int ncol = (nbase + 2 * np) * 8;
        float acc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
        for (int kk = 0; kk < Bc / 16; kk++) {
          uint32_t a[4];
#pragma unroll
          for (int r = 0; r < 4; r++) a[r] = lds32(dSs + rt * 16 * LDS + kk * 16 + mma::a_off(lane, r, LDS));
          uint32_t b0, b1, b2, b3;
          ldsm_x4_trans(Ks + kk * 16 * LD + ncol + mma::ldsm_x4t_off(lane, LD), b0, b1, b2, b3);
          mma16816<S>(acc[0], a, b0, b1);
          mma16816<S>(acc[1], a, b2, b3);
        }
#pragma unroll
        for (int r = 0; r < 2; r++) {
          const int64_t i = i0 + rt * 16 + mma::c_row(lane, 0) + r * 8;
          if (i >= g.T) continue;
          float* dst = dq_acc + (bh * g.T + i) * D + ncol + mma::c_col(lane, 0);
#pragma unroll
          for (int half = 0; half < 2; half++) {
            atomicAdd(dst + half * 8, acc[half][2 * r]);
            atomicAdd(dst + half * 8 + 1, acc[half][2 * r + 1]);
          }
        }
      }
    }
  }
  cp_async_wait<0>();   // (no-op unless no step ran)
  // write dK = scale·dK, dV for the key rows of this block (zeros when nothing was visible)
#pragma unroll
  for (int r = 0; r < 2; r++) {
    const int64_t j = j0 + kw + mma::c_row(lane, 0) + r * 8;
    if (j >= g.S) continue;
    S* dkr = dk + ((b * g.Hkv + kvh) * g.S + j) * D;
    S* dvr = dv + ((b * g.Hkv + kvh) * g.S + j) * D;
#pragma unroll
    for (int n = 0; n < NO; n++) {
      *reinterpret_cast<uint32_t*>(dkr + n * 8 + mma::c_col(lane, 0)) = pack2<S>(dka[n][2 * r] * scale, dka[n][2 * r + 1] * scale);
      *reinterpret_cast<uint32_t*>(dvr + n * 8 + mma::c_col(lane, 0)) = pack2<S>(dva[n][2 * r], dva[n][2 * r + 1]);
    }
  }
#endif
}

template <class S>
__global__ void dq_finish_kernel(const float* __restrict__ acc, int64_t n, float scale, S* __restrict__ dq) {
  for (int64_t x = global_tid<int64_t>(); x < n; x += grid_stride<int64_t>()) dq[x] = Conv<float>::store<S>(acc[x] * scale);
}

// ---------------------------------------------------------------------------------------------
// Host side

Geo validate(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_mask, bool causal,
             int64_t window, double scale, double softcap, const Tensor& segment_ids) {
  check_cuda(q, op, "q"); check_cuda(k, op, "k"); check_cuda(v, op, "v");   // masks may be on the host
  AttentionDims d = check_attention_args(op, q, k, v, key_mask, causal, window, scale, softcap, segment_ids);
  Geo g;
  g.B = d.B; g.Hq = d.Hq; g.Hkv = d.Hkv; g.T = d.T; g.S = d.S; g.D = d.D; g.Dv = d.Dv;
  g.group = g.Hq / g.Hkv;
  g.off = g.S - g.T;
  g.causal = causal;
  g.window = window;
  return g;
}

void check_shape(const char* op, const Tensor& t, const char* arg, const Shape& want) {
  check_float(t, op, arg);
  check_cuda(t, op, arg);
  PK_CHECK(t.shape() == want, op, ": ", arg, " must have shape ", shape_str(want), ", got ", t.desc());
}

// Last dim unit-stride (a copy otherwise; a view as it is when it already is).
Tensor rows_unit(const Tensor& t) {
  if (t.shape().back() <= 1 || t.strides().back() == 1) return t;
  return contiguous(t);
}

// Device copies of the masks (u8 / i64, contiguous, on the GPU; CPU masks are uploaded).
struct MaskTensors {
  Tensor mask, seg;
  Masks m;
  MaskTensors(const Tensor& key_mask, const Tensor& segment_ids) {
    if (key_mask.defined()) {
      mask = contiguous(key_mask.device() == Device::CUDA ? key_mask : to_device(key_mask, Device::CUDA));
      m.mask = mask.data<uint8_t>();
    }
    if (segment_ids.defined()) {
      Tensor s = segment_ids.device() == Device::CUDA ? segment_ids : to_device(segment_ids, Device::CUDA);
      seg = contiguous(cast(s, DType::I64));
      m.seg = seg.data<int64_t>();
    }
  }
};

int device_major() {
  static int major = -1;
  if (major < 0) {
    int v = 0;
    if (cudaDeviceGetAttribute(&v, cudaDevAttrComputeCapabilityMajor, 0) != cudaSuccess) { cudaGetLastError(); v = 0; }
    major = v;
  }
  return major;
}

bool force_generic() {
  const char* e = std::getenv("PEFTKIT_CUDA_ATTENTION");
  return e && std::strcmp(e, "generic") == 0;
}

// Rows 16-byte aligned for cp.async (base and every row stride).
bool rows_aligned(const Tensor& t) {
  if (ptr_alignment(t.raw(), 16) < 16) return false;
  for (int d = 0; d < 3; d++)
    if (t.shape()[d] > 1 && (t.strides()[d] * (int64_t)dtype_size(t.dtype())) % 16 != 0) return false;
  return true;
}

bool use_mma(const Geo& g, DType dt, std::initializer_list<const Tensor*> ts) {
  if (force_generic()) return false;
  if (dt != DType::BF16 && dt != DType::F16) return false;
  if (g.D != g.Dv || (g.D != 64 && g.D != 128)) return false;
  if (device_major() < 8) return false;
  for (const Tensor* t : ts)
    if (t->strides().back() != 1 || !rows_aligned(*t)) return false;
  return true;
}

// Block summaries: keys in blocks of bc from 0, queries in blocks of br from off.
struct BlockInfos {
  Tensor kinfo, qinfo;
  TileCtl tc;
  BlockInfos(const Geo& g, const Masks& mk, int bc, int br) {
    tc.has_mask = mk.mask != nullptr;
    tc.has_seg = mk.seg != nullptr;
    if (!tc.has_mask && !tc.has_seg) return;
    const int64_t nkb = (g.S + bc - 1) / bc, nqb = (g.T + br - 1) / br;
    const int64_t bytes_per = (int64_t)sizeof(BlkInfo);
    kinfo = Tensor::empty({std::max<int64_t>(1, g.B * nkb * bytes_per)}, DType::U8, Device::CUDA);
    qinfo = Tensor::empty({std::max<int64_t>(1, g.B * nqb * bytes_per)}, DType::U8, Device::CUDA);
    if (g.B * nkb > 0)
      launch(block_info_kernel, g.B * nkb, mk.mask, mk.seg, g.B, g.S, (int64_t)0, g.S, bc, nkb, (BlkInfo*)kinfo.raw());
    if (g.B * nqb > 0)
      launch(block_info_kernel, g.B * nqb, mk.mask, mk.seg, g.B, g.S, g.off, g.T, br, nqb, (BlkInfo*)qinfo.raw());
    tc.kinfo = (const BlkInfo*)kinfo.raw();
    tc.qinfo = (const BlkInfo*)qinfo.raw();
  }
};

// Warps per CTA for the portable kernels given the shared memory each warp needs.
int generic_warps(size_t per_warp_bytes, const char* op, const Geo& g) {
  const size_t limit = 48 * 1024;
  PK_CHECK(per_warp_bytes <= limit, op, ": head dims D=", g.D, ", Dv=", g.Dv,
           " are too large for the cuda attention kernels (at most ~", limit, " bytes of per-row scratch)");
  return (int)std::max<size_t>(1, std::min<size_t>(4, limit / per_warp_bytes));
}

template <class S, int D>
void launch_fwd_mma(const Geo& g, const Tensor& q, const Tensor& k, const Tensor& v, const Masks& mk, float scale,
                    float cap, const Tensor& out, const Tensor& lse) {
  BlockInfos bi(g, mk, 64, 64);
  const int64_t nqb = (g.T + 63) / 64, blocks = nqb * g.B * g.Hq;
  PK_CHECK(blocks < (int64_t(1) << 31), "attention_forward: problem too large for one launch");
  fwd_mma_kernel<S, D><<<(unsigned)blocks, 128, 0, cur_stream()>>>(
      (const S*)q.raw(), st4(q), (const S*)k.raw(), st4(k), (const S*)v.raw(), st4(v), g, mk, bi.tc, scale, cap,
      (S*)out.raw(), lse.data<float>());
  PK_CUDA_CHECK_LAUNCH();
}

template <class S, int D, int Br, bool CAP>
void launch_bwd_mma_t(const Geo& g, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout, const Masks& mk,
                      const TileCtl& tc, float scale, float cap, const Tensor& dsum, const Tensor& ladj, bool want_dq,
                      const Tensor& dq_acc, const Tensor& dk, const Tensor& dv) {
  auto kern = bwd_mma_kernel<S, D, Br, CAP>;
  const size_t smem = BwdSmem<D, Br>::bytes;
  static bool configured = false;   // one per instantiation
  if (!configured) {
    PK_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    configured = true;
  }
  const int64_t nkb = (g.S + 63) / 64, blocks = nkb * g.B * g.Hkv;
  PK_CHECK(blocks < (int64_t(1) << 31), "attention_backward: problem too large for one launch");
  kern<<<(unsigned)blocks, 128, smem, cur_stream()>>>(
      (const S*)q.raw(), st4(q), (const S*)k.raw(), st4(k), (const S*)v.raw(), st4(v), (const S*)dout.raw(), st4(dout),
      g, mk, tc, scale, cap, dsum.data<float>(), ladj.data<float>(), want_dq, want_dq ? dq_acc.data<float>() : nullptr,
      (S*)dk.raw(), (S*)dv.raw());
  PK_CUDA_CHECK_LAUNCH();
}

template <class S, int D>
void launch_bwd_mma(const Geo& g, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout, const Masks& mk,
                    float scale, float cap, const Tensor& dsum, const Tensor& ladj, bool want_dq, const Tensor& dq_acc,
                    const Tensor& dk, const Tensor& dv) {
  constexpr int Br = D == 128 ? 32 : 64;
  BlockInfos bi(g, mk, 64, Br);
  if (cap > 0) launch_bwd_mma_t<S, D, Br, true>(g, q, k, v, dout, mk, bi.tc, scale, cap, dsum, ladj, want_dq, dq_acc, dk, dv);
  else launch_bwd_mma_t<S, D, Br, false>(g, q, k, v, dout, mk, bi.tc, scale, cap, dsum, ladj, want_dq, dq_acc, dk, dv);
}

}  // namespace

Tensor attention_forward(const Tensor& q_, const Tensor& k_, const Tensor& v_, const Tensor& key_mask, bool causal,
                         int64_t window, double scale, Tensor* lse_out, double softcap, const Tensor& segment_ids) {
  const char* op = "attention_forward";
  const Geo g = validate(op, q_, k_, v_, key_mask, causal, window, scale, softcap, segment_ids);
  const DType cd = compute_dtype(q_.dtype());
  Tensor out = Tensor::empty({g.B, g.Hq, g.T, g.Dv}, q_.dtype(), Device::CUDA);
  Tensor lse = Tensor::empty({g.B, g.Hq, g.T}, cd, Device::CUDA);
  if (out.numel() > 0) {
    Tensor q = rows_unit(q_), k = rows_unit(k_), v = rows_unit(v_);
    MaskTensors mt(key_mask, segment_ids);
    if (use_mma(g, q.dtype(), {&q, &k, &v})) {
      if (q.dtype() == DType::BF16) {
        if (g.D == 64) launch_fwd_mma<__nv_bfloat16, 64>(g, q, k, v, mt.m, (float)scale, (float)softcap, out, lse);
        else launch_fwd_mma<__nv_bfloat16, 128>(g, q, k, v, mt.m, (float)scale, (float)softcap, out, lse);
      } else {
        if (g.D == 64) launch_fwd_mma<__half, 64>(g, q, k, v, mt.m, (float)scale, (float)softcap, out, lse);
        else launch_fwd_mma<__half, 128>(g, q, k, v, mt.m, (float)scale, (float)softcap, out, lse);
      }
    } else {
      dispatch_float(q.dtype(), op, [&](auto tag) {
        using S = decltype(tag);
        using C = typename Compute<S>::type;
        const size_t per = (size_t)(g.D + g.Dv + 32) * sizeof(C);
        const int warps = generic_warps(per, op, g);
        const int64_t rows = g.B * g.Hq * g.T, blocks = (rows + warps - 1) / warps;
        fwd_generic_kernel<S, C><<<(unsigned)blocks, 32 * warps, per * warps, cur_stream()>>>(
            (const S*)q.raw(), st4(q), (const S*)k.raw(), st4(k), (const S*)v.raw(), st4(v), g, mt.m, (C)scale,
            (C)softcap, (S*)out.raw(), (C*)lse.raw());
        PK_CUDA_CHECK_LAUNCH();
      });
    }
  }
  if (lse_out) *lse_out = lse;
  return out;
}

void attention_backward(const Tensor& q_, const Tensor& k_, const Tensor& v_, const Tensor& key_mask, const Tensor& out_,
                        const Tensor& lse_, const Tensor& dout_, bool causal, int64_t window, double scale, Tensor* dq,
                        Tensor* dk, Tensor* dv, double softcap, const Tensor& segment_ids) {
  const char* op = "attention_backward";
  const Geo g = validate(op, q_, k_, v_, key_mask, causal, window, scale, softcap, segment_ids);
  check_shape(op, out_, "out", {g.B, g.Hq, g.T, g.Dv});
  check_shape(op, dout_, "dout", {g.B, g.Hq, g.T, g.Dv});
  check_shape(op, lse_, "lse", {g.B, g.Hq, g.T});
  const DType dt = q_.dtype(), cd = compute_dtype(dt);
  const bool need_q = dq != nullptr, need_kv = dk != nullptr || dv != nullptr;
  Tensor gq, gk, gv;
  if (!(g.B * g.Hq * g.T > 0 && (need_q || need_kv))) {
    gq = zeros(q_.shape(), dt); gk = zeros(k_.shape(), dt); gv = zeros(v_.shape(), dt);
  } else {
    Tensor q = rows_unit(q_), k = rows_unit(k_), v = rows_unit(v_);
    // out/dout in q's dtype (the pre-pass reads them in one storage type)
    Tensor o = rows_unit(cast(out_, dt)), dO = rows_unit(cast(dout_, dt));
    Tensor lse = contiguous(cast(lse_, cd));
    MaskTensors mt(key_mask, segment_ids);
    const int64_t rows = g.B * g.Hq * g.T;
    Tensor dsum = Tensor::empty({rows}, cd, Device::CUDA), ladj = Tensor::empty({rows}, cd, Device::CUDA);
    dispatch_float(dt, op, [&](auto tag) {
      using S = decltype(tag);
      using C = typename Compute<S>::type;
      const unsigned blocks = grid_for(rows * 32, 256, sm_count());
      bwd_pre_kernel<S, C><<<blocks, 256, 0, cur_stream()>>>((const S*)o.raw(), st4(o), (const S*)dO.raw(), st4(dO),
                                                             (const C*)lse.raw(), g, (C*)dsum.raw(), (C*)ladj.raw());
      PK_CUDA_CHECK_LAUNCH();
    });
    gk = Tensor::empty(k_.shape(), dt, Device::CUDA);
    gv = Tensor::empty(v_.shape(), dt, Device::CUDA);
    if (use_mma(g, dt, {&q, &k, &v, &dO})) {
      Tensor acc;
      if (need_q) {
        acc = Tensor::empty({g.B, g.Hq, g.T, g.D}, DType::F32, Device::CUDA);
        PK_CUDA_CHECK(cudaMemsetAsync(acc.raw(), 0, acc.nbytes(), cur_stream()));
      }
      const float sc = (float)scale, cap = (float)softcap;
      if (dt == DType::BF16) {
        if (g.D == 64) launch_bwd_mma<__nv_bfloat16, 64>(g, q, k, v, dO, mt.m, sc, cap, dsum, ladj, need_q, acc, gk, gv);
        else launch_bwd_mma<__nv_bfloat16, 128>(g, q, k, v, dO, mt.m, sc, cap, dsum, ladj, need_q, acc, gk, gv);
      } else {
        if (g.D == 64) launch_bwd_mma<__half, 64>(g, q, k, v, dO, mt.m, sc, cap, dsum, ladj, need_q, acc, gk, gv);
        else launch_bwd_mma<__half, 128>(g, q, k, v, dO, mt.m, sc, cap, dsum, ladj, need_q, acc, gk, gv);
      }
      if (need_q) {
        gq = Tensor::empty(q_.shape(), dt, Device::CUDA);
        if (dt == DType::BF16) launch(dq_finish_kernel<__nv_bfloat16>, acc.numel(), acc.data<float>(), acc.numel(), sc, (__nv_bfloat16*)gq.raw());
        else launch(dq_finish_kernel<__half>, acc.numel(), acc.data<float>(), acc.numel(), sc, (__half*)gq.raw());
      }
    } else {
      dispatch_float(dt, op, [&](auto tag) {
        using S = decltype(tag);
        using C = typename Compute<S>::type;
        cudaStream_t st = cur_stream();
        if (need_kv) {
          const size_t per = (size_t)(2 * g.D + 2 * g.Dv + 64) * sizeof(C);
          const int warps = generic_warps(per, op, g);
          const int64_t krows = g.B * g.Hkv * g.S, blocks = (krows + warps - 1) / warps;
          dkdv_generic_kernel<S, C><<<(unsigned)blocks, 32 * warps, per * warps, st>>>(
              (const S*)q.raw(), st4(q), (const S*)k.raw(), st4(k), (const S*)v.raw(), st4(v), (const S*)dO.raw(),
              st4(dO), g, mt.m, (C)scale, (C)softcap, (const C*)dsum.raw(), (const C*)ladj.raw(), (S*)gk.raw(),
              (S*)gv.raw());
          PK_CUDA_CHECK_LAUNCH();
        }
        if (need_q) {
          gq = Tensor::empty(q_.shape(), dt, Device::CUDA);
          const size_t per = (size_t)(2 * g.D + g.Dv + 32) * sizeof(C);
          const int warps = generic_warps(per, op, g);
          const int64_t blocks = (rows + warps - 1) / warps;
          dq_generic_kernel<S, C><<<(unsigned)blocks, 32 * warps, per * warps, st>>>(
              (const S*)q.raw(), st4(q), (const S*)k.raw(), st4(k), (const S*)v.raw(), st4(v), (const S*)dO.raw(),
              st4(dO), g, mt.m, (C)scale, (C)softcap, (const C*)dsum.raw(), (const C*)ladj.raw(), (S*)gq.raw());
          PK_CUDA_CHECK_LAUNCH();
        }
      });
    }
  }
  if (dq) *dq = gq;
  if (dk) *dk = gk;
  if (dv) *dv = gv;
}

// ---- registration into the dispatch table (attention / cross-entropy / softmax block) ----
namespace {
struct AttentionRegistrar {
  AttentionRegistrar() {
    CudaOps& o = cuda_ops();
    o.attention_forward = attention_forward;
    o.attention_backward = attention_backward;
  }
};
AttentionRegistrar attention_registrar;
}  // namespace

}  // namespace cuda
}  // namespace pk
