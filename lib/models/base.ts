/**
 * base.ts — what every causal LM shares: input conversion (number[][] or integer Tensors),
 * position ids from the attention mask, the causal-LM loss, the KV cache, and the generate /
 * stream entry points (implemented in generate.ts).
 *
 * A concrete model implements `decode(ids, positions, keyMask, cache, segmentIds?)` → logits (B,T,V).
 *
 * Positions: when `positionIds` is not given and an `attentionMask` is, position i of a row is
 * (number of real tokens before it) — cumsum(mask) − 1, padding set to 1 — which is what HF's
 * `generate` passes; so a left-padded row gives the same logits at its real positions as the row
 * alone. Without a mask, positions are 0..T−1 (HF's forward default).
 *
 * Sequence packing: `segmentIds` (B,T) gives every example packed into a row its own id (as
 * lib/data/collate.ts does; padding may have its own id, e.g. 0). Attention then never crosses an
 * example boundary, and `positionIds` should restart at 0 for each example — when they are not
 * given, they are derived from the segments (index of the token within its segment's tokens).
 * The causal-LM loss needs nothing special: collate already sets the first label of every example
 * to -100, so no token is predicted across a boundary.
 */
import { Module } from '../nn/module';
import { crossEntropy } from '../ops/nn';
import { keep, Tensor, tidy } from '../tensor/tensor';
import type { Device } from '../tensor/dtype';
import type { GenerationConfig, ModelConfig } from './config';
import type { GenerateOptions, StreamEvent } from './generate';

/** Token ids: a batch of rows (number[][]), one row (number[]), or an integer Tensor (B,T). */
export type TokenInput = number[][] | number[] | Tensor;

export interface ForwardInput {
  inputIds: TokenInput;
  /** 1 = real token, 0 = padding (B,T). */
  attentionMask?: TokenInput;
  /** Labels for the causal-LM loss (B,T); -100 = ignored. Shifted inside (logits[:, :-1] vs labels[:, 1:]). */
  labels?: TokenInput;
  /** Explicit positions (B,T). */
  positionIds?: TokenInput;
  /**
   * Sequence packing (B,T): tokens attend only to earlier tokens with the same segment id
   * (lib/data/collate.ts `segmentIds`). Rows whose ids are all equal need none.
   */
  segmentIds?: TokenInput;
}

export interface ForwardOutput {
  /** (B,T,V) in the model's dtype. */
  logits: Tensor;
  /** Mean cross entropy over non-ignored shifted labels (0-d f32). */
  loss?: Tensor;
}

/** Per-layer key/value tensors (B,Hkv,S,D) kept between generation steps. */
export class KVCache {
  readonly keys: (Tensor | null)[];
  readonly values: (Tensor | null)[];
  constructor(numLayers: number) {
    this.keys = new Array(numLayers).fill(null);
    this.values = new Array(numLayers).fill(null);
  }
  /** Cached length S (0 when empty). */
  get length(): number { const k = this.keys[0]; return k ? k.shape[2] : 0; }
  /** Store new full k/v for `layer` (kept out of tidy scopes; the previous ones are freed). */
  set(layer: number, k: Tensor, v: Tensor): void {
    const ok = this.keys[layer], ov = this.values[layer];
    this.keys[layer] = keep(k); this.values[layer] = keep(v);
    if (ok && ok !== k) ok.dispose();
    if (ov && ov !== v) ov.dispose();
  }
  dispose(): void {
    for (const t of [...this.keys, ...this.values]) if (t) t.dispose();
    this.keys.fill(null); this.values.fill(null);
  }
}

/** Rows of an integer input as JS arrays (validated rectangular). */
export function toRows(x: TokenInput, what: string): number[][] {
  if (x instanceof Tensor) {
    if (x.dtype !== 'i64' && x.dtype !== 'i32' && x.dtype !== 'u8') throw new TypeError(`${what}: expected an integer tensor, got ${x.dtype}`);
    if (x.ndim === 1) return [Array.from(x.toFloat64Array())];
    if (x.ndim !== 2) throw new Error(`${what}: expected shape (B,T), got [${x.shape}]`);
    const flat = x.toFloat64Array();
    const [B, T] = x.shape;
    const rows: number[][] = [];
    for (let b = 0; b < B; b++) rows.push(Array.from(flat.subarray(b * T, (b + 1) * T)));
    return rows;
  }
  if (!Array.isArray(x) || x.length === 0) throw new TypeError(`${what}: expected number[][] or an integer Tensor`);
  const rows = (Array.isArray(x[0]) ? x : [x]) as number[][];
  const T = rows[0].length;
  for (const [i, r] of rows.entries()) {
    if (!Array.isArray(r)) throw new TypeError(`${what}: row ${i} is not an array`);
    if (r.length !== T) throw new Error(`${what}: rows have different lengths (${T} and ${r.length}); pad them and pass attentionMask`);
    for (const v of r) if (!Number.isInteger(v)) throw new TypeError(`${what}: ${v} in row ${i} is not an integer`);
  }
  return rows;
}

function rowsTensor(rows: number[][], device: Device = 'cpu'): Tensor {
  const B = rows.length, T = rows[0]?.length ?? 0;
  const flat = new Array<number>(B * T);
  for (let b = 0; b < B; b++) for (let t = 0; t < T; t++) flat[b * T + t] = rows[b][t];
  return onDevice(Tensor.fromArray(flat, { dtype: 'i64', shape: [B, T] }), device);
}

/** `t` on `device` (the host tensor is freed when a copy was made). */
export function onDevice(t: Tensor, device: Device): Tensor {
  if (t.device === device) return t;
  const d = t.to(device);
  t.dispose();
  return d;
}

/**
 * Positions restarting at 0 for each segment: the number of earlier real tokens of the same
 * segment in the row. With a mask, padding gets 1 (as in positionsFromMask) and is not counted.
 */
export function positionsFromSegments(seg: number[][], mask: number[][] | null = null): number[][] {
  return seg.map((r, b) => {
    const n = new Map<number, number>();
    return r.map((s, t) => {
      if (mask && !mask[b][t]) return 1;
      const c = n.get(s) ?? 0;
      n.set(s, c + 1);
      return c;
    });
  });
}

/** HF generate's position ids: cumsum(mask) − 1, with padding positions set to 1. */
export function positionsFromMask(mask: number[][]): number[][] {
  return mask.map((r) => { let c = 0; return r.map((m) => { if (m) { c++; return c - 1; } return 1; }); });
}

export abstract class CausalLM extends Module {
  readonly config: ModelConfig;
  generationConfig: GenerationConfig;

  constructor(config: ModelConfig) {
    super();
    this.config = config;
    this.generationConfig = { eosTokenId: config.eosTokenId, padTokenId: config.padTokenId, bosTokenId: config.bosTokenId, raw: {} };
  }

  /**
   * Run the decoder on token ids (B,T) at `positions` (B,T); `keyMask` (B,S) marks real keys over
   * cache + new tokens (null = all real). Appends to `cache` when given. `segmentIds` (B,S), i32 or
   * i64, over cache + new tokens like keyMask: attention stays within equal ids (sequence packing;
   * null/omitted = none). Returns logits (B,T,V).
   *
   * Hooks for prompt-learning methods (lib/peft/prompt_tuning, lib/peft/prefix_tuning):
   *  - `inputsEmbeds` (B,T,C), HF's inputs_embeds: used instead of looking `ids` up in the token
   *    embedding (ids is then ignored; any embedding scale, e.g. Gemma's √hidden, still applies);
   *  - an initial past: a `cache` already holding S₀ key/value positions per layer (KVCache.set
   *    before the call) is attended by every new token, with gradients flowing into those tensors
   *    when they require grad; `positions` and `keyMask` then cover the S₀ past positions as for a
   *    generation step (keyMask is (B, S₀ + T)).
   */
  abstract decode(ids: Tensor, positions: Tensor, keyMask: Tensor | null, cache: KVCache | null, segmentIds?: Tensor | null,
                  inputsEmbeds?: Tensor | null): Tensor;

  /** Dtype of the parameters. */
  get dtype(): string { return this.namedParameters()[0]?.[1].dtype ?? 'f32'; }

  /** Logits (and the causal-LM loss when labels are given). Intermediates are freed on return. */
  forward(input: ForwardInput): ForwardOutput {
    if (!input || typeof input !== 'object' || input.inputIds === undefined) throw new TypeError('forward: expected { inputIds, attentionMask?, labels?, positionIds?, segmentIds? }');
    const ids = toRows(input.inputIds, 'forward: inputIds');
    const B = ids.length, T = ids[0].length;
    if (T === 0) throw new Error('forward: inputIds has no tokens');
    const vocab = this.config.vocabSize;
    for (const r of ids) for (const v of r) if (v < 0 || v >= vocab) throw new RangeError(`forward: token id ${v} is outside the vocabulary [0, ${vocab})`);
    let mask: number[][] | null = null;
    if (input.attentionMask !== undefined) {
      mask = toRows(input.attentionMask, 'forward: attentionMask');
      if (mask.length !== B || mask[0].length !== T) throw new Error(`forward: attentionMask is ${mask.length}×${mask[0].length}, inputIds ${B}×${T}`);
    }
    let seg: number[][] | null = null;
    if (input.segmentIds !== undefined && input.segmentIds !== null) {
      seg = toRows(input.segmentIds, 'forward: segmentIds');
      if (seg.length !== B || seg[0].length !== T) throw new Error(`forward: segmentIds is ${seg.length}×${seg[0].length}, inputIds ${B}×${T}`);
    }
    let pos: number[][];
    if (input.positionIds !== undefined) {
      pos = toRows(input.positionIds, 'forward: positionIds');
      if (pos.length !== B && pos.length !== 1) throw new Error(`forward: positionIds has ${pos.length} rows for a batch of ${B}`);
      if (pos.length === 1 && B > 1) pos = new Array(B).fill(pos[0]);
      if (pos[0].length !== T) throw new Error(`forward: positionIds has ${pos[0].length} columns, inputIds ${T}`);
    } else if (seg) {
      pos = positionsFromSegments(seg, mask);
    } else if (mask) {
      pos = positionsFromMask(mask);
    } else {
      pos = [Array.from({ length: T }, (_, i) => i)];
      pos = new Array(B).fill(pos[0]);
    }
    let labels: number[][] | null = null;
    if (input.labels !== undefined) {
      labels = toRows(input.labels, 'forward: labels');
      if (labels.length !== B || labels[0].length !== T) throw new Error(`forward: labels is ${labels.length}×${labels[0].length}, inputIds ${B}×${T}`);
    }
    const hasPad = !!mask && mask.some((r) => r.some((m) => !m));
    // One id per row = no packing: the kernel needs no segment mask then.
    const packed = !!seg && seg.some((r) => r.some((s) => s !== r[0]));
    // ids, positions, masks and segment ids are created on the model's device
    const dev = this.device;
    return tidy(() => {
      const idsT = rowsTensor(ids, dev);
      const posT = rowsTensor(pos, dev);
      const maskT = hasPad ? onDevice(Tensor.fromArray(mask!.flat().map((m) => (m ? 1 : 0)), { dtype: 'u8', shape: [B, T] }), dev) : null;
      const segT = packed ? rowsTensor(seg!, dev) : null;
      const logits = this.decode(idsT, posT, maskT, null, segT);
      if (!labels) return { logits };
      return { logits, loss: causalLmLoss(logits, labels) };
    });
  }

  /** Generate continuations: rows of prompt + new tokens. See GenerateOptions. */
  async generate(inputIds: TokenInput, opts: GenerateOptions = {}): Promise<number[][]> {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const g = require('./generate') as typeof import('./generate');
    return g.generate(this, inputIds, opts);
  }

  /** Token-by-token generation as an async iterator. */
  stream(inputIds: TokenInput, opts: GenerateOptions = {}): AsyncGenerator<StreamEvent> {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const g = require('./generate') as typeof import('./generate');
    return g.stream(this, inputIds, opts);
  }

  /** Call a child module by name (looked up each time, so adapters can replace it). */
  protected child<M extends Module = Module>(name: string): M { return this.getSubmodule(name) as M; }
}

/** Causal-LM loss: cross entropy of logits[:, :-1] against labels[:, 1:], mean over labels ≠ -100. */
export function causalLmLoss(logits: Tensor, labels: number[][]): Tensor {
  const T = logits.shape[1];
  // Labels shifted left with -100 in the last position: the same loss as logits[:, :-1] against
  // labels[:, 1:], without a full-size slice (and its zero-filled gradient) of the logits.
  const shifted = labels.map((r) => [...r.slice(1, T), -100]);
  const lab = onDevice(Tensor.fromArray(shifted.flat(), { dtype: 'i64', shape: [labels.length, T] }), logits.device);
  const loss = crossEntropy(logits, lab, { ignoreIndex: -100 });
  lab.dispose();
  return loss;
}

/** Call `forward(x)` of a child module (works for nn.Linear and anything that replaces it). */
export function callModule(parent: Module, name: string, x: Tensor): Tensor {
  const m = parent.getSubmodule(name) as unknown as { forward(x: Tensor): Tensor };
  return m.forward(x);
}
