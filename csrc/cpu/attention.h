// attention.h — fused causal scaled-dot-product attention on the CPU (FlashAttention-2 style).
//
// Why fused: the naive softmax(Q·Kᵀ)·V materialises a T×S score matrix per head (4096² f32 =
// 64 MiB per head, and again for the backward). Here queries and keys are walked in blocks with an
// online softmax (running row max and sum), so scratch is O(block²) per thread, and the backward
// recomputes the probabilities blockwise from the saved log-sum-exp instead of storing them.
//
// Layout (HF transformers after the head split and transpose):
//   q (B,Hq,T,D)   k (B,Hkv,S,D)   v (B,Hkv,S,Dv)   out (B,Hq,T,Dv)   lse (B,Hq,T)
// GQA/MQA: Hq % Hkv == 0 and query head h reads kv head h / (Hq/Hkv).
// KV cache: the T queries are the LAST T of the S positions — query i sits at absolute position
// S - T + i — so T == S is plain training and T < S is decoding against a cache.
//
// Visibility of key j to query i (position p = S - T + i), all conditions together:
//   causal:     j <= p
//   key_mask:   key_mask[b, j] != 0   (optional u8 (B,S); 0 = padding, never attended)
//   window > 0: p - j < window        (HF Mistral/Qwen2 sliding window; requires causal)
//   segments:   segment_ids[b, p] == segment_ids[b, j]   (optional i32/i64 (B,S); sequence
//               packing: several examples share a row and never see each other. For T < S the
//               queries use the last T entries, like positions.)
// softcap > 0 (Gemma-2 attn_logit_softcapping): scores become softcap·tanh(scale·q·k / softcap)
// before masking; 0 = none.
// A query that sees no key (a left-padding row, say) gets out = 0, lse = -inf and zero gradients,
// never NaN.
// Segment ids may be any integers; key blocks whose range [min, max] of ids does not meet the
// query block's are skipped outright, so packed rows (contiguous, increasing ids) cost about
// Σ len² over their examples rather than T².
//
// dtypes: q, k, v share one float dtype. f32/f16 are computed in f32, f64 in f64 (for
// finite-difference checks). bf16 on CPUs with AVX512_BF16 (and cpu_isa() == Avx512) takes the
// bf16 path (attention_bf16.cpp, like PyTorch's CPU flash attention for bf16): products with bf16
// operands and f32 accumulation, softmax in f32, but the probabilities P (forward and backward)
// and score gradients dS rounded to bf16 before their products, so out/dq/dk/dv may differ from
// the f32 computation by up to 2^-8 of the sums of the magnitudes of their terms; elsewhere bf16
// is computed in f32. out/dq/dk/dv come back in q's dtype; lse is f32 (f64 for f64 inputs).
// Inputs may be any strided views (e.g. q from a transposed (B,T,H,D) tensor).
#pragma once
#include "core/tensor.h"

namespace pk {

// out = softmax(scale · q·kᵀ + mask) · v. Writes *lse (B,Hq,T) when lse != nullptr.
// segment_ids: undefined Tensor() = no segment masking.
Tensor attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_mask,
                         bool causal, int64_t window, double scale, Tensor* lse, double softcap = 0,
                         const Tensor& segment_ids = Tensor());

// Gradients of attention_forward given out and lse from the forward and dout = dL/dout.
// Any of dq/dk/dv may be nullptr (not wanted).
void attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_mask,
                        const Tensor& out, const Tensor& lse, const Tensor& dout,
                        bool causal, int64_t window, double scale, Tensor* dq, Tensor* dk, Tensor* dv,
                        double softcap = 0, const Tensor& segment_ids = Tensor());

// Shape, dtype and option checks shared by the CPU kernel and its CUDA twin (each checks devices
// itself: the CUDA side also accepts masks on the host). Returns the geometry of the call.
struct AttentionDims { int64_t B = 0, Hq = 0, Hkv = 0, T = 0, S = 0, D = 0, Dv = 0; };
AttentionDims check_attention_args(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                                   const Tensor& key_mask, bool causal, int64_t window, double scale, double softcap,
                                   const Tensor& segment_ids);

}  // namespace pk
