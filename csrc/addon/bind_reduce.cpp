// bind_reduce.cpp — reductions.
#include "cpu/reduce.h"
#include "registry.h"

namespace pka {
namespace {

using pk::Tensor;

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

PK_BIND("sum", sum);
PK_BIND("mean", mean);
PK_BIND("max_dim", max_dim);
PK_BIND("sum_to_shape", sum_to_shape);

}  // namespace
}  // namespace pka
