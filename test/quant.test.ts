/**
 * 4-bit quantization (lib/quant, csrc/cpu/quant*): bitsandbytes-exact NF4/FP4 codes and nibble
 * order, quantization error against an independent f64 reference quantizer written here, double
 * quantization (the dynamic map re-derived here in emulated float32), the fused 4-bit GEMM against
 * dequantize-then-matmul on every ISA level, gradcheck of dX, the bitsandbytes safetensors layout,
 * loadModel(..., { quantize }), QLoRA composition, merging LoRA into a 4-bit base, and the memory
 * of a Llama-2-7B-shaped model quantized layer by layer.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { native } from '../lib/native';
import { loadModel } from '../lib/models';
import { readHeader, loadSafetensors } from '../lib/io/safetensors';
import { linear, matmul } from '../lib/ops/matmul';
import { add, mul } from '../lib/ops/elementwise';
import { sum } from '../lib/ops/reduce';
import { Tensor } from '../lib/tensor/tensor';
import { noGrad } from '../lib/tensor/autograd';
import {
  dequantize, dynamicMap, Linear4bit, linear4bit, mergeQuantized, pyFloatRepr, QuantizedTensor, quantizeNF4, quantMapOf,
  quantStateJson, saveQuantized,
} from '../lib/quant';
import { gradcheck, lcg, maxAbsDiff } from './helpers/gradcheck';

const FIX = path.join(__dirname, 'fixtures', 'hf', 'models');
// Every kernel level; setIsa caps at what the CPU has (a missing level reruns the best available).
const ISAS = ['scalar', 'avx2', 'avx512'] as const;

const NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
  -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
  0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0];
// bnb get_4bit_type('fp4'): [0, .0625, 8, 12, 4, 6, 2, 3, -0, -.0625, -8, -12, -4, -6, -2, -3] / 12 (the -0 is Python's int 0)
const FP4_RAW = [0, 0.0625, 8, 12, 4, 6, 2, 3, 0, -0.0625, -8, -12, -4, -6, -2, -3];
const FP4 = FP4_RAW.map((v) => Math.fround(v / 12));

function f32(xs: number[] | Float64Array, shape?: number[]): Tensor {
  return Tensor.fromArray(Float32Array.from(xs), { shape: shape ?? [xs.length] });
}
function bytesOf(t: Tensor): Uint8Array { return t.toTypedArray() as Uint8Array; }
function setIsa(isa: string): boolean {
  try { native.setIsa(isa); return true; } catch { return false; }
}
afterAll(() => { setIsa('avx512') || setIsa('avx2'); });

/** Independent f64 reference: per block absmax, normalised x/absmax, nearest code (exhaustive). */
function refQuantize(x: Float32Array, bs: number, code: number[]): { q: Uint8Array; absmax: Float64Array; nearTie: Uint8Array } {
  const n = x.length, nb = Math.ceil(n / bs);
  const q = new Uint8Array(n), absmax = new Float64Array(nb), nearTie = new Uint8Array(n);
  for (let b = 0; b < nb; b++) {
    let m = 0;
    for (let i = b * bs; i < Math.min(n, (b + 1) * bs); i++) m = Math.max(m, Math.abs(x[i]));
    absmax[b] = m;
    for (let i = b * bs; i < Math.min(n, (b + 1) * bs); i++) {
      const v = x[i] / m;
      let best = 0, bd = Infinity, second = Infinity;
      for (let c = 0; c < 16; c++) {
        const d = Math.abs(v - code[c]);
        if (d < bd) { second = bd; bd = d; best = c; } else if (d < second) second = d;
      }
      q[i] = best;
      if (second - bd < 1e-6) nearTie[i] = 1;
    }
  }
  return { q, absmax, nearTie };
}
function unpack(packed: Uint8Array, n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = i % 2 === 0 ? packed[i >> 1] >> 4 : packed[i >> 1] & 15;
  return out;
}

// create_dynamic_map(signed=True) re-derived with float32 rounding at every torch op.
function refDynamicMap(): Float32Array {
  const fr = Math.fround;
  const data: number[] = [];
  for (let i = 0; i < 7; i++) {
    const n = 2 ** i + 1;
    const start = fr(0.1), end = 1;
    const step = fr(fr(end - start) / (n - 1));
    const half = Math.floor(n / 2);
    const b: number[] = [];
    for (let k = 0; k < n; k++) b.push(k < half ? fr(start + fr(step * k)) : fr(end - fr(step * (n - k - 1))));
    const scale = fr(10 ** (i - 6));
    for (let k = 0; k + 1 < n; k++) {
      const mean = fr(fr(b[k] + b[k + 1]) / 2);
      const v = fr(mean * scale);
      data.push(v, -v);
    }
  }
  data.push(0, 1);
  data.sort((a, c) => a - c);
  return Float32Array.from(data);
}

describe('code tables and nibble order', () => {
  test('NF4 and FP4 quant maps are bitsandbytes\' values', () => {
    const nf4 = quantMapOf('nf4'), fp4 = quantMapOf('fp4');
    expect(Array.from(nf4.toFloat32Array())).toEqual(NF4.map(Math.fround));
    expect(Array.from(fp4.toFloat32Array())).toEqual(FP4);
    nf4.dispose(); fp4.dispose();
  });

  test('signed dynamic map = create_dynamic_map(signed=True) (float32 emulation)', () => {
    const m = dynamicMap();
    const got = m.toFloat32Array();
    const want = refDynamicMap();
    expect(got.length).toBe(256);
    expect(Array.from(got)).toEqual(Array.from(want));
    expect(got[0]).toBeCloseTo(-0.99296875, 7);
    expect(got[127]).toBe(0);
    expect(got[254]).toBeCloseTo(0.99296875, 7);
    expect(got[255]).toBe(1);
    m.dispose();
  });

  test('element 2j in the high nibble, 2j+1 in the low nibble; ties go to the lower code', () => {
    // One block of 64 with absmax 1 (x·(1/1) = x exactly): codes chosen on purpose.
    const vals = new Array(64).fill(0);
    vals[0] = 1.0; vals[1] = -1.0;               // byte 0 = 0xF0
    vals[2] = 0.0; vals[3] = NF4[8];             // byte 1 = 0x78
    vals[4] = Math.fround(0.03979014977812767);  // exactly the 7|8 midpoint -> 7 (strict >)
    vals[5] = 0.0398;                            // just above -> 8
    // The 0|1 midpoint: bnb's literal -0.8480964004993439f rounds (once, decimal -> float) to
    // 0xbf591cd9; Math.fround of the double would round twice and land one ulp away (0xbf591cd8).
    vals[6] = new Float32Array(new Uint32Array([0xbf591cd9]).buffer)[0];   // exactly the threshold -> 0
    vals[7] = -0.848;                            // -> 1
    const x = f32(vals, [8, 8]);
    for (const isa of ISAS) {
      if (!setIsa(isa)) continue;
      const q = quantizeNF4(x, { doubleQuant: false, computeDtype: 'f32' });
      const b = bytesOf(q.data);
      expect(q.data.shape).toEqual([32, 1]);
      expect(b[0]).toBe(0xF0);
      expect(b[1]).toBe(0x78);
      expect(b[2]).toBe(0x78);
      expect(b[3]).toBe(0x01);
      expect(q.absmax.toFloat32Array()[0]).toBe(1);
      q.dispose();
    }
    x.dispose();
  });

  test('odd element count: the last low nibble holds the code of 0; all-zero blocks give absmax 0', () => {
    const x = f32([0.5, -0.25, 1.0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
      ...new Array(64).fill(0)]);   // 97 elements: block 0 (64), block 1 all zero (33)
    for (const isa of ISAS) {
      if (!setIsa(isa)) continue;
      const q = quantizeNF4(x, { doubleQuant: false, computeDtype: 'f32' });
      expect(q.data.shape).toEqual([49, 1]);
      const am = q.absmax.toFloat32Array();
      expect(Array.from(am)).toEqual([1, 0]);
      const b = bytesOf(q.data);
      // block 1: x·(1/0) = NaN -> code 0 (bnb's tree); the padding of element 97 is 0·inf = NaN -> 0 too
      expect(b[48]).toBe(0x00);
      const d = dequantize(q, 'f32').toFloat32Array();
      for (let i = 64; i < 97; i++) expect(Math.abs(d[i])).toBe(0);
      q.dispose();
    }
    x.dispose();
  });
});

describe('quantization error vs an independent f64 reference', () => {
  const N = 64 * 4000 + 17;
  let x: Tensor;
  let xs: Float32Array;
  beforeAll(() => { x = Tensor.randn([N], { seed: 7 }); xs = x.toFloat32Array(); });
  afterAll(() => x.dispose());

  test.each(['nf4', 'fp4'] as const)('%s: codes match the nearest-code reference on N(0,1), every ISA', (qt) => {
    const code = qt === 'nf4' ? NF4 : FP4;
    const ref = refQuantize(xs, 64, code);
    let hashes = new Set<string>();
    for (const isa of ISAS) {
      if (!setIsa(isa)) continue;
      const q = quantizeNF4(x, { quantType: qt, doubleQuant: false, computeDtype: 'f32' });
      const am = q.absmax.toFloat32Array();
      for (let b = 0; b < am.length; b++) expect(am[b]).toBe(Math.fround(ref.absmax[b]));
      const codes = unpack(bytesOf(q.data), N);
      let mismatches = 0, tieMismatches = 0;
      for (let i = 0; i < N; i++) {
        if (codes[i] === ref.q[i]) continue;
        // FP4: ±0 and the code of 0 are equivalent values (0b0000 / 0b1000)
        if (qt === 'fp4' && code[codes[i]] === code[ref.q[i]]) continue;
        if (ref.nearTie[i]) tieMismatches++; else mismatches++;
      }
      expect(mismatches).toBe(0);
      expect(tieMismatches).toBeLessThanOrEqual(2);
      hashes.add(Buffer.from(bytesOf(q.data)).toString('base64').slice(0, 64) + ':' + codes.length);
      // reconstruction error statistics
      const d = dequantize(q, 'f32').toFloat32Array();
      let se = 0, ae = 0, maxRel = 0;
      for (let i = 0; i < N; i++) {
        const e = Math.abs(d[i] - xs[i]);
        se += e * e; ae += e;
        maxRel = Math.max(maxRel, e / am[Math.floor(i / 64)]);
      }
      const rmse = Math.sqrt(se / N), mae = ae / N;
      // the largest half-gap of the code, relative to absmax
      let halfGap = 0;
      const sorted = [...code].sort((a, c) => a - c);
      for (let k = 1; k < 16; k++) halfGap = Math.max(halfGap, (sorted[k] - sorted[k - 1]) / 2);
      expect(maxRel).toBeLessThanOrEqual(halfGap + 1e-6);
      if (isa === ISAS[ISAS.length - 1]) {
        // eslint-disable-next-line no-console
        console.log(`${qt} on N(0,1), block 64: RMSE ${rmse.toFixed(5)}, mean |err| ${mae.toFixed(5)}, max |err|/absmax ${maxRel.toFixed(4)} (bound ${halfGap.toFixed(4)})`);
      }
      if (qt === 'nf4') expect(rmse).toBeLessThan(0.11);
      q.dispose();
    }
    expect(hashes.size).toBe(1);   // bit-identical packed bytes on every ISA
  });

  test('bf16 and f16 inputs quantize their own values', () => {
    for (const dt of ['bf16', 'f16'] as const) {
      const xh = x.to(dt);
      const vals = xh.toFloat32Array();
      const ref = refQuantize(vals, 64, NF4);
      const q = quantizeNF4(xh, { doubleQuant: false });
      const codes = unpack(bytesOf(q.data), N);
      let bad = 0;
      for (let i = 0; i < N; i++) if (codes[i] !== ref.q[i] && !ref.nearTie[i]) bad++;
      expect(bad).toBe(0);
      q.dispose(); xh.dispose();
    }
  });

  test('double quantization: absmax reconstruction and the extra weight error', () => {
    const q1 = quantizeNF4(x, { doubleQuant: false, computeDtype: 'f32' });
    const q2 = quantizeNF4(x, { doubleQuant: true, computeDtype: 'f32' });
    expect(q2.absmax.dtype).toBe('u8');
    expect(q2.nested!.absmax.shape).toEqual([Math.ceil(Math.ceil(N / 64) / 256)]);
    expect(Array.from(bytesOf(q1.data))).toEqual(Array.from(bytesOf(q2.data)));   // same codes
    // independent reconstruction of the absmaxes: mean offset, bnb dQuantize on the dynamic map
    const a = q1.absmax.toFloat32Array();
    let s = 0; for (const v of a) s += v;
    const offset = Math.fround(s / a.length);
    expect(Math.abs(q2.nested!.offset - offset)).toBeLessThanOrEqual(Math.abs(offset) * 1e-6);
    const dyn = refDynamicMap();
    const qa = bytesOf(q2.absmax), a2 = q2.nested!.absmax.toFloat32Array();
    let worstRel = 0;
    for (let b = 0; b < a.length; b++) {
      const c = Math.fround(a[b] - offset);
      const blk = Math.floor(b / 256);
      let m = 0; for (let k = blk * 256; k < Math.min(a.length, blk * 256 + 256); k++) m = Math.max(m, Math.abs(Math.fround(a[k] - offset)));
      expect(a2[blk]).toBe(Math.fround(m));
      const v = Math.fround(c * Math.fround(1 / m));
      // bnb dQuantize<0>: binary search, then the nearer of the last two pivots
      let pivot = 127, upper = 255, lower = 0, val = dyn[pivot];
      for (let i = 64; i > 0; i >>= 1) {
        if (v > val) { lower = pivot; pivot += i; } else { upper = pivot; pivot -= i; }
        val = dyn[pivot];
      }
      if (upper === 255) upper = 254;
      const want = Math.abs(Math.fround(v - dyn[lower])) < Math.abs(Math.fround(v - dyn[upper])) ? lower : upper;
      expect(qa[b]).toBe(want);
      const rec = Math.fround(Math.fround(dyn[qa[b]] * a2[blk]) + offset);
      worstRel = Math.max(worstRel, Math.abs(rec - a[b]) / a[b]);
    }
    const d1 = dequantize(q1, 'f32').toFloat32Array(), d2 = dequantize(q2, 'f32').toFloat32Array();
    let e1 = 0, e2 = 0;
    for (let i = 0; i < N; i++) { e1 += (d1[i] - xs[i]) ** 2; e2 += (d2[i] - xs[i]) ** 2; }
    const r1 = Math.sqrt(e1 / N), r2 = Math.sqrt(e2 / N);
    // eslint-disable-next-line no-console
    console.log(`double quant: worst absmax rel error ${worstRel.toExponential(2)}; weight RMSE ${r1.toFixed(5)} -> ${r2.toFixed(5)}`);
    expect(worstRel).toBeLessThan(0.02);
    expect(r2 / r1).toBeLessThan(1.02);
    q1.dispose(); q2.dispose();
  });
});

describe('fused 4-bit GEMM', () => {
  const cases: [string, number, number, number, number, 'f32' | 'bf16', 'nf4' | 'fp4', boolean][] = [
    // name, rows, out, in, block, computeDtype, type, double
    ['multi-block, bf16 compute, double quant', 53, 96, 320, 64, 'bf16', 'nf4', true],
    ['odd in (odd element offsets)', 17, 33, 301, 64, 'f32', 'nf4', false],
    ['block 32 (boundaries inside 16 lanes)', 9, 40, 72, 32, 'f32', 'fp4', true],
    ['K over one cache block', 70, 130, 600, 128, 'bf16', 'nf4', true],
  ];
  test.each(cases)('%s: forward and dX equal dequantize-then-matmul, every ISA', (_n, T, outF, inF, bs, cd, qt, dq) => {
    const w = Tensor.randn([outF, inF], { seed: outF + inF, std: 0.05 });
    const x = Tensor.randn([T, inF], { seed: 3 });
    const g = Tensor.randn([T, outF], { seed: 4 });
    const bias = Tensor.randn([outF], { seed: 5 });
    const q = quantizeNF4(w, { blockSize: bs, computeDtype: cd, quantType: qt, doubleQuant: dq });
    const wd = dequantize(q, 'f32');
    if (cd === 'bf16') { const wb = dequantize(q, 'bf16'); expect(maxAbsDiff(wb, wd)).toBe(0); wb.dispose(); }
    for (const isa of ISAS) {
      if (!setIsa(isa)) continue;
      const y = linear4bit(x, q, bias), yr = linear(x, wd, bias);
      const scale = Math.max(1, ...Array.from(yr.toFloat32Array(), Math.abs));
      expect(maxAbsDiff(y, yr) / scale).toBeLessThanOrEqual(2e-6);
      const dx = new Tensor(native.quant4_linear_grad_input(g.native, q.nativeState()));
      const dxr = matmul(g, wd);
      expect(maxAbsDiff(dx, dxr)).toBeLessThanOrEqual(2e-5);
      for (const t of [y, yr, dx, dxr]) t.dispose();
      if (cd !== 'bf16') continue;
      // bf16 activations on a bf16 state: bf16 compute where the CPU has AVX512-BF16 (as
      // bitsandbytes' bf16 matmul). Against f64 of the same bf16 values: only the bf16 rounding
      // of the result (2^-9 relative) may differ.
      const xb = x.to('bf16'), gb = g.to('bf16');
      const wd64 = wd.to('f64');
      const yb = linear4bit(xb, q, bias), y64 = linear(xb.to('f64'), wd64, bias.to('f64'));
      const dxb = new Tensor(native.quant4_linear_grad_input(gb.native, q.nativeState())), dx64 = matmul(gb.to('f64'), wd64);
      expect([yb.dtype, dxb.dtype]).toEqual(['bf16', 'bf16']);
      for (const [got, want] of [[yb, y64], [dxb, dx64]]) {
        const s = Math.max(...Array.from(want.toFloat32Array(), Math.abs));
        expect(maxAbsDiff(got.to('f64'), want) / s).toBeLessThanOrEqual(2 ** -8);
      }
      for (const t of [xb, gb, wd64, yb, y64, dxb, dx64]) t.dispose();
    }
    for (const t of [w, x, g, bias, wd]) t.dispose();
    q.dispose();
  });

  test('bf16 activations give a bf16 output; batch dims are kept', () => {
    const w = Tensor.randn([24, 64], { seed: 1 });
    const q = quantizeNF4(w);
    const x = Tensor.randn([2, 3, 64], { seed: 2, dtype: 'bf16' });
    const y = linear4bit(x, q);
    expect(y.dtype).toBe('bf16');
    expect(y.shape).toEqual([2, 3, 24]);
    for (const t of [w, x, y]) t.dispose();
    q.dispose();
  });

  test('gradcheck of dX (f64) and the f32 backward through the fused GEMM', () => {
    const w = Tensor.randn([12, 64], { seed: 11 });
    const q = quantizeNF4(w, { computeDtype: 'f32' });
    const r = lcg(5);
    const x = Tensor.fromArray(Array.from({ length: 3 * 64 }, () => r()), { shape: [3, 64], dtype: 'f64', requiresGrad: true });
    const b = Tensor.fromArray(Array.from({ length: 12 }, () => r()), { shape: [12], dtype: 'f64', requiresGrad: true });
    const worst = gradcheck(([xi, bi]) => linear4bit(xi, q, bi), [x, b]);
    expect(worst).toBeLessThan(1e-6);
    // f32: backward of sum(y·c) equals c·W (exact dequantized W)
    const x32 = Tensor.randn([5, 64], { seed: 9, requiresGrad: true });
    const c = Tensor.randn([5, 12], { seed: 10 });
    const loss = sum(mul(linear4bit(x32, q), c));
    loss.backward();
    const wd = dequantize(q, 'f32');
    const want = matmul(c, wd);
    expect(maxAbsDiff(x32.grad!, want)).toBeLessThanOrEqual(1e-5);
    for (const t of [w, x, b, x32, c, loss, wd, want]) t.dispose();
    q.dispose();
  });

  test('QLoRA by composition: a LoRA term over Linear4bit.forward gets A, B and x gradients', () => {
    const inF = 64, outF = 32, r = 4, s = 2.0;
    const w = Tensor.randn([outF, inF], { seed: 21, std: 0.1 });
    const layer = new Linear4bit(quantizeNF4(w, { computeDtype: 'f32' }));
    const A = Tensor.randn([r, inF], { seed: 22, std: 0.1, requiresGrad: true });
    const B = Tensor.randn([outF, r], { seed: 23, std: 0.1, requiresGrad: true });
    const x = Tensor.randn([6, inF], { seed: 24, requiresGrad: true });
    const c = Tensor.randn([6, outF], { seed: 25 });
    const fwd = (xx: Tensor, base: (t: Tensor) => Tensor) => add(base(xx), mul(linear(linear(xx, A), B), s));
    const l1 = sum(mul(fwd(x, (t) => layer.forward(t)), c));
    l1.backward();
    const [gA, gB, gx] = [A.grad!, B.grad!, x.grad!].map((t) => t.toFloat32Array());
    A.zeroGrad(); B.zeroGrad(); x.zeroGrad();
    const wd = layer.dequantizeWeight('f32');
    const l2 = sum(mul(fwd(x, (t) => linear(t, wd)), c));
    l2.backward();
    expect(maxAbsDiff(gA, A.grad!.toFloat32Array())).toBeLessThanOrEqual(1e-4);
    expect(maxAbsDiff(gB, B.grad!.toFloat32Array())).toBeLessThanOrEqual(1e-4);
    expect(maxAbsDiff(gx, x.grad!.toFloat32Array())).toBeLessThanOrEqual(1e-4);
    expect(layer.weight.requiresGrad).toBe(false);
    for (const t of [w, A, B, x, c, l1, l2, wd]) t.dispose();
    layer.dispose();
  });
});

describe('models', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-quant-'));
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const llama = path.join(FIX, 'llama');

  test('loadModel(llama, { quantize: "nf4" }): logits match the dequantized-weights model', async () => {
    const ref = loadSafetensors(path.join(llama, 'reference.safetensors'));
    const ids = ref.get('input_ids')!;
    const qm = await loadModel(llama, { quantize: 'nf4', quantization: { computeDtype: 'f32' } });
    const layers = qm.namedModules().filter(([, m]) => m instanceof Linear4bit);
    expect(layers.length).toBe(2 * 7);
    expect(qm.namedModules().find(([p]) => p === 'lm_head')![1]).not.toBeInstanceOf(Linear4bit);
    const yq = noGrad(() => qm.forward({ inputIds: ids }).logits);
    // the same model with every 4-bit layer dequantized, written as a plain f32 folder
    const deq = path.join(tmp, 'deq');
    mergeQuantized(qm, deq, { dtype: 'f32' });
    const fm = await loadModel(deq);
    const yf = noGrad(() => fm.forward({ inputIds: ids }).logits);
    const e = maxAbsDiff(yq, yf);
    const eRef = maxAbsDiff(yq, ref.get('logits')!);
    // eslint-disable-next-line no-console
    console.log(`llama fixture NF4: logits vs dequantized-weights model ${e.toExponential(2)}; vs the float model ${eRef.toExponential(2)}`);
    expect(e).toBeLessThanOrEqual(1e-4);
    expect(eRef).toBeLessThan(0.5);
    for (const t of [yq, yf]) t.dispose();
    for (const t of ref.values()) t.dispose();
    qm.dispose(); fm.dispose();
  });

  test('bitsandbytes layout: exact names, dtypes, shapes and quant_state JSON; save -> load is identical', async () => {
    const qm = await loadModel(llama, { quantize: 'nf4' });
    const dir = path.join(tmp, 'bnb');
    saveQuantized(qm, dir);
    const h = readHeader(path.join(dir, 'model.safetensors'));
    const p = 'model.layers.0.self_attn.q_proj';   // 64 x 64 = 4096 weights, 64 blocks
    const info = (n: string) => { const t = h.tensors.get(n); if (!t) throw new Error(`missing ${n}`); return [t.dtype, t.shape]; };
    expect(info(`${p}.weight`)).toEqual(['U8', [2048, 1]]);
    expect(info(`${p}.weight.absmax`)).toEqual(['U8', [64]]);
    expect(info(`${p}.weight.quant_map`)).toEqual(['F32', [16]]);
    expect(info(`${p}.weight.nested_absmax`)).toEqual(['F32', [1]]);
    expect(info(`${p}.weight.nested_quant_map`)).toEqual(['F32', [256]]);
    const qsName = `${p}.weight.quant_state.bitsandbytes__nf4`;
    expect(info(qsName)[0]).toBe('U8');
    const all = loadSafetensors(path.join(dir, 'model.safetensors'));
    const js = Buffer.from(all.get(qsName)!.toTypedArray() as Uint8Array).toString('utf8');
    const lin = qm.getSubmodule(p) as Linear4bit;
    expect(js).toBe(`{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [64, 64], "nested_blocksize": 256, ` +
      `"nested_dtype": "float32", "nested_offset": ${pyFloatRepr(lin.quantState.nested!.offset)}}`);
    expect(JSON.parse(js).nested_offset).toBe(lin.quantState.nested!.offset);
    expect(js).toBe(quantStateJson(lin.quantState));
    // unquantized parameters keep their names; lm_head stays float
    expect(h.tensors.get('lm_head.weight')!.dtype).toBe('F32');
    expect(h.tensors.get('model.embed_tokens.weight')!.shape).toEqual([512, 64]);
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
    expect(cfg.quantization_config).toMatchObject({ quant_method: 'bitsandbytes', load_in_4bit: true, bnb_4bit_quant_type: 'nf4',
      bnb_4bit_use_double_quant: true, bnb_4bit_compute_dtype: 'bfloat16', bnb_4bit_quant_storage: 'uint8' });
    // reload: the same bytes, the same logits
    const back = await loadModel(dir);
    const lb = back.getSubmodule(p) as Linear4bit;
    expect(lb).toBeInstanceOf(Linear4bit);
    expect(Array.from(bytesOf(lb.weight))).toEqual(Array.from(bytesOf(lin.weight)));
    expect(Array.from(bytesOf(lb.quantState.absmax))).toEqual(Array.from(bytesOf(lin.quantState.absmax)));
    expect(lb.quantState.nested!.offset).toBe(lin.quantState.nested!.offset);
    const ids = Tensor.fromArray([[1, 5, 9, 200, 3, 77]], { dtype: 'i64' });
    const y1 = noGrad(() => qm.forward({ inputIds: ids }).logits), y2 = noGrad(() => back.forward({ inputIds: ids }).logits);
    expect(maxAbsDiff(y1, y2)).toBe(0);
    for (const t of [ids, y1, y2]) t.dispose();
    for (const t of all.values()) t.dispose();
    qm.dispose(); back.dispose();
  });

  test('quantizeNF4(model) in place, fp4 without double quant; GPT-2 Conv1D layers', async () => {
    const m = await loadModel(path.join(FIX, 'gpt2'));
    const ids = Tensor.fromArray([[1, 2, 3, 4, 5]], { dtype: 'i64' });
    const y0 = noGrad(() => m.forward({ inputIds: ids }).logits);
    quantizeNF4(m, { quantType: 'fp4', doubleQuant: false, computeDtype: 'f32' });
    const q = m.namedModules().filter(([, x]) => x instanceof Linear4bit) as [string, Linear4bit][];
    expect(q.length).toBeGreaterThan(0);
    expect(q.some(([, l]) => l.fromConv1D)).toBe(true);
    expect(q[0][1].quantState.absmax.dtype).toBe('f32');
    const y1 = noGrad(() => m.forward({ inputIds: ids }).logits);
    const e = maxAbsDiff(y0, y1);
    expect(Number.isFinite(e)).toBe(true);
    expect(e).toBeLessThan(2);
    // merged (dequantized) folder round trip through loadModel: Conv1D weights written back [in, out]
    const dir = path.join(tmp, 'gpt2deq');
    mergeQuantized(m, dir, { dtype: 'f32' });
    const f = await loadModel(dir);
    const y2 = noGrad(() => f.forward({ inputIds: ids }).logits);
    expect(maxAbsDiff(y1, y2)).toBeLessThanOrEqual(1e-4);
    for (const t of [ids, y0, y1, y2]) t.dispose();
    m.dispose(); f.dispose();
  });

  test('merging a LoRA update into the NF4 base writes a float model loadModel loads', async () => {
    const qm = await loadModel(llama, { quantize: 'nf4' });
    const p = 'model.layers.1.mlp.down_proj';
    const lin = qm.getSubmodule(p) as Linear4bit;
    const A = Tensor.randn([8, lin.inFeatures], { seed: 1, std: 0.1 });
    const B = Tensor.randn([lin.outFeatures, 8], { seed: 2, std: 0.1 });
    const s = 16 / 8;
    for (const dt of ['bf16', 'f32'] as const) {
      const dir = path.join(tmp, `merged-${dt}`);
      mergeQuantized(qm, dir, { dtype: dt, deltas: { [p]: { loraA: A, loraB: B, scaling: s } } });
      const h = readHeader(path.join(dir, 'model.safetensors'));
      expect(h.tensors.get(`${p}.weight`)!.dtype).toBe(dt === 'bf16' ? 'BF16' : 'F32');
      expect([...h.tensors.keys()].some((n) => n.includes('absmax') || n.includes('quant_state'))).toBe(false);
      const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
      expect(cfg.quantization_config).toBeUndefined();
      const fm = await loadModel(dir, { dtype: 'auto' });
      const got = (fm.getTensor(`${p}.weight`) as Tensor).toFloat32Array();
      const wd = lin.dequantizeWeight('f32');
      const ba = matmul(B, A);
      const want = add(wd, mul(ba, s));
      const wantR = dt === 'bf16' ? want.to('bf16').toFloat32Array() : want.toFloat32Array();
      expect(maxAbsDiff(got, wantR)).toBeLessThanOrEqual(dt === 'bf16' ? 0 : 1e-6);
      for (const t of [wd, ba, want]) t.dispose();
      fm.dispose();
    }
    for (const t of [A, B]) t.dispose();
    qm.dispose();
  });
});

describe('memory', () => {
  test('a Llama-2-7B-shaped model quantized with double quant holds <= 3.9 GB of weights', () => {
    // Llama-2-7B: vocab 32000, hidden 4096, intermediate 11008, 32 layers, untied lm_head.
    // Built layer by layer: 32 x 7 projections, each quantized from a bf16 source and kept 4-bit
    // (one random source per distinct shape is reused: the footprint depends only on the shapes).
    // Unquantized tensors (embeddings, norms, lm_head) are bf16, as in QLoRA. Measured both as the
    // sum of the held tensors and as the native allocator's live bytes.
    const V = 32000, H = 4096, I = 11008, L = 32;
    const shapes: [number, number][] = [[H, H], [H, H], [H, H], [H, H], [I, H], [I, H], [H, I]];
    const src = new Map<string, Tensor>();
    for (const [o, i] of shapes) if (!src.has(`${o}x${i}`)) src.set(`${o}x${i}`, Tensor.randn([o, i], { seed: o + i, std: 0.02, dtype: 'bf16' }));
    const live = () => (native.memoryStats() as { cpu: { liveBytes: number; peakBytes: number } }).cpu;
    const before = live().liveBytes;
    native.resetPeakMemory();
    const held: (QuantizedTensor | Tensor)[] = [];
    let bytes = 0, params = 0;
    const t0 = Date.now();
    try {
      held.push(Tensor.empty([V, H], { dtype: 'bf16' }));   // embed_tokens
      held.push(Tensor.empty([V, H], { dtype: 'bf16' }));   // lm_head (skipModules)
      held.push(Tensor.empty([H], { dtype: 'bf16' }));      // final norm
      for (let l = 0; l < L; l++) {
        held.push(Tensor.empty([H], { dtype: 'bf16' }), Tensor.empty([H], { dtype: 'bf16' }));   // the two RMSNorms
        for (const [o, i] of shapes) held.push(quantizeNF4(src.get(`${o}x${i}`)!, { doubleQuant: true }));
      }
      for (const h of held) {
        if (h instanceof QuantizedTensor) { bytes += h.nbytes; params += h.numel; } else { bytes += h.numel * 2; params += h.numel; }
      }
      const secs = (Date.now() - t0) / 1000;
      const counted = live().liveBytes - before;   // native bytes actually allocated and held now
      const peak = live().peakBytes - before;
      // eslint-disable-next-line no-console
      console.log(`Llama-2-7B-shaped NF4 + double quant: ${params.toLocaleString()} params, ${(bytes / 1e9).toFixed(3)} GB ` +
        `(${(bytes / 2 ** 30).toFixed(3)} GiB) of weights (native live ${(counted / 1e9).toFixed(3)} GB, peak above the bf16 sources while building ` +
        `${(peak / 1e9).toFixed(3)} GB); built in ${secs.toFixed(1)} s`);
      expect(params).toBe(6738415616);
      expect(bytes / 1e9).toBeLessThanOrEqual(3.9);
      expect(Math.abs(counted - bytes)).toBeLessThan(1e6);
    } finally {
      for (const h of held) h.dispose();
      for (const t of src.values()) t.dispose();
    }
  });
});
