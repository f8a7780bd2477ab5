/**
 * The addon is context-aware: it loads in worker_threads (its own instance per thread) and runs
 * ops there concurrently with the main thread; native errors stay JS errors in the worker.
 * Uses the compiled package (dist/, built by `npm install`).
 */
import * as path from 'path';
import { Worker } from 'worker_threads';
import { Tensor, ops } from '../lib';

const dist = path.resolve(__dirname, '..', 'dist', 'index.js');

function runWorker(code: string): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const w = new Worker(code, { eval: true, workerData: { dist } });
    w.once('message', resolve);
    w.once('error', reject);
    w.once('exit', (c) => { if (c !== 0) reject(new Error(`worker exited with ${c}`)); });
  });
}

test('ops run in two worker threads at once and agree with the main thread', async () => {
  const code = `
    const { parentPort, workerData } = require('worker_threads');
    const { Tensor, ops } = require(workerData.dist);
    const a = Tensor.randn([64, 32], { seed: 5 }), b = Tensor.randn([32, 16], { seed: 6 });
    const c = ops.matmul(a, b);
    let err = '';
    try { ops.add(Tensor.zeros([2]), Tensor.zeros([3])); } catch (e) { err = e.message; }
    parentPort.postMessage({ sum: ops.sum(c).item(), err });`;
  const [r1, r2] = await Promise.all([runWorker(code), runWorker(code)]) as { sum: number; err: string }[];
  const main = ops.sum(ops.matmul(Tensor.randn([64, 32], { seed: 5 }), Tensor.randn([32, 16], { seed: 6 }))).item();
  expect(r1.sum).toBeCloseTo(main, 3);
  expect(r2.sum).toBeCloseTo(main, 3);
  expect(r1.err).toMatch(/cannot be broadcast/);
});
