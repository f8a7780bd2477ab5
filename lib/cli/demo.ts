/**
 * demo.ts — `peftkit demo`: the main job on the built-in default.
 *
 * Fine-tunes the shipped base model (models/wordnet-llama, pretrained by peftkit on WordNet glosses)
 * with QLoRA — NF4 base, LoRA on all linear layers, PagedAdamW, warmup + cosine — on the
 * "Define: <word>" → gloss task, and shows what changed:
 *   - held-out metrics before and after (exact match, token F1, ROUGE-L) on words the base model
 *     never saw defined,
 *   - perplexity on held-out pretraining text before and after (the catastrophic-forgetting check),
 *   - a few generations side by side,
 *   - where the PEFT adapter, metrics log and HTML report were written.
 * Every input can be replaced: --model (any HF folder with a chat template), --data / --eval
 * (JSONL chat, prompt/completion, alpaca or text rows), --method, --steps ... (`--help`).
 */
import * as fs from 'fs';
import * as path from 'path';
import { loadDataset } from '../data/dataset';
import type { Example } from '../data/dataset';
import { perplexity } from '../eval/perplexity';
import { scoreGenerations, GenerationScores } from '../eval/metrics';
import { loadModel } from '../models/load';
import type { CausalLM } from '../models/base';
import { wrapWithLora } from '../peft/lora/model';
import { loadTokenizer, Tokenizer } from '../tokenizer/tokenizer';
import { Trainer } from '../train/trainer';
import { noGrad } from '../tensor/autograd';
import { parseFlags } from './train';

const ROOT = path.resolve(__dirname, '..', '..');

export const DEMO_USAGE = `usage: peftkit demo [options]      (npm run demo)

Fine-tunes a model with an adapter and reports held-out quality and forgetting before/after.
  --model DIR         HF model folder with a chat template (default: the shipped models/wordnet-llama)
  --data FILE         training rows, JSONL/JSON/CSV (default: data/wordnet/define-train.jsonl)
  --eval FILE         held-out rows with a reference answer (default: data/wordnet/define-known.jsonl)
  --ppl-text FILE     text for the perplexity / forgetting check (default: data/wordnet/pretrain-heldout.txt)
  --method NAME       qlora (default: NF4 base + LoRA), lora, dora, full
  --steps N           optimizer steps (default 300)
  --batch N           examples per step (default 16)
  --lr X              peak learning rate (default 2e-3)
  --r N, --alpha N    LoRA rank and alpha (default 16, 32)
  --eval-count N      held-out examples scored (default 100)
  --samples N         generations shown side by side (default 5)
  --output DIR        output folder (default: out/demo)
  --seed N            seed (default 42)`;

interface DemoOptions {
  model: string; data: string; eval: string; pplText: string; method: 'qlora' | 'lora' | 'dora' | 'full';
  steps: number; batch: number; lr: number; r: number; alpha: number; evalCount: number; samples: number; output: string; seed: number;
}

function num(v: unknown, name: string, dflt: number, integer = true): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isFinite(n) || (integer && !Number.isInteger(n)) || n <= 0) throw new Error(`--${name}: expected a positive ${integer ? 'integer' : 'number'}, got ${JSON.stringify(v)}`);
  return n;
}

function resolveOptions(flags: Record<string, unknown>): DemoOptions {
  const known = new Set(['model', 'data', 'eval', 'pplText', 'method', 'steps', 'batch', 'lr', 'r', 'alpha', 'evalCount', 'samples', 'output', 'seed', 'help']);
  const kebab = (k: string) => k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());
  for (const k of Object.keys(flags)) if (!known.has(k)) throw new Error(`unknown option --${kebab(k)}`);
  const method = String(flags.method ?? 'qlora');
  if (!['qlora', 'lora', 'dora', 'full'].includes(method)) throw new Error(`--method: expected qlora, lora, dora or full, got '${method}'`);
  const file = (v: unknown, dflt: string, name: string): string => {
    const p = path.resolve(String(v ?? dflt));
    if (!fs.existsSync(p)) throw new Error(`--${name}: ${p} does not exist`);
    return p;
  };
  return {
    model: file(flags.model, path.join(ROOT, 'models', 'wordnet-llama'), 'model'),
    data: file(flags.data, path.join(ROOT, 'data', 'wordnet', 'define-train.jsonl'), 'data'),
    eval: file(flags.eval, path.join(ROOT, 'data', 'wordnet', 'define-known.jsonl'), 'eval'),
    pplText: file(flags.pplText, path.join(ROOT, 'data', 'wordnet', 'pretrain-heldout.txt'), 'ppl-text'),
    method: method as DemoOptions['method'],
    steps: num(flags.steps, 'steps', 300), batch: num(flags.batch, 'batch', 16), lr: num(flags.lr, 'lr', 2e-3, false),
    r: num(flags.r, 'r', 16), alpha: num(flags.alpha, 'alpha', 32, false), evalCount: num(flags.evalCount, 'eval-count', 100),
    samples: num(flags.samples, 'samples', 5), output: path.resolve(String(flags.output ?? 'out/demo')), seed: num(flags.seed, 'seed', 42),
  };
}

/** Prompt messages and reference answer of an eval row (chat: last assistant turn is the answer). */
function promptAndAnswer(e: Example): { messages: { role: string; content: string }[]; answer: string } {
  const row = e as unknown as Record<string, unknown>;
  if (Array.isArray(row.messages)) {
    const msgs = row.messages as { role: string; content: string }[];
    const last = msgs.length - 1;
    if (last < 1 || msgs[last].role !== 'assistant') throw new Error('eval rows in chat format must end with an assistant message (the reference)');
    return { messages: msgs.slice(0, last), answer: String(msgs[last].content) };
  }
  if (typeof row.prompt === 'string' && typeof row.completion === 'string') return { messages: [{ role: 'user', content: row.prompt }], answer: row.completion };
  if (typeof row.instruction === 'string' && typeof row.output === 'string') {
    const input = typeof row.input === 'string' && row.input ? `\n\n${row.input}` : '';
    return { messages: [{ role: 'user', content: row.instruction + input }], answer: row.output };
  }
  throw new Error('eval rows need a reference answer: chat, {prompt, completion} or {instruction, output}');
}

/** Greedy answers for each prompt, batched with left padding. */
async function answer(model: CausalLM, tok: Tokenizer, prompts: { role: string; content: string }[][], maxNewTokens: number): Promise<string[]> {
  const out: string[] = [];
  const stopId = tok.tokenToId('<|im_end|>');
  const eos = [stopId, tok.tokenToId('<|endoftext|>')].filter((x): x is number => typeof x === 'number');
  for (let i = 0; i < prompts.length; i += 16) {
    const ids = prompts.slice(i, i + 16).map((m) => tok.applyChatTemplate(m, { addGenerationPrompt: true }));
    const T = Math.max(...ids.map((r) => r.length));
    const pad = eos[0] ?? 0;
    const input = ids.map((r) => [...new Array(T - r.length).fill(pad), ...r]);
    const mask = ids.map((r) => [...new Array(T - r.length).fill(0), ...new Array(r.length).fill(1)]);
    // Greedy with a mild repetition penalty (HF's CTRL-style): a small model otherwise loops on a phrase.
    const gen = await noGrad(() => model.generate(input, { maxNewTokens, attentionMask: mask, eosTokenId: eos, padTokenId: pad, repetitionPenalty: 1.3 }));
    for (const row of gen) {
      const newTokens = row.slice(T);
      const end = newTokens.findIndex((t) => eos.includes(t));
      out.push(tok.decode(end >= 0 ? newTokens.slice(0, end) : newTokens, { skipSpecialTokens: true }).trim());
    }
  }
  return out;
}

const pct = (x: number) => `${(100 * x).toFixed(1)}%`;

export async function runDemo(argv: string[], out: (s: string) => void, err: (s: string) => void): Promise<number> {
  let opts: DemoOptions;
  try {
    const { flags } = parseFlags(argv, new Set(['help']));
    if (flags.help) { out(DEMO_USAGE); return 0; }
    opts = resolveOptions(flags);
  } catch (e) {
    err(`peftkit demo: ${(e as Error).message}\n${DEMO_USAGE}`);
    return 2;
  }
  const t0 = Date.now();
  out(`peftkit demo — ${opts.method.toUpperCase()} fine-tuning of ${path.relative(process.cwd(), opts.model) || opts.model}`);
  const tok = await loadTokenizer(opts.model);
  const model = await loadModel(opts.model, opts.method === 'qlora' ? { quantize: 'nf4' } : {});
  const train = loadDataset(opts.data, { format: 'auto' });
  const evalRows = loadDataset(opts.eval, { format: "auto" }).examples.slice(0, opts.evalCount).map((r: Example) => promptAndAnswer(r));
  const pplTexts = fs.readFileSync(opts.pplText, 'utf8').split('\n').filter((l) => l.trim()).slice(0, 400);
  out(`data: ${train.length} training rows, ${evalRows.length} held-out prompts, ${pplTexts.length} lines for perplexity`);

  const prompts = evalRows.map((e) => e.messages);
  const refs = evalRows.map((e) => e.answer);
  const maxNew = 32;
  out('\nbefore fine-tuning: generating held-out answers and measuring perplexity ...');
  const before = await answer(model, tok, prompts, maxNew);
  const sBefore = scoreGenerations(before, refs);
  const pBefore = perplexity(model, tok, pplTexts, { maxLength: 128 });

  // Adapter
  const trainable = opts.method === 'full'
    ? model
    : wrapWithLora(model, { r: opts.r, alpha: opts.alpha, dropout: 0.05, targetModules: 'all-linear', useDora: opts.method === 'dora' });
  if (opts.method === 'full') { for (const p of model.parameters()) p.requiresGrad_(true); }
  else out((trainable as ReturnType<typeof wrapWithLora>).printTrainableParameters({ silent: true }));

  const trainer = new Trainer({
    model: trainable as never, tokenizer: tok as never, trainDataset: train as never,
    args: {
      outputDir: opts.output, maxSteps: opts.steps, batchSize: opts.batch, lr: opts.lr, scheduler: 'cosine', warmupRatio: 0.05,
      minLrRatio: 0.1, optim: opts.method === 'full' ? 'adamw' : 'paged_adamw', logSteps: 10, saveSteps: 0, seed: opts.seed,
      maxLength: 96, samplePrompts: prompts.slice(0, 3).map((m) => tok.applyChatTemplate(m, { addGenerationPrompt: true, tokenize: false })),
      sampleMaxNewTokens: maxNew,
    },
    // The Trainer draws a progress bar on a TTY; elsewhere (CI, pipes) print a line every 50 steps.
    callbacks: process.stdout.isTTY ? [] : [{
      onLog: (r) => {
        if (r.kind === 'train' && (r.step % 50 === 0 || r.step === opts.steps)) {
          const lr = typeof r.lr === 'number' ? r.lr.toExponential(2) : '';
          const tps = typeof r.tokensPerSec === 'number' ? Math.round(r.tokensPerSec) : '';
          out(`  step ${String(r.step).padStart(4)}/${opts.steps}  loss ${Number(r.loss).toFixed(4)}  lr ${lr}  ${tps} tokens/s`);
        }
      },
    }],
  });
  out(`\ntraining: ${opts.steps} steps of ${opts.batch} examples, lr ${opts.lr} (warmup + cosine), ${opts.method === 'full' ? 'AdamW' : 'PagedAdamW'}`);
  const result = await trainer.train();

  out('\nafter fine-tuning: generating held-out answers and measuring perplexity ...');
  const after = await answer(trainable as unknown as CausalLM, tok, prompts, maxNew);
  const sAfter = scoreGenerations(after, refs);
  const pAfter = perplexity(trainable as unknown as PerplexityLike as never, tok, pplTexts, { maxLength: 128 });

  const row = (name: string, a: number, b: number, f: (x: number) => string) => `  ${name.padEnd(26)} ${f(a).padStart(9)} ${f(b).padStart(9)}   ${b >= a ? '+' : ''}${f(b - a)}`;
  out(`\nheld-out prompts (${sBefore.count}, none in the training data)         before     after   change`);
  out(row('exact match', sBefore.exactMatch, sAfter.exactMatch, pct));
  out(row('token F1', sBefore.tokenF1, sAfter.tokenF1, pct));
  out(row('ROUGE-L', sBefore.rougeL, sAfter.rougeL, pct));
  out(row('perplexity (pretrain text)', pBefore.perplexity, pAfter.perplexity, (x) => x.toFixed(2)));
  const forgetting = (pAfter.perplexity / pBefore.perplexity - 1) * 100;
  out(`  forgetting check: held-out pretraining perplexity ${forgetting >= 0 ? 'rose' : 'fell'} by ${Math.abs(forgetting).toFixed(1)}%`);
  out('\nsamples (held-out prompts):');
  for (let i = 0; i < Math.min(opts.samples, evalRows.length); i++) {
    out(`  ${evalRows[i].messages[evalRows[i].messages.length - 1].content}`);
    out(`    reference: ${refs[i]}`);
    out(`    before:    ${before[i] || '(empty)'}`);
    out(`    after:     ${after[i] || '(empty)'}`);
  }
  const summary = { method: opts.method, steps: result.globalStep, trainLoss: result.trainLoss, tokensPerSecond: result.tokensPerSecond,
    before: { ...sBefore, perplexity: pBefore.perplexity }, after: { ...sAfter, perplexity: pAfter.perplexity }, seconds: (Date.now() - t0) / 1000 };
  fs.writeFileSync(path.join(opts.output, 'demo-summary.json'), JSON.stringify(summary, null, 2));
  out(`\nadapter:  ${path.join(opts.output, 'adapter_config.json')} + adapter_model.safetensors (PEFT format)`);
  out(`report:   ${path.join(opts.output, 'report.html')}`);
  out(`metrics:  ${path.join(opts.output, 'metrics.jsonl')}, ${path.join(opts.output, 'demo-summary.json')}`);
  out(`done in ${summary.seconds.toFixed(0)} s`);
  return 0;
}

type PerplexityLike = Parameters<typeof perplexity>[0];
export type { GenerationScores };
