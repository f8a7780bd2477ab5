/**
 * GPU suite: every CUDA op (csrc/cuda) against its CPU twin on random inputs.
 *
 * The CUDA kernels are called through their direct bindings (cuda_<op>, csrc/addon/bind_cuda.cpp),
 * so this suite does not depend on op dispatch; inputs are made on the CPU, copied with toDevice,
 * and results copied back and compared with per-dtype tolerances (casts and copies: bit-exact).
 *
 * Without a usable GPU (CPU-only build, no driver, no device) the GPU tests are skipped with a
 * console message saying why; the "no GPU" behaviour (clear errors, never a crash) is tested instead.
 * Run on a GPU machine with scripts/gpu-session.sh (or `npx jest test/gpu`).
 */
import { native, NativeTensor } from '../../lib/native';
import * as pk from '../../lib';

type T = NativeTensor;
interface CudaInfo {
  built: boolean; available: boolean; reason: string; driverVersion: number; runtimeVersion: number; cublasLt: boolean;
  devices: { index: number; name: string; computeCapability: string; multiprocessors: number; totalBytes: number; freeBytes: number }[];
}

const info: CudaInfo = typeof native.cudaInfo === 'function' ? native.cudaInfo() as CudaInfo
  : { built: false, available: false, reason: 'this addon predates cudaInfo (rebuild it: npm run build:native)', driverVersion: 0, runtimeVersion: 0, cublasLt: false, devices: [] };
const GPU = info.available === true;
if (!GPU) {
  // Visible in jest's output: say exactly why the GPU tests did not run.
  console.warn(`\n*** test/gpu: CUDA tests SKIPPED — ${info.built ? 'CUDA build, but CUDA is not available' : 'this addon was built without CUDA'}: ${info.reason} ***\n`);
} else {
  const d = info.devices[0];
  console.log(`test/gpu: running on ${d.name} (sm_${d.computeCapability.replace('.', '')}, ${(d.totalBytes / 2 ** 30).toFixed(1)} GiB, driver ${info.driverVersion}, cudart ${info.runtimeVersion}, cuBLASLt ${info.cublasLt})`);
}
const gpuDescribe = GPU ? describe : describe.skip;

// ---- helpers ----
const FLOATS = ['f32', 'bf16', 'f16', 'f64'] as const;
const ALL = ['f32', 'bf16', 'f16', 'f64', 'i32', 'i64', 'u8'] as const;
const TOL: Record<string, { rtol: number; atol: number }> = {
  f32: { rtol: 2e-5, atol: 1e-6 }, f64: { rtol: 1e-12, atol: 1e-13 }, bf16: { rtol: 1.6e-2, atol: 1e-5 }, f16: { rtol: 2e-3, atol: 1e-5 },
};

const cuda = (t: T): T => native.toDevice(t, 'cuda') as T;
const cpu = (t: T): T => native.toDevice(t, 'cpu') as T;
const randn = (shape: number[], seed: number, dtype = 'f32', mean = 0, std = 1): T => native.randn(shape, seed, dtype, mean, std) as T;
const rand = (shape: number[], seed: number, dtype = 'f32', lo = 0, hi = 1): T => native.rand(shape, seed, dtype, lo, hi) as T;
function values(t: T): Float64Array {
  const c = t.device === 'cuda' ? cpu(t) : t;
  return new Float64Array(native.toBuffer(native.cast(c, 'f64')) as ArrayBuffer);
}
function bytes(t: T): Uint8Array {
  const c = t.device === 'cuda' ? cpu(t) : t;
  return new Uint8Array(native.toBuffer(c) as ArrayBuffer);
}

/** Expect the cuda result `got` to match the cpu result `want` (same shape and dtype). */
function close(got: T, want: T, what: string, tol = TOL[want.dtype] ?? { rtol: 0, atol: 0 }): void {
  expect(got.device).toBe('cuda');
  expect({ what, shape: got.shape, dtype: got.dtype }).toEqual({ what, shape: want.shape, dtype: want.dtype });
  const g = values(got), w = values(want);
  let worst = 0, at = -1;
  for (let i = 0; i < w.length; i++) {
    const a = g[i], b = w[i];
    if (Number.isNaN(a) && Number.isNaN(b)) continue;
    if (a === b) continue;
    const err = Math.abs(a - b) / (tol.atol + tol.rtol * Math.abs(b));
    if (!(err <= 1)) { if (!(err <= worst)) { worst = Number.isNaN(err) ? Infinity : err; at = i; } }
  }
  if (at >= 0) throw new Error(`${what}: element ${at} got ${g[at]} want ${w[at]} (error ${worst.toFixed(2)}x the ${want.dtype} tolerance)`);
}
function exact(got: T, want: T, what: string): void {
  expect({ what, shape: got.shape, dtype: got.dtype }).toEqual({ what, shape: want.shape, dtype: want.dtype });
  const g = bytes(got), w = bytes(want);
  let bad = -1;
  for (let i = 0; i < w.length; i++) if (g[i] !== w[i]) { bad = i; break; }
  if (bad >= 0) throw new Error(`${what}: byte ${bad} differs (got ${g[bad]}, want ${w[bad]})`);
}

// ---- without a GPU: clear errors, no crash ----
describe('CUDA availability', () => {
  test('cudaInfo reports availability and a reason', () => {
    expect(typeof info.available).toBe('boolean');
    expect(typeof info.reason).toBe('string');
    if (!info.available) expect(info.reason.length).toBeGreaterThan(0);
    else expect(info.devices.length).toBeGreaterThan(0);
  });
  test('public runtime API: cudaInfo, cudaMemoryStats, cudaEmptyCache, cudaSynchronize', () => {
    expect(pk.cudaInfo()).toEqual(native.cudaInfo());
    const m = pk.cudaMemoryStats();
    const KEYS = ['allocatedBytes', 'reservedBytes', 'peakAllocatedBytes', 'peakReservedBytes', 'requests', 'cacheHits',
      'deviceAllocs', 'deviceFrees', 'oomFlushes', 'liveBlocks', 'cachedBlocks'];
    expect(Object.keys(m).sort()).toEqual([...KEYS].sort());
    for (const k of KEYS) expect(Number.isFinite((m as unknown as Record<string, number>)[k])).toBe(true);
    if (!info.built) expect(Object.values(m).every((v) => v === 0)).toBe(true);
    // never throws, with or without a GPU
    pk.cudaEmptyCache();
    pk.cudaSynchronize();
    expect(pk.cudaMemoryStats().reservedBytes).toBe(pk.cudaMemoryStats().allocatedBytes);
  });
  (GPU || typeof native.toDevice !== 'function' ? test.skip : test)('toDevice(cuda) throws a clear error when CUDA is unavailable', () => {
    const t = randn([2, 3], 1);
    expect(() => native.toDevice(t, 'cuda')).toThrow(/cuda/i);
    expect(() => native.toDevice(t, 'gpu')).toThrow(/'cpu' or 'cuda'/);
    expect((native.toDevice(t, 'cpu') as T).device).toBe('cpu');
  });
});

gpuDescribe('CUDA runtime and copies', () => {
  test('toDevice round trip is exact for every dtype, strided sources, 0-d and empty tensors', () => {
    for (const dt of ALL) {
      const src = dt.startsWith('f') ? randn([5, 7], 3, dt) : native.cast(rand([5, 7], 3, 'f32', 0, 100), dt) as T;
      const d = cuda(src);
      expect(d.device).toBe('cuda');
      exact(cpu(d), src, `roundtrip ${dt}`);
      const tr = native.transpose(src, 0, 1) as T;          // non-contiguous source
      exact(cpu(cuda(tr)), native.contiguous(tr) as T, `roundtrip transposed ${dt}`);
    }
    exact(cpu(cuda(native.full([], 3.5, 'f32') as T)), native.full([], 3.5, 'f32') as T, '0-d');
    exact(cpu(cuda(native.empty([0, 4], 'bf16') as T)), native.empty([0, 4], 'bf16') as T, 'empty');
    expect(native.toDevice(cuda(randn([2], 1)), 'cuda')).toBeDefined();
  });

  test('cast between all dtypes matches the CPU bit for bit', () => {
    for (const from of ALL) {
      const base = rand([3, 37], 11, 'f64', 0, 200);                       // non-negative: defined for u8
      const src = native.cast(base, from) as T;
      const dsrc = cuda(src);
      for (const to of ALL) exact(native.cuda_cast(dsrc, to) as T, native.cast(src, to) as T, `cast ${from}->${to}`);
      // strided source
      const tr = native.transpose(src, 0, 1) as T;
      for (const to of ALL) exact(native.cuda_cast(native.transpose(dsrc, 0, 1), to) as T, native.cast(native.contiguous(tr), to) as T, `cast T ${from}->${to}`);
    }
    // specials: NaN, inf, halfway cases, f16 overflow/subnormals
    const sp = native.fromBuffer(new Float32Array([NaN, Infinity, -Infinity, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 70000, -70000, 1e-6, 6e-8, -0, 65519, 65520]), [12], 'f32') as T;
    for (const to of ['bf16', 'f16', 'f64']) exact(native.cuda_cast(cuda(sp), to) as T, native.cast(sp, to) as T, `special f32->${to}`);
  });

  test('copy_ into strided destinations from broadcast and cpu sources', () => {
    for (const dt of FLOATS) {
      const dstC = native.zeros([4, 6], dt) as T, dstG = cuda(dstC);
      const src = randn([6], 5, 'f32');                                     // broadcast over rows, converted
      native.copy_(native.transpose(native.view(dstC, [6, 4]), 0, 1), native.view(src, [1, 6]) as T);
      native.cuda_copy_(native.transpose(native.view(dstG, [6, 4]), 0, 1), cuda(native.view(src, [1, 6]) as T));
      exact(dstG, dstC, `copy_ broadcast ${dt}`);
      native.cuda_copy_(dstG, native.full([4, 6], 2, 'f64'));               // cpu source -> cuda destination
      exact(dstG, native.full([4, 6], 2, dt) as T, `copy_ from cpu ${dt}`);
    }
  });

  test('contiguous of permuted, narrowed and stepped views', () => {
    const x = randn([3, 4, 5, 6], 7, 'bf16'), g = cuda(x);
    const views: [string, (t: T) => T][] = [
      ['permute', (t) => native.permute(t, [3, 1, 0, 2]) as T],
      ['narrow', (t) => native.narrow(t, 2, 1, 3) as T],
      ['slice step', (t) => native.slice(t, 3, 0, 6, 2) as T],
      ['expand', (t) => native.expand(native.narrow(t, 0, 0, 1), [4, 4, 5, 6]) as T],
    ];
    for (const [name, f] of views) {
      exact(native.cuda_contiguous(f(g)) as T, native.contiguous(f(x)) as T, `contiguous ${name}`);
      expect((native.cuda_contiguous(f(g)) as T).isContiguous).toBe(true);
    }
  });

  test('fill, full and zeros', () => {
    for (const dt of ALL) {
      exact(native.cuda_full([3, 5], 7.25, dt) as T, native.full([3, 5], 7.25, dt) as T, `full ${dt}`);
      exact(native.cuda_zeros([3, 5], dt) as T, native.zeros([3, 5], dt) as T, `zeros ${dt}`);
    }
    const c = native.zeros([4, 4], 'f32') as T, g = cuda(c);
    native.cuda_fill_(native.slice(g, 1, 0, 4, 2), -1.5);
    for (let i = 0; i < 4; i++) for (let j = 0; j < 4; j += 2) native.copy_(native.narrow(native.narrow(c, 0, i, 1), 1, j, 1), native.full([1, 1], -1.5, 'f32'));
    exact(g, c, 'fill strided');
  });
});

gpuDescribe('CUDA elementwise ops', () => {
  const BIN = ['add', 'sub', 'mul', 'div', 'pow', 'maximum', 'minimum'];
  const SHAPES: [number[], number[]][] = [
    [[4, 5], [4, 5]], [[4, 5], [5]], [[4, 1], [1, 5]], [[2, 3, 4], [3, 1]], [[7], []], [[], [6]], [[3, 0, 2], [2]],
    [[(1 << 16) + 3], [(1 << 16) + 3]],   // vectorised path with a tail
    [[256, 1024], [1024]],                // row broadcast (bias add)
  ];
  const input = (shape: number[], seed: number, dt: string, op: string): T =>
    op === 'pow' || op === 'div' ? rand(shape, seed, dt, 0.5, 2) : randn(shape, seed, dt);

  test('binary forward with broadcasting, all float dtypes', () => {
    for (const dt of FLOATS) for (const op of BIN) for (const [sa, sb] of SHAPES) {
      const a = input(sa, 1, dt, op), b = input(sb, 2, dt, op);
      close(native.cuda_binary(op, cuda(a), cuda(b)) as T, native.binary(op, a, b) as T, `${op} ${dt} ${JSON.stringify([sa, sb])}`);
    }
  });

  test('binary forward: mixed dtypes, strided and misaligned inputs, cpu 0-d scalars', () => {
    const a = randn([33, 17], 3, 'bf16'), b = randn([17], 4, 'f32');
    close(native.cuda_binary('mul', cuda(a), cuda(b)) as T, native.binary('mul', a, b) as T, 'bf16*f32');
    const at = native.transpose(randn([17, 33], 5, 'f32'), 0, 1) as T;
    close(native.cuda_binary('add', native.transpose(cuda(randn([17, 33], 5, 'f32')), 0, 1), cuda(b)) as T, native.binary('add', at, b) as T, 'transposed');
    const big = randn([4099], 6, 'bf16');
    const mis = (t: T) => native.narrow(t, 0, 1, 4097) as T;                 // 2-byte offset: not 16-byte aligned
    close(native.cuda_binary('sub', mis(cuda(big)), mis(cuda(big))) as T, native.binary('sub', mis(big), mis(big)) as T, 'misaligned');
    const s = native.full([], 2.5, 'f32') as T;
    close(native.cuda_binary('mul', cuda(a), s) as T, native.binary('mul', a, s) as T, 'cpu 0-d scalar operand');
    expect(() => native.cuda_binary('add', cuda(a), randn([33, 17], 1, 'bf16'))).toThrow(/cuda/);
    expect(() => native.cuda_binary('add', cuda(randn([3], 1)), cuda(randn([4], 1)))).toThrow(/broadcast/);
  });

  test('binary backward', () => {
    for (const dt of FLOATS) for (const op of BIN) for (const [sa, sb] of SHAPES.slice(0, 5)) {
      const a = input(sa, 1, dt, op), b = input(sb, 2, dt, op);
      const shape = (native.binary('add', a, b) as T).shape;
      const dy = randn(shape, 3, dt);
      const [ca, cb] = native.binary_backward(op, a, b, dy, true, true) as T[];
      const [ga, gb] = native.cuda_binary_backward(op, cuda(a), cuda(b), cuda(dy), true, true) as T[];
      close(ga, ca, `d${op}/da ${dt}`); close(gb, cb, `d${op}/db ${dt}`);
    }
    const [ga, gb] = native.cuda_binary_backward('mul', cuda(randn([3], 1)), cuda(randn([3], 2)), cuda(randn([3], 3)), false, true) as (T | null)[];
    expect(ga).toBeNull(); expect(gb).not.toBeNull();
  });

  test('scalar ops forward and backward', () => {
    for (const dt of FLOATS) for (const op of BIN) for (const first of [false, true]) {
      const x = rand([5, 33], 7, dt, 0.5, 2), dy = randn([5, 33], 8, dt);
      close(native.cuda_scalar(op, cuda(x), 1.5, first) as T, native.scalar(op, x, 1.5, first) as T, `scalar ${op} ${dt} ${first}`);
      close(native.cuda_scalar_backward(op, cuda(x), 1.5, first, cuda(dy)) as T, native.scalar_backward(op, x, 1.5, first, dy) as T, `scalar' ${op} ${dt} ${first}`);
    }
  });

  test('unary ops forward and backward', () => {
    const UN = ['neg', 'exp', 'log', 'sqrt', 'rsqrt', 'abs', 'sigmoid', 'tanh', 'silu', 'gelu', 'gelu_tanh', 'relu', 'sin', 'cos',
      'square', 'reciprocal', 'sign', 'log1p', 'expm1'];
    const POS = new Set(['log', 'sqrt', 'rsqrt', 'reciprocal', 'log1p']);
    for (const dt of FLOATS) for (const op of UN) for (const shape of [[3, 50], [(1 << 15) + 5]]) {
      const x = POS.has(op) ? rand(shape, 9, dt, 0.1, 4) : randn(shape, 9, dt, 0, 2), dy = randn(shape, 10, dt);
      close(native.cuda_unary(op, cuda(x)) as T, native.unary(op, x) as T, `${op} ${dt}`);
      // Without y each side recomputes it; in bf16/f16 a last-ulp difference in y is amplified by
      // the cancellation in e.g. 1 - y² (tanh), so the half formats get the same y on both sides.
      if (dt === 'f32' || dt === 'f64') close(native.cuda_unary_backward(op, cuda(x), null, cuda(dy)) as T, native.unary_backward(op, x, null, dy) as T, `${op}' ${dt}`);
      const y = native.unary(op, x) as T;
      close(native.cuda_unary_backward(op, cuda(x), cuda(y), cuda(dy)) as T, native.unary_backward(op, x, y, dy) as T, `${op}'(y) ${dt}`);
    }
  });

  test('clamp forward and backward', () => {
    for (const dt of FLOATS) {
      const x = randn([7, 9], 12, dt), dy = randn([7, 9], 13, dt);
      close(native.cuda_clamp(cuda(x), -0.5, 0.7) as T, native.clamp(x, -0.5, 0.7) as T, `clamp ${dt}`);
      close(native.cuda_clamp_backward(cuda(x), -0.5, 0.7, cuda(dy)) as T, native.clamp_backward(x, -0.5, 0.7, dy) as T, `clamp' ${dt}`);
    }
  });
});

gpuDescribe('CUDA reductions', () => {
  test('sum and mean over dims, keepdim, all float dtypes', () => {
    const DIMS: number[][] = [[], [0], [1], [2], [0, 2], [-1], [1, 2], [0, 1, 2]];
    for (const dt of FLOATS) for (const dims of DIMS) for (const keep of [false, true]) {
      const x = randn([4, 5, 6], 14, dt);
      for (const op of ['sum', 'mean']) {
        const tol = dt === 'f32' ? { rtol: 1e-5, atol: 1e-5 } : undefined;
        close(native[`cuda_${op}`](cuda(x), dims, keep) as T, native[op](x, dims, keep) as T, `${op} ${dt} ${JSON.stringify(dims)} ${keep}`, tol);
      }
    }
  });

  test('long rows, long columns, full reductions, strided and empty inputs', () => {
    const tol = { rtol: 1e-5, atol: 1e-4 };
    const cases: [number[], number[], string][] = [
      [[1 << 20], [], 'full (chunked)'], [[3, 200000], [1], 'long rows (chunked row)'], [[200000, 3], [0], 'long columns (chunked column)'],
      [[512, 4096], [0], 'bias grad'], [[4096, 512], [1], 'per-row'], [[2, 0, 3], [1], 'empty reduced dim'], [[0, 3], [1], 'no outputs'],
    ];
    for (const [shape, dims, what] of cases) {
      const x = randn(shape, 15, 'f32');
      close(native.cuda_sum(cuda(x), dims, false) as T, native.sum(x, dims, false) as T, `sum ${what}`, tol);
      close(native.cuda_mean(cuda(x), dims, true) as T, native.mean(x, dims, true) as T, `mean ${what}`, tol);
    }
    const x = randn([64, 48, 3], 16, 'bf16');
    const p = (t: T) => native.permute(t, [2, 0, 1]) as T;
    close(native.cuda_sum(p(cuda(x)), [1], false) as T, native.sum(p(x), [1], false) as T, 'sum of permuted bf16');
    close(native.cuda_sum(native.full([], 4, 'f32'), [], true) as T, native.sum(native.full([], 4, 'f32'), [], true) as T, 'sum 0-d (cpu scalar)');
    expect(() => native.cuda_sum(cuda(x), [0, 0], false)).toThrow(/repeated/);
  });

  // max over one dim (values + i64 indices; argmax for evaluation): exact, bit for bit, like the CPU —
  // the first NaN wins, else the largest value with ties to the smallest index.
  const maxDim = (x: T, dim: number, keep: boolean, what: string): void => {
    const [gv, gi] = native.cuda_max_dim(x.device === 'cuda' ? x : cuda(x), dim, keep) as T[];
    const [wv, wi] = native.max_dim(x.device === 'cuda' ? cpu(x) : x, dim, keep) as T[];
    expect({ what, shape: gv.shape, dtype: gv.dtype, ishape: gi.shape, idtype: gi.dtype })
      .toEqual({ what, shape: wv.shape, dtype: wv.dtype, ishape: wi.shape, idtype: 'i64' });
    expect({ what, v: Buffer.from(bytes(gv)).toString('hex') }).toEqual({ what, v: Buffer.from(bytes(wv)).toString('hex') });
    expect({ what, i: Array.from(values(gi)) }).toEqual({ what, i: Array.from(values(wi)) });
  };
  // Host reference for rows of a [rows, n] f32 array: first NaN, else first maximum.
  const refArgmax = (a: Float32Array, n: number): number[] => {
    const out: number[] = [];
    for (let r = 0; r < a.length / n; r++) {
      let bi = 0;
      for (let j = 0; j < n; j++) {
        const v = a[r * n + j];
        if (Number.isNaN(v)) { bi = j; break; }
        if (v > a[r * n + bi]) bi = j;
      }
      out.push(bi);
    }
    return out;
  };

  test('max over one dim: every float dtype, dim and keepdim, views, 0-d', () => {
    for (const dt of FLOATS) for (const dim of [0, 1, 2, -1]) for (const keep of [false, true]) {
      maxDim(randn([4, 5, 6], 18, dt), dim, keep, `max ${dt} dim ${dim} keepdim ${keep}`);
    }
    const x = randn([64, 48, 3], 19, 'bf16');
    maxDim(native.permute(cuda(x), [2, 0, 1]) as T, 2, false, 'permuted bf16, strided kept dims');
    maxDim(native.transpose(cuda(x), 0, 2) as T, 2, false, 'transposed: strided reduced dim');
    maxDim(native.narrow(cuda(x), 1, 5, 40) as T, 1, true, 'narrowed');
    maxDim(cuda(native.full([], 4, 'f32') as T), 0, false, '0-d');
    maxDim(randn([0, 3], 20, 'f32'), 1, false, 'no outputs');
    expect(() => native.cuda_max_dim(cuda(randn([2, 0], 20, 'f32')), 1, false)).toThrow(/max: cannot reduce an empty dim/);
    expect(() => native.cuda_max_dim(cuda(randn([2, 3], 20, 'f32')), 2, false)).toThrow(/dim/);
  });

  test('max over one dim: vocab-sized rows, long columns, ties, NaN and -inf (host reference)', () => {
    for (const [shape, dim, what] of [[[3, 200000], 1, 'long rows (256-thread blocks)'], [[200000, 3], 0, 'long columns'],
      [[4096, 40], 1, 'many short rows'], [[1, 128256], 1, 'one Llama-3 vocab row']] as [number[], number, string][]) {
      maxDim(randn(shape, 21, 'f32'), dim, false, what);
      maxDim(randn(shape, 22, 'bf16'), dim, false, `${what} bf16`);
    }
    // Ties everywhere: values from {-2..2}; the maximum appears many times per row.
    const n = 3000, rows = 8;
    const tie = new Float32Array(rows * n).map((_, k) => ((k * 7919) % 5) - 2);
    tie[3 * n + 2999] = 9;                                            // a lone maximum at the very end
    for (let j = 0; j < n; j++) tie[4 * n + j] = -Infinity;           // a row of -inf: index 0
    tie[5 * n + 1700] = NaN; tie[5 * n + 2500] = NaN;                 // two NaN: the first wins
    tie[6 * n + 0] = NaN;                                             // NaN first
    tie[7 * n + 2999] = NaN;                                          // NaN last
    const t = native.fromBuffer(tie, [rows, n], 'f32') as T;
    const want = refArgmax(tie, n);
    for (const dt of FLOATS) {
      const x = native.cast(t, dt) as T;
      maxDim(x, 1, false, `ties/NaN/-inf ${dt}`);
      expect({ dt, i: Array.from(values((native.cuda_max_dim(cuda(x), 1, false) as T[])[1])) }).toEqual({ dt, i: want });
    }
  });

  test('sum_to_shape', () => {
    const g = randn([2, 3, 4, 5], 17, 'f32');
    for (const shape of [[4, 5], [1, 5], [3, 1, 1], [2, 3, 4, 5], [1, 1, 1, 1], []]) {
      close(native.cuda_sum_to_shape(cuda(g), shape) as T, native.sum_to_shape(g, shape) as T, `sum_to_shape ${JSON.stringify(shape)}`, { rtol: 1e-5, atol: 1e-5 });
    }
  });
});

gpuDescribe('CUDA matmul (cuBLASLt)', () => {
  const MMTOL: Record<string, { rtol: number; atol: number }> = {
    f32: { rtol: 1e-4, atol: 1e-4 }, f64: { rtol: 1e-10, atol: 1e-10 }, bf16: { rtol: 2e-2, atol: 2e-2 }, f16: { rtol: 4e-3, atol: 4e-3 },
  };
  test('all transpose combinations and odd shapes, every float dtype', () => {
    const SIZES = [1, 3, 17, 64, 255];
    let n = 0;
    for (const dt of FLOATS) for (const M of SIZES) for (const N of SIZES) for (const K of [1, 17, 255]) {
      if ((M * N * K) % 7 !== n++ % 7 && M * N * K > 64) continue;       // a deterministic sample of the grid
      for (const ta of [false, true]) for (const tb of [false, true]) {
        const a = randn(ta ? [K, M] : [M, K], 18 + M, dt), b = randn(tb ? [N, K] : [K, N], 19 + N, dt);
        const want = native.matmul(a, b, ta, tb) as T;
        close(native.cuda_matmul(cuda(a), cuda(b), ta, tb) as T, want, `matmul ${dt} ${M}x${N}x${K} ${ta}${tb}`, MMTOL[dt]);
      }
    }
  });

  test('batched, broadcast batches, strided operands, mixed dtypes, empty K', () => {
    const t = MMTOL.f32;
    const cases: [number[], number[], boolean, boolean][] = [
      [[2, 3, 17, 9], [9, 5], false, false], [[4, 33, 16], [4, 16, 8], false, false], [[2, 1, 7, 5], [3, 5, 6], false, false],
      [[3, 8, 4], [3, 8, 4], true, false], [[5, 6], [2, 3, 6, 7], false, false], [[2, 5, 6], [2, 9, 6], false, true],
    ];
    for (const [sa, sb, ta, tb] of cases) {
      const a = randn(sa, 20, 'f32'), b = randn(sb, 21, 'f32');
      close(native.cuda_matmul(cuda(a), cuda(b), ta, tb) as T, native.matmul(a, b, ta, tb) as T, `batched ${JSON.stringify([sa, sb, ta, tb])}`, t);
    }
    // non-unit strides in both matrix dims (needs a copy) and a permuted batch
    const a = randn([6, 10, 8], 22, 'bf16'), b = randn([8, 6, 12], 23, 'bf16');
    const sa = (x: T) => native.slice(x, 2, 0, 8, 2) as T, pb = (x: T) => native.permute(native.narrow(x, 0, 0, 4), [1, 0, 2]) as T;
    close(native.cuda_matmul(sa(cuda(a)), pb(cuda(b))) as T, native.matmul(sa(a), pb(b)) as T, 'strided bf16', MMTOL.bf16);
    const m1 = randn([9, 13], 24, 'bf16'), m2 = randn([13, 5], 25, 'f32');
    close(native.cuda_matmul(cuda(m1), cuda(m2)) as T, native.matmul(m1, m2) as T, 'bf16 x f32 -> f32', t);
    close(native.cuda_matmul(cuda(randn([3, 0], 1)), cuda(randn([0, 4], 2))) as T, native.matmul(randn([3, 0], 1), randn([0, 4], 2)) as T, 'K = 0');
    expect(() => native.cuda_matmul(cuda(randn([3, 4], 1)), cuda(randn([5, 2], 1)))).toThrow(/inner dimensions/);
  });

  test('LLM-sized bf16 GEMM', () => {
    const x = randn([512, 1024], 26, 'bf16', 0, 0.5), w = randn([2048, 1024], 27, 'bf16', 0, 0.02);
    close(native.cuda_matmul(cuda(x), cuda(w), false, true) as T, native.matmul(x, w, false, true) as T, 'x·Wᵀ 512x2048x1024', MMTOL.bf16);
  });

  test('linear (bias epilogue) and linear_weight_grad (beta = 1 accumulation)', () => {
    for (const dt of ['f32', 'bf16', 'f16']) {
      const x = randn([2, 7, 48], 28, dt), w = randn([40, 48], 29, dt, 0, 0.1), bias = randn([40], 30, dt);
      close(native.cuda_linear(cuda(x), cuda(w), cuda(bias)) as T, native.linear(x, w, bias) as T, `linear+bias ${dt}`, MMTOL[dt]);
      close(native.cuda_linear(cuda(x), cuda(w), null) as T, native.linear(x, w, null) as T, `linear ${dt}`, MMTOL[dt]);
      const dy = randn([2, 7, 40], 31, dt), acc = randn([40, 48], 32, 'f32');
      close(native.cuda_linear_weight_grad(cuda(dy), cuda(x), null) as T, native.linear_weight_grad(dy, x, null) as T, `dW ${dt}`, MMTOL[dt]);
      close(native.cuda_linear_weight_grad(cuda(dy), cuda(x), cuda(acc)) as T, native.linear_weight_grad(dy, x, acc) as T, `acc + dW ${dt}`, MMTOL[dt]);
    }
  });
});

gpuDescribe('CUDA caching allocator', () => {
  test('a steady-state loop never reaches cudaMalloc', () => {
    const x = cuda(randn([64, 256], 33, 'bf16')), w = cuda(randn([512, 256], 34, 'bf16'));
    const step = () => {
      const y = native.cuda_matmul(x, w, false, true) as T;
      const z = native.cuda_unary('silu', y) as T;
      const s = native.cuda_sum(z, [0], false) as T;
      native.cudaSynchronize();
      for (const t of [y, z, s]) t.dispose();
    };
    step(); step();
    const before = native.cudaMemoryStats() as { deviceAllocs: number; cacheHits: number; allocatedBytes: number };
    for (let i = 0; i < 20; i++) step();
    const after = native.cudaMemoryStats() as { deviceAllocs: number; cacheHits: number; allocatedBytes: number };
    expect(after.deviceAllocs).toBe(before.deviceAllocs);
    expect(after.cacheHits).toBeGreaterThan(before.cacheHits);
    expect(after.allocatedBytes).toBe(before.allocatedBytes);
    pk.cudaEmptyCache();
    expect(pk.cudaMemoryStats().reservedBytes).toBe(pk.cudaMemoryStats().allocatedBytes);
  });

  test('memoryStats counts live cuda bytes', () => {
    const before = (native.memoryStats() as { cuda: { liveBytes: number } }).cuda.liveBytes;
    const t = native.cuda_zeros([1024, 1024], 'f32') as T;
    expect((native.memoryStats() as { cuda: { liveBytes: number } }).cuda.liveBytes).toBe(before + 4 * 1024 * 1024);
    t.dispose();
    expect((native.memoryStats() as { cuda: { liveBytes: number } }).cuda.liveBytes).toBe(before);
  });
});
