/**
 * Views (no copies), cat/split/stack, reductions, gather/indexSelect, dropout, casts, tidy and
 * memory accounting — forward against hand-computed or naive references, backward by finite
 * differences in f64, bad input -> errors.
 */
import { Tensor, ops, tidy, memoryStats } from '../lib';
import { gradcheck, randomF64 } from './helpers/gradcheck';

describe('views share storage', () => {
  test('reshape/transpose/permute/narrow/slice/expand/squeeze are views with the right strides', () => {
    const x = Tensor.arange(0, 24, 1, { dtype: 'f32' }).reshape([2, 3, 4]);
    const id = x.native.storageId;
    const t = ops.transpose(x, 0, 2);
    expect(t.shape).toEqual([4, 3, 2]);
    expect(t.native.strides).toEqual([1, 4, 12]);
    expect(t.native.storageId).toBe(id);
    expect(ops.permute(x, [1, 2, 0]).native.strides).toEqual([4, 1, 12]);
    const n = ops.narrow(x, 2, 1, 2);
    expect(n.toArray()).toEqual([[[1, 2], [5, 6], [9, 10]], [[13, 14], [17, 18], [21, 22]]]);
    expect(n.native.storageId).toBe(id);
    expect(ops.slice(x, 1, 0, 3, 2).toArray()).toEqual([[[0, 1, 2, 3], [8, 9, 10, 11]], [[12, 13, 14, 15], [20, 21, 22, 23]]]);
    expect(ops.slice(x, -1, -2, 4).shape).toEqual([2, 3, 2]);
    const e = ops.expand(Tensor.fromArray([[1], [2]]), [3, 2, 4]);
    expect(e.native.strides).toEqual([0, 1, 0]);
    expect(ops.sum(e).item()).toBe(36);
    expect(ops.unsqueeze(x, 1).shape).toEqual([2, 1, 3, 4]);
    expect(ops.squeeze(ops.unsqueeze(x, -1), -1).shape).toEqual([2, 3, 4]);
    expect(ops.flatten(x, 1).shape).toEqual([2, 12]);
    // contiguous copies only when needed
    expect(ops.contiguous(x).native.storageId).toBe(id);
    const c = ops.contiguous(t);
    expect(c.native.storageId).not.toBe(id);
    expect(c.toArray()).toEqual(t.toArray());
    expect(() => ops.view(t, [24])).toThrow(/cannot be viewed/);
    expect(ops.reshape(t, [24]).shape).toEqual([24]);
  });

  test('view gradients by finite differences', () => {
    const x = randomF64([2, 3, 4], 1).requiresGrad_();
    gradcheck(([t]) => ops.transpose(ops.reshape(t, [6, 4]), 0, 1), [x]);
    gradcheck(([t]) => ops.permute(t, [2, 0, 1]), [x]);
    gradcheck(([t]) => ops.narrow(t, 1, 1, 2), [x]);
    gradcheck(([t]) => ops.slice(t, 2, 0, 4, 3), [x]);
    gradcheck(([t]) => ops.expand(ops.narrow(t, 0, 0, 1), [5, 3, 4]), [x]);
    gradcheck(([t]) => ops.contiguous(ops.transpose(t, 0, 1)), [x]);
  });

  test('cat, split, stack', () => {
    const a = Tensor.fromArray([[1, 2], [3, 4]]), b = Tensor.fromArray([[5, 6]]);
    expect(ops.cat([a, b], 0).toArray()).toEqual([[1, 2], [3, 4], [5, 6]]);
    expect(ops.cat([a, ops.transpose(a, 0, 1)], 1).toArray()).toEqual([[1, 2, 1, 3], [3, 4, 2, 4]]);
    expect(ops.stack([a, a], 1).shape).toEqual([2, 2, 2]);
    const parts = ops.split(Tensor.arange(0, 7, 1, { dtype: 'f32' }), 3);
    expect(parts.map((p) => p.toArray())).toEqual([[0, 1, 2], [3, 4, 5], [6]]);
    expect(ops.split(Tensor.zeros([5, 2]), [2, 3]).map((p) => p.shape)).toEqual([[2, 2], [3, 2]]);
    expect(() => ops.split(Tensor.zeros([5]), [2, 2])).toThrow(/do not add up/);
    expect(() => ops.cat([a, Tensor.zeros([1, 3])], 0)).toThrow(/shape mismatch on dim 1/);
    expect(() => ops.cat([a, Tensor.zeros([1, 2], { dtype: 'f64' })], 0)).toThrow(/dtype mismatch/);
    const x = randomF64([2, 3], 2).requiresGrad_(), y = randomF64([2, 2], 3).requiresGrad_();
    gradcheck(([p, q]) => ops.cat([p, q, p], 1), [x, y]);
    gradcheck(([p]) => ops.stack(ops.split(p, 1, 1), 0), [x]);
  });
});

describe('reductions', () => {
  test('sum/mean over dims against naive loops, keepdim, all dims', () => {
    const x = randomF64([3, 4, 5], 4);
    const X = x.toFloat64Array();
    const s1 = ops.sum(x, 1).toFloat64Array();
    for (let i = 0; i < 3; i++) for (let k = 0; k < 5; k++) {
      let r = 0; for (let j = 0; j < 4; j++) r += X[(i * 4 + j) * 5 + k];
      expect(s1[i * 5 + k]).toBeCloseTo(r, 12);
    }
    expect(ops.sum(x, [0, 2], true).shape).toEqual([1, 4, 1]);
    expect(ops.mean(x).item()).toBeCloseTo(X.reduce((a, b) => a + b, 0) / 60, 12);
    expect(ops.mean(x, -1).shape).toEqual([3, 4]);
    const leaf = x.detach().requiresGrad_();
    gradcheck(([t]) => ops.sum(t, [0, 2]), [leaf]);
    gradcheck(([t]) => ops.mean(t, 1, true), [leaf]);
    gradcheck(([t]) => ops.mean(t), [leaf]);
  });

  test('f32 sums accumulate in f64 (1e6 ones + small values stay exact)', () => {
    const big = Tensor.ones([1 << 20]);
    expect(ops.sum(big).item()).toBe(1 << 20);
  });

  test('max returns values and first-index argmax; gradient goes to the argmax', () => {
    const x = Tensor.fromArray([[1, 5, 5, 2], [7, -1, 0, 7]], { dtype: 'f64' });
    const { values, indices } = ops.max(x, 1);
    expect(values.toArray()).toEqual([5, 7]);
    expect(indices.toArray()).toEqual([1, 0]);
    expect(indices.dtype).toBe('i64');
    expect(ops.argmax(x, 0).toArray()).toEqual([1, 0, 0, 1]);
    const leaf = randomF64([3, 5], 5).requiresGrad_();
    gradcheck(([t]) => ops.max(t, 1).values, [leaf]);
    expect(() => ops.max(Tensor.zeros([2, 0]), 1)).toThrow(/empty/);
  });
});

describe('indexing', () => {
  test('gather / indexSelect forward, backward, and out-of-range indices', () => {
    const x = Tensor.fromArray([[1, 2, 3], [4, 5, 6]], { dtype: 'f64' });
    const idx = Tensor.fromArray([[2, 0], [1, 1]], { dtype: 'i64' });
    expect(ops.gather(x, 1, idx).toArray()).toEqual([[3, 1], [5, 5]]);
    expect(ops.indexSelect(x, 1, Tensor.fromArray([2, 2, 0], { dtype: 'i32' })).toArray()).toEqual([[3, 3, 1], [6, 6, 4]]);
    const leaf = randomF64([2, 3], 6).requiresGrad_();
    gradcheck(([t]) => ops.gather(t, 1, idx), [leaf]);
    gradcheck(([t]) => ops.indexSelect(t, 0, Tensor.fromArray([1, 0, 1], { dtype: 'i64' })), [leaf]);
    expect(() => ops.gather(x, 1, Tensor.fromArray([[3, 0], [0, 0]], { dtype: 'i64' }))).toThrow(/index 3 .* out of range \[0, 3\)/);
    expect(() => ops.indexSelect(x, 0, Tensor.fromArray([-1], { dtype: 'i64' }))).toThrow(/out of range/);
    expect(() => ops.gather(x, 1, Tensor.fromArray([[0]], { dtype: 'f32' }))).toThrow(/must be an i64 or i32/);
  });
});

describe('dropout, casts, scopes and memory', () => {
  test('dropout is seeded, scales by 1/(1-p), and its gradient uses the same mask', () => {
    const x = Tensor.ones([10000]);
    const y1 = ops.dropout(x, 0.25, 7).toFloat32Array(), y2 = ops.dropout(x, 0.25, 7).toFloat32Array();
    expect(Array.from(y1)).toEqual(Array.from(y2));
    const kept = y1.filter((v) => v !== 0);
    expect(kept.every((v) => Math.abs(v - 1 / 0.75) < 1e-6)).toBe(true);
    expect(Math.abs(kept.length / 10000 - 0.75)).toBeLessThan(0.02);
    const leaf = randomF64([50], 8).requiresGrad_();
    gradcheck(([t]) => ops.dropout(t, 0.5, 3), [leaf]);
    expect(ops.dropout(x, 0.5, 1, false)).toBe(x);
    expect(() => ops.dropout(x, 1, 1)).toThrow(/p must be in \[0, 1\)/);
  });

  test('casts round-trip and carry gradients back to the source dtype', () => {
    const x = Tensor.fromArray([1.5, -2.25, 1e-3], { dtype: 'f64' });
    expect(ops.cast(ops.cast(x, 'f32'), 'f64').toArray()).toEqual([1.5, -2.25, Math.fround(1e-3)]);
    expect(ops.cast(x, 'i64').toArray()).toEqual([1, -2, 0]);
    const leaf = x.detach().requiresGrad_();
    ops.sum(ops.mul(ops.cast(leaf, 'f32'), 2)).backward();
    expect(leaf.grad!.dtype).toBe('f64');
    expect(leaf.grad!.toArray()).toEqual([2, 2, 2]);
    expect(Tensor.fromArray([70000, 1e-8, 0.1], { dtype: 'f16' }).toArray()).toEqual([Infinity, 0, 0.0999755859375]);
  });

  test('tidy disposes everything created inside except the result', () => {
    const before = memoryStats().cpu.liveBytes;
    const keepMe = tidy(() => {
      const a = Tensor.randn([100, 100], { seed: 1 });
      const b = ops.mul(a, 2);
      ops.exp(b);
      return ops.add(b, 1);
    });
    expect(memoryStats().cpu.liveBytes - before).toBe(100 * 100 * 4);
    keepMe.dispose();
    expect(memoryStats().cpu.liveBytes).toBe(before);
  });

  test('Tensor basics: fromArray validation, toArray, item, Symbol.dispose', () => {
    expect(() => Tensor.fromArray([[1, 2], [3]])).toThrow(/ragged/);
    expect(() => Tensor.fromArray([1, 2, 3], { shape: [2, 2] })).toThrow(/do not fill shape/);
    expect(() => Tensor.zeros([2, -1])).toThrow(/non-negative integers/);
    expect(() => Tensor.fromArray([1], { dtype: 'f8' as never })).toThrow(/expected one of/);
    expect(() => Tensor.fromArray([1.5], { dtype: 'i64' })).toThrow(/not an integer/);
    expect(Tensor.fromArray([[1, 2], [3, 4]], { dtype: 'i32' }).toArray()).toEqual([[1, 2], [3, 4]]);
    expect(Tensor.scalar(3.5).item()).toBe(3.5);
    expect(() => Tensor.zeros([2]).item()).toThrow(/expected 1/);
    const t = Tensor.zeros([4]);
    t[Symbol.dispose]();
    expect(t.disposed).toBe(true);
    expect(() => t.toArray()).toThrow(/disposed/);
  });
});
