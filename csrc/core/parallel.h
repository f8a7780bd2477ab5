// parallel.h — peftkit's own thread pool: parallel_for over an index range.
//
// One process-wide pool (PEFTKIT_NUM_THREADS, default = hardware cores). The calling thread takes
// part. Nested calls, and calls made while another JS thread (worker_threads) is using the pool,
// run inline on the caller so the pool can never deadlock.
#pragma once
#include <cstdint>
#include <functional>

namespace pk {

int num_threads();
void set_num_threads(int n);   // n >= 1; resizes the pool

// Split [begin, end) into chunks of at least `grain` and run fn(lo, hi) on them in parallel.
void parallel_for(int64_t begin, int64_t end, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

// Run fn(tid, nthreads) once on each of `n` threads (n <= num_threads()); for kernels that
// partition work themselves (GEMM). Falls back to sequential calls when the pool is busy.
void parallel_run(int n, const std::function<void(int, int)>& fn);

}  // namespace pk
