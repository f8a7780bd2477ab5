#!/usr/bin/env node
// bench/lora-linear — the LoRA linear layer, forward + backward, fused native kernels vs the same
// layer composed from ops (linear, dropout, linear, linear, mul, add). Shape: 2048 tokens,
// 4096 -> 4096, r = 16, dropout 0.05 (as in a typical QLoRA run); base weight in f32 and bf16
// (NF4 is added with the NF4 kernels). The base weight is frozen: backward computes dX, dA, dB.
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
// TODO(nf4): results.nf4 with the base weight quantized by quantizeNF4 (the fused op takes it as is).
if (json) {
  const info = cpuInfo();
  console.log(JSON.stringify({
    bench: 'lora-linear', tokens: T, in: D, out: D, r: R, dropout: P, reps, threads: numThreads(),
    isa: info && (info.isa || info.simd || null), results,
  }));
}
