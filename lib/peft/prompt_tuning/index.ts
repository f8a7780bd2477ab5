/** peft/prompt_tuning — prompt tuning with PEFT 0.21 semantics and file format (+ what prompt learning methods share). */
export { wrapWithPromptTuning, addPromptTuningAdapter, PromptTuningModel, PromptEmbedding, loadPromptTuningAdapter, readPromptTuningConfig } from './model';
export type { WrapWithPromptTuningOptions } from './model';
export { resolvePromptTuningConfig, promptTuningConfigToJson, promptTuningConfigFromJson, PROMPT_TUNING_CONFIG_DEFAULTS } from './config';
export type { PromptTuningConfig, ResolvedPromptTuningConfig, PromptTuningInit, TextEncoder } from './config';
export { PromptLearningModel } from './prompt_learning';
export type { PromptLearningConfig, ResolvedPromptLearningConfig } from './prompt_learning';
