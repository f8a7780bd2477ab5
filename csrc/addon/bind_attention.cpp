// bind_attention.cpp — fused scaled-dot-product attention (csrc/cpu/attention.h).
//
//   attention_forward(q, k, v, keyMask|null, causal, window, scale, softcap?, segmentIds?) -> [out, lse]
//   attention_backward(q, k, v, keyMask|null, out, lse, dout, causal, window, scale, softcap,
//                      needQ, needK, needV, segmentIds?) -> [dq|null, dk|null, dv|null]
// softcap: 0/undefined = none (Gemma-2 logit soft-capping otherwise).
// segmentIds: null/undefined = none; else i32/i64 (B,S) — sequence packing (attention.h).
// Shapes, dtypes, GQA head counts, the mask and window are validated by the kernel.
#include "cpu/attention.h"
#include "registry.h"

namespace pka {
namespace {

using pk::Tensor;

Napi::Value attention_forward(const Napi::CallbackInfo& info) {
  Tensor lse;
  Tensor out = pk::attention_forward(tensor_arg(info, 0, "q"), tensor_arg(info, 1, "k"), tensor_arg(info, 2, "v"),
                                     opt_tensor_arg(info, 3, "keyMask"), bool_arg(info, 4, "causal", true),
                                     opt_int_arg(info, 5, "window", 0), num_arg(info, 6, "scale"), &lse,
                                     opt_num_arg(info, 7, "softcap", 0), opt_tensor_arg(info, 8, "segmentIds"));
  return wrap_list(info.Env(), {out, lse});
}

Napi::Value attention_backward(const Napi::CallbackInfo& info) {
  const bool nq = bool_arg(info, 11, "needQ", true), nk = bool_arg(info, 12, "needK", true),
             nv = bool_arg(info, 13, "needV", true);
  Tensor dq, dk, dv;
  pk::attention_backward(tensor_arg(info, 0, "q"), tensor_arg(info, 1, "k"), tensor_arg(info, 2, "v"),
                         opt_tensor_arg(info, 3, "keyMask"), tensor_arg(info, 4, "out"), tensor_arg(info, 5, "lse"),
                         tensor_arg(info, 6, "dout"), bool_arg(info, 7, "causal", true), opt_int_arg(info, 8, "window", 0),
                         num_arg(info, 9, "scale"), nq ? &dq : nullptr, nk ? &dk : nullptr, nv ? &dv : nullptr,
                         opt_num_arg(info, 10, "softcap", 0), opt_tensor_arg(info, 14, "segmentIds"));
  return wrap_list(info.Env(), {dq, dk, dv});
}

PK_BIND("attention_forward", attention_forward);
PK_BIND("attention_backward", attention_backward);

}  // namespace
}  // namespace pka
