// bind_elementwise.cpp — elementwise bindings: ops are named by string ('add', 'silu', ...) and
// mapped to the kernel enums here, in one table each.
#include <cmath>
#include "cpu/elementwise.h"
#include "registry.h"

namespace pka {
namespace {

using pk::Tensor;

pk::BinaryOp binary_op(const std::string& s) {
  static const char* n[] = {"add", "sub", "mul", "div", "pow", "maximum", "minimum"};
  for (int i = 0; i < 7; i++) if (s == n[i]) return (pk::BinaryOp)i;
  pk::fail("unknown binary op '", s, "'");
}
pk::UnaryOp unary_op(const std::string& s) {
  static const char* n[] = {"neg", "exp", "log", "sqrt", "rsqrt", "abs", "sigmoid", "tanh", "silu", "gelu", "gelu_tanh",
                            "relu", "sin", "cos", "square", "reciprocal", "sign", "log1p", "expm1"};
  for (int i = 0; i < 19; i++) if (s == n[i]) return (pk::UnaryOp)i;
  pk::fail("unknown unary op '", s, "'");
}
pk::CompareOp compare_op(const std::string& s) {
  static const char* n[] = {"eq", "ne", "lt", "le", "gt", "ge"};
  for (int i = 0; i < 6; i++) if (s == n[i]) return (pk::CompareOp)i;
  pk::fail("unknown comparison '", s, "'");
}

// binary(op, a, b)
Napi::Value binary(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::binary_forward(binary_op(str_arg(info, 0, "op")), tensor_arg(info, 1, "a"), tensor_arg(info, 2, "b")));
}
// binary_backward(op, a, b, grad, needA, needB) -> [da|null, db|null] at the broadcast shape
Napi::Value binary_backward(const Napi::CallbackInfo& info) {
  Tensor da, db;
  pk::binary_backward(binary_op(str_arg(info, 0, "op")), tensor_arg(info, 1, "a"), tensor_arg(info, 2, "b"), tensor_arg(info, 3, "grad"),
                      bool_arg(info, 4, "needA", true), bool_arg(info, 5, "needB", true), &da, &db);
  return wrap_list(info.Env(), {da, db});
}
// scalar(op, x, s, scalarFirst)
Napi::Value scalar(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::scalar_forward(binary_op(str_arg(info, 0, "op")), tensor_arg(info, 1, "x"), num_arg(info, 2, "scalar"),
                                             bool_arg(info, 3, "scalarFirst", false)));
}
Napi::Value scalar_backward(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::scalar_backward(binary_op(str_arg(info, 0, "op")), tensor_arg(info, 1, "x"), num_arg(info, 2, "scalar"),
                                              bool_arg(info, 3, "scalarFirst", false), tensor_arg(info, 4, "grad")));
}
Napi::Value unary(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::unary_forward(unary_op(str_arg(info, 0, "op")), tensor_arg(info, 1, "x")));
}
// unary_backward(op, x, y|null, grad)
Napi::Value unary_backward(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::unary_backward(unary_op(str_arg(info, 0, "op")), tensor_arg(info, 1, "x"), opt_tensor_arg(info, 2, "y"),
                                             tensor_arg(info, 3, "grad")));
}
Napi::Value compare(const Napi::CallbackInfo& info) {
  pk::CompareOp op = compare_op(str_arg(info, 0, "op"));
  if (info[2].IsNumber()) return wrap(info.Env(), pk::compare_scalar(op, tensor_arg(info, 1, "a"), num_arg(info, 2, "b")));
  return wrap(info.Env(), pk::compare(op, tensor_arg(info, 1, "a"), tensor_arg(info, 2, "b")));
}
Napi::Value where(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::where(tensor_arg(info, 0, "cond"), tensor_arg(info, 1, "a"), tensor_arg(info, 2, "b")));
}
Napi::Value masked_fill(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::masked_fill(tensor_arg(info, 0, "x"), tensor_arg(info, 1, "mask"), num_arg(info, 2, "value")));
}
Napi::Value clamp(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::clamp(tensor_arg(info, 0, "x"), opt_num_arg(info, 1, "min", -INFINITY), opt_num_arg(info, 2, "max", INFINITY)));
}
Napi::Value clamp_backward(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::clamp_backward(tensor_arg(info, 0, "x"), opt_num_arg(info, 1, "min", -INFINITY), opt_num_arg(info, 2, "max", INFINITY),
                                             tensor_arg(info, 3, "grad")));
}

PK_BIND("binary", binary);
PK_BIND("binary_backward", binary_backward);
PK_BIND("scalar", scalar);
PK_BIND("scalar_backward", scalar_backward);
PK_BIND("unary", unary);
PK_BIND("unary_backward", unary_backward);
PK_BIND("compare", compare);
PK_BIND("where", where);
PK_BIND("masked_fill", masked_fill);
PK_BIND("clamp", clamp);
PK_BIND("clamp_backward", clamp_backward);

}  // namespace
}  // namespace pka
