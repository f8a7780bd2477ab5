/** peft/lora — LoRA / DoRA adapters with PEFT 0.21 semantics and file format. */
export { wrapWithLora, addLoraAdapter, LoraModel, isTargetModule, patternKey, DEFAULT_LORA_TARGETS } from './model';
export type { WrapWithLoraOptions } from './model';
export { resolveLoraConfig, loraConfigToJson, loraConfigFromJson, LORA_CONFIG_DEFAULTS } from './config';
export type { LoraConfig, ResolvedLoraConfig, LoraInit, LoraBias } from './config';
export { LoraLayer, LoraLinear, ModuleDict, ParameterDict, DoraMagnitude } from './layer';
export { LoraEmbedding } from './embedding';
export { loadLoraAdapter, readLoraConfig } from './load';
export type { LoadAdapterOptions } from './load';
export { saveLoraAdapter } from './save';
export { mergeAdapter, unmergeAdapter, unloadLora } from './merge';
export { householderQr, topSvd, jacobiEigen } from './linalg';
