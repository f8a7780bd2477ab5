/**
 * generate.ts — autoregressive decoding: greedy or sampling (temperature, top-k, top-p,
 * repetition penalty), stop token ids and stop strings, seeded, with a KV cache; as a promise of
 * the finished rows (`generate`) or an async iterator of tokens (`stream`).
 *
 * Semantics follow transformers' `generate`:
 *  - logits processors in HF order: repetition penalty (over every id of the row so far, prompt
 *    included: score < 0 ? score·p : score/p), then temperature, top-k, top-p (tokens whose
 *    cumulative probability, sorted ascending, is ≤ 1 − top_p are removed; at least one kept);
 *  - greedy = argmax (first index on ties); sampling defaults come from generation_config.json
 *    (HF's defaults when absent: temperature 1, top_k 50, top_p 1);
 *  - a row that produced an EOS id or matched a stop string is finished and padded with
 *    pad_token_id (or the first EOS id) while the others continue; generation ends when every
 *    row is finished or maxNewTokens were produced;
 *  - batched prompts of different lengths are left-padded by the caller with an attentionMask;
 *    positions follow the mask (cumsum − 1), so each row decodes as it would alone.
 * Sampling uses peftkit's own seeded generator: reproducible for a seed, but not torch's stream.
 */
import { noGrad } from '../tensor/autograd';
import { Tensor, tidy } from '../tensor/tensor';
import { slice } from '../ops/shape';
import { CausalLM, KVCache, onDevice, positionsFromMask, toRows, TokenInput } from './base';
import type { Device } from '../tensor/dtype';

/** Something that can decode ids to text (a peftkit Tokenizer). */
export interface TextDecoder { decode(ids: number[], opts?: { skipSpecialTokens?: boolean }): string; }

export interface GenerateOptions {
  /** Tokens to add (default generation_config's max_new_tokens, else 20). */
  maxNewTokens?: number;
  /** Sample instead of greedy (default generation_config's do_sample, else false). */
  doSample?: boolean;
  temperature?: number;
  topK?: number;
  topP?: number;
  repetitionPenalty?: number;
  /** Stop token ids (numbers) and stop strings (strings; need `tokenizer`). */
  stop?: (number | string)[];
  /** EOS ids (default generation_config's eos_token_id); [] or null disables EOS stopping. */
  eosTokenId?: number | number[] | null;
  /** Fills finished rows (default pad_token_id, else the first EOS id, else 0). */
  padTokenId?: number;
  /** Seed of the sampler (default random). */
  seed?: number;
  /** 1 = real token, 0 = padding, for batched prompts (left padding). */
  attentionMask?: TokenInput;
  /** Use the KV cache (default true); false recomputes the whole sequence every step. */
  useCache?: boolean;
  /** Needed for stop strings; also makes stream events carry text. */
  tokenizer?: TextDecoder;
}

/** One step of `stream`. */
export interface StreamEvent {
  /** The new token of row 0. */
  token: number;
  /** The new token of every row (pad for finished rows). */
  tokens: number[];
  /** 0-based step. */
  step: number;
  /** Rows finished after this step. */
  finished: boolean[];
  /** Decoded text of row 0's new token (when a tokenizer is given). */
  text?: string;
}

/** A small seeded PRNG (sfc32 seeded through splitmix32). */
export class Rng {
  private a: number; private b: number; private c: number; private d: number;
  constructor(seed: number) {
    let s = (seed >>> 0) ^ Math.floor(seed / 2 ** 32);
    const sm = () => { s = (s + 0x9e3779b9) | 0; let z = s; z = Math.imul(z ^ (z >>> 16), 0x85ebca6b); z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35); return (z ^ (z >>> 16)) >>> 0; };
    this.a = sm(); this.b = sm(); this.c = sm(); this.d = sm();
    for (let i = 0; i < 12; i++) this.next();
  }
  /** Uniform in [0, 1). */
  next(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return (t >>> 0) / 4294967296;
  }
}

interface Resolved {
  maxNew: number; doSample: boolean; temperature: number; topK: number; topP: number; penalty: number;
  eos: Set<number>; stopStrings: string[]; pad: number; rng: Rng; useCache: boolean; tokenizer?: TextDecoder;
}

function resolve(model: CausalLM, o: GenerateOptions): Resolved {
  const gc = model.generationConfig;
  const maxNew = o.maxNewTokens ?? gc.maxNewTokens ?? 20;
  if (!Number.isInteger(maxNew) || maxNew < 0) throw new RangeError(`generate: maxNewTokens must be a non-negative integer, got ${maxNew}`);
  const doSample = o.doSample ?? gc.doSample ?? false;
  const temperature = o.temperature ?? gc.temperature ?? 1;
  if (!(temperature > 0)) throw new RangeError(`generate: temperature must be > 0, got ${temperature}`);
  const topK = o.topK ?? gc.topK ?? 50;
  if (!Number.isInteger(topK) || topK < 0) throw new RangeError(`generate: topK must be a non-negative integer (0 = off), got ${topK}`);
  const topP = o.topP ?? gc.topP ?? 1;
  if (!(topP > 0 && topP <= 1)) throw new RangeError(`generate: topP must be in (0, 1], got ${topP}`);
  const penalty = o.repetitionPenalty ?? gc.repetitionPenalty ?? 1;
  if (!(penalty > 0)) throw new RangeError(`generate: repetitionPenalty must be > 0, got ${penalty}`);
  const eosOpt = o.eosTokenId === undefined ? gc.eosTokenId : o.eosTokenId === null ? [] : Array.isArray(o.eosTokenId) ? o.eosTokenId : [o.eosTokenId];
  const eos = new Set<number>(eosOpt);
  const stopStrings: string[] = [];
  for (const s of o.stop ?? []) {
    if (typeof s === 'number') eos.add(s);
    else if (typeof s === 'string') { if (s.length) stopStrings.push(s); }
    else throw new TypeError('generate: stop entries must be token ids or strings');
  }
  if (stopStrings.length && !o.tokenizer) throw new Error('generate: stop strings need the `tokenizer` option (to decode generated text)');
  const pad = o.padTokenId ?? gc.padTokenId ?? (eosOpt.length ? eosOpt[0] : 0);
  const seed = o.seed ?? Math.floor(Math.random() * 2 ** 32);
  return { maxNew, doSample, temperature, topK, topP, penalty, eos, stopStrings, pad, rng: new Rng(seed), useCache: o.useCache ?? true, tokenizer: o.tokenizer };
}

/** Pick the next token from one row of logits (modified in place). */
export function pickToken(logits: Float32Array, history: number[], r: Pick<Resolved, 'doSample' | 'temperature' | 'topK' | 'topP' | 'penalty' | 'rng'>): number {
  const V = logits.length;
  if (r.penalty !== 1) {
    const seen = new Set(history);
    for (const id of seen) {
      if (id < 0 || id >= V) continue;
      const s = logits[id];
      logits[id] = s < 0 ? s * r.penalty : s / r.penalty;
    }
  }
  if (!r.doSample) {
    let best = 0;
    for (let i = 1; i < V; i++) if (logits[i] > logits[best]) best = i;
    return best;
  }
  const scores = new Float64Array(V);
  for (let i = 0; i < V; i++) scores[i] = Math.fround(logits[i] / r.temperature);
  // top-k: keep scores >= the k-th largest (ties kept, as HF's `< topk[..., -1]` filter).
  if (r.topK > 0 && r.topK < V) {
    const sorted = Float64Array.from(scores).sort();
    const kth = sorted[V - r.topK];
    for (let i = 0; i < V; i++) if (scores[i] < kth) scores[i] = -Infinity;
  }
  if (r.topP < 1) {
    const idx = Array.from({ length: V }, (_, i) => i).sort((a, b) => scores[a] - scores[b] || a - b);
    const m = Math.max(...scores);
    let z = 0;
    for (const i of idx) z += Math.exp(scores[i] - m);
    let cum = 0;
    // sorted ascending; remove while cumulative prob <= 1 - top_p, always keep the last (largest).
    for (let j = 0; j < V - 1; j++) {
      const i = idx[j];
      cum += Math.exp(scores[i] - m) / z;
      if (cum <= 1 - r.topP) scores[i] = -Infinity; else break;
    }
  }
  const m = Math.max(...scores);
  let z = 0;
  const p = new Float64Array(V);
  for (let i = 0; i < V; i++) { p[i] = Math.exp(scores[i] - m); z += p[i]; }
  let u = r.rng.next() * z;
  for (let i = 0; i < V; i++) { u -= p[i]; if (u < 0 && p[i] > 0) return i; }
  for (let i = V - 1; i >= 0; i--) if (p[i] > 0) return i;
  return 0;
}

/** Last-position logits of each row as f32 arrays. */
function lastLogits(logits: Tensor): Float32Array[] {
  const [B, T, V] = logits.shape;
  const last = slice(logits, 1, T - 1, T);
  const flat = last.toFloat32Array();
  last.dispose();
  const out: Float32Array[] = [];
  for (let b = 0; b < B; b++) out.push(flat.slice(b * V, (b + 1) * V));
  return out;
}

function idsTensor(rows: number[][], device: Device = 'cpu'): Tensor {
  return onDevice(Tensor.fromArray(rows.flat(), { dtype: 'i64', shape: [rows.length, rows[0].length] }), device);
}

/** Token-by-token generation (see the module comment). */
export async function* stream(model: CausalLM, inputIds: TokenInput, opts: GenerateOptions = {}): AsyncGenerator<StreamEvent> {
  const r = resolve(model, opts);
  const rows = toRows(inputIds, 'generate: inputIds').map((x) => [...x]);
  const B = rows.length, T0 = rows[0].length;
  if (T0 === 0) throw new Error('generate: the prompt is empty');
  const mask = opts.attentionMask !== undefined ? toRows(opts.attentionMask, 'generate: attentionMask').map((x) => x.map((m) => (m ? 1 : 0))) : rows.map((x) => x.map(() => 1));
  if (mask.length !== B || mask[0].length !== T0) throw new Error(`generate: attentionMask is ${mask.length}×${mask[0].length}, inputIds ${B}×${T0}`);
  const vocab = model.config.vocabSize;
  for (const row of rows) for (const v of row) if (v < 0 || v >= vocab) throw new RangeError(`generate: token id ${v} is outside the vocabulary [0, ${vocab})`);
  const finished = new Array<boolean>(B).fill(false);
  const cache = r.useCache ? new KVCache(model.config.numLayers) : null;
  const wasTraining = model.training;
  const dev = model.device;   // step inputs are created there; the KV cache stays there
  model.eval();
  try {
    for (let step = 0; step < r.maxNew; step++) {
      const hasPad = mask.some((m) => m.some((x) => !x));
      const last = noGrad(() => tidy(() => {
        const S = rows[0].length;
        const allPos = positionsFromMask(mask);
        const fresh = !cache || step === 0;
        const ids = fresh ? idsTensor(rows, dev) : idsTensor(rows.map((x) => [x[S - 1]]), dev);
        const pos = fresh ? idsTensor(allPos, dev) : idsTensor(allPos.map((p) => [p[S - 1]]), dev);
        const km = hasPad ? onDevice(Tensor.fromArray(mask.flat(), { dtype: 'u8', shape: [B, S] }), dev) : null;
        const logits = model.decode(ids, pos, km, cache);
        return lastLogits(logits);
      }));
      const toks: number[] = [];
      for (let b = 0; b < B; b++) {
        if (finished[b]) { toks.push(r.pad); continue; }
        toks.push(pickToken(last[b], rows[b], r));
      }
      for (let b = 0; b < B; b++) { rows[b].push(toks[b]); mask[b].push(1); }
      let text: string | undefined;
      for (let b = 0; b < B; b++) {
        if (finished[b]) continue;
        if (r.eos.has(toks[b])) finished[b] = true;
        else if (r.stopStrings.length) {
          const gen = r.tokenizer!.decode(rows[b].slice(T0));
          if (r.stopStrings.some((s) => gen.includes(s))) finished[b] = true;
        }
      }
      if (r.tokenizer) text = r.tokenizer.decode([toks[0]]);
      const ev: StreamEvent = { token: toks[0], tokens: toks, step, finished: [...finished] };
      if (text !== undefined) ev.text = text;
      yield ev;
      if (finished.every((f) => f)) break;
      await new Promise<void>((res) => setImmediate(res));
    }
  } finally {
    if (cache) cache.dispose();
    if (wasTraining) model.train();
  }
}

/** Generate and return every row: prompt followed by the new tokens. */
export async function generate(model: CausalLM, inputIds: TokenInput, opts: GenerateOptions = {}): Promise<number[][]> {
  const rows = toRows(inputIds, 'generate: inputIds').map((x) => [...x]);
  for await (const ev of stream(model, rows, opts)) {
    for (let b = 0; b < rows.length; b++) rows[b].push(ev.tokens[b]);
  }
  return rows;
}
