/**
 * linear.ts — nn.Linear: y = x·Wᵀ + b, W (out, in), initialised like torch (kaiming-uniform a=√5).
 */
import { linear } from '../ops/matmul';
import { DType } from '../tensor/dtype';
import { Tensor } from '../tensor/tensor';
import { Module } from './module';

export interface LinearOptions {
  bias?: boolean;
  dtype?: DType;
  seed?: number;
  /** 'default': torch's kaiming-uniform; 'empty': uninitialised storage (weights loaded next). */
  init?: 'default' | 'empty';
}

export class Linear extends Module {
  readonly inFeatures: number;
  readonly outFeatures: number;
  constructor(inFeatures: number, outFeatures: number, opts: LinearOptions = {}) {
    super();
    if (!Number.isInteger(inFeatures) || inFeatures <= 0 || !Number.isInteger(outFeatures) || outFeatures <= 0) {
      throw new RangeError(`Linear: features must be positive integers, got (${inFeatures}, ${outFeatures})`);
    }
    this.inFeatures = inFeatures; this.outFeatures = outFeatures;
    const withBias = opts.bias !== false;
    if (opts.init === 'empty') {
      this.registerParameter('weight', Tensor.empty([outFeatures, inFeatures], { dtype: opts.dtype }));
      this.registerParameter('bias', withBias ? Tensor.empty([outFeatures], { dtype: opts.dtype }) : null);
      return;
    }
    const bound = 1 / Math.sqrt(inFeatures);  // kaiming_uniform(a=√5) gives U(-1/√in, 1/√in)
    const seed = opts.seed ?? 0;
    this.registerParameter('weight', Tensor.rand([outFeatures, inFeatures], { seed, low: -bound, high: bound, dtype: opts.dtype }));
    this.registerParameter('bias', withBias ? Tensor.rand([outFeatures], { seed: seed + 1, low: -bound, high: bound, dtype: opts.dtype }) : null);
  }
  get weight(): Tensor { return this.getTensor('weight') as Tensor; }
  get bias(): Tensor | null { return this.getTensor('bias'); }
  forward(x: Tensor): Tensor { return linear(x, this.weight, this.bias); }
}
