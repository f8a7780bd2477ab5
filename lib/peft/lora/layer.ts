/**
 * lora/layer.ts — LoRA (and DoRA) on linear layers: nn.Linear, and GPT-2's Conv1D whose weight
 * is stored [in, out] (PEFT's fan_in_fan_out, forced on for Conv1D as PEFT does).
 *
 * Module layout and parameter names are PEFT's, so `namedParameters()` under a PeftModel gives
 * PEFT's in-memory names:
 *   <module>.base_layer.weight / .bias                   the frozen original layer
 *   <module>.lora_A.<adapter>.weight   [r, in]           nn.Linear(in, r, bias=False)
 *   <module>.lora_B.<adapter>.weight   [out, r]          nn.Linear(r, out, bias=lora_bias)
 *   <module>.lora_magnitude_vector.<adapter>.weight [out]   DoRA
 *
 * Forward (one active plain adapter, float or 4-bit base weight): the fused native op
 * (lib/ops/lora.ts). Otherwise (DoRA, several adapters, lora_bias, a base layer of another kind):
 * the base layer's own forward plus each adapter's term composed from ops, exactly as PEFT's
 * Linear.forward.
 *
 * QLoRA: the base layer may be a Linear4bit (NF4/FP4, lib/quant) — PEFT's bnb Linear4bit LoRA
 * layer. Its registered `weight` is the packed u8 data, so the features come from the module;
 * the fused op reads the quant state through the fused 4-bit GEMM. DoRA's weight norm uses the
 * dequantized weight (as PEFT's dequantize_module_weight). merge()/unmerge() cannot write into a
 * 4-bit weight (use mergeQuantized), and PiSSA / OLoRA need a float base (as in PEFT).
 */
import { Linear } from '../../nn/linear';
import { Module } from '../../nn/module';
import { native } from '../../native';
import { add, cast, div, mul, sqrt, square, sub } from '../../ops/elementwise';
import { loraLinear } from '../../ops/lora';
import { linear, matmul } from '../../ops/matmul';
import { linear4bit } from '../../ops/nf4';
import { dropout as dropoutOp, nextDropoutSeed } from '../../ops/random';
import { sum } from '../../ops/reduce';
import { contiguous, transpose } from '../../ops/shape';
import { noGrad } from '../../tensor/autograd';
import { DType } from '../../tensor/dtype';
import { Tensor } from '../../tensor/tensor';
import { Conv1D, newLinear } from '../../models/layers';
import { Linear4bit } from '../../quant/linear4bit';
import type { LoraInit } from './config';
import { householderQr, topSvd } from './linalg';

// ---------------------------------------------------------------------------------------------
// containers

/** torch.nn.ModuleDict: children by key (adapter names). */
export class ModuleDict<M extends Module = Module> extends Module {
  set(key: string, m: M): M { return this.registerModule(key, m); }
  get(key: string): M | undefined { return this.namedChildren().find(([k]) => k === key)?.[1] as M | undefined; }
  has(key: string): boolean { return this.namedChildren().some(([k]) => k === key); }
  keys(): string[] { return this.namedChildren().map(([k]) => k); }
  delete(key: string): void { removeChild(this, key); }
  forward(): never { throw new Error('ModuleDict is a container and has no forward()'); }
}

/** torch.nn.ParameterDict: parameters by key (lora_embedding_A/B). */
export class ParameterDict extends Module {
  set(key: string, t: Tensor, requiresGrad = true): Tensor { return this.registerParameter(key, t, requiresGrad) as Tensor; }
  get(key: string): Tensor | undefined { return this.has(key) ? (this.getTensor(key) ?? undefined) : undefined; }
  has(key: string): boolean { return (this as unknown as { _params: Map<string, Tensor | null> })._params.has(key); }
  keys(): string[] { return [...(this as unknown as { _params: Map<string, Tensor | null> })._params.keys()]; }
  delete(key: string): void { (this as unknown as { _params: Map<string, Tensor | null> })._params.delete(key); }
  forward(): never { throw new Error('ParameterDict is a container and has no forward()'); }
}

/** DoRA's magnitude holder (PEFT's DoraLinearLayer: one parameter `weight` [out]). */
export class DoraMagnitude extends Module {
  constructor(m: Tensor) { super(); this.registerParameter('weight', m); }
  get weight(): Tensor { return this.getTensor('weight') as Tensor; }
  forward(): never { throw new Error('DoraMagnitude has no forward()'); }
}

/** Remove a child module (Module has no public API for it). */
export function removeChild(parent: Module, name: string): void {
  (parent as unknown as { _modules: Map<string, Module> })._modules.delete(name);
}

// ---------------------------------------------------------------------------------------------
// dropout seeds: drawn from the shared stream in lib/ops/random.ts (nextDropoutSeed)

let initSeedCounter = Math.floor(Math.random() * 2 ** 40);
/** A seed for a random initialisation when the config gives none. */
export function nextInitSeed(): number { initSeedCounter = (initSeedCounter + 7919) % 2 ** 52; return initSeedCounter; }

// ---------------------------------------------------------------------------------------------
// shared adapter bookkeeping

export interface UpdateLayerOptions {
  r: number;
  alpha: number;
  dropout: number;
  init: LoraInit;
  useRslora: boolean;
  useDora: boolean;
  loraBias: boolean;
  /** Seed of the random init. */
  seed: number;
}

/** What LoraModel needs from every LoRA layer kind. */
export abstract class LoraLayer extends Module {
  readonly r = new Map<string, number>();
  readonly loraAlpha = new Map<string, number>();
  readonly scaling = new Map<string, number>();
  readonly loraDropout = new Map<string, number>();
  readonly useDora = new Map<string, boolean>();
  readonly loraBias = new Map<string, boolean>();
  /** Adapters that take part in forward (PEFT's active_adapters). */
  activeAdapters: string[] = [];
  /** PEFT's disable_adapters: forward is the base layer's. */
  disabled = false;
  /** Adapters merged into the base weight, in merge order. */
  mergedAdapters: string[] = [];
  /** Per-adapter caches (DoRA weight norms at merge time). */
  protected readonly caches = new Map<string, Tensor>();

  constructor(base: Module) {
    super();
    this.registerModule('base_layer', base);
  }

  get baseLayer(): Module { return this.getSubmodule('base_layer'); }
  /** The base layer's weight (PEFT's BaseTunerLayer.weight). */
  get weight(): Tensor { return this.baseLayer.getTensor('weight') as Tensor; }
  /** The base layer's bias, or null. */
  get bias(): Tensor | null { return hasTensor(this.baseLayer, 'bias') ? this.baseLayer.getTensor('bias') : null; }
  get merged(): boolean { return this.mergedAdapters.length > 0; }

  abstract hasAdapter(name: string): boolean;
  abstract updateLayer(name: string, o: UpdateLayerOptions): void;
  abstract merge(adapterNames?: string[]): void;
  abstract unmerge(): void;
  /** Names of this layer's adapter parameters for `name`: [in-memory suffix, file suffix, tensor]. */
  abstract adapterTensors(name: string): [string, string, Tensor][];
  /** Remove an adapter's parameters. */
  abstract deleteAdapter(name: string): void;

  /** Which adapters are active. */
  setAdapter(names: string | string[]): void {
    const list = typeof names === 'string' ? [names] : [...names];
    this.activeAdapters = list;
    // PEFT's set_adapter: active adapters train, the others are frozen.
    for (const name of this.allAdapters()) {
      const on = list.includes(name);
      for (const [, , t] of this.adapterTensors(name)) t.requiresGrad_(on);
    }
  }

  allAdapters(): string[] { return [...this.r.keys()]; }

  protected callBase(x: Tensor): Tensor {
    return (this.baseLayer as unknown as { forward(x: Tensor): Tensor }).forward(x);
  }

  protected setCommon(name: string, o: UpdateLayerOptions): void {
    if (!Number.isInteger(o.r) || o.r <= 0) throw new RangeError(`LoRA: r should be a positive integer value but the value passed is ${o.r}`);
    this.r.set(name, o.r);
    this.loraAlpha.set(name, o.alpha);
    this.scaling.set(name, o.useRslora ? o.alpha / Math.sqrt(o.r) : o.alpha / o.r);
    this.loraDropout.set(name, o.dropout);
    this.useDora.set(name, o.useDora);
    this.loraBias.set(name, o.loraBias);
  }
}

function hasTensor(m: Module, name: string): boolean {
  try { m.getTensor(name); return true; } catch { return false; }
}

/** Overwrite the values of `dst` with `src` (converted), keeping the tensor object. */
export function assign(dst: Tensor, src: Tensor): void {
  native.copy_(dst.native, src.native);
}

/** A tensor of `dtype` holding `t`'s values (t itself when it already is). */
function as(t: Tensor, dtype: DType): Tensor { return t.dtype === dtype ? t : cast(t, dtype); }

/** Row-wise L2 norm of a 2-d tensor → [rows] (PEFT: torch.linalg.norm(weight, dim=1)). */
export function rowNorm(w: Tensor): Tensor {
  const sq = square(w);
  const s = sum(sq, 1);
  const n = sqrt(s);
  sq.dispose(); s.dispose();
  return n;
}

// ---------------------------------------------------------------------------------------------
// Linear / Conv1D

/** Float dtype the adapter weights live in for a base weight of `d` (PEFT autocasts to f32). */
export function adapterDtype(d: DType): DType { return d === 'f64' ? 'f64' : 'f32'; }

export class LoraLinear extends LoraLayer {
  readonly inFeatures: number;
  readonly outFeatures: number;
  /** The base weight is stored [in, out] (GPT-2 Conv1D). */
  readonly fanInFanOut: boolean;
  /**
   * Use the fused native op when the layer allows it (default true). false: the base layer's
   * forward plus the adapter term composed from ops (the reference the fused kernels match).
   */
  fused = true;

  constructor(base: Module, fanInFanOut = false) {
    super(base);
    if (base instanceof Linear4bit) {
      // the registered weight is the packed u8 [n/2, 1]; the quantized weight is always (out, in)
      // (a GPT-2 Conv1D was transposed when quantized), so fan_in_fan_out does not apply.
      this.fanInFanOut = false;
      this.inFeatures = base.inFeatures;
      this.outFeatures = base.outFeatures;
    } else {
      const w = base.getTensor('weight');
      if (!w || w.ndim !== 2) throw new Error('LoraLinear: the base layer needs a 2-d weight');
      // PEFT forces fan_in_fan_out on for Conv1D and off for nn.Linear (with a warning).
      this.fanInFanOut = base instanceof Conv1D ? true : base instanceof Linear ? false : fanInFanOut;
      this.inFeatures = this.fanInFanOut ? w.shape[0] : w.shape[1];
      this.outFeatures = this.fanInFanOut ? w.shape[1] : w.shape[0];
    }
    this.registerModule('lora_A', new ModuleDict<Linear>());
    this.registerModule('lora_B', new ModuleDict<Linear>());
    this.registerModule('lora_magnitude_vector', new ModuleDict<DoraMagnitude>());
  }

  get loraA(): ModuleDict<Linear> { return this.getSubmodule('lora_A') as ModuleDict<Linear>; }
  get loraB(): ModuleDict<Linear> { return this.getSubmodule('lora_B') as ModuleDict<Linear>; }
  get magnitude(): ModuleDict<DoraMagnitude> { return this.getSubmodule('lora_magnitude_vector') as ModuleDict<DoraMagnitude>; }

  hasAdapter(name: string): boolean { return this.loraA.has(name); }

  /** A [r, in] and B [out, r] of an adapter. */
  weightsOf(name: string): { A: Tensor; B: Tensor; bB: Tensor | null } {
    const a = this.loraA.get(name), b = this.loraB.get(name);
    if (!a || !b) throw new Error(`LoraLinear: no adapter '${name}'`);
    return { A: a.weight, B: b.weight, bB: b.bias };
  }

  /** The 4-bit base layer (QLoRA), or null for a float base. */
  get quantizedBase(): Linear4bit | null {
    const b = this.baseLayer;
    return b instanceof Linear4bit ? b : null;
  }

  /**
   * The base weight as [out, in] (a view for Conv1D; for a 4-bit base a new f32 tensor holding
   * the dequantized weight, as PEFT's dequantize_module_weight). Callers dispose it when it is not
   * `this.weight`.
   */
  protected weightOutIn(): Tensor {
    const q = this.quantizedBase;
    if (q) return q.dequantizeWeight('f32');
    const w = this.weight;
    return this.fanInFanOut ? transpose(w, 0, 1) : w;
  }

  /** Throws the error for operations that would write into a 4-bit base weight. */
  noQuantizedWrite(what: 'merge' | 'unmerge'): void {
    if (!this.quantizedBase) return;
    throw new Error(quantizedMergeError(what, this.quantizedBase.quantType));
  }

  updateLayer(name: string, o: UpdateLayerOptions): void {
    this.setCommon(name, o);
    const wdt = adapterDtype(this.weight.dtype);
    const A = newLinear(this.inFeatures, o.r, false, wdt);
    const B = newLinear(o.r, this.outFeatures, o.loraBias, wdt);
    this.loraA.set(name, A);
    this.loraB.set(name, B);
    this.initWeights(name, o);
    // The adapter lives where the base layer does (a model loaded with device 'cuda' gets its
    // adapters there; initialised on the host with the same seeded values, then moved).
    const dev = this.weight.device;
    if (dev !== 'cpu') { A.to(dev); B.to(dev); }
    if (o.useDora) this.initDora(name);
    if (!this.activeAdapters.length) this.activeAdapters = [name];
  }

  private initWeights(name: string, o: UpdateLayerOptions): void {
    const { A, B, bB } = this.weightsOf(name);
    const dt = A.dtype;
    noGrad(() => {
      switch (o.init) {
        case 'default': {
          const bound = 1 / Math.sqrt(this.inFeatures);  // kaiming_uniform(a=√5) on [r, in]
          const t = Tensor.rand([...A.shape], { seed: o.seed, low: -bound, high: bound, dtype: dt });
          assign(A, t); t.dispose();
          zero(B); if (bB) zero(bB);
          break;
        }
        case 'gaussian': {
          const t = Tensor.randn([...A.shape], { seed: o.seed, std: 1 / o.r, dtype: dt });
          assign(A, t); t.dispose();
          zero(B); if (bB) zero(bB);
          break;
        }
        case 'pissa': case 'olora':
          if (this.quantizedBase) {
            throw new Error(`LoRA: init '${o.init}' rewrites the base weight (W - s·B·A), which is not possible for a 4-bit ` +
              `(${this.quantizedBase.quantType}) base layer. As in PEFT, initialize ${o.init === 'pissa' ? 'PiSSA' : 'OLoRA'} on the ` +
              'float model, then quantize the residual model (quantizeNF4) and train the adapter over it.');
          }
          if (o.init === 'pissa') this.pissaInit(name); else this.oloraInit(name);
          break;
        case 'none': zero(A); zero(B); if (bB) zero(bB); break;
      }
    });
  }

  /** PiSSA: A = √S_r·Vᵀ_r / √s, B = U_r·√S_r / √s, W ← W − s·B·A (top-r SVD of W [out, in]). */
  private pissaInit(name: string): void {
    const { A, B } = this.weightsOf(name);
    const r = this.r.get(name)!, s = this.scaling.get(name)!;
    const [out, inF] = [this.outFeatures, this.inFeatures];
    const W = this.weightOutInF64();
    const { U, S, V } = topSvd(W, out, inF, r);
    const a = new Float64Array(r * inF), b = new Float64Array(out * r);
    for (let k = 0; k < r; k++) {
      const sq = Math.sqrt(S[k] / s);
      for (let j = 0; j < inF; j++) a[k * inF + j] = sq * V[j * r + k];
      for (let i = 0; i < out; i++) b[i * r + k] = U[i * r + k] * sq;
    }
    this.setLowRank(A, B, a, b, W, r, s);
  }

  /** OLoRA: W = QR, B = Q[:, :r], A = R[:r], W ← W − s·B·A. */
  private oloraInit(name: string): void {
    const { A, B } = this.weightsOf(name);
    const r = this.r.get(name)!, s = this.scaling.get(name)!;
    const [out, inF] = [this.outFeatures, this.inFeatures];
    const W = this.weightOutInF64();
    const { Q, R } = householderQr(W, out, inF, r);
    this.setLowRank(A, B, R, Q, W, r, s);
  }

  private weightOutInF64(): Float64Array {
    const w = this.weightOutIn();
    const c = contiguous(w);
    const arr = c.toFloat64Array();
    if (c !== w) c.dispose();
    if (w !== this.weight) w.dispose();
    return arr;
  }

  /** Write A (r×in), B (out×r) and the residual base weight W − s·B·A. */
  private setLowRank(A: Tensor, B: Tensor, a: Float64Array, b: Float64Array, W: Float64Array, r: number, s: number): void {
    const [out, inF] = [this.outFeatures, this.inFeatures];
    const at = Tensor.fromArray(a, { shape: [r, inF], dtype: 'f64' });
    const bt = Tensor.fromArray(b, { shape: [out, r], dtype: 'f64' });
    assign(A, at); assign(B, bt); at.dispose(); bt.dispose();
    // Residual in f32 like PEFT (W.to(f32) − s·B@A with the stored f32 A, B), rounded to W's dtype.
    const Af = A.toFloat64Array(), Bf = B.toFloat64Array();
    const res = new Float64Array(out * inF);
    for (let i = 0; i < out; i++) {
      for (let j = 0; j < inF; j++) {
        let d = 0;
        for (let k = 0; k < r; k++) d += Bf[i * r + k] * Af[k * inF + j];
        res[i * inF + j] = W[i * inF + j] - s * d;
      }
    }
    const rt = Tensor.fromArray(res, { shape: [out, inF], dtype: 'f64' });
    const view = this.weightOutIn();
    native.copy_(view.native, rt.native);
    if (view !== this.weight) view.dispose();
    rt.dispose();
  }

  /** DoRA magnitude m = ‖W + s·B·A‖ per output row (PEFT's DoraLinearLayer.update_layer). */
  private initDora(name: string): void {
    const m = noGrad(() => this.weightNorm(name, this.scaling.get(name)!));
    const dt = adapterDtype(this.weight.dtype);
    const mm = as(m, dt);
    if (mm !== m) m.dispose();
    const mod = new DoraMagnitude(mm);
    this.magnitude.set(name, mod);
  }

  /** ‖W + scale·B·A‖ row-wise, computed without autograd (PEFT detaches it). */
  weightNorm(name: string, scale: number, delta?: Tensor): Tensor {
    return noGrad(() => {
      const { A, B } = this.weightsOf(name);
      const W = this.weightOutIn();
      const dt = adapterDtype(W.dtype);
      const Wc = as(W, dt);
      const ba = delta ?? matmul(B, A);
      const sba = delta ? ba : mul(ba, scale);
      const sum2 = add(Wc, sba);
      const n = rowNorm(sum2);
      for (const t of [sum2]) t.dispose();
      if (!delta) { ba.dispose(); sba.dispose(); }
      if (Wc !== W) Wc.dispose();
      if (W !== this.weight) W.dispose();
      return n;
    });
  }

  forward(x: Tensor): Tensor {
    if (this.disabled) {
      if (this.merged) this.unmerge();
      return this.callBase(x);
    }
    if (this.merged) return this.callBase(x);
    const active = this.activeAdapters.filter((a) => this.hasAdapter(a));
    if (active.length === 0) return this.callBase(x);
    const base = this.baseLayer;
    const a0 = active[0];
    const f64 = x.dtype === 'f64';
    // the fused kernel computes in f64 only when every operand is f64
    const q4 = base instanceof Linear4bit ? base : null;
    const fusable = this.fused && active.length === 1 && !this.useDora.get(a0) && !this.loraBias.get(a0) &&
      (base instanceof Linear || base instanceof Conv1D || q4 !== null) &&
      [q4 ? null : this.weight, this.bias, this.weightsOf(a0).A, this.weightsOf(a0).B].every((t) => !t || (t.dtype === 'f64') === f64);
    if (fusable) {
      // a 4-bit base passes its quant state: the fused op reads it through the fused NF4 GEMM
      const a = active[0];
      const { A, B } = this.weightsOf(a);
      return loraLinear(x, q4 ? q4.quantState : this.weight, this.bias, A, B, {
        scale: this.scaling.get(a)!, dropout: this.loraDropout.get(a)!, seed: nextDropoutSeed(),
        training: this.training, weightTransposed: this.fanInFanOut,
      });
    }
    let result = this.callBase(x);
    const resultDtype = result.dtype;
    for (const a of active) {
      const { A, B, bB } = this.weightsOf(a);
      const s = this.scaling.get(a)!, p = this.loraDropout.get(a)!;
      const xin = as(x, A.dtype);
      let next: Tensor;
      if (!this.useDora.get(a)) {
        const xd = p > 0 && this.training ? dropoutOp(xin, p, nextDropoutSeed(), true) : xin;
        const h = linear(xd, A);
        const l = linear(h, B, bB);
        const ls = mul(l, s);
        next = add(result, ls);
        for (const t of [h, l, ls]) t.dispose();
        if (xd !== xin) xd.dispose();
      } else {
        next = this.doraForward(a, xin, result, p);
      }
      if (xin !== x) xin.dispose();
      result.dispose();
      result = next;
    }
    if (result.dtype === resultDtype) return result;
    const r = cast(result, resultDtype);
    result.dispose();
    return r;
  }

  /** PEFT's DoraLinearVariant.forward: result + (m/‖W+sBA‖ − 1)·base + m/‖W+sBA‖·lora·s. */
  private doraForward(a: string, x: Tensor, result: Tensor, p: number): Tensor {
    const { A, B, bB } = this.weightsOf(a);
    const s = this.scaling.get(a)!;
    const m = this.magnitude.get(a)!.weight;
    let xin = x;
    let baseResult: Tensor | null = null;
    if (!(p > 0) || !this.training) baseResult = result;
    else xin = dropoutOp(x, p, nextDropoutSeed(), true);
    const wn = this.weightNorm(a, s);                     // detached
    const mns = div(m, wn);                               // [out], broadcasts over the last dim
    const h = linear(xin, A);
    const lora = linear(h, B, bB);
    let base: Tensor;
    const bias = this.bias;
    if (baseResult) {
      base = bias ? sub(baseResult, bias) : baseResult;
    } else if (this.quantizedBase) {
      base = linear4bit(xin, this.quantizedBase.quantState, null);
    } else {
      const W = this.weightOutIn();
      const Wx = as(W, xin.dtype);
      base = linear(xin, Wx);
      if (Wx !== W) Wx.dispose();
      if (W !== this.weight) W.dispose();
    }
    const mns1 = sub(mns, 1);
    const t1 = mul(mns1, base);
    const t2 = mul(mns, lora);
    const t3 = mul(t2, s);
    const dora = add(t1, t3);
    const out = add(result, dora);
    for (const t of [wn, mns, h, lora, mns1, t1, t2, t3, dora]) t.dispose();
    if (base !== baseResult) base.dispose();
    if (xin !== x) xin.dispose();
    return out;
  }

  /** s·B·A in the base weight's storage layout ([out,in], or [in,out] for Conv1D), f32/f64. */
  deltaWeight(name: string): Tensor {
    return noGrad(() => {
      const { A, B } = this.weightsOf(name);
      const ba = matmul(B, A);
      const d = mul(ba, this.scaling.get(name)!);
      ba.dispose();
      if (!this.fanInFanOut) return d;
      const t = contiguous(transpose(d, 0, 1));
      d.dispose();
      return t;
    });
  }

  merge(adapterNames?: string[]): void {
    this.noQuantizedWrite('merge');
    const names = (adapterNames ?? this.activeAdapters).filter((n) => this.hasAdapter(n) && !this.mergedAdapters.includes(n));
    noGrad(() => {
      for (const a of names) {
        const W = this.weight;
        const delta = this.deltaWeight(a);
        if (!this.useDora.get(a)) {
          const d = as(delta, W.dtype);
          const nw = add(W, d);
          assign(W, nw);
          nw.dispose(); if (d !== delta) d.dispose();
        } else {
          // PEFT DoraLinearVariant.merge_unsafe: W ← (m / ‖W + ΔW‖) · (W + ΔW)
          const dOutIn = this.fanInFanOut ? transpose(delta, 0, 1) : delta;
          const wn = this.weightNorm(a, 1, dOutIn);
          if (dOutIn !== delta) dOutIn.dispose();
          this.caches.set(`${a}-weight_norm`, wn);
          const factor = this.doraFactor(a, wn);
          const Wc = as(W, delta.dtype);
          const sumW = add(Wc, delta);
          const nw = mul(factor, sumW);
          assign(W, nw);
          for (const t of [factor, sumW, nw]) t.dispose();
          if (Wc !== W) Wc.dispose();
        }
        delta.dispose();
        if (this.loraBias.get(a)) {
          const b = this.bias, bB = this.weightsOf(a).bB;
          if (!b) throw new Error('LoRA: impossible to merge lora_bias because the base layer has no bias');
          const sb = mul(bB!, this.scaling.get(a)!);
          const nb = add(b, as(sb, b.dtype));
          assign(b, nb); nb.dispose(); sb.dispose();
        }
        this.mergedAdapters.push(a);
      }
    });
  }

  /** m / ‖·‖ shaped to scale the base weight in its storage layout. */
  private doraFactor(a: string, wn: Tensor): Tensor {
    const m = this.magnitude.get(a)!.weight;
    const f = div(m, wn);  // [out]
    if (this.fanInFanOut) return f;  // [in, out] storage: broadcast over the last dim
    const v = f.reshape([this.outFeatures, 1]);
    f.dispose();
    return v;
  }

  unmerge(): void {
    this.noQuantizedWrite('unmerge');
    noGrad(() => {
      while (this.mergedAdapters.length) {
        const a = this.mergedAdapters.pop()!;
        if (!this.hasAdapter(a)) continue;
        const W = this.weight;
        const delta = this.deltaWeight(a);
        if (!this.useDora.get(a)) {
          const d = as(delta, W.dtype);
          const nw = sub(W, d);
          assign(W, nw);
          nw.dispose(); if (d !== delta) d.dispose();
        } else {
          const wn = this.caches.get(`${a}-weight_norm`);
          if (!wn) throw new Error(`LoRA: no cached DoRA weight norm for adapter '${a}' (was it merged by this layer?)`);
          this.caches.delete(`${a}-weight_norm`);
          const factor = this.doraFactor(a, wn);
          const Wc = as(W, delta.dtype);
          const q = div(Wc, factor);
          const nw = sub(q, delta);
          assign(W, nw);
          for (const t of [factor, q, nw, wn]) t.dispose();
          if (Wc !== W) Wc.dispose();
        }
        delta.dispose();
        if (this.loraBias.get(a)) {
          const b = this.bias!, bB = this.weightsOf(a).bB!;
          const sb = mul(bB, this.scaling.get(a)!);
          const nb = sub(b, as(sb, b.dtype));
          assign(b, nb); nb.dispose(); sb.dispose();
        }
      }
    });
  }

  adapterTensors(name: string): [string, string, Tensor][] {
    if (!this.hasAdapter(name)) return [];
    const { A, B, bB } = this.weightsOf(name);
    const out: [string, string, Tensor][] = [
      [`lora_A.${name}.weight`, 'lora_A.weight', A],
      [`lora_B.${name}.weight`, 'lora_B.weight', B],
    ];
    if (bB) out.push([`lora_B.${name}.bias`, 'lora_B.bias', bB]);
    const m = this.magnitude.get(name);
    if (m) out.push([`lora_magnitude_vector.${name}.weight`, 'lora_magnitude_vector', m.weight]);
    return out;
  }

  deleteAdapter(name: string): void {
    for (const [, , t] of this.adapterTensors(name)) { t.zeroGrad(); t.dispose(); }
    this.loraA.delete(name); this.loraB.delete(name); this.magnitude.delete(name);
    for (const m of [this.r, this.loraAlpha, this.scaling, this.loraDropout, this.useDora, this.loraBias]) m.delete(name);
    this.activeAdapters = this.activeAdapters.filter((a) => a !== name);
  }
}

/** The error of merge()/unmerge() over a 4-bit base weight. */
export function quantizedMergeError(what: 'merge' | 'unmerge', quantType: string): string {
  return `LoRA: cannot ${what} adapters ${what === 'merge' ? 'into' : 'from'} a 4-bit (${quantType}) base weight in place. ` +
    'Use mergeQuantized(peftModel, dir, { dtype: \'bf16\' }) from peftkit\'s quant module: it dequantizes the base, ' +
    'merges the adapters and writes a bf16/f32 model folder that loadModel loads.';
}

function zero(t: Tensor): void {
  const z = Tensor.zeros([...t.shape], { dtype: t.dtype });
  assign(t, z); z.dispose();
}
