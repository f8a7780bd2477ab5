/**
 * prompt_tuning/model.ts — prompt tuning (Lester et al.), PEFT 0.21's PromptEmbedding and
 * PeftModelForCausalLM.forward for PROMPT_TUNING:
 *
 *   inputs_embeds = cat([prompt_encoder.embedding.weight (→ model dtype), embed_tokens(input_ids)], 1)
 *   attention_mask = cat([ones(B, nvt), attention_mask], 1)          (when a mask is given)
 *   labels = cat([full(B, nvt, -100), labels], 1)                     (the loss skips the virtual tokens)
 *   positions 0 .. nvt+T−1 (position ids are ignored, as PEFT does)
 *
 * so the logits are (B, nvt+T, V) with the virtual positions first. The embedding is f32
 * ([num_virtual_tokens, token_dim], named prompt_encoder.<adapter>.embedding.weight) and is saved
 * as 'prompt_embeddings'. The model's own embedding scale (Gemma's √hidden) applies to the virtual
 * tokens too, as in transformers (it scales inputs_embeds).
 */
import * as fs from 'fs';
import * as path from 'path';
import type { CausalLM, ForwardInput, KVCache } from '../../models/base';
import { causalLmLoss } from '../../models/base';
import { Embedding } from '../../models/layers';
import { Rng } from '../../models/generate';
import { Module } from '../../nn/module';
import { native } from '../../native';
import { cast } from '../../ops/elementwise';
import { cat, expand, unsqueeze } from '../../ops/shape';
import { noGrad } from '../../tensor/autograd';
import { Tensor, tidy } from '../../tensor/tensor';
import { Tokenizer } from '../../tokenizer/tokenizer';
import { JsonObject, readAdapterConfig } from '../config';
import type { LoadAdapterOptions } from '../lora/load';
import { nextInitSeed } from '../lora/layer';
import { PeftModel } from '../peft_model';
import {
  promptTuningConfigFromJson, promptTuningConfigToJson, PromptTuningConfig, resolvePromptTuningConfig,
  ResolvedPromptTuningConfig, TextEncoder,
} from './config';
import {
  extendedMaskFromRows, extendMaskTensor, loadPromptLearningAdapter, parseForwardInput, positionRows,
  preparePromptLearningConfig, PromptLearningModel, rowsTensor, wordEmbeddings,
} from './prompt_learning';

/** PEFT's PromptEmbedding: `embedding` = nn.Embedding(num_virtual_tokens · num_transformer_submodules, token_dim). */
export class PromptEmbedding extends Module {
  constructor(total: number, tokenDim: number) {
    super();
    const e = new Embedding(total, tokenDim, 'f32');
    e.weight.kept = true;
    this.registerModule('embedding', e);
  }
  get embedding(): Embedding { return this.getSubmodule('embedding') as Embedding; }
  get weight(): Tensor { return this.embedding.weight; }
  forward(): never { throw new Error('PromptEmbedding: use the PeftModel'); }
}

/** Load a tokenizer folder synchronously (tokenizer.json + tokenizer_config.json). */
function tokenizerFrom(dir: string): TextEncoder {
  const tj = path.join(dir, 'tokenizer.json');
  if (!fs.existsSync(tj)) throw new Error(`prompt tuning: no tokenizer.json in ${dir} (tokenizerNameOrPath must be a local tokenizer folder)`);
  const cj = path.join(dir, 'tokenizer_config.json');
  const config = fs.existsSync(cj) ? JSON.parse(fs.readFileSync(cj, 'utf8')) : {};
  return new Tokenizer(JSON.parse(fs.readFileSync(tj, 'utf8')), config);
}

export class PromptTuningModel extends PromptLearningModel<ResolvedPromptTuningConfig> {
  readonly peftType = 'PROMPT_TUNING';

  protected prepare(cfg: ResolvedPromptTuningConfig): void {
    preparePromptLearningConfig(cfg, this.model, false);
    if (cfg.tokenDim !== this.model.config.hiddenSize) {
      throw new Error(`prompt tuning: token_dim ${cfg.tokenDim} differs from the model's hidden size ${this.model.config.hiddenSize}`);
    }
  }

  protected createEncoder(cfg: ResolvedPromptTuningConfig): Module {
    const total = cfg.numVirtualTokens * (cfg.numTransformerSubmodules ?? 1);
    const D = cfg.tokenDim!;
    const enc = new PromptEmbedding(total, D);
    const w = enc.weight;
    const seed = cfg.seed ?? nextInitSeed();
    noGrad(() => {
      let init: Tensor;
      if (cfg.inferenceMode || cfg.loading || cfg.promptTuningInit === 'RANDOM') {
        init = Tensor.randn([total, D], { seed, dtype: 'f32' });  // torch.nn.Embedding's N(0, 1)
      } else {
        let ids: number[];
        if (cfg.promptTuningInit === 'SAMPLE_VOCAB') {
          const rng = new Rng(seed), V = this.model.config.vocabSize;
          ids = Array.from({ length: total }, () => Math.floor(rng.next() * V));
        } else {
          const tok = cfg.tokenizer ?? tokenizerFrom(cfg.tokenizerNameOrPath!);
          ids = tok.encode(cfg.promptTuningInitText!, { addSpecialTokens: true });  // PEFT: tokenizer(init_text)["input_ids"]
          if (ids.length === 0) throw new Error('prompt tuning: promptTuningInitText gives no tokens');
          if (ids.length < total) ids = new Array<number[]>(Math.ceil(total / ids.length)).fill(ids).flat();
          ids = ids.slice(0, total);
        }
        const idsT = Tensor.fromArray(ids, { dtype: 'i64', shape: [total] });
        const rows = wordEmbeddings(this.model).forward(idsT);
        init = rows.dtype === 'f32' ? rows : cast(rows, 'f32');
        idsT.dispose();
        if (init !== rows) rows.dispose();
      }
      native.copy_(w.native, init.native);
      init.dispose();
    });
    return enc;
  }

  protected configToJson(cfg: ResolvedPromptTuningConfig): JsonObject { return promptTuningConfigToJson(cfg); }

  private prompt(name = this.activeAdapter): PromptEmbedding { return this.encoder(name) as PromptEmbedding; }
  protected embeddingToSave(name: string): Tensor { return this.prompt(name).weight; }
  protected embeddingToLoad(name: string): Tensor { return this.prompt(name).weight; }

  /** cat([virtual token embeddings, token embeddings], 1) (B, nvt+T, C) in the model's dtype. */
  inputsEmbeds(ids: Tensor): Tensor {
    const we = wordEmbeddings(this.model).forward(ids);
    const w = this.prompt().weight;
    const p = w.dtype === we.dtype ? w : cast(w, we.dtype);
    const [B] = ids.shape;
    const pe = expand(unsqueeze(p, 0), [B, w.shape[0], w.shape[1]]);
    return cat([pe, we], 1);
  }

  protected adaptedForward(input: ForwardInput): { logits: Tensor; loss?: Tensor } {
    const { ids, mask, labels } = parseForwardInput(input, this.model, 'prompt tuning');
    const nvt = this.prompt().weight.shape[0];
    const B = ids.length, T = ids[0].length;
    return tidy(() => {
      const dev = this.model.device;
      const idsT = rowsTensor(ids, dev);
      const embeds = this.inputsEmbeds(idsT);
      const logits = this.model.decode(idsT, positionRows(B, 0, nvt + T, dev), extendedMaskFromRows(mask, nvt, dev), null, null, embeds);
      if (!labels) return { logits };
      const ext = labels.map((r) => [...new Array<number>(nvt).fill(-100), ...r]);
      return { logits, loss: causalLmLoss(logits, ext) };
    });
  }

  protected generationDecode(ids: Tensor, km: Tensor | null, cache: KVCache | null): Tensor {
    const nvt = this.prompt().weight.shape[0];
    const [B, T] = ids.shape;
    const mask = extendMaskTensor(km, nvt);
    if (!cache || cache.length === 0) {
      // prefill (or no cache): the virtual tokens come first
      return this.model.decode(ids, positionRows(B, 0, nvt + T, ids.device), mask, cache, null, this.inputsEmbeds(ids));
    }
    return this.model.decode(ids, positionRows(B, cache.length, T, ids.device), mask, cache);
  }
}

/** Options of wrapWithPromptTuning: a PromptTuningConfig. */
export type WrapWithPromptTuningOptions = PromptTuningConfig;

/**
 * Add a prompt-tuning adapter to `model` (PEFT's get_peft_model with a PromptTuningConfig):
 * `numVirtualTokens` trainable embeddings are prepended to every input; the model is frozen.
 */
export function wrapWithPromptTuning(model: CausalLM, config: PromptTuningConfig = {}): PeftModel {
  if (model instanceof PeftModel) throw new TypeError('wrapWithPromptTuning: the model already has adapters');
  const cfg = resolvePromptTuningConfig(config);
  if (cfg.baseModelNameOrPath === null) {
    const src = (model as unknown as { nameOrPath?: unknown }).nameOrPath ?? (model.config as unknown as { nameOrPath?: unknown })?.nameOrPath;
    if (typeof src === 'string') cfg.baseModelNameOrPath = src;
  }
  return new PeftModel(new PromptTuningModel(model, cfg));
}

/** Add another prompt-tuning adapter (not active until setAdapter()). */
export function addPromptTuningAdapter(peft: PeftModel, config: PromptTuningConfig & { adapterName: string }): void {
  const t = peft.tuner;
  if (!(t instanceof PromptTuningModel)) throw new TypeError('addPromptTuningAdapter: the model does not hold prompt-tuning adapters');
  t.addAdapter(resolvePromptTuningConfig(config));
}

/** Read a prompt-tuning adapter folder's config. */
export function readPromptTuningConfig(dir: string): ResolvedPromptTuningConfig {
  return promptTuningConfigFromJson(readAdapterConfig(dir));
}

/** Load a PEFT prompt-tuning adapter folder onto `model` (frozen unless isTrainable). */
export async function loadPromptTuningAdapter(model: CausalLM | PeftModel, dir: string, opts: LoadAdapterOptions = {}): Promise<PeftModel> {
  const cfg = readPromptTuningConfig(dir);
  return loadPromptLearningAdapter(model, dir, opts, 'PROMPT_TUNING', cfg, (m, c) => new PromptTuningModel(m, c));
}
