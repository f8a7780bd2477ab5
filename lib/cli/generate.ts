/**
 * generate.ts — `peftkit generate --model DIR [--adapter DIR] --prompt TEXT [options]`: load a
 * model (plus a PEFT adapter), and stream a completion to stdout. Without --prompt the prompt is
 * read from stdin. --chat wraps the prompt as a user message in the tokenizer's chat template.
 */
import * as fs from 'fs';
import * as path from 'path';
import { loadModel } from '../models/load';
import type { CausalLM } from '../models/base';
import { loadTokenizer } from '../tokenizer/tokenizer';
import { parseFlags } from './train';

export const GENERATE_USAGE = `usage: peftkit generate --model DIR [--adapter DIR] [--prompt TEXT] [options]
  --tokenizer DIR         default: the model folder
  --chat                  apply the chat template (prompt = one user message) and stop at its end token
  --system TEXT           system message (with --chat)
  --max-new-tokens N      default 128
  --temperature T --top-k K --top-p P --repetition-penalty R --seed S   (sampling; default greedy)
  --dtype f32|bf16|f16    weights' dtype        --device cpu|cuda   where the model runs (default cpu)
  --json                  print {prompt, completion, tokens} as JSON instead of streaming text
  without --prompt the prompt is read from stdin`;

const KNOWN = ['model', 'adapter', 'tokenizer', 'prompt', 'chat', 'system', 'maxNewTokens', 'temperature', 'topK', 'topP', 'repetitionPenalty', 'seed', 'json', 'help', 'dtype', 'device'];

export async function runGenerate(argv: string[], out: (s: string) => void, err: (s: string) => void,
                                  write: (s: string) => void = (s) => process.stdout.write(s)): Promise<number> {
  let flags: Record<string, unknown>;
  try {
    const parsed = parseFlags(argv, new Set(['chat', 'json', 'help']));
    flags = parsed.flags;
    if (flags.help) { out(GENERATE_USAGE); return 0; }
    for (const k of Object.keys(flags)) if (!KNOWN.includes(k)) throw new Error(`unknown option --${k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase())}`);
    if (parsed.positional.length) throw new Error(`unexpected argument ${parsed.positional[0]}`);
    if (typeof flags.model !== 'string') throw new Error('--model DIR is required');
    if (flags.device !== undefined && flags.device !== 'cpu' && flags.device !== 'cuda') {
      throw new Error(`--device must be 'cpu' or 'cuda', got ${JSON.stringify(flags.device)}`);
    }
  } catch (e) {
    err(`peftkit generate: ${(e as Error).message}\n${GENERATE_USAGE}`);
    return 2;
  }
  try {
    const dir = path.resolve(flags.model as string);
    const tok = await loadTokenizer(flags.tokenizer ? path.resolve(String(flags.tokenizer)) : dir);
    let model: CausalLM | { generate: CausalLM['generate']; stream: CausalLM['stream']; dispose(): void } = await loadModel(dir, {
      ...(flags.dtype ? { dtype: flags.dtype as 'f32' } : {}), ...(flags.device === 'cuda' ? { device: 'cuda' as const } : {}) });
    if (flags.adapter) {
      const { loadAdapter } = await import('../peft');
      model = await loadAdapter(model as CausalLM, path.resolve(String(flags.adapter)));
    }
    const prompt = flags.prompt !== undefined ? String(flags.prompt) : fs.readFileSync(0, 'utf8');
    let ids: number[];
    const stop: number[] = [];
    if (flags.chat) {
      const msgs = [...(flags.system ? [{ role: 'system', content: String(flags.system) }] : []), { role: 'user', content: prompt }];
      ids = tok.applyChatTemplate(msgs, { addGenerationPrompt: true });
      if (tok.eosTokenId !== null) stop.push(tok.eosTokenId);
    } else {
      ids = tok.encode(prompt);
    }
    const doSample = flags.temperature !== undefined || flags.topK !== undefined || flags.topP !== undefined;
    const opts = {
      maxNewTokens: Number(flags.maxNewTokens ?? 128), doSample,
      temperature: flags.temperature as number | undefined, topK: flags.topK as number | undefined, topP: flags.topP as number | undefined,
      repetitionPenalty: flags.repetitionPenalty as number | undefined, seed: flags.seed as number | undefined,
      stop: stop.length ? stop : undefined, tokenizer: tok,
    };
    const newIds: number[] = [];
    let printed = '';
    for await (const ev of model.stream([ids], opts)) {
      newIds.push(ev.token);
      if (!flags.json) {
        const text = tok.decode(newIds, { skipSpecialTokens: true });
        if (text.startsWith(printed) && !text.endsWith('\ufffd')) { write(text.slice(printed.length)); printed = text; }
      }
      if (ev.finished[0]) break;
    }
    const completion = tok.decode(newIds, { skipSpecialTokens: true });
    if (flags.json) out(JSON.stringify({ prompt, completion, tokens: newIds.length }));
    else { if (completion.length > printed.length && completion.startsWith(printed)) write(completion.slice(printed.length)); write('\n'); }
    model.dispose();
    return 0;
  } catch (e) {
    err(`peftkit generate: ${(e as Error).message}`);
    return 1;
  }
}
