// rope.h — rotary position embeddings in HF's "rotate_half" layout, with partial rotary.
//
// Tables (LlamaRotaryEmbedding.forward):
//   freqs = positions (B,T) ⊗ inv_freq (R/2)          -> (B,T,R/2), computed in f32 like HF
//   emb   = cat(freqs, freqs)                          -> (B,T,R)
//   cos   = cos(emb) * attention_scaling, sin likewise, cast to `dtype`
// (an f64 inv_freq computes everything in f64, for finite-difference checks).
//
// Apply (apply_rotary_pos_emb) to x (B,H,T,D), R <= D, R even, cos/sin (B or 1, T, R):
//   out[..., :R] = x_rot * cos + rotate_half(x_rot) * sin,  rotate_half(u) = cat(-u[R/2:], u[:R/2])
//   out[..., R:] = x[..., R:]                                 (partial rotary: Phi, GPT-NeoX, ...)
// The output dtype is promote(x, cos). For bf16/f16 each product and the sum are rounded to that
// dtype exactly where torch's eager graph rounds them, so the bits match transformers.
// x may be any strided view, e.g. (B,T,H,D).transpose(1,2); the output is contiguous (B,H,T,D).
// Backward applies the transposed map: dx_j = dy_j cos_j + s * dy_(j±R/2) sin_(j±R/2) (see .cpp).
#pragma once
#include "core/tensor.h"

namespace pk {

void rope_tables(const Tensor& positions, const Tensor& inv_freq, double attention_scaling, DType dtype,
                 Tensor* cos, Tensor* sin);
Tensor rope_forward(const Tensor& x, const Tensor& cos, const Tensor& sin);
Tensor rope_backward(const Tensor& dy, const Tensor& cos, const Tensor& sin);

}  // namespace pk
