// parallel.cpp — a small fork-join pool. Between jobs a worker first spins briefly on the job
// counter, then sleeps on a condition variable; the caller likewise spins briefly for the last
// worker before sleeping.
//
// Why spin: a training step runs thousands of parallel regions of 0.1-2 ms (GEMM phases, row
// ops), separated by microseconds of JS. A condition-variable wake-up costs tens of microseconds
// (a futex syscall and a scheduler hop; more on a VM), paid twice per region: measured, the
// second thread bought only 1.06-1.5x on the 35M model's small GEMMs. A spin of ~50 us covers
// the gap between back-to-back regions, and an idle pool still goes to sleep at once after it
// (OpenMP runtimes do the same, with longer spins).
#include "parallel.h"
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace pk {

namespace {

thread_local bool t_in_parallel = false;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(_M_X64)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// Spin for about `us` microseconds (checked against the clock every 64 pauses) until pred().
template <class Pred> bool spin_until(Pred pred, int us) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(us);
  for (int i = 0;; i++) {
    if (pred()) return true;
    cpu_relax();
    if ((i & 63) == 63 && std::chrono::steady_clock::now() >= until) return pred();
  }
}

// PEFTKIT_SPIN_US: how long workers and the caller spin before sleeping (default 50; 0 = never).
int spin_us() {
  static const int v = [] {
    const char* e = std::getenv("PEFTKIT_SPIN_US");
    const int x = e ? std::atoi(e) : 50;
    return std::max(0, std::min(x, 100000));
  }();
  return v;
}

class Pool {
 public:
  Pool() {
    int n = (int)std::thread::hardware_concurrency();
    if (const char* e = std::getenv("PEFTKIT_NUM_THREADS")) {
      int v = std::atoi(e);
      if (v >= 1) n = v;
    }
    resize(std::max(1, n));
  }
  ~Pool() { stop(); }

  int size() const { return nthreads_; }

  void resize(int n) {
    std::lock_guard<std::mutex> busy(busy_);
    stop();
    nthreads_ = std::max(1, std::min(n, 1024));
    quit_.store(false);
    // New workers start at the current generation, so they never pick up a finished job.
    uint64_t gen = generation_.load();
    for (int i = 1; i < nthreads_; i++) workers_.emplace_back([this, i, gen] { loop(i, gen); });
  }

  // Runs fn(tid, n) for tid in [0, n). Returns false if the pool was busy (caller runs inline).
  bool run(int n, const std::function<void(int, int)>& fn) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    n = std::min(n, nthreads_);
    bool wake;
    {
      // Published under the mutex so a worker about to sleep either sees the new generation in
      // its wait predicate or is counted in sleepers_ and gets notified.
      std::lock_guard<std::mutex> lk(m_);
      job_ = &fn; job_n_ = n; error_ = nullptr;
      pending_.store(n - 1, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
      wake = sleepers_ > 0;
    }
    if (wake) cv_.notify_all();
    t_in_parallel = true;
    try { fn(0, n); } catch (...) { std::lock_guard<std::mutex> lk(m_); if (!error_) error_ = std::current_exception(); }
    t_in_parallel = false;
    if (!spin_until([&] { return pending_.load(std::memory_order_acquire) == 0; }, spin_us())) {
      std::unique_lock<std::mutex> lk(m_);
      done_cv_.wait(lk, [&] { return pending_.load(std::memory_order_acquire) == 0; });
    }
    std::lock_guard<std::mutex> lk(m_);
    job_ = nullptr;
    if (error_) { auto e = error_; error_ = nullptr; std::rethrow_exception(e); }
    return true;
  }

 private:
  void loop(int tid, uint64_t seen) {
    for (;;) {
      const std::function<void(int, int)>* job;
      int n;
      auto ready = [&] { return quit_.load(std::memory_order_acquire) || generation_.load(std::memory_order_acquire) != seen; };
      if (!spin_until(ready, spin_us())) {
        std::unique_lock<std::mutex> lk(m_);
        sleepers_++;
        cv_.wait(lk, ready);
        sleepers_--;
      }
      {
        std::lock_guard<std::mutex> lk(m_);   // job_/job_n_ were written under it
        if (quit_.load()) return;
        seen = generation_.load();
        job = job_; n = job_n_;
      }
      if (tid < n) {
        t_in_parallel = true;
        try { (*job)(tid, n); } catch (...) { std::lock_guard<std::mutex> lk(m_); if (!error_) error_ = std::current_exception(); }
        t_in_parallel = false;
        if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
          std::lock_guard<std::mutex> lk(m_);   // the caller may be asleep in done_cv_.wait
          done_cv_.notify_one();
        }
      }
    }
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lk(m_);
      quit_.store(true);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  int nthreads_ = 1;
  std::vector<std::thread> workers_;
  std::mutex m_, busy_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int, int)>* job_ = nullptr;
  int job_n_ = 0;
  int sleepers_ = 0;                      // workers blocked in cv_.wait (guarded by m_)
  std::atomic<int> pending_{0};           // workers still running the current job
  std::atomic<uint64_t> generation_{0};   // bumped once per job
  std::atomic<bool> quit_{false};
  std::exception_ptr error_;
};

Pool& pool() {
  static Pool* p = new Pool();  // leaked on purpose: no join at static-destruction time
  return *p;
}

}  // namespace

int num_threads() { return pool().size(); }
void set_num_threads(int n) { pool().resize(n); }

void parallel_run(int n, const std::function<void(int, int)>& fn) {
  n = std::max(1, std::min(n, num_threads()));
  if (n == 1 || t_in_parallel || !pool().run(n, fn)) {
    for (int t = 0; t < n; t++) fn(t, n);
  }
}

void parallel_for(int64_t begin, int64_t end, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (end <= begin) return;
  grain = std::max<int64_t>(grain, 1);
  int64_t range = end - begin;
  int64_t max_chunks = (range + grain - 1) / grain;
  int nt = (int)std::min<int64_t>(num_threads(), max_chunks);
  if (nt <= 1 || t_in_parallel) { fn(begin, end); return; }
  auto body = [&](int tid, int n) {
    int64_t chunk = (range + n - 1) / n;
    int64_t lo = begin + tid * chunk, hi = std::min(end, lo + chunk);
    if (lo < hi) fn(lo, hi);
  };
  if (!pool().run(nt, body)) fn(begin, end);
}

}  // namespace pk
