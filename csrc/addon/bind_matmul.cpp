// bind_matmul.cpp — matmul, linear and the linear weight gradient.
#include "cpu/matmul.h"
#include "registry.h"

namespace pka {
namespace {

using pk::Tensor;

// ---- matmul ----
Napi::Value matmul(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::matmul(tensor_arg(info, 0, "a"), tensor_arg(info, 1, "b"), bool_arg(info, 2, "transA", false),
                                     bool_arg(info, 3, "transB", false)));
}
Napi::Value linear(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::linear(tensor_arg(info, 0, "x"), tensor_arg(info, 1, "weight"), opt_tensor_arg(info, 2, "bias")));
}
Napi::Value linear_weight_grad(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::linear_weight_grad(tensor_arg(info, 0, "grad"), tensor_arg(info, 1, "x"), opt_tensor_arg(info, 2, "acc")));
}

PK_BIND("matmul", matmul);
PK_BIND("linear", linear);
PK_BIND("linear_weight_grad", linear_weight_grad);

}  // namespace
}  // namespace pka
