/**
 * gpt2.ts — GPT-2 (HF GPT2LMHeadModel): learned absolute positions (wpe), pre-LayerNorm blocks,
 * fused q/k/v in `c_attn`, Conv1D projections with weights stored [in, out], gelu_new MLP,
 * lm_head tied to wte.
 *
 * Names: transformer.{wte, wpe, h.N.{ln_1, attn.{c_attn, c_proj}, ln_2, mlp.{c_fc, c_proj}}, ln_f}, lm_head.
 * Dropout (embd_pdrop, resid_pdrop, attn_pdrop) applies in training mode. attn_pdrop drops
 * attention probabilities, which the fused kernel does not do, so training with attn_pdrop > 0
 * takes the composed attention (ops.attentionWithDropout: the (B,H,T,S) scores are materialised).
 * Packed sequences (segmentIds): positionIds index the learned wpe table directly, so they must
 * restart at 0 per example (CausalLM.forward derives them from segmentIds when not given).
 */
import { Module } from '../nn/module';
import * as ew from '../ops/elementwise';
import { attentionWithDropout, scaledDotProductAttention } from '../ops/attention';
import { dropout, nextDropoutSeed } from '../ops/random';
import { cat, contiguous, reshape, split, transpose } from '../ops/shape';
import { DType } from '../tensor/dtype';
import { Tensor, tidy } from '../tensor/tensor';
import { CausalLM, KVCache, callModule } from './base';
import type { ModelConfig } from './config';
import { activate, Conv1D, Embedding, LayerNorm, ModuleList, newLinear } from './layers';

function drop(x: Tensor, p: number, training: boolean): Tensor {
  if (!training || !(p > 0)) return x;
  return dropout(x, p, nextDropoutSeed(), true);
}

export class GPT2Attention extends Module {
  readonly cfg: ModelConfig;
  readonly layerIdx: number;
  constructor(cfg: ModelConfig, layerIdx: number, dtype: DType) {
    super();
    this.cfg = cfg; this.layerIdx = layerIdx;
    this.registerModule('c_attn', new Conv1D(cfg.hiddenSize, 3 * cfg.hiddenSize, dtype));
    this.registerModule('c_proj', new Conv1D(cfg.hiddenSize, cfg.hiddenSize, dtype));
  }
  forward(x: Tensor, keyMask: Tensor | null, cache: KVCache | null, segmentIds: Tensor | null = null): Tensor {
    const cfg = this.cfg;
    const [B, T] = x.shape;
    const C = cfg.hiddenSize, H = cfg.numHeads, D = cfg.headDim;
    const qkv = callModule(this, 'c_attn', x);
    const [q0, k0, v0] = split(qkv, [C, C, C], -1);
    const q = contiguous(transpose(reshape(q0, [B, T, H, D]), 1, 2));
    let k = contiguous(transpose(reshape(k0, [B, T, H, D]), 1, 2));
    let v = contiguous(transpose(reshape(v0, [B, T, H, D]), 1, 2));
    if (cache) {
      const pk = cache.keys[this.layerIdx], pv = cache.values[this.layerIdx];
      if (pk && pv) { k = cat([pk, k], 2); v = cat([pv, v], 2); }
      cache.set(this.layerIdx, k, v);
    }
    let scale = cfg.scaleAttnWeights ? 1 / Math.sqrt(D) : 1;
    if (cfg.attnScaleByInverseLayerIdx) scale /= this.layerIdx + 1;
    // attn_pdrop applies to the probabilities in training mode: the composed path (the fused
    // kernel has no probability dropout); otherwise the fused kernel.
    const pAttn = num(cfg.raw.attn_pdrop, 0.1);
    const o = this.training && pAttn > 0
      ? attentionWithDropout(q, k, v, pAttn, nextDropoutSeed(), { keyMask, scale, segmentIds })
      : scaledDotProductAttention(q, k, v, { causal: true, keyMask, scale, segmentIds });
    const o2 = reshape(transpose(o, 1, 2), [B, T, C]);
    return drop(callModule(this, 'c_proj', o2), num(cfg.raw.resid_pdrop, 0.1), this.training);
  }
}

export class GPT2MLP extends Module {
  readonly cfg: ModelConfig;
  constructor(cfg: ModelConfig, dtype: DType) {
    super();
    this.cfg = cfg;
    this.registerModule('c_fc', new Conv1D(cfg.hiddenSize, cfg.intermediateSize, dtype));
    this.registerModule('c_proj', new Conv1D(cfg.intermediateSize, cfg.hiddenSize, dtype));
  }
  forward(x: Tensor): Tensor {
    const h = activate(callModule(this, 'c_fc', x), this.cfg.act);
    return drop(callModule(this, 'c_proj', h), num(this.cfg.raw.resid_pdrop, 0.1), this.training);
  }
}

export class GPT2Block extends Module {
  constructor(cfg: ModelConfig, layerIdx: number, dtype: DType) {
    super();
    this.registerModule('ln_1', new LayerNorm(cfg.hiddenSize, cfg.normEps, dtype));
    this.registerModule('attn', new GPT2Attention(cfg, layerIdx, dtype));
    this.registerModule('ln_2', new LayerNorm(cfg.hiddenSize, cfg.normEps, dtype));
    this.registerModule('mlp', new GPT2MLP(cfg, dtype));
  }
  forward(x: Tensor, keyMask: Tensor | null, cache: KVCache | null, segmentIds: Tensor | null = null): Tensor {
    const a = (this.getSubmodule('attn') as GPT2Attention).forward(callModule(this, 'ln_1', x), keyMask, cache, segmentIds);
    const x1 = ew.add(a, x);
    const m = callModule(this, 'mlp', callModule(this, 'ln_2', x1));
    return ew.add(x1, m);
  }
}

export class GPT2Model extends Module {
  readonly cfg: ModelConfig;
  constructor(cfg: ModelConfig, dtype: DType) {
    super();
    this.cfg = cfg;
    this.registerModule('wte', new Embedding(cfg.vocabSize, cfg.hiddenSize, dtype));
    this.registerModule('wpe', new Embedding(cfg.maxPositionEmbeddings, cfg.hiddenSize, dtype));
    const h = new ModuleList<GPT2Block>();
    for (let i = 0; i < cfg.numLayers; i++) h.push(new GPT2Block(cfg, i, dtype));
    this.registerModule('h', h);
    this.registerModule('ln_f', new LayerNorm(cfg.hiddenSize, cfg.normEps, dtype));
  }
  forward(ids: Tensor, positions: Tensor, keyMask: Tensor | null, cache: KVCache | null, segmentIds: Tensor | null = null,
          inputsEmbeds: Tensor | null = null): Tensor {
    const maxPos = this.cfg.maxPositionEmbeddings;
    for (const p of positions.toFloat64Array()) {
      if (p < 0 || p >= maxPos) throw new RangeError(`gpt2: position ${p} is outside the learned positions [0, ${maxPos}) (n_positions)`);
    }
    const te = inputsEmbeds ?? callModule(this, 'wte', ids);
    const pe = callModule(this, 'wpe', positions);
    let h = drop(ew.add(te, pe), num(this.cfg.raw.embd_pdrop, 0.1), this.training);
    const blocks = this.getSubmodule('h') as ModuleList<GPT2Block>;
    for (let i = 0; i < blocks.length; i++) {
      const prev = h;
      h = tidy(() => blocks.at(i).forward(prev, keyMask, cache, segmentIds));
      if (prev !== h) prev.dispose();   // as in LlamaModel.forward (autograd keeps what backward needs)
    }
    return callModule(this, 'ln_f', h);
  }
}

export class GPT2LMHeadModel extends CausalLM {
  constructor(cfg: ModelConfig, dtype: DType = 'f32') {
    super(cfg);
    if (cfg.modelType !== 'gpt2') throw new Error(`GPT2LMHeadModel: config model_type is '${cfg.modelType}'`);
    const t = this.registerModule('transformer', new GPT2Model(cfg, dtype));
    const head = newLinear(cfg.hiddenSize, cfg.vocabSize, false, dtype);
    if (cfg.tieWordEmbeddings) {
      const old = head.weight;
      head.registerParameter('weight', (t.getSubmodule('wte') as Embedding).weight);
      old.dispose();
    }
    this.registerModule('lm_head', head);
  }
  decode(ids: Tensor, positions: Tensor, keyMask: Tensor | null, cache: KVCache | null, segmentIds: Tensor | null = null,
         inputsEmbeds: Tensor | null = null): Tensor {
    const h = (this.getSubmodule('transformer') as GPT2Model).forward(ids, positions, keyMask, cache, segmentIds, inputsEmbeds);
    return callModule(this, 'lm_head', h);
  }
}

function num(v: unknown, dflt: number): number { return typeof v === 'number' ? v : dflt; }
