/**
 * prefix_tuning/model.ts — prefix tuning (Li & Liang), PEFT 0.21's PrefixEncoder, get_prompt and
 * PeftModelForCausalLM.forward for PREFIX_TUNING:
 *
 *   E = prompt_encoder.embedding.weight            [nvt, num_layers·2·kv_heads·head_dim]  (f32)
 *       (prefix_projection: E = Linear₂(tanh(Linear₁(embedding.weight))))
 *   past = E.to(model dtype).view(B, nvt, L·2, H, D).permute(2, 0, 3, 1, 4).split(2)
 *       → layer l attends keys E[:, 2l] and values E[:, 2l+1] as (B, H, nvt, D) before its own
 *         (no rotary embedding is applied to them: they are cache entries);
 *   attention_mask = cat([ones(B, nvt), attention_mask], 1) (when given);
 *   positions nvt .. nvt+T−1 (transformers' cache_position with a past of nvt; position ids are
 *   ignored as PEFT does); labels and logits cover the real tokens only (B, T, V).
 *
 * The prefix reaches every layer through the model's KV cache (lib/models: a cache that already
 * holds positions is attended by all new tokens, and gradients flow into the cached tensors).
 * As in PEFT, prefix tuning refuses gradient checkpointing.
 */
import type { CausalLM, ForwardInput } from '../../models/base';
import { causalLmLoss, KVCache } from '../../models/base';
import { Embedding, ModuleList } from '../../models/layers';
import { Linear } from '../../nn/linear';
import { Module } from '../../nn/module';
import { native } from '../../native';
import { cast, tanh } from '../../ops/elementwise';
import { contiguous, expand, narrow, permute, reshape, unsqueeze } from '../../ops/shape';
import { noGrad } from '../../tensor/autograd';
import type { DType } from '../../tensor/dtype';
import { Tensor, tidy } from '../../tensor/tensor';
import { JsonObject, readAdapterConfig } from '../config';
import type { LoadAdapterOptions } from '../lora/load';
import { nextInitSeed } from '../lora/layer';
import { PeftModel } from '../peft_model';
import {
  checkNoCheckpointing, extendedMaskFromRows, extendMaskTensor, loadPromptLearningAdapter, parseForwardInput,
  positionRows, preparePromptLearningConfig, PromptLearningModel, rowsTensor,
} from '../prompt_tuning/prompt_learning';
import {
  prefixTuningConfigFromJson, prefixTuningConfigToJson, PrefixTuningConfig, resolvePrefixTuningConfig, ResolvedPrefixTuningConfig,
} from './config';

/** torch.nn.Tanh. */
export class Tanh extends Module {
  forward(x: Tensor): Tensor { return tanh(x); }
}

/**
 * PEFT's PrefixEncoder: `embedding` [nvt, num_layers·2·token_dim], or with the projection
 * `embedding` [nvt, token_dim] and `transform` = Sequential(Linear(token_dim, encoder_hidden_size),
 * Tanh(), Linear(encoder_hidden_size, num_layers·2·token_dim)).
 */
export class PrefixEncoder extends Module {
  readonly projection: boolean;
  constructor(nvt: number, tokenDim: number, numLayers: number, encoderHidden: number, projection: boolean, seed: number) {
    super();
    this.projection = projection;
    const width = projection ? tokenDim : numLayers * 2 * tokenDim;
    const e = new Embedding(nvt, width, 'f32');
    e.weight.kept = true;
    noGrad(() => {
      const r = Tensor.randn([nvt, width], { seed, dtype: 'f32' });  // nn.Embedding's N(0, 1)
      native.copy_(e.weight.native, r.native);
      r.dispose();
    });
    this.registerModule('embedding', e);
    if (projection) {
      const t = new ModuleList<Module>();
      t.push(new Linear(tokenDim, encoderHidden, { seed: seed + 1, dtype: 'f32' }));
      t.push(new Tanh());
      t.push(new Linear(encoderHidden, numLayers * 2 * tokenDim, { seed: seed + 3, dtype: 'f32' }));
      for (const [, p] of t.namedParameters()) p.kept = true;
      this.registerModule('transform', t);
    }
  }
  get embedding(): Embedding { return this.getSubmodule('embedding') as Embedding; }
  /** past_key_values rows [nvt, num_layers·2·token_dim] (PrefixEncoder.forward on all virtual tokens). */
  forward(): Tensor {
    const w = this.embedding.weight;
    if (!this.projection) return w;
    const t = this.getSubmodule('transform') as ModuleList<Module>;
    const h = tanh((t.at(0) as Linear).forward(w));
    return (t.at(2) as Linear).forward(h);
  }
}

export class PrefixTuningModel extends PromptLearningModel<ResolvedPrefixTuningConfig> {
  readonly peftType = 'PREFIX_TUNING';

  protected prepare(cfg: ResolvedPrefixTuningConfig): void {
    preparePromptLearningConfig(cfg, this.model, true);
    if (cfg.encoderHiddenSize === null) cfg.encoderHiddenSize = cfg.tokenDim;
    const mc = this.model.config;
    const H = cfg.numAttentionHeads!, D = cfg.tokenDim! / H;
    if (cfg.numLayers !== mc.numLayers || H !== mc.numKvHeads || D !== mc.headDim) {
      throw new Error(`prefix tuning: the config describes ${cfg.numLayers} layers × ${H} KV heads × head_dim ${D} ` +
        `(num_layers, num_attention_heads, token_dim/num_attention_heads), but the model has ${mc.numLayers} layers × ` +
        `${mc.numKvHeads} KV heads × head_dim ${mc.headDim}`);
    }
  }

  protected createEncoder(cfg: ResolvedPrefixTuningConfig): Module {
    let projection = cfg.prefixProjection && !cfg.inferenceMode;
    if (projection && cfg.loading) {
      // PEFT saves the projection's OUTPUT; a trainable reload continues on those values directly.
      console.warn('prefix tuning: the saved adapter holds the projected prefix; it is loaded as a trainable prefix without the projection MLP.');
      projection = false;
    }
    return new PrefixEncoder(cfg.numVirtualTokens, cfg.tokenDim!, cfg.numLayers!, cfg.encoderHiddenSize ?? cfg.tokenDim!, projection,
      cfg.seed ?? nextInitSeed());
  }

  protected configToJson(cfg: ResolvedPrefixTuningConfig): JsonObject { return prefixTuningConfigToJson(cfg); }

  private prefixEncoder(name = this.activeAdapter): PrefixEncoder { return this.encoder(name) as PrefixEncoder; }

  protected embeddingToSave(name: string): Tensor {
    const e = this.prefixEncoder(name);
    return e.projection ? noGrad(() => e.forward()) : e.embedding.weight;
  }
  protected embeddingToLoad(name: string): Tensor {
    const e = this.prefixEncoder(name);
    if (e.projection) throw new Error('prefix tuning: cannot load saved prefixes into a projection encoder');
    return e.embedding.weight;
  }

  /** Put the active adapter's past keys/values ((B, H, nvt, D) per layer, model dtype) into `cache`. */
  fillCache(cache: KVCache, B: number): void {
    const cfg = this.activeConfig;
    const L = cfg.numLayers!, H = cfg.numAttentionHeads!, D = cfg.tokenDim! / H, nvt = cfg.numVirtualTokens;
    const E0 = this.prefixEncoder().forward();
    const mdt = this.model.dtype as DType;
    const E = E0.dtype === mdt ? E0 : cast(E0, mdt);
    const part = (j: number): Tensor => {
      const cols = narrow(E, 1, j * H * D, H * D);              // [nvt, H·D]
      const heads = permute(reshape(cols, [nvt, H, D]), [1, 0, 2]);  // [H, nvt, D]
      return contiguous(expand(unsqueeze(heads, 0), [B, H, nvt, D]));
    };
    for (let l = 0; l < L; l++) cache.set(l, part(2 * l), part(2 * l + 1));
  }

  protected adaptedForward(input: ForwardInput): { logits: Tensor; loss?: Tensor } {
    checkNoCheckpointing(this.model, 'Prefix tuning');
    const { ids, mask, labels } = parseForwardInput(input, this.model, 'prefix tuning');
    const nvt = this.activeConfig.numVirtualTokens;
    const B = ids.length, T = ids[0].length;
    return tidy(() => {
      const dev = this.model.device;
      const idsT = rowsTensor(ids, dev);
      const cache = new KVCache(this.model.config.numLayers);
      try {
        this.fillCache(cache, B);
        const logits = this.model.decode(idsT, positionRows(B, nvt, T, dev), extendedMaskFromRows(mask, nvt, dev), cache);
        if (!labels) return { logits };
        return { logits, loss: causalLmLoss(logits, labels) };
      } finally {
        cache.dispose();  // the attention kept what backward needs
      }
    });
  }

  protected generationDecode(ids: Tensor, km: Tensor | null, cache: KVCache | null): Tensor {
    const nvt = this.activeConfig.numVirtualTokens;
    const [B, T] = ids.shape;
    let own: KVCache | null = null;
    if (!cache) { own = new KVCache(this.model.config.numLayers); cache = own; }
    try {
      if (cache.length === 0) this.fillCache(cache, B);
      return this.model.decode(ids, positionRows(B, cache.length, T, ids.device), extendMaskTensor(km, nvt), cache);
    } finally {
      if (own) own.dispose();
    }
  }
}

/** Options of wrapWithPrefixTuning: a PrefixTuningConfig. */
export type WrapWithPrefixTuningOptions = PrefixTuningConfig;

/**
 * Add a prefix-tuning adapter to `model` (PEFT's get_peft_model with a PrefixTuningConfig):
 * trainable keys/values of `numVirtualTokens` virtual positions at every layer; the model is frozen.
 */
export function wrapWithPrefixTuning(model: CausalLM, config: PrefixTuningConfig = {}): PeftModel {
  if (model instanceof PeftModel) throw new TypeError('wrapWithPrefixTuning: the model already has adapters');
  checkNoCheckpointing(model, 'Prefix tuning');
  const cfg = resolvePrefixTuningConfig(config);
  if (cfg.baseModelNameOrPath === null) {
    const src = (model as unknown as { nameOrPath?: unknown }).nameOrPath ?? (model.config as unknown as { nameOrPath?: unknown })?.nameOrPath;
    if (typeof src === 'string') cfg.baseModelNameOrPath = src;
  }
  return new PeftModel(new PrefixTuningModel(model, cfg));
}

/** Add another prefix-tuning adapter (not active until setAdapter()). */
export function addPrefixTuningAdapter(peft: PeftModel, config: PrefixTuningConfig & { adapterName: string }): void {
  const t = peft.tuner;
  if (!(t instanceof PrefixTuningModel)) throw new TypeError('addPrefixTuningAdapter: the model does not hold prefix-tuning adapters');
  t.addAdapter(resolvePrefixTuningConfig(config));
}

/** Read a prefix-tuning adapter folder's config. */
export function readPrefixTuningConfig(dir: string): ResolvedPrefixTuningConfig {
  return prefixTuningConfigFromJson(readAdapterConfig(dir));
}

/** Load a PEFT prefix-tuning adapter folder onto `model` (frozen unless isTrainable). */
export async function loadPrefixTuningAdapter(model: CausalLM | PeftModel, dir: string, opts: LoadAdapterOptions = {}): Promise<PeftModel> {
  const cfg = readPrefixTuningConfig(dir);
  return loadPromptLearningAdapter(model, dir, opts, 'PREFIX_TUNING', cfg, (m, c) => new PrefixTuningModel(m, c));
}
