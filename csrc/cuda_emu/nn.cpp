// nn.cpp (emulator) — the CudaOps entries of norm.cu, rope.cu, embedding.cu, index.cu, random.cu,
// softmax.cu, cross_entropy.cu and attention.cu: each file's device rules (which arguments must be
// cuda tensors, which may stay on the host, where 0-d CPU scalars are accepted), then the CPU twin.
// add_rms_norm_forward has no CPU twin: it is composed from the CPU add and rms_norm.
#include <cmath>
#include "cpu/attention.h"
#include "cpu/cpu_common.h"
#include "cpu/cross_entropy.h"
#include "cpu/elementwise.h"
#include "cpu/embedding.h"
#include "cpu/index.h"
#include "cpu/norm.h"
#include "cpu/random.h"
#include "cpu/rope.h"
#include "cpu/softmax.h"
#include "emu.h"

namespace pk {
namespace cuda {

using emu::emu_call;

namespace {

// norm.cu / rope.cu / index.cu order: floating first, then on cuda.
void float_cuda(const Tensor& t, const char* op, const char* arg) {
  check_float(t, op, arg);
  check_cuda(t, op, arg);
}
void float_cuda_if(const Tensor& t, const char* op, const char* arg) {
  if (t.defined()) float_cuda(t, op, arg);
}

// ---- norms (norm.cu: x, parameters, statistics and dy all on cuda) ----
Tensor rms_norm_forward_emu(const Tensor& x, const Tensor& w, double eps, bool unit_offset, Tensor* rstd) {
  float_cuda(x, "rms_norm", "x"); float_cuda_if(w, "rms_norm", "weight");
  return emu_call(pk::rms_norm_forward, x, w, eps, unit_offset, rstd);
}

// sum = x + residual (rounded to x's dtype, as norm.cu's fused kernel), y = rms_norm(sum).
Tensor add_rms_norm_forward_emu(const Tensor& x, const Tensor& residual, const Tensor& w, double eps, bool unit_offset,
                                Tensor* sum, Tensor* rstd) {
  const char* op = "add_rms_norm";
  check_defined(residual, op, "residual");
  float_cuda(x, op, "x");
  PK_CHECK(x.dim() >= 1, op, ": x must have at least 1 dim (..., C), got ", x.desc());
  PK_CHECK(x.shape().back() >= 1, op, ": x has an empty normalised dim: ", x.desc());
  if (w.defined()) {
    float_cuda(w, op, "weight");
    PK_CHECK(w.dim() == 1 && w.shape()[0] == x.shape().back(), op, ": weight ", w.desc(), " must be 1-d of size C=",
             x.shape().back(), " (the last dim of x ", x.desc(), ")");
  }
  PK_CHECK(eps >= 0 && std::isfinite(eps), op, ": eps must be finite and >= 0, got ", eps);
  check_cuda(residual, op, "residual");
  PK_CHECK(residual.shape() == x.shape() && residual.dtype() == x.dtype(), op, ": residual ", residual.desc(),
           " must match x ", x.desc());
  Tensor h = emu_call(pk::binary_forward, BinaryOp::Add, x, residual);   // same dtype in and out
  Tensor y = emu_call(pk::rms_norm_forward, h, w, eps, unit_offset, rstd);
  if (sum) *sum = h;
  return y;
}

void rms_norm_backward_emu(const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dy, bool unit_offset, Tensor* dx,
                           Tensor* dw) {
  const char* op = "rms_norm_backward";
  float_cuda(x, op, "x"); float_cuda_if(w, op, "weight"); float_cuda(rstd, op, "rstd"); float_cuda(dy, op, "dy");
  emu_call(pk::rms_norm_backward, x, w, rstd, dy, unit_offset, dx, dw);
}

Tensor layer_norm_forward_emu(const Tensor& x, const Tensor& w, const Tensor& b, double eps, Tensor* mean, Tensor* rstd) {
  float_cuda(x, "layer_norm", "x"); float_cuda_if(w, "layer_norm", "weight"); float_cuda_if(b, "layer_norm", "bias");
  return emu_call(pk::layer_norm_forward, x, w, b, eps, mean, rstd);
}

void layer_norm_backward_emu(const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd, const Tensor& dy, Tensor* dx,
                             Tensor* dw, Tensor* db) {
  const char* op = "layer_norm_backward";
  float_cuda(x, op, "x"); float_cuda_if(w, op, "weight"); float_cuda(mean, op, "mean"); float_cuda(rstd, op, "rstd");
  float_cuda(dy, op, "dy");
  emu_call(pk::layer_norm_backward, x, w, mean, rstd, dy, dx, dw, db);
}

// ---- rope (rope.cu: x/dy, cos, sin on cuda; positions on cuda, inv_freq anywhere) ----
Tensor rope_forward_emu(const Tensor& x, const Tensor& cos, const Tensor& sin) {
  float_cuda(x, "rope", "x"); float_cuda(cos, "rope", "cos"); float_cuda(sin, "rope", "sin");
  return emu_call(pk::rope_forward, x, cos, sin);
}
Tensor rope_backward_emu(const Tensor& dy, const Tensor& cos, const Tensor& sin) {
  const char* op = "rope_backward";
  float_cuda(dy, op, "dy"); float_cuda(cos, op, "cos"); float_cuda(sin, op, "sin");
  return emu_call(pk::rope_backward, dy, cos, sin);
}
void rope_tables_emu(const Tensor& positions, const Tensor& inv_freq, double attention_scaling, DType dtype, Tensor* cos, Tensor* sin) {
  check_cuda(positions, "rope_tables", "positions");
  emu_call(pk::rope_tables, positions, inv_freq, attention_scaling, dtype, cos, sin);
}

// ---- embedding (embedding.cu: weight / dy on cuda, ids anywhere) ----
Tensor embedding_forward_emu(const Tensor& weight, const Tensor& ids) {
  check_cuda(weight, "embedding", "weight");
  return emu_call(pk::embedding_forward, weight, ids);
}
Tensor embedding_backward_emu(const Tensor& dy, const Tensor& ids, int64_t V) {
  float_cuda(dy, "embedding_backward", "dy");
  return emu_call(pk::embedding_backward, dy, ids, V);
}

// ---- index (index.cu: data on cuda, indices anywhere; compare/where take 0-d CPU scalars) ----
Tensor gather_emu(const Tensor& x, int64_t dim, const Tensor& idx) {
  check_cuda(x, "gather", "x");
  return emu_call(pk::gather, x, dim, idx);
}
Tensor index_select_emu(const Tensor& x, int64_t dim, const Tensor& idx) {
  check_cuda(x, "index_select", "x");
  return emu_call(pk::index_select, x, dim, idx);
}
Tensor scatter_add_emu(const Shape& shape, int64_t dim, const Tensor& idx, const Tensor& src) {
  float_cuda(src, "scatter_add", "src");
  return emu_call(pk::scatter_add, shape, dim, idx, src);
}
Tensor index_add_emu(const Shape& shape, int64_t dim, const Tensor& idx, const Tensor& src) {
  float_cuda(src, "index_add", "src");
  return emu_call(pk::index_add, shape, dim, idx, src);
}
Tensor cat_emu(const std::vector<Tensor>& xs, int64_t dim) {
  PK_CHECK(!xs.empty(), "cat: needs at least one tensor");
  check_cuda(xs[0], "cat", "tensors[0]");
  for (const Tensor& t : xs) check_cuda(t, "cat", "tensors[i]");
  return emu_call(pk::cat, xs, dim);
}
Tensor compare_emu(CompareOp op, const Tensor& a, const Tensor& b) {
  return emu_call(pk::compare, op, on_cuda(a, "compare", "a"), on_cuda(b, "compare", "b"));
}
Tensor where_emu(const Tensor& cond, const Tensor& a, const Tensor& b) {
  check_dtype(cond, DType::U8, "where", "cond");
  return emu_call(pk::where, on_cuda(cond, "where", "cond"), on_cuda(a, "where", "a"), on_cuda(b, "where", "b"));
}
Tensor masked_fill_emu(const Tensor& x, const Tensor& mask, double value) {
  check_dtype(mask, DType::U8, "masked_fill", "mask");
  float_cuda(x, "masked_fill", "x");
  // index.cu runs it as where(mask, value, x): the mask goes through where's rule
  return emu_call(pk::masked_fill, x, on_cuda(mask, "where", "cond"), value);
}

// ---- random (random.cu) ----
Tensor rand_uniform_emu(const Shape& shape, uint64_t seed, DType dt, double lo, double hi) {
  ensure_available("rand");
  return emu_call(pk::rand_uniform, shape, seed, dt, lo, hi);
}
Tensor rand_normal_emu(const Shape& shape, uint64_t seed, DType dt, double mean, double stddev) {
  ensure_available("randn");
  return emu_call(pk::rand_normal, shape, seed, dt, mean, stddev);
}
Tensor dropout_forward_emu(const Tensor& x, double p, uint64_t seed, Tensor* mask) {
  float_cuda(x, "dropout", "x");
  PK_CHECK(mask, "dropout: a mask output is required");
  return emu_call(pk::dropout_forward, x, p, seed, mask);
}
Tensor dropout_backward_emu(const Tensor& dy, const Tensor& mask, double p) {
  check_float(dy, "dropout_backward", "grad"); check_dtype(mask, DType::U8, "dropout_backward", "mask");
  check_cuda(dy, "dropout_backward", "grad"); check_cuda(mask, "dropout_backward", "mask");
  return emu_call(pk::dropout_backward, dy, mask, p);
}

// ---- softmax (softmax.cu: 0-d CPU scalars accepted) ----
Tensor softmax_forward_emu(const Tensor& x, int64_t dim) { return emu_call(pk::softmax_forward, on_cuda(x, "softmax", "x"), dim); }
Tensor log_softmax_forward_emu(const Tensor& x, int64_t dim) {
  return emu_call(pk::log_softmax_forward, on_cuda(x, "log_softmax", "x"), dim);
}
Tensor softmax_backward_emu(const Tensor& y, const Tensor& dy, int64_t dim) {
  const char* op = "softmax_backward";
  return emu_call(pk::softmax_backward, on_cuda(y, op, "y"), on_cuda(dy, op, "dy"), dim);
}
Tensor log_softmax_backward_emu(const Tensor& y, const Tensor& dy, int64_t dim) {
  const char* op = "log_softmax_backward";
  return emu_call(pk::log_softmax_backward, on_cuda(y, op, "y"), on_cuda(dy, op, "dy"), dim);
}

// ---- cross-entropy (cross_entropy.cu: logits on cuda or 0-d; labels, lse and dloss anywhere) ----
Tensor cross_entropy_forward_emu(const Tensor& logits, const Tensor& labels, int64_t ignore_index, double normalizer, Tensor* lse) {
  PK_CHECK(!std::isnan(normalizer), "cross_entropy: normalizer is NaN");
  return emu_call(pk::cross_entropy_forward, on_cuda(logits, "cross_entropy", "logits"), labels, ignore_index, normalizer, lse);
}
Tensor cross_entropy_backward_emu(const Tensor& logits, const Tensor& labels, const Tensor& lse, const Tensor& dloss,
                                  int64_t ignore_index, double normalizer) {
  const char* op = "cross_entropy_backward";
  PK_CHECK(!std::isnan(normalizer), op, ": normalizer is NaN");
  return emu_call(pk::cross_entropy_backward, on_cuda(logits, op, "logits"), labels, lse, dloss, ignore_index, normalizer);
}

// ---- attention (attention.cu: q, k, v, out, dout, lse on cuda; key_mask and segment_ids anywhere) ----
Tensor attention_forward_emu(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_mask, bool causal,
                             int64_t window, double scale, Tensor* lse, double softcap, const Tensor& segment_ids) {
  const char* op = "attention_forward";
  check_cuda(q, op, "q"); check_cuda(k, op, "k"); check_cuda(v, op, "v");
  return emu_call(pk::attention_forward, q, k, v, key_mask, causal, window, scale, lse, softcap, segment_ids);
}
void attention_backward_emu(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& key_mask, const Tensor& out,
                            const Tensor& lse, const Tensor& dout, bool causal, int64_t window, double scale, Tensor* dq,
                            Tensor* dk, Tensor* dv, double softcap, const Tensor& segment_ids) {
  const char* op = "attention_backward";
  check_cuda(q, op, "q"); check_cuda(k, op, "k"); check_cuda(v, op, "v");
  float_cuda(out, op, "out"); float_cuda(dout, op, "dout"); float_cuda(lse, op, "lse");
  emu_call(pk::attention_backward, q, k, v, key_mask, out, lse, dout, causal, window, scale, dq, dk, dv, softcap, segment_ids);
}

struct Registrar {
  Registrar() {
    CudaOps& o = cuda_ops();
    o.rms_norm_forward = rms_norm_forward_emu;
    o.rms_norm_backward = rms_norm_backward_emu;
    o.add_rms_norm_forward = add_rms_norm_forward_emu;
    o.layer_norm_forward = layer_norm_forward_emu;
    o.layer_norm_backward = layer_norm_backward_emu;
    o.rope_tables = rope_tables_emu;
    o.rope_forward = rope_forward_emu;
    o.rope_backward = rope_backward_emu;
    o.embedding_forward = embedding_forward_emu;
    o.embedding_backward = embedding_backward_emu;
    o.gather = gather_emu;
    o.scatter_add = scatter_add_emu;
    o.index_select = index_select_emu;
    o.index_add = index_add_emu;
    o.cat = cat_emu;
    o.compare = compare_emu;
    o.where = where_emu;
    o.masked_fill = masked_fill_emu;
    o.rand_uniform = rand_uniform_emu;
    o.rand_normal = rand_normal_emu;
    o.dropout_forward = dropout_forward_emu;
    o.dropout_backward = dropout_backward_emu;
    o.softmax_forward = softmax_forward_emu;
    o.softmax_backward = softmax_backward_emu;
    o.log_softmax_forward = log_softmax_forward_emu;
    o.log_softmax_backward = log_softmax_backward_emu;
    o.cross_entropy_forward = cross_entropy_forward_emu;
    o.cross_entropy_backward = cross_entropy_backward_emu;
    o.attention_forward = attention_forward_emu;
    o.attention_backward = attention_backward_emu;
  }
};
Registrar registrar;

}  // namespace
}  // namespace cuda
}  // namespace pk
