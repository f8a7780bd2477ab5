/**
 * Tokenizer parity with transformers (test/fixtures/hf/tokenizer/reference.json): encodings,
 * decodings and the chat template; plus special tokens as AddedToken objects, chat_template.jinja
 * and lists of named templates.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { loadTokenizer } from '../lib/tokenizer';

const DIR = path.join(__dirname, 'fixtures', 'hf', 'tokenizer');
const ref = JSON.parse(fs.readFileSync(path.join(DIR, 'reference.json'), 'utf8'));

describe('tokenizer matches transformers', () => {
  const cases: [string, { text: string; ids: number[] }][] = ref.encode.map((e: { text: string; ids: number[] }) => [JSON.stringify(e.text), e]);
  test.each(cases)('encode %s', async (_n, e) => {
    const tok = await loadTokenizer(DIR);
    const { text, ids } = e;
    expect(tok.encode(text, { addSpecialTokens: false })).toEqual(ids);
  });
  test('decode round trips', async () => {
    const tok = await loadTokenizer(DIR);
    ref.encode.forEach((e: { ids: number[] }, i: number) => expect(tok.decode(e.ids)).toBe(ref.decode_roundtrip[i]));
    // skipping special tokens drops <|im_start|> / <|im_end|>
    expect(tok.decode(ref.encode[3].ids, { skipSpecialTokens: true })).toBe('user\nhi');
  });
  test('special tokens from tokenizer_config.json', async () => {
    const tok = await loadTokenizer(DIR);
    expect(tok.eosToken).toBe('<|im_end|>');
    expect(tok.eosTokenId).toBe(2);
    expect(tok.padToken).toBe('<|endoftext|>');
    expect(tok.padTokenId).toBe(0);
    expect(tok.bosToken).toBeNull();
  });
  test('chat template: text and ids, with and without the generation prompt', async () => {
    const tok = await loadTokenizer(DIR);
    const msgs = ref.chat.messages;
    expect(tok.applyChatTemplate(msgs, { tokenize: false })).toBe(ref.chat.text);
    // the reference rendered the generation prompt for the conversation without the assistant's answer
    expect(tok.applyChatTemplate(msgs.slice(0, -1), { tokenize: false, addGenerationPrompt: true })).toBe(ref.chat.text_gen_prompt);
    const ids = tok.applyChatTemplate(msgs);
    // the rendered text encoded without adding special tokens again; specials appear exactly once each
    expect(ids).toEqual(tok.encode(ref.chat.text, { addSpecialTokens: false }));
    expect(ids.filter((i) => i === 1).length).toBe(3);
    expect(tok.decode(ids)).toBe(ref.chat.text);
  });
});

describe('config variants', () => {
  let tmp: string;
  beforeAll(() => { tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pk-tok-')); });
  afterAll(() => { fs.rmSync(tmp, { recursive: true, force: true }); });
  function variant(name: string, cfgEdit: (c: Record<string, unknown>) => void, jinja?: string): string {
    const d = path.join(tmp, name);
    fs.mkdirSync(d);
    fs.copyFileSync(path.join(DIR, 'tokenizer.json'), path.join(d, 'tokenizer.json'));
    const cfg = JSON.parse(fs.readFileSync(path.join(DIR, 'tokenizer_config.json'), 'utf8'));
    cfgEdit(cfg);
    fs.writeFileSync(path.join(d, 'tokenizer_config.json'), JSON.stringify(cfg));
    if (jinja !== undefined) fs.writeFileSync(path.join(d, 'chat_template.jinja'), jinja);
    return d;
  }
  test('special tokens given as AddedToken objects', async () => {
    const d = variant('added', (c) => { c.eos_token = { __type: 'AddedToken', content: '<|im_end|>', lstrip: false, rstrip: false, normalized: false, single_word: false, special: true }; });
    const tok = await loadTokenizer(d);
    expect(tok.eosToken).toBe('<|im_end|>');
    expect(tok.eosTokenId).toBe(2);
  });
  test('chat_template.jinja takes precedence; named template lists', async () => {
    const d = variant('jinja', (c) => { delete c.chat_template; }, '{% for m in messages %}[{{ m.role }}]{{ m.content }}{{ eos_token }}{% endfor %}');
    const tok = await loadTokenizer(d);
    expect(tok.applyChatTemplate([{ role: 'user', content: 'hi' }], { tokenize: false })).toBe('[user]hi<|im_end|>');
    const d2 = variant('list', (c) => {
      c.chat_template = [{ name: 'default', template: 'D:{{ messages[0].content }}' }, { name: 'tool_use', template: 'T:{{ messages[0].content }}' }];
    });
    const tok2 = await loadTokenizer(d2);
    expect(tok2.applyChatTemplate([{ role: 'user', content: 'x' }], { tokenize: false })).toBe('D:x');
    expect(tok2.applyChatTemplate([{ role: 'user', content: 'x' }], { tokenize: false, chatTemplate: 'tool_use' })).toBe('T:x');
    const d3 = variant('none', (c) => { delete c.chat_template; });
    const tok3 = await loadTokenizer(d3);
    expect(() => tok3.applyChatTemplate([{ role: 'user', content: 'x' }])).toThrow(/no chat template/);
  });
});
