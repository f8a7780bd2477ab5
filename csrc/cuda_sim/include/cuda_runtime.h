// cuda_runtime.h — the CUDA simulator's runtime API (see pk_sim.h): the types, constants and
// functions csrc/cuda uses, with the toolkit's names, values and signatures (CUDA 13), served from
// host memory by csrc/cuda_sim/runtime_api.cpp. Execution is synchronous: a launch has run when it
// returns, streams and events only keep their bookkeeping, copies are memcpy.
//
// Kernel launches: scripts/cuda-sim-pp.js rewrites `kernel<<<grid, block, smem, stream>>>(args)`
// into `::pk::sim::launcher(kernel, grid, block, smem, stream)(args)` before compiling.
#pragma once
#include <cstddef>
#include <cstdint>
#include <tuple>
#include "pk_sim.h"
#include "pk_sim_half.h"

typedef enum cudaError {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDevice = 101,
  cudaErrorNotReady = 600,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorLaunchFailure = 719,
} cudaError_t;

struct CUstream_st;
struct CUevent_st;
typedef CUstream_st* cudaStream_t;
typedef CUevent_st* cudaEvent_t;

enum cudaMemcpyKind { cudaMemcpyHostToHost = 0, cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2,
                      cudaMemcpyDeviceToDevice = 3, cudaMemcpyDefault = 4 };
enum cudaDeviceAttr { cudaDevAttrMaxThreadsPerBlock = 1, cudaDevAttrComputeCapabilityMajor = 75,
                      cudaDevAttrComputeCapabilityMinor = 76, cudaDevAttrConcurrentManagedAccess = 89 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaMemLocationType { cudaMemLocationTypeInvalid = 0, cudaMemLocationTypeDevice = 1, cudaMemLocationTypeHost = 2 };
struct cudaMemLocation { cudaMemLocationType type; int id; };

#define cudaStreamDefault 0x00
#define cudaStreamNonBlocking 0x01
#define cudaEventDefault 0x00
#define cudaEventDisableTiming 0x02
#define cudaHostAllocDefault 0x00
#define cudaMemAttachGlobal 0x01

struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  size_t sharedMemPerBlock;
  size_t sharedMemPerBlockOptin;
  int warpSize_;
  int maxThreadsPerBlock;
  int major, minor;
  int multiProcessorCount;
};

cudaError_t cudaGetDeviceCount(int* n);
cudaError_t cudaGetDevice(int* d);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d);
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int d);
cudaError_t cudaDriverGetVersion(int* v);
cudaError_t cudaRuntimeGetVersion(int* v);
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes);
cudaError_t cudaMalloc(void** p, size_t n);
cudaError_t cudaFree(void* p);
cudaError_t cudaMallocManaged(void** p, size_t n, unsigned flags = cudaMemAttachGlobal);
cudaError_t cudaMemPrefetchAsync(const void* p, size_t n, cudaMemLocation loc, unsigned flags, cudaStream_t s = 0);
cudaError_t cudaHostAlloc(void** p, size_t n, unsigned flags);
cudaError_t cudaFreeHost(void* p);
cudaError_t cudaHostGetFlags(unsigned* flags, void* p);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind k);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind k, cudaStream_t s = 0);
cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t s = 0);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags = 0);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = 0);
cudaError_t cudaEventQuery(cudaEvent_t e);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t e);
const char* cudaGetErrorName(cudaError_t e);
cudaError_t cudaFuncSetAttribute(const void* fn, cudaFuncAttribute attr, int value);
template <class F> inline cudaError_t cudaFuncSetAttribute(F* fn, cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(fn), attr, value);
}

namespace pk {
namespace sim {

// Runs `body` as every thread of the grid (runtime_api.cpp). A bad configuration sets the launch
// error (cudaPeekAtLastError) and runs nothing, as CUDA does; so does a device-side failure.
void run_grid(const void* fn, dim3 grid, dim3 block, size_t smem, const std::function<void()>& body);

template <class... KArgs> struct Launch {
  void (*fn)(KArgs...);
  dim3 grid, block;
  size_t smem;
  template <class... A> void operator()(A&&... a) const {
    // Arguments are converted and copied once, as a real launch copies them into the parameter buffer.
    auto args = std::tuple<std::decay_t<KArgs>...>(static_cast<KArgs>(std::forward<A>(a))...);
    auto f = fn;
    run_grid(reinterpret_cast<const void*>(fn), grid, block, smem, [&args, f]() { std::apply(f, args); });
  }
};
template <class... KArgs>
inline Launch<KArgs...> launcher(void (*fn)(KArgs...), dim3 grid, dim3 block, size_t smem = 0, cudaStream_t = 0) {
  return Launch<KArgs...>{fn, grid, block, smem};
}

}  // namespace sim
}  // namespace pk
