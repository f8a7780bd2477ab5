/**
 * dataset.ts — load fine-tuning data from JSONL, JSON or CSV files (or in-memory rows) into
 * validated examples of one of four formats:
 *
 *   text        { text }                                  plain language modelling (loss everywhere)
 *   completion  { prompt, completion }                    loss on the completion
 *   alpaca      { instruction, input?, output }           loss on the output
 *   chat        { messages: [{ role, content }, ...] }    loss on the assistant messages
 *
 * `format: 'auto'` (default) picks the format from the first row's fields (messages → chat;
 * instruction + output → alpaca; prompt + completion → completion; text → text); every row must
 * then have that format. Extra fields are ignored. In CSV files every value is a string; a chat
 * `messages` cell holds the JSON array.
 *
 * Malformed rows (bad JSON, missing or mistyped fields, wrong CSV field counts) throw a
 * DatasetError naming the file and line (`data.jsonl:17: ...`; `rows[3]: ...` for in-memory
 * rows), or with `skipInvalid` are skipped and reported in `dataset.invalid`.
 */
import * as fs from 'fs';
import * as path from 'path';
import { Rng } from './collate';

export type DataFormat = 'text' | 'completion' | 'alpaca' | 'chat';
export type FileType = 'jsonl' | 'json' | 'csv';

/** One chat message (extra fields such as tool calls are passed through to the template). */
export interface ChatTurn { role: string; content: string; [k: string]: unknown }

export type Example =
  | { format: 'text'; text: string }
  | { format: 'completion'; prompt: string; completion: string }
  | { format: 'alpaca'; instruction: string; input: string; output: string }
  | { format: 'chat'; messages: ChatTurn[] };

export interface LoadDatasetOptions {
  /** Row format; 'auto' (default) detects it from the first row. */
  format?: DataFormat | 'auto';
  /** File type; default from the extension (.jsonl/.ndjson, .json, .csv, .tsv). */
  fileType?: FileType;
  /** CSV field delimiter (default ',' and '\t' for .tsv). */
  delimiter?: string;
  /** Skip malformed rows (counted in `invalid`) instead of throwing. */
  skipInvalid?: boolean;
}

/** A malformed row: where it is and what is wrong. */
export interface InvalidRow { line: number; reason: string }

/** An error in a data file, naming the file and the 1-based line (or the row index for in-memory rows). */
export class DatasetError extends Error {
  constructor(readonly where: string, readonly line: number, reason: string) {
    super(`${where}${line > 0 ? ':' + line : ''}: ${reason}`);
    this.name = 'DatasetError';
  }
}

/** Validated examples plus where they came from and what was skipped. */
export class Dataset {
  constructor(
    readonly examples: Example[],
    readonly format: DataFormat,
    /** The file, or null for in-memory rows. */
    readonly source: string | null = null,
    /** Rows skipped with `skipInvalid` (line = 1-based file line, or row index + 1 for in-memory rows). */
    readonly invalid: InvalidRow[] = [],
  ) {}
  get length(): number { return this.examples.length; }
  /** Number of rows skipped as malformed. */
  get skipped(): number { return this.invalid.length; }
  get(i: number): Example {
    if (!Number.isInteger(i) || i < 0 || i >= this.examples.length) throw new RangeError(`Dataset.get: index ${i} out of range [0, ${this.examples.length})`);
    return this.examples[i];
  }
  [Symbol.iterator](): Iterator<Example> { return this.examples[Symbol.iterator](); }
  /** A dataset of the examples at `indices`. */
  select(indices: number[]): Dataset {
    return new Dataset(indices.map((i) => this.get(i)), this.format, this.source, []);
  }
  /**
   * Split into train/test with a seeded shuffle (testSize: a fraction in (0, 1) or a count).
   */
  split(testSize: number, seed = 0): { train: Dataset; test: Dataset } {
    const n = this.examples.length;
    const nTest = testSize > 0 && testSize < 1 ? Math.round(n * testSize) : testSize;
    if (!Number.isInteger(nTest) || nTest < 0 || nTest > n) throw new RangeError(`Dataset.split: testSize ${testSize} does not fit ${n} examples`);
    const order = Array.from({ length: n }, (_, i) => i);
    new Rng(seed).shuffle(order);   // seeded Fisher–Yates (the data loader's generator)
    return { test: this.select(order.slice(0, nTest)), train: this.select(order.slice(nTest)) };
  }
}

// ------------------------------------------------------------------ row validation

type RawRow = Record<string, unknown>;

function detectFormat(row: unknown): DataFormat | null {
  if (!row || typeof row !== 'object' || Array.isArray(row)) return null;
  const r = row as RawRow;
  if ('messages' in r) return 'chat';
  if ('instruction' in r && 'output' in r) return 'alpaca';
  if ('prompt' in r && 'completion' in r) return 'completion';
  if ('text' in r) return 'text';
  return null;
}

const FORMAT_SHAPE: Record<DataFormat, string> = {
  text: '{text}',
  completion: '{prompt, completion}',
  alpaca: '{instruction, input?, output}',
  chat: '{messages: [{role, content}]}',
};

function str(r: RawRow, key: string, opts: { optional?: boolean; nonEmpty?: boolean } = {}): string {
  const v = r[key];
  if (v === undefined || v === null) {
    if (opts.optional) return '';
    throw new Error(`missing field '${key}'`);
  }
  if (typeof v !== 'string') throw new Error(`field '${key}' must be a string, got ${Array.isArray(v) ? 'array' : typeof v}`);
  if (opts.nonEmpty && v.trim() === '') throw new Error(`field '${key}' is empty`);
  return v;
}

/** Validate one row as `format`; throws an Error with the reason. `fromCsv`: chat messages may be a JSON string. */
function toExample(row: unknown, format: DataFormat, fromCsv: boolean): Example {
  if (!row || typeof row !== 'object' || Array.isArray(row)) {
    throw new Error(`expected an object ${FORMAT_SHAPE[format]}, got ${Array.isArray(row) ? 'an array' : row === null ? 'null' : typeof row}`);
  }
  const r = row as RawRow;
  const required = { text: ['text'], completion: ['prompt', 'completion'], alpaca: ['instruction', 'output'], chat: ['messages'] }[format];
  const missing = required.filter((k) => r[k] === undefined);
  if (missing.length) {
    throw new Error(`missing field${missing.length > 1 ? 's' : ''} ${missing.map((k) => `'${k}'`).join(', ')} (expected a '${format}' row ${FORMAT_SHAPE[format]}, got fields [${Object.keys(r).join(', ')}])`);
  }
  switch (format) {
    case 'text':
      return { format, text: str(r, 'text', { nonEmpty: true }) };
    case 'completion':
      return { format, prompt: str(r, 'prompt'), completion: str(r, 'completion', { nonEmpty: true }) };
    case 'alpaca':
      return { format, instruction: str(r, 'instruction', { nonEmpty: true }), input: str(r, 'input', { optional: true }), output: str(r, 'output', { nonEmpty: true }) };
    case 'chat': {
      let msgs = r.messages;
      if (fromCsv && typeof msgs === 'string') {
        try { msgs = JSON.parse(msgs); } catch (e) { throw new Error(`field 'messages' is not valid JSON: ${(e as Error).message}`); }
      }
      if (!Array.isArray(msgs) || msgs.length === 0) throw new Error(`field 'messages' must be a non-empty array of {role, content}`);
      const out: ChatTurn[] = [];
      let assistant = false;
      for (const [i, m] of msgs.entries()) {
        if (!m || typeof m !== 'object' || Array.isArray(m)) throw new Error(`messages[${i}] must be an object {role, content}`);
        const mm = m as RawRow;
        if (typeof mm.role !== 'string' || mm.role === '') throw new Error(`messages[${i}].role must be a non-empty string`);
        if (typeof mm.content !== 'string') throw new Error(`messages[${i}].content must be a string, got ${mm.content === null ? 'null' : typeof mm.content}`);
        if (mm.role === 'assistant') assistant = true;
        out.push({ role: mm.role, content: mm.content });
      }
      if (!assistant) throw new Error(`the conversation has no 'assistant' message (nothing to learn)`);
      return { format, messages: out };
    }
  }
}

// ------------------------------------------------------------------ file parsing

/** One raw row with the line it starts on, or a parse error for that line. */
interface RawRecord { line: number; row?: unknown; error?: string }

function lineAt(text: string, offset: number, from = 0, fromLine = 1): number {
  let line = fromLine;
  for (let i = from; i < offset; i++) if (text.charCodeAt(i) === 10) line++;
  return line;
}

function parseJsonl(text: string): RawRecord[] {
  const out: RawRecord[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const l = lines[i].replace(/\r$/, '');
    if (l.trim() === '') continue;
    try { out.push({ line: i + 1, row: JSON.parse(l) }); } catch (e) { out.push({ line: i + 1, error: `invalid JSON: ${(e as Error).message}` }); }
  }
  return out;
}

/** A top-level JSON array, element by element (so each row gets its line and its own parse error). */
function parseJsonArray(text: string, where: string): RawRecord[] {
  let i = 0;
  const n = text.length;
  const skipWs = () => { while (i < n && /\s/.test(text[i])) i++; };
  skipWs();
  if (text[i] !== '[') {
    throw new DatasetError(where, lineAt(text, Math.min(i, n)), 'a .json dataset must be an array of rows (use .jsonl for one row per line)');
  }
  const out: RawRecord[] = [];
  i++;
  let line = 1, lineFrom = 0;
  for (;;) {
    skipWs();
    if (i >= n) throw new DatasetError(where, lineAt(text, n), 'unterminated JSON array');
    if (text[i] === ']') break;
    const start = i;
    // scan one value: track strings and nesting
    let depth = 0, inStr = false;
    for (; i < n; i++) {
      const c = text[i];
      if (inStr) {
        if (c === '\\') i++;
        else if (c === '"') inStr = false;
        continue;
      }
      if (c === '"') inStr = true;
      else if (c === '{' || c === '[') depth++;
      else if (c === '}' || c === ']') { if (depth === 0) break; depth--; }
      else if (c === ',' && depth === 0) break;
    }
    line = lineAt(text, start, lineFrom, line); lineFrom = start;
    const src = text.slice(start, i);
    try { out.push({ line, row: JSON.parse(src) }); } catch (e) { out.push({ line, error: `invalid JSON: ${(e as Error).message}` }); }
    if (i >= n) throw new DatasetError(where, lineAt(text, n), 'unterminated JSON array');
    if (text[i] === ',') i++;
  }
  return out;
}

/** The records of a CSV text (RFC 4180: quoted fields, "" escapes, newlines inside quotes, CRLF). */
export function parseCsv(text: string, delimiter = ',', where = 'csv'): { line: number; fields: string[] }[] {
  if (delimiter.length !== 1 || delimiter === '"' || delimiter === '\n' || delimiter === '\r') {
    throw new Error(`parseCsv: delimiter must be one character other than '"' and newlines, got ${JSON.stringify(delimiter)}`);
  }
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  const out: { line: number; fields: string[] }[] = [];
  const n = text.length;
  let i = 0, line = 1;
  while (i < n) {
    const recLine = line;
    const fields: string[] = [];
    let field = '';
    // one record
    for (;;) {
      if (i < n && text[i] === '"') {
        // quoted field
        const qLine = line;
        i++;
        let closed = false;
        while (i < n) {
          const c = text[i];
          if (c === '"') {
            if (text[i + 1] === '"') { field += '"'; i += 2; continue; }
            i++; closed = true; break;
          }
          if (c === '\n') line++;
          field += c; i++;
        }
        if (!closed) throw new DatasetError(where, qLine, 'unterminated quoted field (a \'"\' opened here is never closed)');
        // text after the closing quote up to the delimiter is kept literally (as Python's csv does)
        while (i < n && text[i] !== delimiter && text[i] !== '\n' && text[i] !== '\r') field += text[i++];
      } else {
        while (i < n && text[i] !== delimiter && text[i] !== '\n' && text[i] !== '\r') field += text[i++];
      }
      fields.push(field);
      field = '';
      if (i >= n) break;
      if (text[i] === delimiter) { i++; continue; }
      // newline: \r\n, \n or \r
      if (text[i] === '\r' && text[i + 1] === '\n') i += 2; else i++;
      line++;
      break;
    }
    if (fields.length === 1 && fields[0] === '') continue;   // blank line
    out.push({ line: recLine, fields });
  }
  return out;
}

function parseCsvRows(text: string, delimiter: string, where: string): RawRecord[] {
  const recs = parseCsv(text, delimiter, where);
  if (recs.length === 0) return [];
  const header = recs[0].fields.map((h) => h.trim());
  const seen = new Set<string>();
  for (const h of header) {
    if (h === '') throw new DatasetError(where, recs[0].line, 'empty column name in the CSV header');
    if (seen.has(h)) throw new DatasetError(where, recs[0].line, `duplicate column '${h}' in the CSV header`);
    seen.add(h);
  }
  return recs.slice(1).map(({ line, fields }) => {
    if (fields.length !== header.length) {
      return { line, error: `expected ${header.length} fields (${header.join(', ')}), got ${fields.length}` };
    }
    const row: RawRow = {};
    header.forEach((h, k) => { row[h] = fields[k]; });
    return { line, row };
  });
}

function fileTypeOf(file: string, given?: FileType): FileType {
  if (given) {
    if (given !== 'jsonl' && given !== 'json' && given !== 'csv') throw new Error(`loadDataset: fileType must be 'jsonl', 'json' or 'csv', got '${given}'`);
    return given;
  }
  const ext = path.extname(file).toLowerCase();
  if (ext === '.jsonl' || ext === '.ndjson') return 'jsonl';
  if (ext === '.json') return 'json';
  if (ext === '.csv' || ext === '.tsv') return 'csv';
  throw new Error(`loadDataset: cannot tell the file type of '${file}' from its extension; pass fileType: 'jsonl' | 'json' | 'csv'`);
}

// ------------------------------------------------------------------ entry point

/**
 * Load and validate a dataset from a file (JSONL, JSON array, CSV) or from in-memory rows.
 * Throws a DatasetError naming the file and line of the first malformed row, unless `skipInvalid`.
 */
export function loadDataset(source: string | unknown[], opts: LoadDatasetOptions = {}): Dataset {
  const fmtOpt = opts.format ?? 'auto';
  if (!['auto', 'text', 'completion', 'alpaca', 'chat'].includes(fmtOpt)) {
    throw new Error(`loadDataset: format must be 'auto', 'text', 'completion', 'alpaca' or 'chat', got '${fmtOpt}'`);
  }
  let records: RawRecord[];
  let where: string;
  let fromCsv = false;
  const inMemory = Array.isArray(source);
  if (inMemory) {
    where = 'rows';
    records = (source as unknown[]).map((row, i) => ({ line: i + 1, row }));
  } else if (typeof source === 'string') {
    where = source;
    let text: string;
    try { text = fs.readFileSync(source, 'utf8'); } catch (e) { throw new Error(`loadDataset: cannot read '${source}': ${(e as Error).message}`); }
    const type = fileTypeOf(source, opts.fileType);
    if (type === 'jsonl') records = parseJsonl(text);
    else if (type === 'json') records = parseJsonArray(text, where);
    else {
      fromCsv = true;
      records = parseCsvRows(text, opts.delimiter ?? (source.toLowerCase().endsWith('.tsv') ? '\t' : ','), where);
    }
  } else {
    throw new TypeError('loadDataset: source must be a file path or an array of rows');
  }
  const place = (line: number) => (inMemory ? { w: `rows[${line - 1}]`, l: 0 } : { w: where, l: line });

  const invalid: InvalidRow[] = [];
  const examples: Example[] = [];
  let format: DataFormat | null = fmtOpt === 'auto' ? null : fmtOpt;
  for (const rec of records) {
    let reason = rec.error;
    if (!reason) {
      if (format === null) {
        const d = detectFormat(rec.row);
        if (d === null) {
          const keys = rec.row && typeof rec.row === 'object' && !Array.isArray(rec.row) ? Object.keys(rec.row as object) : [];
          reason = `cannot detect the format from fields [${keys.join(', ')}] (expected one of ${Object.values(FORMAT_SHAPE).join(', ')})`;
        } else {
          format = d;
        }
      }
      if (!reason) {
        try { examples.push(toExample(rec.row, format!, fromCsv)); } catch (e) { reason = (e as Error).message; }
      }
    }
    if (reason) {
      if (!opts.skipInvalid) { const p = place(rec.line); throw new DatasetError(p.w, p.l, reason); }
      invalid.push({ line: rec.line, reason });
    }
  }
  return new Dataset(examples, format ?? (fmtOpt === 'auto' ? 'text' : fmtOpt), inMemory ? null : where, invalid);
}
