/**
 * load.ts — `loadModel(dir, {dtype, device})`: config.json + safetensors (single or sharded) into
 * the matching decoder.
 *
 * The model is built with uninitialised parameters of the requested dtype and each tensor of the
 * checkpoint is read straight into its parameter's memory (converted through a one-tensor
 * temporary when the file's dtype differs), so peak memory is the weights plus the largest tensor.
 * Before any data is read the whole checkpoint is checked: headers (truncation, corruption),
 * shapes against what config.json implies, and missing or unexpected tensors — each error names
 * the file and the tensor.
 *
 * Quantization (`quantize: 'nf4' | 'fp4'`): every nn.Linear / GPT-2 Conv1D except
 * `quantization.skipModules` (default lm_head) becomes a frozen 4-bit Linear4bit (bitsandbytes
 * layout, lib/quant). Its weight is read into a one-tensor temporary in the file's dtype, quantized
 * and freed before the next one: the float weights of the quantized layers are never all held
 * (their uninitialised parameters are released before any data is read). Folders saved in
 * bitsandbytes' 4-bit layout (transformers' save of a load_in_4bit model, or saveQuantized) are
 * recognised and load as Linear4bit layers directly.
 *
 * `device: 'cuda'`: the model is built on the host with uninitialised (never touched) parameters;
 * each tensor is read into its host parameter, copied to the GPU, and the host copy freed before the
 * next one is read (4-bit layers: the float weight is copied over and quantized there) — the model
 * is never held twice, host memory peaks at one tensor. Without a CUDA build or a GPU, loadModel
 * fails up front with the reason (peftkit's cudaInfo()), before reading anything.
 */
import * as fs from 'fs';
import * as path from 'path';
import { loadTensor, openCheckpoint, readTensorInto, SafetensorsHeader } from '../io/safetensors';
import { Module } from '../nn/module';
import { Linear4bit } from '../quant/linear4bit';
import { isQuantStateEntry, quantizedModulePaths, readQuantizedWeight } from '../quant/bnb_format';
import { quantizableLinears, QuantizedTensor, QuantizeOptions, quantizeTensor, QuantType, replaceModule,
  resolveQuantizeOptions } from '../quant/nf4';
import { native, NativeTensor } from '../native';
import { DType } from '../tensor/dtype';
import { Tensor } from '../tensor/tensor';
import { CausalLM } from './base';
import { loadConfig, loadGenerationConfig, ModelConfig } from './config';
import { GemmaForCausalLM } from './gemma';
import { GPT2LMHeadModel } from './gpt2';
import { Conv1D } from './layers';
import { LlamaForCausalLM } from './llama';

export interface LoadModelOptions {
  /** Parameter dtype (default 'f32'; 'auto' = config.json's dtype). */
  dtype?: 'f32' | 'bf16' | 'f16' | 'auto';
  device?: 'cpu' | 'cuda';
  /**
   * Quantize the linear layers to 4 bits while loading (bitsandbytes NF4 or FP4). The layers become
   * frozen Linear4bit modules; other parameters keep `dtype`.
   */
  quantize?: QuantType;
  /** Options of `quantize`: blockSize (64), doubleQuant (true), computeDtype ('bf16'), skipModules (['lm_head']). */
  quantization?: Omit<QuantizeOptions, 'quantType'>;
}

export interface CreateModelOptions {
  /** Parameter dtype (default 'f32'). */
  dtype?: DType;
  /** Where the parameters live (default 'cpu'). */
  device?: 'cpu' | 'cuda';
  /**
   * Initialise the parameters with seeded random values (on the target device): norm weights 1,
   * norm biases 0, everything else N(0, std²) (std: `initStd`, default config.json's
   * initializer_range, else 0.02). Without a seed the parameters are uninitialised (on cuda: zeros).
   */
  seed?: number;
  initStd?: number;
}

/** Throws a clear error when CUDA cannot be used (CPU-only addon, no driver, no GPU). */
export function assertCuda(op: string): void {
  const info = typeof native.cudaInfo === 'function' ? native.cudaInfo() as { built: boolean; available: boolean; reason: string }
    : { built: false, available: false, reason: 'this addon predates cudaInfo' };
  if (!info.available) {
    throw new Error(`${op}: device 'cuda' is not usable: ${info.reason || 'unknown reason'}`);
  }
}

/**
 * Build a model for a config: uninitialised, or random-initialised from `seed` (no weights needed:
 * benchmarks and tests). `createModel(cfg, 'bf16')` and `createModel(cfg, { dtype, device, seed })`
 * both work. On cuda every parameter is created on the GPU directly (one host tensor at a time at
 * most, uninitialised and never touched).
 */
export function createModel(cfg: ModelConfig, dtypeOrOpts: DType | CreateModelOptions = 'f32', more: CreateModelOptions = {}): CausalLM {
  const opts: CreateModelOptions = typeof dtypeOrOpts === 'string' ? { ...more, dtype: dtypeOrOpts } : { ...dtypeOrOpts, ...more };
  const dtype = opts.dtype ?? 'f32';
  const device = opts.device ?? 'cpu';
  if (device !== 'cpu' && device !== 'cuda') throw new TypeError(`createModel: device must be 'cpu' or 'cuda', got ${JSON.stringify(device)}`);
  if (device === 'cuda') assertCuda('createModel');
  let model: CausalLM;
  switch (cfg.modelType) {
    case 'gpt2': model = new GPT2LMHeadModel(cfg, dtype); break;
    case 'gemma': model = new GemmaForCausalLM(cfg, dtype); break;
    default: model = new LlamaForCausalLM(cfg, dtype);
  }
  try {
    if (opts.seed !== undefined) randomInit(model, opts.seed, device, opts.initStd ?? (typeof cfg.raw.initializer_range === 'number' ? cfg.raw.initializer_range : 0.02));
    else if (device === 'cuda') {
      for (const [, t] of model.namedParameters()) model.replaceTensor(t, Tensor.empty([...t.shape], { dtype: t.dtype, device }));
    }
    if (device === 'cuda') model.to('cuda');   // buffers (rotary tables)
  } catch (e) {
    model.dispose();
    throw e;
  }
  return model;
}

/** Seeded random values for every parameter, created on `device` (replacing the host tensor). */
function randomInit(model: CausalLM, seed: number, device: 'cpu' | 'cuda', std: number): void {
  let k = 0;
  for (const [name, t] of model.namedParameters()) {
    const opt = { dtype: t.dtype, device };
    const isNorm = /(norm|ln_\d|ln_f)/.test(name);
    const v = isNorm ? (/\.bias$/.test(name) ? Tensor.zeros([...t.shape], opt) : Tensor.ones([...t.shape], opt))
      : Tensor.randn([...t.shape], { ...opt, seed: seed + k++, std });
    model.replaceTensor(t, v);
  }
}

/** A 4-bit weight with its data and absmax tensors on `device` (the code tables may stay on the host). */
function quantizedTo(q: QuantizedTensor, device: 'cpu' | 'cuda'): QuantizedTensor {
  if (q.data.device === device) return q;
  const mv = (t: Tensor) => t.to(device);
  const r = new QuantizedTensor({ quantType: q.quantType, shape: q.shape, blockSize: q.blockSize, dtype: q.dtype, data: mv(q.data),
    absmax: mv(q.absmax), quantMap: q.quantMap, nested: q.nested ? { ...q.nested, absmax: mv(q.nested.absmax) } : null });
  q.data.dispose(); q.absmax.dispose(); if (q.nested) q.nested.absmax.dispose();
  return r;
}

function resolveDtype(d: LoadModelOptions['dtype'], cfg: ModelConfig): DType {
  if (d === undefined) return 'f32';
  if (d === 'auto') {
    switch (cfg.torchDtype) {
      case 'bfloat16': return 'bf16';
      case 'float16': return 'f16';
      default: return 'f32';
    }
  }
  if (d !== 'f32' && d !== 'bf16' && d !== 'f16') throw new TypeError(`loadModel: dtype must be 'f32', 'bf16', 'f16' or 'auto', got ${JSON.stringify(d)}`);
  return d;
}

/** Checkpoint tensors that are legitimately not parameters (buffers older versions saved). */
function ignorable(name: string, cfg: ModelConfig): boolean {
  if (/(^|\.)rotary_emb\.inv_freq$/.test(name)) return true;
  if (cfg.modelType === 'gpt2' && /\.attn\.(bias|masked_bias)$/.test(name)) return true;
  if (cfg.tieWordEmbeddings && name === 'lm_head.weight') return true;
  return false;
}

/** Map a checkpoint name to the model's (GPT-2 hub files may lack the 'transformer.' prefix). */
function canonical(name: string, cfg: ModelConfig, modelNames: Set<string>): string {
  if (modelNames.has(name)) return name;
  if (cfg.modelType === 'gpt2' && !name.startsWith('transformer.') && modelNames.has(`transformer.${name}`)) return `transformer.${name}`;
  return name;
}

function explainShape(name: string, cfg: ModelConfig): string {
  const r = cfg.raw;
  const keys = ['vocab_size', 'hidden_size', 'intermediate_size', 'num_attention_heads', 'num_key_value_heads', 'head_dim',
    'n_embd', 'n_head', 'n_inner', 'n_positions'].filter((k) => r[k] !== undefined && r[k] !== null);
  return `config.json (${keys.map((k) => `${k}=${r[k]}`).join(', ')})`;
}

/**
 * Load a HuggingFace causal LM from a folder with config.json and model.safetensors (or
 * model.safetensors.index.json + shards). The model is returned in eval mode with every
 * parameter trainable.
 */
export async function loadModel(dir: string, opts: LoadModelOptions = {}): Promise<CausalLM> {
  if (typeof dir !== 'string' || !fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) {
    throw new Error(`loadModel: ${JSON.stringify(dir)} is not a folder`);
  }
  const device = opts.device ?? 'cpu';
  if (device !== 'cpu' && device !== 'cuda') throw new TypeError(`loadModel: device must be 'cpu' or 'cuda', got ${JSON.stringify(device)}`);
  if (device === 'cuda') assertCuda('loadModel');
  const cfg = loadConfig(dir);
  const dtype = resolveDtype(opts.dtype, cfg);
  if (opts.quantize !== undefined && opts.quantize !== 'nf4' && opts.quantize !== 'fp4') {
    throw new TypeError(`loadModel: quantize must be 'nf4' or 'fp4', got ${JSON.stringify(opts.quantize)}`);
  }
  const qopts = opts.quantize ? resolveQuantizeOptions({ ...(opts.quantization ?? {}), quantType: opts.quantize }) : null;
  const ck = openCheckpoint(dir);  // validates every header first
  const model = createModel(cfg, dtype);
  const built = new Map<string, QuantizedTensor>();
  try {
    // Layers stored in bitsandbytes' 4-bit layout, and layers to quantize now.
    const prequant = quantizedModulePaths(ck.tensors.keys());
    const linears = new Map(quantizableLinears(model, []));
    for (const p of prequant.keys()) {
      if (!linears.has(p)) throw new Error(`loadModel: ${ck.index ?? ck.files[0]}: '${p}' is stored 4-bit quantized but is not a linear layer of ${cfg.modelType}`);
    }
    const toQuantize = new Map<string, Module>();
    if (qopts) for (const [p, m] of quantizableLinears(model, qopts.skipModules)) if (!prequant.has(p)) toQuantize.set(p, m);
    const quantWeight = new Map<string, string>();   // '<p>.weight' -> p, for both kinds
    for (const p of [...prequant.keys(), ...toQuantize.keys()]) quantWeight.set(`${p}.weight`, p);

    const targets = new Map<string, ReturnType<CausalLM['getTensor']>>();
    for (const [n, t] of model.stateDict()) targets.set(n, t);
    const names = new Set(targets.keys());
    const plan: [string, string, SafetensorsHeader][] = [];  // [model name, file name, header]
    const unexpected: [string, string][] = [];
    for (const [fileName, h] of ck.tensors) {
      const n = canonical(fileName, cfg, names);
      if (!names.has(n)) {
        if ([...prequant.keys()].some((p) => isQuantStateEntry(n, p))) continue;   // read with its layer
        if (!ignorable(n, cfg) && !ignorable(fileName, cfg)) unexpected.push([fileName, h.path]);
        continue;
      }
      plan.push([n, fileName, h]);
    }
    const covered = new Set(plan.map(([n]) => n));
    const missing = [...names].filter((n) => !covered.has(n));
    if (missing.length) {
      const where = ck.index ?? ck.files[0];
      throw new Error(`loadModel: ${where}: missing tensor${missing.length > 1 ? 's' : ''} ${missing.slice(0, 8).map((m) => `'${m}'`).join(', ')}` +
        `${missing.length > 8 ? ` and ${missing.length - 8} more` : ''} required by ${cfg.modelType} with this config.json`);
    }
    if (unexpected.length) {
      throw new Error(`loadModel: unexpected tensor${unexpected.length > 1 ? 's' : ''} ${unexpected.slice(0, 8).map(([n, f]) => `'${n}' (in ${f})`).join(', ')}` +
        `${unexpected.length > 8 ? ` and ${unexpected.length - 8} more` : ''}: not part of a ${cfg.modelType} model with this config.json`);
    }
    for (const [n, fileName, h] of plan) {
      const p = quantWeight.get(n);
      if (p !== undefined && prequant.has(p)) continue;   // checked against its quant state when read
      const info = h.tensors.get(fileName)!;
      const dst = targets.get(n)!;
      if (info.shape.length !== dst!.shape.length || info.shape.some((d, i) => d !== dst!.shape[i])) {
        throw new Error(`loadModel: ${h.path}: tensor '${fileName}' has shape [${info.shape}] but ${explainShape(n, cfg)} implies [${dst!.shape}]`);
      }
    }
    // The float weights of 4-bit layers are never filled: release their (untouched) memory now.
    for (const n of quantWeight.keys()) targets.get(n)?.dispose();
    for (const [n, fileName, h] of plan) {
      const p = quantWeight.get(n);
      if (p === undefined) {
        const dst = targets.get(n)!;
        readTensorInto(h, fileName, dst);
        // cuda: copy this one tensor over and free the host copy before reading the next
        if (device === 'cuda') model.replaceTensor(dst, dst.to('cuda'));
        continue;
      }
      const m = linears.get(p)!;
      const isConv = m instanceof Conv1D;
      const logical = isConv ? [m.outFeatures, m.inFeatures] : [...targets.get(n)!.shape];
      if (prequant.has(p)) {
        built.set(p, quantizedTo(readQuantizedWeight(ck.tensors, p, prequant.get(p)!, logical), device));
        continue;
      }
      // Quantize while loading: one float temporary (the file's dtype), freed at once (on cuda:
      // copied over first and quantized on the GPU).
      let tmp = loadTensor(h, fileName);
      if (device === 'cuda') { const d = tmp.to('cuda'); tmp.dispose(); tmp = d; }
      if (isConv) {
        const tv = native.transpose(tmp.native, 0, 1) as NativeTensor;
        const c = new Tensor(native.contiguous(tv));
        tv.dispose(); tmp.dispose(); tmp = c;
      }
      try { built.set(p, quantizeTensor(tmp, qopts!)); } catch (e) { throw new Error(`loadModel: ${h.path}: quantizing '${fileName}': ${(e as Error).message}`); }
      finally { tmp.dispose(); }
    }
    for (const [p, q] of built) {
      const m = linears.get(p)!;
      const lin = new Linear4bit(q, (m as { bias: Tensor | null }).bias, { fromConv1D: m instanceof Conv1D });
      replaceModule(model, p, lin);
    }
    built.clear();
  } catch (e) {
    for (const q of built.values()) q.dispose();
    model.dispose();
    throw e;
  }
  model.generationConfig = loadGenerationConfig(dir, cfg);
  model.eval();
  if (device === 'cuda') {
    // what is left on the host: buffers (rotary tables) and biases of 4-bit layers
    try { model.to('cuda'); } catch (e) { model.dispose(); throw new Error(`loadModel: ${(e as Error).message}`); }
  }
  return model;
}

/** The folder's config (no weights read). */
export function readModelConfig(dir: string): ModelConfig { return loadConfig(path.resolve(dir)); }
