/**
 * trainer.ts — the training loop (HF transformers' Trainer, for peftkit models and adapters).
 *
 *   const trainer = new Trainer({ model, tokenizer, trainDataset, evalDataset, args: { outputDir, maxSteps: 200 } });
 *   const result = await trainer.train({ signal, resumeFrom: 'latest' });
 *   const metrics = await trainer.evaluate();
 *
 * One optimizer step = `gradAccumSteps` micro-batches of `batchSize` examples. The loss of every
 * micro-batch is Σ token losses / N, where N is the number of loss-carrying tokens of ALL the
 * step's micro-batches (crossEntropy's `normalizer`), so accumulating k micro-batches gives the
 * same gradient as one k× batch. Then: global-norm clipping (`maxGradNorm`), a non-finite check
 * (NaN/Inf loss or gradient norm → the update is skipped and reported; after
 * `maxNonFiniteSteps` in a row training stops with a checkpoint and an error), the optimizer and
 * the LR schedule. Every micro-batch runs inside tidy(): its intermediates are freed when it ends.
 *
 * Data order is a pure function of (seed, epoch): resuming from a checkpoint (which stores the
 * trainable weights, optimizer and scheduler state, data position and RNG) continues with exactly
 * the batches — and, on the same machine and thread count, exactly the losses — of the
 * uninterrupted run.
 *
 * Between steps the loop yields to the event loop (setImmediate), so an AbortSignal, SIGINT (main
 * thread), timers and worker messages are handled; a stop request finishes the current step,
 * saves a checkpoint and resolves.
 */
import * as fs from 'fs';
import * as path from 'path';
import { isMainThread } from 'worker_threads';
import { DataLoader, padBatch } from '../data/collate';
import type { Batch, SequenceLike } from '../data/collate';
import { Dataset, loadDataset } from '../data/dataset';
import { tokenizeDataset } from '../data/tokenize';
import type { TokenizeOptions, TokenizerLike } from '../data/tokenize';
import { saveSafetensors } from '../io/safetensors';
import { native } from '../native';
import { Module } from '../nn/module';
import { argmax } from '../ops/reduce';
import { crossEntropy } from '../ops/nn';
import { AdamW, AdamWOptions } from '../optim/adamw';
import { clipGradNorm, gradNorm } from '../optim/clip';
import { AdamW8bit, PagedAdamW } from '../optim/paged';
import { getSchedule, LRScheduler, ScheduleName } from '../optim/schedules';
import type { OptimizerState } from '../optim/state';
import { memoryStats, resetPeakMemory } from '../runtime';
import { noGrad } from '../tensor/autograd';
import { Tensor, tidy } from '../tensor/tensor';
import {
  EarlyStopping, EarlyStoppingOptions, EvalMetrics, fire, JsonlLogger, LogRecord, ProgressBar, StepMetrics, TrainerCallback, TrainerProgress,
} from './callbacks';
import {
  loadTrainingCheckpoint, resolveCheckpoint, saveTrainingCheckpoint, TrainerStateJson,
} from './checkpoint';
import { setDropoutSeed } from '../ops/random';
import { enableGradientCheckpointing } from './recompute';
import { writeReport } from './report';

// ------------------------------------------------------------------ public types

/** A collated micro-batch: lib/data's Batch ((B,T) row-major typed arrays). */
export type { Batch, SequenceLike };

/** Custom batching of tokenized sequences (default: lib/data padBatch, right padding). */
export type DataCollator = (sequences: SequenceLike[]) => Batch;

/**
 * Training data: a lib/data Dataset (tokenized here with the tokenizer), raw rows
 * ({text} | {prompt, completion} | {instruction, input, output} | {messages}), or tokenized
 * sequences ({inputIds, labels?, positionIds?, segmentIds?} with arrays or Int32Arrays).
 */
export type TrainData = Dataset | ArrayLike<unknown> | { length: number; get(i: number): unknown };

/** What the Trainer needs from a model: a peftkit CausalLM, a PeftModel, or anything alike. */
export interface TrainableModel {
  forward(input: { inputIds: Tensor; attentionMask?: Tensor; positionIds?: Tensor; [k: string]: unknown }): { logits: Tensor; loss?: Tensor };
  namedParameters(opts?: { includeFrozen?: boolean }): [string, Tensor][];
  train(mode?: boolean): unknown;
  eval(): unknown;
  /** PEFT adapters: write adapter_config.json + adapter_model.safetensors into dir. */
  saveAdapter?(dir: string): unknown;
  generate?(ids: number[][], opts?: Record<string, unknown>): Promise<number[][]>;
  config?: { vocabSize?: number; padTokenId?: number | null; eosTokenId?: number | number[] | null; raw?: Record<string, unknown> };
}

/** A tokenizer as far as the Trainer needs one (peftkit's Tokenizer). */
export interface TrainerTokenizer extends TokenizerLike {
  decode(ids: number[], opts?: { skipSpecialTokens?: boolean }): string;
  readonly padTokenId?: number | null;
}

/** What the Trainer needs from an optimizer (AdamW and its variants). */
export interface TrainerOptimizer {
  step(): void;
  zeroGrad(): void;
  setLrMultiplier(m: number): void;
  state(opts?: { copy?: boolean }): OptimizerState;
  loadState(s: OptimizerState): void;
  readonly paramGroups: { lr: number }[];
  dispose?(): void;
}

export type OptimName = 'adamw' | 'adamw8bit' | 'paged_adamw' | 'paged_adamw_8bit';

export interface TrainingArgs {
  /** Checkpoints, metrics.jsonl, report.html and the final adapter go here. */
  outputDir: string;
  /** Passes over the training data (default 1 unless maxSteps is set). */
  epochs?: number;
  /** Optimizer steps; takes precedence over epochs. */
  maxSteps?: number;
  /** Examples per micro-batch (default 8). */
  batchSize?: number;
  /** Micro-batches per optimizer step (default 1). */
  gradAccumSteps?: number;
  /** Peak learning rate (default 2e-4). */
  lr?: number;
  /** 'linear' (default), 'cosine', 'constant', 'cosineWithRestarts', 'polynomial'. */
  scheduler?: ScheduleName;
  warmupRatio?: number;
  warmupSteps?: number;
  /** cosine: floor as a fraction of lr. */
  minLrRatio?: number;
  /** Decoupled weight decay (default 0); never applied to biases and norm weights. */
  weightDecay?: number;
  /** Clip the global gradient norm to this (default 1; 0 disables clipping). */
  maxGradNorm?: number;
  /** Evaluate every N steps (0: only at the end). Needs evalDataset. */
  evalSteps?: number;
  /** Checkpoint every N steps (default 500; 0: only at the end / on stop). */
  saveSteps?: number;
  /** Keep the newest K checkpoints (default 3; 0 keeps all). */
  saveTotalLimit?: number;
  /** Log every N steps (default 10). */
  logSteps?: number;
  /** Seed of data order and dropout (default 42). */
  seed?: number;
  /** Train with bf16 frozen weights (trainable parameters and optimizer states stay f32). */
  bf16?: boolean;
  /** Per-layer activation recompute. */
  gradientCheckpointing?: boolean;
  /**
   * With gradientCheckpointing on a cuda model: keep each layer's checkpointed input in page-locked
   * host memory between forward and backward, copied on a separate stream that overlaps compute
   * (as Unsloth's offloaded checkpointing). Activation memory on the GPU no longer grows with depth.
   */
  offloadActivations?: boolean;
  /**
   * With gradientCheckpointing: before training, run one micro-batch with and without recompute
   * and log the activation memory saved (an 'event' in metrics.jsonl, and in the report). Costs
   * two extra forward/backward passes, and the pass without recompute needs the full activations.
   */
  reportActivationMemory?: boolean;
  earlyStopping?: EarlyStoppingOptions;
  /** Optimizer when none is given (default 'adamw'). */
  optim?: OptimName;
  /** LoRA+ ratio for the default optimizer. */
  loraPlusRatio?: number;
  adamBetas?: [number, number];
  adamEps?: number;
  /** Stop after this many non-finite steps in a row (default 5). */
  maxNonFiniteSteps?: number;
  /** Shuffle training data each epoch (default true). */
  shuffle?: boolean;
  /** Batch examples of similar length together (within shuffled mega-batches of 50 batches). */
  groupByLength?: boolean;
  /** Truncate tokenized raw rows to this many tokens (default 1024); also the packed length. */
  maxLength?: number;
  /** Pack short examples into sequences of maxLength tokens (lib/data packExamples). */
  packing?: boolean;
  /** Options for tokenizing raw rows (lib/data tokenizeDataset); maxLength comes from args.maxLength. */
  tokenize?: Omit<TokenizeOptions, 'maxLength'>;
  evalBatchSize?: number;
  /** Progress bar on a TTY (default true). */
  progress?: boolean;
  /** Prompts to complete for the HTML report (greedy). */
  samplePrompts?: string[];
  sampleMaxNewTokens?: number;
  /** Write report.html at the end (default true). */
  report?: boolean;
  /** Handle SIGINT in the main thread: finish the step, checkpoint, resolve (default true). */
  handleSigint?: boolean;
  /** Write the final adapter / weights into outputDir at the end (default true). */
  saveFinal?: boolean;
}

export interface TrainerOptions {
  model: TrainableModel;
  tokenizer?: TrainerTokenizer | null;
  trainDataset: TrainData;
  evalDataset?: TrainData | null;
  optimizer?: TrainerOptimizer;
  args: TrainingArgs;
  callbacks?: TrainerCallback[];
  /** Custom batching (default: right padding, labels -100 on padding). */
  dataCollator?: DataCollator;
}

export interface TrainResult {
  globalStep: number;
  /** Mean loss of the steps run by this call. */
  trainLoss: number;
  stopReason: 'completed' | 'aborted' | 'earlyStopping';
  /** The last checkpoint written (null if none). */
  checkpoint: string | null;
  evalMetrics: EvalMetrics | null;
  seconds: number;
  tokensPerSecond: number;
  /** Peak native memory during this call (bytes). */
  peakMemoryBytes: number;
  skippedSteps: number;
}

/** Training stopped because of repeated non-finite losses or gradients (a checkpoint was saved). */
export class NonFiniteError extends Error {
  constructor(message: string, readonly checkpoint: string | null, readonly step: number) {
    super(message); this.name = 'NonFiniteError';
  }
}

// ------------------------------------------------------------------ RNG

/** sfc32 with an explicit, serialisable state. */
export class TrainerRng {
  s: number[];
  constructor(seed: number) {
    let x = (seed >>> 0) ^ Math.floor(seed / 2 ** 32);
    const sm = () => { x = (x + 0x9e3779b9) | 0; let z = x; z = Math.imul(z ^ (z >>> 16), 0x85ebca6b); z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35); return (z ^ (z >>> 16)) >>> 0; };
    this.s = [sm(), sm(), sm(), sm()];
    for (let i = 0; i < 12; i++) this.nextU32();
  }
  nextU32(): number {
    let [a, b, c, d] = this.s;
    const t = (((a + b) | 0) + d) | 0;
    d = (d + 1) | 0; a = b ^ (b >>> 9); b = (c + (c << 3)) | 0; c = (c << 21) | (c >>> 11); c = (c + t) | 0;
    this.s = [a, b, c, d];
    return t >>> 0;
  }
  next(): number { return this.nextU32() / 4294967296; }
  shuffle<T>(a: T[]): T[] {
    for (let i = a.length - 1; i > 0; i--) { const j = Math.floor(this.next() * (i + 1)); [a[i], a[j]] = [a[j], a[i]]; }
    return a;
  }
}

function mix(...xs: number[]): number {
  let h = 0x811c9dc5;
  for (const x of xs) { h = Math.imul(h ^ (x >>> 0), 0x01000193); h = Math.imul(h ^ Math.floor(x / 2 ** 32), 0x01000193); h ^= h >>> 15; }
  return h >>> 0;
}

// ------------------------------------------------------------------ data

function itemAt(d: TrainData, i: number): unknown {
  const g = (d as { get?: (i: number) => unknown }).get;
  return typeof g === 'function' ? g.call(d, i) : (d as ArrayLike<unknown>)[i];
}

function intArray(v: unknown): Int32Array | null {
  if (v instanceof Int32Array) return v;
  if (Array.isArray(v) || ArrayBuffer.isView(v)) return Int32Array.from(v as ArrayLike<number>);
  return null;
}

/** Tokenized sequences of `d` (tokenizing raw rows / a Dataset with lib/data). */
function materialize(d: TrainData, tok: TrainerTokenizer | null | undefined, topts: TokenizeOptions, what: string): SequenceLike[] {
  let raw: Dataset | null = d instanceof Dataset ? d : null;
  if (!raw) {
    const n = (d as { length: number }).length;
    if (!Number.isInteger(n) || n <= 0) throw new Error(`Trainer: ${what} is empty`);
    const first = itemAt(d, 0) as Record<string, unknown> | null;
    const ids0 = first && typeof first === 'object' ? (first.inputIds ?? first.input_ids) : undefined;
    if (ids0 !== undefined) {
      const out: SequenceLike[] = [];
      for (let i = 0; i < n; i++) {
        const e = itemAt(d, i) as Record<string, unknown>;
        const ids = intArray(e?.inputIds ?? e?.input_ids);
        if (!ids || ids.length === 0) throw new Error(`Trainer: ${what}[${i}] has no inputIds`);
        const labels = intArray(e.labels) ?? ids.slice();
        if (labels.length !== ids.length) throw new Error(`Trainer: ${what}[${i}]: labels has ${labels.length} entries for ${ids.length} tokens`);
        const seq: SequenceLike = { inputIds: ids, labels };
        const pos = intArray(e.positionIds ?? e.position_ids), seg = intArray(e.segmentIds);
        if (pos) seq.positionIds = pos;
        if (seg) seq.segmentIds = seg;
        out.push(seq);
      }
      return out;
    }
    const rows: unknown[] = [];
    for (let i = 0; i < n; i++) rows.push(itemAt(d, i));
    raw = loadDataset(rows);
  }
  if (!tok) throw new Error(`Trainer: ${what} holds untokenized rows; pass a tokenizer`);
  const { examples } = tokenizeDataset(raw, tok, topts);
  if (examples.length === 0) throw new Error(`Trainer: ${what} has no example with a loss-carrying token after tokenization`);
  return examples;
}

/** Loss-carrying tokens of a batch: the shifted causal-LM targets labels[:, 1:] ≠ -100. */
export function countLossTokens(b: Batch): number {
  const B = b.batchSize, T = b.seqLen, lab = b.labels;
  let n = 0;
  for (let r = 0; r < B; r++) for (let t = 1; t < T; t++) if (lab[r * T + t] !== -100) n++;
  return n;
}

/**
 * Next-token labels aligned with all Tl logit positions: position t carries the label of token
 * t+1 (virtual tokens of prompt tuning come first and carry no loss) and the last position -100.
 * Keeping the full length (rather than slicing logits[:, :-1]) spares the loss a (B, Tl, V)
 * slice whose backward would zero-fill and copy a full-size gradient; the ignored last position
 * adds exactly nothing.
 */
function shiftedLabels(b: Batch, Tl: number): Tensor {
  const B = b.batchSize, T = b.seqLen, off = Tl - T, lab = b.labels;
  if (off < 0) throw new Error(`Trainer: the model returned ${Tl} positions for ${T} input tokens`);
  const flat = new BigInt64Array(B * Tl);
  for (let r = 0; r < B; r++) {
    for (let t = 0; t < Tl; t++) {
      const i = t + 1 - off;
      flat[r * Tl + t] = BigInt(t < Tl - 1 && i >= 0 ? lab[r * T + i] : -100);
    }
  }
  return Tensor.fromBuffer(flat, [B, Tl], 'i64');
}

/** Causal-LM loss of a batch: Σ token losses / normalizer (normalizer 1: the sum). */
export function causalLoss(logits: Tensor, b: Batch, normalizer: number): Tensor {
  const lab = shiftedLabels(b, logits.shape[1]);
  const loss = crossEntropy(logits, lab, { ignoreIndex: -100, normalizer });
  lab.dispose();
  return loss;
}

/** The model inputs of a batch as tensors (inputIds, positionIds i64; attentionMask u8 when there is padding). */
function modelInputs(b: Batch): { inputIds: Tensor; positionIds: Tensor; attentionMask?: Tensor; segmentIds?: Tensor } {
  const shape = [b.batchSize, b.seqLen];
  const i64 = (a: Int32Array) => { const o = new BigInt64Array(a.length); for (let i = 0; i < a.length; i++) o[i] = BigInt(a[i]); return Tensor.fromBuffer(o, shape, 'i64'); };
  const out: { inputIds: Tensor; positionIds: Tensor; attentionMask?: Tensor; segmentIds?: Tensor } = { inputIds: i64(b.inputIds), positionIds: i64(b.positionIds) };
  if (b.numTokens < b.batchSize * b.seqLen) out.attentionMask = Tensor.fromBuffer(b.attentionMask, shape, 'u8');
  let packed = false;
  for (let i = 0; i < b.segmentIds.length; i++) if (b.segmentIds[i] > 1) { packed = true; break; }
  if (packed) out.segmentIds = Tensor.fromBuffer(b.segmentIds, shape, 'i32');
  return out;
}

// ------------------------------------------------------------------ the Trainer

const DEFAULTS = {
  batchSize: 8, gradAccumSteps: 1, lr: 2e-4, scheduler: 'linear' as ScheduleName, warmupRatio: 0, warmupSteps: 0,
  weightDecay: 0, maxGradNorm: 1, evalSteps: 0, saveSteps: 500, saveTotalLimit: 3, logSteps: 10, seed: 42,
  maxNonFiniteSteps: 5, maxLength: 1024, sampleMaxNewTokens: 32,
};

function posInt(v: unknown, what: string, allowZero = false): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < (allowZero ? 0 : 1)) {
    throw new RangeError(`Trainer: args.${what} must be a ${allowZero ? 'non-negative' : 'positive'} integer, got ${JSON.stringify(v)}`);
  }
  return v;
}

export class Trainer {
  readonly model: TrainableModel;
  readonly tokenizer: TrainerTokenizer | null;
  readonly args: Required<Pick<TrainingArgs, keyof typeof DEFAULTS>> & TrainingArgs;
  readonly callbacks: TrainerCallback[];
  optimizer: TrainerOptimizer | null;
  scheduler: LRScheduler | null = null;
  /** Optimizer steps done. */
  globalStep = 0;
  /** Data position: next micro-batch is `batchIndex` of `epoch`. */
  epoch = 0;
  batchIndex = 0;
  rng: TrainerRng;
  tokensSeen = 0;
  /** [step, loss, lr] of every step and [step, evalLoss, evalAccuracy] of every eval. */
  readonly history: { steps: [number, number, number][]; evals: [number, number, number][] } = { steps: [], evals: [] };
  /** Bytes of activation memory at the peak of the first step of the last train() (peak − memory before the step). */
  activationPeakBytes: number | null = null;
  /** measureActivationMemory() result when args.reportActivationMemory was set. */
  activationMemory: { withoutCheckpointing: number; withCheckpointing: number; saved: number } | null = null;

  private readonly trainRaw: TrainData;
  private readonly evalRaw: TrainData | null;
  private loader: DataLoader | null = null;
  private evalData: SequenceLike[] | null = null;
  private readonly collator: DataCollator | null;
  private readonly padId: number;
  private readonly earlyStopping: EarlyStopping | null;
  private nonFiniteInRow = 0;
  private userOptimizer: boolean;
  private disableCheckpointing: (() => void) | null = null;
  private lastCheckpoint: string | null = null;
  private running = false;

  constructor(opts: TrainerOptions) {
    if (!opts || typeof opts !== 'object') throw new TypeError('Trainer: expected { model, trainDataset, args, ... }');
    const { model, args } = opts;
    if (!model || typeof model.forward !== 'function' || typeof model.namedParameters !== 'function') {
      throw new TypeError('Trainer: model must be a peftkit model (forward, namedParameters)');
    }
    if (!args || typeof args.outputDir !== 'string' || !args.outputDir) throw new TypeError('Trainer: args.outputDir is required');
    if (!opts.trainDataset) throw new TypeError('Trainer: trainDataset is required');
    const a = { ...DEFAULTS, ...Object.fromEntries(Object.entries(args).filter(([, v]) => v !== undefined)) } as Trainer['args'];
    posInt(a.batchSize, 'batchSize'); posInt(a.gradAccumSteps, 'gradAccumSteps');
    posInt(a.logSteps, 'logSteps'); posInt(a.saveSteps, 'saveSteps', true); posInt(a.evalSteps, 'evalSteps', true);
    posInt(a.saveTotalLimit, 'saveTotalLimit', true); posInt(a.maxNonFiniteSteps, 'maxNonFiniteSteps'); posInt(a.seed, 'seed', true);
    if (a.maxSteps !== undefined) posInt(a.maxSteps, 'maxSteps');
    if (a.epochs !== undefined && !(typeof a.epochs === 'number' && a.epochs > 0)) throw new RangeError(`Trainer: args.epochs must be > 0, got ${a.epochs}`);
    if (!(typeof a.lr === 'number' && a.lr >= 0)) throw new RangeError(`Trainer: args.lr must be a number >= 0, got ${a.lr}`);
    if (!(a.maxGradNorm >= 0)) throw new RangeError(`Trainer: args.maxGradNorm must be >= 0, got ${a.maxGradNorm}`);
    if (a.offloadActivations && !a.gradientCheckpointing) {
      throw new Error('Trainer: args.offloadActivations offloads the inputs that gradient checkpointing keeps; set gradientCheckpointing: true as well');
    }
    this.model = model;
    this.tokenizer = opts.tokenizer ?? null;
    this.args = a;
    this.trainRaw = opts.trainDataset;
    this.evalRaw = opts.evalDataset ?? null;
    this.optimizer = opts.optimizer ?? null;
    this.userOptimizer = !!opts.optimizer;
    const cands = [this.tokenizer?.padTokenId, model.config?.padTokenId, this.tokenizer?.eosTokenId,
      Array.isArray(model.config?.eosTokenId) ? model.config!.eosTokenId[0] : model.config?.eosTokenId, 0];
    this.padId = cands.find((v): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 0)!;
    this.collator = opts.dataCollator ?? null;
    this.earlyStopping = a.earlyStopping ? new EarlyStopping(a.earlyStopping) : null;
    this.rng = new TrainerRng(a.seed);
    this.callbacks = [...(opts.callbacks ?? [])];
    if (a.bf16) this.castFrozenToBf16();
  }

  // ---------------------------------------------------------------- setup helpers

  /** Trainable parameters by name (requiresGrad). */
  trainableParameters(): [string, Tensor][] {
    return this.model.namedParameters().filter(([, t]) => t.requiresGrad);
  }

  private castFrozenToBf16(): void {
    const m = this.model as unknown as Module;
    if (typeof m.to !== 'function' || typeof m.setTensor !== 'function') throw new Error('Trainer: args.bf16 needs an nn.Module model');
    const trainable = this.trainableParameters();
    if (trainable.length === 0) throw new Error('Trainer: the model has no trainable parameters');
    if (trainable.every(([, t]) => t.dtype === 'bf16') || m.namedParameters().every(([, t]) => t.dtype === 'bf16' || t.requiresGrad)) return;
    const keep = trainable.map(([n, t]) => [n, new Tensor(native.clone(t.native))] as [string, Tensor]);
    m.to('bf16');
    for (const [n, t] of keep) {
      const conv = m.getTensor(n);
      t.requiresGrad_(true); t.kept = true; m.setTensor(n, t);
      if (conv && conv !== t) conv.dispose();
    }
  }

  private tokenizeOptions(): TokenizeOptions { return { ...(this.args.tokenize ?? {}), maxLength: this.args.maxLength }; }

  /** The training data loader (lib/data DataLoader: order a pure function of seed and epoch). */
  get dataLoader(): DataLoader {
    if (!this.loader) {
      const a = this.args;
      const seqs = materialize(this.trainRaw, this.tokenizer, this.tokenizeOptions(), 'trainDataset');
      this.loader = new DataLoader(seqs, { batchSize: a.batchSize, padTokenId: this.padId, shuffle: a.shuffle !== false, seed: a.seed,
        groupByLength: !!a.groupByLength, packing: a.packing ? { maxLength: a.maxLength } : false });
    }
    return this.loader;
  }

  private evalExamples(): SequenceLike[] | null {
    if (!this.evalRaw) return null;
    if (!this.evalData) this.evalData = materialize(this.evalRaw, this.tokenizer, this.tokenizeOptions(), 'evalDataset');
    return this.evalData;
  }

  private collate(seqs: SequenceLike[]): Batch {
    return this.collator ? this.collator(seqs) : padBatch(seqs, { padTokenId: this.padId });
  }

  /** Micro-batches per epoch. */
  get batchesPerEpoch(): number { return this.dataLoader.length; }
  /** Optimizer steps per epoch (a step never spans two epochs). */
  get stepsPerEpoch(): number { return Math.ceil(this.batchesPerEpoch / this.args.gradAccumSteps); }
  /** Total optimizer steps of the run. */
  get totalSteps(): number {
    if (this.args.maxSteps !== undefined) return this.args.maxSteps;
    return Math.ceil((this.args.epochs ?? 1) * this.stepsPerEpoch);
  }

  /** The sequence indices of every micro-batch of `epoch` (a pure function of seed and epoch). */
  epochBatches(epoch: number): number[][] { return this.dataLoader.batchIndices(epoch); }

  private batchAt(epoch: number, index: number): Batch {
    if (!this.collator) return this.dataLoader.batch(epoch, index);
    const seqs = this.dataLoader.sequences;
    return this.collator(this.epochBatches(epoch)[index].map((i) => seqs[i]));
  }

  private buildOptimizer(): TrainerOptimizer {
    const params = this.trainableParameters();
    if (params.length === 0) throw new Error('Trainer: the model has no trainable parameters (wrap it with an adapter, or set requiresGrad for full fine-tuning)');
    const a = this.args;
    const noDecay = (n: string) => /(^|\.)bias$|norm|ln_|layernorm/i.test(n);
    const decay = params.filter(([n]) => !noDecay(n)), nod = params.filter(([n]) => noDecay(n));
    const groups = [];
    if (decay.length) groups.push({ params: decay, weightDecay: a.weightDecay, name: 'decay' });
    if (nod.length) groups.push({ params: nod, weightDecay: 0, name: 'no_decay' });
    const o: AdamWOptions = { lr: a.lr, weightDecay: a.weightDecay, betas: a.adamBetas, eps: a.adamEps, loraPlusRatio: a.loraPlusRatio };
    switch (a.optim ?? 'adamw') {
      case 'adamw': return new AdamW(groups, o);
      case 'adamw8bit': return new AdamW8bit(groups, o);
      case 'paged_adamw': return new PagedAdamW(groups, o);
      case 'paged_adamw_8bit': return new PagedAdamW(groups, { ...o, optimBits: 8 });
      default: throw new Error(`Trainer: unknown optim '${a.optim}' (adamw, adamw8bit, paged_adamw, paged_adamw_8bit)`);
    }
  }

  private buildScheduler(opt: TrainerOptimizer): LRScheduler {
    const a = this.args;
    const total = this.totalSteps;
    const lambda = getSchedule(a.scheduler, {
      totalSteps: total, warmupRatio: a.warmupRatio, warmupSteps: a.warmupSteps, minLrRatio: a.minLrRatio,
      lrInit: a.lr > 0 ? a.lr : undefined,
    });
    return new LRScheduler(opt, lambda);
  }

  private currentLr(): number { return this.optimizer?.paramGroups[0]?.lr ?? this.args.lr; }

  // ---------------------------------------------------------------- one step

  /**
   * Forward + backward of one micro-batch with the step's normalizer; returns the micro-batch's
   * loss contribution. Everything it creates is freed on return (the gradients stay in .grad).
   */
  private microStep(b: Batch, normalizer: number, dropoutSeed: number): number {
    setDropoutSeed(dropoutSeed);
    return tidy(() => {
      const out = this.model.forward(modelInputs(b));
      const loss = causalLoss(out.logits, b, normalizer);
      const v = loss.item();
      if (loss.requiresGrad) loss.backward();
      return v;
    });
  }

  private stepBatches(): { batches: Batch[]; epochAfter: number; indexAfter: number } {
    let epoch = this.epoch, index = this.batchIndex;
    if (index >= this.batchesPerEpoch) { epoch++; index = 0; }
    const all = this.epochBatches(epoch);
    const end = Math.min(index + this.args.gradAccumSteps, all.length);
    const batches: Batch[] = [];
    for (let i = index; i < end; i++) batches.push(this.batchAt(epoch, i));
    let epochAfter = epoch, indexAfter = end;
    if (indexAfter >= all.length) { epochAfter = epoch + 1; indexAfter = 0; }
    return { batches, epochAfter, indexAfter };
  }

  // ---------------------------------------------------------------- train

  /**
   * Train until maxSteps / epochs, early stopping, or a stop request (signal / SIGINT). Resolves
   * with a summary; rejects with NonFiniteError after maxNonFiniteSteps bad steps in a row (a
   * checkpoint is saved first).
   */
  async train(opts: { signal?: AbortSignal; resumeFrom?: string } = {}): Promise<TrainResult> {
    if (this.running) throw new Error('Trainer.train: already running');
    this.running = true;
    const a = this.args;
    const t0 = Date.now();
    let stopRequested = false;
    let sigintCount = 0;
    const onSigint = () => {
      sigintCount++;
      if (sigintCount > 1) { process.stderr.write('\nSIGINT again: exiting without a checkpoint\n'); process.exit(130); }
      stopRequested = true;
      process.stderr.write('\nSIGINT: finishing the current step and saving a checkpoint (Ctrl-C again to exit now)\n');
    };
    const sigint = a.handleSigint !== false && isMainThread;
    if (sigint) process.on('SIGINT', onSigint);
    const onAbort = () => { stopRequested = true; };
    opts.signal?.addEventListener('abort', onAbort);
    if (opts.signal?.aborted) stopRequested = true;

    fs.mkdirSync(a.outputDir, { recursive: true });
    const cbs: TrainerCallback[] = [new JsonlLogger(path.join(a.outputDir, 'metrics.jsonl'))];
    if (a.progress !== false) cbs.push(new ProgressBar());
    cbs.push(...this.callbacks);

    try {
      void this.dataLoader;
      if (!this.optimizer) this.optimizer = this.buildOptimizer();
      if (!this.scheduler) this.scheduler = this.buildScheduler(this.optimizer);
      if (opts.resumeFrom) {
        this.resume(resolveCheckpoint(opts.resumeFrom, a.outputDir));
      } else if (this.globalStep === 0) {
        fs.writeFileSync(path.join(a.outputDir, 'metrics.jsonl'), '');
      }
      if (a.gradientCheckpointing && !this.disableCheckpointing) {
        this.disableCheckpointing = enableGradientCheckpointing(this.model as unknown as Module, { offload: !!a.offloadActivations });
      }
      this.model.train(true);
      if (a.gradientCheckpointing && a.reportActivationMemory) {
        this.activationMemory = this.measureActivationMemory();
        await this.log(cbs, { kind: 'event', step: this.globalStep, epoch: this.epochFloat(), time: (Date.now() - t0) / 1000, event: 'activationMemory', ...this.activationMemory });
      }
      const total = this.totalSteps;
      const progress = (): TrainerProgress => ({ step: this.globalStep, totalSteps: total, epoch: this.epochFloat(), startTime: t0 });
      await fire(cbs, 'onTrainBegin', progress());
      resetPeakMemory();
      const trainable = this.trainableParameters();
      let stopReason: TrainResult['stopReason'] = 'completed';
      let lossSum = 0, lossSteps = 0, skipped = 0, tokensRun = 0, secondsRun = 0;
      let win = { loss: 0, n: 0, tokens: 0, seconds: 0 };
      let evalMetrics: EvalMetrics | null = null;
      let savedAt = -1;
      const firstStep = this.globalStep;

      while (this.globalStep < total && !stopRequested) {
        const ts = process.hrtime.bigint();
        const memBefore = memoryStats().cpu.liveBytes;
        const { batches, epochAfter, indexAfter } = this.stepBatches();
        const normalizer = batches.reduce((s, b) => s + countLossTokens(b), 0);
        const tokens = batches.reduce((s, b) => s + b.numTokens, 0);
        const step = this.globalStep + 1;
        const lr = this.currentLr();
        let loss = 0, norm = 0;
        if (normalizer > 0) {
          for (const [k, b] of batches.entries()) loss += this.microStep(b, normalizer, mix(a.seed, step, k, 0xd0));
          await fire(cbs, 'onGradients', step, trainable);
          norm = a.maxGradNorm > 0 ? clipGradNorm(trainable, a.maxGradNorm) : gradNorm(trainable);
        }
        const finite = normalizer > 0 && Number.isFinite(loss) && Number.isFinite(norm);
        if (finite) {
          this.optimizer.step();
          this.nonFiniteInRow = 0;
        } else if (normalizer > 0) {
          this.nonFiniteInRow++;
          skipped++;
        }
        this.optimizer.zeroGrad();
        for (const [, p] of trainable) p.zeroGrad();
        this.scheduler.step();
        this.globalStep = step;
        this.epoch = epochAfter; this.batchIndex = indexAfter;
        this.tokensSeen += tokens;
        if (step === firstStep + 1) this.activationPeakBytes = memoryStats().cpu.peakBytes - memBefore;
        const seconds = Number(process.hrtime.bigint() - ts) / 1e9;
        tokensRun += tokens; secondsRun += seconds;
        this.history.steps.push([step, finite ? loss : NaN, lr]);
        const sm: StepMetrics = { step, epoch: this.epochFloat(), loss: normalizer > 0 ? loss : NaN, lr, gradNorm: norm, lossTokens: normalizer, tokens, skipped: !finite, seconds };
        await fire(cbs, 'onStepEnd', sm, progress());
        if (!finite) {
          const reason = normalizer === 0 ? 'no loss-carrying tokens in the step' : `non-finite ${Number.isFinite(loss) ? 'gradient norm' : 'loss'} (loss ${loss}, grad norm ${norm})`;
          await this.log(cbs, { kind: 'skip', step, epoch: this.epochFloat(), time: (Date.now() - t0) / 1000, reason, loss: String(loss), gradNorm: String(norm), inARow: this.nonFiniteInRow });
          if (normalizer > 0) await fire(cbs, 'onNonFinite', { step, loss, gradNorm: norm, inARow: this.nonFiniteInRow });
          if (this.nonFiniteInRow >= a.maxNonFiniteSteps) {
            const dir = await this.saveCheckpoint(cbs);
            throw new NonFiniteError(`Trainer: ${this.nonFiniteInRow} steps in a row had a non-finite loss or gradients (last: step ${step}, ${reason}); ` +
              `training stopped. Checkpoint saved to ${dir}. Lower the learning rate, check the data, or use f32.`, dir, step);
          }
        } else {
          lossSum += loss; lossSteps++;
          win.loss += loss; win.n++;
        }
        win.tokens += tokens; win.seconds += seconds;
        if (step % a.logSteps === 0 || step === total) {
          const mem = memoryStats().cpu;
          await this.log(cbs, {
            kind: 'train', step, epoch: this.epochFloat(), time: (Date.now() - t0) / 1000, loss: win.n ? win.loss / win.n : NaN,
            lr, gradNorm: norm, tokensPerSec: win.tokens / Math.max(win.seconds, 1e-9), tokensSeen: this.tokensSeen,
            liveBytes: mem.liveBytes, peakBytes: mem.peakBytes,
            ...(this.activationPeakBytes !== null && step === firstStep + 1 ? { activationPeakBytes: this.activationPeakBytes } : {}),
          });
          win = { loss: 0, n: 0, tokens: 0, seconds: 0 };
        }
        if (a.evalSteps > 0 && step % a.evalSteps === 0 && this.evalRaw) {
          evalMetrics = await this.runEval(cbs, t0);
          if (this.earlyStopping && this.earlyStopping.update(evalMetrics)) {
            stopReason = 'earlyStopping';
            await this.log(cbs, { kind: 'event', step, epoch: this.epochFloat(), time: (Date.now() - t0) / 1000,
              event: 'earlyStopping', message: `no improvement in ${this.earlyStopping.opts.metric ?? 'evalLoss'} for ${this.earlyStopping.bad} evaluations` });
            break;
          }
        }
        if (a.saveSteps > 0 && step % a.saveSteps === 0) { await this.saveCheckpoint(cbs); savedAt = step; }
        await new Promise<void>((r) => setImmediate(r));
      }
      if (stopRequested && stopReason === 'completed') stopReason = 'aborted';
      if (stopReason === 'aborted') {
        await this.log(cbs, { kind: 'event', step: this.globalStep, epoch: this.epochFloat(), time: (Date.now() - t0) / 1000, event: 'aborted' });
      }
      if (stopReason !== 'aborted' && this.evalRaw && (evalMetrics === null || evalMetrics.step !== this.globalStep)) {
        evalMetrics = await this.runEval(cbs, t0);
      }
      if (savedAt !== this.globalStep && this.globalStep > firstStep) await this.saveCheckpoint(cbs);
      if (stopReason !== 'aborted' && a.saveFinal !== false) await this.saveFinal();
      this.model.train(true);
      const result: TrainResult = {
        globalStep: this.globalStep, trainLoss: lossSteps ? lossSum / lossSteps : NaN, stopReason, checkpoint: this.lastCheckpoint,
        evalMetrics, seconds: (Date.now() - t0) / 1000, tokensPerSecond: tokensRun / Math.max(secondsRun, 1e-9),
        peakMemoryBytes: memoryStats().cpu.peakBytes, skippedSteps: skipped,
      };
      if (a.report !== false) await this.writeReport(result);
      await fire(cbs, 'onTrainEnd', result);
      return result;
    } finally {
      if (sigint) process.removeListener('SIGINT', onSigint);
      opts.signal?.removeEventListener('abort', onAbort);
      this.running = false;
    }
  }

  private epochFloat(): number {
    const spe = this.stepsPerEpoch;
    return Math.round((this.epoch + Math.ceil(this.batchIndex / this.args.gradAccumSteps) / spe) * 1e4) / 1e4;
  }

  private async log(cbs: TrainerCallback[], r: LogRecord): Promise<void> { await fire(cbs, 'onLog', r); }

  private async runEval(cbs: TrainerCallback[], t0: number): Promise<EvalMetrics> {
    const m = await this.evaluate();
    this.history.evals.push([m.step, m.evalLoss, m.evalAccuracy]);
    await this.log(cbs, { kind: 'eval', epoch: this.epochFloat(), time: (Date.now() - t0) / 1000, ...m });
    await fire(cbs, 'onEvaluate', m);
    return m;
  }

  // ---------------------------------------------------------------- evaluation

  /**
   * Loss (token-weighted mean), perplexity and next-token accuracy over the loss-carrying
   * positions of evalDataset (or `dataset`). Runs without gradients in eval mode.
   */
  async evaluate(dataset?: TrainData): Promise<EvalMetrics> {
    const data = dataset ? materialize(dataset, this.tokenizer, this.tokenizeOptions(), 'evalDataset') : this.evalExamples();
    if (!data) throw new Error('Trainer.evaluate: no evalDataset');
    const t0 = Date.now();
    const bs = this.args.evalBatchSize ?? this.args.batchSize;
    const wasTraining = (this.model as unknown as Module).training;
    this.model.eval();
    let lossSum = 0, tokens = 0, correct = 0;
    try {
      for (let i = 0; i < data.length; i += bs) {
        const b = this.collate(data.slice(i, i + bs));
        const n = countLossTokens(b);
        if (n === 0) continue;
        const [l, c] = tidy(() => noGrad(() => {
          const out = this.model.forward(modelInputs(b));
          const loss = causalLoss(out.logits, b, 1).item();
          const Tl = out.logits.shape[1];
          const lab = shiftedLabels(b, Tl).toFloat64Array();
          // argmax runs where the logits are: on the GPU only the (B,T) indices come back
          const pred = argmax(out.logits, -1).toFloat64Array();
          let ok = 0;
          for (let k = 0; k < lab.length; k++) if (lab[k] !== -100 && pred[k] === lab[k]) ok++;
          return [loss, ok];
        }));
        lossSum += l; tokens += n; correct += c;
        await new Promise<void>((r) => setImmediate(r));
      }
    } finally {
      if (wasTraining !== false) this.model.train(true);
    }
    const evalLoss = tokens ? lossSum / tokens : NaN;
    return { step: this.globalStep, evalLoss, evalPerplexity: Math.exp(evalLoss), evalAccuracy: tokens ? correct / tokens : NaN, evalTokens: tokens, evalSeconds: (Date.now() - t0) / 1000 };
  }

  /**
   * Activation memory of one training micro-batch with and without gradient checkpointing
   * (peak native bytes above the memory in use before it). Gradients are discarded.
   */
  measureActivationMemory(batchIndices?: number[]): { withoutCheckpointing: number; withCheckpointing: number; saved: number } {
    const seqs = this.dataLoader.sequences;
    const b = this.collate((batchIndices ?? this.epochBatches(0)[0]).map((i) => seqs[i]));
    const n = countLossTokens(b) || 1;
    const params = this.trainableParameters();
    const run = () => {
      const before = memoryStats().cpu.liveBytes;
      resetPeakMemory();
      this.microStep(b, n, 0);
      const peak = memoryStats().cpu.peakBytes - before;
      for (const [, p] of params) p.zeroGrad();
      return peak;
    };
    const wasOn = !!this.disableCheckpointing;
    if (wasOn) { this.disableCheckpointing!(); this.disableCheckpointing = null; }
    const without = run();
    const off = enableGradientCheckpointing(this.model as unknown as Module);
    const withCk = run();
    if (wasOn) this.disableCheckpointing = off; else off();
    return { withoutCheckpointing: without, withCheckpointing: withCk, saved: without - withCk };
  }

  // ---------------------------------------------------------------- checkpoints

  private stateJson(): TrainerStateJson {
    const a = { ...this.args } as Record<string, unknown>;
    return {
      format: 'peftkit.trainer.v1', globalStep: this.globalStep, epoch: this.epoch, batchIndex: this.batchIndex,
      scheduler: this.scheduler ? this.scheduler.state() : null, rng: [...this.rng.s], tokensSeen: this.tokensSeen,
      nonFiniteInRow: this.nonFiniteInRow, earlyStopping: this.earlyStopping ? this.earlyStopping.state() : null,
      history: this.history, totalSteps: this.totalSteps, args: a, savedAt: new Date().toISOString(),
    };
  }

  /** Write a checkpoint of the current state now; returns its folder. */
  async saveCheckpoint(cbs: TrainerCallback[] = this.callbacks): Promise<string> {
    const trainable = new Map(this.trainableParameters());
    const model = this.model;
    const dir = await saveTrainingCheckpoint(this.args.outputDir, {
      state: this.stateJson(), trainable, optimizer: this.optimizer ? this.optimizer.state({ copy: false }) : null,
      extra: typeof model.saveAdapter === 'function' ? async (tmp) => { await model.saveAdapter!(path.join(tmp, 'adapter')); } : undefined,
    }, this.args.saveTotalLimit);
    this.lastCheckpoint = dir;
    await fire(cbs, 'onSave', dir, this.globalStep);
    return dir;
  }

  private resume(dir: string): void {
    const ck = loadTrainingCheckpoint(dir);
    try {
      const params = new Map(this.trainableParameters());
      for (const [n, p] of params) {
        const t = ck.trainable.get(n);
        if (!t) throw new Error(`resume: ${dir} has no weights for trainable parameter '${n}'`);
        if (t.shape.join(',') !== p.shape.join(',')) throw new Error(`resume: '${n}' has shape [${t.shape}] in ${dir} but [${p.shape}] in the model`);
      }
      for (const n of ck.trainable.keys()) if (!params.has(n)) throw new Error(`resume: ${dir} holds '${n}', which is not a trainable parameter of this model`);
      for (const [n, p] of params) native.copy_(p.native, ck.trainable.get(n)!.native);
      if (ck.optimizer && this.optimizer) this.optimizer.loadState(ck.optimizer);
      const s = ck.state;
      if (this.scheduler && s.scheduler) this.scheduler.loadState(s.scheduler);
      this.globalStep = s.globalStep; this.epoch = s.epoch; this.batchIndex = s.batchIndex;
      this.rng.s = [...s.rng]; this.tokensSeen = s.tokensSeen; this.nonFiniteInRow = s.nonFiniteInRow;
      if (this.earlyStopping && s.earlyStopping) this.earlyStopping.loadState(s.earlyStopping);
      this.history.steps.splice(0, this.history.steps.length, ...s.history.steps.map(([a, b, c]) => [a, b ?? NaN, c] as [number, number, number]));
      this.history.evals.splice(0, this.history.evals.length, ...s.history.evals);
      this.lastCheckpoint = dir;
    } finally {
      for (const t of ck.trainable.values()) t.dispose();
      if (ck.optimizer) for (const ps of Object.values(ck.optimizer.state)) for (const k of ['expAvg', 'expAvgSq', 'state1', 'state2', 'absmax1', 'absmax2'] as const) ps[k]?.dispose();
    }
  }

  /** Save the trained adapter (saveAdapter) or, for full fine-tuning, the weights, into `dir` (default outputDir). */
  async saveFinal(dir = this.args.outputDir): Promise<void> {
    fs.mkdirSync(dir, { recursive: true });
    if (typeof this.model.saveAdapter === 'function') { await this.model.saveAdapter(dir); return; }
    const m = this.model as unknown as Module;
    const sd = typeof m.stateDict === 'function' ? m.stateDict() : new Map(this.model.namedParameters());
    saveSafetensors(path.join(dir, 'model.safetensors'), sd, { metadata: { format: 'pt' } });
    const raw = this.model.config?.raw;
    if (raw) fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(raw, null, 2) + '\n');
  }

  private async writeReport(r: TrainResult): Promise<void> {
    const samples: { prompt: string; completion: string }[] = [];
    const tok = this.tokenizer;
    if (tok && this.args.samplePrompts?.length && typeof this.model.generate === 'function') {
      this.model.eval();
      try {
        for (const p of this.args.samplePrompts) {
          const ids = tok.encode(p, { addSpecialTokens: true });
          const outIds = await this.model.generate([ids], { maxNewTokens: this.args.sampleMaxNewTokens, doSample: false });
          samples.push({ prompt: p, completion: tok.decode(outIds[0].slice(ids.length), { skipSpecialTokens: true }) });
        }
      } catch (e) {
        samples.push({ prompt: '(generation failed)', completion: (e as Error).message });
      } finally {
        this.model.train(true);
      }
    }
    const a = this.args;
    writeReport(path.join(a.outputDir, 'report.html'), {
      title: `peftkit training report — ${path.basename(path.resolve(a.outputDir))}`,
      steps: this.history.steps, evals: this.history.evals, samples,
      summary: {
        steps: r.globalStep, 'stop reason': r.stopReason, 'train loss (this run)': r.trainLoss,
        'eval loss': r.evalMetrics?.evalLoss ?? null, 'eval accuracy': r.evalMetrics?.evalAccuracy ?? null,
        'tokens/s': Math.round(r.tokensPerSecond), 'peak memory (MiB)': Math.round(r.peakMemoryBytes / 1048576 * 10) / 10,
        'activation peak, first step (MiB)': this.activationPeakBytes === null ? null : Math.round(this.activationPeakBytes / 1048576 * 10) / 10,
        ...(this.activationMemory ? { 'activation memory saved by checkpointing (MiB)': Math.round(this.activationMemory.saved / 1048576 * 10) / 10 } : {}),
        'skipped steps': r.skippedSteps, 'batch size': a.batchSize, 'grad accumulation': a.gradAccumSteps, lr: a.lr, scheduler: a.scheduler,
        'gradient checkpointing': a.gradientCheckpointing ? (a.offloadActivations ? 'on, inputs offloaded to host memory' : true) : false, 'trainable parameters': this.trainableParameters().reduce((s, [, t]) => s + t.numel, 0),
      },
    });
  }
}
