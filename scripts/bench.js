#!/usr/bin/env node
// bench.js — `npm run bench -- <name> [args...]` runs bench/<name>.js (or bench/<name>/index.js).
// Benchmarks print human-readable lines; with --json their LAST line is one JSON object.
'use strict';
const fs = require('fs');
const path = require('path');
const { spawnSync } = require('child_process');

const root = path.resolve(__dirname, '..');
const [name, ...args] = process.argv.slice(2);
const available = fs.readdirSync(path.join(root, 'bench'))
  .filter((f) => f.endsWith('.js') || fs.existsSync(path.join(root, 'bench', f, 'index.js')))
  .map((f) => f.replace(/\.js$/, ''));
if (!name || !available.includes(name)) {
  console.error(`usage: npm run bench -- <name> [--json] [options]\navailable: ${available.join(', ')}`);
  process.exit(name ? 1 : 0);
}
const file = fs.existsSync(path.join(root, 'bench', `${name}.js`)) ? path.join(root, 'bench', `${name}.js`) : path.join(root, 'bench', name, 'index.js');
const r = spawnSync(process.execPath, ['--expose-gc', file, ...args], { stdio: 'inherit', cwd: root });
process.exit(r.status ?? 1);
