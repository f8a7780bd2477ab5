/**
 * gemma.ts — Gemma (v1) causal LM. The decoder is the Llama one (llama.ts) with Gemma's switches,
 * all read from config.json by config.ts:
 *   - token embeddings multiplied by √hidden_size, rounded to the activation dtype first
 *     (HF: `hidden * torch.tensor(hidden_size**0.5, dtype=hidden.dtype)`);
 *   - RMSNorm computes (x · rsqrt(mean(x²)+eps)) · (1 + w) in f32, then casts (`unitOffset`);
 *   - MLP activation `hidden_activation` (tanh-GELU, `gelu_pytorch_tanh`);
 *   - explicit `head_dim` (256 by default, not hidden/heads); lm_head tied to embed_tokens.
 */
import { DType } from '../tensor/dtype';
import type { ModelConfig } from './config';
import { LlamaForCausalLM } from './llama';

export class GemmaForCausalLM extends LlamaForCausalLM {
  constructor(cfg: ModelConfig, dtype: DType = 'f32') {
    if (cfg.modelType !== 'gemma') throw new Error(`GemmaForCausalLM: config model_type is '${cfg.modelType}'`);
    super(cfg, dtype);
  }
}
