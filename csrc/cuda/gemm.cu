// gemm.cu — matmul / linear / linear_weight_grad on the GPU through cuBLASLt.
//
// Row-major tensors meet column-major cuBLAS by computing Dᵀ = Bᵀ·Aᵀ: no copies. Each operand
// is used in place when its matrix dims have a unit stride (either one: a transposed view is just
// the other cuBLAS op) and its batch dims collapse to a single stride (stride 0 = broadcast);
// otherwise it is made contiguous first. A 2-d right operand shared by the whole batch folds the
// batch into M (one big GEMM). bf16/f16/f32 operands accumulate in f32 (f32 is strict f32 unless
// PEFTKIT_CUDA_TF32=1), f64 in f64. linear fuses the bias into the cuBLASLt epilogue and
// linear_weight_grad accumulates into an f32 gradient with beta = 1.
//
// Without <cublasLt.h> the file still compiles (PEFTKIT_CUDA_WITHOUT_CUBLASLT builds): every entry
// point then validates its arguments and throws "this build has no cuBLASLt". Builds that must have
// it define PEFTKIT_REQUIRE_CUBLASLT (the real backend when CMake found cuBLASLt, and the CI compile
// check, which compiles this code against csrc/cuda/compile_check/cublasLt.h, a declarations-only
// stand-in, when the toolkit has no cuBLAS).
#if defined(__has_include)
#if __has_include(<cublasLt.h>)
#include <cublasLt.h>
#define PK_HAVE_CUBLASLT 1
#endif
#endif
#if defined(PEFTKIT_REQUIRE_CUBLASLT) && !defined(PK_HAVE_CUBLASLT)
#error "gemm.cu: <cublasLt.h> not found although this build requires cuBLASLt (PEFTKIT_REQUIRE_CUBLASLT)"
#endif

#include <climits>
#include <cstdlib>
#include <map>
#include <mutex>
#include <vector>
#include "common.cuh"
#include "cpu/cpu_common.h"
#include "ops.h"

namespace pk {
namespace cuda {

namespace {

DType result_dtype(DType a, DType b, const char* op) {
  PK_CHECK((a == DType::F64) == (b == DType::F64), op, ": f64 operands must both be f64 (got ", dtype_name(a), " and ",
           dtype_name(b), ")");
  if (a == b) return a;
  return DType::F32;
}

bool gemm_dtype(DType d) { return d == DType::F32 || d == DType::BF16 || d == DType::F16 || d == DType::F64; }

// One GEMM operand: a (batch..., R, C) view used in place, or a contiguous copy of it.
struct Operand {
  Tensor t;                 // keeps the memory alive
  const char* ptr = nullptr;
  DType dt = DType::F32;
  bool row_major = true;    // unit stride along C (else along R)
  int64_t ld = 1;           // leading dimension (elements)
  int64_t bstride = 0;      // batch stride (elements)
};

// Single stride over the batch dims of t (first nb dims), or false when they do not collapse.
bool batch_stride(const Tensor& t, int64_t nb, int64_t* out) {
  int64_t stride = 0, inner_extent = -1;
  bool first = true;
  for (int64_t d = nb - 1; d >= 0; d--) {
    int64_t sz = t.shape()[d], st = t.strides()[d];
    if (sz == 1) continue;
    if (first) { stride = st; inner_extent = st * sz; first = false; continue; }
    if (st != inner_extent) return false;
    inner_extent = st * sz;
  }
  *out = stride;
  return true;
}

bool matrix_layout(int64_t R, int64_t C, int64_t rs, int64_t cs, bool* row_major, int64_t* ld) {
  if ((cs == 1 || C == 1) && (R == 1 || rs >= std::max<int64_t>(C, 1))) {
    *row_major = true;
    *ld = R == 1 ? std::max<int64_t>(C, 1) : rs;
    return true;
  }
  if ((rs == 1 || R == 1) && (C == 1 || cs >= std::max<int64_t>(R, 1))) {
    *row_major = false;
    *ld = C == 1 ? std::max<int64_t>(R, 1) : cs;
    return true;
  }
  return false;
}

Operand prepare(const Tensor& t, int64_t nb) {
  Operand o;
  int64_t nd = t.dim();
  int64_t R = t.shape()[nd - 2], C = t.shape()[nd - 1];
  bool rm;
  int64_t ld, bs;
  if (matrix_layout(R, C, t.strides()[nd - 2], t.strides()[nd - 1], &rm, &ld) && batch_stride(t, nb, &bs)) {
    o.t = t;
    o.row_major = rm;
    o.ld = ld;
    o.bstride = bs;
  } else {
    o.t = cuda::contiguous(t);
    o.row_major = true;
    o.ld = std::max<int64_t>(C, 1);
    o.bstride = R * C;
  }
  o.ptr = (const char*)o.t.raw();
  o.dt = t.dtype();
  return o;
}

struct Problem {
  Operand A, B;             // A (M,K), B (K,N), per batch
  int64_t M = 0, N = 0, K = 0, batch = 1;
  void* D = nullptr;        // (batch, M, N) contiguous
  DType d_dt = DType::F32;
  double beta = 0.0;        // D = A·B + beta·D
  const void* bias = nullptr;   // (N) in d_dt, added by the epilogue
};

#ifdef PK_HAVE_CUBLASLT

#define PK_CUBLAS_CHECK(call)                                                                                \
  do {                                                                                                       \
    cublasStatus_t pk_st_ = (call);                                                                          \
    if (pk_st_ != CUBLAS_STATUS_SUCCESS)                                                                     \
      ::pk::fail("cuBLASLt error: ", #call, " failed: ", cublasLtGetStatusName(pk_st_), " (",               \
                 cublasLtGetStatusString(pk_st_), ") at gemm.cu:", __LINE__);                               \
  } while (0)

// 32 MiB: NVIDIA's recommended cuBLASLt workspace for Hopper (smaller GPUs need less; the
// heuristic reports what the chosen algorithm uses and never more than this).
constexpr size_t kWorkspaceBytes = size_t(32) << 20;

// *SetAttribute checks only sizeInBytes, so payload widths are asserted here (cublasLt.h:
// TRANSA/TRANSB int32_t, EPILOGUE uint32_t, BIAS_DATA_TYPE int32_t; set_batch passes an int32_t
// BATCH_COUNT and an int64_t STRIDED_BATCH_OFFSET; the preferences take uint64_t / uint32_t).
static_assert(sizeof(cublasOperation_t) == sizeof(int32_t) && sizeof(cublasLtEpilogue_t) == sizeof(uint32_t) &&
                  sizeof(cudaDataType_t) == sizeof(int32_t),
              "cuBLASLt enum attributes are 32-bit payloads");

// cuBLASLt's alignment preferences cover A/B/C/D but not the epilogue's bias vector, so the
// heuristic may pick a kernel that assumes a 16-byte aligned bias; a bias view that is not (a slice
// of a larger buffer) then faults with "misaligned address" (reported in pytorch/pytorch#194497,
// sm_75 + CUDA 13.3). linear fuses only 16-byte aligned biases and adds the others separately.
constexpr unsigned kBiasAlign = 16;

struct Lt {
  cublasLtHandle_t handle = nullptr;
  Tensor* workspace = nullptr;                                  // leaked: outlives static destructors
  std::mutex mu;
  std::map<std::vector<int64_t>, std::pair<cublasLtMatmulAlgo_t, size_t>> algos;
};
Lt& lt() {
  static Lt* l = new Lt();
  static std::once_flag once;
  std::call_once(once, [] {
    ensure_available("matmul");
    PK_CUBLAS_CHECK(cublasLtCreate(&l->handle));
    l->workspace = new Tensor(Tensor::empty({(int64_t)kWorkspaceBytes}, DType::U8, Device::CUDA));
  });
  return *l;
}

cudaDataType_t cuda_type(DType d) {
  switch (d) {
    case DType::F32: return CUDA_R_32F;
    case DType::BF16: return CUDA_R_16BF;
    case DType::F16: return CUDA_R_16F;
    case DType::F64: return CUDA_R_64F;
    default: fail("matmul: dtype ", dtype_name(d), " has no cuBLASLt type");
  }
}

unsigned alignment(const void* p, int64_t ld, int64_t bstride, int64_t batch, size_t es) {
  unsigned a = ptr_alignment(p);
  auto low = [](uint64_t v) -> unsigned { unsigned r = 1; while (r < 256 && v % (r * 2) == 0) r *= 2; return r; };
  a = std::min(a, low((uint64_t)ld * es));
  if (batch > 1 && bstride) a = std::min(a, low((uint64_t)bstride * es));
  return a;
}

struct Layouts {
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~Layouts() {
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (desc) cublasLtMatmulDescDestroy(desc);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (c) cublasLtMatrixLayoutDestroy(c);
  }
};

void set_batch(cublasLtMatrixLayout_t l, int64_t batch, int64_t stride) {
  if (batch <= 1) return;
  int32_t count = (int32_t)batch;
  PK_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
  PK_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
}

// Returns false (no work done) when cuBLASLt has no algorithm for this problem; *why gets the
// heuristic's status (CUBLAS_STATUS_SUCCESS with zero results: none fits the alignments/workspace).
bool run_lt(const Problem& p, cublasStatus_t* why = nullptr) {
  Lt& L = lt();
  // Layout rows/cols are uint64 in the API but "usually only values that can be expressed as
  // int32_t are supported" (cublasLt.h), and the batch count is an int32_t attribute.
  PK_CHECK(p.M <= INT32_MAX && p.N <= INT32_MAX && p.K <= INT32_MAX && p.batch <= INT32_MAX,
           "matmul: cuBLASLt takes at most 2^31-1 rows/columns/batches, got (", p.M, "x", p.K, ") x (", p.K, "x",
           p.N, "), batch ", p.batch);
  bool f64 = p.A.dt == DType::F64;
  const char* tf = std::getenv("PEFTKIT_CUDA_TF32");
  bool tf32 = !f64 && p.A.dt == DType::F32 && p.B.dt == DType::F32 && tf && *tf == '1';
  cublasComputeType_t compute = f64 ? CUBLAS_COMPUTE_64F : (tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F);
  cudaDataType_t scale_t = f64 ? CUDA_R_64F : CUDA_R_32F;
  // cuBLAS "A" (m x k, m = N) is our B; cuBLAS "B" (k x n, n = M) is our A.
  const Operand& ca = p.B;
  const Operand& cb = p.A;
  cublasOperation_t opa = ca.row_major ? CUBLAS_OP_N : CUBLAS_OP_T;
  cublasOperation_t opb = cb.row_major ? CUBLAS_OP_N : CUBLAS_OP_T;
  uint64_t a_rows = ca.row_major ? p.N : p.K, a_cols = ca.row_major ? p.K : p.N;
  uint64_t b_rows = cb.row_major ? p.K : p.M, b_cols = cb.row_major ? p.M : p.K;
  int64_t ldd = p.N, dstride = p.M * p.N;
  unsigned al_a = alignment(ca.ptr, ca.ld, ca.bstride, p.batch, dtype_size(ca.dt));
  unsigned al_b = alignment(cb.ptr, cb.ld, cb.bstride, p.batch, dtype_size(cb.dt));
  unsigned al_d = alignment(p.D, ldd, dstride, p.batch, dtype_size(p.d_dt));
  unsigned al_bias = p.bias ? ptr_alignment(p.bias) : 0;
  int32_t epi = p.bias ? (int32_t)CUBLASLT_EPILOGUE_BIAS : (int32_t)CUBLASLT_EPILOGUE_DEFAULT;

  Layouts l;
  PK_CUBLAS_CHECK(cublasLtMatmulDescCreate(&l.desc, compute, scale_t));
  PK_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(l.desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof(opa)));
  PK_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(l.desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof(opb)));
  if (p.bias) {
    cublasLtEpilogue_t e = CUBLASLT_EPILOGUE_BIAS;
    cudaDataType_t bt = cuda_type(p.d_dt);
    PK_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(l.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &e, sizeof(e)));
    PK_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(l.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &p.bias, sizeof(p.bias)));
    PK_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(l.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)));
  }
  PK_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&l.a, cuda_type(ca.dt), a_rows, a_cols, ca.ld));
  PK_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&l.b, cuda_type(cb.dt), b_rows, b_cols, cb.ld));
  PK_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&l.c, cuda_type(p.d_dt), (uint64_t)p.N, (uint64_t)p.M, ldd));
  set_batch(l.a, p.batch, ca.bstride);
  set_batch(l.b, p.batch, cb.bstride);
  set_batch(l.c, p.batch, dstride);

  std::vector<int64_t> key{(int64_t)compute, (int64_t)ca.dt, (int64_t)cb.dt, (int64_t)p.d_dt, opa, opb, p.M, p.N, p.K,
                           p.batch, ca.ld, cb.ld, ca.bstride, cb.bstride, al_a, al_b, al_d, al_bias, epi,
                           p.beta != 0.0};
  cublasLtMatmulAlgo_t algo;
  size_t ws = 0;
  {
    std::lock_guard<std::mutex> lk(L.mu);
    auto it = L.algos.find(key);
    if (it != L.algos.end()) {
      algo = it->second.first;
      ws = it->second.second;
    } else {
      PK_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&l.pref));
      uint64_t wsb = kWorkspaceBytes;
      PK_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(l.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof(wsb)));
      uint32_t aa = al_a, ab = al_b, ad = al_d;
      PK_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(l.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aa, sizeof(aa)));
      PK_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(l.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ab, sizeof(ab)));
      PK_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(l.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ad, sizeof(ad)));
      PK_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(l.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ad, sizeof(ad)));
      cublasLtMatmulHeuristicResult_t res[1] = {};
      int found = 0;
      cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(L.handle, l.desc, l.a, l.b, l.c, l.c, l.pref, 1, res, &found);
      // Only results whose .state is SUCCESS are usable (cublasLt.h); NOT_SUPPORTED = no heuristic.
      if (st == CUBLAS_STATUS_SUCCESS && found > 0) st = res[0].state;
      if (st != CUBLAS_STATUS_SUCCESS || found == 0) {
        if (why) *why = st;
        return false;
      }
      algo = res[0].algo;
      ws = res[0].workspaceSize;
      L.algos[key] = {algo, ws};
    }
  }
  float a32 = 1.0f, b32 = (float)p.beta;
  double a64 = 1.0, b64 = p.beta;
  const void* alpha = f64 ? (const void*)&a64 : (const void*)&a32;
  const void* beta = f64 ? (const void*)&b64 : (const void*)&b32;
  PK_CUBLAS_CHECK(cublasLtMatmul(L.handle, l.desc, alpha, ca.ptr, l.a, cb.ptr, l.b, beta, p.D, l.c, p.D, l.c, &algo,
                                 L.workspace->raw(), ws, cur_stream()));
  return true;
}

void gemm(const Problem& p, const char* op) {
  cublasStatus_t why = CUBLAS_STATUS_SUCCESS;
  if (!run_lt(p, &why)) {
    int dev = 0;
    cudaDeviceProp prop;
    cudaGetDevice(&dev);
    cudaGetDeviceProperties(&prop, dev);
    fail(op, ": cuBLASLt has no algorithm for ", dtype_name(p.A.dt), " (", p.M, "x", p.K, ") x ", dtype_name(p.B.dt), " (",
         p.K, "x", p.N, ") -> ", dtype_name(p.d_dt), ", batch ", p.batch, p.bias ? ", bias epilogue" : "", " on sm_",
         prop.major, prop.minor, " (heuristic: ",
         why == CUBLAS_STATUS_SUCCESS ? "no result" : cublasLtGetStatusName(why), ")");
  }
}

bool try_gemm(const Problem& p) { return run_lt(p); }

#else  // no cuBLASLt headers: the compile check builds this

[[noreturn]] void no_lt(const char* op) {
  fail(op, ": this peftkit build has no cuBLASLt (the CUDA toolkit it was built with lacks cublasLt.h); "
           "matrix products on 'cuda' are unavailable");
}
void gemm(const Problem&, const char* op) { no_lt(op); }
bool try_gemm(const Problem&) { no_lt("matmul"); }

#endif

// Shared front half of matmul / linear / linear_weight_grad: checks, broadcasting, operand
// preparation. D gets (batch..., M, N) contiguous in d_dt.
struct Planned {
  Problem p;
  Shape out_shape;
};

Planned plan(const Tensor& a, const Tensor& b, bool ta, bool tb, DType d_dt, const char* op) {
  Tensor A = ta ? a.transpose(-1, -2) : a, B = tb ? b.transpose(-1, -2) : b;
  int64_t M = A.size(-2), K = A.size(-1), N = B.size(-1);
  PK_CHECK(B.size(-2) == K, op, ": inner dimensions differ: ", a.desc(), (ta ? "ᵀ" : ""), " · ", b.desc(), (tb ? "ᵀ" : ""),
           " (K ", K, " vs ", B.size(-2), ")");
  Shape ab(A.shape().begin(), A.shape().end() - 2), bb(B.shape().begin(), B.shape().end() - 2);
  Shape batch = broadcast_shapes(ab, bb, op);
  Shape as = batch, bs = batch, os = batch;
  as.push_back(M); as.push_back(K); bs.push_back(K); bs.push_back(N); os.push_back(M); os.push_back(N);
  Planned pl;
  pl.out_shape = os;
  Problem& p = pl.p;
  p.M = M; p.N = N; p.K = K;
  p.batch = shape_numel(batch);
  p.d_dt = d_dt;
  if (shape_numel(os) == 0 || K == 0) return pl;
  int64_t nb = (int64_t)batch.size();
  p.A = prepare(A.expand(as), nb);
  p.B = prepare(B.expand(bs), nb);
  // A right operand shared by every batch entry: fold the batch into M (one large GEMM).
  if (p.batch > 1 && p.B.bstride == 0 && p.A.row_major && p.A.bstride == M * p.A.ld) {
    p.M = M * p.batch;
    p.batch = 1;
  }
  return pl;
}

#ifdef PK_HAVE_CUBLASLT
bool bias_fusable(const Tensor& bias) { return ptr_alignment(bias.raw()) >= kBiasAlign; }
#else
bool bias_fusable(const Tensor&) { return false; }
#endif

Tensor checked(const Tensor& t, const char* op, const char* arg) {
  check_cuda(t, op, arg);
  check_float(t, op, arg);
  return t;
}

}  // namespace

bool have_cublaslt() {
#ifdef PK_HAVE_CUBLASLT
  return true;
#else
  return false;
#endif
}

Tensor matmul(const Tensor& a_, const Tensor& b_, bool ta, bool tb) {
  Tensor a = checked(a_, "matmul", "a"), b = checked(b_, "matmul", "b");
  PK_CHECK(a.dim() >= 2 && b.dim() >= 2, "matmul: operands must be at least 2-d, got ", a.desc(), " and ", b.desc());
  DType rd = result_dtype(a.dtype(), b.dtype(), "matmul");
  PK_CHECK(gemm_dtype(a.dtype()) && gemm_dtype(b.dtype()), "matmul: unsupported dtypes ", a.desc(), " and ", b.desc());
  if (a.dtype() != rd) a = cuda::cast(a, rd);   // mixed half formats / f32: multiply in f32
  if (b.dtype() != rd) b = cuda::cast(b, rd);
  Planned pl = plan(a, b, ta, tb, rd, "matmul");
  Tensor out = Tensor::empty(pl.out_shape, rd, Device::CUDA);
  if (out.numel() == 0) return out;
  if (pl.p.K == 0) { fill(out, 0.0); return out; }
  pl.p.D = out.raw();
  gemm(pl.p, "matmul");
  return out;
}

Tensor linear(const Tensor& x_, const Tensor& w_, const Tensor& bias_) {
  Tensor x = checked(x_, "linear", "x"), w = checked(w_, "linear", "weight");
  PK_CHECK(w.dim() == 2, "linear: weight must be 2-d (out, in), got ", w.desc());
  PK_CHECK(x.dim() >= 1 && x.size(-1) == w.size(1), "linear: input ", x.desc(), " does not match weight ", w.desc(),
           " (in_features ", w.size(1), ")");
  Tensor bias;
  if (bias_.defined()) {
    bias = checked(bias_, "linear", "bias");
    PK_CHECK(bias.dim() == 1 && bias.size(0) == w.size(0), "linear: bias ", bias.desc(), " must be (", w.size(0), ")");
  }
  Shape lead(x.shape().begin(), x.shape().end() - 1);
  int64_t rows = shape_numel(lead);
  Shape os = lead;
  os.push_back(w.size(0));
  Tensor x2 = cuda::reshape(x, {rows, x.size(-1)});
  DType rd = result_dtype(x.dtype(), w.dtype(), "linear");
  bool fuse = bias.defined() && bias.dtype() == rd && bias.is_contiguous() && x.dtype() == rd && w.dtype() == rd &&
              rows > 0 && w.size(0) > 0 && x.size(-1) > 0 && have_cublaslt() && bias_fusable(bias);
  if (fuse) {
    Planned pl = plan(x2, w, false, true, rd, "linear");
    Tensor out = Tensor::empty(pl.out_shape, rd, Device::CUDA);
    pl.p.D = out.raw();
    pl.p.bias = bias.raw();
    if (try_gemm(pl.p)) return out.view(os);
    pl.p.bias = nullptr;   // no bias epilogue for this shape: plain GEMM + add below
  }
  Tensor y = cuda::matmul(x2, w, false, true);
  if (bias.defined()) y = cuda::binary_forward(BinaryOp::Add, y, bias);
  return y.view(os);
}

Tensor linear_weight_grad(const Tensor& dy_, const Tensor& x_, const Tensor& acc_) {
  Tensor dy = checked(dy_, "linear_weight_grad", "grad"), x = checked(x_, "linear_weight_grad", "x");
  PK_CHECK(dy.dim() >= 1 && x.dim() >= 1, "linear_weight_grad: bad ranks ", dy.desc(), ", ", x.desc());
  int64_t out = dy.size(-1), in = x.size(-1);
  int64_t rows = dy.numel() / std::max<int64_t>(out, 1);
  PK_CHECK(x.numel() / std::max<int64_t>(in, 1) == rows, "linear_weight_grad: grad ", dy.desc(), " and input ", x.desc(),
           " have different leading dims");
  Tensor dy2 = cuda::reshape(dy, {rows, out}), x2 = cuda::reshape(x, {rows, in});
  Tensor acc;
  if (acc_.defined()) {
    acc = checked(acc_, "linear_weight_grad", "accumulator");
    PK_CHECK(acc.shape() == (Shape{out, in}), "linear_weight_grad: accumulator ", acc.desc(), " must be f32[", out, ",", in, "]");
  }
  // f32 accumulator: acc + dyᵀ·x in one GEMM (beta = 1), rounding the product only once.
  if (acc.defined() && acc.dtype() == DType::F32 && dy.dtype() != DType::F64 && x.dtype() != DType::F64 && rows > 0 &&
      have_cublaslt()) {
    if (dy2.dtype() != x2.dtype()) { dy2 = cuda::cast(dy2, DType::F32); x2 = cuda::cast(x2, DType::F32); }
    Tensor g = cuda::clone(acc);
    Planned pl = plan(dy2, x2, true, false, DType::F32, "linear_weight_grad");
    pl.p.D = g.raw();
    pl.p.beta = 1.0;
    gemm(pl.p, "linear_weight_grad");
    return g;
  }
  Tensor g = cuda::matmul(dy2, x2, true, false);
  if (acc.defined()) g = cuda::binary_forward(BinaryOp::Add, acc, g);
  return g;
}

}  // namespace cuda
}  // namespace pk
