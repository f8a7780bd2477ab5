/**
 * Sequence packing through the models: a row holding several short examples, with positionIds
 * restarting per example and segmentIds telling them apart, must behave exactly like the
 * examples run one by one — same logits at every position, and a loss (Σ token losses / number
 * of label tokens) whose gradients equal the per-example losses summed with the same normaliser.
 * Main case: the llama fixture (test/fixtures/hf/models/llama); the other fixture architectures
 * (GQA Mistral/Qwen2, Gemma, GPT-2 with learned positions) get the logits check. Also goes
 * through the real data pipeline (packExamples → padBatch → batchToTensors, with padding).
 */
import * as path from 'path';
import { batchToTensors, packExamples, padBatch } from '../lib/data/collate';
import { IGNORE_INDEX } from '../lib/data/tokenize';
import { CausalLM, loadModel } from '../lib/models';
import { positionsFromSegments } from '../lib/models/base';
import { mul } from '../lib/ops/elementwise';
import { Tensor } from '../lib/tensor/tensor';
import { lcg } from './helpers/gradcheck';

const FIX = path.join(__dirname, 'fixtures', 'hf', 'models');

/** Deterministic token ids in [3, vocab). */
function tokens(n: number, seed: number, vocab = 512): number[] {
  const r = lcg(seed);
  return Array.from({ length: n }, () => 3 + Math.floor(((r() + 1) / 2) * (vocab - 3)));
}

const LENS = [7, 12, 5];
const SEQS = LENS.map((L, i) => tokens(L, 100 + i));

/** The packed row: ids, restarted positions, segment ids 1..3, labels with -100 at each example start. */
function packedRow() {
  const ids: number[] = [], pos: number[] = [], seg: number[] = [], labels: number[] = [];
  SEQS.forEach((s, k) => s.forEach((t, i) => { ids.push(t); pos.push(i); seg.push(k + 1); labels.push(i === 0 ? IGNORE_INDEX : t); }));
  return { ids, pos, seg, labels };
}

function maxAbs(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let e = 0;
  for (let i = 0; i < a.length; i++) e = Math.max(e, Math.abs(a[i] - b[i]));
  return e;
}

/** Logits of row `b` positions [t0, t0+L) of a (B,T,V) tensor, flat. */
function rowLogits(logits: Tensor, b: number, t0: number, L: number): Float32Array {
  const [, T, V] = logits.shape;
  const all = logits.toFloat32Array();
  return all.slice((b * T + t0) * V, (b * T + t0 + L) * V);
}

function grads(model: CausalLM): Map<string, Float32Array> {
  const m = new Map<string, Float32Array>();
  for (const [n, p] of model.namedParameters()) m.set(n, p.grad ? p.grad.toFloat32Array() : new Float32Array(p.numel));
  return m;
}

describe('sequence packing: llama fixture', () => {
  let model: CausalLM;
  beforeAll(async () => { model = await loadModel(path.join(FIX, 'llama')); });
  afterAll(() => model.dispose());

  test('packed logits equal each sequence run alone, at every position', () => {
    const { ids, pos, seg } = packedRow();
    const packed = model.forward({ inputIds: [ids], positionIds: [pos], segmentIds: [seg] });
    expect(packed.logits.shape).toEqual([1, ids.length, 512]);
    let o = 0, worst = 0;
    for (const s of SEQS) {
      const alone = model.forward({ inputIds: [s] });
      worst = Math.max(worst, maxAbs(rowLogits(packed.logits, 0, o, s.length), alone.logits.toFloat32Array()));
      alone.logits.dispose();
      o += s.length;
    }
    expect(worst).toBeLessThanOrEqual(1e-5);

    // positionIds derived from segmentIds when omitted; i32/i64 tensors work like arrays.
    const derived = model.forward({ inputIds: [ids], segmentIds: Tensor.fromArray(seg, { shape: [1, ids.length], dtype: 'i32' }) });
    expect(maxAbs(derived.logits.toFloat32Array(), packed.logits.toFloat32Array())).toBe(0);
    derived.logits.dispose();

    // Sanity: without segmentIds the later examples do see the earlier ones.
    const leaky = model.forward({ inputIds: [ids], positionIds: [pos] });
    expect(maxAbs(rowLogits(leaky.logits, 0, LENS[0], LENS[1]), rowLogits(packed.logits, 0, LENS[0], LENS[1]))).toBeGreaterThan(1e-3);
    leaky.logits.dispose();
    packed.logits.dispose();
  });

  test('packed loss and gradients equal the separately run sequences, normalised the same way', () => {
    const { ids, pos, seg, labels } = packedRow();
    const N = LENS.reduce((a, L) => a + (L - 1), 0);   // label tokens after the shift
    model.zeroGrad();
    const packed = model.forward({ inputIds: [ids], positionIds: [pos], segmentIds: [seg], labels: [labels] });
    const packedLoss = packed.loss!.item();
    packed.loss!.backward();
    const gPacked = grads(model);
    packed.logits.dispose(); packed.loss!.dispose();

    model.zeroGrad();
    let sum = 0;
    for (const s of SEQS) {
      const out = model.forward({ inputIds: [s], labels: [s] });   // mean over its L-1 label tokens
      const w = (s.length - 1) / N;
      sum += out.loss!.item() * w;
      const scaled = mul(out.loss!, w);
      scaled.backward();
      scaled.dispose(); out.logits.dispose(); out.loss!.dispose();
    }
    const gSep = grads(model);
    model.zeroGrad();

    expect(Math.abs(packedLoss - sum) / sum).toBeLessThanOrEqual(1e-6);
    let worst = 0;
    for (const [n, g] of gPacked) {
      const r = gSep.get(n)!;
      let num = 0, den = 0;
      for (let i = 0; i < g.length; i++) { num += (g[i] - r[i]) ** 2; den += r[i] ** 2; }
      const rel = Math.sqrt(num / Math.max(den, 1e-30));
      worst = Math.max(worst, rel);
      if (rel > 1e-5) throw new Error(`gradient of ${n}: packed vs separate rel error ${rel}`);
      expect(maxAbs(g, r)).toBeLessThanOrEqual(1e-5);
    }
    expect(worst).toBeLessThanOrEqual(1e-5);
  });

  test('longer examples straddling the attention kernel\'s 64-token blocks', () => {
    const lens = [40, 70, 15];
    const seqs = lens.map((L, i) => tokens(L, 300 + i));
    const ids = seqs.flat(), pos = seqs.flatMap((s) => s.map((_, i) => i)), seg = seqs.flatMap((s, k) => s.map(() => k + 1));
    const packed = model.forward({ inputIds: [ids], positionIds: [pos], segmentIds: [seg] });
    let o = 0, worst = 0;
    for (const s of seqs) {
      const alone = model.forward({ inputIds: [s] });
      worst = Math.max(worst, maxAbs(rowLogits(packed.logits, 0, o, s.length), alone.logits.toFloat32Array()));
      alone.logits.dispose();
      o += s.length;
    }
    expect(worst).toBeLessThanOrEqual(1e-5);
    packed.logits.dispose();
  });

  test('through the data pipeline: packExamples → padBatch → batchToTensors, with padding', () => {
    const examples = [9, 4, 13, 6, 11, 3].map((L, i) => { const t = tokens(L, 200 + i); return { inputIds: t, labels: t }; });
    const { sequences } = packExamples(examples, { maxLength: 24, strategy: 'greedy' });
    expect(sequences.length).toBeGreaterThan(1);
    const batch = padBatch(sequences, { padTokenId: 0 });
    expect(batch.numTokens).toBeLessThan(batch.batchSize * batch.seqLen);   // some padding
    const t = batchToTensors(batch);
    const out = model.forward({ inputIds: t.inputIds, attentionMask: t.attentionMask, positionIds: t.positionIds, segmentIds: t.segmentIds });
    let worst = 0, k = 0;
    sequences.forEach((sq, b) => {
      let o = 0;
      for (const L of sq.lengths) {
        const alone = model.forward({ inputIds: [examples[k].inputIds] });
        worst = Math.max(worst, maxAbs(rowLogits(out.logits, b, o, L), alone.logits.toFloat32Array()));
        alone.logits.dispose();
        o += L; k++;
      }
    });
    expect(k).toBe(examples.length);
    expect(worst).toBeLessThanOrEqual(1e-5);
    expect(out.logits.toFloat32Array().some(Number.isNaN)).toBe(false);
    out.logits.dispose();
    for (const x of Object.values(t)) x.dispose();
  });

  test('one segment per row is the same as no segmentIds; bad segmentIds are rejected', () => {
    const s = SEQS[1];
    const a = model.forward({ inputIds: [s] });
    const b = model.forward({ inputIds: [s], segmentIds: [s.map(() => 4)] });
    expect(maxAbs(a.logits.toFloat32Array(), b.logits.toFloat32Array())).toBe(0);
    a.logits.dispose(); b.logits.dispose();
    expect(() => model.forward({ inputIds: [s], segmentIds: [[1, 2]] })).toThrow(/segmentIds is 1×2, inputIds 1×12/);
    expect(() => model.forward({ inputIds: [s], segmentIds: [s.map(() => 0.5)] })).toThrow(/segmentIds.*not an integer/);
  });

  test('positionsFromSegments restarts per segment and skips padding', () => {
    expect(positionsFromSegments([[1, 1, 2, 2, 2, 3, 0, 0]])).toEqual([[0, 1, 0, 1, 2, 0, 0, 1]]);
    expect(positionsFromSegments([[1, 1, 1, 1]], [[0, 0, 1, 1]])).toEqual([[1, 1, 0, 1]]);
  });
});

describe.each(['mistral', 'qwen2', 'gemma', 'gpt2'])('sequence packing: %s fixture logits', (arch) => {
  test('packed logits equal each sequence run alone', async () => {
    const model = await loadModel(path.join(FIX, arch));
    const { ids, pos, seg } = packedRow();
    const packed = model.forward({ inputIds: [ids], positionIds: [pos], segmentIds: [seg] });
    let o = 0, worst = 0;
    for (const s of SEQS) {
      const alone = model.forward({ inputIds: [s] });
      worst = Math.max(worst, maxAbs(rowLogits(packed.logits, 0, o, s.length), alone.logits.toFloat32Array()));
      alone.logits.dispose();
      o += s.length;
    }
    expect(worst).toBeLessThanOrEqual(1e-5);
    packed.logits.dispose();
    model.dispose();
  });
});
