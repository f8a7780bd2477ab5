#!/usr/bin/env node
// gpu-emu.js — `npm run test:gpu-emu`: the GPU test suite (jest test/gpu) against the CUDA emulator.
//
// Builds the addon with -DPEFTKIT_CUDA_EMU=ON into build-emu/ (never build/, which the normal tests
// load), checks that it is the emulator and that it fills every CudaOps entry, then runs
// `jest test/gpu` with PEFTKIT_ADDON pointing at it. The emulator keeps "cuda" tensors in host
// memory and runs the CPU kernels behind the real backend's device rules (docs/cuda.md): this
// checks the GPU code paths' plumbing (devices, shapes, TypeScript), not the CUDA kernels, whose
// numerical comparisons become CPU-vs-CPU here.
//
//   node scripts/gpu-emu.js [--no-build] [jest args...]     e.g. -t 'Trainer on cuda'
//   PEFTKIT_JOBS=N    parallel compile jobs (default 2)
'use strict';
const { spawnSync } = require('child_process');
const path = require('path');

const root = path.resolve(__dirname, '..');
const out = path.join(root, 'build-emu');
const addon = path.join(out, 'Release', 'peftkit.node');
const argv = process.argv.slice(2);
const build = !argv.includes('--no-build');
const jestArgs = argv.filter((a) => a !== '--no-build');

function run(cmd, args, env = process.env) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env });
  if (r.error) throw r.error;
  return r.status ?? 1;
}

if (build) {
  const t0 = Date.now();
  const jobs = String(process.env.PEFTKIT_JOBS || 2);
  const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
  const rc = run(process.execPath, [cmakeJs, 'compile', '--out', out, '--parallel', jobs, '--CDPEFTKIT_CUDA_EMU=ON']);
  if (rc !== 0) { console.error('gpu-emu: building the CUDA emulator addon failed'); process.exit(rc); }
  console.log(`gpu-emu: emulator addon built in ${((Date.now() - t0) / 1000).toFixed(0)} s: ${path.relative(root, addon)}`);
}

// The addon must be the emulator, and complete: a CudaOps entry it leaves unset would make that op
// throw "needs a peftkit build with the CUDA backend" in the middle of some test instead.
const info = require(addon).cudaInfo();
if (!info.emulated || !info.available) {
  console.error(`gpu-emu: ${addon} is not a usable CUDA emulator build: ${JSON.stringify(info)}`);
  process.exit(1);
}
if (info.reason) {
  console.error(`gpu-emu: ${info.reason}`);
  process.exit(1);
}

const jest = require.resolve('jest/bin/jest');
process.exit(run(process.execPath, [jest, 'test/gpu', ...jestArgs], { ...process.env, PEFTKIT_ADDON: addon }));
