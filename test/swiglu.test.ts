/**
 * Fused gated activations (lib/ops/swiglu.ts, csrc/cpu/swiglu.cpp): swiglu / geglu (erf, tanh)
 * forward against the unfused composition act(gate)·up and naive f64 JS, backward against the
 * composition's gradients and finite differences (f64), bf16/f16/f32 against the composition
 * (same rounding points), strided halves of a fused gate_up projection, grad flags, errors,
 * and the Llama MLP using it.
 */
import { Tensor, ops, noGrad, tidy } from '../lib';
import { geglu, gatedActivation, swiglu } from '../lib/ops/swiglu';
import { gradcheck, randomF64, lcg } from './helpers/gradcheck';

type Act = 'silu' | 'gelu' | 'gelu_tanh';
const ACTS: Act[] = ['silu', 'gelu', 'gelu_tanh'];

function unfused(gate: Tensor, up: Tensor, act: Act): Tensor {
  const a = act === 'silu' ? ops.silu(gate) : ops.gelu(gate, act === 'gelu_tanh' ? 'tanh' : 'none');
  return ops.mul(a, up);
}
function fused(gate: Tensor, up: Tensor, act: Act): Tensor {
  if (act === 'silu') return swiglu(gate, up);
  return geglu(gate, up, act === 'gelu_tanh' ? 'tanh' : 'none');
}
function randn(shape: number[], seed: number, dtype: 'f32' | 'bf16' | 'f16' | 'f64' = 'f32', scale = 3): Tensor {
  const r = lcg(seed);
  const n = shape.reduce((a, b) => a * b, 1);
  return Tensor.fromArray(Array.from({ length: n }, () => r() * scale), { shape, dtype });
}
function maxRelDiff(a: ArrayLike<number>, b: ArrayLike<number>, floor = 1e-3): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]) / Math.max(Math.abs(b[i]), floor));
  return m;
}

describe('swiglu / geglu', () => {
  test('forward matches naive f64 values', () => {
    const g = randn([3, 37], 1, 'f64'), u = randn([3, 37], 2, 'f64');
    const gv = g.toFloat64Array(), uv = u.toFloat64Array();
    const h = swiglu(g, u).toFloat64Array();
    for (let i = 0; i < gv.length; i++) expect(h[i]).toBeCloseTo(gv[i] / (1 + Math.exp(-gv[i])) * uv[i], 12);
    const ht = geglu(g, u, 'tanh').toFloat64Array();
    for (let i = 0; i < gv.length; i++) {
      const x = gv[i];
      expect(ht[i]).toBeCloseTo(0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3))) * uv[i], 12);
    }
  });

  test.each(ACTS)('%s: f32 forward and backward match the composition (several sizes, vector tails)', (act) => {
    for (const shape of [[1], [7], [2, 33], [4, 64, 97], [4, 256, 96]]) {
      tidy(() => {
        const g1 = randn(shape, 3).requiresGrad_(), u1 = randn(shape, 4).requiresGrad_();
        const g2 = randn(shape, 3).requiresGrad_(), u2 = randn(shape, 4).requiresGrad_();
        const w = randn(shape, 5);
        const h1 = fused(g1, u1, act), h2 = unfused(g2, u2, act);
        expect(h1.dtype).toBe('f32');
        expect(maxRelDiff(h1.toFloat32Array(), h2.toFloat32Array())).toBeLessThan(1e-5);
        ops.sum(ops.mul(h1, w)).backward();
        ops.sum(ops.mul(h2, w)).backward();
        expect(maxRelDiff(g1.grad!.toFloat32Array(), g2.grad!.toFloat32Array())).toBeLessThan(1e-4);
        expect(maxRelDiff(u1.grad!.toFloat32Array(), u2.grad!.toFloat32Array())).toBeLessThan(1e-5);
      });
    }
  });

  test.each(ACTS)('%s: f64 gradients agree with finite differences', (act) => {
    const g = randomF64([3, 5], 11, 3).requiresGrad_(), u = randomF64([3, 5], 12, 2).requiresGrad_();
    gradcheck((xs) => fused(xs[0], xs[1], act), [g, u]);
  });

  test.each(['bf16', 'f16'] as const)('%s: same values as the composition (intermediates rounded alike), dtypes kept', (dt) => {
    for (const act of ACTS) {
      tidy(() => {
        const g1 = randn([4, 300], 7, dt).requiresGrad_(), u1 = randn([4, 300], 8, dt).requiresGrad_();
        const g2 = randn([4, 300], 7, dt).requiresGrad_(), u2 = randn([4, 300], 8, dt).requiresGrad_();
        const h1 = fused(g1, u1, act), h2 = unfused(g2, u2, act);
        expect(h1.dtype).toBe(dt);
        const ulp = dt === 'bf16' ? 2 ** -7 : 2 ** -10;  // one unit in the last place, relative (upper bound)
        expect(maxRelDiff(h1.toFloat32Array(), h2.toFloat32Array(), 1e-2)).toBeLessThanOrEqual(ulp);
        const w = randn([4, 300], 9, dt);
        ops.sum(ops.mul(h1, w)).backward();
        ops.sum(ops.mul(h2, w)).backward();
        expect(g1.grad!.dtype).toBe(dt);
        expect(u1.grad!.dtype).toBe(dt);
        expect(maxRelDiff(g1.grad!.toFloat32Array(), g2.grad!.toFloat32Array(), 1e-1)).toBeLessThanOrEqual(2 * ulp);
        expect(maxRelDiff(u1.grad!.toFloat32Array(), u2.grad!.toFloat32Array(), 1e-1)).toBeLessThanOrEqual(2 * ulp);
      });
    }
  });

  test('strided halves of a fused gate_up projection are read in place', () => {
    tidy(() => {
      const gu = randn([2, 5, 2 * 40], 21).requiresGrad_();
      const [g, u] = ops.split(gu, [40, 40], -1);
      const h = swiglu(g, u);
      const ref = noGrad(() => unfused(ops.contiguous(g), ops.contiguous(u), 'silu'));
      expect(maxRelDiff(h.toFloat32Array(), ref.toFloat32Array())).toBeLessThan(1e-5);
      ops.sum(h).backward();
      const gu2 = randn([2, 5, 2 * 40], 21).requiresGrad_();
      const [g2, u2] = ops.split(gu2, [40, 40], -1);
      ops.sum(unfused(g2, u2, 'silu')).backward();
      expect(maxRelDiff(gu.grad!.toFloat32Array(), gu2.grad!.toFloat32Array())).toBeLessThan(1e-4);
    });
  });

  test('only the inputs that require grad get one; no graph without grad', () => {
    tidy(() => {
      const g = randn([3, 8], 31).requiresGrad_(), u = randn([3, 8], 32);
      ops.sum(swiglu(g, u)).backward();
      expect(g.grad).toBeDefined();
      expect(u.grad ?? null).toBeNull();
      const h = noGrad(() => swiglu(g, u));
      expect(h.requiresGrad).toBe(false);
    });
  });

  test('bad inputs throw', () => {
    const a = Tensor.zeros([2, 3]), b = Tensor.zeros([3, 2]);
    expect(() => swiglu(a, b)).toThrow(/same shape/);
    expect(() => gatedActivation(a, a, 'relu' as never)).toThrow(/unknown activation/);
    expect(() => swiglu(a, Tensor.zeros([2, 3], { dtype: 'i64' }))).toThrow();
    expect(() => swiglu(a, null as never)).toThrow(/Tensor/);
  });
});
