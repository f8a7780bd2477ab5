// pk_sim.h — the CUDA simulator's device model: what a .cu file of csrc/cuda sees in place of the
// CUDA headers when the simulator compiles it as plain C++ (-DPEFTKIT_CUDA_SIM=ON; dev/CI only).
//
// Why: the CI machine has nvcc but no GPU, so the kernels in csrc/cuda could only be compiled,
// never run, and the CUDA emulator (csrc/cuda_emu) swaps them for the CPU ops. The simulator runs
// the *kernels themselves*: every CUDA thread of a block is a fiber (its own small stack) on the
// calling OS thread, switched cooperatively at __syncthreads, __syncwarp, shuffles, votes and the
// tensor-core instructions, which are emulated from their PTX ISA definitions. So index math,
// bounds, shared-memory dataflow, warp reductions, barrier placement (a barrier not every thread
// reaches is a reported deadlock, not a hang), launch configurations and cuBLASLt call sequences
// are exercised on the CPU against the CPU ops by the ordinary GPU test suite.
//
// What it cannot tell: timing, real concurrency (fibers of a block run one at a time, so a missing
// __syncthreads between a shared-memory write and another thread's read is *not* caught unless the
// reader happens to run first), memory-model subtleties, and anything the hardware does
// differently from the PTX text. Blocks run one after another in index order.
//
// Threads see threadIdx/blockIdx/blockDim/gridDim through the current fiber's context; __shared__
// becomes `static` (blocks of a launch run one at a time, so one copy per kernel instantiation
// is exactly one block's shared memory).
#pragma once
#include <cmath>
#include <math.h>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>
#include <utility>

#include "core/dtype.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define warpSize 32

struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(16) double2 { double x, y; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return {x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }

namespace pk {
namespace sim {

// The running CUDA thread.
struct ThreadCtx {
  uint3 tid, bid;
  dim3 bdim, gdim;
  int linear;   // linear thread index in the block
  int lane, warp;
};
extern thread_local ThreadCtx* g_ctx;

// Payload a lane contributes to a warp-wide exchange (shuffles: 8 bytes; mma: 24).
struct LanePut { uint64_t w[4]; };
enum class WarpOp : int { Sync = 0, Shuffle, Vote, Mma, Ldmatrix };

// `where` names the __syncthreads call site: every thread of a block must wait at the same one.
void syncthreads(const char* where);
// Every lane in `mask` arrives with `put`; returns all 32 lanes' puts (lanes outside the mask: zero).
const LanePut* warp_exchange(unsigned mask, const LanePut& put, WarpOp op);
// A device-side error (bad shuffle mask, out-of-range lane): reported as the launch's error.
[[noreturn]] void device_fail(const char* what);
// The launch's dynamic shared memory (size from the launch configuration; 0xff at each block start).
unsigned char* dynamic_smem();
// A static __shared__ variable, filled with 0xff by the first thread of each block that reaches its
// declaration (scripts/cuda-sim-pp.js adds the call): shared memory starts as garbage on a GPU.
void poison_shared_once(void* p, size_t n);

// Tensor-core and ldmatrix emulation (attention.cu's sm_80 path), from the PTX ISA text.
void mma_m16n8k16_f32(bool bf16, float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
void ldmatrix_x4_trans(const void* p, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3);

template <class T> inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(T));
  return u;
}
template <class T> inline T from_bits(uint64_t u) {
  T v;
  std::memcpy(&v, &u, sizeof(T));
  return v;
}
template <class T> inline T shuffle_from(unsigned mask, T v, int src) {
  LanePut p{{to_bits(v), 0, 0, 0}};
  const LanePut* all = warp_exchange(mask, p, WarpOp::Shuffle);
  // PTX: a source lane outside the member mask gives an undefined value: all ones here (NaN, -1).
  if (!((mask >> src) & 1u)) return from_bits<T>(~uint64_t(0));
  return from_bits<T>(all[src].w[0]);
}

}  // namespace sim
}  // namespace pk

#define threadIdx (::pk::sim::g_ctx->tid)
#define blockIdx (::pk::sim::g_ctx->bid)
#define blockDim (::pk::sim::g_ctx->bdim)
#define gridDim (::pk::sim::g_ctx->gdim)

// ---- barriers, shuffles, votes ----
#define PK_SIM_STR2(x) #x
#define PK_SIM_STR(x) PK_SIM_STR2(x)
#define __syncthreads() ::pk::sim::syncthreads(__FILE__ ":" PK_SIM_STR(__LINE__))
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::pk::sim::warp_exchange(mask, ::pk::sim::LanePut{}, ::pk::sim::WarpOp::Sync);
}
template <class T> inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  const int lane = ::pk::sim::g_ctx->lane;
  return ::pk::sim::shuffle_from(mask, v, (lane & ~(width - 1)) + (src & (width - 1)));
}
template <class T> inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  const int lane = ::pk::sim::g_ctx->lane;
  int src = lane ^ lane_mask;
  if ((src & ~(width - 1)) != (lane & ~(width - 1))) src = lane;
  return ::pk::sim::shuffle_from(mask, v, src);
}
template <class T> inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = ::pk::sim::g_ctx->lane;
  int src = lane + (int)delta;
  if ((src & ~(width - 1)) != (lane & ~(width - 1))) src = lane;
  return ::pk::sim::shuffle_from(mask, v, src);
}
template <class T> inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = ::pk::sim::g_ctx->lane;
  int src = lane - (int)delta;
  if (src < (lane & ~(width - 1))) src = lane;
  return ::pk::sim::shuffle_from(mask, v, src);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  const ::pk::sim::LanePut* all =
      ::pk::sim::warp_exchange(mask, ::pk::sim::LanePut{{pred ? 1u : 0u, 0, 0, 0}}, ::pk::sim::WarpOp::Vote);
  unsigned b = 0;
  for (int l = 0; l < 32; l++) if (((mask >> l) & 1u) && all[l].w[0]) b |= 1u << l;
  return b;
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == mask; }

// ---- atomics (fibers never interleave inside one of these: plain read-modify-write is atomic) ----
template <class T> inline T atomicAdd(T* p, T v) { T o = *p; *p = o + v; return o; }
template <class T> inline T atomicMin(T* p, T v) { T o = *p; if (v < o) *p = v; return o; }
template <class T> inline T atomicMax(T* p, T v) { T o = *p; if (v > o) *p = v; return o; }
template <class T> inline T atomicExch(T* p, T v) { T o = *p; *p = v; return o; }
template <class T> inline T atomicCAS(T* p, T cmp, T v) { T o = *p; if (o == cmp) *p = v; return o; }

// ---- arithmetic intrinsics (compiled with -ffp-contract=off: each is one IEEE operation) ----
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __dsqrt_rn(double a) { return std::sqrt(a); }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline float __expf(float a) { return std::exp(a); }
inline float __logf(float a) { return std::log(a); }
inline float rsqrtf(float a) { return 1.0f / std::sqrt(a); }
inline double rsqrt(double a) { return 1.0 / std::sqrt(a); }
inline float __saturatef(float a) { return a < 0.f ? 0.f : (a > 1.f ? 1.f : a); }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((uint64_t)a * b) >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
  return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz((unsigned)v); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline unsigned __float_as_uint(float v) { return ::pk::sim::from_bits<unsigned>(::pk::sim::to_bits(v)); }
inline float __uint_as_float(unsigned v) { return ::pk::sim::from_bits<float>(::pk::sim::to_bits(v)); }
inline int __float_as_int(float v) { return ::pk::sim::from_bits<int>(::pk::sim::to_bits(v)); }
inline float __int_as_float(int v) { return ::pk::sim::from_bits<float>(::pk::sim::to_bits(v)); }
inline long long __double_as_longlong(double v) { return ::pk::sim::from_bits<long long>(::pk::sim::to_bits(v)); }
inline double __longlong_as_double(long long v) { return ::pk::sim::from_bits<double>(::pk::sim::to_bits(v)); }
// CUDA's math library is in the global namespace; the classification functions are only in std:: here.
using std::isfinite;
using std::isinf;
using std::isnan;
using std::signbit;

// CUDA's global min/max: fminf/fmaxf for floating point (NaN-ignoring), integer overloads otherwise.
inline float max(float a, float b) { return std::fmax(a, b); }
inline float min(float a, float b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
template <class A, class B, class = std::enable_if_t<std::is_integral<A>::value && std::is_integral<B>::value>>
inline std::common_type_t<A, B> max(A a, B b) { return a < b ? (std::common_type_t<A, B>)b : (std::common_type_t<A, B>)a; }
template <class A, class B, class = std::enable_if_t<std::is_integral<A>::value && std::is_integral<B>::value>>
inline std::common_type_t<A, B> min(A a, B b) { return b < a ? (std::common_type_t<A, B>)b : (std::common_type_t<A, B>)a; }
[[noreturn]] inline void __trap() { ::pk::sim::device_fail("__trap()"); }
inline size_t __cvta_generic_to_shared(const void* p) { return (size_t)p; }
