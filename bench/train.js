#!/usr/bin/env node
// bench/train — tokens/s of LoRA (all-linear) training steps on random tokens, through the Trainer
// (forward, token-normalised loss, backward, global-norm clipping, AdamW, schedule), and peak RSS.
// Without --model it builds the Llama-shaped 35M model of the training issue (hidden 512, 8
// layers, 8 heads, 4 KV heads, FFN 1536, vocab 8192) with random weights. When PyTorch is
// importable (python3 -c "import torch") it also times PyTorch eager on the same shape (a
// hand-written Llama + LoRA, same thread count) in the same run and prints the ratio: against
// PyTorch with the same weight precision, and with --bf16 also against PyTorch's default f32.
//
//   npm run bench -- train [--model DIR] [--batch 4] [--seq 256] [--steps 5] [--warmup 1] [--r 16]
//                          [--threads 2] [--nf4] [--bf16] [--gc] [--profile [--top 12]] [--no-torch] [--json]
//
// --profile: one extra step with every native call timed, grouped as matmul (GEMM, linear, LoRA),
// attention, norm/rope/embedding/loss, elementwise, optimizer and memory (copies, casts, views).
// With --json the LAST line is one JSON object.
//
// GPU (--device cuda): a random-initialised Llama-shaped bf16 model built on the GPU from a config
// (createModel(cfg, { dtype: 'bf16', device: 'cuda', seed }); no weights needed), LoRA r=16 alpha=32
// on q,k,v,o,gate,up,down (the ../shared/gpu/README.md setup), random tokens, Trainer steps:
//
//   npm run bench -- train --device cuda [--shape 1.1b|6.7b|8b] [--qlora] [--gc [--offload]] [--batch B] [--seq T]
//                          [--steps 5] [--warmup 2] [--layers N] [--json]
//
// --shape picks the config and its reference batch (1.1b: TinyLlama B8xT1024, 6.7b: Llama-2-7B
// B4xT1024, 8b: Llama-3-8B B4xT2048); --qlora quantizes every projection to NF4 (blocksize 64,
// double quant, bf16 compute) on the GPU one layer at a time (the bf16 model never exists whole);
// --layers truncates the stack (smoke runs). On the CUDA emulator (a -DPEFTKIT_CUDA_EMU=ON addon,
// cudaInfo().emulated: host memory, CPU kernels; docs/cuda.md) the run checks the GPU code path only:
// the JSON says "emulated": true and no HF PEFT comparison is made. Reports tokens/s (median step), peak GPU memory
// (caching allocator's peak allocated/reserved, plus managed memory), model-FLOPs utilisation vs
// 783 TFLOP/s (6N + attention per token, the PaLM convention; and the LoRA-work figure 4N +
// attention, as LoRA never forms dW), and HF PEFT's figures for the same shape. Each run is one
// process (peak memory is per process).
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { spawnSync } = require('child_process');
const DIST = process.env.PEFTKIT_DIST || path.join(__dirname, '..', 'dist');
const pk = { ...require(DIST) };
// Until lib/index.ts exports them, take the adapter and trainer entry points from their modules.
if (!pk.wrapWithLora) pk.wrapWithLora = require(path.join(DIST, 'peft')).wrapWithLora;
if (!pk.Trainer) pk.Trainer = require(path.join(DIST, 'train')).Trainer;

const argv = process.argv.slice(2);
const has = (f) => argv.includes(f);
const arg = (f, d) => { const i = argv.indexOf(f); return i >= 0 ? argv[i + 1] : d; };
const json = has('--json');
const B = Number(arg('--batch', 4)), T = Number(arg('--seq', 256)), steps = Number(arg('--steps', 5)), warmup = Number(arg('--warmup', 1));
const r = Number(arg('--r', 16)), threads = Number(arg('--threads', 2)), modelDir = arg('--model', null);
const log = (s) => { if (!json) console.log(s); };

const LLAMA_35M = {
  model_type: 'llama', architectures: ['LlamaForCausalLM'], hidden_size: 512, num_hidden_layers: 8, num_attention_heads: 8,
  num_key_value_heads: 4, intermediate_size: 1536, vocab_size: 8192, max_position_embeddings: 2048, rms_norm_eps: 1e-6,
  rope_theta: 10000, hidden_act: 'silu', tie_word_embeddings: false, bos_token_id: 1, eos_token_id: 2,
};

function randomInit(model, seed) {
  // One tensor at a time (loadStateDict copies into the existing storage): norms 1, the rest N(0, 0.02²).
  let k = 0;
  for (const [name, t] of model.namedParameters()) {
    const src = /norm/.test(name) ? pk.Tensor.ones([...t.shape], { dtype: t.dtype }) : pk.Tensor.randn([...t.shape], { seed: seed + k++, std: 0.02, dtype: t.dtype });
    model.loadStateDict(new Map([[name, src]]), { strict: false });
    src.dispose();
  }
}

async function buildModel() {
  if (modelDir) {
    const opts = {};
    if (has('--nf4')) opts.quantize = 'nf4';
    if (has('--bf16')) opts.dtype = 'bf16';
    const m = await pk.loadModel(modelDir, opts);
    if (has('--nf4') && !m.namedModules().some(([, x]) => x.constructor.name === 'Linear4bit')) throw new Error("--nf4: loadModel(dir, { quantize: 'nf4' }) does not quantize in this build");
    return { model: m, cfg: m.config.raw };
  }
  if (has('--nf4')) throw new Error('--nf4 needs --model DIR (a checkpoint to quantize)');
  const cfg = pk.parseConfig(LLAMA_35M);
  const m = pk.createModel(cfg, has('--bf16') ? 'bf16' : 'f32');
  randomInit(m, 1);
  return { model: m, cfg: LLAMA_35M };
}

function randomData(n, vocab, seed) {
  let s = seed >>> 0;
  const rnd = () => { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; return s; };
  return Array.from({ length: n }, () => ({ inputIds: Array.from({ length: T }, () => 3 + (rnd() % (vocab - 3))) }));
}

const CATEGORIES = [
  ['matmul', /^(matmul|linear|linear_weight_grad|lora_linear_forward|lora_linear_backward)$/],
  ['attention', /^attention_/],
  ['norm/rope/embed/loss', /^(rms_norm|layer_norm|rope|rope_tables|embedding|cross_entropy|softmax|log_softmax)/],
  ['elementwise', /^(binary|unary|scalar|compare|where|masked_fill|clamp|dropout|glu|swiglu|geglu|gated)/],
  ['optimizer', /^(adamw|grad_norm|scale_|quantizeBlockwise|dequantizeBlockwise)/],
  ['reduce', /^(sum|mean|max_dim|sum_to_shape)/],
];

function installProfiler() {
  const native = require(path.join(DIST, 'native')).native;
  const times = new Map();
  const orig = {};
  for (const k of Object.keys(native)) {
    const f = native[k];
    if (typeof f !== 'function' || k === 'NativeTensor' || /^[A-Z]/.test(k)) continue;
    orig[k] = f;
    native[k] = function (...a) {
      const t0 = process.hrtime.bigint();
      try { return f.apply(this, a); } finally {
        const e = times.get(k) || { ns: 0n, calls: 0 };
        e.ns += process.hrtime.bigint() - t0; e.calls++;
        times.set(k, e);
      }
    };
  }
  return {
    stop() { for (const [k, f] of Object.entries(orig)) native[k] = f; },
    report(totalSec) {
      const byCat = new Map();
      const byOp = [...times.entries()].map(([k, v]) => ({ op: k, ms: Number(v.ns) / 1e6, calls: v.calls })).sort((a, b) => b.ms - a.ms);
      for (const o of byOp) {
        const cat = (CATEGORIES.find(([, re]) => re.test(o.op)) || ['memory/other'])[0];
        byCat.set(cat, (byCat.get(cat) || 0) + o.ms);
      }
      const nativeMs = byOp.reduce((s, o) => s + o.ms, 0);
      byCat.set('JS (outside native calls)', Math.max(0, totalSec * 1000 - nativeMs));
      return {
        categories: [...byCat.entries()].map(([c, ms]) => ({ category: c, ms, share: ms / (totalSec * 1000) })).sort((a, b) => b.ms - a.ms),
        topOps: byOp.slice(0, Number(arg("--top", 12))),
      };
    },
  };
}

function torchAvailable() {
  const r = spawnSync('python3', ['-c', 'import torch; print(torch.__version__)'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
}

const TORCH_SCRIPT = String.raw`
import json, sys, time, math, resource
import torch, torch.nn as nn, torch.nn.functional as F
cfg = json.loads(sys.argv[1]); B, T, steps, warmup, r, threads = [int(x) for x in sys.argv[2:8]]
torch.set_num_threads(threads); torch.manual_seed(0)
C, L, H, KV, I, V = cfg['hidden_size'], cfg['num_hidden_layers'], cfg['num_attention_heads'], cfg['num_key_value_heads'], cfg['intermediate_size'], cfg['vocab_size']
D = C // H
class LoRALinear(nn.Module):
    def __init__(s, i, o, r, alpha):
        super().__init__(); s.base = nn.Linear(i, o, bias=False); s.base.weight.requires_grad_(False)
        s.A = nn.Parameter(torch.empty(r, i)); nn.init.kaiming_uniform_(s.A, a=math.sqrt(5)); s.B = nn.Parameter(torch.zeros(o, r)); s.s = alpha / r
    def forward(s, x): return s.base(x) + ((x.to(s.A.dtype) @ s.A.t() @ s.B.t()) * s.s).to(x.dtype)
class RMSNorm(nn.Module):
    def __init__(s, d): super().__init__(); s.w = nn.Parameter(torch.ones(d), requires_grad=False)
    def forward(s, x): return s.w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
def rope(x, cos, sin):
    x1, x2 = x[..., :D // 2], x[..., D // 2:]
    return x * cos + torch.cat((-x2, x1), -1) * sin
class Layer(nn.Module):
    def __init__(s):
        super().__init__(); lin = lambda i, o: LoRALinear(i, o, r, 2 * r)
        s.q, s.k, s.v, s.o = lin(C, H * D), lin(C, KV * D), lin(C, KV * D), lin(H * D, C)
        s.g, s.u, s.d = lin(C, I), lin(C, I), lin(I, C); s.n1, s.n2 = RMSNorm(C), RMSNorm(C)
    def forward(s, x, cos, sin):
        h = s.n1(x)
        q = s.q(h).view(B, T, H, D).transpose(1, 2); k = s.k(h).view(B, T, KV, D).transpose(1, 2); v = s.v(h).view(B, T, KV, D).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        k = k.repeat_interleave(H // KV, 1); v = v.repeat_interleave(H // KV, 1)
        if hasattr(F, 'scaled_dot_product_attention'): a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            sc = (q @ k.transpose(-1, -2)) / math.sqrt(D); sc = sc.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float('-inf')); a = sc.softmax(-1) @ v
        x = x + s.o(a.transpose(1, 2).reshape(B, T, C))
        h = s.n2(x)
        return x + s.d(F.silu(s.g(h)) * s.u(h))
class Model(nn.Module):
    def __init__(s):
        super().__init__(); s.emb = nn.Embedding(V, C); s.emb.weight.requires_grad_(False)
        s.layers = nn.ModuleList([Layer() for _ in range(L)]); s.norm = RMSNorm(C); s.head = nn.Linear(C, V, bias=False); s.head.weight.requires_grad_(False)
    def forward(s, ids):
        inv = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D)); f = torch.outer(torch.arange(T).float(), inv); e = torch.cat((f, f), -1)
        x = s.emb(ids); cos, sin = e.cos().to(x.dtype), e.sin().to(x.dtype)
        for l in s.layers: x = l(x, cos, sin)
        return s.head(s.norm(x))
m = Model()
# --bf16: frozen weights in bf16 (LoRA A/B stay f32), as peftkit's bf16 run: the like-for-like comparison
if len(sys.argv) > 8 and sys.argv[8] == 'bf16':
    for mod in m.modules():
        for n, p in list(mod.named_parameters(recurse=False)):
            if n not in ('A', 'B'): p.data = p.data.to(torch.bfloat16)
params = [p for p in m.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
ids = torch.randint(3, V, (B, T))
times = []
for i in range(warmup + steps):
    t0 = time.perf_counter()
    logits = m(ids).float(); loss = F.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))
    loss.backward(); torch.nn.utils.clip_grad_norm_(params, 1.0); opt.step(); opt.zero_grad(set_to_none=True)
    if i >= warmup: times.append(time.perf_counter() - t0)
print(json.dumps({'torch': torch.__version__, 'tokensPerSec': B * T * len(times) / sum(times), 'stepSec': sum(times) / len(times),
  'peakRssMiB': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 'threads': torch.get_num_threads()}))
`;

// ---------------------------------------------------------------------------------------- GPU
const SHAPES = {
  '1.1b': { cfg: { model_type: 'llama', architectures: ['LlamaForCausalLM'], hidden_size: 2048, num_hidden_layers: 22, num_attention_heads: 32,
    num_key_value_heads: 4, intermediate_size: 5632, vocab_size: 32000, max_position_embeddings: 2048, rms_norm_eps: 1e-5, rope_theta: 10000,
    hidden_act: 'silu', tie_word_embeddings: false, bos_token_id: 1, eos_token_id: 2 }, batch: 8, seq: 1024 },
  '6.7b': { cfg: { model_type: 'llama', architectures: ['LlamaForCausalLM'], hidden_size: 4096, num_hidden_layers: 32, num_attention_heads: 32,
    num_key_value_heads: 32, intermediate_size: 11008, vocab_size: 32000, max_position_embeddings: 4096, rms_norm_eps: 1e-5, rope_theta: 10000,
    hidden_act: 'silu', tie_word_embeddings: false, bos_token_id: 1, eos_token_id: 2 }, batch: 4, seq: 1024 },
  '8b': { cfg: { model_type: 'llama', architectures: ['LlamaForCausalLM'], hidden_size: 4096, num_hidden_layers: 32, num_attention_heads: 32,
    num_key_value_heads: 8, intermediate_size: 14336, vocab_size: 128256, max_position_embeddings: 8192, rms_norm_eps: 1e-5, rope_theta: 500000,
    hidden_act: 'silu', tie_word_embeddings: false, bos_token_id: 128000, eos_token_id: 128001 }, batch: 4, seq: 2048 },
};
// ../shared/gpu/README.md (H200, HF transformers 5.17 + PEFT 0.21, bf16, SDPA, LoRA r16 on all projections)
const HF_PEFT = { '1.1b': { false: { tokensPerSec: 35310, peakGiB: 27.3 }, true: { tokensPerSec: 25539, peakGiB: 5.9 } },
  '6.7b': { false: { tokensPerSec: 9303, peakGiB: 48.0 }, true: { tokensPerSec: 6591, peakGiB: 15.6 } },
  '8b': { true: { tokensPerSec: 6409, peakGiB: 29.4 } } };
const PEAK_TFLOPS = Number(arg('--peak-tflops', 783));
const LORA_TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];

/** bf16 Llama built on the GPU; with --qlora every projection is created, quantized and freed one at a time. */
function buildCudaModel(cfg, qlora, seed) {
  const std = 0.02;
  if (!qlora) return pk.createModel(cfg, { dtype: 'bf16', device: 'cuda', seed });
  const q = pk.quant;
  const model = pk.createModel(cfg, 'bf16');   // host, uninitialised (never touched)
  let k = 0;
  for (const [p, m] of q.quantizableLinears(model, ['lm_head'])) {
    const w = pk.Tensor.randn([...m.weight.shape], { dtype: 'bf16', device: 'cuda', seed: seed + 100000 + k++, std });
    const qt = q.quantizeTensor(w, { quantType: 'nf4', blockSize: 64, doubleQuant: true, computeDtype: 'bf16' });
    w.dispose();
    m.weight.dispose();
    q.replaceModule(model, p, new q.Linear4bit(qt, m.bias));
  }
  for (const [name, t] of model.namedParameters()) {
    if (t.device === 'cuda') continue;
    const v = /norm/.test(name) ? pk.Tensor.ones([...t.shape], { dtype: t.dtype, device: 'cuda' })
      : pk.Tensor.randn([...t.shape], { dtype: t.dtype, device: 'cuda', seed: seed + k++, std });
    model.replaceTensor(t, v);
  }
  model.to('cuda');   // buffers
  return model;
}

/** Model FLOPs per token: 2·N_matmul forward (+ causal attention 2·L·H·D·T), x3 for training (6N), x2 + attention bwd for LoRA (4N). */
function flopsPerToken(cfgRaw, T) {
  const C = cfgRaw.hidden_size, L = cfgRaw.num_hidden_layers, H = cfgRaw.num_attention_heads, KV = cfgRaw.num_key_value_heads;
  const I = cfgRaw.intermediate_size, V = cfgRaw.vocab_size, D = C / H;
  const nMatmul = L * (C * H * D + 2 * C * KV * D + H * D * C + 3 * C * I) + C * V;
  const attnFwd = 2 * L * H * D * T;   // QKᵀ and PV, causal (average key count T/2)
  return { nMatmul, full: 3 * (2 * nMatmul + attnFwd), lora: 2 * (2 * nMatmul) + 3 * attnFwd };
}

async function mainCuda() {
  const native = require(path.join(DIST, 'native')).native;
  const info = native.cudaInfo();
  if (!info.available) throw new Error(`--device cuda: CUDA is not usable: ${info.reason}`);
  const shapeName = arg('--shape', '1.1b');
  const shape = SHAPES[shapeName];
  if (!shape) throw new Error(`--shape must be one of ${Object.keys(SHAPES).join(', ')}, got ${shapeName}`);
  const raw = { ...shape.cfg };
  if (arg('--layers', null)) raw.num_hidden_layers = Number(arg('--layers'));
  const Bc = Number(arg('--batch', shape.batch)), Tc = Number(arg('--seq', shape.seq));
  const stepsC = Number(arg('--steps', 5)), warmupC = Number(arg('--warmup', 2));
  const qlora = has('--qlora') || has('--nf4'), gc = has('--gc'), offload = has('--offload');
  if (offload && !gc) throw new Error('--offload moves the checkpointed layer inputs to host memory: add --gc');
  const cfg = pk.parseConfig(raw);
  const t0 = Date.now();
  const model = buildCudaModel(cfg, qlora, 1);
  native.cudaSynchronize();
  const buildSec = (Date.now() - t0) / 1000;
  const peft = pk.wrapWithLora(model, { r, alpha: 2 * r, targetModules: LORA_TARGETS, seed: 7 });
  const afterBuild = native.cudaMemoryStats();
  let seedv = 1;
  const rnd = () => { seedv = (Math.imul(seedv, 1664525) + 1013904223) >>> 0; return seedv; };
  const data = Array.from({ length: Bc * (warmupC + stepsC) }, () => ({ inputIds: Array.from({ length: Tc }, () => 3 + (rnd() % (raw.vocab_size - 3))) }));
  const outDir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-bench-train-'));
  const stepSecs = [], losses = [];
  const trainer = new pk.Trainer({ model: peft, trainDataset: data,
    args: { outputDir: outDir, maxSteps: warmupC + stepsC, batchSize: Bc, lr: 1e-4, shuffle: false, saveSteps: 0, saveFinal: false,
      report: false, progress: false, logSteps: 1000, gradientCheckpointing: gc, offloadActivations: offload, scheduler: 'constant', maxGradNorm: 1.0, maxLength: Tc },
    callbacks: [{ onStepEnd: (m) => {
      losses.push(m.loss);
      if (m.step > warmupC) stepSecs.push(m.seconds);
      if (!json) console.log(`  step ${m.step}: ${m.seconds.toFixed(3)} s  loss ${Number(m.loss).toFixed(4)}`);
    } }] });
  const tt = Date.now();
  await trainer.train();
  native.cudaSynchronize();
  fs.rmSync(outDir, { recursive: true, force: true });
  const mem = native.cudaMemoryStats();
  const managed = typeof native.managedStats === 'function' ? native.managedStats() : { peakBytes: 0 };
  const sorted = [...stepSecs].sort((a, b) => a - b);
  const median = sorted.length ? sorted[Math.floor(sorted.length / 2)] : NaN;
  const tokensPerSec = (Bc * Tc) / median;
  const f = flopsPerToken(raw, Tc);
  const [trainable, all] = peft.getNbTrainableParameters();
  // HF PEFT's figures are H200 measurements of the full reference shape: never set them against the
  // emulator's host-CPU timings, nor against a truncated (--layers) or resized (--batch/--seq) run.
  const emulated = info.emulated === true;
  const refShape = raw.num_hidden_layers === shape.cfg.num_hidden_layers && Bc === shape.batch && Tc === shape.seq;
  const ref = emulated || !refShape ? null : (HF_PEFT[shapeName] || {})[String(gc)] || null;
  const GiB = 1024 ** 3;
  const peakGiB = (mem.peakAllocatedBytes + managed.peakBytes) / GiB;
  // --offload: the layer inputs' page-locked host buffers (host memory, not in the GPU peak)
  const offl = typeof native.offloadStats === 'function' ? native.offloadStats() : { pinnedPeakBytes: 0 };
  const res = {
    bench: 'train', device: 'cuda', emulated, gpu: info.devices[0] && info.devices[0].name, shape: shapeName, layers: raw.num_hidden_layers,
    method: qlora ? 'qlora-nf4' : 'lora-bf16', params: all, trainable, batch: Bc, seq: Tc, steps: stepsC, warmup: warmupC, r,
    gradientCheckpointing: gc, offloadActivations: offload, buildSec, trainWallSec: (Date.now() - tt) / 1000, stepSec: median, stepSecs, losses,
    tokensPerSec, peakAllocatedGiB: mem.peakAllocatedBytes / GiB, peakReservedGiB: mem.peakReservedBytes / GiB,
    managedPeakGiB: managed.peakBytes / GiB, hostPinnedPeakGiB: offl.pinnedPeakBytes / GiB, peakGiB, afterBuildAllocatedGiB: afterBuild.allocatedBytes / GiB,
    deviceAllocs: mem.deviceAllocs, oomFlushes: mem.oomFlushes,
    flopsPerTokenModel: f.full, flopsPerTokenLora: f.lora,
    mfu: (tokensPerSec * f.full) / (PEAK_TFLOPS * 1e12), mfuLoraWork: (tokensPerSec * f.lora) / (PEAK_TFLOPS * 1e12), peakTflops: PEAK_TFLOPS,
    hfPeft: ref, speedupVsHf: ref ? tokensPerSec / ref.tokensPerSec : null, memoryVsHf: ref ? peakGiB / ref.peakGiB : null,
  };
  if (emulated) log('CUDA EMULATOR (host memory, CPU kernels): the GPU code path ran; the figures below are not GPU figures');
  log(`peftkit cuda${emulated ? ' (emulated)' : ''} ${shapeName} (${raw.num_hidden_layers} layers, ${(all / 1e9).toFixed(2)}B params) ${res.method} r=${r}, B${Bc}xT${Tc}, ` +
    `grad ckpt ${gc ? 'on' : 'off'}: ${median.toFixed(3)} s/step  ${tokensPerSec.toFixed(0)} tokens/s  peak ${peakGiB.toFixed(1)} GiB ` +
    `(reserved ${res.peakReservedGiB.toFixed(1)})  MFU ${(res.mfu * 100).toFixed(1)}% (LoRA work ${(res.mfuLoraWork * 100).toFixed(1)}%)`);
  if (ref) log(`HF PEFT  ${ref.tokensPerSec} tokens/s, ${ref.peakGiB} GiB -> ${res.speedupVsHf.toFixed(2)}x speed, ${res.memoryVsHf.toFixed(2)}x memory (goal >= 2x, <= 0.5x)`);
  if (json) console.log(JSON.stringify(res));
}

async function main() {
  if (arg('--device', 'cpu') === 'cuda') return mainCuda();
  pk.setNumThreads(threads);
  const { model, cfg } = await buildModel();
  const peft = pk.wrapWithLora(model, { r, alpha: 2 * r, targetModules: 'all-linear', seed: 7 });
  const vocab = cfg.vocab_size;
  const data = randomData(B * (warmup + steps + (has('--profile') ? 1 : 0)), vocab, 1);
  const outDir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-bench-train-'));
  const stepSecs = [];
  let profiler = null, profileSec = 0, profileReport = null;
  const trainer = new pk.Trainer({ model: peft, trainDataset: data,
    args: { outputDir: outDir, maxSteps: warmup + steps + (has('--profile') ? 1 : 0), batchSize: B, lr: 1e-4, shuffle: false, saveSteps: 0, saveFinal: false,
      report: false, progress: false, logSteps: 1000, gradientCheckpointing: has('--gc'), scheduler: 'constant' },
    callbacks: [{
      onStepEnd: (m) => {
        if (m.step > warmup && m.step <= warmup + steps) stepSecs.push(m.seconds);
        if (profiler && m.step === warmup + steps + 1) { profileSec = m.seconds; profiler.stop(); profileReport = profiler.report(profileSec); }
        if (has('--profile') && m.step === warmup + steps) profiler = installProfiler();
      },
    }] });
  let actMem = null;
  if (has('--gc')) actMem = trainer.measureActivationMemory([...Array(B).keys()]);
  const t0 = Date.now();
  await trainer.train();
  fs.rmSync(outDir, { recursive: true, force: true });
  const sum = stepSecs.reduce((a, b) => a + b, 0);
  const tokensPerSec = (B * T * stepSecs.length) / sum;
  const peakRssMiB = process.resourceUsage().maxRSS / 1024;
  const [trainable, all] = peft.getNbTrainableParameters();
  const res = {
    bench: 'train', model: modelDir || 'llama-35m (random)', params: all, trainable, batch: B, seq: T, steps, r, threads,
    isa: pk.cpuInfo().isa, cpu: os.cpus()[0].model, gradientCheckpointing: has('--gc'), bf16: has('--bf16'),
    stepSec: sum / stepSecs.length, tokensPerSec, peakRssMiB, peakNativeMiB: pk.memoryStats().cpu.peakBytes / 1048576, wallSec: (Date.now() - t0) / 1000,
  };
  log(`peftkit  ${res.model}: ${(all / 1e6).toFixed(1)}M params, LoRA r=${r} all-linear (${(trainable / 1e6).toFixed(2)}M trainable), B${B}xT${T}, ${threads} threads, ${res.isa}`);
  log(`peftkit  ${res.stepSec.toFixed(3)} s/step  ${tokensPerSec.toFixed(0)} tokens/s  peak RSS ${peakRssMiB.toFixed(0)} MiB`);
  if (actMem) {
    res.activationMemory = actMem;
    log(`gradient checkpointing: activation peak ${(actMem.withCheckpointing / 1048576).toFixed(1)} MiB vs ${(actMem.withoutCheckpointing / 1048576).toFixed(1)} MiB without (saves ${(actMem.saved / 1048576).toFixed(1)} MiB)`);
  }
  if (profileReport) {
    res.profile = profileReport;
    log(`profile of one step (${profileSec.toFixed(3)} s, timing every native call):`);
    for (const c of res.profile.categories) log(`  ${c.category.padEnd(26)} ${c.ms.toFixed(1).padStart(8)} ms  ${(c.share * 100).toFixed(1).padStart(5)}%`);
    log('  top native ops:');
    for (const o of res.profile.topOps) log(`    ${o.op.padEnd(24)} ${o.ms.toFixed(1).padStart(8)} ms  ${String(o.calls).padStart(5)} calls`);
  }
  const tv = has('--no-torch') || modelDir ? null : torchAvailable();
  if (tv) {
    // PyTorch with the same weight precision (the like-for-like ratio); with --bf16 also PyTorch's
    // default f32 eager setup (what a PyTorch user runs on a CPU unless they opt into bf16).
    const runTorch = (prec) => {
      const rr = spawnSync('python3', ['-c', TORCH_SCRIPT, JSON.stringify(cfg), String(B), String(T), String(steps), String(warmup), String(r), String(threads), prec],
        { encoding: 'utf8', env: { ...process.env, OMP_NUM_THREADS: String(threads), MKL_NUM_THREADS: String(threads) } });
      if (rr.status !== 0) { log(`pytorch  ${prec} failed: ${(rr.stderr || '').trim().split('\n').pop()}`); return null; }
      const t = { ...JSON.parse(rr.stdout.trim().split('\n').pop()), weights: prec };
      log(`pytorch  ${t.torch} eager, ${prec} weights: ${t.stepSec.toFixed(3)} s/step  ${t.tokensPerSec.toFixed(0)} tokens/s  peak RSS ${t.peakRssMiB.toFixed(0)} MiB`);
      return t;
    };
    const same = runTorch(has('--bf16') ? 'bf16' : 'f32');
    if (same) {
      res.pytorch = same;
      res.ratio = tokensPerSec / same.tokensPerSec;
      log(`ratio    peftkit / pytorch (same precision) = ${res.ratio.toFixed(2)}x`);
    }
    if (has('--bf16')) {
      const f32 = runTorch('f32');
      if (f32) {
        res.pytorchF32 = f32;
        res.ratioVsF32 = tokensPerSec / f32.tokensPerSec;
        log(`ratio    peftkit bf16 / pytorch f32 (default eager) = ${res.ratioVsF32.toFixed(2)}x`);
      }
    }
  } else if (!has('--no-torch') && !modelDir) {
    log('pytorch  not importable (python3 -c "import torch"): no comparison');
  }
  if (json) console.log(JSON.stringify(res));
}

main().catch((e) => { console.error(e.stack || String(e)); process.exit(1); });
