/**
 * ia3/layer.ts — (IA)³ on linear layers (PEFT 0.21's ia3.Linear): a learned vector per adapter
 * that scales the layer's output (attention modules: `ia3_l` [out, 1]) or, for feed-forward
 * modules, the layer's input (`ia3_l` [1, in]).
 *
 * Module layout and names are PEFT's, so under a PeftModel `namedParameters()` gives
 *   <module>.base_layer.weight / .bias      the frozen original layer
 *   <module>.ia3_l.<adapter>                the vector (f32, PEFT autocasts adapters to f32)
 *
 * forward (PEFT's Linear.forward):
 *   feed-forward:  base((x → f32) · ∏ ia3_l  → base dtype)
 *   otherwise:     (base(x) · ∏ ia3_l) → base output dtype
 * merge: W ← W ⊙ ia3_l (broadcast over rows [out,1] or columns [1,in]; Conv1D's [in,out] weight
 *        gets the transpose), and for output scaling b ← b ⊙ ia3_l;
 * unmerge: W ← W / (ia3_l + 1e-8), b likewise (PEFT warns that it can be inexact).
 * Base layers: nn.Linear, GPT-2 Conv1D, and 4-bit Linear4bit (forward only: merging into a 4-bit
 * weight is refused, as for LoRA).
 */
import { Linear } from '../../nn/linear';
import { Module } from '../../nn/module';
import { native } from '../../native';
import { add, cast, div, mul } from '../../ops/elementwise';
import { reshape, transpose } from '../../ops/shape';
import { noGrad } from '../../tensor/autograd';
import { DType } from '../../tensor/dtype';
import { Tensor } from '../../tensor/tensor';
import { Conv1D } from '../../models/layers';
import { Linear4bit } from '../../quant/linear4bit';
import { adapterDtype, ParameterDict } from '../lora/layer';

export class Ia3Linear extends Module {
  readonly inFeatures: number;
  readonly outFeatures: number;
  /** The vector scales the input (feed-forward module) instead of the output. */
  readonly isFeedforward: boolean;
  /** The base weight is stored [in, out] (GPT-2 Conv1D). */
  readonly fanInFanOut: boolean;
  /** Adapters that take part in forward (PEFT's active_adapters). */
  activeAdapters: string[] = [];
  /** PEFT's disable_adapters: forward is the base layer's. */
  disabled = false;
  /** Adapters merged into the base weight, in merge order. */
  mergedAdapters: string[] = [];

  constructor(base: Module, isFeedforward: boolean, fanInFanOut = false) {
    super();
    this.registerModule('base_layer', base);
    this.isFeedforward = isFeedforward;
    if (base instanceof Linear4bit) {
      this.fanInFanOut = false;
      this.inFeatures = base.inFeatures;
      this.outFeatures = base.outFeatures;
    } else {
      const w = base.getTensor('weight');
      if (!w || w.ndim !== 2) throw new Error('IA3: the base layer needs a 2-d weight');
      // PEFT forces fan_in_fan_out on for Conv1D and off for nn.Linear (with a warning).
      this.fanInFanOut = base instanceof Conv1D ? true : base instanceof Linear ? false : fanInFanOut;
      this.inFeatures = this.fanInFanOut ? w.shape[0] : w.shape[1];
      this.outFeatures = this.fanInFanOut ? w.shape[1] : w.shape[0];
    }
    this.registerModule('ia3_l', new ParameterDict());
  }

  get baseLayer(): Module { return this.getSubmodule('base_layer'); }
  get vectors(): ParameterDict { return this.getSubmodule('ia3_l') as ParameterDict; }
  /** The base layer's weight (PEFT's BaseTunerLayer.weight). */
  get weight(): Tensor { return this.baseLayer.getTensor('weight') as Tensor; }
  /** The base layer's bias, or null. */
  get bias(): Tensor | null {
    try { return this.baseLayer.getTensor('bias'); } catch { return null; }
  }
  get merged(): boolean { return this.mergedAdapters.length > 0; }
  /** The 4-bit base layer, or null. */
  get quantizedBase(): Linear4bit | null { const b = this.baseLayer; return b instanceof Linear4bit ? b : null; }

  hasAdapter(name: string): boolean { return this.vectors.has(name); }
  allAdapters(): string[] { return this.vectors.keys(); }
  /** The vector of adapter `name` ([out, 1], or [1, in] for a feed-forward module). */
  vector(name: string): Tensor {
    const v = this.vectors.get(name);
    if (!v) throw new Error(`IA3: no adapter '${name}' in this layer`);
    return v;
  }

  /** PEFT's update_layer: a new vector, ones (initIa3Weights) or N(0,1). */
  updateLayer(name: string, init: boolean, seed: number): void {
    const shape = this.isFeedforward ? [1, this.inFeatures] : [this.outFeatures, 1];
    const dt = adapterDtype(this.quantizedBase ? 'f32' : this.weight.dtype);
    const t0 = init ? Tensor.ones(shape, { dtype: dt }) : Tensor.randn(shape, { seed, dtype: dt });
    // the vector lives where the base layer does (created on the host, then moved)
    const dev = this.weight.device;
    const t = dev === 'cpu' ? t0 : t0.to(dev);
    if (t !== t0) t0.dispose();
    t.kept = true;
    this.vectors.set(name, t);
    this.setAdapter(this.activeAdapters.length ? this.activeAdapters : [name]);
  }

  /** Which adapters are active (they train; the others are frozen), as PEFT's set_adapter. */
  setAdapter(names: string | string[]): void {
    const list = typeof names === 'string' ? [names] : [...names];
    this.activeAdapters = list;
    for (const n of this.allAdapters()) this.vector(n).requiresGrad_(list.includes(n));
  }

  deleteAdapter(name: string): void {
    if (!this.hasAdapter(name)) return;
    const t = this.vector(name);
    this.vectors.delete(name);
    t.dispose();
    this.activeAdapters = this.activeAdapters.filter((a) => a !== name);
  }

  private callBase(x: Tensor): Tensor {
    return (this.baseLayer as unknown as { forward(x: Tensor): Tensor }).forward(x);
  }

  /** dtype the base layer computes in (its weight's; a 4-bit layer computes in its input's). */
  private baseDtype(x: Tensor): DType {
    return this.quantizedBase ? x.dtype : this.weight.dtype;
  }

  forward(x: Tensor): Tensor {
    if (this.disabled) {
      if (this.merged) this.unmerge();
      return this.callBase(x);
    }
    if (this.merged) return this.callBase(x);
    let scale: Tensor | null = null;
    for (const a of this.activeAdapters) {
      if (!this.hasAdapter(a)) continue;
      const v = reshape(this.vector(a), [-1]);
      scale = scale ? mul(scale, v) : v;
    }
    if (!scale) return this.callBase(x);
    const prev = x.dtype, sdt = scale.dtype;
    let result: Tensor;
    if (this.isFeedforward) {
      const xs = x.dtype === sdt ? x : cast(x, sdt);
      let interm = mul(xs, scale);
      const bdt = this.baseDtype(x);
      if (interm.dtype !== bdt) interm = cast(interm, bdt);
      result = this.callBase(interm);
    } else {
      const r = this.callBase(x);
      const rdt = r.dtype;
      result = mul(r.dtype === sdt ? r : cast(r, sdt), scale);
      if (result.dtype !== rdt) result = cast(result, rdt);
    }
    return result.dtype === prev ? result : cast(result, prev);
  }

  /** The vector laid out against the stored weight (PEFT: transpose(ia3_l, fan_in_fan_out)), f32. */
  private weightFactor(name: string): Tensor {
    const v = this.vector(name);
    return this.fanInFanOut ? transpose(v, 0, 1) : reshape(v, [...v.shape]);  // a new handle: callers dispose it
  }

  private noQuantized(what: 'merge' | 'unmerge'): void {
    const q = this.quantizedBase;
    if (q) {
      throw new Error(`IA3: cannot ${what} adapters ${what === 'merge' ? 'into' : 'from'} a 4-bit (${q.quantType}) base weight. ` +
        'Load the base model in f32/bf16 to merge (IA)³ vectors.');
    }
  }

  /** Scale the base weight (and the bias, for output scaling) by the vectors of `adapterNames` (default: active). */
  merge(adapterNames?: string[]): void {
    this.noQuantized('merge');
    const names = (adapterNames ?? this.activeAdapters).filter((n) => this.hasAdapter(n) && !this.mergedAdapters.includes(n));
    noGrad(() => {
      for (const a of names) {
        const w = this.weight;
        const f = this.weightFactor(a);
        const w32 = w.dtype === f.dtype ? w : cast(w, f.dtype);
        const nw = mul(w32, f);
        native.copy_(w.native, nw.native);
        nw.dispose(); if (w32 !== w) w32.dispose(); f.dispose();
        const b = this.bias;
        if (!this.isFeedforward && b) {
          const s = reshape(this.vector(a), [...b.shape]);
          const b32 = b.dtype === s.dtype ? b : cast(b, s.dtype);
          const nb = mul(b32, s);
          native.copy_(b.native, nb.native);
          nb.dispose(); if (b32 !== b) b32.dispose(); s.dispose();
        }
        this.mergedAdapters.push(a);
      }
    });
  }

  /** Undo merge(): divide by (vector + 1e-8), most recent merge first. */
  unmerge(): void {
    this.noQuantized('unmerge');
    noGrad(() => {
      while (this.mergedAdapters.length) {
        const a = this.mergedAdapters.pop()!;
        if (!this.hasAdapter(a)) continue;
        const w = this.weight;
        const f0 = this.weightFactor(a);
        const f = add(f0, 1e-8);
        const w32 = w.dtype === f.dtype ? w : cast(w, f.dtype);
        const nw = div(w32, f);
        native.copy_(w.native, nw.native);
        nw.dispose(); if (w32 !== w) w32.dispose(); f.dispose(); f0.dispose();
        const b = this.bias;
        if (!this.isFeedforward && b) {
          const s0 = reshape(this.vector(a), [...b.shape]);
          const s = add(s0, 1e-8);
          const b32 = b.dtype === s.dtype ? b : cast(b, s.dtype);
          const nb = div(b32, s);
          native.copy_(b.native, nb.native);
          nb.dispose(); if (b32 !== b) b32.dispose(); s.dispose(); s0.dispose();
        }
      }
    });
  }
}
