// quant.cu — CUDA twins of cpu/quant.cpp: NF4/FP4 4-bit dequantization (bandwidth-bound, bit-exact
// with the CPU), 4-bit quantization (bitsandbytes decision rules), and the QLoRA linear as
// "dequantize into a reused scratch buffer + the cuBLASLt GEMM" (gemm.cu).
//
// Dequantize: each thread turns 16 packed bytes (one 16-byte load) into 32 values written with
// 16-byte stores; 32 | blocksize, so one absmax serves a thread. The 16-entry code table (bnb's
// decode LUT; FP4 with its sign half) lives in shared memory; a double-quantized absmax is
// reconstructed inline as (f32)(dyn[q] * absmax2[b / 256]) + offset, each product/sum rounded
// exactly like the CPU. value = (f32)(code * absmax), rounded to the state's dtype (bf16/f16) and
// then converted to the output dtype: the same bits as cpu::dequantize_4bit.
// Quantize: one warp per block of `blocksize` elements: warp-max absmax, x * (1/absmax) with the
// f32 reciprocal, code = number of bnb midpoints strictly below (NF4), or sign + magnitude rank
// (FP4). Double quantization and the 8-bit blockwise quantizer run on the host (they are
// load-time operations on 1/64 of the data, and bnb's f64 mean must be reproduced exactly).
#include <cfloat>
#include <cstring>
#include <mutex>
#include "common.cuh"
#include "core/dispatch.h"
#include "cpu/cpu_common.h"
#include "cpu/quant.h"
#include "ops.h"

namespace pk {
namespace cuda {

namespace {

// A tensor on the GPU (uploaded when on the CPU); small state tensors only.
Tensor on_cuda_any(const Tensor& t) { return t.device() == Device::CUDA ? t : to_device(t, Device::CUDA); }

struct Lut16 { float v[16]; };
struct QTables {
  float nf4[15];
  float fp4[7];
  int fp4_code[8];
};

Lut16 decode_lut(Quant4Type t) {
  Lut16 l;
  const float* c = quant4_code(t);
  if (t == Quant4Type::NF4) for (int i = 0; i < 16; i++) l.v[i] = c[i];
  else for (int i = 0; i < 8; i++) { l.v[i] = c[i]; l.v[8 + i] = -c[i]; }   // bnb's FP4 LUT: sign half negated
  return l;
}

// round_to: 0 none (f32), 1 bf16, 2 f16
__device__ __forceinline__ float round_mode(float v, int r) {
  if (r == 1) return __bfloat162float(from_f32<__nv_bfloat16>(v));
  if (r == 2) return __half2float(from_f32<__half>(v));
  return v;
}

struct Absmax {
  const float* f32 = nullptr;     // plain absmax (f32)
  const uint8_t* q = nullptr;     // nested: u8 codes
  const float* a2 = nullptr;      // nested: second-level absmax (f32)
  const float* dyn = nullptr;     // nested: 256-entry code (f32, device)
  int64_t bs2 = 256;
  float offset = 0.0f;
};
template <bool NESTED> __device__ __forceinline__ float absmax_of(const Absmax a, const float* sdyn, int64_t b) {
  if constexpr (NESTED) return __fadd_rn(__fmul_rn(sdyn[a.q[b]], a.a2[b / a.bs2]), a.offset);
  else return a.f32[b];
}

template <class O, bool NESTED>
__global__ void __launch_bounds__(256) dequant4_vec_kernel(const uint4* __restrict__ packed, Absmax am, Lut16 lut, int rmode,
                                                           int bs_shift, O* __restrict__ out, int64_t groups) {
  __shared__ float sl[16];
  __shared__ float sdyn[NESTED ? 256 : 1];
  if (threadIdx.x < 16) sl[threadIdx.x] = lut.v[threadIdx.x];
  if constexpr (NESTED) for (int i = threadIdx.x; i < 256; i += blockDim.x) sdyn[i] = am.dyn[i];
  __syncthreads();
  for (int64_t gi = global_tid<int64_t>(); gi < groups; gi += grid_stride<int64_t>()) {
    const uint4 u = packed[gi];
    const int64_t e0 = gi * 32;
    const float a = absmax_of<NESTED>(am, sdyn, e0 >> bs_shift);
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
    alignas(16) O vals[32];
#pragma unroll
    for (int k = 0; k < 4; k++) {
#pragma unroll
      for (int by = 0; by < 4; by++) {
        const uint32_t b = (w[k] >> (8 * by)) & 0xffu;
        const float hi = round_mode(__fmul_rn(sl[b >> 4], a), rmode), lo = round_mode(__fmul_rn(sl[b & 15], a), rmode);
        vals[k * 8 + by * 2] = Conv<float>::template store<O>(hi);
        vals[k * 8 + by * 2 + 1] = Conv<float>::template store<O>(lo);
      }
    }
    uint4* dst = reinterpret_cast<uint4*>(out + e0);
    const uint4* src = reinterpret_cast<const uint4*>(vals);
#pragma unroll
    for (int k = 0; k < (int)(32 * sizeof(O) / 16); k++) dst[k] = src[k];
  }
}

// Any alignment / the tail: one element per thread step, elements [e_begin, n).
template <class O, bool NESTED>
__global__ void dequant4_scalar_kernel(const uint8_t* __restrict__ packed, Absmax am, Lut16 lut, int rmode, int bs_shift,
                                       O* __restrict__ out, int64_t e_begin, int64_t n) {
  __shared__ float sdyn[NESTED ? 256 : 1];
  if constexpr (NESTED) for (int i = threadIdx.x; i < 256; i += blockDim.x) sdyn[i] = am.dyn[i];
  __syncthreads();
  for (int64_t e = e_begin + global_tid<int64_t>(); e < n; e += grid_stride<int64_t>()) {
    const uint8_t b = packed[e >> 1];
    const int q = (e & 1) ? (b & 0x0F) : (b >> 4);
    const float a = absmax_of<NESTED>(am, sdyn, e >> bs_shift);
    out[e] = Conv<float>::template store<O>(round_mode(__fmul_rn(lut.v[q], a), rmode));
  }
}

__global__ void absmax_nested_kernel(Absmax am, float* __restrict__ out, int64_t nb) {
  for (int64_t b = global_tid<int64_t>(); b < nb; b += grid_stride<int64_t>())
    out[b] = __fadd_rn(__fmul_rn(am.dyn[am.q[b]], am.a2[b / am.bs2]), am.offset);
}

int log2i(int64_t v) { int s = 0; while ((int64_t(1) << s) < v) s++; return s; }
bool pow2(int64_t v) { return v > 0 && (v & (v - 1)) == 0; }

void check_blocksize(int64_t bs, const char* op) {
  PK_CHECK(pow2(bs) && bs >= 32 && bs <= 4096, op, ": blocksize must be a power of two in [32, 4096] (bitsandbytes uses 64..4096), got ", bs);
}

// check_quant4_state with the tensors on the GPU (the quant_map comparison needs its values:
// it runs when the map is on the CPU; a map already on the GPU was validated when it was made).
void check_state_cuda(const Quant4State& s, const char* op) {
  check_blocksize(s.blocksize, op);
  const int64_t n = s.numel(), nb = s.nblocks();
  PK_CHECK(n > 0, op, ": quantized tensor of shape ", shape_str(s.shape), " is empty");
  check_defined(s.packed, op, "packed weight"); check_cuda(s.packed, op, "packed weight");
  PK_CHECK(s.packed.dtype() == DType::U8 && s.packed.is_contiguous() && s.packed.numel() >= (n + 1) / 2, op,
           ": packed weight must be contiguous u8 with ", (n + 1) / 2, " bytes for shape ", shape_str(s.shape), ", got ", s.packed.desc());
  check_defined(s.absmax, op, "absmax"); check_cuda(s.absmax, op, "absmax");
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
    if (s.code.device() == Device::CPU) {
      const Tensor c = s.code.to(DType::F32).contiguous();
      const float* p = c.data<float>();
      const float* ref = quant4_code(s.type);
      bool same = true;
      for (int i = 0; i < 16; i++) if (!(std::fabs(p[i] - ref[i]) <= 1e-6f)) same = false;
      PK_CHECK(same, op, ": quant_map does not match bitsandbytes' ", quant4_type_name(s.type), " code table");
    }
  }
}

// The default nested code (bnb's signed dynamic map) on the device, uploaded once.
const float* default_dyn_device() {
  static std::mutex mu;
  static Tensor t;
  std::lock_guard<std::mutex> lk(mu);
  if (!t.defined()) {
    Tensor h = Tensor::empty({256}, DType::F32);
    std::memcpy(h.raw(), dynamic_map_signed(), 256 * sizeof(float));
    t = to_device(h, Device::CUDA);
  }
  return t.data<float>();
}

// Device views of the absmax state; `keep` holds converted temporaries alive until the launch.
Absmax absmax_args(const Quant4State& s, std::vector<Tensor>& keep) {
  Absmax a;
  if (!s.nested()) {
    Tensor f = contiguous(cast(s.absmax, DType::F32));
    keep.push_back(f);
    a.f32 = f.data<float>();
    return a;
  }
  Tensor q = contiguous(s.absmax);
  Tensor a2 = on_cuda_any(s.nested_absmax);
  a2 = contiguous(cast(a2, DType::F32));
  keep.push_back(q); keep.push_back(a2);
  a.q = q.data<uint8_t>();
  a.a2 = a2.data<float>();
  if (s.nested_code.defined()) {
    Tensor c = contiguous(cast(on_cuda_any(s.nested_code), DType::F32));
    keep.push_back(c);
    a.dyn = c.data<float>();
  } else {
    a.dyn = default_dyn_device();
  }
  a.bs2 = s.nested_blocksize;
  a.offset = s.offset;
  return a;
}

// Dequantize into `out` (contiguous, s.numel() elements, any float dtype).
void dequant_into(const Quant4State& s, const Tensor& out) {
  std::vector<Tensor> keep;
  const Absmax am = absmax_args(s, keep);
  const Lut16 lut = decode_lut(s.type);
  const int rmode = s.dtype == DType::BF16 ? 1 : s.dtype == DType::F16 ? 2 : 0;
  const int shift = log2i(s.blocksize);
  const int64_t n = s.numel();
  const uint8_t* pk_ = s.packed.data<uint8_t>();
  const bool vec = ptr_alignment(pk_) >= 16 && ptr_alignment(out.raw()) >= 16;
  const int64_t groups = vec ? n / 32 : 0;
  dispatch_float(out.dtype(), "dequantize_4bit", [&](auto tag) {
    using O = decltype(tag);
    if (groups > 0) {
      unsigned grid = grid_for(groups, 256, sm_count(), 16);
      if (s.nested()) dequant4_vec_kernel<O, true><<<grid, 256, 0, cur_stream()>>>((const uint4*)pk_, am, lut, rmode, shift, out.data<O>(), groups);
      else dequant4_vec_kernel<O, false><<<grid, 256, 0, cur_stream()>>>((const uint4*)pk_, am, lut, rmode, shift, out.data<O>(), groups);
      PK_CUDA_CHECK_LAUNCH();
    }
    const int64_t e0 = groups * 32;
    if (e0 < n) {
      unsigned grid = grid_for(n - e0, 256, sm_count());
      if (s.nested()) dequant4_scalar_kernel<O, true><<<grid, 256, 0, cur_stream()>>>(pk_, am, lut, rmode, shift, out.data<O>(), e0, n);
      else dequant4_scalar_kernel<O, false><<<grid, 256, 0, cur_stream()>>>(pk_, am, lut, rmode, shift, out.data<O>(), e0, n);
      PK_CUDA_CHECK_LAUNCH();
    }
  });
}

Tensor dequantize_4bit_cuda(const Quant4State& s, DType out) {
  const char* op = "dequantize_4bit";
  check_state_cuda(s, op);
  PK_CHECK(is_float(out), op, ": output dtype must be float, got ", dtype_name(out));
  Tensor y = Tensor::empty(s.shape, out, Device::CUDA);
  dequant_into(s, y);
  return y;
}

Tensor quant4_absmax_f32_cuda(const Quant4State& s) {
  if (!s.nested()) return contiguous(cast(s.absmax, DType::F32)).view({s.absmax.numel()});
  std::vector<Tensor> keep;
  const Absmax am = absmax_args(s, keep);
  const int64_t nb = s.absmax.numel();
  Tensor out = Tensor::empty({nb}, DType::F32, Device::CUDA);
  launch(absmax_nested_kernel, nb, am, out.data<float>(), nb);
  return out;
}

// ---- the reused scratch buffer of the QLoRA linear (one stream: reuse is ordered) ----
struct Scratch {
  std::mutex mu;
  Tensor buf;   // u8 bytes
};
Scratch& scratch() {
  static Scratch* s = new Scratch();
  return *s;
}
Tensor scratch_weight(const Shape& shape, DType dt) {
  const int64_t bytes = shape_numel(shape) * (int64_t)dtype_size(dt);
  Scratch& s = scratch();
  std::lock_guard<std::mutex> lk(s.mu);
  if (!s.buf.defined() || s.buf.numel() < bytes) {
    s.buf = Tensor();   // release the smaller one first
    s.buf = Tensor::empty({bytes}, DType::U8, Device::CUDA);
  }
  return Tensor(s.buf.storage(), shape, contiguous_strides(shape), 0, dt);
}

// The dtype the weight is dequantized to for an activation of dtype xd: the activation's own when it
// holds the state's rounded values exactly (same dtype, f32 or f64), else f32 (x is then cast to f32).
DType weight_dtype(DType xd, DType sd) {
  if (xd == DType::F64 || xd == DType::F32 || xd == sd) return xd;
  return DType::F32;
}

Tensor linear_4bit_cuda(const Tensor& x, const Quant4State& w, const Tensor& bias) {
  const char* op = "linear_4bit";
  check_defined(x, op, "x"); check_float(x, op, "x"); check_cuda(x, op, "x");
  check_state_cuda(w, op);
  PK_CHECK(w.shape.size() == 2, op, ": the 4-bit weight must be 2-d (out, in), got ", shape_str(w.shape));
  const int64_t out = w.shape[0], in = w.shape[1];
  PK_CHECK(x.dim() >= 1 && x.size(-1) == in, op, ": input ", x.desc(), " does not match the 4-bit weight ", shape_str(w.shape),
           " (in_features ", in, ")");
  if (bias.defined()) {
    check_float(bias, op, "bias");
    PK_CHECK(bias.dim() == 1 && bias.size(0) == out, op, ": bias ", bias.desc(), " must be (", out, ")");
  }
  const DType wd = weight_dtype(x.dtype(), w.dtype);
  Tensor W = scratch_weight(w.shape, wd);
  dequant_into(w, W);
  Tensor xx = x.dtype() == wd ? x : cast(x, wd);
  Tensor y = cuda::linear(xx, W, bias.defined() ? on_cuda_any(bias) : bias);
  return cast(y, x.dtype());
}

Tensor linear_4bit_grad_input_cuda(const Tensor& dy, const Quant4State& w) {
  const char* op = "linear_4bit_grad_input";
  check_defined(dy, op, "grad"); check_float(dy, op, "grad"); check_cuda(dy, op, "grad");
  check_state_cuda(w, op);
  PK_CHECK(w.shape.size() == 2, op, ": the 4-bit weight must be 2-d (out, in), got ", shape_str(w.shape));
  const int64_t out = w.shape[0], in = w.shape[1];
  PK_CHECK(dy.dim() >= 1 && dy.size(-1) == out, op, ": grad ", dy.desc(), " does not match the 4-bit weight ", shape_str(w.shape));
  const DType wd = weight_dtype(dy.dtype(), w.dtype);
  Tensor W = scratch_weight(w.shape, wd);
  dequant_into(w, W);
  Tensor g = dy.dtype() == wd ? dy : cast(dy, wd);
  Shape lead(dy.shape().begin(), dy.shape().end() - 1);
  const int64_t rows = shape_numel(lead);
  Tensor g2 = cuda::reshape(g, {rows, out});
  Tensor dx = cuda::matmul(g2, W, false, false);
  Shape os = lead; os.push_back(in);
  return cast(cuda::reshape(dx, os), dy.dtype());
}

// ---------------------------------------------------------------------------- quantize
__device__ __forceinline__ int q_nf4(float x, const QTables& t) {
  int c = 0;
#pragma unroll
  for (int i = 0; i < 15; i++) c += x > t.nf4[i];
  return c;
}
__device__ __forceinline__ int q_fp4(float x, const QTables& t) {
  const int sign = x < 0 ? 8 : 0;
  const float a = fabsf(x);
  int r = 0;
#pragma unroll
  for (int i = 0; i < 7; i++) r += a > t.fp4[i];
  return t.fp4_code[r] + sign;
}

template <class S>
__global__ void quant4_kernel(const S* __restrict__ x, int64_t n, int64_t bs, int fp4, QTables tab, uint8_t* __restrict__ packed,
                              float* __restrict__ absmax, int64_t nb) {
  const int lane = threadIdx.x & 31;
  const int64_t wpb = blockDim.x >> 5;
  for (int64_t b = (int64_t)blockIdx.x * wpb + (threadIdx.x >> 5); b < nb; b += (int64_t)gridDim.x * wpb) {
    const int64_t s = b * bs, e = min(n, s + bs);
    float m = -FLT_MAX;
    for (int64_t i = s + lane; i < e; i += 32) m = fmaxf(m, fabsf(to_f32(x[i])));
    for (int d = 16; d > 0; d >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, d));
    if (e - s < bs) m = fmaxf(m, 0.0f);   // bnb pads a partial block with zeros
    if (lane == 0) absmax[b] = m;
    const float r = __fdiv_rn(1.0f, m);
    for (int64_t i = s + 2 * lane; i < e; i += 64) {
      const float x0 = __fmul_rn(to_f32(x[i]), r);
      const float x1 = __fmul_rn(i + 1 < e ? to_f32(x[i + 1]) : 0.0f, r);
      const int q0 = fp4 ? q_fp4(x0, tab) : q_nf4(x0, tab), q1 = fp4 ? q_fp4(x1, tab) : q_nf4(x1, tab);
      packed[i >> 1] = (uint8_t)((q0 << 4) | q1);
    }
  }
}

Quant4Packed quantize_4bit_cuda(const Tensor& x, int64_t blocksize, Quant4Type type) {
  const char* op = "quantize_4bit";
  check_defined(x, op, "x"); check_cuda(x, op, "x"); check_float(x, op, "x");
  check_blocksize(blocksize, op);
  Tensor xc = contiguous(x);
  if (xc.dtype() == DType::F64) xc = cast(xc, DType::F32);
  const int64_t n = xc.numel();
  const int64_t nb = (n + blocksize - 1) / blocksize;
  Quant4Packed r;
  r.packed = Tensor::empty({(n + 1) / 2, 1}, DType::U8, Device::CUDA);
  r.absmax = Tensor::empty({nb}, DType::F32, Device::CUDA);
  if (n == 0) return r;
  QTables tab;
  for (int i = 0; i < 15; i++) tab.nf4[i] = q4::kNf4Thresholds[i];
  for (int i = 0; i < 7; i++) tab.fp4[i] = q4::kFp4Thresholds[i];
  for (int i = 0; i < 8; i++) tab.fp4_code[i] = q4::kFp4CodeOfRank[i];
  const unsigned grid = (unsigned)std::max<int64_t>(1, std::min<int64_t>((nb + 7) / 8, (int64_t)sm_count() * 16));
  dispatch_float(xc.dtype(), op, [&](auto tag) {
    using S = decltype(tag);
    quant4_kernel<S><<<grid, 256, 0, cur_stream()>>>(xc.data<S>(), n, blocksize, type == Quant4Type::FP4, tab,
                                                     r.packed.data<uint8_t>(), r.absmax.data<float>(), nb);
    PK_CUDA_CHECK_LAUNCH();
  });
  return r;
}

// ---- 8-bit blockwise (double quantization of absmax): exact via the CPU implementation ----
Quant8Packed quantize_blockwise_8bit_cuda(const Tensor& x, const Tensor& code, int64_t bs) {
  Quant8Packed h = quantize_blockwise_8bit(to_device(x, Device::CPU), code.defined() ? to_device(code, Device::CPU) : code, bs);
  return Quant8Packed{to_device(h.q, Device::CUDA), to_device(h.absmax, Device::CUDA)};
}

__global__ void dequant8_kernel(const uint8_t* __restrict__ q, const float* __restrict__ a, const float* __restrict__ code,
                                float* __restrict__ out, int64_t n, int64_t bs) {
  for (int64_t i = global_tid<int64_t>(); i < n; i += grid_stride<int64_t>()) out[i] = __fmul_rn(code[q[i]], a[i / bs]);
}

Tensor dequantize_blockwise_8bit_cuda(const Tensor& q_in, const Tensor& absmax_in, const Tensor& code_in, int64_t bs) {
  const char* op = "dequantize_blockwise";
  check_dtype(q_in, DType::U8, op, "q");
  check_cuda(q_in, op, "q");
  PK_CHECK(bs > 0, op, ": blocksize must be positive, got ", bs);
  const Tensor qc = contiguous(q_in);
  const Tensor am = contiguous(cast(on_cuda_any(absmax_in), DType::F32));
  const int64_t n = qc.numel();
  PK_CHECK(am.numel() == (n + bs - 1) / bs, op, ": absmax ", am.desc(), " does not match ", n, " values in blocks of ", bs);
  Tensor code;
  if (code_in.defined()) {
    code = contiguous(cast(on_cuda_any(code_in), DType::F32));
    PK_CHECK(code.numel() == 256, op, ": code must have 256 entries, got ", code.desc());
  }
  const float* cp = code.defined() ? code.data<float>() : default_dyn_device();
  Tensor out = Tensor::empty({n}, DType::F32, Device::CUDA);
  launch(dequant8_kernel, n, qc.data<uint8_t>(), am.data<float>(), cp, out.data<float>(), n, bs);
  return out;
}

NestedAbsmax quantize_absmax_nested_cuda(const Tensor& absmax, int64_t bs2) {
  NestedAbsmax h = quantize_absmax_nested(to_device(absmax, Device::CPU), bs2);
  return NestedAbsmax{to_device(h.q, Device::CUDA), to_device(h.absmax2, Device::CUDA), h.offset};
}

struct Registrar {
  Registrar() {
    CudaOps& o = cuda_ops();
    o.quantize_4bit = quantize_4bit_cuda;
    o.dequantize_4bit = dequantize_4bit_cuda;
    o.quant4_absmax_f32 = quant4_absmax_f32_cuda;
    o.linear_4bit = linear_4bit_cuda;
    o.linear_4bit_grad_input = linear_4bit_grad_input_cuda;
    o.quantize_blockwise_8bit = quantize_blockwise_8bit_cuda;
    o.dequantize_blockwise_8bit = dequantize_blockwise_8bit_cuda;
    o.quantize_absmax_nested = quantize_absmax_nested_cuda;
  }
};
Registrar registrar;

}  // namespace

}  // namespace cuda
}  // namespace pk
