/**
 * lora/save.ts — writing LoRA adapters in PEFT's format.
 *
 * adapter_config.json: PEFT 0.21's LoraConfig keys (sorted, indent 2, inference_mode true).
 * adapter_model.safetensors (metadata {"format": "pt"}), tensors as stored (f32 adapters):
 *   base_model.model.<module>.lora_A.weight            [r, in]
 *   base_model.model.<module>.lora_B.weight            [out, r]   (+ lora_B.bias with lora_bias)
 *   base_model.model.<module>.lora_magnitude_vector    [out]      DoRA
 *   base_model.model.<module>.lora_embedding_A / _B    [r, V] / [C, r]
 *   base_model.model.<module>.<param>                  modules_to_save copies
 *   base_model.model.<path>.bias                       every bias with bias='all'
 */
import type { PeftModel, SaveAdapterOptions } from '../peft_model';

/** Save `peft`'s adapters to `dir` (PEFT's save_pretrained). Same as `peft.saveAdapter(dir, opts)`. */
export async function saveLoraAdapter(peft: PeftModel, dir: string, opts: SaveAdapterOptions = {}): Promise<void> {
  if (peft.peftType !== 'LORA') throw new TypeError(`saveLoraAdapter: the model holds ${peft.peftType} adapters`);
  await peft.saveAdapter(dir, opts);
}
