// attention_common.h — what the two CPU attention drivers share: the f32/f64 one (attention.cpp)
// and the bf16 one (attention_bf16.cpp). Block sizes, the problem geometry with its visibility
// rules (causal, sliding window), key padding and segment (sequence packing) masks, and the
// dynamic task loop. Kept in one place so both paths see exactly the same keys.
//
// Baseline-ISA code only: include it from translation units compiled without vector flags (the
// *_avx2.cpp / *_avx512.cpp kernels must not, or the linker could pick their copy of an inline
// function for baseline callers).
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <vector>

#include "core/parallel.h"
#include "core/tensor.h"

namespace pk {
namespace attn {

constexpr int64_t kBr = 64;  // query rows per block
constexpr int64_t kBc = 64;  // keys per block

// ---------------------------------------------------------------------------------------------
// Problem geometry and the visibility rules (attention.h).

struct Geo {
  int64_t B = 0, Hq = 0, Hkv = 0, T = 0, S = 0, D = 0, Dv = 0;
  int64_t group = 1;   // query heads per kv head
  int64_t off = 0;     // absolute position of query 0 = S - T
  bool causal = true;
  int64_t window = 0;  // 0 = none
  int64_t nqb = 0, nkb = 0;

  // Keys visible to query row i (ignoring padding): [key_lo(i), key_hi(i)).
  int64_t key_lo(int64_t i) const { return window > 0 ? std::max<int64_t>(0, off + i - window + 1) : 0; }
  int64_t key_hi(int64_t i) const { return causal ? std::min<int64_t>(S, off + i + 1) : S; }
  // Query rows that see at least one key of [j0, j1): [query_lo, query_hi).
  int64_t query_lo(int64_t j0) const { return causal ? std::min<int64_t>(T, std::max<int64_t>(0, j0 - off)) : 0; }
  int64_t query_hi(int64_t j1) const {
    return window > 0 ? std::min<int64_t>(T, std::max<int64_t>(0, j1 - 1 + window - off)) : T;
  }
};

// The masks of a call (key padding, segment ids) and the visibility tests built on them, in the
// score type T (f32 or f64).
template <class T> struct Visibility {
  Geo g;
  const T* bias = nullptr;        // (B,S) 0 or -inf, null without key_mask
  const uint8_t* kany = nullptr;  // (B,nkb) 1 if the key block holds any real token; null without key_mask
  const int64_t* seg = nullptr;   // (B,S) segment ids, null without segment_ids
  const int64_t* kseg = nullptr;  // (B,nkb,2) [min, max] segment id of each key block

  bool block_padded(int64_t b, int64_t kb) const { return kany && !kany[b * g.nkb + kb]; }

  // [min, max] segment id of query rows [i0, i0+br) (they sit at key positions off + i0 ...).
  void query_segs(int64_t b, int64_t i0, int64_t br, int64_t* lo, int64_t* hi) const {
    *lo = 0; *hi = 0;
    if (!seg || br <= 0) return;
    const int64_t* sq = seg + b * g.S + g.off + i0;
    int64_t a = sq[0], z = sq[0];
    for (int64_t r = 1; r < br; r++) { a = std::min(a, sq[r]); z = std::max(z, sq[r]); }
    *lo = a; *hi = z;
  }
  // True when no (query, key) pair of the tile can be visible: the key block is all padding, or
  // its segment ids cannot match any of the query rows' ([qlo, qhi] from query_segs).
  bool block_skipped(int64_t b, int64_t kb, int64_t qlo, int64_t qhi) const {
    if (block_padded(b, kb)) return true;
    if (!seg) return false;
    const int64_t* ks = kseg + 2 * (b * g.nkb + kb);
    return ks[1] < qlo || ks[0] > qhi;
  }

  // Add the padding bias and -inf outside each row's causal/window range to a (br,bc) score tile
  // at query rows [i0, i0+br) and keys [j0, j0+bc).
  void mask_tile(int64_t b, int64_t i0, int64_t br, int64_t j0, int64_t bc, T* s, int64_t lds) const {
    const T ninf = -std::numeric_limits<T>::infinity();
    if (bias) {
      const T* bb = bias + b * g.S + j0;
      for (int64_t r = 0; r < br; r++)
        for (int64_t c = 0; c < bc; c++) s[r * lds + c] += bb[c];
    }
    if (seg) {  // j0 is always a key block start (kb · kBc)
      const int64_t* sq = seg + b * g.S + g.off + i0;
      const int64_t* sk = seg + b * g.S + j0;
      const int64_t* ks = kseg + 2 * (b * g.nkb + j0 / kBc);
      bool same = ks[0] == ks[1];  // one segment in the key block and in every query row: no mask
      for (int64_t r = 0; same && r < br; r++) same = sq[r] == ks[0];
      if (!same)
        for (int64_t r = 0; r < br; r++) {
          T* row = s + r * lds;
          const int64_t id = sq[r];
          for (int64_t c = 0; c < bc; c++)
            if (sk[c] != id) row[c] = ninf;
        }
    }
    // Interior tiles (every row sees every key of the block) skip the per-row bounds.
    const bool cut_causal = g.causal && j0 + bc - 1 > g.off + i0;
    const bool cut_window = g.window > 0 && (g.off + i0 + br - 1) - j0 >= g.window;
    if (!cut_causal && !cut_window) return;
    for (int64_t r = 0; r < br; r++) {
      const int64_t lo = std::min<int64_t>(bc, std::max<int64_t>(0, g.key_lo(i0 + r) - j0));
      const int64_t hi = std::min<int64_t>(bc, std::max<int64_t>(0, g.key_hi(i0 + r) - j0));
      T* row = s + r * lds;
      for (int64_t c = 0; c < lo; c++) row[c] = ninf;
      for (int64_t c = hi; c < bc; c++) row[c] = ninf;
    }
  }
};

// Run body(task, tid) for task in [0, n) on the pool, handing tasks out one at a time so that
// uneven (causal) tasks balance; scratch is per tid.
template <class F> void run_tasks(int64_t n, int nthreads, F&& body) {
  if (n <= 0) return;
  std::atomic<int64_t> next{0};
  parallel_run((int)std::min<int64_t>(nthreads, n), [&](int tid, int) {
    for (;;) {
      const int64_t t = next.fetch_add(1, std::memory_order_relaxed);
      if (t >= n) break;
      body(t, tid);
    }
  });
}

// Padding bias and per-key-block "any real token" flags from a u8 (B,S) mask.
template <class T> void build_mask(const Tensor& key_mask, const Geo& g, std::vector<T>* bias, std::vector<uint8_t>* kany) {
  Tensor m = key_mask.contiguous();
  const uint8_t* pm = m.data<uint8_t>();
  bias->assign((size_t)(g.B * g.S), T(0));
  kany->assign((size_t)(g.B * g.nkb), 0);
  for (int64_t b = 0; b < g.B; b++)
    for (int64_t j = 0; j < g.S; j++) {
      if (pm[b * g.S + j]) (*kany)[(size_t)(b * g.nkb + j / kBc)] = 1;
      else (*bias)[(size_t)(b * g.S + j)] = -std::numeric_limits<T>::infinity();
    }
}

// Segment ids as int64 (B,S) and the [min, max] id of every key block (B,nkb,2).
inline void build_segments(const Tensor& segment_ids, const Geo& g, std::vector<int64_t>* seg, std::vector<int64_t>* kseg) {
  Tensor s = segment_ids.to(DType::I64).contiguous();
  const int64_t* ps = s.data<int64_t>();
  seg->assign(ps, ps + g.B * g.S);
  kseg->assign((size_t)(2 * g.B * g.nkb), 0);
  for (int64_t b = 0; b < g.B; b++)
    for (int64_t kb = 0; kb < g.nkb; kb++) {
      const int64_t j0 = kb * kBc, j1 = std::min(g.S, j0 + kBc);
      int64_t lo = ps[b * g.S + j0], hi = lo;
      for (int64_t j = j0 + 1; j < j1; j++) { lo = std::min(lo, ps[b * g.S + j]); hi = std::max(hi, ps[b * g.S + j]); }
      (*kseg)[(size_t)(2 * (b * g.nkb + kb))] = lo;
      (*kseg)[(size_t)(2 * (b * g.nkb + kb) + 1)] = hi;
    }
}

// Mask inputs owned by a forward/backward call; points the context at them.
template <class T> struct MaskData {
  std::vector<T> bias;
  std::vector<uint8_t> kany;
  std::vector<int64_t> seg, kseg;
  void attach(Visibility<T>& c, const Tensor& key_mask, const Tensor& segment_ids) {
    if (key_mask.defined()) { build_mask<T>(key_mask, c.g, &bias, &kany); c.bias = bias.data(); c.kany = kany.data(); }
    if (segment_ids.defined()) { build_segments(segment_ids, c.g, &seg, &kseg); c.seg = seg.data(); c.kseg = kseg.data(); }
  }
};

}  // namespace attn
}  // namespace pk
