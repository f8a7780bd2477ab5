/**
 * CLI: `peftkit train` (YAML and JSON configs, flags), `peftkit merge`, `peftkit generate`, and
 * the YAML subset reader.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { main, parseYaml } from '../lib/cli';
import { resolveJob } from '../lib/cli/train';
import { loadModel } from '../lib/models';
import { loadAdapter } from '../lib/peft';

const ROOT = path.resolve(__dirname, '..');
const LLAMA = path.join(ROOT, 'test/fixtures/hf/models/llama');
const TOK = path.join(ROOT, 'test/fixtures/hf/tokenizer');

let tmp: string;
beforeAll(() => { tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-cli-')); });
afterAll(() => { fs.rmSync(tmp, { recursive: true, force: true }); });

function capture() {
  const out: string[] = [], err: string[] = [];
  return { out, err, o: (s: string) => { out.push(s); }, e: (s: string) => { err.push(s); } };
}

describe('YAML subset', () => {
  test('maps, scalars, lists, comments', () => {
    const y = parseYaml(`
# a comment
model: ./models/llama   # trailing comment
quantize: null
adapter:
  type: lora
  r: 16
  alpha: 3.2e1
  targetModules: [q_proj, "v_proj"]
data:
  train: 'my file.jsonl'
  tags:
    - a
    - 2
training:
  gradientCheckpointing: true
  lr: 2.0e-4
  name: "x # not a comment"
`);
    expect(y).toEqual({
      model: './models/llama', quantize: null,
      adapter: { type: 'lora', r: 16, alpha: 32, targetModules: ['q_proj', 'v_proj'] },
      data: { train: 'my file.jsonl', tags: ['a', 2] },
      training: { gradientCheckpointing: true, lr: 2e-4, name: 'x # not a comment' },
    });
  });
  test('unsupported features and bad indentation are errors with a line number', () => {
    expect(() => parseYaml('a: &x 1\n')).toThrow(/config:1: .*not support/);
    expect(() => parseYaml('a:\n  b: 1\n c: 2\n')).toThrow(/config:3/);
    expect(() => parseYaml('a: 1\na: 2\n')).toThrow(/duplicate key 'a'/);
    expect(() => parseYaml('a\n')).toThrow(/expected 'key: value'/);
  });
  test('flags override the config; paths resolve against the config folder', () => {
    const job = resolveJob({ model: 'm', data: { train: 't.jsonl' }, training: { outputDir: 'o', lr: 1 } },
      { lr: 0.5, maxSteps: 7, r: 4, targetModules: 'q_proj,v_proj' }, '/base');
    expect(job.model).toBe('/base/m');
    expect(job.data.train).toBe('/base/t.jsonl');
    expect(job.training).toMatchObject({ outputDir: '/base/o', lr: 0.5, maxSteps: 7 });
    expect(job.adapter).toEqual({ type: 'lora', r: 4, targetModules: ['q_proj', 'v_proj'] });
    expect(() => resolveJob({}, { bogus: 1 }, '/')).toThrow(/unknown option --bogus/);
    expect(() => resolveJob({ data: { train: 'x' }, outputDir: 'o' }, {}, '/')).toThrow(/no model/);
    const base = { model: 'm', data: { train: 't.jsonl' }, outputDir: 'o' };
    expect(resolveJob(base, {}, '/').device).toBe('cpu');
    expect(resolveJob({ ...base, device: 'cpu' }, { device: 'cuda', gradientCheckpointing: true, offloadActivations: true }, '/'))
      .toMatchObject({ device: 'cuda', training: { gradientCheckpointing: true, offloadActivations: true } });
    expect(() => resolveJob(base, { device: 'gpu' }, '/')).toThrow(/device must be 'cpu' or 'cuda', got "gpu"/);
  });
});

describe('peftkit train / merge / generate', () => {
  let outDir: string;
  test('train from a YAML config: adapter, metrics, report', async () => {
    const rows = Array.from({ length: 24 }, (_, i) => ({ prompt: `count ${i % 6}:`, completion: ` ${'abc'.repeat(1 + (i % 3))}` }));
    const data = path.join(tmp, 'train.jsonl');
    fs.writeFileSync(data, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
    outDir = path.join(tmp, 'run');
    const cfg = path.join(tmp, 'job.yaml');
    fs.writeFileSync(cfg, `model: ${LLAMA}
tokenizer: ${TOK}
adapter:
  r: 4
  alpha: 8
data:
  train: train.jsonl
  evalSplit: 0.25
training:
  outputDir: run
  batchSize: 6
  lr: 1.0e-2
  logSteps: 2
  saveSteps: 4
  progress: false
`);
    const c = capture();
    const code = await main(['train', cfg, '--max-steps', '6', '--json'], c.o, c.e);
    expect(c.err).toEqual([]);
    expect(code).toBe(0);
    const summary = JSON.parse(c.out[c.out.length - 1]);
    expect(summary).toMatchObject({ steps: 6, stopReason: 'completed' });
    expect(Number.isFinite(summary.evalLoss)).toBe(true);
    for (const f of ['adapter_config.json', 'adapter_model.safetensors', 'metrics.jsonl', 'report.html', 'checkpoint-4', 'checkpoint-6']) {
      expect(fs.existsSync(path.join(outDir, f))).toBe(true);
    }
    const cfgJson = JSON.parse(fs.readFileSync(path.join(outDir, 'adapter_config.json'), 'utf8'));
    expect(cfgJson).toMatchObject({ peft_type: 'LORA', r: 4, lora_alpha: 8 });
  });

  test('train from JSON with flags only, full fine-tuning; usage errors', async () => {
    const c = capture();
    const code = await main(['train', '--model', LLAMA, '--tokenizer', TOK, '--data', path.join(tmp, 'train.jsonl'), '--output', path.join(tmp, 'full'),
      '--adapter', 'none', '--max-steps', '2', '--batch-size', '8', '--no-progress', '--json'], c.o, c.e);
    expect(c.err).toEqual([]);
    expect(code).toBe(0);
    expect(fs.existsSync(path.join(tmp, 'full', 'model.safetensors'))).toBe(true);

    const c2 = capture();
    expect(await main(['train', '--model', LLAMA, '--bogus-flag', '1'], c2.o, c2.e)).toBe(2);
    expect(c2.err.join('\n')).toMatch(/unknown option --bogus-flag/);
    const c3 = capture();
    expect(await main(['train', path.join(tmp, 'missing.json')], c3.o, c3.e)).toBe(2);
    expect(c3.err.join('\n')).toMatch(/cannot read/);
  });

  test('--nf4: a QLoRA run (LoRA over NF4 base weights) trains and saves a PEFT adapter', async () => {
    const c = capture();
    const out = path.join(tmp, 'nf4');
    const code = await main(['train', '--model', LLAMA, '--tokenizer', TOK, '--data', path.join(tmp, 'train.jsonl'), '--output', out,
      '--nf4', '--max-steps', '2', '--no-progress', '--json'], c.o, c.e);
    expect(c.err).toEqual([]);
    expect(code).toBe(0);
    const summary = JSON.parse(c.out[c.out.length - 1]);
    expect(summary).toMatchObject({ steps: 2, stopReason: 'completed' });
    expect(Number.isFinite(summary.trainLoss)).toBe(true);
    expect(fs.existsSync(path.join(out, 'adapter_model.safetensors'))).toBe(true);
    // the adapter loads onto a freshly quantized base (and onto the float model)
    const q = await loadModel(LLAMA, { quantize: 'nf4' });
    const peft = await loadAdapter(q, out);
    expect(peft.model.namedModules().some(([, m]) => m.constructor.name === 'LoraLinear')).toBe(true);
    peft.dispose();
  });

  test('merge writes a standalone model equal to base + adapter; generate runs on both', async () => {
    const merged = path.join(tmp, 'merged');
    const c = capture();
    expect(await main(['merge', '--model', LLAMA, '--adapter', outDir, '--out', merged], c.o, c.e)).toBe(0);
    expect(c.err).toEqual([]);
    const ids = [[5, 9, 33, 100, 7, 8]];
    const peft = await loadAdapter(await loadModel(LLAMA), outDir);
    const a = peft.forward({ inputIds: ids }).logits.toFloat32Array();
    const m = await loadModel(merged);
    const b = m.forward({ inputIds: ids }).logits.toFloat32Array();
    let d = 0;
    for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
    expect(d).toBeLessThan(1e-4);
    // the adapter changed the model: the merged logits differ from the base model's
    const base = await loadModel(LLAMA);
    const z = base.forward({ inputIds: ids }).logits.toFloat32Array();
    let d0 = 0;
    for (let i = 0; i < z.length; i++) d0 = Math.max(d0, Math.abs(z[i] - b[i]));
    expect(d0).toBeGreaterThan(1e-3);

    const g1 = capture();
    expect(await main(['generate', '--model', merged, '--tokenizer', TOK, '--prompt', 'count 1:', '--max-new-tokens', '5', '--json'], g1.o, g1.e)).toBe(0);
    const r1 = JSON.parse(g1.out[0]);
    const g2 = capture();
    expect(await main(['generate', '--model', LLAMA, '--adapter', outDir, '--tokenizer', TOK, '--prompt', 'count 1:', '--max-new-tokens', '5', '--json'], g2.o, g2.e)).toBe(0);
    const r2 = JSON.parse(g2.out[0]);
    expect(r1.tokens).toBeGreaterThan(0);
    expect(r2.completion).toBe(r1.completion);   // greedy: the merged model and base + adapter agree

    const g3 = capture();
    expect(await main(['generate', '--prompt', 'x'], g3.o, g3.e)).toBe(2);
    expect(g3.err.join('\n')).toMatch(/--model DIR is required/);
    const g5 = capture();
    expect(await main(['generate', '--model', LLAMA, '--device', 'gpu', '--prompt', 'x'], g5.o, g5.e)).toBe(2);
    expect(g5.err.join('\n')).toMatch(/--device must be 'cpu' or 'cuda', got "gpu"/);
    const g4 = capture();
    expect(await main(['merge', '--model', LLAMA], g4.o, g4.e)).toBe(2);
    peft.dispose(); m.dispose(); base.dispose();
  });
});
