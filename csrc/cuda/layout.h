// layout.h — host-side planning of strided iteration for CUDA kernels (plain C++, unit-tested on
// the host): drop size-1 dims and merge dims that are contiguous in every operand, so that most
// kernels see 1-2 dims and the per-element index arithmetic nearly vanishes.
#pragma once
#include <cstdint>
#include <vector>
#include "core/error.h"

namespace pk {
namespace cuda {

constexpr int kMaxDims = 10;   // after coalescing; more throws a clear error

struct Layout {
  std::vector<int64_t> sizes;                   // outer -> inner
  std::vector<std::vector<int64_t>> strides;    // [operand][dim], elements
  int64_t numel = 1;
  bool small_index = true;                      // numel and every operand's max offset < 2^31
  int ndim() const { return (int)sizes.size(); }
  // Every operand walks memory with unit stride (or is a stride-0 broadcast scalar) in one run.
  bool dense() const {
    if (sizes.size() > 1) return false;
    if (sizes.empty()) return true;
    for (auto& s : strides) if (s[0] != 1 && s[0] != 0) return false;
    return true;
  }
};

inline Layout make_layout(const std::vector<int64_t>& shape, const std::vector<std::vector<int64_t>>& strides) {
  Layout L;
  size_t nops = strides.size();
  L.strides.assign(nops, {});
  for (auto s : shape) L.numel *= s;
  for (size_t d = 0; d < shape.size(); d++) {
    if (shape[d] == 1) continue;
    if (!L.sizes.empty()) {
      bool merge = true;
      for (size_t k = 0; k < nops && merge; k++) merge = L.strides[k].back() == strides[k][d] * shape[d];
      if (merge) {
        L.sizes.back() *= shape[d];
        for (size_t k = 0; k < nops; k++) L.strides[k].back() = strides[k][d];
        continue;
      }
    }
    L.sizes.push_back(shape[d]);
    for (size_t k = 0; k < nops; k++) L.strides[k].push_back(strides[k][d]);
  }
  PK_CHECK((int)L.sizes.size() <= kMaxDims, "cuda: tensor layout needs ", L.sizes.size(), " dims after merging (at most ",
           kMaxDims, "); call contiguous() first");
  const int64_t lim = (int64_t(1) << 31) - 1;
  L.small_index = L.numel < lim;
  for (size_t k = 0; k < nops; k++) {
    int64_t mx = 0;
    for (size_t d = 0; d < L.sizes.size(); d++) {
      PK_CHECK(L.strides[k][d] >= 0, "cuda: negative strides are not supported");
      mx += (L.sizes[d] - 1) * L.strides[k][d];
    }
    if (mx >= lim) L.small_index = false;
  }
  return L;
}

// Fast unsigned division by a run-time constant for n < 2^31 (PyTorch's IntDivider): one
// multiply-high, an add and a shift instead of a ~20-instruction integer division per element.
struct FastDiv {
  uint32_t d = 1, m = 0, s = 0;
  FastDiv() = default;
  explicit FastDiv(uint32_t div) : d(div) {
    for (s = 0; s < 32; s++) if ((uint64_t(1) << s) >= div) break;
    uint64_t one = 1;
    m = (uint32_t)(((one << 32) * ((one << s) - div)) / div + 1);
  }
#ifdef __CUDACC__
  __host__ __device__
#endif
  inline uint32_t div(uint32_t n) const {
#ifdef __CUDA_ARCH__
    return (__umulhi(n, m) + n) >> s;
#else
    return (uint32_t)((((uint64_t)n * m) >> 32) + n) >> s;
#endif
  }
};

// Grid size for a grid-stride loop over `work` items with `block` threads: enough blocks to
// fill the device (`sms` multiprocessors x `per_sm` blocks), never more than the work needs.
inline unsigned grid_for(int64_t work, int block, int sms, int per_sm = 8) {
  int64_t need = (work + block - 1) / block;
  int64_t cap = (int64_t)(sms > 0 ? sms : 80) * per_sm;
  if (need < 1) need = 1;
  return (unsigned)(need < cap ? need : cap);
}

}  // namespace cuda
}  // namespace pk
