#!/usr/bin/env node
// bench/cuda-kernels — memory bandwidth of the CUDA kernels of csrc/cuda/{quant,norm,rope,optim,
// random}.cu on LLM shapes, as GB/s and % of the device's peak bandwidth (H200: ~4.8 TB/s).
//
//   npm run bench -- cuda-kernels [--json] [--quick] [--tiny] [--reps N] [--peak-gbs 4800]
//
// --tiny: every shape divided down to a few thousand elements (a plumbing run of every entry
// point, e.g. on the CUDA emulator; the figures mean nothing). On the emulator (cudaInfo().emulated)
// the JSON carries "emulated": true and the peak-bandwidth verdicts are left out.
// Reported: NF4 dequantization (bf16 out, plain and double-quantized absmax; the goal is >= 70% of
// peak), the QLoRA linear (dequantize into the scratch buffer + cuBLASLt) against the bf16 linear,
// RMSNorm forward/backward, RoPE forward on the (B,T,H,D)->(B,H,T,D) view, AdamW 32-bit (one fused
// multi-tensor launch vs one launch per tensor) and 8-bit, dropout. Bytes counted = the bytes each
// kernel must read and write once. Timing: cudaSynchronize, `reps` back-to-back calls,
// cudaSynchronize; best of 3 such rounds. Exits 0 with {"skipped": true, "reason": ...} without a GPU.
'use strict';
const path = require('path');
const { native } = require(path.join(process.env.PEFTKIT_DIST || path.join(__dirname, '..', 'dist'), 'native'));

const argv = process.argv.slice(2);
const json = argv.includes('--json');
const quick = argv.includes('--quick');
const tiny = argv.includes('--tiny');
const arg = (name, dflt) => { const i = argv.indexOf(name); return i >= 0 ? Number(argv[i + 1]) : dflt; };
const reps = arg('--reps', quick ? 5 : 20);
const peakGBs = arg('--peak-gbs', 4800);

const info = native.cudaInfo();
if (!info.available) {
  const reason = `${info.built ? 'CUDA not available' : 'addon built without CUDA'}: ${info.reason}`;
  console.log(`cuda-kernels: skipped (${reason})`);
  if (json) console.log(JSON.stringify({ bench: 'cuda-kernels', skipped: true, reason }));
  process.exit(0);
}
const dev = info.devices[0];
const emulated = info.emulated === true;
console.log(`cuda-kernels on ${dev.name} (${(dev.totalBytes / 2 ** 30).toFixed(0)} GiB), peak ${peakGBs} GB/s, ${reps} reps${tiny ? ', tiny shapes' : ''}`);
if (emulated) console.log('CUDA EMULATOR (host memory, CPU kernels): every entry point ran; the figures below are not GPU figures');
// --tiny: a size divided by `f` (kept a multiple of `m`, at least m)
const sz = (n, f = 64, m = 64) => (tiny ? Math.max(m, Math.floor(n / f / m) * m) : n);
// The >= 70%-of-peak verdicts only for real GPU figures on the real shapes.
const verdict = !emulated && !tiny;

const live = [];
const keep = (t) => { live.push(t); return t; };
const sync = () => native.cudaSynchronize();

/** Seconds per call of fn (best of 3 rounds of `reps` calls); results are disposed as they come. */
function time(fn) {
  const r0 = fn(); dispose(r0); sync();               // warm-up (allocator, heuristics)
  let best = Infinity;
  for (let round = 0; round < 3; round++) {
    sync();
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < reps; i++) dispose(fn());
    sync();
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e9 / reps);
  }
  return best;
}
function dispose(r) {
  if (!r) return;
  if (Array.isArray(r)) { for (const t of r) dispose(t); return; }
  if (typeof r === 'object' && typeof r.dispose === 'function') r.dispose();
  else if (typeof r === 'object') for (const k of Object.keys(r)) if (r[k] && typeof r[k].dispose === 'function') r[k].dispose();
}

const results = [];
function report(name, seconds, bytes, extra = {}) {
  const gbs = bytes / seconds / 1e9;
  const row = { name, ms: +(seconds * 1e3).toFixed(4), GBs: +gbs.toFixed(1), pctPeak: +(100 * gbs / peakGBs).toFixed(1), ...extra };
  results.push(row);
  console.log(`${name.padEnd(46)} ${row.ms.toFixed(3).padStart(9)} ms ${row.GBs.toFixed(0).padStart(6)} GB/s ${row.pctPeak.toFixed(1).padStart(5)}% of peak` +
    (Object.keys(extra).length ? '  ' + JSON.stringify(extra) : ''));
  return row;
}
const randnCuda = (shape, seed, dt, mean = 0, std = 1) => keep(native.cuda_randn(shape, seed, dt, mean, std));

// ---- NF4 dequantization ----
const dqShapes = (quick || tiny ? [[14336, 4096]] : [[14336, 4096], [4096, 4096], [4096, 14336]]).map(([o, i]) => [sz(o), sz(i)]);
for (const [O, I] of dqShapes) for (const dq of [false, true]) {
  const W = randnCuda([O, I], 1, 'bf16', 0, 0.02);
  const q = native.quant4_quantize(W, 64, 'nf4', dq);
  for (const k of Object.keys(q)) if (q[k] && typeof q[k] === 'object') keep(q[k]);
  const state = { type: 'nf4', packed: q.packed, absmax: q.absmax, nestedAbsmax: q.nestedAbsmax, offset: q.offset, blocksize: 64, shape: [O, I], dtype: 'bf16' };
  const n = O * I, nb = n / 64;
  const bytes = n / 2 + (dq ? nb + Math.ceil(nb / 256) * 4 : nb * 4) + n * 2;
  const s = time(() => native.quant4_dequantize(state, 'bf16'));
  const row = report(`nf4 dequant ${O}x${I} -> bf16${dq ? ' (double quant)' : ''}`, s, bytes);
  row.meetsTarget70 = verdict ? row.pctPeak >= 70 : null;
  if (info.cublasLt && O === sz(14336) && !dq) {
    // QLoRA linear vs the bf16 linear on 4096 tokens (dequant overhead of the 4-bit path)
    const tokens = sz(4096);
    const x = randnCuda([tokens, I], 2, 'bf16');
    const tq = time(() => native.quant4_linear(x, state, null));
    const tl = time(() => native.linear(x, W, null));
    const flops = 2 * tokens * O * I;
    const r = { name: `qlora linear ${tokens}x${I} -> ${O}`, ms: +(tq * 1e3).toFixed(3), bf16LinearMs: +(tl * 1e3).toFixed(3),
      ratio: +(tq / tl).toFixed(3), TFLOPs: +(flops / tq / 1e12).toFixed(1), bf16TFLOPs: +(flops / tl / 1e12).toFixed(1) };
    results.push(r);
    console.log(`${r.name.padEnd(46)} ${r.ms.toFixed(3).padStart(9)} ms (bf16 linear ${r.bf16LinearMs} ms, x${r.ratio}; ${r.TFLOPs} vs ${r.bf16TFLOPs} TFLOP/s)`);
  }
}

// ---- RMSNorm ----
for (const [rows, C] of (quick || tiny ? [[8192, 4096]] : [[8192, 2048], [8192, 4096], [4096, 8192]]).map(([r, c]) => [sz(r), sz(c)])) {
  const x = randnCuda([rows, C], 3, 'bf16'), w = randnCuda([C], 4, 'bf16', 1, 0.1), dy = randnCuda([rows, C], 5, 'bf16');
  const [, rstd] = native.rms_norm(x, w, 1e-6, false).map(keep);
  const n = rows * C;
  report(`rms_norm fwd bf16 ${rows}x${C}`, time(() => native.rms_norm(x, w, 1e-6, false)), 2 * n * 2 + rows * 4);
  report(`rms_norm bwd bf16 ${rows}x${C} (dx, dw)`, time(() => native.rms_norm_backward(x, w, rstd, dy, false, true, true)), 3 * n * 2 + rows * 4);
  report(`add_rms_norm fwd bf16 ${rows}x${C}`, time(() => native.cuda_add_rms_norm(x, dy, w, 1e-6, false)), 4 * n * 2 + rows * 4);
}

// ---- RoPE ----
{
  const B = tiny ? 1 : 8, T = sz(1024), H = tiny ? 2 : 32, D = 128;
  const pos = keep(native.toDevice(native.cast(native.reshape(native.arange(0, B * T, 1, 'f32'), [B, T]), 'i64'), 'cuda'));
  const invf = native.fromBuffer(new Float32Array(D / 2).map((_, i) => Math.pow(10000, -(2 * i) / D)), [D / 2], 'f32');
  const [cos, sin] = native.rope_tables(pos, invf, 1, 'bf16').map(keep);
  const xs = randnCuda([B, T, H, D], 6, 'bf16');
  const x = keep(native.transpose(xs, 1, 2));
  const n = B * T * H * D;
  report(`rope fwd bf16 (B,T,H,D)^T ${B}x${T}x${H}x${D}`, time(() => native.rope(x, cos, sin)), 2 * n * 2 + 2 * B * T * D * 2);
  report(`rope bwd bf16 ${B}x${H}x${T}x${D}`, time(() => native.rope_backward(x, cos, sin)), 2 * n * 2 + 2 * B * T * D * 2);
}

// ---- AdamW ----
{
  const total = tiny ? 1 << 16 : quick ? 1 << 24 : 40 * (1 << 20);   // ~LoRA r=16 on an 8B model: ~42M params
  const count = tiny ? 8 : 448, per = Math.floor(total / count);
  const ps = [], gs = [], ms = [], vs = [];
  for (let i = 0; i < count; i++) {
    ps.push(randnCuda([per], 10 + i, 'f32', 0, 0.02)); gs.push(randnCuda([per], 5000 + i, 'f32', 0, 1e-3));
    ms.push(keep(native.toDevice(native.zeros([per], 'f32'), 'cuda'))); vs.push(keep(native.toDevice(native.zeros([per], 'f32'), 'cuda')));
  }
  const n = per * count;
  let step = 1;
  report(`adamw f32 fused multi-tensor (${count} x ${per})`, time(() => native.cuda_adamw_multi(ps, gs, ms, vs, 1e-4, 0.9, 0.999, 1e-8, 0.01, step++)), n * 4 * 7);
  report(`adamw f32 one launch per tensor (${count} x ${per})`, time(() => { for (let i = 0; i < count; i++) native.adamw_step(ps[i], gs[i], ms[i], vs[i], 1e-4, 0.9, 0.999, 1e-8, 0.01, step); step++; }), n * 4 * 7);
  const big = randnCuda([n], 7, 'f32', 0, 0.02), g = randnCuda([n], 8, 'f32', 0, 1e-3);
  const nb = Math.ceil(n / 256);
  const q1 = keep(native.toDevice(native.zeros([n], 'u8'), 'cuda')), q2 = keep(native.toDevice(native.zeros([n], 'u8'), 'cuda'));
  const a1 = keep(native.toDevice(native.zeros([nb], 'f32'), 'cuda')), a2 = keep(native.toDevice(native.zeros([nb], 'f32'), 'cuda'));
  report(`adamw 8-bit blockwise f32 params (${n})`, time(() => native.adamw8bit_step(big, g, q1, q2, a1, a2, 1e-4, 0.9, 0.999, 1e-8, 0.01, step++)), n * (4 + 4 + 2 + 4 + 2) + nb * 16);
  const sGn = time(() => native.grad_norm(gs, 2));
  report(`grad_norm (${count} tensors, incl. one readback)`, sGn, n * 4);
}

// ---- dropout ----
{
  const R = sz(8192), C = sz(4096);
  const x = randnCuda([R, C], 9, 'bf16');
  report(`dropout fwd bf16 ${R}x${C} (p=0.1, mask out)`, time(() => native.dropout_forward(x, 0.1, 1234)), R * C * (2 + 2 + 1));
}

for (const t of live) if (t && typeof t.dispose === 'function') t.dispose();
const dq = results.filter((r) => r.name.startsWith('nf4 dequant'));
const summary = { bench: 'cuda-kernels', device: dev.name, emulated, tiny, peakGBs, reps,
  nf4DequantBestPct: verdict ? Math.max(...dq.map((r) => r.pctPeak)) : null,
  nf4DequantMeets70: verdict ? dq.every((r) => r.pctPeak >= 70) : null, results };
if (verdict) console.log(`nf4 dequant: best ${summary.nf4DequantBestPct}% of peak; all shapes >= 70%: ${summary.nf4DequantMeets70}`);
if (json) console.log(JSON.stringify(summary));
