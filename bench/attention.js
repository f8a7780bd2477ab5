#!/usr/bin/env node
// bench/attention — fused attention forward/backward TFLOP/s and fused cross-entropy GB/s, on cuda
// (csrc/cuda/attention.cu, cross_entropy.cu) or on the CPU kernels.
//
//   npm run bench -- attention [--device cuda|cpu] [--json] [--quick] [--tiny] [--reps N]
//
// --tiny: one small shape of each (B1 H4/2 T128 D64, N=256 V=4096): a plumbing run of every entry
// point, e.g. on the CUDA emulator (cudaInfo().emulated: the JSON then says "emulated": true; its
// figures are host-CPU timings, not GPU figures).
// cuda shapes (bf16, causal): B4 H32 T1024/T2048 D128, and GQA with 8 kv heads; cross-entropy at
// N=8192 tokens for V=32000 (Llama-2) and V=128256 (Llama-3). The CPU shapes are scaled down
// (B1 H8 T512/T1024, N=1024) so the run stays short; FLOP and byte counts are per the shape run.
//
// FLOPs (FlashAttention convention): forward 4·B·Hq·T·S·D, halved when causal (T == S); backward
// 2.5× the forward (5 GEMMs against 2). Cross-entropy bytes: forward reads the logits once,
// backward reads them and writes dlogits (the lse/labels traffic is negligible).
// With --json the last line is one JSON object { bench, device, gpu, results: [...] }.
'use strict';
const path = require('path');
const DIST = process.env.PEFTKIT_DIST || path.join(__dirname, '..', 'dist');
const { native } = require(path.join(DIST, 'native'));
require(DIST);

const argv = process.argv.slice(2);
const json = argv.includes('--json');
const quick = argv.includes('--quick');
const tiny = argv.includes('--tiny');
const arg = (name, dflt) => { const i = argv.indexOf(name); return i >= 0 ? argv[i + 1] : dflt; };
const reps = Number(arg('--reps', quick ? 2 : 5));
const info = typeof native.cudaInfo === 'function' ? native.cudaInfo() : { available: false, reason: 'no cudaInfo' };
const device = arg('--device', info.available ? 'cuda' : 'cpu');
if (device === 'cuda' && !info.available) {
  console.error(`bench/attention: --device cuda but CUDA is not available: ${info.reason}`);
  if (json) console.log(JSON.stringify({ bench: 'attention', device, skipped: true, reason: info.reason }));
  process.exit(0);
}
const onGpu = device === 'cuda';
const emulated = onGpu && info.emulated === true;
if (emulated) console.log('CUDA EMULATOR (host memory, CPU kernels): the GPU entry points ran; the figures below are not GPU figures');
const sync = () => { if (onGpu) native.cudaSynchronize(); };

// A random tensor of `shape` on the bench device without generating all of it on the host: the
// trailing `slabDims` dims are random, the leading dims repeat the slab (values do not change the
// timing of these kernels).
function randomOnDevice(shape, slabDims, seed, dtype, std = 1) {
  const slab = shape.map((s, i) => (i < shape.length - slabDims ? 1 : s));
  let t = native.randn(slab, seed, dtype, 0, std);
  if (onGpu) t = native.toDevice(t, 'cuda');
  const e = native.expand(t, shape);
  return onGpu ? native.cuda_contiguous(e) : native.contiguous(e);
}

function best(fn) {
  fn(); sync();                      // warm-up (allocator, cudaFuncSetAttribute, caches)
  let b = Infinity;
  for (let r = 0; r < reps; r++) {
    const t0 = process.hrtime.bigint();
    const out = fn();
    sync();
    b = Math.min(b, Number(process.hrtime.bigint() - t0) / 1e9);
    for (const t of [].concat(out)) if (t && typeof t.dispose === 'function') t.dispose();
  }
  return b;
}

const results = [];
function report(row, line) {
  results.push(row);
  console.log(line);   // human-readable; with --json the JSON object follows as the last line
}

// ---- attention ----
const attnShapes = tiny ? [{ B: 1, Hq: 4, Hkv: 2, T: 128, D: 64 }] : onGpu
  ? [
    { B: 4, Hq: 32, Hkv: 32, T: 1024, D: 128 }, { B: 4, Hq: 32, Hkv: 32, T: 2048, D: 128 },
    { B: 4, Hq: 32, Hkv: 8, T: 1024, D: 128 }, { B: 4, Hq: 32, Hkv: 8, T: 2048, D: 128 },
  ]
  : [{ B: 1, Hq: 8, Hkv: 8, T: 512, D: 128 }, { B: 1, Hq: 8, Hkv: 2, T: 1024, D: 128 }];
const dtype = onGpu ? 'bf16' : 'f32';
for (const s of (quick ? attnShapes.slice(0, 1) : attnShapes)) {
  const q = randomOnDevice([s.B, s.Hq, s.T, s.D], 2, 1, dtype);
  const k = randomOnDevice([s.B, s.Hkv, s.T, s.D], 2, 2, dtype);
  const v = randomOnDevice([s.B, s.Hkv, s.T, s.D], 2, 3, dtype);
  const dout = randomOnDevice([s.B, s.Hq, s.T, s.D], 2, 4, dtype);
  const scale = 1 / Math.sqrt(s.D);
  const fwd = () => native.attention_forward(q, k, v, null, true, 0, scale, 0, null);
  const tf = best(fwd);
  const [o, l] = fwd();
  const tb = best(() => native.attention_backward(q, k, v, null, o, l, dout, true, 0, scale, 0, true, true, true, null));
  const flopsF = 4 * s.B * s.Hq * s.T * s.T * s.D / 2, flopsB = 2.5 * flopsF;
  const row = {
    op: 'attention', dtype, causal: true, ...s, fwd_ms: +(tf * 1e3).toFixed(3), bwd_ms: +(tb * 1e3).toFixed(3),
    fwd_tflops: +(flopsF / tf / 1e12).toFixed(2), bwd_tflops: +(flopsB / tb / 1e12).toFixed(2),
    fwd_bwd_tflops: +((flopsF + flopsB) / (tf + tb) / 1e12).toFixed(2),
  };
  report(row, `attention ${dtype} B${s.B} H${s.Hq}/${s.Hkv} T${s.T} D${s.D} causal: fwd ${row.fwd_ms} ms ${row.fwd_tflops} TFLOP/s, ` +
    `bwd ${row.bwd_ms} ms ${row.bwd_tflops} TFLOP/s, fwd+bwd ${row.fwd_bwd_tflops} TFLOP/s`);
  for (const t of [q, k, v, dout, o, l]) t.dispose();
}

// ---- cross-entropy ----
const N = tiny ? 256 : onGpu ? 8192 : 1024;
for (const V of (tiny ? [4096] : quick ? [32000] : [32000, 128256])) {
  const ceDtype = 'bf16';
  const logits = native.view(randomOnDevice([N / 256, 256, V], 2, 5, ceDtype, 2), [N, V]);
  const labs = new BigInt64Array(N);
  for (let i = 0; i < N; i++) labs[i] = BigInt((i * 7919) % V);
  let labels = native.fromBuffer(labs, [N], 'i64');
  if (onGpu) labels = native.toDevice(labels, 'cuda');
  const fwd = () => native.cross_entropy(logits, labels, -100, 0);
  const tf = best(fwd);
  const [loss, lse] = fwd();
  const dloss = native.full([], 1, 'f32');
  const tb = best(() => native.cross_entropy_backward(logits, labels, lse, dloss, -100, 0));
  const bytes = N * V * 2;
  const row = {
    op: 'cross_entropy', dtype: ceDtype, N, V, fwd_ms: +(tf * 1e3).toFixed(3), bwd_ms: +(tb * 1e3).toFixed(3),
    fwd_gbps: +(bytes / tf / 1e9).toFixed(1), bwd_gbps: +(2 * bytes / tb / 1e9).toFixed(1),
  };
  report(row, `cross_entropy ${ceDtype} N${N} V${V}: fwd ${row.fwd_ms} ms ${row.fwd_gbps} GB/s, bwd ${row.bwd_ms} ms ${row.bwd_gbps} GB/s`);
  for (const t of [logits, labels, loss, lse]) t.dispose();
}

if (json) {
  const gpu = onGpu && info.devices && info.devices[0] ? info.devices[0].name : null;
  console.log(JSON.stringify({ bench: 'attention', device, emulated, tiny, gpu, results }));
}
