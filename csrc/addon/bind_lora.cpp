// bind_lora.cpp — the fused LoRA linear layer (csrc/cpu/lora.h).
//
//   lora_linear_forward(x, weight, weightTransposed, bias|null, A, B, scale, p, seed) -> [y, xa, mask|null]
//   lora_linear_backward(dy, x, mask|null, weight, weightTransposed, A, B, xa, scale, p, needX, needA, needB)
//     -> [dx|null, dA|null, dB|null]
// `weight` is a float tensor, or a 4-bit quant state object (lib/quant/nf4.ts
// QuantizedTensor.nativeState(), parsed by bind_quant.cpp's quant4_state_arg) for a QLoRA base:
// the base products then go through the fused 4-bit GEMM.
// `weightTransposed`: the base weight is stored [in, out] (GPT-2 Conv1D / fan_in_fan_out); must be
// false for a 4-bit weight (always [out, in]).
#include "cpu/lora.h"
#include "cpu/quant.h"
#include "js_tensor.h"
#include "registry.h"

namespace pka {

// bind_quant.cpp
pk::Quant4State quant4_state_arg(const Napi::Value& v, const char* name);

namespace {

using pk::Tensor;

// The base weight argument: a tensor, or a 4-bit state (kept in `q4`, which must outlive `w`).
void base_weight_arg(const Napi::CallbackInfo& info, size_t i, size_t ti, const char* op, pk::LoraBaseWeight* w,
                     pk::Quant4State* q4) {
  Napi::Value v = info.Length() > i ? info[i] : info.Env().Undefined();
  if (v.IsObject() && !v.IsArray() && !JsTensor::is(info.Env(), v)) {
    *q4 = quant4_state_arg(v, op);
    w->q4 = q4;
  } else {
    w->weight = tensor_arg(info, i, "weight");
  }
  w->transposed = bool_arg(info, ti, "weightTransposed", false);
}

Napi::Value lora_linear_forward(const Napi::CallbackInfo& info) {
  pk::LoraBaseWeight w;
  pk::Quant4State q4;
  base_weight_arg(info, 1, 2, "lora_linear", &w, &q4);
  pk::LoraForward r = pk::lora_linear_forward(tensor_arg(info, 0, "x"), w, opt_tensor_arg(info, 3, "bias"),
                                              tensor_arg(info, 4, "loraA"), tensor_arg(info, 5, "loraB"),
                                              num_arg(info, 6, "scale"), num_arg(info, 7, "p"),
                                              (uint64_t)opt_int_arg(info, 8, "seed", 0));
  return wrap_list(info.Env(), {r.y, r.xa, r.mask});
}

Napi::Value lora_linear_backward(const Napi::CallbackInfo& info) {
  pk::LoraBaseWeight w;
  pk::Quant4State q4;
  base_weight_arg(info, 3, 4, "lora_linear_backward", &w, &q4);
  pk::LoraBackward r = pk::lora_linear_backward(
      tensor_arg(info, 0, "grad"), tensor_arg(info, 1, "x"), opt_tensor_arg(info, 2, "mask"), w,
      tensor_arg(info, 5, "loraA"), tensor_arg(info, 6, "loraB"), tensor_arg(info, 7, "xa"), num_arg(info, 8, "scale"),
      num_arg(info, 9, "p"), bool_arg(info, 10, "needX", true), bool_arg(info, 11, "needA", true),
      bool_arg(info, 12, "needB", true));
  return wrap_list(info.Env(), {r.dx, r.dA, r.dB});
}

PK_BIND("lora_linear_forward", lora_linear_forward);
PK_BIND("lora_linear_backward", lora_linear_backward);

}  // namespace
}  // namespace pka
