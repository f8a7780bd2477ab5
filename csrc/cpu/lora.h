// lora.h — the fused LoRA linear layer (forward and backward in one native call each).
//
//   y = x·Wᵀ (+ b) + s · (drop(x)·Aᵀ)·Bᵀ        W (out,in) frozen, A (r,in), B (out,r) trainable
//
// Forward: the base GEMM writes y (bias added in the same pass), xa = drop(x)·Aᵀ (T×r) is
// computed once, then a second GEMM accumulates s·xa·Bᵀ into y (beta = 1): the output is written
// once and never re-read by a separate add. The dropout mask uses the same Philox stream as
// pk::dropout_forward (same seed, same mask), so the fused and unfused paths agree bit for bit
// on which elements are dropped.
//
// Backward: one call gives dX (through the frozen W — dW is never formed), dA and dB:
//   gb = dY·B (T×r);  dB = s·dYᵀ·xa;  dA = s·gbᵀ·drop(x);  dX = dY·W + drop'(s·gb·A)
//
// The base weight is an operand of its own (LoraBaseWeight) so that other storage formats can
// plug in: f32 / bf16 / f16 go through the packed GEMM's loaders; a 4-bit (NF4/FP4) weight goes
// through the fused 4-bit GEMM (quant.h gemm_4bit: blocks are dequantized while packing B panels,
// the full-precision weight never exists) — forward X·Wᵀ and backward dX = dY·W alike (QLoRA).
// lora.cpp reads the base weight only through weight_op()/base_compute() (base_gemm and the bf16
// paths). f64 (x, W, A, B all f64; for a 4-bit base: x, A, B and bias f64) runs through the
// reference-grade f64 GEMM, for gradient checks (a 4-bit weight is dequantized to f64 for it).
#pragma once
#include <cstdint>
#include "core/tensor.h"

namespace pk {

struct Quant4State;   // cpu/quant.h

// The frozen base weight of a LoRA linear layer.
struct LoraBaseWeight {
  Tensor weight;            // (out, in); or (in, out) when `transposed` (GPT-2 Conv1D, fan_in_fan_out)
  bool transposed = false;
  // A packed 4-bit (NF4/FP4) weight of logical shape q4->shape = (out, in), used instead of
  // `weight` (which is then ignored) when set; `transposed` must be false (a quantized Conv1D
  // weight is stored transposed to (out, in) already). Not owned: the caller keeps it alive.
  const Quant4State* q4 = nullptr;
};

struct LoraForward {
  Tensor y;     // (..., out) in x's dtype
  Tensor xa;    // (T, r) f32 (f64 for f64 inputs): drop(x)·Aᵀ, kept for dB
  Tensor mask;  // (..., in) u8 dropout mask (undefined when p == 0)
};

// `bias` may be undefined. `scale` = lora_alpha / r (or / √r). `p` = dropout probability (0 = none),
// `seed` its Philox seed. The output dtype is x's; with a bf16/f16 x the base result (x·Wᵀ + b)
// is rounded to that dtype before the low-rank term is added, as PyTorch's eager PEFT does.
LoraForward lora_linear_forward(const Tensor& x, const LoraBaseWeight& w, const Tensor& bias, const Tensor& A,
                                const Tensor& B, double scale, double p, uint64_t seed);

struct LoraBackward { Tensor dx, dA, dB; };

// Gradients of the fused layer. `mask` is the forward's (undefined when p == 0). Only the
// requested gradients are computed; dX never touches dW.
LoraBackward lora_linear_backward(const Tensor& dy, const Tensor& x, const Tensor& mask, const LoraBaseWeight& w,
                                  const Tensor& A, const Tensor& B, const Tensor& xa, double scale, double p,
                                  bool need_dx, bool need_dA, bool need_dB);

}  // namespace pk
