/** peft/prefix_tuning — prefix tuning with PEFT 0.21 semantics and file format. */
export { wrapWithPrefixTuning, addPrefixTuningAdapter, PrefixTuningModel, PrefixEncoder, loadPrefixTuningAdapter, readPrefixTuningConfig } from './model';
export type { WrapWithPrefixTuningOptions } from './model';
export { resolvePrefixTuningConfig, prefixTuningConfigToJson, prefixTuningConfigFromJson, PREFIX_TUNING_CONFIG_DEFAULTS } from './config';
export type { PrefixTuningConfig, ResolvedPrefixTuningConfig } from './config';
