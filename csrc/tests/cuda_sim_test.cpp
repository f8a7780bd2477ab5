// cuda_sim_test.cpp — the CUDA simulator (csrc/cuda_sim) against what CUDA specifies, so that a
// kernel passing test/gpu on the simulator passed on a faithful model: block and warp execution
// (shared memory, __syncthreads, shuffles with widths, votes, atomics), the misuse it must report
// (threads at different barriers, a thread exiting before a barrier, a shuffle waiting for an
// exited lane, bad launch configurations, too much dynamic shared memory), mma.m16n8k16 and
// ldmatrix.x4.trans against their PTX ISA definitions written out independently here, the
// runtime's memory model (poisoned fresh memory, out-of-memory) and the cuBLASLt reference (ops,
// batches, broadcast, bias, beta, and its refusals: payload widths, alignment, types).
// Kernels are launched through pk::sim::launcher (what scripts/cuda-sim-pp.js makes of <<<>>>).
// Build with -DPEFTKIT_NATIVE_TESTS=ON; run ./cuda_sim_test -> exit 0 on success.
#include "expect.h"
#include <cuda_runtime.h>
#include <cublasLt.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda/mma_frag.h"

namespace {


using pk::sim::launcher;

// Launch error (cleared) and its message.
std::string take_error(cudaError_t* code) {
  *code = cudaGetLastError();
  return *code == cudaSuccess ? "" : cudaGetErrorString(*code);
}

// ---- block reduction: shared memory, __syncthreads, shuffles; a partial last warp ----
__global__ void block_sum(const int* x, int n, int* out) {
  __shared__ int part[32];
  int v = 0;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) v += x[i];
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) / 32;
  const unsigned mask = w == nw - 1 && blockDim.x % 32 ? (1u << (blockDim.x % 32)) - 1 : 0xffffffffu;
  for (int d = 16; d > 0; d >>= 1) {
    int o = __shfl_down_sync(mask, v, d);
    if (lane + d < 32 && ((mask >> (lane + d)) & 1u)) v += o;
  }
  if (lane == 0) part[w] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    int s = 0;
    for (int k = 0; k < nw; k++) s += part[k];
    atomicAdd(out, s);
  }
}

void test_block_execution() {
  std::vector<int> x(1000);
  long want = 0;
  for (int i = 0; i < 1000; i++) { x[i] = i * 7 % 13 - 5; want += x[i]; }
  int out = 0;
  launcher(block_sum, dim3(3), dim3(200))(x.data(), 1000, &out);
  cudaError_t e;
  std::string msg = take_error(&e);
  EXPECT(e == cudaSuccess, "block_sum failed: %s", msg.c_str());
  EXPECT(out == want, "block sum %d, want %ld", out, want);
}

// ---- shuffles with widths, votes ----
__global__ void shuffles(int* out) {
  const int l = threadIdx.x;
  out[0 * 32 + l] = __shfl_xor_sync(0xffffffffu, l * 10, 5);
  out[1 * 32 + l] = __shfl_down_sync(0xffffffffu, l, 3, 8);    // within 8-lane segments
  out[2 * 32 + l] = __shfl_up_sync(0xffffffffu, l, 2, 16);
  out[3 * 32 + l] = __shfl_sync(0xffffffffu, l * 3, 7, 16);      // lane 7 of each 16-lane half
  out[4 * 32 + l] = (int)__ballot_sync(0xffffffffu, l % 3 == 0);
  out[5 * 32 + l] = __any_sync(0xffffffffu, l == 31) + 2 * __all_sync(0xffffffffu, l < 31);
  double d = __shfl_xor_sync(0xffffffffu, 0.5 + l, 1);            // 64-bit payload
  out[6 * 32 + l] = (int)(d * 2);
  if (l < 16) out[7 * 32 + l] = __shfl_xor_sync(0x0000ffffu, l, 1);   // divergent halves, own masks
  else out[7 * 32 + l] = __shfl_xor_sync(0xffff0000u, l + 100, 2);
}

void test_shuffles() {
  std::vector<int> out(8 * 32, -1);
  launcher(shuffles, dim3(1), dim3(32))(out.data());
  cudaError_t e;
  std::string msg = take_error(&e);
  EXPECT(e == cudaSuccess, "shuffles failed: %s", msg.c_str());
  unsigned ballot = 0;
  for (int l = 0; l < 32; l++) if (l % 3 == 0) ballot |= 1u << l;
  for (int l = 0; l < 32; l++) {
    EXPECT(out[l] == (l ^ 5) * 10, "xor lane %d: %d", l, out[l]);
    EXPECT(out[32 + l] == ((l % 8) + 3 < 8 ? l + 3 : l), "down width 8 lane %d: %d", l, out[32 + l]);
    EXPECT(out[64 + l] == ((l % 16) >= 2 ? l - 2 : l), "up width 16 lane %d: %d", l, out[64 + l]);
    EXPECT(out[96 + l] == ((l / 16) * 16 + 7) * 3, "idx width 16 lane %d: %d", l, out[96 + l]);
    EXPECT((unsigned)out[128 + l] == ballot, "ballot lane %d", l);
    EXPECT(out[160 + l] == 1, "any/all lane %d: %d", l, out[160 + l]);
    EXPECT(out[192 + l] == 2 * (l ^ 1) + 1, "f64 xor lane %d: %d", l, out[192 + l]);
    EXPECT(out[224 + l] == (l < 16 ? (l ^ 1) : (l ^ 2) + 100), "divergent masks lane %d: %d", l, out[224 + l]);
  }
}

// ---- misuse the simulator must report ----
__global__ void two_barriers(int* x) {
  if (threadIdx.x < 32) { x[0] = 1; __syncthreads(); }
  else { __syncthreads(); }
}
__global__ void early_exit(int* x) {
  if (threadIdx.x == 5) return;
  x[threadIdx.x] = 1;
  __syncthreads();
}
__global__ void shuffle_after_exit(int* x) {
  if (threadIdx.x == 3) return;
  x[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (int)threadIdx.x, 1);
}
__global__ void touch(int* x) { x[threadIdx.x] = 1; }
__global__ void uses_dynamic_smem(int* x) {
  unsigned char* s = pk::sim::dynamic_smem();
  s[threadIdx.x] = 1;
  x[threadIdx.x] = s[threadIdx.x];
}

void test_misuse() {
  std::vector<int> x(64, 0);
  cudaError_t e;
  launcher(two_barriers, dim3(1), dim3(64))(x.data());
  std::string m = take_error(&e);
  EXPECT(e == cudaErrorLaunchFailure && m.find("different barriers") != std::string::npos, "two barriers: %s", m.c_str());
  EXPECT(cudaGetLastError() == cudaSuccess, "the error is cleared by cudaGetLastError");
  EXPECT(cudaStreamSynchronize(nullptr) == cudaErrorLaunchFailure, "a device failure is also reported at the next sync");

  launcher(early_exit, dim3(1), dim3(64))(x.data());
  m = take_error(&e);
  EXPECT(e == cudaErrorLaunchFailure && m.find("has exited") != std::string::npos, "early exit: %s", m.c_str());
  cudaStreamSynchronize(nullptr);

  launcher(shuffle_after_exit, dim3(1), dim3(32))(x.data());
  m = take_error(&e);
  EXPECT(e == cudaErrorLaunchFailure && m.find("lane 3, which has exited") != std::string::npos, "shuffle after exit: %s", m.c_str());
  cudaStreamSynchronize(nullptr);

  std::fill(x.begin(), x.end(), 0);
  launcher(touch, dim3(1), dim3(2048))(x.data());
  m = take_error(&e);
  EXPECT(e == cudaErrorInvalidConfiguration, "2048 threads per block: %s", m.c_str());
  EXPECT(x[0] == 0, "a refused launch runs nothing");
  launcher(touch, dim3(0), dim3(32))(x.data());
  EXPECT(cudaGetLastError() == cudaErrorInvalidConfiguration, "an empty grid is an invalid configuration");

  launcher(uses_dynamic_smem, dim3(1), dim3(64), 64 * 1024)(x.data());
  m = take_error(&e);
  EXPECT(e == cudaErrorLaunchOutOfResources, "64 KiB dynamic smem without cudaFuncSetAttribute: %s", m.c_str());
  EXPECT(cudaFuncSetAttribute(uses_dynamic_smem, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 * 1024) == cudaSuccess, "opt in");
  launcher(uses_dynamic_smem, dim3(1), dim3(64), 64 * 1024)(x.data());
  m = take_error(&e);
  EXPECT(e == cudaSuccess && x[63] == 1, "64 KiB after opting in: %s", m.c_str());
  EXPECT(cudaFuncSetAttribute(uses_dynamic_smem, cudaFuncAttributeMaxDynamicSharedMemorySize, 300 * 1024) == cudaErrorInvalidValue,
         "more than the device's opt-in maximum is refused");
}

// ---- mma.m16n8k16 (bf16 and f16) and ldmatrix.x4.trans, from the PTX ISA text ----
__global__ void mma_kernel(bool bf16, const uint32_t* a, const uint32_t* b, float* c) {
  const int l = threadIdx.x;
  uint32_t ar[4] = {a[l * 4], a[l * 4 + 1], a[l * 4 + 2], a[l * 4 + 3]};
  float acc[4] = {c[l * 4], c[l * 4 + 1], c[l * 4 + 2], c[l * 4 + 3]};
  pk::sim::mma_m16n8k16_f32(bf16, acc, ar, b[l * 2], b[l * 2 + 1]);
  for (int e = 0; e < 4; e++) c[l * 4 + e] = acc[e];
}

void test_mma() {
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> d(-4, 4);
  for (bool bf16 : {true, false}) {
    float A[16][16], B[16][8], C[16][8];
    auto h = [bf16](float v) -> uint16_t { return bf16 ? pk::f32_to_bf16(v) : pk::f32_to_f16(v); };
    for (auto& r : A) for (float& v : r) v = d(rng) * 0.25f;
    for (auto& r : B) for (float& v : r) v = d(rng) * 0.5f;
    for (auto& r : C) for (float& v : r) v = (float)d(rng);
    // Fragments written straight from the ISA's tables (groupID = lane >> 2, tig = lane % 4):
    // A a0..a7: row groupID (+8 for a2,a3,a6,a7), col 2·tig + (i&1) (+8 for a4..a7)
    // B b0..b3: row 2·tig + (i&1) (+8 for b2,b3), col groupID; C c0..c3: row groupID (+8 for c2,c3), col 2·tig + (i&1)
    std::vector<uint32_t> a(32 * 4), b(32 * 2);
    std::vector<float> c(32 * 4);
    for (int l = 0; l < 32; l++) {
      const int g = l >> 2, t = l % 4;
      for (int i = 0; i < 8; i++) {
        const int row = g + ((i / 2) % 2 ? 8 : 0), col = 2 * t + (i & 1) + (i >= 4 ? 8 : 0);
        a[l * 4 + i / 2] |= (uint32_t)h(A[row][col]) << (16 * (i & 1));
      }
      for (int i = 0; i < 4; i++) b[l * 2 + i / 2] |= (uint32_t)h(B[2 * t + (i & 1) + (i >= 2 ? 8 : 0)][g]) << (16 * (i & 1));
      for (int i = 0; i < 4; i++) c[l * 4 + i] = C[g + (i >= 2 ? 8 : 0)][2 * t + (i & 1)];
    }
    launcher(mma_kernel, dim3(1), dim3(32))(bf16, a.data(), b.data(), c.data());
    EXPECT(cudaGetLastError() == cudaSuccess, "mma launch");
    for (int l = 0; l < 32; l++) {
      const int g = l >> 2, t = l % 4;
      for (int i = 0; i < 4; i++) {
        const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
        double want = C[row][col];
        for (int k = 0; k < 16; k++) want += (double)A[row][k] * B[k][col];
        EXPECT(c[l * 4 + i] == (float)want, "mma %s D(%d,%d) = %g, want %g", bf16 ? "bf16" : "f16", row, col, c[l * 4 + i], want);
      }
    }
    // The layout helpers the kernels use agree with the ISA tables above.
    for (int l = 0; l < 32; l++)
      for (int r = 0; r < 4; r++) {
        const int off = pk::cuda::mma::a_off(l, r, 16);
        EXPECT((uint16_t)(a[l * 4 + r] & 0xffff) == h(A[off / 16][off % 16]), "a_off lane %d reg %d", l, r);
      }
  }
}

__global__ void ldsm_kernel(const uint16_t* tile, int ld, uint32_t* out) {
  const int l = threadIdx.x;
  uint32_t r[4];
  pk::sim::ldmatrix_x4_trans(tile + pk::cuda::mma::ldsm_x4t_off(l, ld), r[0], r[1], r[2], r[3]);
  for (int m = 0; m < 4; m++) out[l * 4 + m] = r[m];
}

void test_ldmatrix() {
  const int ld = 24;   // a padded 16 (k) x 16 (n) k-major tile, rows 48 bytes apart (16-byte aligned)
  alignas(16) uint16_t tile[16 * ld];
  for (int k = 0; k < 16; k++) for (int n = 0; n < ld; n++) tile[k * ld + n] = (uint16_t)(k * 100 + n);
  std::vector<uint32_t> out(32 * 4);
  launcher(ldsm_kernel, dim3(1), dim3(32))(tile, ld, out.data());
  EXPECT(cudaGetLastError() == cudaSuccess, "ldmatrix launch");
  // .trans, x4 over ldsm_x4t_off: matrix m covers k rows 8·(m&1).., n columns 8·(m>>1)..; register m
  // of lane l holds elements (k = 8·(m&1) + 2·(l%4) + h, n = 8·(m>>1) + l/4), h = 0 low, 1 high —
  // i.e. exactly the B fragment (k 2t, 2t+1 (+8), n = groupID) of the n-tile m>>1.
  for (int l = 0; l < 32; l++)
    for (int m = 0; m < 4; m++)
      for (int h = 0; h < 2; h++) {
        const int k = 8 * (m & 1) + 2 * (l % 4) + h, n = 8 * (m >> 1) + l / 4;
        const uint16_t got = (uint16_t)(out[l * 4 + m] >> (16 * h));
        EXPECT(got == tile[k * ld + n], "ldmatrix lane %d reg %d half %d: %d, want %d", l, m, h, got, tile[k * ld + n]);
      }
}

// ---- memory ----
void test_memory() {
  void* p = nullptr;
  EXPECT(cudaMalloc(&p, 100) == cudaSuccess, "cudaMalloc");
  EXPECT(((const unsigned char*)p)[0] == 0xff && ((const unsigned char*)p)[99] == 0xff, "fresh device memory is poisoned");
  EXPECT((uintptr_t)p % 256 == 0, "256-byte aligned");
  cudaFree(p);
  size_t fr = 0, tot = 0;
  cudaMemGetInfo(&fr, &tot);
  EXPECT(tot == (size_t)64 << 20, "PEFTKIT_CUDA_SIM_MB=64 gives a 64 MiB device (%zu)", tot);
  void* big = nullptr;
  EXPECT(cudaMalloc(&big, (size_t)100 << 20) == cudaErrorMemoryAllocation && big == nullptr, "out of memory is reported");
  void* h = nullptr;
  unsigned flags = 7;
  EXPECT(cudaHostAlloc(&h, 64, cudaHostAllocDefault) == cudaSuccess, "cudaHostAlloc");
  EXPECT(cudaHostGetFlags(&flags, (char*)h + 10) == cudaSuccess, "an address inside a pinned allocation is pinned");
  int stack_var = 0;
  EXPECT(cudaHostGetFlags(&flags, &stack_var) == cudaErrorInvalidValue, "pageable memory is not");
  cudaFreeHost(h);
}

// ---- cuBLASLt ----
void test_cublaslt() {
  // Column-major D (m×n) = op(A)·op(B) + beta·C + bias, A given transposed (k×m), B not (k×n);
  // batch 2 with B broadcast (stride 0).
  const int m = 5, n = 3, k = 4, batch = 2;
  std::vector<float> A(batch * k * m), B(k * n), C(batch * m * n), bias(m), D(batch * m * n, -1);
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-1, 1);
  for (float& v : A) v = u(rng);
  for (float& v : B) v = u(rng);
  for (float& v : C) v = u(rng);
  for (float& v : bias) v = u(rng);
  cublasLtHandle_t hd;
  cublasLtCreate(&hd);
  cublasLtMatmulDesc_t desc;
  cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
  int32_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  EXPECT(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta) == CUBLAS_STATUS_SUCCESS, "transa");
  cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
  int64_t wrong = CUBLAS_OP_T;
  EXPECT(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &wrong, sizeof wrong) == CUBLAS_STATUS_INVALID_VALUE,
         "an int64 payload for an int32 attribute is refused, as cuBLASLt does");
  uint32_t epi = CUBLASLT_EPILOGUE_BIAS;
  const float* bp = bias.data();
  cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi);
  cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp, sizeof bp);
  cublasLtMatrixLayout_t la, lb, lc;
  cublasLtMatrixLayoutCreate(&la, CUDA_R_32F, k, m, k);
  cublasLtMatrixLayoutCreate(&lb, CUDA_R_32F, k, n, k);
  cublasLtMatrixLayoutCreate(&lc, CUDA_R_32F, m, n, m);
  int32_t bc = batch;
  int64_t sa = k * m, sb = 0, sc = m * n;
  cublasLtMatrixLayoutSetAttribute(la, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof bc);
  cublasLtMatrixLayoutSetAttribute(la, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &sa, sizeof sa);
  cublasLtMatrixLayoutSetAttribute(lb, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof bc);
  cublasLtMatrixLayoutSetAttribute(lb, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &sb, sizeof sb);
  cublasLtMatrixLayoutSetAttribute(lc, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof bc);
  cublasLtMatrixLayoutSetAttribute(lc, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &sc, sizeof sc);
  cublasLtMatmulPreference_t pref;
  cublasLtMatmulPreferenceCreate(&pref);
  uint32_t al = 4;
  for (auto a : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                 CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
    cublasLtMatmulPreferenceSetAttribute(pref, a, &al, sizeof al);
  cublasLtMatmulHeuristicResult_t res[1];
  int found = 0;
  EXPECT(cublasLtMatmulAlgoGetHeuristic(hd, desc, la, lb, lc, lc, pref, 1, res, &found) == CUBLAS_STATUS_SUCCESS && found == 1 &&
             res[0].state == CUBLAS_STATUS_SUCCESS, "heuristic");
  float alpha = 1.0f, beta = 0.5f;
  EXPECT(cublasLtMatmul(hd, desc, &alpha, A.data(), la, B.data(), lb, &beta, C.data(), lc, D.data(), lc, &res[0].algo, nullptr, 0,
                        nullptr) == CUBLAS_STATUS_SUCCESS, "matmul");
  for (int bi = 0; bi < batch; bi++)
    for (int j = 0; j < n; j++)
      for (int i = 0; i < m; i++) {
        double s = 0;
        for (int p = 0; p < k; p++) s += (double)A[bi * k * m + i * k + p] * B[j * k + p];
        const double want = s + 0.5 * C[bi * m * n + j * m + i] + bias[i];
        EXPECT(std::fabs(D[bi * m * n + j * m + i] - want) < 1e-5, "D[%d](%d,%d) = %g, want %g", bi, i, j, D[bi * m * n + j * m + i], want);
      }
  // A pointer less aligned than the algorithm was chosen for is refused.
  uint32_t al16 = 16;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al16, sizeof al16);
  cublasLtMatmulAlgoGetHeuristic(hd, desc, la, lb, lc, lc, pref, 1, res, &found);
  std::vector<float> A2(A.size() + 4);
  const float* mis = A2.data() + ((uintptr_t)A2.data() % 16 ? 0 : 1);
  EXPECT(cublasLtMatmul(hd, desc, &alpha, mis, la, B.data(), lb, &beta, C.data(), lc, D.data(), lc, &res[0].algo, nullptr, 0, nullptr) ==
             CUBLAS_STATUS_INVALID_VALUE, "misaligned A");
  // f16 inputs with an f64 compute type: no such kernel.
  cublasLtMatmulDesc_t d64;
  cublasLtMatrixLayout_t h16;
  cublasLtMatmulDescCreate(&d64, CUBLAS_COMPUTE_64F, CUDA_R_64F);
  cublasLtMatrixLayoutCreate(&h16, CUDA_R_16F, 8, 8, 8);
  EXPECT(cublasLtMatmulAlgoGetHeuristic(hd, d64, h16, h16, h16, h16, pref, 1, res, &found) == CUBLAS_STATUS_NOT_SUPPORTED && found == 0,
         "unsupported type combination");
  for (auto l : {la, lb, lc, h16}) cublasLtMatrixLayoutDestroy(l);
  cublasLtMatmulDescDestroy(desc);
  cublasLtMatmulDescDestroy(d64);
  cublasLtMatmulPreferenceDestroy(pref);
}

}  // namespace

int main() {
  setenv("PEFTKIT_CUDA_SIM_MB", "64", 1);   // read at the first runtime call
  test_memory();
  test_block_execution();
  test_shuffles();
  test_misuse();
  test_mma();
  test_ldmatrix();
  test_cublaslt();
  return pktest::finish("cuda_sim_test");
}
