/**
 * peft_model.ts — PeftModel: a causal LM with adapters, as PEFT's PeftModelForCausalLM.
 *
 *   PeftModel
 *     base_model: the method's tuner (LoraModel, ...)
 *       model: the original CausalLM, with adapted modules replaced in place
 *
 * so `namedParameters()` gives PEFT's in-memory names ('base_model.model.model.layers.0.self_attn.
 * q_proj.lora_A.default.weight'). The base model is frozen; forward/generate pass through.
 *
 * Also here, shared by every method: ModulesToSaveWrapper (PEFT's modules_to_save: a trainable
 * copy of a whole module next to the frozen original) and the tuner interface a method implements.
 */
import * as fs from 'fs';
import * as path from 'path';
import { saveSafetensors } from '../io/safetensors';
import type { CausalLM, ForwardInput, ForwardOutput, TokenInput } from '../models/base';
import type { GenerateOptions, StreamEvent } from '../models/generate';
import { native } from '../native';
import { Module } from '../nn/module';
import { Linear4bit } from '../quant/linear4bit';
import { isFloat } from '../tensor/dtype';
import type { DType } from '../tensor/dtype';
import { Tensor } from '../tensor/tensor';
import { ADAPTER_WEIGHTS_NAME, JsonObject, writeAdapterConfig } from './config';

/** What a PEFT method's model (PEFT's BaseTuner) provides to PeftModel. */
export interface PeftTuner extends Module {
  /** PEFT's peft_type ('LORA', ...). */
  readonly peftType: string;
  /** The wrapped causal LM. */
  readonly model: CausalLM;
  /** Name of the active adapter. */
  readonly activeAdapter: string;
  /** Every adapter's name, in insertion order. */
  adapterNames(): string[];
  /** Make `name` the active adapter (its parameters train; the others are frozen). */
  setAdapter(name: string): void;
  /** Enable (true) or disable (false) every adapter layer: disabled layers compute the base model. */
  setAdaptersEnabled(on: boolean): void;
  /** Tensors to save for adapter `name`, keyed by file name relative to the model (no 'base_model.model.' prefix). */
  adapterStateDict(name: string): Map<string, Tensor>;
  /** adapter_config.json for `name` (exactly PEFT's keys) and the keys Python holds as floats. */
  adapterConfigJson(name: string): { json: JsonObject; floatKeys: string[] };
  /** Load file tensors (keys as adapterStateDict's) into adapter `name`. */
  loadAdapterStateDict(name: string, tensors: Map<string, Tensor>): { missing: string[]; unexpected: string[] };
  merge?(adapterNames?: string[]): void;
  unmerge?(): void;
  mergeAndUnload?(): CausalLM;
  unload?(): CausalLM;
  deleteAdapter?(name: string): void;
  /**
   * Prompt-learning methods (prompt / prefix tuning), as PEFT's PeftModel holds them: the base
   * model is PeftModel's `base_model` itself and this module is PeftModel's `prompt_encoder`
   * (names 'base_model.model.layers...' and 'prompt_encoder.<adapter>.embedding.weight').
   */
  readonly promptEncoder?: Module;
  /** Prefix of the file's tensor names (default 'base_model.model.'; '' for prompt learning: 'prompt_embeddings'). */
  readonly fileKeyPrefix?: string;
  /** PeftModel's forward / generate / stream when the method changes them (prompt learning); default: the model's. */
  peftForward?(input: ForwardInput): ForwardOutput;
  peftGenerate?(inputIds: TokenInput, opts: GenerateOptions): Promise<number[][]>;
  peftStream?(inputIds: TokenInput, opts: GenerateOptions): AsyncGenerator<StreamEvent>;
}

/** A parameter with its name. */
export type NamedTensor = [string, Tensor];

/** Options of PeftModel.saveAdapter. */
export interface SaveAdapterOptions {
  /** Which adapters (default: all). 'default' goes to `dir`, any other to `dir/<name>` (PEFT's layout). */
  selectedAdapters?: string[];
  /** Convert floating tensors to this dtype when writing (default: as they are — f32 adapters). */
  dtype?: DType;
}

export class PeftModel extends Module {
  /** The tuner of a prompt-learning method (not a child module: see PeftTuner.promptEncoder). */
  private readonly promptTuner: PeftTuner | null = null;

  constructor(tuner: PeftTuner) {
    super();
    if (tuner.promptEncoder) {
      // PEFT's layout for prompt learning: base_model = the transformers model, prompt_encoder = ModuleDict
      this.promptTuner = tuner;
      this.registerModule('base_model', tuner.model);
      this.registerModule('prompt_encoder', tuner.promptEncoder);
    } else {
      this.registerModule('base_model', tuner);
    }
  }

  /** The method's model (PEFT's `base_model`: LoraModel, ...; the prompt-learning tuner for prompt / prefix tuning). */
  get tuner(): PeftTuner { return this.promptTuner ?? this.getSubmodule('base_model') as unknown as PeftTuner; }
  /** The wrapped causal LM (PEFT's `get_base_model()`). */
  get model(): CausalLM { return this.tuner.model; }
  getBaseModel(): CausalLM { return this.tuner.model; }
  get peftType(): string { return this.tuner.peftType; }
  get activeAdapter(): string { return this.tuner.activeAdapter; }
  get adapters(): string[] { return this.tuner.adapterNames(); }

  /** The model's forward (logits, and the loss when labels are given). */
  forward(input: ForwardInput): ForwardOutput {
    const t = this.tuner;
    return t.peftForward ? t.peftForward(input) : this.model.forward(input);
  }
  /** The model's generate (adapters active). */
  generate(inputIds: TokenInput, opts: GenerateOptions = {}): Promise<number[][]> {
    const t = this.tuner;
    return t.peftGenerate ? t.peftGenerate(inputIds, opts) : this.model.generate(inputIds, opts);
  }
  stream(inputIds: TokenInput, opts: GenerateOptions = {}): AsyncGenerator<StreamEvent> {
    const t = this.tuner;
    return t.peftStream ? t.peftStream(inputIds, opts) : this.model.stream(inputIds, opts);
  }

  /**
   * [trainable, all] parameter counts (shared tensors once, as PEFT's get_nb_trainable_parameters).
   * A 4-bit layer's packed u8 weight holds two parameters per byte and counts ×2, as PEFT counts
   * bitsandbytes' Params4bit (numel · 2 · element_size).
   */
  getNbTrainableParameters(): [number, number] {
    const packed4 = new Set<Tensor>();
    for (const [, m] of this.namedModules()) if (m instanceof Linear4bit) packed4.add(m.weight);
    let trainable = 0, all = 0;
    for (const [, t] of this.namedParameters()) {
      const n = packed4.has(t) ? t.numel * 2 : t.numel;
      all += n;
      if (t.requiresGrad) trainable += n;
    }
    return [trainable, all];
  }

  /**
   * Print (and return) PEFT's line, e.g.
   * `trainable params: 1,572,864 || all params: 1,101,620,224 || trainable%: 0.1428`.
   */
  printTrainableParameters(opts: { silent?: boolean } = {}): string {
    const [trainable, all] = this.getNbTrainableParameters();
    const line = formatTrainableParameters(trainable, all);
    if (!opts.silent) console.log(line);
    return line;
  }

  /** The trainable parameters with their names (pass to an optimizer; names enable LoRA+). */
  trainableParameters(): NamedTensor[] {
    return this.namedParameters().filter(([, t]) => t.requiresGrad);
  }

  /** Switch the active adapter. */
  setAdapter(name: string): void {
    if (!this.adapters.includes(name)) throw new Error(`setAdapter: no adapter named '${name}' (have ${this.adapters.map((a) => `'${a}'`).join(', ')})`);
    this.tuner.setAdapter(name);
  }

  /**
   * Run `fn` with every adapter disabled (the base model's outputs), re-enabling them afterwards
   * even if `fn` throws; `fn` may be async (adapters stay disabled until its promise settles).
   */
  disableAdapter<T>(fn: () => T): T {
    this.tuner.setAdaptersEnabled(false);
    let result: T;
    try {
      result = fn();
    } catch (e) {
      this.tuner.setAdaptersEnabled(true);
      throw e;
    }
    if (result && typeof (result as unknown as Promise<unknown>).then === 'function') {
      return (result as unknown as Promise<unknown>).finally(() => this.tuner.setAdaptersEnabled(true)) as unknown as T;
    }
    this.tuner.setAdaptersEnabled(true);
    return result;
  }

  /** Merge the active adapter into the base weights (forward then costs what the base model costs). */
  merge(adapterNames?: string[]): void { this.need('merge').call(this.tuner, adapterNames); }
  /** Undo merge(). */
  unmerge(): void { this.need('unmerge').call(this.tuner); }
  /**
   * Merge the active adapter and return the plain model with the adapter layers removed (the
   * PeftModel must not be used afterwards).
   */
  mergeAndUnload(): CausalLM { return this.need('mergeAndUnload').call(this.tuner); }
  /** Remove the adapter layers without merging: the original model back. */
  unload(): CausalLM { return this.need('unload').call(this.tuner); }
  /** Delete an adapter (not the active one). */
  deleteAdapter(name: string): void { this.need('deleteAdapter').call(this.tuner, name); }

  private need<K extends 'merge' | 'unmerge' | 'mergeAndUnload' | 'unload' | 'deleteAdapter'>(k: K): NonNullable<PeftTuner[K]> {
    const f = this.tuner[k];
    if (typeof f !== 'function') throw new Error(`${k}: not supported by ${this.peftType} adapters`);
    return f as NonNullable<PeftTuner[K]>;
  }

  /**
   * Write the adapter(s) in PEFT's format: adapter_config.json and adapter_model.safetensors with
   * PEFT's tensor names ('base_model.model.<module>.lora_A.weight', '...ia3_l', 'prompt_embeddings'). The 'default' adapter
   * goes to `dir`, others to `dir/<name>`, as PEFT's save_pretrained.
   */
  async saveAdapter(dir: string, opts: SaveAdapterOptions = {}): Promise<void> {
    if (typeof dir !== 'string' || dir === '') throw new TypeError('saveAdapter: dir must be a folder path');
    const names = opts.selectedAdapters ?? this.adapters;
    for (const n of names) if (!this.adapters.includes(n)) throw new Error(`saveAdapter: no adapter named '${n}'`);
    if (fs.existsSync(dir) && !fs.statSync(dir).isDirectory()) throw new Error(`saveAdapter: ${dir} exists and is not a folder`);
    for (const name of names) {
      const out = name === 'default' ? dir : path.join(dir, name);
      fs.mkdirSync(out, { recursive: true });
      const sd = this.tuner.adapterStateDict(name);
      const prefix = this.tuner.fileKeyPrefix ?? 'base_model.model.';
      const file = new Map<string, Tensor>();
      const owned: Tensor[] = [];
      try {
        for (const [k, t] of sd) {
          let v = t;
          if (opts.dtype && isFloat(v.dtype) && v.dtype !== opts.dtype) { v = new Tensor(native.cast(v.native, opts.dtype)); owned.push(v); }
          if (!v.native.isContiguous) { v = new Tensor(native.contiguous(v.native)); owned.push(v); }
          file.set(`${prefix}${k}`, v);
        }
        saveSafetensors(path.join(out, ADAPTER_WEIGHTS_NAME), file, { metadata: { format: 'pt' } });
      } finally {
        for (const t of owned) t.dispose();
      }
      const { json, floatKeys } = this.tuner.adapterConfigJson(name);
      writeAdapterConfig(out, json, floatKeys);
    }
  }

  /** Free every tensor (base model included). */
  override dispose(): void { super.dispose(); }
}

/** PEFT's print_trainable_parameters line for the given counts. */
export function formatTrainableParameters(trainable: number, all: number): string {
  return `trainable params: ${groupThousands(trainable)} || all params: ${groupThousands(all)} || trainable%: ${(all ? 100 * trainable / all : 0).toFixed(4)}`;
}

function groupThousands(n: number): string {
  const s = String(Math.trunc(Math.abs(n)));
  return (n < 0 ? '-' : '') + s.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}

// ---------------------------------------------------------------------------------------------
// modules_to_save

/**
 * A deep copy of a module: same class, same fields, every parameter and buffer cloned (shared
 * tensors within the module stay shared in the copy). Used for modules_to_save.
 */
export function cloneModule<M extends Module>(m: M, memo = new Map<Tensor, Tensor>()): M {
  type Internals = { _params: Map<string, Tensor | null>; _buffers: Map<string, Tensor | null>; _modules: Map<string, Module>; _nonPersistent: Set<string> };
  const src = m as unknown as Internals;
  const c = Object.create(Object.getPrototypeOf(m)) as M;
  Object.assign(c, m);
  const dst = c as unknown as Internals;
  const copy = (t: Tensor | null): Tensor | null => {
    if (!t) return null;
    let n = memo.get(t);
    if (!n) {
      n = new Tensor(native.clone(t.native));
      n.kept = true;
      if (t.requiresGrad) n.requiresGrad_(true);
      memo.set(t, n);
    }
    return n;
  };
  dst._params = new Map([...src._params].map(([k, t]) => [k, copy(t)]));
  dst._buffers = new Map([...src._buffers].map(([k, t]) => [k, copy(t)]));
  dst._nonPersistent = new Set(src._nonPersistent);
  const children = new Map<string, Module>();
  for (const [k, child] of src._modules) children.set(k, cloneModule(child, memo));
  dst._modules = children;
  // Array fields listing children (ModuleList.items) must point at the copies.
  for (const [k, v] of Object.entries(c)) {
    if (Array.isArray(v) && v.length && v.every((e) => e instanceof Module)) {
      (c as unknown as Record<string, unknown>)[k] = v.map((e: Module) => {
        for (const [name, orig] of src._modules) if (orig === e) return children.get(name);
        return e;
      });
    }
  }
  return c;
}

/**
 * PEFT's ModulesToSaveWrapper: `original_module` (frozen) and `modules_to_save.<adapter>` (a
 * trainable copy). Forward runs the active adapter's copy, or the original when disabled.
 * In-memory names: '<module>.modules_to_save.<adapter>.weight'; file names: '<module>.weight'.
 */
export class ModulesToSaveWrapper extends Module {
  activeAdapter: string | null = null;
  disabled = false;
  constructor(original: Module, adapterName: string) {
    super();
    this.registerModule('original_module', original);
    this.registerModule('modules_to_save', new ModuleContainer());
    this.update(adapterName);
    this.setAdapter(adapterName);
  }
  get originalModule(): Module { return this.getSubmodule('original_module'); }
  get copies(): ModuleContainer { return this.getSubmodule('modules_to_save') as ModuleContainer; }
  hasAdapter(name: string): boolean { return this.copies.namedChildren().some(([k]) => k === name); }
  /** Add a copy for `adapterName` (cloned from the original). */
  update(adapterName: string): void {
    if (this.hasAdapter(adapterName)) return;
    const copy = cloneModule(this.originalModule);
    for (const [, t] of copy.namedParameters()) if (isFloat(t.dtype)) t.requiresGrad_(false);
    this.copies.registerModule(adapterName, copy);
  }
  /** The active copy trains; the original and the other copies are frozen. */
  setAdapter(name: string | null): void {
    this.activeAdapter = name && this.hasAdapter(name) ? name : null;
    for (const [, t] of this.originalModule.namedParameters()) t.requiresGrad_(false);
    for (const [k, m] of this.copies.namedChildren()) {
      for (const [, t] of m.namedParameters()) if (isFloat(t.dtype)) t.requiresGrad_(k === this.activeAdapter);
    }
  }
  activeModule(): Module {
    if (this.disabled || !this.activeAdapter) return this.originalModule;
    return this.copies.getSubmodule(this.activeAdapter);
  }
  forward(...args: unknown[]): unknown {
    return (this.activeModule() as unknown as { forward(...a: unknown[]): unknown }).forward(...args);
  }
  /** Tensors of adapter `name`'s copy keyed by their name inside the module ('weight', ...). */
  adapterState(name: string): Map<string, Tensor> {
    if (!this.hasAdapter(name)) return new Map();
    return this.copies.getSubmodule(name).stateDict();
  }
  deleteAdapter(name: string): void {
    if (!this.hasAdapter(name)) return;
    const m = this.copies.getSubmodule(name);
    m.dispose();
    (this.copies as unknown as { _modules: Map<string, Module> })._modules.delete(name);
    if (this.activeAdapter === name) this.activeAdapter = null;
  }
}

/** A plain container of named child modules. */
export class ModuleContainer extends Module {
  forward(): never { throw new Error('a module container has no forward()'); }
}
