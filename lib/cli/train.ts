/**
 * train.ts — `peftkit train <config.json|config.yaml> [--flags]`: the whole fine-tuning job.
 *
 *   load the model (optionally NF4) → wrap it with an adapter (or train every weight) → load and
 *   tokenize the data → Trainer.train (checkpoints, metrics.jsonl, report.html; Ctrl-C stops
 *   cleanly with a checkpoint) → evaluate → save the PEFT adapter into outputDir.
 *
 * Config (JSON, or the YAML subset below); every key is optional except model, data.train and
 * outputDir, and flags override it (--model, --data, --eval, --output, --resume, --r, --alpha,
 * --adapter, --nf4, and any training argument in kebab-case: --max-steps 100 --lr 2e-4 ...):
 *
 *   model: ./models/llama          # HF model folder
 *   tokenizer: ./models/llama      # default: the model folder
 *   quantize: nf4                  # QLoRA base weights (needs loadModel NF4 support)
 *   dtype: f32                     # f32 | bf16 | f16 | auto
 *   device: cpu                    # cpu | cuda (a CUDA build of peftkit and a GPU)
 *   adapter:                       # type lora (default) | dora | none (full fine-tuning) | ia3 | ...
 *     type: lora
 *     r: 16
 *     alpha: 32
 *     dropout: 0.05
 *     targetModules: all-linear
 *   data:
 *     train: train.jsonl           # JSONL / JSON / CSV: text, prompt+completion, alpaca or chat rows
 *     eval: eval.jsonl             # or evalSplit: 0.1
 *     format: auto
 *   training:                      # TrainingArgs (see docs/trainer.md)
 *     outputDir: out/run1
 *     epochs: 3
 *     batchSize: 8
 *     lr: 2.0e-4
 *
 * YAML support is a subset: nested maps by indentation (spaces), `key: value` scalars (numbers,
 * true/false, null, quoted or bare strings), `#` comments, inline lists `[a, b]` and block lists
 * of scalars (`- item`). Anchors, multi-line strings and flow maps are not supported (use JSON).
 */
import * as fs from 'fs';
import * as path from 'path';
import { loadDataset } from '../data/dataset';
import { loadModel } from '../models/load';
import type { CausalLM } from '../models/base';
import { loadTokenizer } from '../tokenizer/tokenizer';
import { Trainer, TrainingArgs } from '../train/trainer';
import type { TrainableModel } from '../train/trainer';

// ------------------------------------------------------------------ YAML subset

type Yaml = null | boolean | number | string | Yaml[] | { [k: string]: Yaml };

function scalar(raw: string, where: string): Yaml {
  const v = raw.trim();
  if (v === '' || v === '~' || v === 'null' || v === 'Null' || v === 'NULL') return null;
  if (/^(true|True|TRUE|yes)$/.test(v)) return true;
  if (/^(false|False|FALSE|no)$/.test(v)) return false;
  if (/^[-+]?(\d[\d_]*)?(\.\d+)?([eE][-+]?\d+)?$/.test(v) && /\d/.test(v)) return Number(v.replace(/_/g, ''));
  if (/^[-+]?\.(inf|Inf|INF)$/.test(v)) return v.startsWith('-') ? -Infinity : Infinity;
  if (v.startsWith('"')) {
    if (!v.endsWith('"') || v.length < 2) throw new Error(`${where}: unterminated string ${v}`);
    return JSON.parse(v) as string;
  }
  if (v.startsWith("'")) {
    if (!v.endsWith("'") || v.length < 2) throw new Error(`${where}: unterminated string ${v}`);
    return v.slice(1, -1).replace(/''/g, "'");
  }
  if (v.startsWith('[')) {
    if (!v.endsWith(']')) throw new Error(`${where}: unterminated list ${v}`);
    const inner = v.slice(1, -1).trim();
    if (!inner) return [];
    return splitTopLevel(inner).map((e) => scalar(e, where));
  }
  if (v.startsWith('{') || v.startsWith('&') || v.startsWith('*') || v === '|' || v === '>' || v.startsWith('!')) {
    throw new Error(`${where}: '${v}' uses YAML features peftkit's config reader does not support (flow maps, anchors, block scalars, tags); use JSON`);
  }
  return v;
}

function splitTopLevel(s: string): string[] {
  const out: string[] = [];
  let depth = 0, q: string | null = null, cur = '';
  for (const c of s) {
    if (q) { cur += c; if (c === q) q = null; continue; }
    if (c === '"' || c === "'") { q = c; cur += c; continue; }
    if (c === '[') depth++;
    if (c === ']') depth--;
    if (c === ',' && depth === 0) { out.push(cur); cur = ''; continue; }
    cur += c;
  }
  out.push(cur);
  return out;
}

function stripComment(line: string): string {
  let q: string | null = null;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (q) { if (c === q) q = null; continue; }
    if (c === '"' || c === "'") { q = c; continue; }
    if (c === '#' && (i === 0 || /\s/.test(line[i - 1]))) return line.slice(0, i);
  }
  return line;
}

/** Parse the YAML subset described in the file comment. */
export function parseYaml(text: string, file = 'config'): Yaml {
  const lines: { indent: number; text: string; no: number }[] = [];
  text.split(/\r?\n/).forEach((l, i) => {
    if (/^\s*---\s*$/.test(l)) return;
    if (l.includes('\t') && /^\s*\t/.test(l)) throw new Error(`${file}:${i + 1}: tabs are not allowed for indentation`);
    const t = stripComment(l).replace(/\s+$/, '');
    if (t.trim() === '') return;
    lines.push({ indent: t.length - t.trimStart().length, text: t.trim(), no: i + 1 });
  });
  let pos = 0;
  const block = (indent: number): Yaml => {
    if (pos >= lines.length) return null;
    if (lines[pos].text.startsWith('- ') || lines[pos].text === '-') {
      const arr: Yaml[] = [];
      while (pos < lines.length && lines[pos].indent === indent && (lines[pos].text.startsWith('- ') || lines[pos].text === '-')) {
        const l = lines[pos];
        const rest = l.text.slice(1).trim();
        if (/^[^"'[\]{}]+:(\s|$)/.test(rest)) throw new Error(`${file}:${l.no}: lists of maps are not supported by the YAML subset; use JSON`);
        pos++;
        arr.push(scalar(rest, `${file}:${l.no}`));
      }
      return arr;
    }
    const obj: { [k: string]: Yaml } = {};
    while (pos < lines.length && lines[pos].indent === indent) {
      const l = lines[pos];
      const m = /^("[^"]*"|'[^']*'|[^:]+?)\s*:(?:\s+(.*))?$/.exec(l.text);
      if (!m) throw new Error(`${file}:${l.no}: expected 'key: value', got '${l.text}'`);
      const key = m[1].replace(/^["']|["']$/g, '');
      if (key in obj) throw new Error(`${file}:${l.no}: duplicate key '${key}'`);
      pos++;
      if (m[2] !== undefined && m[2].trim() !== '') { obj[key] = scalar(m[2], `${file}:${l.no}`); continue; }
      if (pos < lines.length && lines[pos].indent > indent) obj[key] = block(lines[pos].indent);
      else if (pos < lines.length && lines[pos].indent === indent && lines[pos].text.startsWith('- ')) obj[key] = block(indent);
      else obj[key] = null;
    }
    if (pos < lines.length && lines[pos].indent > indent) throw new Error(`${file}:${lines[pos].no}: unexpected indentation`);
    return obj;
  };
  const v = block(lines.length ? lines[0].indent : 0);
  if (pos < lines.length) throw new Error(`${file}:${lines[pos].no}: unexpected indentation`);
  return v;
}

/** Read a config file: .json as JSON, .yaml/.yml with the YAML subset. */
export function readConfigFile(file: string): Record<string, unknown> {
  let text: string;
  try { text = fs.readFileSync(file, 'utf8'); } catch (e) { throw new Error(`cannot read ${file}: ${(e as Error).message}`); }
  let v: unknown;
  if (/\.ya?ml$/i.test(file)) v = parseYaml(text, file);
  else {
    try { v = JSON.parse(text); } catch (e) { throw new Error(`${file} is not valid JSON: ${(e as Error).message}`); }
  }
  if (!v || typeof v !== 'object' || Array.isArray(v)) throw new Error(`${file}: the config must be a map`);
  return v as Record<string, unknown>;
}

// ------------------------------------------------------------------ flags

const camel = (s: string) => s.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());

/** Parse `--key value` / `--flag` / `--no-flag` pairs (values as YAML scalars). */
export function parseFlags(argv: string[], booleans: Set<string>): { positional: string[]; flags: Record<string, unknown> } {
  const positional: string[] = [];
  const flags: Record<string, unknown> = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) { positional.push(a); continue; }
    let key = a.slice(2), val: unknown;
    const eq = key.indexOf('=');
    if (eq >= 0) { val = scalar(key.slice(eq + 1), a); key = key.slice(0, eq); } else if (key.startsWith('no-') && booleans.has(camel(key.slice(3)))) {
      key = key.slice(3); val = false;
    } else if (booleans.has(camel(key))) {
      val = true;
    } else {
      if (i + 1 >= argv.length) throw new Error(`option --${key} needs a value`);
      const raw = argv[++i];
      val = scalar(raw, a);
      if (typeof val !== 'string' && /^0\d/.test(raw)) val = raw;
    }
    flags[camel(key)] = val;
  }
  return { positional, flags };
}

// ------------------------------------------------------------------ the job

const TRAIN_BOOLEANS = new Set(['nf4', 'bf16', 'gradientCheckpointing', 'offloadActivations', 'shuffle', 'groupByLength', 'packing', 'progress', 'report', 'json', 'help']);
const TRAINING_KEYS = new Set<keyof TrainingArgs>(['outputDir', 'epochs', 'maxSteps', 'batchSize', 'gradAccumSteps', 'lr', 'scheduler', 'warmupRatio',
  'warmupSteps', 'minLrRatio', 'weightDecay', 'maxGradNorm', 'evalSteps', 'saveSteps', 'saveTotalLimit', 'logSteps', 'seed', 'bf16',
  'gradientCheckpointing', 'offloadActivations', 'earlyStopping', 'optim', 'loraPlusRatio', 'adamBetas', 'adamEps', 'maxNonFiniteSteps', 'shuffle', 'groupByLength',
  'maxLength', 'packing', 'evalBatchSize', 'progress', 'samplePrompts', 'sampleMaxNewTokens', 'report', 'handleSigint', 'saveFinal', 'tokenize']);

export const TRAIN_USAGE = `usage: peftkit train [config.json|config.yaml] [options]
  --model DIR            HF model folder            --tokenizer DIR   (default: the model folder)
  --data FILE            training data (JSONL/JSON/CSV: text, prompt/completion, alpaca, chat)
  --eval FILE            evaluation data            --eval-split F    hold out a fraction of --data
  --output DIR           output folder (checkpoints, metrics.jsonl, report.html, adapter)
  --adapter TYPE         lora (default), dora, none (full fine-tuning)
  --r N --alpha A --dropout P --target-modules all-linear|q_proj,v_proj
  --nf4                  quantize the base weights to NF4 (QLoRA)
  --device cpu|cuda      where the model trains (cuda: a CUDA build and a GPU; add --offload-activations
                         to --gradient-checkpointing to keep layer inputs in host memory)
  --resume DIR|latest    resume from a checkpoint
  --json                 print the result as JSON
  any training argument in kebab-case: --epochs 3 --max-steps 100 --batch-size 8 --grad-accum-steps 4
  --lr 2e-4 --scheduler cosine --warmup-ratio 0.03 --save-steps 100 --eval-steps 50 --gradient-checkpointing ...`;

export interface TrainJob {
  model: string;
  tokenizer?: string;
  quantize?: 'nf4' | null;
  dtype?: 'f32' | 'bf16' | 'f16' | 'auto';
  device?: 'cpu' | 'cuda';
  adapter: Record<string, unknown> | null;
  data: { train: string; eval?: string; evalSplit?: number; format?: string; skipInvalid?: boolean };
  training: TrainingArgs;
  resume?: string;
}

/** Merge a config object and flags into a job description (paths resolved against the config's folder). */
export function resolveJob(cfg: Record<string, unknown>, flags: Record<string, unknown>, baseDir: string): TrainJob {
  const rel = (p: unknown, what: string): string => {
    if (typeof p !== 'string' || !p) throw new Error(`${what} must be a path`);
    return path.resolve(baseDir, p);
  };
  const cwdRel = (p: unknown, what: string): string => {
    if (typeof p !== 'string' || !p) throw new Error(`${what} must be a path`);
    return path.resolve(p);
  };
  const data = { ...((cfg.data as Record<string, unknown>) ?? {}) };
  const training: Record<string, unknown> = { ...((cfg.training as Record<string, unknown>) ?? {}) };
  for (const [k, v] of Object.entries(cfg)) if (TRAINING_KEYS.has(k as keyof TrainingArgs)) training[k] = v;
  let adapter: Record<string, unknown> | null = cfg.adapter === null || cfg.adapter === 'none' ? null
    : { type: 'lora', ...((typeof cfg.adapter === 'string' ? { type: cfg.adapter } : cfg.adapter as Record<string, unknown>) ?? {}) };
  let model = cfg.model !== undefined ? rel(cfg.model, 'model') : undefined;
  let tokenizer = cfg.tokenizer !== undefined ? rel(cfg.tokenizer, 'tokenizer') : undefined;
  let quantize = (cfg.quantize ?? null) as TrainJob['quantize'];
  let resume = typeof cfg.resume === 'string' ? (cfg.resume === 'latest' ? 'latest' : rel(cfg.resume, 'resume')) : undefined;
  let train = data.train !== undefined ? rel(data.train, 'data.train') : undefined;
  let evalFile = data.eval !== undefined && data.eval !== null ? rel(data.eval, 'data.eval') : undefined;
  if (training.outputDir !== undefined) training.outputDir = rel(training.outputDir, 'outputDir');
  for (const [k, v] of Object.entries(flags)) {
    switch (k) {
      case 'model': model = cwdRel(v, '--model'); break;
      case 'tokenizer': tokenizer = cwdRel(v, '--tokenizer'); break;
      case 'data': train = cwdRel(v, '--data'); break;
      case 'eval': evalFile = cwdRel(v, '--eval'); break;
      case 'evalSplit': data.evalSplit = v; break;
      case 'format': data.format = v; break;
      case 'output': case 'outputDir': training.outputDir = cwdRel(v, '--output'); break;
      case 'nf4': quantize = v ? 'nf4' : null; break;
      case 'quantize': quantize = v as TrainJob['quantize']; break;
      case 'dtype': cfg.dtype = v; break;
      case 'device': cfg.device = v; break;
      case 'resume': resume = v === 'latest' ? 'latest' : cwdRel(v, '--resume'); break;
      case 'adapter': adapter = v === 'none' || v === 'full' ? null : { ...(adapter ?? {}), type: v }; break;
      case 'r': case 'alpha': case 'dropout': case 'useRslora': case 'useDora': case 'modulesToSave':
        adapter = { type: 'lora', ...(adapter ?? {}), [k]: v }; break;
      case 'targetModules':
        adapter = { type: 'lora', ...(adapter ?? {}), [k]: typeof v === 'string' && v.includes(',') ? v.split(',').map((s) => s.trim()) : v }; break;
      case 'json': case 'help': break;
      default:
        if (!TRAINING_KEYS.has(k as keyof TrainingArgs)) throw new Error(`unknown option --${k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase())}`);
        training[k] = v;
    }
  }
  if (!model) throw new Error('no model: set "model" in the config or pass --model DIR');
  if (!train) throw new Error('no training data: set "data.train" in the config or pass --data FILE');
  if (!training.outputDir) throw new Error('no output folder: set "training.outputDir" in the config or pass --output DIR');
  if (quantize !== null && quantize !== undefined && quantize !== 'nf4') throw new Error(`quantize must be 'nf4' or null, got ${JSON.stringify(quantize)}`);
  const device = cfg.device ?? 'cpu';
  if (device !== 'cpu' && device !== 'cuda') throw new Error(`device must be 'cpu' or 'cuda', got ${JSON.stringify(device)}`);
  return {
    model, tokenizer, quantize, dtype: cfg.dtype as TrainJob['dtype'], device, adapter,
    data: { train, eval: evalFile, evalSplit: data.evalSplit as number | undefined, format: data.format as string | undefined, skipInvalid: data.skipInvalid as boolean | undefined },
    training: training as unknown as TrainingArgs, resume,
  };
}

/** Wrap `model` with the adapter of `spec` (null: full fine-tuning, every weight trainable). */
export async function applyAdapter(model: CausalLM, spec: Record<string, unknown> | null): Promise<TrainableModel> {
  if (spec === null) {
    for (const [, t] of model.namedParameters()) t.requiresGrad_(true);
    return model as unknown as TrainableModel;
  }
  const { type = 'lora', ...opts } = spec as { type?: string };
  const peft = await import('../peft') as unknown as Record<string, unknown>;
  const t = String(type).toLowerCase();
  if (t === 'lora' || t === 'dora') {
    const wrap = peft.wrapWithLora as (m: CausalLM, c: Record<string, unknown>) => TrainableModel;
    return wrap(model, { targetModules: 'all-linear', ...opts, ...(t === 'dora' ? { useDora: true } : {}) });
  }
  const fnName = 'wrapWith' + t.split(/[_-]/).map((p) => (p === 'ia3' ? 'Ia3' : p[0].toUpperCase() + p.slice(1))).join('');
  const fn = peft[fnName] as ((m: CausalLM, c: Record<string, unknown>) => TrainableModel) | undefined;
  if (typeof fn !== 'function') throw new Error(`adapter type '${type}' is not available (no ${fnName} in peftkit's peft module); use lora, dora or none`);
  return fn(model, opts);
}

/** Load the model, honouring quantize: 'nf4' (a clear error when this build cannot). */
export async function loadBaseModel(dir: string, opts: { quantize?: 'nf4' | null; dtype?: TrainJob['dtype']; device?: TrainJob['device'] }): Promise<CausalLM> {
  const lo: Record<string, unknown> = {};
  if (opts.dtype) lo.dtype = opts.dtype;
  if (opts.device && opts.device !== 'cpu') lo.device = opts.device;
  if (opts.quantize === 'nf4') lo.quantize = 'nf4';
  const model = await loadModel(dir, lo as never);
  if (opts.quantize === 'nf4' && !model.namedModules().some(([, m]) => m.constructor.name === 'Linear4bit')) {
    model.dispose();
    throw new Error("NF4 quantization is not available: this peftkit's loadModel(dir, { quantize: 'nf4' }) does not quantize yet. " +
      'Train without --nf4 (f32 or --dtype bf16 base weights).');
  }
  return model;
}

/** Run a training job; returns the exit code. */
export async function runTrain(argv: string[], out: (s: string) => void, err: (s: string) => void): Promise<number> {
  let job: TrainJob;
  let json = false;
  try {
    const { positional, flags } = parseFlags(argv, TRAIN_BOOLEANS);
    if (flags.help) { out(TRAIN_USAGE); return 0; }
    json = !!flags.json;
    if (positional.length > 1) throw new Error(`expected at most one config file, got ${positional.join(' ')}`);
    const cfg = positional.length ? readConfigFile(positional[0]) : {};
    job = resolveJob(cfg, flags, positional.length ? path.dirname(path.resolve(positional[0])) : process.cwd());
  } catch (e) {
    err(`peftkit train: ${(e as Error).message}\n${TRAIN_USAGE}`);
    return 2;
  }
  try {
    const t0 = Date.now();
    const say = (s: string) => { if (!json) out(s); };
    say(`loading ${job.model}${job.quantize ? ' (NF4)' : ''}${job.device === 'cuda' ? ' on cuda' : ''}`);
    const base = await loadBaseModel(job.model, { quantize: job.quantize, dtype: job.dtype, device: job.device });
    const tokenizer = await loadTokenizer(job.tokenizer ?? job.model);
    const model = await applyAdapter(base, job.adapter);
    const p = model as unknown as { printTrainableParameters?: (o: { silent: boolean }) => string };
    if (typeof p.printTrainableParameters === 'function') say(p.printTrainableParameters({ silent: true }));
    const fmt = (job.data.format ?? 'auto') as 'auto';
    let train = loadDataset(job.data.train, { format: fmt, skipInvalid: job.data.skipInvalid });
    if (train.skipped) say(`skipped ${train.skipped} malformed rows of ${job.data.train}`);
    let evalSet = job.data.eval ? loadDataset(job.data.eval, { format: fmt, skipInvalid: job.data.skipInvalid }) : null;
    if (!evalSet && job.data.evalSplit) {
      const s = train.split(job.data.evalSplit, job.training.seed ?? 42);
      train = s.train; evalSet = s.test;
    }
    say(`data: ${train.length} training examples${evalSet ? `, ${evalSet.length} evaluation examples` : ''} (${train.format})`);
    const trainer = new Trainer({ model, tokenizer, trainDataset: train, evalDataset: evalSet, args: job.training });
    const result = await trainer.train({ resumeFrom: job.resume });
    const summary = {
      outputDir: job.training.outputDir, steps: result.globalStep, stopReason: result.stopReason, trainLoss: result.trainLoss,
      evalLoss: result.evalMetrics?.evalLoss ?? null, evalAccuracy: result.evalMetrics?.evalAccuracy ?? null,
      tokensPerSecond: result.tokensPerSecond, checkpoint: result.checkpoint, seconds: (Date.now() - t0) / 1000,
    };
    if (json) out(JSON.stringify(summary));
    else {
      out(`done: ${result.globalStep} steps (${result.stopReason}), train loss ${result.trainLoss.toFixed(4)}` +
        (result.evalMetrics ? `, eval loss ${result.evalMetrics.evalLoss.toFixed(4)}, eval accuracy ${(result.evalMetrics.evalAccuracy * 100).toFixed(1)}%` : '') +
        `, ${result.tokensPerSecond.toFixed(0)} tokens/s`);
      out(result.stopReason === 'aborted'
        ? `stopped early: resume with --resume latest (checkpoint ${result.checkpoint})`
        : `adapter saved to ${job.training.outputDir}; report: ${path.join(job.training.outputDir, 'report.html')}`);
    }
    return 0;
  } catch (e) {
    err(`peftkit train: ${(e as Error).message}`);
    return 1;
  }
}
