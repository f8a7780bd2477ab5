// cublaslt.cpp — the CUDA simulator's cuBLASLt (see include/pk_sim.h): the 14 functions gemm.cu
// calls, with cuBLASLt's semantics — column-major layouts, op(A)/op(B) transposes, strided batches
// (stride 0 broadcasts), D = alpha·op(A)·op(B) + beta·C (+ a bias per row of D with the BIAS
// epilogue). The products run on the CPU engine's GEMM (pk::matmul, itself tested against f64
// references): f32 for 16/32-bit inputs, f64 for f64, one rounding to D's type at the end; the
// operands are gathered through the layouts first, so the layout semantics are this file's own.
//
// Checked as cuBLASLt checks, so gemm.cu's call sequence is tested, not only its results:
// every *SetAttribute payload must have its documented width (cuBLASLt's only check on the
// buffer; a wrong-width variable is CUBLAS_STATUS_INVALID_VALUE at run time), layouts must be
// consistent (ld >= rows, op(A) m×k · op(B) k×n = D m×n, one batch count), the type combination
// must be one cuBLASLt supports for the compute type, and at cublasLtMatmul every pointer must have
// the alignment the algorithm was chosen for (the heuristic's MIN_ALIGNMENT preferences).
#include <cublasLt.h>

#include <cstdio>
#include <cstring>
#include <vector>

#include "core/tensor.h"
#include "cpu/matmul.h"

struct cublasLtContext { int magic; };

namespace {

struct Layout {
  cudaDataType type;
  uint64_t rows, cols;
  int64_t ld;
  int32_t batch;
  int64_t stride;
};
struct Desc {
  cublasComputeType_t compute;
  cudaDataType scale;
  int32_t transa, transb;
  uint32_t epilogue;
  const void* bias;
  int32_t bias_type;
};
struct Pref {
  uint64_t workspace;
  uint32_t align_a, align_b, align_c, align_d;
};
// What the heuristic's "algorithm" carries: the alignments it assumed.
struct Algo {
  uint32_t magic;
  uint32_t align_a, align_b, align_c, align_d;
};
static_assert(sizeof(Layout) <= sizeof(cublasLtMatrixLayoutOpaque_t), "layout");
static_assert(sizeof(Desc) <= sizeof(cublasLtMatmulDescOpaque_t), "desc");
static_assert(sizeof(Pref) <= sizeof(cublasLtMatmulPreferenceOpaque_t), "pref");
static_assert(sizeof(Algo) <= sizeof(cublasLtMatmulAlgo_t), "algo");
constexpr uint32_t kAlgoMagic = 0x51a1u;

template <class T, class O> T* as(O* o) { return reinterpret_cast<T*>(o); }

size_t type_size(int t) {
  switch (t) {
    case CUDA_R_16F: case CUDA_R_16BF: return 2;
    case CUDA_R_32F: return 4;
    case CUDA_R_64F: return 8;
  }
  return 0;
}

double load(const void* p, int t, int64_t i) {
  switch (t) {
    case CUDA_R_16F: return ::pk::f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case CUDA_R_16BF: return ::pk::bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case CUDA_R_32F: return static_cast<const float*>(p)[i];
    default: return static_cast<const double*>(p)[i];
  }
}
void store(void* p, int t, int64_t i, double v) {
  switch (t) {
    case CUDA_R_16F: static_cast<uint16_t*>(p)[i] = ::pk::f32_to_f16((float)v); break;
    case CUDA_R_16BF: static_cast<uint16_t*>(p)[i] = ::pk::f32_to_bf16((float)v); break;
    case CUDA_R_32F: static_cast<float*>(p)[i] = (float)v; break;
    default: static_cast<double*>(p)[i] = v;
  }
}

// The combinations cuBLASLt documents for cublasLtMatmul (A and B of one type, C = D).
bool supported(const Desc& d, const Layout& a, const Layout& b, const Layout& c) {
  if (a.type != b.type) return false;
  switch (d.compute) {
    case CUBLAS_COMPUTE_64F:
      return d.scale == CUDA_R_64F && a.type == CUDA_R_64F && c.type == CUDA_R_64F;
    case CUBLAS_COMPUTE_32F_FAST_TF32:
      return d.scale == CUDA_R_32F && a.type == CUDA_R_32F && c.type == CUDA_R_32F;
    case CUBLAS_COMPUTE_32F:
      if (d.scale != CUDA_R_32F) return false;
      if (a.type == CUDA_R_32F) return c.type == CUDA_R_32F;
      if (a.type == CUDA_R_16BF) return c.type == CUDA_R_16BF || c.type == CUDA_R_32F;
      if (a.type == CUDA_R_16F) return c.type == CUDA_R_16F || c.type == CUDA_R_32F;
      return false;
    default: return false;
  }
}

bool aligned(const void* p, uint32_t a) { return a == 0 || (uintptr_t)p % a == 0; }

}  // namespace

extern "C" {

cublasStatus_t cublasLtCreate(cublasLtHandle_t* h) {
  if (!h) return CUBLAS_STATUS_INVALID_VALUE;
  *h = new cublasLtContext{1};
  return CUBLAS_STATUS_SUCCESS;
}

const char* cublasLtGetStatusName(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}
const char* cublasLtGetStatusString(cublasStatus_t s) {
  return s == CUBLAS_STATUS_SUCCESS ? "success" : "the CUDA simulator's cuBLASLt refused the call (see its checks)";
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* m, cudaDataType type, uint64_t rows, uint64_t cols, int64_t ld) {
  if (!m || type_size(type) == 0) return CUBLAS_STATUS_INVALID_VALUE;
  if (rows && ld < (int64_t)rows) return CUBLAS_STATUS_INVALID_VALUE;   // column-major: ld >= rows
  *m = new cublasLtMatrixLayoutOpaque_t();
  *as<Layout>(*m) = Layout{type, rows, cols, ld, 1, 0};
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t m) { delete m; return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t m, cublasLtMatrixLayoutAttribute_t attr, const void* buf,
                                                size_t n) {
  if (!m || !buf) return CUBLAS_STATUS_INVALID_VALUE;
  Layout& l = *as<Layout>(m);
  switch (attr) {
    case CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT:
      if (n != sizeof(int32_t)) return CUBLAS_STATUS_INVALID_VALUE;
      std::memcpy(&l.batch, buf, n);
      return l.batch >= 1 ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
    case CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET:
      if (n != sizeof(int64_t)) return CUBLAS_STATUS_INVALID_VALUE;
      std::memcpy(&l.stride, buf, n);
      return CUBLAS_STATUS_SUCCESS;
    default: return CUBLAS_STATUS_NOT_SUPPORTED;   // not used by gemm.cu: not simulated
  }
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* d, cublasComputeType_t compute, cudaDataType_t scale) {
  if (!d) return CUBLAS_STATUS_INVALID_VALUE;
  *d = new cublasLtMatmulDescOpaque_t();
  *as<Desc>(*d) = Desc{compute, scale, CUBLAS_OP_N, CUBLAS_OP_N, CUBLASLT_EPILOGUE_DEFAULT, nullptr, -1};
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) { delete d; return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr, const void* buf, size_t n) {
  if (!d || !buf) return CUBLAS_STATUS_INVALID_VALUE;
  Desc& x = *as<Desc>(d);
  switch (attr) {
    case CUBLASLT_MATMUL_DESC_TRANSA:
    case CUBLASLT_MATMUL_DESC_TRANSB: {
      if (n != sizeof(int32_t)) return CUBLAS_STATUS_INVALID_VALUE;
      int32_t v;
      std::memcpy(&v, buf, n);
      if (v != CUBLAS_OP_N && v != CUBLAS_OP_T) return CUBLAS_STATUS_INVALID_VALUE;
      (attr == CUBLASLT_MATMUL_DESC_TRANSA ? x.transa : x.transb) = v;
      return CUBLAS_STATUS_SUCCESS;
    }
    case CUBLASLT_MATMUL_DESC_EPILOGUE: {
      if (n != sizeof(uint32_t)) return CUBLAS_STATUS_INVALID_VALUE;
      std::memcpy(&x.epilogue, buf, n);
      return x.epilogue == CUBLASLT_EPILOGUE_DEFAULT || x.epilogue == CUBLASLT_EPILOGUE_BIAS ? CUBLAS_STATUS_SUCCESS
                                                                                             : CUBLAS_STATUS_NOT_SUPPORTED;
    }
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER:
      if (n != sizeof(void*)) return CUBLAS_STATUS_INVALID_VALUE;
      std::memcpy(&x.bias, buf, n);
      return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE:
      if (n != sizeof(int32_t)) return CUBLAS_STATUS_INVALID_VALUE;
      std::memcpy(&x.bias_type, buf, n);
      return type_size(x.bias_type) ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
    default: return CUBLAS_STATUS_NOT_SUPPORTED;
  }
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* p) {
  if (!p) return CUBLAS_STATUS_INVALID_VALUE;
  *p = new cublasLtMatmulPreferenceOpaque_t();
  *as<Pref>(*p) = Pref{0, 256, 256, 256, 256};
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) { delete p; return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p, cublasLtMatmulPreferenceAttributes_t attr,
                                                    const void* buf, size_t n) {
  if (!p || !buf) return CUBLAS_STATUS_INVALID_VALUE;
  Pref& x = *as<Pref>(p);
  switch (attr) {
    case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES:
      if (n != sizeof(uint64_t)) return CUBLAS_STATUS_INVALID_VALUE;
      std::memcpy(&x.workspace, buf, n);
      return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES:
    case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES: {
      if (n != sizeof(uint32_t)) return CUBLAS_STATUS_INVALID_VALUE;
      uint32_t v;
      std::memcpy(&v, buf, n);
      (attr == CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES ? x.align_a
       : attr == CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES ? x.align_b
       : attr == CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES ? x.align_c : x.align_d) = v;
      return CUBLAS_STATUS_SUCCESS;
    }
    default: return CUBLAS_STATUS_NOT_SUPPORTED;
  }
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t h, cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t a,
                                              cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t pref, int requested,
                                              cublasLtMatmulHeuristicResult_t results[], int* count) {
  if (!h || !desc || !a || !b || !c || !d || !pref || requested < 1 || !results || !count) return CUBLAS_STATUS_INVALID_VALUE;
  *count = 0;
  if (!supported(*as<Desc>(desc), *as<Layout>(a), *as<Layout>(b), *as<Layout>(c))) return CUBLAS_STATUS_NOT_SUPPORTED;
  const Pref& p = *as<Pref>(pref);
  std::memset(&results[0], 0, sizeof results[0]);
  *as<Algo>(&results[0].algo) = Algo{kAlgoMagic, p.align_a, p.align_b, p.align_c, p.align_d};
  results[0].workspaceSize = 0;
  results[0].state = CUBLAS_STATUS_SUCCESS;
  results[0].wavesCount = 1.0f;
  *count = 1;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t h, cublasLtMatmulDesc_t desc, const void* alpha, const void* A,
                              cublasLtMatrixLayout_t Adesc, const void* B, cublasLtMatrixLayout_t Bdesc, const void* beta,
                              const void* C, cublasLtMatrixLayout_t Cdesc, void* D, cublasLtMatrixLayout_t Ddesc,
                              const cublasLtMatmulAlgo_t* algo, void* workspace, size_t ws_bytes, cudaStream_t) {
  if (!h || !desc || !alpha || !beta || !Adesc || !Bdesc || !Cdesc || !Ddesc || !algo) return CUBLAS_STATUS_INVALID_VALUE;
  const Desc& x = *as<Desc>(desc);
  const Layout &la = *as<Layout>(Adesc), &lb = *as<Layout>(Bdesc), &lc = *as<Layout>(Cdesc), &ld = *as<Layout>(Ddesc);
  const Algo& al = *reinterpret_cast<const Algo*>(algo);
  if (al.magic != kAlgoMagic) return CUBLAS_STATUS_INVALID_VALUE;   // not from cublasLtMatmulAlgoGetHeuristic
  if (ws_bytes && !workspace) return CUBLAS_STATUS_INVALID_VALUE;
  if (!supported(x, la, lb, lc) || lc.type != ld.type) return CUBLAS_STATUS_NOT_SUPPORTED;
  const bool ta = x.transa == CUBLAS_OP_T, tb = x.transb == CUBLAS_OP_T;
  const uint64_t m = ta ? la.cols : la.rows, k = ta ? la.rows : la.cols;
  const uint64_t kb = tb ? lb.cols : lb.rows, n = tb ? lb.rows : lb.cols;
  if (k != kb || ld.rows != m || ld.cols != n || lc.rows != m || lc.cols != n) return CUBLAS_STATUS_INVALID_VALUE;
  const int32_t batch = ld.batch;
  for (const Layout* l : {&la, &lb, &lc})
    if (l->batch != batch && l->batch != 1) return CUBLAS_STATUS_INVALID_VALUE;
  if (!aligned(A, al.align_a) || !aligned(B, al.align_b) || !aligned(C, al.align_c) || !aligned(D, al.align_d))
    return CUBLAS_STATUS_INVALID_VALUE;   // the algorithm assumed more alignment than these pointers have
  if (x.epilogue == CUBLASLT_EPILOGUE_BIAS && !x.bias) return CUBLAS_STATUS_INVALID_VALUE;
  const bool f64 = x.scale == CUDA_R_64F;
  const double a_s = f64 ? *static_cast<const double*>(alpha) : *static_cast<const float*>(alpha);
  const double b_s = f64 ? *static_cast<const double*>(beta) : *static_cast<const float*>(beta);
  const int bias_t = x.bias_type >= 0 ? x.bias_type : (int)ld.type;
  const bool x_epi_bias = x.epilogue == CUBLASLT_EPILOGUE_BIAS;

  const pk::DType ct = la.type == CUDA_R_64F ? pk::DType::F64 : pk::DType::F32;
  pk::Tensor opa = pk::Tensor::empty({(int64_t)m, (int64_t)k}, ct), opb = pk::Tensor::empty({(int64_t)n, (int64_t)k}, ct);
  auto put = [ct](pk::Tensor& t, int64_t i, double v) {
    if (ct == pk::DType::F64) t.data<double>()[i] = v; else t.data<float>()[i] = (float)v;
  };
  for (int32_t bi = 0; bi < batch; bi++) {
    const int64_t oa = la.batch > 1 ? bi * la.stride : 0, ob = lb.batch > 1 ? bi * lb.stride : 0;
    const int64_t oc = lc.batch > 1 ? bi * lc.stride : 0, od = bi * ld.stride;
    for (uint64_t i = 0; i < m; i++)
      for (uint64_t p = 0; p < k; p++)   // A(i,p) of op(A): stored (i,p) col-major, or (p,i) when transposed
        put(opa, (int64_t)(i * k + p), load(A, la.type, oa + (ta ? (int64_t)(i * la.ld + p) : (int64_t)(p * la.ld + i))));
    for (uint64_t j = 0; j < n; j++)
      for (uint64_t p = 0; p < k; p++)   // B(p,j) of op(B), stored as row j of op(B)ᵀ
        put(opb, (int64_t)(j * k + p), load(B, lb.type, ob + (tb ? (int64_t)(p * lb.ld + j) : (int64_t)(j * lb.ld + p))));
    const pk::Tensor prod = k ? pk::matmul(opa, opb, false, true) : pk::Tensor::zeros({(int64_t)m, (int64_t)n}, ct);   // (m, n)
    for (uint64_t j = 0; j < n; j++)
      for (uint64_t i = 0; i < m; i++) {
        const int64_t xi = (int64_t)(i * n + j);
        double v = a_s * (ct == pk::DType::F64 ? prod.data<double>()[xi] : (double)prod.data<float>()[xi]);
        if (b_s != 0.0) v += b_s * load(C, lc.type, oc + (int64_t)(j * lc.ld + i));
        if (x_epi_bias) v += load(x.bias, bias_t, (int64_t)i);
        store(D, ld.type, od + (int64_t)(j * ld.ld + i), v);
      }
  }
  return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"
