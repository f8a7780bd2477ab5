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
 */
import * as fs from 'fs';
import * as path from 'path';
import { openCheckpoint, readTensorInto, SafetensorsHeader } from '../io/safetensors';
import { DType } from '../tensor/dtype';
import { CausalLM } from './base';
import { loadConfig, loadGenerationConfig, ModelConfig } from './config';
import { GemmaForCausalLM } from './gemma';
import { GPT2LMHeadModel } from './gpt2';
import { LlamaForCausalLM } from './llama';

export interface LoadModelOptions {
  /** Parameter dtype (default 'f32'; 'auto' = config.json's dtype). */
  dtype?: 'f32' | 'bf16' | 'f16' | 'auto';
  device?: 'cpu' | 'cuda';
}

/** Build an (uninitialised) model for a config. */
export function createModel(cfg: ModelConfig, dtype: DType = 'f32'): CausalLM {
  switch (cfg.modelType) {
    case 'gpt2': return new GPT2LMHeadModel(cfg, dtype);
    case 'gemma': return new GemmaForCausalLM(cfg, dtype);
    default: return new LlamaForCausalLM(cfg, dtype);
  }
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
  const cfg = loadConfig(dir);
  const dtype = resolveDtype(opts.dtype, cfg);
  const ck = openCheckpoint(dir);  // validates every header first
  const model = createModel(cfg, dtype);
  try {
    const targets = new Map<string, ReturnType<CausalLM['getTensor']>>();
    for (const [n, t] of model.stateDict()) targets.set(n, t);
    const names = new Set(targets.keys());
    const plan: [string, string, SafetensorsHeader][] = [];  // [model name, file name, header]
    const unexpected: [string, string][] = [];
    for (const [fileName, h] of ck.tensors) {
      const n = canonical(fileName, cfg, names);
      if (!names.has(n)) {
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
      const info = h.tensors.get(fileName)!;
      const dst = targets.get(n)!;
      if (info.shape.length !== dst!.shape.length || info.shape.some((d, i) => d !== dst!.shape[i])) {
        throw new Error(`loadModel: ${h.path}: tensor '${fileName}' has shape [${info.shape}] but ${explainShape(n, cfg)} implies [${dst!.shape}]`);
      }
    }
    for (const [n, fileName, h] of plan) readTensorInto(h, fileName, targets.get(n)!);
  } catch (e) {
    model.dispose();
    throw e;
  }
  model.generationConfig = loadGenerationConfig(dir, cfg);
  model.eval();
  if (device === 'cuda') {
    try { model.to('cuda'); } catch (e) { model.dispose(); throw new Error(`loadModel: ${(e as Error).message}`); }
  }
  return model;
}

/** The folder's config (no weights read). */
export function readModelConfig(dir: string): ModelConfig { return loadConfig(path.resolve(dir)); }
