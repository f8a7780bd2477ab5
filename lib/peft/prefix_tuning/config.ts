/**
 * prefix_tuning/config.ts — PrefixTuningConfig (the options of wrapWithPrefixTuning) and its
 * adapter_config.json form: PEFT 0.21's PrefixTuningConfig keys with PEFT's defaults.
 */
import { JsonObject, JsonValue, normalizeConfig, PEFT_VERSION } from '../config';
import {
  PROMPT_LEARNING_CONFIG_DEFAULTS, PromptLearningConfig, promptLearningFromJson, promptLearningToJson,
  resolvePromptLearningConfig, ResolvedPromptLearningConfig,
} from '../prompt_tuning/prompt_learning';

/** Options of `wrapWithPrefixTuning` (camelCase twins of PEFT's PrefixTuningConfig fields). */
export interface PrefixTuningConfig extends PromptLearningConfig {
  /**
   * Train the prefix through PEFT's PrefixEncoder MLP (embedding [nvt, token_dim] → Linear →
   * tanh → Linear → [nvt, num_layers·2·token_dim]) instead of directly (default false). The saved
   * 'prompt_embeddings' are the MLP's output either way.
   */
  prefixProjection?: boolean;
  /** Hidden size of the projection MLP (default token_dim). */
  encoderHiddenSize?: number | null;
}

export interface ResolvedPrefixTuningConfig extends ResolvedPromptLearningConfig {
  prefixProjection: boolean;
  encoderHiddenSize: number | null;
  /** PEFT's init_weights key, kept as read (null by default). */
  initWeights: JsonValue;
}

/** PEFT 0.21 PrefixTuningConfig: every key save_pretrained writes, with its default. */
export const PREFIX_TUNING_CONFIG_DEFAULTS: JsonObject = {
  ...PROMPT_LEARNING_CONFIG_DEFAULTS,
  encoder_hidden_size: null,
  init_weights: null,
  peft_type: 'PREFIX_TUNING',
  prefix_projection: false,
};

export function resolvePrefixTuningConfig(cfg: PrefixTuningConfig = {}): ResolvedPrefixTuningConfig {
  const who = 'PrefixTuningConfig';
  const base = resolvePromptLearningConfig(cfg, who);
  const ehs = cfg.encoderHiddenSize ?? null;
  if (ehs !== null && (!Number.isInteger(ehs) || ehs <= 0)) throw new RangeError(`${who}: encoderHiddenSize must be a positive integer, got ${ehs}`);
  if (cfg.prefixProjection !== undefined && typeof cfg.prefixProjection !== 'boolean') throw new TypeError(`${who}: prefixProjection must be a boolean`);
  return { ...base, prefixProjection: !!cfg.prefixProjection, encoderHiddenSize: ehs, initWeights: null };
}

export function prefixTuningConfigToJson(c: ResolvedPrefixTuningConfig): JsonObject {
  return normalizeConfig({
    ...promptLearningToJson(c, 'PREFIX_TUNING', PEFT_VERSION),
    encoder_hidden_size: c.encoderHiddenSize,
    init_weights: c.initWeights,
    prefix_projection: c.prefixProjection,
  }, PREFIX_TUNING_CONFIG_DEFAULTS);
}

export function prefixTuningConfigFromJson(j: JsonObject): ResolvedPrefixTuningConfig {
  if (j.peft_type !== 'PREFIX_TUNING') throw new Error(`loadAdapter: adapter_config.json has peft_type ${JSON.stringify(j.peft_type)}, expected "PREFIX_TUNING"`);
  const c = resolvePrefixTuningConfig({
    ...promptLearningFromJson(j),
    prefixProjection: !!j.prefix_projection,
    encoderHiddenSize: typeof j.encoder_hidden_size === 'number' ? j.encoder_hidden_size : null,
  });
  c.initWeights = j.init_weights ?? null;
  return c;
}
