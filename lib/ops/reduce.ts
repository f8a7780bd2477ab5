/**
 * reduce.ts — sum, mean, max (values + indices), argmax. Kernels: csrc/cpu/reduce.cpp.
 */
import { native, NativeTensor } from '../native';
import { needsGrad, record, save } from '../tensor/autograd';
import { Tensor } from '../tensor/tensor';
import { checkTensor, wrap, wrapDim } from './util';

function dimList(x: Tensor, dims: number | number[] | undefined, op: string): number[] {
  if (dims === undefined) return [];
  const list = Array.isArray(dims) ? dims : [dims];
  return list.map((d) => wrapDim(d, x.ndim, op));
}

// Gradient of a reduction: broadcast g (with reduced dims restored as size 1) back to the input shape.
function expandBack(g: Tensor, inShape: readonly number[], dims: number[], keepdim: boolean, scale: number): Tensor {
  let kshape: number[];
  if (keepdim || dims.length === 0 && g.ndim === inShape.length) kshape = [...g.shape];
  else {
    const red = new Set(dims.length ? dims : inShape.map((_, i) => i));
    kshape = inShape.map((d, i) => (red.has(i) ? 1 : d));
  }
  const v = native.reshape(g.native, kshape) as NativeTensor;
  const e = native.expand(v, [...inShape]) as NativeTensor;
  const out = scale === 1 ? native.contiguous(e) : native.scalar('mul', e, scale, false);
  v.dispose(); e.dispose();
  return wrap(out);
}

/** Sum over `dims` (all when omitted). */
export function sum(x: Tensor, dims?: number | number[], keepdim = false): Tensor {
  checkTensor(x, 'sum', 'x');
  const d = dimList(x, dims, 'sum');
  const out = wrap(native.sum(x.native, d, keepdim));
  if (!needsGrad(x)) return out;
  const inShape = x.shape;
  return record('sum', out, [x], (g) => [expandBack(g, inShape, d, keepdim, 1)]);
}

/** Mean over `dims` (all when omitted). */
export function mean(x: Tensor, dims?: number | number[], keepdim = false): Tensor {
  checkTensor(x, 'mean', 'x');
  const d = dimList(x, dims, 'mean');
  const out = wrap(native.mean(x.native, d, keepdim));
  if (!needsGrad(x)) return out;
  const inShape = x.shape;
  let count = 1;
  for (const [i, s] of inShape.entries()) if (d.length === 0 || d.includes(i)) count *= s;
  return record('mean', out, [x], (g) => [expandBack(g, inShape, d, keepdim, 1 / count)]);
}

/** Max over one dim: { values, indices } (indices i64; gradient flows to the argmax). */
export function max(x: Tensor, dim: number, keepdim = false): { values: Tensor; indices: Tensor } {
  checkTensor(x, 'max', 'x');
  const dd = wrapDim(dim, x.ndim, 'max');
  const [v, i] = native.max_dim(x.native, dd, keepdim) as NativeTensor[];
  const values = wrap(v), indices = wrap(i);
  if (needsGrad(x)) {
    const si = save(indices);
    const inShape = x.shape;
    record('max', values, [x], (g) => {
      const kshape = inShape.map((s, k) => (k === dd ? 1 : s));
      const gk = native.reshape(g.native, kshape) as NativeTensor;
      const ik = native.reshape(si, kshape) as NativeTensor;
      const r = wrap(native.scatter_add([...inShape], dd, ik, gk));
      gk.dispose(); ik.dispose();
      return [r];
    }, [si]);
  }
  return { values, indices };
}

/** Index of the maximum along `dim` (i64, first on ties). */
export function argmax(x: Tensor, dim: number, keepdim = false): Tensor {
  checkTensor(x, 'argmax', 'x');
  const [v, i] = native.max_dim(x.native, wrapDim(dim, x.ndim, 'argmax'), keepdim) as NativeTensor[];
  v.dispose();
  return wrap(i);
}
