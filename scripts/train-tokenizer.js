#!/usr/bin/env node
/**
 * train-tokenizer.js — train a byte-level BPE tokenizer (GPT-2 / Llama-3 scheme) on a text file and
 * write a HuggingFace `tokenizer.json` (+ `tokenizer_config.json` with a ChatML chat template).
 *
 *   node scripts/train-tokenizer.js [--input data/wordnet/pretrain.txt] [--out models/wordnet-llama]
 *                                   [--vocab-size 4096] [--min-frequency 2]
 *
 * Scheme (what Llama-3 / Qwen2 tokenizers do, so any HF loader reads it):
 *  - pre-tokenization: the Llama-3 split regex (contractions, words with one leading non-letter,
 *    numbers in groups of ≤ 3 digits, punctuation runs, newlines, other whitespace), then GPT-2's
 *    byte-to-unicode mapping of each chunk's UTF-8 bytes (so every byte is a symbol: any text,
 *    any unicode, encodes and decodes exactly, with no unknown token);
 *  - model: BPE whose vocabulary is the specials, the 256 byte symbols and one token per merge;
 *    merges are learned greedily: repeatedly merge the most frequent adjacent pair (over the
 *    chunk counts of the corpus; ties → the lexicographically smallest pair) until the vocabulary
 *    is full or no pair occurs `min-frequency` times;
 *  - specials `<|endoftext|>` (0), `<|im_start|>` (1), `<|im_end|>` (2) as added tokens.
 * The script then loads the result with @huggingface/tokenizers and checks that it encodes a
 * sample exactly as this script's own BPE does and that decode(encode(x)) === x.
 *
 * Deterministic: the same input gives the same tokenizer.json.
 */
'use strict';
const fs = require('fs');
const path = require('path');

const SPECIALS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>'];
/** The Llama-3 pre-tokenization regex, as written in tokenizer.json (Rust/Oniguruma syntax). */
const SPLIT_REGEX = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
/** The same in JavaScript syntax (no inline (?i:) groups). */
const SPLIT_JS = /(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+/gu;
const CHAT_TEMPLATE = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/** GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to U+0100.. in order. */
function bytesToUnicode() {
  const bs = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) if (!bs.includes(b)) { bs.push(b); cs.push(256 + n); n++; }
  const map = new Array(256);
  for (let i = 0; i < bs.length; i++) map[bs[i]] = String.fromCodePoint(cs[i]);
  return map;
}
const BYTE_CHAR = bytesToUnicode();

function preTokenize(text) { return text.match(SPLIT_JS) || []; }
function byteSymbols(chunk) { return Array.from(Buffer.from(chunk, 'utf8'), (b) => BYTE_CHAR[b]); }

function args() {
  const a = process.argv.slice(2);
  const o = {
    input: path.join(__dirname, '..', 'data', 'wordnet', 'pretrain.txt'),
    out: path.join(__dirname, '..', 'models', 'wordnet-llama'),
    vocabSize: 4096, minFrequency: 2, maxLength: 512,
  };
  for (let i = 0; i < a.length; i++) {
    const k = a[i], v = a[i + 1];
    if (k === '--input') { o.input = v; i++; } else if (k === '--out') { o.out = v; i++; } else if (k === '--vocab-size') { o.vocabSize = +v; i++; } else if (k === '--min-frequency') { o.minFrequency = +v; i++; } else if (k === '--model-max-length') { o.maxLength = +v; i++; } else if (k === '-h' || k === '--help') {
      console.log('usage: node scripts/train-tokenizer.js [--input FILE] [--out DIR] [--vocab-size N] [--min-frequency N]'); process.exit(0);
    } else throw new Error(`unknown argument ${k}`);
  }
  if (!Number.isInteger(o.vocabSize) || o.vocabSize < SPECIALS.length + 256) throw new Error(`--vocab-size must be an integer >= ${SPECIALS.length + 256}`);
  return o;
}

/**
 * Learn merges. `words`: Map(chunk → count). Returns { vocab: string[] (id → token), merges: [a, b][] }.
 * Incremental: pair counts and the set of words containing each pair are updated only for the
 * words a merge touches.
 */
function trainBpe(wordCounts, vocabSize, minFrequency, log = () => {}) {
  const tokens = [...SPECIALS];
  const idOf = new Map();
  for (const [i, t] of tokens.entries()) idOf.set(t, i);
  for (let b = 0; b < 256; b++) { idOf.set(BYTE_CHAR[b], tokens.length); tokens.push(BYTE_CHAR[b]); }
  const words = [], counts = [];
  for (const [w, c] of wordCounts) { words.push(byteSymbols(w).map((s) => idOf.get(s))); counts.push(c); }
  const K = 1 << 16;  // pair key a*K + b (vocab < 65536)
  if (vocabSize >= K) throw new Error('vocab too large');
  const pairCount = new Map();
  const pairWords = new Map();
  const addPairs = (wi, sign) => {
    const w = words[wi], c = counts[wi] * sign;
    for (let i = 0; i + 1 < w.length; i++) {
      const key = w[i] * K + w[i + 1];
      pairCount.set(key, (pairCount.get(key) ?? 0) + c);
      if (sign > 0) { let s = pairWords.get(key); if (!s) { s = new Set(); pairWords.set(key, s); } s.add(wi); }
    }
  };
  for (let wi = 0; wi < words.length; wi++) addPairs(wi, 1);
  const merges = [];
  while (tokens.length < vocabSize) {
    let best = -1, bestC = 0, bestStr = null;
    for (const [key, c] of pairCount) {
      if (c < bestC || c <= 0) continue;
      if (c > bestC) { best = key; bestC = c; bestStr = null; continue; }
      // tie: smallest (a, b) by token strings
      if (bestStr === null) bestStr = [tokens[Math.floor(best / K)], tokens[best % K]];
      const s = [tokens[Math.floor(key / K)], tokens[key % K]];
      if (s[0] < bestStr[0] || (s[0] === bestStr[0] && s[1] < bestStr[1])) { best = key; bestStr = s; }
    }
    if (best < 0 || bestC < minFrequency) break;
    const a = Math.floor(best / K), b = best % K;
    const nt = tokens.length;
    tokens.push(tokens[a] + tokens[b]);
    merges.push([tokens[a], tokens[b]]);
    const affected = [...(pairWords.get(best) ?? [])];
    for (const wi of affected) {
      addPairs(wi, -1);
      const w = words[wi], out = [];
      for (let i = 0; i < w.length; i++) {
        if (i + 1 < w.length && w[i] === a && w[i + 1] === b) { out.push(nt); i++; } else out.push(w[i]);
      }
      words[wi] = out;
      addPairs(wi, 1);
    }
    pairCount.delete(best); pairWords.delete(best);
    if (merges.length % 500 === 0) log(`  ${merges.length} merges (last ${JSON.stringify(tokens[nt])}, count ${bestC})`);
  }
  return { vocab: tokens, merges };
}

/** Reference BPE encoder (used to check the HF loader agrees). */
function makeEncoder(vocab, merges) {
  const id = new Map(vocab.map((t, i) => [t, i]));
  const rank = new Map(merges.map(([a, b], i) => [a + ' ' + b, i]));
  const cache = new Map();
  const encodeChunk = (chunk) => {
    let hit = cache.get(chunk);
    if (hit) return hit;
    let sy = byteSymbols(chunk);
    for (;;) {
      let bi = -1, br = Infinity;
      for (let i = 0; i + 1 < sy.length; i++) {
        const r = rank.get(sy[i] + ' ' + sy[i + 1]);
        if (r !== undefined && r < br) { br = r; bi = i; }
      }
      if (bi < 0) break;
      const m = sy[bi] + sy[bi + 1];
      const nx = [];
      for (let i = 0; i < sy.length; i++) {
        if (i + 1 < sy.length && sy[i] + ' ' + sy[i + 1] === merges[br][0] + ' ' + merges[br][1]) { nx.push(m); i++; } else nx.push(sy[i]);
      }
      sy = nx;
    }
    hit = sy.map((s) => id.get(s));
    cache.set(chunk, hit);
    return hit;
  };
  return (text) => preTokenize(text).flatMap(encodeChunk);
}

function tokenizerJson(vocab, merges) {
  const v = {};
  for (const [i, t] of vocab.entries()) v[t] = i;
  const bl = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false };
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: SPECIALS.map((content, id) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
    normalizer: null,
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: SPLIT_REGEX }, behavior: 'Isolated', invert: false },
        { ...bl },
      ],
    },
    post_processor: { ...bl },
    decoder: { ...bl },
    model: {
      type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab: v, merges,
    },
  };
}

function tokenizerConfig(maxLength) {
  const added = {};
  for (const [i, t] of SPECIALS.entries()) added[String(i)] = { content: t, lstrip: false, normalized: false, rstrip: false, single_word: false, special: true };
  return {
    tokenizer_class: 'PreTrainedTokenizerFast',
    added_tokens_decoder: added,
    bos_token: null,
    eos_token: '<|im_end|>',
    pad_token: '<|endoftext|>',
    unk_token: null,
    additional_special_tokens: ['<|im_start|>', '<|im_end|>'],
    chat_template: CHAT_TEMPLATE,
    clean_up_tokenization_spaces: false,
    model_max_length: maxLength,
    add_bos_token: false,
    add_eos_token: false,
  };
}

async function verify(dir, encodeRef, sampleLines) {
  const { Tokenizer } = require('@huggingface/tokenizers');
  const tj = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer.json'), 'utf8'));
  const tc = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8'));
  const tok = new Tokenizer(tj, tc);
  const probes = [...sampleLines,
    'Ünïcödé — “quotes”, emoji 🤖🦙, CJK 漢字, tabs\tand\n\nnewlines, 12345678 numbers, it\'s WE\'LL', ' leading space', '<|im_start|>user\nDefine: cat<|im_end|>\n'];
  let tokens = 0, chars = 0;
  for (const s of probes) {
    const ids = tok.encode(s, { add_special_tokens: false }).ids;
    if (!s.includes('<|')) {
      const ref = encodeRef(s);
      if (ids.length !== ref.length || ids.some((x, i) => x !== ref[i])) {
        throw new Error(`train-tokenizer: @huggingface/tokenizers encodes ${JSON.stringify(s.slice(0, 80))} differently from the reference BPE:\n  hf  ${ids.slice(0, 40)}\n  ref ${ref.slice(0, 40)}`);
      }
    }
    const back = tok.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: false });
    if (back !== s) throw new Error(`train-tokenizer: round trip failed for ${JSON.stringify(s.slice(0, 80))} → ${JSON.stringify(back.slice(0, 80))}`);
    tokens += ids.length; chars += s.length;
  }
  return { probes: probes.length, charsPerToken: chars / tokens };
}

async function main() {
  const o = args();
  const t0 = Date.now();
  const text = fs.readFileSync(o.input, 'utf8');
  const lines = text.split('\n').filter((l) => l.length > 0);
  const wc = new Map();
  for (const line of lines) for (const ch of preTokenize(line)) wc.set(ch, (wc.get(ch) ?? 0) + 1);
  // Deterministic order of the unique chunks.
  const sorted = new Map([...wc.entries()].sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0)));
  console.log(`train-tokenizer: ${lines.length} lines, ${sorted.size} unique chunks from ${o.input}`);
  const { vocab, merges } = trainBpe(sorted, o.vocabSize, o.minFrequency, (m) => console.log(m));
  fs.mkdirSync(o.out, { recursive: true });
  fs.writeFileSync(path.join(o.out, 'tokenizer.json'), JSON.stringify(tokenizerJson(vocab, merges)) + '\n');
  fs.writeFileSync(path.join(o.out, 'tokenizer_config.json'), JSON.stringify(tokenizerConfig(o.maxLength), null, 2) + '\n');
  const enc = makeEncoder(vocab, merges);
  const sample = lines.filter((_, i) => i % 997 === 0);
  const v = await verify(o.out, enc, sample);
  console.log(`train-tokenizer: vocab ${vocab.length} (${SPECIALS.length} special + 256 bytes + ${merges.length} merges), ` +
    `${v.charsPerToken.toFixed(2)} chars/token on ${v.probes} probe texts, verified with @huggingface/tokenizers; ` +
    `wrote ${o.out}/tokenizer.json and tokenizer_config.json in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
}

if (require.main === module) main().catch((e) => { console.error(e); process.exit(1); });
module.exports = { bytesToUnicode, preTokenize, trainBpe, makeEncoder, tokenizerJson, tokenizerConfig, SPLIT_REGEX, CHAT_TEMPLATE, SPECIALS };
