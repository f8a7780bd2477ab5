/**
 * LR schedules: values at every step against the lambdas of transformers' optimization.py,
 * re-written here from their definitions, plus hand-computed points and the LambdaLR driver.
 */
import { Tensor } from '../lib';
import { AdamW, getSchedule, LRScheduler, warmupStepsOf } from '../lib/optim';

// ---- transformers/optimization.py, transcribed ----
const warm = (s: number, W: number) => s / Math.max(1, W);
const ref = {
  constant_with_warmup: (s: number, W: number) => (s < W ? warm(s, W) : 1.0),
  linear: (s: number, W: number, T: number) => (s < W ? warm(s, W) : Math.max(0.0, (T - s) / Math.max(1, T - W))),
  cosine: (s: number, W: number, T: number, cycles = 0.5, minRate = 0) => {
    if (s < W) return warm(s, W);
    const progress = (s - W) / Math.max(1, T - W);
    const f = 0.5 * (1.0 + Math.cos(Math.PI * cycles * 2.0 * progress));
    return Math.max(0, f * (1 - minRate) + minRate);
  },
  hard_restarts: (s: number, W: number, T: number, cycles = 1) => {
    if (s < W) return warm(s, W);
    const progress = (s - W) / Math.max(1, T - W);
    if (progress >= 1.0) return 0.0;
    return Math.max(0.0, 0.5 * (1.0 + Math.cos(Math.PI * ((cycles * progress) % 1.0))));
  },
  polynomial: (s: number, W: number, T: number, lrEnd: number, power: number, lrInit: number) => {
    if (s < W) return warm(s, W);
    if (s > T) return lrEnd / lrInit;
    const decaySteps = T - W;
    const pctRemaining = 1 - (s - W) / decaySteps;
    return ((lrInit - lrEnd) * pctRemaining ** power + lrEnd) / lrInit;
  },
};

function expectClose(a: number, b: number, what: string): void {
  if (!(Math.abs(a - b) <= 1e-15 * Math.max(1, Math.abs(b)))) throw new Error(`${what}: got ${a}, expected ${b}`);
}

describe('schedules match transformers at every step', () => {
  const configs = [{ W: 0, T: 50 }, { W: 10, T: 100 }, { W: 1, T: 7 }, { W: 30, T: 30 }, { W: 5, T: 3 }];

  test('constant (with and without warmup)', () => {
    for (const { W, T } of configs) {
      const f = getSchedule('constant', { warmupSteps: W, totalSteps: T });
      for (let s = 0; s <= T + 5; s++) expectClose(f(s), ref.constant_with_warmup(s, W), `constant W=${W} s=${s}`);
    }
    expect(getSchedule('constant')(12345)).toBe(1);
  });

  test('linear', () => {
    for (const { W, T } of configs) {
      const f = getSchedule('linear', { warmupSteps: W, totalSteps: T });
      for (let s = 0; s <= T + 5; s++) expectClose(f(s), ref.linear(s, W, T), `linear W=${W} T=${T} s=${s}`);
    }
  });

  test('cosine, with cycles and minLrRatio (cosine_with_min_lr)', () => {
    for (const { W, T } of configs) {
      for (const [cycles, minR] of [[0.5, 0], [0.5, 0.1], [1.5, 0], [2, 0.3]]) {
        const f = getSchedule('cosine', { warmupSteps: W, totalSteps: T, numCycles: cycles, minLrRatio: minR });
        for (let s = 0; s <= T + 5; s++) expectClose(f(s), ref.cosine(s, W, T, cycles, minR), `cosine W=${W} T=${T} c=${cycles} min=${minR} s=${s}`);
      }
    }
  });

  test('cosineWithRestarts', () => {
    for (const { W, T } of configs) {
      for (const cycles of [1, 2, 3.5]) {
        const f = getSchedule('cosineWithRestarts', { warmupSteps: W, totalSteps: T, numCycles: cycles });
        for (let s = 0; s <= T + 5; s++) expectClose(f(s), ref.hard_restarts(s, W, T, cycles), `restarts W=${W} T=${T} c=${cycles} s=${s}`);
      }
    }
  });

  test('polynomial', () => {
    for (const { W, T } of configs.filter((c) => c.T > c.W)) {
      for (const [lrEnd, power] of [[1e-7, 1], [1e-5, 2], [0, 0.5]]) {
        const f = getSchedule('polynomial', { warmupSteps: W, totalSteps: T, lrEnd, power, lrInit: 2e-4 });
        for (let s = 0; s <= T + 5; s++) expectClose(f(s), ref.polynomial(s, W, T, lrEnd, power, 2e-4), `poly W=${W} T=${T} s=${s}`);
      }
    }
  });

  test('warmupRatio gives ceil(totalSteps × ratio) warmup steps', () => {
    expect(warmupStepsOf({ warmupRatio: 0.1, totalSteps: 105 })).toBe(11);
    expect(warmupStepsOf({ warmupRatio: 0.03, totalSteps: 1000 })).toBe(30);
    expect(warmupStepsOf({ warmupSteps: 7, warmupRatio: 0.5, totalSteps: 100 })).toBe(7);   // steps win
    const f = getSchedule('linear', { warmupRatio: 0.1, totalSteps: 105 });
    for (let s = 0; s <= 110; s++) expectClose(f(s), ref.linear(s, 11, 105), `linear ratio s=${s}`);
  });

  test('hand-computed points', () => {
    const lin = getSchedule('linear', { warmupSteps: 10, totalSteps: 110 });
    expect(lin(0)).toBe(0);
    expect(lin(5)).toBe(0.5);
    expect(lin(10)).toBe(1);
    expect(lin(60)).toBe(0.5);
    expect(lin(110)).toBe(0);
    expect(lin(200)).toBe(0);
    const cos = getSchedule('cosine', { warmupSteps: 0, totalSteps: 100 });
    expect(cos(0)).toBe(1);
    expect(cos(50)).toBeCloseTo(0.5, 15);
    expect(cos(100)).toBeCloseTo(0, 15);
    const cosMin = getSchedule('cosine_with_min_lr', { totalSteps: 100, minLrRatio: 0.1 });
    expect(cosMin(100)).toBeCloseTo(0.1, 15);
    expect(cosMin(50)).toBeCloseTo(0.55, 15);
    const rs = getSchedule('cosine_with_restarts', { totalSteps: 100, numCycles: 2 });
    expect(rs(25)).toBeCloseTo(0.5, 15);
    expect(rs(50)).toBe(1);      // restart
    expect(rs(100)).toBe(0);
    const poly = getSchedule('polynomial', { totalSteps: 100, lrInit: 1e-3, lrEnd: 1e-4, power: 2 });
    expect(poly(50)).toBeCloseTo((0.9e-3 * 0.25 + 1e-4) / 1e-3, 15);
    expect(poly(1000)).toBeCloseTo(0.1, 15);
  });

  test('bad options are errors', () => {
    expect(() => getSchedule('linear', {})).toThrow(/needs totalSteps/);
    expect(() => getSchedule('polynomial', { totalSteps: 10 })).toThrow(/needs lrInit/);
    expect(() => getSchedule('polynomial', { totalSteps: 10, lrInit: 1e-7, lrEnd: 1e-7 })).toThrow(/must be smaller/);
    expect(() => getSchedule('warmup_stable_decay', { totalSteps: 10 })).toThrow(/unknown schedule/);
    expect(() => getSchedule('linear', { totalSteps: 10, warmupRatio: 2 })).toThrow(/warmupRatio/);
    expect(() => getSchedule('linear', { totalSteps: 10 })(-1)).toThrow(/non-negative integer/);
  });
});

describe('LRScheduler (LambdaLR) drives the optimizer', () => {
  test('lr = initialLr × lambda(step) for every group; state round trip', () => {
    const a = Tensor.zeros([2], { requiresGrad: true }), b = Tensor.zeros([2], { requiresGrad: true });
    const opt = new AdamW([['x.lora_A.weight', a], ['x.lora_B.weight', b]], { lr: 1e-3, loraPlusRatio: 4 });
    const f = getSchedule('linear', { warmupSteps: 2, totalSteps: 10 });
    const sch = new LRScheduler(opt, f);
    expect(opt.paramGroups.map((g) => g.lr)).toEqual([0, 0]);   // step 0 of warmup
    const seen: number[][] = [];
    for (let s = 1; s <= 4; s++) { sch.step(); seen.push(opt.paramGroups.map((g) => g.lr)); }
    for (const [k, lrs] of seen.entries()) {
      expectClose(lrs[0], 1e-3 * ref.linear(k + 1, 2, 10), 'group A');
      expectClose(lrs[1], 4e-3 * ref.linear(k + 1, 2, 10), 'group B');
    }
    const saved = sch.state();
    expect(saved).toEqual({ step: 4 });
    const opt2 = new AdamW([['x.lora_A.weight', a], ['x.lora_B.weight', b]], { lr: 1e-3, loraPlusRatio: 4 });
    const sch2 = new LRScheduler(opt2, f);
    sch2.loadState(saved);
    expect(opt2.paramGroups.map((g) => g.lr)).toEqual(opt.paramGroups.map((g) => g.lr));
    expect(sch2.multiplier).toBe(f(4));
  });
});
