/**
 * util.ts — small helpers shared by the op modules: wrapping native results, dims, shapes.
 */
import { NativeTensor } from '../native';
import { Tensor } from '../tensor/tensor';

/** Wrap a native handle as a Tensor. */
export function wrap(h: NativeTensor): Tensor { return new Tensor(h); }

/** Throw a TypeError unless `t` is a live Tensor. */
export function checkTensor(t: unknown, op: string, arg: string): Tensor {
  if (!(t instanceof Tensor)) throw new TypeError(`${op}: argument '${arg}' must be a Tensor, got ${t === null ? 'null' : typeof t}`);
  if (t.disposed) throw new Error(`${op}: argument '${arg}' has been disposed`);
  return t;
}

/** Normalise a possibly negative dim. */
export function wrapDim(d: number, ndim: number, op: string): number {
  const n = Math.max(ndim, 1);
  if (!Number.isInteger(d) || d < -n || d >= n) throw new RangeError(`${op}: dim ${d} out of range for a ${ndim}-d tensor`);
  return d < 0 ? d + n : d;
}

export function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** Reduce a gradient at a broadcast shape back to `shape` (no-op when equal). */
export function sumToShape(g: Tensor, shape: readonly number[]): Tensor {
  if (sameShape(g.shape, shape)) return g;
  // Lazy import to keep module init order simple.
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const { native } = require('../native') as typeof import('../native');
  const r = wrap(native.sum_to_shape(g.native, [...shape]));
  g.dispose();
  return r;
}
