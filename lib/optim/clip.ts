/**
 * clip.ts — global gradient-norm computation and clipping (torch.nn.utils.clip_grad_norm_).
 *
 * The norm is accumulated natively in f64 over fixed 64Ki-element chunks summed in order, so it
 * is the same for any thread count. Clipping multiplies every gradient by
 * min(1, maxNorm / (total + 1e-6)), in place.
 */
import { native, NativeTensor } from '../native';
import { Tensor } from '../tensor/tensor';
import type { NamedParameter } from './adamw';

type Params = Tensor[] | NamedParameter[] | Iterable<Tensor>;

function gradsOf(params: Params, where: string): Tensor[] {
  const out: Tensor[] = [];
  for (const e of params as Iterable<unknown>) {
    const t = e instanceof Tensor ? e : Array.isArray(e) && e[1] instanceof Tensor ? e[1] as Tensor : null;
    if (!t) throw new TypeError(`${where}: params must be Tensors or [name, Tensor] pairs`);
    if (t.grad) {
      if (t.grad.disposed) throw new Error(`${where}: a gradient has been disposed`);
      out.push(t.grad);
    }
  }
  return out;
}

/** The global `normType` norm of the gradients of `params` (those without a gradient are skipped). */
export function gradNorm(params: Params, normType = 2): number {
  const grads = gradsOf(params, 'gradNorm');
  if (grads.length === 0) return 0;
  return native.grad_norm(grads.map((g) => g.native), normType) as number;
}

export interface ClipOptions {
  /** 2 (default), 1, any p > 0, or Infinity. */
  normType?: number;
  /** Throw when the total norm is NaN or Inf (default false: return it and leave gradients unchanged). */
  errorIfNonfinite?: boolean;
}

/**
 * Clip gradients in place so their global norm is at most `maxNorm`; returns the norm before
 * clipping. A non-finite norm leaves the gradients untouched (the caller should skip the step).
 */
export function clipGradNorm(params: Params, maxNorm: number, opts: ClipOptions = {}): number {
  if (typeof maxNorm !== 'number' || !(maxNorm >= 0)) throw new RangeError(`clipGradNorm: maxNorm must be a number >= 0, got ${maxNorm}`);
  const grads = gradsOf(params, 'clipGradNorm');
  if (grads.length === 0) return 0;
  const handles: NativeTensor[] = grads.map((g) => g.native);
  const total = native.grad_norm(handles, opts.normType ?? 2) as number;
  if (!Number.isFinite(total)) {
    if (opts.errorIfNonfinite) {
      throw new Error(`clipGradNorm: the total norm of order ${opts.normType ?? 2} of the gradients is non-finite (${total})`);
    }
    return total;
  }
  const coef = maxNorm / (total + 1e-6);
  if (coef < 1) {
    for (const h of handles) {
      if (h.isContiguous) { native.scale_(h, coef); continue; }
      const r = native.scalar('mul', h, coef, false) as NativeTensor;
      try { native.copy_(h, r); } finally { r.dispose(); }
    }
  }
  return total;
}
