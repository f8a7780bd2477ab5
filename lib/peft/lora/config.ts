/**
 * lora/config.ts — LoraConfig (the options of wrapWithLora) and its adapter_config.json form.
 *
 * The JSON side is PEFT 0.21's LoraConfig dataclass: exactly the keys PEFT writes, in snake_case,
 * with PEFT's defaults. Options peftkit does not implement (LoftQ, EVA, CorDA, aLoRA, ...) are
 * written with their "off" defaults and rejected when a file turns them on.
 */
import { BASE_CONFIG_DEFAULTS, JsonObject, JsonValue, normalizeConfig, PEFT_VERSION } from '../config';

/** How LoRA weights are initialised (PEFT's `init_lora_weights`). */
export type LoraInit = 'default' | 'gaussian' | 'pissa' | 'olora' | 'none';
/** Which biases train (PEFT's `bias`). */
export type LoraBias = 'none' | 'lora_only' | 'all';

/** Options of `wrapWithLora` (camelCase twins of PEFT's LoraConfig fields). */
export interface LoraConfig {
  /** Rank (default 8). */
  r?: number;
  /** lora_alpha (default 8); the scale is alpha/r (rsLoRA: alpha/√r). */
  alpha?: number;
  /** Dropout on the LoRA path's input (default 0). */
  dropout?: number;
  /**
   * Which modules get adapters: a list of names (a module matches when its dotted path equals an
   * entry or ends with '.' + entry), a regular expression (RegExp or string; must match the whole
   * path), or 'all-linear' (every Linear / Conv1D except the output head). Default: q_proj, v_proj
   * (c_attn for GPT-2), PEFT's defaults for Llama-style models.
   */
  targetModules?: string[] | RegExp | string;
  /** Modules never adapted (list: exact or suffix match; string/RegExp: full match). */
  excludeModules?: string[] | RegExp | string | null;
  /** 'none' (default), 'lora_only' (biases of adapted layers train) or 'all' (every bias trains). */
  bias?: LoraBias;
  /** Scale alpha/√r instead of alpha/r. */
  useRslora?: boolean;
  /** DoRA: a trainable magnitude vector per output, PEFT's detached weight-norm formulation. */
  useDora?: boolean;
  /** Initialisation (default 'default': A kaiming-uniform(a=√5), B = 0). */
  init?: LoraInit | boolean;
  /** Only layers with these indices (list-form targetModules only, as in PEFT). */
  layersToTransform?: number | number[] | null;
  /** Name(s) of the layer list for layersToTransform (default: any `<name>.<idx>.`). */
  layersPattern?: string | string[] | null;
  /** Per-module rank overrides: { 'q_proj': 16, 'layers\\.0\\..*': 4 } (regex matched against the path's tail). */
  rankPattern?: Record<string, number>;
  /** Per-module alpha overrides, same matching as rankPattern. */
  alphaPattern?: Record<string, number>;
  /** Extra modules trained in full and saved with the adapter (e.g. ['lm_head']). */
  modulesToSave?: string[] | null;
  /** GPT-2-style weights stored [in, out]; forced on for Conv1D layers (as PEFT does). */
  fanInFanOut?: boolean;
  /** lora_B has a bias (PEFT's lora_bias). */
  loraBias?: boolean;
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

/** A LoraConfig with every field resolved. */
export interface ResolvedLoraConfig {
  r: number;
  alpha: number;
  dropout: number;
  targetModules: string[] | string | null;
  excludeModules: string[] | string | null;
  bias: LoraBias;
  useRslora: boolean;
  useDora: boolean;
  init: LoraInit;
  layersToTransform: number | number[] | null;
  layersPattern: string | string[] | null;
  rankPattern: Record<string, number>;
  alphaPattern: Record<string, number>;
  modulesToSave: string[] | null;
  fanInFanOut: boolean;
  loraBias: boolean;
  adapterName: string;
  baseModelNameOrPath: string | null;
  revision: string | null;
  taskType: string | null;
  seed: number | null;
  /** Every key of the file this config was read from (kept to report unsupported options). */
  raw?: JsonObject;
}

/** PEFT 0.21 LoraConfig: every key save_pretrained writes, with its default. */
export const LORA_CONFIG_DEFAULTS: JsonObject = {
  ...BASE_CONFIG_DEFAULTS,
  alora_invocation_tokens: null,
  alpha_pattern: {},
  arrow_config: null,
  bias: 'none',
  corda_config: null,
  ensure_weight_tying: false,
  eva_config: null,
  exclude_modules: null,
  fan_in_fan_out: false,
  init_lora_weights: true,
  kasa_config: null,
  layer_replication: null,
  layers_pattern: null,
  layers_to_transform: null,
  loftq_config: {},
  lora_alpha: 8,
  lora_bias: false,
  lora_dropout: 0.0,
  lora_ga_config: null,
  megatron_config: null,
  megatron_core: 'megatron.core',
  modules_to_save: null,
  monteclora_config: null,
  peft_type: 'LORA',
  qalora_group_size: 16,
  r: 8,
  rank_pattern: {},
  target_modules: null,
  target_parameters: null,
  trainable_token_indices: null,
  use_bdlora: null,
  use_dora: false,
  use_qalora: false,
  use_rslora: false,
  velora_config: null,
};

/** Keys of the JSON that Python holds as floats. */
export const LORA_FLOAT_KEYS = ['lora_dropout'];

function posInt(v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) throw new RangeError(`LoraConfig: ${what} must be a positive integer, got ${String(v)}`);
  return v;
}
function finite(v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new RangeError(`LoraConfig: ${what} must be a finite number, got ${String(v)}`);
  return v;
}

function targetsOf(v: LoraConfig['targetModules'] | LoraConfig['excludeModules'], what: string): string[] | string | null {
  if (v === undefined || v === null) return null;
  if (v instanceof RegExp) {
    if (v.flags.replace(/[gsu]/g, '') !== '') throw new TypeError(`LoraConfig: ${what} RegExp flags '${v.flags}' cannot be saved in adapter_config.json`);
    return v.source;
  }
  if (typeof v === 'string') return v;
  if (Array.isArray(v)) {
    for (const s of v) if (typeof s !== 'string' || s === '') throw new TypeError(`LoraConfig: ${what} must be non-empty strings`);
    return [...v];
  }
  throw new TypeError(`LoraConfig: ${what} must be a list of names, a RegExp or a string`);
}

/** Fill defaults and validate. */
export function resolveLoraConfig(cfg: LoraConfig = {}): ResolvedLoraConfig {
  if (cfg === null || typeof cfg !== 'object') throw new TypeError('LoraConfig: expected an object');
  const r = posInt(cfg.r ?? 8, 'r');
  const alpha = finite(cfg.alpha ?? 8, 'alpha');
  const dropout = finite(cfg.dropout ?? 0, 'dropout');
  if (dropout < 0 || dropout >= 1) throw new RangeError(`LoraConfig: dropout must be in [0, 1), got ${dropout}`);
  const bias = cfg.bias ?? 'none';
  if (bias !== 'none' && bias !== 'lora_only' && bias !== 'all') throw new TypeError(`LoraConfig: bias must be 'none', 'lora_only' or 'all', got ${JSON.stringify(bias)}`);
  let init: LoraInit;
  const i = cfg.init ?? 'default';
  if (i === true) init = 'default';
  else if (i === false) init = 'none';
  else if (i === 'default' || i === 'gaussian' || i === 'pissa' || i === 'olora' || i === 'none') init = i;
  else throw new TypeError(`LoraConfig: init must be 'default', 'gaussian', 'pissa', 'olora' or 'none', got ${JSON.stringify(i)}`);
  const ltt = cfg.layersToTransform ?? null;
  if (ltt !== null) {
    const list = Array.isArray(ltt) ? ltt : [ltt];
    for (const n of list) if (!Number.isInteger(n) || n < 0) throw new TypeError(`LoraConfig: layersToTransform must hold non-negative integers, got ${JSON.stringify(ltt)}`);
  }
  const pattern = (o: Record<string, number> | undefined, what: string, int: boolean): Record<string, number> => {
    const out: Record<string, number> = {};
    for (const [k, v] of Object.entries(o ?? {})) out[k] = int ? posInt(v, `${what}['${k}']`) : finite(v, `${what}['${k}']`);
    return out;
  };
  const adapterName = cfg.adapterName ?? 'default';
  if (typeof adapterName !== 'string' || adapterName === '' || adapterName.includes('.')) {
    throw new TypeError(`LoraConfig: adapterName must be a non-empty string without dots, got ${JSON.stringify(adapterName)}`);
  }
  const seed = cfg.seed ?? null;
  if (seed !== null && (!Number.isInteger(seed) || seed < 0)) throw new TypeError(`LoraConfig: seed must be a non-negative integer, got ${seed}`);
  const mts = cfg.modulesToSave ?? null;
  if (mts !== null && (!Array.isArray(mts) || mts.some((s) => typeof s !== 'string' || s === ''))) {
    throw new TypeError('LoraConfig: modulesToSave must be a list of module names');
  }
  return {
    r, alpha, dropout, bias, init,
    targetModules: targetsOf(cfg.targetModules, 'targetModules'),
    excludeModules: targetsOf(cfg.excludeModules, 'excludeModules'),
    useRslora: !!cfg.useRslora,
    useDora: !!cfg.useDora,
    layersToTransform: ltt,
    layersPattern: cfg.layersPattern ?? null,
    rankPattern: pattern(cfg.rankPattern, 'rankPattern', true),
    alphaPattern: pattern(cfg.alphaPattern, 'alphaPattern', false),
    modulesToSave: mts ? [...mts] : null,
    fanInFanOut: !!cfg.fanInFanOut,
    loraBias: !!cfg.loraBias,
    adapterName,
    baseModelNameOrPath: cfg.baseModelNameOrPath ?? null,
    revision: cfg.revision ?? null,
    taskType: cfg.taskType === undefined ? 'CAUSAL_LM' : cfg.taskType,
    seed,
  };
}

/** adapter_config.json contents for a resolved config (exactly PEFT's keys, sorted on write). */
export function loraConfigToJson(c: ResolvedLoraConfig): JsonObject {
  const initJson: JsonValue = c.init === 'default' ? true : c.init === 'none' ? false : c.init;
  return normalizeConfig({
    alpha_pattern: { ...c.alphaPattern },
    base_model_name_or_path: c.baseModelNameOrPath,
    bias: c.bias,
    exclude_modules: c.excludeModules,
    fan_in_fan_out: c.fanInFanOut,
    inference_mode: true,
    init_lora_weights: initJson,
    layers_pattern: c.layersPattern,
    layers_to_transform: c.layersToTransform,
    lora_alpha: c.alpha,
    lora_bias: c.loraBias,
    lora_dropout: c.dropout,
    modules_to_save: c.modulesToSave,
    peft_type: 'LORA',
    peft_version: PEFT_VERSION,
    r: c.r,
    rank_pattern: { ...c.rankPattern },
    revision: c.revision,
    target_modules: c.targetModules,
    task_type: c.taskType,
    use_dora: c.useDora,
    use_rslora: c.useRslora,
  }, LORA_CONFIG_DEFAULTS);
}

/** Options PEFT knows that peftkit's LoRA does not implement: a file that turns one on is refused. */
const UNSUPPORTED: [string, (v: JsonValue) => boolean][] = [
  ['use_qalora', (v) => v === true],
  ['layer_replication', (v) => v !== null && !(Array.isArray(v) && v.length === 0)],
  ['trainable_token_indices', (v) => v !== null],
  ['alora_invocation_tokens', (v) => v !== null],
  ['target_parameters', (v) => v !== null && !(Array.isArray(v) && v.length === 0)],
  ['use_bdlora', (v) => v !== null && v !== false],
  ['arrow_config', (v) => v !== null],
];

/** Read a LoRA adapter_config.json object (unknown keys ignored). */
export function loraConfigFromJson(j: JsonObject): ResolvedLoraConfig {
  if (j.peft_type !== 'LORA') throw new Error(`loadAdapter: adapter_config.json has peft_type ${JSON.stringify(j.peft_type)}, expected "LORA"`);
  for (const [k, on] of UNSUPPORTED) {
    if (k in j && on(j[k])) throw new Error(`loadAdapter: adapter_config.json sets "${k}" = ${JSON.stringify(j[k])}, which peftkit does not support`);
  }
  const ilw = j.init_lora_weights ?? true;
  let init: LoraInit;
  if (ilw === true) init = 'default';
  else if (ilw === false) init = 'none';
  else if (ilw === 'gaussian' || ilw === 'pissa' || ilw === 'olora') init = ilw;
  else init = 'none';  // other PEFT inits (loftq, eva, corda, pissa_niter_*): the saved weights are loaded anyway
  const tm = j.target_modules ?? null;
  const em = j.exclude_modules ?? null;
  return {
    ...resolveLoraConfig({
      r: j.r as number ?? 8,
      alpha: (j.lora_alpha ?? 8) as number,
      dropout: (j.lora_dropout ?? 0) as number,
      bias: (j.bias ?? 'none') as LoraBias,
      useRslora: !!j.use_rslora,
      useDora: !!j.use_dora,
      init,
      layersToTransform: (j.layers_to_transform ?? null) as number | number[] | null,
      layersPattern: (j.layers_pattern ?? null) as string | string[] | null,
      rankPattern: (j.rank_pattern ?? {}) as Record<string, number>,
      alphaPattern: (j.alpha_pattern ?? {}) as Record<string, number>,
      modulesToSave: (j.modules_to_save ?? null) as string[] | null,
      fanInFanOut: !!j.fan_in_fan_out,
      loraBias: !!j.lora_bias,
      baseModelNameOrPath: (j.base_model_name_or_path ?? null) as string | null,
      revision: (j.revision ?? null) as string | null,
      taskType: (j.task_type ?? null) as string | null,
    }),
    targetModules: tm === null ? null : Array.isArray(tm) ? tm.map(String) : String(tm),
    excludeModules: em === null ? null : Array.isArray(em) ? em.map(String) : String(em),
    raw: j,
  };
}
