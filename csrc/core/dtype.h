// dtype.h — element types of peftkit tensors and the scalar conversions between them.
//
// Why here: every op dispatches on DType; bf16/f16 are storage formats that the CPU kernels
// widen to f32 (f64 for gradient checks) and narrow again with round-to-nearest-even.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

namespace pk {

enum class DType : int32_t { F32 = 0, BF16 = 1, F16 = 2, F64 = 3, I32 = 4, I64 = 5, U8 = 6, NF4 = 7 };

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::BF16: return 2;
    case DType::F16: return 2;
    case DType::F64: return 8;
    case DType::I32: return 4;
    case DType::I64: return 8;
    case DType::U8: return 1;
    case DType::NF4: return 1;  // packed two codes per byte; shape counts bytes
  }
  return 0;
}

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::BF16: return "bf16";
    case DType::F16: return "f16";
    case DType::F64: return "f64";
    case DType::I32: return "i32";
    case DType::I64: return "i64";
    case DType::U8: return "u8";
    case DType::NF4: return "nf4";
  }
  return "?";
}

inline bool dtype_from_name(const std::string& s, DType* out) {
  static const char* names[] = {"f32", "bf16", "f16", "f64", "i32", "i64", "u8", "nf4"};
  for (int i = 0; i < 8; i++)
    if (s == names[i]) { *out = static_cast<DType>(i); return true; }
  return false;
}

inline bool is_float(DType t) { return t == DType::F32 || t == DType::BF16 || t == DType::F16 || t == DType::F64; }
inline bool is_int(DType t) { return t == DType::I32 || t == DType::I64 || t == DType::U8; }

// ---- bf16 <-> f32 (round to nearest even; NaN stays NaN) ----
struct bf16 { uint16_t bits; };
struct f16 { uint16_t bits; };

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f; std::memcpy(&f, &u, 4); return f;
}
inline uint16_t f32_to_bf16(float f) {
  uint32_t u; std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  uint32_t lsb = (u >> 16) & 1u;
  u += 0x7fffu + lsb;
  return static_cast<uint16_t>(u >> 16);
}

// ---- IEEE half <-> f32 (round to nearest even, subnormals handled) ----
inline float f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t u;
  if (exp == 0) {
    if (mant == 0) u = sign;
    else {  // subnormal: normalise
      int e = -1;
      do { e++; mant <<= 1; } while ((mant & 0x400) == 0);
      mant &= 0x3ff;
      u = sign | ((uint32_t)(127 - 15 - e) << 23) | (mant << 13);
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (mant << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f; std::memcpy(&f, &u, 4); return f;
}
inline uint16_t f32_to_f16(float f) {
  uint32_t u; std::memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000;
  uint32_t absu = u & 0x7fffffffu;
  if (absu > 0x7f800000u) return (uint16_t)(sign | 0x7e00);          // NaN
  if (absu >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);         // overflow -> inf (>= 65520)
  if (absu < 0x38800000u) {                                           // subnormal or zero
    if (absu < 0x33000000u) return (uint16_t)sign;                    // < 2^-25 rounds to 0
    uint32_t e = absu >> 23;
    uint32_t m = (absu & 0x7fffff) | 0x800000;
    uint32_t shift = 126 - e;                                         // 14 + (113 - e) - ... 
    // value = m * 2^(e-150); half subnormal unit = 2^-24 -> q = m * 2^(e-126)
    uint32_t q = m >> (shift);
    uint32_t rem = m & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) q++;
    return (uint16_t)(sign | q);
  }
  uint32_t e = (absu >> 23) - 127 + 15;
  uint32_t m = absu & 0x7fffff;
  uint32_t h = (e << 10) | (m >> 13);
  uint32_t rem = m & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
  return (uint16_t)(sign | h);
}

// Runs of the bf16 conversions (serial; callers split the work): dst[i] = f32_to_bf16(src[i])
// and p[i] = bf16_to_f32(f32_to_bf16(p[i])) — the same bits (nearest even, quiet NaN), written
// branch-free so they vectorise. Defined out of line in tensor.cpp (a baseline translation unit:
// an inline copy compiled into an AVX-512 file could be the one the linker keeps).
void f32_to_bf16_run(const float* src, uint16_t* dst, int64_t n);
void bf16_round_run(float* p, int64_t n);

}  // namespace pk
