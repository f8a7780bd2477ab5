// runtime_api.cpp — the CUDA simulator's engine (see include/pk_sim.h for what it is and is not):
// kernel launches as fibers, the warp- and block-level synchronisation between them, the
// tensor-core/ldmatrix emulation, and the CUDA runtime API over host memory.
//
// Launch: the configuration is checked as CUDA checks it (threads per block, grid limits, dynamic
// shared memory against the function's limit). Blocks run in index order; in a block every
// thread is a fiber with its own stack, started in thread order and run until it finishes or
// waits at a barrier. Barriers release when every thread that must arrive has arrived:
// __syncthreads waits for all threads of the block that have not exited; a warp-level sync
// (shuffle, vote, __syncwarp, mma, ldmatrix) for the lanes of its mask, which must all reach the
// same kind of instruction. When nothing can run and nothing can be released, the block is
// deadlocked: the launch fails with the threads and what each waits at, instead of hanging.
//
// Device memory comes from malloc, filled with 0xff bytes (NaN in every float format, -1 in the
// integers) so that reading memory no kernel wrote shows up in the results; the simulated device
// has PEFTKIT_CUDA_SIM_MB MiB (default 8192), so out-of-memory paths can be exercised.
#include <cuda_runtime.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#if !(defined(__x86_64__) && defined(__linux__))
#include <ucontext.h>
#endif
#if defined(__SANITIZE_ADDRESS__)   // PEFTKIT_CUDA_SIM_ASAN
#include <sanitizer/asan_interface.h>
#endif

struct CUstream_st { unsigned flags; };
struct CUevent_st { unsigned flags; };

namespace pk {
namespace sim {

thread_local ThreadCtx* g_ctx = nullptr;

namespace {

// ---------------------------------------------------------------- context switch
constexpr size_t kStackBytes = 256 * 1024;

#if defined(__x86_64__) && defined(__linux__)
// pk_sim_swap(save, load): pushes the callee-saved registers and MXCSR/x87 control words on the
// current stack, stores the stack pointer in *save, switches to `load` and pops the same frame.
extern "C" void pk_sim_swap(void** save_sp, void* load_sp);
asm(R"(
  .text
  .globl pk_sim_swap
  .type pk_sim_swap,@function
pk_sim_swap:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size pk_sim_swap,.-pk_sim_swap
  .section .note.GNU-stack,"",@progbits
  .text
)");
struct Context { void* sp = nullptr; };
// A fresh stack whose first swap "returns" into entry() with the ABI's alignment (rsp = 8 mod 16).
void make_context(Context& c, char* stack, void (*entry)()) {
  uintptr_t top = ((uintptr_t)(stack + kStackBytes)) & ~(uintptr_t)15;
  uint64_t* sp = reinterpret_cast<uint64_t*>(top);
  *--sp = 0;                                           // entry's return address (it never returns)
  *--sp = reinterpret_cast<uint64_t>(entry);           // popped by ret
  for (int i = 0; i < 6; i++) *--sp = 0;               // rbp rbx r12 r13 r14 r15
  --sp;
  reinterpret_cast<uint32_t*>(sp)[0] = 0x1f80;         // MXCSR default
  reinterpret_cast<uint32_t*>(sp)[1] = 0x037f;         // x87 control word default
  c.sp = sp;
}
inline void swap_context(Context& from, Context& to) { pk_sim_swap(&from.sp, to.sp); }
#else
struct Context { ucontext_t uc; };
void make_context(Context& c, char* stack, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = kStackBytes;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
inline void swap_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

// ---------------------------------------------------------------- fibers and blocks
enum class St : uint8_t { New, Runnable, BlockBar, WarpBar, Done };

struct Fiber {
  ThreadCtx ctx;
  St st = St::New;
  const char* bar = nullptr;   // the __syncthreads call site it waits at
  unsigned wmask = 0;
  WarpOp wop = WarpOp::Sync;
  LanePut put{};
  LanePut got[32];
  char* stack = nullptr;
  Context c;
};

struct Run {
  const std::function<void()>* body = nullptr;
  std::vector<Fiber> fibers;
  Fiber* cur = nullptr;
  Context sched;
  std::vector<unsigned char> smem;
  std::vector<const void*> shared_seen;   // static __shared__ arrays poisoned in this block
  std::vector<char*> free_stacks;
  bool failed = false;
  std::string error;
};
thread_local Run* g_run = nullptr;

// Per OS thread: stacks are reused across blocks and launches.
thread_local std::vector<char*> t_stack_pool;
char* take_stack() {
  if (!t_stack_pool.empty()) {
    char* s = t_stack_pool.back();
    t_stack_pool.pop_back();
#if defined(__SANITIZE_ADDRESS__)
    // A fiber abandoned mid-function (or ended by a switch, never returning) leaves its frames'
    // redzones poisoned in the shadow memory; the next fiber starts from a clean stack.
    ASAN_UNPOISON_MEMORY_REGION(s, kStackBytes);
#endif
    return s;
  }
  char* s = static_cast<char*>(std::malloc(kStackBytes));
  if (!s) { std::fprintf(stderr, "peftkit CUDA simulator: out of memory for a fiber stack\n"); std::abort(); }
  return s;
}
void give_stack(char* s) { t_stack_pool.push_back(s); }

const char* op_name(WarpOp op) {
  switch (op) {
    case WarpOp::Sync: return "__syncwarp";
    case WarpOp::Shuffle: return "a shuffle";
    case WarpOp::Vote: return "a vote";
    case WarpOp::Mma: return "mma.sync";
    case WarpOp::Ldmatrix: return "ldmatrix";
  }
  return "?";
}

std::string block_name(const ThreadCtx& c) {
  char b[80];
  std::snprintf(b, sizeof b, "block (%u,%u,%u)", c.bid.x, c.bid.y, c.bid.z);
  return b;
}
std::string where(const ThreadCtx& c) {
  char b[80];
  std::snprintf(b, sizeof b, " thread (%u,%u,%u)", c.tid.x, c.tid.y, c.tid.z);
  return block_name(c) + b;
}

void device_fail_here(const char* what);

[[noreturn]] void fiber_entry() {
  Run* r = g_run;
  try {
    (*r->body)();
  } catch (const std::exception& e) {
    device_fail_here(e.what());   // an exception must not unwind off a fiber's stack
  } catch (...) {
    device_fail_here("a C++ exception");
  }
  r->cur->st = St::Done;
  swap_context(r->cur->c, r->sched);
  std::abort();   // never resumed
}

void yield_to_scheduler() {
  Run* r = g_run;
  swap_context(r->cur->c, r->sched);
}

void fail_block(Run& r, const std::string& msg) {
  r.failed = true;
  r.error = msg;
}

// Releases warp groups whose lanes have all arrived; false on a misuse (r.failed set).
bool release_warps(Run& r, bool* progressed) {
  const int n = (int)r.fibers.size();
  for (int w0 = 0; w0 < n; w0 += 32) {
    const int lanes = std::min(32, n - w0);
    for (int l = 0; l < lanes; l++) {
      Fiber& f = r.fibers[w0 + l];
      if (f.st != St::WarpBar) continue;
      const unsigned m = f.wmask;
      bool ready = true;
      for (int j = 0; j < 32 && ready; j++) {
        if (!((m >> j) & 1u)) continue;
        if (j >= lanes) {
          fail_block(r, where(f.ctx) + ": " + op_name(f.wop) + " with mask " + std::to_string(m) +
                        " names lane " + std::to_string(j) + ", which this block does not have");
          return false;
        }
        Fiber& g = r.fibers[w0 + j];
        if (g.st == St::Done) {
          fail_block(r, where(f.ctx) + ": " + op_name(f.wop) + " waits for lane " + std::to_string(j) +
                        ", which has exited");
          return false;
        }
        if (g.st != St::WarpBar || g.wmask != m) ready = false;
      }
      if (!ready) continue;
      LanePut all[32] = {};
      for (int j = 0; j < 32; j++) {
        if (!((m >> j) & 1u)) continue;
        Fiber& g = r.fibers[w0 + j];
        if (g.wop != f.wop) {
          fail_block(r, where(f.ctx) + " is at " + op_name(f.wop) + " while lane " + std::to_string(j) + " of its warp is at " +
                        op_name(g.wop) + " (same mask): the lanes are not executing the same instruction");
          return false;
        }
        all[j] = g.put;
      }
      for (int j = 0; j < 32; j++) {
        if (!((m >> j) & 1u)) continue;
        Fiber& g = r.fibers[w0 + j];
        std::memcpy(g.got, all, sizeof all);
        g.st = St::Runnable;
      }
      *progressed = true;
    }
  }
  return true;
}

std::string deadlock_report(const Run& r) {
  int at_block = 0, at_warp = 0, done = 0;
  std::string sample;
  for (const Fiber& f : r.fibers) {
    if (f.st == St::BlockBar) at_block++;
    else if (f.st == St::WarpBar) {
      at_warp++;
      if (sample.size() < 400) sample += "\n  " + where(f.ctx) + " waits at " + op_name(f.wop) + " (mask " + std::to_string(f.wmask) + ")";
    } else if (f.st == St::Done) done++;
  }
  return "deadlock in " + block_name(r.fibers[0].ctx) + ": " +
         std::to_string(at_block) + " threads wait at __syncthreads, " + std::to_string(at_warp) +
         " at a warp-level sync whose other lanes never arrive, " + std::to_string(done) + " have exited" + sample;
}

// PEFTKIT_CUDA_SIM_ORDER=reverse runs the threads of a block last-to-first between barriers: a
// shared-memory read that lacks the barrier after another thread's write then sees garbage in
// one of the two orders (a poor man's racecheck; CI runs the kernel suites both ways).
bool reverse_order() {
  static const bool rev = [] {
    const char* o = std::getenv("PEFTKIT_CUDA_SIM_ORDER");
    return o && std::strcmp(o, "reverse") == 0;
  }();
  return rev;
}

// Runs one block to completion; false when it failed (r.error says why).
bool run_block(Run& r) {
  const bool rev = reverse_order();
  const size_t n = r.fibers.size();
  for (;;) {
    bool progressed = false;
    for (size_t k = 0; k < n; k++) {
      Fiber& f = r.fibers[rev ? n - 1 - k : k];
      if (f.st != St::New && f.st != St::Runnable) continue;
      if (f.st == St::New) {
        f.stack = take_stack();
        make_context(f.c, f.stack, fiber_entry);
        f.st = St::Runnable;
      }
      r.cur = &f;
      g_ctx = &f.ctx;
      swap_context(r.sched, f.c);
      g_ctx = nullptr;
      progressed = true;
      if (f.st == St::Done) { give_stack(f.stack); f.stack = nullptr; }
      if (r.failed) return false;
    }
    if (!release_warps(r, &progressed)) return false;
    int alive = 0, at_bar = 0;
    for (const Fiber& f : r.fibers) {
      if (f.st != St::Done) alive++;
      if (f.st == St::BlockBar) at_bar++;
    }
    if (alive == 0) return true;
    if (at_bar == alive) {
      // CUDA: __syncthreads in conditional code only if the condition is the same for the whole
      // block, and every thread must reach it. The hardware would often let a mismatch pass.
      const Fiber* first = nullptr;   // a waiting thread (alive > 0, so there is one)
      for (const Fiber& f : r.fibers) if (f.st == St::BlockBar) { first = &f; break; }
      for (const Fiber& f : r.fibers) {
        if (f.st == St::Done) {
          fail_block(r, where(f.ctx) + " has exited while other threads of its block wait at __syncthreads (" +
                            first->bar + "): every thread must reach it");
          return false;
        }
        if (std::strcmp(f.bar, first->bar) != 0) {
          fail_block(r, where(first->ctx) + " waits at __syncthreads " + first->bar + " but " + where(f.ctx) + " at " + f.bar +
                            ": threads of a block at different barriers");
          return false;
        }
      }
      for (Fiber& f : r.fibers) if (f.st == St::BlockBar) f.st = St::Runnable;
      progressed = true;
    }
    if (!progressed) { fail_block(r, deadlock_report(r)); return false; }
  }
}

// ---------------------------------------------------------------- errors, device, memory
thread_local cudaError_t t_last = cudaSuccess;
thread_local cudaError_t t_sticky = cudaSuccess;   // a device-side failure, reported at the next sync too
thread_local std::string t_detail;

void set_error(cudaError_t e, const std::string& detail) {
  t_last = e;
  t_detail = detail;
}

struct Device {
  std::mutex mu;
  size_t total = 0, used = 0;
  std::unordered_map<void*, size_t> device, managed;
  std::map<uintptr_t, size_t> host;   // pinned host allocations (start -> bytes)
  std::unordered_map<const void*, int> max_dyn_smem;   // per kernel, cudaFuncSetAttribute
  int major = 9, minor = 0, sms = 4;
  size_t optin = 227 * 1024;
};
Device& dev() {
  static Device* d = [] {
    Device* x = new Device();
    const char* mb = std::getenv("PEFTKIT_CUDA_SIM_MB");
    x->total = (size_t)(mb && std::atoll(mb) > 0 ? std::atoll(mb) : 8192) << 20;
    if (const char* cc = std::getenv("PEFTKIT_CUDA_SIM_CC")) {   // e.g. "8.0" or "7.5"
      int a = 0, b = 0;
      if (std::sscanf(cc, "%d.%d", &a, &b) == 2 && a >= 7) { x->major = a; x->minor = b; }
    }
    if (const char* s = std::getenv("PEFTKIT_CUDA_SIM_SMS")) x->sms = std::max(1, std::atoi(s));
    x->optin = x->major >= 9 ? 227 * 1024 : x->major == 8 && x->minor == 0 ? 163 * 1024 : x->major == 8 ? 99 * 1024 : 64 * 1024;
    return x;
  }();
  return *d;
}

cudaError_t device_alloc(void** p, size_t n, bool managed) {
  if (!p) return cudaErrorInvalidValue;
  Device& d = dev();
  std::lock_guard<std::mutex> lk(d.mu);
  size_t bytes = std::max<size_t>(n, 1);
  if (d.used + bytes > d.total) { *p = nullptr; return cudaErrorMemoryAllocation; }
  void* q = nullptr;   // exactly `bytes` (256-byte aligned): under ASan one byte past the end is reported
  if (posix_memalign(&q, 256, bytes) != 0 || !q) { *p = nullptr; return cudaErrorMemoryAllocation; }
  std::memset(q, 0xff, bytes);
  (managed ? d.managed : d.device)[q] = bytes;
  d.used += bytes;
  *p = q;
  return cudaSuccess;
}

}  // namespace

// ---------------------------------------------------------------- device-side entry points
void syncthreads(const char* where) {
  g_run->cur->bar = where;
  g_run->cur->st = St::BlockBar;
  yield_to_scheduler();
}

const LanePut* warp_exchange(unsigned mask, const LanePut& put, WarpOp op) {
  Fiber* f = g_run->cur;
  if (!((mask >> f->ctx.lane) & 1u)) device_fail("a warp-level sync whose mask does not include the calling lane");
  f->wmask = mask;
  f->wop = op;
  f->put = put;
  f->st = St::WarpBar;
  yield_to_scheduler();
  return f->got;
}

void device_fail(const char* what) {
  Run* r = g_run;
  if (!r) { std::fprintf(stderr, "peftkit CUDA simulator: %s outside a kernel\n", what); std::abort(); }
  fail_block(*r, where(r->cur->ctx) + ": " + what);
  r->cur->st = St::Done;
  swap_context(r->cur->c, r->sched);
  std::abort();
}

unsigned char* dynamic_smem() { return g_run->smem.data(); }

void poison_shared_once(void* p, size_t n) {
  Run* r = g_run;
  if (!r) return;
  for (const void* q : r->shared_seen) if (q == p) return;
  r->shared_seen.push_back(p);
  std::memset(p, 0xff, n);
}

namespace {
void device_fail_here(const char* what) { device_fail(what); }
}  // namespace

// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 — PTX ISA "Matrix Fragments
// for mma.m16n8k16" (layouts in csrc/cuda/mma_frag.h): every lane contributes its A and B
// registers, every lane computes its four accumulators from the whole tile (products exact in
// f64, one rounding to f32).
void mma_m16n8k16_f32(bool bf16, float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  LanePut p{{(uint64_t)a[0] | (uint64_t)a[1] << 32, (uint64_t)a[2] | (uint64_t)a[3] << 32, (uint64_t)b0 | (uint64_t)b1 << 32, 0}};
  const LanePut* all = warp_exchange(0xffffffffu, p, WarpOp::Mma);
  auto half = [bf16](uint32_t v) { return bf16 ? ::pk::bf16_to_f32((uint16_t)v) : ::pk::f16_to_f32((uint16_t)v); };
  float A[16][16], B[16][8];
  for (int l = 0; l < 32; l++) {
    const int g = l >> 2, t = l & 3;
    for (int r = 0; r < 4; r++) {
      uint32_t v = (uint32_t)(all[l].w[r >> 1] >> (32 * (r & 1)));
      int row = g + 8 * (r & 1), col = 2 * t + 8 * (r >> 1);
      A[row][col] = half(v & 0xffffu);
      A[row][col + 1] = half(v >> 16);
    }
    for (int r = 0; r < 2; r++) {
      uint32_t v = (uint32_t)(all[l].w[2] >> (32 * r));
      int k = 2 * t + 8 * r;
      B[k][g] = half(v & 0xffffu);
      B[k + 1][g] = half(v >> 16);
    }
  }
  const int lane = g_ctx->lane, g = lane >> 2, t = lane & 3;
  for (int e = 0; e < 4; e++) {
    const int row = g + 8 * (e >> 1), col = 2 * t + (e & 1);
    double s = c[e];
    for (int k = 0; k < 16; k++) s += (double)A[row][k] * B[k][col];
    c[e] = (float)s;
  }
}

// ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16: lanes 8m..8m+7 give the row addresses of matrix
// m (8 b16 each, 16-byte aligned); with .trans register m of lane l holds (rows 2(l%4), 2(l%4)+1;
// column l/4) of matrix m, the lower row in the low half.
void ldmatrix_x4_trans(const void* p, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
  if ((uintptr_t)p % 16) device_fail("ldmatrix row address not 16-byte aligned");
  LanePut put{{(uint64_t)(uintptr_t)p, 0, 0, 0}};
  const LanePut* all = warp_exchange(0xffffffffu, put, WarpOp::Ldmatrix);
  const int l = g_ctx->lane;
  uint32_t out[4];
  for (int m = 0; m < 4; m++) {
    uint32_t v = 0;
    for (int h = 0; h < 2; h++) {
      const uint16_t* row = reinterpret_cast<const uint16_t*>((uintptr_t)all[8 * m + 2 * (l % 4) + h].w[0]);
      v |= (uint32_t)row[l >> 2] << (16 * h);
    }
    out[m] = v;
  }
  r0 = out[0]; r1 = out[1]; r2 = out[2]; r3 = out[3];
}

// ---------------------------------------------------------------- launches
void run_grid(const void* fn, dim3 grid, dim3 block, size_t smem, const std::function<void()>& body) {
  const uint64_t nt = (uint64_t)block.x * block.y * block.z;
  if (nt == 0 || nt > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
    char b[200];
    std::snprintf(b, sizeof b, "invalid launch configuration: grid (%u,%u,%u), block (%u,%u,%u)", grid.x, grid.y, grid.z, block.x,
                  block.y, block.z);
    set_error(cudaErrorInvalidConfiguration, b);
    return;
  }
  size_t limit = 48 * 1024;
  {
    Device& d = dev();
    std::lock_guard<std::mutex> lk(d.mu);
    auto it = d.max_dyn_smem.find(fn);
    if (it != d.max_dyn_smem.end()) limit = (size_t)it->second;
  }
  if (smem > limit) {
    set_error(cudaErrorLaunchOutOfResources, "launch asks for " + std::to_string(smem) + " bytes of dynamic shared memory; the kernel's limit is " +
                                                 std::to_string(limit) + " (cudaFuncSetAttribute raises it up to the device's opt-in maximum)");
    return;
  }
  // A launch from inside a kernel (dynamic parallelism) is not something csrc/cuda does.
  if (g_run) device_fail("kernel launch from device code");
  Run r;
  r.body = &body;
  r.fibers.resize((size_t)nt);
  r.smem.resize(smem + 16);   // filled with 0xff per block below
  g_run = &r;
  for (unsigned bz = 0; bz < grid.z && !r.failed; bz++)
    for (unsigned by = 0; by < grid.y && !r.failed; by++)
      for (unsigned bx = 0; bx < grid.x && !r.failed; bx++) {
        int i = 0;
        for (unsigned tz = 0; tz < block.z; tz++)
          for (unsigned ty = 0; ty < block.y; ty++)
            for (unsigned tx = 0; tx < block.x; tx++, i++) {
              Fiber& f = r.fibers[i];
              f.ctx.tid = {tx, ty, tz};
              f.ctx.bid = {bx, by, bz};
              f.ctx.bdim = block;
              f.ctx.gdim = grid;
              f.ctx.linear = i;
              f.ctx.lane = i & 31;
              f.ctx.warp = i >> 5;
              f.st = St::New;
            }
        std::fill(r.smem.begin(), r.smem.end(), (unsigned char)0xff);   // each block starts with garbage
        r.shared_seen.clear();
        run_block(r);
        for (Fiber& f : r.fibers) if (f.stack) { give_stack(f.stack); f.stack = nullptr; }   // after a failure
      }
  g_run = nullptr;
  g_ctx = nullptr;
  if (r.failed) {
    set_error(cudaErrorLaunchFailure, r.error);
    t_sticky = cudaErrorLaunchFailure;
  }
}

}  // namespace sim
}  // namespace pk

// ---------------------------------------------------------------- the runtime API
using pk::sim::dev;
using pk::sim::Device;

namespace {
cudaError_t sync_point() {   // where CUDA reports an earlier kernel's failure
  cudaError_t e = pk::sim::t_sticky;
  pk::sim::t_sticky = cudaSuccess;
  return e;
}
}  // namespace

cudaError_t cudaGetDeviceCount(int* n) { if (!n) return cudaErrorInvalidValue; *n = 1; return cudaSuccess; }
cudaError_t cudaGetDevice(int* d) { if (!d) return cudaErrorInvalidValue; *d = 0; return cudaSuccess; }
cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidDevice; }
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d) {
  if (!p) return cudaErrorInvalidValue;
  if (d != 0) return cudaErrorInvalidDevice;
  Device& x = dev();
  std::memset(p, 0, sizeof *p);
  std::snprintf(p->name, sizeof p->name, "peftkit CUDA simulator (sm_%d%d, host memory)", x.major, x.minor);
  p->totalGlobalMem = x.total;
  p->sharedMemPerBlock = 48 * 1024;
  p->sharedMemPerBlockOptin = x.optin;
  p->warpSize_ = 32;
  p->maxThreadsPerBlock = 1024;
  p->major = x.major;
  p->minor = x.minor;
  p->multiProcessorCount = x.sms;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int d) {
  if (!v) return cudaErrorInvalidValue;
  if (d != 0) return cudaErrorInvalidDevice;
  switch (a) {
    case cudaDevAttrMaxThreadsPerBlock: *v = 1024; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *v = dev().major; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *v = dev().minor; return cudaSuccess;
    case cudaDevAttrConcurrentManagedAccess: *v = 1; return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}
cudaError_t cudaDriverGetVersion(int* v) { if (!v) return cudaErrorInvalidValue; *v = 13000; return cudaSuccess; }
cudaError_t cudaRuntimeGetVersion(int* v) { if (!v) return cudaErrorInvalidValue; *v = 13000; return cudaSuccess; }
cudaError_t cudaMemGetInfo(size_t* fr, size_t* tot) {
  if (!fr || !tot) return cudaErrorInvalidValue;
  Device& d = dev();
  std::lock_guard<std::mutex> lk(d.mu);
  *tot = d.total;
  *fr = d.total - d.used;
  return cudaSuccess;
}
cudaError_t cudaMalloc(void** p, size_t n) { return pk::sim::device_alloc(p, n, false); }
cudaError_t cudaMallocManaged(void** p, size_t n, unsigned) { return pk::sim::device_alloc(p, n, true); }
cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  Device& d = dev();
  std::lock_guard<std::mutex> lk(d.mu);
  for (auto* m : {&d.device, &d.managed}) {
    auto it = m->find(p);
    if (it != m->end()) {
      d.used -= it->second;
      m->erase(it);
      std::free(p);
      return cudaSuccess;
    }
  }
  return cudaErrorInvalidValue;
}
cudaError_t cudaMemPrefetchAsync(const void* p, size_t n, cudaMemLocation loc, unsigned, cudaStream_t) {
  Device& d = dev();
  std::lock_guard<std::mutex> lk(d.mu);
  if (loc.type != cudaMemLocationTypeDevice && loc.type != cudaMemLocationTypeHost) return cudaErrorInvalidValue;
  for (auto& kv : d.managed) {
    uintptr_t a = (uintptr_t)kv.first, q = (uintptr_t)p;
    if (q >= a && q + n <= a + kv.second) return cudaSuccess;
  }
  return cudaErrorInvalidValue;   // not managed memory
}
cudaError_t cudaHostAlloc(void** p, size_t n, unsigned) {
  if (!p) return cudaErrorInvalidValue;
  void* q = std::malloc(std::max<size_t>(n, 1));
  if (!q) return cudaErrorMemoryAllocation;
  Device& d = dev();
  std::lock_guard<std::mutex> lk(d.mu);
  d.host[(uintptr_t)q] = std::max<size_t>(n, 1);
  *p = q;
  return cudaSuccess;
}
cudaError_t cudaFreeHost(void* p) {
  if (!p) return cudaSuccess;
  Device& d = dev();
  std::lock_guard<std::mutex> lk(d.mu);
  auto it = d.host.find((uintptr_t)p);
  if (it == d.host.end()) return cudaErrorInvalidValue;
  d.host.erase(it);
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaHostGetFlags(unsigned* flags, void* p) {
  if (!flags) return cudaErrorInvalidValue;
  Device& d = dev();
  std::lock_guard<std::mutex> lk(d.mu);
  auto it = d.host.upper_bound((uintptr_t)p);
  if (it == d.host.begin()) return cudaErrorInvalidValue;
  --it;
  if ((uintptr_t)p >= it->first + it->second) return cudaErrorInvalidValue;
  *flags = 0;
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind) {
  cudaError_t e = sync_point();
  if (e != cudaSuccess) return e;
  if (n) std::memmove(dst, src, n);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind, cudaStream_t) {
  if (n && (!dst || !src)) return cudaErrorInvalidValue;
  if (n) std::memmove(dst, src, n);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) {
  if (n && !p) return cudaErrorInvalidValue;
  if (n) std::memset(p, v, n);
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags) {
  if (!s) return cudaErrorInvalidValue;
  *s = new CUstream_st{flags};
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) { delete s; return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return sync_point(); }
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t e, unsigned) { return e ? cudaSuccess : cudaErrorInvalidValue; }
cudaError_t cudaDeviceSynchronize() { return sync_point(); }
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned flags) {
  if (!e) return cudaErrorInvalidValue;
  *e = new CUevent_st{flags};
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) { delete e; return cudaSuccess; }
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) { return e ? cudaSuccess : cudaErrorInvalidValue; }
cudaError_t cudaEventQuery(cudaEvent_t e) { return e ? cudaSuccess : cudaErrorInvalidValue; }
cudaError_t cudaEventSynchronize(cudaEvent_t e) { return e ? sync_point() : cudaErrorInvalidValue; }
cudaError_t cudaGetLastError() {
  cudaError_t e = pk::sim::t_last;
  pk::sim::t_last = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return pk::sim::t_last; }
const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
  }
  return "cudaErrorUnknown";
}
const char* cudaGetErrorString(cudaError_t e) {
  static thread_local std::string s;
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorMemoryAllocation: return "out of memory (simulated device: PEFTKIT_CUDA_SIM_MB)";
    case cudaErrorInvalidConfiguration:
    case cudaErrorLaunchOutOfResources:
    case cudaErrorLaunchFailure:
      s = std::string(e == cudaErrorLaunchFailure ? "unspecified launch failure" : "invalid launch") + " [CUDA simulator: " +
          pk::sim::t_detail + "]";
      return s.c_str();
    default: return cudaGetErrorName(e);
  }
}
cudaError_t cudaFuncSetAttribute(const void* fn, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0) return cudaErrorInvalidValue;
  Device& d = dev();
  std::lock_guard<std::mutex> lk(d.mu);
  if ((size_t)value > d.optin) return cudaErrorInvalidValue;
  d.max_dyn_smem[fn] = value;
  return cudaSuccess;
}
