/**
 * Optimizers: AdamW against a step-by-step f64 evaluation of torch.optim.AdamW's update, 8-bit
 * states against 32-bit ones on a small quadratic, bitsandbytes' dynamic map against its
 * definition, paged states, state()/loadState() round trips, LoRA+ and gradient clipping.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Tensor, setNumThreads, numThreads, tidy, ops } from '../lib';
import { native } from '../lib/native';
import {
  AdamW, AdamW8bit, PagedAdamW, PagedAdamW8bit, clipGradNorm, gradNorm, flattenState, unflattenState, disposeState,
  pagedMemoryStats,
} from '../lib/optim';
import { loadSafetensors, readMetadata, saveSafetensors } from '../lib/io/safetensors';
import { lcg } from './helpers/gradcheck';

// ---- references written from torch.optim.AdamW's definition (single-tensor path) ----
interface Hyper { lr: number; beta1: number; beta2: number; eps: number; wd: number }
interface RefState { p: number[]; m: number[]; v: number[]; t: number }

function refInit(p: number[]): RefState { return { p: [...p], m: p.map(() => 0), v: p.map(() => 0), t: 0 }; }

/** One AdamW step in f64: p·(1−lr·wd); m lerp; v; bias corrections; eps after the sqrt. */
function refStep(s: RefState, g: number[], h: Hyper): void {
  s.t += 1;
  const bc1 = 1 - h.beta1 ** s.t, bc2 = 1 - h.beta2 ** s.t;
  const stepSize = h.lr / bc1, bc2Sqrt = Math.sqrt(bc2);
  const w = 1 - h.beta1;
  for (let i = 0; i < s.p.length; i++) {
    s.p[i] = s.p[i] * (1 - h.lr * h.wd);
    s.m[i] = w < 0.5 ? s.m[i] + w * (g[i] - s.m[i]) : g[i] - (g[i] - s.m[i]) * (1 - w);
    s.v[i] = s.v[i] * h.beta2 + (1 - h.beta2) * g[i] * g[i];
    const denom = Math.sqrt(s.v[i]) / bc2Sqrt + h.eps;
    s.p[i] = s.p[i] + (-stepSize * s.m[i]) / denom;
  }
}

function rand(n: number, seed: number, scale = 1): number[] {
  const r = lcg(seed);
  return Array.from({ length: n }, () => r() * scale);
}

function setGrad(p: Tensor, g: number[], dtype = p.dtype): void {
  if (p.grad) p.grad.dispose();
  p.grad = Tensor.fromArray(g, { shape: [...p.shape], dtype });
}

function maxRel(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]) / Math.max(1e-30, Math.abs(b[i])));
  return m;
}
function maxAbs(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

const bf16Round = (x: number): number => {
  const f = new Float32Array([x]);
  const u = new Uint32Array(f.buffer);
  const lsb = (u[0] >>> 16) & 1;
  u[0] = ((u[0] + 0x7fff + lsb) >>> 16) << 16;
  return f[0];
};

describe('AdamW matches torch.optim.AdamW step by step', () => {
  const cases: [string, Hyper][] = [
    ['defaults + weight decay', { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, wd: 0.01 }],
    ['strong decay, big eps', { lr: 5e-2, beta1: 0.8, beta2: 0.95, eps: 1e-3, wd: 0.3 }],
    ['beta1 < 0.5 (other lerp branch), no decay', { lr: 1e-3, beta1: 0.3, beta2: 0.9, eps: 1e-8, wd: 0 }],
  ];
  for (const [name, h] of cases) {
    test(`f64 params: ${name}`, () => {
      const n = 37;
      const p0 = rand(n, 1);
      const p = Tensor.fromArray(p0, { dtype: 'f64', requiresGrad: true });
      const opt = new AdamW([p], { lr: h.lr, betas: [h.beta1, h.beta2], eps: h.eps, weightDecay: h.wd });
      const ref = refInit(p0);
      for (let t = 0; t < 7; t++) {
        const g = rand(n, 100 + t, 0.5 + t);
        setGrad(p, g);
        opt.step();
        refStep(ref, g, h);
        expect(maxRel(p.toFloat64Array(), ref.p)).toBeLessThan(1e-13);
        const st = opt.stateOf(p)!;
        expect(st.step).toBe(t + 1);
        expect(maxRel(st.expAvg!.toFloat64Array(), ref.m)).toBeLessThan(1e-13);
        expect(maxRel(st.expAvgSq!.toFloat64Array(), ref.v)).toBeLessThan(1e-13);
      }
      opt.dispose();
    });
  }

  test('f32 params (f32 math) stay within f32 rounding of the f64 reference', () => {
    const h: Hyper = { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, wd: 0.1 };
    const n = 50000;   // several threads' worth
    const p0 = rand(n, 3);
    const p = Tensor.fromArray(p0, { requiresGrad: true });
    const opt = new AdamW([p], { lr: h.lr, betas: [h.beta1, h.beta2], eps: h.eps, weightDecay: h.wd });
    const ref = refInit(Array.from(new Float32Array(p0)));
    for (let t = 0; t < 5; t++) {
      const g = Array.from(new Float32Array(rand(n, 200 + t)));
      setGrad(p, g);
      opt.step();
      refStep(ref, g, h);
    }
    // each step moves p by ~lr; f32 error is ~1e-7 relative to |p| ~ 1
    expect(maxAbs(p.toFloat64Array(), ref.p)).toBeLessThan(2e-6);
    expect(maxRel(opt.stateOf(p)!.expAvgSq!.toFloat64Array(), ref.v)).toBeLessThan(1e-5);
  });

  test('bf16 params: f32 math, rounded to bf16 each step', () => {
    const h: Hyper = { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, wd: 0.01 };
    const n = 300;
    const p0 = rand(n, 4).map(bf16Round);
    const p = Tensor.fromArray(p0, { dtype: 'bf16', requiresGrad: true });
    const opt = new AdamW([p], { lr: h.lr, betas: [h.beta1, h.beta2], eps: h.eps, weightDecay: h.wd });
    const ref = refInit(p0);
    for (let t = 0; t < 4; t++) {
      const g = rand(n, 300 + t).map(bf16Round);
      setGrad(p, g);
      opt.step();
      refStep(ref, g, h);
      ref.p = ref.p.map(bf16Round);   // the parameter is stored in bf16 after every step
      const got = p.toFloat64Array();
      // identical up to a rare one-ulp rounding difference (f32 vs f64 math before rounding)
      for (let i = 0; i < n; i++) expect(Math.abs(got[i] - ref.p[i])).toBeLessThanOrEqual(Math.abs(ref.p[i]) * 2 ** -7 + 1e-30);
    }
    expect(opt.stateOf(p)!.expAvg!.dtype).toBe('f32');
  });

  test('f32 gradient on bf16 params is accepted', () => {
    const p = Tensor.fromArray([0.5, -0.25], { dtype: 'bf16', requiresGrad: true });
    setGrad(p, [1, -1], 'f32');
    const opt = new AdamW([p], { lr: 0.125, weightDecay: 0 });
    opt.step();
    // first step: m̂/√v̂ = ±1 (eps negligible) → p − lr·sign(g)
    expect(p.toArray()).toEqual([0.375, -0.125]);
  });

  test('parameter groups use their own options; params without grad are skipped', () => {
    const h1: Hyper = { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, wd: 0 };
    const h2: Hyper = { lr: 3e-2, beta1: 0.5, beta2: 0.99, eps: 1e-6, wd: 0.2 };
    const a0 = rand(5, 7), b0 = rand(6, 8);
    const a = Tensor.fromArray(a0, { dtype: 'f64', requiresGrad: true });
    const b = Tensor.fromArray(b0, { dtype: 'f64', requiresGrad: true });
    const c = Tensor.fromArray([1, 2], { dtype: 'f64', requiresGrad: true });
    const frozen = Tensor.fromArray([1, 2], { dtype: 'f64' });
    const opt = new AdamW([
      { params: [a, frozen] },
      { params: [b, c], lr: h2.lr, betas: [h2.beta1, h2.beta2], eps: h2.eps, weightDecay: h2.wd },
    ], { lr: h1.lr, weightDecay: 0 });
    expect(opt.paramGroups.map((g) => g.params.length)).toEqual([1, 2]);   // frozen tensors are dropped
    const ra = refInit(a0), rb = refInit(b0);
    for (let t = 0; t < 3; t++) {
      const ga = rand(5, 10 + t), gb = rand(6, 20 + t);
      setGrad(a, ga); setGrad(b, gb);
      opt.step();
      refStep(ra, ga, h1); refStep(rb, gb, h2);
    }
    expect(maxRel(a.toFloat64Array(), ra.p)).toBeLessThan(1e-13);
    expect(maxRel(b.toFloat64Array(), rb.p)).toBeLessThan(1e-13);
    expect(c.toArray()).toEqual([1, 2]);
    expect(opt.stepOf(c)).toBe(0);
    opt.zeroGrad();
    expect(a.grad).toBeNull();
    opt.step();   // no gradients: nothing changes
    expect(opt.stepOf(a)).toBe(3);
  });

  test('state tensors survive tidy() scopes around step()', () => {
    const p = Tensor.fromArray([1, 2, 3], { requiresGrad: true });
    const opt = new AdamW([p], { lr: 0.1 });
    tidy(() => { setGrad(p, [1, 1, 1]); opt.step(); });
    expect(opt.stateOf(p)!.expAvg!.disposed).toBe(false);
    setGrad(p, [1, 1, 1]);
    opt.step();
    expect(opt.stepOf(p)).toBe(2);
  });

  test('bad inputs give clear errors', () => {
    const p = Tensor.fromArray([1, 2, 3], { requiresGrad: true });
    expect(() => new AdamW([p], { lr: -1 })).toThrow(/invalid learning rate/);
    expect(() => new AdamW([p], { betas: [1, 0.9] })).toThrow(/beta parameter at index 0/);
    expect(() => new AdamW([{ params: [p] }, { params: [p] }])).toThrow(/more than one parameter group/);
    expect(() => new AdamW([p], { loraPlusRatio: 16 })).toThrow(/named parameters/);
    const opt = new AdamW([['w', p]]);
    p.grad = Tensor.fromArray([1, 2]);
    expect(() => opt.step()).toThrow(/gradient of w has shape \[2\]/);
  });
});

describe('with autograd', () => {
  test('AdamW + clipping fits a least-squares problem from backward() gradients', () => {
    const x = Tensor.randn([64, 8], { seed: 1 });
    const wTrue = Tensor.randn([8, 2], { seed: 2 });
    const y = ops.matmul(x, wTrue);
    const w = Tensor.zeros([8, 2], { requiresGrad: true });
    const b = Tensor.zeros([2], { requiresGrad: true });
    const opt = new AdamW([['w', w], ['b', b]], { lr: 0.05, weightDecay: 0 });
    const lossAt = () => tidy(() => ops.mean(ops.pow(ops.sub(ops.add(ops.matmul(x, w), b), y), 2)).item());
    const first = lossAt();
    for (let it = 0; it < 300; it++) {
      tidy(() => {
        const loss = ops.mean(ops.pow(ops.sub(ops.add(ops.matmul(x, w), b), y), 2));
        loss.backward();
      });
      clipGradNorm([w, b], 5);
      opt.step();
      opt.zeroGrad();
    }
    expect(lossAt()).toBeLessThan(first * 1e-3);
    expect(opt.stepOf(w)).toBe(300);
  });
});

describe('8-bit states (bitsandbytes blockwise dynamic quantization)', () => {
  /** bitsandbytes create_dynamic_map(signed, 7, 8), evaluated in f64 from its definition. */
  function refDynamicMap(signed: boolean): number[] {
    const data: number[] = [];
    for (let i = 0; i < 7; i++) {
      const items = signed ? 2 ** i + 1 : 2 ** (i + 1) + 1;
      const bounds = Array.from({ length: items }, (_, k) => 0.1 + (0.9 * k) / (items - 1));
      for (let k = 0; k + 1 < items; k++) {
        const mean = (bounds[k] + bounds[k + 1]) / 2;
        data.push(10 ** (i - 6) * mean);
        if (signed) data.push(-(10 ** (i - 6)) * mean);
      }
    }
    data.push(0, 1);
    return data.sort((x, y) => x - y);
  }

  test('the dynamic maps are bitsandbytes\' (signed and unsigned)', () => {
    for (const signed of [true, false]) {
      const got = Array.from(new Float32Array(native.toBuffer(native.dynamicMap(signed)) as ArrayBuffer));
      const want = refDynamicMap(signed);
      expect(got.length).toBe(256);
      expect(want.length).toBe(256);
      for (let i = 0; i < 256; i++) expect(Math.abs(got[i] - want[i])).toBeLessThanOrEqual(Math.abs(want[i]) * 2e-7);
    }
    // spot values: the extreme codes and the smallest non-zero magnitude
    const s = Array.from(new Float32Array(native.toBuffer(native.dynamicMap(true)) as ArrayBuffer));
    expect(s[0]).toBeCloseTo(-0.99296875, 6);
    expect(s[255]).toBe(1);
    expect(s[127]).toBe(0);
    expect(s[128]).toBeCloseTo(5.5e-7, 12);
  });

  test('blockwise quantization round trip is within half a code gap', () => {
    const n = 1000;
    const xs = rand(n, 5).map((v, i) => v * 10 ** ((i % 7) - 4));
    const x = Tensor.fromArray(xs);
    const [c, a] = native.quantizeBlockwise(x.native, true);
    const codes = new Tensor(c), absmax = new Tensor(a);
    expect(codes.dtype).toBe('u8');
    expect(absmax.shape).toEqual([4]);
    const back = new Tensor(native.dequantizeBlockwise(codes.native, absmax.native, true)).toFloat64Array();
    const map = refDynamicMap(true);
    for (let i = 0; i < n; i++) {
      const am = Math.max(...xs.slice(Math.floor(i / 256) * 256, Math.floor(i / 256) * 256 + 256).map(Math.abs));
      const xn = xs[i] / am;
      // the nearest map value, allowing the sign-preserving nudge for tiny values
      let best = Infinity;
      for (const q of map) best = Math.min(best, Math.abs(q - xn));
      const err = Math.abs(back[i] / am - xn);
      expect(err).toBeLessThanOrEqual(Math.max(best * 1.0001 + 1e-7, Math.abs(xn) < 1e-5 ? 1e-5 : 0));
      // m keeps its sign: negative values never quantize to 0 or a positive code (bitsandbytes)
      if (xs[i] < 0) expect(back[i]).toBeLessThan(0); else expect(back[i]).toBeGreaterThanOrEqual(0);
    }
  });

  test('first step equals 32-bit exactly; 8-bit tracks 32-bit on a quadratic within quantization noise', () => {
    const n = 8192, small = 100;
    const target = rand(n, 11, 2), curv = rand(n, 12).map((v) => 0.5 + Math.abs(v) * 4);
    const x0 = rand(n, 13), s0 = rand(small, 14);
    const mk = () => [Tensor.fromArray(x0, { requiresGrad: true }), Tensor.fromArray(s0, { requiresGrad: true })];
    const [x32, s32] = mk(), [x8, s8] = mk();
    const o32 = new AdamW([x32, s32], { lr: 0.01, weightDecay: 0 });
    const o8 = new AdamW8bit([x8, s8], { lr: 0.01, weightDecay: 0 });
    const loss = (x: Float64Array) => { let l = 0; for (let i = 0; i < n; i++) l += 0.5 * curv[i] * (x[i] - target[i]) ** 2; return l / n; };
    const gradOf = (x: Float64Array) => Array.from(x, (v, i) => curv[i] * (v - target[i]));
    const loss0 = loss(Float64Array.from(x0));
    for (let t = 0; t < 300; t++) {
      setGrad(x32, gradOf(x32.toFloat64Array())); setGrad(x8, gradOf(x8.toFloat64Array()));
      const gs = rand(small, 500 + t);
      setGrad(s32, gs); setGrad(s8, gs);
      o32.step(); o8.step();
      if (t === 0) {
        // the parameter update uses the unquantized new moments: step 1 is exactly the 32-bit step
        expect(Array.from(x8.toFloat32Array())).toEqual(Array.from(x32.toFloat32Array()));
        // stored moments are within half a code gap of m = (1−β1)g, v = (1−β2)g² (relative to each block's absmax):
        // the widest gap is 0.0141 in the signed map (near ±1) and 0.0070 in the unsigned one
        const st8 = o8.stateOf(x8)!, m32 = o32.stateOf(x32)!.expAvg!.toFloat64Array(), v32 = o32.stateOf(x32)!.expAvgSq!.toFloat64Array();
        const m8 = new Tensor(native.dequantizeBlockwise(st8.state1!.native, st8.absmax1!.native, true)).toFloat64Array();
        const v8 = new Tensor(native.dequantizeBlockwise(st8.state2!.native, st8.absmax2!.native, false)).toFloat64Array();
        const a1 = st8.absmax1!.toFloat64Array(), a2 = st8.absmax2!.toFloat64Array();
        let e1 = 0, e2 = 0;
        for (let i = 0; i < n; i++) {
          e1 = Math.max(e1, Math.abs(m8[i] - m32[i]) / a1[i >> 8]);
          e2 = Math.max(e2, Math.abs(v8[i] - v32[i]) / a2[i >> 8]);
        }
        expect(e1).toBeLessThan(0.0071);
        expect(e2).toBeLessThan(0.0036);
        expect(e1).toBeGreaterThan(0);
      }
    }
    expect(o8.stateOf(x8)!.state1!.dtype).toBe('u8');
    expect(o8.stateOf(s8)!.expAvg!.dtype).toBe('f32');   // < 4096 elements: 32-bit states
    // the small tensor uses the same 32-bit kernel: identical
    expect(Array.from(s8.toFloat32Array())).toEqual(Array.from(s32.toFloat32Array()));
    const l32 = loss(x32.toFloat64Array()), l8 = loss(x8.toFloat64Array());
    expect(l32).toBeLessThan(loss0 * 0.02);
    expect(l8).toBeLessThan(loss0 * 0.02);
    // trajectories agree to a few percent of the distance travelled
    const a = x32.toFloat64Array(), b = x8.toFloat64Array();
    let num = 0, den = 0;
    for (let i = 0; i < n; i++) { num += (a[i] - b[i]) ** 2; den += (a[i] - x0[i]) ** 2; }
    expect(Math.sqrt(num / den)).toBeLessThan(0.05);
  });
});

describe('paged optimizer states', () => {
  test('PagedAdamW keeps states in mapped temp files and matches AdamW exactly', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pk-paged-'));
    try {
      const before = pagedMemoryStats();
      const v0 = rand(10000, 21);
      const pa = Tensor.fromArray(v0, { requiresGrad: true }), pb = Tensor.fromArray(v0, { requiresGrad: true });
      const paged = new PagedAdamW([pa], { lr: 0.01, pagedDir: dir });
      const plain = new AdamW([pb], { lr: 0.01 });
      expect(paged.paged).toBe(true);
      for (let t = 0; t < 3; t++) {
        const g = rand(10000, 40 + t);
        setGrad(pa, g); setGrad(pb, g);
        paged.step(); plain.step();
      }
      expect(Array.from(pa.toFloat32Array())).toEqual(Array.from(pb.toFloat32Array()));
      const st = paged.stateOf(pa)!;
      expect(native.isPaged(st.expAvg!.native)).toBe(true);
      expect(native.isPaged(st.expAvgSq!.native)).toBe(true);
      expect(native.isPaged(plain.stateOf(pb)!.expAvg!.native)).toBe(false);
      expect(paged.stateBytes()).toEqual({ total: 80000, paged: 80000 });
      const during = pagedMemoryStats();
      expect(during.mappings - before.mappings).toBe(2);
      expect(during.liveBytes - before.liveBytes).toBeGreaterThanOrEqual(80000);
      // the backing files are unlinked at once: nothing in the directory, "(deleted)" mappings
      expect(fs.readdirSync(dir)).toEqual([]);
      if (process.platform === 'linux') {
        const maps = fs.readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes(path.join(dir, 'peftkit-paged-')));
        expect(maps.length).toBe(2);
        for (const l of maps) expect(l).toMatch(/rw-s .*\(deleted\)$/);
      }
      paged.dispose();
      expect(pagedMemoryStats().mappings).toBe(before.mappings);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('PagedAdamW8bit: 8-bit codes and absmax in paged memory', () => {
    const p = Tensor.fromArray(rand(5000, 31), { requiresGrad: true });
    const opt = new PagedAdamW8bit([p], { lr: 0.01 });
    setGrad(p, rand(5000, 32));
    opt.step();
    const st = opt.stateOf(p)!;
    for (const t of [st.state1!, st.state2!, st.absmax1!, st.absmax2!]) expect(native.isPaged(t.native)).toBe(true);
    expect(st.absmax1!.shape).toEqual([20]);
    opt.dispose();
  });

  test('a bad paged directory is a clear error', () => {
    const p = Tensor.fromArray([1, 2], { requiresGrad: true });
    const opt = new PagedAdamW([p], { pagedDir: '/nonexistent/peftkit-dir' });
    setGrad(p, [1, 1]);
    expect(() => opt.step()).toThrow(/emptyPaged: cannot create a temp file in '\/nonexistent\/peftkit-dir'/);
  });
});

describe('state() / loadState()', () => {
  function roundTrip(make: (ps: [string, Tensor][]) => AdamW, viaFile: boolean): void {
    const init = [rand(6000, 51), rand(70, 52)];
    const mkParams = (): [string, Tensor][] => [['big.weight', Tensor.fromArray(init[0], { requiresGrad: true })],
      ['small.bias', Tensor.fromArray(init[1], { requiresGrad: true })]];
    const pa = mkParams();
    const A = make(pa);
    const grads = (t: number) => [rand(6000, 60 + t), rand(70, 80 + t)];
    for (let t = 0; t < 3; t++) { grads(t).forEach((g, i) => setGrad(pa[i][1], g)); A.step(); }
    // B: a fresh optimizer on copies of A's current parameters, loaded with A's state
    const pb: [string, Tensor][] = pa.map(([n, p]) => [n, Tensor.fromArray(p.toFloat32Array(), { shape: [...p.shape], requiresGrad: true })]);
    const B = make(pb);
    let s = A.state();
    if (viaFile) {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pk-optstate-'));
      const file = path.join(dir, 'optimizer.safetensors');
      const { tensors, metadata } = flattenState(s);
      saveSafetensors(file, tensors, { metadata });
      disposeState(s);
      s = unflattenState(loadSafetensors(file), readMetadata(file)!);
      fs.rmSync(dir, { recursive: true, force: true });
    }
    B.loadState(s);
    disposeState(s);
    for (let t = 3; t < 6; t++) {
      grads(t).forEach((g, i) => { setGrad(pa[i][1], g); setGrad(pb[i][1], g); });
      A.step(); B.step();
    }
    for (let i = 0; i < 2; i++) expect(Array.from(pb[i][1].toFloat32Array())).toEqual(Array.from(pa[i][1].toFloat32Array()));
    expect(B.stepOf(pb[0][1])).toBe(6);
  }

  test('AdamW continues identically', () => roundTrip((ps) => new AdamW(ps, { lr: 0.01 }), false));
  test('AdamW8bit continues identically (codes and absmax restored)', () => roundTrip((ps) => new AdamW8bit(ps, { lr: 0.01 }), false));
  test('through a safetensors file', () => roundTrip((ps) => new AdamW8bit(ps, { lr: 0.01, loraPlusRatio: 2 }), true));

  test('state() copies by default; hyper-parameters are restored; mismatches are errors', () => {
    const p = Tensor.fromArray([1, 2, 3], { requiresGrad: true });
    const A = new AdamW([['w', p]], { lr: 0.1 });
    setGrad(p, [1, 1, 1]);
    A.step();
    const s = A.state();
    const live = A.stateOf(p)!.expAvg!;
    expect(s.state[0].expAvg).not.toBe(live);
    expect(s.state[0].step).toBe(1);
    A.paramGroups[0].lr = 0.5;
    const B = new AdamW([['w', Tensor.fromArray([0, 0, 0], { requiresGrad: true })]], { lr: 0.2 });
    B.loadState(s);
    expect(B.paramGroups[0].lr).toBe(0.1);
    const C = new AdamW([['v', Tensor.fromArray([0, 0, 0], { requiresGrad: true })]]);
    expect(() => C.loadState(s)).toThrow(/'w' in the state but 'v' here/);
    const D = new AdamW([['w', Tensor.fromArray([0, 0], { requiresGrad: true })]]);
    expect(() => D.loadState(s)).toThrow(/'expAvg' has shape \[3\], expected \[2\]/);
  });

  test('an 8-bit state loads into a 32-bit optimizer (dequantized) and back', () => {
    const v0 = rand(5000, 91);
    const p = Tensor.fromArray(v0, { requiresGrad: true });
    const A = new AdamW8bit([p], { lr: 0.01 });
    setGrad(p, rand(5000, 92)); A.step();
    const s8 = A.state();
    const B = new AdamW([Tensor.fromArray(v0, { requiresGrad: true })]);
    B.loadState(s8);
    const m = B.stateOf(B.paramGroups[0].params[0])!.expAvg!.toFloat64Array();
    const ref = new Tensor(native.dequantizeBlockwise(s8.state[0].state1!.native, s8.state[0].absmax1!.native, true)).toFloat64Array();
    expect(Array.from(m)).toEqual(Array.from(ref));
    const C = new AdamW8bit([Tensor.fromArray(v0, { requiresGrad: true })]);
    C.loadState(B.state());
    expect(C.stateOf(C.paramGroups[0].params[0])!.state1!.dtype).toBe('u8');
  });
});

describe('LoRA+', () => {
  test('lora_B parameters get lr × ratio in their own group', () => {
    const a = Tensor.fromArray(rand(8, 1), { dtype: 'f64', requiresGrad: true });
    const b = Tensor.fromArray(rand(8, 2), { dtype: 'f64', requiresGrad: true });
    const bias = Tensor.fromArray(rand(4, 3), { dtype: 'f64', requiresGrad: true });
    const opt = new AdamW([['model.layers.0.q_proj.lora_A.default.weight', a], ['model.layers.0.q_proj.lora_B.default.weight', b],
      ['model.norm.bias', bias]], { lr: 1e-3, weightDecay: 0.1, loraPlusRatio: 16 });
    expect(opt.paramGroups.map((g) => [g.lr, g.params.length, g.name])).toEqual([[1e-3, 2, undefined], [16e-3, 1, 'default.lora_B']]);
    const ra = refInit(Array.from(a.toFloat64Array())), rb = refInit(Array.from(b.toFloat64Array()));
    for (let t = 0; t < 3; t++) {
      const ga = rand(8, 10 + t), gb = rand(8, 20 + t);
      setGrad(a, ga); setGrad(b, gb); setGrad(bias, rand(4, 30 + t));
      opt.step();
      refStep(ra, ga, { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, wd: 0.1 });
      refStep(rb, gb, { lr: 16e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, wd: 0.1 });
    }
    expect(maxRel(a.toFloat64Array(), ra.p)).toBeLessThan(1e-13);
    expect(maxRel(b.toFloat64Array(), rb.p)).toBeLessThan(1e-13);
    // schedules scale both groups, keeping the ratio
    opt.setLrMultiplier(0.5);
    expect(opt.paramGroups.map((g) => g.lr)).toEqual([0.5e-3, 8e-3]);
  });
});

describe('gradient norm and clipping', () => {
  function naiveNorm(gs: number[][], p: number): number {
    if (p === Infinity) return Math.max(...gs.map((g) => Math.max(...g.map(Math.abs))));
    let s = 0;
    for (const g of gs) for (const v of g) s += Math.abs(v) ** p;
    return s ** (1 / p);
  }

  test('global norm matches a naive f64 evaluation (p = 2, 1, 3, inf; f32, f64, bf16 grads)', () => {
    const shapes = [[70000], [33, 7], [5]];
    const vals = shapes.map((s, i) => rand(s.reduce((a, b) => a * b, 1), 70 + i, 3));
    const dtypes = ['f32', 'f64', 'bf16'] as const;
    const exact = vals.map((v, i) => dtypes[i] === 'f32' ? Array.from(new Float32Array(v)) : dtypes[i] === 'bf16' ? v.map(bf16Round) : v);
    const params = shapes.map((s, i) => {
      const p = Tensor.zeros(s, { dtype: dtypes[i], requiresGrad: true });
      p.grad = Tensor.fromArray(vals[i], { shape: s, dtype: dtypes[i] });
      return p;
    });
    for (const pn of [2, 1, 3, Infinity]) {
      expect(Math.abs(gradNorm(params, pn) - naiveNorm(exact, pn)) / naiveNorm(exact, pn)).toBeLessThan(1e-12);
    }
  });

  test('clipGradNorm scales by maxNorm / (norm + 1e-6) only when above maxNorm, and returns the norm', () => {
    const g1 = rand(1000, 1, 2), g2 = rand(10, 2, 2);
    const mk = () => [Tensor.zeros([1000], { dtype: 'f64', requiresGrad: true }), Tensor.zeros([10], { dtype: 'f64', requiresGrad: true })];
    const ps = mk();
    ps[0].grad = Tensor.fromArray(g1, { dtype: 'f64' }); ps[1].grad = Tensor.fromArray(g2, { dtype: 'f64' });
    const total = naiveNorm([g1, g2], 2);
    const got = clipGradNorm(ps.map((p, i) => [`p${i}`, p] as [string, Tensor]), 1.0);
    expect(Math.abs(got - total) / total).toBeLessThan(1e-12);
    const coef = 1.0 / (total + 1e-6);
    expect(maxRel(ps[0].grad!.toFloat64Array(), g1.map((v) => v * coef))).toBeLessThan(1e-14);
    expect(maxRel(ps[1].grad!.toFloat64Array(), g2.map((v) => v * coef))).toBeLessThan(1e-14);
    // below the limit: untouched
    const before = Array.from(ps[0].grad!.toFloat64Array());
    const n2 = clipGradNorm(ps, 10);
    expect(n2).toBeCloseTo(1, 5);
    expect(Array.from(ps[0].grad!.toFloat64Array())).toEqual(before);
  });

  test('non-finite norms leave gradients untouched (or throw when asked)', () => {
    const p = Tensor.zeros([3], { requiresGrad: true });
    p.grad = Tensor.fromArray([1, NaN, 2]);
    expect(clipGradNorm([p], 1)).toBeNaN();
    expect(p.grad.toFloat64Array()[0]).toBe(1);
    p.grad = Tensor.fromArray([1, Infinity, 2]);
    expect(clipGradNorm([p], 1)).toBe(Infinity);
    expect(() => clipGradNorm([p], 1, { errorIfNonfinite: true })).toThrow(/non-finite/);
    expect(clipGradNorm([Tensor.zeros([2])], 1)).toBe(0);   // no gradients at all
  });

  test('the norm does not depend on the thread count', () => {
    const p = Tensor.zeros([300000], { requiresGrad: true });
    p.grad = Tensor.randn([300000], { seed: 5 });
    const saved = numThreads();
    try {
      setNumThreads(1);
      const a = gradNorm([p]);
      setNumThreads(Math.max(2, saved));
      const b = gradNorm([p]);
      expect(b).toBe(a);
    } finally {
      setNumThreads(saved);
    }
  });
});
