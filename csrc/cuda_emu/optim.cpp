// optim.cpp (emulator) — optim.cu's CudaOps entries: AdamW (32-bit, and the CUDA-only fused
// multi-tensor launch composed as one adamw_step per tensor), 8-bit AdamW and its blockwise
// quantization, the global gradient norm and in-place scaling. Device rules as optim.cu: every
// parameter, gradient and state on cuda (the CPU twins then run optim.cu's other checks, which
// are the same as theirs).
#include "cpu/optim.h"
#include "emu.h"

namespace pk {
namespace cuda {

using emu::emu_call;

namespace {

void param_grad(const Tensor& p, const Tensor& g, const char* op) {
  check_defined(p, op, "param"); check_defined(g, op, "grad");
  check_cuda(p, op, "param"); check_cuda(g, op, "grad");
}

void adamw_step_emu(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v, const AdamWHyper& h) {
  const char* op = "adamw_step";
  param_grad(p, g, op);
  check_cuda(m, op, "exp_avg"); check_cuda(v, op, "exp_avg_sq");
  emu_call(pk::adamw_step, p, g, m, v, h);
}

// optim.cu validates every tensor before its one launch; here every tensor's device is checked before
// the first update (the other checks run per tensor, in the CPU twin).
void adamw_multi_emu(const std::vector<Tensor>& ps, const std::vector<Tensor>& gs, const std::vector<Tensor>& ms,
                     const std::vector<Tensor>& vs, const AdamWHyper& h) {
  const char* op = "adamw_step";
  PK_CHECK(gs.size() == ps.size() && ms.size() == ps.size() && vs.size() == ps.size(), op,
           ": params, grads and states must be lists of the same length");
  for (size_t k = 0; k < ps.size(); k++) {
    param_grad(ps[k], gs[k], op);
    check_cuda(ms[k], op, "exp_avg"); check_cuda(vs[k], op, "exp_avg_sq");
  }
  for (size_t k = 0; k < ps.size(); k++) emu_call(pk::adamw_step, ps[k], gs[k], ms[k], vs[k], h);
}

void adamw8bit_step_emu(const Tensor& p, const Tensor& g, const Tensor& q1, const Tensor& q2, const Tensor& absmax1,
                        const Tensor& absmax2, const AdamWHyper& h) {
  const char* op = "adamw8bit_step";
  param_grad(p, g, op);
  check_cuda(q1, op, "state1"); check_cuda(q2, op, "state2");
  check_cuda(absmax1, op, "absmax1"); check_cuda(absmax2, op, "absmax2");
  emu_call(pk::adamw8bit_step, p, g, q1, q2, absmax1, absmax2, h);
}

void quantize_blockwise_emu(const Tensor& x, bool is_signed, Tensor* codes, Tensor* absmax) {
  const char* op = "quantize_blockwise";
  check_defined(x, op, "x"); check_float(x, op, "x"); check_cuda(x, op, "x");
  emu_call(pk::quantize_blockwise, x, is_signed, codes, absmax);
}

Tensor dequantize_blockwise_emu(const Tensor& codes, const Tensor& absmax, bool is_signed) {
  const char* op = "dequantize_blockwise";
  check_defined(codes, op, "codes"); check_cuda(codes, op, "codes");
  check_defined(absmax, op, "absmax"); check_cuda(absmax, op, "absmax");
  return emu_call(pk::dequantize_blockwise, codes, absmax, is_signed);
}

double global_norm_emu(const std::vector<Tensor>& ts, double norm_type) {
  for (const Tensor& t : ts) { check_defined(t, "grad_norm", "tensor"); check_cuda(t, "grad_norm", "tensor"); }
  return emu_call(pk::global_norm, ts, norm_type);
}

void scale_inplace_emu(const Tensor& t, double s) {
  check_defined(t, "scale_", "tensor");
  check_cuda(t, "scale_", "tensor");
  emu_call(pk::scale_inplace, t, s);
}

struct Registrar {
  Registrar() {
    CudaOps& o = cuda_ops();
    o.adamw_step = adamw_step_emu;
    o.adamw_multi = adamw_multi_emu;
    o.adamw8bit_step = adamw8bit_step_emu;
    o.quantize_blockwise = quantize_blockwise_emu;
    o.dequantize_blockwise = dequantize_blockwise_emu;
    o.global_norm = global_norm_emu;
    o.scale_inplace = scale_inplace_emu;
  }
};
Registrar registrar;

}  // namespace
}  // namespace cuda
}  // namespace pk
