/**
 * tokenizer.ts — HuggingFace tokenizers from a model folder: `tokenizer.json` + `tokenizer_config.json`
 * through @huggingface/tokenizers, chat templates through @huggingface/jinja.
 *
 * Matches transformers' PreTrainedTokenizerFast:
 *  - special tokens in tokenizer_config.json may be plain strings or AddedToken objects
 *    ({"content": "...", "lstrip": ..., ...}); both are resolved to their strings;
 *  - `decode` does not clean up tokenization spaces unless the config says so (transformers 5);
 *  - the chat template comes from `chat_template.jinja`, else tokenizer_config.json's `chat_template`
 *    (a string, or a list of `{name, template}` where 'default' is used unless a name is asked for);
 *    it is rendered with the special tokens in scope, `add_generation_prompt`, `tools`, `documents`
 *    and any extra variables, then encoded WITHOUT adding special tokens again (the template has them).
 */
import * as fs from 'fs';
import * as path from 'path';
import { Tokenizer as HFTokenizer } from '@huggingface/tokenizers';
import { Template } from '@huggingface/jinja';

/** A chat message (content as a string, or a list of parts as in multimodal templates). */
export interface ChatMessage {
  role: string;
  content: string | Record<string, unknown>[];
  [k: string]: unknown;
}

export interface EncodeOptions {
  /** Add the tokenizer's special tokens (BOS/EOS per its post-processor). Default true, like transformers. */
  addSpecialTokens?: boolean;
}
export interface DecodeOptions {
  skipSpecialTokens?: boolean;
  /** Default: the config's `clean_up_tokenization_spaces` (false when absent, as transformers 5). */
  cleanUpTokenizationSpaces?: boolean;
}
export interface ChatTemplateOptions {
  addGenerationPrompt?: boolean;
  /** Return token ids (default) or the rendered text. */
  tokenize?: boolean;
  /** Name of the template when the config holds several (default 'default', or the only one). */
  chatTemplate?: string;
  tools?: unknown[];
  documents?: unknown[];
  /** Extra variables for the template (e.g. `enable_thinking`). */
  [k: string]: unknown;
}

const SPECIAL_KEYS = ['bos_token', 'eos_token', 'unk_token', 'sep_token', 'pad_token', 'cls_token', 'mask_token'] as const;

function tokenString(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return null;
}

function readJson(file: string, what: string): Record<string, unknown> {
  let text: string;
  try { text = fs.readFileSync(file, 'utf8'); } catch (e) { throw new Error(`loadTokenizer: cannot read ${what} ${file}: ${(e as Error).message}`); }
  try {
    const j = JSON.parse(text);
    if (!j || typeof j !== 'object' || Array.isArray(j)) throw new Error('not a JSON object');
    return j as Record<string, unknown>;
  } catch (e) {
    throw new Error(`loadTokenizer: ${file} is not valid JSON: ${(e as Error).message}`);
  }
}

export class Tokenizer {
  /** The underlying @huggingface/tokenizers instance. */
  readonly hf: HFTokenizer;
  /** tokenizer_config.json (with special tokens resolved to strings). */
  readonly config: Record<string, unknown>;
  readonly bosToken: string | null;
  readonly eosToken: string | null;
  readonly unkToken: string | null;
  readonly padToken: string | null;
  readonly sepToken: string | null;
  readonly clsToken: string | null;
  readonly maskToken: string | null;
  /** Named chat templates ('default' when the config has a single string). */
  readonly chatTemplates: Map<string, string>;
  private readonly compiled = new Map<string, Template>();
  private readonly cleanUp: boolean;

  constructor(tokenizerJson: Record<string, unknown>, config: Record<string, unknown> = {}, chatTemplateFile: string | null = null) {
    const resolved: Record<string, unknown> = { ...config };
    for (const k of SPECIAL_KEYS) resolved[k] = tokenString(config[k]);
    for (const k of ['additional_special_tokens', 'extra_special_tokens']) {
      const v = config[k];
      if (Array.isArray(v)) resolved[k] = v.map(tokenString).filter((s): s is string => s !== null);
    }
    if (!Array.isArray(resolved.additional_special_tokens) && Array.isArray(resolved.extra_special_tokens)) {
      resolved.additional_special_tokens = resolved.extra_special_tokens;
    }
    this.cleanUp = config.clean_up_tokenization_spaces === true;
    resolved.clean_up_tokenization_spaces = this.cleanUp;
    this.config = resolved;
    this.hf = new HFTokenizer(tokenizerJson, resolved);
    this.bosToken = resolved.bos_token as string | null;
    this.eosToken = resolved.eos_token as string | null;
    this.unkToken = resolved.unk_token as string | null;
    this.padToken = resolved.pad_token as string | null;
    this.sepToken = resolved.sep_token as string | null;
    this.clsToken = resolved.cls_token as string | null;
    this.maskToken = resolved.mask_token as string | null;
    this.chatTemplates = new Map();
    const ct = config.chat_template;
    if (typeof ct === 'string') this.chatTemplates.set('default', ct);
    else if (Array.isArray(ct)) {
      for (const e of ct) {
        const name = (e as { name?: unknown })?.name, tpl = (e as { template?: unknown })?.template;
        if (typeof name !== 'string' || typeof tpl !== 'string') throw new Error('loadTokenizer: chat_template list entries must be {name: string, template: string}');
        this.chatTemplates.set(name, tpl);
      }
    }
    // chat_template.jinja takes precedence over the config (as in transformers).
    if (chatTemplateFile !== null) this.chatTemplates.set('default', chatTemplateFile);
  }

  private idOf(tok: string | null): number | null {
    if (tok === null) return null;
    return this.hf.token_to_id(tok) ?? null;
  }
  get bosTokenId(): number | null { return this.idOf(this.bosToken); }
  get eosTokenId(): number | null { return this.idOf(this.eosToken); }
  get padTokenId(): number | null { return this.idOf(this.padToken); }
  get unkTokenId(): number | null { return this.idOf(this.unkToken); }
  /** Vocabulary size including added tokens. */
  get vocabSize(): number { return this.hf.get_vocab(true).size; }

  tokenToId(token: string): number | undefined { return this.hf.token_to_id(token); }
  idToToken(id: number): string | undefined { return this.hf.id_to_token(id); }

  /** Token ids of `text`. */
  encode(text: string, opts: EncodeOptions = {}): number[] {
    if (typeof text !== 'string') throw new TypeError(`encode: text must be a string, got ${typeof text}`);
    return this.hf.encode(text, { add_special_tokens: opts.addSpecialTokens ?? true }).ids;
  }
  /** Token ids of several texts. */
  encodeBatch(texts: string[], opts: EncodeOptions = {}): number[][] { return texts.map((t) => this.encode(t, opts)); }

  /** Text of `ids` (a flat list, or a [1, n] nested list / i64 tensor data). */
  decode(ids: readonly number[] | readonly bigint[], opts: DecodeOptions = {}): string {
    if (!Array.isArray(ids)) throw new TypeError('decode: ids must be an array of token ids');
    if (ids.length === 0) return '';
    return this.hf.decode(ids as number[], {
      skip_special_tokens: opts.skipSpecialTokens ?? false,
      clean_up_tokenization_spaces: opts.cleanUpTokenizationSpaces ?? this.cleanUp,
    });
  }
  decodeBatch(batch: number[][], opts: DecodeOptions = {}): string[] { return batch.map((ids) => this.decode(ids, opts)); }

  /** The template source used for `name` (or the default). */
  getChatTemplate(name?: string): string {
    if (this.chatTemplates.size === 0) {
      throw new Error('applyChatTemplate: this tokenizer has no chat template (no chat_template.jinja and no chat_template in tokenizer_config.json)');
    }
    if (name !== undefined) {
      const t = this.chatTemplates.get(name);
      if (t === undefined) throw new Error(`applyChatTemplate: no chat template named '${name}' (have: ${[...this.chatTemplates.keys()].join(', ')})`);
      return t;
    }
    const d = this.chatTemplates.get('default');
    if (d !== undefined) return d;
    if (this.chatTemplates.size === 1) return [...this.chatTemplates.values()][0];
    throw new Error(`applyChatTemplate: several chat templates (${[...this.chatTemplates.keys()].join(', ')}) and none named 'default'; pass chatTemplate`);
  }

  /** Render a conversation with the chat template: text, or ids (default) encoded without adding special tokens. */
  applyChatTemplate(messages: ChatMessage[], opts: ChatTemplateOptions & { tokenize: false }): string;
  applyChatTemplate(messages: ChatMessage[], opts?: ChatTemplateOptions): number[];
  applyChatTemplate(messages: ChatMessage[], opts: ChatTemplateOptions = {}): number[] | string {
    if (!Array.isArray(messages)) throw new TypeError('applyChatTemplate: messages must be an array of {role, content}');
    for (const [i, m] of messages.entries()) {
      if (!m || typeof m !== 'object' || typeof m.role !== 'string') throw new TypeError(`applyChatTemplate: messages[${i}] must be {role: string, content}`);
    }
    const { addGenerationPrompt, tokenize, chatTemplate, tools, documents, ...extra } = opts;
    const src = this.getChatTemplate(chatTemplate);
    let tpl = this.compiled.get(src);
    if (!tpl) { tpl = new Template(src); this.compiled.set(src, tpl); }
    const vars: Record<string, unknown> = {
      ...extra,
      messages,
      add_generation_prompt: !!addGenerationPrompt,
    };
    if (tools !== undefined) vars.tools = tools;
    if (documents !== undefined) vars.documents = documents;
    for (const k of SPECIAL_KEYS) {
      const v = this.config[k];
      if (typeof v === 'string') vars[k] = v;
    }
    const text = tpl.render(vars);
    if (tokenize === false) return text;
    return this.encode(text, { addSpecialTokens: false });
  }
}

/** Load `tokenizer.json`, `tokenizer_config.json` (optional) and `chat_template.jinja` (optional) from `dir`. */
export async function loadTokenizer(dir: string): Promise<Tokenizer> {
  const tj = path.join(dir, 'tokenizer.json');
  if (!fs.existsSync(tj)) throw new Error(`loadTokenizer: no tokenizer.json in ${dir} (only fast tokenizers are supported)`);
  const tokenizerJson = readJson(tj, 'tokenizer');
  const cfgPath = path.join(dir, 'tokenizer_config.json');
  const config = fs.existsSync(cfgPath) ? readJson(cfgPath, 'tokenizer config') : {};
  const jinjaPath = path.join(dir, 'chat_template.jinja');
  const jinja = fs.existsSync(jinjaPath) ? fs.readFileSync(jinjaPath, 'utf8') : null;
  // special_tokens_map.json fills special tokens the config lacks (older checkpoints).
  const stm = path.join(dir, 'special_tokens_map.json');
  if (fs.existsSync(stm)) {
    const m = readJson(stm, 'special tokens map');
    for (const k of SPECIAL_KEYS) if (config[k] === undefined && m[k] !== undefined) config[k] = m[k];
  }
  return new Tokenizer(tokenizerJson, config, jinja);
}
