/**
 * collate.ts — batches for training: dynamic padding, packing, length grouping, seeded shuffling.
 *
 * A {@link Batch} holds (B,T) row-major typed arrays:
 *   inputIds       token ids (padding = padTokenId)
 *   labels         HF convention, unshifted: the loss compares the prediction made at t−1 with
 *                  labels[t]; -100 = no loss (prompt, padding, and the first token of every example)
 *   attentionMask  1 = real token, 0 = padding
 *   positionIds    position within its own example: restarts at 0 for each packed example (RoPE /
 *                  learned positions must use these, not 0..T−1)
 *   segmentIds     1, 2, … for the examples packed into a row, 0 for padding
 *
 * How the model must consume a packed batch so examples never see each other: query t may attend
 * key s iff segmentIds[s] === segmentIds[t] !== 0 and s ≤ t. Equivalently (segments are contiguous),
 * s ∈ [t − positionIds[t], t]. Unpacked batches obey the same rule (one segment per row), so a
 * model can always use it; with one segment per row it reduces to causal + key-padding masking.
 * The loss is sum over tokens / `numLabelTokens` (count of labels ≠ -100), which is also the right
 * normaliser to accumulate across micro-batches.
 */
import { Tensor } from '../tensor/tensor';
import { IGNORE_INDEX, TokenizedExample } from './tokenize';

// ------------------------------------------------------------------ seeded PRNG

/**
 * xoshiro128** seeded through splitmix32: fast, good statistics, identical on every platform.
 * `stream` derives independent sequences from one seed (e.g. one per epoch).
 */
export class Rng {
  private s = new Uint32Array(4);
  constructor(seed = 0, stream = 0) {
    if (!Number.isInteger(seed) || seed < 0 || seed > Number.MAX_SAFE_INTEGER) throw new RangeError(`Rng: seed must be a non-negative safe integer, got ${seed}`);
    if (!Number.isInteger(stream) || stream < 0) throw new RangeError(`Rng: stream must be a non-negative integer, got ${stream}`);
    let a = (seed >>> 0) ^ Math.imul(Math.floor(seed / 2 ** 32) >>> 0, 0x85ebca6b) ^ Math.imul((stream >>> 0) + 1, 0xc2b2ae35);
    const sm = () => {
      a = (a + 0x9e3779b9) | 0;
      let t = a ^ (a >>> 16);
      t = Math.imul(t, 0x21f0aaad);
      t ^= t >>> 15;
      t = Math.imul(t, 0x735a2d97);
      return (t ^ (t >>> 15)) >>> 0;
    };
    for (let i = 0; i < 4; i++) this.s[i] = sm();
    if ((this.s[0] | this.s[1] | this.s[2] | this.s[3]) === 0) this.s[0] = 1;
  }
  /** Uniform 32-bit unsigned integer. */
  nextU32(): number {
    const s = this.s;
    const r = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return r;
  }
  /** Uniform in [0, 1) with 53 random bits. */
  next(): number { return ((this.nextU32() >>> 5) * 67108864 + (this.nextU32() >>> 6)) / 9007199254740992; }
  /** Uniform integer in [0, n), unbiased (n ≤ 2^32). */
  int(n: number): number {
    if (!Number.isInteger(n) || n < 1 || n > 2 ** 32) throw new RangeError(`Rng.int: n must be an integer in [1, 2^32], got ${n}`);
    const limit = 2 ** 32 - (2 ** 32 % n);
    for (;;) { const x = this.nextU32(); if (x < limit) return x % n; }
  }
  /** Fisher–Yates shuffle in place; returns the array. */
  shuffle<T>(a: T[]): T[] {
    for (let i = a.length - 1; i > 0; i--) { const j = this.int(i + 1); const t = a[i]; a[i] = a[j]; a[j] = t; }
    return a;
  }
  /** The generator state (4 words) for checkpoints. */
  getState(): number[] { return Array.from(this.s); }
  setState(st: number[]): void {
    if (!Array.isArray(st) || st.length !== 4 || st.some((v) => !Number.isInteger(v) || v < 0 || v >= 2 ** 32)) throw new Error('Rng.setState: expected 4 uint32 words');
    this.s.set(st);
  }
}
function rotl(x: number, k: number): number { return ((x << k) | (x >>> (32 - k))) >>> 0; }

// ------------------------------------------------------------------ sequences and batches

/** A row before padding: one tokenized example, or several packed together. */
export interface SequenceLike {
  inputIds: Int32Array | number[];
  labels: Int32Array | number[];
  /** Present for packed sequences (restart at 0 per example). */
  positionIds?: Int32Array;
  /** Present for packed sequences (1, 2, … per example). */
  segmentIds?: Int32Array;
}

export interface PackedSequence extends SequenceLike {
  inputIds: Int32Array;
  labels: Int32Array;
  positionIds: Int32Array;
  segmentIds: Int32Array;
  /** Lengths of the packed examples, in order. */
  lengths: number[];
}

export interface Batch {
  batchSize: number;
  seqLen: number;
  inputIds: Int32Array;
  labels: Int32Array;
  attentionMask: Uint8Array;
  positionIds: Int32Array;
  segmentIds: Int32Array;
  /** Tokens carrying loss (labels ≠ -100): the loss normaliser. */
  numLabelTokens: number;
  /** Real (non-padding) tokens. */
  numTokens: number;
}

export interface PadOptions {
  padTokenId: number;
  /** Round the padded length up to a multiple of this (e.g. 8 or 64). */
  padToMultipleOf?: number;
  /** Pad on the right (default, training) or the left (generation). */
  padSide?: 'right' | 'left';
}

/** Pad sequences to the longest one in the batch (dynamic padding). */
export function padBatch(seqs: SequenceLike[], opts: PadOptions): Batch {
  if (!Array.isArray(seqs) || seqs.length === 0) throw new Error('padBatch: need at least one sequence');
  const pad = opts.padTokenId;
  if (!Number.isInteger(pad) || pad < 0) throw new RangeError(`padBatch: padTokenId must be a non-negative integer, got ${pad}`);
  const mult = opts.padToMultipleOf ?? 1;
  if (!Number.isInteger(mult) || mult < 1) throw new RangeError(`padBatch: padToMultipleOf must be a positive integer, got ${mult}`);
  const left = opts.padSide === 'left';
  let T = 0;
  for (const [i, s] of seqs.entries()) {
    if (s.inputIds.length !== s.labels.length) throw new Error(`padBatch: sequence ${i} has ${s.inputIds.length} ids but ${s.labels.length} labels`);
    T = Math.max(T, s.inputIds.length);
  }
  T = Math.ceil(T / mult) * mult;
  const B = seqs.length;
  const inputIds = new Int32Array(B * T).fill(pad);
  const labels = new Int32Array(B * T).fill(IGNORE_INDEX);
  const attentionMask = new Uint8Array(B * T);
  const positionIds = new Int32Array(B * T);
  const segmentIds = new Int32Array(B * T);
  let numLabelTokens = 0, numTokens = 0;
  for (let b = 0; b < B; b++) {
    const s = seqs[b];
    const L = s.inputIds.length;
    const off = b * T + (left ? T - L : 0);
    for (let t = 0; t < L; t++) {
      inputIds[off + t] = s.inputIds[t];
      const lab = s.labels[t];
      labels[off + t] = lab;
      if (lab !== IGNORE_INDEX) numLabelTokens++;
      attentionMask[off + t] = 1;
      positionIds[off + t] = s.positionIds ? s.positionIds[t] : t;
      segmentIds[off + t] = s.segmentIds ? s.segmentIds[t] : 1;
    }
    numTokens += L;
  }
  return { batchSize: B, seqLen: T, inputIds, labels, attentionMask, positionIds, segmentIds, numLabelTokens, numTokens };
}

export interface PackOptions {
  /** Tokens per packed sequence. */
  maxLength: number;
  /**
   * 'ffd' (default): first-fit decreasing bin packing (fewest sequences, order by length);
   * 'greedy': fill sequences in the given order, starting a new one when the next example does not fit.
   */
  strategy?: 'ffd' | 'greedy';
}

/**
 * Pack examples into sequences of at most `maxLength` tokens. Examples are never split (longer
 * ones are truncated to maxLength and counted); every example's first label is -100 so nothing
 * is learned across a boundary; positionIds restart and segmentIds count up per example.
 */
export function packExamples(examples: SequenceLike[], opts: PackOptions): { sequences: PackedSequence[]; truncated: number } {
  const max = opts.maxLength;
  if (!Number.isInteger(max) || max < 1) throw new RangeError(`packExamples: maxLength must be a positive integer, got ${max}`);
  const strategy = opts.strategy ?? 'ffd';
  if (strategy !== 'ffd' && strategy !== 'greedy') throw new Error(`packExamples: strategy must be 'ffd' or 'greedy', got '${strategy}'`);
  let truncated = 0;
  const lens = examples.map((e) => {
    if (e.inputIds.length > max) { truncated++; return max; }
    return e.inputIds.length;
  });
  const bins: number[][] = [];
  if (strategy === 'greedy') {
    let cur: number[] = [], used = 0;
    for (let i = 0; i < examples.length; i++) {
      if (lens[i] === 0) continue;
      if (used + lens[i] > max) { bins.push(cur); cur = []; used = 0; }
      cur.push(i); used += lens[i];
    }
    if (cur.length) bins.push(cur);
  } else {
    // First-fit decreasing with a max segment tree over bins' free space (every bin starts empty).
    const order = lens.map((_, i) => i).filter((i) => lens[i] > 0).sort((a, b) => lens[b] - lens[a] || a - b);
    let size = 1;
    while (size < Math.max(1, order.length)) size *= 2;
    const tree = new Int32Array(2 * size).fill(max);
    for (const i of order) {
      const need = lens[i];
      let node = 1;
      while (node < size) node = tree[2 * node] >= need ? 2 * node : 2 * node + 1;
      const bin = node - size;
      tree[node] -= need;
      for (let p = node >> 1; p >= 1; p >>= 1) tree[p] = Math.max(tree[2 * p], tree[2 * p + 1]);
      while (bins.length <= bin) bins.push([]);
      bins[bin].push(i);
    }
  }
  const sequences = bins.map((items) => {
    const total = items.reduce((a, i) => a + lens[i], 0);
    const inputIds = new Int32Array(total), labels = new Int32Array(total);
    const positionIds = new Int32Array(total), segmentIds = new Int32Array(total);
    let o = 0;
    items.forEach((i, k) => {
      const e = examples[i], L = lens[i];
      for (let t = 0; t < L; t++) {
        inputIds[o + t] = e.inputIds[t];
        labels[o + t] = t === 0 ? IGNORE_INDEX : e.labels[t];
        positionIds[o + t] = t;
        segmentIds[o + t] = k + 1;
      }
      o += L;
    });
    return { inputIds, labels, positionIds, segmentIds, lengths: items.map((i) => lens[i]) };
  });
  return { sequences, truncated };
}

/**
 * transformers' get_length_grouped_indices: a random permutation cut into megabatches of
 * megabatchMult × batchSize, each sorted by length (longest first), with the longest example of
 * all moved to the very first batch (so an out-of-memory shows up at once).
 */
export function lengthGroupedIndices(lengths: number[], batchSize: number, rng: Rng, megabatchMult?: number): number[] {
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new RangeError(`lengthGroupedIndices: batchSize must be a positive integer, got ${batchSize}`);
  let mult = megabatchMult ?? Math.min(Math.floor(lengths.length / (batchSize * 4)), 50);
  if (mult === 0) mult = 1;
  const indices = rng.shuffle(lengths.map((_, i) => i));
  const size = mult * batchSize;
  const megabatches: number[][] = [];
  for (let i = 0; i < indices.length; i += size) {
    megabatches.push(indices.slice(i, i + size).sort((a, b) => lengths[b] - lengths[a]));   // stable
  }
  if (megabatches.length > 1) {
    let maxIdx = 0;
    for (let k = 1; k < megabatches.length; k++) if (lengths[megabatches[k][0]] > lengths[megabatches[maxIdx][0]]) maxIdx = k;
    const t = megabatches[0][0]; megabatches[0][0] = megabatches[maxIdx][0]; megabatches[maxIdx][0] = t;
  }
  return megabatches.flat();
}

// ------------------------------------------------------------------ data loader

export interface DataLoaderOptions {
  batchSize: number;
  padTokenId: number;
  /** Reshuffle every epoch (default true). */
  shuffle?: boolean;
  /** Seed of the shuffles (default 0); epoch e uses stream e of this seed. */
  seed?: number;
  /** Batch examples of similar length together (transformers' group_by_length). */
  groupByLength?: boolean;
  /** Pack examples into sequences of maxLength tokens (done once, at construction). */
  packing?: false | PackOptions;
  /** Drop the last incomplete batch (default false). */
  dropLast?: boolean;
  padToMultipleOf?: number;
}

/**
 * Deterministic batches: epoch e's order depends only on (seed, e), so training can resume at
 * any (epoch, batch index) and see exactly the batches an uninterrupted run would.
 */
export class DataLoader {
  readonly sequences: SequenceLike[];
  /** Examples truncated by packing. */
  readonly truncated: number;
  private readonly opts: Required<Omit<DataLoaderOptions, 'packing' | 'padToMultipleOf'>> & { padToMultipleOf: number };
  private cache: { epoch: number; batches: number[][] } | null = null;

  constructor(examples: SequenceLike[], opts: DataLoaderOptions) {
    if (!Array.isArray(examples)) throw new TypeError('DataLoader: examples must be an array of tokenized examples');
    if (!Number.isInteger(opts.batchSize) || opts.batchSize < 1) throw new RangeError(`DataLoader: batchSize must be a positive integer, got ${opts.batchSize}`);
    if (!Number.isInteger(opts.padTokenId) || opts.padTokenId < 0) throw new RangeError(`DataLoader: padTokenId must be a non-negative integer, got ${opts.padTokenId}`);
    this.opts = { batchSize: opts.batchSize, padTokenId: opts.padTokenId, shuffle: opts.shuffle ?? true, seed: opts.seed ?? 0,
      groupByLength: opts.groupByLength ?? false, dropLast: opts.dropLast ?? false, padToMultipleOf: opts.padToMultipleOf ?? 1 };
    new Rng(this.opts.seed);   // validates the seed
    if (opts.packing) {
      const { sequences, truncated } = packExamples(examples, opts.packing);
      this.sequences = sequences;
      this.truncated = truncated;
    } else {
      this.sequences = examples;
      this.truncated = 0;
    }
  }

  /** Batches per epoch. */
  get length(): number {
    const n = this.sequences.length, B = this.opts.batchSize;
    return this.opts.dropLast ? Math.floor(n / B) : Math.ceil(n / B);
  }

  /** The sequence indices of every batch of `epoch`. */
  batchIndices(epoch = 0): number[][] {
    if (!Number.isInteger(epoch) || epoch < 0) throw new RangeError(`DataLoader: epoch must be a non-negative integer, got ${epoch}`);
    if (this.cache && this.cache.epoch === epoch) return this.cache.batches;
    const n = this.sequences.length, B = this.opts.batchSize;
    let order: number[];
    if (this.opts.groupByLength) {
      order = lengthGroupedIndices(this.sequences.map((s) => s.inputIds.length), B, new Rng(this.opts.seed, epoch));
    } else {
      order = Array.from({ length: n }, (_, i) => i);
      if (this.opts.shuffle) new Rng(this.opts.seed, epoch).shuffle(order);
    }
    const batches: number[][] = [];
    for (let i = 0; i < n; i += B) {
      const chunk = order.slice(i, i + B);
      if (chunk.length < B && this.opts.dropLast) break;
      batches.push(chunk);
    }
    this.cache = { epoch, batches };
    return batches;
  }

  /** Batch `index` of `epoch`, padded. */
  batch(epoch: number, index: number): Batch {
    const all = this.batchIndices(epoch);
    if (!Number.isInteger(index) || index < 0 || index >= all.length) throw new RangeError(`DataLoader: batch ${index} out of range [0, ${all.length})`);
    return padBatch(all[index].map((i) => this.sequences[i]), { padTokenId: this.opts.padTokenId, padToMultipleOf: this.opts.padToMultipleOf });
  }

  /** The batches of `epoch`, from batch `start` on (for resuming). */
  *epoch(epoch = 0, start = 0): Generator<Batch> {
    const n = this.batchIndices(epoch).length;
    for (let i = start; i < n; i++) yield this.batch(epoch, i);
  }
}

/**
 * The batch as tensors: inputIds, labels, positionIds (i64, (B,T)), attentionMask (u8, (B,T):
 * usable directly as the attention op's keyMask) and segmentIds (i32, (B,T)).
 */
export function batchToTensors(b: Batch): { inputIds: Tensor; labels: Tensor; attentionMask: Tensor; positionIds: Tensor; segmentIds: Tensor } {
  const shape = [b.batchSize, b.seqLen];
  const i64 = (a: Int32Array) => {
    const out = new BigInt64Array(a.length);
    for (let i = 0; i < a.length; i++) out[i] = BigInt(a[i]);
    return Tensor.fromBuffer(out, shape, 'i64');
  };
  return {
    inputIds: i64(b.inputIds),
    labels: i64(b.labels),
    positionIds: i64(b.positionIds),
    attentionMask: Tensor.fromBuffer(b.attentionMask, shape, 'u8'),
    segmentIds: Tensor.fromBuffer(b.segmentIds, shape, 'i32'),
  };
}
