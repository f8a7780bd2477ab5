#!/usr/bin/env node
// bench/gemm — GFLOP/s of peftkit's packed GEMM (through ops.matmul) at 2048³ and LLM shapes,
// 1 thread and all threads, f32 and bf16 operands. Rows: 'f32'; 'bf16 (B)' (f32 x bf16: f32
// compute, B widened while packing); 'bf16 (A,B)' (bf16 x bf16: ops.matmul multiplies in bf16 with
// f32 accumulation — the AVX512-BF16 kernel where cpuInfo().avx512bf16 and isa is avx512, else
// f32 compute; the row's `compute` field says which). With --openblas, times OpenBLAS sgemm (numpy)
// on the same shapes in the same run and reports the ratio.
//
//   npm run bench -- gemm [--json] [--quick] [--openblas] [--reps N]
// LLM shapes use the linear-layer layout y = x·Wᵀ (W stored [N,K], as in HF checkpoints).
'use strict';
const { spawnSync } = require('child_process');
const os = require('os');
const { Tensor, ops, setNumThreads, numThreads, cpuInfo, tidy } = require('../dist');

const argv = process.argv.slice(2);
const json = argv.includes('--json');
const quick = argv.includes('--quick');
const withBlas = argv.includes('--openblas');
const repsArg = argv.indexOf('--reps');
const reps = repsArg >= 0 ? Number(argv[repsArg + 1]) : 3;

const shapes = [
  { name: '2048^3', M: 2048, N: 2048, K: 2048, transB: false },
  { name: 'llm 2048x4096x4096', M: 2048, N: 4096, K: 4096, transB: true },
  { name: 'llm 2048x11008x4096', M: 2048, N: 11008, K: 4096, transB: true },
  { name: 'llm 2048x4096x11008', M: 2048, N: 4096, K: 11008, transB: true },
].slice(0, quick ? 1 : 4);
const allThreads = numThreads();
const ci = cpuInfo();
const bf16Compute = ci.isa === 'avx512' && ci.avx512bf16 ? 'bf16 (avx512-bf16)' : 'f32 (no avx512-bf16)';
const threadCounts = [...new Set([1, allThreads])];

function timeMatmul(a, b, transB) {
  // one warm-up, then best of `reps`
  tidy(() => ops.matmul(a, b, { transB }));
  let best = Infinity;
  for (let r = 0; r < reps; r++) {
    const t0 = process.hrtime.bigint();
    const c = ops.matmul(a, b, { transB });
    const dt = Number(process.hrtime.bigint() - t0) / 1e9;
    c.dispose();
    best = Math.min(best, dt);
  }
  return best;
}

function openblasGflops(s, threads) {
  const py = `
import os, time, numpy as np
M,N,K,tb=${s.M},${s.N},${s.K},${s.transB ? 1 : 0}
a=np.random.rand(M,K).astype(np.float32)
b=(np.random.rand(N,K) if tb else np.random.rand(K,N)).astype(np.float32)
bb=b.T if tb else b
np.dot(a,bb)
best=1e9
for _ in range(${reps}):
    t=time.perf_counter(); np.dot(a,bb); best=min(best,time.perf_counter()-t)
print(2*M*N*K/best/1e9)
`;
  const env = { ...process.env, OPENBLAS_NUM_THREADS: String(threads), OMP_NUM_THREADS: String(threads) };
  delete env.OPENBLAS_CORETYPE; delete env.OPENBLAS_L2_SIZE;
  const r = spawnSync('python3', ['-c', py], { env, encoding: 'utf8' });
  if (r.status !== 0) return null;
  return Number(r.stdout.trim());
}

const results = [];
for (const s of shapes) {
  const a32 = Tensor.rand([s.M, s.K], { seed: 1, low: -1, high: 1 });
  const b32 = Tensor.rand(s.transB ? [s.N, s.K] : [s.K, s.N], { seed: 2, low: -1, high: 1 });
  const a16 = ops.cast(a32, 'bf16'), b16 = ops.cast(b32, 'bf16');
  for (const threads of threadCounts) {
    setNumThreads(threads);
    for (const [dtype, a, b] of [['f32', a32, b32], ['bf16 (B)', a32, b16], ['bf16 (A,B)', a16, b16]]) {
      if (quick && dtype === 'bf16 (B)') continue;
      const sec = timeMatmul(a, b, s.transB);
      const gflops = (2 * s.M * s.N * s.K) / sec / 1e9;
      const compute = dtype === 'bf16 (A,B)' ? bf16Compute : 'f32';
      const row = { shape: s.name, M: s.M, N: s.N, K: s.K, threads, dtype, compute, gflops: +gflops.toFixed(1) };
      if (withBlas && dtype === 'f32') {
        const blas = openblasGflops(s, threads);
        if (blas) { row.openblas_gflops = +blas.toFixed(1); row.ratio_vs_openblas = +(gflops / blas).toFixed(3); }
      }
      results.push(row);
      console.log(`${s.name.padEnd(22)} ${String(threads).padStart(2)} thr  ${dtype.padEnd(10)} ${compute.padEnd(20)} ${gflops.toFixed(1).padStart(7)} GFLOP/s` +
        (row.openblas_gflops ? `   OpenBLAS ${row.openblas_gflops} (x${row.ratio_vs_openblas})` : ''));
    }
  }
  setNumThreads(allThreads);
  for (const t of [a32, b32, a16, b16]) t.dispose();
}
if (json) console.log(JSON.stringify({ bench: 'gemm', cpu: os.cpus()[0].model, isa: ci.isa, bf16Compute, threads: allThreads, reps, results }));
