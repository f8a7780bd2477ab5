// optim.cu — CUDA twins of cpu/optim.cpp: fused multi-tensor AdamW (32-bit states), 8-bit
// blockwise AdamW (bitsandbytes dynamic maps, the CPU's tables), blockwise quantize/dequantize,
// global gradient norms and in-place scaling.
//
// Every update is evaluated with explicitly rounded operations in the CPU's order (no FMA
// contraction; the CPU build has none either), so parameters and 32- and 8-bit states are
// bit-identical to the CPU after any number of steps. AdamW runs as ONE launch over all tensors of
// a call: a table of (tensor, 16Ki-element chunk) entries, one thread block per chunk, mixed
// parameter/gradient dtypes switched per chunk. The 8-bit step runs one warp per 256-element
// quantization block (8 elements per lane, warp-shuffle absmax) with both 256-entry maps in shared
// memory; nearest-code search is the CPU's (ties to the lower code, m keeps its sign).
// Gradient norms: f64 per 64Ki-element chunk on the GPU, chunk partials added on the host in
// chunk order like the CPU (one device->host read: the caller wants a number).
#include <cstring>
#include <vector>
#include "common.cuh"
#include "core/dispatch.h"
#include "cpu/cpu_common.h"
#include "cpu/optim.h"
#include "ops.h"

namespace pk {
namespace cuda {

namespace {

__device__ __forceinline__ float mul_(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float sub_(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double sub_(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ float div_(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double div_(double a, double b) { return __ddiv_rn(a, b); }
__device__ __forceinline__ float sqrt_(float a) { return __fsqrt_rn(a); }
__device__ __forceinline__ double sqrt_(double a) { return __dsqrt_rn(a); }

template <class T> __device__ __forceinline__ T load_dyn(const void* p, int dt, int64_t i) {
  switch (dt) {
    case (int)DType::F32: return (T)static_cast<const float*>(p)[i];
    case (int)DType::F64: return (T)static_cast<const double*>(p)[i];
    case (int)DType::BF16: return (T)__bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default: return (T)__half2float(static_cast<const __half*>(p)[i]);
  }
}
template <class T> __device__ __forceinline__ void store_dyn(void* p, int dt, int64_t i, T v) {
  switch (dt) {
    case (int)DType::F32: static_cast<float*>(p)[i] = (float)v; break;
    case (int)DType::F64: static_cast<double*>(p)[i] = (double)v; break;
    case (int)DType::BF16: static_cast<__nv_bfloat16*>(p)[i] = from_f32<__nv_bfloat16>((float)v); break;
    default: static_cast<__half*>(p)[i] = from_f32<__half>((float)v); break;
  }
}

// The scalars of one step, exactly as cpu/optim.cpp's Coef computes them (double, then T).
struct CoefD {
  double decay, w1, one_minus_w1, b2, w2, neg_step_size, bc2_sqrt, eps;
  int lerp_low;
};
CoefD make_coef(const AdamWHyper& h) {
  CoefD c;
  c.decay = 1.0 - h.lr * h.weight_decay;
  c.w1 = 1.0 - h.beta1;
  c.one_minus_w1 = 1.0 - (1.0 - h.beta1);
  c.lerp_low = (1.0 - h.beta1) < 0.5;
  c.b2 = h.beta2;
  c.w2 = 1.0 - h.beta2;
  double bc1 = 1.0 - std::pow(h.beta1, (double)h.step);
  double bc2 = 1.0 - std::pow(h.beta2, (double)h.step);
  c.neg_step_size = -(h.lr / bc1);
  c.bc2_sqrt = std::sqrt(bc2);
  c.eps = h.eps;
  return c;
}
template <class T> struct Coef {
  T decay, w1, omw1, b2, w2, nss, bc2s, eps;
  bool lerp_low;
  __device__ explicit Coef(const CoefD& c)
      : decay((T)c.decay), w1((T)c.w1), omw1((T)c.one_minus_w1), b2((T)c.b2), w2((T)c.w2), nss((T)c.neg_step_size),
        bc2s((T)c.bc2_sqrt), eps((T)c.eps), lerp_low(c.lerp_low != 0) {}
};

// ---------------------------------------------------------------------------- 32-bit AdamW
struct AdamChunk {
  void* p;
  const void* g;
  void* m;
  void* v;
  int64_t start, len;
  int pdt, gdt;
};
constexpr int64_t kAdamChunk = 1 << 14;

// TABLE: one chunk per block from the table; else `one` is a whole tensor cut into kAdamChunk blocks.
template <class T, bool TABLE>
__global__ void adamw_multi_kernel(const AdamChunk* __restrict__ chunks, AdamChunk one, CoefD cd) {
  AdamChunk ch;
  if constexpr (TABLE) {
    ch = chunks[blockIdx.x];
  } else {
    ch = one;
    ch.start = (int64_t)blockIdx.x * kAdamChunk;
    ch.len = min(kAdamChunk, one.len - ch.start);
  }
  const Coef<T> c(cd);
  T* M = static_cast<T*>(ch.m);
  T* V = static_cast<T*>(ch.v);
  for (int64_t k = threadIdx.x; k < ch.len; k += blockDim.x) {
    const int64_t i = ch.start + k;
    T pi = load_dyn<T>(ch.p, ch.pdt, i), gi = load_dyn<T>(ch.g, ch.gdt, i), mi = M[i], vi = V[i];
    pi = mul_(pi, c.decay);
    mi = c.lerp_low ? add_(mi, mul_(c.w1, sub_(gi, mi))) : sub_(gi, mul_(sub_(gi, mi), c.omw1));
    vi = add_(mul_(vi, c.b2), mul_(mul_(c.w2, gi), gi));
    const T denom = add_(div_(sqrt_(vi), c.bc2s), c.eps);
    pi = add_(pi, div_(mul_(c.nss, mi), denom));
    M[i] = mi; V[i] = vi;
    store_dyn<T>(ch.p, ch.pdt, i, pi);
  }
}

void check_param(const Tensor& p, const Tensor& g, const char* op) {
  check_defined(p, op, "param"); check_defined(g, op, "grad");
  check_cuda(p, op, "param"); check_cuda(g, op, "grad");
  PK_CHECK(is_float(p.dtype()), op, ": param must be a float tensor, got ", p.desc());
  PK_CHECK(p.is_contiguous(), op, ": param ", p.desc(), " must be contiguous");
  PK_CHECK(g.is_contiguous(), op, ": grad ", g.desc(), " must be contiguous");
  PK_CHECK(g.shape() == p.shape(), op, ": grad ", g.desc(), " does not match param ", p.desc());
  PK_CHECK(g.dtype() == p.dtype() || (g.dtype() == DType::F32 && p.dtype() != DType::F64), op, ": grad dtype ",
           dtype_name(g.dtype()), " must be the param's (", dtype_name(p.dtype()), ") or f32");
}
void check_state(const Tensor& s, DType dt, int64_t n, const char* op, const char* name) {
  check_defined(s, op, name);
  check_cuda(s, op, name);
  PK_CHECK(s.dtype() == dt, op, ": ", name, " must be ", dtype_name(dt), ", got ", s.desc());
  PK_CHECK(s.is_contiguous(), op, ": ", name, " ", s.desc(), " must be contiguous");
  PK_CHECK(s.numel() == n, op, ": ", name, " has ", s.numel(), " elements, expected ", n);
}
void check_hyper(const AdamWHyper& h, const char* op) {
  PK_CHECK(std::isfinite(h.lr) && h.lr >= 0, op, ": lr must be finite and >= 0, got ", h.lr);
  PK_CHECK(h.beta1 >= 0 && h.beta1 < 1, op, ": beta1 must be in [0, 1), got ", h.beta1);
  PK_CHECK(h.beta2 >= 0 && h.beta2 < 1, op, ": beta2 must be in [0, 1), got ", h.beta2);
  PK_CHECK(std::isfinite(h.eps) && h.eps >= 0, op, ": eps must be finite and >= 0, got ", h.eps);
  PK_CHECK(std::isfinite(h.weight_decay) && h.weight_decay >= 0, op, ": weight_decay must be finite and >= 0, got ",
           h.weight_decay);
  PK_CHECK(h.step >= 1, op, ": step must be >= 1, got ", h.step);
}

// A host array of PODs as a device tensor (staged copy; the host vector may go at once).
template <class P> Tensor upload(const std::vector<P>& v) {
  Tensor h = Tensor::empty({(int64_t)(v.size() * sizeof(P))}, DType::U8);
  std::memcpy(h.raw(), v.data(), v.size() * sizeof(P));
  return to_device(h, Device::CUDA);
}

void adamw_multi_cuda(const std::vector<Tensor>& ps, const std::vector<Tensor>& gs, const std::vector<Tensor>& ms,
                      const std::vector<Tensor>& vs, const AdamWHyper& h) {
  const char* op = "adamw_step";
  PK_CHECK(gs.size() == ps.size() && ms.size() == ps.size() && vs.size() == ps.size(), op,
           ": params, grads and states must be lists of the same length");
  check_hyper(h, op);
  std::vector<AdamChunk> c32, c64;
  for (size_t k = 0; k < ps.size(); k++) {
    const Tensor &p = ps[k], &g = gs[k], &m = ms[k], &v = vs[k];
    check_param(p, g, op);
    const DType sd = p.dtype() == DType::F64 ? DType::F64 : DType::F32;
    check_state(m, sd, p.numel(), op, "exp_avg");
    check_state(v, sd, p.numel(), op, "exp_avg_sq");
    auto& dst = sd == DType::F64 ? c64 : c32;
    for (int64_t s = 0; s < p.numel(); s += kAdamChunk)
      dst.push_back({p.raw(), g.raw(), m.raw(), v.raw(), s, std::min(kAdamChunk, p.numel() - s), (int)p.dtype(), (int)g.dtype()});
  }
  const CoefD cd = make_coef(h);
  if (ps.size() == 1 && !ps[0].numel()) return;
  if (ps.size() == 1) {   // one tensor: no table upload, blocks index the chunks directly
    const Tensor &p = ps[0], &g = gs[0];
    AdamChunk one{p.raw(), g.raw(), ms[0].raw(), vs[0].raw(), 0, p.numel(), (int)p.dtype(), (int)g.dtype()};
    const unsigned nblk = (unsigned)((p.numel() + kAdamChunk - 1) / kAdamChunk);
    if (p.dtype() == DType::F64) adamw_multi_kernel<double, false><<<nblk, 256, 0, cur_stream()>>>(nullptr, one, cd);
    else adamw_multi_kernel<float, false><<<nblk, 256, 0, cur_stream()>>>(nullptr, one, cd);
    PK_CUDA_CHECK_LAUNCH();
    return;
  }
  if (!c32.empty()) {
    Tensor t = upload(c32);
    adamw_multi_kernel<float, true><<<(unsigned)c32.size(), 256, 0, cur_stream()>>>((const AdamChunk*)t.raw(), AdamChunk{}, cd);
    PK_CUDA_CHECK_LAUNCH();
  }
  if (!c64.empty()) {
    Tensor t = upload(c64);
    adamw_multi_kernel<double, true><<<(unsigned)c64.size(), 256, 0, cur_stream()>>>((const AdamChunk*)t.raw(), AdamChunk{}, cd);
    PK_CUDA_CHECK_LAUNCH();
  }
}

void adamw_step_cuda(const Tensor& p, const Tensor& g, const Tensor& m, const Tensor& v, const AdamWHyper& h) {
  adamw_multi_cuda({p}, {g}, {m}, {v}, h);
}

// ---------------------------------------------------------------------------- 8-bit states
struct Maps8 {
  float s[256], u[256];
  int zs, zu;   // index of 0.0 in each map
};
Maps8 make_maps() {
  Maps8 m;
  std::memcpy(m.s, dynamic_map(true), sizeof(m.s));
  std::memcpy(m.u, dynamic_map(false), sizeof(m.u));
  m.zs = m.zu = 0;
  for (int i = 0; i < 256; i++) { if (m.s[i] == 0.0f) { m.zs = i; break; } }
  for (int i = 0; i < 256; i++) { if (m.u[i] == 0.0f) { m.zu = i; break; } }
  return m;
}
const Maps8& maps8() {
  static const Maps8 m = make_maps();
  return m;
}

// cpu/optim.cpp nearest_code_search (ties to the lower code), NaN -> the zero code.
__device__ __forceinline__ int nearest(const float* code, float x, int zero) {
  if (!(x == x)) return zero;
  if (x <= code[0]) return 0;
  if (x >= code[255]) return 255;
  int lo = 0, hi = 255;
  while (hi - lo > 1) {
    int mid = (lo + hi) >> 1;
    if (code[mid] < x) lo = mid; else hi = mid;
  }
  return __fsub_rn(code[hi], x) < __fsub_rn(x, code[lo]) ? hi : lo;
}
__device__ __forceinline__ uint8_t nearest_signed(const float* code, float x, int zero) {
  int c = nearest(code, x, zero);
  if (x == x && signbit(code[c]) != signbit(x)) c += x > 0.0f ? 1 : -1;
  return (uint8_t)min(255, max(0, c));
}

__device__ __forceinline__ float warp_max(float v) {
  for (int d = 16; d > 0; d >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, d));
  return v;
}

constexpr int kQB = 256, kPerLane = kQB / 32, kWarps = 8;

__device__ __forceinline__ void load_maps(float* ss, float* su, const Maps8& maps) {
  for (int i = threadIdx.x; i < 256; i += blockDim.x) { ss[i] = maps.s[i]; su[i] = maps.u[i]; }
  __syncthreads();
}

__global__ void adamw8bit_kernel(void* __restrict__ P, int pdt, const void* __restrict__ G, int gdt, uint8_t* __restrict__ Q1,
                                 uint8_t* __restrict__ Q2, float* __restrict__ A1, float* __restrict__ A2, int64_t n,
                                 CoefD cd, Maps8 maps) {
  __shared__ float cs[256], cu[256];
  load_maps(cs, cu, maps);
  const Coef<float> c(cd);
  const int lane = threadIdx.x & 31;
  const int64_t nblocks = (n + kQB - 1) / kQB;
  for (int64_t b = (int64_t)blockIdx.x * kWarps + (threadIdx.x >> 5); b < nblocks; b += (int64_t)gridDim.x * kWarps) {
    const int64_t base = b * kQB;
    const float am1 = A1[b], am2 = A2[b];
    float s1[kPerLane], s2[kPerLane];
    float m1 = 0.0f, m2 = 0.0f;
#pragma unroll
    for (int k = 0; k < kPerLane; k++) {
      const int64_t i = base + lane + 32 * k;
      if (i >= n) { s1[k] = s2[k] = 0.0f; continue; }
      const float g = load_dyn<float>(G, gdt, i);
      float a = __fmul_rn(cs[Q1[i]], am1), v = __fmul_rn(cu[Q2[i]], am2);
      a = c.lerp_low ? add_(a, mul_(c.w1, sub_(g, a))) : sub_(g, mul_(sub_(g, a), c.omw1));
      v = add_(mul_(v, c.b2), mul_(mul_(c.w2, g), g));
      const float denom = add_(div_(sqrt_(v), c.bc2s), c.eps);
      const float p = add_(mul_(load_dyn<float>(P, pdt, i), c.decay), div_(mul_(c.nss, a), denom));
      store_dyn<float>(P, pdt, i, p);
      s1[k] = a; s2[k] = v;
      m1 = fmaxf(m1, fabsf(a));
      m2 = fmaxf(m2, fabsf(v));
    }
    m1 = warp_max(m1);
    m2 = warp_max(m2);
#pragma unroll
    for (int k = 0; k < kPerLane; k++) {
      const int64_t i = base + lane + 32 * k;
      if (i >= n) continue;
      Q1[i] = m1 > 0.0f ? nearest_signed(cs, __fdiv_rn(s1[k], m1), maps.zs) : (uint8_t)maps.zs;
      Q2[i] = m2 > 0.0f ? (uint8_t)nearest(cu, __fdiv_rn(s2[k], m2), maps.zu) : (uint8_t)maps.zu;
    }
    if (lane == 0) { A1[b] = m1; A2[b] = m2; }
  }
}

unsigned blocks_for_quant(int64_t n) {
  const int64_t nb = (n + kQB - 1) / kQB;
  const int64_t need = (nb + kWarps - 1) / kWarps, cap = (int64_t)sm_count() * 16;
  return (unsigned)std::max<int64_t>(1, std::min(need, cap));
}

void adamw8bit_step_cuda(const Tensor& p, const Tensor& g, const Tensor& q1, const Tensor& q2, const Tensor& absmax1,
                         const Tensor& absmax2, const AdamWHyper& h) {
  const char* op = "adamw8bit_step";
  check_param(p, g, op);
  check_hyper(h, op);
  PK_CHECK(p.dtype() != DType::F64, op, ": 8-bit states take f32/bf16/f16 params, got ", p.desc(), " (use 32-bit AdamW)");
  const int64_t n = p.numel(), nb = (n + kQuantBlock - 1) / kQuantBlock;
  check_state(q1, DType::U8, n, op, "state1");
  check_state(q2, DType::U8, n, op, "state2");
  check_state(absmax1, DType::F32, nb, op, "absmax1");
  check_state(absmax2, DType::F32, nb, op, "absmax2");
  if (n == 0) return;
  adamw8bit_kernel<<<blocks_for_quant(n), 32 * kWarps, 0, cur_stream()>>>(
      p.raw(), (int)p.dtype(), g.raw(), (int)g.dtype(), q1.data<uint8_t>(), q2.data<uint8_t>(), absmax1.data<float>(),
      absmax2.data<float>(), n, make_coef(h), maps8());
  PK_CUDA_CHECK_LAUNCH();
}

__global__ void quantize8_kernel(const float* __restrict__ X, uint8_t* __restrict__ C, float* __restrict__ A, int64_t n,
                                 int is_signed, Maps8 maps) {
  __shared__ float cs[256], cu[256];
  load_maps(cs, cu, maps);
  const int lane = threadIdx.x & 31;
  const int64_t nblocks = (n + kQB - 1) / kQB;
  for (int64_t b = (int64_t)blockIdx.x * kWarps + (threadIdx.x >> 5); b < nblocks; b += (int64_t)gridDim.x * kWarps) {
    const int64_t base = b * kQB;
    float x[kPerLane], mx = 0.0f;
#pragma unroll
    for (int k = 0; k < kPerLane; k++) {
      const int64_t i = base + lane + 32 * k;
      x[k] = i < n ? X[i] : 0.0f;
      mx = fmaxf(mx, fabsf(x[k]));
    }
    mx = warp_max(mx);
#pragma unroll
    for (int k = 0; k < kPerLane; k++) {
      const int64_t i = base + lane + 32 * k;
      if (i >= n) continue;
      const float v = mx > 0.0f ? __fdiv_rn(x[k], mx) : 0.0f;
      C[i] = is_signed ? nearest_signed(cs, v, maps.zs) : (uint8_t)nearest(cu, v, maps.zu);
    }
    if (lane == 0) A[b] = mx;
  }
}

__global__ void dequantize8_kernel(const uint8_t* __restrict__ C, const float* __restrict__ A, float* __restrict__ O, int64_t n,
                                   int is_signed, Maps8 maps) {
  __shared__ float cs[256], cu[256];
  load_maps(cs, cu, maps);
  const float* code = is_signed ? cs : cu;
  for (int64_t i = global_tid<int64_t>(); i < n; i += grid_stride<int64_t>()) O[i] = __fmul_rn(code[C[i]], A[i / kQB]);
}

void quantize_blockwise_cuda(const Tensor& x_in, bool is_signed, Tensor* codes, Tensor* absmax) {
  const char* op = "quantize_blockwise";
  check_defined(x_in, op, "x");
  check_float(x_in, op, "x");
  check_cuda(x_in, op, "x");
  Tensor x = contiguous(cast(x_in, DType::F32));
  const int64_t n = x.numel(), nb = (n + kQuantBlock - 1) / kQuantBlock;
  *codes = Tensor::empty(x_in.shape(), DType::U8, Device::CUDA);
  *absmax = Tensor::empty({nb}, DType::F32, Device::CUDA);
  if (n == 0) return;
  quantize8_kernel<<<blocks_for_quant(n), 32 * kWarps, 0, cur_stream()>>>(x.data<float>(), codes->data<uint8_t>(),
                                                                          absmax->data<float>(), n, is_signed, maps8());
  PK_CUDA_CHECK_LAUNCH();
}

Tensor dequantize_blockwise_cuda(const Tensor& codes, const Tensor& absmax, bool is_signed) {
  const char* op = "dequantize_blockwise";
  const int64_t n = codes.numel(), nb = (n + kQuantBlock - 1) / kQuantBlock;
  check_state(codes, DType::U8, n, op, "codes");
  check_state(absmax, DType::F32, nb, op, "absmax");
  Tensor out = Tensor::empty(codes.shape(), DType::F32, Device::CUDA);
  if (n == 0) return out;
  unsigned grid = grid_for(n, kBlock, sm_count());
  dequantize8_kernel<<<grid, kBlock, 0, cur_stream()>>>(codes.data<uint8_t>(), absmax.data<float>(), out.data<float>(), n,
                                                        is_signed, maps8());
  PK_CUDA_CHECK_LAUNCH();
  return out;
}

// ---------------------------------------------------------------------------- norms and scaling
struct NormChunk {
  const void* p;
  int64_t lo, hi;
  int dt;
};
constexpr int64_t kNormChunk = 1 << 16;

// mode 0: sum |x|^2, 1: sum |x|, 2: sum |x|^p, 3: max |x| (NaN sticks)
__global__ void norm_chunks_kernel(const NormChunk* __restrict__ chunks, double p, int mode, double* __restrict__ part) {
  __shared__ double sh[32];
  const NormChunk ch = chunks[blockIdx.x];
  double acc = 0;
  bool nan = false;
  for (int64_t i = ch.lo + threadIdx.x; i < ch.hi; i += blockDim.x) {
    const double a = fabs(load_dyn<double>(ch.p, ch.dt, i));
    if (mode == 0) acc += a * a;
    else if (mode == 1) acc += a;
    else if (mode == 2) acc += pow(a, p);
    else { if (a != a) nan = true; else acc = fmax(acc, a); }
  }
  for (int d = 16; d > 0; d >>= 1) {
    const double o = __shfl_xor_sync(0xffffffffu, acc, d);
    acc = mode == 3 ? fmax(acc, o) : acc + o;
  }
  nan = __any_sync(0xffffffffu, nan);
  __shared__ int any_nan;
  if (threadIdx.x == 0) any_nan = 0;
  __syncthreads();
  if ((threadIdx.x & 31) == 0) { sh[threadIdx.x >> 5] = acc; if (nan) any_nan = 1; }
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) t = mode == 3 ? fmax(t, sh[w]) : t + sh[w];
    part[blockIdx.x] = (mode == 3 && any_nan) ? (double)NAN : t;
  }
}

double global_norm_cuda(const std::vector<Tensor>& ts_in, double norm_type) {
  const char* op = "grad_norm";
  const bool inf = std::isinf(norm_type) && norm_type > 0;
  PK_CHECK(inf || (std::isfinite(norm_type) && norm_type > 0), op, ": norm_type must be > 0 or Infinity, got ", norm_type);
  std::vector<Tensor> ts;
  std::vector<NormChunk> chunks;
  for (size_t k = 0; k < ts_in.size(); k++) {
    const Tensor& t = ts_in[k];
    check_defined(t, op, "tensor");
    check_cuda(t, op, "tensor");
    PK_CHECK(is_float(t.dtype()), op, ": tensor ", k, " must be a float tensor, got ", t.desc());
    ts.push_back(contiguous(t));
    for (int64_t lo = 0; lo < t.numel(); lo += kNormChunk)
      chunks.push_back({ts.back().raw(), lo, std::min(t.numel(), lo + kNormChunk), (int)t.dtype()});
  }
  std::vector<double> part(chunks.size(), 0.0);
  if (!chunks.empty()) {
    Tensor table = upload(chunks);
    Tensor dpart = Tensor::empty({(int64_t)chunks.size()}, DType::F64, Device::CUDA);
    const int mode = inf ? 3 : norm_type == 2.0 ? 0 : norm_type == 1.0 ? 1 : 2;
    norm_chunks_kernel<<<(unsigned)chunks.size(), 256, 0, cur_stream()>>>((const NormChunk*)table.raw(), norm_type, mode,
                                                                         dpart.data<double>());
    PK_CUDA_CHECK_LAUNCH();
    PK_CUDA_CHECK(cudaMemcpyAsync(part.data(), dpart.raw(), part.size() * sizeof(double), cudaMemcpyDeviceToHost, cur_stream()));
    PK_CUDA_CHECK(cudaStreamSynchronize(cur_stream()));
  }
  if (inf) {
    double m = 0.0;
    for (double v : part) { if (v != v) return v; if (v > m) m = v; }
    return m;
  }
  double s = 0.0;
  for (double v : part) s += v;
  if (norm_type == 2.0) return std::sqrt(s);
  if (norm_type == 1.0) return s;
  return std::pow(s, 1.0 / norm_type);
}

template <class S, class T>
__global__ void scale_kernel(S* __restrict__ p, int64_t n, T f) {
  for (int64_t i = global_tid<int64_t>(); i < n; i += grid_stride<int64_t>())
    p[i] = Conv<T>::template store<S>(Conv<T>::load(p[i]) * f);
}

void scale_inplace_cuda(const Tensor& t, double s) {
  const char* op = "scale_";
  check_defined(t, op, "tensor");
  check_cuda(t, op, "tensor");
  PK_CHECK(is_float(t.dtype()), op, ": tensor must be a float tensor, got ", t.desc());
  PK_CHECK(t.is_contiguous(), op, ": tensor ", t.desc(), " must be contiguous");
  const int64_t n = t.numel();
  dispatch_float(t.dtype(), op, [&](auto tag) {
    using S = decltype(tag);
    using T = typename Compute<S>::type;
    launch(scale_kernel<S, T>, n, t.data<S>(), n, (T)s);
  });
}

struct Registrar {
  Registrar() {
    CudaOps& o = cuda_ops();
    o.adamw_step = adamw_step_cuda;
    o.adamw_multi = adamw_multi_cuda;
    o.adamw8bit_step = adamw8bit_step_cuda;
    o.quantize_blockwise = quantize_blockwise_cuda;
    o.dequantize_blockwise = dequantize_blockwise_cuda;
    o.global_norm = global_norm_cuda;
    o.scale_inplace = scale_inplace_cuda;
  }
};
Registrar registrar;

}  // namespace

}  // namespace cuda
}  // namespace pk
