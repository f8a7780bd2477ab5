// quant.cpp — 4-bit blockwise quantization (NF4/FP4, bitsandbytes-exact), double quantization,
// dequantization and the fused 4-bit GEMM driver. See quant.h for the format.
//
// The vector loops (encode, decode, GEMM panel loaders) are in quant_avx512.cpp / quant_avx2.cpp
// and are picked per call by pk::cpu_isa(); this file holds the tables, the scalar reference
// paths (also the node-gyp PEFTKIT_NO_SIMD_KERNELS build) and the threading.
#include "quant.h"
#include "core/dispatch.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/cpu_features.h"
#include "core/parallel.h"
#include "cpu/cpu_common.h"
#include "cpu/elementwise.h"
#include "cpu/matmul.h"

namespace pk {

// ---------------------------------------------------------------------------------------------
// Tables

namespace {

// bitsandbytes get_4bit_type('nf4') (float32).
const float kNf4Code[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

struct Fp4Tables {
  float code[16];     // get_4bit_type('fp4'): Tensor([0, .0625, 8, 12, 4, 6, 2, 3, -0, -.0625, ...]) / 12
  Fp4Tables() {
    // Python's `-0` in that list is the integer 0, so entry 8 of the saved quant_map is +0.0.
    const float raw[16] = {0.f, 0.0625f, 8.f, 12.f, 4.f, 6.f, 2.f, 3.f, 0.f, -0.0625f, -8.f, -12.f, -4.f, -6.f, -2.f, -3.f};
    for (int i = 0; i < 16; i++) code[i] = raw[i] / 12.0f;   // f32 division, as data /= data.abs().max()
  }
};
const Fp4Tables& fp4_tables() { static const Fp4Tables t; return t; }

// create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8), emulating torch's float32
// arithmetic: linspace(0.1, 1, n) (start + step*i below n/2, end - step*(n-1-i) above), the
// means (b[i] + b[i+1]) / 2, and the product with the f32-rounded power of ten.
std::vector<float> make_dynamic_map() {
  std::vector<float> data;
  const int max_exp = 7, non_sign_bits = 7;
  for (int i = 0; i < max_exp; i++) {
    const int64_t n = (int64_t(1) << (i + non_sign_bits - max_exp)) + 1;
    const float start = 0.1f, end = 1.0f;
    const float step = (end - start) / (float)(n - 1);
    const int64_t halfway = n / 2;
    std::vector<float> b((size_t)n);
    for (int64_t k = 0; k < n; k++) {
      volatile float t;  // keep the two roundings (no contraction into an FMA)
      if (k < halfway) { t = step * (float)k; b[(size_t)k] = start + t; }
      else { t = step * (float)(n - k - 1); b[(size_t)k] = end - t; }
    }
    const float scale = (float)std::pow(10.0, (double)(-(max_exp - 1) + i));
    for (int64_t k = 0; k + 1 < n; k++) {
      volatile float s = b[(size_t)k] + b[(size_t)k + 1];
      const float mean = s / 2.0f;
      volatile float v = mean * scale;
      const float pv = v;
      data.push_back(pv);
      data.push_back(-pv);
    }
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  std::sort(data.begin(), data.end());
  return data;
}

}  // namespace

const char* quant4_type_name(Quant4Type t) { return t == Quant4Type::FP4 ? "fp4" : "nf4"; }

const float* quant4_code(Quant4Type t) { return t == Quant4Type::FP4 ? fp4_tables().code : kNf4Code; }

// The decode LUT of the kernels: bnb's dDequantizeNF4 table, and for FP4 fp4_dequantization_lut
// with the sign applied (sign 1 on code 0 gives -0.0, as the CUDA kernel's lut * -1).
static const float* decode_lut(Quant4Type t) {
  if (t == Quant4Type::NF4) return kNf4Code;
  struct L { float v[16]; L() { const float* c = fp4_tables().code; for (int i = 0; i < 8; i++) { v[i] = c[i]; v[8 + i] = -c[i]; } } };
  static const L l;
  return l.v;
}

const float* dynamic_map_signed() {
  static const std::vector<float> m = make_dynamic_map();
  return m.data();
}

namespace q4 {
// dQuantizeNF4's thresholds (float literals of bitsandbytes' kernels), ascending.
const float kNf4Thresholds[15] = {
    -0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f, -0.33967943489551544f,
    -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
    0.1202552504837513f, 0.2035212516784668f, 0.2920137718319893f, 0.3893125355243683f,
    0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f};
// dQuantizeFP4's thresholds on |x|, ascending, and the code of each magnitude rank.
const float kFp4Thresholds[7] = {0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f, 0.4166667f, 0.583333f, 0.8333333f};
const uint8_t kFp4CodeOfRank[8] = {0b0000, 0b0001, 0b0110, 0b0111, 0b0100, 0b0101, 0b0010, 0b0011};
}  // namespace q4

// bnb dQuantizeNF4: the decision tree over the midpoints; equivalent to counting thresholds below x
// (strict '>', NaN -> 0). Written as the tree for reference fidelity.
uint8_t quantize_nf4_scalar(float x) {
  if (x > 0.03979014977812767f) {
    if (x > 0.3893125355243683f) {
      if (x > 0.6427869200706482f) return x > 0.8614784181118011f ? 0b1111 : 0b1110;
      return x > 0.5016634166240692f ? 0b1101 : 0b1100;
    }
    if (x > 0.2035212516784668f) return x > 0.2920137718319893f ? 0b1011 : 0b1010;
    return x > 0.1202552504837513f ? 0b1001 : 0b1000;
  }
  if (x > -0.33967943489551544f) {
    if (x > -0.13791173323988914f) return x > -0.045525018125772476f ? 0b0111 : 0b0110;
    return x > -0.23460740596055984f ? 0b0101 : 0b0100;
  }
  if (x > -0.6106329262256622f) return x > -0.4599952697753906f ? 0b0011 : 0b0010;
  return x > -0.8480964004993439f ? 0b0001 : 0b0000;
}

// bnb dQuantizeFP4.
uint8_t quantize_fp4_scalar(float x) {
  const int sign = x < 0 ? 0b1000 : 0b0000;
  x = std::fabs(x);
  if (x > 0.29166667f) {
    if (x > 0.583333f) return (uint8_t)((x > 0.8333333f ? 0b0011 : 0b0010) + sign);
    return (uint8_t)((x > 0.4166667f ? 0b0101 : 0b0100) + sign);
  }
  if (x > 0.0859375f) return (uint8_t)((x > 0.20833333f ? 0b0111 : 0b0110) + sign);
  return (uint8_t)((x > 0.00260417f ? 0b0001 : 0b0000) + sign);
}

// bnb dQuantize<0>: a 7-step binary search over the sorted code, then the nearer of the two last
// pivots (the upper one on ties; index 255 is never produced).
uint8_t quantize_code8_scalar(const float* code, float x) {
  int pivot = 127, upper = 255, lower = 0;
  float val = code[pivot];
  for (int i = 64; i > 0; i >>= 1) {
    if (x > val) { lower = pivot; pivot += i; }
    else { upper = pivot; pivot -= i; }
    val = code[pivot];
  }
  if (upper == 255) upper = 254;
  return std::fabs(x - code[lower]) < std::fabs(x - code[upper]) ? (uint8_t)lower : (uint8_t)upper;
}

// ---------------------------------------------------------------------------------------------
// Scalar kernels

namespace q4 {

static inline float load_elem(const void* src, DType dt, int64_t i) {
  switch (dt) {
    case DType::F32: return static_cast<const float*>(src)[i];
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(src)[i]);
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(src)[i]);
    default: return (float)static_cast<const double*>(src)[i];
  }
}

void quantize_blocks_scalar(const void* src, DType dt, int64_t n, int64_t bs, Quant4Type t, int64_t b0, int64_t b1,
                            uint8_t* packed, float* absmax) {
  for (int64_t b = b0; b < b1; b++) {
    const int64_t s = b * bs, e = std::min(n, s + bs);
    float m = -FLT_MAX;
    for (int64_t i = s; i < e; i++) m = std::fmax(m, std::fabs(load_elem(src, dt, i)));
    if (e - s < bs) m = std::fmax(m, 0.0f);   // bnb pads a partial block with zeros
    absmax[b] = m;
    const float r = 1.0f / m;
    for (int64_t i = s; i < e; i += 2) {
      const float x0 = load_elem(src, dt, i) * r;
      const float x1 = (i + 1 < e ? load_elem(src, dt, i + 1) : 0.0f) * r;
      const uint8_t q0 = t == Quant4Type::NF4 ? quantize_nf4_scalar(x0) : quantize_fp4_scalar(x0);
      const uint8_t q1 = t == Quant4Type::NF4 ? quantize_nf4_scalar(x1) : quantize_fp4_scalar(x1);
      packed[i >> 1] = (uint8_t)((q0 << 4) | q1);
    }
  }
}

static void decode_scalar(const Decode& d, int64_t e0, int64_t count, float* dst) {
  for (int64_t i = 0; i < count; i++) dst[i] = decode_one(d, e0 + i);
}

static void pack_wt_scalar(const gemm::PanelLoader& L, int64_t k0, int64_t kc, int64_t p0, int64_t np, int w, float* dst) {
  const Decode& d = *static_cast<const Decode*>(L.ctx);
  const int64_t npan = (np + w - 1) / w;
  for (int64_t q = 0; q < npan; q++) {
    float* dq = dst + q * kc * w;
    for (int r = 0; r < w; r++) {
      const int64_t p = q * w + r;
      if (p >= np) { for (int64_t k = 0; k < kc; k++) dq[k * w + r] = 0.0f; continue; }
      const int64_t e = (p0 + p) * d.cols + k0;
      for (int64_t k = 0; k < kc; k++) dq[k * w + r] = decode_one(d, e + k);
    }
  }
}

static void pack_w_scalar(const gemm::PanelLoader& L, int64_t k0, int64_t kc, int64_t p0, int64_t np, int w, float* dst) {
  const Decode& d = *static_cast<const Decode*>(L.ctx);
  const int64_t npan = (np + w - 1) / w;
  for (int64_t k = 0; k < kc; k++) {
    const int64_t e = (k0 + k) * d.cols + p0;
    for (int64_t q = 0; q < npan; q++) {
      float* dk = dst + (q * kc + k) * w;
      for (int r = 0; r < w; r++) {
        const int64_t p = q * w + r;
        dk[r] = p < np ? decode_one(d, e + p) : 0.0f;
      }
    }
  }
}

const Kernels& kernels_scalar() {
  static const Kernels k{"scalar", quantize_blocks_scalar, decode_scalar, pack_wt_scalar, pack_w_scalar};
  return k;
}

const Kernels& active_kernels() {
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(PEFTKIT_NO_SIMD_KERNELS)
  switch (cpu_isa()) {
    case Isa::Avx512: return kernels_avx512();
    case Isa::Avx2: return kernels_avx2();
    default: break;
  }
#endif
  return kernels_scalar();
}

}  // namespace q4

// ---------------------------------------------------------------------------------------------
// Validation

static bool pow2(int64_t v) { return v > 0 && (v & (v - 1)) == 0; }

static void check_blocksize(int64_t bs, const char* op) {
  PK_CHECK(pow2(bs) && bs >= 32 && bs <= 4096, op, ": blocksize must be a power of two in [32, 4096] (bitsandbytes uses 64..4096), got ", bs);
}

static bool same_code(const Tensor& code, const float* ref, int64_t n) {
  const Tensor c = code.to(DType::F32).contiguous();
  const float* p = c.data<float>();
  for (int64_t i = 0; i < n; i++)
    if (!(std::fabs(p[i] - ref[i]) <= 1e-6f)) return false;
  return true;
}

void check_quant4_state(const Quant4State& s, const char* op) {
  check_blocksize(s.blocksize, op);
  const int64_t n = s.numel(), nb = s.nblocks();
  PK_CHECK(n > 0, op, ": quantized tensor of shape ", shape_str(s.shape), " is empty");
  check_defined(s.packed, op, "packed weight"); check_cpu(s.packed, op, "packed weight");
  PK_CHECK(s.packed.dtype() == DType::U8 && s.packed.is_contiguous() && s.packed.numel() >= (n + 1) / 2, op,
           ": packed weight must be contiguous u8 with ", (n + 1) / 2, " bytes for shape ", shape_str(s.shape), ", got ", s.packed.desc());
  check_defined(s.absmax, op, "absmax"); check_cpu(s.absmax, op, "absmax");
  PK_CHECK(s.absmax.numel() == nb, op, ": absmax ", s.absmax.desc(), " must have ", nb, " entries (", n, " elements / blocksize ", s.blocksize, ")");
  if (s.nested()) {
    PK_CHECK(s.absmax.dtype() == DType::U8, op, ": a double-quantized absmax must be u8, got ", s.absmax.desc());
    PK_CHECK(s.nested_blocksize > 0, op, ": nested blocksize must be positive, got ", s.nested_blocksize);
    const int64_t nb2 = (nb + s.nested_blocksize - 1) / s.nested_blocksize;
    PK_CHECK(s.nested_absmax.numel() == nb2 && is_float(s.nested_absmax.dtype()), op, ": nested_absmax ", s.nested_absmax.desc(),
             " must be float with ", nb2, " entries");
    if (s.nested_code.defined())
      PK_CHECK(s.nested_code.numel() == 256 && is_float(s.nested_code.dtype()), op, ": nested_quant_map must be 256 floats, got ", s.nested_code.desc());
  } else {
    PK_CHECK(is_float(s.absmax.dtype()), op, ": absmax must be float (or u8 with nested_absmax), got ", s.absmax.desc());
  }
  if (s.code.defined()) {
    PK_CHECK(s.code.numel() == 16 && is_float(s.code.dtype()), op, ": quant_map must be 16 floats, got ", s.code.desc());
    PK_CHECK(same_code(s.code, quant4_code(s.type), 16), op, ": quant_map does not match bitsandbytes' ", quant4_type_name(s.type),
             " code table");
  }
}

// ---------------------------------------------------------------------------------------------
// Quantization

Quant4Packed quantize_4bit(const Tensor& x, int64_t blocksize, Quant4Type type) {
  if (any_cuda(x)) return cuda_fn(&CudaOps::quantize_4bit, "quantize_4bit")(x, blocksize, type);
  const char* op = "quantize_4bit";
  check_defined(x, op, "x"); check_cpu(x, op, "x"); check_float(x, op, "x");
  check_blocksize(blocksize, op);
  Tensor xc = x.contiguous();
  if (xc.dtype() == DType::F64) xc = xc.to(DType::F32);
  const int64_t n = xc.numel();
  const int64_t nb = (n + blocksize - 1) / blocksize;
  Quant4Packed r;
  r.packed = Tensor::empty({(n + 1) / 2, 1}, DType::U8);
  r.absmax = Tensor::empty({nb}, DType::F32);
  if (n == 0) return r;
  const q4::Kernels& ks = q4::active_kernels();
  const void* src = xc.raw();
  uint8_t* packed = r.packed.data<uint8_t>();
  float* am = r.absmax.data<float>();
  const DType dt = xc.dtype();
  parallel_for(0, nb, std::max<int64_t>(1, 16384 / blocksize), [&](int64_t b0, int64_t b1) {
    ks.quantize(src, dt, n, blocksize, type, b0, b1, packed, am);
  });
  return r;
}

Quant8Packed quantize_blockwise_8bit(const Tensor& x, const Tensor& code_in, int64_t bs) {
  if (any_cuda(x)) return cuda_fn(&CudaOps::quantize_blockwise_8bit, "quantize_blockwise")(x, code_in, bs);
  const char* op = "quantize_blockwise";
  check_defined(x, op, "x"); check_float(x, op, "x"); check_cpu(x, op, "x");
  PK_CHECK(bs > 0, op, ": blocksize must be positive, got ", bs);
  Tensor code = code_in.defined() ? code_in.to(DType::F32).contiguous() : Tensor();
  if (code.defined()) PK_CHECK(code.numel() == 256, op, ": code must have 256 entries, got ", code.desc());
  const float* cp = code.defined() ? code.data<float>() : dynamic_map_signed();
  const Tensor xc = x.to(DType::F32).contiguous();
  const int64_t n = xc.numel(), nb = (n + bs - 1) / bs;
  Quant8Packed r;
  r.q = Tensor::empty({n}, DType::U8);
  r.absmax = Tensor::empty({nb}, DType::F32);
  const float* px = xc.data<float>();
  uint8_t* pq = r.q.data<uint8_t>();
  float* pa = r.absmax.data<float>();
  parallel_for(0, nb, 4, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; b++) {
      const int64_t s = b * bs, e = std::min(n, s + bs);
      float m = -FLT_MAX;
      for (int64_t i = s; i < e; i++) m = std::fmax(m, std::fabs(px[i]));
      if (e - s < bs) m = std::fmax(m, 0.0f);
      pa[b] = m;
      const float rcp = 1.0f / m;
      for (int64_t i = s; i < e; i++) pq[i] = quantize_code8_scalar(cp, px[i] * rcp);
    }
  });
  return r;
}

Tensor dequantize_blockwise_8bit(const Tensor& q, const Tensor& absmax_in, const Tensor& code_in, int64_t bs) {
  if (any_cuda(q)) return cuda_fn(&CudaOps::dequantize_blockwise_8bit, "dequantize_blockwise")(q, absmax_in, code_in, bs);
  const char* op = "dequantize_blockwise";
  check_dtype(q, DType::U8, op, "q");
  PK_CHECK(bs > 0, op, ": blocksize must be positive, got ", bs);
  const Tensor qc = q.contiguous();
  const Tensor am = absmax_in.to(DType::F32).contiguous();
  const int64_t n = qc.numel();
  PK_CHECK(am.numel() == (n + bs - 1) / bs, op, ": absmax ", am.desc(), " does not match ", n, " values in blocks of ", bs);
  Tensor code = code_in.defined() ? code_in.to(DType::F32).contiguous() : Tensor();
  if (code.defined()) PK_CHECK(code.numel() == 256, op, ": code must have 256 entries, got ", code.desc());
  const float* cp = code.defined() ? code.data<float>() : dynamic_map_signed();
  Tensor out = Tensor::empty({n}, DType::F32);
  const uint8_t* pq = qc.data<uint8_t>();
  const float* pa = am.data<float>();
  float* po = out.data<float>();
  parallel_for(0, n, 1 << 15, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; i++) po[i] = cp[pq[i]] * pa[i / bs];
  });
  return out;
}

NestedAbsmax quantize_absmax_nested(const Tensor& absmax, int64_t bs2) {
  if (any_cuda(absmax)) return cuda_fn(&CudaOps::quantize_absmax_nested, "double quantization")(absmax, bs2);
  const Tensor a = absmax.to(DType::F32).contiguous();
  const int64_t n = a.numel();
  PK_CHECK(n > 0, "double quantization: empty absmax");
  const float* p = a.data<float>();
  double sum = 0;
  for (int64_t i = 0; i < n; i++) sum += p[i];
  NestedAbsmax r;
  r.offset = (float)(sum / (double)n);
  Tensor centered = Tensor::empty({n}, DType::F32);
  float* c = centered.data<float>();
  for (int64_t i = 0; i < n; i++) c[i] = p[i] - r.offset;
  Quant8Packed q = quantize_blockwise_8bit(centered, Tensor(), bs2);
  r.q = q.q;
  r.absmax2 = q.absmax;
  return r;
}

Tensor quant4_absmax_f32(const Quant4State& s) {
  if (any_cuda(s.packed, s.absmax)) return cuda_fn(&CudaOps::quant4_absmax_f32, "quant4_absmax_f32")(s);
  if (!s.nested()) return s.absmax.to(DType::F32).contiguous().view({s.absmax.numel()});
  Tensor a = dequantize_blockwise_8bit(s.absmax, s.nested_absmax, s.nested_code, s.nested_blocksize);
  float* p = a.data<float>();
  const float off = s.offset;
  for (int64_t i = 0; i < a.numel(); i++) p[i] = p[i] + off;   // absmax += offset (f32)
  return a;
}

static q4::Decode make_decode(const Quant4State& s, const Tensor& absf) {
  q4::Decode d;
  d.packed = s.packed.data<uint8_t>();
  d.nbytes = s.packed.numel();
  d.absmax = absf.data<float>();
  d.lut = decode_lut(s.type);
  d.bs = s.blocksize;
  d.round_to = (s.dtype == DType::BF16 || s.dtype == DType::F16) ? s.dtype : DType::F32;
  d.rows = s.shape.size() >= 2 ? s.shape[0] : 1;
  d.cols = s.shape.empty() ? 1 : s.numel() / d.rows;
  return d;
}

Tensor dequantize_4bit(const Quant4State& s, DType out) {
  if (any_cuda(s.packed)) return cuda_fn(&CudaOps::dequantize_4bit, "dequantize_4bit")(s, out);
  const char* op = "dequantize_4bit";
  check_quant4_state(s, op);
  PK_CHECK(is_float(out), op, ": output dtype must be float, got ", dtype_name(out));
  const Tensor absf = quant4_absmax_f32(s);
  const q4::Decode d = make_decode(s, absf);
  const q4::Kernels& ks = q4::active_kernels();
  const int64_t n = s.numel();
  Tensor y = Tensor::empty(s.shape, out);
  constexpr int64_t kChunk = 4096;   // even, a multiple of every block size's alignment needs
  parallel_for(0, (n + kChunk - 1) / kChunk, 16, [&](int64_t c0, int64_t c1) {
    std::vector<float> tmp(out == DType::F32 ? 0 : kChunk);
    for (int64_t c = c0; c < c1; c++) {
      const int64_t e0 = c * kChunk, cnt = std::min(kChunk, n - e0);
      if (out == DType::F32) { ks.decode(d, e0, cnt, y.data<float>() + e0); continue; }
      ks.decode(d, e0, cnt, tmp.data());
      if (out == DType::BF16) { uint16_t* o = y.data<uint16_t>() + e0; for (int64_t i = 0; i < cnt; i++) o[i] = f32_to_bf16(tmp[i]); }
      else if (out == DType::F16) { uint16_t* o = y.data<uint16_t>() + e0; for (int64_t i = 0; i < cnt; i++) o[i] = f32_to_f16(tmp[i]); }
      else { double* o = y.data<double>() + e0; for (int64_t i = 0; i < cnt; i++) o[i] = tmp[i]; }
    }
  });
  return y;
}

// ---------------------------------------------------------------------------------------------
// The fused GEMM

namespace {
void gemm_4bit_impl(int64_t M, const GemmOperand& A, const Quant4State& W, bool trans_w, float* C, int64_t ldc, float alpha,
                    float beta, int nthreads, const Bf16Epilogue* epi, GemmCompute compute) {
  check_quant4_state(W, "gemm_4bit");
  PK_CHECK(W.shape.size() == 2, "gemm_4bit: the 4-bit weight must be 2-d (out, in), got ", shape_str(W.shape));
  const Tensor absf = quant4_absmax_f32(W);   // the only materialised state: 1 float per block
  const q4::Decode d = make_decode(W, absf);
  const int64_t out = W.shape[0], in = W.shape[1];
  const int64_t N = trans_w ? out : in, K = trans_w ? in : out;
  const gemm::KernelSet& ks = gemm::kernels_for(M, N, compute);
  const q4::Kernels& qk = q4::active_kernels();
  gemm::PanelLoader a = gemm::dense_loader_a(A, ks);
  gemm::PanelLoader b;
  b.pack = trans_w ? qk.pack_wt : qk.pack_w;
  b.data = W.packed.raw();
  b.dtype = DType::U8;
  b.ctx = &d;
  gemm::gemm_f32_loaders(M, N, K, a, b, C, ldc, alpha, beta, nthreads, ks, epi);
}
}  // namespace

GemmCompute quant4_compute(DType a, const Quant4State& w) {
  return a == DType::BF16 && w.dtype == DType::BF16 ? GemmCompute::Bf16 : GemmCompute::F32;
}

void gemm_4bit(int64_t M, const GemmOperand& A, const Quant4State& W, bool trans_w, float* C, int64_t ldc, float alpha,
               float beta, int nthreads, GemmCompute compute) {
  gemm_4bit_impl(M, A, W, trans_w, C, ldc, alpha, beta, nthreads, nullptr, compute);
}

void gemm_4bit_bf16_out(int64_t M, const GemmOperand& A, const Quant4State& W, bool trans_w, const Bf16Epilogue& epi,
                        int nthreads, GemmCompute compute) {
  const int64_t N = W.shape.size() == 2 ? (trans_w ? W.shape[0] : W.shape[1]) : 0;
  if (gemm::kernels_for(M, N, compute).epi_bf16) {
    gemm_4bit_impl(M, A, W, trans_w, nullptr, 0, 1.0f, 0.0f, nthreads, &epi, compute);
    return;
  }
  Tensor P = Tensor::empty({M, N}, DType::F32);
  gemm_4bit(M, A, W, trans_w, P.data<float>(), N, 1.0f, 0.0f, nthreads, compute);
  bf16_epilogue_unfused(M, N, P.data<float>(), epi);
}

static Tensor add_bias_rows(Tensor y, const Tensor& bias, int64_t rows, int64_t cols) {
  const Tensor bf = bias.to(DType::F32).contiguous();
  const float* pb = bf.data<float>();
  float* py = y.data<float>();
  parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++)
      for (int64_t j = 0; j < cols; j++) py[r * cols + j] += pb[j];
  });
  return y;
}

Tensor linear_4bit(const Tensor& x, const Quant4State& w, const Tensor& bias) {
  if (any_cuda(x, w.packed)) return cuda_fn(&CudaOps::linear_4bit, "linear_4bit")(x, w, bias);
  const char* op = "linear_4bit";
  check_defined(x, op, "x"); check_float(x, op, "x"); check_cpu(x, op, "x");
  check_quant4_state(w, op);
  PK_CHECK(w.shape.size() == 2, op, ": the 4-bit weight must be 2-d (out, in), got ", shape_str(w.shape));
  const int64_t out = w.shape[0], in = w.shape[1];
  PK_CHECK(x.dim() >= 1 && x.size(-1) == in, op, ": input ", x.desc(), " does not match the 4-bit weight ", shape_str(w.shape),
           " (in_features ", in, ")");
  if (bias.defined()) {
    check_float(bias, op, "bias");
    PK_CHECK(bias.dim() == 1 && bias.size(0) == out, op, ": bias ", bias.desc(), " must be (", out, ")");
  }
  if (x.dtype() == DType::F64) {   // gradient checks: the exact dequantized weight in f64
    const Tensor Wd = dequantize_4bit(w, DType::F64);
    return linear(x, Wd, bias.defined() ? bias.to(DType::F64) : bias);
  }
  Shape lead(x.shape().begin(), x.shape().end() - 1);
  const int64_t rows = shape_numel(lead);
  const Tensor x2 = x.reshape({rows, in});
  Tensor y = Tensor::empty({rows, out}, DType::F32);
  if (rows > 0) {
    GemmOperand A{x2.raw(), x2.dtype(), x2.strides()[0], x2.strides()[1]};
    gemm_4bit(rows, A, w, true, y.data<float>(), out, 1.0f, 0.0f, 0, quant4_compute(x.dtype(), w));
    if (bias.defined()) y = add_bias_rows(y, bias, rows, out);
  }
  Shape os = lead; os.push_back(out);
  return y.view(os).to(x.dtype());
}

Tensor linear_4bit_grad_input(const Tensor& dy, const Quant4State& w) {
  if (any_cuda(dy, w.packed)) return cuda_fn(&CudaOps::linear_4bit_grad_input, "linear_4bit_grad_input")(dy, w);
  const char* op = "linear_4bit_grad_input";
  check_defined(dy, op, "grad"); check_float(dy, op, "grad"); check_cpu(dy, op, "grad");
  check_quant4_state(w, op);
  PK_CHECK(w.shape.size() == 2, op, ": the 4-bit weight must be 2-d (out, in), got ", shape_str(w.shape));
  const int64_t out = w.shape[0], in = w.shape[1];
  PK_CHECK(dy.dim() >= 1 && dy.size(-1) == out, op, ": grad ", dy.desc(), " does not match the 4-bit weight ", shape_str(w.shape));
  if (dy.dtype() == DType::F64) {
    const Tensor Wd = dequantize_4bit(w, DType::F64);
    return matmul(dy, Wd, false, false);
  }
  Shape lead(dy.shape().begin(), dy.shape().end() - 1);
  const int64_t rows = shape_numel(lead);
  const Tensor g2 = dy.reshape({rows, out});
  Tensor dx = Tensor::empty({rows, in}, DType::F32);
  if (rows > 0) {
    GemmOperand A{g2.raw(), g2.dtype(), g2.strides()[0], g2.strides()[1]};
    gemm_4bit(rows, A, w, false, dx.data<float>(), in, 1.0f, 0.0f, 0, quant4_compute(dy.dtype(), w));
  }
  Shape os = lead; os.push_back(in);
  return dx.view(os).to(dy.dtype());
}

}  // namespace pk
