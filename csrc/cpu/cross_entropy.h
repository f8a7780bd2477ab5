// cross_entropy.h — fused softmax cross-entropy over a vocabulary, forward and backward.
//
// Shapes: logits (..., V) in f32/bf16/f16/f64, any strides (e.g. logits[:, :-1] of a causal LM,
// a narrow view that is NOT made contiguous); labels (...) i64/i32, the same leading shape.
// Forward:
//   lse_i = logsumexp_v logits[i, v]                                 (saved, f32; f64 for f64)
//   loss  = sum over i with labels_i != ignore_index of (lse_i - logits[i, labels_i]) / normalizer
// normalizer <= 0 means "the number of non-ignored labels" (torch's reduction='mean'); pass 1 for
// reduction='sum' or a fixed token count for gradient accumulation. If every label is ignored and
// normalizer <= 0, the loss is 0/0 = NaN exactly like torch.nn.functional.cross_entropy; its
// gradient is then all zeros (torch agrees). lse of ignored rows is not computed and reads 0.
// The loss is 0-d, f32 (f64 for f64 logits), summed over rows in f64 in row order.
//
// The vocabulary is processed in chunks of kVocabChunk with an online (max, sum-exp) merge, so
// bf16 logits are only ever widened one chunk at a time: no full f32 copy of a (N, 150k) tensor.
// Work items are (row, chunk) pairs, so a single long row still uses every core; the chunk
// partials are merged in chunk order, so the result does not depend on the thread count.
//
// Backward: dlogits (..., V) in logits' dtype = (softmax(logits) - onehot(label)) * dloss / normalizer,
// zero rows for ignored labels. Labels outside [0, V) that are not ignore_index are errors
// (the message names the position), checked before any logit is read.
#pragma once
#include "core/tensor.h"

namespace pk {

constexpr int64_t kCrossEntropyIgnoreIndex = -100;

Tensor cross_entropy_forward(const Tensor& logits, const Tensor& labels, int64_t ignore_index, double normalizer,
                             Tensor* lse);
Tensor cross_entropy_backward(const Tensor& logits, const Tensor& labels, const Tensor& lse, const Tensor& dloss,
                              int64_t ignore_index, double normalizer);

}  // namespace pk
