#!/usr/bin/env node
// build-native.js — builds the peftkit addon with cmake-js (Release, -O3).
//
// `npm install` runs this. It skips the build when a prebuilt binary for this platform exists
// (prebuilds/<platform>-<arch>/) unless --force or PEFTKIT_BUILD_FROM_SOURCE=1. If cmake-js
// fails (no cmake on the machine), it falls back to node-gyp with binding.gyp (CPU kernels only).
//   PEFTKIT_CUDA=OFF|ON|AUTO   CUDA backend (AUTO: built when nvcc and cuBLASLt are found)
//   PEFTKIT_JOBS=N             parallel compile jobs (default: cores)
'use strict';
const { spawnSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

const root = path.resolve(__dirname, '..');
const force = process.argv.includes('--force') || process.env.PEFTKIT_BUILD_FROM_SOURCE === '1';
const prebuilt = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`, 'peftkit.node');

if (!force && fs.existsSync(prebuilt)) {
  console.log(`peftkit: using prebuilt ${path.relative(root, prebuilt)} (set PEFTKIT_BUILD_FROM_SOURCE=1 to compile)`);
  process.exit(0);
}

function run(cmd, args) {
  console.log(`peftkit: ${path.basename(cmd)} ${args.join(' ')}`);
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env: process.env });
  return r.status === 0;
}

const jobs = String(process.env.PEFTKIT_JOBS || os.cpus().length || 2);
const cuda = (process.env.PEFTKIT_CUDA || 'AUTO').toUpperCase();
if (!['OFF', 'ON', 'AUTO'].includes(cuda)) {
  console.error(`peftkit: PEFTKIT_CUDA must be OFF, ON or AUTO (got '${process.env.PEFTKIT_CUDA}')`);
  process.exit(1);
}

let cmakeJs;
try { cmakeJs = require.resolve('cmake-js/bin/cmake-js'); } catch { cmakeJs = null; }
if (cmakeJs && run(process.execPath, [cmakeJs, 'compile', '--parallel', jobs, `--CDPEFTKIT_CUDA=${cuda}`])) process.exit(0);

// Fallback: node-gyp (npm ships it; npm_config_node_gyp points at it during `npm install`).
console.warn('peftkit: cmake-js build failed or unavailable; trying node-gyp (CPU only)');
const gyp = process.env.npm_config_node_gyp;
if (gyp && fs.existsSync(gyp) && run(process.execPath, [gyp, 'rebuild', `--jobs=${jobs}`])) process.exit(0);
console.error(
  'peftkit: could not build the native addon. Install cmake (>= 3.18) and a C++17 compiler (g++ >= 9 or clang),\n' +
  'then run `npm rebuild peftkit` (or `npm run build:native` in a checkout).');
process.exit(1);
