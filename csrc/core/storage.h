// storage.h — refcounted, 64-byte aligned memory that tensors view.
//
// A Storage owns bytes on one device. Tensors share it through std::shared_ptr, so views are free
// and memory goes back the moment the last view is dropped (deterministic, not GC-driven).
// Live bytes are counted per device for memoryStats() and for reporting to V8.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>

namespace pk {

enum class Device : int32_t { CPU = 0, CUDA = 1 };
inline const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

struct MemoryCounters {
  std::atomic<int64_t> live_bytes{0};
  std::atomic<int64_t> peak_bytes{0};
  std::atomic<int64_t> allocations{0};
};
MemoryCounters& memory_counters(Device d);

// Optional device allocator hooks: the CUDA backend installs these when it is compiled in.
struct DeviceAllocator {
  void* (*alloc)(size_t bytes) = nullptr;
  void (*free)(void* p) = nullptr;
};
DeviceAllocator& cuda_allocator();

class Storage {
 public:
  // Allocate `nbytes` (zero-filled when `zero`) on `device`.
  static std::shared_ptr<Storage> allocate(size_t nbytes, Device device = Device::CPU, bool zero = false);
  // Wrap memory owned elsewhere (e.g. an mmap'd safetensors file); `release` runs when the last view goes.
  static std::shared_ptr<Storage> wrap(void* data, size_t nbytes, Device device, std::function<void()> release);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }
  bool counted() const { return counted_; }

 private:
  Storage() = default;
  void* data_ = nullptr;
  size_t nbytes_ = 0;
  size_t capacity_ = 0;      // bytes reserved by the host allocator (its size class)
  Device device_ = Device::CPU;
  bool counted_ = false;     // owned allocation counted in MemoryCounters
  std::function<void()> release_;
};

}  // namespace pk
