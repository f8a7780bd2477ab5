// softmax.cpp — CPU softmax / log_softmax and backward twins over any dim.
//
// Every op here is "one row at a time": a row is the run of elements along `dim` (stride
// x.strides()[dim]); all other dims enumerate rows. Rows are split over the thread pool, each
// worker widens its row into a private f32 (f64) buffer, works there, and narrows the result
// into a contiguous output. Sums accumulate in f64: rows can be a 150k-entry vocabulary.
#include "softmax.h"
#include "cpu_common.h"
#include "row_io.h"
#include "core/dispatch.h"

namespace pk {

namespace {


enum class Kind { Softmax, LogSoftmax };

// f64 sums with four independent accumulators: short add-latency chains, fixed order.
template <class T> double sum4(const T* x, int64_t n) {
  double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) { a0 += x[i]; a1 += x[i + 1]; a2 += x[i + 2]; a3 += x[i + 3]; }
  for (; i < n; i++) a0 += x[i];
  return (a0 + a1) + (a2 + a3);
}
template <class T> double dot4(const T* x, const T* y, int64_t n) {
  double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    a0 += (double)x[i] * y[i]; a1 += (double)x[i + 1] * y[i + 1];
    a2 += (double)x[i + 2] * y[i + 2]; a3 += (double)x[i + 3] * y[i + 3];
  }
  for (; i < n; i++) a0 += (double)x[i] * y[i];
  return (a0 + a1) + (a2 + a3);
}

// Validate and normalise (x, dim); 0-d tensors are treated as a single 1-element row.
int64_t prep(const Tensor& x, int64_t dim, const char* op, const char* arg) {
  check_float(x, op, arg); check_cpu(x, op, arg);
  return wrap_dim(dim, x.dim(), op);
}

// y = softmax(x) or log_softmax(x) along dim; y is contiguous with x's shape.
template <class T> void forward_rows(const Tensor& x, const Tensor& y, int64_t dim, Kind kind) {
  int64_t L = x.dim() ? x.shape()[dim] : 1;
  int64_t rows = L ? x.numel() / L : 0;
  int64_t sx = x.dim() ? x.strides()[dim] : 1, sy = y.dim() ? y.strides()[dim] : 1;
  parallel_for(0, rows, std::max<int64_t>(1, 8192 / std::max<int64_t>(L, 1)), [&](int64_t r0, int64_t r1) {
    std::vector<T> buf(L), ex(kind == Kind::LogSoftmax ? L : 0);
    for (int64_t r = r0; r < r1; r++) {
      load_row(elem_ptr(x, row_offset(r, x, dim)), x.dtype(), L, sx, buf.data());
      // max first (NaN sticks: once m is NaN, neither test replaces it) so exp never overflows
      T m = -INFINITY;
      for (int64_t i = 0; i < L; i++) if (buf[i] > m || buf[i] != buf[i]) { m = buf[i]; if (m != m) break; }
      if (kind == Kind::Softmax) {
        for (int64_t i = 0; i < L; i++) buf[i] = std::exp(buf[i] - m);
        T inv = (T)(1.0 / sum4(buf.data(), L));
        for (int64_t i = 0; i < L; i++) buf[i] *= inv;
      } else {
        for (int64_t i = 0; i < L; i++) ex[i] = std::exp(buf[i] - m);
        // (x - m) - log(s), not x - (m + log s): x - m is exact near the max, as in torch
        T ls = (T)std::log(sum4(ex.data(), L));
        for (int64_t i = 0; i < L; i++) buf[i] = (buf[i] - m) - ls;
      }
      store_row(buf.data(), elem_ptr(y, row_offset(r, y, dim)), y.dtype(), L, sy);
    }
  });
}

// dx from the forward output y and upstream dy (see the header for the formulas).
template <class T> void backward_rows(const Tensor& y, const Tensor& dy, const Tensor& dx, int64_t dim, Kind kind) {
  int64_t L = y.dim() ? y.shape()[dim] : 1;
  int64_t rows = L ? y.numel() / L : 0;
  int64_t s_y = y.dim() ? y.strides()[dim] : 1, s_dy = dy.dim() ? dy.strides()[dim] : 1, s_dx = dx.dim() ? dx.strides()[dim] : 1;
  parallel_for(0, rows, std::max<int64_t>(1, 8192 / std::max<int64_t>(L, 1)), [&](int64_t r0, int64_t r1) {
    std::vector<T> yb(L), gb(L);
    for (int64_t r = r0; r < r1; r++) {
      load_row(elem_ptr(y, row_offset(r, y, dim)), y.dtype(), L, s_y, yb.data());
      load_row(elem_ptr(dy, row_offset(r, dy, dim)), dy.dtype(), L, s_dy, gb.data());
      if (kind == Kind::Softmax) {
        T st = (T)dot4(gb.data(), yb.data(), L);
        for (int64_t i = 0; i < L; i++) gb[i] = yb[i] * (gb[i] - st);
      } else {
        T st = (T)sum4(gb.data(), L);
        for (int64_t i = 0; i < L; i++) gb[i] = gb[i] - std::exp(yb[i]) * st;
      }
      store_row(gb.data(), elem_ptr(dx, row_offset(r, dx, dim)), dx.dtype(), L, s_dx);
    }
  });
}

Tensor forward(const Tensor& x, int64_t dim, Kind kind, const char* op) {
  dim = prep(x, dim, op, "x");
  Tensor y = Tensor::empty(x.shape(), x.dtype());
  dispatch_fp(compute_dtype(x.dtype()), [&](auto tag) { forward_rows<decltype(tag)>(x, y, dim, kind); return 0; });
  return y;
}

Tensor backward(const Tensor& y, const Tensor& dy, int64_t dim, Kind kind, const char* op) {
  dim = prep(y, dim, op, "y");
  check_float(dy, op, "dy"); check_cpu(dy, op, "dy");
  PK_CHECK(dy.shape() == y.shape(), op, ": dy ", dy.desc(), " does not match y ", y.desc());
  Tensor dx = Tensor::empty(y.shape(), y.dtype());
  dispatch_fp(compute_dtype(y.dtype()), [&](auto tag) { backward_rows<decltype(tag)>(y, dy, dx, dim, kind); return 0; });
  return dx;
}

}  // namespace

Tensor softmax_forward(const Tensor& x, int64_t dim) {
  if (any_cuda(x)) return cuda_fn(&CudaOps::softmax_forward, "softmax")(x, dim);
  return forward(x, dim, Kind::Softmax, "softmax");
}
Tensor log_softmax_forward(const Tensor& x, int64_t dim) {
  if (any_cuda(x)) return cuda_fn(&CudaOps::log_softmax_forward, "log_softmax")(x, dim);
  return forward(x, dim, Kind::LogSoftmax, "log_softmax");
}
Tensor softmax_backward(const Tensor& y, const Tensor& dy, int64_t dim) {
  if (any_cuda(y, dy)) return cuda_fn(&CudaOps::softmax_backward, "softmax_backward")(y, dy, dim);
  return backward(y, dy, dim, Kind::Softmax, "softmax_backward");
}
Tensor log_softmax_backward(const Tensor& y, const Tensor& dy, int64_t dim) {
  if (any_cuda(y, dy)) return cuda_fn(&CudaOps::log_softmax_backward, "log_softmax_backward")(y, dy, dim);
  return backward(y, dy, dim, Kind::LogSoftmax, "log_softmax_backward");
}

}  // namespace pk
