/**
 * ia3/config.ts — IA3Config (the options of wrapWithIa3) and its adapter_config.json form.
 *
 * The JSON side is PEFT 0.21's IA3Config dataclass: exactly the keys PEFT writes, with PEFT's
 * defaults. Validation as PEFT's __post_init__: feedforward_modules must be a subset of
 * target_modules when both are lists.
 */
import { BASE_CONFIG_DEFAULTS, JsonObject, normalizeConfig, PEFT_VERSION } from '../config';

/** Options of `wrapWithIa3` (camelCase twins of PEFT's IA3Config fields). */
export interface Ia3Config {
  /**
   * Modules that get a learned vector: a list of names (a module matches when its dotted path
   * equals an entry or ends with '.' + entry), or a regular expression (RegExp or string; must
   * match the whole path). Default: PEFT's per-architecture default (Llama/Mistral: k_proj,
   * v_proj, down_proj; Gemma/Qwen2/Qwen3: q_proj, v_proj, down_proj; GPT-2: c_attn, mlp.c_proj).
   */
  targetModules?: string[] | RegExp | string | null;
  /**
   * Which targets are feed-forward modules: their vector scales the layer's INPUT (shape
   * [1, in]); every other target's vector scales its OUTPUT ([out, 1]). A list matches a path that
   * ends with an entry (plain suffix, as PEFT), a RegExp / string must match the whole path.
   * Default: PEFT's per-architecture default (down_proj; GPT-2: mlp.c_proj).
   */
  feedforwardModules?: string[] | RegExp | string | null;
  /** Modules never adapted (list: exact or suffix match; string/RegExp: full match). */
  excludeModules?: string[] | RegExp | string | null;
  /** Initialise the vectors to 1 (identity; default true). false: N(0, 1) (torch.randn), seeded by `seed`. */
  initIa3Weights?: boolean;
  /** Extra modules trained in full and saved with the adapter (e.g. ['lm_head']). */
  modulesToSave?: string[] | null;
  /** Weights stored [in, out] (GPT-2 Conv1D); forced on for Conv1D and off for Linear, as PEFT does. */
  fanInFanOut?: boolean;
  /** Adapter name (default 'default'). */
  adapterName?: string;
  /** Written to adapter_config.json's base_model_name_or_path. */
  baseModelNameOrPath?: string | null;
  revision?: string | null;
  /** PEFT task type (default 'CAUSAL_LM'). */
  taskType?: string | null;
  /** Seed of the random init when initIa3Weights is false (default: random). */
  seed?: number;
}

/** An Ia3Config with every field resolved. */
export interface ResolvedIa3Config {
  targetModules: string[] | string | null;
  feedforwardModules: string[] | string | null;
  excludeModules: string[] | string | null;
  initIa3Weights: boolean;
  modulesToSave: string[] | null;
  fanInFanOut: boolean;
  adapterName: string;
  baseModelNameOrPath: string | null;
  revision: string | null;
  taskType: string | null;
  seed: number | null;
}

/** PEFT 0.21 IA3Config: every key save_pretrained writes, with its default. */
export const IA3_CONFIG_DEFAULTS: JsonObject = {
  ...BASE_CONFIG_DEFAULTS,
  exclude_modules: null,
  fan_in_fan_out: false,
  feedforward_modules: null,
  init_ia3_weights: true,
  modules_to_save: null,
  peft_type: 'IA3',
  target_modules: null,
};

function namesOf(v: Ia3Config['targetModules'], what: string): string[] | string | null {
  if (v === undefined || v === null) return null;
  if (v instanceof RegExp) {
    if (v.flags.replace(/[gsu]/g, '') !== '') throw new TypeError(`IA3Config: ${what} RegExp flags '${v.flags}' cannot be saved in adapter_config.json`);
    return v.source;
  }
  if (typeof v === 'string') return v;
  if (Array.isArray(v)) {
    for (const s of v) if (typeof s !== 'string' || s === '') throw new TypeError(`IA3Config: ${what} must be non-empty strings`);
    return [...v];
  }
  throw new TypeError(`IA3Config: ${what} must be a list of names, a RegExp or a string`);
}

/** Fill defaults and validate (PEFT's IA3Config.__post_init__). */
export function resolveIa3Config(cfg: Ia3Config = {}): ResolvedIa3Config {
  if (cfg === null || typeof cfg !== 'object') throw new TypeError('IA3Config: expected an object');
  const targetModules = namesOf(cfg.targetModules, 'targetModules');
  const feedforwardModules = namesOf(cfg.feedforwardModules, 'feedforwardModules');
  const excludeModules = namesOf(cfg.excludeModules, 'excludeModules');
  if (Array.isArray(targetModules) && Array.isArray(feedforwardModules)) {
    const t = new Set(targetModules);
    if (!feedforwardModules.every((f) => t.has(f))) throw new Error('IA3Config: `feedforward_modules` should be a subset of `target_modules`');
  }
  const adapterName = cfg.adapterName ?? 'default';
  if (typeof adapterName !== 'string' || adapterName === '' || adapterName.includes('.')) {
    throw new TypeError(`IA3Config: adapterName must be a non-empty string without dots, got ${JSON.stringify(adapterName)}`);
  }
  const seed = cfg.seed ?? null;
  if (seed !== null && (!Number.isInteger(seed) || seed < 0)) throw new TypeError(`IA3Config: seed must be a non-negative integer, got ${seed}`);
  const mts = cfg.modulesToSave ?? null;
  if (mts !== null && (!Array.isArray(mts) || mts.some((s) => typeof s !== 'string' || s === ''))) {
    throw new TypeError('IA3Config: modulesToSave must be a list of module names');
  }
  if (cfg.initIa3Weights !== undefined && typeof cfg.initIa3Weights !== 'boolean') throw new TypeError('IA3Config: initIa3Weights must be a boolean');
  return {
    targetModules, feedforwardModules, excludeModules,
    initIa3Weights: cfg.initIa3Weights ?? true,
    modulesToSave: mts ? [...mts] : null,
    fanInFanOut: !!cfg.fanInFanOut,
    adapterName,
    baseModelNameOrPath: cfg.baseModelNameOrPath ?? null,
    revision: cfg.revision ?? null,
    taskType: cfg.taskType === undefined ? 'CAUSAL_LM' : cfg.taskType,
    seed,
  };
}

/** adapter_config.json contents for a resolved config (exactly PEFT's keys, sorted on write). */
export function ia3ConfigToJson(c: ResolvedIa3Config): JsonObject {
  return normalizeConfig({
    base_model_name_or_path: c.baseModelNameOrPath,
    exclude_modules: c.excludeModules,
    fan_in_fan_out: c.fanInFanOut,
    feedforward_modules: c.feedforwardModules,
    inference_mode: true,
    init_ia3_weights: c.initIa3Weights,
    modules_to_save: c.modulesToSave,
    peft_type: 'IA3',
    peft_version: PEFT_VERSION,
    revision: c.revision,
    target_modules: c.targetModules,
    task_type: c.taskType,
  }, IA3_CONFIG_DEFAULTS);
}

/** An adapter_config.json object (PEFT keys) → resolved config. */
export function ia3ConfigFromJson(j: JsonObject): ResolvedIa3Config {
  if (j.peft_type !== 'IA3') throw new Error(`loadAdapter: adapter_config.json has peft_type ${JSON.stringify(j.peft_type)}, expected "IA3"`);
  const names = (v: unknown): string[] | string | null => (v === null || v === undefined ? null : Array.isArray(v) ? v.map(String) : String(v));
  const c = resolveIa3Config({
    initIa3Weights: j.init_ia3_weights === undefined ? true : !!j.init_ia3_weights,
    modulesToSave: (j.modules_to_save ?? null) as string[] | null,
    fanInFanOut: !!j.fan_in_fan_out,
    baseModelNameOrPath: (j.base_model_name_or_path ?? null) as string | null,
    revision: (j.revision ?? null) as string | null,
    taskType: (j.task_type ?? null) as string | null,
  });
  c.targetModules = names(j.target_modules);
  c.feedforwardModules = names(j.feedforward_modules);
  c.excludeModules = names(j.exclude_modules);
  return c;
}
