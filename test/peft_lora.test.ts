/**
 * Parity with HuggingFace PEFT 0.21 on the `lora` fixture (test/fixtures/hf/peft/lora: r=4,
 * alpha=8, q,k,v,o,gate,up,down on models/llama): logits, every LoRA gradient, merged logits;
 * PEFT's file format on save; save → load, merge/unmerge and disableAdapter round trips.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { loadSafetensors, readHeader } from '../lib/io/safetensors';
import { loadModel } from '../lib/models';
import { loadAdapter, LoraLinear, PeftModel, wrapWithLora } from '../lib/peft';
import { noGrad } from '../lib/tensor/autograd';
import { Tensor } from '../lib/tensor/tensor';

const FIX = path.join(__dirname, 'fixtures', 'hf');
const LLAMA = path.join(FIX, 'models', 'llama');
const LORA = path.join(FIX, 'peft', 'lora');

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
function tmpDir(): string { return fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-lora-')); }

describe('PEFT lora fixture', () => {
  let ref: Map<string, Tensor>;
  beforeAll(() => { ref = loadSafetensors(path.join(LORA, 'reference.safetensors')); });
  afterAll(() => { for (const t of ref.values()) t.dispose(); });

  test('logits, loss and every LoRA gradient match PEFT', async () => {
    const peft = await loadAdapter(await loadModel(LLAMA), LORA, { isTrainable: true });
    const out = peft.forward({ inputIds: ref.get('input_ids')!, labels: ref.get('labels')! });
    const e = maxAbs(out.logits.toFloat32Array(), ref.get('logits')!.toFloat32Array());
    console.log(`lora fixture: max |logits - ref| = ${e.toExponential(3)}`);
    expect(e).toBeLessThanOrEqual(1e-4);
    const loss = out.loss!.item(), refLoss = ref.get('loss')!.item();
    expect(Math.abs(loss - refLoss) / Math.abs(refLoss)).toBeLessThanOrEqual(1e-5);
    out.loss!.backward();

    const params = new Map(peft.namedParameters());
    const gradKeys = [...ref.keys()].filter((k) => k.startsWith('grad.'));
    expect(gradKeys.length).toBe(28);  // 2 layers × 7 modules × (A, B)
    let worst = 0;
    for (const gk of gradKeys) {
      const name = gk.slice(5);  // PEFT in-memory name, e.g. base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight
      const p = params.get(name);
      expect(p).toBeDefined();
      expect(p!.grad).not.toBeNull();
      const r = relErr(p!.grad!.toFloat64Array(), ref.get(gk)!.toFloat64Array());
      worst = Math.max(worst, r);
      expect(r).toBeLessThanOrEqual(1e-3);
    }
    console.log(`lora fixture: worst LoRA gradient ‖g − ref‖/‖ref‖ = ${worst.toExponential(3)}`);
    // the base model receives no gradient
    for (const [n, t] of params) if (!n.includes('lora_')) { expect(t.requiresGrad).toBe(false); expect(t.grad).toBeNull(); }
    // trainable = exactly the adapter tensors
    expect(peft.trainableParameters().map(([n]) => n).sort()).toEqual(gradKeys.map((k) => k.slice(5)).sort());
    peft.dispose();
  });

  test('merged logits match PEFT merge_and_unload, and merge/unmerge round-trips', async () => {
    const base = await loadModel(LLAMA);
    const peft = await loadAdapter(base, LORA);
    const ids = ref.get('input_ids')!;
    const before = noGrad(() => peft.forward({ inputIds: ids }).logits.toFloat32Array());
    const w0 = (base.getSubmodule('model.layers.0.self_attn.q_proj') as LoraLinear).weight.toFloat32Array();
    peft.merge();
    const merged = noGrad(() => peft.forward({ inputIds: ids }).logits.toFloat32Array());
    expect(maxAbs(merged, ref.get('merged_logits')!.toFloat32Array())).toBeLessThanOrEqual(1e-4);
    peft.unmerge();
    const w1 = (base.getSubmodule('model.layers.0.self_attn.q_proj') as LoraLinear).weight.toFloat32Array();
    expect(maxAbs(w0, w1)).toBeLessThanOrEqual(1e-6);
    const after = noGrad(() => peft.forward({ inputIds: ids }).logits.toFloat32Array());
    expect(maxAbs(before, after)).toBeLessThanOrEqual(1e-5);
    const plain = peft.mergeAndUnload();
    expect(plain).toBe(base);
    expect(plain.getSubmodule('model.layers.0.self_attn.q_proj') instanceof LoraLinear).toBe(false);
    expect(plain.namedParameters().some(([n]) => n.includes('lora_'))).toBe(false);
    const e = maxAbs(noGrad(() => plain.forward({ inputIds: ids }).logits.toFloat32Array()), ref.get('merged_logits')!.toFloat32Array());
    console.log(`lora fixture: max |merged logits - ref| = ${e.toExponential(3)}`);
    expect(e).toBeLessThanOrEqual(1e-4);
    plain.dispose();
  });

  test('disableAdapter gives the base model logits (sync and async)', async () => {
    const baseRef = loadSafetensors(path.join(LLAMA, 'reference.safetensors'));
    const peft = await loadAdapter(await loadModel(LLAMA), LORA);
    const ids = ref.get('input_ids')!;
    const off = peft.disableAdapter(() => noGrad(() => peft.forward({ inputIds: ids }).logits.toFloat32Array()));
    expect(maxAbs(off, baseRef.get('logits')!.toFloat32Array())).toBeLessThanOrEqual(1e-4);
    const offAsync = await peft.disableAdapter(async () => noGrad(() => peft.forward({ inputIds: ids }).logits.toFloat32Array()));
    expect(maxAbs(offAsync, off)).toBe(0);
    const on = noGrad(() => peft.forward({ inputIds: ids }).logits.toFloat32Array());
    expect(maxAbs(on, ref.get('logits')!.toFloat32Array())).toBeLessThanOrEqual(1e-4);
    // a throwing fn re-enables the adapter too
    expect(() => peft.disableAdapter(() => { throw new Error('boom'); })).toThrow('boom');
    const again = noGrad(() => peft.forward({ inputIds: ids }).logits.toFloat32Array());
    expect(maxAbs(again, on)).toBe(0);
    for (const t of baseRef.values()) t.dispose();
    peft.dispose();
  });

  test('save writes PEFT names, shapes, dtypes and config; load gives identical weights', async () => {
    const peft = await loadAdapter(await loadModel(LLAMA), LORA);
    const dir = tmpDir();
    await peft.saveAdapter(dir);
    expect(fs.readdirSync(dir).sort()).toEqual(['adapter_config.json', 'adapter_model.safetensors']);
    const mine = readHeader(path.join(dir, 'adapter_model.safetensors'));
    const theirs = readHeader(path.join(LORA, 'adapter_model.safetensors'));
    expect([...mine.tensors.keys()].sort()).toEqual([...theirs.tensors.keys()].sort());
    for (const [k, t] of theirs.tensors) {
      expect(mine.tensors.get(k)!.shape).toEqual(t.shape);
      expect(mine.tensors.get(k)!.dtype).toBe(t.dtype);
    }
    expect(mine.metadata).toEqual({ format: 'pt' });
    // tensor values identical to the source file
    const a = loadSafetensors(path.join(dir, 'adapter_model.safetensors'));
    const b = loadSafetensors(path.join(LORA, 'adapter_model.safetensors'));
    for (const [k, t] of b) expect(maxAbs(a.get(k)!.toFloat32Array(), t.toFloat32Array())).toBe(0);
    // the config: PEFT's exact key set and values (config written by PEFT's save_pretrained)
    const cfgMine = JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'));
    const cfgTheirs = JSON.parse(fs.readFileSync(path.join(LORA, 'adapter_config.json'), 'utf8'));
    expect(Object.keys(cfgMine).sort()).toEqual(Object.keys(cfgTheirs).sort());
    cfgMine.target_modules.sort(); cfgTheirs.target_modules.sort();
    expect(cfgMine).toEqual(cfgTheirs);
    // byte for byte what PEFT wrote (key order, indentation, 0.0 for the float dropout)
    expect(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8')).toBe(fs.readFileSync(path.join(LORA, 'adapter_config.json'), 'utf8'));
    // save → load is identical
    const peft2 = await loadAdapter(await loadModel(LLAMA), dir);
    const p1 = new Map(peft.namedParameters()), p2 = new Map(peft2.namedParameters());
    expect([...p2.keys()]).toEqual([...p1.keys()]);
    for (const [n, t] of p1) if (n.includes('lora_')) expect(maxAbs(t.toFloat32Array(), p2.get(n)!.toFloat32Array())).toBe(0);
    const ids = ref.get('input_ids')!;
    const l1 = noGrad(() => peft.forward({ inputIds: ids }).logits.toFloat32Array());
    const l2 = noGrad(() => peft2.forward({ inputIds: ids }).logits.toFloat32Array());
    expect(maxAbs(l1, l2)).toBe(0);
    for (const t of [...a.values(), ...b.values()]) t.dispose();
    peft.dispose(); peft2.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('a fresh adapter saved and reloaded round-trips (config, names, values)', async () => {
    const peft = wrapWithLora(await loadModel(LLAMA), { r: 4, alpha: 8, targetModules: ['q_proj', 'v_proj'], seed: 1, init: 'gaussian' });
    expect(peft).toBeInstanceOf(PeftModel);
    const dir = tmpDir();
    await peft.saveAdapter(dir);
    const text = fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8');
    expect(text).toContain('"lora_dropout": 0.0');
    expect(text).toContain('"init_lora_weights": "gaussian"');
    const h = readHeader(path.join(dir, 'adapter_model.safetensors'));
    expect([...h.tensors.keys()].sort()).toEqual([
      'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight', 'base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight',
      'base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight', 'base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight',
      'base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight', 'base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight',
      'base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight', 'base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight',
    ]);
    const peft2 = await loadAdapter(await loadModel(LLAMA), dir);
    for (const [n, t] of peft.namedParameters()) {
      if (n.includes('lora_')) expect(maxAbs(t.toFloat32Array(), peft2.getTensor(n)!.toFloat32Array())).toBe(0);
    }
    peft.dispose(); peft2.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
  });
});

describe('bf16 base model', () => {
  test('a bf16 model with the fixture adapter: f32 adapter weights and gradients, logits close to f32', async () => {
    const ref = loadSafetensors(path.join(LORA, 'reference.safetensors'));
    const peft = await loadAdapter(await loadModel(LLAMA, { dtype: 'bf16' }), LORA, { isTrainable: true });
    const q = peft.model.getSubmodule('model.layers.0.self_attn.q_proj') as LoraLinear;
    expect(q.weight.dtype).toBe('bf16');
    expect(q.loraA.get('default')!.weight.dtype).toBe('f32');
    const out = peft.forward({ inputIds: ref.get('input_ids')!, labels: ref.get('labels')! });
    expect(out.logits.dtype).toBe('bf16');
    const e = maxAbs(out.logits.toFloat32Array(), ref.get('logits')!.toFloat32Array());
    expect(e).toBeLessThan(0.1);
    out.loss!.backward();
    const g = q.loraB.get('default')!.weight.grad!;
    expect(g.dtype).toBe('f32');
    expect(relErr(g.toFloat64Array(), ref.get('grad.base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight')!.toFloat64Array())).toBeLessThan(0.1);
    // merging into bf16 weights keeps the logits
    const y0 = noGrad(() => peft.forward({ inputIds: ref.get('input_ids')! }).logits.toFloat32Array());
    peft.merge();
    const y1 = noGrad(() => peft.forward({ inputIds: ref.get('input_ids')! }).logits.toFloat32Array());
    expect(maxAbs(y0, y1)).toBeLessThan(0.1);
    for (const t of ref.values()) t.dispose();
    peft.dispose();
  });
});
