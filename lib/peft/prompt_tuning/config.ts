/**
 * prompt_tuning/config.ts — PromptTuningConfig (the options of wrapWithPromptTuning) and its
 * adapter_config.json form: PEFT 0.21's PromptTuningConfig keys with PEFT's defaults, and its
 * __post_init__ checks (TEXT needs tokenizer_name_or_path and prompt_tuning_init_text;
 * tokenizer_kwargs only with TEXT).
 */
import { JsonObject, JsonValue, normalizeConfig, PEFT_VERSION } from '../config';
import {
  PROMPT_LEARNING_CONFIG_DEFAULTS, PromptLearningConfig, promptLearningFromJson, promptLearningToJson,
  resolvePromptLearningConfig, ResolvedPromptLearningConfig,
} from './prompt_learning';

/** PEFT's PromptTuningInit. */
export type PromptTuningInit = 'RANDOM' | 'TEXT' | 'SAMPLE_VOCAB';

/** Something that turns text into token ids (a peftkit Tokenizer). */
export interface TextEncoder { encode(text: string, opts?: { addSpecialTokens?: boolean }): number[] }

/** Options of `wrapWithPromptTuning` (camelCase twins of PEFT's PromptTuningConfig fields). */
export interface PromptTuningConfig extends PromptLearningConfig {
  /**
   * How the virtual token embeddings start: 'RANDOM' (default; N(0,1) as torch.nn.Embedding),
   * 'TEXT' (the token embeddings of promptTuningInitText, repeated / cut to numVirtualTokens),
   * 'SAMPLE_VOCAB' (embeddings of random vocabulary tokens).
   */
  promptTuningInit?: PromptTuningInit;
  /** The text of the TEXT init. */
  promptTuningInitText?: string | null;
  /** Folder of the tokenizer of the TEXT init (tokenizer.json; written to the config). */
  tokenizerNameOrPath?: string | null;
  /** PEFT's tokenizer_kwargs (kept in the config; only allowed with TEXT). */
  tokenizerKwargs?: Record<string, JsonValue> | null;
  /** A tokenizer to use for the TEXT init instead of loading tokenizerNameOrPath. */
  tokenizer?: TextEncoder;
}

export interface ResolvedPromptTuningConfig extends ResolvedPromptLearningConfig {
  promptTuningInit: PromptTuningInit;
  promptTuningInitText: string | null;
  tokenizerNameOrPath: string | null;
  tokenizerKwargs: Record<string, JsonValue> | null;
  tokenizer?: TextEncoder;
}

/** PEFT 0.21 PromptTuningConfig: every key save_pretrained writes, with its default. */
export const PROMPT_TUNING_CONFIG_DEFAULTS: JsonObject = {
  ...PROMPT_LEARNING_CONFIG_DEFAULTS,
  peft_type: 'PROMPT_TUNING',
  prompt_tuning_init: 'RANDOM',
  prompt_tuning_init_text: null,
  tokenizer_kwargs: null,
  tokenizer_name_or_path: null,
};

export function resolvePromptTuningConfig(cfg: PromptTuningConfig = {}): ResolvedPromptTuningConfig {
  const who = 'PromptTuningConfig';
  const base = resolvePromptLearningConfig(cfg, who);
  const init = cfg.promptTuningInit ?? 'RANDOM';
  if (init !== 'RANDOM' && init !== 'TEXT' && init !== 'SAMPLE_VOCAB') {
    throw new TypeError(`${who}: promptTuningInit must be 'RANDOM', 'TEXT' or 'SAMPLE_VOCAB', got ${JSON.stringify(init)}`);
  }
  const text = cfg.promptTuningInitText ?? null;
  const tok = cfg.tokenizerNameOrPath ?? null;
  const kwargs = cfg.tokenizerKwargs ?? null;
  if (init === 'TEXT' && !tok && !cfg.tokenizer) throw new Error(`${who}: When prompt_tuning_init='TEXT', tokenizer_name_or_path can't be ${tok}.`);
  if (init === 'TEXT' && text === null) throw new Error(`${who}: When prompt_tuning_init='TEXT', prompt_tuning_init_text can't be None.`);
  if (kwargs && Object.keys(kwargs).length && init !== 'TEXT') throw new Error(`${who}: tokenizer_kwargs only valid when using prompt_tuning_init='TEXT'.`);
  return {
    ...base, promptTuningInit: init, promptTuningInitText: text, tokenizerNameOrPath: tok, tokenizerKwargs: kwargs,
    ...(cfg.tokenizer ? { tokenizer: cfg.tokenizer } : {}),
  };
}

export function promptTuningConfigToJson(c: ResolvedPromptTuningConfig): JsonObject {
  return normalizeConfig({
    ...promptLearningToJson(c, 'PROMPT_TUNING', PEFT_VERSION),
    prompt_tuning_init: c.promptTuningInit,
    prompt_tuning_init_text: c.promptTuningInitText,
    tokenizer_kwargs: c.tokenizerKwargs,
    tokenizer_name_or_path: c.tokenizerNameOrPath,
  }, PROMPT_TUNING_CONFIG_DEFAULTS);
}

/** An adapter_config.json object → resolved config (the init is not re-run: the file's weights are loaded). */
export function promptTuningConfigFromJson(j: JsonObject): ResolvedPromptTuningConfig {
  if (j.peft_type !== 'PROMPT_TUNING') throw new Error(`loadAdapter: adapter_config.json has peft_type ${JSON.stringify(j.peft_type)}, expected "PROMPT_TUNING"`);
  const c = resolvePromptTuningConfig({ ...promptLearningFromJson(j) });
  c.promptTuningInit = (j.prompt_tuning_init ?? 'RANDOM') as PromptTuningInit;
  c.promptTuningInitText = (j.prompt_tuning_init_text ?? null) as string | null;
  c.tokenizerNameOrPath = (j.tokenizer_name_or_path ?? null) as string | null;
  c.tokenizerKwargs = (j.tokenizer_kwargs ?? null) as Record<string, JsonValue> | null;
  return c;
}
