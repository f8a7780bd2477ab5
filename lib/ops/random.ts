/**
 * random.ts — seeded dropout (Philox counter-based: reproducible across thread counts).
 */
import { native, NativeTensor } from '../native';
import { needsGrad, record } from '../tensor/autograd';
import { Tensor } from '../tensor/tensor';
import { checkTensor, wrap } from './util';

/** Zero each element with probability p and scale the rest by 1/(1-p); identity when !training or p == 0. */
export function dropout(x: Tensor, p: number, seed: number, training = true): Tensor {
  checkTensor(x, 'dropout', 'x');
  if (typeof p !== 'number' || !(p >= 0 && p < 1)) throw new RangeError(`dropout: p must be in [0, 1), got ${p}`);
  if (!training || p === 0) return x;
  const [y, mask] = native.dropout_forward(x.native, p, seed) as NativeTensor[];
  const out = wrap(y);
  if (!needsGrad(x)) { mask.dispose(); return out; }
  return record('dropout', out, [x], (g) => [wrap(native.dropout_backward(g.native, mask, p))], [mask]);
}

// ---- the dropout seed stream ----
// Every dropout site (LoRA dropout, model dropout) draws its Philox seed from this one counter, so
// a training step is reproducible from a single number: the Trainer sets it per micro-batch and
// gradient checkpointing rewinds it to recompute a layer with the same masks.
let seedCounter = Math.floor(Math.random() * 2 ** 40);

/** The seed for the next dropout mask (advances the stream). */
export function nextDropoutSeed(): number { seedCounter = (seedCounter + 1) % 2 ** 52; return seedCounter; }
/** The stream's current position (read without advancing). */
export function getDropoutSeed(): number { return seedCounter; }
/** Restart the stream at `seed`: the following dropout masks are reproducible. */
export function setDropoutSeed(seed: number): void {
  if (!Number.isInteger(seed) || seed < 0) throw new TypeError(`setDropoutSeed: seed must be a non-negative integer, got ${seed}`);
  seedCounter = seed;
}
