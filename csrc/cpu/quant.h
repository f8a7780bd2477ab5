// quant.h — 4-bit (NF4 / FP4) blockwise quantization, bitsandbytes-exact, and the fused 4-bit GEMM.
//
// Format (bitsandbytes quantize_4bit / QuantState):
//   * the weight is flattened row-major and cut into blocks of `blocksize` (default 64) elements;
//     absmax[b] = max |x| over block b (f32);
//   * each element is normalised as x * (1.0f / absmax[b]) (a multiply by the f32 reciprocal, as
//     bnb's kQuantizeBlockwise does) and mapped to the nearest of 16 code values by bnb's decision
//     trees (dQuantizeNF4 / dQuantizeFP4: strict '>' against the float midpoints, so a tie goes to
//     the lower code; NaN (an all-zero block: 0 * inf) gives code 0);
//   * two codes per byte: element 2j in the HIGH nibble, element 2j+1 in the LOW nibble; an odd
//     element count leaves the last low nibble holding the code of 0.0;
//   * dequantization: value = (f32)(code[q] * absmax[b]), rounded to the state's dtype (bf16/f16)
//     when that is not f32 (bnb's kDequantizeBlockwise writes T(code * absmax)).
// Double quantization (bnb compress_statistics): offset = mean(absmax); absmax - offset is
// quantized 8-bit blockwise (blocksize 256) with bnb's signed dynamic map (create_dynamic_map())
// using bnb's dQuantize<0> binary search; the f32 second-level absmaxes and the offset are kept.
// Reconstruction: absmax[b] = (f32)(dyn[q[b]] * absmax2[b / 256]) + offset.
//
// The fused GEMM reads the packed weight through a gemm::PanelLoader that dequantizes 4-bit blocks
// while packing B panels (gemm_kernels.h), so the full-precision weight never exists; only the
// per-block f32 absmax vector (1/16 of the packed bytes) is materialised per call when the state
// is nested. ISA versions of the decode/encode loops live in quant_avx512.cpp / quant_avx2.cpp.
#pragma once
#include <cstdint>
#include "core/tensor.h"
#include "cpu/gemm.h"
#include "cpu/gemm_kernels.h"

namespace pk {

enum class Quant4Type : int { NF4 = 0, FP4 = 1 };
const char* quant4_type_name(Quant4Type t);   // "nf4" / "fp4"

// bitsandbytes' code tables (quant_map): get_4bit_type('nf4'|'fp4'), 16 f32 values; and
// create_dynamic_map(signed=True), 256 f32 values sorted ascending.
const float* quant4_code(Quant4Type t);
const float* dynamic_map_signed();

// bnb's scalar quantizers, exactly: dQuantizeNF4, dQuantizeFP4 and dQuantize<0> (8-bit code).
uint8_t quantize_nf4_scalar(float x);
uint8_t quantize_fp4_scalar(float x);
uint8_t quantize_code8_scalar(const float* code256, float x);

// A 4-bit quantized tensor (one bnb Params4bit + QuantState).
struct Quant4State {
  Quant4Type type = Quant4Type::NF4;
  Tensor packed;                 // u8, contiguous, >= (numel + 1) / 2 bytes (bnb: shape [(n+1)/2, 1])
  Tensor absmax;                 // f32 [nblocks]; u8 [nblocks] when nested
  Tensor code;                   // f32 [16] (quant_map); undefined = the built-in table of `type`
  int64_t blocksize = 64;
  Shape shape;                   // logical shape (out, in) for a weight
  DType dtype = DType::F32;      // bnb quant_state.dtype: dequantized values are rounded to it
  // double quantization (nested_absmax defined)
  Tensor nested_absmax;          // f32 [ceil(nblocks / nested_blocksize)]
  Tensor nested_code;            // f32 [256]; undefined = dynamic_map_signed()
  int64_t nested_blocksize = 256;
  float offset = 0.0f;
  bool nested() const { return nested_absmax.defined(); }
  int64_t numel() const { return shape_numel(shape); }
  int64_t nblocks() const { return (numel() + blocksize - 1) / blocksize; }
};

// Validates sizes, dtypes and contiguity; throws naming `op`.
void check_quant4_state(const Quant4State& s, const char* op);

struct Quant4Packed { Tensor packed, absmax; };
// bnb quantize_4bit without double quant. x: f32/bf16/f16/f64, any shape (read as contiguous).
// packed is u8 [(n+1)/2, 1], absmax f32 [nblocks].
Quant4Packed quantize_4bit(const Tensor& x, int64_t blocksize, Quant4Type type);

struct Quant8Packed { Tensor q, absmax; };
// bnb quantize_blockwise (8-bit, `code` f32[256] sorted; undefined = dynamic map): q u8 [n], absmax f32.
Quant8Packed quantize_blockwise_8bit(const Tensor& x, const Tensor& code, int64_t blocksize);
// bnb dequantize_blockwise: (f32)(code[q] * absmax[i / blocksize]) -> f32 [n].
Tensor dequantize_blockwise_8bit(const Tensor& q, const Tensor& absmax, const Tensor& code, int64_t blocksize);

struct NestedAbsmax { Tensor q, absmax2; float offset; };
// Double quantization of an f32 absmax vector (offset = mean in f64, rounded to f32).
NestedAbsmax quantize_absmax_nested(const Tensor& absmax, int64_t blocksize2 = 256);

// The per-block absmax in f32 (the nested state dequantized; a view of `absmax` otherwise).
Tensor quant4_absmax_f32(const Quant4State& s);

// Full dequantization to `out` (f32, bf16, f16 or f64) with shape s.shape. The values are
// (f32)(code * absmax) rounded to s.dtype first, then converted to `out`.
Tensor dequantize_4bit(const Quant4State& s, DType out);

// ---- the fused 4-bit GEMM ---------------------------------------------------------------------
// C[M,N] = alpha · A · op(W) + beta · C for a 4-bit weight W of logical shape (out, in):
//   trans_w = true:  op(W) = Wᵀ  (K = in,  N = out)   forward   Y  = X·Wᵀ
//   trans_w = false: op(W) = W   (K = out, N = in)    backward  dX = dY·W
// A is any f32/bf16/f16 strided operand (M x K); C is row-major f32 with leading dimension ldc.
// W's dequantized values are exactly those of dequantize_4bit(W, W.dtype) (rounded to bf16/f16
// when the state's dtype is). nthreads <= 0: the pool's size. This is the hook the fused LoRA
// kernel (lora.cpp base_gemm) calls for a quantized base weight.
// compute (gemm.h): GemmCompute::Bf16 multiplies bf16 pairs with f32 accumulation, as
// bitsandbytes' Linear4bit does with a bf16 compute dtype (dequantize to bf16, bf16 matmul). For a
// bf16 state the dequantized values are bf16 numbers already, so with bf16 activations the
// products are the same exact values as in f32 compute; only the summation order differs.
void gemm_4bit(int64_t M, const GemmOperand& A, const Quant4State& W, bool trans_w, float* C, int64_t ldc,
               float alpha, float beta, int nthreads = 0, GemmCompute compute = GemmCompute::F32);
// The compute the 4-bit linear ops use for activations of dtype a: Bf16 when a and the state's
// dtype are both bf16, else F32.
GemmCompute quant4_compute(DType a, const Quant4State& w);

// The same product written through a bf16-output epilogue (gemm.h Bf16Epilogue; alpha 1) — for a
// bf16 QLoRA layer: bias, rounding and the low-rank term in the tiles, no f32 output buffer
// (ISAs without a vector epilogue: the f32 product, then bf16_epilogue_unfused).
void gemm_4bit_bf16_out(int64_t M, const GemmOperand& A, const Quant4State& W, bool trans_w, const Bf16Epilogue& epi,
                        int nthreads = 0, GemmCompute compute = GemmCompute::F32);

// y = x·Wᵀ (+ bias): x (..., in) f32/bf16/f16/f64 -> (..., out) in x's dtype (f32 accumulation;
// f64 inputs go through an f64 dequantized copy of W, for gradient checks).
Tensor linear_4bit(const Tensor& x, const Quant4State& w, const Tensor& bias);
// dx = dy·W: dy (..., out) -> (..., in) in dy's dtype. dW is never formed (the weight is frozen).
Tensor linear_4bit_grad_input(const Tensor& dy, const Quant4State& w);

// ---- internal: ISA kernels (quant.cpp driver, quant_avx512.cpp / quant_avx2.cpp) --------------
namespace q4 {

// Decoding parameters shared by every kernel. absmax is f32 per block.
struct Decode {
  const uint8_t* packed = nullptr;
  int64_t nbytes = 0;            // readable bytes at `packed`
  const float* absmax = nullptr;
  const float* lut = nullptr;    // 16 f32 code values
  int64_t bs = 64;               // power of two, >= 16
  DType round_to = DType::F32;   // F32 (no rounding), BF16 or F16
  int64_t rows = 0, cols = 0;    // logical (out, in) of the weight, for the GEMM loaders
};

struct Kernels {
  const char* name;
  // Quantize blocks [b0, b1) of n elements of src (f32/bf16/f16) into packed bytes and absmax.
  void (*quantize)(const void* src, DType dt, int64_t n, int64_t bs, Quant4Type t, int64_t b0, int64_t b1,
                   uint8_t* packed, float* absmax);
  // dst[i] = value of element e0 + i, i < count; e0 even.
  void (*decode)(const Decode& d, int64_t e0, int64_t count, float* dst);
  // gemm PackFns reading a 4-bit weight; PanelLoader::ctx points to a Decode.
  gemm::PackFn pack_wt;   // B = Wᵀ (B(k, p) = W[p, k]): unit stride along K
  gemm::PackFn pack_w;    // B = W  (B(k, p) = W[k, p]): unit stride along the panel
};

const Kernels& kernels_scalar();
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(PEFTKIT_NO_SIMD_KERNELS)
const Kernels& kernels_avx2();     // quant_avx2.cpp
const Kernels& kernels_avx512();   // quant_avx512.cpp
#endif
const Kernels& active_kernels();   // by pk::cpu_isa() (respects set_isa_cap)

// Scalar element decode / block quantize (shared by the ISA files for odd edges).
inline float round_value(float v, DType r) {
  if (r == DType::BF16) return bf16_to_f32(f32_to_bf16(v));
  if (r == DType::F16) return f16_to_f32(f32_to_f16(v));
  return v;
}
inline float decode_one(const Decode& d, int64_t e) {
  const uint8_t b = d.packed[e >> 1];
  const int q = (e & 1) ? (b & 0x0F) : (b >> 4);
  return round_value(d.lut[q] * d.absmax[e / d.bs], d.round_to);
}
void quantize_blocks_scalar(const void* src, DType dt, int64_t n, int64_t bs, Quant4Type t, int64_t b0, int64_t b1,
                            uint8_t* packed, float* absmax);

// bnb's float midpoints (the thresholds of dQuantizeNF4 / dQuantizeFP4), ascending.
extern const float kNf4Thresholds[15];
extern const float kFp4Thresholds[7];
extern const uint8_t kFp4CodeOfRank[8];   // magnitude rank (count of thresholds below) -> code bits

}  // namespace q4

}  // namespace pk
