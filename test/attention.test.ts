/**
 * Fused attention (ops.scaledDotProductAttention): forward against naive JS f64 loops (scores
 * materialised, masked, softmaxed), backward against finite differences in f64 through the TS
 * autograd, GQA/MQA, KV-cache T < S, key padding incl. fully padded rows, sliding window,
 * strided inputs, bf16 (with the bf16-operand path's rounding bounds), sequence packing
 * (segmentIds), and bad inputs -> clear errors.
 */
import { Tensor, ops } from '../lib';
import { attentionWithDropout, scaledDotProductAttention } from '../lib/ops/attention';
import { gradcheck, lcg, maxAbsDiff, randomF64 } from './helpers/gradcheck';

interface Dims { B: number; Hq: number; Hkv: number; T: number; S: number; D: number; Dv: number }
interface RefOpts { causal?: boolean; window?: number; scale?: number; softcap?: number; mask?: number[] | null; seg?: number[] | null }

/** Naive attention in f64: returns out (B,Hq,T,Dv) flat. */
function refAttention(q: ArrayLike<number>, k: ArrayLike<number>, v: ArrayLike<number>, d: Dims, o: RefOpts = {}): Float64Array {
  const causal = o.causal ?? true, window = o.window ?? 0, scale = o.scale ?? 1 / Math.sqrt(d.D);
  const out = new Float64Array(d.B * d.Hq * d.T * d.Dv);
  const group = d.Hq / d.Hkv;
  for (let b = 0; b < d.B; b++) for (let h = 0; h < d.Hq; h++) {
    const kh = Math.floor(h / group);
    for (let i = 0; i < d.T; i++) {
      const pos = d.S - d.T + i;
      const s = new Float64Array(d.S).fill(-Infinity);
      let mx = -Infinity;
      for (let j = 0; j < d.S; j++) {
        if (causal && j > pos) continue;
        if (window > 0 && pos - j >= window) continue;
        if (o.mask && !o.mask[b * d.S + j]) continue;
        if (o.seg && o.seg[b * d.S + j] !== o.seg[b * d.S + pos]) continue;
        let acc = 0;
        for (let e = 0; e < d.D; e++) acc += q[((b * d.Hq + h) * d.T + i) * d.D + e] * k[((b * d.Hkv + kh) * d.S + j) * d.D + e];
        s[j] = acc * scale;
        if (o.softcap) s[j] = o.softcap * Math.tanh(s[j] / o.softcap);
        mx = Math.max(mx, s[j]);
      }
      if (mx === -Infinity) continue;  // no visible key: zeros
      let sum = 0;
      for (let j = 0; j < d.S; j++) { s[j] = s[j] === -Infinity ? 0 : Math.exp(s[j] - mx); sum += s[j]; }
      for (let j = 0; j < d.S; j++) {
        const p = s[j] / sum;
        if (p === 0) continue;
        for (let e = 0; e < d.Dv; e++) out[((b * d.Hq + h) * d.T + i) * d.Dv + e] += p * v[((b * d.Hkv + kh) * d.S + j) * d.Dv + e];
      }
    }
  }
  return out;
}

function inputs(d: Dims, seed: number, dtype: 'f64' | 'f32' = 'f64') {
  const q = randomF64([d.B, d.Hq, d.T, d.D], seed, 1.5);
  const k = randomF64([d.B, d.Hkv, d.S, d.D], seed + 1, 1.5);
  const v = randomF64([d.B, d.Hkv, d.S, d.Dv], seed + 2);
  if (dtype === 'f64') return { q, k, v };
  return { q: q.to(dtype), k: k.to(dtype), v: v.to(dtype) };
}

function maskTensor(mask: number[], B: number, S: number, dtype: 'u8' | 'i64' = 'u8'): Tensor {
  return Tensor.fromArray(mask, { shape: [B, S], dtype });
}

describe('scaledDotProductAttention forward', () => {
  const cases: [string, Dims, RefOpts][] = [
    ['causal T == S', { B: 2, Hq: 2, Hkv: 2, T: 9, S: 9, D: 8, Dv: 8 }, {}],
    ['KV cache T < S', { B: 1, Hq: 2, Hkv: 2, T: 3, S: 11, D: 8, Dv: 5 }, {}],
    ['non-causal', { B: 1, Hq: 2, Hkv: 2, T: 6, S: 10, D: 8, Dv: 8 }, { causal: false }],
    ['GQA Hq=4 Hkv=2', { B: 2, Hq: 4, Hkv: 2, T: 7, S: 7, D: 16, Dv: 16 }, {}],
    ['MQA Hq=8 Hkv=1', { B: 1, Hq: 8, Hkv: 1, T: 5, S: 70, D: 16, Dv: 16 }, {}],
    ['sliding window', { B: 1, Hq: 2, Hkv: 1, T: 80, S: 80, D: 8, Dv: 8 }, { window: 5 }],
    ['custom scale', { B: 1, Hq: 1, Hkv: 1, T: 4, S: 4, D: 8, Dv: 8 }, { scale: 0.7 }],
    ['softcap (Gemma-2)', { B: 1, Hq: 2, Hkv: 1, T: 5, S: 9, D: 8, Dv: 8 }, { scale: 1, softcap: 1.5 }],
  ];
  test.each(cases)('%s matches naive f64 loops', (_name, d, o) => {
    const { q, k, v } = inputs(d, 10);
    const out = scaledDotProductAttention(q, k, v, { causal: o.causal, window: o.window, scale: o.scale, softcap: o.softcap });
    expect(out.shape).toEqual([d.B, d.Hq, d.T, d.Dv]);
    expect(out.dtype).toBe('f64');
    const ref = refAttention(q.toFloat64Array(), k.toFloat64Array(), v.toFloat64Array(), d, o);
    expect(maxAbsDiff(out, ref)).toBeLessThan(1e-12);
  });

  test('f32 and bf16 follow the f64 reference', () => {
    const d: Dims = { B: 1, Hq: 4, Hkv: 2, T: 70, S: 70, D: 64, Dv: 64 };
    const { q, k, v } = inputs(d, 20, 'f32');
    const ref = refAttention(q.toFloat64Array(), k.toFloat64Array(), v.toFloat64Array(), d);
    const out = scaledDotProductAttention(q, k, v);
    expect(out.dtype).toBe('f32');
    expect(maxAbsDiff(out, ref)).toBeLessThan(2e-5);
    const qb = q.to('bf16'), kb = k.to('bf16'), vb = v.to('bf16');
    const ob = scaledDotProductAttention(qb, kb, vb);
    expect(ob.dtype).toBe('bf16');
    const refb = refAttention(qb.toFloat64Array(), kb.toFloat64Array(), vb.toFloat64Array(), d);
    expect(maxAbsDiff(ob, refb)).toBeLessThan(2e-2);
  });

  test('key padding (left and right); fully padded query rows give 0, not NaN', () => {
    const d: Dims = { B: 2, Hq: 2, Hkv: 1, T: 6, S: 6, D: 8, Dv: 8 };
    const mask = [0, 0, 1, 1, 1, 1, /* batch 1: right padding */ 1, 1, 1, 1, 0, 0];
    const { q, k, v } = inputs(d, 30);
    const out = scaledDotProductAttention(q, k, v, { keyMask: maskTensor(mask, 2, 6) });
    const o = out.toFloat64Array();
    expect(o.some(Number.isNaN)).toBe(false);
    expect(maxAbsDiff(o, refAttention(q.toFloat64Array(), k.toFloat64Array(), v.toFloat64Array(), d, { mask }))).toBeLessThan(1e-12);
    for (let h = 0; h < 2; h++) for (let i = 0; i < 2; i++) for (let e = 0; e < 8; e++) expect(o[(h * 6 + i) * 8 + e]).toBe(0);
    // An i64 HF-style attention_mask works the same.
    const o64 = scaledDotProductAttention(q, k, v, { keyMask: maskTensor(mask, 2, 6, 'i64') });
    expect(maxAbsDiff(o64, o)).toBe(0);
  });

  test('strided q/k/v (transposed from (B,T,H,D)) give the same result as contiguous ones', () => {
    const d: Dims = { B: 2, Hq: 4, Hkv: 2, T: 10, S: 10, D: 8, Dv: 8 };
    const q4 = randomF64([2, 10, 4, 8], 40), k4 = randomF64([2, 10, 2, 8], 41), v4 = randomF64([2, 10, 2, 8], 42);
    const q = q4.transpose(1, 2), k = k4.transpose(1, 2), v = v4.transpose(1, 2);
    const out = scaledDotProductAttention(q, k, v);
    const ref = refAttention(q.contiguous().toFloat64Array(), k.contiguous().toFloat64Array(), v.contiguous().toFloat64Array(), d);
    expect(maxAbsDiff(out, ref)).toBeLessThan(1e-12);
  });
});

/** Packed segment ids (B,S) from per-row example lengths; the rest of a row gets `padId`. */
function packedSegs(rows: number[][], S: number, padId = 0): number[] {
  const out: number[] = [];
  for (const lens of rows) {
    const r = new Array<number>(S).fill(padId);
    let o = 0;
    lens.forEach((L, k) => { for (let t = 0; t < L; t++) r[o + t] = k + 1; o += L; });
    out.push(...r);
  }
  return out;
}

describe('scaledDotProductAttention with segmentIds (sequence packing)', () => {
  const cases: [string, Dims, RefOpts, number[][]][] = [
    // segment boundaries inside and across the kernel's 64-wide key/query blocks
    ['packed rows, blocks straddled', { B: 2, Hq: 2, Hkv: 1, T: 150, S: 150, D: 8, Dv: 8 }, {}, [[40, 70, 30, 10], [64, 64, 22]]],
    ['packed + right padding (pad id 0, masked)', { B: 2, Hq: 2, Hkv: 2, T: 100, S: 100, D: 8, Dv: 6 }, {}, [[30, 20], [3, 5, 7, 60]]],
    ['KV cache T < S: queries use the last T ids', { B: 1, Hq: 4, Hkv: 2, T: 20, S: 90, D: 8, Dv: 8 }, {}, [[50, 25, 15]]],
    ['window + softcap', { B: 1, Hq: 2, Hkv: 1, T: 130, S: 130, D: 8, Dv: 8 }, { window: 24, softcap: 2, scale: 0.5 }, [[70, 60]]],
    ['non-causal (bidirectional within each example)', { B: 1, Hq: 2, Hkv: 2, T: 80, S: 80, D: 8, Dv: 8 }, { causal: false }, [[17, 33, 30]]],
  ];
  test.each(cases)('%s matches naive f64 loops', (_name, d, o, lens) => {
    const { q, k, v } = inputs(d, 100);
    const seg = packedSegs(lens, d.S);
    const mask = seg.some((x) => x === 0) ? seg.map((x) => (x ? 1 : 0)) : null;
    for (const dtype of ['i32', 'i64'] as const) {
      const out = scaledDotProductAttention(q, k, v, {
        causal: o.causal, window: o.window, scale: o.scale, softcap: o.softcap,
        keyMask: mask ? maskTensor(mask, d.B, d.S) : null, segmentIds: Tensor.fromArray(seg, { shape: [d.B, d.S], dtype }),
      });
      const ref = refAttention(q.toFloat64Array(), k.toFloat64Array(), v.toFloat64Array(), d, { ...o, mask, seg });
      const a = out.toFloat64Array();
      expect(a.some(Number.isNaN)).toBe(false);
      expect(maxAbsDiff(a, ref)).toBeLessThan(1e-12);
    }
  });

  test('arbitrary (non-contiguous) ids follow the equality rule', () => {
    const d: Dims = { B: 2, Hq: 2, Hkv: 1, T: 70, S: 70, D: 8, Dv: 8 };
    const { q, k, v } = inputs(d, 110);
    const r = lcg(5);
    const seg = Array.from({ length: d.B * d.S }, () => Math.floor((r() + 1) * 2) - 7);   // ids in {-7..-4}
    const out = scaledDotProductAttention(q, k, v, { segmentIds: Tensor.fromArray(seg, { shape: [d.B, d.S], dtype: 'i64' }) });
    expect(maxAbsDiff(out, refAttention(q.toFloat64Array(), k.toFloat64Array(), v.toFloat64Array(), d, { seg }))).toBeLessThan(1e-12);
  });

  test('each packed example equals the example run alone; f32 too', () => {
    const lens = [23, 64, 41];
    const S = lens.reduce((a, b) => a + b, 0);
    const d: Dims = { B: 1, Hq: 4, Hkv: 2, T: S, S, D: 16, Dv: 16 };
    const { q, k, v } = inputs(d, 120, 'f32');
    const segmentIds = Tensor.fromArray(packedSegs([lens], S), { shape: [1, S], dtype: 'i32' });
    const packed = scaledDotProductAttention(q, k, v, { segmentIds });
    let o = 0;
    for (const L of lens) {
      const part = (x: Tensor) => ops.slice(x, 2, o, o + L);
      const alone = scaledDotProductAttention(part(q), part(k), part(v));
      expect(maxAbsDiff(part(packed), alone)).toBeLessThan(1e-6);
      o += L;
    }
  });

  test('finite differences in f64: packed rows + padding + GQA, i32 and i64 ids', () => {
    const d: Dims = { B: 2, Hq: 2, Hkv: 1, T: 7, S: 7, D: 4, Dv: 3 };
    const { q, k, v } = inputs(d, 130);
    const seg = packedSegs([[3, 2, 2], [1, 4]], 7);
    const keyMask = maskTensor(seg.map((x) => (x ? 1 : 0)), 2, 7);
    for (const dtype of ['i32', 'i64'] as const) {
      const segmentIds = Tensor.fromArray(seg, { shape: [2, 7], dtype });
      gradcheck(([a, b, c]) => scaledDotProductAttention(a, b, c, { keyMask, segmentIds }),
        [q.requiresGrad_(), k.requiresGrad_(), v.requiresGrad_()]);
    }
  });

  test('finite differences in f64: KV cache T < S with segments and a window', () => {
    const d: Dims = { B: 1, Hq: 2, Hkv: 2, T: 4, S: 9, D: 3, Dv: 3 };
    const { q, k, v } = inputs(d, 140);
    const segmentIds = Tensor.fromArray(packedSegs([[4, 3, 2]], 9), { shape: [1, 9], dtype: 'i64' });
    gradcheck(([a, b, c]) => scaledDotProductAttention(a, b, c, { segmentIds, window: 3 }),
      [q.requiresGrad_(), k.requiresGrad_(), v.requiresGrad_()]);
  });

  test('queries with no visible key (padding id not matching any real key) give 0 and zero gradients', () => {
    const d: Dims = { B: 1, Hq: 2, Hkv: 2, T: 6, S: 6, D: 4, Dv: 4 };
    const { q, k, v } = inputs(d, 150);
    q.requiresGrad_(); k.requiresGrad_(); v.requiresGrad_();
    // tokens 4,5 are padding (id 0, masked): they see no key at all
    const seg = [1, 1, 2, 2, 0, 0];
    const out = scaledDotProductAttention(q, k, v, {
      keyMask: maskTensor([1, 1, 1, 1, 0, 0], 1, 6), segmentIds: Tensor.fromArray(seg, { shape: [1, 6], dtype: 'i32' }),
    });
    ops.sum(ops.mul(out, randomF64([1, 2, 6, 4], 151))).backward();
    const o = out.toFloat64Array(), gq = q.grad!.toFloat64Array();
    for (const x of [...o, ...gq, ...k.grad!.toFloat64Array(), ...v.grad!.toFloat64Array()]) expect(Number.isFinite(x)).toBe(true);
    for (let h = 0; h < 2; h++) for (let i = 4; i < 6; i++) for (let e = 0; e < 4; e++) {
      expect(o[(h * 6 + i) * 4 + e]).toBe(0);
      expect(gq[(h * 6 + i) * 4 + e]).toBe(0);
    }
  });
});

describe('scaledDotProductAttention backward', () => {
  test('finite differences in f64: causal, KV cache, GQA', () => {
    const d: Dims = { B: 1, Hq: 4, Hkv: 2, T: 3, S: 5, D: 4, Dv: 3 };
    const { q, k, v } = inputs(d, 50);
    gradcheck(([a, b, c]) => scaledDotProductAttention(a, b, c), [q.requiresGrad_(), k.requiresGrad_(), v.requiresGrad_()]);
  });

  test('finite differences in f64: padding mask + sliding window + MQA', () => {
    const d: Dims = { B: 2, Hq: 2, Hkv: 1, T: 6, S: 6, D: 4, Dv: 4 };
    const { q, k, v } = inputs(d, 60);
    const keyMask = maskTensor([1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1], 2, 6);
    gradcheck(([a, b, c]) => scaledDotProductAttention(a, b, c, { keyMask, window: 3 }),
      [q.requiresGrad_(), k.requiresGrad_(), v.requiresGrad_()]);
  });

  test('finite differences in f64: non-causal with scale, only some inputs need grad', () => {
    const d: Dims = { B: 1, Hq: 2, Hkv: 2, T: 4, S: 6, D: 3, Dv: 2 };
    const { q, k, v } = inputs(d, 70);
    gradcheck(([a, b, c]) => scaledDotProductAttention(a, b, c, { causal: false, scale: 0.9 }), [q, k.requiresGrad_(), v]);
    expect(q.grad).toBeNull();
    expect(v.grad).toBeNull();
  });

  test('finite differences in f64: softcap with padding', () => {
    const d: Dims = { B: 2, Hq: 2, Hkv: 2, T: 4, S: 5, D: 4, Dv: 3 };
    const { q, k, v } = inputs(d, 65);
    const keyMask = maskTensor([0, 1, 1, 1, 1, 1, 1, 1, 1, 0], 2, 5);
    gradcheck(([a, b, c]) => scaledDotProductAttention(a, b, c, { keyMask, softcap: 0.8, scale: 1 }),
      [q.requiresGrad_(), k.requiresGrad_(), v.requiresGrad_()]);
  });

  test('fully padded rows get zero gradients and no NaN; graph handles are released', () => {
    const d: Dims = { B: 1, Hq: 2, Hkv: 2, T: 5, S: 5, D: 4, Dv: 4 };
    const { q, k, v } = inputs(d, 80);
    q.requiresGrad_(); k.requiresGrad_(); v.requiresGrad_();
    const out = scaledDotProductAttention(q, k, v, { keyMask: maskTensor([0, 0, 1, 1, 1], 1, 5) });
    const node = out.gradFn!;
    expect(node.saved.length).toBeGreaterThan(0);
    ops.sum(ops.mul(out, randomF64([1, 2, 5, 4], 81))).backward();
    expect(node.saved.length).toBe(0);
    const gq = q.grad!.toFloat64Array(), gk = k.grad!.toFloat64Array(), gv = v.grad!.toFloat64Array();
    for (const g of [gq, gk, gv]) expect(g.some((x) => !Number.isFinite(x))).toBe(false);
    for (let h = 0; h < 2; h++) for (let i = 0; i < 2 * 4; i++) {
      expect(gq[h * 20 + i]).toBe(0);   // query rows 0,1 see nothing
      expect(gk[h * 20 + i]).toBe(0);   // keys 0,1 are padding
      expect(gv[h * 20 + i]).toBe(0);
    }
  });

  test('f32 gradients agree with f64 gradients', () => {
    const d: Dims = { B: 1, Hq: 4, Hkv: 1, T: 65, S: 90, D: 16, Dv: 16 };
    const { q, k, v } = inputs(d, 90);
    const w = randomF64([1, 4, 65, 16], 91);
    const grads = (dtype: 'f32' | 'f64') => {
      // detach(): fresh leaves for each dtype (a cast of a grad-requiring leaf would route grads back to it)
      const a = q.detach().to(dtype).requiresGrad_(), b = k.detach().to(dtype).requiresGrad_(), c = v.detach().to(dtype).requiresGrad_();
      ops.sum(ops.mul(scaledDotProductAttention(a, b, c, { window: 40 }), w.to(dtype))).backward();
      return [a.grad!, b.grad!, c.grad!];
    };
    const g64 = grads('f64'), g32 = grads('f32');
    for (let i = 0; i < 3; i++) expect(maxAbsDiff(g32[i], g64[i])).toBeLessThan(1e-4);
  });
});

/**
 * Naive f64 forward and backward with the magnitudes that bound the bf16 path's error
 * (csrc/cpu/attention_bf16.cpp rounds the probabilities P and the score gradients dS to bf16
 * before their products, f32 accumulation): per element,
 *   |out − ref| ≤ u·(Σ_j p_j|v_j| + |ref|),   |dV − ref| ≤ u·(Σ_i p_ij|dO_i| + |ref|),
 *   |dK − ref| ≤ u·(s·Σ_i |dS_ij||q_i| + |ref|) + s·Σ_i p_ij f_ij |ΔD_i| |q_i|   (dQ alike with k_j),
 * u = 2^-8 (bf16 round-to-nearest-even), ΔD_i the error of rowsum(dO∘out) due to the bf16 `out`
 * the backward is given (present on the f32 path too), plus an f32 allowance.
 */
function refWithBounds(q: Float64Array, k: Float64Array, v: Float64Array, dO: Float64Array, outGiven: Float64Array, d: Dims, o: RefOpts = {}) {
  const causal = o.causal ?? true, window = o.window ?? 0, scale = o.scale ?? 1 / Math.sqrt(d.D);
  const group = d.Hq / d.Hkv;
  const r = {
    out: new Float64Array(d.B * d.Hq * d.T * d.Dv), dq: new Float64Array(q.length), dk: new Float64Array(k.length), dv: new Float64Array(v.length),
    mOut: new Float64Array(d.B * d.Hq * d.T * d.Dv), mDq1: new Float64Array(q.length), mDq2: new Float64Array(q.length),
    mDk1: new Float64Array(k.length), mDk2: new Float64Array(k.length), mDv: new Float64Array(v.length),
  };
  for (let b = 0; b < d.B; b++) for (let h = 0; h < d.Hq; h++) {
    const kh = Math.floor(h / group);
    for (let i = 0; i < d.T; i++) {
      const pos = d.S - d.T + i, row = (b * d.Hq + h) * d.T + i;
      const p = new Float64Array(d.S), fac = new Float64Array(d.S).fill(1), vis = new Uint8Array(d.S);
      let mx = -Infinity;
      for (let j = 0; j < d.S; j++) {
        if ((causal && j > pos) || (window > 0 && pos - j >= window) || (o.mask && !o.mask[b * d.S + j]) ||
            (o.seg && o.seg[b * d.S + j] !== o.seg[b * d.S + pos])) continue;
        let acc = 0;
        for (let e = 0; e < d.D; e++) acc += q[row * d.D + e] * k[((b * d.Hkv + kh) * d.S + j) * d.D + e];
        let sc = acc * scale;
        if (o.softcap) { const t = Math.tanh(sc / o.softcap); sc = o.softcap * t; fac[j] = 1 - t * t; }
        p[j] = sc; vis[j] = 1; mx = Math.max(mx, sc);
      }
      if (mx === -Infinity) continue;  // no visible key: zeros
      let sum = 0;
      for (let j = 0; j < d.S; j++) { p[j] = vis[j] ? Math.exp(p[j] - mx) : 0; sum += p[j]; }
      for (let j = 0; j < d.S; j++) p[j] /= sum;
      const dp = new Float64Array(d.S);
      let dsum = 0;
      for (let j = 0; j < d.S; j++) {
        if (!p[j]) continue;
        const kv = (b * d.Hkv + kh) * d.S + j;
        for (let e = 0; e < d.Dv; e++) {
          r.out[row * d.Dv + e] += p[j] * v[kv * d.Dv + e];
          r.mOut[row * d.Dv + e] += p[j] * Math.abs(v[kv * d.Dv + e]);
          dp[j] += dO[row * d.Dv + e] * v[kv * d.Dv + e];
        }
        dsum += p[j] * dp[j];
      }
      let dD = 0, dDn = 0;
      for (let e = 0; e < d.Dv; e++) {
        dD += dO[row * d.Dv + e] * (outGiven[row * d.Dv + e] - r.out[row * d.Dv + e]);
        dDn += Math.abs(dO[row * d.Dv + e] * outGiven[row * d.Dv + e]);
      }
      dD = Math.abs(dD) + 1e-5 * dDn;
      for (let j = 0; j < d.S; j++) {
        if (!p[j]) continue;
        const kv = (b * d.Hkv + kh) * d.S + j;
        const ds = p[j] * (dp[j] - dsum) * fac[j], pd = p[j] * fac[j] * dD;
        for (let e = 0; e < d.Dv; e++) {
          r.dv[kv * d.Dv + e] += p[j] * dO[row * d.Dv + e];
          r.mDv[kv * d.Dv + e] += p[j] * Math.abs(dO[row * d.Dv + e]);
        }
        for (let e = 0; e < d.D; e++) {
          r.dq[row * d.D + e] += scale * ds * k[kv * d.D + e];
          r.dk[kv * d.D + e] += scale * ds * q[row * d.D + e];
          r.mDq1[row * d.D + e] += scale * Math.abs(ds * k[kv * d.D + e]);
          r.mDq2[row * d.D + e] += scale * pd * Math.abs(k[kv * d.D + e]);
          r.mDk1[kv * d.D + e] += scale * Math.abs(ds * q[row * d.D + e]);
          r.mDk2[kv * d.D + e] += scale * pd * Math.abs(q[row * d.D + e]);
        }
      }
    }
  }
  return r;
}

/** Largest |x − ref| / (u·(m1 + |ref|) + m2 + f32Tol·max(1, max|ref|)); ≤ 1 is within the bound. */
function boundRatio(x: Float64Array, ref: Float64Array, m1: Float64Array, m2: Float64Array | null, f32Tol: number): number {
  const u = 2 ** -8;
  let mx = 1, worst = 0;
  for (const y of ref) mx = Math.max(mx, Math.abs(y));
  for (let i = 0; i < x.length; i++) {
    if (Number.isNaN(x[i])) return Infinity;
    const tol = 1.01 * u * (m1[i] + Math.abs(ref[i])) + (m2 ? 1.01 * m2[i] : 0) + f32Tol * mx;
    worst = Math.max(worst, Math.abs(x[i] - ref[i]) / tol);
  }
  return worst;
}

/** max |x − ref| / max(1, max|ref|) */
function relErr(x: Float64Array, ref: Float64Array): number {
  let m = 0, s = 1;
  for (let i = 0; i < x.length; i++) { m = Math.max(m, Math.abs(x[i] - ref[i])); s = Math.max(s, Math.abs(ref[i])); }
  return m / s;
}

describe('scaledDotProductAttention with bf16 inputs (bf16 operands and f32 accumulation on AVX512-BF16 CPUs)', () => {
  // The path taken depends on the CPU (runtime cpuInfo().avx512bf16); the bounds hold for both.
  const cases: [string, Dims, RefOpts, boolean][] = [
    ['causal GQA, strided (B,T,H,D) views', { B: 1, Hq: 4, Hkv: 2, T: 130, S: 130, D: 64, Dv: 64 }, {}, true],
    ['window + softcap + left padding (empty query rows)', { B: 2, Hq: 2, Hkv: 1, T: 100, S: 100, D: 32, Dv: 32 },
      { window: 40, softcap: 2, scale: 0.5, mask: Array.from({ length: 200 }, (_, j) => (j < 10 ? 0 : 1)) }, false],
    ['packed segments + KV cache (odd offset), MQA', { B: 1, Hq: 4, Hkv: 1, T: 37, S: 150, D: 48, Dv: 40 },
      { seg: packedSegs([[60, 50, 40]], 150) }, true],
    ['odd head dims, non-causal', { B: 1, Hq: 2, Hkv: 2, T: 17, S: 17, D: 15, Dv: 9 }, { causal: false }, false],
  ];
  test.each(cases)('%s: forward and gradients within bf16-rounding bounds of naive f64 loops', (_name, d, o, strided) => {
    const mk = (shape: number[], seed: number) => {
      if (!strided) return randomF64(shape, seed, 1.5).to('bf16');
      const [B, H, L, E] = shape;
      return randomF64([B, L, H, E], seed, 1.5).to('bf16').transpose(1, 2);
    };
    const qb = mk([d.B, d.Hq, d.T, d.D], 200), kb = mk([d.B, d.Hkv, d.S, d.D], 201), vb = mk([d.B, d.Hkv, d.S, d.Dv], 202);
    const g = randomF64([d.B, d.Hq, d.T, d.Dv], 203).to('bf16');
    const opts = {
      causal: o.causal, window: o.window, scale: o.scale, softcap: o.softcap,
      keyMask: o.mask ? maskTensor(o.mask, d.B, d.S) : null,
      segmentIds: o.seg ? Tensor.fromArray(o.seg, { shape: [d.B, d.S], dtype: 'i32' }) : null,
    };
    const run = (dtype: 'bf16' | 'f32') => {
      const a = qb.detach().to(dtype).requiresGrad_(), b = kb.detach().to(dtype).requiresGrad_(), c = vb.detach().to(dtype).requiresGrad_();
      const out = scaledDotProductAttention(a, b, c, opts);
      out.backward(g.to(dtype));
      // f32 results rounded to bf16: what bf16 inputs gave before the bf16 path (f32 compute, bf16 out)
      const f = (t: Tensor) => t.to('bf16').contiguous().toFloat64Array();
      return { out: f(out), dq: f(a.grad!), dk: f(b.grad!), dv: f(c.grad!) };
    };
    const x = run('bf16'), y = run('f32');
    const f64 = (t: Tensor) => t.contiguous().toFloat64Array();
    const ref = refWithBounds(f64(qb), f64(kb), f64(vb), f64(g), x.out, d, o);
    expect(boundRatio(x.out, ref.out, ref.mOut, null, 2e-5)).toBeLessThanOrEqual(1);
    expect(boundRatio(x.dv, ref.dv, ref.mDv, null, 1e-4)).toBeLessThanOrEqual(1);
    expect(boundRatio(x.dk, ref.dk, ref.mDk1, ref.mDk2, 1e-4)).toBeLessThanOrEqual(1);
    expect(boundRatio(x.dq, ref.dq, ref.mDq1, ref.mDq2, 1e-4)).toBeLessThanOrEqual(1);
    // No worse than the f32 computation's error by more than a small factor (floor: 2^-9, bf16's own resolution).
    for (const key of ['out', 'dq', 'dk', 'dv'] as const) {
      const e16 = relErr(x[key], ref[key]), e32 = relErr(y[key], ref[key]);
      expect(e16 / Math.max(e32, 2 ** -9)).toBeLessThanOrEqual(2.5);
    }
    if (o.mask) {  // rows 0..9 of batch 0 see no key: exactly 0, and so is their dq
      for (let h = 0; h < d.Hq; h++) for (let i = 0; i < 10; i++) for (let e = 0; e < d.D; e++) {
        expect(x.out[(h * d.T + i) * d.Dv + Math.min(e, d.Dv - 1)]).toBe(0);
        expect(x.dq[(h * d.T + i) * d.D + e]).toBe(0);
      }
    }
  });
});

describe('attentionWithDropout (attention-probability dropout, composed from ops)', () => {
  const d: Dims = { B: 2, Hq: 2, Hkv: 2, T: 5, S: 7, D: 4, Dv: 4 };
  const mask = [1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1];
  const seg = [1, 1, 1, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1];

  test('p = 0 equals the naive f64 reference (causal with T < S, key padding, segments)', () => {
    const { q, k, v } = inputs(d, 160);
    const keyMask = maskTensor(mask, 2, 7);
    const segmentIds = Tensor.fromArray(seg, { shape: [2, 7], dtype: 'i64' });
    const o = attentionWithDropout(q, k, v, 0, 1, { keyMask, segmentIds, scale: 0.8 });
    const ref = refAttention(q.toFloat64Array(), k.toFloat64Array(), v.toFloat64Array(), d, { mask, seg, scale: 0.8 });
    expect(maxAbsDiff(o.toFloat64Array(), ref)).toBeLessThan(1e-12);
  });

  test('p > 0: each probability is dropped or scaled by 1/(1-p); the same seed gives the same output', () => {
    // v = identity rows (S = Dv) so out[i, j] = kept(i, j) · P(i, j) / (1 - p)
    const e: Dims = { B: 1, Hq: 1, Hkv: 1, T: 16, S: 16, D: 4, Dv: 16 };
    const { q, k } = inputs(e, 170);
    const eye = Tensor.fromArray(Array.from({ length: 256 }, (_, i) => (i % 17 === 0 ? 1 : 0)), { shape: [1, 1, 16, 16], dtype: 'f64' });
    const p = 0.4;
    const o = attentionWithDropout(q, k, eye, p, 77).toFloat64Array();
    const probs = refAttention(q.toFloat64Array(), k.toFloat64Array(), eye.toFloat64Array(), e);
    let kept = 0, visible = 0;
    for (let i = 0; i < 256; i++) {
      if (probs[i] === 0) { expect(o[i]).toBe(0); continue; }
      visible++;
      if (o[i] !== 0) { kept++; expect(Math.abs(o[i] - probs[i] / (1 - p))).toBeLessThan(1e-12); }
    }
    expect(kept / visible).toBeGreaterThan(0.4);
    expect(kept / visible).toBeLessThan(0.8);
    expect(maxAbsDiff(attentionWithDropout(q, k, eye, p, 77).toFloat64Array(), o)).toBe(0);
    expect(maxAbsDiff(attentionWithDropout(q, k, eye, p, 78).toFloat64Array(), o)).toBeGreaterThan(0);
  });

  test('finite differences in f64 through a fixed dropout mask', () => {
    const { q, k, v } = inputs(d, 180);
    const keyMask = maskTensor(mask, 2, 7);
    gradcheck(([a, b, c]) => attentionWithDropout(a, b, c, 0.3, 5, { keyMask }), [q.requiresGrad_(), k.requiresGrad_(), v.requiresGrad_()]);
  });

  test('grouped-query heads are refused with a clear error', () => {
    const { q, k, v } = inputs({ B: 1, Hq: 2, Hkv: 1, T: 3, S: 3, D: 2, Dv: 2 }, 190);
    expect(() => attentionWithDropout(q, k, v, 0.1, 1)).toThrow(/no grouped-query heads/);
  });
});

describe('scaledDotProductAttention errors', () => {
  const r = lcg(1);
  const T = (shape: number[], dtype: 'f32' | 'u8' = 'f32') =>
    Tensor.fromArray(Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => (dtype === 'u8' ? 1 : r())), { shape, dtype });
  const q = T([1, 4, 3, 8]), k = T([1, 2, 5, 8]), v = T([1, 2, 5, 8]);

  test('shape, dtype and option errors name the op and the shapes', () => {
    expect(() => scaledDotProductAttention(T([4, 3, 8]), k, v)).toThrow(/q must be 4-d/);
    expect(() => scaledDotProductAttention(T([1, 3, 3, 8]), k, v)).toThrow(/Hq=3 must be a multiple of kv heads Hkv=2/);
    expect(() => scaledDotProductAttention(T([1, 4, 3, 6]), k, v)).toThrow(/same head dim/);
    expect(() => scaledDotProductAttention(T([1, 4, 6, 8]), k, v)).toThrow(/T <= S/);
    expect(() => scaledDotProductAttention(q, k, T([1, 2, 4, 8]))).toThrow(/must agree on \(B,Hkv,S\)/);
    expect(() => scaledDotProductAttention(q, k.to('f64'), v)).toThrow(/share one dtype/);
    expect(() => scaledDotProductAttention(q, k, v, { keyMask: T([1, 4], 'u8') })).toThrow(/key_mask must be \(B,S\) = \[1,5\]/);
    expect(() => scaledDotProductAttention(q, k, v, { window: -2 })).toThrow(/window must be a non-negative integer/);
    expect(() => scaledDotProductAttention(q, k, v, { window: 1.5 })).toThrow(/window must be a non-negative integer/);
    expect(() => scaledDotProductAttention(q, k, v, { window: 4, causal: false })).toThrow(/requires causal/);
    expect(() => scaledDotProductAttention(q, k, v, { scale: NaN })).toThrow(/scale must be a finite number/);
    expect(() => scaledDotProductAttention(q, k, v, { softcap: -1 })).toThrow(/softcap must be a finite number >= 0/);
    expect(() => scaledDotProductAttention(q, 3 as unknown as Tensor, v)).toThrow(/argument 'k' must be a Tensor/);
    expect(() => scaledDotProductAttention(q, k, v, { segmentIds: T([1, 5]) })).toThrow(/segmentIds must be an i32 or i64 tensor, got f32/);
    expect(() => scaledDotProductAttention(q, k, v, { segmentIds: Tensor.fromArray([1, 1, 2], { shape: [1, 3], dtype: 'i32' }) }))
      .toThrow(/segmentIds must have shape \(B,S\) = \[1,5\]/);
    expect(() => scaledDotProductAttention(q, k, v, { segmentIds: 'x' as unknown as Tensor })).toThrow(/argument 'segmentIds' must be a Tensor/);
  });
});

describe('PEFTKIT_ISA=avx512-nobf16 and setIsa', () => {
  const { execFileSync } = require('child_process') as typeof import('child_process');
  const { native, addonFile } = require('../lib/native') as typeof import('../lib/native');
  const info = () => native.cpuInfo() as { isa: string; avx512bf16: boolean; bf16Kernels: boolean };
  const hw = info();

  test('the environment keeps AVX-512 but switches the BF16 kernels off; the default uses them where the CPU has them', () => {
    const child = (isa?: string) => JSON.parse(execFileSync(process.execPath,
      ['-e', `process.stdout.write(JSON.stringify(require(${JSON.stringify(addonFile)}).cpuInfo()))`],
      { env: { ...process.env, PEFTKIT_ISA: isa ?? '' } }).toString());
    const off = child('avx512-nobf16'), dflt = child();
    expect(off.isa).toBe(dflt.isa);
    expect(off.bf16Kernels).toBe(false);
    expect(dflt.bf16Kernels).toBe(dflt.isa === 'avx512' && dflt.avx512bf16);
  });

  test('setIsa("avx512-nobf16") runs bf16 attention through the f32 path, setIsa("avx512") restores it', () => {
    try {
      native.setIsa('avx512-nobf16');
      expect(info().bf16Kernels).toBe(false);
      // The f32 path on bf16 inputs: the same bits as the f32 computation on the widened values.
      const q = randomF64([1, 2, 33, 16], 1).to('bf16'), k = randomF64([1, 2, 33, 16], 2).to('bf16'), v = randomF64([1, 2, 33, 16], 3).to('bf16');
      const yb = scaledDotProductAttention(q, k, v, { causal: true });
      const yf = scaledDotProductAttention(q.to('f32'), k.to('f32'), v.to('f32'), { causal: true }).to('bf16');
      expect(maxAbsDiff(yb, yf)).toBe(0);
      for (const t of [q, k, v, yb, yf]) t.dispose();
    } finally {
      native.setIsa('avx512');
    }
    expect(info().bf16Kernels).toBe(hw.bf16Kernels);
  });
});
