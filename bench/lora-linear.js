#!/usr/bin/env node
// bench/lora-linear — the LoRA linear layer, forward + backward, fused native kernels vs the same
// layer composed from ops (linear, dropout, linear, linear, mul, add). Shape: 2048 tokens,
// 4096 -> 4096, r = 16, dropout 0.05 (as in a typical QLoRA run); base weight in f32, bf16 and
// NF4 (double quant, bf16 values — QLoRA's defaults). The base weight is frozen: backward computes
// dX, dA, dB. The NF4 row compares the fused op (one native call each way, the base read through
// the fused 4-bit GEMM) with Linear4bit + the op-composed LoRA term, and reports the fused layer
// with an NF4 base against the same layer with an f32 base (target: NF4 forward >= 0.9x f32).
//
//   npm run bench -- lora-linear [--json] [--quick] [--reps N] [--tokens T] [--dim D] [--r R] [--dropout P]
'use strict';
const pk = require('../dist');
const { Tensor, numThreads, cpuInfo, tidy, memoryStats, resetPeakMemory } = pk;
// ops.loraLinear once lib/ops/index.ts re-exports it; the module itself otherwise.
const loraOps = pk.ops && pk.ops.loraLinear ? pk.ops : require('../dist/ops/lora');
const { loraLinear, loraLinearUnfused } = loraOps;

const argv = process.argv.slice(2);
const json = argv.includes('--json');
const quick = argv.includes('--quick');
const opt = (name, dflt) => { const i = argv.indexOf(name); return i >= 0 ? Number(argv[i + 1]) : dflt; };
const T = opt('--tokens', quick ? 512 : 2048);
const D = opt('--dim', quick ? 1024 : 4096);
const R = opt('--r', 16);
const P = opt('--dropout', 0.05);
const reps = opt('--reps', quick ? 2 : 3);
const alpha = 2 * R;

function step(fused, x, W, A, B, g) {
  // forward + backward of one layer; returns seconds
  if (resetPeakMemory) resetPeakMemory();
  const t0 = process.hrtime.bigint();
  tidy(() => {
    const y = fused
      ? loraLinear(x, W, null, A, B, { scale: alpha / R, dropout: P, seed: 7 })
      : loraLinearUnfused(x, W, null, A, B, alpha / R, P, 7);
    y.backward(g);
  });
  const dt = Number(process.hrtime.bigint() - t0) / 1e9;
  x.zeroGrad(); A.zeroGrad(); B.zeroGrad();
  return dt;
}

function bench(baseDtype) {
  const W = tidy(() => Tensor.randn([D, D], { seed: 1, std: 0.02 }).to(baseDtype));
  const x = tidy(() => Tensor.randn([T, D], { seed: 2 }).to(baseDtype)).requiresGrad_();
  const A = Tensor.rand([R, D], { seed: 3, low: -1 / Math.sqrt(D), high: 1 / Math.sqrt(D) }).requiresGrad_();
  const B = Tensor.randn([D, R], { seed: 4, std: 0.01 }).requiresGrad_();
  const g = tidy(() => Tensor.randn([T, D], { seed: 5 }).to(baseDtype));
  const out = {};
  for (const fused of [true, false]) {
    const held = memoryStats ? memoryStats().cpu.liveBytes : 0;
    step(fused, x, W, A, B, g);  // warm-up
    // extra memory at peak over what the inputs hold: activations kept for backward + temporaries
    if (memoryStats) out[fused ? 'fused_extra_mb' : 'unfused_extra_mb'] = +((memoryStats().cpu.peakBytes - held) / 2 ** 20).toFixed(1);
    let best = Infinity;
    for (let i = 0; i < reps; i++) best = Math.min(best, step(fused, x, W, A, B, g));
    out[fused ? 'fused_ms' : 'unfused_ms'] = +(best * 1e3).toFixed(2);
    if (global.gc) global.gc();
  }
  out.ratio = +(out.unfused_ms / out.fused_ms).toFixed(3);
  // 3 GEMMs of the base size (forward x·Wᵀ, dX = dY·W) = 2 × 2·T·D·D flops, plus the low-rank ones
  const flops = 2 * 2 * T * D * D + 6 * 2 * T * D * R;
  out.fused_gflops = +(flops / (out.fused_ms / 1e3) / 1e9).toFixed(1);
  for (const t of [W, x, A, B, g]) { t.zeroGrad(); t.dispose(); }
  return out;
}

const results = {};
for (const dt of ['f32', 'bf16']) {
  results[dt] = bench(dt);
  const r = results[dt];
  console.log(`lora-linear ${T}x${D}->${D} r=${R} p=${P} base ${dt.padEnd(4)}  fused ${r.fused_ms.toFixed(1).padStart(8)} ms  ` +
    `unfused ${r.unfused_ms.toFixed(1).padStart(8)} ms  speedup ${r.ratio.toFixed(2)}x  (${r.fused_gflops} GFLOP/s fused)` +
    (r.fused_extra_mb !== undefined ? `  peak extra memory ${r.fused_extra_mb} MB fused / ${r.unfused_extra_mb} MB unfused` : ''));
}
// NF4 base (QLoRA): the fused op reads the 4-bit state through the fused NF4 GEMM (dequantizing
// while packing B panels); unfused = Linear4bit.forward + the low-rank term from ops. Also the
// base linear alone, NF4 vs f32: forward x·Wᵀ and backward dX = dY·W.
{
  const qmod = pk.quantizeNF4 && pk.linear4bit ? pk : require('../dist/quant');
  const { linear } = pk.ops;
  const W = Tensor.randn([D, D], { seed: 1, std: 0.02 });
  const q4 = qmod.quantizeNF4(W, { doubleQuant: true, computeDtype: 'bf16' });
  const x = Tensor.randn([T, D], { seed: 2 }).requiresGrad_();
  const A = Tensor.rand([R, D], { seed: 3, low: -1 / Math.sqrt(D), high: 1 / Math.sqrt(D) }).requiresGrad_();
  const B = Tensor.randn([D, R], { seed: 4, std: 0.01 }).requiresGrad_();
  const g = Tensor.randn([T, D], { seed: 5 });
  const time = (fn) => {
    fn();
    let b = Infinity;
    for (let i = 0; i < reps; i++) { const t0 = process.hrtime.bigint(); fn(); b = Math.min(b, Number(process.hrtime.bigint() - t0) / 1e9); }
    x.zeroGrad(); A.zeroGrad(); B.zeroGrad();
    return +(b * 1e3).toFixed(2);
  };
  const opts = { scale: alpha / R, dropout: P, seed: 7 };
  const fwdbwd = (w, fused) => tidy(() => {
    const y = fused ? loraLinear(x, w, null, A, B, opts) : loraLinearUnfused(x, w, null, A, B, alpha / R, P, 7);
    y.backward(g);
  });
  const fwdOnly = (w) => tidy(() => pk.noGrad(() => loraLinear(x, w, null, A, B, opts)));
  const r = {};
  r.fused_ms = time(() => fwdbwd(q4, true));
  r.unfused_ms = time(() => fwdbwd(q4, false));
  r.ratio = +(r.unfused_ms / r.fused_ms).toFixed(3);
  // the fused layer, NF4 base vs f32 base (same x, A, B): forward + backward, and forward alone
  r.fused_f32_base_ms = time(() => fwdbwd(W, true));
  r.fused_vs_f32 = +(r.fused_f32_base_ms / r.fused_ms).toFixed(3);
  r.fused_forward_nf4_ms = time(() => fwdOnly(q4));
  r.fused_forward_f32_ms = time(() => fwdOnly(W));
  r.fused_forward_ratio = +(r.fused_forward_f32_ms / r.fused_forward_nf4_ms).toFixed(3);   // >= 0.9 is the target
  const fwd = (fn) => time(() => tidy(() => pk.noGrad(() => fn())));
  r.base_forward_f32_ms = fwd(() => linear(x, W));
  r.base_forward_nf4_ms = fwd(() => qmod.linear4bit(x, q4));
  r.base_forward_ratio = +(r.base_forward_f32_ms / r.base_forward_nf4_ms).toFixed(3);
  r.base_dx_f32_ms = fwd(() => pk.ops.matmul(g, W));
  r.base_dx_nf4_ms = fwd(() => new Tensor(require('../dist/native').native.quant4_linear_grad_input(g.native, q4.nativeState())));
  r.base_dx_ratio = +(r.base_dx_f32_ms / r.base_dx_nf4_ms).toFixed(3);
  r.weight_mb_f32 = +(D * D * 4 / 2 ** 20).toFixed(1);
  r.weight_mb_nf4 = +(q4.nbytes / 2 ** 20).toFixed(1);
  results.nf4 = r;
  console.log(`lora-linear ${T}x${D}->${D} r=${R} p=${P} base nf4   fused ${r.fused_ms.toFixed(1).padStart(8)} ms  ` +
    `unfused ${r.unfused_ms.toFixed(1).padStart(8)} ms  speedup ${r.ratio.toFixed(2)}x  (unfused = Linear4bit + op-composed LoRA term)`);
  console.log(`  fused layer, nf4 vs f32 base: fwd+bwd ${r.fused_ms.toFixed(1)} vs ${r.fused_f32_base_ms.toFixed(1)} ms -> nf4 at ${r.fused_vs_f32.toFixed(2)}x; ` +
    `forward ${r.fused_forward_nf4_ms.toFixed(1)} vs ${r.fused_forward_f32_ms.toFixed(1)} ms -> nf4 at ${r.fused_forward_ratio.toFixed(2)}x the f32 speed (target >= 0.9)`);
  console.log(`  base linear forward: f32 ${r.base_forward_f32_ms.toFixed(1)} ms, nf4 ${r.base_forward_nf4_ms.toFixed(1)} ms -> nf4 at ${r.base_forward_ratio.toFixed(2)}x the f32 speed`);
  console.log(`  base dX = dY·W:      f32 ${r.base_dx_f32_ms.toFixed(1)} ms, nf4 ${r.base_dx_nf4_ms.toFixed(1)} ms -> ${r.base_dx_ratio.toFixed(2)}x; weight ${r.weight_mb_f32} MB f32 vs ${r.weight_mb_nf4} MB nf4`);
  for (const t of [W, x, A, B, g]) { t.zeroGrad(); t.dispose(); }
  q4.dispose();
}
if (json) {
  const info = cpuInfo();
  console.log(JSON.stringify({
    bench: 'lora-linear', tokens: T, in: D, out: D, r: R, dropout: P, reps, threads: numThreads(),
    isa: info && (info.isa || info.simd || null), results,
  }));
}
