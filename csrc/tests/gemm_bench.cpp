// gemm_bench.cpp — GFLOP/s of pk::gemm_f32 on square and LLM shapes, 1 and 2 threads, f32 and
// bf16 operands, f32 and bf16 compute (dtype "bf16c:A,B:bf16" = bf16 operands with
// GemmCompute::Bf16, "bf16c:f32" = f32 operands rounded while packing); optionally side by side with OpenBLAS sgemm (build with -DPK_BENCH_OPENBLAS and
// link -lopenblas; the library itself never links a BLAS).
//
//   ./gemm_bench [reps=3] [filter]    e.g. ./gemm_bench 5 2048x2048x2048   (filter: shape or dtype)
//
// Build (from the repository root; per-file ISA flags as in CMakeLists.txt):
//   g++ -O3 -std=c++17 -Icsrc -c csrc/cpu/gemm.cpp csrc/core/parallel.cpp csrc/core/cpu_features.cpp
//   g++ -O3 -std=c++17 -Icsrc -mavx2 -mfma -mf16c -c csrc/cpu/gemm_avx2.cpp
//   g++ -O3 -std=c++17 -Icsrc -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512bf16 -mavx2 -mfma -mf16c
//       -c csrc/cpu/gemm_avx512.cpp    (one command)
//   g++ -O3 -std=c++17 -Icsrc -DPK_BENCH_OPENBLAS csrc/tests/gemm_bench.cpp *.o -lopenblas -lpthread
//
// Each figure is the best of `reps` timed runs after one warm-up (the machine is shared and
// noisy, so best-of is the stable statistic). Layout "nn": A row-major M x K, B row-major K x N;
// "nt": B given as an N x K row-major weight (x · W^T, as in nn.Linear).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/cpu_features.h"
#include "core/parallel.h"
#include "cpu/gemm.h"

#ifdef PK_BENCH_OPENBLAS
extern "C" {
enum CBLAS_ORDER { CblasRowMajor = 101, CblasColMajor = 102 };
enum CBLAS_TRANSPOSE { CblasNoTrans = 111, CblasTrans = 112 };
void cblas_sgemm(CBLAS_ORDER, CBLAS_TRANSPOSE, CBLAS_TRANSPOSE, int, int, int, float, const float*, int, const float*,
                 int, float, float*, int);
void openblas_set_num_threads(int);
}
#endif

using namespace pk;

namespace {

double best_seconds(int reps, const std::function<void()>& fn) {
  fn();  // warm-up: page faults, pool start, packing buffers
  double best = 1e30;
  for (int r = 0; r < reps; r++) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (s < best) best = s;
  }
  return best;
}

struct Case { int64_t M, N, K; const char* layout; const char* dt; };

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 3;
  const char* filter = argc > 2 ? argv[2] : nullptr;
  if (num_threads() < 2) set_num_threads(2);
  std::printf("gemm_bench: isa=%s, bf16 compute %s, pool=%d threads, best of %d\n", isa_name(cpu_isa()),
              gemm_bf16_compute_available() ? "avx512-bf16" : "unavailable (f32 fallback)", num_threads(), reps);

  const int64_t shapes[][3] = {{2048, 2048, 2048}, {2048, 4096, 4096}, {2048, 11008, 4096}, {2048, 4096, 11008}};
  std::vector<Case> cases;
  for (auto& s : shapes) {
    cases.push_back({s[0], s[1], s[2], "nn", "f32"});
    cases.push_back({s[0], s[1], s[2], "nt", "f32"});
    cases.push_back({s[0], s[1], s[2], "nt", "B:bf16"});
    cases.push_back({s[0], s[1], s[2], "nt", "A,B:bf16"});
    cases.push_back({s[0], s[1], s[2], "nn", "bf16c:A,B:bf16"});
    cases.push_back({s[0], s[1], s[2], "nt", "bf16c:A,B:bf16"});
    cases.push_back({s[0], s[1], s[2], "nt", "bf16c:f32"});
  }
  // Skinny shapes of LoRA training (rank 16) and single-row decoding.
  const int64_t skinny[][3] = {{2048, 16, 4096}, {2048, 4096, 16}, {16, 4096, 4096}, {1, 4096, 4096}};
  for (auto& s : skinny) cases.push_back({s[0], s[1], s[2], "nt", "f32"});

  std::printf("%-20s %-6s %-15s %3s %10s %10s %7s\n", "MxNxK", "layout", "dtype", "thr", "peftkit", "openblas", "ratio");
  for (const Case& c : cases) {
    char shape[64];
    std::snprintf(shape, sizeof shape, "%ldx%ldx%ld", (long)c.M, (long)c.N, (long)c.K);
    if (filter && !std::strstr(shape, filter) && !std::strstr(c.dt, filter)) continue;
    const bool nt = !std::strcmp(c.layout, "nt");
    const bool bf16c = !std::strncmp(c.dt, "bf16c:", 6);
    const char* opd = bf16c ? c.dt + 6 : c.dt;
    const bool a16 = !std::strcmp(opd, "A,B:bf16"), b16 = a16 || !std::strcmp(opd, "B:bf16");
    const GemmCompute compute = bf16c ? GemmCompute::Bf16 : GemmCompute::F32;
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> U(-1, 1);
    std::vector<float> A((size_t)(c.M * c.K)), B((size_t)(c.K * c.N)), C((size_t)(c.M * c.N));
    for (auto& x : A) x = U(rng);
    for (auto& x : B) x = U(rng);
    std::vector<uint16_t> A16, B16;
    if (a16) { A16.resize(A.size()); for (size_t i = 0; i < A.size(); i++) A16[i] = f32_to_bf16(A[i]); }
    if (b16) { B16.resize(B.size()); for (size_t i = 0; i < B.size(); i++) B16[i] = f32_to_bf16(B[i]); }
    GemmOperand a{a16 ? (const void*)A16.data() : A.data(), a16 ? DType::BF16 : DType::F32, c.K, 1};
    GemmOperand b{b16 ? (const void*)B16.data() : B.data(), b16 ? DType::BF16 : DType::F32, nt ? 1 : c.N,
                  nt ? c.K : 1};
    const double gflop = 2.0 * c.M * c.N * c.K * 1e-9;
    for (int thr = 1; thr <= 2; thr++) {
      const double t = best_seconds(reps, [&] { gemm_f32(c.M, c.N, c.K, a, b, C.data(), c.N, 1.0f, 0.0f, thr, compute); });
      double tb = 0;
#ifdef PK_BENCH_OPENBLAS
      openblas_set_num_threads(thr);
      tb = best_seconds(reps, [&] {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, nt ? CblasTrans : CblasNoTrans, (int)c.M, (int)c.N, (int)c.K, 1.0f,
                    A.data(), (int)c.K, B.data(), nt ? (int)c.K : (int)c.N, 0.0f, C.data(), (int)c.N);
      });
#endif
      const double g = gflop / t, gb = tb > 0 ? gflop / tb : 0;
      std::printf("%-20s %-6s %-15s %3d %10.1f %10.1f %7.2f\n", shape, c.layout, c.dt, thr, g, gb, gb > 0 ? g / gb : 0.0);
      std::fflush(stdout);
    }
  }
  return 0;
}
