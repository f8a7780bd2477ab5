/**
 * nf4.ts — 4-bit blockwise quantization (NF4 / FP4), bitsandbytes-compatible: `quantizeNF4` for
 * a tensor (→ QuantizedTensor) or a model (every linear layer → Linear4bit, in place), and
 * `dequantize`.
 *
 * Format (exactly bitsandbytes' quantize_4bit / QuantState, see csrc/cpu/quant.h): the tensor is
 * flattened row-major and cut into blocks of `blockSize` (64); per block absmax = max|x|; each
 * element x·(1/absmax) is mapped to the nearest NF4 (or FP4) code by bnb's midpoint decision tree;
 * element 2j goes in the high nibble and 2j+1 in the low nibble of byte j. Double quantization
 * (`doubleQuant`, bnb's compress_statistics): the absmaxes minus their mean are quantized 8-bit
 * blockwise (block 256) with bnb's signed dynamic map; the f32 second-level absmaxes and the mean
 * (offset) are kept. Memory: 0.5 byte per weight + 1 byte per 64 weights (+ 4 bytes per 16384).
 */
import { native, NativeTensor } from '../native';
import { Module } from '../nn/module';
import { Linear } from '../nn/linear';
import { Conv1D } from '../models/layers';
import { DType } from '../tensor/dtype';
import { Tensor } from '../tensor/tensor';

export type QuantType = 'nf4' | 'fp4';
/** Dtype the dequantized weight is rounded to and computed in (bnb's compute dtype / quant_state.dtype). */
export type ComputeDtype = 'bf16' | 'f32' | 'f16';

export interface QuantizeOptions {
  /** Elements per absmax block (power of two, 32..4096; default 64). */
  blockSize?: number;
  /** Quantize the absmaxes too (bnb_4bit_use_double_quant; default true). */
  doubleQuant?: boolean;
  /** 'nf4' (default) or 'fp4'. */
  quantType?: QuantType;
  /** Dtype of the dequantized weight (default 'bf16', as QLoRA); 'f32' keeps the exact code·absmax. */
  computeDtype?: ComputeDtype;
  /**
   * Model only: modules left unquantized (default ['lm_head']), matched like transformers'
   * llm_int8_skip_modules: a module path equal to an entry, ending with '.entry', or inside it.
   */
  skipModules?: string[];
}

export interface ResolvedQuantizeOptions {
  blockSize: number; doubleQuant: boolean; quantType: QuantType; computeDtype: ComputeDtype; skipModules: string[];
}

/** Fill in defaults and validate. */
export function resolveQuantizeOptions(opts: QuantizeOptions = {}): ResolvedQuantizeOptions {
  const blockSize = opts.blockSize ?? 64;
  if (!Number.isInteger(blockSize) || blockSize < 32 || blockSize > 4096 || (blockSize & (blockSize - 1)) !== 0) {
    throw new RangeError(`quantizeNF4: blockSize must be a power of two between 32 and 4096, got ${blockSize}`);
  }
  const quantType = opts.quantType ?? 'nf4';
  if (quantType !== 'nf4' && quantType !== 'fp4') throw new TypeError(`quantizeNF4: quantType must be 'nf4' or 'fp4', got ${JSON.stringify(quantType)}`);
  const computeDtype = opts.computeDtype ?? 'bf16';
  if (computeDtype !== 'bf16' && computeDtype !== 'f32' && computeDtype !== 'f16') {
    throw new TypeError(`quantizeNF4: computeDtype must be 'bf16', 'f32' or 'f16', got ${JSON.stringify(computeDtype)}`);
  }
  const skipModules = opts.skipModules ?? ['lm_head'];
  if (!Array.isArray(skipModules) || !skipModules.every((s) => typeof s === 'string')) throw new TypeError('quantizeNF4: skipModules must be an array of module names');
  return { blockSize, doubleQuant: opts.doubleQuant ?? true, quantType, computeDtype, skipModules: [...skipModules] };
}

/** The second-level (double quantization) state. */
export interface NestedQuantState {
  /** f32 [ceil(nblocks / 256)]: absmax of each block of 256 first-level absmaxes. */
  absmax: Tensor;
  /** f32 [256]: bnb's signed dynamic map (create_dynamic_map(signed=True)). */
  quantMap: Tensor;
  blockSize: number;
  /** Mean of the first-level absmaxes, added back after dequantizing them. */
  offset: number;
}

/** bnb's code table for `t` (f32[16]: get_4bit_type). */
export function quantMapOf(t: QuantType): Tensor { return new Tensor(native.quant4_code(t)); }
/** bnb's signed dynamic 8-bit map (f32[256]). */
export function dynamicMap(): Tensor { return new Tensor(native.quant_dynamic_map()); }

/**
 * A 4-bit quantized tensor: bnb's Params4bit data plus its QuantState. Owns its tensors:
 * `dispose()` frees them.
 */
export class QuantizedTensor {
  readonly quantType: QuantType;
  /** Logical shape of the original tensor. */
  readonly shape: readonly number[];
  readonly blockSize: number;
  /** Dtype the values dequantize to (bnb quant_state.dtype). */
  readonly dtype: ComputeDtype;
  /** u8 [(n+1)/2, 1]: two codes per byte, element 2j in the high nibble. */
  readonly data: Tensor;
  /** f32 [nblocks], or u8 [nblocks] when double-quantized. */
  readonly absmax: Tensor;
  /** f32 [16] code table. */
  readonly quantMap: Tensor;
  readonly nested: NestedQuantState | null;

  constructor(init: { quantType: QuantType; shape: readonly number[]; blockSize: number; dtype: ComputeDtype; data: Tensor;
    absmax: Tensor; quantMap?: Tensor; nested?: NestedQuantState | null }) {
    this.quantType = init.quantType;
    this.shape = Object.freeze([...init.shape]);
    this.blockSize = init.blockSize;
    this.dtype = init.dtype;
    this.data = init.data;
    this.absmax = init.absmax;
    this.quantMap = init.quantMap ?? quantMapOf(init.quantType);
    this.nested = init.nested ?? null;
    for (const t of this.tensors()) t.kept = true;   // owned by this object, not by a tidy() scope
  }

  get numel(): number { return this.shape.reduce((a, b) => a * b, 1); }
  get numBlocks(): number { return Math.ceil(this.numel / this.blockSize); }
  /** Bytes held by every tensor of the state (packed weight + absmax + tables). */
  get nbytes(): number {
    let n = 0;
    for (const t of this.tensors()) n += t.numel * (t.dtype === 'u8' ? 1 : t.dtype === 'f64' ? 8 : t.dtype === 'f32' ? 4 : 2);
    return n;
  }
  get disposed(): boolean { return this.data.disposed; }

  /** Every tensor of the state. */
  tensors(): Tensor[] {
    const out = [this.data, this.absmax, this.quantMap];
    if (this.nested) out.push(this.nested.absmax, this.nested.quantMap);
    return out;
  }

  /** @internal The object the native 4-bit ops take (csrc/addon/bind_quant.cpp). */
  nativeState(): Record<string, unknown> {
    if (this.disposed) throw new Error('QuantizedTensor: used after dispose()');
    return {
      type: this.quantType, packed: this.data.native, absmax: this.absmax.native, code: this.quantMap.native,
      blocksize: this.blockSize, shape: [...this.shape], dtype: this.dtype,
      nestedAbsmax: this.nested ? this.nested.absmax.native : null,
      nestedCode: this.nested ? this.nested.quantMap.native : null,
      nestedBlocksize: this.nested ? this.nested.blockSize : 256,
      offset: this.nested ? this.nested.offset : 0,
    };
  }

  /** @internal Native aliases of the state (kept alive by autograd until backward is done). */
  aliasState(): { state: Record<string, unknown>; handles: NativeTensor[] } {
    const s = this.nativeState();
    const handles: NativeTensor[] = [];
    for (const k of ['packed', 'absmax', 'code', 'nestedAbsmax', 'nestedCode']) {
      if (s[k]) { const h = native.alias(s[k]) as NativeTensor; handles.push(h); s[k] = h; }
    }
    return { state: s, handles };
  }

  toString(): string {
    return `QuantizedTensor(${this.quantType}[${this.shape.join(',')}], block ${this.blockSize}${this.nested ? ', double-quant' : ''}, ${this.dtype})`;
  }

  dispose(): void { for (const t of this.tensors()) t.dispose(); }
}

/** Quantize one floating tensor (any shape; f32/bf16/f16/f64). */
export function quantizeTensor(t: Tensor, opts: QuantizeOptions = {}): QuantizedTensor {
  if (!(t instanceof Tensor) || t.disposed) throw new TypeError('quantizeNF4: expected a live Tensor');
  if (t.dtype !== 'f32' && t.dtype !== 'bf16' && t.dtype !== 'f16' && t.dtype !== 'f64') {
    throw new TypeError(`quantizeNF4: only floating tensors can be quantized, got ${t.dtype}`);
  }
  if (t.numel === 0) throw new RangeError('quantizeNF4: cannot quantize an empty tensor');
  const o = resolveQuantizeOptions(opts);
  const r = native.quant4_quantize(t.native, o.blockSize, o.quantType, o.doubleQuant) as
    { packed: NativeTensor; absmax: NativeTensor; nestedAbsmax: NativeTensor | null; offset: number };
  const nested = r.nestedAbsmax ? { absmax: new Tensor(r.nestedAbsmax), quantMap: dynamicMap(), blockSize: 256, offset: r.offset } : null;
  return new QuantizedTensor({ quantType: o.quantType, shape: t.shape, blockSize: o.blockSize, dtype: o.computeDtype,
    data: new Tensor(r.packed), absmax: new Tensor(r.absmax), nested });
}

/** Dequantize to a new tensor of the original shape, in `dtype` (default: the state's dtype). */
export function dequantize(q: QuantizedTensor, dtype?: DType): Tensor {
  if (!(q instanceof QuantizedTensor)) throw new TypeError('dequantize: expected a QuantizedTensor');
  const d = dtype ?? q.dtype;
  if (d !== 'f32' && d !== 'bf16' && d !== 'f16' && d !== 'f64') throw new TypeError(`dequantize: dtype must be floating, got ${d}`);
  return new Tensor(native.quant4_dequantize(q.nativeState(), d));
}

/** transformers' llm_int8_skip_modules rule (plus a suffix match on a dotted path). */
export function isSkipped(path: string, skip: readonly string[]): boolean {
  return skip.some((k) => path === k || path.endsWith(`.${k}`) || path.startsWith(`${k}.`) || path.includes(`.${k}.`));
}

/** The linear layers of a model that quantization replaces: [path, module] (nn.Linear and GPT-2 Conv1D). */
export function quantizableLinears(model: Module, skip: readonly string[]): [string, Linear | Conv1D][] {
  const out: [string, Linear | Conv1D][] = [];
  const mods = model.namedModules();
  // A linear whose weight is shared with another kind of module (an output head tied to the token
  // embedding) is never quantized: the embedding needs the float table.
  const shared = new Set<Tensor>();
  for (const [, m] of mods) {
    if (m instanceof Linear || m instanceof Conv1D) continue;
    for (const [n, t] of m.namedParameters()) if (!n.includes('.')) shared.add(t);
  }
  for (const [p, m] of mods) {
    if (p === '' || isSkipped(p, skip)) continue;
    if ((m instanceof Linear || m instanceof Conv1D) && !shared.has(m.weight)) out.push([p, m]);
  }
  return out;
}

/**
 * Quantize a tensor → QuantizedTensor; or a model → the same model with every nn.Linear / GPT-2
 * Conv1D (except `skipModules`) replaced in place by a frozen Linear4bit (the float weights are
 * freed one layer at a time). Conv1D weights ([in, out]) are transposed first, as transformers does.
 */
export function quantizeNF4(tensor: Tensor, opts?: QuantizeOptions): QuantizedTensor;
export function quantizeNF4<M extends Module>(model: M, opts?: QuantizeOptions): M;
export function quantizeNF4(x: Tensor | Module, opts: QuantizeOptions = {}): QuantizedTensor | Module {
  if (x instanceof Tensor) return quantizeTensor(x, opts);
  if (!(x instanceof Module)) throw new TypeError('quantizeNF4: expected a Tensor or a Module');
  const o = resolveQuantizeOptions(opts);
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const { Linear4bit } = require('./linear4bit') as typeof import('./linear4bit');
  const targets = quantizableLinears(x, o.skipModules);
  const converted = new Map<Tensor, Module>();   // tied weights quantize once
  for (const [p, m] of targets) {
    const w = m.weight;
    let q4 = converted.get(w);
    if (!q4) {
      let src = w;
      if (m instanceof Conv1D) {
        const tv = native.transpose(w.native, 0, 1) as NativeTensor;
        src = new Tensor(native.contiguous(tv));
        tv.dispose();
      }
      const q = quantizeTensor(src, o);
      if (src !== w) src.dispose();
      q4 = new Linear4bit(q, m.bias, { fromConv1D: m instanceof Conv1D });
      converted.set(w, q4);
    }
    q4.training = m.training;
    replaceModule(x, p, q4);
  }
  for (const w of converted.keys()) { w.zeroGrad(); w.dispose(); }
  return x;
}

/** Put `m` at dotted `path` of `root` (registerModule replaces an existing child). */
export function replaceModule(root: Module, path: string, m: Module): void {
  const i = path.lastIndexOf('.');
  const parent = i < 0 ? root : root.getSubmodule(path.slice(0, i));
  parent.registerModule(i < 0 ? path : path.slice(i + 1), m);
}
