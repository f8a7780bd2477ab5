/**
 * GPU suite: fused attention, cross-entropy and softmax on CUDA (csrc/cuda/{attention,cross_entropy,softmax}.cu)
 * against their CPU twins on random inputs.
 *
 * The ops are called through the ordinary bindings with cuda tensors: the CPU entry points
 * dispatch to the CUDA backend (csrc/core/dispatch.h), so this also tests the dispatch branches.
 * Attention runs twice where it matters: on the tensor-core kernels (bf16/f16, D = 64/128) and with
 * PEFTKIT_CUDA_ATTENTION=generic on the portable kernels.
 *
 * Tolerances (stated per op and dtype below):
 *  - attention f32 / f64: elementwise (f32 rtol 1e-4, atol 1e-5; f64 1e-10). Different summation
 *    order only.
 *  - attention bf16 / f16: relative Frobenius error of the whole tensor (‖got − want‖ / ‖want‖):
 *    forward out ≤ 1e-2 (the GPU rounds P to bf16 for the P·V tensor-core product, the CPU keeps
 *    f32), gradients ≤ 3e-2 (dS is rounded to bf16 too); lse elementwise atol 2e-3 (both compute
 *    scores in f32 from the same bf16 inputs). Every -inf lse and every zero row (no visible key)
 *    must match exactly.
 *  - cross-entropy: loss and lse rtol 1e-5 (f32); dlogits bf16 rtol 1.6e-2 (one bf16 ulp), f32
 *    rtol 1e-5, atol 1e-9.
 *  - softmax / log_softmax: f32 rtol 2e-5, bf16 1.6e-2, f16 2e-3, f64 1e-12 (CPU sums in f64,
 *    GPU in f32 for f32 rows).
 *
 * Without a usable GPU everything is skipped with a console message saying why.
 */
import { native, NativeTensor } from '../../lib/native';

type T = NativeTensor;
interface CudaInfo { built: boolean; available: boolean; reason: string; devices: { name: string; computeCapability: string }[] }

const info: CudaInfo = typeof native.cudaInfo === 'function' ? native.cudaInfo() as CudaInfo
  : { built: false, available: false, reason: 'this addon predates cudaInfo (rebuild it: npm run build:native)', devices: [] };
const GPU = info.available === true;
if (!GPU) {
  console.warn(`\n*** test/gpu/attention_ce: CUDA attention / cross-entropy / softmax tests SKIPPED — ${info.built ? 'CUDA build, but CUDA is not available' : 'this addon was built without CUDA'}: ${info.reason} ***\n`);
}
const gpuDescribe = GPU ? describe : describe.skip;
const SM80 = GPU && Number(info.devices[0]?.computeCapability?.split('.')[0] ?? 0) >= 8;

const cuda = (t: T): T => native.toDevice(t, 'cuda') as T;
const cpu = (t: T): T => native.toDevice(t, 'cpu') as T;
const randn = (shape: number[], seed: number, dtype = 'f32', mean = 0, std = 1): T => native.randn(shape, seed, dtype, mean, std) as T;
function values(t: T): Float64Array {
  const c = t.device === 'cuda' ? cpu(t) : t;
  return new Float64Array(native.toBuffer(native.cast(c, 'f64')) as ArrayBuffer);
}

interface Tol { rtol: number; atol: number }
/** Elementwise |got − want| ≤ atol + rtol·|want|; NaN/±inf must match exactly. */
function close(got: T, want: T, what: string, tol: Tol): void {
  expect(got.device).toBe('cuda');
  expect({ what, shape: got.shape, dtype: got.dtype }).toEqual({ what, shape: want.shape, dtype: want.dtype });
  const g = values(got), w = values(want);
  let worst = 0, at = -1;
  for (let i = 0; i < w.length; i++) {
    const a = g[i], b = w[i];
    if (Number.isNaN(a) && Number.isNaN(b)) continue;
    if (a === b) continue;
    const err = Math.abs(a - b) / (tol.atol + tol.rtol * Math.abs(b));
    if (!(err <= 1) && !(err <= worst)) { worst = Number.isNaN(err) ? Infinity : err; at = i; }
  }
  if (at >= 0) throw new Error(`${what}: element ${at} got ${g[at]} want ${w[at]} (error ${worst.toFixed(2)}x the tolerance ${JSON.stringify(tol)})`);
}
/** ‖got − want‖ / ‖want‖ ≤ rel, and exact zeros (no-visible-key rows) stay exact zeros. */
function closeNorm(got: T, want: T, what: string, rel: number): void {
  expect(got.device).toBe('cuda');
  expect({ what, shape: got.shape, dtype: got.dtype }).toEqual({ what, shape: want.shape, dtype: want.dtype });
  const g = values(got), w = values(want);
  let num = 0, den = 0;
  for (let i = 0; i < w.length; i++) {
    if (!Number.isFinite(g[i])) throw new Error(`${what}: element ${i} is ${g[i]} (want ${w[i]})`);
    num += (g[i] - w[i]) ** 2; den += w[i] ** 2;
  }
  const r = Math.sqrt(num) / Math.max(Math.sqrt(den), 1e-30);
  if (!(r <= rel)) throw new Error(`${what}: relative error ${r.toExponential(3)} > ${rel}`);
}
/**
 * Rows (last dim) that `empty(r)` names — a query with no visible key (out, dq) or a key no query
 * sees (dk, dv) — must be exact zeros in `got` and in `want`. Rows that are zero only by
 * cancellation (a query seeing one key has dq = 0 up to rounding) are left to the tolerances.
 */
function zeroRows(got: T, want: T, what: string, empty: (r: number) => boolean): void {
  const g = values(got), w = values(want), n = want.shape[want.shape.length - 1];
  for (let r = 0; r < w.length / n; r++) {
    if (!empty(r)) continue;
    for (let x = 0; x < n; x++) {
      if (w[r * n + x] !== 0) throw new Error(`${what}: CPU row ${r} has no visible key but ${w[r * n + x]} at ${x}`);
      if (g[r * n + x] !== 0) throw new Error(`${what}: row ${r} should be all zero (no visible key), got ${g[r * n + x]} at ${x}`);
    }
  }
}

const u8 = (vals: number[], shape: number[]): T => native.fromBuffer(new Uint8Array(vals), shape, 'u8') as T;
const i64 = (vals: number[], shape: number[]): T => native.fromBuffer(new BigInt64Array(vals.map((x) => BigInt(x))), shape, 'i64') as T;
const i32 = (vals: number[], shape: number[]): T => native.fromBuffer(new Int32Array(vals), shape, 'i32') as T;

function withGeneric<R>(on: boolean, f: () => R): R {
  const prev = process.env.PEFTKIT_CUDA_ATTENTION;
  if (on) process.env.PEFTKIT_CUDA_ATTENTION = 'generic'; else delete process.env.PEFTKIT_CUDA_ATTENTION;
  try { return f(); } finally {
    if (prev === undefined) delete process.env.PEFTKIT_CUDA_ATTENTION; else process.env.PEFTKIT_CUDA_ATTENTION = prev;
  }
}

// ---------------------------------------------------------------------------------------------
// Attention

interface Case {
  name: string; B: number; Hq: number; Hkv: number; T: number; S: number; D: number; Dv?: number;
  causal?: boolean; window?: number; softcap?: number;
  mask?: (b: number, j: number) => number;          // key padding (1 = token)
  segs?: (b: number, j: number) => number;          // segment id of key position j
  qLayout?: 'bthd';                                  // q as a transposed (B,T,H,D) view
}

function runCase(c: Case, dtype: string, generic: boolean): void {
  const Dv = c.Dv ?? c.D, causal = c.causal ?? true, window = c.window ?? 0, softcap = c.softcap ?? 0;
  const scale = 1 / Math.sqrt(c.D);
  let q = randn([c.B, c.Hq, c.T, c.D], 101, dtype);
  if (c.qLayout === 'bthd') q = native.transpose(randn([c.B, c.T, c.Hq, c.D], 101, dtype), 1, 2) as T;
  const k = randn([c.B, c.Hkv, c.S, c.D], 102, dtype), v = randn([c.B, c.Hkv, c.S, Dv], 103, dtype);
  const dout = randn([c.B, c.Hq, c.T, Dv], 104, dtype);
  const mvals: number[] = [], svals: number[] = [];
  for (let b = 0; b < c.B; b++) for (let j = 0; j < c.S; j++) { mvals.push(c.mask ? c.mask(b, j) : 1); svals.push(c.segs ? c.segs(b, j) : 0); }
  const mask = c.mask ? u8(mvals, [c.B, c.S]) : null;
  const segs = c.segs ? i32(svals, [c.B, c.S]) : null;
  const what = `${c.name} ${dtype}${generic ? ' generic' : ''}`;

  const [wo, wl] = native.attention_forward(q, k, v, mask, causal, window, scale, softcap, segs) as T[];
  const [wdq, wdk, wdv] = native.attention_backward(q, k, v, mask, wo, wl, dout, causal, window, scale, softcap, true, true, true, segs) as T[];
  const cq = cuda(q), ck = cuda(k), cv = cuda(v), cdo = cuda(dout);
  const cm = mask ? cuda(mask) : null, cs = segs ? cuda(segs) : null;
  const [go, gl, gdq, gdk, gdv] = withGeneric(generic, () => {
    const [o, l] = native.attention_forward(cq, ck, cv, cm, causal, window, scale, softcap, cs) as T[];
    const [dq, dk, dv] = native.attention_backward(cq, ck, cv, cm, o, l, cdo, causal, window, scale, softcap, true, true, true, cs) as T[];
    return [o, l, dq, dk, dv];
  });
  if (dtype === 'f32' || dtype === 'f64') {
    const tol = dtype === 'f32' ? { rtol: 1e-4, atol: 1e-5 } : { rtol: 1e-10, atol: 1e-10 };
    const gtol = dtype === 'f32' ? { rtol: 2e-4, atol: 2e-5 } : tol;
    close(go, wo, `${what} out`, tol); close(gl, wl, `${what} lse`, tol);
    close(gdq, wdq, `${what} dq`, gtol); close(gdk, wdk, `${what} dk`, gtol); close(gdv, wdv, `${what} dv`, gtol);
  } else {
    closeNorm(go, wo, `${what} out`, 1e-2);
    close(gl, wl, `${what} lse`, { rtol: 1e-3, atol: 2e-3 });
    closeNorm(gdq, wdq, `${what} dq`, 3e-2); closeNorm(gdk, wdk, `${what} dk`, 3e-2); closeNorm(gdv, wdv, `${what} dv`, 3e-2);
  }
  // The visibility rule of the CPU op (query i at position off + i, off = S - T): causal, window,
  // key padding, segments. Query rows (b,h,i) with no visible key; key rows (b,kvh,j) seen by none.
  const off = c.S - c.T;
  const vis = (b: number, i: number, j: number): boolean => {
    const p = off + i;
    if (causal && j > p) return false;
    if (window > 0 && p - j >= window) return false;
    if (c.mask && !c.mask(b, j)) return false;
    if (c.segs && c.segs(b, p) !== c.segs(b, j)) return false;
    return true;
  };
  const qEmpty = (r: number): boolean => {
    const i = r % c.T, b = Math.floor(r / (c.T * c.Hq));
    for (let j = 0; j < c.S; j++) if (vis(b, i, j)) return false;
    return true;
  };
  const kEmpty = (r: number): boolean => {
    const j = r % c.S, b = Math.floor(r / (c.S * c.Hkv));
    for (let i = 0; i < c.T; i++) if (vis(b, i, j)) return false;
    return true;
  };
  zeroRows(go, wo, `${what} out`, qEmpty); zeroRows(gdq, wdq, `${what} dq`, qEmpty);
  zeroRows(gdk, wdk, `${what} dk`, kEmpty); zeroRows(gdv, wdv, `${what} dv`, kEmpty);
}

const leftPad = (n: number) => (b: number, j: number) => (b === 1 && j < n ? 0 : 1);
const packed = (lens: number[]) => (_b: number, j: number) => { let s = 0, acc = 0; for (const L of lens) { acc += L; if (j < acc) return s; s++; } return s; };

const CASES: Case[] = [
  { name: 'causal MHA', B: 2, Hq: 2, Hkv: 2, T: 77, S: 77, D: 64 },
  { name: 'causal GQA 4:1', B: 1, Hq: 8, Hkv: 2, T: 130, S: 130, D: 64 },
  { name: 'non-causal', B: 1, Hq: 2, Hkv: 1, T: 70, S: 70, D: 64, causal: false },
  { name: 'padding (left, rows with no visible key)', B: 2, Hq: 4, Hkv: 2, T: 96, S: 96, D: 64, mask: leftPad(9) },
  { name: 'padding whole key blocks', B: 2, Hq: 2, Hkv: 1, T: 200, S: 200, D: 64, mask: leftPad(140) },
  { name: 'sliding window', B: 1, Hq: 4, Hkv: 2, T: 190, S: 190, D: 64, window: 37 },
  { name: 'segments (packed)', B: 2, Hq: 2, Hkv: 1, T: 150, S: 150, D: 64, segs: packed([40, 70, 25, 15]) },
  { name: 'segments + padding + window', B: 2, Hq: 4, Hkv: 1, T: 160, S: 160, D: 64, segs: packed([90, 70]), mask: leftPad(5), window: 50 },
  { name: 'KV cache T<S', B: 2, Hq: 4, Hkv: 2, T: 19, S: 150, D: 64 },
  { name: 'KV cache decode T=1', B: 2, Hq: 4, Hkv: 1, T: 1, S: 97, D: 64, mask: leftPad(7) },
  { name: 'softcap', B: 1, Hq: 2, Hkv: 1, T: 80, S: 80, D: 64, softcap: 5 },
  { name: 'D=128 GQA', B: 1, Hq: 4, Hkv: 2, T: 140, S: 140, D: 128 },
  { name: 'D=128 softcap + padding', B: 2, Hq: 2, Hkv: 2, T: 66, S: 66, D: 128, softcap: 3, mask: leftPad(3) },
  { name: 'q from a (B,T,H,D) view', B: 1, Hq: 4, Hkv: 4, T: 65, S: 65, D: 64, qLayout: 'bthd' },
  { name: 'odd head dims D=40 Dv=24', B: 1, Hq: 4, Hkv: 2, T: 45, S: 45, D: 40, Dv: 24 },
  { name: 'tiny D=8', B: 2, Hq: 1, Hkv: 1, T: 33, S: 33, D: 8, mask: leftPad(2) },
];

gpuDescribe('CUDA attention vs CPU', () => {
  test('f32 (portable kernels): every case', () => {
    for (const c of CASES) runCase(c, 'f32', false);
  });
  test('bf16 on the tensor-core kernels (D = 64/128) and the portable ones (other D): every case', () => {
    if (!SM80) console.warn('attention bf16: device below sm_80, the portable kernels run instead of the tensor-core ones');
    for (const c of CASES) runCase(c, 'bf16', false);
  });
  test('bf16 forced onto the portable kernels', () => {
    for (const c of CASES.slice(0, 12)) runCase(c, 'bf16', true);
  });
  test('f16 tensor-core kernels', () => {
    for (const c of [CASES[1], CASES[3], CASES[6], CASES[11]]) runCase(c, 'f16', false);
  });
  test('f64 (finite-difference precision)', () => {
    for (const c of [CASES[1], CASES[3], CASES[5], CASES[8], CASES[10], CASES[14]]) { const S = Math.min(c.S, 70); runCase({ ...c, S, T: Math.min(c.T, S) }, 'f64', false); }
  });
  test('LLM-sized bf16 (B1 H8/2 T1024 D128) matches the portable kernel', () => {
    const c: Case = { name: 'T1024', B: 1, Hq: 8, Hkv: 2, T: 1024, S: 1024, D: 128 };
    const scale = 1 / Math.sqrt(128);
    const q = cuda(randn([1, 8, 1024, 128], 5, 'bf16')), k = cuda(randn([1, 2, 1024, 128], 6, 'bf16')), v = cuda(randn([1, 2, 1024, 128], 7, 'bf16'));
    const dout = cuda(randn([1, 8, 1024, 128], 8, 'bf16'));
    const run = (generic: boolean) => withGeneric(generic, () => {
      const [o, l] = native.attention_forward(q, k, v, null, true, 0, scale, 0, null) as T[];
      const g = native.attention_backward(q, k, v, null, o, l, dout, true, 0, scale, 0, true, true, true, null) as T[];
      return [o, l, ...g];
    });
    const a = run(false), b = run(true);
    closeNorm(a[0], b[0], `${c.name} out`, 1e-2);
    close(a[1], b[1], `${c.name} lse`, { rtol: 1e-3, atol: 2e-3 });
    for (let i = 2; i < 5; i++) closeNorm(a[i], b[i], `${c.name} grad ${i - 2}`, 3e-2);
  });
  test('only some gradients wanted; errors name the argument', () => {
    const q = randn([1, 2, 20, 64], 1, 'bf16'), k = randn([1, 1, 20, 64], 2, 'bf16'), v = randn([1, 1, 20, 64], 3, 'bf16');
    const [o, l] = native.attention_forward(cuda(q), cuda(k), cuda(v), null, true, 0, 0.125) as T[];
    const dout = cuda(randn([1, 2, 20, 64], 4, 'bf16'));
    const [dq, dk, dv] = native.attention_backward(cuda(q), cuda(k), cuda(v), null, o, l, dout, true, 0, 0.125, 0, false, true, false) as (T | null)[];
    expect(dq).toBeNull(); expect(dv).toBeNull(); expect(dk).not.toBeNull();
    const [wo, wl] = native.attention_forward(q, k, v, null, true, 0, 0.125) as T[];
    const [, wdk] = native.attention_backward(q, k, v, null, wo, wl, cpu(dout), true, 0, 0.125, 0, false, true, false) as T[];
    closeNorm(dk as T, wdk, 'dk only', 3e-2);
    expect(() => native.attention_forward(cuda(q), cuda(randn([1, 3, 20, 64], 2, 'bf16')), cuda(randn([1, 3, 20, 64], 2, 'bf16')), null, true, 0, 0.125)).toThrow(/multiple of kv heads/);
    expect(() => native.attention_forward(cuda(q), cuda(k), cuda(v), null, false, 4, 0.125)).toThrow(/requires causal/);
  });
});

// ---------------------------------------------------------------------------------------------
// Cross-entropy

gpuDescribe('CUDA cross-entropy vs CPU', () => {
  const labelsFor = (N: number, V: number, seed: number, ignoreEvery = 5): number[] => {
    const out: number[] = [];
    let x = seed * 2654435761 % 4294967296;
    for (let i = 0; i < N; i++) { x = (x * 1664525 + 1013904223) % 4294967296; out.push(i % ignoreEvery === 3 ? -100 : x % V); }
    return out;
  };
  const TOLS: Record<string, { loss: Tol; lse: Tol; grad: Tol }> = {
    f32: { loss: { rtol: 1e-5, atol: 1e-6 }, lse: { rtol: 1e-5, atol: 1e-5 }, grad: { rtol: 1e-5, atol: 1e-9 } },
    bf16: { loss: { rtol: 1e-5, atol: 1e-5 }, lse: { rtol: 1e-5, atol: 1e-5 }, grad: { rtol: 1.6e-2, atol: 1e-8 } },
    f16: { loss: { rtol: 1e-5, atol: 1e-5 }, lse: { rtol: 1e-5, atol: 1e-5 }, grad: { rtol: 2e-3, atol: 1e-7 } },
    f64: { loss: { rtol: 1e-12, atol: 1e-12 }, lse: { rtol: 1e-12, atol: 1e-12 }, grad: { rtol: 1e-12, atol: 1e-15 } },
  };

  test('forward and backward: dtypes, vocab sizes, ignore_index, normalizers, labels on either device', () => {
    for (const dt of ['f32', 'bf16', 'f16', 'f64']) for (const [N, V] of [[37, 1000], [16, 32000], [5, 4099], [3, 1]]) {
      const logits = randn([N, V], 11 + V, dt, 0, 3);
      const lab = i64(labelsFor(N, V, N + V), [N]);
      for (const norm of [0, 7.5]) for (const labDev of ['cpu', 'cuda']) {
        const what = `ce ${dt} N${N} V${V} norm ${norm} labels on ${labDev}`;
        const [wl, wlse] = native.cross_entropy(logits, lab, -100, norm) as T[];
        const gl = labDev === 'cuda' ? cuda(lab) : lab;
        const [cl, clse] = native.cross_entropy(cuda(logits), gl, -100, norm) as T[];
        close(cl, wl, `${what} loss`, TOLS[dt].loss); close(clse, wlse, `${what} lse`, TOLS[dt].lse);
        const dloss = native.full([], 1.7, 'f32') as T;
        const wg = native.cross_entropy_backward(logits, lab, wlse, dloss, -100, norm) as T;
        close(native.cross_entropy_backward(cuda(logits), gl, clse, cuda(dloss), -100, norm) as T, wg, `${what} dlogits (cuda dloss)`, TOLS[dt].grad);
        close(native.cross_entropy_backward(cuda(logits), gl, clse, dloss, -100, norm) as T, wg, `${what} dlogits (cpu dloss)`, TOLS[dt].grad);
      }
    }
  });

  test('Llama-3 vocabulary (V = 128256, bf16) and strided logits[:, :-1] views', () => {
    const N = 24, V = 128256;
    const logits = randn([N, V], 3, 'bf16', 0, 4), lab = i64(labelsFor(N, V, 9), [N]);
    const [wl, wlse] = native.cross_entropy(logits, lab, -100, 0) as T[];
    const [cl, clse] = native.cross_entropy(cuda(logits), cuda(lab), -100, 0) as T[];
    close(cl, wl, 'V128256 loss', TOLS.bf16.loss); close(clse, wlse, 'V128256 lse', TOLS.bf16.lse);
    close(native.cross_entropy_backward(cuda(logits), cuda(lab), clse, native.full([], 1, 'f32'), -100, 0) as T,
      native.cross_entropy_backward(logits, lab, wlse, native.full([], 1, 'f32'), -100, 0) as T, 'V128256 dlogits', TOLS.bf16.grad);
    // (B, T+1, V) narrowed to T: rows keep their stride, nothing made contiguous
    const full = randn([2, 9, 515], 4, 'bf16'), lab2 = i32(labelsFor(16, 515, 2), [2, 8]);
    const nar = (t: T) => native.narrow(t, 1, 0, 8) as T;
    const [w2, wl2] = native.cross_entropy(nar(full), lab2, -100, 0) as T[];
    const [c2, cl2] = native.cross_entropy(nar(cuda(full)), cuda(lab2), -100, 0) as T[];
    close(c2, w2, 'narrowed loss', TOLS.bf16.loss); close(cl2, wl2, 'narrowed lse', TOLS.bf16.lse);
    close(native.cross_entropy_backward(nar(cuda(full)), cuda(lab2), cl2, native.full([], 1, 'f32'), -100, 0) as T,
      native.cross_entropy_backward(nar(full), lab2, wl2, native.full([], 1, 'f32'), -100, 0) as T, 'narrowed dlogits', TOLS.bf16.grad);
    // a transposed (V-strided) view takes the scalar path
    const tr = randn([300, 6], 5, 'f32'), lab3 = i64(labelsFor(6, 300, 3), [6]);
    const tv = (t: T) => native.transpose(t, 0, 1) as T;
    const [w3, wl3] = native.cross_entropy(tv(tr), lab3, -100, 0) as T[];
    const [c3, cl3] = native.cross_entropy(tv(cuda(tr)), cuda(lab3), -100, 0) as T[];
    close(c3, w3, 'transposed loss', TOLS.f32.loss); close(cl3, wl3, 'transposed lse', TOLS.f32.lse);
    close(native.cross_entropy_backward(tv(cuda(tr)), cuda(lab3), cl3, native.full([], 1, 'f32'), -100, 0) as T,
      native.cross_entropy_backward(tv(tr), lab3, wl3, native.full([], 1, 'f32'), -100, 0) as T, 'transposed dlogits', TOLS.f32.grad);
  });

  test('all labels ignored: NaN loss and zero gradient (like torch); bad labels throw the CPU message', () => {
    const logits = randn([4, 10], 1, 'f32'), lab = i64([-100, -100, -100, -100], [4]);
    const [cl, clse] = native.cross_entropy(cuda(logits), cuda(lab), -100, 0) as T[];
    expect(Number.isNaN(values(cl)[0])).toBe(true);
    const g = values(native.cross_entropy_backward(cuda(logits), cuda(lab), clse, native.full([], 1, 'f32'), -100, 0) as T);
    expect(g.every((x) => x === 0)).toBe(true);
    const bad = i64([1, 2, 10, 3], [4]);
    expect(() => native.cross_entropy(cuda(logits), bad, -100, 0)).toThrow(/label 10 at position 2 .*out of range \[0, V=10\)/);
    expect(() => native.cross_entropy(cuda(logits), cuda(bad), -100, 0)).toThrow(/label 10 at position 2 .*out of range \[0, V=10\)/);
    expect(() => native.cross_entropy(cuda(logits), cuda(i64([1, 2, 3], [3])), -100, 0)).toThrow(/must have the shape of logits/);
  });
});

// ---------------------------------------------------------------------------------------------
// Softmax / log_softmax

gpuDescribe('CUDA softmax / log_softmax vs CPU', () => {
  const TOL: Record<string, Tol> = {
    f32: { rtol: 2e-5, atol: 1e-7 }, f64: { rtol: 1e-12, atol: 1e-14 }, bf16: { rtol: 1.6e-2, atol: 1e-6 }, f16: { rtol: 2e-3, atol: 1e-6 },
  };
  test('forward and backward over every dim, warp and block rows, strided views', () => {
    const cases: [number[], number][] = [[[7, 33], -1], [[7, 33], 0], [[4, 5000], -1], [[3, 4, 5], 1], [[2, 3, 70000], 2], [[1], 0], [[5, 0], 1]];
    for (const dt of ['f32', 'bf16', 'f16', 'f64']) for (const [shape, dim] of cases) for (const op of ['softmax', 'log_softmax']) {
      const x = randn(shape, 21, dt, 0, 3), dy = randn(shape, 22, dt);
      const what = `${op} ${dt} ${JSON.stringify(shape)} dim ${dim}`;
      const wy = native[op](x, dim) as T;
      close(native[op](cuda(x), dim) as T, wy, what, TOL[dt]);
      close(native[`${op}_backward`](cuda(wy), cuda(dy), dim) as T, native[`${op}_backward`](wy, dy, dim) as T, `${what} backward`, { rtol: TOL[dt].rtol * 4, atol: TOL[dt].atol * 10 + (dt === 'f32' ? 1e-6 : 0) });
    }
    const x = randn([6, 40], 23, 'f32'), tv = (t: T) => native.transpose(t, 0, 1) as T;
    close(native.softmax(tv(cuda(x)), 1) as T, native.softmax(tv(x), 1) as T, 'softmax of a transposed view', TOL.f32);
    const ninf = native.fromBuffer(new Float32Array([-Infinity, -Infinity, 1, -Infinity]), [2, 2], 'f32') as T;
    close(native.softmax(cuda(ninf), 1) as T, native.softmax(ninf, 1) as T, 'row of -inf -> NaN', TOL.f32);
    close(native.log_softmax(cuda(ninf), 1) as T, native.log_softmax(ninf, 1) as T, 'log_softmax row of -inf', TOL.f32);
  });
});
