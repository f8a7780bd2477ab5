// bind_lora.cpp — the fused LoRA linear layer (csrc/cpu/lora.h).
//
//   lora_linear_forward(x, weight, weightTransposed, bias|null, A, B, scale, p, seed) -> [y, xa, mask|null]
//   lora_linear_backward(dy, x, mask|null, weight, weightTransposed, A, B, xa, scale, p, needX, needA, needB)
//     -> [dx|null, dA|null, dB|null]
// `weightTransposed`: the base weight is stored [in, out] (GPT-2 Conv1D / fan_in_fan_out).
#include "cpu/lora.h"
#include "registry.h"

namespace pka {
namespace {

using pk::Tensor;

Napi::Value lora_linear_forward(const Napi::CallbackInfo& info) {
  pk::LoraBaseWeight w;
  w.weight = tensor_arg(info, 1, "weight");
  w.transposed = bool_arg(info, 2, "weightTransposed", false);
  pk::LoraForward r = pk::lora_linear_forward(tensor_arg(info, 0, "x"), w, opt_tensor_arg(info, 3, "bias"),
                                              tensor_arg(info, 4, "loraA"), tensor_arg(info, 5, "loraB"),
                                              num_arg(info, 6, "scale"), num_arg(info, 7, "p"),
                                              (uint64_t)opt_int_arg(info, 8, "seed", 0));
  return wrap_list(info.Env(), {r.y, r.xa, r.mask});
}

Napi::Value lora_linear_backward(const Napi::CallbackInfo& info) {
  pk::LoraBaseWeight w;
  w.weight = tensor_arg(info, 3, "weight");
  w.transposed = bool_arg(info, 4, "weightTransposed", false);
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
