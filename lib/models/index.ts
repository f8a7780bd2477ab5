/** models — HuggingFace causal LMs (Llama, Mistral, Qwen2, Qwen3, Phi-3, Gemma, GPT-2). */
export { loadModel, createModel, readModelConfig } from './load';
export type { LoadModelOptions, CreateModelOptions } from './load';
export { CausalLM, KVCache, causalLmLoss, positionsFromMask, positionsFromSegments } from './base';
export type { ForwardInput, ForwardOutput, TokenInput } from './base';
export type { GenerateOptions, StreamEvent, TextDecoder } from './generate';
export { parseConfig, loadConfig, loadGenerationConfig, SUPPORTED_MODEL_TYPES } from './config';
export type { ModelConfig, RopeConfig, RopeType, GenerationConfig, ModelType } from './config';
export { computeRope, RotaryEmbedding } from './rope';
export { LlamaForCausalLM } from './llama';
export { GemmaForCausalLM } from './gemma';
export { GPT2LMHeadModel } from './gpt2';
export { Embedding, RMSNorm, LayerNorm, Conv1D, ModuleList } from './layers';
