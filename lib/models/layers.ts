/**
 * layers.ts — the small modules the decoders are built from, named like their HF counterparts so
 * parameter names match checkpoints: Embedding (`weight`), RMSNorm (`weight`), LayerNorm
 * (`weight`, `bias`), GPT-2's Conv1D (`weight` stored [in, out], `bias`), and ModuleList
 * (children '0', '1', ...).
 *
 * Projections are plain nn.Linear modules (created by `newLinear`), registered under their HF
 * names and always called through the module tree (`this.q_proj.forward(x)`), so an adapter can
 * replace any of them by a module with the same forward(x).
 */
import { Linear } from '../nn/linear';
import { Module } from '../nn/module';
import * as ew from '../ops/elementwise';
import { matmul } from '../ops/matmul';
import { embedding, layerNorm, rmsNorm } from '../ops/nn';
import { gatedActivation } from '../ops/swiglu';
import { DType } from '../tensor/dtype';
import { Tensor } from '../tensor/tensor';
import type { Activation } from './config';

/**
 * An nn.Linear(in, out) whose parameters are uninitialised memory of `dtype` (the loader fills
 * them from the checkpoint). Avoids generating random init values for billions of weights.
 */
export function newLinear(inFeatures: number, outFeatures: number, bias: boolean, dtype: DType): Linear {
  return new Linear(inFeatures, outFeatures, { bias, dtype, init: 'empty' });
}

/** Token embedding table (V, C). */
export class Embedding extends Module {
  readonly numEmbeddings: number;
  readonly embeddingDim: number;
  constructor(num: number, dim: number, dtype: DType) {
    super();
    this.numEmbeddings = num; this.embeddingDim = dim;
    this.registerParameter('weight', Tensor.empty([num, dim], { dtype }));
  }
  get weight(): Tensor { return this.getTensor('weight') as Tensor; }
  forward(ids: Tensor): Tensor { return embedding(this.weight, ids); }
}

/** RMSNorm over the last dim; `unitOffset` for Gemma's (1 + w). */
export class RMSNorm extends Module {
  readonly eps: number;
  readonly unitOffset: boolean;
  constructor(dim: number, eps: number, dtype: DType, unitOffset = false) {
    super();
    this.eps = eps; this.unitOffset = unitOffset;
    this.registerParameter('weight', Tensor.empty([dim], { dtype }));
  }
  get weight(): Tensor { return this.getTensor('weight') as Tensor; }
  forward(x: Tensor): Tensor { return rmsNorm(x, this.weight, this.eps, { unitOffset: this.unitOffset }); }
}

/** torch.nn.LayerNorm over the last dim with weight and bias. */
export class LayerNorm extends Module {
  readonly eps: number;
  constructor(dim: number, eps: number, dtype: DType) {
    super();
    this.eps = eps;
    this.registerParameter('weight', Tensor.empty([dim], { dtype }));
    this.registerParameter('bias', Tensor.empty([dim], { dtype }));
  }
  get weight(): Tensor { return this.getTensor('weight') as Tensor; }
  get bias(): Tensor { return this.getTensor('bias') as Tensor; }
  forward(x: Tensor): Tensor { return layerNorm(x, this.weight, this.bias, this.eps); }
}

/**
 * GPT-2's Conv1D: y = x·W + b with W stored [in, out] (the transpose of nn.Linear), as in the
 * checkpoints. (PEFT treats it as a linear layer with fan_in_fan_out.)
 */
export class Conv1D extends Module {
  readonly inFeatures: number;
  readonly outFeatures: number;
  constructor(inFeatures: number, outFeatures: number, dtype: DType) {
    super();
    this.inFeatures = inFeatures; this.outFeatures = outFeatures;
    this.registerParameter('weight', Tensor.empty([inFeatures, outFeatures], { dtype }));
    this.registerParameter('bias', Tensor.empty([outFeatures], { dtype }));
  }
  get weight(): Tensor { return this.getTensor('weight') as Tensor; }
  get bias(): Tensor { return this.getTensor('bias') as Tensor; }
  forward(x: Tensor): Tensor {
    const y = matmul(x, this.weight);
    const out = ew.add(y, this.bias);
    y.dispose();
    return out;
  }
}

/** Children named '0', '1', ... (HF nn.ModuleList). */
export class ModuleList<M extends Module> extends Module {
  readonly items: M[] = [];
  constructor(items: M[] = []) {
    super();
    for (const m of items) this.push(m);
  }
  push(m: M): void { this.registerModule(String(this.items.length), m); this.items.push(m); }
  get length(): number { return this.items.length; }
  at(i: number): M { return this.getSubmodule(String(i)) as M; }
}

/**
 * A gated MLP's hidden state act(gate) · up: the fused SwiGLU / GeGLU op (ops/swiglu.ts: one pass
 * forward and backward, no act(gate) tensor kept for backward) for silu / gelu / gelu_tanh.
 */
export function gatedAct(gate: Tensor, up: Tensor, act: Activation): Tensor {
  if (act === 'relu') return ew.mul(ew.relu(gate), up);
  return gatedActivation(gate, up, act);
}

/** The activation function of a config. */
export function activate(x: Tensor, act: Activation): Tensor {
  switch (act) {
    case 'silu': return ew.silu(x);
    case 'gelu': return ew.gelu(x);
    case 'gelu_tanh': return ew.gelu(x, 'tanh');
    case 'relu': return ew.relu(x);
  }
}
