// runtime.cpp (emulator) — runtime.h's host API over host memory: the emulated device, the real
// CachingAllocator over posix_memalign behind cuda_allocator(), host<->"device" copies, the device
// rules shared by the op files, and the registration of the copy/elementwise/reduce/matmul entries
// (the ones runtime.cu registers). See emu.h for why this exists; dev/CI only.
//
// The emulated device has PEFTKIT_CUDA_EMU_MB MiB (default: the machine's physical memory):
// allocations beyond it fail like cudaMalloc does, so the allocator's flush-and-retry path and the
// out-of-memory message run too.
#include <unistd.h>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include "cuda/ops.h"
#include "cuda/runtime.h"
#include "emu.h"

namespace pk {
namespace cuda {

namespace {

struct State {
  CachingAllocator* allocator = nullptr;   // leaked on purpose: outlives static destructors
  std::atomic<int64_t> raw_bytes{0};       // bytes currently obtained from posix_memalign
  size_t total = 0;
};

size_t physical_bytes() {
  long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? (size_t)pages * (size_t)page : size_t(16) << 30;
}

void* raw_alloc(size_t bytes, void* ctx);
void raw_free(void* p, void* ctx);

State& state() {
  static State* s = [] {
    State* n = new State();
    const char* mb = std::getenv("PEFTKIT_CUDA_EMU_MB");
    n->total = mb && *mb ? (size_t)std::strtoull(mb, nullptr, 10) << 20 : physical_bytes();
    n->allocator = new CachingAllocator(raw_alloc, raw_free, n);
    const char* nc = std::getenv("PEFTKIT_CUDA_NO_CACHE");
    if (nc && *nc && std::strcmp(nc, "0") != 0) n->allocator->set_caching(false);
    return n;
  }();
  return *s;
}

// Sizes are remembered by the allocator (its size classes), so raw_free gets them from a side table.
std::mutex& sizes_mu() { static std::mutex* m = new std::mutex(); return *m; }
std::unordered_map<void*, size_t>& sizes() { static auto* m = new std::unordered_map<void*, size_t>(); return *m; }

void* raw_alloc(size_t bytes, void* ctx) {
  State& s = *static_cast<State*>(ctx);
  if ((size_t)s.raw_bytes.load() + bytes > s.total) return nullptr;   // "cudaMalloc: out of memory"
  void* p = nullptr;
  if (posix_memalign(&p, 256, bytes) != 0) return nullptr;           // cudaMalloc's 256-byte alignment
  s.raw_bytes.fetch_add((int64_t)bytes);
  std::lock_guard<std::mutex> lk(sizes_mu());
  sizes()[p] = bytes;
  return p;
}
void raw_free(void* p, void* ctx) {
  State& s = *static_cast<State*>(ctx);
  size_t n = 0;
  {
    std::lock_guard<std::mutex> lk(sizes_mu());
    auto it = sizes().find(p);
    if (it != sizes().end()) { n = it->second; sizes().erase(it); }
  }
  s.raw_bytes.fetch_sub((int64_t)n);
  std::free(p);
}

// ---- the Storage hooks (runtime.cu's, over the emulated device) ----
void* hook_alloc(size_t bytes) {
  State& s = state();
  void* p = s.allocator->allocate(bytes);
  if (!p) {
    AllocatorStats st = s.allocator->stats();
    size_t fr = emu_free_bytes();
    fail("cuda: out of GPU memory allocating ", bytes, " bytes (", CachingAllocator::round_size(bytes),
         " reserved); peftkit holds ", st.allocated_bytes, " bytes in tensors and ", st.reserved_bytes,
         " reserved; the device has ", fr, " of ", s.total, " bytes free");
  }
  return p;
}
void hook_free(void* p) { state().allocator->release(p); }

}  // namespace

size_t emu_total_bytes() { return state().total; }
size_t emu_free_bytes() {
  State& s = state();
  const size_t used = (size_t)s.raw_bytes.load();
  return s.total > used ? s.total - used : 0;
}

// CudaOps entries no emulator file filled. The table is all function pointers (checked below), so it
// is read slot by slot: when csrc/core/dispatch.h gains an entry that csrc/cuda_emu lacks, query()
// says so in `reason` (scripts/gpu-emu.js fails on it) instead of the op throwing "needs CUDA" later.
int unfilled_ops() {
  static_assert(sizeof(CudaOps) % sizeof(void (*)()) == 0, "CudaOps must hold only function pointers");
  const CudaOps& o = cuda_ops();
  const auto* bytes = reinterpret_cast<const unsigned char*>(&o);
  int n = 0;
  for (size_t at = 0; at < sizeof(CudaOps); at += sizeof(void (*)())) {
    void (*f)() = nullptr;
    std::memcpy(&f, bytes + at, sizeof(f));
    if (!f) n++;
  }
  return n;
}

RuntimeInfo query() {
  RuntimeInfo r;
  r.available = true;
  r.emulated = true;
  if (int n = unfilled_ops())
    r.reason = "the CUDA emulator leaves " + std::to_string(n) + " CudaOps entries unset: csrc/cuda_emu is behind csrc/core/dispatch.h";
  DeviceInfo d;
  d.index = 0;
  d.name = "peftkit CUDA emulator (host memory)";
  d.major = 9;   // reported as the H200 the GPU sessions use, so sm_80+ code paths are taken in lib/ and tests
  d.minor = 0;
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  d.multiprocessors = cores > 0 ? (int)cores : 1;
  d.total_bytes = state().total;
  d.free_bytes = emu_free_bytes();
  r.devices.push_back(d);
  return r;
}

bool available() { return true; }

void ensure_available(const char*) { state(); }

void* stream() { return nullptr; }   // one "stream": every emulated op completes before it returns

void synchronize() {}

AllocatorStats allocator_stats() { return state().allocator->stats(); }
void empty_cache() { state().allocator->empty_cache(); }
void reset_peak_stats() { state().allocator->reset_peaks(); }

bool have_cublaslt() { return true; }   // emulated matmul always works

void check_cuda(const Tensor& t, const char* op, const char* arg) {
  check_defined(t, op, arg);
  PK_CHECK(t.device() == Device::CUDA, op, ": argument '", arg, "' is ", t.desc(), " on ", device_name(t.device()),
           "; expected a cuda tensor (move it with .to('cuda'))");
}

Tensor on_cuda(const Tensor& t, const char* op, const char* arg) {
  check_defined(t, op, arg);
  if (t.device() == Device::CUDA) return t;
  PK_CHECK(t.dim() == 0, op, ": argument '", arg, "' is ", t.desc(), " on cpu; expected a cuda tensor (only 0-d cpu scalars mix with cuda tensors)");
  return to_device(t, Device::CUDA);
}

void check_q4_devices(const Quant4State& s, const char* op) {
  check_defined(s.packed, op, "packed weight"); check_cuda(s.packed, op, "packed weight");
  check_defined(s.absmax, op, "absmax"); check_cuda(s.absmax, op, "absmax");
}

Tensor to_device(const Tensor& t, Device device) {
  check_defined(t, "to_device", "tensor");
  if (t.device() == device) return t;
  ensure_available("to_device");
  emu::Ctx ctx;
  Tensor src = ctx.host(t).contiguous();   // a CPU copy when strided (the real one copies on the source device)
  Tensor out = Tensor::empty(t.shape(), t.dtype(), device);
  if (out.nbytes()) std::memcpy(out.raw(), src.raw(), out.nbytes());
  return out;
}

// ---- registration into the core's hook tables (runs when the addon loads) ----
namespace {
Tensor clone_hook(const Tensor& t) { return clone(t); }
struct Registrar {
  Registrar() {
    auto& a = cuda_allocator();
    a.alloc = hook_alloc;
    a.free = hook_free;
    CudaOps& o = cuda_ops();
    o.to_device = to_device;
    o.copy_into = copy_into;
    o.clone = clone_hook;
    o.cast = cast;
    o.zeros = zeros;
    o.full = full;
    o.binary_forward = binary_forward;
    o.binary_backward = binary_backward;
    o.scalar_forward = scalar_forward;
    o.scalar_backward = scalar_backward;
    o.unary_forward = unary_forward;
    o.unary_backward = unary_backward;
    o.clamp = clamp;
    o.clamp_backward = clamp_backward;
    o.sum = sum;
    o.mean = mean;
    o.sum_to_shape = sum_to_shape;
    o.max_dim = max_dim;
    o.matmul = matmul;
    o.linear = linear;
    o.linear_weight_grad = linear_weight_grad;
  }
};
Registrar registrar;
}  // namespace

}  // namespace cuda
}  // namespace pk
