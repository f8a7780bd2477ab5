/**
 * prompt_learning.ts — what prompt tuning and prefix tuning share, as PEFT's PeftModel /
 * PeftModelForCausalLM do for "prompt learning" methods (peft_model.py):
 *
 *  - layout: PeftModel.base_model is the causal LM itself (frozen) and PeftModel.prompt_encoder a
 *    ModuleDict of one encoder per adapter, so in-memory names are PEFT's
 *    ('prompt_encoder.default.embedding.weight'); the file holds one tensor 'prompt_embeddings';
 *  - PEFT's _prepare_prompt_learning_config: num_layers / token_dim / num_attention_heads from the
 *    model config (prefix tuning with grouped-query attention: heads = KV heads and token_dim =
 *    token_dim / heads · KV heads), encoder_hidden_size = token_dim by default;
 *  - forward: an attention mask is extended by num_virtual_tokens ones on the left; position ids
 *    are ignored (PEFT drops them with a warning) so positions come from the cache position as in
 *    transformers: 0..nvt+T−1 over [virtual tokens, tokens] for prompt tuning, nvt..nvt+T−1 for
 *    prefix tuning (the past holds nvt positions); packed sequences (segmentIds) are refused;
 *  - generation (generate.ts's loop, through a decode that injects the prompt at the first step
 *    and extends the mask / positions at every step, as PEFT's prepare_inputs_for_generation).
 */
import * as fs from 'fs';
import * as path from 'path';
import { loadSafetensors } from '../../io/safetensors';
import { CausalLM, ForwardInput, KVCache, onDevice, toRows, TokenInput } from '../../models/base';
import type { GenerateOptions, StreamEvent } from '../../models/generate';
import { Module } from '../../nn/module';
import { native } from '../../native';
import { Device, isFloat } from '../../tensor/dtype';
import { Tensor } from '../../tensor/tensor';
import { ADAPTER_WEIGHTS_NAME, BASE_CONFIG_DEFAULTS, JsonObject } from '../config';
import type { LoadAdapterOptions } from '../lora/load';
import { ModuleDict } from '../lora/layer';
import { PeftModel, PeftTuner } from '../peft_model';

/** Fields every prompt-learning config has (PEFT's PromptLearningConfig). */
export interface PromptLearningConfig {
  /** Number of virtual tokens (required). */
  numVirtualTokens?: number;
  /** Hidden size of the base model (default: from the model config). */
  tokenDim?: number | null;
  /** 1 for causal LMs (default). */
  numTransformerSubmodules?: number | null;
  /** Attention heads (default: from the model config; prefix tuning: the KV heads). */
  numAttentionHeads?: number | null;
  /** Decoder layers (default: from the model config). */
  numLayers?: number | null;
  /** Not supported with prompt learning in peftkit yet (must be null). */
  modulesToSave?: string[] | null;
  /** Adapter name (default 'default'). */
  adapterName?: string;
  /** Written to adapter_config.json's base_model_name_or_path. */
  baseModelNameOrPath?: string | null;
  revision?: string | null;
  /** PEFT task type (default 'CAUSAL_LM'). */
  taskType?: string | null;
  /** Seed of the random initialisation (default: random). */
  seed?: number;
}

/** The resolved common fields (filled from the model by preparePromptLearningConfig). */
export interface ResolvedPromptLearningConfig {
  numVirtualTokens: number;
  tokenDim: number | null;
  numTransformerSubmodules: number | null;
  numAttentionHeads: number | null;
  numLayers: number | null;
  modulesToSave: string[] | null;
  adapterName: string;
  baseModelNameOrPath: string | null;
  revision: string | null;
  taskType: string | null;
  seed: number | null;
  /** PEFT's inference_mode: the adapter is frozen (true after loading unless isTrainable). */
  inferenceMode: boolean;
  /** @internal being loaded: the initialisation is skipped (the file's weights replace it). */
  loading?: boolean;
}

/** PromptLearningConfig keys of adapter_config.json with PEFT 0.21's defaults. */
export const PROMPT_LEARNING_CONFIG_DEFAULTS: JsonObject = {
  ...BASE_CONFIG_DEFAULTS,
  modules_to_save: null,
  num_attention_heads: null,
  num_layers: null,
  num_transformer_submodules: null,
  num_virtual_tokens: null,
  token_dim: null,
};

function optPosInt(v: unknown, what: string): number | null {
  if (v === undefined || v === null) return null;
  if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) throw new RangeError(`${what} must be a positive integer, got ${String(v)}`);
  return v;
}

/** Validate and fill the common fields. */
export function resolvePromptLearningConfig(cfg: PromptLearningConfig, who: string): ResolvedPromptLearningConfig {
  if (cfg === null || typeof cfg !== 'object') throw new TypeError(`${who}: expected an object`);
  const nvt = optPosInt(cfg.numVirtualTokens, `${who}: numVirtualTokens`);
  if (nvt === null) throw new TypeError(`${who}: numVirtualTokens is required (a positive integer)`);
  const adapterName = cfg.adapterName ?? 'default';
  if (typeof adapterName !== 'string' || adapterName === '' || adapterName.includes('.')) {
    throw new TypeError(`${who}: adapterName must be a non-empty string without dots, got ${JSON.stringify(adapterName)}`);
  }
  const seed = cfg.seed ?? null;
  if (seed !== null && (!Number.isInteger(seed) || seed < 0)) throw new TypeError(`${who}: seed must be a non-negative integer, got ${seed}`);
  const mts = cfg.modulesToSave ?? null;
  if (mts !== null && mts.length) throw new Error(`${who}: modulesToSave is not supported with prompt learning methods in peftkit yet`);
  const nts = optPosInt(cfg.numTransformerSubmodules, `${who}: numTransformerSubmodules`);
  if (nts !== null && nts !== 1) throw new Error(`${who}: numTransformerSubmodules must be 1 for causal language models`);
  return {
    numVirtualTokens: nvt,
    tokenDim: optPosInt(cfg.tokenDim, `${who}: tokenDim`),
    numTransformerSubmodules: nts,
    numAttentionHeads: optPosInt(cfg.numAttentionHeads, `${who}: numAttentionHeads`),
    numLayers: optPosInt(cfg.numLayers, `${who}: numLayers`),
    modulesToSave: mts ? [...mts] : null,
    adapterName,
    baseModelNameOrPath: cfg.baseModelNameOrPath ?? null,
    revision: cfg.revision ?? null,
    taskType: cfg.taskType === undefined ? 'CAUSAL_LM' : cfg.taskType,
    seed,
    inferenceMode: false,
  };
}

/** The common fields of an adapter_config.json object. */
export function promptLearningFromJson(j: JsonObject): PromptLearningConfig {
  const n = (v: unknown) => (typeof v === 'number' ? v : null);
  return {
    numVirtualTokens: n(j.num_virtual_tokens) ?? undefined,
    tokenDim: n(j.token_dim),
    numTransformerSubmodules: n(j.num_transformer_submodules),
    numAttentionHeads: n(j.num_attention_heads),
    numLayers: n(j.num_layers),
    modulesToSave: (j.modules_to_save ?? null) as string[] | null,
    baseModelNameOrPath: (j.base_model_name_or_path ?? null) as string | null,
    revision: (j.revision ?? null) as string | null,
    taskType: (j.task_type ?? null) as string | null,
  };
}

/** The common keys of adapter_config.json. */
export function promptLearningToJson(c: ResolvedPromptLearningConfig, peftType: string, version: string): JsonObject {
  return {
    base_model_name_or_path: c.baseModelNameOrPath,
    inference_mode: true,
    modules_to_save: c.modulesToSave,
    num_attention_heads: c.numAttentionHeads,
    num_layers: c.numLayers,
    num_transformer_submodules: c.numTransformerSubmodules,
    num_virtual_tokens: c.numVirtualTokens,
    peft_type: peftType,
    peft_version: version,
    revision: c.revision,
    task_type: c.taskType,
    token_dim: c.tokenDim,
  };
}

/**
 * PEFT's _prepare_prompt_learning_config (in place): num_layers, token_dim, num_attention_heads
 * from the model config; prefix tuning with GQA uses the KV heads.
 */
export function preparePromptLearningConfig(c: ResolvedPromptLearningConfig, model: CausalLM, prefix: boolean): void {
  const mc = model.config;
  if (c.numLayers === null) c.numLayers = mc.numLayers;
  if (c.tokenDim === null) c.tokenDim = mc.hiddenSize;
  if (c.numAttentionHeads === null) c.numAttentionHeads = mc.numHeads;
  // "num_key_value_heads" in model_config: every Llama-family config has it (transformers' to_dict), GPT-2 does not
  if (prefix && (mc.modelType !== 'gpt2' || 'num_key_value_heads' in (mc.raw ?? {}))) {
    c.tokenDim = Math.floor(c.tokenDim / c.numAttentionHeads) * mc.numKvHeads;
    c.numAttentionHeads = mc.numKvHeads;
  }
  if (c.numTransformerSubmodules === null) c.numTransformerSubmodules = 1;
}

/** The model's input token embedding (PEFT's word_embeddings: the parameter with vocab_size rows). */
export function wordEmbeddings(model: CausalLM): Module & { forward(ids: Tensor): Tensor } {
  for (const name of ['model.embed_tokens', 'transformer.wte']) {
    try { return model.getSubmodule(name) as Module & { forward(ids: Tensor): Tensor }; } catch { /* next */ }
  }
  const V = model.config.vocabSize;
  for (const [, m] of model.namedModules()) {
    const w = (m as unknown as { _params?: Map<string, Tensor | null> })._params?.get('weight');
    if (w && w.ndim === 2 && w.shape[0] === V && typeof (m as unknown as { forward?: unknown }).forward === 'function') {
      return m as Module & { forward(ids: Tensor): Tensor };
    }
  }
  throw new Error('prompt learning: could not find the input token embedding of the model');
}

// ---------------------------------------------------------------------------------------------
// inputs

/** Token rows, mask rows and label rows of a forward input, checked (PEFT ignores position ids). */
export interface ParsedInput { ids: number[][]; mask: number[][] | null; labels: number[][] | null }

let warnedPositions = false;

export function parseForwardInput(input: ForwardInput, model: CausalLM, who: string): ParsedInput {
  if (!input || typeof input !== 'object' || input.inputIds === undefined) throw new TypeError('forward: expected { inputIds, attentionMask?, labels? }');
  const ids = toRows(input.inputIds, 'forward: inputIds');
  const B = ids.length, T = ids[0].length;
  if (T === 0) throw new Error('forward: inputIds has no tokens');
  const V = model.config.vocabSize;
  for (const r of ids) for (const v of r) if (v < 0 || v >= V) throw new RangeError(`forward: token id ${v} is outside the vocabulary [0, ${V})`);
  let mask: number[][] | null = null;
  if (input.attentionMask !== undefined && input.attentionMask !== null) {
    mask = toRows(input.attentionMask, 'forward: attentionMask');
    if (mask.length !== B || mask[0].length !== T) throw new Error(`forward: attentionMask is ${mask.length}×${mask[0].length}, inputIds ${B}×${T}`);
  }
  if (input.segmentIds !== undefined && input.segmentIds !== null) {
    const seg = toRows(input.segmentIds, 'forward: segmentIds');
    if (seg.some((r) => r.some((s) => s !== r[0]))) {
      throw new Error(`${who}: packed sequences (segmentIds) are not supported with prompt learning methods: the virtual tokens ` +
        'precede the whole row, not each example. Train without packing.');
    }
  }
  if (input.positionIds !== undefined && input.positionIds !== null) {
    const pos = toRows(input.positionIds, 'forward: positionIds');
    const plain = pos.every((r) => r.every((p, i) => p === i));
    if (!plain && !warnedPositions) {
      warnedPositions = true;
      console.warn('Position ids are not supported for parameter efficient tuning. Ignoring position ids.');
    }
  }
  let labels: number[][] | null = null;
  if (input.labels !== undefined && input.labels !== null) {
    labels = toRows(input.labels, 'forward: labels');
    if (labels.length !== B || labels[0].length !== T) throw new Error(`forward: labels is ${labels.length}×${labels[0].length}, inputIds ${B}×${T}`);
  }
  return { ids, mask, labels };
}

// The decoder's inputs below are made on the model's `device`, as CausalLM.forward makes them
// (rope_tables on cuda takes cuda positions only).

/** i64 (B, n) tensor with rows start, start+1, ... */
export function positionRows(B: number, start: number, n: number, device: Device): Tensor {
  const flat = new Array<number>(B * n);
  for (let b = 0; b < B; b++) for (let t = 0; t < n; t++) flat[b * n + t] = start + t;
  return onDevice(Tensor.fromArray(flat, { dtype: 'i64', shape: [B, n] }), device);
}

export function rowsTensor(rows: number[][], device: Device): Tensor {
  return onDevice(Tensor.fromArray(rows.flat(), { dtype: 'i64', shape: [rows.length, rows[0].length] }), device);
}

/** A u8 key mask (B, nvt+T) with nvt ones before `mask`, or null when nothing is padding. */
export function extendedMaskFromRows(mask: number[][] | null, nvt: number, device: Device): Tensor | null {
  if (!mask || !mask.some((r) => r.some((m) => !m))) return null;
  const rows = mask.map((r) => [...new Array<number>(nvt).fill(1), ...r.map((m) => (m ? 1 : 0))]);
  return onDevice(Tensor.fromArray(rows.flat(), { dtype: 'u8', shape: [rows.length, rows[0].length] }), device);
}

/** A key mask tensor (B,S) extended by nvt ones on the left (null stays null), on km's device. */
export function extendMaskTensor(km: Tensor | null, nvt: number): Tensor | null {
  if (!km) return null;
  const [B, S] = km.shape;
  const src = km.toFloat64Array();
  const out = new Uint8Array(B * (nvt + S));
  for (let b = 0; b < B; b++) {
    out.fill(1, b * (nvt + S), b * (nvt + S) + nvt);
    for (let s = 0; s < S; s++) out[b * (nvt + S) + nvt + s] = src[b * S + s] ? 1 : 0;
  }
  return onDevice(Tensor.fromBuffer(out, [B, nvt + S], 'u8'), km.device);
}

// ---------------------------------------------------------------------------------------------
// the tuner

/** Throw when gradient checkpointing patched the decoder layers (recompute.ts sets an own `forward`). */
export function checkNoCheckpointing(model: CausalLM, who: string): void {
  for (const [p, m] of model.namedModules()) {
    if (/(^|\.)(layers|h|blocks)\.\d+$/.test(p) && Object.prototype.hasOwnProperty.call(m, 'forward')) {
      throw new Error(`${who} does not work with gradient checkpointing (as in PEFT). Turn gradientCheckpointing off.`);
    }
  }
}

/** Base of PromptTuningModel and PrefixTuningModel (PEFT's prompt-learning side of PeftModel). */
export abstract class PromptLearningModel<C extends ResolvedPromptLearningConfig> extends Module implements PeftTuner {
  abstract readonly peftType: string;
  readonly peftConfig = new Map<string, C>();
  /** PeftModel's `prompt_encoder`: one encoder per adapter. */
  readonly promptEncoder = new ModuleDict<Module>();
  readonly fileKeyPrefix = '';
  activeAdapter: string;
  protected enabled = true;
  private readonly base: CausalLM;

  constructor(model: CausalLM, cfg: C) {
    super();
    if (!(model instanceof CausalLM)) throw new TypeError('prompt learning: model must be a peftkit CausalLM (from loadModel)');
    this.base = model;
    this.activeAdapter = cfg.adapterName;
    // PEFT's _setup_prompt_encoder freezes the transformer backbone
    for (const [, t] of model.namedParameters()) if (isFloat(t.dtype) && t.requiresGrad) t.requiresGrad_(false);
    this.addAdapter(cfg);
  }

  get model(): CausalLM { return this.base; }
  adapterNames(): string[] { return [...this.peftConfig.keys()]; }
  get activeConfig(): C { return this.peftConfig.get(this.activeAdapter)!; }

  /** Build the encoder module of a prepared config. */
  protected abstract createEncoder(cfg: C): Module;
  /** Fill the config from the model (PEFT's _prepare_prompt_learning_config) and validate it. */
  protected abstract prepare(cfg: C): void;
  /** adapter_config.json of a config. */
  protected abstract configToJson(cfg: C): JsonObject;
  /** The tensor PEFT saves as 'prompt_embeddings' (get_prompt_embedding_to_save). */
  protected abstract embeddingToSave(name: string): Tensor;
  /** The tensor that 'prompt_embeddings' is loaded into. */
  protected abstract embeddingToLoad(name: string): Tensor;
  /** One decoding call for generation (see generate()). */
  protected abstract generationDecode(ids: Tensor, km: Tensor | null, cache: KVCache | null): Tensor;
  /** PeftModel.forward with the adapter enabled. */
  protected abstract adaptedForward(input: ForwardInput): { logits: Tensor; loss?: Tensor };

  /** PEFT's add_adapter for prompt learning (not activated; the first one is). */
  addAdapter(cfgIn: C): void {
    const cfg = { ...cfgIn } as C;
    const name = cfg.adapterName;
    if (this.peftConfig.has(name)) throw new Error(`prompt learning: an adapter named '${name}' already exists`);
    this.prepare(cfg);
    const enc = this.createEncoder(cfg);
    // The encoder lives where the model's token embedding does (it is built on the host).
    const device = wordEmbeddings(this.model).getTensor('weight')?.device ?? 'cpu';
    if (device !== 'cpu') enc.to(device);
    this.peftConfig.set(name, cfg);
    this.promptEncoder.set(name, enc);
    const train = name === this.activeAdapter && !cfg.inferenceMode;
    for (const [, t] of enc.namedParameters()) if (isFloat(t.dtype)) t.requiresGrad_(train);
  }

  encoder(name = this.activeAdapter): Module {
    const e = this.promptEncoder.get(name);
    if (!e) throw new Error(`prompt learning: no adapter named '${name}'`);
    return e;
  }

  setAdapter(name: string): void {
    if (!this.peftConfig.has(name)) throw new Error(`setAdapter: no adapter named '${name}'`);
    this.activeAdapter = name;
    for (const n of this.adapterNames()) {
      const train = n === name && !this.peftConfig.get(n)!.inferenceMode;
      for (const [, t] of this.encoder(n).namedParameters()) if (isFloat(t.dtype)) t.requiresGrad_(train);
    }
  }

  setAdaptersEnabled(on: boolean): void { this.enabled = on; }

  deleteAdapter(name: string): void {
    if (!this.peftConfig.has(name)) throw new Error(`deleteAdapter: no adapter named '${name}'`);
    if (name === this.activeAdapter) throw new Error(`deleteAdapter: '${name}' is the active adapter; setAdapter() to another first`);
    this.encoder(name).dispose();
    this.promptEncoder.delete(name);
    this.peftConfig.delete(name);
  }

  adapterStateDict(name: string): Map<string, Tensor> {
    if (!this.peftConfig.has(name)) throw new Error(`saveAdapter: no adapter named '${name}'`);
    return new Map([['prompt_embeddings', this.embeddingToSave(name)]]);
  }

  adapterConfigJson(name: string): { json: JsonObject; floatKeys: string[] } {
    const cfg = this.peftConfig.get(name);
    if (!cfg) throw new Error(`saveAdapter: no adapter named '${name}'`);
    return { json: this.configToJson(cfg), floatKeys: [] };
  }

  loadAdapterStateDict(name: string, tensors: Map<string, Tensor>): { missing: string[]; unexpected: string[] } {
    const unexpected = [...tensors.keys()].filter((k) => k !== 'prompt_embeddings');
    const src = tensors.get('prompt_embeddings');
    if (!src) return { missing: ['prompt_embeddings'], unexpected };
    const dst = this.embeddingToLoad(name);
    if (dst.shape.join(',') !== src.shape.join(',')) {
      throw new Error(`loadAdapter: 'prompt_embeddings' has shape [${src.shape}] in the file but the adapter expects [${dst.shape}] ` +
        '(check num_virtual_tokens / token_dim / num_layers against the base model)');
    }
    native.copy_(dst.native, src.native);
    return { missing: [], unexpected };
  }

  // ---- forward / generate ----

  peftForward(input: ForwardInput): { logits: Tensor; loss?: Tensor } {
    if (!this.enabled) return this.model.forward(input);  // PEFT's disable_adapter: the base model's forward
    return this.adaptedForward(input);
  }

  /** A CausalLM-like view for generate.ts whose decode injects the prompt (PEFT's prepare_inputs_for_generation). */
  private generationView(): CausalLM {
    const base = this.model;
    const view = {
      get config() { return base.config; },
      get generationConfig() { return base.generationConfig; },
      get device() { return base.device; },   // generate() makes its step inputs there
      get training() { return base.training; },
      eval: () => base.eval(),
      train: (mode?: boolean) => base.train(mode),
      decode: (ids: Tensor, _pos: Tensor, km: Tensor | null, cache: KVCache | null) => this.generationDecode(ids, km, cache),
    };
    return view as unknown as CausalLM;
  }

  peftGenerate(inputIds: TokenInput, opts: GenerateOptions = {}): Promise<number[][]> {
    if (!this.enabled) return this.model.generate(inputIds, opts);
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const g = require('../../models/generate') as typeof import('../../models/generate');
    return g.generate(this.generationView(), inputIds, opts);
  }

  peftStream(inputIds: TokenInput, opts: GenerateOptions = {}): AsyncGenerator<StreamEvent> {
    if (!this.enabled) return this.model.stream(inputIds, opts);
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const g = require('../../models/generate') as typeof import('../../models/generate');
    return g.stream(this.generationView(), inputIds, opts);
  }
}

// ---------------------------------------------------------------------------------------------
// loading

/**
 * Load a prompt-learning adapter folder: `create` builds a tuner for a CausalLM, `add` adds the
 * adapter to an existing PeftModel of the same kind. PEFT loads these adapters in inference
 * mode (frozen) unless `isTrainable`.
 */
export async function loadPromptLearningAdapter<C extends ResolvedPromptLearningConfig>(
  model: CausalLM | PeftModel, dir: string, opts: LoadAdapterOptions, peftType: string, cfg: C,
  create: (m: CausalLM, c: C) => PromptLearningModel<C>,
): Promise<PeftModel> {
  const file = path.join(dir, ADAPTER_WEIGHTS_NAME);
  if (!fs.existsSync(file)) throw new Error(`loadAdapter: ${file} does not exist (only safetensors adapters are supported)`);
  const adapterName = opts.adapterName ?? 'default';
  const c = { ...cfg, adapterName, inferenceMode: !opts.isTrainable, loading: true } as C;
  let peft: PeftModel;
  let created = false;
  if (model instanceof PeftModel) {
    const t = model.tuner;
    if (!(t instanceof PromptLearningModel) || t.peftType !== peftType) throw new Error(`loadAdapter: the model holds ${model.peftType} adapters, this one is ${peftType}`);
    (t as PromptLearningModel<C>).addAdapter(c);
    peft = model;
  } else {
    peft = new PeftModel(create(model, c));
    created = true;
  }
  const tuner = peft.tuner as PromptLearningModel<C>;
  const loaded = loadSafetensors(file);
  try {
    const { missing, unexpected } = tuner.loadAdapterStateDict(adapterName, loaded);
    if (missing.length) throw new Error(`loadAdapter: ${file} has no 'prompt_embeddings' tensor`);
    if (unexpected.length) {
      const msg = `loadAdapter: ${file}: unexpected tensors ${unexpected.slice(0, 6).map((k) => `'${k}'`).join(', ')}`;
      if (opts.strict) throw new Error(msg);
      console.warn(msg);
    }
  } catch (e) {
    if (created) for (const n of tuner.adapterNames()) tuner.encoder(n).dispose();
    else if (tuner.peftConfig.has(adapterName) && adapterName !== tuner.activeAdapter) tuner.deleteAdapter(adapterName);
    throw e;
  } finally {
    for (const t of loaded.values()) t.dispose();
  }
  return peft;
}
