// cpu_features.cpp — cpuid/xgetbv probing (x86-64); other architectures report scalar only.
#include "cpu_features.h"
#include <atomic>
#include <cstdlib>
#include <cstring>
#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define PK_X86 1
#endif

namespace pk {

static CpuFeatures detect() {
  CpuFeatures f;
#ifdef PK_X86
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  bool osxsave = (c >> 27) & 1;
  bool avx = (c >> 28) & 1;
  f.fma = (c >> 12) & 1;
  f.f16c = (c >> 29) & 1;
  unsigned long long xcr0 = 0;
  if (osxsave) { unsigned lo, hi; __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0)); xcr0 = ((unsigned long long)hi << 32) | lo; }
  bool ymm_ok = (xcr0 & 6) == 6;
  bool zmm_ok = (xcr0 & 0xe6) == 0xe6;
  bool amx_ok = (xcr0 & (3ull << 17)) == (3ull << 17);
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    f.avx2 = avx && ymm_ok && ((b >> 5) & 1);
    f.avx512f = zmm_ok && ((b >> 16) & 1);
    f.avx512dq = zmm_ok && ((b >> 17) & 1);
    f.avx512bw = zmm_ok && ((b >> 30) & 1);
    f.avx512vl = zmm_ok && ((b >> 31) & 1);
    f.amx_bf16 = amx_ok && ((d >> 22) & 1);
    f.amx_tile = amx_ok && ((d >> 24) & 1);
  }
  if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) f.avx512bf16 = f.avx512f && ((a >> 5) & 1);
  f.fma = f.fma && ymm_ok;
#endif
  return f;
}

const CpuFeatures& cpu_features() {
  static CpuFeatures f = detect();
  return f;
}

static Isa hardware_isa() {
  const auto& f = cpu_features();
  if (f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.fma) return Isa::Avx512;
  if (f.avx2 && f.fma && f.f16c) return Isa::Avx2;
  return Isa::Scalar;
}

static std::atomic<int> g_cap{-1};

static Isa env_cap() {
  const char* e = std::getenv("PEFTKIT_ISA");
  if (!e) return Isa::Avx512;
  if (!std::strcmp(e, "scalar")) return Isa::Scalar;
  if (!std::strcmp(e, "avx2")) return Isa::Avx2;
  return Isa::Avx512;
}

static bool env_bf16() {
  const char* e = std::getenv("PEFTKIT_ISA");
  return !(e && !std::strcmp(e, "avx512-nobf16"));
}

static std::atomic<bool> g_bf16{true};

Isa cpu_isa() {
  static Isa hw = hardware_isa();
  static Isa env = env_cap();
  int cap = g_cap.load();
  int lvl = (int)hw;
  if ((int)env < lvl) lvl = (int)env;
  if (cap >= 0 && cap < lvl) lvl = cap;
  return (Isa)lvl;
}

void set_isa_cap(Isa cap) { g_cap.store((int)cap); }

bool cpu_bf16() {
  static const bool env = env_bf16();
  return cpu_isa() == Isa::Avx512 && cpu_features().avx512bf16 && env && g_bf16.load();
}

void set_bf16_allowed(bool allowed) { g_bf16.store(allowed); }

const char* isa_name(Isa i) {
  switch (i) { case Isa::Scalar: return "scalar"; case Isa::Avx2: return "avx2"; case Isa::Avx512: return "avx512"; }
  return "?";
}

}  // namespace pk
