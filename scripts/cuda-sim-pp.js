#!/usr/bin/env node
// cuda-sim-pp.js — prepares a csrc/cuda source (.cu / .cuh) for the CUDA simulator (csrc/cuda_sim,
// -DPEFTKIT_CUDA_SIM=ON), which compiles the kernels as plain C++. Three rewrites, nothing else:
//
//   kernel<<<grid, block, smem, stream>>>(args)   ->  ::pk::sim::launcher(kernel, grid, block, smem, stream)(args)
//   extern __shared__ __align__(16) T name[];     ->  T* name = reinterpret_cast<T*>(::pk::sim::dynamic_smem());
//   __shared__ T name[N];                          ->  the same, then ::pk::sim::poison_shared_once(&name, sizeof(name));
//
// Line structure is kept and a #line directive names the original file, so compiler messages and
// debuggers point into csrc/cuda. Run by CMake for each file:  node cuda-sim-pp.js IN OUT
'use strict';
const fs = require('fs');
const path = require('path');

function fail(msg) {
  console.error(`cuda-sim-pp: ${msg}`);
  process.exit(1);
}

// Index of the '<' matching the '>' at `close` (template argument lists), or -1.
function matchAngle(s, close) {
  let depth = 0;
  for (let i = close; i >= 0; i--) {
    const c = s[i];
    if (c === '>') depth++;
    else if (c === '<') { depth--; if (depth === 0) return i; }
    else if (c === ';' || c === '{' || c === '}') return -1;
  }
  return -1;
}

function rewriteLaunches(src, file) {
  let out = '';
  let pos = 0;
  for (;;) {
    const at = src.indexOf('<<<', pos);
    if (at < 0) break;
    const lineStart = src.lastIndexOf('\n', at) + 1;
    if (src.slice(lineStart, at).includes('//') || src.lastIndexOf('/*', at) > src.lastIndexOf('*/', at)) {
      out += src.slice(pos, at + 3);   // in a comment
      pos = at + 3;
      continue;
    }
    const end = src.indexOf('>>>', at);
    if (end < 0) fail(`${file}: '<<<' without '>>>'`);
    // The kernel expression: an identifier (with ::), optionally followed by template arguments.
    let k = at;
    while (k > 0 && /\s/.test(src[k - 1])) k--;
    if (src[k - 1] === '>') {
      const open = matchAngle(src, k - 1);
      if (open < 0) fail(`${file}: cannot find the template arguments of the kernel before '<<<' at offset ${at}`);
      k = open;
    }
    while (k > 0 && /[\w:]/.test(src[k - 1])) k--;
    const kernel = src.slice(k, at).trim();
    if (!/^[A-Za-z_:]/.test(kernel)) fail(`${file}: no kernel name before '<<<' at offset ${at}`);
    let p = end + 3;
    while (/\s/.test(src[p])) p++;
    if (src[p] !== '(') fail(`${file}: a launch of ${kernel} without an argument list`);
    const config = src.slice(at + 3, end);
    out += src.slice(pos, k) + `::pk::sim::launcher(${kernel}, ${config})` + src.slice(end + 3, p);
    pos = p;
  }
  return out + src.slice(pos);
}

// `__shared__ T name[N], ...;`: each poisoned by the first thread of each block that
// reaches it, as shared memory holds garbage at a block's start on a GPU.
function poisonStaticShared(src) {
  return src.replace(/^(\s*)__shared__\s+([^;]*);/gm, (m, indent, rest) => {
    if (/\bextern\b/.test(rest) || rest.includes('=')) return m;
    // declarators split at top-level commas; a declarator's name is the identifier before its
    // first '[' (or its last identifier): `T a[N], b[M]` -> a, b
    const parts = [];
    let depth = 0, cur = '';
    for (const ch of rest.replace(/__align__\s*\([^)]*\)/g, '')) {
      if (ch === '[' || ch === '(') depth++;
      if (ch === ']' || ch === ')') depth--;
      if (ch === ',' && depth === 0) { parts.push(cur); cur = ''; } else cur += ch;
    }
    parts.push(cur);
    const names = parts.map((d) => {
      const head = d.split('[')[0].trim();
      const ids = head.match(/[A-Za-z_]\w*/g);
      return ids ? ids[ids.length - 1] : null;
    });
    if (names.some((n) => !n)) fail(`cannot parse the __shared__ declaration: ${m.trim()}`);
    return `${m}${names.map((n) => ` ::pk::sim::poison_shared_once(&${n}, sizeof(${n}));`).join('')}`;
  });
}

function rewriteDynamicShared(src) {
  return src.replace(/extern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s+)?([A-Za-z_][\w\s]*?)\s+([A-Za-z_]\w*)\s*\[\s*\]\s*;/g,
    (_, type, name) => `${type}* ${name} = reinterpret_cast<${type}*>(::pk::sim::dynamic_smem());`);
}

const [input, output] = process.argv.slice(2);
if (!input || !output) fail('usage: node cuda-sim-pp.js IN OUT');
const src = fs.readFileSync(input, 'utf8');
const body = poisonStaticShared(rewriteDynamicShared(rewriteLaunches(src, input)));
const text = `#line 1 "${path.resolve(input).replace(/\\/g, '/')}"\n${body}`;
fs.mkdirSync(path.dirname(output), { recursive: true });
const tmp = `${output}.tmp${process.pid}`;
fs.writeFileSync(tmp, text);
fs.renameSync(tmp, output);
