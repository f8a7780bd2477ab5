// optim.h — fused optimizer kernels: AdamW (32-bit states), 8-bit blockwise AdamW (bitsandbytes'
// dynamic quantization of both moments), global gradient norms and in-place scaling for clipping.
//
// AdamW is exactly torch.optim.AdamW (single-tensor path), evaluated in the compute type (f32, or
// f64 for f64 parameters; bf16/f16 parameters are widened to f32 and rounded back):
//     p ← p·(1 − lr·wd)                        decoupled weight decay
//     m ← lerp(m, g, 1 − β1)                    = m + (1 − β1)(g − m)
//     v ← β2·v + (1 − β2)·g²
//     p ← p − (lr / (1 − β1ᵗ)) · m / (√v / √(1 − β2ᵗ) + ε)     eps added after the sqrt
//
// 8-bit states (bitsandbytes optimizer_update_8bit_blockwise): blocks of 256 elements, each block
// stores u8 codes into a 256-entry dynamic map (signed map for m, unsigned for v) and an f32
// absmax. Per step a block is dequantized (code·absmax), updated in f32 as above, the parameter is
// updated from the unquantized new moments, and the moments are requantized against the block's
// new absmax to the nearest code (m keeps its sign, as in bitsandbytes). Weight decay keeps torch's
// order (before the update) so 8-bit and 32-bit differ only by quantization.
//
// Every kernel is multithreaded and its result does not depend on the thread count.
#pragma once
#include <vector>
#include "core/tensor.h"

namespace pk {

struct AdamWHyper {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.01;
  int64_t step = 1;   // 1-based step count *after* this update (torch's state['step'])
};

constexpr int64_t kQuantBlock = 256;

// In place on p, m, v. p: f32/bf16/f16/f64 contiguous; g: p's dtype or f32; m, v: f32 (f64 for f64 p).
void adamw_step(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v, const AdamWHyper& h);

// In place on p, q1, q2, absmax1, absmax2. p: f32/bf16/f16; g: p's dtype or f32; q1, q2: u8 with
// p's element count; absmax1, absmax2: f32 with ceil(n/256) elements.
void adamw8bit_step(const Tensor& p, const Tensor& g, const Tensor& q1, const Tensor& q2, const Tensor& absmax1,
                    const Tensor& absmax2, const AdamWHyper& h);

// bitsandbytes create_dynamic_map(signed, max_exponent_bits=7, total_bits=8): 256 ascending f32 values.
const float* dynamic_map(bool is_signed);

// Blockwise quantization with the dynamic map: codes (u8, x's numel) and absmax (f32, ceil(n/256)).
void quantize_blockwise(const Tensor& x, bool is_signed, Tensor* codes, Tensor* absmax);
Tensor dequantize_blockwise(const Tensor& codes, const Tensor& absmax, bool is_signed);

// ‖concat(ts)‖_p for p > 0 or p = inf, accumulated in f64 over fixed 64Ki-element chunks summed
// in order (deterministic for any thread count). NaN/Inf elements give a NaN/Inf result.
double global_norm(const std::vector<Tensor>& ts, double norm_type);

// t ← t·s in place (contiguous float tensor).
void scale_inplace(const Tensor& t, double s);

}  // namespace pk
