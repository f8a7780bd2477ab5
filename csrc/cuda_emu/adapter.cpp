// adapter.cpp (emulator) — emu::Ctx: cuda tensors as CPU aliases of the same bytes for the CPU
// ops, and their results back as cuda tensors (see emu.h for the contract).
#include <cstring>
#include "emu.h"

namespace pk {
namespace cuda {
namespace emu {

Tensor Ctx::host(const Tensor& t) {
  if (!t.defined() || t.device() != Device::CUDA) return t;
  const Storage* key = t.storage().get();
  auto it = alias_of_.find(key);
  std::shared_ptr<Storage> alias;
  if (it != alias_of_.end()) {
    alias = it->second;
  } else {
    std::shared_ptr<Storage> keep = t.storage();
    // Not counted in the CPU memory stats: the bytes belong to the cuda allocation.
    alias = Storage::wrap(keep->data(), keep->nbytes(), Device::CPU, [keep] {});
    alias_of_[key] = alias;
    cuda_of_[alias.get()] = keep;
  }
  return Tensor(alias, t.shape(), t.strides(), t.offset(), t.dtype());
}

Tensor* Ctx::arg(Tensor* p) {
  if (!p) return nullptr;
  outs_.emplace_back(p, Tensor());
  return &outs_.back().second;
}

std::vector<Tensor> Ctx::arg(const std::vector<Tensor>& ts) {
  std::vector<Tensor> r;
  r.reserve(ts.size());
  for (const Tensor& t : ts) r.push_back(host(t));
  return r;
}

Quant4State Ctx::arg(const Quant4State& s) {
  Quant4State h = s;
  h.packed = host(s.packed);
  h.absmax = host(s.absmax);
  h.code = host(s.code);
  h.nested_absmax = host(s.nested_absmax);
  h.nested_code = host(s.nested_code);
  return h;
}

LoraBaseWeight Ctx::arg(const LoraBaseWeight& w) {
  LoraBaseWeight h = w;
  h.weight = host(w.weight);
  if (w.q4) {
    q4_.push_back(arg(*w.q4));
    h.q4 = &q4_.back();
  }
  return h;
}

Tensor Ctx::dev(const Tensor& t) {
  if (!t.defined() || t.device() == Device::CUDA) return t;
  const Storage* key = t.storage().get();
  auto it = cuda_of_.find(key);
  if (it == cuda_of_.end()) {
    // A fresh CPU result: one cuda allocation per storage, so views of one result stay views of one allocation.
    std::shared_ptr<Storage> st = Storage::allocate(key->nbytes(), Device::CUDA);
    if (key->nbytes()) std::memcpy(st->data(), key->data(), key->nbytes());
    results_.push_back(t.storage());
    it = cuda_of_.emplace(key, st).first;
  }
  return Tensor(it->second, t.shape(), t.strides(), t.offset(), t.dtype());
}

void Ctx::commit() {
  for (auto& o : outs_) *o.first = dev(o.second);
}

Tensor upload(const Tensor& t) {
  Ctx ctx;
  return ctx.dev(t);
}

}  // namespace emu
}  // namespace cuda
}  // namespace pk
