/**
 * tokenize.ts — examples → token ids and labels for causal-LM fine-tuning.
 *
 * Labels follow the HF convention: aligned with input ids (unshifted — the model's loss compares
 * the prediction at position t−1 with labels[t]), IGNORE_INDEX (-100) where no loss is taken.
 * By default only the response carries loss:
 *
 *   text         every token
 *   completion   the completion (+ EOS); the prompt is masked
 *   alpaca       the output; rendered with the tokenizer's chat template as a user/assistant
 *                exchange when it has one, else with the classic Alpaca prompt as a completion
 *   chat         every assistant turn (content and the template's end-of-turn tokens); system,
 *                user and tool turns and the generation prompts ("<|im_start|>assistant\n") are masked
 *
 * `trainOnPrompt: true` puts loss on everything. labels[0] is always -100 (no token precedes it),
 * so packed examples never learn across their boundary.
 *
 * Chat templates are rendered as text and cut where each assistant turn starts and ends (by
 * rendering the conversation prefixes), then each piece is encoded without special tokens, as
 * transformers' apply_chat_template does. When a template rewrites earlier turns (so a prefix
 * render is not a prefix of the full render) only the last assistant turn is trained.
 */
import type { ChatTurn, Dataset, Example } from './dataset';

export const IGNORE_INDEX = -100;

/** What the data pipeline needs from a tokenizer (peftkit's Tokenizer satisfies it). */
export interface TokenizerLike {
  encode(text: string, opts?: { addSpecialTokens?: boolean }): number[];
  /** Render a conversation; called with `tokenize: false` and must then return the text. */
  applyChatTemplate?(messages: ChatTurn[], opts: { addGenerationPrompt?: boolean; tokenize: false; [k: string]: unknown }): string;
  readonly eosTokenId?: number | null;
}

export interface TokenizeOptions {
  /** Truncate to at most this many tokens. */
  maxLength?: number;
  /** Which end to cut when truncating (default 'right': keep the beginning). */
  truncationSide?: 'right' | 'left';
  /** Put loss on the prompt too (default false: response only). */
  trainOnPrompt?: boolean;
  /** Append EOS to text and completion examples (default true; needs tokenizer.eosTokenId). */
  addEos?: boolean;
  /**
   * Render completion/alpaca rows with the chat template as user/assistant turns: 'auto'
   * (default) does so for alpaca rows when the tokenizer has a template, true for both, false never.
   */
  useChatTemplate?: 'auto' | boolean;
  /** Extra variables for the chat template (e.g. { enable_thinking: false }). */
  templateVars?: Record<string, unknown>;
  /** Drop examples left with no loss token (e.g. a prompt longer than maxLength); default true. */
  dropEmpty?: boolean;
}

export interface TokenizedExample {
  inputIds: Int32Array;
  labels: Int32Array;
}

export interface TokenizeStats {
  /** Examples in, examples out. */
  examples: number;
  kept: number;
  /** Examples cut to maxLength. */
  truncated: number;
  /** Examples dropped because no loss token was left. */
  droppedEmpty: number;
  /** Tokens and loss-carrying tokens over the kept examples. */
  tokens: number;
  labelTokens: number;
  /** Chat examples whose template rewrote earlier turns (only the last assistant turn trained). */
  lastTurnOnly: number;
}

const ALPACA_WITH_INPUT = 'Below is an instruction that describes a task, paired with an input that provides further context. ' +
  'Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n';
const ALPACA_NO_INPUT = 'Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n' +
  '### Instruction:\n{instruction}\n\n### Response:\n';

/** The classic Stanford Alpaca prompt for an instruction (and optional input). */
export function alpacaPrompt(instruction: string, input: string): string {
  return (input ? ALPACA_WITH_INPUT.replace('{input}', () => input) : ALPACA_NO_INPUT).replace('{instruction}', () => instruction);
}

function hasTemplate(tok: TokenizerLike): boolean {
  if (typeof tok.applyChatTemplate !== 'function') return false;
  try {
    tok.applyChatTemplate([{ role: 'user', content: 'x' }], { tokenize: false });
    return true;
  } catch {
    return false;
  }
}

interface Piece { text: string; train: boolean }

/** Cut the rendered conversation into pieces: assistant turns (train) and everything else. */
function chatPieces(msgs: ChatTurn[], tok: TokenizerLike, vars: Record<string, unknown>): { pieces: Piece[]; lastOnly: boolean } {
  if (typeof tok.applyChatTemplate !== 'function') throw new Error('chat examples need a tokenizer with applyChatTemplate');
  const render = (m: ChatTurn[], gen: boolean): string => {
    const r = tok.applyChatTemplate!(m, { ...vars, addGenerationPrompt: gen, tokenize: false });
    if (typeof r !== 'string') throw new Error('applyChatTemplate({ tokenize: false }) must return the rendered text');
    return r;
  };
  const full = render(msgs, false);
  const pieces: Piece[] = [];
  let pos = 0;
  let ok = true;
  for (let k = 0; k < msgs.length && ok; k++) {
    if (msgs[k].role !== 'assistant') continue;
    let pre: string, upto: string;
    try { pre = render(msgs.slice(0, k), true); upto = render(msgs.slice(0, k + 1), false); } catch { ok = false; break; }
    if (pre.length < pos || !full.startsWith(pre) || !full.startsWith(upto) || upto.length < pre.length) { ok = false; break; }
    pieces.push({ text: full.slice(pos, pre.length), train: false });
    pieces.push({ text: full.slice(pre.length, upto.length), train: true });
    pos = upto.length;
  }
  if (ok) {
    pieces.push({ text: full.slice(pos), train: false });
    return { pieces, lastOnly: false };
  }
  // Fallback: the template renders earlier turns differently in context; train the last assistant turn.
  let last = -1;
  for (let k = msgs.length - 1; k >= 0; k--) if (msgs[k].role === 'assistant') { last = k; break; }
  const pre = render(msgs.slice(0, last), true);
  const upto = render(msgs.slice(0, last + 1), false);
  if (!full.startsWith(pre) || !full.startsWith(upto) || upto.length < pre.length) {
    throw new Error('the chat template does not render conversation prefixes as prefixes of the whole conversation; cannot locate the assistant turns');
  }
  return {
    pieces: [{ text: pre, train: false }, { text: upto.slice(pre.length), train: true }, { text: full.slice(upto.length), train: false }],
    lastOnly: true,
  };
}

/**
 * Tokenize one example. Returns null when `dropEmpty` and no loss token is left after truncation.
 * `info` (optional) receives whether it was truncated / trained on the last turn only.
 */
export function tokenizeExample(ex: Example, tok: TokenizerLike, opts: TokenizeOptions = {},
  info: { truncated?: boolean; lastTurnOnly?: boolean; templateAvailable?: boolean } = {}): TokenizedExample | null {
  const trainPrompt = opts.trainOnPrompt ?? false;
  const addEos = opts.addEos ?? true;
  const eos = tok.eosTokenId;
  const ids: number[] = [];
  const labels: number[] = [];
  const push = (toks: number[], train: boolean) => {
    for (const t of toks) { ids.push(t); labels.push(train || trainPrompt ? t : IGNORE_INDEX); }
  };
  const pushEos = () => {
    if (addEos && typeof eos === 'number' && eos >= 0 && ids[ids.length - 1] !== eos) push([eos], true);
  };
  const templ = () => {
    if (info.templateAvailable === undefined) info.templateAvailable = hasTemplate(tok);
    return info.templateAvailable;
  };
  const mode = opts.useChatTemplate ?? 'auto';

  let conv: ChatTurn[] | null = null;
  let completion: { prompt: string; completion: string } | null = null;
  switch (ex.format) {
    case 'text':
      push(tok.encode(ex.text, { addSpecialTokens: true }), true);
      pushEos();
      break;
    case 'completion':
      if (mode === true) conv = [{ role: 'user', content: ex.prompt }, { role: 'assistant', content: ex.completion }];
      else completion = ex;
      break;
    case 'alpaca':
      if (mode === true || (mode === 'auto' && templ())) {
        conv = [{ role: 'user', content: ex.input ? `${ex.instruction}\n\n${ex.input}` : ex.instruction }, { role: 'assistant', content: ex.output }];
      } else {
        completion = { prompt: alpacaPrompt(ex.instruction, ex.input), completion: ex.output };
      }
      break;
    case 'chat':
      conv = ex.messages;
      break;
    default:
      throw new Error(`tokenizeExample: unknown example format '${(ex as { format: unknown }).format}'`);
  }
  if (completion) {
    push(tok.encode(completion.prompt, { addSpecialTokens: true }), false);
    push(tok.encode(completion.completion, { addSpecialTokens: false }), true);
    pushEos();
  }
  if (conv) {
    const { pieces, lastOnly } = chatPieces(conv, tok, opts.templateVars ?? {});
    info.lastTurnOnly = lastOnly;
    for (const p of pieces) if (p.text) push(tok.encode(p.text, { addSpecialTokens: false }), p.train);
  }

  let inputIds = Int32Array.from(ids), lab = Int32Array.from(labels);
  info.truncated = false;
  const max = opts.maxLength;
  if (max !== undefined) {
    if (!Number.isInteger(max) || max < 1) throw new RangeError(`tokenize: maxLength must be a positive integer, got ${max}`);
    if (inputIds.length > max) {
      info.truncated = true;
      const left = opts.truncationSide === 'left';
      inputIds = left ? inputIds.slice(inputIds.length - max) : inputIds.slice(0, max);
      lab = left ? lab.slice(lab.length - max) : lab.slice(0, max);
    }
  }
  if (lab.length) lab[0] = IGNORE_INDEX;
  if (opts.dropEmpty ?? true) {
    let any = false;
    for (let i = 0; i < lab.length; i++) if (lab[i] !== IGNORE_INDEX) { any = true; break; }
    if (!any) return null;
  }
  return { inputIds, labels: lab };
}

/** Tokenize every example (see tokenizeExample); dropped examples are counted in `stats`. */
export function tokenizeDataset(data: Dataset | Iterable<Example>, tok: TokenizerLike, opts: TokenizeOptions = {}):
  { examples: TokenizedExample[]; stats: TokenizeStats } {
  const stats: TokenizeStats = { examples: 0, kept: 0, truncated: 0, droppedEmpty: 0, tokens: 0, labelTokens: 0, lastTurnOnly: 0 };
  const out: TokenizedExample[] = [];
  const shared: { templateAvailable?: boolean } = {};
  let index = 0;
  for (const ex of data as Iterable<Example>) {
    stats.examples++;
    const info: { truncated?: boolean; lastTurnOnly?: boolean; templateAvailable?: boolean } = { templateAvailable: shared.templateAvailable };
    let t: TokenizedExample | null;
    try {
      t = tokenizeExample(ex, tok, opts, info);
    } catch (e) {
      throw new Error(`tokenize: example ${index}: ${(e as Error).message}`);
    }
    shared.templateAvailable = info.templateAvailable;
    index++;
    if (info.truncated) stats.truncated++;
    if (info.lastTurnOnly) stats.lastTurnOnly++;
    if (!t) { stats.droppedEmpty++; continue; }
    stats.kept++;
    stats.tokens += t.inputIds.length;
    for (let i = 0; i < t.labels.length; i++) if (t.labels[i] !== IGNORE_INDEX) stats.labelTokens++;
    out.push(t);
  }
  return { examples: out, stats };
}
