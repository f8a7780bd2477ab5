// norm.h — RMSNorm (Llama / Gemma flavours) and LayerNorm, forward and backward, over the last dim.
//
// Shapes: x (..., C); weight/bias (C); the per-row statistics mean/rstd have shape (...) and are
// kept in f32 (f64 for f64 inputs) so that backward never recomputes the reduction.
//
// RMSNorm follows HF's LlamaRMSNorm exactly, including where it rounds:
//   h = x.float() * rsqrt(mean(x.float()^2) + eps)
//   unit_offset = false (Llama, Mistral, Qwen...): y = w * h.to(x.dtype)     (h rounded first)
//   unit_offset = true  (Gemma):                   y = (h * (1 + w.float())).to(x.dtype)
// so a bf16 model gets the same bits as transformers, not just the same math. y's dtype is
// promote(x, w) for the Llama flavour (torch's `w * h` promotes) and x's dtype for Gemma.
// LayerNorm is torch.nn.LayerNorm: biased variance, y = (x - mean) * rstd * w + b, in x's dtype.
//
// Backward twins return dx (x's dtype) and the parameter gradients (w's dtype, summed over every
// row). The row sum is deterministic and independent of the thread count: rows are cut into a
// fixed number of blocks, each block sums its rows in order, blocks are added in order.
// Pass nullptr for any gradient that is not needed.
#pragma once
#include "core/tensor.h"

namespace pk {

Tensor rms_norm_forward(const Tensor& x, const Tensor& w, double eps, bool unit_offset, Tensor* rstd);
void rms_norm_backward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy, bool unit_offset,
                       Tensor* dx, Tensor* dw);

Tensor layer_norm_forward(const Tensor& x, const Tensor& w, const Tensor& b, double eps, Tensor* mean, Tensor* rstd);
void layer_norm_backward(const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd, const Tensor& dy,
                         Tensor* dx, Tensor* dw, Tensor* db);

}  // namespace pk
