/**
 * gradcheck.ts — finite-difference gradient checks in f64, shared by the op tests.
 *
 * For f(inputs) -> out, we check d(Σ out·W)/d(input) for a fixed random weighting W against
 * central differences (h = 1e-6) computed by perturbing one input element at a time.
 */
import { noGrad, Tensor, ops } from '../../lib';

export interface GradcheckOptions { eps?: number; atol?: number; rtol?: number; seed?: number; }

/** Deterministic pseudo-random numbers in [-1, 1) (test-local; independent of the library's RNG). */
export function lcg(seed: number): () => number {
  let s = (seed >>> 0) || 1;
  return () => { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; return s / 2 ** 31 - 1; };
}

export function randomF64(shape: number[], seed: number, scale = 1): Tensor {
  const r = lcg(seed);
  const n = shape.reduce((a, b) => a * b, 1);
  return Tensor.fromArray(Array.from({ length: n }, () => r() * scale), { shape, dtype: 'f64' });
}

/**
 * Returns the max abs difference between analytic and numeric gradients for every input that
 * requires grad; throws with details if any exceeds atol + rtol·|numeric|.
 */
export function gradcheck(fn: (xs: Tensor[]) => Tensor, inputs: Tensor[], opts: GradcheckOptions = {}): number {
  const eps = opts.eps ?? 1e-6, atol = opts.atol ?? 1e-7, rtol = opts.rtol ?? 1e-5;
  for (const x of inputs) if (x.dtype !== 'f64') throw new Error('gradcheck: inputs must be f64');
  // analytic
  for (const x of inputs) x.zeroGrad();
  const out = fn(inputs);
  const w = randomF64([...out.shape], opts.seed ?? 99);
  const loss = ops.sum(ops.mul(out, w));
  loss.backward();
  const wArr = w.toFloat64Array();
  const objective = (): number => noGrad(() => {
    const o = fn(inputs);
    const v = o.toFloat64Array();
    o.dispose();
    let s = 0;
    for (let i = 0; i < v.length; i++) s += v[i] * wArr[i];
    return s;
  });
  let worst = 0;
  inputs.forEach((x, k) => {
    if (!x.requiresGrad) return;
    if (!x.grad) throw new Error(`gradcheck: input ${k} got no gradient`);
    const analytic = x.grad.toFloat64Array();
    const data = x.toFloat64Array();
    for (let i = 0; i < data.length; i++) {
      const orig = data[i];
      data[i] = orig + eps; setData(x, data);
      const fp = objective();
      data[i] = orig - eps; setData(x, data);
      const fm = objective();
      data[i] = orig; setData(x, data);
      const numeric = (fp - fm) / (2 * eps);
      const err = Math.abs(numeric - analytic[i]);
      worst = Math.max(worst, err);
      if (err > atol + rtol * Math.abs(numeric)) {
        throw new Error(`gradcheck: input ${k} element ${i}: analytic ${analytic[i]} vs numeric ${numeric} (err ${err})`);
      }
    }
  });
  return worst;
}

function setData(x: Tensor, data: Float64Array): void {
  // in-place overwrite of a contiguous f64 leaf
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const { native } = require('../../lib/native');
  native.copyFromBuffer(x.native, data);
}

/** Max |a - b| over all elements (as f64). */
export function maxAbsDiff(a: Tensor | ArrayLike<number>, b: Tensor | ArrayLike<number>): number {
  const x = a instanceof Tensor ? a.toFloat64Array() : a;
  const y = b instanceof Tensor ? b.toFloat64Array() : b;
  if (x.length !== y.length) throw new Error(`maxAbsDiff: lengths ${x.length} vs ${y.length}`);
  let m = 0;
  for (let i = 0; i < x.length; i++) {
    const d = Math.abs(x[i] - y[i]);
    if (Number.isNaN(d)) return NaN;
    m = Math.max(m, d);
  }
  return m;
}
