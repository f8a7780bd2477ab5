/**
 * lora/merge.ts — merge, unmerge and merge-and-unload (PEFT semantics).
 *
 *   merge:   W ← W + s·B·A (Conv1D: its transpose); DoRA: W ← m/‖W + s·B·A‖ · (W + s·B·A)
 *            (the norm is cached per layer so unmerge is exact up to rounding)
 *   unmerge: the inverse, in reverse merge order
 *   mergeAndUnload: merge the active adapter, then put each base layer back where its LoRA layer
 *            was (modules_to_save: the trained copy replaces the original); returns the plain model.
 * A merged layer's forward is the base layer's; disabling adapters unmerges first (as PEFT).
 * Merging into an NF4 base is the quantization module's (mergeQuantized: it dequantizes and writes
 * a float model); merge / unmerge / mergeAndUnload over a 4-bit base throw before touching any layer.
 */
import type { CausalLM } from '../../models/base';
import { Module } from '../../nn/module';
import { LoraLinear, quantizedMergeError } from './layer';
import type { LoraModel } from './model';

/** Throw (before any layer is changed) when a LoRA layer has a 4-bit base. */
function checkNoQuantized(model: LoraModel, what: 'merge' | 'unmerge'): void {
  for (const [, l] of model.loraLayers()) {
    if (l instanceof LoraLinear && l.quantizedBase) throw new Error(quantizedMergeError(what, l.quantizedBase.quantType));
  }
}

/** Merge `adapterNames` (default: the active adapter) into the base weights of every LoRA layer. */
export function mergeAdapter(model: LoraModel, adapterNames?: string[]): void {
  for (const n of adapterNames ?? []) if (!model.peftConfig.has(n)) throw new Error(`merge: no adapter named '${n}'`);
  checkNoQuantized(model, 'merge');
  for (const [, l] of model.loraLayers()) l.merge(adapterNames);
}

/** Undo every merge. */
export function unmergeAdapter(model: LoraModel): void {
  for (const [, l] of model.loraLayers()) if (l.merged) l.unmerge();
}

/** Remove the LoRA layers (merging the active adapter first when `merge`); returns the plain model. */
export function unloadLora(model: LoraModel, merge: boolean): CausalLM {
  // (modules_to_save copies replace their originals either way, as in PEFT)
  if (merge) checkNoQuantized(model, 'merge');
  const inner = model.model;
  const replace = (key: string, m: Module) => {
    const i = key.lastIndexOf('.');
    const parent = i < 0 ? inner : inner.getSubmodule(key.slice(0, i));
    parent.registerModule(i < 0 ? key : key.slice(i + 1), m);
  };
  for (const [key, l] of model.loraLayers()) {
    if (merge) l.merge();
    else if (l.merged) l.unmerge();
    const base = l.baseLayer;
    for (const name of l.allAdapters()) l.deleteAdapter(name);
    replace(key, base);
  }
  for (const [key, w] of model.wrappers()) {
    // PEFT keeps the active adapter's trained copy (for unload too). The original is not freed:
    // its weight may be shared (tied embeddings).
    const chosen = w.activeAdapter !== null ? w.activeModule() : w.originalModule;
    for (const [, c] of w.copies.namedChildren()) if (c !== chosen) c.dispose();
    replace(key, chosen);
  }
  model.peftConfig.clear();
  return inner;
}
