// bind_swiglu.cpp — the fused gated activations (csrc/cpu/swiglu.h):
//   glu(act, gate, up) -> h                          act: 'silu' | 'gelu' | 'gelu_tanh'
//   glu_backward(act, gate, up, grad, needGate, needUp) -> [dgate|null, dup|null]
#include "cpu/swiglu.h"
#include "registry.h"

namespace pka {
namespace {

pk::GluAct glu_act(const std::string& s) {
  if (s == "silu") return pk::GluAct::Silu;
  if (s == "gelu") return pk::GluAct::Gelu;
  if (s == "gelu_tanh") return pk::GluAct::GeluTanh;
  pk::fail("unknown gated activation '", s, "' (expected silu, gelu or gelu_tanh)");
}

Napi::Value glu(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::glu_forward(glu_act(str_arg(info, 0, "act")), tensor_arg(info, 1, "gate"), tensor_arg(info, 2, "up")));
}
Napi::Value glu_backward(const Napi::CallbackInfo& info) {
  pk::Tensor dg, du;
  pk::glu_backward(glu_act(str_arg(info, 0, "act")), tensor_arg(info, 1, "gate"), tensor_arg(info, 2, "up"), tensor_arg(info, 3, "grad"),
                   bool_arg(info, 4, "needGate", true), bool_arg(info, 5, "needUp", true), &dg, &du);
  return wrap_list(info.Env(), {dg, du});
}

PK_BIND("glu", glu);
PK_BIND("glu_backward", glu_backward);

}  // namespace
}  // namespace pka
