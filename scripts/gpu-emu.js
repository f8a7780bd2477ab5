#!/usr/bin/env node
// gpu-emu.js — `npm run test:gpu-emu`: the GPU test suite (jest test/gpu) against the CUDA emulator;
// with --sim (`npm run test:gpu-sim`) against the CUDA simulator instead.
//
// Builds the addon with -DPEFTKIT_CUDA_EMU=ON into build-emu/ (never build/, which the normal tests
// load), checks that it is the emulator and that it fills every CudaOps entry, then runs
// `jest test/gpu` with PEFTKIT_ADDON pointing at it. The emulator keeps "cuda" tensors in host
// memory and runs the CPU kernels behind the real backend's device rules (docs/cuda.md): this
// checks the GPU code paths' plumbing (devices, shapes, TypeScript), not the CUDA kernels, whose
// numerical comparisons become CPU-vs-CPU here.
//
// --sim builds with -DPEFTKIT_CUDA_SIM=ON into build-sim/: the CUDA kernels of csrc/cuda themselves,
// compiled as C++ and run by csrc/cuda_sim (every CUDA thread a fiber; warp and block barriers,
// mma/ldmatrix emulated; runtime API and cuBLASLt over host memory). Here the comparisons of the
// GPU suite are kernel-vs-CPU for real; only speed and true concurrency are out of reach.
//
//   node scripts/gpu-emu.js [--sim] [--no-build] [jest args...]     e.g. -t 'Trainer on cuda'
//   PEFTKIT_JOBS=N    parallel compile jobs (default 2)
'use strict';
const { spawnSync } = require('child_process');
const path = require('path');

const root = path.resolve(__dirname, '..');
const argv = process.argv.slice(2);
const sim = argv.includes('--sim');
const what = sim ? 'CUDA simulator' : 'CUDA emulator';
const tag = sim ? 'gpu-sim' : 'gpu-emu';
const out = path.join(root, sim ? 'build-sim' : 'build-emu');
const addon = path.join(out, 'Release', 'peftkit.node');
const build = !argv.includes('--no-build');
const jestArgs = argv.filter((a) => a !== '--no-build' && a !== '--sim');

function run(cmd, args, env = process.env) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env });
  if (r.error) throw r.error;
  return r.status ?? 1;
}

if (build) {
  const t0 = Date.now();
  const jobs = String(process.env.PEFTKIT_JOBS || 2);
  const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
  const rc = run(process.execPath, [cmakeJs, 'compile', '--out', out, '--parallel', jobs, sim ? '--CDPEFTKIT_CUDA_SIM=ON' : '--CDPEFTKIT_CUDA_EMU=ON']);
  if (rc !== 0) { console.error(`${tag}: building the ${what} addon failed`); process.exit(rc); }
  console.log(`${tag}: ${what} addon built in ${((Date.now() - t0) / 1000).toFixed(0)} s: ${path.relative(root, addon)}`);
}

// The addon must be the emulator (or simulator), and complete: a CudaOps entry it leaves unset would
// make that op throw "needs a peftkit build with the CUDA backend" in the middle of some test instead.
const info = require(addon).cudaInfo();
const isSim = (info.devices[0] || {}).name === undefined ? false : /simulator/.test(info.devices[0].name);
if (!info.emulated || !info.available || isSim !== sim) {
  console.error(`${tag}: ${addon} is not a usable ${what} build: ${JSON.stringify(info)}`);
  process.exit(1);
}
if (info.reason) {
  console.error(`${tag}: ${info.reason}`);
  process.exit(1);
}

const jest = require.resolve('jest/bin/jest');
process.exit(run(process.execPath, [jest, 'test/gpu', ...jestArgs], { ...process.env, PEFTKIT_ADDON: addon }));
