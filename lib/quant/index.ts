/**
 * quant — 4-bit quantization compatible with bitsandbytes (NF4 / FP4, double quantization, the
 * Linear4bit serialized layout), the fused 4-bit linear layer used by QLoRA, and merging LoRA
 * adapters into a 4-bit base.
 */
export { quantizeNF4, quantizeTensor, dequantize, QuantizedTensor, quantMapOf, dynamicMap, resolveQuantizeOptions,
  quantizableLinears, isSkipped, replaceModule } from './nf4';
export type { QuantType, ComputeDtype, QuantizeOptions, ResolvedQuantizeOptions, NestedQuantState } from './nf4';
export { Linear4bit } from './linear4bit';
export { saveQuantized, quantizedStateDict, packQuantState, quantStateJson, quantStateKey, bnbQuantizationConfig,
  readQuantizedWeight, quantizedModulePaths, pyFloatRepr } from './bnb_format';
export { mergeQuantized } from './merge';
export type { MergeQuantizedOptions, LoraDelta } from './merge';
export { linear4bit } from '../ops/nf4';
