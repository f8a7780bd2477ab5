/**
 * GPU suite, part B: norms, RoPE, embedding, indexing, random/dropout, optimizers, 4-bit quantization
 * and managed (paged) memory — each CUDA kernel (csrc/cuda/{norm,rope,embedding,index,random,optim,
 * paged,quant}.cu) against its CPU twin on random inputs.
 *
 * These ops are reached through the ordinary bindings: a cuda tensor argument sends the CPU entry
 * point to the CUDA twin (core/dispatch.h), so this also tests the dispatch branches. Results are
 * copied back and compared bit for bit where the kernel is designed to be exact (row copies,
 * scatter-adds, dropout masks, uniforms, AdamW 32/8-bit states, NF4/FP4 quantize/dequantize) and
 * with per-dtype tolerances otherwise (f64 reduction order, device transcendental functions).
 *
 * Without a usable GPU everything here is skipped with a console message saying why.
 */
import { native, NativeTensor } from '../../lib/native';

type T = NativeTensor;
interface CudaInfo { built: boolean; available: boolean; reason: string; cublasLt: boolean; devices: { name: string; freeBytes: number }[] }

const info: CudaInfo = typeof native.cudaInfo === 'function' ? native.cudaInfo() as CudaInfo
  : { built: false, available: false, reason: 'this addon predates cudaInfo (rebuild it: npm run build:native)', cublasLt: false, devices: [] };
const GPU = info.available === true;
if (!GPU) {
  console.warn(`\n*** test/gpu/kernels_b: CUDA tests SKIPPED — ${info.built ? 'CUDA build, but CUDA is not available' : 'this addon was built without CUDA'}: ${info.reason} ***\n`);
}
const gpuDescribe = GPU ? describe : describe.skip;

// ---- helpers ----
const TOL: Record<string, { rtol: number; atol: number }> = {
  f32: { rtol: 2e-5, atol: 1e-6 }, f64: { rtol: 1e-12, atol: 1e-13 }, bf16: { rtol: 1.6e-2, atol: 1e-5 }, f16: { rtol: 2e-3, atol: 1e-5 },
};
const cuda = (t: T): T => native.toDevice(t, 'cuda') as T;
const cpu = (t: T): T => native.toDevice(t, 'cpu') as T;
const randn = (shape: number[], seed: number, dtype = 'f32', mean = 0, std = 1): T => native.randn(shape, seed, dtype, mean, std) as T;
const rand = (shape: number[], seed: number, dtype = 'f32', lo = 0, hi = 1): T => native.rand(shape, seed, dtype, lo, hi) as T;
const ids = (shape: number[], seed: number, V: number, dt = 'i64'): T => native.cast(rand(shape, seed, 'f64', 0, V - 1e-9), dt) as T;
function values(t: T): Float64Array {
  const c = t.device === 'cuda' ? cpu(t) : t;
  return new Float64Array(native.toBuffer(native.cast(c, 'f64')) as ArrayBuffer);
}
function bytes(t: T): Uint8Array {
  const c = t.device === 'cuda' ? cpu(t) : t;
  return new Uint8Array(native.toBuffer(native.contiguous(c)) as ArrayBuffer);
}
function close(got: T, want: T, what: string, tol = TOL[want.dtype] ?? { rtol: 0, atol: 0 }): void {
  expect({ what, device: got.device, shape: got.shape, dtype: got.dtype }).toEqual({ what, device: 'cuda', shape: want.shape, dtype: want.dtype });
  const g = values(got), w = values(want);
  let worst = 0, at = -1;
  for (let i = 0; i < w.length; i++) {
    const a = g[i], b = w[i];
    if ((Number.isNaN(a) && Number.isNaN(b)) || a === b) continue;
    const err = Math.abs(a - b) / (tol.atol + tol.rtol * Math.abs(b));
    if (!(err <= 1) && !(err <= worst)) { worst = Number.isNaN(err) ? Infinity : err; at = i; }
  }
  if (at >= 0) throw new Error(`${what}: element ${at} got ${g[at]} want ${w[at]} (error ${worst.toFixed(2)}x the tolerance)`);
}
function exact(got: T, want: T, what: string): void {
  expect({ what, shape: got.shape, dtype: got.dtype }).toEqual({ what, shape: want.shape, dtype: want.dtype });
  const g = bytes(got), w = bytes(want);
  let bad = -1;
  for (let i = 0; i < w.length; i++) if (g[i] !== w[i]) { bad = i; break; }
  if (bad >= 0) throw new Error(`${what}: byte ${bad} differs (got ${g[bad]}, want ${w[bad]}) of ${w.length}`);
}
const tr = (t: T, a: number, b: number): T => native.transpose(t, a, b) as T;

gpuDescribe('CUDA RMSNorm / LayerNorm', () => {
  const SHAPES = [[4, 7, 4096], [3, 77], [2, 5, 2048], [1, 1, 16]];
  test('rms_norm forward and backward (Llama and Gemma flavours, no weight), all float dtypes', () => {
    for (const dt of ['bf16', 'f32', 'f16', 'f64']) for (const shape of SHAPES) for (const mode of ['llama', 'gemma', 'none']) {
      const C = shape[shape.length - 1];
      const x = randn(shape, 1, dt), w = mode === 'none' ? null : randn([C], 2, dt, 1, 0.1), dy = randn(shape, 3, dt);
      const uo = mode === 'gemma';
      const [y, rs] = native.rms_norm(x, w, 1e-6, uo) as T[];
      const [gy, grs] = native.rms_norm(cuda(x), w && cuda(w), 1e-6, uo) as T[];
      const what = `rms_norm ${dt} ${shape} ${mode}`;
      close(gy, y, what); close(grs, rs, `${what} rstd`);
      const [dx, dw] = native.rms_norm_backward(x, w, rs, dy, uo, true, true) as (T | null)[];
      const [gdx, gdw] = native.rms_norm_backward(cuda(x), w && cuda(w), grs, cuda(dy), uo, true, true) as (T | null)[];
      close(gdx as T, dx as T, `${what} dx`);
      if (w) {
        close(gdw as T, dw as T, `${what} dw`, dt === 'f64' ? { rtol: 1e-10, atol: 1e-12 } : undefined);
        const [, gdw2] = native.rms_norm_backward(cuda(x), cuda(w), grs, cuda(dy), uo, false, true) as (T | null)[];
        exact(gdw2 as T, gdw as T, `${what} dw deterministic`);
      } else expect(gdw).toBeNull();
    }
  });
  test('rms_norm: strided x, f32 dy with bf16 x, mixed weight dtype', () => {
    const xs = randn([64, 3, 512], 4, 'bf16'), x = tr(xs, 0, 1), gx = tr(cuda(xs), 0, 1);
    const w = randn([512], 5, 'f32'), dy = randn([3, 64, 512], 6, 'f32');
    const [y, rs] = native.rms_norm(x, w, 1e-5, false) as T[];
    const [gy, grs] = native.rms_norm(gx, cuda(w), 1e-5, false) as T[];
    close(gy, y, 'rms strided (promote bf16*f32 -> f32)'); close(grs, rs, 'rms strided rstd');
    const [dx, dw] = native.rms_norm_backward(x, w, rs, dy, false, true, true) as T[];
    const [gdx, gdw] = native.rms_norm_backward(gx, cuda(w), grs, cuda(dy), false, true, true) as T[];
    close(gdx, dx, 'rms strided dx'); close(gdw, dw, 'rms strided dw');
  });
  test('fused residual add + rms_norm equals add then rms_norm', () => {
    for (const dt of ['bf16', 'f32']) {
      const x = randn([6, 1024], 7, dt), r = randn([6, 1024], 8, dt), w = randn([1024], 9, dt, 1, 0.1);
      const h = native.binary('add', x, r) as T;
      const [y, rs] = native.rms_norm(h, w, 1e-6, false) as T[];
      const [gy, gsum, grs] = native.cuda_add_rms_norm(cuda(x), cuda(r), cuda(w), 1e-6, false) as T[];
      exact(gsum, h, `add_rms_norm ${dt} sum`); close(gy, y, `add_rms_norm ${dt} y`); close(grs, rs, `add_rms_norm ${dt} rstd`);
    }
  });
  test('layer_norm forward and backward', () => {
    for (const dt of ['bf16', 'f32', 'f64']) for (const shape of SHAPES) for (const affine of [true, false]) {
      const C = shape[shape.length - 1];
      const x = randn(shape, 11, dt, 0.5, 2), w = affine ? randn([C], 12, dt) : null, b = affine ? randn([C], 13, dt) : null, dy = randn(shape, 14, dt);
      const [y, m, rs] = native.layer_norm(x, w, b, 1e-5) as T[];
      const [gy, gm, grs] = native.layer_norm(cuda(x), w && cuda(w), b && cuda(b), 1e-5) as T[];
      const what = `layer_norm ${dt} ${shape} ${affine}`;
      close(gy, y, what); close(gm, m, `${what} mean`); close(grs, rs, `${what} rstd`);
      const [dx, dw, db] = native.layer_norm_backward(x, w, m, rs, dy, true, true, true) as T[];
      const [gdx, gdw, gdb] = native.layer_norm_backward(cuda(x), w && cuda(w), gm, grs, cuda(dy), true, true, true) as T[];
      const ptol = dt === 'f64' ? { rtol: 1e-10, atol: 1e-12 } : undefined;
      close(gdx, dx, `${what} dx`); close(gdw, dw, `${what} dw`, ptol); close(gdb, db, `${what} db`, ptol);
    }
  });
});

gpuDescribe('CUDA RoPE', () => {
  test('tables match the CPU (f32 angles, f64 on request)', () => {
    const pos = native.cast(native.reshape(native.arange(0, 2 * 300, 1, 'f32'), [2, 300]), 'i64') as T;
    for (const [fdt, odt] of [['f32', 'bf16'], ['f32', 'f32'], ['f64', 'f64']]) {
      const invf = native.cast(native.fromBuffer(new Float64Array(32).map((_, i) => Math.pow(10000, -i / 32)), [32], 'f64'), fdt) as T;
      const [c, s] = native.rope_tables(pos, invf, 1.25, odt) as T[];
      const [gc, gs] = native.rope_tables(cuda(pos), invf, 1.25, odt) as T[];
      const tol = odt === 'f32' ? { rtol: 1.2e-7, atol: 1.2e-7 } : undefined;   // 1 ulp (cosf vs correctly rounded)
      close(gc, c, `cos ${fdt}->${odt}`, tol); close(gs, s, `sin ${fdt}->${odt}`, tol);
    }
  });
  test('apply forward/backward: (B,T,H,D) transposed views, partial rotary, broadcast batch', () => {
    const B = 2, Tn = 33, H = 4, D = 64;
    for (const dt of ['bf16', 'f32', 'f64']) for (const R of [64, 32]) for (const cb of [1, B]) {
      const cs = randn([cb, Tn, R], 21, dt === 'f64' ? 'f64' : dt), sn = randn([cb, Tn, R], 22, dt === 'f64' ? 'f64' : dt);
      const xs = randn([B, Tn, H, D], 23, dt);
      const x = tr(xs, 1, 2), gx = tr(cuda(xs), 1, 2);
      const what = `rope ${dt} R=${R} cb=${cb}`;
      close(native.rope(gx, cuda(cs), cuda(sn)) as T, native.rope(x, cs, sn) as T, what);
      close(native.rope_backward(gx, cuda(cs), cuda(sn)) as T, native.rope_backward(x, cs, sn) as T, `${what} backward`);
    }
    // bf16 activations with f32 tables -> f32 result
    const x = randn([1, 2, 5, 16], 24, 'bf16'), c = randn([1, 5, 16], 25), s = randn([1, 5, 16], 26);
    close(native.rope(cuda(x), cuda(c), cuda(s)) as T, native.rope(x, c, s) as T, 'rope bf16 x f32 tables');
  });
});

gpuDescribe('CUDA fused SwiGLU / GeGLU', () => {
  // act(gate)·up and its backward (csrc/cuda/swiglu.cu) against the CPU twin: every activation and
  // float dtype, mixed gate/up dtypes, the strided halves of a fused gate_up projection, one-sided grads.
  const acts = ['silu', 'gelu', 'gelu_tanh'];
  test('forward and backward, every activation and float dtype', () => {
    for (const act of acts) for (const dt of ['bf16', 'f32', 'f16', 'f64']) for (const shape of [[2, 37, 1376], [5, 3], [1, 1, 1]]) {
      const g = randn(shape, 11, dt, 0, 2), u = randn(shape, 12, dt), dh = randn(shape, 13, dt);
      const what = `${act} ${dt} [${shape}]`;
      close(native.glu(act, cuda(g), cuda(u)) as T, native.glu(act, g, u) as T, what);
      const [dg, du] = native.glu_backward(act, g, u, dh, true, true) as T[];
      const [gdg, gdu] = native.glu_backward(act, cuda(g), cuda(u), cuda(dh), true, true) as T[];
      close(gdg, dg, `${what} dgate`); close(gdu, du, `${what} dup`);
    }
  });
  test('mixed dtypes, strided halves of a fused projection, one-sided gradients, empty tensors', () => {
    const gu = randn([3, 50, 2 * 96], 21, 'bf16', 0, 2), dh = randn([3, 50, 96], 22, 'bf16');
    const half = (t: T, i: number): T => native.narrow(t, 2, i * 96, 96) as T;
    const cgu = cuda(gu);
    for (const act of acts) {
      close(native.glu(act, half(cgu, 0), half(cgu, 1)) as T, native.glu(act, half(gu, 0), half(gu, 1)) as T, `${act} strided`);
      const [dg] = native.glu_backward(act, half(gu, 0), half(gu, 1), dh, true, false) as (T | null)[];
      const [gdg, gdu] = native.glu_backward(act, half(cgu, 0), half(cgu, 1), cuda(dh), true, false) as (T | null)[];
      close(gdg as T, dg as T, `${act} strided dgate only`);
      expect(gdu).toBeNull();
      const gm = randn([4, 33], 23, 'bf16', 0, 2), um = randn([4, 33], 24, 'f32'), dm = randn([4, 33], 25, 'f32');
      close(native.glu(act, cuda(gm), cuda(um)) as T, native.glu(act, gm, um) as T, `${act} bf16 gate, f32 up`);
      const [, du] = native.glu_backward(act, gm, um, dm, false, true) as (T | null)[];
      const [gdg2, gdu2] = native.glu_backward(act, cuda(gm), cuda(um), cuda(dm), false, true) as (T | null)[];
      expect(gdg2).toBeNull();
      close(gdu2 as T, du as T, `${act} mixed dup only`);
    }
    const e = cuda(randn([0, 8], 1, 'bf16'));
    expect((native.glu('silu', e, e) as T).shape).toEqual([0, 8]);
    expect(() => native.glu('silu', cuda(randn([2, 3], 1)), randn([2, 3], 2))).toThrow(/up|cuda/);
  });
});

gpuDescribe('CUDA embedding', () => {
  test('forward is an exact row copy; ids from the CPU or the GPU, i32 or i64', () => {
    for (const dt of ['bf16', 'f32', 'f16']) for (const C of [4096, 13]) {
      const w = randn([1000, C], 31, dt), ix = ids([3, 17], 32, 1000);
      const want = native.embedding(w, ix) as T;
      exact(native.embedding(cuda(w), ix) as T, want, `embedding ${dt} C=${C} cpu ids`);
      exact(native.embedding(cuda(w), cuda(native.cast(ix, 'i32') as T)) as T, want, `embedding ${dt} C=${C} cuda i32 ids`);
    }
    const w = randn([10, 8], 33);
    const bad = native.fromBuffer(new Float64Array([1, 2, 10]), [3], 'f64') as T;
    expect(() => native.embedding(cuda(w), native.cast(bad, 'i64'))).toThrow(/id 10 at position 2 .*V=10/);
    expect(() => native.embedding(cuda(w), cuda(native.cast(bad, 'i64') as T))).toThrow(/id 10 at position 2 .*V=10/);
  });
  test('backward is bit-identical to the CPU (token-order sums, repeated ids) and deterministic', () => {
    for (const dt of ['bf16', 'f32', 'f64']) for (const [V, C] of [[50, 4096], [7, 33], [3000, 256]]) {
      const ix = ids([4, 300], 34, V), dy = randn([4, 300, C], 35, dt);
      const want = native.embedding_backward(dy, ix, V) as T;
      exact(native.embedding_backward(cuda(dy), ix, V) as T, want, `embedding_backward ${dt} V=${V} C=${C}`);
      exact(native.embedding_backward(cuda(dy), cuda(ix), V) as T, want, `embedding_backward ${dt} V=${V} C=${C} cuda ids`);
    }
  });
});

gpuDescribe('CUDA indexing', () => {
  test('gather / index_select are exact; scatter_add / index_add bit-identical to the CPU', () => {
    for (const dt of ['bf16', 'f32', 'f64']) {
      const x = randn([6, 9, 5], 41, dt);
      for (const dim of [0, 1, 2, -1]) {
        const d = (dim + 3) % 3;
        const ishape = [4, 7, 3]; ishape[d] = 11;
        const ix = ids(ishape, 42 + d, x.shape[d]);
        exact(native.gather(cuda(x), dim, cuda(ix)) as T, native.gather(x, dim, ix) as T, `gather ${dt} dim ${dim}`);
        const src = randn(ishape, 43, dt), oshape = [...x.shape];
        exact(native.scatter_add(oshape, dim, cuda(ix), cuda(src)) as T, native.scatter_add(oshape, dim, ix, src) as T, `scatter_add ${dt} dim ${dim}`);
        const sel = ids([13], 44 + d, x.shape[d]);
        exact(native.index_select(cuda(x), dim, sel) as T, native.index_select(x, dim, sel) as T, `index_select ${dt} dim ${dim}`);
        const sshape = [...x.shape]; sshape[d] = 13;
        const s2 = randn(sshape, 45, dt);
        exact(native.index_add(x.shape, dim, cuda(sel), cuda(s2)) as T, native.index_add(x.shape, dim, sel, s2) as T, `index_add ${dt} dim ${dim}`);
      }
      exact(native.gather(tr(cuda(x), 0, 2), 1, cuda(ids([5, 2, 6], 46, 9))) as T, native.gather(tr(x, 0, 2), 1, ids([5, 2, 6], 46, 9)) as T, `gather strided ${dt}`);
      const parts = [randn([2, 3], 47, dt), randn([2, 5], 48, dt), randn([2, 0], 49, dt)];
      exact(native.cat(parts.map(cuda), 1) as T, native.cat(parts, 1) as T, `cat ${dt}`);
    }
    expect(() => native.gather(cuda(randn([3, 4], 1)), 1, cuda(native.cast(native.full([3, 1], 4, 'f32'), 'i64') as T))).toThrow(/index 4 at position 0 .*out of range \[0, 4\)/);
  });

  // compare / where / masked_fill live in cpu/elementwise.cpp, whose dispatch lines are added separately.
  const wired = (() => {
    if (!GPU) return false;
    try { native.where(cuda(native.cast(native.full([2], 1, 'f32'), 'u8') as T), cuda(randn([2], 1)), cuda(randn([2], 2))); return true; } catch { return false; }
  })();
  if (GPU && !wired) console.warn('*** test/gpu/kernels_b: compare/where/masked_fill CUDA tests SKIPPED: cpu/elementwise.cpp has no dispatch branch to them yet ***');
  (wired ? test : test.skip)('compare / where / masked_fill match the CPU exactly', () => {
    const a = randn([5, 1, 7], 51, 'bf16'), b = randn([4, 1], 52, 'f32');
    for (const op of ['eq', 'ne', 'lt', 'le', 'gt', 'ge']) {
      exact(native.compare(op, cuda(a), cuda(b)) as T, native.compare(op, a, b) as T, `compare ${op}`);
      exact(native.compare(op, cuda(a), 0.25) as T, native.compare(op, a, 0.25) as T, `compare scalar ${op}`);
    }
    const cond = native.compare('gt', a, b) as T;
    exact(native.where(cuda(cond), cuda(a), cuda(b)) as T, native.where(cond, a, b) as T, 'where');
    const x = randn([4, 5, 7], 53, 'bf16'), m = native.compare('lt', randn([5, 1], 54), 0) as T;
    exact(native.masked_fill(cuda(x), cuda(m), -1e4) as T, native.masked_fill(x, m, -1e4) as T, 'masked_fill');
  });
});

gpuDescribe('CUDA random and dropout', () => {
  test('dropout masks and outputs are bit-identical to the CPU for the same seed', () => {
    for (const dt of ['f32', 'bf16', 'f16', 'f64']) for (const n of [[1 << 20], [3, 1001]]) for (const p of [0.1, 0.5, 0]) {
      const x = randn(n, 61, dt);
      const [y, m] = native.dropout_forward(x, p, 12345) as T[];
      const [gy, gm] = native.dropout_forward(cuda(x), p, 12345) as T[];
      exact(gm, m, `mask ${dt} ${n} p=${p}`); exact(gy, y, `dropout ${dt} ${n} p=${p}`);
      const dy = randn(n, 62, dt);
      exact(native.dropout_backward(cuda(dy), gm, p) as T, native.dropout_backward(dy, m, p) as T, `dropout backward ${dt}`);
    }
    const x = randn([4, 3], 63);
    exact(native.dropout_forward(tr(cuda(x), 0, 1), 0.3, 7)[1] as T, native.dropout_forward(native.contiguous(tr(x, 0, 1)), 0.3, 7)[1] as T, 'dropout strided mask');
  });
  test('rand is bit-identical, randn within an ulp', () => {
    for (const dt of ['f32', 'bf16', 'f64']) for (const shape of [[1000003], [7, 3]]) {
      exact(native.cuda_rand(shape, 99, dt, -2, 3) as T, native.rand(shape, 99, dt, -2, 3) as T, `rand ${dt} ${shape}`);
      close(native.cuda_randn(shape, 98, dt, 0.5, 2) as T, native.randn(shape, 98, dt, 0.5, 2) as T, `randn ${dt} ${shape}`,
        dt === 'f64' ? { rtol: 1e-14, atol: 1e-14 } : dt === 'f32' ? { rtol: 1.2e-7, atol: 1e-7 } : undefined);
    }
  });
});

gpuDescribe('CUDA optimizers', () => {
  const H = [1e-3, 0.9, 0.999, 1e-8, 0.01];
  test('AdamW (32-bit) parameters and states are bit-identical to the CPU after 5 steps', () => {
    for (const [pd, gd] of [['f32', 'f32'], ['bf16', 'bf16'], ['bf16', 'f32'], ['f16', 'f16'], ['f64', 'f64']]) for (const n of [[4099], [64, 33]]) {
      const sd = pd === 'f64' ? 'f64' : 'f32';
      const p = randn(n, 71, pd), m = native.zeros(n, sd) as T, v = native.zeros(n, sd) as T;
      const gp = cuda(p), gm = cuda(m), gv = cuda(v);
      for (let step = 1; step <= 5; step++) {
        const g = randn(n, 100 + step, gd);
        native.adamw_step(p, g, m, v, ...H, step);
        native.adamw_step(gp, cuda(g), gm, gv, ...H, step);
      }
      const what = `adamw ${pd}/${gd} ${n}`;
      exact(gp, p, `${what} param`); exact(gm, m, `${what} exp_avg`); exact(gv, v, `${what} exp_avg_sq`);
    }
    // beta1 >= 0.5 takes the other lerp branch; fused multi-tensor launch equals per-tensor steps
    const ps = [randn([300], 72), randn([70000], 73, 'bf16')], gs = [randn([300], 74), randn([70000], 75, 'bf16')];
    const ms = ps.map((t) => native.zeros(t.shape, 'f32') as T), vs = ps.map((t) => native.zeros(t.shape, 'f32') as T);
    const gps = ps.map(cuda), gms = ms.map(cuda), gvs = vs.map(cuda);
    for (let k = 0; k < 2; k++) native.adamw_step(ps[k], gs[k], ms[k], vs[k], 1e-2, 0.3, 0.99, 1e-6, 0.1, 3);
    native.cuda_adamw_multi(gps, gs.map(cuda), gms, gvs, 1e-2, 0.3, 0.99, 1e-6, 0.1, 3);
    for (let k = 0; k < 2; k++) { exact(gps[k], ps[k], `adamw_multi param ${k}`); exact(gms[k], ms[k], `adamw_multi m ${k}`); exact(gvs[k], vs[k], `adamw_multi v ${k}`); }
  });
  test('8-bit AdamW: parameters, codes and absmax bit-identical to the CPU after 5 steps', () => {
    for (const [pd, gd] of [['f32', 'f32'], ['bf16', 'bf16'], ['bf16', 'f32']]) for (const n of [1 << 16, 1000]) {
      const p = randn([n], 81, pd);
      const nb = Math.ceil(n / 256);
      const q1 = native.zeros([n], 'u8') as T, q2 = native.zeros([n], 'u8') as T, a1 = native.zeros([nb], 'f32') as T, a2 = native.zeros([nb], 'f32') as T;
      // start from real quantized states
      const [c1, b1] = native.quantizeBlockwise(randn([n], 82, 'f32', 0, 1e-3), true) as T[];
      const [c2, b2] = native.quantizeBlockwise(rand([n], 83, 'f32', 0, 1e-6), false) as T[];
      native.copy_(q1, c1); native.copy_(q2, c2); native.copy_(a1, b1); native.copy_(a2, b2);
      const G = [p, q1, q2, a1, a2].map(cuda);
      for (let step = 1; step <= 5; step++) {
        const g = randn([n], 200 + step, gd);
        native.adamw8bit_step(p, g, q1, q2, a1, a2, ...H, step);
        native.adamw8bit_step(G[0], cuda(g), G[1], G[2], G[3], G[4], ...H, step);
      }
      const what = `adamw8bit ${pd}/${gd} n=${n}`;
      exact(G[0], p, `${what} param`); exact(G[1], q1, `${what} state1`); exact(G[2], q2, `${what} state2`);
      exact(G[3], a1, `${what} absmax1`); exact(G[4], a2, `${what} absmax2`);
    }
  });
  test('blockwise 8-bit quantize/dequantize, grad norms and scale_', () => {
    for (const signed of [true, false]) {
      const x = signed ? randn([70001], 91) : rand([70001], 91);
      const [c, a] = native.quantizeBlockwise(x, signed) as T[];
      const [gc, ga] = native.quantizeBlockwise(cuda(x), signed) as T[];
      exact(gc, c, `quantizeBlockwise ${signed}`); exact(ga, a, `absmax ${signed}`);
      exact(native.dequantizeBlockwise(gc, ga, signed) as T, native.dequantizeBlockwise(c, a, signed) as T, `dequantizeBlockwise ${signed}`);
    }
    const ts = [randn([1 << 17], 92, 'bf16'), randn([33], 93), randn([300, 301], 94, 'f16'), randn([5], 95, 'f64')];
    for (const p of [2, 1, 3, Infinity]) {
      const want = native.grad_norm(ts, p) as number, got = native.grad_norm(ts.map(cuda), p) as number;
      if (p === Infinity) expect(got).toBe(want); else expect(Math.abs(got - want)).toBeLessThanOrEqual(1e-12 * want);
    }
    for (const dt of ['f32', 'bf16', 'f64']) {
      const t = randn([1001], 96, dt), g = cuda(t);
      native.scale_(t, 0.37); native.scale_(g, 0.37);
      exact(g, t, `scale_ ${dt}`);
    }
  });
});

gpuDescribe('CUDA 4-bit quantization (NF4 / FP4)', () => {
  const state = (q: Record<string, T | number | null>, shape: number[], type: string, dtype: string, bs: number, move: (t: T) => T) => ({
    type, blocksize: bs, shape, dtype,
    packed: move(q.packed as T), absmax: move(q.absmax as T),
    nestedAbsmax: q.nestedAbsmax ? move(q.nestedAbsmax as T) : null, offset: q.offset as number,
  });
  test('quantize is bit-identical to the CPU (packed codes and absmax)', () => {
    for (const type of ['nf4', 'fp4']) for (const dt of ['bf16', 'f32', 'f16']) for (const [shape, bs] of [[[256, 4096], 64], [[3, 77], 32], [[1001], 128]] as [number[], number][]) {
      const x = randn(shape, 101, dt);
      const q = native.quant4_quantize(x, bs, type, false) as Record<string, T>;
      const gq = native.quant4_quantize(cuda(x), bs, type, false) as Record<string, T>;
      exact(gq.packed, q.packed, `quantize ${type} ${dt} ${shape}/${bs} packed`);
      exact(gq.absmax, q.absmax, `quantize ${type} ${dt} ${shape}/${bs} absmax`);
    }
    const x = randn([64, 256], 102, 'bf16');
    const q = native.quant4_quantize(x, 64, 'nf4', true) as Record<string, T | number>;
    const gq = native.quant4_quantize(cuda(x), 64, 'nf4', true) as Record<string, T | number>;
    exact(gq.absmax as T, q.absmax as T, 'double quant codes'); exact(gq.nestedAbsmax as T, q.nestedAbsmax as T, 'double quant absmax2');
    expect(gq.offset).toBe(q.offset);
  });
  test('dequantize is bit-identical to the CPU (plain and double-quantized, every output dtype)', () => {
    for (const type of ['nf4', 'fp4']) for (const sdt of ['bf16', 'f32']) for (const dq of [false, true]) for (const [shape, bs] of [[[512, 1024], 64], [[7, 33], 32]] as [number[], number][]) {
      const x = randn(shape, 111, sdt);
      const q = native.quant4_quantize(x, bs, type, dq) as Record<string, T | number | null>;
      const sc = state(q, shape, type, sdt, bs, (t) => t), sg = state(q, shape, type, sdt, bs, cuda);
      for (const out of ['bf16', 'f32', 'f16', 'f64'])
        exact(native.quant4_dequantize(sg, out) as T, native.quant4_dequantize(sc, out) as T, `dequantize ${type} ${sdt} dq=${dq} ${shape} -> ${out}`);
    }
  });
  (info.cublasLt ? test : test.skip)('QLoRA linear (dequantize into scratch + cuBLASLt) and its input gradient', () => {
    for (const dt of ['bf16', 'f32']) {
      const Wt = randn([384, 512], 121, dt), q = native.quant4_quantize(Wt, 64, 'nf4', true) as Record<string, T | number | null>;
      const sc = state(q, [384, 512], 'nf4', dt, 64, (t) => t), sg = state(q, [384, 512], 'nf4', dt, 64, cuda);
      const x = randn([3, 11, 512], 122, dt), b = randn([384], 123, dt), dy = randn([3, 11, 384], 124, dt);
      const tol = dt === 'bf16' ? TOL.bf16 : { rtol: 1e-4, atol: 1e-4 };
      close(native.quant4_linear(cuda(x), sg, cuda(b)) as T, native.quant4_linear(x, sc, b) as T, `quant4_linear ${dt}`, tol);
      close(native.quant4_linear(cuda(x), sg, null) as T, native.quant4_linear(x, sc, null) as T, `quant4_linear ${dt} no bias`, tol);
      close(native.quant4_linear_grad_input(cuda(dy), sg) as T, native.quant4_linear_grad_input(dy, sc) as T, `quant4_linear_grad_input ${dt}`, tol);
    }
  });
});

gpuDescribe('CUDA managed memory (paged optimizer states)', () => {
  test('emptyManaged: zero-filled cuda tensors usable by kernels, prefetch both ways, stats', () => {
    const before = native.managedStats() as { liveBytes: number; allocations: number };
    const m = native.emptyManaged([1 << 18], 'f32') as T, v = native.emptyManaged([1 << 18], 'f32') as T;
    expect(m.device).toBe('cuda');
    expect(native.isManaged(m)).toBe(true);
    expect(native.isManaged(cuda(randn([2], 1)))).toBe(false);
    exact(m, native.zeros([1 << 18], 'f32') as T, 'managed zero fill');
    const after = native.managedStats() as { liveBytes: number; allocations: number };
    expect(after.allocations - before.allocations).toBe(2);
    expect(after.liveBytes - before.liveBytes).toBeGreaterThanOrEqual(2 * 4 * (1 << 18));
    native.prefetchManaged([m, v], 'cuda');
    const p = randn([1 << 18], 131), g = randn([1 << 18], 132);
    const cm = native.zeros([1 << 18], 'f32') as T, cv = native.zeros([1 << 18], 'f32') as T, gp = cuda(p);
    native.adamw_step(p, g, cm, cv, 1e-3, 0.9, 0.999, 1e-8, 0, 1);
    native.adamw_step(gp, cuda(g), m, v, 1e-3, 0.9, 0.999, 1e-8, 0, 1);
    native.prefetchManaged(m, 'cpu');
    exact(m, cm, 'adamw with managed exp_avg'); exact(v, cv, 'adamw with managed exp_avg_sq'); exact(gp, p, 'adamw param (managed states)');
  });
  test('emptyManaged refuses more than the free device memory (never oversubscribes)', () => {
    const free = (native.cudaInfo() as CudaInfo).devices[0].freeBytes;
    const n = Math.ceil(free / 4) + (1 << 28);   // more f32 elements than the free bytes hold
    expect(() => native.emptyManaged([n], 'f32')).toThrow(/refusing to allocate .* managed memory/);
  });
});
