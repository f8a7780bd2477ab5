/**
 * merge.ts — `peftkit merge --model DIR --adapter DIR --out DIR [--dtype f32|bf16|f16]`: load the
 * base model, apply the PEFT adapter, merge it into the weights (PEFT's merge_and_unload) and
 * write a plain HuggingFace model folder: model.safetensors (sharded above 5 GB), config.json,
 * generation_config.json and the tokenizer files of the base folder.
 */
import * as fs from 'fs';
import * as path from 'path';
import { saveCheckpoint } from '../io/safetensors';
import { loadModel } from '../models/load';
import { native } from '../native';
import { Tensor } from '../tensor/tensor';
import { parseFlags } from './train';

export const MERGE_USAGE = `usage: peftkit merge --model DIR --adapter DIR --out DIR [--dtype f32|bf16|f16]
  merges a PEFT adapter into the base weights and writes a standalone HF model folder`;

const COPY_FILES = ['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json',
  'chat_template.jinja', 'tokenizer.model', 'vocab.json', 'merges.txt'];

export async function runMerge(argv: string[], out: (s: string) => void, err: (s: string) => void): Promise<number> {
  let model: string, adapter: string, dest: string, dtype: string | undefined;
  try {
    const { positional, flags } = parseFlags(argv, new Set(['help']));
    if (flags.help) { out(MERGE_USAGE); return 0; }
    for (const k of Object.keys(flags)) if (!['model', 'adapter', 'out', 'output', 'dtype'].includes(k)) throw new Error(`unknown option --${k}`);
    if (positional.length) throw new Error(`unexpected argument ${positional[0]}`);
    if (typeof flags.model !== 'string' || typeof flags.adapter !== 'string' || typeof (flags.out ?? flags.output) !== 'string') {
      throw new Error('--model, --adapter and --out are required');
    }
    model = path.resolve(flags.model); adapter = path.resolve(flags.adapter); dest = path.resolve(String(flags.out ?? flags.output));
    dtype = flags.dtype as string | undefined;
    if (dtype !== undefined && !['f32', 'bf16', 'f16'].includes(dtype)) throw new Error(`--dtype must be f32, bf16 or f16, got ${dtype}`);
    if (dest === model) throw new Error('--out must differ from --model (the base folder is not overwritten)');
  } catch (e) {
    err(`peftkit merge: ${(e as Error).message}\n${MERGE_USAGE}`);
    return 2;
  }
  try {
    const { loadAdapter } = await import('../peft');
    const base = await loadModel(model);
    const peft = await loadAdapter(base, adapter);
    const merged = peft.mergeAndUnload();
    const sd = merged.stateDict();
    const owned: Tensor[] = [];
    const tensors = new Map<string, Tensor>();
    for (const [n, t] of sd) {
      if (dtype && t.dtype !== dtype && (t.dtype === 'f32' || t.dtype === 'bf16' || t.dtype === 'f16')) {
        const c = new Tensor(native.cast(t.native, dtype)); owned.push(c); tensors.set(n, c);
      } else if (!t.native.isContiguous) {
        const c = new Tensor(native.contiguous(t.native)); owned.push(c); tensors.set(n, c);
      } else tensors.set(n, t);
    }
    let files: string[];
    try { files = saveCheckpoint(dest, tensors); } finally { for (const t of owned) t.dispose(); }
    for (const f of COPY_FILES) {
      const src = path.join(model, f);
      if (!fs.existsSync(src)) continue;
      if (f === 'config.json' && dtype) {
        const cfg = JSON.parse(fs.readFileSync(src, 'utf8'));
        const name = { f32: 'float32', bf16: 'bfloat16', f16: 'float16' }[dtype];
        if ('torch_dtype' in cfg) cfg.torch_dtype = name; else cfg.dtype = name;
        fs.writeFileSync(path.join(dest, f), JSON.stringify(cfg, null, 2) + '\n');
      } else {
        fs.copyFileSync(src, path.join(dest, f));
      }
    }
    merged.dispose();
    out(`merged ${adapter} into ${model}: ${files.map((f) => path.basename(f)).join(', ')} in ${dest}`);
    return 0;
  } catch (e) {
    err(`peftkit merge: ${(e as Error).message}`);
    return 1;
  }
}
