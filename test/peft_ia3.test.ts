/**
 * Parity with HuggingFace PEFT 0.21 on the `ia3` fixture (test/fixtures/hf/peft/ia3: k_proj,
 * v_proj, down_proj on models/llama, down_proj feed-forward): logits, loss, every ia3_l gradient,
 * merged logits; PEFT's file format on save; save → load; merge/unmerge, disableAdapter; a few
 * Trainer steps; generate.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { loadSafetensors, readHeader } from '../lib/io/safetensors';
import { loadModel } from '../lib/models';
import { Ia3Linear, loadAdapter, PeftModel, wrapWithIa3 } from '../lib/peft';
import { noGrad } from '../lib/tensor/autograd';
import { Tensor } from '../lib/tensor/tensor';
import { StepMetrics, Trainer } from '../lib/train';

const FIX = path.join(__dirname, 'fixtures', 'hf');
const LLAMA = path.join(FIX, 'models', 'llama');
const GPT2 = path.join(FIX, 'models', 'gpt2');
const IA3 = path.join(FIX, 'peft', 'ia3');

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
let tmpRoot: string;
beforeAll(() => { tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-ia3-')); });
afterAll(() => { fs.rmSync(tmpRoot, { recursive: true, force: true }); });

describe('PEFT ia3 fixture', () => {
  let ref: Map<string, Tensor>;
  beforeAll(() => { ref = loadSafetensors(path.join(IA3, 'reference.safetensors')); });
  afterAll(() => { for (const t of ref.values()) t.dispose(); });

  test('logits, loss and every ia3_l gradient match PEFT', async () => {
    const peft = await loadAdapter(await loadModel(LLAMA), IA3, { isTrainable: true });
    expect(peft.peftType).toBe('IA3');
    const out = peft.forward({ inputIds: ref.get('input_ids')!, labels: ref.get('labels')! });
    const e = maxAbs(out.logits.toFloat32Array(), ref.get('logits')!.toFloat32Array());
    const loss = out.loss!.item(), refLoss = ref.get('loss')!.item();
    const lossRel = Math.abs(loss - refLoss) / Math.abs(refLoss);
    console.log(`ia3 fixture: max |logits - ref| = ${e.toExponential(3)}, loss rel err = ${lossRel.toExponential(3)}`);
    expect(e).toBeLessThanOrEqual(1e-4);
    expect(lossRel).toBeLessThanOrEqual(1e-5);
    out.loss!.backward();
    const params = new Map(peft.namedParameters());
    const gradKeys = [...ref.keys()].filter((k) => k.startsWith('grad.'));
    expect(gradKeys.length).toBe(6);  // 2 layers × (k, v, down)
    let worst = 0;
    for (const gk of gradKeys) {
      const p = params.get(gk.slice(5));  // e.g. base_model.model.model.layers.0.self_attn.k_proj.ia3_l.default
      expect(p).toBeDefined();
      expect(p!.grad).not.toBeNull();
      const r = relErr(p!.grad!.toFloat64Array(), ref.get(gk)!.toFloat64Array());
      worst = Math.max(worst, r);
      expect(r).toBeLessThanOrEqual(1e-3);
    }
    console.log(`ia3 fixture: worst ia3_l gradient ‖g − ref‖/‖ref‖ = ${worst.toExponential(3)}`);
    expect(peft.trainableParameters().map(([n]) => n).sort()).toEqual(gradKeys.map((k) => k.slice(5)).sort());
    for (const [n, t] of params) if (!n.includes('ia3_l')) expect(t.grad).toBeNull();
    // shapes: output scaling [out, 1], feed-forward input scaling [1, in]
    expect(params.get('base_model.model.model.layers.0.self_attn.k_proj.ia3_l.default')!.shape).toEqual([32, 1]);
    expect(params.get('base_model.model.model.layers.0.mlp.down_proj.ia3_l.default')!.shape).toEqual([1, 128]);
    peft.dispose();
  });

  test('merged logits match PEFT merge_and_unload; merge/unmerge round-trips', async () => {
    const base = await loadModel(LLAMA);
    const peft = await loadAdapter(base, IA3);
    const ids = ref.get('input_ids')!;
    const before = noGrad(() => peft.forward({ inputIds: ids }).logits.toFloat32Array());
    const kp = base.getSubmodule('model.layers.0.self_attn.k_proj') as Ia3Linear;
    const w0 = kp.weight.toFloat32Array();
    peft.merge();
    const merged = noGrad(() => peft.forward({ inputIds: ids }).logits.toFloat32Array());
    expect(maxAbs(merged, ref.get('merged_logits')!.toFloat32Array())).toBeLessThanOrEqual(1e-4);
    peft.unmerge();
    expect(maxAbs(w0, kp.weight.toFloat32Array())).toBeLessThanOrEqual(1e-6);
    const after = noGrad(() => peft.forward({ inputIds: ids }).logits.toFloat32Array());
    expect(maxAbs(before, after)).toBeLessThanOrEqual(1e-5);
    const plain = peft.mergeAndUnload();
    expect(plain).toBe(base);
    expect(plain.namedModules().some(([, m]) => m instanceof Ia3Linear)).toBe(false);
    expect(plain.namedParameters().some(([n]) => n.includes('ia3_'))).toBe(false);
    const e = maxAbs(noGrad(() => plain.forward({ inputIds: ids }).logits.toFloat32Array()), ref.get('merged_logits')!.toFloat32Array());
    console.log(`ia3 fixture: max |merged logits - ref| = ${e.toExponential(3)}`);
    expect(e).toBeLessThanOrEqual(1e-4);
    plain.dispose();
  });

  test('disableAdapter gives the base model logits', async () => {
    const baseRef = loadSafetensors(path.join(LLAMA, 'reference.safetensors'));
    const peft = await loadAdapter(await loadModel(LLAMA), IA3);
    const ids = ref.get('input_ids')!;
    const off = peft.disableAdapter(() => noGrad(() => peft.forward({ inputIds: ids }).logits.toFloat32Array()));
    expect(maxAbs(off, baseRef.get('logits')!.toFloat32Array())).toBeLessThanOrEqual(1e-4);
    const on = noGrad(() => peft.forward({ inputIds: ids }).logits.toFloat32Array());
    expect(maxAbs(on, ref.get('logits')!.toFloat32Array())).toBeLessThanOrEqual(1e-4);
    for (const t of baseRef.values()) t.dispose();
    peft.dispose();
  });

  test('save writes PEFT names, shapes, dtypes and config; load gives identical weights and logits', async () => {
    const peft = await loadAdapter(await loadModel(LLAMA), IA3);
    const dir = path.join(tmpRoot, 'saved');
    await peft.saveAdapter(dir);
    expect(fs.readdirSync(dir).sort()).toEqual(['adapter_config.json', 'adapter_model.safetensors']);
    const mine = readHeader(path.join(dir, 'adapter_model.safetensors'));
    const theirs = readHeader(path.join(IA3, 'adapter_model.safetensors'));
    expect([...mine.tensors.keys()].sort()).toEqual([...theirs.tensors.keys()].sort());
    for (const [k, t] of theirs.tensors) {
      expect(mine.tensors.get(k)!.shape).toEqual(t.shape);
      expect(mine.tensors.get(k)!.dtype).toBe(t.dtype);
    }
    expect(mine.metadata).toEqual({ format: 'pt' });
    const cfgMine = JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'));
    const cfgTheirs = JSON.parse(fs.readFileSync(path.join(IA3, 'adapter_config.json'), 'utf8'));
    expect(Object.keys(cfgMine).sort()).toEqual(Object.keys(cfgTheirs).sort());
    expect(cfgMine).toEqual(cfgTheirs);
    const a = loadSafetensors(path.join(dir, 'adapter_model.safetensors'));
    const b = loadSafetensors(path.join(IA3, 'adapter_model.safetensors'));
    for (const [k, t] of b) expect(maxAbs(a.get(k)!.toFloat32Array(), t.toFloat32Array())).toBe(0);
    const again = await loadAdapter(await loadModel(LLAMA), dir);
    const ids = ref.get('input_ids')!;
    const l1 = noGrad(() => peft.forward({ inputIds: ids }).logits.toFloat32Array());
    const l2 = noGrad(() => again.forward({ inputIds: ids }).logits.toFloat32Array());
    expect(maxAbs(l1, l2)).toBe(0);
    for (const t of [...a.values(), ...b.values()]) t.dispose();
    peft.dispose(); again.dispose();
  });
});

describe('wrapWithIa3', () => {
  test('defaults: PEFT targets for llama, ones init = base model, trainable counts', async () => {
    const baseRef = loadSafetensors(path.join(LLAMA, 'reference.safetensors'));
    const peft = wrapWithIa3(await loadModel(LLAMA));
    const names = peft.trainableParameters().map(([n]) => n);
    expect(names.length).toBe(6);
    expect(names.every((n) => /\.(k_proj|v_proj|down_proj)\.ia3_l\.default$/.test(n))).toBe(true);
    const logits = noGrad(() => peft.forward({ inputIds: baseRef.get('input_ids')! }).logits.toFloat32Array());
    expect(maxAbs(logits, baseRef.get('logits')!.toFloat32Array())).toBeLessThanOrEqual(1e-5);
    // 2 × (32 + 32 + 128) trainable
    expect(peft.printTrainableParameters({ silent: true })).toMatch(/^trainable params: 384 \|\| all params: /);
    expect(() => wrapWithIa3(peft as never)).toThrow(/already has adapters/);
    expect(() => wrapWithIa3(peft.model, { targetModules: ['k_proj'], feedforwardModules: ['down_proj'] })).toThrow(/subset/);
    for (const t of baseRef.values()) t.dispose();
    peft.dispose();
  });

  test('GPT-2 Conv1D (fan_in_fan_out forced on): merge equals the unmerged forward', async () => {
    const ids = [[1, 5, 9, 200, 17, 3, 44, 81]];
    const peft = wrapWithIa3(await loadModel(GPT2), { initIa3Weights: false, seed: 3 });
    expect((peft.tuner.adapterConfigJson('default').json as { fan_in_fan_out: boolean }).fan_in_fan_out).toBe(true);
    const a = noGrad(() => peft.forward({ inputIds: ids }).logits.toFloat32Array());
    peft.merge();
    const b = noGrad(() => peft.forward({ inputIds: ids }).logits.toFloat32Array());
    expect(maxAbs(a, b)).toBeLessThanOrEqual(1e-4);
    peft.dispose();
  });

  test('a few Trainer steps lower the loss; generate runs', async () => {
    const peft: PeftModel = wrapWithIa3(await loadModel(LLAMA), { initIa3Weights: true });
    const data = Array.from({ length: 8 }, (_, i) => ({ inputIds: Array.from({ length: 12 }, (_, k) => 10 + ((i * 7 + k * 3) % 40)) }));
    const losses: number[] = [];
    await new Trainer({
      model: peft, trainDataset: data,
      args: { outputDir: path.join(tmpRoot, 'train'), maxSteps: 8, batchSize: 4, lr: 5e-2, saveSteps: 0, saveFinal: false, shuffle: false, progress: false, report: false },
      callbacks: [{ onStepEnd: (m: StepMetrics) => { losses.push(m.loss); } }],
    }).train();
    console.log(`ia3 training losses: ${losses.map((l) => l.toFixed(4)).join(' ')}`);
    expect(losses[losses.length - 1]).toBeLessThan(losses[0]);
    const outIds = await peft.generate([[10, 13, 16, 19]], { maxNewTokens: 5, doSample: false });
    expect(outIds[0].length).toBe(9);
    peft.dispose();
  });
});
