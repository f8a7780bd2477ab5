/**
 * tuner.ts — what every module-injecting PEFT method shares (PEFT's BaseTuner): the wrapped model,
 * the adapters' configs, the active adapter name, which module paths may be targeted (nothing
 * inside an adapter layer or a modules_to_save wrapper), and where to replace a module.
 */
import type { CausalLM } from '../models/base';
import { Module } from '../nn/module';
import { ModulesToSaveWrapper } from './peft_model';

export abstract class BaseTuner<C extends { adapterName: string }> extends Module {
  readonly peftConfig = new Map<string, C>();
  activeAdapter: string;

  /** Subclasses call injectAdapter(config) after super(), once their own fields exist. */
  protected constructor(model: CausalLM, adapterName: string) {
    super();
    this.registerModule('model', model);
    this.activeAdapter = adapterName;
  }

  /** Is `m` one of this method's adapter layers (its inside is never targeted)? */
  protected abstract isAdapterLayer(m: Module): boolean;

  get model(): CausalLM { return this.getSubmodule('model') as CausalLM; }

  adapterNames(): string[] { return [...this.peftConfig.keys()]; }

  /** Every modules_to_save wrapper with its path. */
  wrappers(): [string, ModulesToSaveWrapper][] {
    return this.model.namedModules().filter(([, m]) => m instanceof ModulesToSaveWrapper) as [string, ModulesToSaveWrapper][];
  }

  /** Module paths of the model that are candidates for targeting (nothing inside adapter layers). */
  protected candidateKeys(): [string, Module][] {
    const inside: string[] = [];
    const out: [string, Module][] = [];
    for (const [k, m] of this.model.namedModules()) {
      if (k === '') continue;
      if (inside.some((p) => k.startsWith(p + '.'))) continue;
      out.push([k, m]);
      if (this.isAdapterLayer(m) || m instanceof ModulesToSaveWrapper) inside.push(k);
    }
    return out;
  }

  /** The parent module of a dotted path and the child's name in it. */
  protected parentOf(key: string): [Module, string] {
    const i = key.lastIndexOf('.');
    return i < 0 ? [this.model, key] : [this.model.getSubmodule(key.slice(0, i)), key.slice(i + 1)];
  }

  /** PEFT's error when no module matched `targetModules`. */
  protected targetsNotFound(op: string, tm: unknown): Error {
    return new Error(`${op}: target modules ${typeof tm === 'string' ? `/${tm}/` : JSON.stringify(tm)} not found in the base model. ` +
      'Please check the target modules and try again.');
  }

  /**
   * Wrap every module matching a modules_to_save entry (by full path or last component) in a
   * ModulesToSaveWrapper holding a trainable copy for adapter `name`. `what` names this method's
   * targets in the error for a module that is both ('a LoRA target').
   */
  protected wrapModulesToSave(name: string, targets: readonly string[], op: string, what: string): void {
    for (const target of targets) {
      let found = false;
      for (const [key, m] of this.candidateKeys()) {
        if (!(key === target || key.endsWith(`.${target}`))) continue;
        found = true;
        if (m instanceof ModulesToSaveWrapper) { m.update(name); continue; }
        if (this.isAdapterLayer(m)) throw new Error(`${op}: '${key}' is both ${what} and in modulesToSave`);
        const w = new ModulesToSaveWrapper(m, name);
        w.training = m.training;
        const [parent, child] = this.parentOf(key);
        parent.registerModule(child, w);
      }
      if (!found) throw new Error(`${op}: modulesToSave entry '${target}' matches no module of the model`);
    }
  }
}
