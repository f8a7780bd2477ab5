// optim.cpp — CPU kernels for optim.h.
#include "optim.h"
#include "core/dispatch.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include "core/parallel.h"

namespace pk {

namespace {

// ---- element access: storage type <-> compute type ----
template <DType D> struct El;
template <> struct El<DType::F32> {
  using type = float;
  static inline float load(const float* p, int64_t i) { return p[i]; }
  static inline void store(float* p, int64_t i, float v) { p[i] = v; }
};
template <> struct El<DType::F64> {
  using type = double;
  static inline double load(const double* p, int64_t i) { return p[i]; }
  static inline void store(double* p, int64_t i, double v) { p[i] = v; }
};
template <> struct El<DType::BF16> {
  using type = uint16_t;
  static inline float load(const uint16_t* p, int64_t i) { return bf16_to_f32(p[i]); }
  static inline void store(uint16_t* p, int64_t i, float v) { p[i] = f32_to_bf16(v); }
};
template <> struct El<DType::F16> {
  using type = uint16_t;
  static inline float load(const uint16_t* p, int64_t i) { return f16_to_f32(p[i]); }
  static inline void store(uint16_t* p, int64_t i, float v) { p[i] = f32_to_f16(v); }
};

constexpr int64_t kGrain = 1 << 14;

void check_param(const Tensor& p, const Tensor& g, const char* op) {
  check_defined(p, op, "param"); check_defined(g, op, "grad");
  check_cpu(p, op, "param"); check_cpu(g, op, "grad");
  PK_CHECK(is_float(p.dtype()), op, ": param must be a float tensor, got ", p.desc());
  PK_CHECK(p.is_contiguous(), op, ": param ", p.desc(), " must be contiguous");
  PK_CHECK(g.is_contiguous(), op, ": grad ", g.desc(), " must be contiguous");
  PK_CHECK(g.shape() == p.shape(), op, ": grad ", g.desc(), " does not match param ", p.desc());
  PK_CHECK(g.dtype() == p.dtype() || (g.dtype() == DType::F32 && p.dtype() != DType::F64), op, ": grad dtype ",
           dtype_name(g.dtype()), " must be the param's (", dtype_name(p.dtype()), ") or f32");
}

void check_state(const Tensor& s, DType dt, int64_t n, const char* op, const char* name) {
  check_defined(s, op, name);
  check_cpu(s, op, name);
  PK_CHECK(s.dtype() == dt, op, ": ", name, " must be ", dtype_name(dt), ", got ", s.desc());
  PK_CHECK(s.is_contiguous(), op, ": ", name, " ", s.desc(), " must be contiguous");
  PK_CHECK(s.numel() == n, op, ": ", name, " has ", s.numel(), " elements, expected ", n);
}

void check_hyper(const AdamWHyper& h, const char* op) {
  PK_CHECK(std::isfinite(h.lr) && h.lr >= 0, op, ": lr must be finite and >= 0, got ", h.lr);
  PK_CHECK(h.beta1 >= 0 && h.beta1 < 1, op, ": beta1 must be in [0, 1), got ", h.beta1);
  PK_CHECK(h.beta2 >= 0 && h.beta2 < 1, op, ": beta2 must be in [0, 1), got ", h.beta2);
  PK_CHECK(std::isfinite(h.eps) && h.eps >= 0, op, ": eps must be finite and >= 0, got ", h.eps);
  PK_CHECK(std::isfinite(h.weight_decay) && h.weight_decay >= 0, op, ": weight_decay must be finite and >= 0, got ",
           h.weight_decay);
  PK_CHECK(h.step >= 1, op, ": step must be >= 1, got ", h.step);
}

// Scalars of one AdamW step, as torch computes them (in double, then used in the compute type).
template <class T> struct Coef {
  T decay, w1, b2, w2, neg_step_size, bc2_sqrt, eps;
  bool lerp_low;   // torch lerp: weight < 0.5 ? a + w(b − a) : b − (b − a)(1 − w)
  T one_minus_w1;
  explicit Coef(const AdamWHyper& h) {
    decay = (T)(1.0 - h.lr * h.weight_decay);
    w1 = (T)(1.0 - h.beta1);
    one_minus_w1 = (T)(1.0 - (1.0 - h.beta1));
    lerp_low = (1.0 - h.beta1) < 0.5;
    b2 = (T)h.beta2;
    w2 = (T)(1.0 - h.beta2);
    double bc1 = 1.0 - std::pow(h.beta1, (double)h.step);
    double bc2 = 1.0 - std::pow(h.beta2, (double)h.step);
    neg_step_size = (T)(-(h.lr / bc1));
    bc2_sqrt = (T)std::sqrt(bc2);
    eps = (T)h.eps;
  }
};

template <DType PD, DType GD, class T>
void adamw_kernel(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v, const AdamWHyper& h) {
  using PT = typename El<PD>::type;
  using GT = typename El<GD>::type;
  PT* P = p.data<PT>();
  const GT* G = g.data<GT>();
  T* M = m.data<T>();
  T* V = v.data<T>();
  const Coef<T> c(h);
  parallel_for(0, p.numel(), kGrain, [&](int64_t lo, int64_t hi) {
    if (c.lerp_low) {
      for (int64_t i = lo; i < hi; i++) {
        T pi = (T)El<PD>::load(P, i), gi = (T)El<GD>::load(G, i), mi = M[i], vi = V[i];
        pi = pi * c.decay;
        mi = mi + c.w1 * (gi - mi);
        vi = vi * c.b2 + c.w2 * gi * gi;
        T denom = std::sqrt(vi) / c.bc2_sqrt + c.eps;
        pi = pi + c.neg_step_size * mi / denom;
        M[i] = mi; V[i] = vi;
        El<PD>::store(P, i, pi);
      }
    } else {
      for (int64_t i = lo; i < hi; i++) {
        T pi = (T)El<PD>::load(P, i), gi = (T)El<GD>::load(G, i), mi = M[i], vi = V[i];
        pi = pi * c.decay;
        mi = gi - (gi - mi) * c.one_minus_w1;
        vi = vi * c.b2 + c.w2 * gi * gi;
        T denom = std::sqrt(vi) / c.bc2_sqrt + c.eps;
        pi = pi + c.neg_step_size * mi / denom;
        M[i] = mi; V[i] = vi;
        El<PD>::store(P, i, pi);
      }
    }
  });
}

// ---- dynamic quantization map (bitsandbytes functional.create_dynamic_map) ----
// torch.linspace on the CPU in f32: start + step·i for the first half, end − step·(n − 1 − i) after.
std::vector<float> linspace_f32(float start, float end, int steps) {
  std::vector<float> out((size_t)steps);
  if (steps == 1) { out[0] = start; return out; }
  const float step = (end - start) / (float)(steps - 1);
  const int half = steps / 2;
  for (int i = 0; i < steps; i++) out[(size_t)i] = i < half ? start + step * (float)i : end - step * (float)(steps - i - 1);
  return out;
}

std::vector<float> make_dynamic_map(bool is_signed) {
  const int max_exponent_bits = 7, total_bits = 8;
  const int non_sign_bits = total_bits - 1;
  const int additional_items = (1 << (non_sign_bits - max_exponent_bits)) - 1;
  std::vector<float> data;
  auto push_means = [&](int items, int i) {
    std::vector<float> b = linspace_f32(0.1f, 1.0f, items);
    const float scale = (float)std::pow(10.0, (double)(-(max_exponent_bits - 1) + i));
    for (size_t k = 0; k + 1 < b.size(); k++) {
      float mean = (b[k] + b[k + 1]) / 2.0f;
      data.push_back(scale * mean);
      if (is_signed) data.push_back(-scale * mean);
    }
  };
  int i = 0;
  for (i = 0; i < max_exponent_bits; i++) {
    int items = is_signed ? (1 << (i + non_sign_bits - max_exponent_bits)) + 1
                          : (1 << (i + non_sign_bits - max_exponent_bits + 1)) + 1;
    push_means(items, i);
  }
  if (additional_items > 0) push_means(additional_items + 1, i - 1);
  data.push_back(0.0f);
  data.push_back(1.0f);
  while (data.size() < 256) data.push_back(0.0f);
  std::sort(data.begin(), data.end());
  return data;
}

// Nearest code (ties to the lower one) in an ascending 256-entry map, by binary search.
inline int nearest_code_search(const float* code, float x) {
  if (x <= code[0]) return 0;
  if (x >= code[255]) return 255;
  int lo = 0, hi = 255;   // code[lo] < x <= code[hi]
  while (hi - lo > 1) {
    int mid = (lo + hi) >> 1;
    if (code[mid] < x) lo = mid; else hi = mid;
  }
  return (code[hi] - x) < (x - code[lo]) ? hi : lo;
}

inline uint32_t float_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bits_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

// Fast exact nearest-code lookup. The float's sign, exponent and top 8 mantissa bits select a
// bucket (relative width <= 2^-8, narrower than the spacing of the maps' decision boundaries,
// checked at start-up); the table holds the nearest code of the bucket's smallest value, and since
// the nearest code is monotone in x, one branch-free step up gives the exact answer.
struct QuantMap {
  std::vector<float> code;
  std::vector<uint8_t> table;   // 1 << 17 buckets
  int zero = 0;
  bool single_step = true;      // every bucket holds at most one decision boundary
  static constexpr int kShift = 15;
  static constexpr uint32_t kBuckets = 1u << (32 - kShift);
  explicit QuantMap(bool is_signed) : code(make_dynamic_map(is_signed)), table(kBuckets) {
    zero = (int)(std::find(code.begin(), code.end(), 0.0f) - code.begin());
    for (uint32_t key = 0; key < kBuckets; key++) {
      const uint32_t lo_bits = key << kShift, mag_lo = lo_bits & 0x7fffffffu;
      const uint32_t mag_last = mag_lo + (1u << kShift) - 1;   // largest magnitude in the bucket
      if (mag_lo >= 0x7f800000u) { table[key] = (uint8_t)zero; continue; }   // inf/NaN: never looked up
      const bool neg = lo_bits & 0x80000000u;
      const float small_mag = bits_float(neg ? std::min<uint32_t>(mag_last, 0x7f7fffffu) : mag_lo);
      const float large_mag = bits_float(neg ? mag_lo : std::min<uint32_t>(mag_last, 0x7f7fffffu));
      const float smallest = neg ? -small_mag : small_mag, largest = neg ? -large_mag : large_mag;
      const int a = nearest_code_search(code.data(), smallest), b = nearest_code_search(code.data(), largest);
      table[key] = (uint8_t)a;
      if (b - a > 1) single_step = false;
    }
  }
  inline int nearest(float x) const {
    if (!(x == x)) return zero;
    int c = table[float_bits(x) >> kShift];
    const float* q = code.data();
    if (single_step) {
      const int up = c < 255 ? c + 1 : 255;
      return c + (int)(std::fabs(q[up] - x) < std::fabs(q[c] - x));
    }
    while (c < 255 && std::fabs(q[c + 1] - x) < std::fabs(q[c] - x)) c++;
    return c;
  }
  // Signed quantization keeps the sign of m (bitsandbytes: a tiny negative m must not become 0 or +).
  inline uint8_t nearest_signed(float x) const {
    int c = nearest(x);
    if (x == x && std::signbit(code[(size_t)c]) != std::signbit(x)) c += x > 0.0f ? 1 : -1;
    return (uint8_t)std::min(255, std::max(0, c));
  }
};

struct Maps {
  QuantMap s{true}, u{false};
};
const Maps& maps() {
  static const Maps m;
  return m;
}

template <DType PD, DType GD>
void adamw8bit_kernel(const Tensor& p, const Tensor& g, const Tensor& q1, const Tensor& q2, const Tensor& a1,
                      const Tensor& a2, const AdamWHyper& h) {
  using PT = typename El<PD>::type;
  using GT = typename El<GD>::type;
  PT* P = p.data<PT>();
  const GT* G = g.data<GT>();
  uint8_t* Q1 = q1.data<uint8_t>();
  uint8_t* Q2 = q2.data<uint8_t>();
  float* A1 = a1.data<float>();
  float* A2 = a2.data<float>();
  const QuantMap& ms = maps().s;
  const QuantMap& mu = maps().u;
  const float* cs = ms.code.data();
  const float* cu = mu.code.data();
  const Coef<float> c(h);
  const int64_t n = p.numel();
  const int64_t nblocks = (n + kQuantBlock - 1) / kQuantBlock;
  parallel_for(0, nblocks, 16, [&](int64_t blo, int64_t bhi) {
    // Coefficients as locals (not re-read through a reference after every store).
    const float decay = c.decay, w1 = c.w1, omw1 = c.one_minus_w1, b2 = c.b2, w2 = c.w2, nss = c.neg_step_size,
                bc2s = c.bc2_sqrt, eps = c.eps;
    const bool lerp_low = c.lerp_low;
    alignas(64) float s1[kQuantBlock], s2[kQuantBlock], gg[kQuantBlock], pp[kQuantBlock];
    for (int64_t b = blo; b < bhi; b++) {
      const int64_t base = b * kQuantBlock;
      const int len = (int)std::min<int64_t>(kQuantBlock, n - base);
      const float am1 = A1[b], am2 = A2[b];
      // 1. gather: dequantize the moments, widen g and p
      for (int j = 0; j < len; j++) {
        const int64_t i = base + j;
        s1[j] = cs[Q1[i]] * am1;
        s2[j] = cu[Q2[i]] * am2;
        gg[j] = El<GD>::load(G, i);
        pp[j] = El<PD>::load(P, i);
      }
      // 2. the AdamW update on contiguous f32 arrays (vectorizable)
      if (lerp_low) for (int j = 0; j < len; j++) s1[j] = s1[j] + w1 * (gg[j] - s1[j]);
      else for (int j = 0; j < len; j++) s1[j] = gg[j] - (gg[j] - s1[j]) * omw1;
      for (int j = 0; j < len; j++) s2[j] = s2[j] * b2 + w2 * gg[j] * gg[j];
      for (int j = 0; j < len; j++) {
        const float denom = std::sqrt(s2[j]) / bc2s + eps;
        pp[j] = pp[j] * decay + nss * s1[j] / denom;
      }
      float m1[8] = {0, 0, 0, 0, 0, 0, 0, 0}, m2[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int j = 0;
      for (; j + 8 <= len; j += 8)
        for (int k = 0; k < 8; k++) {
          m1[k] = std::max(m1[k], std::fabs(s1[j + k]));
          m2[k] = std::max(m2[k], std::fabs(s2[j + k]));
        }
      for (; j < len; j++) { m1[0] = std::max(m1[0], std::fabs(s1[j])); m2[0] = std::max(m2[0], std::fabs(s2[j])); }
      float mx1 = 0.0f, mx2 = 0.0f;
      for (int k = 0; k < 8; k++) { mx1 = std::max(mx1, m1[k]); mx2 = std::max(mx2, m2[k]); }
      for (int jj = 0; jj < len; jj++) El<PD>::store(P, base + jj, pp[jj]);
      // 3. requantize against the block's new absmax (the parameter used the unquantized moments)
      for (int jj = 0; jj < len; jj++) {
        const int64_t i = base + jj;
        Q1[i] = mx1 > 0.0f ? ms.nearest_signed(s1[jj] / mx1) : (uint8_t)ms.zero;
        Q2[i] = mx2 > 0.0f ? (uint8_t)mu.nearest(s2[jj] / mx2) : (uint8_t)mu.zero;
      }
      A1[b] = mx1; A2[b] = mx2;
    }
  });
}

template <DType PD> void adamw8bit_dispatch_g(const Tensor& p, const Tensor& g, const Tensor& q1, const Tensor& q2,
                                              const Tensor& a1, const Tensor& a2, const AdamWHyper& h) {
  if (g.dtype() == PD) adamw8bit_kernel<PD, PD>(p, g, q1, q2, a1, a2, h);
  else adamw8bit_kernel<PD, DType::F32>(p, g, q1, q2, a1, a2, h);
}

template <DType D> inline double abs_at(const void* base, int64_t i) {
  return std::fabs((double)El<D>::load(static_cast<const typename El<D>::type*>(base), i));
}

constexpr int64_t kNormChunk = 1 << 16;

template <DType D> double chunk_norm(const void* base, int64_t lo, int64_t hi, double p, bool inf) {
  if (inf) {
    double m = 0.0;
    for (int64_t i = lo; i < hi; i++) {
      double a = abs_at<D>(base, i);
      if (!(a <= m)) m = a;   // NaN sticks
      if (m != m) return m;
    }
    return m;
  }
  double acc[4] = {0, 0, 0, 0};
  int64_t i = lo;
  if (p == 2.0) {
    for (; i + 4 <= hi; i += 4)
      for (int k = 0; k < 4; k++) { double a = abs_at<D>(base, i + k); acc[k] += a * a; }
    for (; i < hi; i++) { double a = abs_at<D>(base, i); acc[0] += a * a; }
  } else if (p == 1.0) {
    for (; i + 4 <= hi; i += 4)
      for (int k = 0; k < 4; k++) acc[k] += abs_at<D>(base, i + k);
    for (; i < hi; i++) acc[0] += abs_at<D>(base, i);
  } else {
    for (; i < hi; i++) acc[0] += std::pow(abs_at<D>(base, i), p);
  }
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

}  // namespace

void adamw_step(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v, const AdamWHyper& h) {
  if (any_cuda(p, g, m, v)) { cuda_fn(&CudaOps::adamw_step, "adamw_step")(p, g, m, v, h); return; }
  const char* op = "adamw_step";
  check_param(p, g, op);
  check_hyper(h, op);
  const DType sd = p.dtype() == DType::F64 ? DType::F64 : DType::F32;
  check_state(m, sd, p.numel(), op, "exp_avg");
  check_state(v, sd, p.numel(), op, "exp_avg_sq");
  const bool g32 = g.dtype() == DType::F32;
  switch (p.dtype()) {
    case DType::F64: adamw_kernel<DType::F64, DType::F64, double>(p, g, m, v, h); break;
    case DType::F32: adamw_kernel<DType::F32, DType::F32, float>(p, g, m, v, h); break;
    case DType::BF16:
      if (g32) adamw_kernel<DType::BF16, DType::F32, float>(p, g, m, v, h);
      else adamw_kernel<DType::BF16, DType::BF16, float>(p, g, m, v, h);
      break;
    case DType::F16:
      if (g32) adamw_kernel<DType::F16, DType::F32, float>(p, g, m, v, h);
      else adamw_kernel<DType::F16, DType::F16, float>(p, g, m, v, h);
      break;
    default: fail(op, ": unsupported param dtype ", dtype_name(p.dtype()));
  }
}

void adamw8bit_step(const Tensor& p, const Tensor& g, const Tensor& q1, const Tensor& q2, const Tensor& absmax1,
                    const Tensor& absmax2, const AdamWHyper& h) {
  if (any_cuda(p, g, q1, q2, absmax1, absmax2)) { cuda_fn(&CudaOps::adamw8bit_step, "adamw8bit_step")(p, g, q1, q2, absmax1, absmax2, h); return; }
  const char* op = "adamw8bit_step";
  check_param(p, g, op);
  check_hyper(h, op);
  PK_CHECK(p.dtype() != DType::F64, op, ": 8-bit states take f32/bf16/f16 params, got ", p.desc(), " (use 32-bit AdamW)");
  const int64_t n = p.numel(), nb = (n + kQuantBlock - 1) / kQuantBlock;
  check_state(q1, DType::U8, n, op, "state1");
  check_state(q2, DType::U8, n, op, "state2");
  check_state(absmax1, DType::F32, nb, op, "absmax1");
  check_state(absmax2, DType::F32, nb, op, "absmax2");
  switch (p.dtype()) {
    case DType::F32: adamw8bit_kernel<DType::F32, DType::F32>(p, g, q1, q2, absmax1, absmax2, h); break;
    case DType::BF16: adamw8bit_dispatch_g<DType::BF16>(p, g, q1, q2, absmax1, absmax2, h); break;
    case DType::F16: adamw8bit_dispatch_g<DType::F16>(p, g, q1, q2, absmax1, absmax2, h); break;
    default: fail(op, ": unsupported param dtype ", dtype_name(p.dtype()));
  }
}

const float* dynamic_map(bool is_signed) { return is_signed ? maps().s.code.data() : maps().u.code.data(); }

void quantize_blockwise(const Tensor& x_in, bool is_signed, Tensor* codes, Tensor* absmax) {
  if (any_cuda(x_in)) { cuda_fn(&CudaOps::quantize_blockwise, "quantize_blockwise")(x_in, is_signed, codes, absmax); return; }
  const char* op = "quantize_blockwise";
  check_defined(x_in, op, "x");
  check_float(x_in, op, "x");
  check_cpu(x_in, op, "x");
  Tensor x = x_in.to(DType::F32).contiguous();
  const int64_t n = x.numel(), nb = (n + kQuantBlock - 1) / kQuantBlock;
  *codes = Tensor::empty(x_in.shape(), DType::U8);
  *absmax = Tensor::empty({nb}, DType::F32);
  const float* X = x.data<float>();
  uint8_t* C = codes->data<uint8_t>();
  float* A = absmax->data<float>();
  const QuantMap& qm = is_signed ? maps().s : maps().u;
  parallel_for(0, nb, 16, [&](int64_t blo, int64_t bhi) {
    for (int64_t b = blo; b < bhi; b++) {
      const int64_t base = b * kQuantBlock, len = std::min<int64_t>(kQuantBlock, n - base);
      float mx = 0.0f;
      for (int64_t j = 0; j < len; j++) mx = std::max(mx, std::fabs(X[base + j]));
      A[b] = mx;
      for (int64_t j = 0; j < len; j++) {
        float v = mx > 0.0f ? X[base + j] / mx : 0.0f;
        C[base + j] = is_signed ? qm.nearest_signed(v) : (uint8_t)qm.nearest(v);
      }
    }
  });
}

Tensor dequantize_blockwise(const Tensor& codes, const Tensor& absmax, bool is_signed) {
  if (any_cuda(codes, absmax)) return cuda_fn(&CudaOps::dequantize_blockwise, "dequantize_blockwise")(codes, absmax, is_signed);
  const char* op = "dequantize_blockwise";
  const int64_t n = codes.numel(), nb = (n + kQuantBlock - 1) / kQuantBlock;
  check_state(codes, DType::U8, n, op, "codes");
  check_state(absmax, DType::F32, nb, op, "absmax");
  Tensor out = Tensor::empty(codes.shape(), DType::F32);
  const uint8_t* C = codes.data<uint8_t>();
  const float* A = absmax.data<float>();
  const float* code = dynamic_map(is_signed);
  float* O = out.data<float>();
  parallel_for(0, n, kGrain, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; i++) O[i] = code[C[i]] * A[i / kQuantBlock];
  });
  return out;
}

double global_norm(const std::vector<Tensor>& ts_in, double norm_type) {
  for (const Tensor& t : ts_in) if (any_cuda(t)) return cuda_fn(&CudaOps::global_norm, "grad_norm")(ts_in, norm_type);
  const char* op = "grad_norm";
  const bool inf = std::isinf(norm_type) && norm_type > 0;
  PK_CHECK(inf || (std::isfinite(norm_type) && norm_type > 0), op, ": norm_type must be > 0 or Infinity, got ", norm_type);
  std::vector<Tensor> ts;
  ts.reserve(ts_in.size());
  for (size_t k = 0; k < ts_in.size(); k++) {
    const Tensor& t = ts_in[k];
    check_defined(t, op, "tensor");
    check_cpu(t, op, "tensor");
    PK_CHECK(is_float(t.dtype()), op, ": tensor ", k, " must be a float tensor, got ", t.desc());
    ts.push_back(t.is_contiguous() ? t : t.contiguous());
  }
  struct Item { size_t t; int64_t lo, hi; };
  std::vector<Item> items;
  for (size_t k = 0; k < ts.size(); k++)
    for (int64_t lo = 0; lo < ts[k].numel(); lo += kNormChunk) items.push_back({k, lo, std::min(ts[k].numel(), lo + kNormChunk)});
  std::vector<double> part(items.size(), 0.0);
  parallel_for(0, (int64_t)items.size(), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t k = lo; k < hi; k++) {
      const Item& it = items[(size_t)k];
      const Tensor& t = ts[it.t];
      const void* base = t.raw();
      double r = 0;
      switch (t.dtype()) {
        case DType::F32: r = chunk_norm<DType::F32>(base, it.lo, it.hi, norm_type, inf); break;
        case DType::F64: r = chunk_norm<DType::F64>(base, it.lo, it.hi, norm_type, inf); break;
        case DType::BF16: r = chunk_norm<DType::BF16>(base, it.lo, it.hi, norm_type, inf); break;
        case DType::F16: r = chunk_norm<DType::F16>(base, it.lo, it.hi, norm_type, inf); break;
        default: fail(op, ": unsupported dtype ", dtype_name(t.dtype()));
      }
      part[(size_t)k] = r;
    }
  });
  if (inf) {
    double m = 0.0;
    for (double v : part) { if (v != v) return v; if (v > m) m = v; }
    return m;
  }
  double s = 0.0;
  for (double v : part) s += v;
  if (norm_type == 2.0) return std::sqrt(s);
  if (norm_type == 1.0) return s;
  return std::pow(s, 1.0 / norm_type);
}

void scale_inplace(const Tensor& t, double s) {
  if (any_cuda(t)) { cuda_fn(&CudaOps::scale_inplace, "scale_")(t, s); return; }
  const char* op = "scale_";
  check_defined(t, op, "tensor");
  check_cpu(t, op, "tensor");
  PK_CHECK(is_float(t.dtype()), op, ": tensor must be a float tensor, got ", t.desc());
  PK_CHECK(t.is_contiguous(), op, ": tensor ", t.desc(), " must be contiguous");
  const int64_t n = t.numel();
  auto run = [&](auto tag) {
    constexpr DType D = decltype(tag)::value;
    using PT = typename El<D>::type;
    PT* P = t.data<PT>();
    using CT = decltype(El<D>::load(P, 0));
    const CT f = (CT)s;
    parallel_for(0, n, kGrain, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; i++) El<D>::store(P, i, El<D>::load(P, i) * f);
    });
  };
  switch (t.dtype()) {
    case DType::F32: run(std::integral_constant<DType, DType::F32>{}); break;
    case DType::F64: run(std::integral_constant<DType, DType::F64>{}); break;
    case DType::BF16: run(std::integral_constant<DType, DType::BF16>{}); break;
    case DType::F16: run(std::integral_constant<DType, DType::F16>{}); break;
    default: fail(op, ": unsupported dtype ", dtype_name(t.dtype()));
  }
}

}  // namespace pk
