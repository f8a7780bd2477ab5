// quant_lora.cpp (emulator) — quant.cu's and lora.cu's CudaOps entries with their device rules:
// 4-bit packed weights and absmax on cuda, code tables and nested absmax anywhere; the fused LoRA
// linear's x, base weight, lora_A/B and grad on cuda, the bias as the base path takes it (on cuda
// or 0-d for a float base, anywhere for a 4-bit base, as linear_4bit uploads it). The 8-bit
// blockwise quantizer and the nested-absmax quantizer run on the host in quant.cu as well.
#include "cpu/lora.h"
#include "cpu/quant.h"
#include "emu.h"

namespace pk {
namespace cuda {

using emu::emu_call;

namespace {

void x_cuda(const Tensor& x, const char* op, const char* arg) {
  check_defined(x, op, arg); check_float(x, op, arg); check_cuda(x, op, arg);
}

// ---- 4-bit ----
Quant4Packed quantize_4bit_emu(const Tensor& x, int64_t blocksize, Quant4Type type) {
  check_defined(x, "quantize_4bit", "x"); check_cuda(x, "quantize_4bit", "x");
  return emu_call(pk::quantize_4bit, x, blocksize, type);
}

Tensor dequantize_4bit_emu(const Quant4State& s, DType out) {
  check_q4_devices(s, "dequantize_4bit");
  return emu_call(pk::dequantize_4bit, s, out);
}

Tensor quant4_absmax_f32_emu(const Quant4State& s) {
  // quant.cu reads absmax through cast (plain) or contiguous (nested): their device rule and message
  if (s.nested()) check_cuda(s.absmax, "contiguous", "self");
  else check_cuda(s.absmax, "cast", "self");
  return emu_call(pk::quant4_absmax_f32, s);
}

Tensor linear_4bit_emu(const Tensor& x, const Quant4State& w, const Tensor& bias) {
  x_cuda(x, "linear_4bit", "x");
  check_q4_devices(w, "linear_4bit");
  return emu_call(pk::linear_4bit, x, w, bias);
}

Tensor linear_4bit_grad_input_emu(const Tensor& dy, const Quant4State& w) {
  x_cuda(dy, "linear_4bit_grad_input", "grad");
  check_q4_devices(w, "linear_4bit_grad_input");
  return emu_call(pk::linear_4bit_grad_input, dy, w);
}

// ---- 8-bit blockwise (double quantization of absmax) ----
Quant8Packed quantize_blockwise_8bit_emu(const Tensor& x, const Tensor& code, int64_t bs) {
  return emu_call(pk::quantize_blockwise_8bit, x, code, bs);
}

Tensor dequantize_blockwise_8bit_emu(const Tensor& q, const Tensor& absmax, const Tensor& code, int64_t bs) {
  check_dtype(q, DType::U8, "dequantize_blockwise", "q");
  check_cuda(q, "dequantize_blockwise", "q");
  return emu_call(pk::dequantize_blockwise_8bit, q, absmax, code, bs);
}

NestedAbsmax quantize_absmax_nested_emu(const Tensor& absmax, int64_t bs2) {
  return emu_call(pk::quantize_absmax_nested, absmax, bs2);
}

// ---- the fused LoRA linear (lora.cu check_inputs) ----
void lora_inputs(const Tensor& x, const LoraBaseWeight& w, const Tensor& A, const Tensor& B, const char* op) {
  x_cuda(x, op, "x");
  if (w.q4) {
    check_defined(w.q4->packed, op, "packed weight"); check_cuda(w.q4->packed, op, "packed weight");
  } else {
    check_defined(w.weight, op, "weight"); check_cuda(w.weight, op, "weight");
  }
  check_defined(A, op, "lora_A"); check_defined(B, op, "lora_B");
  check_float(A, op, "lora_A"); check_float(B, op, "lora_B");
  check_cuda(A, op, "lora_A"); check_cuda(B, op, "lora_B");
}

bool f64_base(const Tensor& x) { return x.dtype() == DType::F64; }   // lora.cu: all-f64 or none

LoraForward lora_forward_emu(const Tensor& x, const LoraBaseWeight& w, const Tensor& bias, const Tensor& A, const Tensor& B,
                             double scale, double p, uint64_t seed) {
  const char* op = "lora_linear";
  lora_inputs(x, w, A, B, op);
  Tensor b = bias;
  if (w.q4) {
    // the 4-bit base goes through linear_4bit (bias uploaded from anywhere) or, in f64, dequantize_4bit + linear
    check_q4_devices(*w.q4, f64_base(x) ? "dequantize_4bit" : "linear_4bit");
    if (bias.defined() && f64_base(x)) b = on_cuda(bias, op, "bias");
  } else if (bias.defined()) {
    b = on_cuda(bias, op, "bias");
  }
  return emu_call(pk::lora_linear_forward, x, w, b, A, B, scale, p, seed);
}

LoraBackward lora_backward_emu(const Tensor& dy, const Tensor& x, const Tensor& mask, const LoraBaseWeight& w, const Tensor& A,
                               const Tensor& B, const Tensor& xa, double scale, double p, bool need_dx, bool need_dA,
                               bool need_dB) {
  const char* op = "lora_linear_backward";
  lora_inputs(x, w, A, B, op);
  x_cuda(dy, op, "grad");
  if (w.q4 && need_dx) check_q4_devices(*w.q4, f64_base(x) ? "dequantize_4bit" : "linear_4bit_grad_input");
  Tensor xac = xa.defined() ? on_cuda(xa, op, "xa") : xa;
  Tensor mc = p > 0 && mask.defined() ? on_cuda(mask, op, "mask") : mask;
  return emu_call(pk::lora_linear_backward, dy, x, mc, w, A, B, xac, scale, p, need_dx, need_dA, need_dB);
}

struct Registrar {
  Registrar() {
    CudaOps& o = cuda_ops();
    o.quantize_4bit = quantize_4bit_emu;
    o.dequantize_4bit = dequantize_4bit_emu;
    o.quant4_absmax_f32 = quant4_absmax_f32_emu;
    o.linear_4bit = linear_4bit_emu;
    o.linear_4bit_grad_input = linear_4bit_grad_input_emu;
    o.quantize_blockwise_8bit = quantize_blockwise_8bit_emu;
    o.dequantize_blockwise_8bit = dequantize_blockwise_8bit_emu;
    o.quantize_absmax_nested = quantize_absmax_nested_emu;
    o.lora_linear_forward = lora_forward_emu;
    o.lora_linear_backward = lora_backward_emu;
  }
};
Registrar registrar;

}  // namespace
}  // namespace cuda
}  // namespace pk
