// bind_nn.cpp — the NN op family: softmax / log_softmax, RMSNorm, LayerNorm, RoPE, embedding,
// cross-entropy (csrc/cpu/{softmax,norm,rope,embedding,cross_entropy}.h).
//
//   softmax(x, dim) / log_softmax(x, dim) -> y
//   softmax_backward(y, dy, dim) / log_softmax_backward(y, dy, dim) -> dx
//   rms_norm(x, w|null, eps, unitOffset) -> [y, rstd]
//   rms_norm_backward(x, w|null, rstd, dy, unitOffset, needX, needW) -> [dx|null, dw|null]
//   layer_norm(x, w|null, b|null, eps) -> [y, mean, rstd]
//   layer_norm_backward(x, w|null, mean, rstd, dy, needX, needW, needB) -> [dx|null, dw|null, db|null]
//   rope_tables(positions, invFreq, scaling, dtype) -> [cos, sin]
//   rope(x, cos, sin) -> y;  rope_backward(dy, cos, sin) -> dx
//   embedding(weight, ids) -> y;  embedding_backward(dy, ids, V) -> dW
//   cross_entropy(logits, labels, ignoreIndex, normalizer) -> [loss, lse]
//   cross_entropy_backward(logits, labels, lse, dloss, ignoreIndex, normalizer) -> dlogits
// Shapes, dtypes and index ranges are validated by the kernels (pk::Error -> JS Error).
#include "cpu/cross_entropy.h"
#include "cpu/embedding.h"
#include "cpu/norm.h"
#include "cpu/rope.h"
#include "cpu/softmax.h"
#include "registry.h"

namespace pka {
namespace {

using pk::Tensor;

Napi::Value softmax(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::softmax_forward(tensor_arg(info, 0, "x"), int_arg(info, 1, "dim")));
}
Napi::Value softmax_backward(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::softmax_backward(tensor_arg(info, 0, "y"), tensor_arg(info, 1, "dy"), int_arg(info, 2, "dim")));
}
Napi::Value log_softmax(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::log_softmax_forward(tensor_arg(info, 0, "x"), int_arg(info, 1, "dim")));
}
Napi::Value log_softmax_backward(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::log_softmax_backward(tensor_arg(info, 0, "y"), tensor_arg(info, 1, "dy"), int_arg(info, 2, "dim")));
}

Napi::Value rms_norm(const Napi::CallbackInfo& info) {
  Tensor rstd;
  Tensor y = pk::rms_norm_forward(tensor_arg(info, 0, "x"), opt_tensor_arg(info, 1, "weight"), num_arg(info, 2, "eps"),
                                  bool_arg(info, 3, "unitOffset", false), &rstd);
  return wrap_list(info.Env(), {y, rstd});
}
Napi::Value rms_norm_backward(const Napi::CallbackInfo& info) {
  const bool nx = bool_arg(info, 5, "needX", true), nw = bool_arg(info, 6, "needW", true);
  Tensor dx, dw;
  pk::rms_norm_backward(tensor_arg(info, 0, "x"), opt_tensor_arg(info, 1, "weight"), tensor_arg(info, 2, "rstd"),
                        tensor_arg(info, 3, "dy"), bool_arg(info, 4, "unitOffset", false), nx ? &dx : nullptr,
                        nw ? &dw : nullptr);
  return wrap_list(info.Env(), {dx, dw});
}

Napi::Value layer_norm(const Napi::CallbackInfo& info) {
  Tensor mean, rstd;
  Tensor y = pk::layer_norm_forward(tensor_arg(info, 0, "x"), opt_tensor_arg(info, 1, "weight"), opt_tensor_arg(info, 2, "bias"),
                                    num_arg(info, 3, "eps"), &mean, &rstd);
  return wrap_list(info.Env(), {y, mean, rstd});
}
Napi::Value layer_norm_backward(const Napi::CallbackInfo& info) {
  const bool nx = bool_arg(info, 5, "needX", true), nw = bool_arg(info, 6, "needW", true), nb = bool_arg(info, 7, "needB", true);
  Tensor dx, dw, db;
  pk::layer_norm_backward(tensor_arg(info, 0, "x"), opt_tensor_arg(info, 1, "weight"), tensor_arg(info, 2, "mean"),
                          tensor_arg(info, 3, "rstd"), tensor_arg(info, 4, "dy"), nx ? &dx : nullptr, nw ? &dw : nullptr,
                          nb ? &db : nullptr);
  return wrap_list(info.Env(), {dx, dw, db});
}

Napi::Value rope_tables(const Napi::CallbackInfo& info) {
  Tensor c, s;
  pk::rope_tables(tensor_arg(info, 0, "positions"), tensor_arg(info, 1, "invFreq"), opt_num_arg(info, 2, "scaling", 1.0),
                  dtype_arg(info, 3, "dtype"), &c, &s);
  return wrap_list(info.Env(), {c, s});
}
Napi::Value rope(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::rope_forward(tensor_arg(info, 0, "x"), tensor_arg(info, 1, "cos"), tensor_arg(info, 2, "sin")));
}
Napi::Value rope_backward(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::rope_backward(tensor_arg(info, 0, "dy"), tensor_arg(info, 1, "cos"), tensor_arg(info, 2, "sin")));
}

Napi::Value embedding(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::embedding_forward(tensor_arg(info, 0, "weight"), tensor_arg(info, 1, "ids")));
}
Napi::Value embedding_backward(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::embedding_backward(tensor_arg(info, 0, "dy"), tensor_arg(info, 1, "ids"), int_arg(info, 2, "V")));
}

Napi::Value cross_entropy(const Napi::CallbackInfo& info) {
  Tensor lse;
  Tensor loss = pk::cross_entropy_forward(tensor_arg(info, 0, "logits"), tensor_arg(info, 1, "labels"),
                                          opt_int_arg(info, 2, "ignoreIndex", pk::kCrossEntropyIgnoreIndex),
                                          opt_num_arg(info, 3, "normalizer", 0.0), &lse);
  return wrap_list(info.Env(), {loss, lse});
}
Napi::Value cross_entropy_backward(const Napi::CallbackInfo& info) {
  return wrap(info.Env(), pk::cross_entropy_backward(tensor_arg(info, 0, "logits"), tensor_arg(info, 1, "labels"),
                                                     tensor_arg(info, 2, "lse"), tensor_arg(info, 3, "dloss"),
                                                     opt_int_arg(info, 4, "ignoreIndex", pk::kCrossEntropyIgnoreIndex),
                                                     opt_num_arg(info, 5, "normalizer", 0.0)));
}

PK_BIND("softmax", softmax);
PK_BIND("softmax_backward", softmax_backward);
PK_BIND("log_softmax", log_softmax);
PK_BIND("log_softmax_backward", log_softmax_backward);
PK_BIND("rms_norm", rms_norm);
PK_BIND("rms_norm_backward", rms_norm_backward);
PK_BIND("layer_norm", layer_norm);
PK_BIND("layer_norm_backward", layer_norm_backward);
PK_BIND("rope_tables", rope_tables);
PK_BIND("rope", rope);
PK_BIND("rope_backward", rope_backward);
PK_BIND("embedding", embedding);
PK_BIND("embedding_backward", embedding_backward);
PK_BIND("cross_entropy", cross_entropy);
PK_BIND("cross_entropy_backward", cross_entropy_backward);

}  // namespace
}  // namespace pka
