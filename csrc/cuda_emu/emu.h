// emu.h — the CUDA *emulator* backend's adapter (dev/CI only, never shipped; -DPEFTKIT_CUDA_EMU=ON).
//
// Why: the GPU code paths in lib/, bench/ and test/gpu (device: 'cuda' tensors, adapters placed on
// the base layer's device, the Trainer and PagedAdamW on cuda) can only run where a GPU is lent,
// for minutes. The emulator lets them run here: "cuda" tensors live in host memory (Storage tagged
// Device::CUDA, allocated through the real CachingAllocator over malloc), and every backend entry
// point applies the real backend's device rules, then runs the existing CPU op on CPU aliases of
// the same bytes and hands the results back as cuda tensors. Plumbing bugs (a CPU tensor leaking
// into the GPU path, a missing .to('cuda'), a device-mixing op) fail here exactly as on a GPU;
// kernel bugs and speed cannot be seen (the math is the CPU's).
//
// One generic adapter, emu_call(cpu_fn, args...): cuda tensors among the arguments (also inside
// vectors, Quant4State and LoraBaseWeight) become CPU views of the same memory; Tensor*
// out-parameters get temporaries; after the call every result that is a view of an input maps
// back to that input's cuda storage (in-place updates and aliasing behave as on the GPU), and a
// fresh CPU result is copied into one new cuda allocation per storage (so the allocator's stats,
// peak and empty_cache see it). The per-op files only state the device rules and call it.
#pragma once
#include <deque>
#include <memory>
#include <type_traits>
#include <unordered_map>
#include <vector>
#include "core/dispatch.h"
#include "core/tensor.h"
#include "cpu/lora.h"
#include "cpu/quant.h"
#include "cuda/runtime.h"

namespace pk {
namespace cuda {

// ---- the real backend's device rules (runtime.cu; same messages) ----
// `t` must be a defined cuda tensor.
void check_cuda(const Tensor& t, const char* op, const char* arg);
// A 0-d CPU tensor becomes a 0-d cuda tensor (scalar operands, as PyTorch allows); others must be on cuda.
Tensor on_cuda(const Tensor& t, const char* op, const char* arg);
// quant.cu's check_state_cuda device part: packed weight and absmax on cuda (the code tables may be anywhere).
void check_q4_devices(const Quant4State& s, const char* op);
// The emulated device's memory (cudaMemGetInfo's total and free; managed memory is not counted, as
// its pages are not resident until touched).
size_t emu_total_bytes();
size_t emu_free_bytes();

namespace emu {

// One emulated call: argument conversion, out-parameter slots, result re-tagging.
class Ctx {
 public:
  Ctx() = default;
  Ctx(const Ctx&) = delete;
  Ctx& operator=(const Ctx&) = delete;

  // ---- arguments ----
  Tensor arg(const Tensor& t) { return host(t); }
  Tensor* arg(Tensor* p);
  std::vector<Tensor> arg(const std::vector<Tensor>& ts);
  Quant4State arg(const Quant4State& s);
  LoraBaseWeight arg(const LoraBaseWeight& w);
  template <class T> const T& arg(const T& v) { return v; }   // scalars, enums, shapes, hyper-parameters

  // A cuda tensor as a CPU tensor over the same bytes (its storage kept alive); others unchanged.
  Tensor host(const Tensor& t);

  // ---- results ----
  Tensor dev(const Tensor& t);
  Quant4Packed dev(const Quant4Packed& r) { return {dev(r.packed), dev(r.absmax)}; }
  Quant8Packed dev(const Quant8Packed& r) { return {dev(r.q), dev(r.absmax)}; }
  NestedAbsmax dev(const NestedAbsmax& r) { return {dev(r.q), dev(r.absmax2), r.offset}; }
  LoraForward dev(const LoraForward& r) { return {dev(r.y), dev(r.xa), dev(r.mask)}; }
  LoraBackward dev(const LoraBackward& r) { return {dev(r.dx), dev(r.dA), dev(r.dB)}; }
  template <class T> T dev(const T& v) { return v; }           // double, bool

  // Out-parameters back to cuda (after the CPU op returned).
  void commit();

 private:
  std::unordered_map<const Storage*, std::shared_ptr<Storage>> alias_of_;   // cuda storage -> its CPU alias
  std::unordered_map<const Storage*, std::shared_ptr<Storage>> cuda_of_;    // CPU alias / fresh result -> cuda storage
  std::vector<std::shared_ptr<Storage>> results_;   // fresh CPU results, kept so their addresses stay unique
  std::deque<std::pair<Tensor*, Tensor>> outs_;     // (caller's out-parameter, the CPU op's slot)
  std::deque<Quant4State> q4_;                      // host copies LoraBaseWeight::q4 points at
};

// Run the CPU op `fn` on the converted arguments and return its result on cuda.
template <class R, class... P, class... A> R emu_call(R (*fn)(P...), const A&... a) {
  Ctx ctx;
  if constexpr (std::is_void<R>::value) {
    fn(ctx.arg(a)...);
    ctx.commit();
  } else {
    R r = fn(ctx.arg(a)...);
    ctx.commit();
    return ctx.dev(r);
  }
}

// A CPU tensor's bytes copied into a new cuda allocation (same shape, strides and offset).
Tensor upload(const Tensor& t);

}  // namespace emu
}  // namespace cuda
}  // namespace pk
