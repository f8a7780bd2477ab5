/**
 * Parity of every fixture model with HuggingFace transformers (test/fixtures/hf/models/*):
 * logits, loss, the gradient of every parameter, greedy generation with and without the KV
 * cache; plus padding invariance and bf16 loading.
 */
import * as path from 'path';
import { loadModel } from '../lib/models';
import { loadSafetensors } from '../lib/io/safetensors';
import { Tensor } from '../lib/tensor/tensor';
import { setDropoutSeed } from '../lib/ops/random';
import { enableGradientCheckpointing } from '../lib/train';

const FIX = path.join(__dirname, 'fixtures', 'hf', 'models');
const ARCHS = ['llama', 'mistral', 'qwen2', 'gemma', 'gpt2'];

function maxAbs(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let e = 0;
  for (let i = 0; i < a.length; i++) e = Math.max(e, Math.abs(a[i] - b[i]));
  return e;
}
function relErr(g: ArrayLike<number>, r: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < r.length; i++) { num += (g[i] - r[i]) ** 2; den += r[i] ** 2; }
  return Math.sqrt(num / Math.max(den, 1e-300));
}
function rows(t: Tensor): number[][] { return t.toArray() as number[][]; }

describe.each(ARCHS)('%s matches transformers', (arch) => {
  const dir = path.join(FIX, arch);
  let ref: Map<string, Tensor>;
  beforeAll(() => { ref = loadSafetensors(path.join(dir, 'reference.safetensors')); });
  afterAll(() => { for (const t of ref.values()) t.dispose(); });

  test('logits, loss and every gradient', async () => {
    const model = await loadModel(dir);
    const out = model.forward({ inputIds: ref.get('input_ids')!, labels: ref.get('labels')! });
    expect(out.logits.shape).toEqual([2, 16, 512]);
    const e = maxAbs(out.logits.toFloat32Array(), ref.get('logits')!.toFloat32Array());
    expect(e).toBeLessThanOrEqual(1e-4);
    const loss = out.loss!.item(), refLoss = ref.get('loss')!.item();
    expect(Math.abs(loss - refLoss) / Math.abs(refLoss)).toBeLessThanOrEqual(1e-5);
    out.loss!.backward();
    const params = model.namedParameters();
    const refGrads = [...ref.keys()].filter((k) => k.startsWith('grad.')).map((k) => k.slice(5)).sort();
    expect(params.map(([n]) => n).sort()).toEqual(refGrads);
    let worst = 0;
    for (const [n, p] of params) {
      expect(p.grad).not.toBeNull();
      const r = relErr(p.grad!.toFloat32Array(), ref.get(`grad.${n}`)!.toFloat32Array());
      worst = Math.max(worst, r);
      if (r > 1e-3) throw new Error(`${arch}: gradient of ${n} off by ${r}`);
    }
    // eslint-disable-next-line no-console
    console.log(`${arch}: logits max-abs ${e.toExponential(2)}, loss rel ${(Math.abs(loss - refLoss) / Math.abs(refLoss)).toExponential(2)}, worst grad rel ${worst.toExponential(2)}`);
    out.logits.dispose(); out.loss!.dispose();
    model.dispose();
  });

  test('greedy generation, with and without the KV cache', async () => {
    const model = await loadModel(dir);
    const expected = rows(ref.get('generate_greedy')!);
    const prompt = [rows(ref.get('input_ids')!)[0].slice(0, 8)];
    const withCache = await model.generate(prompt, { maxNewTokens: 8, eosTokenId: null });
    const noCache = await model.generate(prompt, { maxNewTokens: 8, eosTokenId: null, useCache: false });
    expect(withCache).toEqual(expected);
    expect(noCache).toEqual(expected);
    const streamed: number[] = [];
    for await (const ev of model.stream(prompt, { maxNewTokens: 8, eosTokenId: null })) streamed.push(ev.token);
    expect([...prompt[0], ...streamed]).toEqual(expected[0]);
    model.dispose();
  });

  test('left and right padding give the logits of each sequence alone', async () => {
    const model = await loadModel(dir);
    const ids = rows(ref.get('input_ids')!);
    const a = ids[0].slice(0, 10), b = ids[1].slice(0, 7);
    const pad = 0;
    const alone = (s: number[]) => { const o = model.forward({ inputIds: [s] }); const v = o.logits.toFloat32Array(); o.logits.dispose(); return v; };
    const la = alone(a), lb = alone(b);
    const V = 512, T = 10;
    // b left-padded in row 0, b right-padded in row 1, a in row 2
    const batch = [[...new Array(T - b.length).fill(pad), ...b], [...b, ...new Array(T - b.length).fill(pad)], a];
    const mask = [[...new Array(T - b.length).fill(0), ...b.map(() => 1)], [...b.map(() => 1), ...new Array(T - b.length).fill(0)], a.map(() => 1)];
    const out = model.forward({ inputIds: batch, attentionMask: mask });
    const lg = out.logits.toFloat32Array();
    const row = (r: number, t: number) => lg.subarray((r * T + t) * V, (r * T + t + 1) * V);
    let e = 0;
    for (let t = 0; t < b.length; t++) {
      e = Math.max(e, maxAbs(row(0, T - b.length + t), lb.subarray(t * V, (t + 1) * V)));
      e = Math.max(e, maxAbs(row(1, t), lb.subarray(t * V, (t + 1) * V)));
    }
    for (let t = 0; t < T; t++) e = Math.max(e, maxAbs(row(2, t), la.subarray(t * V, (t + 1) * V)));
    expect(e).toBeLessThanOrEqual(1e-5);
    // Batched generation with left padding gives each row's own greedy continuation.
    const gBatch = await model.generate([batch[0], batch[2]], { maxNewTokens: 4, eosTokenId: null, attentionMask: [mask[0], mask[2]] });
    const gb = await model.generate([b], { maxNewTokens: 4, eosTokenId: null });
    const ga = await model.generate([a], { maxNewTokens: 4, eosTokenId: null });
    expect(gBatch[0].slice(T)).toEqual(gb[0].slice(b.length));
    expect(gBatch[1].slice(T)).toEqual(ga[0].slice(a.length));
    model.dispose();
  });

  test('bf16 load converts every parameter and stays close', async () => {
    const model = await loadModel(dir, { dtype: 'bf16' });
    for (const [, p] of model.namedParameters()) expect(p.dtype).toBe('bf16');
    const out = model.forward({ inputIds: ref.get('input_ids')! });
    expect(out.logits.dtype).toBe('bf16');
    const e = maxAbs(out.logits.toFloat32Array(), ref.get('logits')!.toFloat32Array());
    expect(e).toBeLessThan(0.1);
    model.dispose();
  });
});

describe('generation options', () => {
  const dir = path.join(FIX, 'llama');
  test('sampling is seeded; topK=1 equals greedy; stop ids end a row; repetition penalty changes output', async () => {
    const model = await loadModel(dir);
    const prompt = [[5, 17, 99, 3, 250, 11]];
    const greedy = await model.generate(prompt, { maxNewTokens: 6, eosTokenId: null });
    const s1 = await model.generate(prompt, { maxNewTokens: 6, doSample: true, seed: 7, eosTokenId: null });
    const s2 = await model.generate(prompt, { maxNewTokens: 6, doSample: true, seed: 7, eosTokenId: null });
    expect(s1).toEqual(s2);
    const k1 = await model.generate(prompt, { maxNewTokens: 6, doSample: true, topK: 1, seed: 3, eosTokenId: null });
    expect(k1).toEqual(greedy);
    const p0 = await model.generate(prompt, { maxNewTokens: 6, doSample: true, topP: 1e-6, seed: 3, eosTokenId: null, temperature: 0.7 });
    expect(p0).toEqual(greedy);
    const firstNew = greedy[0][6];
    const stopped = await model.generate(prompt, { maxNewTokens: 6, eosTokenId: null, stop: [firstNew] });
    expect(stopped[0]).toEqual([...prompt[0], firstNew]);
    const pen = await model.generate(prompt, { maxNewTokens: 6, eosTokenId: null, repetitionPenalty: 50 });
    const newToks = pen[0].slice(6);
    expect(new Set(newToks).size).toBe(newToks.length);  // a huge penalty forbids repeats
    for (const t of newToks) expect(prompt[0]).not.toContain(t);
    model.dispose();
  });
});

describe('GPT-2 dropout in training mode', () => {
  test('attn_pdrop drops attention probabilities (training only); with every p = 0 training equals eval', async () => {
    const model = await loadModel(path.join(FIX, 'gpt2'));
    const raw = model.config.raw as Record<string, unknown>;
    const ids = [[5, 17, 99, 3, 250, 11, 42, 7]];
    model.eval();
    const ev = model.forward({ inputIds: ids }).logits.toFloat32Array();
    model.train(true);
    raw.embd_pdrop = 0; raw.resid_pdrop = 0; raw.attn_pdrop = 0;
    expect(maxAbs(model.forward({ inputIds: ids }).logits.toFloat32Array(), ev)).toBeLessThanOrEqual(1e-6);
    raw.attn_pdrop = 0.5;
    const a = model.forward({ inputIds: ids }).logits.toFloat32Array();
    const b = model.forward({ inputIds: ids }).logits.toFloat32Array();
    expect(maxAbs(a, ev)).toBeGreaterThan(1e-3);   // probabilities were dropped
    expect(maxAbs(a, b)).toBeGreaterThan(1e-3);    // a fresh mask per forward
    model.eval();
    expect(maxAbs(model.forward({ inputIds: ids }).logits.toFloat32Array(), ev)).toBe(0);
    model.dispose();
  });

  test('with dropout on, gradient checkpointing recomputes the same masks (same loss and gradients)', async () => {
    const model = await loadModel(path.join(FIX, 'gpt2'));
    const raw = model.config.raw as Record<string, unknown>;
    raw.embd_pdrop = 0.1; raw.resid_pdrop = 0.1; raw.attn_pdrop = 0.2;
    model.train(true);
    const ids = [[5, 17, 99, 3, 250, 11, 42, 7]];
    const run = () => {
      for (const [, t] of model.namedParameters()) t.zeroGrad();
      setDropoutSeed(1234);
      const out = model.forward({ inputIds: ids, labels: ids });
      const loss = out.loss!.item();
      out.loss!.backward();
      const g = new Map(model.namedParameters().map(([n, t]) => [n, t.grad!.toFloat32Array()]));
      return { loss, g };
    };
    const plain = run();
    const off = enableGradientCheckpointing(model);
    const ckpt = run();
    off();
    expect(ckpt.loss).toBe(plain.loss);
    for (const [n, g] of plain.g) expect(maxAbs(ckpt.g.get(n)!, g)).toBeLessThanOrEqual(1e-6);
    model.dispose();
  });
});
