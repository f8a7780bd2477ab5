// csrc/cuda/compile_check/cublasLt.h — COMPILE-CHECK STAND-IN for NVIDIA's <cublasLt.h>.
//
// NOT the real header. Declarations only: no function is defined here, nothing links against it,
// and no real build ever sees it. CMakeLists.txt puts this folder on the include path of the object
// library `peftkit_cuda_check` alone (CI: nvcc + cudart, no cuBLAS), so that gemm.cu's
// `__has_include(<cublasLt.h>)` succeeds there and its cuBLASLt code is type-checked instead of
// being compiled out. The real build (peftkit_cuda) gets the toolkit's cublasLt.h through
// CUDA::cublasLt and never has this folder on its path; the #error below makes any other use fail.
//
// Scope: the types, enumerators and the 14 functions gemm.cu uses (plus the few a reader expects
// next to them, e.g. every cublasStatus_t value and neighbouring attribute enumerators). A
// cuBLASLt call or attribute that gemm.cu starts to use and that is missing here fails the compile
// check: add it here, copied from the real header, with its value and its documented payload type.
//
// Source: cublas_api.h / cublasLt.h of cuBLAS 13.x (CUBLAS_VER_MAJOR 13), the enumerator values
// cross-checked against 12.x-era copies and bindings (nvmath-python's generated cublasLt enums;
// values used here did not change between 12.x and 13.x). The semi-opaque structs' sizes are the
// 13.x ones.
// Enumerator values are the real ones, so an integer that leaks into a cache key or a log means
// the same thing here and on the GPU machine. The payload type of every attribute (what the
// `buf` of *SetAttribute must point to) is noted next to it: cuBLASLt checks only `sizeInBytes`,
// so a wrong-width variable is a run-time CUBLAS_STATUS_INVALID_VALUE, not a compile error — keep
// these notes right and compare against them in review.
//
// Differences from the real headers (deliberate, none changes how gemm.cu type-checks):
//   * one file instead of cublas_api.h + cublasLt.h; enums trimmed to what gemm.cu uses;
//   * CUBLASWINAPI is empty (it is __stdcall only on Windows);
//   * gemm.cu never depends on the semi-opaque descriptor structs' sizes (it uses the pointers).
#pragma once

#ifndef PEFTKIT_CUBLASLT_STANDIN
#error "csrc/cuda/compile_check/cublasLt.h is a compile-check stand-in: only the peftkit_cuda_check target may include it (it defines PEFTKIT_CUBLASLT_STANDIN)"
#endif

// The real cublas_api.h includes these; gemm.cu must not compile here only because of a header
// that the real one would not have pulled in (nor the other way round).
#include <stdint.h>
#include <stddef.h>
#include <stdio.h>
#include <driver_types.h>   // cudaStream_t
#include <cuComplex.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <library_types.h>  // cudaDataType_t / cudaDataType (CUDA_R_16BF = 14, CUDA_R_32F = 0, ...)

#ifndef CUBLASWINAPI
#define CUBLASWINAPI
#endif

#if defined(__cplusplus)
extern "C" {
#endif

// ---------------------------------------------------------------- from cublas_api.h

typedef enum {
  CUBLAS_STATUS_SUCCESS = 0,
  CUBLAS_STATUS_NOT_INITIALIZED = 1,
  CUBLAS_STATUS_ALLOC_FAILED = 3,
  CUBLAS_STATUS_INVALID_VALUE = 7,
  CUBLAS_STATUS_ARCH_MISMATCH = 8,
  CUBLAS_STATUS_MAPPING_ERROR = 11,
  CUBLAS_STATUS_EXECUTION_FAILED = 13,
  CUBLAS_STATUS_INTERNAL_ERROR = 14,
  CUBLAS_STATUS_NOT_SUPPORTED = 15,
  CUBLAS_STATUS_LICENSE_ERROR = 16
} cublasStatus_t;

typedef enum {
  CUBLAS_OP_N = 0,
  CUBLAS_OP_T = 1,
  CUBLAS_OP_C = 2,
  CUBLAS_OP_HERMITAN = 2,
  CUBLAS_OP_CONJG = 3
} cublasOperation_t;

typedef enum { CUBLAS_POINTER_MODE_HOST = 0, CUBLAS_POINTER_MODE_DEVICE = 1 } cublasPointerMode_t;

typedef enum {
  CUBLAS_COMPUTE_16F = 64,
  CUBLAS_COMPUTE_16F_PEDANTIC = 65,
  CUBLAS_COMPUTE_32F = 68,
  CUBLAS_COMPUTE_32F_PEDANTIC = 69,
  CUBLAS_COMPUTE_32F_FAST_16F = 74,
  CUBLAS_COMPUTE_32F_FAST_16BF = 75,
  CUBLAS_COMPUTE_32F_FAST_TF32 = 77,
  CUBLAS_COMPUTE_64F = 70,
  CUBLAS_COMPUTE_64F_PEDANTIC = 71,
  CUBLAS_COMPUTE_32I = 72,
  CUBLAS_COMPUTE_32I_PEDANTIC = 73
} cublasComputeType_t;

// ---------------------------------------------------------------- from cublasLt.h

typedef struct cublasLtContext* cublasLtHandle_t;

cublasStatus_t CUBLASWINAPI cublasLtCreate(cublasLtHandle_t* lightHandle);
const char* CUBLASWINAPI cublasLtGetStatusName(cublasStatus_t status);
const char* CUBLASWINAPI cublasLtGetStatusString(cublasStatus_t status);

typedef struct { uint64_t data[14]; } cublasLtMatrixLayoutOpaque_t;
typedef cublasLtMatrixLayoutOpaque_t* cublasLtMatrixLayout_t;

// Semi-opaque, trivially copyable: gemm.cu caches it by value per problem shape.
typedef struct { uint64_t data[8]; } cublasLtMatmulAlgo_t;

typedef struct { uint64_t data[32]; } cublasLtMatmulDescOpaque_t;
typedef cublasLtMatmulDescOpaque_t* cublasLtMatmulDesc_t;

typedef struct { uint64_t data[12]; } cublasLtMatmulPreferenceOpaque_t;
typedef cublasLtMatmulPreferenceOpaque_t* cublasLtMatmulPreference_t;

// D = alpha * op(A) * op(B) + beta * C. alpha/beta point to the scale type (host memory in the
// default pointer mode); C may alias D when Cdesc == Ddesc describe the same layout.
cublasStatus_t CUBLASWINAPI cublasLtMatmul(cublasLtHandle_t lightHandle,
                                           cublasLtMatmulDesc_t computeDesc,
                                           const void* alpha,
                                           const void* A,
                                           cublasLtMatrixLayout_t Adesc,
                                           const void* B,
                                           cublasLtMatrixLayout_t Bdesc,
                                           const void* beta,
                                           const void* C,
                                           cublasLtMatrixLayout_t Cdesc,
                                           void* D,
                                           cublasLtMatrixLayout_t Ddesc,
                                           const cublasLtMatmulAlgo_t* algo,
                                           void* workspace,
                                           size_t workspaceSizeInBytes,
                                           cudaStream_t stream);

typedef enum {
  CUBLASLT_MATRIX_LAYOUT_TYPE = 0,                  // uint32_t (cudaDataType)
  CUBLASLT_MATRIX_LAYOUT_ORDER = 1,                 // int32_t, default CUBLASLT_ORDER_COL
  CUBLASLT_MATRIX_LAYOUT_ROWS = 2,                  // uint64_t
  CUBLASLT_MATRIX_LAYOUT_COLS = 3,                  // uint64_t
  CUBLASLT_MATRIX_LAYOUT_LD = 4,                    // int64_t
  CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT = 5,           // int32_t, default 1
  CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET = 6,  // int64_t (elements), default 0
  CUBLASLT_MATRIX_LAYOUT_PLANE_OFFSET = 7           // int64_t
} cublasLtMatrixLayoutAttribute_t;

// rows/cols describe the matrix as stored (column-major by default), before TRANSA/TRANSB.
cublasStatus_t CUBLASWINAPI cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* matLayout,
                                                       cudaDataType type,
                                                       uint64_t rows,
                                                       uint64_t cols,
                                                       int64_t ld);
cublasStatus_t CUBLASWINAPI cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t matLayout);
cublasStatus_t CUBLASWINAPI cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t matLayout,
                                                             cublasLtMatrixLayoutAttribute_t attr,
                                                             const void* buf,
                                                             size_t sizeInBytes);

typedef enum {
  CUBLASLT_MATMUL_DESC_COMPUTE_TYPE = 0,    // int32_t (cublasComputeType_t)
  CUBLASLT_MATMUL_DESC_SCALE_TYPE = 1,      // int32_t (cudaDataType)
  CUBLASLT_MATMUL_DESC_POINTER_MODE = 2,    // int32_t, default CUBLASLT_POINTER_MODE_HOST
  CUBLASLT_MATMUL_DESC_TRANSA = 3,          // int32_t (cublasOperation_t), default CUBLAS_OP_N
  CUBLASLT_MATMUL_DESC_TRANSB = 4,          // int32_t (cublasOperation_t), default CUBLAS_OP_N
  CUBLASLT_MATMUL_DESC_TRANSC = 5,          // int32_t, only CUBLAS_OP_N
  CUBLASLT_MATMUL_DESC_FILL_MODE = 6,       // int32_t
  CUBLASLT_MATMUL_DESC_EPILOGUE = 7,        // uint32_t (cublasLtEpilogue_t), default CUBLASLT_EPILOGUE_DEFAULT
  CUBLASLT_MATMUL_DESC_BIAS_POINTER = 8,    // const void* (device); length = rows of D
  CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE = 10,  // int64_t, default 0
  CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE = 26  // int32_t (cudaDataType), default -1 = type of D
} cublasLtMatmulDescAttributes_t;

cublasStatus_t CUBLASWINAPI cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* matmulDesc,
                                                     cublasComputeType_t computeType,
                                                     cudaDataType_t scaleType);
cublasStatus_t CUBLASWINAPI cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t matmulDesc);
cublasStatus_t CUBLASWINAPI cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t matmulDesc,
                                                           cublasLtMatmulDescAttributes_t attr,
                                                           const void* buf,
                                                           size_t sizeInBytes);

typedef enum {
  CUBLASLT_EPILOGUE_DEFAULT = 1,
  CUBLASLT_EPILOGUE_RELU = 2,
  CUBLASLT_EPILOGUE_BIAS = 4,  // D += bias broadcast over the columns (bias length = rows of D)
  CUBLASLT_EPILOGUE_RELU_BIAS = (CUBLASLT_EPILOGUE_RELU | CUBLASLT_EPILOGUE_BIAS),
  CUBLASLT_EPILOGUE_GELU = 32,
  CUBLASLT_EPILOGUE_GELU_BIAS = (CUBLASLT_EPILOGUE_GELU | CUBLASLT_EPILOGUE_BIAS),
  CUBLASLT_EPILOGUE_BGRADA = 256,
  CUBLASLT_EPILOGUE_BGRADB = 512
} cublasLtEpilogue_t;

typedef enum {
  CUBLASLT_MATMUL_PREF_SEARCH_MODE = 0,              // uint32_t
  CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1,      // uint64_t, default 0 (no workspace)
  CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK = 3,    // uint32_t
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES = 5,    // uint32_t, default 256
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES = 6,    // uint32_t, default 256
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES = 7,    // uint32_t, default 256
  CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES = 8,    // uint32_t, default 256
  CUBLASLT_MATMUL_PREF_MAX_WAVES_COUNT = 9,          // float
  CUBLASLT_MATMUL_PREF_IMPL_MASK = 12                // uint64_t
} cublasLtMatmulPreferenceAttributes_t;

cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref);
cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref);
cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                                 cublasLtMatmulPreferenceAttributes_t attr,
                                                                 const void* buf,
                                                                 size_t sizeInBytes);

typedef struct {
  cublasLtMatmulAlgo_t algo;
  size_t workspaceSize;   // bytes this algo needs (<= the preference's MAX_WORKSPACE_BYTES)
  cublasStatus_t state;   // the other fields are valid only when this is CUBLAS_STATUS_SUCCESS
  float wavesCount;
  int reserved[4];
} cublasLtMatmulHeuristicResult_t;

// Results are ordered by estimated time; *returnAlgoCount of them are written. Returns
// CUBLAS_STATUS_NOT_SUPPORTED when no heuristic exists for the configuration.
cublasStatus_t CUBLASWINAPI cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t lightHandle,
                                                           cublasLtMatmulDesc_t operationDesc,
                                                           cublasLtMatrixLayout_t Adesc,
                                                           cublasLtMatrixLayout_t Bdesc,
                                                           cublasLtMatrixLayout_t Cdesc,
                                                           cublasLtMatrixLayout_t Ddesc,
                                                           cublasLtMatmulPreference_t preference,
                                                           int requestedAlgoCount,
                                                           cublasLtMatmulHeuristicResult_t heuristicResultsArray[],
                                                           int* returnAlgoCount);

#if defined(__cplusplus)
}
#endif
