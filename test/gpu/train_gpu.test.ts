/**
 * GPU suite, end to end: the training path on cuda against the CPU and against HuggingFace.
 *
 *  - the HF fixtures (test/fixtures/hf/models/*) loaded with { device: 'cuda' }: logits, loss and
 *    every parameter gradient vs transformers' reference (f32: cuBLASLt strict-f32 GEMMs and the
 *    flash-attention kernels, so looser than the CPU suite's 1e-4 / 1e-5 / 1e-3), bf16 loading,
 *    greedy generation with the KV cache;
 *  - the fused LoRA linear (csrc/cuda/lora.cu) vs the CPU op: f32 / bf16 / NF4 base, with dropout
 *    (the Philox mask must be bit-identical), forward and all three gradients;
 *  - PEFT LoRA parity on the GPU (test/fixtures/hf/peft/lora): logits, loss, every LoRA gradient;
 *  - a short QLoRA (NF4, bf16 compute) AdamW run on the GPU whose losses track the same run on
 *    the CPU step by step.
 *
 * Without a usable GPU the GPU tests are skipped with a console message saying why; the "no GPU"
 * test checks that asking for cuda then fails with a clear error instead of crashing.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { loadSafetensors } from '../../lib/io/safetensors';
import { loadModel } from '../../lib/models';
import { native } from '../../lib/native';
import { loraLinear } from '../../lib/ops/lora';
import { setDropoutSeed } from '../../lib/ops/random';
import { AdamW } from '../../lib/optim';
import { Trainer } from '../../lib/train';
import { loadAdapter, PeftModel, wrapWithIa3, wrapWithLora, wrapWithPrefixTuning, wrapWithPromptTuning } from '../../lib/peft';
import { mergeQuantized, quantizeNF4 } from '../../lib/quant';
import { Tensor } from '../../lib/tensor/tensor';

interface CudaInfo { built: boolean; available: boolean; reason: string; devices: { name: string }[] }
const info: CudaInfo = typeof native.cudaInfo === 'function' ? native.cudaInfo() as CudaInfo
  : { built: false, available: false, reason: 'this addon predates cudaInfo (rebuild it: npm run build:native)', devices: [] };
const GPU = info.available === true;
if (!GPU) {
  console.warn(`\n*** test/gpu/train_gpu: CUDA tests SKIPPED — ${info.built ? 'CUDA build, but CUDA is not available' : 'this addon was built without CUDA'}: ${info.reason} ***\n`);
}
const gpuDescribe = GPU ? describe : describe.skip;

const FIX = path.join(__dirname, '..', 'fixtures', 'hf');
const MODELS = path.join(FIX, 'models');
const LLAMA = path.join(MODELS, 'llama');
const LORA = path.join(FIX, 'peft', 'lora');
const ARCHS = ['llama', 'mistral', 'qwen2', 'gemma', 'gpt2'];
const IDS = [[1, 5, 9, 200, 33, 7, 400, 12], [3, 3, 80, 64, 511, 2, 0, 17]];

function maxAbs(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let e = 0;
  for (let i = 0; i < a.length; i++) e = Math.max(e, Math.abs(a[i] - b[i]));
  return e;
}
function relErr(g: ArrayLike<number>, r: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < r.length; i++) { num += (g[i] - r[i]) ** 2; den += r[i] ** 2; }
  return Math.sqrt(num / Math.max(den, 1e-300));
}
function rows(t: Tensor): number[][] { return t.toArray() as number[][]; }

test('without a GPU, device cuda fails with a clear error (never a crash)', async () => {
  if (GPU) return;
  await expect(loadModel(LLAMA, { device: 'cuda' })).rejects.toThrow(/cuda/i);
  expect(() => Tensor.zeros([2]).to('cuda')).toThrow(/cuda/i);
  expect(() => Tensor.randn([2], { seed: 1, device: 'cuda' })).toThrow(/cuda/i);
});

gpuDescribe.each(ARCHS)('%s on cuda matches transformers', (arch) => {
  const dir = path.join(MODELS, arch);
  let ref: Map<string, Tensor>;
  beforeAll(() => { ref = loadSafetensors(path.join(dir, 'reference.safetensors')); });
  afterAll(() => { for (const t of ref.values()) t.dispose(); });

  test('logits, loss and every gradient (f32)', async () => {
    const model = await loadModel(dir, { device: 'cuda' });
    for (const [n, p] of model.namedParameters()) if (p.device !== 'cuda') throw new Error(`${n} is on ${p.device}`);
    for (const [n, b] of model.namedBuffers()) if (b.device !== 'cuda') throw new Error(`buffer ${n} is on ${b.device}`);
    const out = model.forward({ inputIds: ref.get('input_ids')!, labels: ref.get('labels')! });
    expect(out.logits.device).toBe('cuda');
    const e = maxAbs(out.logits.toFloat32Array(), ref.get('logits')!.toFloat32Array());
    const loss = out.loss!.item(), refLoss = ref.get('loss')!.item();
    const lrel = Math.abs(loss - refLoss) / Math.abs(refLoss);
    out.loss!.backward();
    let worst = 0, worstName = '';
    for (const [n, p] of model.namedParameters()) {
      expect(p.grad).not.toBeNull();
      expect(p.grad!.device).toBe('cuda');
      const r = relErr(p.grad!.toFloat32Array(), ref.get(`grad.${n}`)!.toFloat32Array());
      if (r > worst) { worst = r; worstName = n; }
    }
    console.log(`${arch} cuda f32: logits max-abs ${e.toExponential(2)}, loss rel ${lrel.toExponential(2)}, worst grad rel ${worst.toExponential(2)} (${worstName})`);
    expect(e).toBeLessThanOrEqual(5e-4);
    expect(lrel).toBeLessThanOrEqual(1e-4);
    expect(worst).toBeLessThanOrEqual(5e-3);
    out.logits.dispose(); out.loss!.dispose();
    model.dispose();
  });

  test('bf16 on cuda stays close; greedy generation with the KV cache (f32) matches', async () => {
    const mb = await loadModel(dir, { dtype: 'bf16', device: 'cuda' });
    const ob = mb.forward({ inputIds: ref.get('input_ids')! });
    expect(ob.logits.dtype).toBe('bf16');
    const eb = maxAbs(ob.logits.toFloat32Array(), ref.get('logits')!.toFloat32Array());
    console.log(`${arch} cuda bf16: logits max-abs ${eb.toExponential(2)}`);
    expect(eb).toBeLessThan(0.1);
    mb.dispose();
    const model = await loadModel(dir, { device: 'cuda' });
    const expected = rows(ref.get('generate_greedy')!);
    const prompt = [rows(ref.get('input_ids')!)[0].slice(0, 8)];
    const got = await model.generate(prompt, { maxNewTokens: 8, eosTokenId: null });
    expect(got).toEqual(expected);
    model.dispose();
  });
});

gpuDescribe('fused LoRA linear: cuda vs CPU', () => {
  const T = 37, inF = 96, outF = 80, r = 8, s = 2.0;
  const cases: { name: string; dt: 'f32' | 'bf16'; p: number; nf4?: boolean; wt?: boolean; bias?: boolean; tol: number }[] = [
    { name: 'f32', dt: 'f32', p: 0, bias: true, tol: 2e-5 },
    { name: 'f32 + dropout', dt: 'f32', p: 0.25, tol: 2e-5 },
    { name: 'f32 fan_in_fan_out', dt: 'f32', p: 0, wt: true, tol: 2e-5 },
    { name: 'bf16 + dropout', dt: 'bf16', p: 0.1, bias: true, tol: 1.6e-2 },
    { name: 'NF4 base, bf16 x', dt: 'bf16', p: 0.1, nf4: true, tol: 1.6e-2 },
  ];
  test.each(cases)('$name: y, dx, dA, dB', ({ dt, p, nf4, wt, bias, tol }) => {
    const x = Tensor.randn([2, T, inF], { seed: 1, dtype: dt });
    const w = Tensor.randn(wt ? [inF, outF] : [outF, inF], { seed: 2, dtype: dt, std: 0.1 });
    const b = bias ? Tensor.randn([outF], { seed: 3, dtype: dt }) : null;
    const A = Tensor.randn([r, inF], { seed: 4, std: 0.1 }), B = Tensor.randn([outF, r], { seed: 5, std: 0.1 });
    const q = nf4 ? quantizeNF4(w, { computeDtype: 'bf16' }) : null;
    const qc = nf4 ? quantizeNF4(w.to('cuda'), { computeDtype: 'bf16' }) : null;
    const run = (dev: 'cpu' | 'cuda') => {
      const xx = x.to(dev).detach().requiresGrad_(true), AA = A.to(dev).detach().requiresGrad_(true), BB = B.to(dev).detach().requiresGrad_(true);
      const y = loraLinear(xx, dev === 'cuda' ? (qc ?? w.to(dev)) : (q ?? w), b ? b.to(dev) : null, AA, BB,
        { scale: s, dropout: p, seed: 11, weightTransposed: !!wt });
      const g = Tensor.randn([...y.shape], { seed: 6, dtype: y.dtype, device: dev });
      y.backward(g);
      return { y: y.toFloat64Array(), dx: xx.grad!.toFloat64Array(), dA: AA.grad!.toFloat64Array(), dB: BB.grad!.toFloat64Array(), ydt: y.dtype, dev: y.device };
    };
    const c = run('cpu'), g = run('cuda');
    expect(g.dev).toBe('cuda');
    expect(g.ydt).toBe(c.ydt);
    for (const k of ['y', 'dx', 'dA', 'dB'] as const) {
      const e = relErr(g[k], c[k]);
      if (!(e <= tol)) throw new Error(`${k}: relative error ${e.toExponential(2)} > ${tol}`);
    }
  });
});

gpuDescribe('PEFT LoRA fixture on cuda', () => {
  test('logits, loss and every LoRA gradient match PEFT', async () => {
    const ref = loadSafetensors(path.join(LORA, 'reference.safetensors'));
    const peft = await loadAdapter(await loadModel(LLAMA, { device: 'cuda' }), LORA, { isTrainable: true });
    // adapters are created where their base layers live
    for (const [n, t] of peft.namedParameters()) if (/lora_/.test(n)) expect(`${n}:${t.device}`).toBe(`${n}:cuda`);
    const out = peft.forward({ inputIds: ref.get('input_ids')!, labels: ref.get('labels')! });
    const e = maxAbs(out.logits.toFloat32Array(), ref.get('logits')!.toFloat32Array());
    const loss = out.loss!.item(), refLoss = ref.get('loss')!.item();
    out.loss!.backward();
    const params = new Map(peft.namedParameters());
    const gradKeys = [...ref.keys()].filter((k) => k.startsWith('grad.'));
    expect(gradKeys.length).toBe(28);
    let worst = 0;
    for (const gk of gradKeys) {
      const p = params.get(gk.slice(5));
      expect(p).toBeDefined();
      expect(p!.device).toBe('cuda');
      worst = Math.max(worst, relErr(p!.grad!.toFloat64Array(), ref.get(gk)!.toFloat64Array()));
    }
    console.log(`lora fixture on cuda: logits max-abs ${e.toExponential(2)}, loss rel ${(Math.abs(loss - refLoss) / Math.abs(refLoss)).toExponential(2)}, worst LoRA grad rel ${worst.toExponential(2)}`);
    expect(e).toBeLessThanOrEqual(5e-4);
    expect(Math.abs(loss - refLoss) / Math.abs(refLoss)).toBeLessThanOrEqual(1e-4);
    expect(worst).toBeLessThanOrEqual(5e-3);
    peft.dispose();
    for (const t of ref.values()) t.dispose();
  });
});

gpuDescribe('QLoRA training on cuda tracks the CPU', () => {
  async function run(device: 'cpu' | 'cuda'): Promise<number[]> {
    // The same dropout masks on both devices (one Philox stream, CPU and CUDA draw the same bits):
    // without this each run draws from a random seed and the two runs drift apart by up to ~2%
    // by step 6 (seen on the CUDA simulator, 2026-12-06), which made this comparison flaky.
    setDropoutSeed(1234);
    const base = await loadModel(LLAMA, { quantize: 'nf4', quantization: { computeDtype: 'bf16' }, device });
    const p: PeftModel = wrapWithLora(base, { r: 8, alpha: 16, dropout: 0.05, targetModules: 'all-linear', seed: 3 });
    if (device === 'cuda') p.to('cuda');
    p.model.train();
    const params = p.trainableParameters();
    for (const [n, t] of params) if (t.device !== device) throw new Error(`${n} is on ${t.device}`);
    const opt = new AdamW(params, { lr: 1e-2, weightDecay: 0 });
    const losses: number[] = [];
    for (let i = 0; i < 6; i++) {
      const out = p.forward({ inputIds: IDS, labels: IDS });
      losses.push(out.loss!.item());
      out.loss!.backward();
      opt.step(); opt.zeroGrad();
      out.logits.dispose(); out.loss!.dispose();
    }
    opt.dispose();
    p.dispose();
    return losses;
  }
  test('6 AdamW steps: losses within 2% of the CPU run at every step, and decreasing', async () => {
    const cpu = await run('cpu');
    const gpu = await run('cuda');
    console.log(`qlora losses cpu ${cpu.map((v) => v.toFixed(4)).join(' ')}\nqlora losses gpu ${gpu.map((v) => v.toFixed(4)).join(' ')}`);
    for (let i = 0; i < cpu.length; i++) expect(Math.abs(gpu[i] - cpu[i]) / Math.abs(cpu[i])).toBeLessThanOrEqual(0.02);
    expect(gpu[gpu.length - 1]).toBeLessThan(gpu[0] - 0.05);
  });
});

gpuDescribe('Trainer on cuda: evaluation, checkpoints, resume, final adapter', () => {
  // The host-side plumbing around the GPU step: token accuracy (argmax) of eval batches, safetensors
  // checkpoints of cuda parameters and optimizer states, loading them back onto the GPU on resume.
  test.each(['adamw', 'paged_adamw_8bit'] as const)('%s', async (optim) => {
    const peft = wrapWithLora(await loadModel(LLAMA, { device: 'cuda' }), { r: 4, alpha: 8, targetModules: 'all-linear', seed: 1 });
    const out = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-gpu-trainer-'));
    try {
      const data = IDS.map((ids) => ({ inputIds: ids }));
      const make = (maxSteps: number) => new Trainer({ model: peft, trainDataset: data, evalDataset: data,
        args: { outputDir: out, maxSteps, batchSize: 1, lr: 1e-3, optim, saveSteps: 2, evalSteps: 2, logSteps: 1,
          progress: false, report: false, handleSigint: false } });
      const first = await make(2).train();
      expect(first.checkpoint).not.toBeNull();
      expect(Number.isFinite(first.evalMetrics!.evalAccuracy)).toBe(true);
      const resumed = await make(4).train({ resumeFrom: 'latest' });
      expect(resumed.globalStep).toBe(4);
      expect(Number.isFinite(resumed.trainLoss)).toBe(true);
      for (const [n, t] of peft.trainableParameters()) expect(`${n}:${t.device}`).toBe(`${n}:cuda`);
      expect(fs.existsSync(path.join(out, 'adapter_model.safetensors'))).toBe(true);
    } finally {
      peft.dispose();
      fs.rmSync(out, { recursive: true, force: true });
    }
  });
});

gpuDescribe('every PEFT method on a cuda model', () => {
  // Adapters, prompt encoders and the decoder inputs they build live on the model's device: every
  // parameter and gradient on cuda, generation, and an adapter saved and loaded back onto cuda.
  const methods: [string, (m: Awaited<ReturnType<typeof loadModel>>) => PeftModel][] = [
    ['LoRA on linears and the token embedding', (m) => wrapWithLora(m, { r: 4, targetModules: ['q_proj', 'v_proj', 'embed_tokens'] })],
    ['IA3', (m) => wrapWithIa3(m, {})],
    ['prompt tuning', (m) => wrapWithPromptTuning(m, { numVirtualTokens: 4 })],
    ['prefix tuning', (m) => wrapWithPrefixTuning(m, { numVirtualTokens: 4 })],
  ];
  test.each(methods)('%s', async (_name, wrap) => {
    const peft = wrap(await loadModel(LLAMA, { device: 'cuda' }));
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-gpu-peft-'));
    try {
      for (const [n, t] of peft.namedParameters()) expect(`${n}:${t.device}`).toBe(`${n}:cuda`);
      peft.model.train();
      const out = peft.forward({ inputIds: IDS, labels: IDS });
      out.loss!.backward();
      for (const [n, t] of peft.trainableParameters()) expect(`${n}:${t.grad?.device}`).toBe(`${n}:cuda`);
      peft.model.eval();
      const gen = await peft.generate([IDS[0].slice(0, 4)], { maxNewTokens: 2, eosTokenId: null });
      expect(gen[0].length).toBe(6);
      await peft.saveAdapter(dir);
      const again = await loadAdapter(await loadModel(LLAMA, { device: 'cuda' }), dir);
      for (const [n, t] of again.namedParameters()) expect(`${n}:${t.device}`).toBe(`${n}:cuda`);
      expect(again.forward({ inputIds: IDS }).logits.device).toBe('cuda');
      again.dispose();
    } finally {
      peft.dispose();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

gpuDescribe('Tensor factories on cuda', () => {
  test('device is honoured by every factory', () => {
    const made = [
      Tensor.zeros([2], { device: 'cuda' }), Tensor.ones([2], { device: 'cuda' }), Tensor.empty([2], { device: 'cuda' }),
      Tensor.full([2], 3, { device: 'cuda' }), Tensor.randn([2], { seed: 1, device: 'cuda' }), Tensor.rand([2], { seed: 1, device: 'cuda' }),
      Tensor.fromArray([1, 2], { dtype: 'i64', device: 'cuda' }), Tensor.fromArray([[1, 2]], { dtype: 'f16', device: 'cuda' }),
      Tensor.arange(0, 4, 1, { device: 'cuda' }),
    ];
    expect(made.map((t) => t.device)).toEqual(made.map(() => 'cuda'));
    expect(Tensor.arange(0, 4, 1, { device: 'cuda' }).toArray()).toEqual([0, 1, 2, 3]);
    for (const t of made) t.dispose();
  });
});

gpuDescribe('QLoRA on cuda: merged into a float model folder', () => {
  test('mergeQuantized writes a loadable bf16 model from a cuda QLoRA model', async () => {
    const peft = wrapWithLora(await loadModel(LLAMA, { device: 'cuda', quantize: 'nf4' }), { r: 4, targetModules: 'all-linear' });
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-gpu-merge-'));
    try {
      mergeQuantized(peft, dir, { dtype: 'bf16' });
      const merged = await loadModel(dir, { device: 'cuda' });
      expect(merged.forward({ inputIds: IDS }).logits.device).toBe('cuda');
      merged.dispose();
    } finally {
      peft.dispose();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
