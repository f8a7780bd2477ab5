// rope.cpp — CPU rotary embeddings: HF-exact cos/sin tables, apply and its transpose.
//
// apply/backward walk rows of D elements in (b, t, h) order, so all H heads of one position reuse
// the cos/sin rows already widened in the worker's buffer; x is read through its own strides
// (no contiguous copy for the usual (B,T,H,D) -> (B,H,T,D) transpose).
//
// f32/bf16/f16 tensors run on the vector row kernels (row_kernels.h) when the CPU has them: one
// call per position rotates its H heads, each a contiguous run of D lanes read in place (the
// transpose only changes where a head starts), with the scalar loops' rounding points.
#include <type_traits>

#include "rope.h"
#include "core/dispatch.h"
#include "cpu_common.h"
#include "row_io.h"
#include "row_kernels.h"

namespace pk {

namespace {


// v rounded to storage dtype dt and widened back (bf16/f16 eager ops round after every op).
template <class T> inline T round_to(T v, DType dt) {
  if (dt == DType::BF16) return (T)bf16_to_f32(f32_to_bf16((float)v));
  if (dt == DType::F16) return (T)f16_to_f32(f32_to_f16((float)v));
  return v;
}

template <class T>
void tables(const Tensor& pos, const Tensor& invf, double scaling, const Tensor& cos, const Tensor& sin) {
  int64_t rows = pos.numel(), half = invf.numel(), R = 2 * half;
  const int64_t* pp = pos.data<int64_t>();
  std::vector<T> f(half);
  load_row(elem_ptr(invf, 0), invf.dtype(), half, invf.strides()[0], f.data());
  const T sc = (T)scaling;
  parallel_for(0, rows, std::max<int64_t>(1, 4096 / R), [&](int64_t r0, int64_t r1) {
    std::vector<T> cb(R), sb(R);
    for (int64_t r = r0; r < r1; r++) {
      T p = (T)pp[r];  // position_ids.float(): rounds like torch for |pos| > 2^24
      for (int64_t j = 0; j < half; j++) {
        T a = p * f[j];  // the K=1 "matmul" of HF is one rounded product
        T c = std::cos(a) * sc, s = std::sin(a) * sc;
        cb[j] = cb[j + half] = c;
        sb[j] = sb[j + half] = s;
      }
      store_row(cb.data(), elem_ptr(cos, r * R), cos.dtype(), R, 1);
      store_row(sb.data(), elem_ptr(sin, r * R), sin.dtype(), R, 1);
    }
  });
}

// Validate (x or dy) (B,H,T,D) against cos/sin (B|1,T,R). Returns R.
int64_t check_apply(const Tensor& x, const Tensor& cos, const Tensor& sin, const char* op, const char* xname) {
  check_float(x, op, xname); check_cpu(x, op, xname);
  check_float(cos, op, "cos"); check_cpu(cos, op, "cos");
  check_float(sin, op, "sin"); check_cpu(sin, op, "sin");
  PK_CHECK(x.dim() == 4, op, ": ", xname, " must be 4-d (B,H,T,D), got ", x.desc());
  PK_CHECK(cos.dim() == 3, op, ": cos must be 3-d (B,T,R), got ", cos.desc());
  PK_CHECK(sin.shape() == cos.shape(), op, ": sin ", sin.desc(), " and cos ", cos.desc(), " must have the same shape");
  PK_CHECK(sin.dtype() == cos.dtype(), op, ": sin ", sin.desc(), " and cos ", cos.desc(), " must have the same dtype");
  int64_t B = x.shape()[0], T = x.shape()[2], D = x.shape()[3], R = cos.shape()[2];
  PK_CHECK(cos.shape()[0] == B || cos.shape()[0] == 1, op, ": cos ", cos.desc(), " batch must be 1 or B=", B, " of ",
           xname, " ", x.desc());
  PK_CHECK(cos.shape()[1] == T, op, ": cos ", cos.desc(), " has ", cos.shape()[1], " positions but ", xname, " ",
           x.desc(), " has T=", T, " (x must be (B,H,T,D))");
  PK_CHECK(R % 2 == 0 && R >= 2 && R <= D, op, ": rotary dim R=", R, " (cos ", cos.desc(), ") must be even, >= 2 and <= D=", D,
           " of ", xname, " ", x.desc());
  return R;
}

// Vector path: positions (b, t) split over the pool; per position, cos/sin widened once and the
// kernel rotates all H heads (each head a contiguous run of D, else gathered into one first).
void apply_vec(const rowk::Kernels& k, const Tensor& x, const Tensor& cos, const Tensor& sin, bool backward,
               const Tensor& out) {
  const int64_t B = x.shape()[0], H = x.shape()[1], Tn = x.shape()[2], D = x.shape()[3], R = cos.shape()[2];
  const bool cb1 = cos.shape()[0] == 1;
  const Shape& xs = x.strides(); const Shape& cs = cos.strides(); const Shape& ss = sin.strides();
  const DType xd = x.dtype(), od = out.dtype();
  // one table row of R entries as f32 (vector widening when contiguous)
  auto table_row = [&](const Tensor& tab, int64_t off, int64_t st, float* dst) {
    if (st == 1) k.load(tab.dtype(), elem_ptr(tab, off), dst, R);
    else load_row(elem_ptr(tab, off), tab.dtype(), R, st, dst);
  };
  parallel_for(0, B * Tn, std::max<int64_t>(1, 8192 / (H * D)), [&](int64_t p0, int64_t p1) {
    std::vector<float> cb(R), sb(R);
    std::vector<char> scratch;
    for (int64_t bt = p0; bt < p1; bt++) {
      const int64_t b = bt / Tn, t = bt % Tn, bc = cb1 ? 0 : b;
      table_row(cos, bc * cs[0] + t * cs[1], cs[2], cb.data());
      table_row(sin, bc * ss[0] + t * ss[1], ss[2], sb.data());
      const int64_t x0 = b * xs[0] + t * xs[2], o0 = (b * H * Tn + t) * D;  // head 0 of this position
      if (xs[3] == 1) {
        k.rope(backward, xd, elem_ptr(x, x0), xs[1], H, cb.data(), sb.data(), R, D, od, elem_ptr(out, o0), Tn * D);
      } else {
        for (int64_t h = 0; h < H; h++) {
          const void* xr = contiguous_run(x, x0 + h * xs[1], D, xs[3], scratch);
          k.rope(backward, xd, xr, 0, 1, cb.data(), sb.data(), R, D, od, elem_ptr(out, o0 + h * Tn * D), 0);
        }
      }
    }
  });
}

// backward=false: out = x*cos + rotate_half(x)*sin on the first R lanes; backward=true: its transpose.
template <class T>
Tensor apply(const Tensor& x, const Tensor& cos, const Tensor& sin, bool backward) {
  int64_t B = x.shape()[0], H = x.shape()[1], Tn = x.shape()[2], D = x.shape()[3], R = cos.shape()[2], h2 = R / 2;
  DType od = promote(x.dtype(), cos.dtype());
  Tensor out = Tensor::empty(x.shape(), od);
  if constexpr (std::is_same<T, float>::value) {
    const rowk::Kernels* k = rowk::active_kernels();
    if (k && rowk::vec_dtype(x.dtype()) && rowk::vec_dtype(od)) {
      apply_vec(*k, x, cos, sin, backward, out);
      return out;
    }
  }
  const bool cb1 = cos.shape()[0] == 1;
  const Shape& xs = x.strides(); const Shape& cs = cos.strides(); const Shape& ss = sin.strides();
  int64_t rows = B * Tn * H;
  parallel_for(0, rows, std::max<int64_t>(1, 4096 / D), [&](int64_t r0, int64_t r1) {
    std::vector<T> xb(D), ob(D), cb(R), sb(R);
    int64_t cur_bt = -1;
    for (int64_t r = r0; r < r1; r++) {
      int64_t h = r % H, bt = r / H, t = bt % Tn, b = bt / Tn;
      if (bt != cur_bt) {  // new position: widen its cos/sin rows once for all heads
        int64_t bc = cb1 ? 0 : b;
        load_row(elem_ptr(cos, bc * cs[0] + t * cs[1]), cos.dtype(), R, cs[2], cb.data());
        load_row(elem_ptr(sin, bc * ss[0] + t * ss[1]), sin.dtype(), R, ss[2], sb.data());
        cur_bt = bt;
      }
      load_row(elem_ptr(x, b * xs[0] + h * xs[1] + t * xs[2]), x.dtype(), D, xs[3], xb.data());
      if (!backward) {
        // rotate_half(x)_j = -x_(j+R/2) for j < R/2, x_(j-R/2) otherwise
        for (int64_t j = 0; j < h2; j++)
          ob[j] = round_to(xb[j] * cb[j], od) + round_to(-xb[j + h2] * sb[j], od);
        for (int64_t j = h2; j < R; j++)
          ob[j] = round_to(xb[j] * cb[j], od) + round_to(xb[j - h2] * sb[j], od);
      } else {
        // transpose: lane j receives cos_j dy_j plus the lane it was rotated into, times that lane's sin
        for (int64_t j = 0; j < h2; j++)
          ob[j] = round_to(xb[j] * cb[j], od) + round_to(xb[j + h2] * sb[j + h2], od);
        for (int64_t j = h2; j < R; j++)
          ob[j] = round_to(xb[j] * cb[j], od) - round_to(xb[j - h2] * sb[j - h2], od);
      }
      for (int64_t j = R; j < D; j++) ob[j] = xb[j];  // pass-through lanes
      store_row(ob.data(), elem_ptr(out, ((b * H + h) * Tn + t) * D), od, D, 1);
    }
  });
  return out;
}

}  // namespace

void rope_tables(const Tensor& positions, const Tensor& inv_freq, double attention_scaling, DType dtype,
                 Tensor* cos, Tensor* sin) {
  if (any_cuda(positions, inv_freq)) { cuda_fn(&CudaOps::rope_tables, "rope_tables")(positions, inv_freq, attention_scaling, dtype, cos, sin); return; }
  const char* op = "rope_tables";
  check_cpu(positions, op, "positions");
  PK_CHECK(positions.dtype() == DType::I64 || positions.dtype() == DType::I32, op,
           ": positions must be an i64 or i32 tensor, got ", positions.desc());
  PK_CHECK(positions.dim() == 2, op, ": positions must be 2-d (B,T), got ", positions.desc());
  check_float(inv_freq, op, "inv_freq"); check_cpu(inv_freq, op, "inv_freq");
  PK_CHECK(inv_freq.dim() == 1 && inv_freq.numel() >= 1, op, ": inv_freq must be 1-d (R/2) and non-empty, got ", inv_freq.desc());
  PK_CHECK(is_float(dtype), op, ": dtype must be a float dtype, got ", dtype_name(dtype));
  PK_CHECK(std::isfinite(attention_scaling), op, ": attention_scaling must be finite, got ", attention_scaling);
  PK_CHECK(cos && sin, op, ": cos and sin outputs are required");
  Tensor pos = positions.to(DType::I64).contiguous();
  Shape os{positions.shape()[0], positions.shape()[1], 2 * inv_freq.numel()};
  Tensor c = Tensor::empty(os, dtype), s = Tensor::empty(os, dtype);
  // HF forces f32 for the tables whatever the model dtype; f64 only on request (gradient checks)
  if (inv_freq.dtype() == DType::F64) tables<double>(pos, inv_freq, attention_scaling, c, s);
  else tables<float>(pos, inv_freq, attention_scaling, c, s);
  *cos = c; *sin = s;
}

Tensor rope_forward(const Tensor& x, const Tensor& cos, const Tensor& sin) {
  if (any_cuda(x, cos, sin)) return cuda_fn(&CudaOps::rope_forward, "rope")(x, cos, sin);
  check_apply(x, cos, sin, "rope", "x");
  return dispatch_fp(compute_dtype(promote(x.dtype(), cos.dtype())), [&](auto tag) { return apply<decltype(tag)>(x, cos, sin, false); });
}

Tensor rope_backward(const Tensor& dy, const Tensor& cos, const Tensor& sin) {
  if (any_cuda(dy, cos, sin)) return cuda_fn(&CudaOps::rope_backward, "rope_backward")(dy, cos, sin);
  check_apply(dy, cos, sin, "rope_backward", "dy");
  return dispatch_fp(compute_dtype(promote(dy.dtype(), cos.dtype())), [&](auto tag) { return apply<decltype(tag)>(dy, cos, sin, true); });
}

}  // namespace pk
