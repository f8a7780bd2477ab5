// swiglu.h — fused gated activations of gated MLPs (Llama/Mistral/Qwen SwiGLU, Gemma GeGLU):
//
//   h = act(gate) · up          act = silu (SwiGLU), gelu (erf) or gelu_tanh (GeGLU)
//
// in one pass over memory, forward and backward, instead of act(gate), mul, and their two
// backward twins (four passes, plus an act(gate) tensor saved for backward). Results equal the
// unfused composition up to float rounding: in bf16/f16 the intermediates act(gate) and dh·up are
// rounded to the gate's dtype exactly where the composition would have stored them.
//
// gate and up have the same shape (any strides: typically the two halves of a fused gate_up
// projection); h has their promoted dtype, dgate the gate's dtype and dup the up's.
#pragma once
#include "core/tensor.h"

namespace pk {

enum class GluAct : int { Silu = 0, Gelu = 1, GeluTanh = 2 };

// The op's name in messages: "swiglu", "geglu" or "geglu_tanh" (shared by the CUDA twins).
const char* glu_name(GluAct act);

Tensor glu_forward(GluAct act, const Tensor& gate, const Tensor& up);
void glu_backward(GluAct act, const Tensor& gate, const Tensor& up, const Tensor& dh, bool need_gate, bool need_up,
                  Tensor* dgate, Tensor* dup);

}  // namespace pk
