#!/usr/bin/env node
// build-prebuilds.js — builds release binaries into prebuildify's layout with cmake-js.
//
// prebuildify has no cmake-js backend, so we drive cmake-js ourselves:
//   npm run build:prebuilds              -> prebuilds/<platform>-<arch>/peftkit.node       (CPU)
//   npm run build:prebuilds -- --cuda    -> prebuilds-cuda/<platform>-<arch>/peftkit.node  (CUDA)
// CPU and CUDA binaries live in separate roots; lib/native.ts picks between them at load time.
// Each build uses its own build directory so a developer's build/ is left alone.
'use strict';
const { spawnSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

const root = path.resolve(__dirname, '..');
const cuda = process.argv.includes('--cuda');
const tag = `${process.platform}-${process.arch}`;
const outRoot = path.join(root, cuda ? 'prebuilds-cuda' : 'prebuilds', tag);
const buildDir = path.join(root, cuda ? 'build-prebuild-cuda' : 'build-prebuild');

const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
const args = [cmakeJs, 'compile', '--out', buildDir, '--parallel', String(os.cpus().length || 2),
  `--CDPEFTKIT_CUDA=${cuda ? 'ON' : 'OFF'}`];
console.log(`peftkit: building ${cuda ? 'CUDA' : 'CPU'} prebuild for ${tag}`);
const r = spawnSync(process.execPath, args, { cwd: root, stdio: 'inherit' });
if (r.status !== 0) { console.error('peftkit: prebuild failed'); process.exit(1); }

const built = path.join(buildDir, 'Release', 'peftkit.node');
if (!fs.existsSync(built)) { console.error(`peftkit: expected ${built}`); process.exit(1); }
fs.mkdirSync(outRoot, { recursive: true });
const dest = path.join(outRoot, 'peftkit.node');
const tmp = `${dest}.tmp-${process.pid}`;
fs.copyFileSync(built, tmp);
fs.renameSync(tmp, dest);   // never leave a half-written binary
console.log(`peftkit: wrote ${path.relative(root, dest)} (${(fs.statSync(dest).size / 1e6).toFixed(1)} MB)`);
