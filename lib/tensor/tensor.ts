/**
 * tensor.ts — the user-facing Tensor: a handle on a native tensor plus autograd state.
 *
 * Shape, dtype and device are read once from the native handle (they never change for a view).
 * Memory is released by `dispose()` (or `using t = ...` with Symbol.dispose), by `tidy()` scopes,
 * or, as a last resort, by the GC finalizer of the native handle.
 */
import { native, NativeTensor } from '../native';
import { Node, runBackward } from './autograd';
import { bf16ToNumber, checkDType, DType, Device, dtypeSize, numberToBf16 } from './dtype';
import * as ops from '../ops';

/** Nested JS arrays of numbers (what `toArray()` returns and `fromArray()` takes). */
export type NestedArray = number | NestedArray[];

export interface TensorOptions {
  dtype?: DType;
  requiresGrad?: boolean;
  /**
   * Where the tensor lives (default 'cpu'). 'cuda' needs a CUDA build of the addon and a GPU;
   * otherwise a clear error is thrown (never a crash).
   */
  device?: Device;
}

function checkDevice(d: unknown, what: string): Device {
  if (d === undefined || d === 'cpu') return 'cpu';
  if (d === 'cuda') return 'cuda';
  throw new TypeError(`${what}: device must be 'cpu' or 'cuda', got ${JSON.stringify(d)}`);
}

/** A native handle moved to `device` (the host handle is released when a copy was made). */
function placed(h: NativeTensor, device: Device): NativeTensor {
  if (device === 'cpu' || h.device === device) return h;
  try { return native.toDevice(h, device) as NativeTensor; } finally { h.dispose(); }
}

export interface RandomOptions extends TensorOptions {
  /** Seed of the counter-based generator: same seed, same numbers on every machine. */
  seed?: number;
}


// ---- tidy scopes ----
const scopes: Set<Tensor>[] = [];

/**
 * Run `fn`, then dispose every Tensor created inside it except those reachable from its result
 * (a Tensor, or arrays/objects of them) and those passed to `keep()`. Like tf.tidy().
 */
export function tidy<T>(fn: () => T): T {
  const scope = new Set<Tensor>();
  scopes.push(scope);
  let result: T;
  try {
    result = fn();
  } finally {
    scopes.pop();
  }
  const keepSet = new Set<Tensor>();
  collectTensors(result, keepSet, 0);
  const outer = scopes[scopes.length - 1];
  for (const t of scope) {
    if (keepSet.has(t) || t.kept) { if (outer) outer.add(t); continue; }
    t.dispose();
  }
  return result;
}

/** Exempt a tensor from the enclosing tidy() scope. */
export function keep<T extends Tensor>(t: T): T { t.kept = true; return t; }

function collectTensors(v: unknown, out: Set<Tensor>, depth: number): void {
  if (depth > 8 || v === null || typeof v !== 'object') return;
  if (v instanceof Tensor) { out.add(v); return; }
  if (Array.isArray(v)) { for (const e of v) collectTensors(e, out, depth + 1); return; }
  if (v instanceof Map) { for (const e of v.values()) collectTensors(e, out, depth + 1); return; }
  for (const e of Object.values(v as Record<string, unknown>)) collectTensors(e, out, depth + 1);
}

function flatten(data: NestedArray, shape: number[], out: number[], depth: number, what: string): void {
  if (Array.isArray(data)) {
    if (shape.length <= depth) shape.push(data.length);
    else if (shape[depth] !== data.length) throw new Error(`${what}: ragged nested array (dimension ${depth} has lengths ${shape[depth]} and ${data.length})`);
    for (const e of data) flatten(e, shape, out, depth + 1, what);
  } else {
    if (typeof data !== 'number' && typeof data !== 'boolean') throw new TypeError(`${what}: expected numbers, got ${typeof data}`);
    if (depth !== shape.length) throw new Error(`${what}: ragged nested array (a number at depth ${depth}, arrays at depth ${shape.length})`);
    out.push(Number(data));
  }
}

function checkShape(shape: readonly number[], what: string): number[] {
  if (!Array.isArray(shape)) throw new TypeError(`${what}: shape must be an array of non-negative integers`);
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) throw new TypeError(`${what}: shape must be an array of non-negative integers, got [${shape}]`);
  }
  return [...shape];
}

function typedFor(dtype: DType, values: ArrayLike<number>): ArrayBufferView {
  switch (dtype) {
    case 'f32': return Float32Array.from(values);
    case 'f64': return Float64Array.from(values);
    case 'i32': return Int32Array.from(values);
    case 'i64': return BigInt64Array.from(Array.from(values, (v) => {
      if (!Number.isInteger(v)) throw new TypeError(`i64 tensor: ${v} is not an integer`);
      return BigInt(v);
    }));
    case 'u8': return Uint8Array.from(values);
    case 'bf16': return Uint16Array.from(values, numberToBf16);
    case 'f16': {
      // Go through the native cast for correct rounding.
      return Float32Array.from(values);
    }
  }
}

/** A tensor on the CPU (or a GPU when built with CUDA). */
export class Tensor {
  /** The native handle (shared storage view). */
  readonly native: NativeTensor;
  readonly shape: readonly number[];
  readonly dtype: DType;
  readonly device: Device;
  /** Whether gradients flow to this tensor (leaves get `.grad`). */
  requiresGrad = false;
  /** Accumulated gradient of a leaf after `backward()`. */
  grad: Tensor | null = null;
  /** The op that produced this tensor (null for leaves). */
  gradFn: Node | null = null;
  /** @internal exempt from tidy() */
  kept = false;

  /** @internal Wrap a native handle; use the static constructors instead. */
  constructor(h: NativeTensor) {
    this.native = h;
    this.shape = Object.freeze(h.shape);
    this.dtype = h.dtype as DType;
    this.device = h.device as Device;
    const s = scopes[scopes.length - 1];
    if (s) s.add(this);
  }

  get numel(): number { let n = 1; for (const d of this.shape) n *= d; return n; }
  get ndim(): number { return this.shape.length; }
  get disposed(): boolean { return this.native.disposed; }
  /** Is this a leaf of the autograd graph (created by the user, not by an op)? */
  get isLeaf(): boolean { return this.gradFn === null; }

  // ---------- construction ----------
  /** From nested arrays or a flat array/typed array with `shape`. Default dtype f32. */
  static fromArray(data: NestedArray | ArrayLike<number>, opts: TensorOptions & { shape?: number[] } = {}): Tensor {
    const dtype = checkDType(opts.dtype ?? 'f32', 'fromArray: dtype');
    let flat: ArrayLike<number>;
    let shape: number[];
    if (ArrayBuffer.isView(data) || (Array.isArray(data) && !data.some((e) => Array.isArray(e)) && opts.shape)) {
      flat = data as ArrayLike<number>;
      shape = opts.shape ? checkShape(opts.shape, 'fromArray') : [flat.length];
    } else {
      const out: number[] = [];
      const inferred: number[] = [];
      flatten(data as NestedArray, inferred, out, 0, 'fromArray');
      flat = out;
      shape = opts.shape ? checkShape(opts.shape, 'fromArray') : inferred;
    }
    let n = 1; for (const d of shape) n *= d;
    if (n !== flat.length) throw new Error(`fromArray: ${flat.length} values do not fill shape [${shape}] (${n} elements)`);
    const dev = checkDevice(opts.device, 'fromArray');
    let h: NativeTensor;
    if (dtype === 'f16') {
      const f = native.fromBuffer(Float32Array.from(flat), shape, 'f32') as NativeTensor;
      h = native.cast(f, 'f16') as NativeTensor;
      f.dispose();
    } else {
      h = native.fromBuffer(typedFor(dtype, flat), shape, dtype) as NativeTensor;
    }
    const t = new Tensor(placed(h, dev));   // opts.device was ignored before: a 'cuda' request gave a cpu tensor
    if (opts.requiresGrad) t.requiresGrad_(true);
    return t;
  }

  /** From raw bytes in `dtype`'s little-endian layout (copied). */
  static fromBuffer(bytes: ArrayBuffer | ArrayBufferView, shape: number[], dtype: DType): Tensor {
    return new Tensor(native.fromBuffer(bytes, checkShape(shape, 'fromBuffer'), checkDType(dtype, 'fromBuffer: dtype')));
  }

  static scalar(v: number, opts: TensorOptions = {}): Tensor { return Tensor.full([], v, opts); }
  static empty(shape: number[], opts: TensorOptions = {}): Tensor {
    const dev = checkDevice(opts.device, 'empty');
    const s = checkShape(shape, 'empty'), dt = checkDType(opts.dtype ?? 'f32');
    // On the GPU, zero-filled (no uninitialised host staging copy).
    const h = dev === 'cuda' && typeof native.cuda_zeros === 'function' ? native.cuda_zeros(s, dt) as NativeTensor : placed(native.empty(s, dt) as NativeTensor, dev);
    return Tensor.withGrad(new Tensor(h), opts);
  }
  static zeros(shape: number[], opts: TensorOptions = {}): Tensor {
    const dev = checkDevice(opts.device, 'zeros');
    const s = checkShape(shape, 'zeros'), dt = checkDType(opts.dtype ?? 'f32');
    const h = dev === 'cuda' && typeof native.cuda_zeros === 'function' ? native.cuda_zeros(s, dt) as NativeTensor : placed(native.zeros(s, dt) as NativeTensor, dev);
    return Tensor.withGrad(new Tensor(h), opts);
  }
  static ones(shape: number[], opts: TensorOptions = {}): Tensor { return Tensor.full(shape, 1, opts); }
  static full(shape: number[], value: number, opts: TensorOptions = {}): Tensor {
    if (typeof value !== 'number') throw new TypeError(`full: value must be a number, got ${typeof value}`);
    const dev = checkDevice(opts.device, 'full');
    const s = checkShape(shape, 'full'), dt = checkDType(opts.dtype ?? 'f32');
    const h = dev === 'cuda' && typeof native.cuda_full === 'function' ? native.cuda_full(s, value, dt) as NativeTensor : placed(native.full(s, value, dt) as NativeTensor, dev);
    return Tensor.withGrad(new Tensor(h), opts);
  }
  static zerosLike(t: Tensor, opts: TensorOptions = {}): Tensor { return Tensor.zeros([...t.shape], { dtype: t.dtype, device: t.device, ...opts }); }
  static onesLike(t: Tensor, opts: TensorOptions = {}): Tensor { return Tensor.ones([...t.shape], { dtype: t.dtype, device: t.device, ...opts }); }
  /** [start, end) with `step`; dtype defaults to i64 for integer arguments, else f32. */
  static arange(start: number, end?: number, step = 1, opts: TensorOptions = {}): Tensor {
    if (end === undefined) { end = start; start = 0; }
    const dflt: DType = Number.isInteger(start) && Number.isInteger(end) && Number.isInteger(step) ? 'i64' : 'f32';
    const dev = checkDevice(opts.device, 'arange');
    return new Tensor(placed(native.arange(start, end, step, checkDType(opts.dtype ?? dflt)) as NativeTensor, dev));
  }
  /** Standard normal (or N(mean, std²)) samples; seeded and thread-count independent. */
  static randn(shape: number[], opts: RandomOptions & { mean?: number; std?: number } = {}): Tensor {
    const dev = checkDevice(opts.device, 'randn');
    // On the GPU the same Philox stream is generated there (no host copy).
    const gen = dev === 'cuda' ? native.cuda_randn : native.randn;
    const t = new Tensor(gen(checkShape(shape, 'randn'), seedOf(opts.seed), checkDType(opts.dtype ?? 'f32'), opts.mean ?? 0, opts.std ?? 1));
    return Tensor.withGrad(t, opts);
  }
  /** Uniform samples in [low, high). */
  static rand(shape: number[], opts: RandomOptions & { low?: number; high?: number } = {}): Tensor {
    const gen = checkDevice(opts.device, 'rand') === 'cuda' ? native.cuda_rand : native.rand;
    const t = new Tensor(gen(checkShape(shape, 'rand'), seedOf(opts.seed), checkDType(opts.dtype ?? 'f32'), opts.low ?? 0, opts.high ?? 1));
    return Tensor.withGrad(t, opts);
  }

  private static withGrad(t: Tensor, opts: TensorOptions): Tensor {
    if (opts.requiresGrad) t.requiresGrad_(true);
    return t;
  }

  // ---------- reading data ----------
  /** Elements in row-major order as a typed array of the storage type (bf16/f16 as raw Uint16). */
  toTypedArray(): Float32Array | Float64Array | Int32Array | BigInt64Array | Uint8Array | Uint16Array {
    const buf = native.toBuffer(this.native) as ArrayBuffer;
    switch (this.dtype) {
      case 'f32': return new Float32Array(buf);
      case 'f64': return new Float64Array(buf);
      case 'i32': return new Int32Array(buf);
      case 'i64': return new BigInt64Array(buf);
      case 'u8': return new Uint8Array(buf);
      case 'bf16': case 'f16': return new Uint16Array(buf);
    }
  }
  /** Elements converted to f32. */
  toFloat32Array(): Float32Array {
    if (this.dtype === 'f32') return this.toTypedArray() as Float32Array;
    const c = native.cast(this.native, 'f32') as NativeTensor;
    try { return new Float32Array(native.toBuffer(c) as ArrayBuffer); } finally { c.dispose(); }
  }
  /** Elements converted to f64 (exact for every dtype except i64 beyond 2^53). */
  toFloat64Array(): Float64Array {
    if (this.dtype === 'f64') return this.toTypedArray() as Float64Array;
    if (this.dtype === 'i64') return Float64Array.from(this.toTypedArray() as BigInt64Array, (b) => Number(b));
    if (this.dtype === 'bf16') return Float64Array.from(this.toTypedArray() as Uint16Array, bf16ToNumber);
    const c = native.cast(this.native, 'f64') as NativeTensor;
    try { return new Float64Array(native.toBuffer(c) as ArrayBuffer); } finally { c.dispose(); }
  }
  /** Nested arrays of numbers with this tensor's shape. */
  toArray(): NestedArray {
    const flat = this.toFloat64Array();
    if (this.shape.length === 0) return flat[0];
    let pos = 0;
    const build = (d: number): NestedArray[] => {
      const n = this.shape[d];
      const out: NestedArray[] = new Array(n);
      for (let i = 0; i < n; i++) out[i] = d === this.shape.length - 1 ? flat[pos++] : build(d + 1);
      return out;
    };
    return build(0);
  }
  /** The value of a one-element tensor. */
  item(): number { return native.item(this.native) as number; }

  // ---------- autograd ----------
  /** Set requiresGrad on a leaf. */
  requiresGrad_(on = true): this {
    if (!this.isLeaf && !on) throw new Error('requiresGrad_: only leaf tensors can stop requiring grad; use detach()');
    if (on && this.dtype !== 'f32' && this.dtype !== 'f64' && this.dtype !== 'bf16' && this.dtype !== 'f16') {
      throw new Error(`requiresGrad_: only floating tensors can require grad, this is ${this.dtype}`);
    }
    this.requiresGrad = on;
    return this;
  }
  /**
   * Backpropagate from this tensor (a scalar, or pass `grad` of the same shape). Leaves accumulate
   * into `.grad`; the graph's saved tensors are freed unless `retainGraph`.
   */
  backward(grad?: Tensor, opts: { retainGraph?: boolean } = {}): void {
    if (grad && grad.shape.join(',') !== this.shape.join(',')) {
      throw new Error(`backward: grad shape [${grad.shape}] does not match tensor shape [${this.shape}]`);
    }
    runBackward(this, grad ?? null, !!opts.retainGraph,
      (like) => Tensor.ones([...like.shape], { dtype: like.dtype }),
      (a, b) => new Tensor(native.binary('add', a.native, b.native)));
  }
  /** A view sharing storage, cut from the graph. */
  detach(): Tensor { return new Tensor(native.alias(this.native)); }
  /** Clear `.grad` (disposing it). */
  zeroGrad(): void { if (this.grad) { this.grad.dispose(); this.grad = null; } }

  // ---------- memory ----------
  /** Release this handle now (storage is freed when no other view or saved copy uses it). */
  dispose(): void { this.native.dispose(); }
  /** `using t = ...` support (TS 5.2+ explicit resource management). */
  [Symbol.dispose](): void { this.native.dispose(); }
  [Symbol.toPrimitive](): string { return this.toString(); }
  toString(): string { return `Tensor(${this.dtype}[${this.shape.join(',')}]${this.device !== 'cpu' ? '@' + this.device : ''}${this.requiresGrad ? ', requiresGrad' : ''})`; }

  // ---------- fluent ops (see lib/ops for the full set) ----------
  add(o: Tensor | number): Tensor { return ops.add(this, o); }
  sub(o: Tensor | number): Tensor { return ops.sub(this, o); }
  mul(o: Tensor | number): Tensor { return ops.mul(this, o); }
  div(o: Tensor | number): Tensor { return ops.div(this, o); }
  pow(o: Tensor | number): Tensor { return ops.pow(this, o); }
  neg(): Tensor { return ops.neg(this); }
  exp(): Tensor { return ops.exp(this); }
  log(): Tensor { return ops.log(this); }
  sqrt(): Tensor { return ops.sqrt(this); }
  matmul(o: Tensor): Tensor { return ops.matmul(this, o); }
  sum(dims?: number | number[], keepdim = false): Tensor { return ops.sum(this, dims, keepdim); }
  mean(dims?: number | number[], keepdim = false): Tensor { return ops.mean(this, dims, keepdim); }
  reshape(shape: number[]): Tensor { return ops.reshape(this, shape); }
  view(shape: number[]): Tensor { return ops.view(this, shape); }
  transpose(a: number, b: number): Tensor { return ops.transpose(this, a, b); }
  permute(order: number[]): Tensor { return ops.permute(this, order); }
  contiguous(): Tensor { return ops.contiguous(this); }
  /**
   * A copy in another dtype (autograd-aware cast), or on another device ('cpu' | 'cuda': a plain
   * copy, detached from the graph; this tensor itself when it is already there). 'cuda' without a
   * CUDA build or a GPU throws a clear error.
   */
  to(target: DType | Device): Tensor {
    if (target === 'cpu' || target === 'cuda') {
      if (this.device === target) return this;
      const t = new Tensor(native.toDevice(this.native, target));
      if (this.requiresGrad && this.isLeaf) t.requiresGrad_(true);
      return t;
    }
    return ops.cast(this, target);
  }
  /** `to('cuda')`. */
  cuda(): Tensor { return this.to('cuda'); }
  /** `to('cpu')`. */
  cpu(): Tensor { return this.to('cpu'); }
  clone(): Tensor { return ops.clone(this); }
}


function seedOf(seed: number | undefined): number {
  if (seed === undefined) return Math.floor(Math.random() * 2 ** 52);
  if (!Number.isInteger(seed) || seed < 0) throw new TypeError(`seed must be a non-negative integer, got ${seed}`);
  return seed;
}

export { dtypeSize };
