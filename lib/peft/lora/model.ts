/**
 * lora/model.ts — LoraModel (PEFT's LoraModel: injects LoRA layers into a model) and wrapWithLora.
 *
 * Target selection follows PEFT 0.21 (check_target_module_exists) on the module's dotted path
 * relative to the model ('model.layers.0.self_attn.q_proj'):
 *   - a list: the path equals an entry or ends with '.' + entry; then layersToTransform keeps
 *     only paths whose layer index (`.<layersPattern>.<idx>.`) is listed;
 *   - a string / RegExp: it must match the whole path (layersToTransform is ignored, as in PEFT);
 *   - 'all-linear': every Linear / Conv1D / Linear4bit (QLoRA) except the output head (lm_head);
 *   - excludeModules removes matches; rankPattern / alphaPattern keys are regexes matched against
 *     the end of the path at a dot boundary (PEFT's get_pattern_key).
 * Only adapter parameters train (names containing 'lora_'), plus biases per `bias` and the
 * modules_to_save copies.
 */
import type { CausalLM } from '../../models/base';
import { Conv1D, Embedding } from '../../models/layers';
import { Linear } from '../../nn/linear';
import { Module } from '../../nn/module';
import { Linear4bit } from '../../quant/linear4bit';
import { isFloat } from '../../tensor/dtype';
import { Tensor } from '../../tensor/tensor';
import { JsonObject } from '../config';
import { PeftModel, PeftTuner } from '../peft_model';
import { BaseTuner } from '../tuner';
import { LoraConfig, loraConfigToJson, LORA_FLOAT_KEYS, resolveLoraConfig, ResolvedLoraConfig } from './config';
import { LoraEmbedding } from './embedding';
import { LoraLayer, LoraLinear, nextInitSeed } from './layer';

/** PEFT's default LoRA targets per model_type (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING). */
export const DEFAULT_LORA_TARGETS: Record<string, string[]> = {
  llama: ['q_proj', 'v_proj'], mistral: ['q_proj', 'v_proj'], mixtral: ['q_proj', 'v_proj'],
  qwen2: ['q_proj', 'v_proj'], qwen3: ['q_proj', 'v_proj'], gemma: ['q_proj', 'v_proj'],
  gemma2: ['q_proj', 'v_proj'], gemma3_text: ['q_proj', 'v_proj'], phi3: ['qkv_proj'], gpt2: ['c_attn'],
};

/** Does the module at `key` match the config's targets (PEFT's check_target_module_exists)? */
export function isTargetModule(cfg: Pick<ResolvedLoraConfig, 'targetModules' | 'excludeModules' | 'layersToTransform' | 'layersPattern'>, key: string): boolean {
  const ex = cfg.excludeModules;
  if (ex !== null && ex !== undefined && (typeof ex === 'string' ? ex.length > 0 : ex.length > 0)) {
    if (typeof ex === 'string') { if (fullMatch(ex, key)) return false; }
    else if (ex.includes(key) || ex.some((e) => key.endsWith(`.${e}`))) return false;
  }
  const tm = cfg.targetModules;
  if (tm === null) return false;
  if (typeof tm === 'string') return fullMatch(tm, key);
  if (tm.includes(key)) return true;
  let found = tm.some((t) => key.endsWith(`.${t}`));
  const idx = cfg.layersToTransform;
  const using = idx !== null && idx !== undefined && (Array.isArray(idx) ? idx.length !== 0 : true);
  if (using && found) {
    let m: RegExpMatchArray | null = null;
    const lp = cfg.layersPattern;
    if (lp === null || lp === undefined || lp.length === 0) {
      m = key.match(/^.*\.[^.]*\.(\d+)\./);
    } else {
      for (const p of typeof lp === 'string' ? [lp] : lp) {
        m = key.match(new RegExp(`^.*\\.${p}\\.(\\d+)\\.`));
        if (m) break;
      }
    }
    if (!m) found = false;
    else {
      const li = Number(m[1]);
      found = Array.isArray(idx) ? idx.includes(li) : li === idx;
    }
  }
  return found;
}

function fullMatch(pattern: string, key: string): boolean {
  return new RegExp(`^(?:${pattern})$`).test(key);
}

/** PEFT's get_pattern_key: the first pattern key matching the end of `key` at a dot boundary. */
export function patternKey(keys: string[], key: string): string {
  for (const k of keys) if (new RegExp(`^(?:.*\\.)?(?:${k})$`).test(key)) return k;
  return key;
}

/** Layers LoraLinear adapts: nn.Linear, GPT-2 Conv1D and 4-bit Linear4bit (QLoRA). */
export function isLinearLike(m: Module): boolean { return m instanceof Linear || m instanceof Conv1D || m instanceof Linear4bit; }

export class LoraModel extends BaseTuner<ResolvedLoraConfig> implements PeftTuner {
  readonly peftType = 'LORA';
  private adaptersEnabled = true;

  constructor(model: CausalLM, config: ResolvedLoraConfig) {
    super(model, config.adapterName);
    this.injectAdapter(config);
  }

  protected isAdapterLayer(m: Module): boolean { return m instanceof LoraLayer; }

  /** Every LoRA layer with its path relative to the model. */
  loraLayers(): [string, LoraLayer][] {
    return this.model.namedModules().filter(([, m]) => m instanceof LoraLayer) as [string, LoraLayer][];
  }

  /** Add an adapter described by `cfg` (PEFT's inject_adapter). */
  injectAdapter(cfgIn: ResolvedLoraConfig): void {
    const cfg: ResolvedLoraConfig = { ...cfgIn };
    const name = cfg.adapterName;
    if (this.peftConfig.has(name)) throw new Error(`wrapWithLora: an adapter named '${name}' already exists`);
    if (this.peftConfig.size > 0 && cfg.bias !== 'none') {
      throw new Error("LoraModel supports only 1 adapter with bias. When using multiple adapters, set bias to 'none' for all adapters.");
    }
    const modelType = this.model.config?.modelType;
    if (cfg.targetModules === null) {
      const d = DEFAULT_LORA_TARGETS[modelType ?? ''];
      if (!d) throw new Error(`wrapWithLora: please specify targetModules (no default for model_type '${modelType}')`);
      cfg.targetModules = [...d];
    }
    if (typeof cfg.targetModules === 'string' && cfg.targetModules.toLowerCase() === 'all-linear') {
      const names: string[] = [];
      for (const [k, m] of this.candidateKeys()) {
        if (k === 'lm_head') continue;  // the output head (PEFT: model.get_output_embeddings())
        if (isLinearLike(m) || m instanceof LoraLinear) names.push(k);
      }
      cfg.targetModules = names;
    }
    const rKeys = Object.keys(cfg.rankPattern), aKeys = Object.keys(cfg.alphaPattern);
    const seed0 = cfg.seed ?? nextInitSeed();
    let matched = 0, idx = 0;
    const isFirst = this.peftConfig.size === 0;
    this.peftConfig.set(name, cfg);
    try {
      for (const [key, m] of this.candidateKeys()) {
        if (!isTargetModule(cfg, key)) continue;
        const rk = patternKey(rKeys, key), ak = patternKey(aKeys, key);
        const opts = {
          r: cfg.rankPattern[rk] ?? cfg.r,
          alpha: cfg.alphaPattern[ak] ?? cfg.alpha,
          dropout: cfg.dropout, init: cfg.init, useRslora: cfg.useRslora, useDora: cfg.useDora, loraBias: cfg.loraBias,
          seed: (seed0 + 1000003 * idx++) % 2 ** 52,
        };
        if (m instanceof LoraLayer) {
          m.updateLayer(name, opts);
          m.setAdapter(m.activeAdapters);
        } else {
          let layer: LoraLayer;
          if (isLinearLike(m)) {
            // PEFT sets fan_in_fan_out = True in the config when it meets a Conv1D (saved that way)
            if (m instanceof Conv1D) cfg.fanInFanOut = true;
            layer = new LoraLinear(m, cfg.fanInFanOut);
          }
          else if (m instanceof Embedding) layer = new LoraEmbedding(m);
          else {
            throw new Error(`wrapWithLora: target module '${key}' (${m.constructor.name}) is not supported. Currently, only ` +
              'Linear, Linear4bit, Embedding and GPT-2 Conv1D modules can be adapted.');
          }
          layer.training = m.training;
          layer.updateLayer(name, opts);
          layer.activeAdapters = [this.activeAdapter];
          const [parent, child] = this.parentOf(key);
          parent.registerModule(child, layer);
          if (name !== this.activeAdapter) for (const [, , t] of layer.adapterTensors(name)) t.requiresGrad_(false);
        }
        matched++;
      }
      if (matched === 0) throw this.targetsNotFound('wrapWithLora', cfg.targetModules);
      this.wrapModulesToSave(name, cfg.modulesToSave ?? [], 'wrapWithLora', 'a LoRA target');
    } catch (e) {
      this.peftConfig.delete(name);
      throw e;
    }
    if (isFirst) this.markOnlyAdaptersAsTrainable();
    for (const [, w] of this.wrappers()) w.setAdapter(this.activeAdapter);
  }

  /** PEFT's _mark_only_adapters_as_trainable. */
  markOnlyAdaptersAsTrainable(): void {
    for (const [n, t] of this.model.namedParameters()) if (!n.includes('lora_') && isFloat(t.dtype)) t.requiresGrad_(false);
    const bias = this.peftConfig.get(this.activeAdapter)?.bias ?? 'none';
    if (bias === 'all') {
      for (const [n, t] of this.model.namedParameters()) if (n.includes('bias') && isFloat(t.dtype)) t.requiresGrad_(true);
    } else if (bias === 'lora_only') {
      for (const [, l] of this.loraLayers()) { const b = l.bias; if (b && isFloat(b.dtype)) b.requiresGrad_(true); }
    }
    for (const [, l] of this.loraLayers()) l.setAdapter(l.activeAdapters);
  }

  setAdapter(name: string): void {
    if (!this.peftConfig.has(name)) throw new Error(`setAdapter: no adapter named '${name}'`);
    for (const [, l] of this.loraLayers()) {
      if (l.merged) { console.warn('Adapter cannot be set when the model is merged. Unmerging the model first.'); l.unmerge(); }
      l.setAdapter(name);
    }
    for (const [, w] of this.wrappers()) w.setAdapter(name);
    this.activeAdapter = name;
  }

  setAdaptersEnabled(on: boolean): void {
    this.adaptersEnabled = on;
    for (const [, l] of this.loraLayers()) l.disabled = !on;
    for (const [, w] of this.wrappers()) w.disabled = !on;
  }
  get adaptersDisabled(): boolean { return !this.adaptersEnabled; }

  // ---- merging (see merge.ts) ----
  merge(adapterNames?: string[]): void {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    (require('./merge') as typeof import('./merge')).mergeAdapter(this, adapterNames);
  }
  unmerge(): void {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    (require('./merge') as typeof import('./merge')).unmergeAdapter(this);
  }
  mergeAndUnload(): CausalLM {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    return (require('./merge') as typeof import('./merge')).unloadLora(this, true);
  }
  unload(): CausalLM {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    return (require('./merge') as typeof import('./merge')).unloadLora(this, false);
  }

  deleteAdapter(name: string): void {
    if (!this.peftConfig.has(name)) throw new Error(`deleteAdapter: no adapter named '${name}'`);
    if (name === this.activeAdapter) throw new Error(`deleteAdapter: '${name}' is the active adapter; setAdapter() to another first`);
    for (const [, l] of this.loraLayers()) l.deleteAdapter(name);
    for (const [, w] of this.wrappers()) w.deleteAdapter(name);
    this.peftConfig.delete(name);
  }

  // ---- save / load (file names relative to the model) ----

  /** PEFT's get_peft_model_state_dict for one adapter (before the 'base_model.model.' prefix). */
  adapterStateDict(name: string): Map<string, Tensor> {
    const cfg = this.peftConfig.get(name);
    if (!cfg) throw new Error(`saveAdapter: no adapter named '${name}'`);
    const out = new Map<string, Tensor>();
    for (const [p, l] of this.loraLayers()) for (const [, fileName, t] of l.adapterTensors(name)) out.set(`${p}.${fileName}`, t);
    if (cfg.bias === 'all') {
      for (const [n, t] of this.model.namedParameters()) {
        if (!n.includes('bias') || n.includes('lora_') || n.includes('.modules_to_save.') || n.includes('.original_module.')) continue;
        out.set(n, t);
      }
    }
    // cfg.bias === 'lora_only': PEFT looks for '<module>.bias', which a LoRA layer does not have
    // (its bias is '<module>.base_layer.bias'), so nothing is added — same files as PEFT.
    for (const [p, w] of this.wrappers()) for (const [k, t] of w.adapterState(name)) out.set(`${p}.${k}`, t);
    return out;
  }

  adapterConfigJson(name: string): { json: JsonObject; floatKeys: string[] } {
    const cfg = this.peftConfig.get(name);
    if (!cfg) throw new Error(`saveAdapter: no adapter named '${name}'`);
    return { json: loraConfigToJson(cfg), floatKeys: LORA_FLOAT_KEYS };
  }

  loadAdapterStateDict(name: string, tensors: Map<string, Tensor>): { missing: string[]; unexpected: string[] } {
    const targets = this.adapterStateDict(name);
    const unexpected: string[] = [];
    for (const [k, src] of tensors) {
      const dst = targets.get(k);
      if (!dst) { unexpected.push(k); continue; }
      if (dst.shape.join(',') !== src.shape.join(',')) {
        throw new Error(`loadAdapter: '${k}' has shape [${src.shape}] in the file but the model expects [${dst.shape}] (check r / rank_pattern)`);
      }
      // eslint-disable-next-line @typescript-eslint/no-var-requires
      (require('../../native') as typeof import('../../native')).native.copy_(dst.native, src.native);
    }
    const missing = [...targets.keys()].filter((k) => !tensors.has(k));
    return { missing, unexpected };
  }

  /** Free every tensor. */
  override dispose(): void { super.dispose(); }
}

/** Options of wrapWithLora: a LoraConfig. */
export type WrapWithLoraOptions = LoraConfig;

/**
 * Add a LoRA adapter to `model` (PEFT's get_peft_model): matching layers are replaced in place by
 * LoRA layers, the base model is frozen, and a PeftModel is returned.
 */
export function wrapWithLora(model: CausalLM, config: LoraConfig = {}): PeftModel {
  if (!(model instanceof Module)) throw new TypeError('wrapWithLora: model must be a peftkit model (from loadModel)');
  if (model instanceof PeftModel) throw new TypeError('wrapWithLora: the model already has adapters; use addLoraAdapter(peftModel, config)');
  const cfg = resolveLoraConfig(config);
  if (cfg.baseModelNameOrPath === null) {
    // PEFT records the base model's name_or_path; use the loader's if it kept one.
    const src = (model as unknown as { nameOrPath?: unknown }).nameOrPath ?? (model.config as unknown as { nameOrPath?: unknown })?.nameOrPath;
    if (typeof src === 'string') cfg.baseModelNameOrPath = src;
  }
  return new PeftModel(new LoraModel(model, cfg));
}

/** Add another LoRA adapter to a PeftModel (PEFT's add_adapter); it is not active until setAdapter(). */
export function addLoraAdapter(peft: PeftModel, config: LoraConfig & { adapterName: string }): void {
  const tuner = peft.tuner;
  if (!(tuner instanceof LoraModel)) throw new TypeError('addLoraAdapter: the model does not hold LoRA adapters');
  tuner.injectAdapter(resolveLoraConfig(config));
}

export type { ResolvedLoraConfig };
