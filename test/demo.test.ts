/**
 * `peftkit demo` end to end on the shipped model, shortened (a few steps, a few held-out prompts):
 * it prints the before/after table and samples, writes a PEFT adapter that loads back onto a
 * freshly quantized base, the HTML report and the JSON summary; bad options are refused.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { runDemo } from '../lib/cli/demo';
import { loadModel, loadAdapter } from '../lib';

test('a short QLoRA demo run reports metrics and writes a loadable adapter', async () => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-demo-'));
  const lines: string[] = [];
  const code = await runDemo(['--steps', '6', '--batch', '4', '--eval-count', '4', '--samples', '2', '--output', out],
    (s) => lines.push(s), (s) => lines.push('ERR ' + s));
  const text = lines.join('\n');
  expect(code).toBe(0);
  expect(text).toMatch(/trainable params: [\d,]+ \|\| all params: [\d,]+ \|\| trainable%: [\d.]+/);
  for (const row of ['exact match', 'token F1', 'ROUGE-L', 'perplexity (pretrain text)', 'forgetting check']) expect(text).toContain(row);
  expect(text).toContain('reference:');
  for (const f of ['adapter_config.json', 'adapter_model.safetensors', 'report.html', 'metrics.jsonl', 'demo-summary.json']) {
    expect(fs.existsSync(path.join(out, f))).toBe(true);
  }
  const summary = JSON.parse(fs.readFileSync(path.join(out, 'demo-summary.json'), 'utf8'));
  expect(summary.steps).toBe(6);
  expect(Number.isFinite(summary.trainLoss)).toBe(true);
  expect(summary.before.count).toBe(4);
  expect(summary.before.perplexity).toBeGreaterThan(1);
  const cfg = JSON.parse(fs.readFileSync(path.join(out, 'adapter_config.json'), 'utf8'));
  expect(cfg.peft_type).toBe('LORA');
  expect(cfg.r).toBe(16);
  // the adapter loads onto a freshly quantized base model
  const base = await loadModel(path.join(__dirname, '..', 'models', 'wordnet-llama'), { quantize: 'nf4' });
  const peft = await loadAdapter(base, out);
  expect(peft).toBeDefined();
  fs.rmSync(out, { recursive: true, force: true });
});

test('bad demo options are refused with a usage message', async () => {
  const errs: string[] = [];
  expect(await runDemo(['--method', 'magic'], () => undefined, (s) => errs.push(s))).toBe(2);
  expect(errs.join('\n')).toMatch(/--method: expected qlora, lora, dora or full/);
  errs.length = 0;
  expect(await runDemo(['--steps', '-3'], () => undefined, (s) => errs.push(s))).toBe(2);
  expect(errs.join('\n')).toMatch(/--steps: expected a positive integer/);
  errs.length = 0;
  expect(await runDemo(['--bogus', '1'], () => undefined, (s) => errs.push(s))).toBe(2);
  expect(errs.join('\n')).toMatch(/unknown option --bogus/);
});
