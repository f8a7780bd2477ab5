/**
 * Parity with HuggingFace PEFT 0.21 on the `prompt_tuning` and `prefix_tuning` fixtures
 * (test/fixtures/hf/peft/{prompt_tuning,prefix_tuning}, 4 virtual tokens on models/llama):
 * logits (prompt tuning: [2, 20, 512] with the virtual positions first), loss, the gradient of the
 * prompt embedding; PEFT's file format on save; save → load; disableAdapter; masks; a few Trainer
 * steps; generate (cached = uncached = forward's argmax).
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { loadSafetensors, readHeader } from '../lib/io/safetensors';
import { loadModel } from '../lib/models';
import { CausalLM, KVCache } from '../lib/models/base';
import { loadAdapter, PeftModel, PrefixTuningModel, wrapWithPrefixTuning, wrapWithPromptTuning } from '../lib/peft';
import { noGrad } from '../lib/tensor/autograd';
import { Tensor } from '../lib/tensor/tensor';
import { loadTokenizer } from '../lib/tokenizer';
import { enableGradientCheckpointing, StepMetrics, Trainer } from '../lib/train';

const FIX = path.join(__dirname, 'fixtures', 'hf');
const LLAMA = path.join(FIX, 'models', 'llama');
const GPT2 = path.join(FIX, 'models', 'gpt2');
const GEMMA = path.join(FIX, 'models', 'gemma');
const TOKENIZER = path.join(FIX, 'tokenizer');
const PROMPT = path.join(FIX, 'peft', 'prompt_tuning');
const PREFIX = path.join(FIX, 'peft', 'prefix_tuning');

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
function argmaxLast(logits: Tensor): number[] {
  const [B, T, V] = logits.shape;
  const f = logits.toFloat32Array();
  const out: number[] = [];
  for (let b = 0; b < B; b++) {
    let best = 0;
    const o = (b * T + T - 1) * V;
    for (let v = 1; v < V; v++) if (f[o + v] > f[o + best]) best = v;
    out.push(best);
  }
  return out;
}
/** Rows [b][t] of a (B,T,V) logits array restricted to positions [t0, t1). */
function positions(flat: Float32Array, T: number, V: number, b: number, t0: number, t1: number): Float32Array {
  return flat.slice((b * T + t0) * V, (b * T + t1) * V);
}

let tmpRoot: string;
beforeAll(() => { tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-prompt-')); });
afterAll(() => { fs.rmSync(tmpRoot, { recursive: true, force: true }); });

const quiet = { progress: false, report: false, saveSteps: 0, saveFinal: false, shuffle: false } as const;
const trainData = Array.from({ length: 8 }, (_, i) => ({ inputIds: Array.from({ length: 12 }, (_, k) => 10 + ((i * 7 + k * 3) % 40)) }));

async function trainLosses(peft: PeftModel, name: string, lr = 5e-2): Promise<number[]> {
  const losses: number[] = [];
  await new Trainer({
    model: peft, trainDataset: trainData,
    args: { outputDir: path.join(tmpRoot, name), maxSteps: 8, batchSize: 4, lr, ...quiet },
    callbacks: [{ onStepEnd: (m: StepMetrics) => { losses.push(m.loss); } }],
  }).train();
  return losses;
}

/** Save, compare to PEFT's files, reload, compare logits. */
async function checkSaveLoad(peft: PeftModel, fixtureDir: string, ids: Tensor, sub: string): Promise<void> {
  const dir = path.join(tmpRoot, sub);
  await peft.saveAdapter(dir);
  expect(fs.readdirSync(dir).sort()).toEqual(['adapter_config.json', 'adapter_model.safetensors']);
  const mine = readHeader(path.join(dir, 'adapter_model.safetensors'));
  const theirs = readHeader(path.join(fixtureDir, 'adapter_model.safetensors'));
  expect([...mine.tensors.keys()]).toEqual(['prompt_embeddings']);
  expect([...mine.tensors.keys()].sort()).toEqual([...theirs.tensors.keys()].sort());
  for (const [k, t] of theirs.tensors) {
    expect(mine.tensors.get(k)!.shape).toEqual(t.shape);
    expect(mine.tensors.get(k)!.dtype).toBe(t.dtype);
  }
  expect(mine.metadata).toEqual({ format: 'pt' });
  const cfgMine = JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'));
  const cfgTheirs = JSON.parse(fs.readFileSync(path.join(fixtureDir, 'adapter_config.json'), 'utf8'));
  expect(cfgMine).toEqual(cfgTheirs);
  const a = loadSafetensors(path.join(dir, 'adapter_model.safetensors'));
  const b = loadSafetensors(path.join(fixtureDir, 'adapter_model.safetensors'));
  expect(maxAbs(a.get('prompt_embeddings')!.toFloat32Array(), b.get('prompt_embeddings')!.toFloat32Array())).toBe(0);
  const again = await loadAdapter(await loadModel(LLAMA), dir);
  const l1 = noGrad(() => peft.forward({ inputIds: ids }).logits.toFloat32Array());
  const l2 = noGrad(() => again.forward({ inputIds: ids }).logits.toFloat32Array());
  expect(maxAbs(l1, l2)).toBe(0);
  for (const t of [...a.values(), ...b.values()]) t.dispose();
  again.dispose();
}

/** generate: cached = uncached, and the first new token = argmax of forward's last position. */
async function checkGenerate(peft: PeftModel): Promise<void> {
  const prompt = [[10, 13, 16, 19, 22, 25], [40, 41, 42, 43, 44, 45]];
  const cached = await peft.generate(prompt, { maxNewTokens: 6, doSample: false, eosTokenId: null });
  const uncached = await peft.generate(prompt, { maxNewTokens: 6, doSample: false, eosTokenId: null, useCache: false });
  expect(cached).toEqual(uncached);
  expect(cached[0].length).toBe(12);
  const first = noGrad(() => argmaxLast(peft.forward({ inputIds: prompt }).logits));
  expect(cached.map((r) => r[6])).toEqual(first);
  // the continuation of row 0 alone is the same as in the batch
  const alone = await peft.generate([prompt[0]], { maxNewTokens: 6, doSample: false, eosTokenId: null });
  expect(alone[0]).toEqual(cached[0]);
}

describe('PEFT prompt_tuning fixture', () => {
  let ref: Map<string, Tensor>;
  beforeAll(() => { ref = loadSafetensors(path.join(PROMPT, 'reference.safetensors')); });
  afterAll(() => { for (const t of ref.values()) t.dispose(); });

  test('logits [2,20,512], loss and the prompt gradient match PEFT', async () => {
    const peft = await loadAdapter(await loadModel(LLAMA), PROMPT, { isTrainable: true });
    expect(peft.peftType).toBe('PROMPT_TUNING');
    const out = peft.forward({ inputIds: ref.get('input_ids')!, labels: ref.get('labels')! });
    expect(out.logits.shape).toEqual([2, 20, 512]);
    const e = maxAbs(out.logits.toFloat32Array(), ref.get('logits')!.toFloat32Array());
    const loss = out.loss!.item(), refLoss = ref.get('loss')!.item();
    const lossRel = Math.abs(loss - refLoss) / Math.abs(refLoss);
    console.log(`prompt_tuning fixture: max |logits - ref| = ${e.toExponential(3)}, loss rel err = ${lossRel.toExponential(3)}`);
    expect(e).toBeLessThanOrEqual(1e-4);
    expect(lossRel).toBeLessThanOrEqual(1e-5);
    out.loss!.backward();
    const params = new Map(peft.namedParameters());
    const gk = 'grad.prompt_encoder.default.embedding.weight';
    const p = params.get(gk.slice(5))!;
    expect(p.shape).toEqual([4, 64]);
    const r = relErr(p.grad!.toFloat64Array(), ref.get(gk)!.toFloat64Array());
    console.log(`prompt_tuning fixture: gradient ‖g − ref‖/‖ref‖ = ${r.toExponential(3)}`);
    expect(r).toBeLessThanOrEqual(1e-3);
    expect(peft.trainableParameters().map(([n]) => n)).toEqual(['prompt_encoder.default.embedding.weight']);
    expect(params.has('base_model.model.embed_tokens.weight')).toBe(true);  // PEFT's names for prompt learning
    for (const [n, t] of params) if (n.startsWith('base_model.')) expect(t.grad).toBeNull();
    peft.dispose();
  });

  test('loaded without isTrainable the prompt is frozen; save gives PEFT files; load is identical', async () => {
    const peft = await loadAdapter(await loadModel(LLAMA), PROMPT);
    expect(peft.trainableParameters()).toEqual([]);
    await checkSaveLoad(peft, PROMPT, ref.get('input_ids')!, 'pt-saved');
    peft.dispose();
  });

  test('disableAdapter gives the base model; attention mask and labels are extended as PEFT does', async () => {
    const baseRef = loadSafetensors(path.join(LLAMA, 'reference.safetensors'));
    const peft = await loadAdapter(await loadModel(LLAMA), PROMPT);
    const ids = ref.get('input_ids')!;
    const off = peft.disableAdapter(() => noGrad(() => peft.forward({ inputIds: ids }).logits));
    expect(off.shape).toEqual([2, 16, 512]);
    expect(maxAbs(off.toFloat32Array(), baseRef.get('logits')!.toFloat32Array())).toBeLessThanOrEqual(1e-4);
    // right padding: the real positions give the same logits as without padding
    const rows = ids.toArray() as number[][];
    const padded = [rows[0].slice(0, 10).concat(new Array(6).fill(0)), rows[1]];
    const mask = [new Array(10).fill(1).concat(new Array(6).fill(0)), new Array(16).fill(1)];
    const full = noGrad(() => peft.forward({ inputIds: ids }).logits.toFloat32Array());
    const part = noGrad(() => peft.forward({ inputIds: padded, attentionMask: mask }).logits.toFloat32Array());
    expect(maxAbs(positions(part, 20, 512, 0, 0, 14), positions(full, 20, 512, 0, 0, 14))).toBeLessThanOrEqual(1e-5);
    expect(maxAbs(positions(part, 20, 512, 1, 0, 20), positions(full, 20, 512, 1, 0, 20))).toBeLessThanOrEqual(1e-5);
    // labels: the loss only covers the real tokens (equal to the loss over logits[:, 4:] against the labels)
    const labels = ref.get('labels')!;
    const lossPeft = noGrad(() => peft.forward({ inputIds: ids, labels }).loss!.item());
    expect(Math.abs(lossPeft - ref.get('loss')!.item())).toBeLessThanOrEqual(1e-5 * Math.abs(lossPeft));
    for (const t of baseRef.values()) t.dispose();
    peft.dispose();
  });

  test('generate (cached = uncached = forward argmax)', async () => {
    const peft = await loadAdapter(await loadModel(LLAMA), PROMPT);
    await checkGenerate(peft);
    peft.dispose();
  });
});

describe('wrapWithPromptTuning', () => {
  test('RANDOM init: a few Trainer steps lower the loss; only the prompt trains', async () => {
    const peft = wrapWithPromptTuning(await loadModel(LLAMA), { numVirtualTokens: 4, seed: 1 });
    expect(peft.printTrainableParameters({ silent: true })).toMatch(/^trainable params: 256 \|\| /);
    const losses = await trainLosses(peft, 'pt-train', 1e-1);
    console.log(`prompt tuning training losses: ${losses.map((l) => l.toFixed(4)).join(' ')}`);
    expect(losses[losses.length - 1]).toBeLessThan(losses[0]);
    const cfg = peft.tuner.adapterConfigJson('default').json;
    expect(cfg).toMatchObject({ peft_type: 'PROMPT_TUNING', num_virtual_tokens: 4, token_dim: 64, num_layers: 2, num_attention_heads: 4, num_transformer_submodules: 1 });
    peft.dispose();
  });

  test('TEXT init takes the token embeddings of the text (repeated to numVirtualTokens)', async () => {
    const model = await loadModel(LLAMA);
    const tok = await loadTokenizer(TOKENIZER);
    const ids = tok.encode('hello world', { addSpecialTokens: true });
    const peft = wrapWithPromptTuning(model, { numVirtualTokens: ids.length + 2, promptTuningInit: 'TEXT', promptTuningInitText: 'hello world', tokenizerNameOrPath: TOKENIZER });
    const w = (peft.namedParameters().find(([n]) => n === 'prompt_encoder.default.embedding.weight')![1]).toFloat32Array();
    const emb = (model.getSubmodule('model.embed_tokens').getTensor('weight') as Tensor).toFloat32Array();
    const want = [...ids, ...ids].slice(0, ids.length + 2);
    for (let i = 0; i < want.length; i++) expect(maxAbs(w.slice(i * 64, (i + 1) * 64), emb.slice(want[i] * 64, (want[i] + 1) * 64))).toBe(0);
    expect(() => wrapWithPromptTuning(model, { numVirtualTokens: 2, promptTuningInit: 'TEXT', promptTuningInitText: 'x' })).toThrow(/tokenizer_name_or_path/);
    peft.dispose();
  });

  test('GPT-2 and Gemma (embedding scale applies to the virtual tokens): generate runs, cached = uncached', async () => {
    for (const dir of [GPT2, GEMMA]) {
      const peft = wrapWithPromptTuning(await loadModel(dir), { numVirtualTokens: 3, seed: 2 });
      await checkGenerate(peft);
      peft.dispose();
    }
  });
});

describe('PEFT prefix_tuning fixture', () => {
  let ref: Map<string, Tensor>;
  beforeAll(() => { ref = loadSafetensors(path.join(PREFIX, 'reference.safetensors')); });
  afterAll(() => { for (const t of ref.values()) t.dispose(); });

  test('logits, loss and the prefix gradient match PEFT', async () => {
    const peft = await loadAdapter(await loadModel(LLAMA), PREFIX, { isTrainable: true });
    expect(peft.peftType).toBe('PREFIX_TUNING');
    const out = peft.forward({ inputIds: ref.get('input_ids')!, labels: ref.get('labels')! });
    expect(out.logits.shape).toEqual([2, 16, 512]);
    const e = maxAbs(out.logits.toFloat32Array(), ref.get('logits')!.toFloat32Array());
    const loss = out.loss!.item(), refLoss = ref.get('loss')!.item();
    const lossRel = Math.abs(loss - refLoss) / Math.abs(refLoss);
    console.log(`prefix_tuning fixture: max |logits - ref| = ${e.toExponential(3)}, loss rel err = ${lossRel.toExponential(3)}`);
    expect(e).toBeLessThanOrEqual(1e-4);
    expect(lossRel).toBeLessThanOrEqual(1e-5);
    out.loss!.backward();
    const gk = 'grad.prompt_encoder.default.embedding.weight';
    const p = new Map(peft.namedParameters()).get(gk.slice(5))!;
    expect(p.shape).toEqual([4, 128]);
    const r = relErr(p.grad!.toFloat64Array(), ref.get(gk)!.toFloat64Array());
    console.log(`prefix_tuning fixture: gradient ‖g − ref‖/‖ref‖ = ${r.toExponential(3)}`);
    expect(r).toBeLessThanOrEqual(1e-3);
    expect(peft.trainableParameters().map(([n]) => n)).toEqual(['prompt_encoder.default.embedding.weight']);
    peft.dispose();
  });

  test('positions of the real tokens start after the prefix (nvt..nvt+T-1), as transformers with a past', async () => {
    const peft = await loadAdapter(await loadModel(LLAMA), PREFIX);
    const ids = ref.get('input_ids')!;
    const refLogits = ref.get('logits')!.toFloat32Array();
    // the fixture tells the two apart: positions 0..T-1 after the same prefix are off by ~1e-3
    const tuner = peft.tuner as PrefixTuningModel;
    const errAt = (start: number) => noGrad(() => {
      const cache = new KVCache(2);
      tuner.fillCache(cache, 2);
      const pos = Tensor.fromArray(Array.from({ length: 32 }, (_, i) => start + (i % 16)), { dtype: 'i64', shape: [2, 16] });
      const l = peft.model.decode(ids, pos, null, cache).toFloat32Array();
      cache.dispose();
      return maxAbs(l, refLogits);
    });
    expect(errAt(4)).toBeLessThanOrEqual(1e-4);
    expect(errAt(0)).toBeGreaterThan(1e-4);
    // explicit position ids are ignored (with a warning), as in PEFT
    const warn = jest.spyOn(console, 'warn').mockImplementation(() => undefined);
    const l = noGrad(() => peft.forward({ inputIds: ids, positionIds: [Array.from({ length: 16 }, (_, i) => i + 7)] }).logits.toFloat32Array());
    warn.mockRestore();
    expect(maxAbs(l, refLogits)).toBeLessThanOrEqual(1e-4);
    peft.dispose();
  });

  test('save gives PEFT files; load is identical; disableAdapter; generate', async () => {
    const baseRef = loadSafetensors(path.join(LLAMA, 'reference.safetensors'));
    const peft = await loadAdapter(await loadModel(LLAMA), PREFIX);
    expect(peft.trainableParameters()).toEqual([]);
    await checkSaveLoad(peft, PREFIX, ref.get('input_ids')!, 'px-saved');
    const off = peft.disableAdapter(() => noGrad(() => peft.forward({ inputIds: ref.get('input_ids')! }).logits.toFloat32Array()));
    expect(maxAbs(off, baseRef.get('logits')!.toFloat32Array())).toBeLessThanOrEqual(1e-4);
    // right padding: the real positions keep their logits
    const rows = ref.get('input_ids')!.toArray() as number[][];
    const full = noGrad(() => peft.forward({ inputIds: rows }).logits.toFloat32Array());
    const part = noGrad(() => peft.forward({
      inputIds: [rows[0].slice(0, 9).concat(new Array(7).fill(0)), rows[1]],
      attentionMask: [new Array(9).fill(1).concat(new Array(7).fill(0)), new Array(16).fill(1)],
    }).logits.toFloat32Array());
    expect(maxAbs(positions(part, 16, 512, 0, 0, 9), positions(full, 16, 512, 0, 0, 9))).toBeLessThanOrEqual(1e-5);
    await checkGenerate(peft);
    for (const t of baseRef.values()) t.dispose();
    peft.dispose();
  });
});

describe('wrapWithPrefixTuning', () => {
  test('no projection: a few Trainer steps lower the loss; GQA layout (2 KV heads)', async () => {
    const peft = wrapWithPrefixTuning(await loadModel(LLAMA), { numVirtualTokens: 4, seed: 5 });
    const cfg = peft.tuner.adapterConfigJson('default').json;
    expect(cfg).toMatchObject({ num_attention_heads: 2, token_dim: 32, encoder_hidden_size: 32, num_layers: 2, prefix_projection: false });
    expect(peft.trainableParameters().map(([n, t]) => [n, t.shape])).toEqual([['prompt_encoder.default.embedding.weight', [4, 128]]]);
    const losses = await trainLosses(peft, 'px-train', 1e-1);
    console.log(`prefix tuning training losses: ${losses.map((l) => l.toFixed(4)).join(' ')}`);
    expect(losses[losses.length - 1]).toBeLessThan(losses[0]);
    peft.dispose();
  });

  test('prefix projection: PEFT PrefixEncoder names; saves the projected prefix; reload (inference) gives the same logits', async () => {
    const peft = wrapWithPrefixTuning(await loadModel(LLAMA), { numVirtualTokens: 4, prefixProjection: true, encoderHiddenSize: 24, seed: 9 });
    expect(peft.trainableParameters().map(([n, t]) => [n, t.shape])).toEqual([
      ['prompt_encoder.default.embedding.weight', [4, 32]],
      ['prompt_encoder.default.transform.0.weight', [24, 32]],
      ['prompt_encoder.default.transform.0.bias', [24]],
      ['prompt_encoder.default.transform.2.weight', [128, 24]],
      ['prompt_encoder.default.transform.2.bias', [128]],
    ]);
    const losses = await trainLosses(peft, 'px-proj-train', 5e-2);
    expect(losses[losses.length - 1]).toBeLessThan(losses[0]);
    const dir = path.join(tmpRoot, 'px-proj');
    await peft.saveAdapter(dir);
    const h = readHeader(path.join(dir, 'adapter_model.safetensors'));
    expect(h.tensors.get('prompt_embeddings')!.shape).toEqual([4, 128]);
    expect(JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'))).toMatchObject({ prefix_projection: true, encoder_hidden_size: 24 });
    const again = await loadAdapter(await loadModel(LLAMA), dir);
    const ids = [[3, 9, 27, 81, 243, 217, 139, 5]];
    const a = noGrad(() => peft.forward({ inputIds: ids }).logits.toFloat32Array());
    const b = noGrad(() => again.forward({ inputIds: ids }).logits.toFloat32Array());
    expect(maxAbs(a, b)).toBeLessThanOrEqual(1e-5);
    peft.dispose(); again.dispose();
  });

  test('gradient checkpointing is refused (as PEFT); GPT-2 generate runs', async () => {
    const m: CausalLM = await loadModel(LLAMA);
    const peft = wrapWithPrefixTuning(m, { numVirtualTokens: 2, seed: 1 });
    const off = enableGradientCheckpointing(peft);
    expect(() => peft.forward({ inputIds: [[1, 2, 3]] })).toThrow(/gradient checkpointing/);
    off();
    peft.dispose();
    const g = wrapWithPrefixTuning(await loadModel(GPT2), { numVirtualTokens: 3, seed: 4 });
    expect(g.tuner.adapterConfigJson('default').json).toMatchObject({ num_attention_heads: 4, token_dim: 64 });
    await checkGenerate(g);
    g.dispose();
  });
});
