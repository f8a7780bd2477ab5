// bind_index.cpp — gather/scatter/index_select/index_add/cat.
#include "cpu/index.h"
#include "registry.h"

namespace pka {
namespace {

using pk::Tensor;

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

PK_BIND("gather", gather);
PK_BIND("scatter_add", scatter_add);
PK_BIND("index_select", index_select);
PK_BIND("index_add", index_add);
PK_BIND("cat", cat);

}  // namespace
}  // namespace pka
