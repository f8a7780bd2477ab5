// matmul.h — batched matrix products over the packed GEMM.
//
//   matmul(a, b, ta, tb): a (...,M,K) [or (...,K,M) with ta], b (...,K,N) [or (...,N,K) with tb]
//   -> (...,M,N); batch dims broadcast. Transposes are stride swaps: no copies.
//   linear(x (...,in), w (out,in), bias (out)?) = x·wᵀ + bias -> (...,out)
// Backward is composed from these (dA = dY·Bᵀ, dB = Aᵀ·dY) by the autograd layer.
#pragma once
#include "core/tensor.h"

namespace pk {

Tensor matmul(const Tensor& a, const Tensor& b, bool ta = false, bool tb = false);
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias);
// dW for linear: dy (...,out), x (...,in) -> (out,in) = Σ dyᵀ·x over all leading dims (f32 result
// unless both are f64), accumulated into `acc` when defined (acc += ...).
Tensor linear_weight_grad(const Tensor& dy, const Tensor& x, const Tensor& acc);

}  // namespace pk
