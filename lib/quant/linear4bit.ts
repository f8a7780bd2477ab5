/**
 * linear4bit.ts — Linear4bit: a linear layer whose weight is a frozen 4-bit QuantizedTensor
 * (bitsandbytes' bnb.nn.Linear4bit). forward(x) = x·Wᵀ + b through the fused 4-bit GEMM, and is
 * differentiable with respect to x (and the bias, if it requires grad) only.
 *
 * QLoRA works by composition: a LoRA layer wraps any base module and calls base.forward(x), so a
 * Linear4bit is simply the base layer of a LoRA adapter. Registered tensors use bnb's names: the
 * parameter `weight` is the packed u8 [(n+1)/2, 1] data (never trainable), `bias` is an ordinary
 * parameter. The quant state (absmax, maps, offset) lives in `quantState`; lib/quant/bnb_format.ts
 * writes it with bnb's `weight.absmax`, `weight.quant_map`, ... names.
 */
import { Module } from '../nn/module';
import { linear4bit } from '../ops/nf4';
import { DType } from '../tensor/dtype';
import { Tensor } from '../tensor/tensor';
import { dequantize, QuantizedTensor } from './nf4';

export class Linear4bit extends Module {
  readonly inFeatures: number;
  readonly outFeatures: number;
  /**
   * The layer replaced a GPT-2 Conv1D (weight stored [in, out]): the quantized weight is its
   * transpose, as transformers does; merging writes it back as [in, out].
   */
  readonly fromConv1D: boolean;
  private readonly _q: QuantizedTensor;

  /** Wrap a quantized (out, in) weight and an optional bias (out) (kept as given, not copied). */
  constructor(weight: QuantizedTensor, bias: Tensor | null = null, opts: { fromConv1D?: boolean } = {}) {
    super();
    if (!(weight instanceof QuantizedTensor)) throw new TypeError('Linear4bit: weight must be a QuantizedTensor');
    if (weight.shape.length !== 2) throw new Error(`Linear4bit: the weight must be 2-d (out, in), got [${weight.shape}]`);
    const [outF, inF] = weight.shape;
    if (bias && (bias.ndim !== 1 || bias.shape[0] !== outF)) throw new Error(`Linear4bit: bias [${bias.shape}] must be [${outF}]`);
    this.inFeatures = inF; this.outFeatures = outF;
    this.fromConv1D = !!opts.fromConv1D;
    this._q = weight;
    this.registerParameter('weight', weight.data, false);
    this.registerParameter('bias', bias, bias ? bias.requiresGrad : false);
  }

  /** The quantized weight (packed data + quant state). */
  get quantState(): QuantizedTensor { return this._q; }
  /** The packed u8 data (bnb's Params4bit storage). */
  get weight(): Tensor { return this.getTensor('weight') as Tensor; }
  get bias(): Tensor | null { return this.getTensor('bias'); }
  get quantType(): 'nf4' | 'fp4' { return this._q.quantType; }

  forward(x: Tensor): Tensor { return linear4bit(x, this._q, this.bias); }

  /** The dequantized (out, in) weight (a new tensor; default dtype: the compute dtype). */
  dequantizeWeight(dtype?: DType): Tensor { return dequantize(this._q, dtype); }

  /** Free the packed weight, the quant state and the bias. */
  override dispose(): void {
    this.bias?.zeroGrad();
    this.bias?.dispose();
    this._q.dispose();
  }

  override toString(): string { return `Linear4bit(in_features=${this.inFeatures}, out_features=${this.outFeatures}, ${this._q.quantType})`; }
}
