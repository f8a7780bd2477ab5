/**
 * lora/load.ts — reading PEFT LoRA adapters (PEFT's PeftModel.from_pretrained / load_adapter).
 *
 * The config is read from adapter_config.json (unknown keys ignored), LoRA layers are injected
 * with it (PiSSA / OLoRA re-run their deterministic init so the base weight gets the same
 * residual PEFT trained against; other inits are skipped since the file overwrites them), then
 * the file's tensors are copied in: '<module>.lora_A.weight' → '<module>.lora_A.<adapter>.weight',
 * '<module>.lora_magnitude_vector' → '...lora_magnitude_vector.<adapter>.weight', etc.
 */
import * as fs from 'fs';
import * as path from 'path';
import { loadSafetensors } from '../../io/safetensors';
import type { CausalLM } from '../../models/base';
import { Tensor } from '../../tensor/tensor';
import { ADAPTER_WEIGHTS_NAME, readAdapterConfig } from '../config';
import { PeftModel } from '../peft_model';
import { loraConfigFromJson, ResolvedLoraConfig } from './config';
import { LoraModel } from './model';

export interface LoadAdapterOptions {
  /** Name to give the adapter (default 'default'). */
  adapterName?: string;
  /** Leave the adapter trainable (default false: inference, as PEFT's is_trainable=False). */
  isTrainable?: boolean;
  /** Throw on tensors of the file that match nothing, or adapter tensors the file lacks (default: warn). */
  strict?: boolean;
}

/** Read a LoRA adapter folder's config (PEFT keys → LoraConfig fields). */
export function readLoraConfig(dir: string): ResolvedLoraConfig {
  return loraConfigFromJson(readAdapterConfig(dir));
}

function prefixOf(keys: string[]): string {
  return keys.length && keys.every((k) => k.startsWith('base_model.model.')) ? 'base_model.model.' : '';
}

/**
 * Load a LoRA adapter from `dir` onto `model`: a CausalLM gets wrapped (returns a new PeftModel),
 * a PeftModel gets an additional adapter (returned as is; activate it with setAdapter()).
 */
export async function loadLoraAdapter(model: CausalLM | PeftModel, dir: string, opts: LoadAdapterOptions = {}): Promise<PeftModel> {
  const file = path.join(dir, ADAPTER_WEIGHTS_NAME);
  const cfg0 = readLoraConfig(dir);
  if (!fs.existsSync(file)) throw new Error(`loadAdapter: ${file} does not exist (only safetensors adapters are supported)`);
  const adapterName = opts.adapterName ?? 'default';
  const cfg: ResolvedLoraConfig = {
    ...cfg0, adapterName,
    // The file's weights replace the init; only inits that change the base weight must run.
    init: cfg0.init === 'pissa' || cfg0.init === 'olora' ? cfg0.init : 'none',
  };
  let peft: PeftModel;
  let created = false;
  if (model instanceof PeftModel) {
    if (!(model.tuner instanceof LoraModel)) throw new Error(`loadAdapter: the model holds ${model.peftType} adapters, this one is LORA`);
    model.tuner.injectAdapter(cfg);
    peft = model;
  } else {
    peft = new PeftModel(new LoraModel(model, cfg));
    created = true;
  }
  const tuner = peft.tuner as LoraModel;
  tuner.peftConfig.set(adapterName, { ...cfg0, adapterName });  // keep the file's init for re-saving
  const loaded = loadSafetensors(file);
  try {
    const pre = prefixOf([...loaded.keys()]);
    const rel = new Map<string, Tensor>();
    for (const [k, t] of loaded) rel.set(k.slice(pre.length), t);
    const { missing, unexpected } = tuner.loadAdapterStateDict(adapterName, rel);
    if (missing.length || unexpected.length) {
      const msg = `loadAdapter: ${file}: ` +
        (missing.length ? `missing adapter tensors ${missing.slice(0, 6).map((m) => `'${m}'`).join(', ')}${missing.length > 6 ? ` and ${missing.length - 6} more` : ''}` : '') +
        (missing.length && unexpected.length ? '; ' : '') +
        (unexpected.length ? `unexpected tensors ${unexpected.slice(0, 6).map((m) => `'${m}'`).join(', ')}${unexpected.length > 6 ? ` and ${unexpected.length - 6} more` : ''}` : '');
      if (opts.strict) throw new Error(msg);
      console.warn(msg);
    }
  } catch (e) {
    if (created) tuner.unload();
    else if (tuner.peftConfig.has(adapterName) && adapterName !== tuner.activeAdapter) tuner.deleteAdapter(adapterName);
    throw e;
  } finally {
    for (const t of loaded.values()) t.dispose();
  }
  if (!opts.isTrainable) {
    // inference mode (PEFT's _freeze_adapter): the adapter's tensors do not train
    for (const [, l] of tuner.loraLayers()) for (const [, , t] of l.adapterTensors(adapterName)) t.requiresGrad_(false);
    for (const [, w] of tuner.wrappers()) for (const [, t] of w.adapterState(adapterName)) if (t.requiresGrad) t.requiresGrad_(false);
    if (cfg.bias !== 'none') for (const [n, t] of tuner.model.namedParameters()) if (n.includes('bias') && t.requiresGrad) t.requiresGrad_(false);
  }
  return peft;
}
