/**
 * NN ops (lib/ops/nn.ts): softmax/logSoftmax, rmsNorm (Llama + Gemma), layerNorm, ropeTables +
 * applyRotary, embedding, crossEntropy. Forward against naive JS f64 loops written here from the
 * defining formulas (with HF's bf16 rounding points emulated where the op is bit-exact), backward
 * against finite differences in f64 through the TS API, and bad inputs -> thrown Errors.
 */
import { Tensor, ops } from '../lib';
import { applyRotary, crossEntropy, embedding, layerNorm, logSoftmax, rmsNorm, ropeTables, softmax } from '../lib/ops/nn';
import { bf16ToNumber, numberToBf16 } from '../lib/tensor/dtype';
import { gradcheck, lcg, maxAbsDiff, randomF64 } from './helpers/gradcheck';

const bf16 = (x: number): number => bf16ToNumber(numberToBf16(x));
const f32 = Math.fround;

function randArr(n: number, seed: number, scale = 1): number[] {
  const r = lcg(seed);
  return Array.from({ length: n }, () => r() * scale);
}
const prod = (s: number[]): number => s.reduce((a, b) => a * b, 1);

function expectClose(got: ArrayLike<number>, want: ArrayLike<number>, rtol: number, atol: number): void {
  expect(got.length).toBe(want.length);
  for (let i = 0; i < want.length; i++) {
    const err = Math.abs(got[i] - want[i]);
    if (!(err <= atol + rtol * Math.abs(want[i]))) {
      throw new Error(`element ${i}: got ${got[i]}, want ${want[i]} (err ${err})`);
    }
  }
}

// softmax / log_softmax of a row-major array of shape `shape` along `dim`
function refSoftmax(x: ArrayLike<number>, shape: number[], dim: number, log: boolean): number[] {
  const L = shape[dim], inner = prod(shape.slice(dim + 1)), outer = prod(shape.slice(0, dim));
  const y = new Array<number>(x.length);
  for (let o = 0; o < outer; o++) {
    for (let i = 0; i < inner; i++) {
      const at = (l: number): number => (o * L + l) * inner + i;
      let m = -Infinity, z = 0;
      for (let l = 0; l < L; l++) m = Math.max(m, x[at(l)]);
      for (let l = 0; l < L; l++) z += Math.exp(x[at(l)] - m);
      for (let l = 0; l < L; l++) y[at(l)] = log ? x[at(l)] - m - Math.log(z) : Math.exp(x[at(l)] - m) / z;
    }
  }
  return y;
}

describe('softmax / logSoftmax', () => {
  test('forward matches naive f64 loops on every dim', () => {
    const shape = [3, 4, 5];
    const xa = randArr(60, 1, 4);
    const x = Tensor.fromArray(xa, { shape, dtype: 'f64' });
    for (const dim of [0, 1, 2, -1]) {
      const d = dim < 0 ? dim + 3 : dim;
      expectClose(softmax(x, dim).toFloat64Array(), refSoftmax(xa, shape, d, false), 1e-13, 1e-15);
      expectClose(logSoftmax(x, dim).toFloat64Array(), refSoftmax(xa, shape, d, true), 1e-13, 1e-13);
    }
    // f32 and bf16: reference on the rounded inputs
    for (const dtype of ['f32', 'bf16'] as const) {
      const xt = Tensor.fromArray(xa, { shape, dtype });
      const xr = xt.toFloat64Array();
      const tol = dtype === 'f32' ? 2e-6 : 8e-3;
      expect(softmax(xt).dtype).toBe(dtype);
      expectClose(softmax(xt).toFloat64Array(), refSoftmax(xr, shape, 2, false), tol, 1e-7);
      expectClose(logSoftmax(xt).toFloat64Array(), refSoftmax(xr, shape, 2, true), tol, 1e-5);
    }
  });

  test('large logits stay finite; strided input', () => {
    const x = Tensor.fromArray([[1000, 1001, 1002]]);
    const y = softmax(x).toFloat64Array();
    expectClose(y, refSoftmax([1000, 1001, 1002], [1, 3], 1, false), 1e-6, 1e-7);
    const base = randomF64([4, 6], 3);
    const xt = ops.transpose(base, 0, 1);  // (6,4), non-contiguous
    const ref = refSoftmax(ops.contiguous(xt).toFloat64Array(), [6, 4], 1, false);
    expectClose(softmax(xt, 1).toFloat64Array(), ref, 1e-13, 1e-15);
  });

  test('backward vs finite differences (f64)', () => {
    for (const dim of [0, 1, -1]) {
      gradcheck(([x]) => softmax(x, dim), [randomF64([3, 4, 2], 5 + dim, 2).requiresGrad_()]);
      gradcheck(([x]) => logSoftmax(x, dim), [randomF64([3, 4, 2], 7 + dim, 2).requiresGrad_()]);
    }
  });

  test('bad inputs throw', () => {
    const x = Tensor.zeros([2, 3]);
    expect(() => softmax(x, 2)).toThrow(/softmax.*dim 2 out of range/);
    expect(() => softmax(Tensor.fromArray([1, 2], { dtype: 'i64' }))).toThrow(/floating/);
    expect(() => logSoftmax(x, 0.5)).toThrow(/integer/);
    expect(() => softmax(null as unknown as Tensor)).toThrow(TypeError);
  });
});

// HF LlamaRMSNorm / GemmaRMSNorm in f64 with the eager graph's roundings (round = rounding to x's dtype)
function refRms(x: ArrayLike<number>, w: ArrayLike<number> | null, C: number, eps: number, unitOffset: boolean,
  round: (v: number) => number, roundF32: boolean): number[] {
  const rows = x.length / C, y: number[] = [];
  for (let r = 0; r < rows; r++) {
    let ss = 0;
    for (let i = 0; i < C; i++) ss += x[r * C + i] ** 2;
    const rs = 1 / Math.sqrt(ss / C + eps);
    for (let i = 0; i < C; i++) {
      let h = x[r * C + i] * rs;
      if (roundF32) h = f32(h);
      const v = unitOffset ? h * (1 + (w ? w[i] : 0)) : (w ? w[i] : 1) * round(h);
      y.push(round(v));
    }
  }
  return y;
}

describe('rmsNorm', () => {
  test('forward matches HF semantics (f64, f32, bf16; Llama and Gemma; no weight)', () => {
    const C = 24, xa = randArr(5 * C, 11, 3), wa = randArr(C, 12);
    for (const unitOffset of [false, true]) {
      const x = Tensor.fromArray(xa, { shape: [5, C], dtype: 'f64' }), w = Tensor.fromArray(wa, { dtype: 'f64' });
      expectClose(rmsNorm(x, w, 1e-6, { unitOffset }).toFloat64Array(), refRms(xa, wa, C, 1e-6, unitOffset, (v) => v, false), 1e-13, 1e-14);
      const x32 = Tensor.fromArray(xa, { shape: [5, C] }), w32 = Tensor.fromArray(wa);
      expectClose(rmsNorm(x32, w32, 1e-6, { unitOffset }).toFloat64Array(),
        refRms(x32.toFloat64Array(), w32.toFloat64Array(), C, 1e-6, unitOffset, f32, true), 3e-7, 1e-7);
      // bf16: h rounded to bf16 before the weight multiply (Llama), or not (Gemma): exact for nearly all
      const xb = Tensor.fromArray(xa, { shape: [5, C], dtype: 'bf16' }), wb = Tensor.fromArray(wa, { dtype: 'bf16' });
      const got = rmsNorm(xb, wb, 1e-6, { unitOffset });
      expect(got.dtype).toBe('bf16');
      const want = refRms(xb.toFloat64Array(), wb.toFloat64Array(), C, 1e-6, unitOffset, bf16, true);
      const g = got.toFloat64Array();
      let exact = 0;
      for (let i = 0; i < g.length; i++) if (g[i] === want[i]) exact++;
      expect(exact).toBeGreaterThanOrEqual(Math.floor(g.length * 0.97));
      expectClose(g, want, 8e-3, 1e-6);
    }
    const x = Tensor.fromArray(xa, { shape: [5, C], dtype: 'f64' });
    expectClose(rmsNorm(x, null).toFloat64Array(), refRms(xa, null, C, 1e-6, false, (v) => v, false), 1e-13, 1e-14);
  });

  test('backward vs finite differences (f64): x and weight, both flavours, C = 1', () => {
    for (const unitOffset of [false, true]) {
      for (const C of [1, 7]) {
        const x = randomF64([2, 3, C], 20 + C).requiresGrad_(), w = randomF64([C], 30 + C).requiresGrad_();
        gradcheck(([a, b]) => rmsNorm(a, b, 1e-6, { unitOffset }), [x, w]);
      }
    }
    gradcheck(([a]) => rmsNorm(a, null, 1e-5), [randomF64([4, 5], 41).requiresGrad_()]);
    // only the weight requires grad
    const x = randomF64([3, 6], 42), w = randomF64([6], 43).requiresGrad_();
    gradcheck(([a, b]) => rmsNorm(a, b), [x, w]);
  });

  test('bad inputs throw', () => {
    const x = Tensor.zeros([2, 8]);
    expect(() => rmsNorm(x, Tensor.zeros([7]))).toThrow(/rms_norm.*weight.*C=8/);
    expect(() => rmsNorm(x, null, -1)).toThrow(/eps/);
    expect(() => rmsNorm(Tensor.scalar(1), null)).toThrow(/rms_norm/);
    expect(() => rmsNorm(x, null, 1e-6, { unitOffset: 1 as unknown as boolean })).toThrow(TypeError);
  });
});

describe('layerNorm', () => {
  test('forward matches torch.nn.LayerNorm (biased variance)', () => {
    const C = 10, xa = randArr(4 * C, 50, 2).map((v) => v + 5), wa = randArr(C, 51), ba = randArr(C, 52);
    const ref = (w: number[] | null, b: number[] | null): number[] => {
      const y: number[] = [];
      for (let r = 0; r < 4; r++) {
        const row = xa.slice(r * C, r * C + C);
        const m = row.reduce((a, v) => a + v, 0) / C;
        const v = row.reduce((a, e) => a + (e - m) ** 2, 0) / C;
        for (let i = 0; i < C; i++) y.push((row[i] - m) / Math.sqrt(v + 1e-5) * (w ? w[i] : 1) + (b ? b[i] : 0));
      }
      return y;
    };
    const x = Tensor.fromArray(xa, { shape: [4, C], dtype: 'f64' });
    const w = Tensor.fromArray(wa, { dtype: 'f64' }), b = Tensor.fromArray(ba, { dtype: 'f64' });
    expectClose(layerNorm(x, w, b).toFloat64Array(), ref(wa, ba), 1e-12, 1e-13);
    expectClose(layerNorm(x, null, null).toFloat64Array(), ref(null, null), 1e-12, 1e-13);
    expectClose(layerNorm(x, w, null).toFloat64Array(), ref(wa, null), 1e-12, 1e-13);
  });

  test('backward vs finite differences (f64)', () => {
    const x = randomF64([3, 2, 6], 60).requiresGrad_(), w = randomF64([6], 61).requiresGrad_(), b = randomF64([6], 62).requiresGrad_();
    gradcheck(([a, c, d]) => layerNorm(a, c, d), [x, w, b]);
    gradcheck(([a]) => layerNorm(a, null, null), [randomF64([2, 5], 63).requiresGrad_()]);
  });

  test('bad inputs throw', () => {
    expect(() => layerNorm(Tensor.zeros([2, 4]), null, Tensor.zeros([5]))).toThrow(/layer_norm.*bias/);
  });
});

// x (B,H,T,D) row-major values, cos/sin (CB,T,R)
function refRope(x: ArrayLike<number>, c: ArrayLike<number>, s: ArrayLike<number>, [B, H, T, D]: number[], R: number, CB: number,
  round: (v: number) => number): number[] {
  const out = new Array<number>(x.length), h2 = R / 2;
  for (let b = 0; b < B; b++) for (let h = 0; h < H; h++) for (let t = 0; t < T; t++) {
    const xr = ((b * H + h) * T + t) * D, cr = ((CB === 1 ? 0 : b) * T + t) * R;
    for (let j = 0; j < D; j++) {
      if (j >= R) { out[xr + j] = x[xr + j]; continue; }
      const rot = j < h2 ? -x[xr + j + h2] : x[xr + j - h2];
      out[xr + j] = round(round(x[xr + j] * c[cr + j]) + round(rot * s[cr + j]));
    }
  }
  return out;
}

describe('rotary embeddings', () => {
  test('ropeTables matches HF (f32 math, cat(freqs, freqs), attention scaling)', () => {
    const pos = [0, 1, 2, 3, 100, 4095];
    const half = 4, base = 10000;
    const inv = Array.from({ length: half }, (_, j) => f32(1 / base ** ((2 * j) / (2 * half))));
    const [c, s] = ropeTables(Tensor.fromArray(pos, { shape: [2, 3], dtype: 'i64' }), Tensor.fromArray(inv), 0.5);
    expect(c.shape).toEqual([2, 3, 2 * half]);
    const cw: number[] = [], sw: number[] = [];
    for (const p of pos) for (let j = 0; j < 2 * half; j++) {
      const a = f32(f32(p) * inv[j % half]);
      cw.push(f32(f32(Math.cos(a)) * 0.5)); sw.push(f32(f32(Math.sin(a)) * 0.5));
    }
    expectClose(c.toFloat64Array(), cw, 2e-7, 1e-7);
    expectClose(s.toFloat64Array(), sw, 2e-7, 1e-7);
    const [cb] = ropeTables(Tensor.fromArray(pos, { shape: [1, 6], dtype: 'i32' }), Tensor.fromArray(inv), 1, 'bf16');
    expect(cb.dtype).toBe('bf16');
  });

  test('applyRotary: full and partial rotary, transposed (B,T,H,D) input, batch-1 tables, bf16 bit-exact', () => {
    for (const [B, H, T, D, R, CB] of [[2, 3, 4, 8, 8, 2], [2, 2, 3, 10, 4, 1], [1, 1, 1, 6, 2, 1]]) {
      for (const dtype of ['f64', 'f32', 'bf16'] as const) {
        const xbthd = Tensor.fromArray(randArr(B * T * H * D, B + D), { shape: [B, T, H, D], dtype });
        const x = ops.transpose(xbthd, 1, 2);
        const ang = randArr(CB * T * R, 7, 3);
        const c = Tensor.fromArray(ang.map(Math.cos), { shape: [CB, T, R], dtype });
        const s = Tensor.fromArray(ang.map(Math.sin), { shape: [CB, T, R], dtype });
        const y = applyRotary(x, c, s);
        expect(y.shape).toEqual([B, H, T, D]);
        const round = dtype === 'bf16' ? bf16 : dtype === 'f32' ? f32 : (v: number) => v;
        const want = refRope(ops.contiguous(x).toFloat64Array(), c.toFloat64Array(), s.toFloat64Array(), [B, H, T, D], R, CB, round);
        expect(maxAbsDiff(y, want)).toBe(0);
      }
    }
  });

  test('backward vs finite differences (f64), partial rotary', () => {
    const [B, H, T, D, R] = [2, 2, 3, 6, 4];
    const ang = randArr(B * T * R, 9, 3);
    const c = Tensor.fromArray(ang.map(Math.cos), { shape: [B, T, R], dtype: 'f64' });
    const s = Tensor.fromArray(ang.map(Math.sin), { shape: [B, T, R], dtype: 'f64' });
    gradcheck(([x]) => applyRotary(x, c, s), [randomF64([B, H, T, D], 70).requiresGrad_()]);
    // through a transpose: the gradient reaches the (B,T,H,D) leaf
    gradcheck(([x]) => applyRotary(ops.transpose(x, 1, 2), c, s), [randomF64([B, T, H, D], 71).requiresGrad_()]);
  });

  test('bad inputs throw', () => {
    const x = Tensor.zeros([1, 2, 3, 8]);
    expect(() => applyRotary(Tensor.zeros([2, 3, 8]), Tensor.zeros([1, 3, 8]), Tensor.zeros([1, 3, 8]))).toThrow(/4-d/);
    expect(() => applyRotary(x, Tensor.zeros([1, 3, 10]), Tensor.zeros([1, 3, 10]))).toThrow(/rotary dim R=10/);
    expect(() => applyRotary(x, Tensor.zeros([1, 4, 8]), Tensor.zeros([1, 4, 8]))).toThrow(/T=3/);
    expect(() => ropeTables(Tensor.zeros([3]), Tensor.zeros([2]))).toThrow(/positions/);
    expect(() => ropeTables(Tensor.zeros([1, 3], { dtype: 'i64' }), Tensor.zeros([2]), 1, 'i32')).toThrow(/float dtype/);
  });
});

describe('embedding', () => {
  test('forward copies rows exactly (i64 and i32 ids, any shape)', () => {
    const V = 6, C = 5, wa = randArr(V * C, 80);
    for (const dtype of ['f32', 'bf16', 'f64'] as const) {
      const w = Tensor.fromArray(wa, { shape: [V, C], dtype });
      const wv = w.toFloat64Array();
      for (const idt of ['i64', 'i32'] as const) {
        const ids = [5, 0, 2, 2, 1, 5];
        const y = embedding(w, Tensor.fromArray(ids, { shape: [2, 3], dtype: idt }));
        expect(y.shape).toEqual([2, 3, C]);
        expect(y.dtype).toBe(dtype);
        const want: number[] = [];
        for (const id of ids) for (let c = 0; c < C; c++) want.push(wv[id * C + c]);
        expect(maxAbsDiff(y, want)).toBe(0);
      }
    }
  });

  test('backward: finite differences (f64) with repeated ids; grad in weight dtype', () => {
    const ids = Tensor.fromArray([3, 1, 3, 3, 0], { dtype: 'i64' });
    gradcheck(([w]) => embedding(w, ids), [randomF64([4, 3], 81).requiresGrad_()]);
    const wb = Tensor.fromArray(randArr(12, 82), { shape: [4, 3], dtype: 'bf16' }).requiresGrad_();
    ops.sum(embedding(wb, ids)).backward();
    expect(wb.grad!.dtype).toBe('bf16');
    expect(Array.from(wb.grad!.toFloat64Array())).toEqual([1, 1, 1, 1, 1, 1, 0, 0, 0, 3, 3, 3]);
  });

  test('bad ids throw naming the id, its position and V', () => {
    const w = Tensor.zeros([5, 2]);
    expect(() => embedding(w, Tensor.fromArray([0, 7, 1], { dtype: 'i64' }))).toThrow(/id 7 at position 1.*V=5/);
    expect(() => embedding(w, Tensor.fromArray([-1], { dtype: 'i32' }))).toThrow(/id -1/);
    expect(() => embedding(w, Tensor.fromArray([1]))).toThrow(/i64 or i32/);
    expect(() => embedding(Tensor.zeros([5]), Tensor.fromArray([1], { dtype: 'i64' }))).toThrow(/2-d/);
  });
});

// mean-or-normalized CE in f64; returns the loss
function refCE(x: ArrayLike<number>, labels: number[], V: number, ignore: number, normalizer: number): number {
  let total = 0, cnt = 0;
  labels.forEach((l, i) => {
    if (l === ignore) return;
    cnt++;
    let m = -Infinity, z = 0;
    for (let v = 0; v < V; v++) m = Math.max(m, x[i * V + v]);
    for (let v = 0; v < V; v++) z += Math.exp(x[i * V + v] - m);
    total += m + Math.log(z) - x[i * V + l];
  });
  return total / (normalizer > 0 ? normalizer : cnt);
}

describe('crossEntropy', () => {
  test('forward matches naive f64 (ignore_index, normalizer, vocab spanning several chunks)', () => {
    for (const V of [7, 9000]) {
      const N = 5, xa = randArr(N * V, V, 5);
      const labels = [1, -100, V - 1, 0, 3];
      for (const dtype of ['f64', 'f32', 'bf16'] as const) {
        const logits = Tensor.fromArray(xa, { shape: [N, V], dtype });
        const xr = logits.toFloat64Array();
        const lab = Tensor.fromArray(labels, { dtype: 'i64' });
        const tol = dtype === 'f64' ? 1e-12 : 1e-5;
        for (const normalizer of [0, 10]) {
          const loss = crossEntropy(logits, lab, { normalizer });
          expect(loss.shape).toEqual([]);
          expect(loss.dtype).toBe(dtype === 'f64' ? 'f64' : 'f32');
          const want = refCE(xr, labels, V, -100, normalizer);
          expect(Math.abs(loss.item() - want)).toBeLessThanOrEqual(tol * (1 + Math.abs(want)));
        }
      }
    }
    // custom ignore index
    const logits = Tensor.fromArray(randArr(12, 3), { shape: [3, 4], dtype: 'f64' });
    const want = refCE(logits.toFloat64Array(), [-1, 2, 3], 4, -1, 0);
    expect(crossEntropy(logits, Tensor.fromArray([-1, 2, 3], { dtype: 'i32' }), { ignoreIndex: -1 }).item()).toBeCloseTo(want, 12);
  });

  test('all labels ignored: NaN like torch, zero gradient', () => {
    const logits = Tensor.fromArray(randArr(8, 4), { shape: [2, 4], dtype: 'f64' }).requiresGrad_();
    const loss = crossEntropy(logits, Tensor.fromArray([-100, -100], { dtype: 'i64' }));
    expect(Number.isNaN(loss.item())).toBe(true);
    loss.backward();
    expect(Array.from(logits.grad!.toFloat64Array())).toEqual(new Array(8).fill(0));
    expect(crossEntropy(logits, Tensor.fromArray([-100, -100], { dtype: 'i64' }), { normalizer: 3 }).item()).toBe(0);
  });

  test('backward vs finite differences (f64), causal-LM shifted view of (B,T,V)', () => {
    const [B, T, V] = [2, 4, 5];
    const labels = Tensor.fromArray([2, 4, -100, 0, 1, 1], { shape: [B, T - 1], dtype: 'i64' });
    // logits[:, :-1] is a non-contiguous narrow; the gradient lands in the full (B,T,V) leaf
    gradcheck(([x]) => crossEntropy(ops.narrow(x, 1, 0, T - 1), labels), [randomF64([B, T, V], 90, 3).requiresGrad_()]);
    gradcheck(([x]) => crossEntropy(ops.reshape(x, [6, V]), ops.reshape(labels, [6]), { normalizer: 4 }),
      [randomF64([6, V], 91, 3).requiresGrad_()]);
    // bf16 logits: gradient in bf16, close to softmax - onehot
    const xb = Tensor.fromArray(randArr(2 * V, 92, 2), { shape: [2, V], dtype: 'bf16' }).requiresGrad_();
    crossEntropy(xb, Tensor.fromArray([0, 3], { dtype: 'i64' })).backward();
    expect(xb.grad!.dtype).toBe('bf16');
    const xr = xb.toFloat64Array(), want: number[] = [];
    for (let i = 0; i < 2; i++) {
      const row = Array.from(xr.slice(i * V, i * V + V));
      const p = refSoftmax(row, [V], 0, false);
      p.forEach((v, j) => want.push((v - (j === [0, 3][i] ? 1 : 0)) / 2));
    }
    expectClose(xb.grad!.toFloat64Array(), want, 8e-3, 1e-4);
  });

  test('bad labels and shapes throw', () => {
    const logits = Tensor.zeros([3, 4]);
    expect(() => crossEntropy(logits, Tensor.fromArray([0, 4, 1], { dtype: 'i64' }))).toThrow(/label 4 at position 1.*V=4/);
    expect(() => crossEntropy(logits, Tensor.fromArray([0, 1], { dtype: 'i64' }))).toThrow(/labels/);
    expect(() => crossEntropy(logits, Tensor.fromArray([0, 1, 2]))).toThrow(/i64 or i32/);
    expect(() => crossEntropy(logits, Tensor.fromArray([0, 1, 2], { dtype: 'i64' }), { ignoreIndex: 0.5 })).toThrow(/integer/);
  });
});
