/**
 * llama.ts — the Llama-family decoder, one implementation with config switches:
 *   llama    q/k/v/o projections (optional `attention_bias`, `mlp_bias`), SwiGLU MLP, RMSNorm, RoPE
 *            (default / linear / dynamic / llama3 / yarn / longrope)
 *   mistral  + sliding-window attention
 *   qwen2    + q/k/v biases; sliding window on the layers `layer_types` says
 *   qwen3    + RMSNorm over head_dim on q and k (q_norm, k_norm) before RoPE
 *   phi3     fused `qkv_proj` (rows: q, k, v) and `gate_up_proj` (rows: gate, up), partial rotary
 *   gemma    (gemma.ts) embeddings × √hidden, (1 + w) RMSNorm, tanh-GELU, explicit head_dim
 *
 * Module tree and parameter names are HF's: model.embed_tokens, model.layers.N.{input_layernorm,
 * self_attn.{q,k,v,o}_proj, post_attention_layernorm, mlp.{gate,up,down}_proj}, model.norm, lm_head.
 * Every projection is an nn.Linear called through the module tree (see layers.ts).
 */
import { Module } from '../nn/module';
import * as ew from '../ops/elementwise';
import { applyRotary, ropeTables } from '../ops/nn';
import { scaledDotProductAttention } from '../ops/attention';
import { cat, contiguous, reshape, split, transpose } from '../ops/shape';
import { DType, numberToBf16, bf16ToNumber } from '../tensor/dtype';
import { Tensor, tidy } from '../tensor/tensor';
import { native } from '../native';
import { CausalLM, KVCache, callModule } from './base';
import type { ModelConfig } from './config';
import { Embedding, gatedAct, ModuleList, newLinear, RMSNorm } from './layers';
import { RotaryEmbedding } from './rope';

/** Per-forward context shared by all layers. */
export interface AttnContext {
  cos: Tensor | null;
  sin: Tensor | null;
  keyMask: Tensor | null;
  cache: KVCache | null;
  /** Segment ids (B,S) for sequence packing, or null. */
  segmentIds?: Tensor | null;
}

export class LlamaAttention extends Module {
  readonly cfg: ModelConfig;
  readonly layerIdx: number;
  constructor(cfg: ModelConfig, layerIdx: number, dtype: DType) {
    super();
    this.cfg = cfg; this.layerIdx = layerIdx;
    const C = cfg.hiddenSize, D = cfg.headDim, Hq = cfg.numHeads, Hkv = cfg.numKvHeads;
    if (cfg.fusedQkv) {
      this.registerModule('qkv_proj', newLinear(C, (Hq + 2 * Hkv) * D, cfg.qkvBias, dtype));
    } else {
      this.registerModule('q_proj', newLinear(C, Hq * D, cfg.qkvBias, dtype));
      this.registerModule('k_proj', newLinear(C, Hkv * D, cfg.qkvBias, dtype));
      this.registerModule('v_proj', newLinear(C, Hkv * D, cfg.qkvBias, dtype));
    }
    this.registerModule('o_proj', newLinear(Hq * D, C, cfg.oBias, dtype));
    if (cfg.qkNorm) {
      this.registerModule('q_norm', new RMSNorm(D, cfg.normEps, dtype));
      this.registerModule('k_norm', new RMSNorm(D, cfg.normEps, dtype));
    }
  }

  forward(x: Tensor, ctx: AttnContext): Tensor {
    const cfg = this.cfg;
    const [B, T] = x.shape;
    const D = cfg.headDim, Hq = cfg.numHeads, Hkv = cfg.numKvHeads;
    let q: Tensor, k: Tensor, v: Tensor;
    if (cfg.fusedQkv) {
      const qkv = callModule(this, 'qkv_proj', x);
      [q, k, v] = split(qkv, [Hq * D, Hkv * D, Hkv * D], -1);
    } else {
      q = callModule(this, 'q_proj', x);
      k = callModule(this, 'k_proj', x);
      v = callModule(this, 'v_proj', x);
    }
    q = reshape(q, [B, T, Hq, D]);
    k = reshape(k, [B, T, Hkv, D]);
    v = reshape(v, [B, T, Hkv, D]);
    if (cfg.qkNorm) {
      q = callModule(this, 'q_norm', q);
      k = callModule(this, 'k_norm', k);
    }
    q = transpose(q, 1, 2);
    k = transpose(k, 1, 2);
    v = transpose(v, 1, 2);   // a view: the attention kernels read strided q/k/v
    if (ctx.cos && ctx.sin) {
      q = applyRotary(q, ctx.cos, ctx.sin);
      k = applyRotary(k, ctx.cos, ctx.sin);
    } else {
      q = contiguous(q); k = contiguous(k);
    }
    if (ctx.cache) {
      const pk = ctx.cache.keys[this.layerIdx], pv = ctx.cache.values[this.layerIdx];
      if (pk && pv) { k = cat([pk, k], 2); v = cat([pv, v], 2); }
      ctx.cache.set(this.layerIdx, k, v);
    }
    const window = cfg.layerWindows[this.layerIdx] ?? 0;
    const o = scaledDotProductAttention(q, k, v, {
      causal: true, keyMask: ctx.keyMask, window, scale: 1 / Math.sqrt(D), segmentIds: ctx.segmentIds ?? null,
    });
    const o2 = reshape(transpose(o, 1, 2), [B, T, Hq * D]);
    return callModule(this, 'o_proj', o2);
  }
}

export class LlamaMLP extends Module {
  readonly cfg: ModelConfig;
  constructor(cfg: ModelConfig, dtype: DType) {
    super();
    this.cfg = cfg;
    const C = cfg.hiddenSize, I = cfg.intermediateSize;
    if (cfg.fusedGateUp) {
      this.registerModule('gate_up_proj', newLinear(C, 2 * I, cfg.mlpBias, dtype));
    } else {
      this.registerModule('gate_proj', newLinear(C, I, cfg.mlpBias, dtype));
      this.registerModule('up_proj', newLinear(C, I, cfg.mlpBias, dtype));
    }
    this.registerModule('down_proj', newLinear(I, C, cfg.mlpBias, dtype));
  }
  forward(x: Tensor): Tensor {
    let gate: Tensor, up: Tensor;
    if (this.cfg.fusedGateUp) {
      const gu = callModule(this, 'gate_up_proj', x);
      [gate, up] = split(gu, [this.cfg.intermediateSize, this.cfg.intermediateSize], -1);
    } else {
      gate = callModule(this, 'gate_proj', x);
      up = callModule(this, 'up_proj', x);
    }
    const h = gatedAct(gate, up, this.cfg.act);  // fused SwiGLU / GeGLU
    return callModule(this, 'down_proj', h);
  }
}

export class LlamaDecoderLayer extends Module {
  constructor(cfg: ModelConfig, layerIdx: number, dtype: DType) {
    super();
    const unit = cfg.norm === 'rms_unit_offset';
    this.registerModule('self_attn', new LlamaAttention(cfg, layerIdx, dtype));
    this.registerModule('mlp', new LlamaMLP(cfg, dtype));
    this.registerModule('input_layernorm', new RMSNorm(cfg.hiddenSize, cfg.normEps, dtype, unit));
    this.registerModule('post_attention_layernorm', new RMSNorm(cfg.hiddenSize, cfg.normEps, dtype, unit));
  }
  forward(x: Tensor, ctx: AttnContext): Tensor {
    const h = callModule(this, 'input_layernorm', x);
    const a = (this.getSubmodule('self_attn') as LlamaAttention).forward(h, ctx);
    const x1 = ew.add(x, a);
    const h2 = callModule(this, 'post_attention_layernorm', x1);
    const m = callModule(this, 'mlp', h2);
    return ew.add(x1, m);
  }
}

/** The decoder stack (HF `model`). */
export class LlamaModel extends Module {
  readonly cfg: ModelConfig;
  constructor(cfg: ModelConfig, dtype: DType) {
    super();
    this.cfg = cfg;
    this.registerModule('embed_tokens', new Embedding(cfg.vocabSize, cfg.hiddenSize, dtype));
    const layers = new ModuleList<LlamaDecoderLayer>();
    for (let i = 0; i < cfg.numLayers; i++) layers.push(new LlamaDecoderLayer(cfg, i, dtype));
    this.registerModule('layers', layers);
    this.registerModule('norm', new RMSNorm(cfg.hiddenSize, cfg.normEps, dtype, cfg.norm === 'rms_unit_offset'));
    this.registerModule('rotary_emb', new RotaryEmbedding(cfg.rope!, cfg.headDim, cfg.maxPositionEmbeddings));
  }

  forward(ids: Tensor, positions: Tensor, keyMask: Tensor | null, cache: KVCache | null, segmentIds: Tensor | null = null,
          inputsEmbeds: Tensor | null = null): Tensor {
    const emb = this.getSubmodule('embed_tokens') as Embedding;
    // inputsEmbeds (HF's inputs_embeds, e.g. prompt tuning's virtual tokens + token embeddings) replace the lookup; Gemma's scale still applies
    let h = inputsEmbeds ?? emb.forward(ids);
    if (this.cfg.embedScale !== null) h = ew.mul(h, roundTo(this.cfg.embedScale, h.dtype));
    const rot = this.getSubmodule('rotary_emb') as RotaryEmbedding;
    if (this.cfg.rope!.type === 'dynamic' || this.cfg.rope!.type === 'longrope') {
      rot.update(maxOf(positions) + 1);
    }
    const [cos, sin] = ropeTables(positions, rot.invFreq, rot.attentionScaling, h.dtype);
    const ctx: AttnContext = { cos, sin, keyMask, cache, segmentIds };
    const layers = this.getSubmodule('layers') as ModuleList<LlamaDecoderLayer>;
    for (let i = 0; i < layers.length; i++) {
      // Free each layer's intermediates as soon as the next layer has its input (autograd keeps what backward needs).
      const prev = h;
      h = tidy(() => layers.at(i).forward(prev, ctx));
      // Drop our handle on the layer input (what backward needs is saved by autograd), so with
      // activation offload its device memory goes as soon as the copy to the host has finished.
      if (prev !== h && prev !== inputsEmbeds) prev.dispose();
    }
    return callModule(this, 'norm', h);
  }
}

/** Llama / Mistral / Qwen2 / Qwen3 / Phi-3 causal LM (HF `*ForCausalLM`). */
export class LlamaForCausalLM extends CausalLM {
  constructor(cfg: ModelConfig, dtype: DType = 'f32') {
    super(cfg);
    if (!cfg.rope) throw new Error(`${cfg.modelType}: a rotary configuration is required`);
    const model = this.registerModule('model', new LlamaModel(cfg, dtype));
    const head = newLinear(cfg.hiddenSize, cfg.vocabSize, false, dtype);
    if (cfg.tieWordEmbeddings) {
      const old = head.weight;
      head.registerParameter('weight', (model.getSubmodule('embed_tokens') as Embedding).weight);
      old.dispose();
    }
    this.registerModule('lm_head', head);
  }
  decode(ids: Tensor, positions: Tensor, keyMask: Tensor | null, cache: KVCache | null, segmentIds: Tensor | null = null,
         inputsEmbeds: Tensor | null = null): Tensor {
    const h = (this.getSubmodule('model') as LlamaModel).forward(ids, positions, keyMask, cache, segmentIds, inputsEmbeds);
    return callModule(this, 'lm_head', h);
  }
}

/** A scalar as the nearest value of `dtype` (torch.tensor(v, dtype=...)). */
export function roundTo(v: number, dtype: string): number {
  if (dtype === 'f32') return Math.fround(v);
  if (dtype === 'bf16') return bf16ToNumber(numberToBf16(v));
  if (dtype === 'f16') {
    const t = native.fromBuffer(new Float32Array([v]), [1], 'f32');
    const h = native.cast(t, 'f16'); const b = native.cast(h, 'f32');
    const r = new Float32Array(native.toBuffer(b) as ArrayBuffer)[0];
    t.dispose(); h.dispose(); b.dispose();
    return r;
  }
  return v;
}

export function maxOf(t: Tensor): number {
  let m = -Infinity;
  for (const v of t.toFloat64Array()) if (v > m) m = v;
  return m;
}
