#!/usr/bin/env node
// bench/quantize — NF4 quantize and dequantize throughput (GB/s) of a 4096 x 4096 weight (and the
// Llama MLP shape 11008 x 4096), f32 and bf16 sources, with and without double quantization, all
// threads. Quantize GB/s counts the float bytes read; dequantize GB/s counts the float bytes
// written. Best of N repetitions after a warm-up.
//
//   npm run bench -- quantize [--json] [--quick] [--reps N]
'use strict';
const pk = require('../dist');
const { Tensor, numThreads, cpuInfo, tidy } = pk;
const q = pk.quantizeNF4 ? pk : require('../dist/quant');
const { quantizeNF4, dequantize } = q;

const argv = process.argv.slice(2);
const json = argv.includes('--json');
const quick = argv.includes('--quick');
const repsArg = argv.indexOf('--reps');
const reps = repsArg >= 0 ? Number(argv[repsArg + 1]) : quick ? 2 : 5;
const shapes = quick ? [[2048, 2048]] : [[4096, 4096], [11008, 4096]];

function best(fn) {
  fn();  // warm-up
  let b = Infinity;
  for (let i = 0; i < reps; i++) {
    const t0 = process.hrtime.bigint();
    fn();
    b = Math.min(b, Number(process.hrtime.bigint() - t0) / 1e9);
  }
  return b;
}

const results = [];
for (const [rows, cols] of shapes) {
  for (const src of ['f32', 'bf16']) {
    const w = tidy(() => Tensor.randn([rows, cols], { seed: 1, std: 0.02 }).to(src));
    const bytesIn = rows * cols * (src === 'f32' ? 4 : 2);
    for (const doubleQuant of [false, true]) {
      const tq = best(() => quantizeNF4(w, { doubleQuant, computeDtype: src === 'f32' ? 'f32' : 'bf16' }).dispose());
      const qt = quantizeNF4(w, { doubleQuant, computeDtype: src === 'f32' ? 'f32' : 'bf16' });
      const td = best(() => dequantize(qt, src).dispose());
      qt.dispose();
      const r = {
        shape: `${rows}x${cols}`, src, doubleQuant,
        quantize_ms: +(tq * 1e3).toFixed(2), quantize_gbs: +(bytesIn / tq / 1e9).toFixed(2),
        dequantize_ms: +(td * 1e3).toFixed(2), dequantize_gbs: +(bytesIn / td / 1e9).toFixed(2),
        params_per_s: +((rows * cols) / tq / 1e9).toFixed(2),
      };
      results.push(r);
      console.log(`nf4 ${r.shape.padEnd(10)} ${src.padEnd(4)} dq=${doubleQuant ? 'on ' : 'off'}  quantize ${r.quantize_ms.toFixed(1).padStart(7)} ms ` +
        `${r.quantize_gbs.toFixed(2).padStart(6)} GB/s (${r.params_per_s} Gparam/s)   dequantize ${r.dequantize_ms.toFixed(1).padStart(7)} ms ${r.dequantize_gbs.toFixed(2).padStart(6)} GB/s`);
    }
    w.dispose();
  }
}
if (json) {
  const info = cpuInfo();
  console.log(JSON.stringify({ bench: 'quantize', reps, threads: numThreads(), isa: info && info.isa, results }));
}
