/**
 * schedules.ts — learning-rate schedules as multipliers of the initial lr, with the exact values
 * of transformers' optimization.py (`get_*_schedule_with_warmup`; `step` is LambdaLR's step count,
 * 0 before the first optimizer step):
 *
 *   warmup (all):   step < W  →  step / max(1, W)
 *   constant:       1
 *   linear:         max(0, (T − step) / max(1, T − W))
 *   cosine:         p = (step − W) / max(1, T − W);  f = ½(1 + cos(π · c · 2 · p))   (c = 0.5 cycles)
 *                   f · (1 − minLrRatio) + minLrRatio, floored at 0   (cosine_with_min_lr)
 *   cosineWithRestarts: p ≥ 1 → 0;  else max(0, ½(1 + cos(π · ((c · p) mod 1))))   (c = 1 cycle)
 *   polynomial:     step > T → lrEnd / lrInit;  else ((lrInit − lrEnd)(1 − (step − W)/(T − W))^power + lrEnd) / lrInit
 *
 * Warmup is `warmupSteps`, or ⌈totalSteps · warmupRatio⌉ (TrainingArguments.get_warmup_steps).
 * `constant` with warmup is transformers' constant_with_warmup.
 */

export type LrLambda = (step: number) => number;

export type ScheduleName =
  | 'constant' | 'constant_with_warmup' | 'linear' | 'cosine' | 'cosine_with_min_lr'
  | 'cosineWithRestarts' | 'cosine_with_restarts' | 'polynomial';

export interface ScheduleOptions {
  /** Warmup steps (takes precedence over warmupRatio when > 0). */
  warmupSteps?: number;
  /** Warmup as a fraction of totalSteps (rounded up). */
  warmupRatio?: number;
  /** Total optimizer steps (required by every schedule but constant). */
  totalSteps?: number;
  /** Cosine cycles: default 0.5 for cosine (half a wave down to 0), 1 for cosineWithRestarts. */
  numCycles?: number;
  /** cosine: the floor as a fraction of the initial lr (transformers' cosine_with_min_lr min_lr_rate). */
  minLrRatio?: number;
  /** polynomial: final lr (default 1e-7), exponent (default 1) and the optimizer's initial lr (required). */
  lrEnd?: number;
  power?: number;
  lrInit?: number;
}

function nonNegInt(v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) throw new RangeError(`schedule: ${what} must be a non-negative integer, got ${v}`);
  return v;
}

/** Warmup steps from `warmupSteps` or `warmupRatio` (⌈totalSteps · ratio⌉), as transformers. */
export function warmupStepsOf(opts: ScheduleOptions, totalSteps = opts.totalSteps ?? 0): number {
  if (opts.warmupSteps !== undefined && opts.warmupSteps !== 0) return nonNegInt(opts.warmupSteps, 'warmupSteps');
  const r = opts.warmupRatio ?? 0;
  if (typeof r !== 'number' || !(r >= 0 && r <= 1)) throw new RangeError(`schedule: warmupRatio must be in [0, 1], got ${r}`);
  if (r === 0) return 0;
  return Math.ceil(nonNegInt(totalSteps, 'totalSteps') * r);
}

function totalOf(opts: ScheduleOptions, name: string): number {
  if (opts.totalSteps === undefined) throw new Error(`schedule '${name}' needs totalSteps`);
  return nonNegInt(opts.totalSteps, 'totalSteps');
}

function stepArg(step: number): number {
  if (typeof step !== 'number' || !Number.isInteger(step) || step < 0) throw new RangeError(`schedule: step must be a non-negative integer, got ${step}`);
  return step;
}

/** 1 after a linear warmup. */
export function constantSchedule(opts: ScheduleOptions = {}): LrLambda {
  const W = warmupStepsOf(opts);
  return (step) => {
    stepArg(step);
    if (step < W) return step / Math.max(1, W);
    return 1.0;
  };
}

/** Linear warmup, then linear decay to 0 at totalSteps. */
export function linearSchedule(opts: ScheduleOptions): LrLambda {
  const T = totalOf(opts, 'linear'), W = warmupStepsOf(opts, T);
  return (step) => {
    stepArg(step);
    if (step < W) return step / Math.max(1, W);
    return Math.max(0.0, (T - step) / Math.max(1, T - W));
  };
}

/** Linear warmup, then cosine decay (numCycles 0.5) to minLrRatio (default 0). */
export function cosineSchedule(opts: ScheduleOptions): LrLambda {
  const T = totalOf(opts, 'cosine'), W = warmupStepsOf(opts, T);
  const c = opts.numCycles ?? 0.5, minR = opts.minLrRatio ?? 0;
  if (typeof c !== 'number' || !Number.isFinite(c)) throw new RangeError(`schedule: numCycles must be a finite number, got ${c}`);
  if (typeof minR !== 'number' || !(minR >= 0 && minR <= 1)) throw new RangeError(`schedule: minLrRatio must be in [0, 1], got ${minR}`);
  return (step) => {
    stepArg(step);
    if (step < W) return step / Math.max(1, W);
    const progress = (step - W) / Math.max(1, T - W);
    let factor = 0.5 * (1.0 + Math.cos(Math.PI * c * 2.0 * progress));
    factor = factor * (1 - minR) + minR;
    return Math.max(0, factor);
  };
}

/** Linear warmup, then numCycles (default 1) cosine waves with hard restarts; 0 from totalSteps on. */
export function cosineWithRestartsSchedule(opts: ScheduleOptions): LrLambda {
  const T = totalOf(opts, 'cosineWithRestarts'), W = warmupStepsOf(opts, T);
  const c = opts.numCycles ?? 1;
  if (typeof c !== 'number' || !Number.isFinite(c) || c <= 0) throw new RangeError(`schedule: numCycles must be a positive number, got ${c}`);
  return (step) => {
    stepArg(step);
    if (step < W) return step / Math.max(1, W);
    const progress = (step - W) / Math.max(1, T - W);
    if (progress >= 1.0) return 0.0;
    return Math.max(0.0, 0.5 * (1.0 + Math.cos(Math.PI * ((c * progress) % 1.0))));
  };
}

/** Linear warmup, then polynomial decay from lrInit to lrEnd (as a multiplier of lrInit). */
export function polynomialSchedule(opts: ScheduleOptions): LrLambda {
  const T = totalOf(opts, 'polynomial'), W = warmupStepsOf(opts, T);
  const lrEnd = opts.lrEnd ?? 1e-7, power = opts.power ?? 1.0, lrInit = opts.lrInit;
  if (typeof lrInit !== 'number' || !Number.isFinite(lrInit)) throw new Error("schedule 'polynomial' needs lrInit (the optimizer's initial learning rate)");
  if (!(lrInit > lrEnd)) throw new RangeError(`schedule: lrEnd (${lrEnd}) must be smaller than the initial lr (${lrInit})`);
  if (typeof power !== 'number' || !Number.isFinite(power)) throw new RangeError(`schedule: power must be a finite number, got ${power}`);
  return (step) => {
    stepArg(step);
    if (step < W) return step / Math.max(1, W);
    if (step > T) return lrEnd / lrInit;
    const decaySteps = T - W;
    if (decaySteps <= 0) return lrEnd / lrInit;
    const pctRemaining = 1 - (step - W) / decaySteps;
    const decay = (lrInit - lrEnd) * pctRemaining ** power + lrEnd;
    return decay / lrInit;
  };
}

/** A schedule by name (transformers' SchedulerType names are accepted too). */
export function getSchedule(name: ScheduleName | string, opts: ScheduleOptions = {}): LrLambda {
  switch (name) {
    case 'constant': case 'constant_with_warmup': return constantSchedule(opts);
    case 'linear': return linearSchedule(opts);
    case 'cosine': case 'cosine_with_min_lr': return cosineSchedule(opts);
    case 'cosineWithRestarts': case 'cosine_with_restarts': return cosineWithRestartsSchedule(opts);
    case 'polynomial': return polynomialSchedule(opts);
    default:
      throw new Error(`getSchedule: unknown schedule '${name}' (constant, linear, cosine, cosineWithRestarts, polynomial)`);
  }
}

/** What a scheduler drives: anything with setLrMultiplier (AdamW and its variants). */
export interface SchedulableOptimizer {
  setLrMultiplier(multiplier: number): void;
}

/**
 * torch's LambdaLR: on construction lr = initialLr × lambda(step); each step() advances the count
 * (call it after optimizer.step()). `state()`/`loadState()` save and restore the step count.
 */
export class LRScheduler {
  private count: number;
  private mult: number;
  constructor(readonly optimizer: SchedulableOptimizer, readonly lambda: LrLambda, opts: { lastStep?: number } = {}) {
    this.count = nonNegInt(opts.lastStep ?? 0, 'lastStep');
    this.mult = this.apply();
  }
  /** Steps taken so far (the argument of the next lambda evaluation minus one). */
  get currentStep(): number { return this.count; }
  /** The multiplier in effect now. */
  get multiplier(): number { return this.mult; }
  step(): void { this.count++; this.mult = this.apply(); }
  state(): { step: number } { return { step: this.count }; }
  loadState(s: { step: number }): void { this.count = nonNegInt(s.step, 'step'); this.mult = this.apply(); }
  private apply(): number {
    const m = this.lambda(this.count);
    this.optimizer.setLrMultiplier(m);
    return m;
  }
}
