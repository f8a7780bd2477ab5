/**
 * callbacks.ts — what the Trainer tells the outside world while it runs, and the built-in
 * listeners: a TTY progress bar and the JSONL metrics log.
 *
 * A callback is any object with some of the `on*` methods of {@link TrainerCallback}; each is
 * called synchronously (a returned promise is awaited) with plain data. Throwing from a callback
 * aborts training with that error (after the Trainer's own cleanup).
 */
import * as fs from 'fs';

/** One logged record (also a line of metrics.jsonl). */
export interface LogRecord {
  /** 'train' every logSteps, 'eval' after an evaluation, 'skip' for a skipped step, 'event' otherwise. */
  kind: 'train' | 'eval' | 'skip' | 'event';
  step: number;
  /** Fractional epoch (optimizer steps done / steps per epoch). */
  epoch: number;
  /** Seconds since train() started. */
  time: number;
  [key: string]: unknown;
}

/** Metrics of one optimizer step (what onStepEnd receives). */
export interface StepMetrics {
  step: number;
  epoch: number;
  /** Token-normalised loss of the step (sum over its micro-batches); NaN/Infinity when skipped. */
  loss: number;
  /** The learning rate used by this step (first parameter group). */
  lr: number;
  /** Global gradient norm before clipping. */
  gradNorm: number;
  /** Loss-carrying tokens of the step. */
  lossTokens: number;
  /** Real (non-padding) input tokens of the step. */
  tokens: number;
  /** Whether the optimizer update was skipped (non-finite loss or gradients). */
  skipped: boolean;
  /** Wall time of the step in seconds. */
  seconds: number;
}

export interface EvalMetrics {
  step: number;
  evalLoss: number;
  evalPerplexity: number;
  /** Next-token accuracy over the loss-carrying positions. */
  evalAccuracy: number;
  evalTokens: number;
  evalSeconds: number;
}

/** The trainer's progress at a given moment. */
export interface TrainerProgress {
  step: number;
  totalSteps: number;
  epoch: number;
  startTime: number;
}

export interface TrainerCallback {
  onTrainBegin?(p: TrainerProgress): void | Promise<void>;
  /** After every optimizer step (skipped ones included). */
  onStepEnd?(m: StepMetrics, p: TrainerProgress): void | Promise<void>;
  /**
   * After backward of all micro-batches and before clipping / the optimizer step: gradients are
   * in the parameters' `.grad`. For inspection only (do not dispose them).
   */
  onGradients?(step: number, params: [string, import('../tensor/tensor').Tensor][]): void | Promise<void>;
  onLog?(r: LogRecord): void | Promise<void>;
  onEvaluate?(m: EvalMetrics): void | Promise<void>;
  /** A checkpoint was written (its final folder). */
  onSave?(dir: string, step: number): void | Promise<void>;
  /** A step was skipped because of non-finite loss or gradients. */
  onNonFinite?(info: { step: number; loss: number; gradNorm: number; inARow: number }): void | Promise<void>;
  onTrainEnd?(result: unknown): void | Promise<void>;
}

/** Call `name` on every callback that has it, in order. */
export async function fire<K extends keyof TrainerCallback>(cbs: TrainerCallback[], name: K,
  ...args: Parameters<NonNullable<TrainerCallback[K]>>): Promise<void> {
  for (const cb of cbs) {
    const f = cb[name] as ((...a: unknown[]) => unknown) | undefined;
    if (typeof f === 'function') {
      const r = f.apply(cb, args);
      if (r && typeof (r as Promise<void>).then === 'function') await r;
    }
  }
}

/** Appends every log record to a JSONL file (one JSON object per line, flushed per record). */
export class JsonlLogger implements TrainerCallback {
  constructor(readonly file: string) {}
  onLog(r: LogRecord): void {
    fs.appendFileSync(this.file, JSON.stringify(r, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? String(v) : v)) + '\n');
  }
}

function fmtTime(s: number): string {
  if (!Number.isFinite(s) || s < 0) return '--:--';
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  const mm = String(m).padStart(2, '0'), ss = String(sec).padStart(2, '0');
  return h > 0 ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
}

/**
 * One-line progress bar on a TTY: step, loss, lr, tokens/s, ETA. Redrawn in place (\r); writes
 * nothing when the stream is not a TTY.
 */
export class ProgressBar implements TrainerCallback {
  private lastDraw = 0;
  private tokens = 0;
  private seconds = 0;
  private loss = NaN;
  constructor(readonly stream: NodeJS.WriteStream = process.stderr, readonly width = 24) {}
  get enabled(): boolean { return !!this.stream.isTTY; }
  onStepEnd(m: StepMetrics, p: TrainerProgress): void {
    if (!this.enabled) return;
    this.tokens += m.tokens; this.seconds += m.seconds;
    if (Number.isFinite(m.loss)) this.loss = Number.isFinite(this.loss) ? 0.9 * this.loss + 0.1 * m.loss : m.loss;
    const now = Date.now();
    if (now - this.lastDraw < 100 && m.step < p.totalSteps) return;
    this.lastDraw = now;
    this.stream.write('\r' + ProgressBar.render(m.step, p.totalSteps, this.loss, m.lr, this.tokens / Math.max(this.seconds, 1e-9),
      (now - p.startTime) / 1000, this.width) + '\x1b[K');
  }
  onLog(r: LogRecord): void {
    if (!this.enabled || r.kind !== 'eval') return;
    this.stream.write(`\r\x1b[Keval @ step ${r.step}: loss ${Number(r.evalLoss).toFixed(4)}, accuracy ${(Number(r.evalAccuracy) * 100).toFixed(1)}%\n`);
  }
  onTrainEnd(): void { if (this.enabled) this.stream.write('\n'); }

  /** The bar's text (exported for tests). */
  static render(step: number, total: number, loss: number, lr: number, tokPerSec: number, elapsed: number, width = 24): string {
    const frac = total > 0 ? Math.min(1, step / total) : 0;
    const full = Math.round(frac * width);
    const bar = '█'.repeat(full) + '░'.repeat(width - full);
    const eta = step > 0 ? (elapsed / step) * (total - step) : NaN;
    return `${bar} ${step}/${total} loss ${Number.isFinite(loss) ? loss.toFixed(4) : '-'} lr ${lr.toExponential(2)} ` +
      `${tokPerSec.toFixed(0)} tok/s ETA ${fmtTime(eta)}`;
  }
}

/**
 * Stop when the eval loss has not improved by more than `threshold` for `patience` evaluations
 * (transformers' EarlyStoppingCallback). Driven by the Trainer; its state is checkpointed.
 */
export interface EarlyStoppingOptions {
  patience: number;
  threshold?: number;
  /** Which eval metric to watch (default 'evalLoss'); higherIsBetter for accuracy-like metrics. */
  metric?: 'evalLoss' | 'evalAccuracy';
}

export class EarlyStopping {
  best: number | null = null;
  bad = 0;
  constructor(readonly opts: EarlyStoppingOptions) {
    if (!Number.isInteger(opts.patience) || opts.patience < 1) throw new RangeError(`earlyStopping.patience must be a positive integer, got ${opts.patience}`);
  }
  /** Feed one evaluation; returns true when training should stop. */
  update(m: EvalMetrics): boolean {
    const metric = this.opts.metric ?? 'evalLoss';
    const higher = metric === 'evalAccuracy';
    const v = m[metric];
    const th = this.opts.threshold ?? 0;
    const improved = this.best === null || (higher ? v > this.best + th : v < this.best - th);
    if (improved) { this.best = v; this.bad = 0; } else this.bad++;
    return this.bad >= this.opts.patience;
  }
  state(): { best: number | null; bad: number } { return { best: this.best, bad: this.bad }; }
  loadState(s: { best: number | null; bad: number }): void { this.best = s.best; this.bad = s.bad; }
}
