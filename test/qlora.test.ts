/**
 * QLoRA: LoRA over a 4-bit (NF4 / FP4) base — wrapWithLora on loadModel(dir, { quantize: 'nf4' }),
 * the fused LoRA op reading the base through the fused 4-bit GEMM (forward and dX) against the
 * composition Linear4bit.forward + unfused LoRA term, gradchecks in f64 through a dequantized base,
 * PEFT's parameter counting of Params4bit (×2), adapter save/load onto a freshly quantized model,
 * mergeQuantized vs LoRA-over-NF4 logits, a few AdamW steps, and the clear errors (merge, PiSSA).
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { loadModel } from '../lib/models';
import { native } from '../lib/native';
import * as ops from '../lib/ops';
import { linear } from '../lib/ops/matmul';
import { loraLinear, loraLinearUnfused } from '../lib/ops/lora';
import { setDropoutSeed } from '../lib/ops/random';
import { AdamW } from '../lib/optim';
import { formatTrainableParameters, loadAdapter, LoraLinear, PeftModel, wrapWithLora } from '../lib/peft';
import { dequantize, Linear4bit, mergeQuantized, quantizeNF4 } from '../lib/quant';
import { noGrad } from '../lib/tensor/autograd';
import { Tensor } from '../lib/tensor/tensor';
import { gradcheck, lcg, randomF64 } from './helpers/gradcheck';

const LLAMA = path.join(__dirname, 'fixtures', 'hf', 'models', 'llama');
const IDS = [[1, 5, 9, 200, 33, 7, 400, 12], [3, 3, 80, 64, 511, 2, 0, 17]];
const ALL_LINEAR = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];

function maxAbs(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let e = 0;
  for (let i = 0; i < a.length; i++) e = Math.max(e, Math.abs(a[i] - b[i]));
  return e;
}
function maxAbsOf(a: ArrayLike<number>): number { let m = 0; for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i])); return m; }
function randomF32(shape: number[], seed: number, scale = 1): Tensor {
  const r = lcg(seed);
  const n = shape.reduce((a, b) => a * b, 1);
  return Tensor.fromArray(Array.from({ length: n }, () => r() * scale), { shape, dtype: 'f32' });
}
/** Fill every adapter tensor with small random values (B ≠ 0, so the LoRA path matters). */
function randomizeAdapters(peft: PeftModel, seed: number, scale = 0.1): void {
  let s = seed;
  for (const [n, t] of peft.namedParameters()) {
    if (!n.includes('lora_')) continue;
    const r = randomF32([...t.shape], s++, scale);
    const v = n.includes('lora_magnitude_vector') ? ops.add(t, r) : r;
    native.copy_(t.native, v.native);
    r.dispose(); if (v !== r) v.dispose();
  }
}
function loraLayers(p: PeftModel): [string, LoraLinear][] {
  return p.model.namedModules().filter(([, m]) => m instanceof LoraLinear) as [string, LoraLinear][];
}
function setFused(p: PeftModel, on: boolean): void { for (const [, l] of loraLayers(p)) l.fused = on; }

/** Run fn counting the fused LoRA native calls (and how many got a 4-bit state object as the weight). */
function countNativeCalls<T>(fn: () => T): { result: T; forward: number; backward: number; stateArgs: number } {
  const n = native as unknown as Record<string, (...a: unknown[]) => unknown>;
  const f0 = n.lora_linear_forward, b0 = n.lora_linear_backward;
  let forward = 0, backward = 0, stateArgs = 0;
  const isState = (w: unknown) => !!w && typeof w === 'object' && 'packed' in (w as object) && 'absmax' in (w as object);
  n.lora_linear_forward = (...a: unknown[]) => { forward++; if (isState(a[1])) stateArgs++; return f0(...a); };
  n.lora_linear_backward = (...a: unknown[]) => { backward++; if (isState(a[3])) stateArgs++; return b0(...a); };
  try {
    return { result: fn(), forward, backward, stateArgs };
  } finally {
    n.lora_linear_forward = f0; n.lora_linear_backward = b0;
  }
}

const quantized = (computeDtype: 'f32' | 'bf16' = 'f32') => loadModel(LLAMA, { quantize: 'nf4', quantization: { computeDtype } });

let tmp: string;
beforeAll(() => { tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-qlora-')); });
afterAll(() => { fs.rmSync(tmp, { recursive: true, force: true }); });

describe('fused LoRA op over a 4-bit base', () => {
  test.each([
    ['nf4, f32 values', 'nf4', 'f32', false, 0],
    ['nf4, bf16 values, bias, dropout', 'nf4', 'bf16', true, 0.1],
    ['fp4, no double quant, dropout', 'fp4', 'f32', false, 0.2],
  ] as const)('fused equals Linear4bit + unfused LoRA term: y, dX, dA, dB, dbias (%s)', (_, qt, cd, withBias, p) => {
    const [T, inF, outF, r] = [37, 192, 96, 8];
    const w = randomF32([outF, inF], 31, 0.2);
    const q = quantizeNF4(w, { quantType: qt, computeDtype: cd, doubleQuant: qt === 'nf4' });
    const run = (fused: boolean) => {
      const x = randomF32([T, inF], 32).requiresGrad_();
      const A = randomF32([r, inF], 33, 0.1).requiresGrad_();
      const B = randomF32([outF, r], 34, 0.1).requiresGrad_();
      const b = withBias ? randomF32([outF], 35).requiresGrad_() : null;
      const y = fused ? loraLinear(x, q, b, A, B, { scale: 2, dropout: p, seed: 5 })
        : loraLinearUnfused(x, q, b, A, B, 2, p, 5);
      y.backward(randomF32([T, outF], 36));
      const res = { y: y.toFloat32Array(), dx: x.grad!.toFloat32Array(), dA: A.grad!.toFloat32Array(), dB: B.grad!.toFloat32Array(),
        db: b ? b.grad!.toFloat32Array() : new Float32Array(0) };
      for (const t of [x, A, B, y, ...(b ? [b] : [])]) { t.zeroGrad(); t.dispose(); }
      return res;
    };
    const f = run(true), u = run(false);
    for (const k of ['y', 'dx', 'dA', 'dB', 'db'] as const) {
      expect(maxAbs(f[k], u[k]) / Math.max(1, maxAbsOf(u[k]))).toBeLessThan(2e-6);
    }
    // the packed weight never gets a gradient
    expect(q.data.grad).toBeNull();
    w.dispose(); q.dispose();
  });

  test('bf16 activations: output in bf16, close to the composition', () => {
    const [T, inF, outF, r] = [16, 128, 64, 4];
    const w = randomF32([outF, inF], 41, 0.2);
    const q = quantizeNF4(w);
    const x = randomF32([2, T, inF], 42).to('bf16');
    const A = randomF32([r, inF], 43, 0.1), B = randomF32([outF, r], 44, 0.1);
    const y1 = noGrad(() => loraLinear(x, q, null, A, B, { scale: 2 }));
    const y2 = noGrad(() => loraLinearUnfused(x, q, null, A, B, 2, 0, 0));
    expect(y1.dtype).toBe('bf16');
    expect(y1.shape).toEqual([2, T, outF]);
    expect(maxAbs(y1.toFloat32Array(), y2.toFloat32Array()) / maxAbsOf(y2.toFloat32Array())).toBeLessThan(1e-2);
    for (const t of [w, x, A, B, y1, y2]) t.dispose();
    q.dispose();
  });

  test('bf16 activations: dX, dA, dB, dbias close to the composition (fused bf16 epilogue)', () => {
    const [T, inF, outF, r] = [37, 96, 80, 8];
    const q = quantizeNF4(randomF32([outF, inF], 61, 0.2), { computeDtype: 'bf16' });
    const xs = randomF32([T, inF], 62).to('bf16');
    const run = (fused: boolean) => {
      const x = xs.clone().requiresGrad_();
      const A = randomF32([r, inF], 63, 0.1).requiresGrad_();
      const B = randomF32([outF, r], 64, 0.1).requiresGrad_();
      const b = randomF32([outF], 65).requiresGrad_();
      const y = fused ? loraLinear(x, q, b, A, B, { scale: 2 }) : loraLinearUnfused(x, q, b, A, B, 2, 0, 0);
      y.backward(randomF32([T, outF], 66).to('bf16'));
      return { y: y.toFloat32Array(), dx: x.grad!.toFloat32Array(), dA: A.grad!.toFloat32Array(), dB: B.grad!.toFloat32Array(), db: b.grad!.toFloat32Array() };
    };
    const f = run(true), u = run(false);
    for (const k of ['y', 'dx', 'dA', 'dB', 'db'] as const) {
      expect(maxAbs(f[k], u[k]) / Math.max(1, maxAbsOf(u[k]))).toBeLessThan(2e-2);
    }
    q.dispose();
  });

  test.each([['plain', false, 0], ['bias + dropout', true, 0.3]] as const)('gradcheck in f64 through the dequantized base (%s)', (_, withBias, p) => {
    const [inF, outF, r] = [64, 6, 3];
    const w = randomF32([outF, inF], 51, 0.5);
    const q = quantizeNF4(w, { computeDtype: 'f32', blockSize: 32 });
    const x = randomF64([2, 3, inF], 52).requiresGrad_();
    const A = randomF64([r, inF], 53).requiresGrad_();
    const B = randomF64([outF, r], 54).requiresGrad_();
    const b = withBias ? randomF64([outF], 55).requiresGrad_() : null;
    const inputs = b ? [x, A, B, b] : [x, A, B];
    gradcheck((xs) => loraLinear(xs[0], q, b ? xs[3] : null, xs[1], xs[2], { scale: 0.7, dropout: p, seed: 3 }), inputs);
    // f64 values are exactly the dequantized base's
    const wd = dequantize(q, 'f64');
    const y1 = noGrad(() => loraLinear(x, q, b, A, B, { scale: 0.7, dropout: p, seed: 3 }));
    const y2 = noGrad(() => loraLinearUnfused(x, wd, b, A, B, 0.7, p, 3));
    expect(y1.dtype).toBe('f64');
    expect(maxAbs(y1.toFloat64Array(), y2.toFloat64Array())).toBeLessThan(1e-12);
    for (const t of [w, x, A, B, wd, y1, y2, ...(b ? [b] : [])]) { t.zeroGrad(); t.dispose(); }
    q.dispose();
  });

  test('errors: a transposed 4-bit weight, shapes', () => {
    const q = quantizeNF4(randomF32([8, 64], 61));
    const x = randomF32([2, 64], 62);
    expect(() => loraLinear(x, q, null, randomF32([2, 64], 63), randomF32([8, 2], 64), { scale: 1, weightTransposed: true })).toThrow(/weightTransposed/);
    expect(() => loraLinear(randomF32([2, 32], 65), q, null, randomF32([2, 32], 63), randomF32([8, 2], 64), { scale: 1 })).toThrow(/does not match base weight/);
    expect(() => loraLinear(x, q, null, randomF32([2, 64], 63), randomF32([6, 2], 64), { scale: 1 })).toThrow(/lora_B/);
    x.dispose(); q.dispose();
  });
});

describe('wrapWithLora over loadModel(llama, { quantize: "nf4" })', () => {
  test('all-linear and explicit targets find the 4-bit layers (not lm_head); features from the module', async () => {
    const m = await quantized();
    const p = wrapWithLora(m, { r: 4, targetModules: 'all-linear' });
    const layers = loraLayers(p);
    expect(layers).toHaveLength(14);
    expect(layers.map(([k]) => k)).not.toContain('lm_head');
    for (const [, l] of layers) {
      expect(l.baseLayer).toBeInstanceOf(Linear4bit);
      const b = l.baseLayer as Linear4bit;
      expect([l.inFeatures, l.outFeatures]).toEqual([b.inFeatures, b.outFeatures]);
      expect(l.fanInFanOut).toBe(false);
      expect(l.loraA.get('default')!.weight.shape).toEqual([4, b.inFeatures]);
      expect(l.loraB.get('default')!.weight.shape).toEqual([b.outFeatures, 4]);
      expect(l.loraA.get('default')!.weight.dtype).toBe('f32');
    }
    expect([...(p.tuner.adapterConfigJson('default').json.target_modules as string[])].sort()).toEqual(
      layers.map(([k]) => k).sort());
    p.dispose();
    const p2 = wrapWithLora(await quantized(), { r: 4, targetModules: ['q_proj', 'down_proj'] });
    expect(loraLayers(p2).map(([k]) => k)).toEqual(['model.layers.0.self_attn.q_proj', 'model.layers.0.mlp.down_proj',
      'model.layers.1.self_attn.q_proj', 'model.layers.1.mlp.down_proj']);
    p2.dispose();
  });

  test.each([
    ['all-linear, f32 compute dtype', 'all-linear', 'f32'],
    ['q_proj/v_proj, bf16 compute dtype', ['q_proj', 'v_proj'], 'bf16'],
  ] as const)('fused model = composed model: logits, loss and every LoRA gradient (%s)', async (_, targets, cd) => {
    const p = wrapWithLora(await quantized(cd), { r: 8, alpha: 16, dropout: 0.1, targetModules: targets as string | string[] });
    randomizeAdapters(p, 7);
    p.model.train();
    const run = (fused: boolean) => {
      setFused(p, fused);
      setDropoutSeed(1234);
      const out = p.forward({ inputIds: IDS, labels: IDS });
      out.loss!.backward();
      const grads = new Map<string, Float32Array>();
      for (const [n, t] of p.trainableParameters()) { grads.set(n, t.grad!.toFloat32Array()); t.zeroGrad(); }
      const r = { logits: out.logits.toFloat32Array(), loss: out.loss!.item(), grads };
      out.logits.dispose(); out.loss!.dispose();
      return r;
    };
    const calls = countNativeCalls(() => run(true));
    const f = calls.result;
    // the fused path is one native call per LoRA layer each way, reading the 4-bit state
    expect(calls.forward).toBe(loraLayers(p).length);
    expect(calls.backward).toBe(loraLayers(p).length);
    expect(calls.stateArgs).toBe(2 * loraLayers(p).length);
    const u = run(false);
    expect(maxAbs(f.logits, u.logits) / Math.max(1, maxAbsOf(u.logits))).toBeLessThan(2e-5);
    expect(Math.abs(f.loss - u.loss)).toBeLessThan(1e-5);
    expect(f.grads.size).toBe(u.grads.size);
    expect(f.grads.size).toBeGreaterThan(0);
    for (const [n, g] of u.grads) {
      const e = maxAbs(f.grads.get(n)!, g) / Math.max(1e-3, maxAbsOf(g));
      if (e > 1e-4) throw new Error(`${n}: fused vs composed gradient differs by ${e}`);
    }
    // the base is frozen and gets no gradient
    for (const [n, t] of p.namedParameters()) {
      if (n.includes('lora_')) continue;
      expect(t.requiresGrad).toBe(false);
      expect(t.grad).toBeNull();
    }
    p.dispose();
  });

  test('a layer whose base is Linear4bit: dX through the model input of the layer equals the composition', async () => {
    const p = wrapWithLora(await quantized(), { r: 4, targetModules: ['gate_proj'] });
    randomizeAdapters(p, 9);
    const l = p.model.getSubmodule('model.layers.0.mlp.gate_proj') as LoraLinear;
    const base = l.baseLayer as Linear4bit;
    const run = (fused: boolean) => {
      l.fused = fused;
      const x = randomF32([3, 5, base.inFeatures], 71).requiresGrad_();
      const y = l.forward(x);
      y.backward(randomF32([3, 5, base.outFeatures], 72));
      const { A, B } = l.weightsOf('default');
      const r = { y: y.toFloat32Array(), dx: x.grad!.toFloat32Array(), dA: A.grad!.toFloat32Array(), dB: B.grad!.toFloat32Array() };
      A.zeroGrad(); B.zeroGrad(); x.zeroGrad(); x.dispose(); y.dispose();
      return r;
    };
    const f = run(true), u = run(false);
    // u is literally Linear4bit.forward(x) + s·(x·Aᵀ)·Bᵀ
    for (const k of ['y', 'dx', 'dA', 'dB'] as const) expect(maxAbs(f[k], u[k]) / Math.max(1, maxAbsOf(u[k]))).toBeLessThan(2e-6);
    expect(base.weight.grad).toBeNull();
    p.dispose();
  });

  test('printTrainableParameters counts like PEFT: a 4-bit weight counts x2', async () => {
    const m = await quantized();
    let all0 = 0;
    for (const [, t] of m.namedParameters()) all0 += t.numel;
    // packed u8 weights hold 2 parameters per byte: PEFT counts Params4bit numel·2
    let packed = 0;
    for (const [, mod] of m.namedModules()) if (mod instanceof Linear4bit) packed += mod.weight.numel;
    const logical = 2 * (64 * 64 + 32 * 64 + 32 * 64 + 64 * 64 + 128 * 64 + 128 * 64 + 64 * 128);
    expect(packed * 2).toBe(logical);
    const p = wrapWithLora(m, { r: 4, targetModules: ['q_proj', 'v_proj'] });
    const trainable = 2 * ((4 * 64 + 64 * 4) + (4 * 64 + 32 * 4));
    expect(p.getNbTrainableParameters()).toEqual([trainable, all0 + packed + trainable]);
    expect(p.printTrainableParameters({ silent: true })).toBe(formatTrainableParameters(trainable, all0 + packed + trainable));
    // the same total as the float model
    const fm = await loadModel(LLAMA);
    const pf = wrapWithLora(fm, { r: 4, targetModules: ['q_proj', 'v_proj'] });
    expect(p.getNbTrainableParameters()).toEqual(pf.getNbTrainableParameters());
    p.dispose(); pf.dispose();
  });

  test('saveAdapter -> loadAdapter onto a freshly quantized model reproduces the logits', async () => {
    const p = wrapWithLora(await quantized('bf16'), { r: 4, alpha: 8, targetModules: 'all-linear' });
    randomizeAdapters(p, 11);
    p.model.eval();
    const y1 = noGrad(() => p.forward({ inputIds: IDS }).logits);
    const dir = path.join(tmp, 'adapter');
    await p.saveAdapter(dir);
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'));
    expect(cfg).toMatchObject({ peft_type: 'LORA', r: 4, lora_alpha: 8 });
    const p2 = await loadAdapter(await quantized('bf16'), dir);
    expect(loraLayers(p2)).toHaveLength(14);
    const y2 = noGrad(() => p2.forward({ inputIds: IDS }).logits);
    expect(maxAbs(y1.toFloat32Array(), y2.toFloat32Array())).toBeLessThanOrEqual(1e-6);
    // and the adapter loads onto the float model too (same names and shapes)
    const p3 = await loadAdapter(await loadModel(LLAMA), dir);
    expect(loraLayers(p3)).toHaveLength(14);
    for (const t of [y1, y2]) t.dispose();
    p.dispose(); p2.dispose(); p3.dispose();
  });

  test('mergeQuantized equals the LoRA-over-NF4 logits (within 1e-5)', async () => {
    for (const cd of ['f32', 'bf16'] as const) {
      const p = wrapWithLora(await quantized(cd), { r: 8, alpha: 16, targetModules: 'all-linear' });
      randomizeAdapters(p, 13);
      p.model.eval();
      const y1 = noGrad(() => p.forward({ inputIds: IDS }).logits);
      const dir = path.join(tmp, `merged-${cd}`);
      mergeQuantized(p, dir, { dtype: 'f32' });
      const fm = await loadModel(dir);
      expect(fm.namedModules().some(([, m]) => m instanceof Linear4bit)).toBe(false);
      const y2 = noGrad(() => fm.forward({ inputIds: IDS }).logits);
      const e = maxAbs(y1.toFloat32Array(), y2.toFloat32Array());
      expect(e).toBeLessThanOrEqual(1e-5);
      for (const t of [y1, y2]) t.dispose();
      p.dispose(); fm.dispose();
    }
  });

  test('a few AdamW steps lower the loss; only the adapters change', async () => {
    const p = wrapWithLora(await quantized('bf16'), { r: 8, alpha: 16, dropout: 0.05, targetModules: 'all-linear' });
    p.model.train();
    const params = p.trainableParameters();
    expect(params.every(([n]) => n.includes('lora_'))).toBe(true);
    const packed = (p.model.getSubmodule('model.layers.0.self_attn.q_proj.base_layer') as Linear4bit).weight;
    const before = Array.from(packed.toTypedArray() as Uint8Array);
    const opt = new AdamW(params, { lr: 1e-2, weightDecay: 0 });
    const losses: number[] = [];
    for (let i = 0; i < 6; i++) {
      const out = p.forward({ inputIds: IDS, labels: IDS });
      losses.push(out.loss!.item());
      out.loss!.backward();
      opt.step(); opt.zeroGrad();
      out.logits.dispose(); out.loss!.dispose();
    }
    expect(losses[losses.length - 1]).toBeLessThan(losses[0] - 0.05);
    expect(Array.from(packed.toTypedArray() as Uint8Array)).toEqual(before);
    opt.dispose();
    p.dispose();
  });

  test('DoRA over a 4-bit base: magnitude from the dequantized weight; forward runs and trains', async () => {
    const p = wrapWithLora(await quantized('f32'), { r: 4, targetModules: ['q_proj'], useDora: true });
    const l = p.model.getSubmodule('model.layers.0.self_attn.q_proj') as LoraLinear;
    const wd = (l.baseLayer as Linear4bit).dequantizeWeight('f32');
    const norms = noGrad(() => ops.sqrt(ops.sum(ops.square(wd), 1)));
    // B = 0 at init: m = ‖W‖ row-wise over the dequantized weight
    expect(maxAbs(l.magnitude.get('default')!.weight.toFloat32Array(), norms.toFloat32Array())).toBeLessThan(1e-5);
    randomizeAdapters(p, 17);
    p.model.train();
    const out = p.forward({ inputIds: IDS, labels: IDS });
    out.loss!.backward();
    expect(l.magnitude.get('default')!.weight.grad).not.toBeNull();
    for (const t of [wd, norms, out.logits, out.loss!]) t.dispose();
    p.dispose();
  });

  test('merge() / mergeAndUnload() throw a clear error pointing to mergeQuantized; PiSSA / OLoRA need a float base', async () => {
    const p = wrapWithLora(await quantized(), { r: 4, targetModules: ['q_proj', 'v_proj'] });
    randomizeAdapters(p, 19);
    const y0 = noGrad(() => p.forward({ inputIds: IDS }).logits);
    expect(() => p.merge()).toThrow(/mergeQuantized/);
    expect(() => p.mergeAndUnload()).toThrow(/4-bit \(nf4\) base weight.*mergeQuantized/);
    const l = p.model.getSubmodule('model.layers.0.self_attn.q_proj') as LoraLinear;
    expect(() => l.merge()).toThrow(/mergeQuantized/);
    expect(() => l.unmerge()).toThrow(/mergeQuantized/);
    // nothing was changed
    expect(loraLayers(p).every(([, x]) => !x.merged)).toBe(true);
    const y1 = noGrad(() => p.forward({ inputIds: IDS }).logits);
    expect(maxAbs(y0.toFloat32Array(), y1.toFloat32Array())).toBe(0);
    for (const t of [y0, y1]) t.dispose();
    p.dispose();
    for (const init of ['pissa', 'olora'] as const) {
      const m = await quantized();
      expect(() => wrapWithLora(m, { r: 4, targetModules: ['q_proj'], init })).toThrow(/4-bit.*quantize/);
      m.dispose();
    }
  });

  test('a linear op on the dequantized weight matches the base the fused path reads', async () => {
    // sanity: Linear4bit.forward == x·dequantize(W)ᵀ (what "composed" means above)
    const m = await quantized('bf16');
    const b = m.getSubmodule('model.layers.1.mlp.up_proj') as Linear4bit;
    const x = randomF32([4, b.inFeatures], 81);
    const wd = b.dequantizeWeight('f32');
    const y1 = noGrad(() => b.forward(x)), y2 = noGrad(() => linear(x, wd));
    expect(maxAbs(y1.toFloat32Array(), y2.toFloat32Array())).toBeLessThan(1e-5);
    for (const t of [x, wd, y1, y2]) t.dispose();
    m.dispose();
  });
});
