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
// --sim --asan builds build-sim-asan/ with AddressSanitizer on the kernels and runs jest with
// libasan preloaded: a kernel touching one byte past a tensor (the caching allocator's slack is
// poisoned) or any other allocation stops the run with the kernel's stack — compute-sanitizer's
// memcheck, on the CPU.
//
//   node scripts/gpu-emu.js [--sim [--asan]] [--no-build] [jest args...]     e.g. -t 'Trainer on cuda'
//   PEFTKIT_JOBS=N    parallel compile jobs (default 2)
'use strict';
const { spawnSync } = require('child_process');
const path = require('path');

const root = path.resolve(__dirname, '..');
const argv = process.argv.slice(2);
const sim = argv.includes('--sim');
const asan = sim && argv.includes('--asan');
const what = sim ? 'CUDA simulator' : 'CUDA emulator';
const tag = sim ? 'gpu-sim' : 'gpu-emu';
const out = path.join(root, sim ? (asan ? 'build-sim-asan' : 'build-sim') : 'build-emu');
const addon = path.join(out, 'Release', 'peftkit.node');
const build = !argv.includes('--no-build');
const jestArgs = argv.filter((a) => a !== '--no-build' && a !== '--sim' && a !== '--asan');
const env = { ...process.env };
if (asan) {
  const r = spawnSync('gcc', ['-print-file-name=libasan.so'], { encoding: 'utf8' });
  const lib = (r.stdout || '').trim();
  if (r.status !== 0 || !lib.startsWith('/')) { console.error(`${tag}: --asan needs gcc's libasan.so (gcc -print-file-name=libasan.so gave '${lib}')`); process.exit(1); }
  env.LD_PRELOAD = lib;
  env.ASAN_OPTIONS = `detect_leaks=0:abort_on_error=1${env.ASAN_OPTIONS ? `:${env.ASAN_OPTIONS}` : ''}`;
}

function run(cmd, args, env = process.env) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env });
  if (r.error) throw r.error;
  return r.status ?? 1;
}

if (build) {
  const t0 = Date.now();
  const jobs = String(process.env.PEFTKIT_JOBS || 2);
  const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
  const flags = sim ? ['--CDPEFTKIT_CUDA_SIM=ON', ...(asan ? ['--CDPEFTKIT_CUDA_SIM_ASAN=ON'] : [])] : ['--CDPEFTKIT_CUDA_EMU=ON'];
  const rc = run(process.execPath, [cmakeJs, 'compile', '--out', out, '--parallel', jobs, ...flags]);
  if (rc !== 0) { console.error(`${tag}: building the ${what} addon failed`); process.exit(rc); }
  console.log(`${tag}: ${what} addon built in ${((Date.now() - t0) / 1000).toFixed(0)} s: ${path.relative(root, addon)}`);
}

// The addon must be the emulator (or simulator), and complete: a CudaOps entry it leaves unset would
// make that op throw "needs a peftkit build with the CUDA backend" in the middle of some test instead.
const info = JSON.parse(spawnSync(process.execPath, ['-p', `JSON.stringify(require(${JSON.stringify(addon)}).cudaInfo())`],
  { env, encoding: 'utf8' }).stdout || '{"devices":[]}');   // in a child: libasan must be preloaded
const isSim = /simulator/.test((info.devices[0] || {}).name || '');
if (!info.emulated || !info.available || isSim !== sim) {
  console.error(`${tag}: ${addon} is not a usable ${what} build: ${JSON.stringify(info)}`);
  process.exit(1);
}
if (info.reason) {
  console.error(`${tag}: ${info.reason}`);
  process.exit(1);
}

const jest = require.resolve('jest/bin/jest');
// Test paths given (test/gpu/...): only those files; else the whole GPU suite.
const files = jestArgs.some((a) => a.startsWith('test/')) ? [] : ['test/gpu'];
process.exit(run(process.execPath, [jest, ...files, ...jestArgs], { ...env, PEFTKIT_ADDON: addon }));
