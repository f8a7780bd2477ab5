/**
 * perplexity.ts — perplexity of a causal LM on text: exp(mean token NLL), computed over
 * non-overlapping windows of `maxLength` tokens (every token after the first of a window is
 * scored once), without recording gradients.
 */
import { noGrad } from '../tensor/autograd';
import { tidy, Tensor } from '../tensor/tensor';

export interface PerplexityModel {
  forward(input: { inputIds: number[][]; labels?: number[][] }): { logits: Tensor; loss?: Tensor };
  eval?(): unknown;
  train?(mode?: boolean): unknown;
  training?: boolean;
}
export interface PerplexityTokenizer { encode(text: string, opts?: { addSpecialTokens?: boolean }): number[]; }

export interface PerplexityResult { perplexity: number; nll: number; tokens: number; }

/**
 * Perplexity over `texts` (each encoded separately, then split into windows of maxLength).
 * The model is put in eval mode for the measurement and restored afterwards.
 */
export function perplexity(model: PerplexityModel, tokenizer: PerplexityTokenizer, texts: string[],
                           opts: { maxLength?: number; batchSize?: number } = {}): PerplexityResult {
  const maxLength = opts.maxLength ?? 256;
  const batchSize = opts.batchSize ?? 8;
  if (!Number.isInteger(maxLength) || maxLength < 2) throw new RangeError(`perplexity: maxLength must be an integer >= 2, got ${maxLength}`);
  const windows: number[][] = [];
  for (const t of texts) {
    const ids = tokenizer.encode(t, { addSpecialTokens: false });
    for (let i = 0; i < ids.length; i += maxLength) {
      const w = ids.slice(i, i + maxLength);
      if (w.length >= 2) windows.push(w);
    }
  }
  // Same-length batches avoid padding (and its masking) entirely: sort by length, batch equal ones.
  windows.sort((a, b) => a.length - b.length);
  const wasTraining = model.training;
  model.eval?.();
  let nll = 0, tokens = 0;
  try {
    for (let i = 0; i < windows.length;) {
      let j = i;
      while (j < windows.length && j - i < batchSize && windows[j].length === windows[i].length) j++;
      const batch = windows.slice(i, j);
      const n = batch.length * (batch[0].length - 1);
      const loss = noGrad(() => tidy(() => {
        const out = model.forward({ inputIds: batch, labels: batch });
        if (!out.loss) throw new Error('perplexity: the model returned no loss for labels');
        return out.loss.item();
      }));
      nll += loss * n;
      tokens += n;
      i = j;
    }
  } finally {
    if (wasTraining) model.train?.(true);
  }
  const mean = tokens ? nll / tokens : NaN;
  return { perplexity: Math.exp(mean), nll: mean, tokens };
}
