// storage.cpp — host allocation (host_allocator.h), device hooks and the live/peak byte counters.
#include "storage.h"
#include "error.h"
#include <cstdlib>
#include <cstring>
#include "host_allocator.h"

namespace pk {

MemoryCounters& memory_counters(Device d) {
  static MemoryCounters cpu, cuda;
  return d == Device::CPU ? cpu : cuda;
}

DeviceAllocator& cuda_allocator() {
  static DeviceAllocator a;
  return a;
}

static void count_alloc(Device d, int64_t n) {
  auto& c = memory_counters(d);
  int64_t now = c.live_bytes.fetch_add(n) + n;
  c.allocations.fetch_add(1);
  int64_t peak = c.peak_bytes.load();
  while (now > peak && !c.peak_bytes.compare_exchange_weak(peak, now)) {}
}

std::shared_ptr<Storage> Storage::allocate(size_t nbytes, Device device, bool zero) {
  std::shared_ptr<Storage> s(new Storage());
  s->nbytes_ = nbytes;
  s->device_ = device;
  size_t padded = (nbytes + 63) & ~size_t(63);
  if (padded == 0) padded = 64;
  if (device == Device::CPU) {
    s->data_ = host_alloc(padded, &s->capacity_);
    if (!s->data_) fail("out of host memory allocating ", nbytes, " bytes");
    if (zero) std::memset(s->data_, 0, padded);
  } else {
    auto& a = cuda_allocator();
    if (!a.alloc) fail("device 'cuda' requested but this peftkit build has no CUDA backend");
    s->data_ = a.alloc(padded);
    if (!s->data_) fail("out of GPU memory allocating ", nbytes, " bytes");
    if (zero) fail("zero-filled cuda allocation must go through the cuda backend");
  }
  s->counted_ = true;
  count_alloc(device, (int64_t)nbytes);
  return s;
}

std::shared_ptr<Storage> Storage::wrap(void* data, size_t nbytes, Device device, std::function<void()> release) {
  std::shared_ptr<Storage> s(new Storage());
  s->data_ = data;
  s->nbytes_ = nbytes;
  s->device_ = device;
  s->release_ = std::move(release);
  return s;
}

Storage::~Storage() {
  if (release_) { release_(); return; }
  if (!data_) return;
  if (device_ == Device::CPU) host_free(data_, capacity_);
  else if (cuda_allocator().free) cuda_allocator().free(data_);
  if (counted_) memory_counters(device_).live_bytes.fetch_sub((int64_t)nbytes_);
}

}  // namespace pk
