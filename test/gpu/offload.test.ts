/**
 * GPU suite: activation offload for gradient checkpointing (csrc/cuda/offload.cu, lib/train/recompute.ts).
 *
 *  - the copy primitives: offloadToHost / prefetchToDevice (immediate and deferred + waitCopy) give
 *    back the same bytes for every dtype and strided sources; the counters, and that every pending
 *    copy retires and every pinned byte is returned;
 *  - a checkpointed model with offload gives bit-identical losses and LoRA gradients to the same
 *    model checkpointed without it (same kernels, same order: only where the inputs wait changes),
 *    for Llama and for GPT-2 with every dropout on (the recompute must redraw the same masks), with
 *    one host copy and one copy back per layer and step;
 *  - the Trainer's offloadActivations, `peftkit train --device cuda --offload-activations`, and
 *    `peftkit generate --device cuda` (the same greedy completion as on the CPU).
 * On the CUDA emulator a deferred prefetch stays NaN until waitCopy, so using an input before
 * waiting for it fails these tests there too. The argument errors need no GPU and always run.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { main } from '../../lib/cli';
import { loadModel } from '../../lib/models';
import { native, NativeTensor } from '../../lib/native';
import { wrapWithLora } from '../../lib/peft';
import { Trainer, enableGradientCheckpointing } from '../../lib/train';
import { setDropoutSeed } from '../../lib/ops/random';
import { cudaEmptyCache } from '../../lib/runtime';
import { Module } from '../../lib/nn/module';
import { Tensor } from '../../lib/tensor/tensor';

interface CudaInfo { built: boolean; available: boolean; reason: string }
const info: CudaInfo = typeof native.cudaInfo === 'function' ? native.cudaInfo() as CudaInfo
  : { built: false, available: false, reason: 'this addon predates cudaInfo' };
const GPU = info.available === true;
if (!GPU) console.warn(`\n*** test/gpu/offload: CUDA tests SKIPPED — ${info.reason} ***\n`);
const gpuDescribe = GPU ? describe : describe.skip;

const MODELS = path.join(__dirname, '..', 'fixtures', 'hf', 'models');
const IDS = [[1, 5, 9, 200, 33, 7, 400, 12], [3, 3, 80, 64, 511, 2, 0, 17]];
interface Stats { pinnedBytes: number; pinnedReservedBytes: number; pendingCopies: number; d2hCopies: number; h2dCopies: number; d2hBytes: number; h2dBytes: number }
const stats = (): Stats => native.offloadStats() as Stats;

describe('offload: argument errors', () => {
  test('offloadActivations needs gradientCheckpointing; offload needs a cuda model', async () => {
    const model = await loadModel(path.join(MODELS, 'llama'));
    const peft = wrapWithLora(model, { r: 2, alpha: 4, targetModules: ['q_proj'] });
    expect(() => new Trainer({ model: peft, trainDataset: [{ inputIds: IDS[0] }],
      args: { outputDir: os.tmpdir(), maxSteps: 1, offloadActivations: true } })).toThrow(/offloadActivations.*gradientCheckpointing: true/);
    expect(() => enableGradientCheckpointing(peft as unknown as Module, { offload: true })).toThrow(/on the CPU/);
    peft.dispose();
  });
  test('without a GPU the copy primitives throw a clear error', () => {
    if (GPU) return;
    const t = Tensor.randn([4, 4], { seed: 1 });
    expect(() => native.prefetchToDevice(t.native)).toThrow(/cuda|CUDA/);
    t.dispose();
  });
});

gpuDescribe('offload copy primitives', () => {
  const bytes = (t: NativeTensor): Uint8Array => {
    const h = t.device === 'cuda' ? native.toDevice(t, 'cpu') as NativeTensor : t;
    return new Uint8Array(native.toBuffer(native.contiguous(h)) as ArrayBuffer);
  };
  test('round trips are exact for every dtype, strided sources and empty tensors; counters and retirement', () => {
    const s0 = stats();
    let copies = 0;
    for (const dt of ['bf16', 'f32', 'f16', 'f64', 'i64', 'u8']) for (const defer of [false, true]) {
      const src = native.toDevice(native.cast(native.randn([3, 70, 33], 5, 'f32', 0, 10), dt), 'cuda') as NativeTensor;
      const strided = native.transpose(src, 0, 2) as NativeTensor;
      const host = native.offloadToHost(strided) as NativeTensor;
      expect({ device: host.device, dtype: host.dtype, shape: host.shape }).toEqual({ device: 'cpu', dtype: dt, shape: [33, 70, 3] });
      const back = native.prefetchToDevice(host, defer) as NativeTensor;
      if (defer) native.waitCopy(back);
      expect(back.device).toBe('cuda');
      expect(Buffer.from(bytes(back)).equals(Buffer.from(bytes(strided)))).toBe(true);
      copies++;
      for (const t of [src, strided, host, back]) t.dispose();
    }
    const empty = native.offloadToHost(native.toDevice(native.randn([0, 5], 1, 'f32', 0, 1), 'cuda')) as NativeTensor;
    const emptyBack = native.prefetchToDevice(empty) as NativeTensor;
    expect(emptyBack.shape).toEqual([0, 5]);
    native.cudaSynchronize();
    empty.dispose(); emptyBack.dispose();
    const s1 = stats();
    // the empty tensor's round trip issues no copy (offload.cu returns before the copy stream)
    expect(s1.d2hCopies - s0.d2hCopies).toBe(copies);
    expect(s1.h2dCopies - s0.h2dCopies).toBe(copies);
    expect(s1.pendingCopies).toBe(0);
    expect(s1.pinnedBytes).toBe(s0.pinnedBytes);
    // cudaEmptyCache also returns the pinned pool's unused blocks (nothing pinned is live now)
    expect(s1.pinnedReservedBytes).toBeGreaterThanOrEqual(s1.pinnedBytes);
    cudaEmptyCache();
    expect({ live: stats().pinnedBytes, reserved: stats().pinnedReservedBytes }).toEqual({ live: 0, reserved: 0 });
  });
  test('a pageable host source is staged; a cuda source to prefetch or a host source to offload is refused', () => {
    const h = Tensor.randn([8, 9], { seed: 3 });
    const d = native.prefetchToDevice(h.native) as NativeTensor;
    expect(Buffer.from(bytes(d)).equals(Buffer.from(bytes(h.native)))).toBe(true);
    expect(() => native.prefetchToDevice(d)).toThrow(/prefetchToDevice.*expected a host tensor/);
    expect(() => native.offloadToHost(h.native)).toThrow(/offloadToHost.*cuda/);
    d.dispose(); h.dispose();
  });
});

gpuDescribe('gradient checkpointing with offload', () => {
  /** Loss and every LoRA gradient of one forward/backward with checkpointing (offloaded or not). */
  async function grads(arch: string, offload: boolean): Promise<{ loss: number; grads: Map<string, Float32Array>; d2h: number; h2d: number }> {
    const model = await loadModel(path.join(MODELS, arch), { device: 'cuda' });
    const peft = wrapWithLora(model, { r: 4, alpha: 8, dropout: 0.1, targetModules: 'all-linear', seed: 3 });
    peft.train(true);   // GPT-2: resid/attn/embd dropout on, LoRA dropout everywhere
    const off = enableGradientCheckpointing(peft as unknown as Module, { offload });
    const s0 = stats();
    const ids = Tensor.fromArray(IDS, { dtype: 'i64' });
    setDropoutSeed(11);
    const out = peft.forward({ inputIds: ids, labels: ids });
    out.loss!.backward();
    native.cudaSynchronize();
    const s1 = stats();
    const g = new Map<string, Float32Array>();
    for (const [n, p] of peft.namedParameters()) if (p.grad) g.set(n, p.grad.to('f32').toFloat32Array());
    const loss = out.loss!.item();
    off();
    out.logits.dispose(); out.loss!.dispose(); ids.dispose(); peft.dispose();
    return { loss, grads: g, d2h: s1.d2hCopies - s0.d2hCopies, h2d: s1.h2dCopies - s0.h2dCopies };
  }
  test.each(['llama', 'gpt2'])('%s: bit-identical loss and gradients, one copy out and back per layer', async (arch) => {
    const layers = (JSON.parse(fs.readFileSync(path.join(MODELS, arch, 'config.json'), 'utf8')) as Record<string, number>);
    const nLayers = layers.num_hidden_layers ?? layers.n_layer;
    const ref = await grads(arch, false);
    const got = await grads(arch, true);
    expect(ref.d2h).toBe(0);
    expect(got.d2h).toBe(nLayers);
    expect(got.h2d).toBe(nLayers);
    expect(got.loss).toBe(ref.loss);
    expect([...got.grads.keys()]).toEqual([...ref.grads.keys()]);
    expect(ref.grads.size).toBeGreaterThan(0);
    for (const [n, r] of ref.grads) {
      const gg = got.grads.get(n)!;
      expect(Number.isNaN(gg[0])).toBe(false);
      expect(Buffer.from(gg.buffer).equals(Buffer.from(r.buffer))).toBe(true);
    }
    expect(stats().pendingCopies).toBe(0);
  });
  test('Trainer offloadActivations: the same losses as checkpointing without offload', async () => {
    async function run(offloadActivations: boolean): Promise<number[]> {
      const peft = wrapWithLora(await loadModel(path.join(MODELS, 'llama'), { device: 'cuda' }), { r: 4, alpha: 8, targetModules: 'all-linear', seed: 1 });
      const out = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-offload-'));
      const losses: number[] = [];
      try {
        await new Trainer({ model: peft, trainDataset: IDS.map((ids) => ({ inputIds: ids })),
          args: { outputDir: out, maxSteps: 3, batchSize: 2, lr: 1e-3, gradientCheckpointing: true, offloadActivations, saveSteps: 0,
            saveFinal: false, progress: false, report: false, handleSigint: false, logSteps: 1000 },
          callbacks: [{ onStepEnd: (m) => { losses.push(m.loss); } }] }).train();
      } finally {
        peft.dispose();
        fs.rmSync(out, { recursive: true, force: true });
      }
      return losses;
    }
    const ref = await run(false), got = await run(true);
    expect(got).toEqual(ref);
    expect(got.every(Number.isFinite)).toBe(true);
  });
  test('peftkit train --device cuda --gradient-checkpointing --offload-activations', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-offload-cli-'));
    try {
      const data = path.join(dir, 'train.jsonl');
      fs.writeFileSync(data, Array.from({ length: 8 }, (_, i) => JSON.stringify({ text: `row ${i}: ${'ab '.repeat(1 + (i % 4))}` })).join('\n') + '\n');
      const out: string[] = [], err: string[] = [];
      const code = await main(['train', '--model', path.join(MODELS, 'llama'), '--tokenizer', path.join(MODELS, '..', 'tokenizer'), '--data', data,
        '--output', path.join(dir, 'run'), '--device', 'cuda', '--gradient-checkpointing', '--offload-activations', '--max-steps', '2',
        '--batch-size', '4', '--r', '4', '--no-progress', '--no-report', '--json'], (s) => { out.push(s); }, (s) => { err.push(s); });
      expect(err).toEqual([]);
      expect(code).toBe(0);
      expect(JSON.parse(out[out.length - 1])).toMatchObject({ steps: 2, stopReason: 'completed' });
      expect(fs.existsSync(path.join(dir, 'run', 'adapter_model.safetensors'))).toBe(true);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
  test('peftkit generate --device cuda: the same greedy completion as on the CPU', async () => {
    const run = async (device: string) => {
      const out: string[] = [], err: string[] = [];
      const code = await main(['generate', '--model', path.join(MODELS, 'llama'), '--tokenizer', path.join(MODELS, '..', 'tokenizer'),
        '--prompt', 'count 1:', '--max-new-tokens', '6', '--device', device, '--json'], (s) => { out.push(s); }, (s) => { err.push(s); });
      expect(err).toEqual([]);
      expect(code).toBe(0);
      return JSON.parse(out[0]) as { completion: string; tokens: number };
    };
    const cpu = await run('cpu'), gpu = await run('cuda');
    expect(gpu.tokens).toBeGreaterThan(0);
    expect(gpu.completion).toBe(cpu.completion);
  });
});
