/**
 * adamw.ts — AdamW with fused native steps (csrc/cpu/optim.cpp), parameter groups, LoRA+, and
 * state()/loadState(). `AdamW8bit`, `PagedAdamW` and `PagedAdamW8bit` (paged.ts) are the same
 * class with 8-bit and/or paged state storage.
 *
 * The update is exactly torch.optim.AdamW's (decoupled weight decay, bias correction, eps after
 * the square root), computed in f32 (f64 for f64 parameters; bf16/f16 parameters are widened to
 * f32 and rounded back):
 *
 *     p ← p·(1 − lr·λ);  m ← β1·m + (1 − β1)·g;  v ← β2·v + (1 − β2)·g²
 *     p ← p − lr/(1 − β1ᵗ) · m / (√v/√(1 − β2ᵗ) + ε)
 *
 * Frozen tensors (requiresGrad false) are ignored; parameters without a gradient are skipped in
 * a step (their step count does not advance), as in torch.
 */
import { native, NativeTensor } from '../native';
import { keep, Tensor } from '../tensor/tensor';
import type { DType } from '../tensor/dtype';
import { OptimizerState, ParamState, SavedParamGroup, STATE_TENSOR_KEYS } from './state';

/** A parameter with its name (from `module.namedParameters()`); names enable LoRA+ and load checks. */
export type NamedParameter = [string, Tensor];
export type ParamList = Tensor[] | NamedParameter[];

export interface AdamWHyperParams {
  /** Learning rate (default 1e-3). */
  lr?: number;
  /** (β1, β2), default (0.9, 0.999). */
  betas?: [number, number];
  /** Added to √v̂ (default 1e-8). */
  eps?: number;
  /** Decoupled weight decay λ (default 0.01, as torch.optim.AdamW). */
  weightDecay?: number;
}

/** A parameter group: its parameters and any options that differ from the optimizer's defaults. */
export interface ParamGroupSpec extends AdamWHyperParams {
  params: ParamList;
  name?: string;
}

export interface AdamWOptions extends AdamWHyperParams {
  /**
   * LoRA+ (Hayou et al. 2024): parameters whose name matches /lora_B/ get lr × loraPlusRatio
   * (e.g. 16) in a group of their own. Needs named parameters ([name, tensor] pairs).
   */
  loraPlusRatio?: number;
}

/** A resolved parameter group. `lr` is the current rate; schedules set lr = initialLr × multiplier. */
export interface ParamGroup {
  name?: string;
  params: Tensor[];
  names: (string | null)[];
  lr: number;
  initialLr: number;
  betas: [number, number];
  eps: number;
  weightDecay: number;
}

/** @internal How states are stored (set by the AdamW8bit / Paged* subclasses). */
export interface StateStorage {
  optimBits: 32 | 8;
  paged: boolean;
  /** Directory of the paged-memory files (default PEFTKIT_PAGED_DIR, else the OS temp dir). */
  pagedDir?: string;
  /** Tensors with fewer elements keep 32-bit states under 8-bit optimizers (bitsandbytes min_8bit_size). */
  minSize8bit: number;
}

const DEFAULTS = { lr: 1e-3, betas: [0.9, 0.999] as [number, number], eps: 1e-8, weightDecay: 0.01 };

function isNamed(x: unknown): x is NamedParameter {
  return Array.isArray(x) && x.length === 2 && typeof x[0] === 'string' && x[1] instanceof Tensor;
}
function isGroupSpec(x: unknown): x is ParamGroupSpec {
  return !!x && typeof x === 'object' && !Array.isArray(x) && !(x instanceof Tensor) && 'params' in (x as object);
}

function checkHyper(h: Required<AdamWHyperParams>, where: string): void {
  const { lr, betas, eps, weightDecay } = h;
  if (typeof lr !== 'number' || !Number.isFinite(lr) || lr < 0) throw new RangeError(`${where}: invalid learning rate ${lr}`);
  if (!Array.isArray(betas) || betas.length !== 2) throw new TypeError(`${where}: betas must be a pair [beta1, beta2]`);
  for (const [i, b] of betas.entries()) {
    if (typeof b !== 'number' || !(b >= 0 && b < 1)) throw new RangeError(`${where}: invalid beta parameter at index ${i}: ${b}`);
  }
  if (typeof eps !== 'number' || !Number.isFinite(eps) || eps < 0) throw new RangeError(`${where}: invalid epsilon value ${eps}`);
  if (typeof weightDecay !== 'number' || !Number.isFinite(weightDecay) || weightDecay < 0) {
    throw new RangeError(`${where}: invalid weightDecay value ${weightDecay}`);
  }
}

function splitList(list: ParamList, where: string): { params: Tensor[]; names: (string | null)[] } {
  if (!Array.isArray(list)) throw new TypeError(`${where}: params must be an array of Tensors or [name, Tensor] pairs`);
  const params: Tensor[] = [], names: (string | null)[] = [];
  for (const [i, e] of (list as unknown[]).entries()) {
    let t: Tensor, n: string | null;
    if (e instanceof Tensor) { t = e; n = null; } else if (isNamed(e)) { n = e[0]; t = e[1]; } else {
      throw new TypeError(`${where}: params[${i}] is neither a Tensor nor a [name, Tensor] pair`);
    }
    if (t.disposed) throw new Error(`${where}: parameter ${n ?? i} has been disposed`);
    if (!t.requiresGrad) continue;   // frozen: never updated
    params.push(t); names.push(n);
  }
  return { params, names };
}

/** AdamW (torch.optim.AdamW semantics) over native tensors. */
export class AdamW {
  readonly paramGroups: ParamGroup[];
  /** @internal */
  protected readonly storage: StateStorage;
  private readonly states = new Map<Tensor, ParamState>();

  constructor(params: ParamList | ParamGroupSpec[], opts: AdamWOptions = {}, storage?: Partial<StateStorage>) {
    const name = this.constructor.name;
    const base = {
      lr: opts.lr ?? DEFAULTS.lr, betas: opts.betas ?? DEFAULTS.betas, eps: opts.eps ?? DEFAULTS.eps,
      weightDecay: opts.weightDecay ?? DEFAULTS.weightDecay,
    };
    checkHyper(base, name);
    this.storage = { optimBits: storage?.optimBits ?? 32, paged: storage?.paged ?? false, pagedDir: storage?.pagedDir,
      minSize8bit: storage?.minSize8bit ?? 4096 };
    if (this.storage.optimBits !== 32 && this.storage.optimBits !== 8) {
      throw new RangeError(`${name}: optimBits must be 32 or 8, got ${this.storage.optimBits}`);
    }
    if (!Array.isArray(params)) throw new TypeError(`${name}: params must be an array (tensors, [name, tensor] pairs, or parameter groups)`);
    const specs: ParamGroupSpec[] = params.length > 0 && isGroupSpec(params[0]) ? params as ParamGroupSpec[] : [{ params: params as ParamList }];

    const groups: ParamGroup[] = [];
    const seen = new Set<Tensor>();
    for (const [gi, spec] of specs.entries()) {
      if (!isGroupSpec(spec)) throw new TypeError(`${name}: parameter group ${gi} must be an object with 'params'`);
      const h = { lr: spec.lr ?? base.lr, betas: spec.betas ?? base.betas, eps: spec.eps ?? base.eps,
        weightDecay: spec.weightDecay ?? base.weightDecay };
      checkHyper(h, `${name}: parameter group ${gi}`);
      const { params: ps, names } = splitList(spec.params, `${name}: parameter group ${gi}`);
      for (const [k, p] of ps.entries()) {
        if (seen.has(p)) throw new Error(`${name}: parameter ${names[k] ?? k} appears in more than one parameter group`);
        seen.add(p);
        if (p.dtype !== 'f32' && p.dtype !== 'bf16' && p.dtype !== 'f16' && p.dtype !== 'f64') {
          throw new TypeError(`${name}: parameter ${names[k] ?? k} has dtype ${p.dtype}; only float parameters can be optimized`);
        }
      }
      const mk = (pp: Tensor[], nn: (string | null)[], lr: number, gname?: string): ParamGroup => ({
        name: gname, params: pp, names: nn, lr, initialLr: lr, betas: [h.betas[0], h.betas[1]], eps: h.eps, weightDecay: h.weightDecay,
      });
      if (opts.loraPlusRatio !== undefined) {
        const r = opts.loraPlusRatio;
        if (typeof r !== 'number' || !Number.isFinite(r) || r <= 0) throw new RangeError(`${name}: loraPlusRatio must be a positive number, got ${r}`);
        const aP: Tensor[] = [], aN: (string | null)[] = [], bP: Tensor[] = [], bN: (string | null)[] = [];
        for (const [k, p] of ps.entries()) {
          const n = names[k];
          if (n === null) throw new Error(`${name}: loraPlusRatio needs named parameters ([name, tensor] pairs, e.g. model.namedParameters())`);
          if (/lora_B/.test(n)) { bP.push(p); bN.push(n); } else { aP.push(p); aN.push(n); }
        }
        if (aP.length) groups.push(mk(aP, aN, h.lr, spec.name));
        if (bP.length) groups.push(mk(bP, bN, h.lr * r, `${spec.name ?? 'default'}.lora_B`));
      } else {
        groups.push(mk(ps, names, h.lr, spec.name));
      }
    }
    this.paramGroups = groups;
  }

  /** Bits per state element this optimizer uses for large tensors (32 or 8). */
  get optimBits(): 32 | 8 { return this.storage.optimBits; }
  /** Whether states live in paged (file-backed, OS-pageable) memory. */
  get paged(): boolean { return this.storage.paged; }

  /** Apply one update to every parameter that has a gradient. */
  step(): void {
    this.prefetchManagedStates();
    for (const g of this.paramGroups) {
      for (const [k, p] of g.params.entries()) {
        const grad = p.grad;
        if (!grad) continue;
        const pname = g.names[k] ?? `#${k} of group ${g.name ?? this.paramGroups.indexOf(g)}`;
        if (p.disposed) throw new Error(`${this.constructor.name}.step: parameter ${pname} has been disposed`);
        if (grad.disposed) throw new Error(`${this.constructor.name}.step: the gradient of ${pname} has been disposed`);
        if (grad.shape.join(',') !== p.shape.join(',')) {
          throw new Error(`${this.constructor.name}.step: gradient of ${pname} has shape [${grad.shape}] but the parameter has [${p.shape}]`);
        }
        if (!p.native.isContiguous) throw new Error(`${this.constructor.name}.step: parameter ${pname} must be contiguous`);
        const st = this.states.get(p) ?? this.initState(p);
        let gn: NativeTensor = grad.native;
        const temps: NativeTensor[] = [];
        if (grad.dtype !== p.dtype && grad.dtype !== 'f32') { gn = native.cast(gn, p.dtype === 'f64' ? 'f64' : 'f32'); temps.push(gn); }
        if (!gn.isContiguous) { gn = native.contiguous(gn); temps.push(gn); }
        try {
          const t = st.step + 1;
          if (st.expAvg) {
            native.adamw_step(p.native, gn, st.expAvg.native, st.expAvgSq!.native, g.lr, g.betas[0], g.betas[1], g.eps, g.weightDecay, t);
          } else {
            native.adamw8bit_step(p.native, gn, st.state1!.native, st.state2!.native, st.absmax1!.native, st.absmax2!.native,
              g.lr, g.betas[0], g.betas[1], g.eps, g.weightDecay, t);
          }
          st.step = t;
        } finally {
          for (const h of temps) h.dispose();
        }
      }
    }
  }

  /** Drop every parameter's gradient (torch's zero_grad(set_to_none=True)). */
  zeroGrad(): void {
    for (const g of this.paramGroups) for (const p of g.params) p.zeroGrad();
  }

  /** Set every group's lr to initialLr × multiplier (what LR schedules call). */
  setLrMultiplier(multiplier: number): void {
    if (typeof multiplier !== 'number' || !Number.isFinite(multiplier) || multiplier < 0) {
      throw new RangeError(`setLrMultiplier: multiplier must be a finite number >= 0, got ${multiplier}`);
    }
    for (const g of this.paramGroups) g.lr = g.initialLr * multiplier;
  }

  /** Step count of a parameter (0 before its first update). */
  stepOf(p: Tensor): number { return this.states.get(p)?.step ?? 0; }

  /** The live state of a parameter (for inspection; do not dispose its tensors). */
  stateOf(p: Tensor): Readonly<ParamState> | undefined { return this.states.get(p); }

  /** Bytes held by optimizer states, and how many of them are in paged memory. */
  stateBytes(): { total: number; paged: number } {
    let total = 0, paged = 0;
    for (const st of this.states.values()) {
      for (const k of STATE_TENSOR_KEYS) {
        const t = st[k];
        if (!t) continue;
        const b = t.numel * dtypeBytes(t.dtype);
        total += b;
        if (native.isPaged(t.native) || (t.device === 'cuda' && native.isManaged(t.native))) paged += b;
      }
    }
    return { total, paged };
  }

  /**
   * A snapshot of the state. With `copy` (default) the tensors are copies in ordinary memory
   * that the caller owns (dispose with disposeState()); with `copy: false` they are the live
   * state tensors (serialise them before the next step, never dispose them).
   */
  state(opts: { copy?: boolean } = {}): OptimizerState {
    const copy = opts.copy ?? true;
    const groups: SavedParamGroup[] = [];
    const state: Record<number, ParamState> = {};
    let idx = 0;
    for (const g of this.paramGroups) {
      const ids: number[] = [];
      for (const p of g.params) {
        const st = this.states.get(p);
        if (st) {
          const out: ParamState = { step: st.step };
          for (const k of STATE_TENSOR_KEYS) {
            const t = st[k];
            if (t) out[k] = copy ? new Tensor(native.clone(t.native)) : t;
          }
          state[idx] = out;
        }
        ids.push(idx++);
      }
      groups.push({ name: g.name, lr: g.lr, initialLr: g.initialLr, betas: [g.betas[0], g.betas[1]], eps: g.eps,
        weightDecay: g.weightDecay, params: ids, paramNames: [...g.names] });
    }
    return { format: 'peftkit.adamw.v1', optimBits: this.storage.optimBits, paged: this.storage.paged, paramGroups: groups, state };
  }

  /**
   * Restore a state from state() (of this or another AdamW variant: 8-bit states are dequantized
   * for a 32-bit optimizer and 32-bit states quantized for an 8-bit one). Group hyper-parameters
   * are taken from the saved state, as torch does. The given tensors are copied, not kept.
   */
  loadState(s: OptimizerState): void {
    const where = `${this.constructor.name}.loadState`;
    if (!s || s.format !== 'peftkit.adamw.v1') throw new Error(`${where}: not a peftkit AdamW state (format ${s && (s as { format?: unknown }).format})`);
    if (s.paramGroups.length !== this.paramGroups.length) {
      throw new Error(`${where}: the state has ${s.paramGroups.length} parameter groups, this optimizer has ${this.paramGroups.length}`);
    }
    const flat: { p: Tensor; name: string | null }[] = [];
    for (const [gi, g] of this.paramGroups.entries()) {
      const sg = s.paramGroups[gi];
      if (sg.params.length !== g.params.length) {
        throw new Error(`${where}: parameter group ${gi} has ${sg.params.length} parameters in the state but ${g.params.length} here`);
      }
      for (const [k, p] of g.params.entries()) {
        const a = sg.paramNames?.[k] ?? null, b = g.names[k];
        if (a !== null && b !== null && a !== b) throw new Error(`${where}: parameter ${k} of group ${gi} is '${a}' in the state but '${b}' here`);
        flat.push({ p, name: b ?? a });
      }
    }
    // Build every new state first, so a bad entry leaves the optimizer unchanged.
    const fresh = new Map<Tensor, ParamState>();
    try {
      for (const [key, ps] of Object.entries(s.state)) {
        const i = Number(key);
        if (!Number.isInteger(i) || i < 0 || i >= flat.length) throw new Error(`${where}: state for parameter index ${key}, but there are ${flat.length} parameters`);
        const { p, name } = flat[i];
        if (!Number.isInteger(ps.step) || ps.step < 0) throw new Error(`${where}: bad step count ${ps.step} for parameter ${name ?? i}`);
        fresh.set(p, this.importState(p, ps, `${where}: parameter ${name ?? i}`));
      }
    } catch (e) {
      for (const st of fresh.values()) disposeParamState(st);
      throw e;
    }
    for (const st of this.states.values()) disposeParamState(st);
    this.states.clear();
    for (const [p, st] of fresh) this.states.set(p, st);
    for (const [gi, g] of this.paramGroups.entries()) {
      const sg = s.paramGroups[gi];
      g.lr = sg.lr; g.initialLr = sg.initialLr ?? sg.lr; g.betas = [sg.betas[0], sg.betas[1]]; g.eps = sg.eps; g.weightDecay = sg.weightDecay;
    }
  }

  /** Free every state tensor (the optimizer starts from scratch if stepped again). */
  dispose(): void {
    for (const st of this.states.values()) disposeParamState(st);
    this.states.clear();
  }

  // ---- internals ----
  private uses8bit(p: Tensor): boolean {
    return this.storage.optimBits === 8 && p.numel >= this.storage.minSize8bit && p.dtype !== 'f64';
  }

  /**
   * A zero-filled state tensor next to its parameter (on its device: a loaded state too, or the
   * update throws 'exp_avg ... on cpu; expected a cuda tensor'). Paged: an mmap'd host buffer on the CPU, CUDA
   * managed (unified) memory for GPU parameters (the driver migrates it back under memory pressure;
   * step() prefetches it to the GPU first).
   */
  private alloc(shape: readonly number[], dtype: DType, device: 'cpu' | 'cuda'): Tensor {
    let h: NativeTensor;
    if (device === 'cuda') {
      if (this.storage.paged) h = native.emptyManaged([...shape], dtype);
      else { const z = native.zeros([...shape], dtype) as NativeTensor; h = native.toDevice(z, 'cuda'); z.dispose(); }
    } else {
      h = this.storage.paged ? native.emptyPaged([...shape], dtype, this.storage.pagedDir ?? null) : native.zeros([...shape], dtype);
    }
    return keep(new Tensor(h));
  }

  /** Paged states of GPU parameters: move them to the GPU before the update (one async prefetch). */
  private prefetchManagedStates(): void {
    if (!this.storage.paged) return;
    const managed: NativeTensor[] = [];
    for (const st of this.states.values()) {
      for (const k of STATE_TENSOR_KEYS) {
        const t = st[k];
        if (t && t.device === 'cuda') managed.push(t.native);
      }
    }
    if (managed.length) native.prefetchManaged(managed, 'cuda');
  }

  private initState(p: Tensor): ParamState {
    const st: ParamState = { step: 0 };
    if (this.uses8bit(p)) {
      const nb = Math.ceil(p.numel / 256);
      st.state1 = this.alloc(p.shape, 'u8', p.device); st.state2 = this.alloc(p.shape, 'u8', p.device);
      st.absmax1 = this.alloc([nb], 'f32', p.device); st.absmax2 = this.alloc([nb], 'f32', p.device);
    } else {
      const dt: DType = p.dtype === 'f64' ? 'f64' : 'f32';
      st.expAvg = this.alloc(p.shape, dt, p.device); st.expAvgSq = this.alloc(p.shape, dt, p.device);
    }
    this.states.set(p, st);
    return st;
  }

  private importState(p: Tensor, ps: ParamState, where: string): ParamState {
    const st: ParamState = { step: ps.step };
    const shape = p.shape;
    const check = (t: Tensor | undefined, key: string, want: readonly number[]): Tensor => {
      if (!t) throw new Error(`${where}: missing '${key}'`);
      if (t.disposed) throw new Error(`${where}: '${key}' has been disposed`);
      if (t.shape.join(',') !== want.join(',')) throw new Error(`${where}: '${key}' has shape [${t.shape}], expected [${want}]`);
      return t;
    };
    const copyInto = (dst: Tensor, src: NativeTensor) => { native.copy_(dst.native, src); };
    const nb = Math.ceil(p.numel / 256);
    const src8 = ps.state1 !== undefined;
    try {
      if (this.uses8bit(p)) {
        st.state1 = this.alloc(shape, 'u8', p.device); st.state2 = this.alloc(shape, 'u8', p.device);
        st.absmax1 = this.alloc([nb], 'f32', p.device); st.absmax2 = this.alloc([nb], 'f32', p.device);
        if (src8) {
          copyInto(st.state1, check(ps.state1, 'state1', shape).native);
          copyInto(st.state2, check(ps.state2, 'state2', shape).native);
          copyInto(st.absmax1, check(ps.absmax1, 'absmax1', [nb]).native);
          copyInto(st.absmax2, check(ps.absmax2, 'absmax2', [nb]).native);
        } else {
          for (const [key, signed, codes, absmax] of [['expAvg', true, st.state1, st.absmax1], ['expAvgSq', false, st.state2, st.absmax2]] as const) {
            const [c, a] = native.quantizeBlockwise(check(ps[key], key, shape).native, signed) as NativeTensor[];
            copyInto(codes, c); copyInto(absmax, a);
            c.dispose(); a.dispose();
          }
        }
      } else {
        const dt: DType = p.dtype === 'f64' ? 'f64' : 'f32';
        st.expAvg = this.alloc(shape, dt, p.device); st.expAvgSq = this.alloc(shape, dt, p.device);
        if (src8) {
          for (const [k1, k2, signed, dst] of [['state1', 'absmax1', true, st.expAvg], ['state2', 'absmax2', false, st.expAvgSq]] as const) {
            const d = native.dequantizeBlockwise(check(ps[k1], k1, shape).native, check(ps[k2], k2, [nb]).native, signed) as NativeTensor;
            copyInto(dst, d); d.dispose();
          }
        } else {
          copyInto(st.expAvg, check(ps.expAvg, 'expAvg', shape).native);
          copyInto(st.expAvgSq, check(ps.expAvgSq, 'expAvgSq', shape).native);
        }
      }
    } catch (e) {
      disposeParamState(st);
      throw e;
    }
    return st;
  }
}

function disposeParamState(st: ParamState): void {
  for (const k of STATE_TENSOR_KEYS) st[k]?.dispose();
}

function dtypeBytes(d: DType): number {
  return d === 'f64' || d === 'i64' ? 8 : d === 'f32' || d === 'i32' ? 4 : d === 'u8' ? 1 : 2;
}
