// runtime.cu — device discovery, the caching allocator over cudaMalloc, the backend's stream,
// host<->device tensor copies, and the registration of the backend into the core's hook tables
// (cuda_allocator() for Storage, cuda_ops() for op dispatch) at load time.
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include "common.cuh"
#if defined(PEFTKIT_CUDA_SIM) && defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif
#include "core/dispatch.h"
#include "ops.h"

namespace pk {
namespace cuda {

void throw_cuda_error(cudaError_t e, const char* call, const char* file, int line) {
  cudaGetLastError();  // clear a non-sticky error so later calls are not poisoned by it
  const char* f = std::strrchr(file, '/');
  fail("CUDA error: ", call, " failed: ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ") at ", f ? f + 1 : file, ":", line);
}

namespace {

struct State {
  std::once_flag probe_once;
  bool available = false;
  std::string reason;
  int driver_version = 0, runtime_version = 0, device_count = 0;
  std::once_flag init_once;
  bool initialised = false;
  std::string init_error;
  cudaStream_t stream = nullptr;
  int sms = 0;
  CachingAllocator* allocator = nullptr;   // leaked on purpose: outlives static destructors
};
State& state() {
  static State* s = new State();
  return *s;
}

void probe() {
  State& s = state();
  std::call_once(s.probe_once, [&] {
    cudaRuntimeGetVersion(&s.runtime_version);
    cudaError_t de = cudaDriverGetVersion(&s.driver_version);
    if (de != cudaSuccess) s.driver_version = 0;
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
      cudaGetLastError();
      s.available = false;
      std::string why = std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
      if (s.driver_version == 0)
        s.reason = "no NVIDIA driver found (" + why + ")";
      else if (s.driver_version < s.runtime_version)
        s.reason = "the NVIDIA driver supports CUDA " + std::to_string(s.driver_version / 1000) + "." +
                   std::to_string(s.driver_version % 1000 / 10) + " but this build needs " +
                   std::to_string(s.runtime_version / 1000) + "." + std::to_string(s.runtime_version % 1000 / 10) +
                   " (" + why + ")";
      else
        s.reason = "cudaGetDeviceCount failed (" + why + ")";
      return;
    }
    if (n == 0) {
      s.available = false;
      s.reason = "no CUDA device found";
      return;
    }
    s.device_count = n;
    s.available = true;
  });
}

void* raw_alloc(size_t bytes, void*) {
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, bytes);
  if (e != cudaSuccess) {
    cudaGetLastError();  // out of memory is not sticky; clear it
    return nullptr;
  }
  return p;
}
void raw_free(void* p, void*) { cudaFree(p); }
void before_release(void*) {
  State& s = state();
  if (s.stream) cudaStreamSynchronize(s.stream);
}

void initialise() {
  State& s = state();
  probe();
  if (!s.available) return;
  std::call_once(s.init_once, [&] {
    try {
      PK_CUDA_CHECK(cudaSetDevice(0));
      cudaDeviceProp prop;
      PK_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
      s.sms = prop.multiProcessorCount;
      PK_CUDA_CHECK(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking));
      s.allocator = new CachingAllocator(raw_alloc, raw_free, nullptr, before_release);
      const char* nc = std::getenv("PEFTKIT_CUDA_NO_CACHE");
      if (nc && *nc && std::strcmp(nc, "0") != 0) s.allocator->set_caching(false);
      s.initialised = true;
    } catch (const std::exception& e) {
      s.init_error = e.what();
    }
  });
}

// ---- the Storage hooks ----
void* hook_alloc(size_t bytes) {
  ensure_available("cuda allocation");
  State& s = state();
  void* p = s.allocator->allocate(bytes);
#if defined(PEFTKIT_CUDA_SIM) && defined(__SANITIZE_ADDRESS__)
  // CUDA simulator under AddressSanitizer: the block's slack past the tensor's bytes is poisoned,
  // so a kernel reading or writing one element too far is reported, not hidden by the size class.
  if (p) {
    size_t cls = s.allocator->block_size(p);
    ASAN_UNPOISON_MEMORY_REGION(p, bytes);
    ASAN_POISON_MEMORY_REGION(static_cast<char*>(p) + bytes, cls - bytes);
  }
#endif
  if (!p) {
    size_t fr = 0, tot = 0;
    cudaMemGetInfo(&fr, &tot);
    cudaGetLastError();
    AllocatorStats st = s.allocator->stats();
    fail("cuda: out of GPU memory allocating ", bytes, " bytes (", CachingAllocator::round_size(bytes),
         " reserved); peftkit holds ", st.allocated_bytes, " bytes in tensors and ", st.reserved_bytes,
         " reserved; the device has ", fr, " of ", tot, " bytes free");
  }
  return p;
}
void hook_free(void* p) {
  State& s = state();
#if defined(PEFTKIT_CUDA_SIM) && defined(__SANITIZE_ADDRESS__)
  if (s.allocator && p) {
    size_t cls = s.allocator->block_size(p);
    if (cls) ASAN_UNPOISON_MEMORY_REGION(p, cls);
  }
#endif
  if (s.allocator) s.allocator->release(p);
}

}  // namespace

RuntimeInfo query() {
  RuntimeInfo r;
  try {
    probe();
    State& s = state();
    r.available = s.available;
    r.reason = s.reason;
#ifdef PEFTKIT_CUDA_SIM
    r.emulated = true;   // the CUDA simulator (csrc/cuda_sim): real kernels, no GPU, meaningless timings
#endif
    r.driver_version = s.driver_version;
    r.runtime_version = s.runtime_version;
    if (!s.available) return r;
    for (int i = 0; i < s.device_count; i++) {
      DeviceInfo d;
      d.index = i;
      cudaDeviceProp prop;
      if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) { cudaGetLastError(); continue; }
      d.name = prop.name;
      d.major = prop.major;
      d.minor = prop.minor;
      d.multiprocessors = prop.multiProcessorCount;
      d.total_bytes = prop.totalGlobalMem;
      if (i == 0) {
        initialise();
        size_t fr = 0, tot = 0;
        if (s.initialised && cudaMemGetInfo(&fr, &tot) == cudaSuccess) { d.free_bytes = fr; d.total_bytes = tot; }
        else cudaGetLastError();
      }
      r.devices.push_back(d);
    }
    if (!s.initialised && !s.init_error.empty()) {
      r.available = false;
      r.reason = "device 0 could not be initialised: " + s.init_error;
    }
  } catch (const std::exception& e) {
    r.available = false;
    r.reason = std::string("CUDA probe failed: ") + e.what();
  }
  return r;
}

bool available() {
  try {
    initialise();
    return state().initialised;
  } catch (...) {
    return false;
  }
}

void ensure_available(const char* op) {
  initialise();
  State& s = state();
  if (s.initialised) return;
  fail(op, ": CUDA is not available: ", s.available ? "device 0 could not be initialised: " + s.init_error : s.reason);
}

void* stream() {
  ensure_available("cuda");
  return state().stream;
}

int sm_count() {
  ensure_available("cuda");
  return state().sms;
}

void synchronize() {
  ensure_available("synchronize");
  PK_CUDA_CHECK(cudaStreamSynchronize(state().stream));
}

AllocatorStats allocator_stats() {
  State& s = state();
  return s.allocator ? s.allocator->stats() : AllocatorStats{};
}

void empty_cache() {
  State& s = state();
  if (s.allocator) s.allocator->empty_cache();
  offload_empty_cache();
}

void reset_peak_stats() {
  State& s = state();
  if (s.allocator) s.allocator->reset_peaks();
}

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

Tensor to_device(const Tensor& t, Device device) {
  check_defined(t, "to_device", "tensor");
  if (t.device() == device) return t;
  ensure_available("to_device");
  cudaStream_t st = cur_stream();
  if (device == Device::CUDA) {
    Tensor src = t.contiguous();              // CPU copy when strided
    Tensor out = Tensor::empty(t.shape(), t.dtype(), Device::CUDA);
    if (out.nbytes())
      PK_CUDA_CHECK(cudaMemcpyAsync(out.raw(), src.raw(), out.nbytes(), cudaMemcpyHostToDevice, st));
    // Pageable source: the call returns once the bytes are staged, so `src` may go now.
    return out;
  }
  Tensor src = contiguous(t);                 // device copy when strided
  Tensor out = Tensor::empty(t.shape(), t.dtype(), Device::CPU);
  if (out.nbytes()) {
    PK_CUDA_CHECK(cudaMemcpyAsync(out.raw(), src.raw(), out.nbytes(), cudaMemcpyDeviceToHost, st));
  }
  PK_CUDA_CHECK(cudaStreamSynchronize(st));   // JS reads it next: the one place we must wait
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
