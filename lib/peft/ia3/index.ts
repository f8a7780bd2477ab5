/** peft/ia3 — (IA)³ adapters with PEFT 0.21 semantics and file format. */
export { wrapWithIa3, addIa3Adapter, Ia3Model, isFeedforwardModule, DEFAULT_IA3_TARGETS, DEFAULT_IA3_FEEDFORWARD } from './model';
export type { WrapWithIa3Options } from './model';
export { resolveIa3Config, ia3ConfigToJson, ia3ConfigFromJson, IA3_CONFIG_DEFAULTS } from './config';
export type { Ia3Config, ResolvedIa3Config } from './config';
export { Ia3Linear } from './layer';
export { loadIa3Adapter, readIa3Config } from './load';
