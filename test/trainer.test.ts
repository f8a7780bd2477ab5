/**
 * Trainer: accumulation equivalence, bit-exact resume, atomic checkpoints, NaN skipping, abort /
 * SIGINT, worker_thread, gradient checkpointing, full fine-tuning, bf16, and an end-to-end run in
 * which a LoRA on the llama fixture learns a synthetic task.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Worker } from 'worker_threads';
import { loadModel } from '../lib/models';
import { loadTokenizer } from '../lib/tokenizer';
import { loadAdapter, PeftModel, wrapWithLora } from '../lib/peft';
import { ops, Tensor } from '../lib';
import {
  _hooks,
} from '../lib/train/checkpoint';
import {
  enableGradientCheckpointing, latestCheckpoint, listCheckpoints, loadTrainingCheckpoint, NonFiniteError, ProgressBar, Trainer,
  TrainableModel, StepMetrics, renderReport,
} from '../lib/train';

const ROOT = path.resolve(__dirname, '..');
const LLAMA = path.join(ROOT, 'test/fixtures/hf/models/llama');

let tmpRoot: string;
beforeAll(() => { tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-trainer-')); });
afterAll(() => { fs.rmSync(tmpRoot, { recursive: true, force: true }); });
const out = (name: string) => path.join(tmpRoot, name);

async function lora(seed = 1, extra: Record<string, unknown> = {}): Promise<PeftModel> {
  const base = await loadModel(LLAMA);
  return wrapWithLora(base, { r: 8, alpha: 16, targetModules: 'all-linear', seed, ...extra });
}

/**
 * Synthetic task: a fixed random permutation π of tokens 10..73; a sequence is a, π(a), π(π(a)), …
 * The next token is a function of the current one, which the model has to learn.
 */
function permutationTask(n: number, len: number, seed: number, startOffset = 0): { inputIds: number[] }[] {
  let s = 12345;
  const rnd = () => { s = (Math.imul(s, 1103515245) + 12345) >>> 0; return s / 2 ** 32; };
  const perm = Array.from({ length: 64 }, (_, i) => i);
  for (let i = 63; i > 0; i--) { const j = Math.floor(rnd() * (i + 1)); [perm[i], perm[j]] = [perm[j], perm[i]]; }
  let t = seed;
  const rnd2 = () => { t = (Math.imul(t, 22695477) + 1) >>> 0; return t / 2 ** 32; };
  const rows: { inputIds: number[] }[] = [];
  for (let k = 0; k < n; k++) {
    let a = (startOffset + Math.floor(rnd2() * 64)) % 64;
    const ids = [10 + a];
    for (let i = 1; i < len; i++) { a = perm[a]; ids.push(10 + a); }
    rows.push({ inputIds: ids });
  }
  return rows;
}

/** Varying-length examples (so padding differs between one big batch and micro-batches). */
function ragged(n: number): { inputIds: number[]; labels: number[] }[] {
  const rows = [];
  for (let i = 0; i < n; i++) {
    const len = 6 + ((i * 5) % 9);
    const ids = Array.from({ length: len }, (_, k) => 3 + ((i * 31 + k * 17) % 500));
    const labels = ids.map((v, k) => (k < 2 ? -100 : v));   // a 2-token "prompt" without loss
    rows.push({ inputIds: ids, labels });
  }
  return rows;
}

function gradSnapshot(into: Map<string, Float64Array>) {
  return {
    onGradients(_step: number, params: [string, Tensor][]) {
      for (const [n, p] of params) into.set(n, p.grad ? p.grad.toFloat64Array() : new Float64Array(p.numel));
    },
  };
}

const quiet = { progress: false, report: false } as const;

describe('Trainer', () => {
  test('gradient accumulation of 4 micro-batches equals one 4x batch (token-count normalisation)', async () => {
    const data = ragged(8);
    const g1 = new Map<string, Float64Array>(), g2 = new Map<string, Float64Array>();
    const l1: number[] = [], l2: number[] = [];
    const m1 = await lora(7, { init: 'gaussian' });
    await new Trainer({ model: m1, trainDataset: data, callbacks: [gradSnapshot(g1), { onStepEnd: (m: StepMetrics) => { l1.push(m.loss); } }],
      args: { outputDir: out('acc1'), maxSteps: 1, batchSize: 8, gradAccumSteps: 1, shuffle: false, saveSteps: 0, saveFinal: false, ...quiet } }).train();
    const m2 = await lora(7, { init: 'gaussian' });
    await new Trainer({ model: m2, trainDataset: data, callbacks: [gradSnapshot(g2), { onStepEnd: (m: StepMetrics) => { l2.push(m.loss); } }],
      args: { outputDir: out('acc2'), maxSteps: 1, batchSize: 2, gradAccumSteps: 4, shuffle: false, saveSteps: 0, saveFinal: false, ...quiet } }).train();
    expect(Math.abs(l1[0] - l2[0])).toBeLessThan(1e-5);
    expect(g1.size).toBeGreaterThan(0);
    let maxDiff = 0, maxAbs = 0;
    for (const [n, a] of g1) {
      const b = g2.get(n)!;
      for (let i = 0; i < a.length; i++) { maxDiff = Math.max(maxDiff, Math.abs(a[i] - b[i])); maxAbs = Math.max(maxAbs, Math.abs(a[i])); }
    }
    expect(maxAbs).toBeGreaterThan(1e-3);
    expect(maxDiff).toBeLessThan(1e-5);
    // A per-micro-batch mean (the naive way) would differ: the micro-batches carry different token counts.
    m1.dispose(); m2.dispose();
  });

  test('resume reproduces the uninterrupted run bit for bit (dropout, accumulation, epochs, shuffling)', async () => {
    const data = permutationTask(22, 10, 3);
    const args = { maxSteps: 8, batchSize: 4, gradAccumSteps: 2, lr: 5e-3, saveSteps: 2, saveTotalLimit: 0, warmupSteps: 2, scheduler: 'cosine' as const,
      weightDecay: 0.01, seed: 11, ...quiet };
    const full: number[] = [];
    const m1 = await lora(5, { dropout: 0.1 });
    await new Trainer({ model: m1, trainDataset: data, args: { ...args, outputDir: out('res-full') }, callbacks: [{ onStepEnd: (m: StepMetrics) => { full.push(m.loss); } }] }).train();
    expect(full).toHaveLength(8);

    // Interrupted run: stop after step 5 (AbortSignal), checkpoint-5 is written.
    const ac = new AbortController();
    const part: number[] = [];
    const m2 = await lora(5, { dropout: 0.1 });
    const r2 = await new Trainer({ model: m2, trainDataset: data, args: { ...args, outputDir: out('res-part') },
      callbacks: [{ onStepEnd: (m: StepMetrics) => { part.push(m.loss); if (m.step === 5) ac.abort(); } }] }).train({ signal: ac.signal });
    expect(r2.stopReason).toBe('aborted');
    expect(r2.globalStep).toBe(5);
    expect(part).toEqual(full.slice(0, 5));
    expect(listCheckpoints(out('res-part')).map(([s]) => s)).toEqual([2, 4, 5]);

    // Resume 'latest' (step 5) in a fresh model with a different adapter init: the weights come from the checkpoint.
    const rest: number[] = [];
    const m3 = await lora(99, { dropout: 0.1 });
    const r3 = await new Trainer({ model: m3, trainDataset: data, args: { ...args, outputDir: out('res-part') },
      callbacks: [{ onStepEnd: (m: StepMetrics) => { rest.push(m.loss); } }] }).train({ resumeFrom: 'latest' });
    expect(r3.globalStep).toBe(8);
    expect(rest).toEqual(full.slice(5));   // toEqual on numbers: exact (Object.is) equality

    // Resume from an explicit older checkpoint folder (step 2, mid-epoch).
    const rest2: number[] = [];
    const m4 = await lora(98, { dropout: 0.1 });
    await new Trainer({ model: m4, trainDataset: data, args: { ...args, outputDir: out('res-part2') },
      callbacks: [{ onStepEnd: (m: StepMetrics) => { rest2.push(m.loss); } }] }).train({ resumeFrom: path.join(out('res-part'), 'checkpoint-2') });
    expect(rest2).toEqual(full.slice(2));
    for (const m of [m1, m2, m3, m4]) m.dispose();
  });

  test('a crash during a save leaves the previous checkpoint loadable; last K are kept', async () => {
    const data = permutationTask(16, 8, 4);
    const dir = out('atomic');
    const m = await lora(2);
    _hooks.beforeCommit = (tmp) => { if (/checkpoint-4-/.test(tmp)) throw new Error('simulated crash during save'); };
    try {
      await expect(new Trainer({ model: m, trainDataset: data, args: { outputDir: dir, maxSteps: 6, batchSize: 4, saveSteps: 2, saveTotalLimit: 2, ...quiet } }).train())
        .rejects.toThrow('simulated crash during save');
    } finally {
      _hooks.beforeCommit = null;
    }
    expect(listCheckpoints(dir).map(([s]) => s)).toEqual([2]);
    expect(fs.readdirSync(dir).filter((n) => n.startsWith('.tmp'))).toEqual([]);
    const ck = loadTrainingCheckpoint(path.join(dir, 'checkpoint-2'));
    expect(ck.state.globalStep).toBe(2);
    expect(ck.trainable.size).toBe(m.trainableParameters().length);
    for (const t of ck.trainable.values()) t.dispose();

    // A process killed mid-save leaves a partial temp folder: it is ignored by 'latest' and cleaned later.
    const stale = path.join(dir, '.tmp-checkpoint-4-1-deadbeef');
    fs.mkdirSync(stale);
    fs.writeFileSync(path.join(stale, 'trainable.safetensors'), 'partial');
    expect(latestCheckpoint(dir)).toBe(path.join(dir, 'checkpoint-2'));
    const m2 = await lora(2);
    const r = await new Trainer({ model: m2, trainDataset: data, args: { outputDir: dir, maxSteps: 8, batchSize: 4, saveSteps: 2, saveTotalLimit: 2, ...quiet } })
      .train({ resumeFrom: 'latest' });
    expect(r.globalStep).toBe(8);
    expect(listCheckpoints(dir).map(([s]) => s)).toEqual([6, 8]);
    expect(fs.existsSync(stale)).toBe(false);
    m.dispose(); m2.dispose();
  });

  test('NaN/Inf loss: the step is skipped and reported; N in a row stop with a checkpoint and a clear error', async () => {
    const data = permutationTask(16, 8, 5);
    const peft = await lora(3);
    let calls = 0;
    let poison = (_call: number) => false;
    const model: TrainableModel = {
      forward: (input) => {
        const o = peft.forward(input as never);
        calls++;
        return poison(calls) ? { logits: ops.mul(o.logits, NaN) } : o;
      },
      namedParameters: (o) => peft.namedParameters(o),
      train: (m) => peft.train(m), eval: () => peft.eval(),
      saveAdapter: (d) => peft.saveAdapter(d),
    };
    poison = (c) => c === 2 || c === 3;   // steps 2 and 3 (one micro-batch per step)
    const seen: number[] = [];
    const snap = () => peft.trainableParameters().map(([, t]) => t.toFloat64Array());
    let before: Float64Array[] = [];
    const dir = out('nan');
    const r = await new Trainer({ model, trainDataset: data, args: { outputDir: dir, maxSteps: 5, batchSize: 4, lr: 1e-2, maxNonFiniteSteps: 3, ...quiet },
      callbacks: [{
        onNonFinite: (i) => { seen.push(i.step); },
        onStepEnd: (m: StepMetrics) => {
          if (m.step === 1) before = snap();
          if (m.step === 3) { const now = snap(); expect(now).toEqual(before); }   // skipped steps change nothing
        },
      }] }).train();
    expect(r.globalStep).toBe(5);
    expect(r.skippedSteps).toBe(2);
    expect(seen).toEqual([2, 3]);
    expect(Number.isFinite(r.trainLoss)).toBe(true);
    const log = fs.readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(log.filter((x) => x.kind === 'skip').map((x) => x.step)).toEqual([2, 3]);

    // Every step from the 2nd on is bad: after 3 in a row (steps 2, 3, 4) training stops.
    calls = 0;
    poison = (c) => c >= 2;
    const dir2 = out('nan2');
    let err: unknown = null;
    try {
      await new Trainer({ model, trainDataset: data, args: { outputDir: dir2, maxSteps: 10, batchSize: 4, maxNonFiniteSteps: 3, ...quiet } }).train();
    } catch (e) { err = e; }
    expect(err).toBeInstanceOf(NonFiniteError);
    expect((err as Error).message).toMatch(/3 steps in a row had a non-finite loss or gradients.*Checkpoint saved to .*checkpoint-4/);
    expect((err as NonFiniteError).step).toBe(4);
    expect(latestCheckpoint(dir2)).toBe(path.join(dir2, 'checkpoint-4'));
    peft.dispose();
  });

  test('abort and SIGINT finish the current step, save a checkpoint and resolve; the loop yields to the event loop', async () => {
    const data = permutationTask(16, 8, 6);
    const m = await lora(4);
    let ticks = 0;
    const iv = setInterval(() => { ticks++; }, 0);
    let ticksAtStep3 = -1;
    const dir = out('sigint');
    const r = await new Trainer({ model: m, trainDataset: data, args: { outputDir: dir, maxSteps: 50, batchSize: 4, saveSteps: 0, ...quiet },
      callbacks: [{ onStepEnd: (s: StepMetrics) => { if (s.step === 3) { ticksAtStep3 = ticks; process.emit('SIGINT' as never); } } }] }).train();
    clearInterval(iv);
    expect(r.stopReason).toBe('aborted');
    expect(r.globalStep).toBe(3);
    expect(ticksAtStep3).toBeGreaterThan(0);   // timers ran between steps
    expect(latestCheckpoint(dir)).toBe(path.join(dir, 'checkpoint-3'));
    expect(process.listenerCount('SIGINT')).toBe(0);

    const ac = new AbortController();
    ac.abort();
    const r2 = await new Trainer({ model: m, trainDataset: data, args: { outputDir: out('pre-aborted'), maxSteps: 5, batchSize: 4, ...quiet } }).train({ signal: ac.signal });
    expect(r2.globalStep).toBe(0);
    expect(r2.stopReason).toBe('aborted');
    m.dispose();
  });

  test('runs inside a worker_thread', async () => {
    const dir = out('worker');
    const code = `
      const { parentPort, workerData } = require('worker_threads');
      const ts = require(workerData.root + '/node_modules/typescript');
      const fs = require('fs');
      require.extensions['.ts'] = (m, f) => m._compile(ts.transpileModule(fs.readFileSync(f, 'utf8'),
        { compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true }, fileName: f }).outputText, f);
      (async () => {
        const { loadModel } = require(workerData.root + '/lib/models');
        const { wrapWithLora } = require(workerData.root + '/lib/peft');
        const { Trainer } = require(workerData.root + '/lib/train');
        const model = wrapWithLora(await loadModel(workerData.model), { r: 4, targetModules: ['q_proj', 'v_proj'], seed: 1 });
        const data = Array.from({ length: 8 }, (_, i) => ({ inputIds: Array.from({ length: 8 }, (_, k) => 10 + ((i + k) % 40)) }));
        const losses = [];
        const r = await new Trainer({ model, trainDataset: data, args: { outputDir: workerData.dir, maxSteps: 3, batchSize: 4, lr: 1e-2, progress: false },
          callbacks: [{ onStepEnd: (m) => { losses.push(m.loss); parentPort.postMessage({ kind: 'step', step: m.step }); } }] }).train();
        parentPort.postMessage({ kind: 'done', globalStep: r.globalStep, losses });
      })().catch((e) => parentPort.postMessage({ kind: 'error', message: e.stack || String(e) }));`;
    const msgs: { kind: string; [k: string]: unknown }[] = await new Promise((resolve, reject) => {
      const got: { kind: string }[] = [];
      const w = new Worker(code, { eval: true, workerData: { root: ROOT, model: LLAMA, dir } });
      w.on('message', (m) => { got.push(m); if (m.kind === 'done' || m.kind === 'error') { void w.terminate(); resolve(got as never); } });
      w.on('error', reject);
    });
    const last = msgs[msgs.length - 1];
    if (last.kind === 'error') throw new Error(String(last.message));
    expect(msgs.filter((m) => m.kind === 'step').map((m) => m.step)).toEqual([1, 2, 3]);
    expect(last.globalStep).toBe(3);
    expect((last.losses as number[]).every(Number.isFinite)).toBe(true);
    expect(fs.existsSync(path.join(dir, 'adapter_model.safetensors'))).toBe(true);
  });

  test('gradient checkpointing: identical gradients, less activation memory', async () => {
    const m = await lora(8, { init: 'gaussian', dropout: 0.1 });
    const ids = Array.from({ length: 4 }, (_, b) => Array.from({ length: 96 }, (_, t) => 5 + ((b * 7 + t * 13) % 500)));
    const grads = () => {
      const { setDropoutSeed } = require('../lib/ops/random');
      setDropoutSeed(1234);
      m.train();
      const o = m.forward({ inputIds: ids, labels: ids });
      o.loss!.backward();
      const g = m.trainableParameters().map(([, t]) => t.grad!.toFloat64Array());
      m.zeroGrad();
      return g;
    };
    const g1 = grads();
    const off = enableGradientCheckpointing(m);
    const g2 = grads();
    off();
    expect(g2).toEqual(g1);
    const data = ids.map((r) => ({ inputIds: r }));
    const tr = new Trainer({ model: m, trainDataset: data, args: { outputDir: out('gc'), maxSteps: 2, batchSize: 4, gradientCheckpointing: true, reportActivationMemory: true, ...quiet } });
    const mem = tr.measureActivationMemory();
    expect(mem.saved).toBeGreaterThan(0);
    expect(mem.withCheckpointing).toBeLessThan(mem.withoutCheckpointing);
    const r = await tr.train();
    expect(Number.isFinite(r.trainLoss)).toBe(true);
    expect(tr.activationPeakBytes).toBeGreaterThan(0);
    expect(tr.activationMemory!.saved).toBeGreaterThan(0);
    const ev = fs.readFileSync(path.join(out('gc'), 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).find((x) => x.event === 'activationMemory');
    expect(ev.saved).toBe(tr.activationMemory!.saved);
    m.dispose();
  });

  test('full fine-tuning (every parameter trainable) and bf16 LoRA', async () => {
    const data = permutationTask(8, 8, 9);
    const base = await loadModel(LLAMA);
    const losses: number[] = [];
    const dir = out('full');
    const r = await new Trainer({ model: base, trainDataset: data, args: { outputDir: dir, maxSteps: 4, batchSize: 8, lr: 3e-3, ...quiet },
      callbacks: [{ onStepEnd: (m: StepMetrics) => { losses.push(m.loss); } }] }).train();
    expect(r.globalStep).toBe(4);
    expect(losses[3]).toBeLessThan(losses[0]);
    expect(fs.existsSync(path.join(dir, 'model.safetensors'))).toBe(true);
    const reloaded = await loadModel(dir);
    expect(reloaded.numParameters()).toBe(base.numParameters());
    reloaded.dispose(); base.dispose();

    const m = await lora(6);
    const tr = new Trainer({ model: m, trainDataset: data, args: { outputDir: out('bf16'), maxSteps: 3, batchSize: 8, lr: 1e-2, bf16: true, ...quiet } });
    expect(m.namedParameters().filter(([, t]) => !t.requiresGrad).every(([, t]) => t.dtype === 'bf16')).toBe(true);
    expect(m.trainableParameters().every(([, t]) => t.dtype === 'f32')).toBe(true);
    const r2 = await tr.train();
    expect(Number.isFinite(r2.trainLoss)).toBe(true);
    m.dispose();
  });

  test('end to end: a LoRA on the llama fixture learns a synthetic task', async () => {
    const train = permutationTask(96, 16, 21);
    const heldOut = permutationTask(16, 16, 77, 32);   // unseen sequences of the same rule
    // LoRA on every linear layer; lm_head trained in full (modules_to_save): the fixture's random
    // lm_head is too small to sharpen the output distribution otherwise.
    const m = await lora(10, { modulesToSave: ['lm_head'] });
    const dir = out('e2e');
    const tokenizer = await loadTokenizer(path.join(ROOT, 'test/fixtures/hf/tokenizer'));
    const tr = new Trainer({ model: m, tokenizer, trainDataset: train, evalDataset: heldOut,
      args: { outputDir: dir, epochs: 5, batchSize: 8, gradAccumSteps: 2, lr: 1e-2, warmupRatio: 0.1, scheduler: 'cosine', evalSteps: 10,
        saveSteps: 20, logSteps: 5, seed: 3, progress: false, samplePrompts: ['hello'], sampleMaxNewTokens: 4 } });
    const before = await tr.evaluate();
    const t0 = Date.now();
    const r = await tr.train();
    const after = r.evalMetrics!;
    // Stated margins: held-out loss falls by at least 75%; held-out next-token accuracy from < 10% to > 90%.
    expect(before.evalAccuracy).toBeLessThan(0.1);
    expect(after.evalAccuracy).toBeGreaterThan(0.9);
    expect(after.evalLoss).toBeLessThan(before.evalLoss * 0.25);
    const steps = tr.history.steps;
    const first = steps.slice(0, 5).reduce((s, x) => s + x[1], 0) / 5, last = steps.slice(-5).reduce((s, x) => s + x[1], 0) / 5;
    expect(last).toBeLessThan(first * 0.5);
    expect(r.globalStep).toBe(30);   // 96 / 8 = 12 micro-batches = 6 steps per epoch, 5 epochs
    expect(Date.now() - t0).toBeLessThan(60_000);

    // Outputs: adapter (reloads to the same eval metrics), metrics log, HTML report.
    const reloaded = await loadAdapter(await loadModel(LLAMA), dir);
    const tr2 = new Trainer({ model: reloaded, trainDataset: train, evalDataset: heldOut, args: { outputDir: out('e2e-eval'), ...quiet } });
    const again = await tr2.evaluate();
    expect(again.evalAccuracy).toBeCloseTo(after.evalAccuracy, 10);
    const log = fs.readFileSync(path.join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(log.filter((x) => x.kind === 'train').length).toBe(6);
    expect(log.filter((x) => x.kind === 'eval').length).toBe(3);
    const html = fs.readFileSync(path.join(dir, 'report.html'), 'utf8');
    expect(html).toContain('<svg');
    expect(html).toContain('training loss');
    expect(html).toContain('eval accuracy');
    expect(html).toContain('hello');
    expect(listCheckpoints(dir).map(([s]) => s)).toEqual([20, 30]);
    m.dispose(); reloaded.dispose();
  });

  test('progress bar text, report rendering and argument validation', async () => {
    const s = ProgressBar.render(5, 10, 1.2345, 2e-4, 1234.4, 10, 10);
    expect(s).toContain('5/10');
    expect(s).toContain('loss 1.2345');
    expect(s).toContain('lr 2.00e-4');
    expect(s).toContain('1234 tok/s');
    expect(s).toContain('ETA 00:10');
    const html = renderReport({ title: 'x<y', steps: [[1, 2, 0.1], [2, NaN, 0.1], [3, 1, 0.05]], evals: [], summary: { a: 1 }, samples: [{ prompt: '<p>', completion: 'c' }] });
    expect(html).toContain('x&lt;y');
    expect(html).toContain('&lt;p&gt;');
    expect(html).not.toContain('<script');
    const m = await lora(1);
    expect(() => new Trainer({ model: m, trainDataset: [{ inputIds: [1, 2] }], args: { outputDir: '' } })).toThrow(/outputDir/);
    expect(() => new Trainer({ model: m, trainDataset: [{ inputIds: [1, 2] }], args: { outputDir: out('v'), batchSize: 0 } })).toThrow(/batchSize/);
    await expect(new Trainer({ model: m, trainDataset: [{ text: 'hi' }], args: { outputDir: out('v'), ...quiet } }).train()).rejects.toThrow(/tokenizer/);
    m.dispose();
  });
});
