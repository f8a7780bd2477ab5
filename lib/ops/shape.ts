/**
 * shape.ts — views (reshape, transpose, permute, narrow, slice, expand, squeeze/unsqueeze) that
 * share storage, and cat/split/stack. Gradients of views are the inverse view or a scatter.
 */
import { native, NativeTensor } from '../native';
import { needsGrad, record } from '../tensor/autograd';
import { Tensor } from '../tensor/tensor';
import { checkTensor, sumToShape, wrap, wrapDim } from './util';

function viewOp(name: string, x: Tensor, out: NativeTensor, back: (g: Tensor) => Tensor): Tensor {
  const t = wrap(out);
  if (!needsGrad(x)) return t;
  return record(name, t, [x], (g) => [back(g)]);
}

// Gradient of any view: reshape g back to the input's shape (for shape-only views).
function reshapeBack(inShape: readonly number[]) {
  return (g: Tensor) => wrap(native.reshape(g.native, [...inShape]));
}

/** A view with a new shape (one dim may be -1); throws when the layout needs a copy. */
export function view(x: Tensor, shape: number[]): Tensor {
  checkTensor(x, 'view', 'x');
  return viewOp('view', x, native.view(x.native, shape), reshapeBack(x.shape));
}
/** Like view, but copies when the layout requires it. */
export function reshape(x: Tensor, shape: number[]): Tensor {
  checkTensor(x, 'reshape', 'x');
  return viewOp('reshape', x, native.reshape(x.native, shape), reshapeBack(x.shape));
}
/** Flatten dims [start, end] into one. */
export function flatten(x: Tensor, start = 0, end = -1): Tensor {
  const s = wrapDim(start, x.ndim, 'flatten'), e = wrapDim(end, x.ndim, 'flatten');
  const shape = [...x.shape.slice(0, s), x.shape.slice(s, e + 1).reduce((a, b) => a * b, 1), ...x.shape.slice(e + 1)];
  return reshape(x, shape);
}
export function transpose(x: Tensor, a: number, b: number): Tensor {
  checkTensor(x, 'transpose', 'x');
  return viewOp('transpose', x, native.transpose(x.native, a, b), (g) => wrap(native.transpose(g.native, a, b)));
}
export function permute(x: Tensor, order: number[]): Tensor {
  checkTensor(x, 'permute', 'x');
  const out = native.permute(x.native, order);
  const inv: number[] = new Array(order.length);
  order.forEach((d, i) => { inv[wrapDim(d, order.length, 'permute')] = i; });
  return viewOp('permute', x, out, (g) => wrap(native.permute(g.native, inv)));
}
export function unsqueeze(x: Tensor, dim: number): Tensor {
  checkTensor(x, 'unsqueeze', 'x');
  return viewOp('unsqueeze', x, native.unsqueeze(x.native, dim), reshapeBack(x.shape));
}
export function squeeze(x: Tensor, dim: number): Tensor {
  checkTensor(x, 'squeeze', 'x');
  return viewOp('squeeze', x, native.squeeze(x.native, dim), reshapeBack(x.shape));
}
/** Broadcast view to `shape` (-1 keeps a dim); gradient sums over the broadcast dims. */
export function expand(x: Tensor, shape: number[]): Tensor {
  checkTensor(x, 'expand', 'x');
  const inShape = x.shape;
  return viewOp('expand', x, native.expand(x.native, shape), (g) => sumToShape(wrap(native.alias(g.native)), inShape));
}
/** A contiguous copy when needed (identity view otherwise). */
export function contiguous(x: Tensor): Tensor {
  checkTensor(x, 'contiguous', 'x');
  return viewOp('contiguous', x, native.contiguous(x.native), (g) => wrap(native.alias(g.native)));
}
/** A copy that owns its storage. */
export function clone(x: Tensor): Tensor {
  checkTensor(x, 'clone', 'x');
  return viewOp('clone', x, native.clone(x.native), (g) => wrap(native.alias(g.native)));
}

// Gradient of a slice-like view: zeros of the input shape with g copied into the slice. The zeros
// live on g's device: copy_ crosses devices, so host zeros would turn a cuda gradient into a cpu one.
function sliceBack(inShape: readonly number[], cut: (h: NativeTensor) => NativeTensor) {
  return (g: Tensor) => {
    const z = Tensor.zeros([...inShape], { dtype: g.dtype, device: g.device });
    const region = cut(z.native);
    native.copy_(region, g.native);
    region.dispose();
    return z;
  };
}

/** Elements [start, start+length) of `dim` (a view). */
export function narrow(x: Tensor, dim: number, start: number, length: number): Tensor {
  checkTensor(x, 'narrow', 'x');
  return viewOp('narrow', x, native.narrow(x.native, dim, start, length),
    sliceBack(x.shape, (h) => native.narrow(h, dim, start, length)));
}
/** Python-style slice start:end:step of `dim` (negative indices count from the end; a view). */
export function slice(x: Tensor, dim: number, start: number, end: number, step = 1): Tensor {
  checkTensor(x, 'slice', 'x');
  return viewOp('slice', x, native.slice(x.native, dim, start, end, step),
    sliceBack(x.shape, (h) => native.slice(h, dim, start, end, step)));
}

/** Concatenate along `dim`. */
export function cat(xs: Tensor[], dim = 0): Tensor {
  if (!Array.isArray(xs) || xs.length === 0) throw new TypeError('cat: expected a non-empty array of tensors');
  xs.forEach((t, i) => checkTensor(t, 'cat', `tensors[${i}]`));
  const out = wrap(native.cat(xs.map((t) => t.native), dim));
  if (!needsGrad(...xs)) return out;
  const d = wrapDim(dim, xs[0].ndim, 'cat');
  const sizes = xs.map((t) => t.shape[d]);
  return record('cat', out, xs, (g) => {
    let at = 0;
    return sizes.map((n, i) => {
      let r: Tensor | null = null;
      if (xs[i].requiresGrad) {
        const v = native.narrow(g.native, d, at, n) as NativeTensor;
        r = wrap(native.contiguous(v));
        v.dispose();
      }
      at += n;
      return r;
    });
  });
}

/** Split into pieces of `size` (a number) or the given sizes along `dim` (views). */
export function split(x: Tensor, size: number | number[], dim = 0): Tensor[] {
  checkTensor(x, 'split', 'x');
  const d = wrapDim(dim, x.ndim, 'split');
  const total = x.shape[d];
  const sizes: number[] = [];
  if (Array.isArray(size)) {
    if (size.reduce((a, b) => a + b, 0) !== total) throw new Error(`split: sizes [${size}] do not add up to ${total} (dim ${d} of [${x.shape}])`);
    sizes.push(...size);
  } else {
    if (!Number.isInteger(size) || size <= 0) throw new RangeError(`split: size must be a positive integer, got ${size}`);
    for (let at = 0; at < total; at += size) sizes.push(Math.min(size, total - at));
  }
  let at = 0;
  return sizes.map((n) => { const t = narrow(x, d, at, n); at += n; return t; });
}

/** Stack along a new dim. */
export function stack(xs: Tensor[], dim = 0): Tensor {
  if (!Array.isArray(xs) || xs.length === 0) throw new TypeError('stack: expected a non-empty array of tensors');
  const d = wrapDim(dim, xs[0].ndim + 1, 'stack');
  const us = xs.map((t) => unsqueeze(t, d));
  const out = cat(us, d);
  for (const u of us) u.dispose();
  return out;
}
