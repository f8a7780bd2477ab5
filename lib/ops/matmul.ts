/**
 * matmul.ts — batched matrix product and linear layers over the packed GEMM (csrc/cpu/gemm*).
 * Backward: dA = dY·Bᵀ, dB = Aᵀ·dY (batch-broadcast dims summed away); transposes are free.
 */
import { native, NativeTensor } from '../native';
import { needsGrad, record, save } from '../tensor/autograd';
import { Tensor } from '../tensor/tensor';
import { checkTensor, sumToShape, wrap } from './util';

/** a·b for (...,M,K)·(...,K,N) with broadcast batch dims; 1-d operands are not promoted. */
export function matmul(a: Tensor, b: Tensor, opts: { transA?: boolean; transB?: boolean } = {}): Tensor {
  checkTensor(a, 'matmul', 'a'); checkTensor(b, 'matmul', 'b');
  const ta = !!opts.transA, tb = !!opts.transB;
  const out = wrap(native.matmul(a.native, b.native, ta, tb));
  if (!needsGrad(a, b)) return out;
  const sa = save(a), sb = save(b);
  const aShape = a.shape, bShape = b.shape, ga = a.requiresGrad, gb = b.requiresGrad;
  return record('matmul', out, [a, b], (g) => {
    // out = A·B with A = ta ? aᵀ : a, B = tb ? bᵀ : b.
    let da: Tensor | null = null, db: Tensor | null = null;
    if (ga) da = sumToShape(wrap(ta ? native.matmul(sb, g.native, tb, true) : native.matmul(g.native, sb, false, !tb)), aShape);
    if (gb) db = sumToShape(wrap(tb ? native.matmul(g.native, sa, true, ta) : native.matmul(sa, g.native, !ta, false)), bShape);
    return [da, db];
  }, [sa, sb]);
}

/** y = x·Wᵀ + b with W (out, in) as in torch.nn.Linear. */
export function linear(x: Tensor, weight: Tensor, bias?: Tensor | null): Tensor {
  checkTensor(x, 'linear', 'x'); checkTensor(weight, 'linear', 'weight');
  if (bias) checkTensor(bias, 'linear', 'bias');
  const out = wrap(native.linear(x.native, weight.native, bias ? bias.native : null));
  if (!needsGrad(x, weight, bias)) return out;
  const gx = x.requiresGrad, gw = weight.requiresGrad, gbias = !!bias && bias.requiresGrad;
  // Only save what the requested gradients need: a frozen weight never saves x.
  const sw = gx ? save(weight) : null;
  const sx = gw ? save(x) : null;
  const xShape = x.shape, outF = weight.shape[0];
  return record('linear', out, [x, weight, bias ?? null], (g) => {
    const g2 = native.reshape(g.native, [-1, outF]) as NativeTensor;
    let dx: Tensor | null = null;
    if (gx) {
      const m = native.matmul(g2, sw, false, false) as NativeTensor;
      dx = wrap(native.reshape(m, [...xShape]));
      m.dispose();
    }
    const dw = gw ? wrap(native.linear_weight_grad(g.native, sx, null)) : null;
    const db = gbias ? wrap(native.sum(g2, [0], false)) : null;
    g2.dispose();
    return [dx, dw, db];
  }, [sw, sx].filter((h) => h !== null) as ReturnType<typeof save>[]);
}
