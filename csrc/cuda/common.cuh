// common.cuh — shared device-side machinery of the CUDA backend: the call-checking macro,
// dtype <-> compute-type conversions, strided offset calculators with fast integer division,
// and the dtype dispatch used by every launcher. Included only by .cu files.
#pragma once
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>
#include "core/tensor.h"
#include "layout.h"
#include "runtime.h"

namespace pk {
namespace cuda {

// ---- error checking ----
[[noreturn]] void throw_cuda_error(cudaError_t e, const char* call, const char* file, int line);

// PK_CUDA_CHECK(cudaMemcpyAsync(...)) — throws pk::Error naming the call, the CUDA error and file:line.
#define PK_CUDA_CHECK(call)                                                                    \
  do {                                                                                         \
    cudaError_t pk_cuda_err_ = (call);                                                         \
    if (pk_cuda_err_ != cudaSuccess) ::pk::cuda::throw_cuda_error(pk_cuda_err_, #call, __FILE__, __LINE__); \
  } while (0)
// After a <<<...>>> launch: catches bad configurations at once (execution errors surface at the next sync).
#define PK_CUDA_CHECK_LAUNCH(name) PK_CUDA_CHECK(cudaPeekAtLastError())

inline cudaStream_t cur_stream() { return static_cast<cudaStream_t>(stream()); }
int sm_count();          // multiprocessors of the current device (after ensure_available)

// ---- scalar conversions (match the CPU: RNE narrowing; f64 -> bf16/f16 goes through f32) ----
__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(double v) { return (float)v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(int32_t v) { return (float)v; }
__device__ __forceinline__ float to_f32(int64_t v) { return (float)(double)v; }
__device__ __forceinline__ float to_f32(uint8_t v) { return (float)v; }

__device__ __forceinline__ double to_f64(double v) { return v; }
__device__ __forceinline__ double to_f64(float v) { return (double)v; }
__device__ __forceinline__ double to_f64(__nv_bfloat16 v) { return (double)__bfloat162float(v); }
__device__ __forceinline__ double to_f64(__half v) { return (double)__half2float(v); }
__device__ __forceinline__ double to_f64(int32_t v) { return (double)v; }
__device__ __forceinline__ double to_f64(int64_t v) { return (double)v; }
__device__ __forceinline__ double to_f64(uint8_t v) { return (double)v; }

template <class D> __device__ __forceinline__ D from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ double from_f32<double>(float v) { return (double)v; }
// NaN keeps its sign and payload bits exactly as the CPU's f32_to_bf16 / f32_to_f16 do.
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
  uint32_t u = __float_as_uint(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) return __ushort_as_bfloat16((unsigned short)((u >> 16) | 0x40));
  return __float2bfloat16_rn(v);
}
template <> __device__ __forceinline__ __half from_f32<__half>(float v) {
  uint32_t u = __float_as_uint(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) return __ushort_as_half((unsigned short)(((u >> 16) & 0x8000u) | 0x7e00u));
  return __float2half_rn(v);
}
template <> __device__ __forceinline__ int32_t from_f32<int32_t>(float v) { return (int32_t)v; }
template <> __device__ __forceinline__ int64_t from_f32<int64_t>(float v) { return (int64_t)v; }
template <> __device__ __forceinline__ uint8_t from_f32<uint8_t>(float v) { return (uint8_t)v; }

template <class D> __device__ __forceinline__ D from_f64(double v);
template <> __device__ __forceinline__ double from_f64<double>(double v) { return v; }
template <> __device__ __forceinline__ float from_f64<float>(double v) { return (float)v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f64<__nv_bfloat16>(double v) { return from_f32<__nv_bfloat16>((float)v); }
template <> __device__ __forceinline__ __half from_f64<__half>(double v) { return from_f32<__half>((float)v); }
template <> __device__ __forceinline__ int32_t from_f64<int32_t>(double v) { return (int32_t)v; }
template <> __device__ __forceinline__ int64_t from_f64<int64_t>(double v) { return (int64_t)v; }
template <> __device__ __forceinline__ uint8_t from_f64<uint8_t>(double v) { return (uint8_t)(int32_t)v; }

// Compute type of a storage type: double for f64, float otherwise.
template <class S> struct Compute { using type = float; };
template <> struct Compute<double> { using type = double; };

template <class C> struct Conv;
template <> struct Conv<float> {
  template <class S> static __device__ __forceinline__ float load(S v) { return to_f32(v); }
  template <class S> static __device__ __forceinline__ S store(float v) { return from_f32<S>(v); }
};
template <> struct Conv<double> {
  template <class S> static __device__ __forceinline__ double load(S v) { return to_f64(v); }
  template <class S> static __device__ __forceinline__ S store(double v) { return from_f64<S>(v); }
};

// Offsets of NOPS operands for a linear index over a coalesced layout (outer dim needs no division).
template <int NOPS> struct OffsetCalc32 {
  int ndim;
  FastDiv div[kMaxDims];
  uint32_t stride[kMaxDims][NOPS];
  __device__ __forceinline__ void get(uint32_t i, uint32_t (&off)[NOPS]) const {
#pragma unroll
    for (int k = 0; k < NOPS; k++) off[k] = 0;
#pragma unroll
    for (int d = kMaxDims - 1; d >= 1; d--) {
      if (d >= ndim) continue;
      uint32_t q = div[d].div(i), r = i - q * div[d].d;
#pragma unroll
      for (int k = 0; k < NOPS; k++) off[k] += r * stride[d][k];
      i = q;
    }
#pragma unroll
    for (int k = 0; k < NOPS; k++) off[k] += i * stride[0][k];
  }
};

template <int NOPS> struct OffsetCalc64 {
  int ndim;
  int64_t size[kMaxDims];
  int64_t stride[kMaxDims][NOPS];
  __device__ __forceinline__ void get(int64_t i, int64_t (&off)[NOPS]) const {
#pragma unroll
    for (int k = 0; k < NOPS; k++) off[k] = 0;
#pragma unroll
    for (int d = kMaxDims - 1; d >= 1; d--) {
      if (d >= ndim) continue;
      int64_t q = i / size[d], r = i - q * size[d];
#pragma unroll
      for (int k = 0; k < NOPS; k++) off[k] += r * stride[d][k];
      i = q;
    }
#pragma unroll
    for (int k = 0; k < NOPS; k++) off[k] += i * stride[0][k];
  }
};

// Build calculators from a Layout (operand order = L.strides order). An empty layout (0-d) gets one
// dim of size 1.
template <int NOPS> inline OffsetCalc32<NOPS> make_calc32(const Layout& L) {
  OffsetCalc32<NOPS> c;
  c.ndim = L.ndim() > 0 ? L.ndim() : 1;
  for (int d = 0; d < kMaxDims; d++) {
    c.div[d] = FastDiv(d < L.ndim() ? (uint32_t)L.sizes[d] : 1u);
    for (int k = 0; k < NOPS; k++) c.stride[d][k] = d < L.ndim() ? (uint32_t)L.strides[k][d] : 0u;
  }
  return c;
}
template <int NOPS> inline OffsetCalc64<NOPS> make_calc64(const Layout& L) {
  OffsetCalc64<NOPS> c;
  c.ndim = L.ndim() > 0 ? L.ndim() : 1;
  for (int d = 0; d < kMaxDims; d++) {
    c.size[d] = d < L.ndim() ? L.sizes[d] : 1;
    for (int k = 0; k < NOPS; k++) c.stride[d][k] = d < L.ndim() ? L.strides[k][d] : 0;
  }
  return c;
}

// ---- dtype dispatch: f(S{}) with S the storage type of a float dtype ----
template <class F> inline void dispatch_float(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::F32: f(float{}); return;
    case DType::F64: f(double{}); return;
    case DType::BF16: f(__nv_bfloat16{}); return;
    case DType::F16: f(__half{}); return;
    default: fail(op, ": cuda kernels need a float dtype, got ", dtype_name(dt));
  }
}
template <class F> inline void dispatch_any(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::F32: f(float{}); return;
    case DType::F64: f(double{}); return;
    case DType::BF16: f(__nv_bfloat16{}); return;
    case DType::F16: f(__half{}); return;
    case DType::I32: f(int32_t{}); return;
    case DType::I64: f(int64_t{}); return;
    case DType::U8: f(uint8_t{}); return;
    default: fail(op, ": dtype ", dtype_name(dt), " is not supported by this cuda kernel");
  }
}

// Index type and offset calculator for a kernel: 32-bit with fast division when the layout is small.
template <bool Small> struct IdxT { using type = int64_t; };
template <> struct IdxT<true> { using type = uint32_t; };
template <bool Small, int N> struct CalcSel { using type = OffsetCalc64<N>; };
template <int N> struct CalcSel<true, N> { using type = OffsetCalc32<N>; };
template <bool Small, int N> using CalcT = typename CalcSel<Small, N>::type;
template <bool Small, int N> inline CalcT<Small, N> make_calc(const Layout& L);
template <> inline CalcT<true, 1> make_calc<true, 1>(const Layout& L) { return make_calc32<1>(L); }
template <> inline CalcT<true, 2> make_calc<true, 2>(const Layout& L) { return make_calc32<2>(L); }
template <> inline CalcT<true, 3> make_calc<true, 3>(const Layout& L) { return make_calc32<3>(L); }
template <> inline CalcT<true, 4> make_calc<true, 4>(const Layout& L) { return make_calc32<4>(L); }
template <> inline CalcT<false, 1> make_calc<false, 1>(const Layout& L) { return make_calc64<1>(L); }
template <> inline CalcT<false, 2> make_calc<false, 2>(const Layout& L) { return make_calc64<2>(L); }
template <> inline CalcT<false, 3> make_calc<false, 3>(const Layout& L) { return make_calc64<3>(L); }
template <> inline CalcT<false, 4> make_calc<false, 4>(const Layout& L) { return make_calc64<4>(L); }

// Global thread id and grid stride in the index type of a kernel.
template <class I> __device__ __forceinline__ I global_tid() { return (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; }
template <class I> __device__ __forceinline__ I grid_stride() { return (I)gridDim.x * (I)blockDim.x; }

constexpr int kBlock = 256;

// Launch a 1-d grid-stride kernel over `work` items on the backend stream (no-op for no work).
template <class... KArgs, class... Args>
inline void launch(void (*kernel)(KArgs...), int64_t work, Args&&... args) {
  if (work <= 0) return;
  unsigned grid = grid_for(work, kBlock, sm_count());
  kernel<<<grid, kBlock, 0, cur_stream()>>>(static_cast<KArgs>(args)...);
  PK_CUDA_CHECK_LAUNCH();
}

// Pointer alignment in bytes (largest power of two dividing the address, capped).
inline unsigned ptr_alignment(const void* p, unsigned cap = 256) {
  uintptr_t a = (uintptr_t)p;
  unsigned al = 1;
  while (al < cap && (a % (al * 2)) == 0) al *= 2;
  return al;
}

// Validation shared by the ops.
void check_cuda(const Tensor& t, const char* op, const char* arg);
// A 0-d CPU tensor becomes a 0-d cuda tensor (scalar operands, as PyTorch allows); others must be on cuda.
Tensor on_cuda(const Tensor& t, const char* op, const char* arg);

}  // namespace cuda
}  // namespace pk
