#!/usr/bin/env node
// bench/load — peak RSS of loadModel on a synthetic bf16 Llama checkpoint (default ~1.1B params,
// TinyLlama shape) relative to the checkpoint size. The loader reads each tensor straight into its
// parameter's memory, so the target is peak RSS < 1.3x the file size.
//
//   npm run bench -- load [--json] [--params small|1b] [--keep DIR]
// The checkpoint is written once to a temp folder (or --keep DIR, reused when present); the load
// runs in a fresh child process so its RSS is measured alone.
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { spawnSync } = require('child_process');

const argv = process.argv.slice(2);
const json = argv.includes('--json');
const small = argv.includes('small');
const keepIdx = argv.indexOf('--keep');

if (process.env.PEFTKIT_BENCH_LOAD_CHILD) {
  // child: load and report
  const { loadModel } = require('../dist');
  const dir = process.env.PEFTKIT_BENCH_LOAD_CHILD;
  const t0 = Date.now();
  loadModel(dir, { dtype: 'bf16' }).then((m) => {
    const secs = (Date.now() - t0) / 1000;
    const rss = process.resourceUsage().maxRSS * 1024;
    process.stdout.write(JSON.stringify({ secs, maxRssBytes: rss, params: m.numParameters() }) + '\n');
  }).catch((e) => { console.error(e); process.exit(1); });
  return;
}

const { createModel, parseConfig, saveCheckpoint, Tensor, native } = (() => {
  const pk = require('../dist');
  return { ...pk, native: require('../dist/native').native };
})();

const cfgJson = small
  ? { model_type: 'llama', hidden_size: 512, intermediate_size: 1408, num_hidden_layers: 4, num_attention_heads: 8, num_key_value_heads: 4, vocab_size: 8192 }
  : { model_type: 'llama', hidden_size: 2048, intermediate_size: 5632, num_hidden_layers: 22, num_attention_heads: 32, num_key_value_heads: 4, vocab_size: 32000 };
Object.assign(cfgJson, { max_position_embeddings: 2048, rms_norm_eps: 1e-5, rope_theta: 10000, tie_word_embeddings: false, torch_dtype: 'bfloat16', hidden_act: 'silu' });

const dir = keepIdx >= 0 ? path.resolve(argv[keepIdx + 1]) : fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-load-'));
const file = path.join(dir, 'model.safetensors');
if (!fs.existsSync(file)) {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(cfgJson, null, 2));
  const model = createModel(parseConfig(cfgJson), 'bf16');
  let seed = 1;
  for (const [, p] of model.namedParameters()) {
    const r = Tensor.rand([...p.shape], { seed: seed++, low: -0.02, high: 0.02, dtype: 'bf16' });
    native.copy_(p.native, r.native);
    r.dispose();
  }
  saveCheckpoint(dir, model.stateDict());
  model.dispose();
}
const fileBytes = fs.readdirSync(dir).filter((f) => f.endsWith('.safetensors')).reduce((s, f) => s + fs.statSync(path.join(dir, f)).size, 0);
const r = spawnSync(process.execPath, [__filename], { env: { ...process.env, PEFTKIT_BENCH_LOAD_CHILD: dir }, encoding: 'utf8' });
if (r.status !== 0) { console.error(r.stderr); process.exit(1); }
const child = JSON.parse(r.stdout.trim().split('\n').pop());
const ratio = child.maxRssBytes / fileBytes;
console.log(`checkpoint ${(fileBytes / 1e9).toFixed(2)} GB (${(child.params / 1e9).toFixed(3)}B params, bf16); load ${child.secs.toFixed(1)} s; ` +
  `peak RSS ${(child.maxRssBytes / 1e9).toFixed(2)} GB = ${ratio.toFixed(3)}x the checkpoint (target < 1.3x)`);
if (keepIdx < 0) fs.rmSync(dir, { recursive: true, force: true });
if (json) console.log(JSON.stringify({ bench: 'load', params: child.params, checkpointBytes: fileBytes, peakRssBytes: child.maxRssBytes, ratio: +ratio.toFixed(4), seconds: child.secs }));
