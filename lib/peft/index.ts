/**
 * peft — parameter-efficient fine-tuning with HuggingFace PEFT's semantics and file formats.
 *
 * `loadAdapter(model, dir)` reads any adapter folder PEFT wrote and dispatches on its peft_type.
 */
import type { CausalLM } from '../models/base';
import { adapterType } from './config';
import { loadIa3Adapter } from './ia3/load';
import { loadLoraAdapter, LoadAdapterOptions } from './lora/load';
import { loadPrefixTuningAdapter } from './prefix_tuning/model';
import { loadPromptTuningAdapter } from './prompt_tuning/model';
import { PeftModel } from './peft_model';

export { PeftModel, ModulesToSaveWrapper, cloneModule, formatTrainableParameters } from './peft_model';
export type { PeftTuner, SaveAdapterOptions, NamedTensor } from './peft_model';
export {
  ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, PEFT_VERSION, readAdapterConfig, writeAdapterConfig, stringifyConfig, adapterType,
} from './config';
export type { JsonObject, JsonValue, PeftType } from './config';
export * from './lora';
export * from './ia3';
export * from './prompt_tuning';
export * from './prefix_tuning';

/**
 * Load a PEFT adapter folder (adapter_config.json + adapter_model.safetensors) onto `model`.
 * A CausalLM is wrapped into a new PeftModel; a PeftModel gets one more adapter (named
 * `opts.adapterName`, activate it with setAdapter). The adapter is frozen unless `isTrainable`.
 */
export async function loadAdapter(model: CausalLM | PeftModel, dir: string, opts: LoadAdapterOptions = {}): Promise<PeftModel> {
  const type = adapterType(dir);
  switch (type) {
    case 'LORA': return loadLoraAdapter(model, dir, opts);
    case 'IA3': return loadIa3Adapter(model, dir, opts);
    case 'PROMPT_TUNING': return loadPromptTuningAdapter(model, dir, opts);
    case 'PREFIX_TUNING': return loadPrefixTuningAdapter(model, dir, opts);
    default: throw new Error(`loadAdapter: ${dir} holds a ${type} adapter, which peftkit cannot load yet`);
  }
}
