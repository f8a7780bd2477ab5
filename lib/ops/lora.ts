/**
 * lora.ts — the LoRA linear op: y = x·Wᵀ (+ b) + s · dropout(x)·Aᵀ·Bᵀ, with autograd.
 *
 * Fused (default): one native call for the forward (base GEMM + low-rank path + scale + dropout,
 * output written once) and one for the backward (dX through the frozen W, dA, dB — dW is never
 * formed). Kept for backward: x, W, A, B (aliases), the T×r activations x·Aᵀ and the u8 dropout
 * mask. Native kernels: csrc/cpu/lora.cpp.
 *
 * Unfused (`fused: false`, or a base weight that itself requires grad): composed from linear,
 * dropout, mul and add — the reference the fused path is tested against. With the same seed both
 * paths drop the same elements.
 *
 * QLoRA: the base weight may be a 4-bit QuantizedTensor (NF4/FP4, lib/quant). The fused op then
 * reads it through the fused 4-bit GEMM (dequantizing blocks while packing; the full-precision
 * weight never exists) for the forward x·Wᵀ and the backward dX = dY·W; aliases of the quant
 * state are kept for backward. The unfused path composes linear4bit + the low-rank term.
 */
import { native, NativeTensor } from '../native';
import { needsGrad, record, save } from '../tensor/autograd';
import { Tensor } from '../tensor/tensor';
import { add, cast, mul } from './elementwise';
import { linear, matmul } from './matmul';
import { linear4bit } from './nf4';
import { dropout } from './random';
import { checkTensor, wrap } from './util';
import type { QuantizedTensor } from '../quant/nf4';

/** A 4-bit QuantizedTensor (duck-typed: lib/quant imports the ops, not the other way round). */
export function isQuantizedWeight(w: unknown): w is QuantizedTensor {
  return !!w && !(w instanceof Tensor) && typeof (w as QuantizedTensor).nativeState === 'function' &&
    typeof (w as QuantizedTensor).aliasState === 'function';
}

export interface LoraLinearOptions {
  /** s = lora_alpha / r (rsLoRA: lora_alpha / √r). */
  scale: number;
  /** Dropout probability on the LoRA path's input (default 0). */
  dropout?: number;
  /** Philox seed of the dropout mask (default 0). */
  seed?: number;
  /** Dropout is applied only when training (default true). */
  training?: boolean;
  /** The base weight is stored [in, out] (GPT-2 Conv1D, PEFT's fan_in_fan_out). Default false. */
  weightTransposed?: boolean;
  /** Use the fused native kernels (default true). */
  fused?: boolean;
}

/**
 * LoRA linear layer: x (..., in), weight (out, in) [or (in, out) with weightTransposed] — or a
 * 4-bit QuantizedTensor of shape (out, in) (QLoRA) —, bias (out) or null, loraA (r, in), loraB
 * (out, r) → (..., out) in x's dtype.
 * Gradients flow to x, loraA, loraB and bias; the base weight is frozen on the fused path.
 */
export function loraLinear(x: Tensor, weight: Tensor | QuantizedTensor, bias: Tensor | null, loraA: Tensor, loraB: Tensor,
                           opts: LoraLinearOptions): Tensor {
  const op = 'loraLinear';
  const q4 = isQuantizedWeight(weight) ? weight : null;
  checkTensor(x, op, 'x'); checkTensor(loraA, op, 'loraA'); checkTensor(loraB, op, 'loraB');
  if (q4) {
    if (q4.disposed) throw new Error(`${op}: the 4-bit weight was disposed`);
    if (q4.shape.length !== 2) throw new Error(`${op}: the 4-bit weight must be 2-d (out, in), got [${q4.shape}]`);
    if (opts.weightTransposed) throw new Error(`${op}: a 4-bit weight is always stored (out, in); weightTransposed must be false`);
  } else {
    checkTensor(weight as Tensor, op, 'weight');
  }
  if (bias) checkTensor(bias, op, 'bias');
  const scale = opts.scale;
  if (typeof scale !== 'number' || !Number.isFinite(scale)) throw new RangeError(`${op}: scale must be a finite number, got ${scale}`);
  const training = opts.training ?? true;
  const p0 = opts.dropout ?? 0;
  if (typeof p0 !== 'number' || !(p0 >= 0 && p0 < 1)) throw new RangeError(`${op}: dropout must be in [0, 1), got ${p0}`);
  const p = training ? p0 : 0;
  const seed = opts.seed ?? 0;
  if (!Number.isInteger(seed) || seed < 0) throw new TypeError(`${op}: seed must be a non-negative integer, got ${seed}`);
  const wt = !!opts.weightTransposed;
  if (opts.fused === false || !q4 && (weight as Tensor).requiresGrad && needsGrad(weight as Tensor)) {
    return loraLinearUnfused(x, weight, bias, loraA, loraB, scale, p, seed, wt);
  }

  const wArg = q4 ? q4.nativeState() : (weight as Tensor).native;
  const [y, xa, mask] = native.lora_linear_forward(x.native, wArg, wt, bias ? bias.native : null,
    loraA.native, loraB.native, scale, p, seed) as (NativeTensor | null)[];
  const out = wrap(y as NativeTensor);
  if (!needsGrad(x, loraA, loraB, bias)) {
    (xa as NativeTensor).dispose();
    if (mask) mask.dispose();
    return out;
  }
  const gx = x.requiresGrad, ga = loraA.requiresGrad, gb = loraB.requiresGrad, gbias = !!bias && bias.requiresGrad;
  const sx = save(x), sa = save(loraA), sb = save(loraB);
  // the base weight: an alias of the tensor, or aliases of every tensor of the 4-bit state
  let sw: NativeTensor | Record<string, unknown>;
  const saved: NativeTensor[] = [sx, sa, sb, xa as NativeTensor];
  if (q4) {
    const al = q4.aliasState();
    sw = al.state;
    saved.push(...al.handles);
  } else {
    const h = save(weight as Tensor);
    sw = h;
    saved.push(h);
  }
  if (mask) saved.push(mask);
  const outF = q4 ? q4.shape[0] : wt ? weight.shape[1] : weight.shape[0];
  const biasDtype = bias ? bias.dtype : null;
  return record(op, out, [x, loraA, loraB, bias ?? null], (g) => {
    const [dx, dA, dB] = native.lora_linear_backward(g.native, sx, mask, sw, wt, sa, sb, xa, scale, p, gx, ga, gb) as (NativeTensor | null)[];
    let db: Tensor | null = null;
    if (gbias) {
      const g2 = native.reshape(g.native, [-1, outF]) as NativeTensor;
      const s = native.sum(g2, [0], false) as NativeTensor;
      g2.dispose();
      db = wrap(s);
      if (db.dtype !== biasDtype) { const c = wrap(native.cast(db.native, biasDtype)); db.dispose(); db = c; }
    }
    return [dx ? wrap(dx) : null, dA ? wrap(dA) : null, dB ? wrap(dB) : null, db];
  }, saved);
}

/**
 * The same layer composed from primitive ops (reference for the fused kernels; trains a non-frozen
 * W too). A 4-bit weight goes through linear4bit (Linear4bit.forward).
 */
export function loraLinearUnfused(x: Tensor, weight: Tensor | QuantizedTensor, bias: Tensor | null, loraA: Tensor, loraB: Tensor,
                                  scale: number, p: number, seed: number, weightTransposed = false): Tensor {
  let base: Tensor;
  if (isQuantizedWeight(weight)) {
    base = linear4bit(x, weight, bias);
  } else if (weightTransposed) {
    const m = matmul(x, weight);
    base = bias ? add(m, bias) : m;
    if (bias) m.dispose();
  } else {
    base = linear(x, weight, bias);
  }
  const xd = p > 0 ? dropout(x, p, seed, true) : x;
  const h = linear(xd, loraA);
  const l = linear(h, loraB);
  const ls = mul(l, scale);
  const sum = add(base, ls);
  for (const t of [h, l, ls]) t.dispose();
  if (xd !== x) xd.dispose();
  base.dispose();
  if (sum.dtype === x.dtype) return sum;
  const r = cast(sum, x.dtype);
  sum.dispose();
  return r;
}
