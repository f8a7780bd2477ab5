// runtime.h — the CUDA backend's host API: device discovery, the caching allocator, the stream,
// whole-tensor host<->device copies. Plain C++ (no CUDA headers), so the N-API glue and tests
// compiled by g++ can include it; the implementation is runtime.cu.
//
// Nothing here crashes without a GPU or driver: query() reports why CUDA is unavailable, and
// every other entry point throws a pk::Error carrying that reason.
#pragma once
#include <cstdint>
#include <string>
#include <vector>
#include "core/tensor.h"
#include "caching_allocator.h"

namespace pk {
namespace cuda {

struct DeviceInfo {
  int index = 0;
  std::string name;
  int major = 0, minor = 0;          // compute capability
  int multiprocessors = 0;
  size_t total_bytes = 0, free_bytes = 0;
};

struct RuntimeInfo {
  bool available = false;
  bool emulated = false;             // the host-memory emulator (-DPEFTKIT_CUDA_EMU=ON, csrc/cuda_emu): no GPU
  std::string reason;                // why not available ("" when available)
  int driver_version = 0;            // e.g. 13000; 0 when no driver
  int runtime_version = 0;           // the cudart this addon links
  std::vector<DeviceInfo> devices;
};

// Never throws. Probes the driver once (cached); device free memory is re-read on every call.
RuntimeInfo query();
// Cheap check after the first probe; never throws.
bool available();
// Throws pk::Error("<op>: CUDA is not available: <reason>") unless a usable device exists; the
// first successful call selects device 0, creates the stream and warms the allocator.
void ensure_available(const char* op);

// The backend's single stream (a cudaStream_t, as void* for plain C++). All kernels, copies and
// cuBLASLt calls are issued on it, so freed blocks can be reused without events.
void* stream();
// Block the host until all queued work has finished (throws on an asynchronous kernel error).
void synchronize();

// Copy a whole tensor to `device` (contiguous result, same dtype). Returns t itself when it is
// already there. Non-contiguous sources are made contiguous first on their own device.
Tensor to_device(const Tensor& t, Device device);

// The caching allocator behind cuda_allocator() (Storage uses it for every cuda tensor).
AllocatorStats allocator_stats();
void empty_cache();                  // return cached (unused) blocks to the driver, pinned host blocks too
// offload.cu: return the pinned pool's unused blocks (cudaFreeHost); called by empty_cache().
void offload_empty_cache();
void reset_peak_stats();

}  // namespace cuda
}  // namespace pk
