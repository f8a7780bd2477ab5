/**
 * ia3/model.ts — IA3Model (PEFT's IA3Model: injects (IA)³ layers into a model), wrapWithIa3,
 * merge / unmerge / mergeAndUnload / unload.
 *
 * Target selection is PEFT 0.21's check_target_module_exists (as for LoRA: a list matches a path
 * equal to an entry or ending with '.' + entry; a string / RegExp must match the whole path;
 * excludeModules removes matches). A target is a feed-forward module when its path ends with an
 * entry of feedforwardModules (plain suffix, as PEFT's `current_key.endswith(target_key)`), or
 * fully matches it when it is a regex. Only `ia3_` parameters train, plus modules_to_save copies.
 */
import type { CausalLM } from '../../models/base';
import { Conv1D } from '../../models/layers';
import { Linear } from '../../nn/linear';
import { Module } from '../../nn/module';
import { isFloat } from '../../tensor/dtype';
import { Tensor } from '../../tensor/tensor';
import { JsonObject } from '../config';
import { isLinearLike, isTargetModule } from '../lora/model';
import { nextInitSeed } from '../lora/layer';
import { PeftModel, PeftTuner } from '../peft_model';
import { BaseTuner } from '../tuner';
import { Ia3Config, ia3ConfigToJson, resolveIa3Config, ResolvedIa3Config } from './config';
import { Ia3Linear } from './layer';

/** PEFT's TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING (the architectures peftkit loads). */
export const DEFAULT_IA3_TARGETS: Record<string, string[]> = {
  llama: ['k_proj', 'v_proj', 'down_proj'], mistral: ['k_proj', 'v_proj', 'down_proj'], mixtral: ['k_proj', 'v_proj', 'w2'],
  gemma: ['q_proj', 'v_proj', 'down_proj'], gemma2: ['q_proj', 'v_proj', 'down_proj'], gemma3_text: ['q_proj', 'v_proj', 'down_proj'],
  qwen2: ['q_proj', 'v_proj', 'down_proj'], qwen3: ['q_proj', 'v_proj', 'down_proj'], gpt2: ['c_attn', 'mlp.c_proj'],
};
/** PEFT's TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING. */
export const DEFAULT_IA3_FEEDFORWARD: Record<string, string[]> = {
  llama: ['down_proj'], mistral: ['down_proj'], mixtral: ['w2'], gemma: ['down_proj'], gemma2: ['down_proj'],
  gemma3_text: ['down_proj'], qwen2: ['down_proj'], qwen3: ['down_proj'], gpt2: ['mlp.c_proj'],
};

/** Is the module at `key` a feed-forward module of the config (PEFT's is_feedforward)? */
export function isFeedforwardModule(cfg: Pick<ResolvedIa3Config, 'feedforwardModules'>, key: string): boolean {
  const ff = cfg.feedforwardModules;
  if (ff === null) return false;
  if (typeof ff === 'string') return new RegExp(`^(?:${ff})$`).test(key);
  return ff.some((f) => key.endsWith(f));
}

export class Ia3Model extends BaseTuner<ResolvedIa3Config> implements PeftTuner {
  readonly peftType = 'IA3';

  constructor(model: CausalLM, config: ResolvedIa3Config) {
    super(model, config.adapterName);
    this.injectAdapter(config);
  }

  protected isAdapterLayer(m: Module): boolean { return m instanceof Ia3Linear; }

  /** Every (IA)³ layer with its path relative to the model. */
  ia3Layers(): [string, Ia3Linear][] {
    return this.model.namedModules().filter(([, m]) => m instanceof Ia3Linear) as [string, Ia3Linear][];
  }

  /** Add an adapter described by `cfg` (PEFT's inject_adapter with IA3Model's _create_and_replace). */
  injectAdapter(cfgIn: ResolvedIa3Config): void {
    const cfg: ResolvedIa3Config = { ...cfgIn };
    const name = cfg.adapterName;
    if (this.peftConfig.has(name)) throw new Error(`wrapWithIa3: an adapter named '${name}' already exists`);
    const modelType = this.model.config?.modelType ?? '';
    // PEFT's _prepare_adapter_config
    if (cfg.targetModules === null) {
      const d = DEFAULT_IA3_TARGETS[modelType];
      if (!d) throw new Error(`wrapWithIa3: please specify targetModules (no default for model_type '${modelType}')`);
      cfg.targetModules = [...d];
    }
    if (cfg.feedforwardModules === null) {
      const d = DEFAULT_IA3_FEEDFORWARD[modelType];
      if (!d) throw new Error(`wrapWithIa3: please specify feedforwardModules (no default for model_type '${modelType}')`);
      cfg.feedforwardModules = [...d];
    }
    const seed0 = cfg.seed ?? nextInitSeed();
    let matched = 0, idx = 0;
    const isFirst = this.peftConfig.size === 0;
    this.peftConfig.set(name, cfg);
    const spec = { targetModules: cfg.targetModules, excludeModules: cfg.excludeModules, layersToTransform: null, layersPattern: null };
    try {
      for (const [key, m] of this.candidateKeys()) {
        if (!isTargetModule(spec, key)) continue;
        const ff = isFeedforwardModule(cfg, key);
        const seed = (seed0 + 1000003 * idx++) % 2 ** 52;
        if (m instanceof Ia3Linear) {
          if (m.isFeedforward !== ff) throw new Error('New adapter should have the same value for `is_feedforward` as previously added adapter.');
          m.updateLayer(name, cfg.initIa3Weights, seed);
          if (name !== this.activeAdapter) m.vector(name).requiresGrad_(false);
        } else {
          if (!isLinearLike(m)) {
            throw new Error(`wrapWithIa3: target module '${key}' (${m.constructor.name}) is not supported. Currently, only ` +
              'Linear, Linear4bit and GPT-2 Conv1D modules can be adapted.');
          }
          if (m instanceof Conv1D) cfg.fanInFanOut = true;  // PEFT sets it in the config (saved that way)
          else if (m instanceof Linear && cfg.fanInFanOut) cfg.fanInFanOut = false;  // PEFT: 'Setting fan_in_fan_out to False'
          const layer = new Ia3Linear(m, ff, cfg.fanInFanOut);
          layer.training = m.training;
          layer.updateLayer(name, cfg.initIa3Weights, seed);
          layer.setAdapter([this.activeAdapter]);
          if (name !== this.activeAdapter) layer.vector(name).requiresGrad_(false);
          const [parent, child] = this.parentOf(key);
          parent.registerModule(child, layer);
        }
        matched++;
      }
      if (matched === 0) throw this.targetsNotFound('wrapWithIa3', cfg.targetModules);
      this.wrapModulesToSave(name, cfg.modulesToSave ?? [], 'wrapWithIa3', 'an IA3 target');
    } catch (e) {
      this.peftConfig.delete(name);
      throw e;
    }
    if (isFirst) this.markOnlyAdaptersAsTrainable();
    for (const [, w] of this.wrappers()) w.setAdapter(this.activeAdapter);
  }

  /** PEFT's _mark_only_adapters_as_trainable: everything without 'ia3_' in its name is frozen. */
  markOnlyAdaptersAsTrainable(): void {
    for (const [n, t] of this.model.namedParameters()) if (!n.includes('ia3_') && isFloat(t.dtype)) t.requiresGrad_(false);
    for (const [, l] of this.ia3Layers()) l.setAdapter(l.activeAdapters);
  }

  setAdapter(name: string): void {
    if (!this.peftConfig.has(name)) throw new Error(`setAdapter: no adapter named '${name}'`);
    for (const [, l] of this.ia3Layers()) {
      if (l.merged) { console.warn('Adapter cannot be set when the model is merged. Unmerging the model first.'); l.unmerge(); }
      l.setAdapter(name);
    }
    for (const [, w] of this.wrappers()) w.setAdapter(name);
    this.activeAdapter = name;
  }

  setAdaptersEnabled(on: boolean): void {
    for (const [, l] of this.ia3Layers()) l.disabled = !on;
    for (const [, w] of this.wrappers()) w.disabled = !on;
  }

  // ---- merging ----
  private checkMergeable(): void {
    for (const [k, l] of this.ia3Layers()) {
      const q = l.quantizedBase;
      if (q) throw new Error(`IA3: cannot merge into '${k}': its base weight is 4-bit (${q.quantType}). Load the base model in f32/bf16 to merge.`);
    }
  }
  /** Merge `adapterNames` (default: the active adapter) into the base weights. */
  merge(adapterNames?: string[]): void {
    for (const n of adapterNames ?? []) if (!this.peftConfig.has(n)) throw new Error(`merge: no adapter named '${n}'`);
    this.checkMergeable();
    for (const [, l] of this.ia3Layers()) l.merge(adapterNames);
  }
  /** Undo every merge (division by the vector + 1e-8, as PEFT; can be inexact). */
  unmerge(): void {
    for (const [, l] of this.ia3Layers()) if (l.merged) l.unmerge();
  }
  mergeAndUnload(): CausalLM { return this.unloadLayers(true); }
  unload(): CausalLM { return this.unloadLayers(false); }

  private unloadLayers(merge: boolean): CausalLM {
    if (merge) this.checkMergeable();
    const inner = this.model;
    const replace = (key: string, m: Module) => {
      const [parent, child] = this.parentOf(key);
      parent.registerModule(child, m);
    };
    for (const [key, l] of this.ia3Layers()) {
      if (merge) l.merge();
      else if (l.merged) l.unmerge();
      const base = l.baseLayer;
      for (const n of l.allAdapters()) l.deleteAdapter(n);
      replace(key, base);
    }
    for (const [key, w] of this.wrappers()) {
      const chosen = w.activeAdapter !== null ? w.activeModule() : w.originalModule;
      for (const [, c] of w.copies.namedChildren()) if (c !== chosen) c.dispose();
      replace(key, chosen);
    }
    this.peftConfig.clear();
    return inner;
  }

  deleteAdapter(name: string): void {
    if (!this.peftConfig.has(name)) throw new Error(`deleteAdapter: no adapter named '${name}'`);
    if (name === this.activeAdapter) throw new Error(`deleteAdapter: '${name}' is the active adapter; setAdapter() to another first`);
    for (const [, l] of this.ia3Layers()) l.deleteAdapter(name);
    for (const [, w] of this.wrappers()) w.deleteAdapter(name);
    this.peftConfig.delete(name);
  }

  // ---- save / load (file names relative to the model) ----

  /** PEFT's get_peft_model_state_dict for one adapter: '<module>.ia3_l' and modules_to_save copies. */
  adapterStateDict(name: string): Map<string, Tensor> {
    if (!this.peftConfig.has(name)) throw new Error(`saveAdapter: no adapter named '${name}'`);
    const out = new Map<string, Tensor>();
    for (const [p, l] of this.ia3Layers()) if (l.hasAdapter(name)) out.set(`${p}.ia3_l`, l.vector(name));
    for (const [p, w] of this.wrappers()) for (const [k, t] of w.adapterState(name)) out.set(`${p}.${k}`, t);
    return out;
  }

  adapterConfigJson(name: string): { json: JsonObject; floatKeys: string[] } {
    const cfg = this.peftConfig.get(name);
    if (!cfg) throw new Error(`saveAdapter: no adapter named '${name}'`);
    return { json: ia3ConfigToJson(cfg), floatKeys: [] };
  }

  loadAdapterStateDict(name: string, tensors: Map<string, Tensor>): { missing: string[]; unexpected: string[] } {
    const targets = this.adapterStateDict(name);
    const unexpected: string[] = [];
    for (const [k, src] of tensors) {
      const dst = targets.get(k);
      if (!dst) { unexpected.push(k); continue; }
      if (dst.shape.join(',') !== src.shape.join(',')) {
        throw new Error(`loadAdapter: '${k}' has shape [${src.shape}] in the file but the model expects [${dst.shape}] (check feedforward_modules)`);
      }
      // eslint-disable-next-line @typescript-eslint/no-var-requires
      (require('../../native') as typeof import('../../native')).native.copy_(dst.native, src.native);
    }
    const missing = [...targets.keys()].filter((k) => !tensors.has(k));
    return { missing, unexpected };
  }
}

/** Options of wrapWithIa3: an Ia3Config. */
export type WrapWithIa3Options = Ia3Config;

/**
 * Add an (IA)³ adapter to `model` (PEFT's get_peft_model with an IA3Config): matching layers are
 * replaced in place by IA3 layers, the base model is frozen, and a PeftModel is returned.
 */
export function wrapWithIa3(model: CausalLM, config: Ia3Config = {}): PeftModel {
  if (!(model instanceof Module)) throw new TypeError('wrapWithIa3: model must be a peftkit model (from loadModel)');
  if (model instanceof PeftModel) throw new TypeError('wrapWithIa3: the model already has adapters; use addIa3Adapter(peftModel, config)');
  const cfg = resolveIa3Config(config);
  if (cfg.baseModelNameOrPath === null) {
    const src = (model as unknown as { nameOrPath?: unknown }).nameOrPath ?? (model.config as unknown as { nameOrPath?: unknown })?.nameOrPath;
    if (typeof src === 'string') cfg.baseModelNameOrPath = src;
  }
  return new PeftModel(new Ia3Model(model, cfg));
}

/** Add another (IA)³ adapter to a PeftModel (PEFT's add_adapter); it is not active until setAdapter(). */
export function addIa3Adapter(peft: PeftModel, config: Ia3Config & { adapterName: string }): void {
  const tuner = peft.tuner;
  if (!(tuner instanceof Ia3Model)) throw new TypeError('addIa3Adapter: the model does not hold IA3 adapters');
  tuner.injectAdapter(resolveIa3Config(config));
}
