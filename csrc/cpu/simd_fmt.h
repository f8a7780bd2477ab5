// simd_fmt.h — storage formats for the ISA-generic kernel templates: one vector of W elements of
// an f32 / bf16 / f16 run (full, or its first r lanes) loaded as f32 lanes and stored back with
// round-to-nearest-even (the bits of pk::f32_to_bf16 / f32_to_f16), over the traits VT of
// simd_avx512.h / simd_avx2.h. Lets a kernel read and write bf16 tensors in place instead of
// staging them through f32 buffers. Include only from ISA-flagged translation units, after the
// traits header (anonymous namespace: one private copy per file).
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace pk {
namespace simd {
namespace {

template <class VT> struct F32Fmt {
  using E = float;
  using V = typename VT::V;
  static constexpr DType dt = DType::F32;
  static V ld(const E* p, int r) { return r == VT::W ? VT::load(p) : VT::loadn(p, r); }  // unread lanes are 0
  static void st(E* p, V v, int r) { if (r == VT::W) VT::store(p, v); else VT::storen(p, v, r); }
};
template <class VT, DType T> struct HalfFmt {
  using E = uint16_t;
  using V = typename VT::V;
  static constexpr DType dt = T;
  static V ld(const E* p, int r) { return r == VT::W ? VT::load_h(T, p) : VT::load_hn(T, p, r); }
  static void st(E* p, V v, int r) { if (r == VT::W) VT::store_h(T, p, v); else VT::store_hn(T, p, v, r); }
};

// f(Fmt{}) for the format of dtype t (F32, BF16 or F16: callers check the dtype first).
template <class VT, class F> inline void with_fmt(DType t, F&& f) {
  if (t == DType::BF16) f(HalfFmt<VT, DType::BF16>{});
  else if (t == DType::F16) f(HalfFmt<VT, DType::F16>{});
  else f(F32Fmt<VT>{});
}

// v rounded to the storage dtype of Fmt and widened back (an eager graph's intermediate rounding).
template <class VT, class Fmt> inline typename VT::V round_as(typename VT::V v) {
  if (Fmt::dt == DType::BF16) return VT::round_bf16(v);
  if (Fmt::dt == DType::F16) return VT::round_f16(v);
  return v;
}

}  // namespace
}  // namespace simd
}  // namespace pk
