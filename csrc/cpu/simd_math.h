// simd_math.h — f32 vector math written once against the vector traits (simd::Avx512 /
// simd::Avx2): exp, erf, tanh, sigmoid. Shared by the elementwise / GLU kernels
// (elementwise_kernels.h) and the row kernels (row_kernels.h: softmax-style exps of the
// cross-entropy). Include it only from translation units compiled with the matching ISA flags,
// after the traits header; it lives in an anonymous namespace (one private copy per file).
//
// exp: Cody–Waite reduction + SLEEF expf_u10's degree-6 polynomial; erf: |x| < 0.875:
// x + x·P(x²), else 1 − e^{−x²}·Q(|x|), |x| >= 3.95 rounds to ±1; tanh: |x| < 0.625:
// x + x³·P(x²), else 1 − 2/(e^{2|x|} + 1). Measured against std:: in
// csrc/tests/elementwise_test.cpp: exp <= 1 ulp, erf and tanh <= 2 ulp. Every multiply-add here
// is an explicit fma, so the results do not depend on the compiler's contraction setting.
#pragma once
#include <limits>

namespace pk {
namespace simd {
namespace {

// e^x: q = round(x/ln2), s = x − q·ln2 (two-part ln2), e^s by a degree-6 polynomial, times 2^q.
template <class VT> inline typename VT::V vexp(typename VT::V x) {
  using V = typename VT::V;
  auto c = [](float v) { return VT::set1(v); };
  const V lo = c(-104.0f), hi = c(104.0f);
  V xc = VT::min(hi, VT::max(lo, x));  // NaN passes through (x86 min/max return the second operand)
  V q = VT::round(VT::mul(xc, c(1.442695040888963407359924681001892137f)));
  V s = VT::fma(q, c(-0.693145751953125f), xc);
  s = VT::fma(q, c(-1.428606765330187045e-06f), s);
  V u = c(0.000198527617612853646278381f);
  u = VT::fma(u, s, c(0.00139304355252534151077271f));
  u = VT::fma(u, s, c(0.00833336077630519866943359f));
  u = VT::fma(u, s, c(0.0416664853692054748535156f));
  u = VT::fma(u, s, c(0.166666671633720397949219f));
  u = VT::fma(u, s, c(0.5f));
  u = VT::add(c(1.0f), VT::fma(VT::mul(s, s), u, s));  // 1 + (s + s²·P(s)): one rounding at the end
  u = VT::ldexp(u, q);
  u = VT::select(VT::lt(x, lo), VT::zero(), u);
  u = VT::select(VT::gt(x, hi), c(std::numeric_limits<float>::infinity()), u);
  return u;
}

// erf(x). |x| < 0.875: x + x·P(x²) (minimax, |err| < 0.75 ulp); 0.875 <= |x| < 3.95:
// 1 − e^{−x²}·Q(|x| − 2.25) (Q fits erfc·e^{x²}, error weighted by e^{−x²}); beyond: ±1.
template <class VT> inline typename VT::V verf(typename VT::V x) {
  using V = typename VT::V;
  auto c = [](float v) { return VT::set1(v); };
  V ax = VT::abs(x);
  V t = VT::mul(x, x);
  V p = c(-1.069848167e-05f);
  p = VT::fma(p, t, c(1.156152648e-04f));
  p = VT::fma(p, t, c(-8.517364040e-04f));
  p = VT::fma(p, t, c(5.222889129e-03f));
  p = VT::fma(p, t, c(-2.686596103e-02f));
  p = VT::fma(p, t, c(1.128378958e-01f));
  p = VT::fma(p, t, c(-3.761263788e-01f));
  p = VT::fma(p, t, c(1.283791661e-01f));
  V small = VT::fma(x, p, x);
  V az = VT::min(c(3.95f), ax);  // NaN passes through
  V s = VT::sub(az, c(2.25f));
  V q = c(-3.806873792e-05f);
  q = VT::fma(q, s, c(-2.871836477e-05f));
  q = VT::fma(q, s, c(-1.079179128e-04f));
  q = VT::fma(q, s, c(4.304094182e-04f));
  q = VT::fma(q, s, c(-1.075264998e-03f));
  q = VT::fma(q, s, c(3.615792375e-03f));
  q = VT::fma(q, s, c(-1.102436148e-02f));
  q = VT::fma(q, s, c(3.198624402e-02f));
  q = VT::fma(q, s, c(-8.848614246e-02f));
  q = VT::fma(q, s, c(2.310874313e-01f));
  V e = vexp<VT>(VT::neg(VT::mul(az, az)));
  V big = VT::fnma(e, q, c(1.0f));
  big = VT::select(VT::ge(ax, c(3.95f)), c(1.0f), big);
  big = VT::xor_sign(big, x);
  return VT::select(VT::lt(ax, c(0.875f)), small, big);
}

// tanh(x). |x| < 0.625: x + x³·P(x²); else sign(x)·(1 − 2/(e^{2|x|} + 1)) (inf for large |x| -> 1).
template <class VT> inline typename VT::V vtanh(typename VT::V x) {
  using V = typename VT::V;
  auto c = [](float v) { return VT::set1(v); };
  V ax = VT::abs(x);
  V t = VT::mul(x, x);
  V p = c(2.292823745e-03f);
  p = VT::fma(p, t, c(-8.344022557e-03f));
  p = VT::fma(p, t, c(2.176894434e-02f));
  p = VT::fma(p, t, c(-5.395926163e-02f));
  p = VT::fma(p, t, c(1.333330423e-01f));
  p = VT::fma(p, t, c(-3.333333433e-01f));
  V small = VT::xor_sign(VT::fma(VT::mul(ax, t), p, ax), x);  // on |x|: keeps tanh(-0) = -0
  V e = vexp<VT>(VT::add(ax, ax));
  V big = VT::sub(c(1.0f), VT::div(c(2.0f), VT::add(e, c(1.0f))));
  big = VT::xor_sign(big, x);
  return VT::select(VT::lt(ax, c(0.625f)), small, big);  // NaN: big is NaN
}

template <class VT> inline typename VT::V vsigmoid(typename VT::V x) {
  return VT::div(VT::set1(1.0f), VT::add(VT::set1(1.0f), vexp<VT>(VT::neg(x))));
}

}  // namespace
}  // namespace simd
}  // namespace pk
