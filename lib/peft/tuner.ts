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
}
