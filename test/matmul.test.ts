/**
 * matmul / linear: the packed GEMM against a naive f64 GEMM written here, for awkward sizes
 * (1, 3, 17, 255, 1023), every transpose combination (as stride views), batch broadcasting,
 * bf16 operands, thread counts; gradients by finite differences in f64.
 */
import { Tensor, ops, setNumThreads, numThreads } from '../lib';
import { gradcheck, lcg, randomF64 } from './helpers/gradcheck';

function naive(A: Float64Array, B: Float64Array, M: number, N: number, K: number, ta: boolean, tb: boolean): Float64Array {
  const C = new Float64Array(M * N);
  for (let i = 0; i < M; i++) for (let j = 0; j < N; j++) {
    let s = 0;
    for (let k = 0; k < K; k++) s += (ta ? A[k * M + i] : A[i * K + k]) * (tb ? B[j * K + k] : B[k * N + j]);
    C[i * N + j] = s;
  }
  return C;
}

function rand32(shape: number[], seed: number): Tensor {
  const r = lcg(seed);
  const n = shape.reduce((a, b) => a * b, 1);
  return Tensor.fromArray(Float32Array.from({ length: n }, () => r()), { shape });
}

// |C - ref| <= tol * K * max|a|max|b| style bound for f32 accumulation
function expectClose(got: Float32Array | Float64Array, ref: Float64Array, K: number, rel = 2e-6): void {
  expect(got.length).toBe(ref.length);
  let worst = 0;
  for (let i = 0; i < ref.length; i++) worst = Math.max(worst, Math.abs(got[i] - ref[i]));
  expect(worst).toBeLessThanOrEqual(rel * Math.sqrt(K) * 4 + 1e-6);
}

describe('GEMM via matmul', () => {
  const sizes: [number, number, number][] = [
    [1, 1, 1], [3, 17, 255], [17, 3, 1], [255, 17, 3], [1, 1023, 17], [1023, 1, 3], [17, 255, 1023], [64, 96, 128], [255, 255, 255],
  ];
  for (const [M, N, K] of sizes) {
    for (const ta of [false, true]) for (const tb of [false, true]) {
      test(`M=${M} N=${N} K=${K} transA=${ta} transB=${tb}`, () => {
        const a = rand32(ta ? [K, M] : [M, K], M * 7 + K), b = rand32(tb ? [N, K] : [K, N], N * 13 + K);
        const c = ops.matmul(a, b, { transA: ta, transB: tb });
        expect(c.shape).toEqual([M, N]);
        expectClose(c.toFloat32Array(), naive(a.toFloat64Array(), b.toFloat64Array(), M, N, K, ta, tb), K);
      });
    }
  }

  test('one large case: 1023 x 1023 x 255 with transposed views (not copies)', () => {
    const M = 1023, N = 1023, K = 255;
    const a = rand32([K, M], 1), b = rand32([N, K], 2);
    const at = ops.transpose(a, 0, 1), bt = ops.transpose(b, 0, 1);   // strided views
    expect(at.native.isContiguous).toBe(false);
    const c = ops.matmul(at, bt);
    expectClose(c.toFloat32Array(), naive(a.toFloat64Array(), b.toFloat64Array(), M, N, K, true, true), K);
  });

  test('bf16 operands (B only, and both) match the f64 GEMM of the rounded values', () => {
    const M = 37, N = 70, K = 300;
    const a = rand32([M, K], 3), b = rand32([K, N], 4);
    const b16 = ops.cast(b, 'bf16'), a16 = ops.cast(a, 'bf16');
    const ref1 = naive(a.toFloat64Array(), b16.toFloat64Array(), M, N, K, false, false);
    const c1 = ops.matmul(a, b16);
    expect(c1.dtype).toBe('f32');
    expectClose(c1.toFloat32Array(), ref1, K);
    const c2 = ops.matmul(a16, b16);
    expect(c2.dtype).toBe('bf16');
    const ref2 = naive(a16.toFloat64Array(), b16.toFloat64Array(), M, N, K, false, false);
    const got = c2.toFloat64Array();
    for (let i = 0; i < ref2.length; i++) expect(Math.abs(got[i] - ref2[i])).toBeLessThanOrEqual(Math.abs(ref2[i]) * 2 ** -8 + 1e-4);
  });

  test('batched with broadcasting: (2,1,M,K) x (3,K,N) -> (2,3,M,N)', () => {
    const a = rand32([2, 1, 5, 7], 5), b = rand32([3, 7, 4], 6);
    const c = ops.matmul(a, b);
    expect(c.shape).toEqual([2, 3, 5, 4]);
    const A = a.toFloat64Array(), B = b.toFloat64Array(), C = c.toFloat32Array();
    for (let i = 0; i < 2; i++) for (let j = 0; j < 3; j++) {
      const ref = naive(A.subarray(i * 35, i * 35 + 35), B.subarray(j * 28, j * 28 + 28), 5, 4, 7, false, false);
      expectClose(C.subarray((i * 3 + j) * 20, (i * 3 + j) * 20 + 20), ref, 7);
    }
  });

  test('1 thread and all threads give the same result', () => {
    const a = rand32([300, 200], 8), b = rand32([200, 500], 9);
    const n = numThreads();
    setNumThreads(1);
    const c1 = ops.matmul(a, b).toFloat32Array();
    setNumThreads(Math.max(2, n));
    const c2 = ops.matmul(a, b).toFloat32Array();
    setNumThreads(n);
    let worst = 0;
    for (let i = 0; i < c1.length; i++) worst = Math.max(worst, Math.abs(c1[i] - c2[i]));
    expect(worst).toBeLessThan(1e-4);
  });

  test('f64 matmul and linear: gradients by finite differences', () => {
    const a = randomF64([2, 3, 4], 1).requiresGrad_(), b = randomF64([4, 5], 2).requiresGrad_();
    gradcheck(([x, y]) => ops.matmul(x, y), [a, b]);
    gradcheck(([x, y]) => ops.matmul(x, y, { transA: true }), [randomF64([4, 3], 3).requiresGrad_(), randomF64([4, 2], 4).requiresGrad_()]);
    gradcheck(([x, y]) => ops.matmul(x, y, { transB: true }), [randomF64([3, 4], 5).requiresGrad_(), randomF64([2, 4], 6).requiresGrad_()]);
    gradcheck(([x, y]) => ops.matmul(x, y, { transA: true, transB: true }), [randomF64([2, 4, 3], 7).requiresGrad_(), randomF64([5, 4], 8).requiresGrad_()]);
    const x = randomF64([2, 3, 4], 9).requiresGrad_(), w = randomF64([6, 4], 10).requiresGrad_(), bias = randomF64([6], 11).requiresGrad_();
    gradcheck(([p, q, r]) => ops.linear(p, q, r), [x, w, bias]);
  });

  test('a frozen weight gets no gradient and linear still gives dX', () => {
    const x = randomF64([4, 3], 12).requiresGrad_(), w = randomF64([2, 3], 13);
    ops.sum(ops.linear(x, w)).backward();
    expect(w.grad).toBeNull();
    // dX = ones(4,2)·W
    const W = w.toFloat64Array(), G = x.grad!.toFloat64Array();
    for (let i = 0; i < 4; i++) for (let k = 0; k < 3; k++) expect(G[i * 3 + k]).toBeCloseTo(W[k] + W[3 + k], 12);
  });

  test('bad shapes and dtypes throw', () => {
    expect(() => ops.matmul(Tensor.zeros([2, 3]), Tensor.zeros([4, 5]))).toThrow(/inner dimensions differ/);
    expect(() => ops.matmul(Tensor.zeros([3]), Tensor.zeros([3, 2]))).toThrow(/at least 2-d/);
    expect(() => ops.matmul(Tensor.zeros([2, 2], { dtype: 'i32' }), Tensor.zeros([2, 2]))).toThrow(/floating/);
    expect(() => ops.matmul(Tensor.zeros([2, 2], { dtype: 'f64' }), Tensor.zeros([2, 2]))).toThrow(/f64 operands must both be f64/);
    expect(() => ops.linear(Tensor.zeros([2, 3]), Tensor.zeros([4, 5]))).toThrow(/does not match weight/);
  });
});
