/**
 * ia3/load.ts — reading PEFT (IA)³ adapters (PEFT's PeftModel.from_pretrained / load_adapter).
 *
 * The config is read from adapter_config.json (unknown keys ignored), IA3 layers are injected with
 * it, then the file's tensors are copied in: 'base_model.model.<module>.ia3_l' →
 * '<module>.ia3_l.<adapter>', modules_to_save copies likewise.
 */
import * as fs from 'fs';
import * as path from 'path';
import { loadSafetensors } from '../../io/safetensors';
import type { CausalLM } from '../../models/base';
import { Tensor } from '../../tensor/tensor';
import { ADAPTER_WEIGHTS_NAME, readAdapterConfig } from '../config';
import type { LoadAdapterOptions } from '../lora/load';
import { PeftModel } from '../peft_model';
import { ia3ConfigFromJson, ResolvedIa3Config } from './config';
import { Ia3Model } from './model';

/** Read an IA3 adapter folder's config (PEFT keys → Ia3Config fields). */
export function readIa3Config(dir: string): ResolvedIa3Config {
  return ia3ConfigFromJson(readAdapterConfig(dir));
}

/** Report (or throw, with `strict`) tensors the file lacks or the model does not know. */
export function reportMismatch(file: string, missing: string[], unexpected: string[], strict: boolean | undefined): void {
  if (!missing.length && !unexpected.length) return;
  const list = (a: string[]) => a.slice(0, 6).map((m) => `'${m}'`).join(', ') + (a.length > 6 ? ` and ${a.length - 6} more` : '');
  const msg = `loadAdapter: ${file}: ` +
    (missing.length ? `missing adapter tensors ${list(missing)}` : '') +
    (missing.length && unexpected.length ? '; ' : '') +
    (unexpected.length ? `unexpected tensors ${list(unexpected)}` : '');
  if (strict) throw new Error(msg);
  console.warn(msg);
}

/**
 * Load an (IA)³ adapter from `dir` onto `model`: a CausalLM gets wrapped (returns a new
 * PeftModel), a PeftModel holding IA3 adapters gets one more (activate it with setAdapter()).
 */
export async function loadIa3Adapter(model: CausalLM | PeftModel, dir: string, opts: LoadAdapterOptions = {}): Promise<PeftModel> {
  const file = path.join(dir, ADAPTER_WEIGHTS_NAME);
  const cfg0 = readIa3Config(dir);
  if (!fs.existsSync(file)) throw new Error(`loadAdapter: ${file} does not exist (only safetensors adapters are supported)`);
  const adapterName = opts.adapterName ?? 'default';
  const cfg: ResolvedIa3Config = { ...cfg0, adapterName };
  let peft: PeftModel;
  let created = false;
  if (model instanceof PeftModel) {
    if (!(model.tuner instanceof Ia3Model)) throw new Error(`loadAdapter: the model holds ${model.peftType} adapters, this one is IA3`);
    model.tuner.injectAdapter(cfg);
    peft = model;
  } else {
    peft = new PeftModel(new Ia3Model(model, cfg));
    created = true;
  }
  const tuner = peft.tuner as Ia3Model;
  const loaded = loadSafetensors(file);
  try {
    const keys = [...loaded.keys()];
    const pre = keys.length && keys.every((k) => k.startsWith('base_model.model.')) ? 'base_model.model.' : '';
    const rel = new Map<string, Tensor>();
    for (const [k, t] of loaded) rel.set(k.slice(pre.length), t);
    const { missing, unexpected } = tuner.loadAdapterStateDict(adapterName, rel);
    reportMismatch(file, missing, unexpected, opts.strict);
  } catch (e) {
    if (created) tuner.unload();
    else if (tuner.peftConfig.has(adapterName) && adapterName !== tuner.activeAdapter) tuner.deleteAdapter(adapterName);
    throw e;
  } finally {
    for (const t of loaded.values()) t.dispose();
  }
  if (!opts.isTrainable) {
    // inference mode (PEFT's _freeze_adapter)
    for (const [, l] of tuner.ia3Layers()) if (l.hasAdapter(adapterName)) l.vector(adapterName).requiresGrad_(false);
    for (const [, w] of tuner.wrappers()) for (const [, t] of w.adapterState(adapterName)) if (t.requiresGrad) t.requiresGrad_(false);
  }
  return peft;
}
