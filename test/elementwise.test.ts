/**
 * Elementwise ops: forward against hand-computed values and naive JS f64 loops, backward against
 * finite differences in f64, broadcasting/view edge cases, dtypes, and bad inputs -> errors.
 */
import { Tensor, ops, noGrad, tidy } from '../lib';
import { gradcheck, maxAbsDiff, randomF64, lcg } from './helpers/gradcheck';

const erf = (x: number): number => {
  // Abramowitz-Stegun 7.1.26 is too coarse for 1e-9; use a series/continued fraction in f64.
  const t = Math.abs(x);
  if (t < 3) {
    let sum = t, term = t;
    for (let n = 1; n < 200; n++) { term *= -t * t / n; sum += term / (2 * n + 1); if (Math.abs(term) < 1e-17) break; }
    return Math.sign(x) * 2 / Math.sqrt(Math.PI) * sum;
  }
  // continued fraction for erfc
  let f = 0;
  for (let n = 60; n >= 1; n--) f = n / 2 / (t + f);
  const erfc = Math.exp(-t * t) / Math.sqrt(Math.PI) / (t + f);
  return Math.sign(x) * (1 - erfc);
};

const REF: Record<string, (x: number) => number> = {
  neg: (x) => -x, exp: Math.exp, log: Math.log, sqrt: Math.sqrt, rsqrt: (x) => 1 / Math.sqrt(x), abs: Math.abs,
  sigmoid: (x) => 1 / (1 + Math.exp(-x)), tanh: Math.tanh, silu: (x) => x / (1 + Math.exp(-x)),
  gelu: (x) => 0.5 * x * (1 + erf(x / Math.SQRT2)),
  gelu_tanh: (x) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3))),
  relu: (x) => Math.max(x, 0), sin: Math.sin, cos: Math.cos, square: (x) => x * x, reciprocal: (x) => 1 / x,
  log1p: Math.log1p, expm1: Math.expm1,
};
const POSITIVE_ONLY = new Set(['log', 'sqrt', 'rsqrt', 'reciprocal', 'log1p']);

function apply(name: string, x: Tensor): Tensor {
  if (name === 'gelu_tanh') return ops.gelu(x, 'tanh');
  return (ops as unknown as Record<string, (t: Tensor) => Tensor>)[name](x);
}

describe('binary ops', () => {
  test('hand-computed values with broadcasting', () => {
    const a = Tensor.fromArray([[1, 2, 3], [4, 5, 6]]);
    const b = Tensor.fromArray([10, 20, 30]);
    expect(ops.add(a, b).toArray()).toEqual([[11, 22, 33], [14, 25, 36]]);
    expect(ops.sub(a, b).toArray()).toEqual([[-9, -18, -27], [-6, -15, -24]]);
    expect(ops.mul(a, 2).toArray()).toEqual([[2, 4, 6], [8, 10, 12]]);
    expect(ops.div(12, a).toArray()).toEqual([[12, 6, 4], [3, 2.4000000953674316, 2]]);
    expect(ops.pow(a, 2).toArray()).toEqual([[1, 4, 9], [16, 25, 36]]);
    const col = Tensor.fromArray([[1], [5]]);
    expect(ops.maximum(a, col).toArray()).toEqual([[1, 2, 3], [5, 5, 6]]);
    expect(ops.minimum(a, col).toArray()).toEqual([[1, 1, 1], [4, 5, 5]]);
    // (2,1) + (3,) -> (2,3); (1,3,1) + (2,1,4) -> (2,3,4)
    expect(ops.add(col, b).shape).toEqual([2, 3]);
    expect(ops.add(Tensor.zeros([1, 3, 1]), Tensor.zeros([2, 1, 4])).shape).toEqual([2, 3, 4]);
  });

  test('matches naive f64 loops on random broadcast shapes', () => {
    const a = randomF64([3, 1, 5], 1), b = randomF64([4, 1], 2);
    const A = a.toFloat64Array(), B = b.toFloat64Array();
    for (const [name, f] of [['add', (x: number, y: number) => x + y], ['mul', (x: number, y: number) => x * y],
      ['div', (x: number, y: number) => x / y], ['sub', (x: number, y: number) => x - y]] as const) {
      const out = (ops as unknown as Record<string, (x: Tensor, y: Tensor) => Tensor>)[name](a, b);
      expect(out.shape).toEqual([3, 4, 5]);
      const o = out.toFloat64Array();
      for (let i = 0; i < 3; i++) for (let j = 0; j < 4; j++) for (let k = 0; k < 5; k++) {
        expect(o[(i * 4 + j) * 5 + k]).toBe(f(A[i * 5 + k], B[j]));
      }
    }
  });

  test('gradients by finite differences (broadcast dims reduce)', () => {
    for (const op of ['add', 'sub', 'mul', 'div', 'maximum', 'minimum'] as const) {
      const a = randomF64([3, 1, 4], 3).requiresGrad_();
      const b = randomF64([2, 4], 4).requiresGrad_();
      gradcheck(([x, y]) => (ops as unknown as Record<string, (x: Tensor, y: Tensor) => Tensor>)[op](x, y), [a, b]);
    }
    const p = ops.add(randomF64([5], 5), 2).requiresGrad_();  // positive base for pow
    const e = randomF64([5], 6).requiresGrad_();
    gradcheck(([x, y]) => ops.pow(x, y), [p, e]);
  });

  test('scalar forms and their gradients', () => {
    const x = ops.add(randomF64([6], 7), 1.5).requiresGrad_();
    gradcheck(([t]) => ops.add(ops.mul(ops.sub(3, t), 2.5), ops.div(1, t)), [x]);
    gradcheck(([t]) => ops.pow(t, 3), [x]);
    gradcheck(([t]) => ops.pow(2, t), [x]);
  });

  test('bf16 and f16 are computed in f32 and rounded', () => {
    const a = Tensor.fromArray([1.0, 2.5, -3.25], { dtype: 'bf16' });
    const b = Tensor.fromArray([0.5, 0.25, 1], { dtype: 'bf16' });
    const s = ops.add(a, b);
    expect(s.dtype).toBe('bf16');
    expect(s.toArray()).toEqual([1.5, 2.75, -2.25]);
    const h = ops.mul(Tensor.fromArray([1.5, 3], { dtype: 'f16' }), Tensor.fromArray([2, 0.5], { dtype: 'f16' }));
    expect(h.dtype).toBe('f16');
    expect(h.toArray()).toEqual([3, 1.5]);
    // mixed bf16 + f32 promotes to f32
    expect(ops.add(a, Tensor.fromArray([0, 0, 0])).dtype).toBe('f32');
    // bf16 rounding: 1 + 2^-9 is not representable -> rounds to 1 (nearest even)
    expect(Tensor.fromArray([1 + 2 ** -9], { dtype: 'bf16' }).toArray()).toEqual([1]);
    expect(Tensor.fromArray([1 + 3 * 2 ** -9], { dtype: 'bf16' }).toArray()).toEqual([1 + 2 ** -7]);
  });

  test('bad inputs throw errors naming the op and shapes', () => {
    expect(() => ops.add(Tensor.zeros([2, 3]), Tensor.zeros([4]))).toThrow(/add: shapes \[2,3\] and \[4\] cannot be broadcast/);
    expect(() => ops.add(Tensor.zeros([2], { dtype: 'i64' }), Tensor.zeros([2]))).toThrow(/must be a floating tensor/);
    const d = Tensor.zeros([2]); d.dispose();
    expect(() => ops.add(d, 1)).toThrow(/disposed/);
    expect(() => ops.mul(null as unknown as Tensor, 1)).toThrow(/must be a Tensor/);
  });
});

describe('unary ops', () => {
  test('forward matches f64 references; backward matches finite differences', () => {
    for (const [name, f] of Object.entries(REF)) {
      const x = POSITIVE_ONLY.has(name) ? ops.add(ops.abs(randomF64([7], 11)), 0.2) : randomF64([7], 11, 2);
      const out = apply(name, x);
      const xs = x.toFloat64Array(), os = out.toFloat64Array();
      for (let i = 0; i < xs.length; i++) expect(Math.abs(os[i] - f(xs[i]))).toBeLessThan(1e-12 * Math.max(1, Math.abs(f(xs[i]))));
      const leaf = x.detach().requiresGrad_();
      if (name !== 'relu' && name !== 'abs') gradcheck(([t]) => apply(name, t), [leaf]);
    }
  });

  test('f32 activations agree with f64 within f32 rounding', () => {
    const x64 = randomF64([64], 12, 4);
    const x32 = ops.cast(x64, 'f32');
    for (const name of ['silu', 'gelu', 'gelu_tanh', 'sigmoid', 'tanh', 'exp']) {
      expect(maxAbsDiff(apply(name, x32), apply(name, x64))).toBeLessThan(1e-5 * 60);
    }
  });

  test('clamp, where, maskedFill and comparisons', () => {
    const x = Tensor.fromArray([-2, -0.5, 0.5, 2], { dtype: 'f64' });
    expect(ops.clamp(x, -1, 1).toArray()).toEqual([-1, -0.5, 0.5, 1]);
    expect(ops.gt(x, 0).toArray()).toEqual([0, 0, 1, 1]);
    expect(ops.eq(x, Tensor.fromArray([-2, 0, 0, 2], { dtype: 'f64' })).toArray()).toEqual([1, 0, 0, 1]);
    const m = ops.lt(x, 0);
    expect(ops.maskedFill(x, m, 9).toArray()).toEqual([9, 9, 0.5, 2]);
    expect(ops.where(m, x, ops.neg(x)).toArray()).toEqual([-2, -0.5, -0.5, -2]);
    const leaf = x.detach().requiresGrad_();
    gradcheck(([t]) => ops.clamp(t, -1, 1), [leaf]);
    const a = randomF64([4], 13).requiresGrad_(), b = randomF64([2, 4], 14).requiresGrad_();
    gradcheck(([p, q]) => ops.where(m, p, q), [a, b]);
    gradcheck(([p]) => ops.maskedFill(p, m, 3), [a]);
    expect(() => ops.where(x, x, x)).toThrow(/cond.*must be u8/);
  });
});

describe('autograd semantics', () => {
  test('grads accumulate on leaves across backward calls; noGrad records nothing', () => {
    const x = Tensor.fromArray([1, 2, 3], { requiresGrad: true });
    ops.sum(ops.mul(x, x)).backward();
    ops.sum(ops.mul(x, 3)).backward();
    expect(x.grad!.toArray()).toEqual([5, 7, 9]);
    const y = noGrad(() => ops.mul(x, 2));
    expect(y.requiresGrad).toBe(false);
    expect(y.gradFn).toBeNull();
    const d = ops.mul(x.detach(), 2);
    expect(d.requiresGrad).toBe(false);
  });

  test('a tensor used twice gets the sum of both paths; backward twice without retainGraph throws', () => {
    const x = Tensor.fromArray([2], { requiresGrad: true, dtype: 'f64' });
    const y = ops.mul(x, x);          // dy/dx = 2x
    const z = ops.add(ops.mul(y, x), y); // x^3 + x^2 -> 3x^2 + 2x = 16
    z.backward(undefined, { retainGraph: true });
    expect(x.grad!.toArray()).toEqual([16]);
    z.backward();
    expect(x.grad!.toArray()).toEqual([32]);
    expect(() => z.backward()).toThrow(/already freed/);
  });

  test('saved tensors are freed when backward finishes (native live bytes return to baseline)', () => {
    const { memoryStats } = require('../lib');
    const x = Tensor.randn([256, 256], { seed: 1, requiresGrad: true });
    x.grad = null;
    const before = memoryStats().cpu.liveBytes;
    let peak = 0;
    tidy(() => {
      const loss = ops.sum(ops.mul(ops.exp(ops.mul(x, 0.01)), x));
      peak = memoryStats().cpu.liveBytes - before;
      loss.backward();
    });
    // forward held 3 intermediates of 256 KiB (one also saved for backward, sharing storage)
    expect(peak).toBeGreaterThanOrEqual(3 * 256 * 256 * 4);
    // after the scope: only x.grad (256*256 f32) remains
    expect(memoryStats().cpu.liveBytes - before).toBe(256 * 256 * 4);
  });

  test('handles that are never disposed are reclaimed by the GC (native memory is reported to V8)', async () => {
    const { memoryStats } = require('../lib');
    const before = memoryStats().cpu.liveBytes;
    let peak = 0;
    // 200 leaked 16 MiB tensors = 3.2 GiB if nothing reclaimed them; yield so finalizers can run.
    for (let i = 0; i < 200; i++) {
      Tensor.ones([4 * 1024 * 1024]);
      await new Promise((r) => setImmediate(r));
      peak = Math.max(peak, memoryStats().cpu.liveBytes - before);
    }
    expect(peak).toBeLessThan(1.5 * 2 ** 30);
  });

  test('non-scalar backward needs a gradient of the same shape', () => {
    const x = Tensor.fromArray([1, 2], { requiresGrad: true });
    const y = ops.mul(x, 3);
    expect(() => y.backward()).toThrow(/only for scalar outputs/);
    y.backward(Tensor.fromArray([1, 10]));
    expect(x.grad!.toArray()).toEqual([3, 30]);
  });

  test('random numbers are seeded and reproducible', () => {
    const a = Tensor.randn([1000], { seed: 42 }).toFloat64Array();
    const b = Tensor.randn([1000], { seed: 42 }).toFloat64Array();
    expect(Array.from(a)).toEqual(Array.from(b));
    const m = a.reduce((s, v) => s + v, 0) / a.length;
    const v = a.reduce((s, x) => s + (x - m) ** 2, 0) / a.length;
    expect(Math.abs(m)).toBeLessThan(0.1);
    expect(Math.abs(v - 1)).toBeLessThan(0.15);
    const u = Tensor.rand([1000], { seed: 3, low: 2, high: 5 }).toFloat64Array();
    expect(Math.min(...u)).toBeGreaterThanOrEqual(2);
    expect(Math.max(...u)).toBeLessThan(5);
    const r = lcg(1); expect(typeof r()).toBe('number');
  });
});
