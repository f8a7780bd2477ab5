/**
 * metrics.ts — text-generation metrics as the standard Python tools define them.
 *
 * exactMatch / tokenF1: SQuAD v1.1's evaluation (normalise: lowercase, drop punctuation and the
 * articles a/an/the, collapse whitespace; F1 over the bag of tokens).
 * rougeL: Google's rouge_score `rougeL` F-measure (tokens: lowercase, non [a-z0-9] -> space; LCS;
 * P = LCS/|pred|, R = LCS/|ref|, F = 2PR/(P+R)), without stemming.
 */

/** SQuAD normalisation. */
export function normalizeAnswer(s: string): string {
  let t = s.toLowerCase();
  t = t.replace(/[!"#$%&'()*+,\-./:;<=>?@[\\\]^_`{|}~]/g, '');
  t = t.replace(/\b(a|an|the)\b/g, ' ');
  return t.split(/\s+/).filter(Boolean).join(' ');
}

/** 1 if the normalised strings are equal, else 0. */
export function exactMatch(prediction: string, reference: string): number {
  return normalizeAnswer(prediction) === normalizeAnswer(reference) ? 1 : 0;
}

/** SQuAD token-level F1 between prediction and reference. */
export function tokenF1(prediction: string, reference: string): number {
  const p = normalizeAnswer(prediction).split(' ').filter(Boolean);
  const r = normalizeAnswer(reference).split(' ').filter(Boolean);
  if (p.length === 0 || r.length === 0) return p.length === r.length ? 1 : 0;
  const counts = new Map<string, number>();
  for (const w of r) counts.set(w, (counts.get(w) ?? 0) + 1);
  let common = 0;
  for (const w of p) {
    const c = counts.get(w) ?? 0;
    if (c > 0) { common++; counts.set(w, c - 1); }
  }
  if (common === 0) return 0;
  const precision = common / p.length, recall = common / r.length;
  return (2 * precision * recall) / (precision + recall);
}

/** rouge_score's default tokenizer (no stemming). */
export function rougeTokens(s: string): string[] {
  return s.toLowerCase().replace(/[^a-z0-9]+/g, ' ').split(' ').filter(Boolean);
}

function lcsLength(a: string[], b: string[]): number {
  if (a.length === 0 || b.length === 0) return 0;
  let prev = new Array<number>(b.length + 1).fill(0), cur = new Array<number>(b.length + 1).fill(0);
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) cur[j] = a[i - 1] === b[j - 1] ? prev[j - 1] + 1 : Math.max(prev[j], cur[j - 1]);
    [prev, cur] = [cur, prev];
  }
  return prev[b.length];
}

/** ROUGE-L F-measure (rouge_score semantics). */
export function rougeL(prediction: string, reference: string): number {
  const p = rougeTokens(prediction), r = rougeTokens(reference);
  const lcs = lcsLength(p, r);
  if (lcs === 0) return 0;
  const precision = lcs / p.length, recall = lcs / r.length;
  return (2 * precision * recall) / (precision + recall);
}

export interface GenerationScores { exactMatch: number; tokenF1: number; rougeL: number; count: number; }

/** Mean of each metric over prediction/reference pairs. */
export function scoreGenerations(predictions: string[], references: string[]): GenerationScores {
  if (predictions.length !== references.length) {
    throw new Error(`scoreGenerations: ${predictions.length} predictions for ${references.length} references`);
  }
  const n = predictions.length;
  let em = 0, f1 = 0, rl = 0;
  for (let i = 0; i < n; i++) {
    em += exactMatch(predictions[i], references[i]);
    f1 += tokenF1(predictions[i], references[i]);
    rl += rougeL(predictions[i], references[i]);
  }
  return { exactMatch: n ? em / n : 0, tokenF1: n ? f1 / n : 0, rougeL: n ? rl / n : 0, count: n };
}
