/**
 * config.ts — config.json of HuggingFace causal LMs, normalised into one ModelConfig that the
 * decoder implementations switch on.
 *
 * Supported `model_type`s: llama, mistral, qwen2, qwen3, phi3, gemma, gpt2. Defaults for absent
 * keys are those of the transformers config classes (e.g. Mistral's sliding_window 4096, Gemma's
 * head_dim 256 and tied embeddings). Rotary settings are read from the transformers-5
 * `rope_parameters` dict or from the older top-level `rope_theta` + `rope_scaling`.
 */
import * as fs from 'fs';
import * as path from 'path';

export const SUPPORTED_MODEL_TYPES = ['llama', 'mistral', 'qwen2', 'qwen3', 'phi3', 'gemma', 'gpt2'] as const;
export type ModelType = typeof SUPPORTED_MODEL_TYPES[number];

export type RopeType = 'default' | 'linear' | 'dynamic' | 'llama3' | 'yarn' | 'longrope';
export const SUPPORTED_ROPE_TYPES: readonly RopeType[] = ['default', 'linear', 'dynamic', 'llama3', 'yarn', 'longrope'];

/** Rotary embedding parameters (transformers' rope_parameters, normalised). */
export interface RopeConfig {
  type: RopeType;
  theta: number;
  /** Fraction of head_dim that is rotated (Phi-3 `partial_rotary_factor`). */
  partialRotaryFactor: number;
  factor?: number;
  /** llama3 */
  lowFreqFactor?: number;
  highFreqFactor?: number;
  originalMaxPositionEmbeddings?: number;
  /** yarn / longrope */
  attentionFactor?: number;
  betaFast?: number;
  betaSlow?: number;
  mscale?: number;
  mscaleAllDim?: number;
  truncate?: boolean;
  shortFactor?: number[];
  longFactor?: number[];
}

export type Activation = 'silu' | 'gelu' | 'gelu_tanh' | 'relu';
export type NormKind = 'rms' | 'rms_unit_offset' | 'layer';

/** A normalised model configuration. */
export interface ModelConfig {
  modelType: ModelType;
  architectures: string[];
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  maxPositionEmbeddings: number;
  normEps: number;
  norm: NormKind;
  act: Activation;
  /** Bias on q/k/v projections (Qwen2 always; Llama `attention_bias`). */
  qkvBias: boolean;
  /** Bias on the attention output projection. */
  oBias: boolean;
  /** Bias on MLP projections (Llama `mlp_bias`). */
  mlpBias: boolean;
  /** Qwen3: RMSNorm over head_dim on q and k before RoPE. */
  qkNorm: boolean;
  /** Phi-3: q,k,v fused in `qkv_proj`; gate,up fused in `gate_up_proj`. */
  fusedQkv: boolean;
  fusedGateUp: boolean;
  /** Sliding attention window per layer (null = full attention). */
  layerWindows: (number | null)[];
  /** Rotary settings (null for learned absolute positions: GPT-2). */
  rope: RopeConfig | null;
  /** Multiply token embeddings by this (Gemma: √hidden), or null. */
  embedScale: number | null;
  tieWordEmbeddings: boolean;
  /** Softmax scale of attention (default 1/√head_dim); GPT-2 per-layer scaling handled in the model. */
  attnScaleByInverseLayerIdx: boolean;
  scaleAttnWeights: boolean;
  bosTokenId: number | null;
  eosTokenId: number[];
  padTokenId: number | null;
  /** The config's dtype ('float32', 'bfloat16', ...) if stated. */
  torchDtype: string | null;
  /** config.json as read. */
  raw: Record<string, unknown>;
}

type Raw = Record<string, unknown>;

function num(raw: Raw, key: string, dflt?: number): number {
  const v = raw[key];
  if (v === undefined || v === null) {
    if (dflt === undefined) throw new Error(`config.json: missing required "${key}"`);
    return dflt;
  }
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new Error(`config.json: "${key}" must be a number, got ${JSON.stringify(v)}`);
  return v;
}
function posInt(raw: Raw, key: string, dflt?: number): number {
  const v = num(raw, key, dflt);
  if (!Number.isInteger(v) || v <= 0) throw new Error(`config.json: "${key}" must be a positive integer, got ${v}`);
  return v;
}
function bool(raw: Raw, key: string, dflt: boolean): boolean {
  const v = raw[key];
  if (v === undefined || v === null) return dflt;
  if (typeof v !== 'boolean') throw new Error(`config.json: "${key}" must be a boolean, got ${JSON.stringify(v)}`);
  return v;
}
function optInt(v: unknown): number | null { return typeof v === 'number' && Number.isInteger(v) ? v : null; }
function idList(v: unknown): number[] {
  if (typeof v === 'number') return [v];
  if (Array.isArray(v)) return v.filter((x): x is number => typeof x === 'number');
  return [];
}

export function parseActivation(name: unknown, where: string): Activation {
  switch (name) {
    case 'silu': case 'swish': return 'silu';
    case 'gelu': return 'gelu';
    case 'gelu_new': case 'gelu_pytorch_tanh': case 'gelu_fast': case 'gelu_python_tanh': return 'gelu_tanh';
    case 'relu': return 'relu';
    default: throw new Error(`config.json: unsupported activation ${JSON.stringify(name)} in "${where}" (supported: silu, swish, gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, relu)`);
  }
}

/** Read rope parameters from `rope_parameters` (transformers 5) or `rope_theta` + `rope_scaling` (older). */
export function parseRope(raw: Raw, defaultTheta: number): RopeConfig {
  let p: Raw = {};
  const rp = raw.rope_parameters;
  if (rp && typeof rp === 'object' && !Array.isArray(rp)) {
    p = { ...(rp as Raw) };
    // Per-layer-type dicts ({full_attention: {...}, sliding_attention: {...}}) are not used by the supported models.
    if (p.rope_theta === undefined && p.rope_type === undefined && p.type === undefined && (p as Raw).full_attention) p = { ...((p as Raw).full_attention as Raw) };
  }
  const rs = raw.rope_scaling;
  if (rs && typeof rs === 'object' && !Array.isArray(rs)) p = { ...(rs as Raw), ...p };
  const theta = typeof p.rope_theta === 'number' ? p.rope_theta : typeof raw.rope_theta === 'number' ? raw.rope_theta : defaultTheta;
  let type = (p.rope_type ?? p.type ?? 'default') as string;
  if (type === 'su') type = 'longrope';
  if (type === 'ntk') type = 'dynamic';
  if (!(SUPPORTED_ROPE_TYPES as readonly string[]).includes(type)) {
    throw new Error(`config.json: unsupported rope type '${type}' (supported: ${SUPPORTED_ROPE_TYPES.join(', ')})`);
  }
  const prf = typeof p.partial_rotary_factor === 'number' ? p.partial_rotary_factor
    : typeof raw.partial_rotary_factor === 'number' ? raw.partial_rotary_factor : 1.0;
  const o = (k: string): number | undefined => (typeof p[k] === 'number' ? p[k] as number : undefined);
  const cfg: RopeConfig = { type: type as RopeType, theta, partialRotaryFactor: prf };
  cfg.factor = o('factor');
  cfg.lowFreqFactor = o('low_freq_factor');
  cfg.highFreqFactor = o('high_freq_factor');
  cfg.originalMaxPositionEmbeddings = o('original_max_position_embeddings') ??
    (typeof raw.original_max_position_embeddings === 'number' ? raw.original_max_position_embeddings : undefined);
  cfg.attentionFactor = o('attention_factor');
  cfg.betaFast = o('beta_fast');
  cfg.betaSlow = o('beta_slow');
  cfg.mscale = o('mscale');
  cfg.mscaleAllDim = o('mscale_all_dim');
  if (typeof p.truncate === 'boolean') cfg.truncate = p.truncate;
  if (Array.isArray(p.short_factor)) cfg.shortFactor = p.short_factor as number[];
  if (Array.isArray(p.long_factor)) cfg.longFactor = p.long_factor as number[];
  const need = (k: string, v: unknown) => { if (v === undefined) throw new Error(`config.json: rope type '${type}' needs "${k}"`); };
  if (type === 'linear' || type === 'dynamic' || type === 'llama3' || type === 'yarn') need('factor', cfg.factor);
  if (type === 'llama3') {
    need('low_freq_factor', cfg.lowFreqFactor); need('high_freq_factor', cfg.highFreqFactor);
    need('original_max_position_embeddings', cfg.originalMaxPositionEmbeddings);
  }
  if (type === 'longrope') { need('short_factor', cfg.shortFactor); need('long_factor', cfg.longFactor); }
  return cfg;
}

/** Normalise a parsed config.json. Throws for an unsupported model_type, listing the supported ones. */
export function parseConfig(raw: Raw): ModelConfig {
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new Error('config.json: not a JSON object');
  const mt = raw.model_type;
  if (typeof mt !== 'string' || !(SUPPORTED_MODEL_TYPES as readonly string[]).includes(mt)) {
    throw new Error(`config.json: unsupported model_type ${JSON.stringify(mt)}; supported model types: ${SUPPORTED_MODEL_TYPES.join(', ')}`);
  }
  const modelType = mt as ModelType;
  const architectures = Array.isArray(raw.architectures) ? (raw.architectures as string[]) : [];
  const torchDtype = typeof raw.torch_dtype === 'string' ? raw.torch_dtype : typeof raw.dtype === 'string' ? raw.dtype : null;
  const bos = optInt(raw.bos_token_id), pad = optInt(raw.pad_token_id), eos = idList(raw.eos_token_id);

  if (modelType === 'gpt2') {
    const hidden = posInt(raw, 'n_embd', 768), heads = posInt(raw, 'n_head', 12), layers = posInt(raw, 'n_layer', 12);
    if (hidden % heads !== 0) throw new Error(`config.json: n_embd ${hidden} is not divisible by n_head ${heads}`);
    const inner = raw.n_inner === null || raw.n_inner === undefined ? 4 * hidden : posInt(raw, 'n_inner');
    return {
      modelType, architectures,
      vocabSize: posInt(raw, 'vocab_size', 50257), hiddenSize: hidden, intermediateSize: inner,
      numLayers: layers, numHeads: heads, numKvHeads: heads, headDim: hidden / heads,
      maxPositionEmbeddings: posInt(raw, 'n_positions', 1024),
      normEps: num(raw, 'layer_norm_epsilon', 1e-5), norm: 'layer',
      act: parseActivation(raw.activation_function ?? 'gelu_new', 'activation_function'),
      qkvBias: true, oBias: true, mlpBias: true, qkNorm: false, fusedQkv: true, fusedGateUp: false,
      layerWindows: new Array(layers).fill(null), rope: null, embedScale: null,
      tieWordEmbeddings: bool(raw, 'tie_word_embeddings', true),
      attnScaleByInverseLayerIdx: bool(raw, 'scale_attn_by_inverse_layer_idx', false),
      scaleAttnWeights: bool(raw, 'scale_attn_weights', true),
      bosTokenId: bos, eosTokenId: eos, padTokenId: pad, torchDtype, raw,
    };
  }

  const hidden = posInt(raw, 'hidden_size');
  const heads = posInt(raw, 'num_attention_heads');
  const kv = posInt(raw, 'num_key_value_heads', heads);
  if (heads % kv !== 0) throw new Error(`config.json: num_attention_heads ${heads} is not a multiple of num_key_value_heads ${kv}`);
  const layers = posInt(raw, 'num_hidden_layers');
  const dfltHeadDim = modelType === 'gemma' ? 256 : modelType === 'qwen3' ? 128 : undefined;
  let headDim: number;
  if (raw.head_dim !== undefined && raw.head_dim !== null) headDim = posInt(raw, 'head_dim');
  else if (dfltHeadDim !== undefined) headDim = dfltHeadDim;
  else {
    if (hidden % heads !== 0) throw new Error(`config.json: hidden_size ${hidden} is not divisible by num_attention_heads ${heads} (and no head_dim)`);
    headDim = hidden / heads;
  }
  const defaults: Record<string, { eps: number; tie: boolean; theta: number; maxPos: number }> = {
    llama: { eps: 1e-6, tie: false, theta: 10000, maxPos: 2048 },
    mistral: { eps: 1e-6, tie: false, theta: 10000, maxPos: 4096 * 32 },
    qwen2: { eps: 1e-6, tie: false, theta: 10000, maxPos: 32768 },
    qwen3: { eps: 1e-6, tie: false, theta: 10000, maxPos: 32768 },
    phi3: { eps: 1e-5, tie: false, theta: 10000, maxPos: 4096 },
    gemma: { eps: 1e-6, tie: true, theta: 10000, maxPos: 8192 },
  };
  const d = defaults[modelType];
  let act: Activation;
  if (modelType === 'gemma') {
    // transformers' Gemma uses hidden_activation, falling back to the tanh GELU (old configs say "gelu").
    const ha = raw.hidden_activation ?? (raw.hidden_act === 'gelu' || raw.hidden_act === undefined ? 'gelu_pytorch_tanh' : raw.hidden_act);
    act = parseActivation(ha, 'hidden_activation');
  } else {
    act = parseActivation(raw.hidden_act ?? 'silu', 'hidden_act');
  }
  const attnBias = bool(raw, 'attention_bias', false);
  const rope = parseRope(raw, d.theta);
  const rotDim = Math.floor(headDim * rope.partialRotaryFactor);
  if (rotDim % 2 !== 0 || rotDim <= 0) throw new Error(`config.json: rotary dimension ${rotDim} (head_dim ${headDim} × partial_rotary_factor ${rope.partialRotaryFactor}) must be a positive even number`);

  // Sliding windows.
  const sw = raw.sliding_window === undefined ? (modelType === 'mistral' ? 4096 : null) : optInt(raw.sliding_window);
  const layerWindows: (number | null)[] = new Array(layers).fill(null);
  const layerTypes = Array.isArray(raw.layer_types) ? (raw.layer_types as string[]) : null;
  if (layerTypes && layerTypes.length !== layers) throw new Error(`config.json: layer_types has ${layerTypes.length} entries for ${layers} layers`);
  for (let i = 0; i < layers; i++) {
    if (sw === null) continue;
    if (modelType === 'mistral' || modelType === 'phi3') layerWindows[i] = sw;
    else if (modelType === 'qwen2' || modelType === 'qwen3') {
      if (layerTypes) layerWindows[i] = layerTypes[i] === 'sliding_attention' ? sw : null;
      else if (bool(raw, 'use_sliding_window', false) && i >= num(raw, 'max_window_layers', 28)) layerWindows[i] = sw;
    }
  }
  return {
    modelType, architectures,
    vocabSize: posInt(raw, 'vocab_size'), hiddenSize: hidden, intermediateSize: posInt(raw, 'intermediate_size'),
    numLayers: layers, numHeads: heads, numKvHeads: kv, headDim,
    maxPositionEmbeddings: posInt(raw, 'max_position_embeddings', d.maxPos),
    normEps: num(raw, 'rms_norm_eps', d.eps),
    norm: modelType === 'gemma' ? 'rms_unit_offset' : 'rms',
    act,
    qkvBias: modelType === 'qwen2' ? true : (modelType === 'phi3' ? false : attnBias),
    oBias: modelType === 'qwen2' || modelType === 'phi3' ? false : attnBias,
    mlpBias: modelType === 'llama' ? bool(raw, 'mlp_bias', false) : false,
    qkNorm: modelType === 'qwen3',
    fusedQkv: modelType === 'phi3', fusedGateUp: modelType === 'phi3',
    layerWindows, rope,
    embedScale: modelType === 'gemma' ? Math.sqrt(hidden) : null,
    tieWordEmbeddings: bool(raw, 'tie_word_embeddings', d.tie),
    attnScaleByInverseLayerIdx: false, scaleAttnWeights: true,
    bosTokenId: bos, eosTokenId: eos, padTokenId: pad, torchDtype, raw,
  };
}

/** Read and parse `<dir>/config.json`. */
export function loadConfig(dir: string): ModelConfig {
  const p = path.join(dir, 'config.json');
  let text: string;
  try { text = fs.readFileSync(p, 'utf8'); } catch (e) { throw new Error(`loadModel: cannot read ${p}: ${(e as Error).message}`); }
  let raw: Raw;
  try { raw = JSON.parse(text); } catch (e) { throw new Error(`loadModel: ${p} is not valid JSON: ${(e as Error).message}`); }
  try { return parseConfig(raw); } catch (e) { throw new Error(`${p}: ${(e as Error).message}`); }
}

/** Generation defaults (generation_config.json), with the fields peftkit uses. */
export interface GenerationConfig {
  eosTokenId: number[];
  padTokenId: number | null;
  bosTokenId: number | null;
  doSample?: boolean;
  temperature?: number;
  topK?: number;
  topP?: number;
  repetitionPenalty?: number;
  maxNewTokens?: number;
  raw: Record<string, unknown>;
}

export function loadGenerationConfig(dir: string, cfg: ModelConfig): GenerationConfig {
  const p = path.join(dir, 'generation_config.json');
  let raw: Raw = {};
  if (fs.existsSync(p)) {
    try { raw = JSON.parse(fs.readFileSync(p, 'utf8')); } catch (e) { throw new Error(`loadModel: ${p} is not valid JSON: ${(e as Error).message}`); }
  }
  const n = (k: string) => (typeof raw[k] === 'number' ? raw[k] as number : undefined);
  return {
    eosTokenId: raw.eos_token_id !== undefined ? idList(raw.eos_token_id) : cfg.eosTokenId,
    padTokenId: raw.pad_token_id !== undefined ? optInt(raw.pad_token_id) : cfg.padTokenId,
    bosTokenId: raw.bos_token_id !== undefined ? optInt(raw.bos_token_id) : cfg.bosTokenId,
    doSample: typeof raw.do_sample === 'boolean' ? raw.do_sample : undefined,
    temperature: n('temperature'), topK: n('top_k'), topP: n('top_p'),
    repetitionPenalty: n('repetition_penalty'), maxNewTokens: n('max_new_tokens'),
    raw,
  };
}
