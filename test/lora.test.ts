/**
 * LoRA layers and wrapWithLora: gradient checks (LoRA and DoRA, f64), fused vs unfused kernels,
 * initialisations (default, gaussian, PiSSA, OLoRA), rsLoRA, target selection (list, regex,
 * all-linear, layersToTransform, rank/alpha patterns), bias modes, modules_to_save, GPT-2 Conv1D,
 * embeddings, DoRA merge, printTrainableParameters, a frozen base.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { readHeader } from '../lib/io/safetensors';
import { loadModel } from '../lib/models';
import { Conv1D, Embedding } from '../lib/models/layers';
import { Linear } from '../lib/nn/linear';
import * as ops from '../lib/ops';
import { loraLinear, loraLinearUnfused } from '../lib/ops/lora';
import {
  DoraMagnitude, formatTrainableParameters, householderQr, loadAdapter, LoraEmbedding, LoraLinear, ModulesToSaveWrapper,
  PeftModel, topSvd, wrapWithLora,
} from '../lib/peft';
import { noGrad } from '../lib/tensor/autograd';
import { Tensor } from '../lib/tensor/tensor';
import { gradcheck, lcg, randomF64 } from './helpers/gradcheck';

const FIX = path.join(__dirname, 'fixtures', 'hf', 'models');
const IDS = [[1, 5, 9, 200, 33, 7, 400, 12], [3, 3, 80, 64, 511, 2, 0, 17]];

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
/** Fill every adapter tensor of a PeftModel with small random values (so B ≠ 0 and all paths matter). */
function randomizeAdapters(peft: PeftModel, seed: number, scale = 0.1): void {
  let s = seed;
  for (const [n, t] of peft.namedParameters()) {
    if (!n.includes('lora_')) continue;
    const r = randomF32([...t.shape], s++, scale);
    const v = n.includes('lora_magnitude_vector') ? ops.add(t, r) : r;
    (require('../lib/native').native).copy_(t.native, v.native);
    r.dispose(); if (v !== r) v.dispose();
  }
}
/** A Linear in f64 with given weights. */
function linearF64(inF: number, outF: number, seed: number, bias: boolean): Linear {
  const l = new Linear(inF, outF, { bias, dtype: 'f64' });
  l.registerParameter('weight', randomF64([outF, inF], seed), false);
  l.registerParameter('bias', bias ? randomF64([outF], seed + 1) : null, false);
  return l;
}

describe('loraLinear op', () => {
  test.each([
    ['plain', false, false, 0],
    ['bias + dropout', true, false, 0.3],
    ['Conv1D weight [in,out]', true, true, 0.25],
  ])('gradcheck in f64 (%s)', (_, withBias, wt, p) => {
    const [inF, outF, r] = [5, 4, 3];
    const W = randomF64(wt ? [inF, outF] : [outF, inF], 1);
    const x = randomF64([2, 3, inF], 2).requiresGrad_();
    const A = randomF64([r, inF], 3).requiresGrad_();
    const B = randomF64([outF, r], 4).requiresGrad_();
    const b = withBias ? randomF64([outF], 5).requiresGrad_() : null;
    const inputs = b ? [x, A, B, b] : [x, A, B];
    gradcheck((xs) => loraLinear(xs[0], W, b ? xs[3] : null, xs[1], xs[2], { scale: 0.7, dropout: p, seed: 11, weightTransposed: wt }), inputs);
    // the f64 unfused composition gives the same values
    const y1 = noGrad(() => loraLinear(x, W, b, A, B, { scale: 0.7, dropout: p, seed: 11, weightTransposed: wt }));
    const y2 = noGrad(() => loraLinearUnfused(x, W, b, A, B, 0.7, p, 11, wt));
    expect(maxAbs(y1.toFloat64Array(), y2.toFloat64Array())).toBeLessThan(1e-12);
  });

  test.each([
    ['f32 base', 'f32', false, 0],
    ['f32 base, bias, dropout', 'f32', false, 0.1],
    ['f32 Conv1D base', 'f32', true, 0.1],
    ['bf16 base', 'bf16', false, 0],
  ] as const)('fused equals unfused: forward, dX, dA, dB, dbias (%s)', (_, wdt, wt, p) => {
    const [T, inF, outF, r] = [37, 96, 80, 8];
    const W0 = randomF32(wt ? [inF, outF] : [outF, inF], 21, 0.2);
    const W = W0.to(wdt);
    const xs = randomF32([T, inF], 22).to(wdt);
    const run = (fused: boolean) => {
      const x = xs.clone().requiresGrad_();
      const A = randomF32([r, inF], 23, 0.1).requiresGrad_();
      const B = randomF32([outF, r], 24, 0.1).requiresGrad_();
      const b = randomF32([outF], 25).requiresGrad_();
      const y = fused ? loraLinear(x, W, b, A, B, { scale: 2, dropout: p, seed: 99, weightTransposed: wt })
        : loraLinearUnfused(x, W, b, A, B, 2, p, 99, wt);
      const g = randomF32([T, outF], 26);
      y.backward(g.to(y.dtype));
      return { y: y.toFloat32Array(), dx: x.grad!.toFloat32Array(), dA: A.grad!.toFloat32Array(), dB: B.grad!.toFloat32Array(), db: b.grad!.toFloat32Array() };
    };
    const f = run(true), u = run(false);
    const tol = wdt === 'bf16' ? 2e-2 : 1e-5;
    for (const k of ['y', 'dx', 'dA', 'dB', 'db'] as const) {
      expect(maxAbs(f[k], u[k]) / Math.max(1, maxAbsOf(u[k]))).toBeLessThan(tol);
    }
  });

  test('the frozen base weight gets no gradient and no x is needed for dW', () => {
    const W = randomF32([6, 5], 1);
    const x = randomF32([4, 5], 2).requiresGrad_();
    const A = randomF32([2, 5], 3).requiresGrad_();
    const B = randomF32([6, 2], 4).requiresGrad_();
    ops.sum(loraLinear(x, W, null, A, B, { scale: 1 })).backward();
    expect(W.grad).toBeNull();
    expect(x.grad && A.grad && B.grad).toBeTruthy();
  });

  test('shape errors name the operand', () => {
    const W = randomF32([6, 5], 1);
    expect(() => loraLinear(randomF32([4, 5], 2), W, null, randomF32([2, 4], 3), randomF32([6, 2], 4), { scale: 1 })).toThrow(/lora_A/);
    expect(() => loraLinear(randomF32([4, 7], 2), W, null, randomF32([2, 5], 3), randomF32([6, 2], 4), { scale: 1 })).toThrow(/does not match base weight/);
  });
});

describe('LoRA and DoRA layers', () => {
  test('LoraLinear gradcheck in f64 through the layer (with bias, dropout in training)', () => {
    const l = new LoraLinear(linearF64(5, 4, 1, true));
    l.updateLayer('default', { r: 3, alpha: 6, dropout: 0, init: 'none', useRslora: false, useDora: false, loraBias: false, seed: 0 });
    const A = randomF64([3, 5], 2).requiresGrad_(), B = randomF64([4, 3], 3).requiresGrad_();
    l.loraA.get('default')!.registerParameter('weight', A);
    l.loraB.get('default')!.registerParameter('weight', B);
    const x = randomF64([2, 3, 5], 4).requiresGrad_();
    gradcheck(([t]) => l.forward(t), [x, A, B]);
    // one active plain adapter goes through the fused op
    expect(l.forward(x).gradFn!.name).toBe('loraLinear');
  });

  test.each([[false], [true]])('DoRA gradcheck in f64 (Conv1D base: %s)', (conv) => {
    const [inF, outF, r, s] = [5, 4, 3, 2];
    let base: Linear | Conv1D;
    if (conv) {
      base = new Conv1D(inF, outF, 'f64');
      base.registerParameter('weight', randomF64([inF, outF], 1), false);
      base.registerParameter('bias', randomF64([outF], 9), false);
    } else {
      base = linearF64(inF, outF, 1, true);
    }
    const l = new LoraLinear(base);
    l.updateLayer('default', { r, alpha: s * r, dropout: 0, init: 'none', useRslora: false, useDora: true, loraBias: false, seed: 0 });
    const A = randomF64([r, inF], 2).requiresGrad_(), B = randomF64([outF, r], 3).requiresGrad_();
    l.loraA.get('default')!.registerParameter('weight', A);
    l.loraB.get('default')!.registerParameter('weight', B);
    const m = noGrad(() => ops.add(l.weightNorm('default', s), 0.3)).requiresGrad_();
    (l.magnitude.get('default') as DoraMagnitude).registerParameter('weight', m);
    const x = randomF64([2, 3, inF], 4).requiresGrad_();
    // x and m: the detached norm does not depend on them, so finite differences see the same function
    gradcheck(([t]) => l.forward(t), [x, m]);
    // A and B: PEFT detaches ‖W + s·B·A‖; check against the formula with that norm held constant
    const Wt = conv ? (base as Conv1D).weight.transpose(0, 1).contiguous() : (base as Linear).weight;
    const bias = (base as Linear).bias!;
    const wn = l.weightNorm('default', s);
    const ref = ([xx, AA, BB, mm]: Tensor[]) => {
      const baseOut = ops.linear(xx, Wt, null);
      const mns = ops.div(mm, wn);
      const lora = ops.linear(ops.linear(xx, AA), BB);
      return ops.add(ops.add(baseOut, bias), ops.add(ops.mul(ops.sub(mns, 1), baseOut), ops.mul(ops.mul(mns, lora), s)));
    };
    gradcheck(ref, [x, A, B, m]);
    const grads = (f: () => Tensor) => {
      for (const t of [x, A, B, m]) t.zeroGrad();
      ops.sum(ops.mul(f(), randomF64([2, 3, outF], 7))).backward();
      return [x, A, B, m].map((t) => t.grad!.toFloat64Array());
    };
    const g1 = grads(() => l.forward(x)), g2 = grads(() => ref([x, A, B, m]));
    for (let i = 0; i < 4; i++) expect(maxAbs(g1[i], g2[i])).toBeLessThan(1e-12);
    const y1 = noGrad(() => l.forward(x)), y2 = noGrad(() => ref([x, A, B, m]));
    expect(maxAbs(y1.toFloat64Array(), y2.toFloat64Array())).toBeLessThan(1e-12);
  });

  test('DoRA magnitude is initialised to the row norms of W; merge/unmerge is exact', () => {
    const base = linearF64(6, 5, 1, true);
    const l = new LoraLinear(base);
    l.updateLayer('default', { r: 2, alpha: 4, dropout: 0, init: 'default', useRslora: false, useDora: true, loraBias: false, seed: 3 });
    const m = l.magnitude.get('default')!.weight.toFloat64Array();
    const W = base.weight.toFloat64Array();
    for (let i = 0; i < 5; i++) {
      let s = 0; for (let j = 0; j < 6; j++) s += W[i * 6 + j] ** 2;
      expect(Math.abs(m[i] - Math.sqrt(s))).toBeLessThan(1e-12);
    }
    noGrad(() => {
      const B = l.loraB.get('default')!.weight;
      (require('../lib/native').native).copy_(B.native, randomF64([5, 2], 4).native);
      const mm = l.magnitude.get('default')!.weight;
      const m2 = ops.add(mm, 0.2);
      (require('../lib/native').native).copy_(mm.native, m2.native);
    });
    const x = randomF64([3, 6], 5);
    const y0 = noGrad(() => l.forward(x)).toFloat64Array();
    l.merge();
    expect(l.merged).toBe(true);
    const y1 = noGrad(() => l.forward(x)).toFloat64Array();
    expect(maxAbs(y0, y1)).toBeLessThan(1e-12);
    l.unmerge();
    expect(maxAbs(base.weight.toFloat64Array(), W)).toBeLessThan(1e-12);
  });

  test('init: default is kaiming-uniform(a=√5) for A and zeros for B; gaussian is N(0, 1/r)', () => {
    const base = new Linear(512, 64, { bias: false });
    const l = new LoraLinear(base);
    l.updateLayer('default', { r: 16, alpha: 16, dropout: 0, init: 'default', useRslora: false, useDora: false, loraBias: false, seed: 7 });
    const a = l.loraA.get('default')!.weight.toFloat64Array();
    const bound = 1 / Math.sqrt(512);
    expect(Math.max(...a)).toBeLessThanOrEqual(bound); expect(Math.min(...a)).toBeGreaterThanOrEqual(-bound);
    const mean = a.reduce((s, v) => s + v, 0) / a.length, v = a.reduce((s, x) => s + (x - mean) ** 2, 0) / a.length;
    expect(Math.abs(mean)).toBeLessThan(0.05 * bound);
    expect(Math.abs(v / (bound * bound / 3) - 1)).toBeLessThan(0.05);
    expect(maxAbsOf(l.loraB.get('default')!.weight.toFloat64Array())).toBe(0);
    l.updateLayer('g', { r: 8, alpha: 16, dropout: 0, init: 'gaussian', useRslora: false, useDora: false, loraBias: false, seed: 8 });
    const g = l.loraA.get('g')!.weight.toFloat64Array();
    const gm = g.reduce((s, x) => s + x, 0) / g.length, gv = g.reduce((s, x) => s + (x - gm) ** 2, 0) / g.length;
    expect(Math.abs(Math.sqrt(gv) * 8 - 1)).toBeLessThan(0.05);
    expect(maxAbsOf(l.loraB.get('g')!.weight.toFloat64Array())).toBe(0);
    // a fresh default adapter leaves the layer's output unchanged (B = 0)
    const x = randomF32([3, 512], 1);
    expect(maxAbs(noGrad(() => l.forward(x)).toFloat32Array(), noGrad(() => base.forward(x)).toFloat32Array())).toBe(0);
  });

  test('rsLoRA scales by alpha/√r (plain LoRA by alpha/r)', () => {
    const mk = (rs: boolean) => {
      const l = new LoraLinear(linearF64(6, 5, 1, false));
      l.updateLayer('default', { r: 4, alpha: 8, dropout: 0, init: 'gaussian', useRslora: rs, useDora: false, loraBias: false, seed: 2 });
      noGrad(() => (require('../lib/native').native).copy_(l.loraB.get('default')!.weight.native, randomF64([5, 4], 3).native));
      return l;
    };
    const a = mk(false), b = mk(true);
    expect(a.scaling.get('default')).toBe(2);
    expect(b.scaling.get('default')).toBe(4);
    const x = randomF64([3, 6], 9);
    const base = noGrad(() => ops.linear(x, (a.baseLayer as Linear).weight)).toFloat64Array();
    const ya = noGrad(() => a.forward(x)).toFloat64Array(), yb = noGrad(() => b.forward(x)).toFloat64Array();
    for (let i = 0; i < ya.length; i++) expect(Math.abs((yb[i] - base[i]) - 2 * (ya[i] - base[i]))).toBeLessThan(1e-12);
  });

  test('PiSSA: top-r SVD factors, W_res + s·B·A = W; OLoRA: W = QR, B = Q_r, A = R_r', () => {
    for (const init of ['pissa', 'olora'] as const) {
      const base = linearF64(12, 9, 3, false);
      const W = base.weight.toFloat64Array();
      const l = new LoraLinear(base);
      l.updateLayer('default', { r: 3, alpha: 6, dropout: 0, init, useRslora: false, useDora: false, loraBias: false, seed: 0 });
      const A = l.loraA.get('default')!.weight.toFloat64Array(), B = l.loraB.get('default')!.weight.toFloat64Array();
      const Wr = base.weight.toFloat64Array();
      const s = 2;
      for (let i = 0; i < 9; i++) {
        for (let j = 0; j < 12; j++) {
          let d = 0; for (let k = 0; k < 3; k++) d += B[i * 3 + k] * A[k * 12 + j];
          expect(Math.abs(Wr[i * 12 + j] + s * d - W[i * 12 + j])).toBeLessThan(1e-6);
        }
      }
      if (init === 'olora') {
        for (let k = 0; k < 3; k++) for (let j = 0; j < k; j++) expect(A[k * 12 + j]).toBe(0);  // R upper triangular
        for (let p = 0; p < 3; p++) for (let q = 0; q < 3; q++) {
          let d = 0; for (let i = 0; i < 9; i++) d += B[i * 3 + p] * B[i * 3 + q];
          expect(Math.abs(d - (p === q ? 1 : 0))).toBeLessThan(1e-6);
        }
      }
    }
    // topSvd on a matrix with a known spectrum; QR sign convention of LAPACK (R diagonal −sign(a)·‖a‖)
    const m = 7, n = 5;
    const M = new Float64Array(m * n);
    const r = lcg(4);
    for (let i = 0; i < M.length; i++) M[i] = r();
    const { U, S, V } = topSvd(M, m, n, 2);
    for (let i = 0; i < m; i++) for (let k = 0; k < 2; k++) {
      let d = 0; for (let j = 0; j < n; j++) d += M[i * n + j] * V[j * 2 + k];
      expect(Math.abs(d - S[k] * U[i * 2 + k])).toBeLessThan(1e-9);
    }
    expect(S[0]).toBeGreaterThanOrEqual(S[1]);
    const { R } = householderQr(M, m, n, 2);
    expect(Math.sign(R[0])).toBe(-Math.sign(M[0]));
  });
});

describe('wrapWithLora on the fixture models', () => {
  const llama = path.join(FIX, 'llama');

  test('targetModules: list, regex, all-linear, layersToTransform; default targets', async () => {
    const keys = (p: PeftModel) => p.model.namedModules().filter(([, m]) => m instanceof LoraLinear).map(([k]) => k);
    let p = wrapWithLora(await loadModel(llama), { targetModules: 'all-linear' });
    expect(keys(p).length).toBe(14);
    expect(keys(p)).not.toContain('lm_head');
    expect(p.tuner.adapterConfigJson('default').json.target_modules).toHaveLength(14);
    p.dispose();
    p = wrapWithLora(await loadModel(llama), { targetModules: /model\.layers\.0\.self_attn\.(q|v)_proj/ });
    expect(keys(p)).toEqual(['model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.v_proj']);
    expect(p.tuner.adapterConfigJson('default').json.target_modules).toBe('model\\.layers\\.0\\.self_attn\\.(q|v)_proj');
    p.dispose();
    p = wrapWithLora(await loadModel(llama), { targetModules: ['q_proj', 'down_proj'], layersToTransform: [1] });
    expect(keys(p)).toEqual(['model.layers.1.self_attn.q_proj', 'model.layers.1.mlp.down_proj']);
    p.dispose();
    p = wrapWithLora(await loadModel(llama), { layersToTransform: 0, layersPattern: 'layers' });
    expect(keys(p)).toEqual(['model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.v_proj']);
    p.dispose();
    p = wrapWithLora(await loadModel(llama), { targetModules: ['q_proj', 'v_proj'], excludeModules: ['model.layers.1.self_attn.v_proj'] });
    expect(keys(p)).toHaveLength(3);
    p.dispose();
    await expect((async () => wrapWithLora(await loadModel(llama), { targetModules: ['nope'] }))()).rejects.toThrow(/not found/);
    await expect((async () => wrapWithLora(await loadModel(llama), { targetModules: ['mlp'] }))()).rejects.toThrow(/not supported/);
  });

  test('rankPattern / alphaPattern', async () => {
    const p = wrapWithLora(await loadModel(llama), {
      r: 4, alpha: 8, targetModules: ['q_proj', 'v_proj'],
      rankPattern: { q_proj: 8 }, alphaPattern: ['layers\\.1\\.self_attn\\.v_proj'].reduce((o, k) => ({ ...o, [k]: 32 }), {}),
    });
    const q0 = p.model.getSubmodule('model.layers.0.self_attn.q_proj') as LoraLinear;
    const v0 = p.model.getSubmodule('model.layers.0.self_attn.v_proj') as LoraLinear;
    const v1 = p.model.getSubmodule('model.layers.1.self_attn.v_proj') as LoraLinear;
    expect(q0.r.get('default')).toBe(8); expect(q0.scaling.get('default')).toBe(1);
    expect(q0.loraA.get('default')!.weight.shape).toEqual([8, 64]);
    expect(v0.r.get('default')).toBe(4); expect(v0.scaling.get('default')).toBe(2);
    expect(v1.r.get('default')).toBe(4); expect(v1.scaling.get('default')).toBe(8);
    // saved and reloaded with the patterns
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-lora-'));
    await p.saveAdapter(dir);
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'));
    expect(cfg.rank_pattern).toEqual({ q_proj: 8 });
    const p2 = await loadAdapter(await loadModel(llama), dir);
    expect((p2.model.getSubmodule('model.layers.1.self_attn.q_proj') as LoraLinear).r.get('default')).toBe(8);
    expect((p2.model.getSubmodule('model.layers.1.self_attn.v_proj') as LoraLinear).scaling.get('default')).toBe(8);
    p.dispose(); p2.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('printTrainableParameters prints PEFT\'s line; the base is frozen and gets no gradient', async () => {
    expect(formatTrainableParameters(1572864, 1101620224)).toBe('trainable params: 1,572,864 || all params: 1,101,620,224 || trainable%: 0.1428');
    const model = await loadModel(llama);
    const all0 = model.numParameters();
    const p = wrapWithLora(model, { r: 4, targetModules: ['q_proj', 'v_proj'] });
    // q: 64→64, v: 64→32 per layer; A [4,64] + B [out,4]
    const trainable = 2 * ((4 * 64 + 64 * 4) + (4 * 64 + 32 * 4));
    const line = p.printTrainableParameters({ silent: true });
    expect(line).toBe(formatTrainableParameters(trainable, all0 + trainable));
    expect(line.startsWith(`trainable params: ${trainable.toLocaleString('en-US')} || all params: `)).toBe(true);
    randomizeAdapters(p, 5);
    p.model.train();
    const out = p.forward({ inputIds: IDS, labels: IDS });
    out.loss!.backward();
    for (const [n, t] of p.namedParameters()) {
      if (n.includes('lora_')) expect(t.grad).not.toBeNull();
      else { expect(t.requiresGrad).toBe(false); expect(t.grad).toBeNull(); }
    }
    p.dispose();
  });

  test('modulesToSave: a trainable copy, saved under the module\'s own name, restored on load', async () => {
    const p = wrapWithLora(await loadModel(llama), { targetModules: ['q_proj'], modulesToSave: ['lm_head'], seed: 3 });
    const names = p.trainableParameters().map(([n]) => n);
    expect(names).toContain('base_model.model.lm_head.modules_to_save.default.weight');
    expect(p.getTensor('base_model.model.lm_head.original_module.weight')!.requiresGrad).toBe(false);
    expect(p.model.getSubmodule('lm_head')).toBeInstanceOf(ModulesToSaveWrapper);
    // train the copy a bit: change its weights
    const w = p.getTensor('base_model.model.lm_head.modules_to_save.default.weight')!;
    noGrad(() => { const n = ops.mul(w, 1.5); (require('../lib/native').native).copy_(w.native, n.native); });
    const y = noGrad(() => p.forward({ inputIds: IDS }).logits.toFloat32Array());
    const yOff = p.disableAdapter(() => noGrad(() => p.forward({ inputIds: IDS }).logits.toFloat32Array()));
    expect(maxAbs(y, yOff)).toBeGreaterThan(1e-3);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-lora-'));
    await p.saveAdapter(dir);
    const keys = [...readHeader(path.join(dir, 'adapter_model.safetensors')).tensors.keys()];
    expect(keys).toContain('base_model.model.lm_head.weight');
    expect(keys.filter((k) => k.includes('modules_to_save') || k.includes('original_module'))).toEqual([]);
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'));
    expect(cfg.modules_to_save).toEqual(['lm_head']);
    const p2 = await loadAdapter(await loadModel(llama), dir);
    expect(maxAbs(noGrad(() => p2.forward({ inputIds: IDS }).logits.toFloat32Array()), y)).toBe(0);
    const plain = p2.mergeAndUnload();
    expect(plain.getSubmodule('lm_head')).toBeInstanceOf(Linear);
    expect(maxAbs(noGrad(() => plain.forward({ inputIds: IDS }).logits.toFloat32Array()), y)).toBeLessThan(1e-5);
    p.dispose(); plain.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('bias modes: all / lora_only / none', async () => {
    const gpt2 = path.join(FIX, 'gpt2');
    const trainableBiases = (p: PeftModel) => p.trainableParameters().map(([n]) => n).filter((n) => n.endsWith('bias'));
    let p = wrapWithLora(await loadModel(gpt2), { targetModules: ['c_attn'], bias: 'all' });
    const all = trainableBiases(p);
    expect(all).toContain('base_model.model.transformer.h.0.attn.c_attn.base_layer.bias');
    expect(all).toContain('base_model.model.transformer.h.0.mlp.c_fc.bias');
    expect(all).toContain('base_model.model.transformer.ln_f.bias');
    const sd = p.tuner.adapterStateDict('default');
    expect([...sd.keys()]).toContain('transformer.h.1.ln_2.bias');
    p.dispose();
    p = wrapWithLora(await loadModel(gpt2), { targetModules: ['c_attn'], bias: 'lora_only' });
    expect(trainableBiases(p).sort()).toEqual(['base_model.model.transformer.h.0.attn.c_attn.base_layer.bias', 'base_model.model.transformer.h.1.attn.c_attn.base_layer.bias']);
    p.dispose();
    p = wrapWithLora(await loadModel(gpt2), { targetModules: ['c_attn'] });
    expect(trainableBiases(p)).toEqual([]);
    p.dispose();
  });

  test('GPT-2 Conv1D (fan_in_fan_out): forward = merged forward; LoRA and DoRA', async () => {
    for (const useDora of [false, true]) {
      const p = wrapWithLora(await loadModel(path.join(FIX, 'gpt2')), { targetModules: ['c_attn', 'c_fc'], r: 4, alpha: 8, useDora, seed: 1 });
      const l = p.model.getSubmodule('transformer.h.0.attn.c_attn') as LoraLinear;
      expect(l.fanInFanOut).toBe(true);
      expect(p.tuner.adapterConfigJson('default').json.fan_in_fan_out).toBe(true);  // as PEFT rewrites it
      expect(l.loraA.get('default')!.weight.shape).toEqual([4, 64]);
      expect(l.loraB.get('default')!.weight.shape).toEqual([192, 4]);
      randomizeAdapters(p, 7);
      const y0 = noGrad(() => p.forward({ inputIds: IDS }).logits.toFloat32Array());
      const yOff = p.disableAdapter(() => noGrad(() => p.forward({ inputIds: IDS }).logits.toFloat32Array()));
      expect(maxAbs(y0, yOff)).toBeGreaterThan(1e-3);
      p.merge();
      const y1 = noGrad(() => p.forward({ inputIds: IDS }).logits.toFloat32Array());
      expect(maxAbs(y0, y1)).toBeLessThan(1e-4);
      p.unmerge();
      const y2 = noGrad(() => p.forward({ inputIds: IDS }).logits.toFloat32Array());
      expect(maxAbs(y0, y2)).toBeLessThan(1e-5);
      p.dispose();
    }
  });

  test('DoRA on Llama: merged = unmerged, saves lora_magnitude_vector [out]', async () => {
    const p = wrapWithLora(await loadModel(llama), { targetModules: ['q_proj', 'v_proj', 'down_proj'], useDora: true, r: 4, alpha: 8, seed: 2 });
    randomizeAdapters(p, 3);
    const y0 = noGrad(() => p.forward({ inputIds: IDS }).logits.toFloat32Array());
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-lora-'));
    await p.saveAdapter(dir);
    const h = readHeader(path.join(dir, 'adapter_model.safetensors'));
    expect(h.tensors.get('base_model.model.model.layers.0.self_attn.v_proj.lora_magnitude_vector')!.shape).toEqual([32]);
    expect(h.tensors.get('base_model.model.model.layers.0.mlp.down_proj.lora_magnitude_vector')!.dtype).toBe('F32');
    const p2 = await loadAdapter(await loadModel(llama), dir);
    expect(maxAbs(noGrad(() => p2.forward({ inputIds: IDS }).logits.toFloat32Array()), y0)).toBe(0);
    const plain = p.mergeAndUnload();
    expect(maxAbs(noGrad(() => plain.forward({ inputIds: IDS }).logits.toFloat32Array()), y0)).toBeLessThan(1e-4);
    plain.dispose(); p2.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('LoRA on embeddings: PEFT init (A = 0, B ~ N(0,1)), names, merge', async () => {
    const p = wrapWithLora(await loadModel(llama), { targetModules: ['embed_tokens', 'q_proj'], r: 4, alpha: 8, seed: 4 });
    const e = p.model.getSubmodule('model.embed_tokens') as LoraEmbedding;
    expect(e).toBeInstanceOf(LoraEmbedding);
    expect(e.baseLayer).toBeInstanceOf(Embedding);
    const names = p.trainableParameters().map(([n]) => n);
    expect(names).toContain('base_model.model.model.embed_tokens.lora_embedding_A.default');
    expect(names).toContain('base_model.model.model.embed_tokens.lora_embedding_B.default');
    expect(maxAbsOf(e.embA.get('default')!.toFloat64Array())).toBe(0);
    expect(e.embA.get('default')!.shape).toEqual([4, 512]);
    expect(e.embB.get('default')!.shape).toEqual([64, 4]);
    randomizeAdapters(p, 9);
    const y0 = noGrad(() => p.forward({ inputIds: IDS }).logits.toFloat32Array());
    const out = p.forward({ inputIds: IDS, labels: IDS });
    out.loss!.backward();
    expect(e.embA.get('default')!.grad).not.toBeNull();
    const keys = [...p.tuner.adapterStateDict('default').keys()];
    expect(keys).toContain('model.embed_tokens.lora_embedding_A');
    p.merge();
    expect(maxAbs(noGrad(() => p.forward({ inputIds: IDS }).logits.toFloat32Array()), y0)).toBeLessThan(1e-4);
    p.dispose();
  });

  test('several adapters: setAdapter switches, only the active one trains', async () => {
    const p = wrapWithLora(await loadModel(llama), { targetModules: ['q_proj'], seed: 1 });
    const { addLoraAdapter } = await import('../lib/peft');
    addLoraAdapter(p, { adapterName: 'second', targetModules: ['q_proj'], r: 2, seed: 2 });
    randomizeAdapters(p, 11);
    expect(p.adapters).toEqual(['default', 'second']);
    expect(p.trainableParameters().every(([n]) => n.includes('.default.'))).toBe(true);
    const yA = noGrad(() => p.forward({ inputIds: IDS }).logits.toFloat32Array());
    p.setAdapter('second');
    expect(p.trainableParameters().every(([n]) => n.includes('.second.'))).toBe(true);
    const yB = noGrad(() => p.forward({ inputIds: IDS }).logits.toFloat32Array());
    expect(maxAbs(yA, yB)).toBeGreaterThan(1e-4);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-lora-'));
    await p.saveAdapter(dir);
    expect(fs.existsSync(path.join(dir, 'adapter_config.json'))).toBe(true);
    expect(fs.existsSync(path.join(dir, 'second', 'adapter_model.safetensors'))).toBe(true);
    const p2 = await loadAdapter(await loadModel(llama), path.join(dir, 'second'));
    expect(maxAbs(noGrad(() => p2.forward({ inputIds: IDS }).logits.toFloat32Array()), yB)).toBe(0);
    p.dispose(); p2.dispose();
    fs.rmSync(dir, { recursive: true, force: true });
  });
});
