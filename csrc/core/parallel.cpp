// parallel.cpp — a small fork-join pool: workers sleep on a condition variable between jobs.
#include "parallel.h"
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace pk {

namespace {

thread_local bool t_in_parallel = false;

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
    quit_ = false;
    // New workers start at the current generation, so they never pick up a finished job.
    uint64_t gen = generation_;
    for (int i = 1; i < nthreads_; i++) workers_.emplace_back([this, i, gen] { loop(i, gen); });
  }

  // Runs fn(tid, n) for tid in [0, n). Returns false if the pool was busy (caller runs inline).
  bool run(int n, const std::function<void(int, int)>& fn) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    n = std::min(n, nthreads_);
    {
      std::lock_guard<std::mutex> lk(m_);
      job_ = &fn; job_n_ = n; pending_ = n - 1; generation_++; error_ = nullptr;
    }
    cv_.notify_all();
    t_in_parallel = true;
    try { fn(0, n); } catch (...) { std::lock_guard<std::mutex> lk(m_); if (!error_) error_ = std::current_exception(); }
    t_in_parallel = false;
    std::unique_lock<std::mutex> lk(m_);
    done_cv_.wait(lk, [&] { return pending_ == 0; });
    job_ = nullptr;
    if (error_) { auto e = error_; error_ = nullptr; std::rethrow_exception(e); }
    return true;
  }

 private:
  void loop(int tid, uint64_t seen) {
    for (;;) {
      const std::function<void(int, int)>* job;
      int n;
      {
        std::unique_lock<std::mutex> lk(m_);
        cv_.wait(lk, [&] { return quit_ || generation_ != seen; });
        if (quit_) return;
        seen = generation_;
        job = job_; n = job_n_;
      }
      if (tid < n) {
        t_in_parallel = true;
        try { (*job)(tid, n); } catch (...) { std::lock_guard<std::mutex> lk(m_); if (!error_) error_ = std::current_exception(); }
        t_in_parallel = false;
        std::lock_guard<std::mutex> lk(m_);
        if (--pending_ == 0) done_cv_.notify_one();
      }
    }
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lk(m_);
      quit_ = true;
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
  int job_n_ = 0, pending_ = 0;
  uint64_t generation_ = 0;
  bool quit_ = false;
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
