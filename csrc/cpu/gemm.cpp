// gemm.cpp — the GEMM driver: cache blocking, packing, threading and ISA dispatch; plus the
// scalar micro-kernel, the portable packer and the f64 reference GEMM.
//
// Algorithm (GotoBLAS/BLIS, "vector along N" because C is row-major):
//
//   for ic in M step MC                 A block (MC x KC, packed once, shared by all threads)
//     for pc in K step KC               -> stays in L3 / shared cache
//       pack A[ic:+MC, pc:+KC]          (phase 1, parallel over MR panels)
//       parallel over threads:          (phase 2) threads take column chunks (<= NC) of C
//         for jc in its chunk step NC
//           pack B[pc:+KC, jc:+NC]      B block, private to the thread -> L2
//           for ir in its MR panels     A micro-panel MR x KC -> L1 (reused NC/NR times)
//             for jr in NR panels       B micro-panel KC x NR streams from L2
//               micro-kernel            MR x NR accumulators in registers
//
// Why this order: the micro-kernel broadcasts A and loads B as vectors, so the operand that must
// sit in L1 is the small A micro-panel and the one streamed from L2 is the B block. Packing B per
// thread keeps each core's B block in its own L2 and needs no synchronisation; packing A once per
// (ic, pc) and sharing it avoids doing that work once per thread. The two phases are separate
// parallel_run calls (the pool has no barrier, and may run the threads one after another).
//
// Threads split the rows of C into tm parts (tm chosen by a small cost model: 1 unless N is too
// narrow to share) and take column chunks of each part dynamically; splitting along N is
// preferred because threads then share the packed A block and each packs only its own B chunk.
//
// Packing reads operands through PanelLoaders (gemm_kernels.h), converting bf16/f16 to f32, so
// the micro-kernels only ever see f32 panels and new source formats (NF4) need no kernel work.
//
// bf16 compute (GemmCompute::Bf16, opt-in): the same driver runs a bf16-compute KernelSet whose
// panels hold bf16 k-pairs (gemm_kernels.h); every size below is then counted in "k units" of
// 4 bytes (one k-pair), so the buffers, panel offsets and blocking code are shared.
#include "cpu/gemm.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "core/cpu_features.h"
#include "core/host_allocator.h"
#include "core/parallel.h"
#include "cpu/gemm_kernels.h"

namespace pk {
namespace gemm {

namespace {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// ---------------------------------------------------------------------------------------------
// Per-thread packing buffers: grown on demand, 64-byte aligned, kept for the next call (a GEMM
// is called thousands of times per training step; malloc per call would show up for small ones).
struct PackBuffer {
  float* p = nullptr;
  size_t cap = 0;  // floats
  ~PackBuffer() { std::free(p); }
  float* get(size_t n) {
    if (n > cap) {
      std::free(p);
      size_t bytes = (size_t)round_up((int64_t)(n * sizeof(float)), 4096);
      p = static_cast<float*>(std::aligned_alloc(4096, bytes));
      if (!p) throw std::bad_alloc();
      cap = bytes / sizeof(float);
    }
    return p;
  }
};
thread_local PackBuffer t_pack_a;  // owned by the calling thread, shared read-only in phase 2
thread_local PackBuffer t_pack_b;  // private B block of each thread
thread_local PackBuffer t_pack_t;  // f32 staging of a loader without pack_bf16 (bf16 compute)
// A temporary f32 M×N buffer from the host allocator's cache of large blocks (a fresh malloc of
// this size would be a fresh mmap, i.e. page faults, on every call).
struct HostBuffer {
  void* p = nullptr;
  size_t cap = 0;
  explicit HostBuffer(size_t bytes) {
    p = host_alloc(bytes, &cap);
    if (!p) throw std::bad_alloc();
  }
  ~HostBuffer() { host_free(p, cap); }
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;
  float* f32() const { return static_cast<float*>(p); }
};

// Length of one panel column of a kc-long K block, in 4-byte units: kc for f32 panels, ceil(kc/2)
// k-pairs for bf16-pair panels.
inline int64_t kunits(const KernelSet& ks, int64_t kc) { return ks.bf16 ? (kc + 1) / 2 : kc; }

// Packs through the loader in the layout `ks` consumes.
void pack_for(const KernelSet& ks, const PanelLoader& L, int64_t k0, int64_t kc, int64_t p0, int64_t np, int w,
              float* dst) {
  if (!ks.bf16) { L.pack(L, k0, kc, p0, np, w, dst); return; }
  uint16_t* d16 = reinterpret_cast<uint16_t*>(dst);
  if (L.pack_bf16) { L.pack_bf16(L, k0, kc, p0, np, w, d16); return; }
  // A loader with only an f32 packer (e.g. the NF4 dequantizer): f32 panels, then bf16 pairs.
  // Each staged panel is a kc x w row-major f32 matrix (unit stride along p), which the set's own
  // bf16 packer converts with its vector copy path (zero pair-fill of an odd kc included).
  const int64_t npan = ceil_div(np, w), kc2 = (kc + 1) / 2;
  float* tmp = t_pack_t.get((size_t)(npan * w * kc));
  L.pack(L, k0, kc, p0, np, w, tmp);
  const PackBf16Fn convert = ks.pack_dense_bf16 ? ks.pack_dense_bf16 : pack_generic_bf16;
  for (int64_t q = 0; q < npan; q++) {
    PanelLoader S;
    S.data = tmp + q * kc * w;
    S.dtype = DType::F32;
    S.s_p = 1;
    S.s_k = w;
    convert(S, 0, kc, 0, std::min<int64_t>(w, np - q * w), w, d16 + q * kc2 * w * 2);
  }
}

// ---------------------------------------------------------------------------------------------
// Scalar fallback micro-kernel: 4 x 8 (the baseline build may auto-vectorise it with SSE2; 8
// accumulator vectors + operands fit the 16 xmm registers).
constexpr int kScalarMR = 4, kScalarNR = 8;

void ukernel_scalar(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float alpha,
                    float beta) {
  float acc[kScalarMR][kScalarNR] = {};
  for (int64_t k = 0; k < kc; k++) {
    for (int i = 0; i < kScalarMR; i++) {
      const float ai = a[i];
      for (int j = 0; j < kScalarNR; j++) acc[i][j] += ai * b[j];
    }
    a += kScalarMR;
    b += kScalarNR;
  }
  for (int i = 0; i < kScalarMR; i++) {
    float* ci = c + i * ldc;
    if (beta == 0.0f) {
      for (int j = 0; j < kScalarNR; j++) ci[j] = alpha * acc[i][j];
    } else {
      for (int j = 0; j < kScalarNR; j++) ci[j] = alpha * acc[i][j] + beta * ci[j];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Generic packer: any dtype, any strides (the vector packers handle the unit-stride cases).
template <class Load>
void pack_generic_t(const PanelLoader& L, int64_t k0, int64_t kc, int64_t p0, int64_t np, int w,
                    float* dst, Load load) {
  const int64_t npan = ceil_div(np, w);
  for (int64_t q = 0; q < npan; q++) {
    const int64_t rem = std::min<int64_t>(w, np - q * w);
    float* d = dst + q * kc * w;
    const int64_t pbase = (p0 + q * w) * L.s_p;
    for (int64_t k = 0; k < kc; k++) {
      const int64_t kbase = pbase + (k0 + k) * L.s_k;
      int r = 0;
      for (; r < rem; r++) d[r] = load(kbase + r * L.s_p);
      for (; r < w; r++) d[r] = 0.0f;
      d += w;
    }
  }
}

void scale_c(int64_t M, int64_t N, float* C, int64_t ldc, float beta) {
  for (int64_t i = 0; i < M; i++) {
    float* ci = C + i * ldc;
    if (beta == 0.0f)
      std::fill(ci, ci + N, 0.0f);
    else if (beta != 1.0f)
      for (int64_t j = 0; j < N; j++) ci[j] *= beta;
  }
}

// ---------------------------------------------------------------------------------------------
// Thread grid: tm x tn threads over (M, N). Cost of one thread ~ its micro-tile flops plus its
// packing work (B packing is private, so splitting along M repeats it; A packing is shared).
struct Grid { int tm, tn; };

Grid choose_grid(int64_t M, int64_t N, int64_t K, int nt, const KernelSet& ks) {
  Grid best{1, nt};
  double best_cost = -1;
  const int64_t mpan = ceil_div(M, ks.mr), npan = ceil_div(N, ks.nr);
  for (int tm = 1; tm <= nt; tm++) {
    if (nt % tm) continue;
    const int tn = nt / tm;
    const double mp = (double)ceil_div(mpan, tm) * ks.mr;
    const double np = (double)ceil_div(npan, tn) * ks.nr;
    const double ic_blocks = (double)ceil_div((int64_t)mp, ks.mc);
    // packing an element costs roughly as much as ~16 micro-kernel multiply-adds
    const double cost = mp * np * (double)K + 16.0 * (np * (double)K * ic_blocks + (double)M * K / nt);
    if (best_cost < 0 || cost < best_cost * 0.999) { best_cost = cost; best = {tm, tn}; }
  }
  return best;
}

// Splits `count` units into `parts` near-equal contiguous ranges; returns range `idx`.
inline void split_range(int64_t count, int parts, int idx, int64_t* lo, int64_t* hi) {
  const int64_t base = count / parts, extra = count % parts;
  *lo = idx * base + std::min<int64_t>(idx, extra);
  *hi = *lo + base + (idx < extra ? 1 : 0);
}

// Writes an edge tile (mr x nr < MR x NR) computed into a buffer back to C.
void store_edge(const float* tile, int nr_full, int mr, int nr, float* c, int64_t ldc, float alpha,
                float beta) {
  for (int i = 0; i < mr; i++) {
    const float* t = tile + i * nr_full;
    float* ci = c + i * ldc;
    if (beta == 0.0f)
      for (int j = 0; j < nr; j++) ci[j] = alpha * t[j];
    else
      for (int j = 0; j < nr; j++) ci[j] = alpha * t[j] + beta * ci[j];
  }
}

// One thread's share of phase 2: C[rows, cols] += A block (packed) x B (packed here, per NC).
// Rows are those of the A block starting at global row `row0`; C (ld ldc) is the full matrix, or
// null when an epilogue takes every tile (single K block). With `epi` and `last_k` (the final K
// block) each finished tile goes through the epilogue instead of C; C then holds (when pc > 0)
// the sum of the earlier K blocks for it.
void compute_block(const KernelSet& ks, const PanelLoader& b, const float* Ap, int64_t mc_rows,
                   int64_t pan_lo, int64_t pan_hi, int64_t pc, int64_t kc, int64_t j_lo, int64_t j_hi,
                   float* C, int64_t ldc, int64_t row0, float alpha, float beta, const Bf16Epilogue* epi, bool last_k) {
  const int MR = ks.mr, NR = ks.nr;
  alignas(64) float tile[16 * 64];  // edge-tile buffer; MR*NR <= 1024 for every kernel set
  const EpiFn epi_fn = ks.epi_bf16 ? ks.epi_bf16 : epi_bf16_generic;
  const bool to_epi = epi && last_k;
  for (int64_t jc = j_lo; jc < j_hi; jc += ks.nc) {
    const int64_t nc = std::min<int64_t>(ks.nc, j_hi - jc);
    const int64_t ku = kunits(ks, kc);
    float* Bp = t_pack_b.get((size_t)(round_up(nc, NR) * ku));
    pack_for(ks, b, pc, kc, jc, nc, NR, Bp);
    for (int64_t q = pan_lo; q < pan_hi; q++) {
      const float* ap = Ap + q * MR * ku;
      const int mr = (int)std::min<int64_t>(MR, mc_rows - q * MR);
      const int64_t i0 = row0 + q * MR;
      for (int64_t jr = 0; jr < nc; jr += NR) {
        const float* bp = Bp + jr * ku;
        const int nr = (int)std::min<int64_t>(NR, nc - jr);
        const int64_t j0 = jc + jr;
        if (to_epi) {
          ks.kernel(ku, ap, bp, tile, NR, alpha, 0.0f);
          epi_fn(*epi, tile, NR, i0, j0, mr, nr, pc > 0 ? C + i0 * ldc + j0 : nullptr, ldc);
          continue;
        }
        float* c = C + i0 * ldc + j0;
        if (mr == MR && nr == NR) {
          ks.kernel(ku, ap, bp, c, ldc, alpha, beta);
        } else {
          ks.kernel(ku, ap, bp, tile, NR, 1.0f, 0.0f);
          store_edge(tile, NR, mr, nr, c, ldc, alpha, beta);
        }
      }
    }
  }
}

// An epilogue over a finished f32 matrix (K = 0 or alpha = 0: P = 0), tile by tile.
void epilogue_over(const KernelSet& ks, const Bf16Epilogue& e, const float* P, int64_t ldp, int64_t M, int64_t N) {
  const EpiFn fn = ks.epi_bf16 ? ks.epi_bf16 : epi_bf16_generic;
  parallel_for(0, ceil_div(M, 16), 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; b++)
      for (int64_t j = 0; j < N; j += 64) {
        const int64_t i = b * 16;
        fn(e, P + i * ldp + j, ldp, i, j, (int)std::min<int64_t>(16, M - i), (int)std::min<int64_t>(64, N - j), nullptr, 0);
      }
  });
}

}  // namespace

// ---------------------------------------------------------------------------------------------
void pack_generic(const PanelLoader& L, int64_t k0, int64_t kc, int64_t p0, int64_t np, int w, float* dst) {
  switch (L.dtype) {
    case DType::F32: {
      const float* s = static_cast<const float*>(L.data);
      pack_generic_t(L, k0, kc, p0, np, w, dst, [s](int64_t o) { return s[o]; });
      break;
    }
    case DType::BF16: {
      const uint16_t* s = static_cast<const uint16_t*>(L.data);
      pack_generic_t(L, k0, kc, p0, np, w, dst, [s](int64_t o) { return bf16_to_f32(s[o]); });
      break;
    }
    case DType::F16: {
      const uint16_t* s = static_cast<const uint16_t*>(L.data);
      pack_generic_t(L, k0, kc, p0, np, w, dst, [s](int64_t o) { return f16_to_f32(s[o]); });
      break;
    }
    default: {
      const double* s = static_cast<const double*>(L.data);  // F64 (not used by the op layer)
      pack_generic_t(L, k0, kc, p0, np, w, dst, [s](int64_t o) { return (float)s[o]; });
      break;
    }
  }
}

void pack_generic_bf16(const PanelLoader& L, int64_t k0, int64_t kc, int64_t p0, int64_t np, int w, uint16_t* dst) {
  auto run = [&](auto load) {
    const int64_t npan = ceil_div(np, w), kc2 = (kc + 1) / 2;
    for (int64_t q = 0; q < npan; q++) {
      const int64_t rem = std::min<int64_t>(w, np - q * w);
      uint16_t* d = dst + q * kc2 * w * 2;
      const int64_t pbase = (p0 + q * w) * L.s_p;
      for (int64_t k2 = 0; k2 < kc2; k2++) {
        for (int h = 0; h < 2; h++) {
          const int64_t k = 2 * k2 + h;
          const int64_t kbase = pbase + (k0 + k) * L.s_k;
          int r = 0;
          if (k < kc)
            for (; r < rem; r++) d[r * 2 + h] = load(kbase + r * L.s_p);
          for (; r < w; r++) d[r * 2 + h] = 0;
        }
        d += 2 * w;
      }
    }
  };
  switch (L.dtype) {
    case DType::F32: {
      const float* s = static_cast<const float*>(L.data);
      run([s](int64_t o) { return f32_to_bf16(s[o]); });
      break;
    }
    case DType::BF16: {
      const uint16_t* s = static_cast<const uint16_t*>(L.data);
      run([s](int64_t o) { return s[o]; });
      break;
    }
    case DType::F16: {
      const uint16_t* s = static_cast<const uint16_t*>(L.data);
      run([s](int64_t o) { return f32_to_bf16(f16_to_f32(s[o])); });
      break;
    }
    default: {
      const double* s = static_cast<const double*>(L.data);
      run([s](int64_t o) { return f32_to_bf16((float)s[o]); });
      break;
    }
  }
}

void epi_bf16_generic(const Bf16Epilogue& e, const float* tile, int64_t ldt, int64_t i0, int64_t j0, int mr, int nr,
                      const float* prev, int64_t ldp) {
  for (int i = 0; i < mr; i++) {
    const float* t = tile + i * ldt;
    const float* l = e.r ? e.L + (i0 + i) * e.ldl : nullptr;
    uint16_t* o = e.out + (i0 + i) * e.ldo + j0;
    for (int j = 0; j < nr; j++) {
      float v = t[j];
      if (prev) v += prev[i * ldp + j];
      if (e.bias) v += e.bias[j0 + j];
      if (e.round_first) v = bf16_to_f32(f32_to_bf16(v));
      if (e.r) {
        float lr = 0.0f;
        for (int64_t k = 0; k < e.r; k++) lr = std::fma(l[k], e.R[k * e.ldr + j0 + j], lr);
        v = std::fma(e.alpha_lr, lr, v);
      }
      o[j] = f32_to_bf16(v);
    }
  }
}

// Scalar blocking: small tiles, so moderate blocks keep A (MC x KC = 32 KB) in L2.
const KernelSet& kernels_scalar() {
  static const KernelSet ks{"scalar", kScalarMR, kScalarNR, 64, 128, 1024, ukernel_scalar, pack_generic, pack_generic_bf16, false};
  return ks;
}

const KernelSet& active_kernels() {
  // The node-gyp fallback build (PEFTKIT_NO_SIMD_KERNELS) compiles no ISA-specific files.
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(PEFTKIT_NO_SIMD_KERNELS)
  switch (cpu_isa()) {
    case Isa::Avx512: return kernels_avx512();
    case Isa::Avx2: return kernels_avx2();
    default: break;
  }
#endif
  return kernels_scalar();
}

PanelLoader dense_loader_a(const GemmOperand& A, const KernelSet& ks) {
  PanelLoader L;
  L.pack = ks.pack_dense;
  L.pack_bf16 = ks.pack_dense_bf16;
  L.data = A.data;
  L.dtype = A.dtype;
  L.s_p = A.rs;  // panel dimension = rows of A
  L.s_k = A.cs;
  return L;
}

PanelLoader dense_loader_b(const GemmOperand& B, const KernelSet& ks) {
  PanelLoader L;
  L.pack = ks.pack_dense;
  L.pack_bf16 = ks.pack_dense_bf16;
  L.data = B.data;
  L.dtype = B.dtype;
  L.s_p = B.cs;  // panel dimension = columns of B
  L.s_k = B.rs;
  return L;
}

void gemm_f32_loaders(int64_t M, int64_t N, int64_t K, const PanelLoader& a, const PanelLoader& b,
                      float* C, int64_t ldc, float alpha, float beta, int nthreads, const KernelSet& ks,
                      const Bf16Epilogue* epi) {
  if (M <= 0 || N <= 0) return;
  if (epi && (K <= 0 || alpha == 0.0f)) {  // P = 0: only bias / low-rank term / rounding remain
    HostBuffer z((size_t)(M * N) * sizeof(float));
    std::memset(z.p, 0, (size_t)(M * N) * sizeof(float));
    epilogue_over(ks, *epi, z.f32(), N, M, N);
    return;
  }
  if (K <= 0 || alpha == 0.0f) { scale_c(M, N, C, ldc, beta); return; }

  int nt = nthreads <= 0 ? num_threads() : std::min(nthreads, num_threads());
  // Below ~64^3 the fork/join costs more than it saves.
  if ((double)M * N * K < 262144.0) nt = 1;
  nt = (int)std::max<int64_t>(1, std::min<int64_t>(nt, ceil_div(M, ks.mr) * ceil_div(N, ks.nr)));
  const Grid g = choose_grid(M, N, K, nt, ks);

  // Even out the blocks so the last one is not a sliver (e.g. K = 300 -> 150 + 150, not 256 + 44).
  // bf16 pairs: K blocks of even length, so only the last block can hold a padded pair.
  int64_t KC = ceil_div(K, ceil_div(K, ks.kc));
  if (ks.bf16) KC = round_up(KC, 2);
  // An epilogue with several K blocks: the earlier blocks' partial sums go through an f32 buffer
  // (the final block reads them back per tile); with one K block no f32 C exists at all.
  std::unique_ptr<HostBuffer> partial;
  if (epi) {
    beta = 0.0f;
    if (KC < K) {
      partial.reset(new HostBuffer((size_t)(M * N) * sizeof(float)));
      C = partial->f32();
      ldc = N;
    } else {
      C = nullptr;
      ldc = 0;
    }
  }
  const int64_t MC = round_up(ceil_div(M, ceil_div(M, ks.mc)), ks.mr);
  const int MR = ks.mr;

  // Phase-2 work items: g.tm row parts x column chunks (whole NR panels, at most NC wide), taken
  // dynamically. Chunks are sized so each thread gets ~4 of them: a thread slowed down by another
  // process (a shared machine, the JS main thread) leaves its remaining chunks to the others
  // instead of making them wait at the end of the block.
  // Skinny products (LoRA's rank-r sides: N <= NR or M <= MR) have nothing worth sharing between
  // threads — the single B (or A) panel is tiny — so each thread packs what it needs itself and the
  // whole product is one fork/join instead of two per K block (a pool wake-up costs tens of us on a
  // busy machine; these products take 0.1-1 ms). Same K blocks and tiles as below, so the results
  // are bit-identical to the general path.
  const int64_t mpan_all = ceil_div(M, MR), npan_all = ceil_div(N, ks.nr);
  if (nt > 1 && (npan_all == 1 || mpan_all == 1)) {
    const bool split_rows = npan_all == 1;
    parallel_run(nt, [&](int tid, int n) {
      int64_t lo, hi;
      split_range(split_rows ? mpan_all : npan_all, n, tid, &lo, &hi);
      if (lo >= hi) return;
      if (split_rows) {
        const int64_t step = MC / MR;
        for (int64_t q0 = lo; q0 < hi; q0 += step) {
          const int64_t q1 = std::min(hi, q0 + step), r0 = q0 * MR, rows = std::min(M, q1 * MR) - r0;
          for (int64_t pc = 0; pc < K; pc += KC) {
            const int64_t kc = std::min(KC, K - pc);
            float* Ap = t_pack_a.get((size_t)((q1 - q0) * MR * kunits(ks, kc)));
            pack_for(ks, a, pc, kc, r0, rows, MR, Ap);
            compute_block(ks, b, Ap, rows, 0, q1 - q0, pc, kc, 0, N, C, ldc, r0, alpha, pc == 0 ? beta : 1.0f, epi,
                          pc + kc >= K);
          }
        }
      } else {  // M <= MR: whole NR panels of columns; every thread packs the one A panel
        const int64_t j0 = lo * ks.nr, j1 = std::min(N, hi * ks.nr);
        for (int64_t pc = 0; pc < K; pc += KC) {
          const int64_t kc = std::min(KC, K - pc);
          float* Ap = t_pack_a.get((size_t)(MR * kunits(ks, kc)));
          pack_for(ks, a, pc, kc, 0, M, MR, Ap);
          compute_block(ks, b, Ap, M, 0, 1, pc, kc, j0, j1, C, ldc, 0, alpha, pc == 0 ? beta : 1.0f, epi, pc + kc >= K);
        }
      }
    });
    return;
  }

  const int64_t chunk = nt == 1 ? ks.nc
                                : std::min<int64_t>(ks.nc, std::max<int64_t>(2 * ks.nr, round_up(ceil_div(N, 4 * nt), ks.nr)));
  const int64_t items = g.tm * ceil_div(N, chunk);

  for (int64_t ic = 0; ic < M; ic += MC) {
    const int64_t mc = std::min(MC, M - ic);
    const int64_t mpan = ceil_div(mc, MR);
    for (int64_t pc = 0; pc < K; pc += KC) {
      const int64_t kc = std::min(KC, K - pc);
      const float beta_k = pc == 0 ? beta : 1.0f;  // later K blocks accumulate onto C
      const int64_t ku = kunits(ks, kc);
      float* Ap = t_pack_a.get((size_t)(mpan * MR * ku));

      // Phase 1: pack the A block, MR panels split across the threads.
      parallel_run(nt, [&](int tid, int n) {
        int64_t lo, hi;
        split_range(mpan, n, tid, &lo, &hi);
        if (lo < hi)
          pack_for(ks, a, pc, kc, ic + lo * MR, std::min(mc, hi * MR) - lo * MR, MR, Ap + lo * MR * ku);
      });

      // Phase 2: threads take (row part, column chunk) items of this (ic, pc) block in turn.
      std::atomic<int64_t> next{0};
      parallel_run(nt, [&](int, int) {
        for (int64_t it; (it = next.fetch_add(1, std::memory_order_relaxed)) < items;) {
          int64_t plo, phi;
          split_range(mpan, g.tm, (int)(it % g.tm), &plo, &phi);
          const int64_t j_lo = (it / g.tm) * chunk, j_hi = std::min(N, j_lo + chunk);
          if (plo < phi)
            compute_block(ks, b, Ap, mc, plo, phi, pc, kc, j_lo, j_hi, C, ldc, ic, alpha, beta_k, epi, pc + kc >= K);
        }
      });
    }
  }
}

bool bf16_compute_ok() {
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(PEFTKIT_NO_SIMD_KERNELS)
  return cpu_bf16();
#else
  return false;
#endif
}

// The kernel set for one product: the active set, or its narrow-tile variant for the thin
// shapes of LoRA (rank-r sides) where the wide tile wastes half its work; bf16-compute sets
// only on request and where the CPU has AVX512_BF16.
const KernelSet& kernels_for(int64_t M, int64_t N, GemmCompute compute) {
  const KernelSet& ks = active_kernels();
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(PEFTKIT_NO_SIMD_KERNELS)
  if (&ks == &kernels_avx512()) {
    const bool narrow = N <= 16 || M <= 16;
    if (compute == GemmCompute::Bf16 && bf16_compute_ok())
      return narrow ? kernels_avx512_bf16_narrow() : kernels_avx512_bf16();
    if (narrow) return kernels_avx512_narrow();
  }
#endif
  (void)M; (void)N; (void)compute;
  return ks;
}

}  // namespace gemm

// =============================================================================================
void gemm_f32(int64_t M, int64_t N, int64_t K, const GemmOperand& A, const GemmOperand& B, float* C,
              int64_t ldc, float alpha, float beta, int nthreads, GemmCompute compute) {
  const gemm::KernelSet& ks = gemm::kernels_for(M, N, compute);
  gemm::gemm_f32_loaders(M, N, K, gemm::dense_loader_a(A, ks), gemm::dense_loader_b(B, ks), C, ldc,
                         alpha, beta, nthreads, ks);
}

void gemm_bf16_out(int64_t M, int64_t N, int64_t K, const GemmOperand& A, const GemmOperand& B, const Bf16Epilogue& epi,
                   int nthreads, GemmCompute compute) {
  if (M <= 0 || N <= 0) return;
  const gemm::KernelSet& ks = gemm::kernels_for(M, N, compute);
  if (ks.epi_bf16) {
    gemm::gemm_f32_loaders(M, N, K, gemm::dense_loader_a(A, ks), gemm::dense_loader_b(B, ks), nullptr, 0, 1.0f, 0.0f,
                           nthreads, ks, &epi);
    return;
  }
  // ISAs without a vector epilogue: the f32 product, then the unfused epilogue.
  gemm::HostBuffer buf((size_t)(M * N) * sizeof(float));
  float* P = buf.f32();
  gemm::gemm_f32_loaders(M, N, K, gemm::dense_loader_a(A, ks), gemm::dense_loader_b(B, ks), P, N, 1.0f, 0.0f, nthreads, ks);
  bf16_epilogue_unfused(M, N, P, epi);
}

void bf16_epilogue_unfused(int64_t M, int64_t N, float* P, const Bf16Epilogue& epi) {
  // Row blocks (multiples of the 12- and 16-row micro-tiles) small enough to stay in L2 through
  // the three steps: separate full passes over an M×N f32 buffer cost as much as a small bf16 GEMM.
  const int64_t rows = std::max<int64_t>(48, (65536 / std::max<int64_t>(N, 1)) / 48 * 48);
  parallel_for(0, (M + rows - 1) / rows, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; b++) {
      const int64_t i0 = b * rows, n = std::min(rows, M - i0);
      float* p = P + i0 * N;
      for (int64_t i = 0; i < n; i++) {
        if (epi.bias) for (int64_t j = 0; j < N; j++) p[i * N + j] += epi.bias[j];
        if (epi.round_first) bf16_round_run(p + i * N, N);
      }
      if (epi.r > 0) {
        const GemmOperand L{epi.L + i0 * epi.ldl, DType::F32, epi.ldl, 1}, R{epi.R, DType::F32, epi.ldr, 1};
        gemm_f32(n, N, epi.r, L, R, p, N, epi.alpha_lr, 1.0f, 1);
      }
      for (int64_t i = 0; i < n; i++) f32_to_bf16_run(p + i * N, epi.out + (i0 + i) * epi.ldo, N);
    }
  });
}

bool gemm_bf16_compute_available() { return gemm::bf16_compute_ok(); }

// f64 reference GEMM: i-k-j order inside cache blocks (the j loop streams a row of B and of C),
// correct for any strides. Only gradient checks use it, so it is deliberately simple.
void gemm_f64(int64_t M, int64_t N, int64_t K, const double* A, int64_t a_rs, int64_t a_cs,
              const double* B, int64_t b_rs, int64_t b_cs, double* C, int64_t ldc, double alpha,
              double beta) {
  if (M <= 0 || N <= 0) return;
  for (int64_t i = 0; i < M; i++) {
    double* ci = C + i * ldc;
    if (beta == 0.0)
      std::fill(ci, ci + N, 0.0);
    else if (beta != 1.0)
      for (int64_t j = 0; j < N; j++) ci[j] *= beta;
  }
  if (K <= 0 || alpha == 0.0) return;
  constexpr int64_t BM = 64, BK = 128, BN = 512;  // ~ 64 KB of B + a few rows of C per block
  for (int64_t j0 = 0; j0 < N; j0 += BN) {
    const int64_t j1 = std::min(N, j0 + BN);
    for (int64_t k0 = 0; k0 < K; k0 += BK) {
      const int64_t k1 = std::min(K, k0 + BK);
      for (int64_t i0 = 0; i0 < M; i0 += BM) {
        const int64_t i1 = std::min(M, i0 + BM);
        for (int64_t i = i0; i < i1; i++) {
          double* ci = C + i * ldc;
          for (int64_t k = k0; k < k1; k++) {
            const double aik = alpha * A[i * a_rs + k * a_cs];
            const double* bk = B + k * b_rs;
            if (b_cs == 1)
              for (int64_t j = j0; j < j1; j++) ci[j] += aik * bk[j];
            else
              for (int64_t j = j0; j < j1; j++) ci[j] += aik * bk[j * b_cs];
          }
        }
      }
    }
  }
}

}  // namespace pk
