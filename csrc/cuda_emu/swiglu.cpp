// swiglu.cpp (emulator) — swiglu.cu's fused gated activations (SwiGLU / GeGLU) with its device
// rules: gate, up and the incoming gradient on cuda; the CPU twin (cpu/swiglu.cpp) does the math.
#include "cpu/swiglu.h"
#include "emu.h"

namespace pk {
namespace cuda {

using emu::emu_call;

namespace {

void gate_up(const Tensor& gate, const Tensor& up, const char* op) {
  PK_CHECK(gate.defined() && up.defined(), op, ": gate and up are required");
  check_float(gate, op, "gate"); check_float(up, op, "up");
  check_cuda(gate, op, "gate"); check_cuda(up, op, "up");
}

Tensor glu_forward_emu(GluAct act, const Tensor& gate, const Tensor& up) {
  gate_up(gate, up, glu_name(act));
  return emu_call(pk::glu_forward, act, gate, up);
}

void glu_backward_emu(GluAct act, const Tensor& gate, const Tensor& up, const Tensor& dh, bool need_gate, bool need_up,
                      Tensor* dgate, Tensor* dup) {
  const char* op = glu_name(act);
  gate_up(gate, up, op);
  PK_CHECK(dh.defined(), op, "_backward: grad is required");
  check_float(dh, op, "grad"); check_cuda(dh, op, "grad");
  emu_call(pk::glu_backward, act, gate, up, dh, need_gate, need_up, dgate, dup);
}

struct Registrar {
  Registrar() {
    CudaOps& o = cuda_ops();
    o.glu_forward = glu_forward_emu;
    o.glu_backward = glu_backward_emu;
  }
};
Registrar registrar;

}  // namespace
}  // namespace cuda
}  // namespace pk
