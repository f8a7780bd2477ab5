/**
 * peftkit — parameter-efficient fine-tuning of LLMs from Node.js over a native C++/CUDA core.
 * Explicit exports only: everything public is listed here.
 */
export { Tensor, tidy, keep } from './tensor/tensor';
export type { NestedArray, TensorOptions, RandomOptions } from './tensor/tensor';
export type { DType, Device } from './tensor/dtype';
export { noGrad, enableGrad, isGradEnabled, setGradEnabled } from './tensor/autograd';
export { memoryStats, resetPeakMemory, releaseHostCache, numThreads, setNumThreads, cpuInfo, cudaInfo, cudaMemoryStats, cudaEmptyCache, cudaSynchronize } from './runtime';
export type { MemoryStats, HostCacheStats, CpuInfo, CudaInfo, CudaDevice, CudaMemoryStats } from './runtime';
import * as ops from './ops';
export { ops };
export * as nn from './nn';
export { loadModel, createModel, CausalLM, KVCache, LlamaForCausalLM, GemmaForCausalLM, GPT2LMHeadModel,
  parseConfig, loadConfig, SUPPORTED_MODEL_TYPES, computeRope } from './models';
export type { LoadModelOptions, ForwardInput, ForwardOutput, TokenInput, GenerateOptions, StreamEvent,
  ModelConfig, RopeConfig, GenerationConfig } from './models';
export { loadTokenizer, Tokenizer } from './tokenizer';
export type { ChatMessage, ChatTemplateOptions, EncodeOptions, DecodeOptions } from './tokenizer';
export { readHeader, loadSafetensors, saveSafetensors, loadCheckpoint, saveCheckpoint, openCheckpoint,
  SafetensorsError } from './io/safetensors';
export * as optim from './optim';
export * as data from './data';
export { AdamW, AdamW8bit, PagedAdamW, PagedAdamW8bit, clipGradNorm, gradNorm, getSchedule, LRScheduler } from './optim';
export type { OptimizerState, ScheduleName, ScheduleOptions } from './optim';
export { loadDataset, tokenizeDataset, DataLoader, DatasetError } from './data';
export type { Batch, Example, TokenizedExample, TokenizerLike } from './data';
export * as peft from './peft';
export { wrapWithLora, addLoraAdapter, loadAdapter, PeftModel, LoraModel, LoraLinear, LoraEmbedding,
  ModulesToSaveWrapper, formatTrainableParameters, readAdapterConfig } from './peft';
export type { LoraConfig, ResolvedLoraConfig, LoraInit, LoraBias, LoadAdapterOptions, SaveAdapterOptions, PeftTuner } from './peft';
export { nextDropoutSeed, getDropoutSeed, setDropoutSeed } from './ops/random';
export { Trainer, NonFiniteError, ProgressBar, JsonlLogger, EarlyStopping, enableGradientCheckpointing, listCheckpoints,
  latestCheckpoint, loadTrainingCheckpoint } from './train';
export type { TrainerOptions, TrainingArgs, TrainResult, TrainerCallback, LogRecord, StepMetrics, EvalMetrics, TrainableModel,
  TrainData, DataCollator, CheckpointOptions } from './train';
export * as quant from './quant';
export { quantizeNF4, dequantize, QuantizedTensor, Linear4bit, saveQuantized, mergeQuantized } from './quant';
export type { QuantizeOptions, QuantType, ComputeDtype, MergeQuantizedOptions, LoraDelta } from './quant';
export * as evaluation from './eval';
export { exactMatch, tokenF1, rougeL, scoreGenerations, perplexity } from './eval';
export type { GenerationScores, PerplexityResult } from './eval';
export { wrapWithIa3, addIa3Adapter, Ia3Model, Ia3Linear, loadIa3Adapter, wrapWithPromptTuning, addPromptTuningAdapter,
  PromptTuningModel, loadPromptTuningAdapter, wrapWithPrefixTuning, addPrefixTuningAdapter, PrefixTuningModel, PrefixEncoder,
  loadPrefixTuningAdapter } from './peft';
export type { Ia3Config, PromptTuningConfig, PrefixTuningConfig, PromptTuningInit } from './peft';
