// cpu_common.cpp — broadcasting and the strided row walker used by elementwise kernels.
#include "cpu_common.h"

namespace pk {

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; i++) {
    int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    PK_CHECK(da == db || da == 1 || db == 1, op, ": shapes ", shape_str(a), " and ", shape_str(b), " cannot be broadcast");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

void strided_rows(const Shape& shape, const std::vector<Shape>& strides, int64_t grain_elems,
                  const std::function<void(const int64_t* offsets, int64_t inner)>& body) {
  int64_t nd = (int64_t)shape.size();
  int64_t n = shape_numel(shape);
  if (n == 0) return;
  int64_t inner = nd ? shape[nd - 1] : 1;
  int64_t rows = n / inner;
  size_t k = strides.size();
  int64_t grain = std::max<int64_t>(1, grain_elems / std::max<int64_t>(inner, 1));
  parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    std::vector<int64_t> idx(nd > 1 ? nd - 1 : 0, 0), off(k, 0);
    int64_t r = r0;
    for (int64_t d = nd - 2; d >= 0; d--) { idx[d] = r % shape[d]; r /= shape[d]; }
    for (int64_t row = r0; row < r1; row++) {
      for (size_t j = 0; j < k; j++) {
        int64_t o = 0;
        for (int64_t d = 0; d < nd - 1; d++) o += idx[d] * strides[j][d];
        off[j] = o;
      }
      body(off.data(), inner);
      for (int64_t d = nd - 2; d >= 0; d--) { if (++idx[d] < shape[d]) break; idx[d] = 0; }
    }
  });
}

}  // namespace pk
