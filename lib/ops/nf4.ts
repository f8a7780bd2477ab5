/**
 * nf4.ts — the 4-bit linear op: y = x·Wᵀ (+ b) with W a frozen NF4/FP4 QuantizedTensor, with
 * autograd for x (and the bias). One native call each way, through the fused 4-bit GEMM
 * (csrc/cpu/quant.cpp gemm_4bit): the 4-bit blocks are dequantized inside the GEMM's B-panel
 * packing, so the full-precision weight never exists — forward x·Wᵀ and backward dX = dY·W alike.
 * dW is never formed (the quantized weight is not trainable, as in bitsandbytes' Linear4bit).
 *
 * Numerics: the weight values are exactly dequantize(W) (code·absmax rounded to W.dtype, i.e. bf16
 * by default, as bnb's dequantize_4bit), products accumulate in f32; the output has x's dtype. f64
 * inputs (gradient checks) use an f64 copy of the dequantized weight.
 */
import { native, NativeTensor } from '../native';
import { needsGrad, record } from '../tensor/autograd';
import { Tensor } from '../tensor/tensor';
import type { QuantizedTensor } from '../quant/nf4';
import { checkTensor, wrap } from './util';

/** x (..., in) · Wᵀ (+ bias) for a 4-bit W of shape (out, in) → (..., out) in x's dtype. */
export function linear4bit(x: Tensor, weight: QuantizedTensor, bias?: Tensor | null): Tensor {
  checkTensor(x, 'linear4bit', 'x');
  if (bias) checkTensor(bias, 'linear4bit', 'bias');
  if (!weight || typeof (weight as QuantizedTensor).nativeState !== 'function') {
    throw new TypeError('linear4bit: weight must be a QuantizedTensor (from quantizeNF4)');
  }
  if (weight.shape.length !== 2) throw new Error(`linear4bit: the 4-bit weight must be 2-d (out, in), got [${weight.shape}]`);
  const out = wrap(native.quant4_linear(x.native, weight.nativeState(), bias ? bias.native : null));
  if (!needsGrad(x, bias)) return out;
  const gx = x.requiresGrad, gb = !!bias && bias.requiresGrad;
  const outF = weight.shape[0];
  // Only the (aliased) quant state is kept for backward: the input is not needed for dX.
  const saved = gx ? weight.aliasState() : null;
  return record('linear4bit', out, [x, bias ?? null], (g) => {
    const dx = gx ? wrap(native.quant4_linear_grad_input(g.native, saved!.state)) : null;
    let db: Tensor | null = null;
    if (gb) {
      const g2 = native.reshape(g.native, [-1, outF]) as NativeTensor;
      db = wrap(native.sum(g2, [0], false));
      g2.dispose();
    }
    return [dx, db];
  }, saved ? saved.handles : []);
}
