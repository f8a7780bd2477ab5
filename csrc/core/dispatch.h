// dispatch.h — how CPU-op entry points reach the CUDA backend without depending on it.
//
// The CUDA backend (csrc/cuda, a separate static library linked into the addon only when
// PEFTKIT_WITH_CUDA) fills this table of function pointers from a static initialiser, exactly as
// it installs cuda_allocator(). CPU code never links against CUDA symbols, so peftkit_core and the
// native C++ tests build and link the same with or without CUDA, and no #ifdef is needed at the
// call sites. An entry point branches at its top:
//
//   Tensor binary_forward(BinaryOp op, const Tensor& a, const Tensor& b) {
//     if (any_cuda(a, b)) return cuda_fn(&CudaOps::binary_forward, "add")(op, a, b);
//     ...CPU path...
//
// Without the backend cuda_fn throws "<op>: tensors on 'cuda' need a peftkit build with the CUDA
// backend ...", a clear JS error, never a crash.
#pragma once
#include <vector>
#include "tensor.h"

namespace pk {

// Opaque declarations: the enums are defined in cpu/elementwise.h (same underlying type).
enum class BinaryOp : int;
enum class UnaryOp : int;
// norms / rope / embedding / index / random / optim / quant: opaque declarations of the CPU headers' types
enum class CompareOp : int;          // cpu/elementwise.h
enum class Quant4Type : int;         // cpu/quant.h
enum class GluAct : int;             // cpu/swiglu.h
struct AdamWHyper;                   // cpu/optim.h
struct Quant4State;                  // cpu/quant.h
struct Quant4Packed;
struct Quant8Packed;
struct NestedAbsmax;
// lora: opaque declarations of cpu/lora.h's types
struct LoraBaseWeight;
struct LoraForward;
struct LoraBackward;

// Counters of the activation-offload copies (csrc/cuda/offload.cu).
struct OffloadStats {
  int64_t pinned_bytes = 0, pinned_reserved_bytes = 0, pinned_peak_bytes = 0;   // page-locked host buffers
  int64_t pending_copies = 0;                                                     // issued, not yet retired
  int64_t d2h_bytes = 0, h2d_bytes = 0, d2h_copies = 0, h2d_copies = 0;
};

struct CudaOps {
  // ---- copies ----
  Tensor (*to_device)(const Tensor& t, Device d) = nullptr;          // whole-tensor host<->device copy
  void (*copy_into)(const Tensor& dst, const Tensor& src) = nullptr;  // any strides/dtypes; devices may differ
  Tensor (*clone)(const Tensor& t) = nullptr;                          // contiguous copy on t's device
  Tensor (*cast)(const Tensor& t, DType dt) = nullptr;                 // returns t when already dt
  Tensor (*zeros)(const Shape& shape, DType dt) = nullptr;
  Tensor (*full)(const Shape& shape, double value, DType dt) = nullptr;
  // ---- elementwise (cpu/elementwise.h twins) ----
  Tensor (*binary_forward)(BinaryOp op, const Tensor& a, const Tensor& b) = nullptr;
  void (*binary_backward)(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& dy, bool need_a, bool need_b,
                          Tensor* da, Tensor* db) = nullptr;
  Tensor (*scalar_forward)(BinaryOp op, const Tensor& x, double s, bool scalar_first) = nullptr;
  Tensor (*scalar_backward)(BinaryOp op, const Tensor& x, double s, bool scalar_first, const Tensor& dy) = nullptr;
  Tensor (*unary_forward)(UnaryOp op, const Tensor& x) = nullptr;
  Tensor (*unary_backward)(UnaryOp op, const Tensor& x, const Tensor& y, const Tensor& dy) = nullptr;
  Tensor (*clamp)(const Tensor& x, double lo, double hi) = nullptr;
  Tensor (*clamp_backward)(const Tensor& x, double lo, double hi, const Tensor& dy) = nullptr;
  // ---- reductions (cpu/reduce.h twins) ----
  Tensor (*sum)(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) = nullptr;
  Tensor (*mean)(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) = nullptr;
  Tensor (*sum_to_shape)(const Tensor& g, const Shape& shape) = nullptr;
  void (*max_dim)(const Tensor& x, int64_t dim, bool keepdim, Tensor* values, Tensor* indices) = nullptr;
  // ---- matmul (cpu/matmul.h twins; cuBLASLt) ----
  Tensor (*matmul)(const Tensor& a, const Tensor& b, bool ta, bool tb) = nullptr;
  Tensor (*linear)(const Tensor& x, const Tensor& w, const Tensor& bias) = nullptr;
  Tensor (*linear_weight_grad)(const Tensor& dy, const Tensor& x, const Tensor& acc) = nullptr;
  // ---- norms / rope / embedding / index / random / optim / quant (cpu/{norm,rope,embedding,index,random,
  //      optim,quant}.h twins; csrc/cuda/{norm,rope,embedding,index,random,optim,paged,quant}.cu, each file
  //      registers its own entries) ----
  Tensor (*rms_norm_forward)(const Tensor& x, const Tensor& w, double eps, bool unit_offset, Tensor* rstd) = nullptr;
  void (*rms_norm_backward)(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy, bool unit_offset,
                            Tensor* dx, Tensor* dw) = nullptr;
  // CUDA only (no CPU twin): sum = x + residual (rounded to x's dtype), returns rms_norm(sum).
  Tensor (*add_rms_norm_forward)(const Tensor& x, const Tensor& residual, const Tensor& w, double eps, bool unit_offset,
                                 Tensor* sum, Tensor* rstd) = nullptr;
  Tensor (*layer_norm_forward)(const Tensor& x, const Tensor& w, const Tensor& b, double eps, Tensor* mean,
                               Tensor* rstd) = nullptr;
  void (*layer_norm_backward)(const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd, const Tensor& dy,
                              Tensor* dx, Tensor* dw, Tensor* db) = nullptr;
  void (*rope_tables)(const Tensor& positions, const Tensor& inv_freq, double attention_scaling, DType dtype, Tensor* cos,
                      Tensor* sin) = nullptr;
  Tensor (*rope_forward)(const Tensor& x, const Tensor& cos, const Tensor& sin) = nullptr;
  Tensor (*rope_backward)(const Tensor& dy, const Tensor& cos, const Tensor& sin) = nullptr;
  Tensor (*embedding_forward)(const Tensor& weight, const Tensor& ids) = nullptr;
  Tensor (*embedding_backward)(const Tensor& dy, const Tensor& ids, int64_t V) = nullptr;
  Tensor (*gather)(const Tensor& x, int64_t dim, const Tensor& idx) = nullptr;
  Tensor (*scatter_add)(const Shape& shape, int64_t dim, const Tensor& idx, const Tensor& src) = nullptr;
  Tensor (*index_select)(const Tensor& x, int64_t dim, const Tensor& idx) = nullptr;
  Tensor (*index_add)(const Shape& shape, int64_t dim, const Tensor& idx, const Tensor& src) = nullptr;
  Tensor (*cat)(const std::vector<Tensor>& xs, int64_t dim) = nullptr;
  Tensor (*compare)(CompareOp op, const Tensor& a, const Tensor& b) = nullptr;
  Tensor (*where)(const Tensor& cond, const Tensor& a, const Tensor& b) = nullptr;
  Tensor (*masked_fill)(const Tensor& x, const Tensor& mask, double value) = nullptr;
  // rand/randn have no tensor argument to dispatch on: callers pick these explicitly for device tensors.
  Tensor (*rand_uniform)(const Shape& shape, uint64_t seed, DType dt, double lo, double hi) = nullptr;
  Tensor (*rand_normal)(const Shape& shape, uint64_t seed, DType dt, double mean, double stddev) = nullptr;
  Tensor (*dropout_forward)(const Tensor& x, double p, uint64_t seed, Tensor* mask) = nullptr;
  Tensor (*dropout_backward)(const Tensor& dy, const Tensor& mask, double p) = nullptr;
  void (*adamw_step)(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v, const AdamWHyper& h) = nullptr;
  // CUDA only: one fused launch over many tensors (same hyper-parameters), identical to adamw_step on each.
  void (*adamw_multi)(const std::vector<Tensor>& p, const std::vector<Tensor>& g, const std::vector<Tensor>& m,
                      const std::vector<Tensor>& v, const AdamWHyper& h) = nullptr;
  void (*adamw8bit_step)(const Tensor& p, const Tensor& g, const Tensor& q1, const Tensor& q2, const Tensor& absmax1,
                         const Tensor& absmax2, const AdamWHyper& h) = nullptr;
  void (*quantize_blockwise)(const Tensor& x, bool is_signed, Tensor* codes, Tensor* absmax) = nullptr;
  Tensor (*dequantize_blockwise)(const Tensor& codes, const Tensor& absmax, bool is_signed) = nullptr;
  double (*global_norm)(const std::vector<Tensor>& ts, double norm_type) = nullptr;
  void (*scale_inplace)(const Tensor& t, double s) = nullptr;
  // paged optimizer states: CUDA managed memory (csrc/cuda/paged.cu)
  Tensor (*empty_managed)(const Shape& shape, DType dt) = nullptr;           // zero-filled, device = cuda
  void (*prefetch_managed)(const Tensor& t, Device to) = nullptr;            // async on the backend stream
  bool (*is_managed)(const Storage* s) = nullptr;
  void (*managed_stats)(int64_t* live_bytes, int64_t* peak_bytes, int64_t* allocations) = nullptr;
  Quant4Packed (*quantize_4bit)(const Tensor& x, int64_t blocksize, Quant4Type type) = nullptr;
  Tensor (*dequantize_4bit)(const Quant4State& s, DType out) = nullptr;
  Tensor (*quant4_absmax_f32)(const Quant4State& s) = nullptr;
  Tensor (*linear_4bit)(const Tensor& x, const Quant4State& w, const Tensor& bias) = nullptr;
  Tensor (*linear_4bit_grad_input)(const Tensor& dy, const Quant4State& w) = nullptr;
  Quant8Packed (*quantize_blockwise_8bit)(const Tensor& x, const Tensor& code, int64_t blocksize) = nullptr;
  Tensor (*dequantize_blockwise_8bit)(const Tensor& q, const Tensor& absmax, const Tensor& code, int64_t blocksize) = nullptr;
  NestedAbsmax (*quantize_absmax_nested)(const Tensor& absmax, int64_t blocksize2) = nullptr;
  // ---- end norms / rope / embedding / index / random / optim / quant ----
  // ---- attention / cross-entropy / softmax (cpu/attention.h, cpu/cross_entropy.h, cpu/softmax.h twins;
  //      csrc/cuda/attention.cu, cross_entropy.cu, softmax.cu) ----
  Tensor (*attention_forward)(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_mask, bool causal,
                              int64_t window, double scale, Tensor* lse, double softcap,
                              const Tensor& segment_ids) = nullptr;
  void (*attention_backward)(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_mask,
                             const Tensor& out, const Tensor& lse, const Tensor& dout, bool causal, int64_t window,
                             double scale, Tensor* dq, Tensor* dk, Tensor* dv, double softcap,
                             const Tensor& segment_ids) = nullptr;
  Tensor (*cross_entropy_forward)(const Tensor& logits, const Tensor& labels, int64_t ignore_index, double normalizer,
                                  Tensor* lse) = nullptr;
  Tensor (*cross_entropy_backward)(const Tensor& logits, const Tensor& labels, const Tensor& lse, const Tensor& dloss,
                                   int64_t ignore_index, double normalizer) = nullptr;
  Tensor (*softmax_forward)(const Tensor& x, int64_t dim) = nullptr;
  Tensor (*softmax_backward)(const Tensor& y, const Tensor& dy, int64_t dim) = nullptr;
  Tensor (*log_softmax_forward)(const Tensor& x, int64_t dim) = nullptr;
  Tensor (*log_softmax_backward)(const Tensor& y, const Tensor& dy, int64_t dim) = nullptr;
  // ---- end attention / cross-entropy / softmax ----
  // ---- lora (cpu/lora.h twins; csrc/cuda/lora.cu): the fused LoRA linear, float or 4-bit base ----
  LoraForward (*lora_linear_forward)(const Tensor& x, const LoraBaseWeight& w, const Tensor& bias, const Tensor& A,
                                     const Tensor& B, double scale, double p, uint64_t seed) = nullptr;
  LoraBackward (*lora_linear_backward)(const Tensor& dy, const Tensor& x, const Tensor& mask, const LoraBaseWeight& w,
                                       const Tensor& A, const Tensor& B, const Tensor& xa, double scale, double p,
                                       bool need_dx, bool need_dA, bool need_dB) = nullptr;
  // ---- end lora ----
  // ---- gated activations (cpu/swiglu.h twins; csrc/cuda/swiglu.cu) ----
  Tensor (*glu_forward)(GluAct act, const Tensor& gate, const Tensor& up) = nullptr;
  void (*glu_backward)(GluAct act, const Tensor& gate, const Tensor& up, const Tensor& dh, bool need_gate, bool need_up,
                       Tensor* dgate, Tensor* dup) = nullptr;
  // ---- end gated activations ----
  // ---- activation offload (csrc/cuda/offload.cu; CUDA only): async copies on a copy stream ----
  Tensor (*offload_to_host)(const Tensor& t) = nullptr;                        // -> pinned host tensor
  Tensor (*prefetch_to_device)(const Tensor& host, bool defer_wait) = nullptr; // -> cuda tensor
  void (*wait_copy)(const Tensor& t) = nullptr;      // main stream waits for a deferred prefetch of t
  void (*offload_stats)(OffloadStats* out) = nullptr;
  // ---- end activation offload ----
};

// The one table (an inline function's static: a single instance across the linked libraries).
inline CudaOps& cuda_ops() {
  static CudaOps table;
  return table;
}

// True when any defined argument lives on the GPU.
inline bool any_cuda() { return false; }
template <class... R> inline bool any_cuda(const Tensor& t, const R&... rest) {
  return (t.defined() && t.device() == Device::CUDA) || any_cuda(rest...);
}

// The CUDA implementation of `member`, or a clear error naming `op` when this build has none.
template <class Fn> inline Fn cuda_fn(Fn CudaOps::*member, const char* op) {
  Fn f = cuda_ops().*member;
  if (!f) fail(op, ": tensors on 'cuda' need a peftkit build with the CUDA backend; this addon was built without CUDA "
               "(rebuild with PEFTKIT_CUDA=ON on a machine with the CUDA toolkit and cuBLASLt)");
  return f;
}

}  // namespace pk
