// bind_math.cpp — elementwise, reduction, indexing and matmul bindings. Ops are named by
// string ("add", "silu", ...) and mapped to the kernel enums here, in one table each.
#include <cmath>
#include "cpu/elementwise.h"
#include "cpu/index.h"
#include "cpu/matmul.h"
#include "cpu/reduce.h"
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

// ---- reductions ----
Napi::Value sum(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::sum(tensor_arg(info, 0, "x"), ints_arg(info, 1, "dims"), bool_arg(info, 2, "keepdim", false)));
}
Napi::Value mean(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::mean(tensor_arg(info, 0, "x"), ints_arg(info, 1, "dims"), bool_arg(info, 2, "keepdim", false)));
}
Napi::Value max_dim(const Napi::CallbackInfo& info) {
  Tensor v, i;
  pk::max_dim(tensor_arg(info, 0, "x"), int_arg(info, 1, "dim"), bool_arg(info, 2, "keepdim", false), &v, &i);
  return wrap_list(info.Env(), {v, i});
}
Napi::Value sum_to_shape(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::sum_to_shape(tensor_arg(info, 0, "grad"), ints_arg(info, 1, "shape")));
}

// ---- indexing ----
Napi::Value gather(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::gather(tensor_arg(info, 0, "x"), int_arg(info, 1, "dim"), tensor_arg(info, 2, "index")));
}
Napi::Value scatter_add(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::scatter_add(ints_arg(info, 0, "shape"), int_arg(info, 1, "dim"), tensor_arg(info, 2, "index"), tensor_arg(info, 3, "src")));
}
Napi::Value index_select(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::index_select(tensor_arg(info, 0, "x"), int_arg(info, 1, "dim"), tensor_arg(info, 2, "index")));
}
Napi::Value index_add(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::index_add(ints_arg(info, 0, "shape"), int_arg(info, 1, "dim"), tensor_arg(info, 2, "index"), tensor_arg(info, 3, "src")));
}
Napi::Value cat(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::cat(tensors_arg(info, 0, "tensors"), int_arg(info, 1, "dim")));
}

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
PK_BIND("sum", sum);
PK_BIND("mean", mean);
PK_BIND("max_dim", max_dim);
PK_BIND("sum_to_shape", sum_to_shape);
PK_BIND("gather", gather);
PK_BIND("scatter_add", scatter_add);
PK_BIND("index_select", index_select);
PK_BIND("index_add", index_add);
PK_BIND("cat", cat);
PK_BIND("matmul", matmul);
PK_BIND("linear", linear);
PK_BIND("linear_weight_grad", linear_weight_grad);

}  // namespace
}  // namespace pka
