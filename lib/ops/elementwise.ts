/**
 * elementwise.ts — arithmetic with broadcasting, unary math and activations, comparisons,
 * where/maskedFill, clamp, casts — each with its backward wired into autograd.
 *
 * Native kernels: csrc/cpu/elementwise.cpp (forward/backward twins).
 */
import { native, NativeTensor } from '../native';
import { needsGrad, record, save } from '../tensor/autograd';
import { checkDType, DType } from '../tensor/dtype';
import { Tensor } from '../tensor/tensor';
import { checkTensor, sumToShape, wrap } from './util';

type BinaryName = 'add' | 'sub' | 'mul' | 'div' | 'pow' | 'maximum' | 'minimum';

function binary(op: BinaryName, a: Tensor | number, b: Tensor | number): Tensor {
  if (typeof a === 'number' && typeof b === 'number') throw new TypeError(`${op}: at least one argument must be a Tensor`);
  if (typeof b === 'number') return scalarOp(op, checkTensor(a, op, 'a'), b, false);
  if (typeof a === 'number') return scalarOp(op, checkTensor(b, op, 'b'), a, true);
  checkTensor(a, op, 'a'); checkTensor(b, op, 'b');
  const out = wrap(native.binary(op, a.native, b.native));
  if (!needsGrad(a, b)) return out;
  const ga = a.requiresGrad, gb = b.requiresGrad;
  const aShape = a.shape, bShape = b.shape;
  if (op === 'add' || op === 'sub') {
    return record(op, out, [a, b], (g) => {
      const da = ga ? sumToShape(wrap(native.alias(g.native)), aShape) : null;
      let db: Tensor | null = null;
      if (gb) {
        const r = sumToShape(wrap(native.alias(g.native)), bShape);
        db = op === 'sub' ? neg(r) : r;
        if (op === 'sub') r.dispose();
      }
      return [da, db];
    });
  }
  const sa = save(a), sb = save(b);
  return record(op, out, [a, b], (g) => {
    const [da, db] = native.binary_backward(op, sa, sb, g.native, ga, gb) as (NativeTensor | null)[];
    return [da ? sumToShape(wrap(da), aShape) : null, db ? sumToShape(wrap(db), bShape) : null];
  }, [sa, sb]);
}

function scalarOp(op: BinaryName, x: Tensor, s: number, scalarFirst: boolean): Tensor {
  const out = wrap(native.scalar(op, x.native, s, scalarFirst));
  if (!needsGrad(x)) return out;
  if (op === 'add' || (op === 'sub' && !scalarFirst)) return record(op, out, [x], (g) => [wrap(native.alias(g.native))]);
  if (op === 'mul') return record(op, out, [x], (g) => [wrap(native.scalar('mul', g.native, s, false))]);
  const sx = save(x);
  return record(op, out, [x], (g) => [wrap(native.scalar_backward(op, sx, s, scalarFirst, g.native))], [sx]);
}

/** a + b with broadcasting (either may be a number). */
export function add(a: Tensor | number, b: Tensor | number): Tensor { return binary('add', a, b); }
/** a − b with broadcasting. */
export function sub(a: Tensor | number, b: Tensor | number): Tensor { return binary('sub', a, b); }
/** a · b elementwise with broadcasting. */
export function mul(a: Tensor | number, b: Tensor | number): Tensor { return binary('mul', a, b); }
/** a / b elementwise with broadcasting. */
export function div(a: Tensor | number, b: Tensor | number): Tensor { return binary('div', a, b); }
/** a ** b elementwise with broadcasting. */
export function pow(a: Tensor | number, b: Tensor | number): Tensor { return binary('pow', a, b); }
/** Elementwise maximum (gradient split evenly on ties, like torch). */
export function maximum(a: Tensor | number, b: Tensor | number): Tensor { return binary('maximum', a, b); }
/** Elementwise minimum. */
export function minimum(a: Tensor | number, b: Tensor | number): Tensor { return binary('minimum', a, b); }

type UnaryName = 'neg' | 'exp' | 'log' | 'sqrt' | 'rsqrt' | 'abs' | 'sigmoid' | 'tanh' | 'silu' | 'gelu' | 'gelu_tanh' |
  'relu' | 'sin' | 'cos' | 'square' | 'reciprocal' | 'sign' | 'log1p' | 'expm1';
// Ops whose derivative is cheapest from the output y.
const USES_OUTPUT = new Set<UnaryName>(['exp', 'sqrt', 'rsqrt', 'sigmoid', 'tanh', 'reciprocal', 'expm1']);

function unary(op: UnaryName, x: Tensor): Tensor {
  checkTensor(x, op, 'x');
  const out = wrap(native.unary(op, x.native));
  if (!needsGrad(x)) return out;
  if (op === 'neg') return record(op, out, [x], (g) => [wrap(native.scalar('mul', g.native, -1, false))]);
  const sx = save(x);
  const sy: NativeTensor | null = USES_OUTPUT.has(op) ? save(out) : null;
  return record(op, out, [x], (g) => [wrap(native.unary_backward(op, sx, sy, g.native))], sy ? [sx, sy] : [sx]);
}

export function neg(x: Tensor): Tensor { return unary('neg', x); }
export function exp(x: Tensor): Tensor { return unary('exp', x); }
export function log(x: Tensor): Tensor { return unary('log', x); }
export function sqrt(x: Tensor): Tensor { return unary('sqrt', x); }
export function rsqrt(x: Tensor): Tensor { return unary('rsqrt', x); }
export function abs(x: Tensor): Tensor { return unary('abs', x); }
export function sigmoid(x: Tensor): Tensor { return unary('sigmoid', x); }
export function tanh(x: Tensor): Tensor { return unary('tanh', x); }
/** x·σ(x) (SwiGLU's gate activation). */
export function silu(x: Tensor): Tensor { return unary('silu', x); }
/** GELU: exact erf form, or the tanh approximation (`gelu_new`, `gelu_pytorch_tanh`) with approximate='tanh'. */
export function gelu(x: Tensor, approximate: 'none' | 'tanh' = 'none'): Tensor { return unary(approximate === 'tanh' ? 'gelu_tanh' : 'gelu', x); }
export function relu(x: Tensor): Tensor { return unary('relu', x); }
export function sin(x: Tensor): Tensor { return unary('sin', x); }
export function cos(x: Tensor): Tensor { return unary('cos', x); }
export function square(x: Tensor): Tensor { return unary('square', x); }
export function reciprocal(x: Tensor): Tensor { return unary('reciprocal', x); }
export function sign(x: Tensor): Tensor { return unary('sign', x); }
export function log1p(x: Tensor): Tensor { return unary('log1p', x); }
export function expm1(x: Tensor): Tensor { return unary('expm1', x); }

/** Clamp to [min, max] (either bound optional); gradient passes where not clipped. */
export function clamp(x: Tensor, min?: number, max?: number): Tensor {
  checkTensor(x, 'clamp', 'x');
  const lo = min ?? -Infinity, hi = max ?? Infinity;
  const out = wrap(native.clamp(x.native, lo, hi));
  if (!needsGrad(x)) return out;
  const sx = save(x);
  return record('clamp', out, [x], (g) => [wrap(native.clamp_backward(sx, lo, hi, g.native))], [sx]);
}

type CompareName = 'eq' | 'ne' | 'lt' | 'le' | 'gt' | 'ge';
function compare(op: CompareName, a: Tensor, b: Tensor | number): Tensor {
  checkTensor(a, op, 'a');
  return wrap(native.compare(op, a.native, typeof b === 'number' ? b : checkTensor(b, op, 'b').native));
}
/** Elementwise comparisons → u8 masks (no gradient). */
export function eq(a: Tensor, b: Tensor | number): Tensor { return compare('eq', a, b); }
export function ne(a: Tensor, b: Tensor | number): Tensor { return compare('ne', a, b); }
export function lt(a: Tensor, b: Tensor | number): Tensor { return compare('lt', a, b); }
export function le(a: Tensor, b: Tensor | number): Tensor { return compare('le', a, b); }
export function gt(a: Tensor, b: Tensor | number): Tensor { return compare('gt', a, b); }
export function ge(a: Tensor, b: Tensor | number): Tensor { return compare('ge', a, b); }

/** cond ? a : b elementwise (cond is a u8 mask), broadcasting all three. */
export function where(cond: Tensor, a: Tensor, b: Tensor): Tensor {
  checkTensor(cond, 'where', 'cond'); checkTensor(a, 'where', 'a'); checkTensor(b, 'where', 'b');
  const out = wrap(native.where(cond.native, a.native, b.native));
  if (!needsGrad(a, b)) return out;
  const sc = save(cond);
  const aShape = a.shape, bShape = b.shape, ga = a.requiresGrad, gb = b.requiresGrad;
  return record('where', out, [a, b], (g) => {
    let da: Tensor | null = null, db: Tensor | null = null;
    if (ga) {
      const z = wrap(native.zeros([], g.dtype));
      da = sumToShape(wrap(native.where(sc, g.native, z.native)), aShape); z.dispose();
    }
    if (gb) {
      const z = wrap(native.zeros([], g.dtype));
      db = sumToShape(wrap(native.where(sc, z.native, g.native)), bShape); z.dispose();
    }
    return [da, db];
  }, [sc]);
}

/** x with `value` where mask (u8, broadcast to x) is set; no gradient flows to filled positions. */
export function maskedFill(x: Tensor, mask: Tensor, value: number): Tensor {
  checkTensor(x, 'maskedFill', 'x'); checkTensor(mask, 'maskedFill', 'mask');
  const out = wrap(native.masked_fill(x.native, mask.native, value));
  if (!needsGrad(x)) return out;
  const sm = save(mask);
  return record('maskedFill', out, [x], (g) => [wrap(native.masked_fill(g.native, sm, 0))], [sm]);
}

/** Cast to another dtype; the gradient is cast back to the input's dtype. */
export function cast(x: Tensor, dtype: DType): Tensor {
  checkTensor(x, 'cast', 'x');
  checkDType(dtype, 'cast: dtype');
  if (x.dtype === dtype) return x;
  const out = wrap(native.cast(x.native, dtype));
  if (!needsGrad(x)) return out;
  const from = x.dtype;
  if (dtype !== 'f32' && dtype !== 'f64' && dtype !== 'bf16' && dtype !== 'f16') return out;
  return record('cast', out, [x], (g) => [wrap(native.cast(g.native, from))]);
}
