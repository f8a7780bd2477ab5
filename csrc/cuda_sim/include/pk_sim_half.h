// pk_sim_half.h — __nv_bfloat16 / __half and their conversion intrinsics for the CUDA simulator
// (see pk_sim.h): 16-bit storage types whose conversions are core/dtype.h's, i.e. the CPU ops'
// round-to-nearest-even narrowing, so a simulated kernel rounds exactly as its CPU twin does.
#pragma once
#include <cstdint>
#include "core/dtype.h"

struct __nv_bfloat16 {
  unsigned short __x;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) : __x(::pk::f32_to_bf16(f)) {}
  __nv_bfloat16(double f) : __x(::pk::f32_to_bf16((float)f)) {}
  operator float() const { return ::pk::bf16_to_f32(__x); }
};
struct __half {
  unsigned short __x;
  __half() = default;
  __half(float f) : __x(::pk::f32_to_f16(f)) {}
  __half(double f) : __x(::pk::f32_to_f16((float)f)) {}
  operator float() const { return ::pk::f16_to_f32(__x); }
};
struct alignas(4) __nv_bfloat162 { __nv_bfloat16 x, y; };
struct alignas(4) __half2 { __half x, y; };
typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;
typedef __half half;
typedef __half2 half2;

inline float __bfloat162float(__nv_bfloat16 v) { return ::pk::bf16_to_f32(v.__x); }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { __nv_bfloat16 v; v.__x = u; return v; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 v) { return v.__x; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __ushort_as_bfloat16(::pk::f32_to_bf16(f)); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__float2bfloat16_rn(a), __float2bfloat16_rn(b)}; }
inline float __low2float(__nv_bfloat162 v) { return __bfloat162float(v.x); }
inline float __high2float(__nv_bfloat162 v) { return __bfloat162float(v.y); }

inline float __half2float(__half v) { return ::pk::f16_to_f32(v.__x); }
inline __half __ushort_as_half(unsigned short u) { __half v; v.__x = u; return v; }
inline unsigned short __half_as_ushort(__half v) { return v.__x; }
inline __half __float2half_rn(float f) { return __ushort_as_half(::pk::f32_to_f16(f)); }
inline __half __float2half(float f) { return __float2half_rn(f); }
inline __half2 __floats2half2_rn(float a, float b) { return {__float2half_rn(a), __float2half_rn(b)}; }
inline float __low2float(__half2 v) { return __half2float(v.x); }
inline float __high2float(__half2 v) { return __half2float(v.y); }
