// random.h — counter-based random numbers (Philox-4x32-10), so results depend only on
// (seed, element index): identical across thread counts and reproducible for resume.
#pragma once
#include "core/tensor.h"

namespace pk {

Tensor rand_uniform(const Shape& shape, uint64_t seed, DType dt, double lo = 0.0, double hi = 1.0);
Tensor rand_normal(const Shape& shape, uint64_t seed, DType dt, double mean = 0.0, double stddev = 1.0);
// Dropout: mask[i] = u(i) >= p; y = x * mask / (1 - p). Returns y and the u8 mask (for backward).
Tensor dropout_forward(const Tensor& x, double p, uint64_t seed, Tensor* mask);
Tensor dropout_backward(const Tensor& dy, const Tensor& mask, double p);

// Low-level: 4 uniform 32-bit words for counter `ctr` under key `seed`.
void philox4x32(uint64_t seed, uint64_t ctr, uint32_t out[4]);

}  // namespace pk
