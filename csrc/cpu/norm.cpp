// norm.cpp — CPU RMSNorm / LayerNorm. One row = the last dim (C elements) of x, any strides.
//
// Forward: rows split over the pool, each row widened into a private f32 (f64) buffer; the sums
// of squares / means accumulate in f64 (C is up to ~16k and torch's f32 reductions are
// pairwise, so a naive f32 running sum would drift further from it than f64 does).
// Backward: rows cut into kBlocks fixed blocks; each block writes dx for its rows and a private
// partial dw/db (f64), then the partials are added per column in block order. The result is
// bit-identical whatever the thread count.
//
// f32/bf16/f16 tensors run on the vector row kernels (row_kernels.h) when the CPU has them: rows
// read in place, the same operations and rounding points as the scalar loops below, the f64 sums
// in a fixed vector order. f64 (gradient checks) and other dtype mixes keep the scalar loops.
#include <type_traits>

#include "norm.h"
#include "core/dispatch.h"
#include "cpu_common.h"
#include "row_io.h"
#include "row_kernels.h"

namespace pk {

namespace {


constexpr int64_t kBlocks = 64;

// v rounded to storage dtype dt and widened back: models the `.to(x.dtype)` in HF's graph.
template <class T> inline T round_to(T v, DType dt) {
  if (dt == DType::BF16) return (T)bf16_to_f32(f32_to_bf16((float)v));
  if (dt == DType::F16) return (T)f16_to_f32(f32_to_f16((float)v));
  return v;
}

// Shape of the per-row statistics: x's shape without the last dim.
Shape stat_shape(const Tensor& x) { return Shape(x.shape().begin(), x.shape().end() - 1); }

// Common checks for x (..., C) and an optional 1-d parameter of size C. Returns C.
int64_t check_x(const Tensor& x, const char* op) {
  check_float(x, op, "x"); check_cpu(x, op, "x");
  PK_CHECK(x.dim() >= 1, op, ": x must have at least 1 dim (..., C), got ", x.desc());
  PK_CHECK(x.shape().back() >= 1, op, ": x has an empty normalised dim: ", x.desc());
  return x.shape().back();
}
void check_param(const Tensor& p, int64_t C, const char* op, const char* arg, const Tensor& x) {
  if (!p.defined()) return;
  check_float(p, op, arg); check_cpu(p, op, arg);
  PK_CHECK(p.dim() == 1 && p.shape()[0] == C, op, ": ", arg, " ", p.desc(), " must be 1-d of size C=", C,
           " (the last dim of x ", x.desc(), ")");
}
void check_stat(const Tensor& s, const Tensor& x, const char* op, const char* arg) {
  check_float(s, op, arg); check_cpu(s, op, arg);
  PK_CHECK(s.shape() == stat_shape(x), op, ": ", arg, " ", s.desc(), " must have shape ", shape_str(stat_shape(x)),
           " (x ", x.desc(), " without its last dim)");
}
void check_dy(const Tensor& dy, const Tensor& x, const char* op) {
  check_float(dy, op, "dy"); check_cpu(dy, op, "dy");
  PK_CHECK(dy.shape() == x.shape(), op, ": dy ", dy.desc(), " does not match x ", x.desc());
}

// A 1-d parameter (or `fill` everywhere when undefined) widened into a T vector, plus `add`.
template <class T> std::vector<T> param_vec(const Tensor& p, int64_t C, T fill, T add) {
  std::vector<T> v(C, fill);
  if (p.defined()) { load_row(elem_ptr(p, 0), p.dtype(), C, p.strides()[0], v.data()); for (auto& e : v) e += add; }
  return v;
}

// Run fn(row, part) over every row in kBlocks fixed blocks; part is the block's C-wide (f64)
// partial-sum slice for each of `nsums` sums (null when nsums == 0). Then out[k][c] = sum over
// blocks of part[k] in block order.
template <class F>
std::vector<std::vector<double>> blocked_rows(int64_t rows, int64_t C, int nsums, F fn) {
  int64_t nblk = std::max<int64_t>(1, std::min(rows, kBlocks));
  std::vector<double> part(nsums ? (size_t)(nblk * nsums * C) : 0, 0.0);
  parallel_for(0, nblk, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; b++) {
      double* pb = nsums ? part.data() + b * nsums * C : nullptr;
      for (int64_t r = b * rows / nblk; r < (b + 1) * rows / nblk; r++) fn(r, pb);
    }
  });
  std::vector<std::vector<double>> out(nsums, std::vector<double>(C, 0.0));
  if (nsums) parallel_for(0, C, 256, [&](int64_t c0, int64_t c1) {
    for (int k = 0; k < nsums; k++)
      for (int64_t b = 0; b < nblk; b++) {
        const double* pb = part.data() + (b * nsums + k) * C;
        for (int64_t c = c0; c < c1; c++) out[k][c] += pb[c];
      }
  });
  return out;
}

template <class T> Tensor to_param_grad(const std::vector<double>& g, const Tensor& like) {
  Tensor t = Tensor::empty({(int64_t)g.size()}, like.dtype());
  store_row(g.data(), elem_ptr(t, 0), t.dtype(), (int64_t)g.size(), 1);
  return t;
}

// ---------------------------------------------------------------------------- RMSNorm

// 1/sqrt(mean(x²) + eps) from the f64 sum of squares, in the compute type (one place for both paths).
template <class T> inline T rstd_of(double ss, int64_t C, T eps) {
  T var = (T)(ss / (double)C);
  return T(1) / std::sqrt(var + eps);
}

rowk::RmsMode rms_mode(const Tensor& w, bool unit_offset) {
  if (unit_offset) return rowk::RmsMode::UnitOffset;
  return w.defined() ? rowk::RmsMode::Weight : rowk::RmsMode::Plain;
}

// The vector kernels for these tensors, or nullptr (f64, other dtypes, no vector ISA).
const rowk::Kernels* norm_kernels(std::initializer_list<DType> dts) {
  for (DType t : dts) if (!rowk::vec_dtype(t)) return nullptr;
  return rowk::active_kernels();
}

// Vector forward: per row, Σx² then the scaling, both read x in place (a strided row is first
// gathered into a contiguous run of x's dtype, so it takes the same code).
void rms_fwd_vec(const rowk::Kernels& k, const Tensor& x, const std::vector<float>& g, float eps, rowk::RmsMode mode,
                 const Tensor& y, float* pr) {
  const int64_t C = x.shape().back(), rows = x.numel() / C, last = x.dim() - 1, sx = x.strides()[last];
  const DType xd = x.dtype(), od = y.dtype();
  // >= ~8k elements per worker: a 512-wide bf16 row is well under a microsecond
  parallel_for(0, rows, std::max<int64_t>(1, 8192 / C), [&](int64_t r0, int64_t r1) {
    std::vector<char> scratch;
    for (int64_t r = r0; r < r1; r++) {
      const void* xr = contiguous_run(x, row_offset(r, x, last), C, sx, scratch);
      const float rs = rstd_of<float>(k.sum_sq(xd, xr, C), C, eps);
      pr[r] = rs;
      k.rms_scale(xd, xr, rs, mode, g.data(), od, elem_ptr(y, r * C), C);
    }
  });
}

template <class T>
Tensor rms_fwd(const Tensor& x, const Tensor& w, double eps, bool unit_offset, Tensor* rstd_out) {
  int64_t C = x.shape().back(), rows = x.numel() / C, last = x.dim() - 1;
  DType xd = x.dtype(), cd = compute_dtype(xd);
  DType od = (w.defined() && !unit_offset) ? promote(xd, w.dtype()) : xd;
  Tensor y = Tensor::empty(x.shape(), od);
  Tensor rstd = Tensor::empty(stat_shape(x), cd);
  T* pr = rstd.data<T>();
  // Gemma scales by (1 + w) in f32; Llama by w after h is rounded to x's dtype.
  std::vector<T> g = unit_offset ? param_vec<T>(w, C, T(1), T(1)) : param_vec<T>(w, C, T(1), T(0));
  bool has_w = w.defined();
  int64_t sx = x.strides()[last];
  const T teps = (T)eps;
  if constexpr (std::is_same<T, float>::value) {
    if (const rowk::Kernels* k = norm_kernels({xd, od})) {
      rms_fwd_vec(*k, x, g, teps, rms_mode(w, unit_offset), y, pr);
      if (rstd_out) *rstd_out = rstd;
      return y;
    }
  }
  parallel_for(0, rows, std::max<int64_t>(1, 8192 / C), [&](int64_t r0, int64_t r1) {
    std::vector<T> buf(C);
    for (int64_t r = r0; r < r1; r++) {
      load_row(elem_ptr(x, row_offset(r, x, last)), xd, C, sx, buf.data());
      double ss = 0;
      for (int64_t i = 0; i < C; i++) ss += (double)buf[i] * (double)buf[i];
      T rs = rstd_of<T>(ss, C, teps);
      pr[r] = rs;
      if (unit_offset) {
        for (int64_t i = 0; i < C; i++) buf[i] = (buf[i] * rs) * g[i];
      } else if (has_w) {
        for (int64_t i = 0; i < C; i++) buf[i] = g[i] * round_to(buf[i] * rs, xd);
      } else {
        for (int64_t i = 0; i < C; i++) buf[i] = buf[i] * rs;
      }
      store_row(buf.data(), elem_ptr(y, r * C), od, C, 1);
    }
  });
  if (rstd_out) *rstd_out = rstd;
  return y;
}

template <class T>
void rms_bwd(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy, bool unit_offset,
             Tensor* dx_out, Tensor* dw_out) {
  int64_t C = x.shape().back(), rows = x.numel() / C, last = x.dim() - 1;
  DType xd = x.dtype();
  std::vector<T> g = unit_offset ? param_vec<T>(w, C, T(1), T(1)) : param_vec<T>(w, C, T(1), T(0));
  Tensor rs_c = rstd.to(compute_dtype(xd)).contiguous();
  const T* pr = rs_c.data<T>();
  bool want_dx = dx_out != nullptr, want_dw = dw_out != nullptr && w.defined();
  Tensor dx = want_dx ? Tensor::empty(x.shape(), xd) : Tensor();
  int64_t sx = x.strides()[last], sdy = dy.strides()[last];
  if constexpr (std::is_same<T, float>::value) {
    if (const rowk::Kernels* k = norm_kernels({xd, dy.dtype()})) {
      // Vector rows: pass 1 adds this row's dw terms and forms Σ(dy·g)·h, pass 2 writes dx.
      const rowk::RmsMode mode = rms_mode(w, unit_offset);
      auto sums = blocked_rows(rows, C, want_dw ? 1 : 0, [&](int64_t r, double* part) {
        thread_local std::vector<char> xs, ds;  // gathered strided rows (one pair per worker)
        const void* xr = contiguous_run(x, row_offset(r, x, last), C, sx, xs);
        const void* dr = contiguous_run(dy, row_offset(r, dy, last), C, sdy, ds);
        const float rs = pr[r];
        const double dot = k->rms_bwd_dot(xd, xr, dy.dtype(), dr, rs, mode, g.data(), part, C);
        if (want_dx) k->rms_bwd_dx(xd, xr, dy.dtype(), dr, rs, (float)(dot / (double)C), g.data(), elem_ptr(dx, r * C), C);
      });
      if (want_dx) *dx_out = dx;
      if (dw_out) *dw_out = want_dw ? to_param_grad<T>(sums[0], w) : Tensor();
      return;
    }
  }
  auto sums = blocked_rows(rows, C, want_dw ? 1 : 0, [&](int64_t r, double* part) {
    // thread_local: one scratch row per worker, reused across rows and calls
    thread_local std::vector<T> xb, gb;
    xb.resize(C); gb.resize(C);
    load_row(elem_ptr(x, row_offset(r, x, last)), xd, C, sx, xb.data());
    load_row(elem_ptr(dy, row_offset(r, dy, last)), dy.dtype(), C, sdy, gb.data());
    T rs = pr[r];
    if (part) {
      // dL/dw = sum over rows of dy * (the tensor w multiplied): h for Gemma, h.to(x.dtype) for Llama
      if (unit_offset) for (int64_t i = 0; i < C; i++) part[i] += (double)gb[i] * (double)(xb[i] * rs);
      else for (int64_t i = 0; i < C; i++) part[i] += (double)gb[i] * (double)round_to(xb[i] * rs, xd);
    }
    if (!want_dx) return;
    // dh = dy * g; dx = rstd * (dh - h * mean(dh * h)),  h = x * rstd
    double dot = 0;
    for (int64_t i = 0; i < C; i++) { gb[i] *= g[i]; dot += (double)gb[i] * (double)(xb[i] * rs); }
    T k = (T)(dot / (double)C);
    for (int64_t i = 0; i < C; i++) gb[i] = rs * (gb[i] - (xb[i] * rs) * k);
    store_row(gb.data(), elem_ptr(dx, r * C), xd, C, 1);
  });
  if (want_dx) *dx_out = dx;
  if (dw_out) *dw_out = want_dw ? to_param_grad<T>(sums[0], w) : Tensor();
}

// ---------------------------------------------------------------------------- LayerNorm

// Row statistics from the f64 mean and sum of centred squares, in the compute type (both paths).
template <class T> inline void ln_stats(double mu, double v, int64_t C, double eps, T* m, T* rs) {
  *m = (T)mu;
  *rs = (T)(1.0 / std::sqrt(v / (double)C + eps));
}

template <class T>
Tensor ln_fwd(const Tensor& x, const Tensor& w, const Tensor& b, double eps, Tensor* mean_out, Tensor* rstd_out) {
  int64_t C = x.shape().back(), rows = x.numel() / C, last = x.dim() - 1;
  DType xd = x.dtype(), cd = compute_dtype(xd);
  Tensor y = Tensor::empty(x.shape(), xd);
  Tensor mean = Tensor::empty(stat_shape(x), cd), rstd = Tensor::empty(stat_shape(x), cd);
  T* pm = mean.data<T>(); T* pr = rstd.data<T>();
  std::vector<T> wv = param_vec<T>(w, C, T(1), T(0)), bv = param_vec<T>(b, C, T(0), T(0));
  int64_t sx = x.strides()[last];
  const rowk::Kernels* vk = std::is_same<T, float>::value ? norm_kernels({xd}) : nullptr;
  parallel_for(0, rows, std::max<int64_t>(1, 8192 / C), [&](int64_t r0, int64_t r1) {
    if constexpr (std::is_same<T, float>::value) {
      if (vk) {  // vector rows: the same two passes and scaling, x read in place
        std::vector<char> scratch;
        for (int64_t r = r0; r < r1; r++) {
          const void* xr = contiguous_run(x, row_offset(r, x, last), C, sx, scratch);
          const double mu = vk->sum(xd, xr, C) / (double)C;
          ln_stats<T>(mu, vk->sum_sq_dev(xd, xr, mu, C), C, eps, &pm[r], &pr[r]);
          vk->ln_scale(xd, xr, pm[r], pr[r], wv.data(), bv.data(), elem_ptr(y, r * C), C);
        }
        return;
      }
    }
    std::vector<T> buf(C);
    for (int64_t r = r0; r < r1; r++) {
      load_row(elem_ptr(x, row_offset(r, x, last)), xd, C, sx, buf.data());
      // two passes (mean, then centred squares): no cancellation when |mean| >> std
      double s = 0;
      for (int64_t i = 0; i < C; i++) s += buf[i];
      double mu = s / (double)C, v = 0;
      for (int64_t i = 0; i < C; i++) { double d = (double)buf[i] - mu; v += d * d; }
      T m, rs;
      ln_stats<T>(mu, v, C, eps, &m, &rs);
      pm[r] = m; pr[r] = rs;
      for (int64_t i = 0; i < C; i++) buf[i] = (buf[i] - m) * rs * wv[i] + bv[i];
      store_row(buf.data(), elem_ptr(y, r * C), xd, C, 1);
    }
  });
  if (mean_out) *mean_out = mean;
  if (rstd_out) *rstd_out = rstd;
  return y;
}

template <class T>
void ln_bwd(const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd, const Tensor& dy,
            Tensor* dx_out, Tensor* dw_out, Tensor* db_out) {
  int64_t C = x.shape().back(), rows = x.numel() / C, last = x.dim() - 1;
  DType xd = x.dtype(), cd = compute_dtype(xd);
  std::vector<T> wv = param_vec<T>(w, C, T(1), T(0));
  Tensor m_c = mean.to(cd).contiguous(), r_c = rstd.to(cd).contiguous();
  const T* pm = m_c.data<T>(); const T* pr = r_c.data<T>();
  bool want_dx = dx_out != nullptr;
  int nsums = (dw_out ? 1 : 0) + (db_out ? 1 : 0);
  int kw = 0, kb = dw_out ? 1 : 0;
  Tensor dx = want_dx ? Tensor::empty(x.shape(), xd) : Tensor();
  int64_t sx = x.strides()[last], sdy = dy.strides()[last];
  if constexpr (std::is_same<T, float>::value) {
    if (const rowk::Kernels* k = norm_kernels({xd, dy.dtype()})) {
      // Vector rows: pass 1 adds the dw/db terms and forms Σ dy·w and Σ (dy·w)·xhat, pass 2 writes dx.
      auto sums = blocked_rows(rows, C, nsums, [&](int64_t r, double* part) {
        thread_local std::vector<char> xs, ds;
        const void* xr = contiguous_run(x, row_offset(r, x, last), C, sx, xs);
        const void* dr = contiguous_run(dy, row_offset(r, dy, last), C, sdy, ds);
        double sg[2];
        k->ln_bwd_sums(xd, xr, dy.dtype(), dr, pm[r], pr[r], wv.data(), dw_out ? part + kw * C : nullptr,
                       db_out ? part + kb * C : nullptr, sg, C);
        if (want_dx)
          k->ln_bwd_dx(xd, xr, dy.dtype(), dr, pm[r], pr[r], (T)(sg[0] / (double)C), (T)(sg[1] / (double)C), wv.data(),
                       elem_ptr(dx, r * C), C);
      });
      if (want_dx) *dx_out = dx;
      Tensor like = w.defined() ? w : x;
      if (dw_out) *dw_out = to_param_grad<T>(sums[kw], like);
      if (db_out) *db_out = to_param_grad<T>(sums[kb], like);
      return;
    }
  }
  auto sums = blocked_rows(rows, C, nsums, [&](int64_t r, double* part) {
    thread_local std::vector<T> xb, gb;
    xb.resize(C); gb.resize(C);
    load_row(elem_ptr(x, row_offset(r, x, last)), xd, C, sx, xb.data());
    load_row(elem_ptr(dy, row_offset(r, dy, last)), dy.dtype(), C, sdy, gb.data());
    T m = pm[r], rs = pr[r];
    for (int64_t i = 0; i < C; i++) xb[i] = (xb[i] - m) * rs;  // xhat
    if (dw_out) { double* p = part + kw * C; for (int64_t i = 0; i < C; i++) p[i] += (double)gb[i] * (double)xb[i]; }
    if (db_out) { double* p = part + kb * C; for (int64_t i = 0; i < C; i++) p[i] += gb[i]; }
    if (!want_dx) return;
    // g = dy * w; dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
    double sg = 0, sgx = 0;
    for (int64_t i = 0; i < C; i++) { gb[i] *= wv[i]; sg += gb[i]; sgx += (double)gb[i] * (double)xb[i]; }
    T a = (T)(sg / (double)C), c = (T)(sgx / (double)C);
    for (int64_t i = 0; i < C; i++) gb[i] = rs * (gb[i] - a - xb[i] * c);
    store_row(gb.data(), elem_ptr(dx, r * C), xd, C, 1);
  });
  if (want_dx) *dx_out = dx;
  // parameter grads take the parameter's dtype (x's when the parameter is absent)
  Tensor like = w.defined() ? w : x;
  if (dw_out) *dw_out = to_param_grad<T>(sums[kw], like);
  if (db_out) *db_out = to_param_grad<T>(sums[kb], like);
}

}  // namespace

Tensor rms_norm_forward(const Tensor& x, const Tensor& w, double eps, bool unit_offset, Tensor* rstd) {
  if (any_cuda(x, w)) return cuda_fn(&CudaOps::rms_norm_forward, "rms_norm")(x, w, eps, unit_offset, rstd);
  const char* op = "rms_norm";
  int64_t C = check_x(x, op);
  check_param(w, C, op, "weight", x);
  PK_CHECK(eps >= 0 && std::isfinite(eps), op, ": eps must be finite and >= 0, got ", eps);
  return dispatch_fp(compute_dtype(x.dtype()), [&](auto tag) { return rms_fwd<decltype(tag)>(x, w, eps, unit_offset, rstd); });
}

void rms_norm_backward(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy, bool unit_offset,
                       Tensor* dx, Tensor* dw) {
  if (any_cuda(x, w, rstd, dy)) { cuda_fn(&CudaOps::rms_norm_backward, "rms_norm_backward")(x, w, rstd, dy, unit_offset, dx, dw); return; }
  const char* op = "rms_norm_backward";
  int64_t C = check_x(x, op);
  check_param(w, C, op, "weight", x);
  check_stat(rstd, x, op, "rstd");
  check_dy(dy, x, op);
  dispatch_fp(compute_dtype(x.dtype()), [&](auto tag) { rms_bwd<decltype(tag)>(x, w, rstd, dy, unit_offset, dx, dw); return 0; });
}

Tensor layer_norm_forward(const Tensor& x, const Tensor& w, const Tensor& b, double eps, Tensor* mean, Tensor* rstd) {
  if (any_cuda(x, w, b)) return cuda_fn(&CudaOps::layer_norm_forward, "layer_norm")(x, w, b, eps, mean, rstd);
  const char* op = "layer_norm";
  int64_t C = check_x(x, op);
  check_param(w, C, op, "weight", x);
  check_param(b, C, op, "bias", x);
  PK_CHECK(eps >= 0 && std::isfinite(eps), op, ": eps must be finite and >= 0, got ", eps);
  return dispatch_fp(compute_dtype(x.dtype()), [&](auto tag) { return ln_fwd<decltype(tag)>(x, w, b, eps, mean, rstd); });
}

void layer_norm_backward(const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd, const Tensor& dy,
                         Tensor* dx, Tensor* dw, Tensor* db) {
  if (any_cuda(x, w, mean, rstd, dy)) { cuda_fn(&CudaOps::layer_norm_backward, "layer_norm_backward")(x, w, mean, rstd, dy, dx, dw, db); return; }
  const char* op = "layer_norm_backward";
  int64_t C = check_x(x, op);
  check_param(w, C, op, "weight", x);
  check_stat(mean, x, op, "mean");
  check_stat(rstd, x, op, "rstd");
  check_dy(dy, x, op);
  dispatch_fp(compute_dtype(x.dtype()), [&](auto tag) { ln_bwd<decltype(tag)>(x, w, mean, rstd, dy, dx, dw, db); return 0; });
}

}  // namespace pk
