// cross_entropy.cpp — CPU fused cross-entropy with a chunked online log-sum-exp.
//
// Work item = (row i, vocab chunk k). Forward items produce a (max, sum exp(x - max)) pair per
// chunk; a second pass merges each row's pairs in chunk order into lse_i. Backward items write
// their chunk of (softmax - onehot) * scale directly into the output dtype. Each worker widens at
// most kVocabChunk logits at a time into a private buffer (that is the only f32 copy ever made).
//
// f32/bf16/f16 logits run on the vector row kernels (row_kernels.h) when the CPU has them: a chunk
// is read in place (no widened copy), its exps come from the vector exp (<= 1 ulp from std::exp)
// and are summed in a fixed vector order (f32 within blocks of 256, f64 across them; ~1e-7
// relative to the scalar f64 sum).
#include <type_traits>

#include "cross_entropy.h"
#include "cpu_common.h"
#include "row_io.h"
#include "row_kernels.h"
#include "core/dispatch.h"

namespace pk {

namespace {


constexpr int64_t kVocabChunk = 4096;

// sum_j exp(x_j - m) in f64. The exps are written back first (a tight loop of libm calls), then
// summed with four independent accumulators so the f64 adds do not form one long latency chain.
template <class T> double sum_exp(T* x, int64_t n, T m) {
  for (int64_t j = 0; j < n; j++) x[j] = std::exp(x[j] - m);
  double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) { a0 += x[j]; a1 += x[j + 1]; a2 += x[j + 2]; a3 += x[j + 3]; }
  for (; j < n; j++) a0 += x[j];
  return (a0 + a1) + (a2 + a3);
}

struct Prepared {
  Tensor lab;          // labels as contiguous i64
  int64_t N = 0, V = 0, K = 0, count = 0;
};

Prepared prepare(const Tensor& logits, const Tensor& labels, int64_t ignore_index, const char* op) {
  check_float(logits, op, "logits"); check_cpu(logits, op, "logits");
  PK_CHECK(logits.dim() >= 1, op, ": logits must be (..., V), got ", logits.desc());
  check_cpu(labels, op, "labels");
  PK_CHECK(labels.dtype() == DType::I64 || labels.dtype() == DType::I32, op, ": labels must be an i64 or i32 tensor, got ",
           labels.desc());
  Shape lead(logits.shape().begin(), logits.shape().end() - 1);
  PK_CHECK(labels.shape() == lead, op, ": labels ", labels.desc(), " must have the shape of logits ", logits.desc(),
           " without its last (vocabulary) dim, i.e. ", shape_str(lead));
  Prepared p;
  p.V = logits.shape().back();
  PK_CHECK(p.V >= 1, op, ": empty vocabulary in logits ", logits.desc());
  p.lab = labels.to(DType::I64).contiguous();
  p.N = p.lab.numel();
  p.K = (p.V + kVocabChunk - 1) / kVocabChunk;
  const int64_t* l = p.lab.data<int64_t>();
  for (int64_t i = 0; i < p.N; i++) {
    if (l[i] == ignore_index) continue;
    PK_CHECK(l[i] >= 0 && l[i] < p.V, op, ": label ", l[i], " at position ", i, " of labels ", labels.desc(),
             " is out of range [0, V=", p.V, ") and is not ignore_index (", ignore_index, ")");
    p.count++;
  }
  return p;
}

double resolve_normalizer(double normalizer, int64_t count) { return normalizer > 0 ? normalizer : (double)count; }

// The vector kernels for these logits, or nullptr (f64 logits, no vector ISA): scalar loops.
const rowk::Kernels* ce_kernels(const Tensor& logits) {
  return rowk::vec_dtype(logits.dtype()) ? rowk::active_kernels() : nullptr;
}

template <class T>
Tensor ce_forward(const Tensor& logits, const Prepared& p, int64_t ignore_index, double normalizer, Tensor* lse_out) {
  const int64_t N = p.N, V = p.V, K = p.K, last = logits.dim() - 1, sv = logits.strides()[last];
  const int64_t* lab = p.lab.data<int64_t>();
  DType cd = compute_dtype(logits.dtype());
  std::vector<T> pm((size_t)(N * K));
  std::vector<double> ps((size_t)(N * K));
  // pass 1: per (row, chunk) max and sum of exp(x - max)
  const rowk::Kernels* vk = std::is_same<T, float>::value ? ce_kernels(logits) : nullptr;
  if (vk) parallel_for(0, N * K, 4, [&](int64_t t0, int64_t t1) {
    std::vector<char> scratch;
    for (int64_t t = t0; t < t1; t++) {
      int64_t i = t / K, k = t % K;
      if (lab[i] == ignore_index) continue;
      int64_t c0 = k * kVocabChunk, n = std::min(V, c0 + kVocabChunk) - c0;
      const void* x = contiguous_run(logits, row_offset(i, logits, last) + c0 * sv, n, sv, scratch);
      const float m = vk->row_max(logits.dtype(), x, n);
      pm[t] = (T)m; ps[t] = m == -INFINITY ? 0.0 : vk->sum_exp(logits.dtype(), x, n, m);
    }
  });
  else parallel_for(0, N * K, 4, [&](int64_t t0, int64_t t1) {
    std::vector<T> buf(kVocabChunk);
    for (int64_t t = t0; t < t1; t++) {
      int64_t i = t / K, k = t % K;
      if (lab[i] == ignore_index) continue;
      int64_t c0 = k * kVocabChunk, n = std::min(V, c0 + kVocabChunk) - c0;
      load_row(elem_ptr(logits, row_offset(i, logits, last) + c0 * sv), logits.dtype(), n, sv, buf.data());
      T m = -INFINITY;
      for (int64_t j = 0; j < n; j++) if (buf[j] > m || buf[j] != buf[j]) { m = buf[j]; if (m != m) break; }
      pm[t] = m; ps[t] = m == -INFINITY ? 0.0 : sum_exp(buf.data(), n, m);
    }
  });
  // pass 2: merge each row's chunks in order (online logsumexp), then the per-row loss
  Tensor lse = Tensor::zeros(Shape(logits.shape().begin(), logits.shape().end() - 1), cd);
  T* pl = lse.data<T>();
  std::vector<double> row_loss((size_t)N, 0.0);
  parallel_for(0, N, 64, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; i++) {
      if (lab[i] == ignore_index) continue;
      double M = -INFINITY, S = 0;
      for (int64_t k = 0; k < K; k++) {
        double m = pm[i * K + k], s = ps[i * K + k];
        if (m == -INFINITY) continue;                       // chunk of all -inf: contributes nothing
        if (M == -INFINITY) { M = m; S = s; }
        else if (m > M) { S = S * std::exp(M - m) + s; M = m; }
        else S += s * std::exp(m - M);                      // NaN in m or M lands here and sticks
      }
      T l = (T)(M + std::log(S));
      pl[i] = l;
      T target;
      load_row(elem_ptr(logits, row_offset(i, logits, last) + lab[i] * sv), logits.dtype(), 1, 1, &target);
      row_loss[i] = (double)l - (double)target;
    }
  });
  double total = 0;
  for (int64_t i = 0; i < N; i++) total += row_loss[i];  // ignored rows hold 0
  if (lse_out) *lse_out = lse;
  return Tensor::scalar(total / resolve_normalizer(normalizer, p.count), cd);
}

template <class T>
Tensor ce_backward(const Tensor& logits, const Prepared& p, const Tensor& lse, double dloss, int64_t ignore_index,
                   double normalizer) {
  const int64_t N = p.N, V = p.V, K = p.K, last = logits.dim() - 1, sv = logits.strides()[last];
  const int64_t* lab = p.lab.data<int64_t>();
  Tensor lse_c = lse.to(compute_dtype(logits.dtype())).contiguous();
  const T* pl = lse_c.data<T>();
  Tensor out = Tensor::empty(logits.shape(), logits.dtype());
  // no non-ignored label: every row is zero and the scale (x/0) is never used
  const T g = (T)(p.count ? dloss / resolve_normalizer(normalizer, p.count) : 0.0);
  const rowk::Kernels* vk = std::is_same<T, float>::value ? ce_kernels(logits) : nullptr;
  parallel_for(0, N * K, 4, [&](int64_t t0, int64_t t1) {
    std::vector<T> buf(vk ? 0 : kVocabChunk);
    std::vector<char> scratch;
    for (int64_t t = t0; t < t1; t++) {
      int64_t i = t / K, k = t % K;
      int64_t c0 = k * kVocabChunk, n = std::min(V, c0 + kVocabChunk) - c0;
      char* dst = elem_ptr(out, i * V + c0);
      if (lab[i] == ignore_index) {
        std::memset(dst, 0, (size_t)n * dtype_size(out.dtype()));  // +0.0 in every float format
        continue;
      }
      if (vk) {
        const void* x = contiguous_run(logits, row_offset(i, logits, last) + c0 * sv, n, sv, scratch);
        vk->ce_grad(logits.dtype(), x, n, (float)pl[i], (float)g, lab[i] - c0, dst);
        continue;
      }
      load_row(elem_ptr(logits, row_offset(i, logits, last) + c0 * sv), logits.dtype(), n, sv, buf.data());
      const T l = pl[i];
      for (int64_t j = 0; j < n; j++) buf[j] = std::exp(buf[j] - l) * g;
      int64_t y = lab[i] - c0;
      if (y >= 0 && y < n) buf[y] -= g;
      store_row(buf.data(), dst, out.dtype(), n, 1);
    }
  });
  return out;
}

}  // namespace

Tensor cross_entropy_forward(const Tensor& logits, const Tensor& labels, int64_t ignore_index, double normalizer,
                             Tensor* lse) {
  if (any_cuda(logits, labels)) return cuda_fn(&CudaOps::cross_entropy_forward, "cross_entropy")(logits, labels, ignore_index, normalizer, lse);
  const char* op = "cross_entropy";
  PK_CHECK(!std::isnan(normalizer), op, ": normalizer is NaN");
  Prepared p = prepare(logits, labels, ignore_index, op);
  return dispatch_fp(compute_dtype(logits.dtype()), [&](auto tag) {
    return ce_forward<decltype(tag)>(logits, p, ignore_index, normalizer, lse);
  });
}

Tensor cross_entropy_backward(const Tensor& logits, const Tensor& labels, const Tensor& lse, const Tensor& dloss,
                              int64_t ignore_index, double normalizer) {
  if (any_cuda(logits, labels, lse, dloss)) return cuda_fn(&CudaOps::cross_entropy_backward, "cross_entropy_backward")(logits, labels, lse, dloss, ignore_index, normalizer);
  const char* op = "cross_entropy_backward";
  PK_CHECK(!std::isnan(normalizer), op, ": normalizer is NaN");
  Prepared p = prepare(logits, labels, ignore_index, op);
  check_float(lse, op, "lse"); check_cpu(lse, op, "lse");
  PK_CHECK(lse.shape() == labels.shape(), op, ": lse ", lse.desc(), " must have the shape of labels ", labels.desc());
  check_float(dloss, op, "dloss"); check_cpu(dloss, op, "dloss");
  PK_CHECK(dloss.numel() == 1, op, ": dloss must be a scalar (the loss gradient), got ", dloss.desc());
  double g = load_as_double(dloss.raw(), dloss.dtype());
  return dispatch_fp(compute_dtype(logits.dtype()), [&](auto tag) {
    return ce_backward<decltype(tag)>(logits, p, lse, g, ignore_index, normalizer);
  });
}

}  // namespace pk
