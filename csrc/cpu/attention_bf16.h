// attention_bf16.h — the bf16 path of the CPU attention (attention_bf16.cpp), called by
// attention.cpp for bf16 inputs when the CPU has AVX512_BF16. Same block algorithm, masks and
// results contract as the f32 path (attention.h); the block products take bf16 operands with f32
// accumulation (vdpbf16ps), like PyTorch's CPU flash attention for reduced-precision inputs, so
// P and dS are rounded to bf16 before their products. See attention_bf16.cpp for the precision.
#pragma once
#include "core/tensor.h"
#include "cpu/attention_common.h"

namespace pk {
namespace attn {

// True when inputs of dtype dt take the bf16 path now: dt is bf16, the build has the vector
// kernels, cpu_isa() == Avx512 (so PEFTKIT_ISA / set_isa_cap can turn it off) and the CPU has
// AVX512_BF16. Checked per call.
bool bf16_path_available(DType dt);

// out: (B,Hq,T,Dv) bf16 contiguous, lse: (B,Hq,T) f32 contiguous, both allocated by the caller.
// q, k, v: bf16 (any strides), already validated (g from the caller's checks).
void forward_bf16(const Geo& g, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_mask,
                  const Tensor& segment_ids, double scale, double softcap, const Tensor& out, const Tensor& lse);

// Writes the wanted gradients (non-null dq / dk / dv) as new contiguous bf16 tensors of q's, k's,
// v's shapes. out, dout: any float dtype and strides (bf16 with a unit-stride last dim is read in
// place; a dout of another dtype is rounded to bf16 for the products, D = rowsum(dO∘O) is taken
// in f32 from the values given); lse: any float dtype.
void backward_bf16(const Geo& g, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_mask,
                   const Tensor& segment_ids, const Tensor& out, const Tensor& lse, const Tensor& dout, double scale,
                   double softcap, Tensor* dq, Tensor* dk, Tensor* dv);

}  // namespace attn
}  // namespace pk
