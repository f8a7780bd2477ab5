/**
 * module.ts — nn.Module: a tree of modules owning parameters and buffers under dotted,
 * HuggingFace-style names ('model.layers.0.self_attn.q_proj.weight').
 *
 * Like torch.nn.Module: registration order is iteration order, shared tensors (tied embeddings)
 * are reported once by namedParameters(), train()/eval() flip `training` recursively, and
 * to(dtype) converts floating parameters and buffers in place.
 */
import { native } from '../native';
import { DType, isFloat } from '../tensor/dtype';
import { Tensor } from '../tensor/tensor';

export abstract class Module {
  /** Training mode (dropout active); set with train()/eval(). */
  training = true;
  private readonly _params = new Map<string, Tensor | null>();
  private readonly _buffers = new Map<string, Tensor | null>();
  private readonly _nonPersistent = new Set<string>();
  private readonly _modules = new Map<string, Module>();

  /** Register (or replace) a parameter; it becomes trainable unless `requiresGrad` is false. */
  registerParameter(name: string, t: Tensor | null, requiresGrad = true): Tensor | null {
    checkName(name, 'registerParameter');
    if (t && requiresGrad && isFloat(t.dtype)) t.requiresGrad_(true);
    this._params.set(name, t);
    return t;
  }
  /** Register a buffer (non-trainable state, e.g. rotary tables); non-persistent ones are not saved. */
  registerBuffer(name: string, t: Tensor | null, persistent = true): Tensor | null {
    checkName(name, 'registerBuffer');
    this._buffers.set(name, t);
    if (!persistent) this._nonPersistent.add(name); else this._nonPersistent.delete(name);
    return t;
  }
  registerModule<M extends Module>(name: string, m: M): M {
    checkName(name, 'registerModule');
    this._modules.set(name, m);
    return m;
  }

  /** Direct children. */
  namedChildren(): [string, Module][] { return [...this._modules.entries()]; }

  /** This module and every descendant with its dotted path ('' for this one). */
  namedModules(prefix = ''): [string, Module][] {
    const out: [string, Module][] = [[prefix, this]];
    const seen = new Set<Module>([this]);
    const walk = (m: Module, p: string) => {
      for (const [n, c] of m._modules) {
        if (seen.has(c)) continue;
        seen.add(c);
        const path = p ? `${p}.${n}` : n;
        out.push([path, c]);
        walk(c, path);
      }
    };
    walk(this, prefix);
    return out;
  }

  /** Every parameter with its dotted name; a tensor shared by several modules appears once. */
  namedParameters(opts: { includeFrozen?: boolean } = {}): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    const seen = new Set<Tensor>();
    for (const [path, m] of this.namedModules()) {
      for (const [n, t] of m._params) {
        if (!t || seen.has(t)) continue;
        seen.add(t);
        if (opts.includeFrozen === false && !t.requiresGrad) continue;
        out.push([path ? `${path}.${n}` : n, t]);
      }
    }
    return out;
  }
  parameters(): Tensor[] { return this.namedParameters().map(([, t]) => t); }

  namedBuffers(opts: { persistentOnly?: boolean } = {}): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    const seen = new Set<Tensor>();
    for (const [path, m] of this.namedModules()) {
      for (const [n, t] of m._buffers) {
        if (!t || seen.has(t)) continue;
        if (opts.persistentOnly && m._nonPersistent.has(n)) continue;
        seen.add(t);
        out.push([path ? `${path}.${n}` : n, t]);
      }
    }
    return out;
  }

  /** Look up a submodule by dotted path. */
  getSubmodule(path: string): Module {
    if (path === '') return this;
    let m: Module = this;
    for (const part of path.split('.')) {
      const c = m._modules.get(part);
      if (!c) throw new Error(`getSubmodule: no submodule '${part}' in '${path}'`);
      m = c;
    }
    return m;
  }

  /** Look up a parameter or buffer by dotted name. */
  getTensor(name: string): Tensor | null {
    const i = name.lastIndexOf('.');
    const m = i < 0 ? this : this.getSubmodule(name.slice(0, i));
    const leaf = i < 0 ? name : name.slice(i + 1);
    if (m._params.has(leaf)) return m._params.get(leaf) ?? null;
    if (m._buffers.has(leaf)) return m._buffers.get(leaf) ?? null;
    throw new Error(`getTensor: no parameter or buffer named '${name}'`);
  }

  /** Replace a parameter or buffer by dotted name (the old tensor is not disposed). */
  setTensor(name: string, t: Tensor): void {
    const i = name.lastIndexOf('.');
    const m = i < 0 ? this : this.getSubmodule(name.slice(0, i));
    const leaf = i < 0 ? name : name.slice(i + 1);
    if (m._params.has(leaf)) m._params.set(leaf, t);
    else if (m._buffers.has(leaf)) m._buffers.set(leaf, t);
    else throw new Error(`setTensor: no parameter or buffer named '${name}'`);
  }

  /** Parameters and persistent buffers by name. */
  stateDict(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    for (const [n, t] of this.namedParameters()) out.set(n, t);
    for (const [n, t] of this.namedBuffers({ persistentOnly: true })) out.set(n, t);
    return out;
  }

  /**
   * Copy values from `state` into existing tensors (converting dtype). With `strict`, missing or
   * unexpected names and shape mismatches throw an error naming the tensor.
   */
  loadStateDict(state: Map<string, Tensor> | Record<string, Tensor>, opts: { strict?: boolean } = {}): { missing: string[]; unexpected: string[] } {
    const entries = state instanceof Map ? state : new Map(Object.entries(state));
    const mine = this.stateDict();
    const missing = [...mine.keys()].filter((k) => !entries.has(k));
    const unexpected = [...entries.keys()].filter((k) => !mine.has(k));
    if (opts.strict !== false && (missing.length || unexpected.length)) {
      throw new Error(`loadStateDict: missing [${missing.join(', ')}], unexpected [${unexpected.join(', ')}]`);
    }
    for (const [k, src] of entries) {
      const dst = mine.get(k);
      if (!dst) continue;
      if (dst.shape.join(',') !== src.shape.join(',')) {
        throw new Error(`loadStateDict: '${k}' has shape [${src.shape}] but the module expects [${dst.shape}]`);
      }
      native.copy_(dst.native, src.native);
    }
    return { missing, unexpected };
  }

  train(mode = true): this {
    for (const [, m] of this.namedModules()) m.training = mode;
    return this;
  }
  eval(): this { return this.train(false); }

  /**
   * Convert floating parameters and buffers to `dtype`, or move everything to a device ('cuda'
   * needs a CUDA build of the addon and a GPU; otherwise a clear error).
   */
  to(target: DType | 'cpu' | 'cuda'): this {
    if (target === 'cpu' || target === 'cuda') {
      // 4-bit layers keep their packed data in a QuantizedTensor next to the registered parameter:
      // moving only the parameter would leave the quant state behind.
      for (const [path, m] of this.namedModules()) {
        const q = (m as unknown as { quantState?: { data?: Tensor } }).quantState;
        if (q && q.data instanceof Tensor && !q.data.disposed && q.data.device !== target) {
          throw new Error(`Module.to('${target}'): '${path}' is a 4-bit layer quantized on '${q.data.device}'; quantize on the ` +
            `target device instead (loadModel(dir, { device: '${target}', quantize }) or move the float model before quantizeNF4)`);
        }
      }
      // One tensor at a time: each original is freed as soon as its copy exists (never the model twice).
      return this.mapTensors((t) => (t.device === target ? null : new Tensor(native.toDevice(t.native, target))), true);
    }
    return this.mapTensors((t) => (!isFloat(t.dtype) || t.dtype === target ? null : new Tensor(native.cast(t.native, target))));
  }

  /**
   * Replace every reference to the parameter/buffer `old` (in this module and every descendant:
   * tied weights included) by `t`, keeping `old`'s requiresGrad. `old` is disposed unless `keepOld`.
   */
  replaceTensor(old: Tensor, t: Tensor, keepOld = false): void {
    t.requiresGrad = old.requiresGrad;
    for (const [, m] of this.namedModules()) {
      for (const map of [m._params, m._buffers]) {
        for (const [n, v] of map) if (v === old) map.set(n, t);
      }
    }
    if (!keepOld) { old.zeroGrad(); old.dispose(); }
  }

  /**
   * Replace every parameter/buffer by convert(t) (null = keep). Each distinct tensor is converted
   * once, so tied weights (embed_tokens / lm_head) stay tied; the originals are disposed — at the
   * end, or (`eager`) as soon as each copy has replaced every reference to it (device moves:
   * the peak is the model plus one tensor).
   */
  private mapTensors(convert: (t: Tensor) => Tensor | null, eager = false): this {
    if (eager) {
      const seen = new Set<Tensor>();
      for (const [, m] of this.namedModules()) {
        for (const map of [m._params, m._buffers]) {
          for (const [, t] of [...map]) {
            if (!t || seen.has(t)) continue;
            seen.add(t);
            const c = convert(t);
            if (!c) continue;
            seen.add(c);
            this.replaceTensor(t, c);
          }
        }
      }
      return this;
    }
    // Convert each distinct tensor once, so tied weights (embed_tokens / lm_head) stay tied.
    const converted = new Map<Tensor, Tensor>();
    for (const [, m] of this.namedModules()) {
      for (const map of [m._params, m._buffers]) {
        for (const [n, t] of map) {
          if (!t) continue;
          let c = converted.get(t);
          if (!c) {
            const r = convert(t);
            if (!r) continue;
            c = r;
            c.requiresGrad = t.requiresGrad;
            converted.set(t, c);
          }
          map.set(n, c);
        }
      }
    }
    for (const t of converted.keys()) { t.zeroGrad(); t.dispose(); }
    return this;
  }

  /** Where the parameters live ('cpu' for a module without parameters). */
  get device(): 'cpu' | 'cuda' {
    for (const [, t] of this.namedParameters()) return t.device as 'cpu' | 'cuda';
    return 'cpu';
  }

  /** Number of parameter elements (shared tensors once). */
  numParameters(opts: { trainableOnly?: boolean } = {}): number {
    let n = 0;
    for (const [, t] of this.namedParameters()) if (!opts.trainableOnly || t.requiresGrad) n += t.numel;
    return n;
  }

  /** Clear gradients of all parameters. */
  zeroGrad(): void { for (const t of this.parameters()) t.zeroGrad(); }

  /** Free every parameter and buffer now. */
  dispose(): void {
    for (const [, t] of this.namedParameters()) { t.zeroGrad(); t.dispose(); }
    for (const [, t] of this.namedBuffers()) t.dispose();
  }
}

function checkName(name: string, op: string): void {
  if (typeof name !== 'string' || name === '' || name.includes('.')) throw new Error(`${op}: invalid name '${name}' (non-empty, no dots)`);
}
