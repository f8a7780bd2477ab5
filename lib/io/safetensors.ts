/**
 * safetensors.ts — reader and writer of the safetensors format (https://github.com/huggingface/safetensors),
 * plus sharded checkpoints (`model.safetensors.index.json`).
 *
 * Layout: 8-byte little-endian header length N, N bytes of JSON
 * `{"__metadata__": {str: str}, "<name>": {"dtype", "shape", "data_offsets": [begin, end]}, ...}`
 * (offsets relative to the byte after the header), then the data.
 *
 * Reading validates everything before any tensor memory is touched: a sane header length, JSON that
 * parses to an object, known dtype names, integer shapes whose byte size equals the offset range,
 * ranges inside the file, no overlaps and no holes (as the reference implementation requires).
 * Tensors are streamed: each tensor's byte range is read by the native core (pread) straight into
 * the tensor's own memory, so a load never holds the weights twice. Conversion to another float
 * dtype goes through one temporary of that single tensor.
 *
 * Writing goes to a temporary file in the same folder, fsync'ed, then renamed over the target, so
 * an interrupted save never leaves a corrupt checkpoint behind.
 */
import * as fs from 'fs';
import * as path from 'path';
import { native, NativeTensor } from '../native';
import { DType, dtypeSize, isFloat } from '../tensor/dtype';
import { Tensor } from '../tensor/tensor';

/** Header length limit (the reference implementation uses 100 MB). */
export const MAX_HEADER_BYTES = 100_000_000;

/** safetensors dtype names and their element sizes. */
const ST_SIZES: Record<string, number> = {
  BOOL: 1, U8: 1, I8: 1, F8_E5M2: 1, F8_E4M3: 1, F8_E8M0: 1, F4: 1, F6_E2M3: 1, F6_E3M2: 1,
  I16: 2, U16: 2, F16: 2, BF16: 2, I32: 4, U32: 4, F32: 4, I64: 8, U64: 8, F64: 8, C64: 8,
};
/** safetensors dtype -> peftkit dtype (those we can hold). */
const ST_TO_PK: Record<string, DType> = { F32: 'f32', F16: 'f16', BF16: 'bf16', F64: 'f64', I32: 'i32', I64: 'i64', U8: 'u8', BOOL: 'u8' };
const PK_TO_ST: Record<DType, string> = { f32: 'F32', f16: 'F16', bf16: 'BF16', f64: 'F64', i32: 'I32', i64: 'I64', u8: 'U8' };

/** One tensor entry of a header, with absolute file offsets. */
export interface TensorInfo {
  name: string;
  /** safetensors dtype name ('F32', 'BF16', ...). */
  dtype: string;
  shape: number[];
  /** Absolute byte offsets in the file: [begin, end). */
  begin: number;
  end: number;
}

/** A validated safetensors header. */
export interface SafetensorsHeader {
  path: string;
  fileSize: number;
  /** First data byte (8 + header length). */
  dataOffset: number;
  metadata: Record<string, string> | null;
  /** Tensors in file order (by offset). */
  tensors: Map<string, TensorInfo>;
}

export class SafetensorsError extends Error {
  constructor(message: string) { super(message); this.name = 'SafetensorsError'; }
}

function fail(file: string, msg: string, tensor?: string): never {
  throw new SafetensorsError(`safetensors: ${file}${tensor !== undefined ? `: tensor '${tensor}'` : ''}: ${msg}`);
}

/** Read and validate the header of `file` (no tensor data is read). */
export function readHeader(file: string): SafetensorsHeader {
  let fd: number;
  try { fd = fs.openSync(file, 'r'); } catch (e) { fail(file, `cannot open: ${(e as Error).message}`); }
  try {
    const fileSize = fs.fstatSync(fd).size;
    if (fileSize < 8) fail(file, `file has ${fileSize} bytes, too short for the 8-byte header length (truncated or not a safetensors file)`);
    const lenBuf = Buffer.alloc(8);
    fs.readSync(fd, lenBuf, 0, 8, 0);
    const n = lenBuf.readBigUInt64LE(0);
    if (n > BigInt(MAX_HEADER_BYTES)) fail(file, `header length ${n} exceeds the ${MAX_HEADER_BYTES}-byte limit (corrupt header or not a safetensors file)`);
    const headerLen = Number(n);
    if (headerLen < 2) fail(file, `header length ${headerLen} is too small (corrupt header)`);
    if (8 + headerLen > fileSize) fail(file, `header claims ${headerLen} bytes but the file has only ${fileSize - 8} after the length (truncated)`);
    const hb = Buffer.alloc(headerLen);
    let got = 0;
    while (got < headerLen) {
      const r = fs.readSync(fd, hb, got, headerLen - got, 8 + got);
      if (r <= 0) fail(file, 'unexpected end of file while reading the header (truncated)');
      got += r;
    }
    return parseHeader(file, hb, fileSize);
  } finally {
    fs.closeSync(fd);
  }
}

/** Validate a header buffer (exposed for tests). */
export function parseHeader(file: string, hb: Buffer, fileSize: number): SafetensorsHeader {
  const headerLen = hb.length;
  const dataOffset = 8 + headerLen;
  if (hb[0] !== 0x7b) fail(file, `header does not start with '{' (corrupt header or not a safetensors file)`);
  let json: unknown;
  try { json = JSON.parse(hb.toString('utf8')); } catch (e) { fail(file, `header is not valid JSON (corrupt header): ${(e as Error).message}`); }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) fail(file, 'header JSON is not an object (corrupt header)');
  const dataSize = fileSize - dataOffset;
  let metadata: Record<string, string> | null = null;
  const entries: TensorInfo[] = [];
  for (const [name, v] of Object.entries(json as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (v === null || typeof v !== 'object' || Array.isArray(v)) fail(file, '__metadata__ must be an object of strings');
      for (const [k, s] of Object.entries(v as Record<string, unknown>)) {
        if (typeof s !== 'string') fail(file, `__metadata__['${k}'] must be a string, got ${typeof s}`);
      }
      metadata = v as Record<string, string>;
      continue;
    }
    if (v === null || typeof v !== 'object' || Array.isArray(v)) fail(file, 'entry is not an object', name);
    const e = v as Record<string, unknown>;
    const dtype = e.dtype;
    if (typeof dtype !== 'string' || !(dtype in ST_SIZES)) fail(file, `unknown dtype ${JSON.stringify(dtype)} (expected one of ${Object.keys(ST_SIZES).join(', ')})`, name);
    const shape = e.shape;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) fail(file, `shape ${JSON.stringify(shape)} is not a list of non-negative integers`, name);
    const offs = e.data_offsets;
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      fail(file, `data_offsets ${JSON.stringify(offs)} is not a pair of non-negative integers`, name);
    }
    const [b, en] = offs as number[];
    if (en < b) fail(file, `data_offsets [${b}, ${en}] end before they begin`, name);
    let numel = 1;
    for (const d of shape as number[]) numel *= d;
    // Sub-byte types (F4, F6) pack elements; only check the byte-sized ones exactly.
    const bits = dtype === 'F4' ? 4 : dtype.startsWith('F6_') ? 6 : ST_SIZES[dtype] * 8;
    const need = Math.ceil((numel * bits) / 8);
    if (!Number.isSafeInteger(numel) || en - b !== need) {
      fail(file, `shape [${shape}] of ${dtype} needs ${need} bytes but data_offsets [${b}, ${en}] span ${en - b}`, name);
    }
    if (en > dataSize) {
      fail(file, `data_offsets [${b}, ${en}] run past the end of the data (${dataSize} bytes after the header): the file is truncated`, name);
    }
    entries.push({ name, dtype, shape: shape as number[], begin: dataOffset + b, end: dataOffset + en });
  }
  // No overlaps, no holes (the data buffer must be exactly covered, in some order).
  const sorted = [...entries].sort((a, c) => a.begin - c.begin || a.end - c.end);
  let at = dataOffset;
  let prev: TensorInfo | null = null;
  for (const t of sorted) {
    if (t.begin < at) fail(file, `data_offsets [${t.begin - dataOffset}, ${t.end - dataOffset}] overlap tensor '${prev!.name}' (corrupt header)`, t.name);
    if (t.begin > at) fail(file, `hole in the data: bytes [${at - dataOffset}, ${t.begin - dataOffset}) belong to no tensor (corrupt header)`, t.name);
    at = t.end;
    prev = t;
  }
  if (at !== fileSize) {
    fail(file, `the tensors cover ${at - dataOffset} data bytes but the file holds ${dataSize} after the header (corrupt header or trailing garbage)`);
  }
  const tensors = new Map<string, TensorInfo>();
  for (const t of sorted) tensors.set(t.name, t);
  return { path: file, fileSize, dataOffset, metadata, tensors };
}

/** peftkit dtype of a safetensors dtype, or null when peftkit cannot hold it. */
export function pkDType(stDtype: string): DType | null { return ST_TO_PK[stDtype] ?? null; }

export interface LoadTensorOptions {
  /** Convert floating tensors to this dtype (integer tensors are left as they are). */
  dtype?: DType;
}

/** Read one tensor of a validated header into a new Tensor. */
export function loadTensor(header: SafetensorsHeader, name: string, opts: LoadTensorOptions = {}): Tensor {
  const info = header.tensors.get(name);
  if (!info) fail(header.path, 'no such tensor in the file', name);
  const src = pkDType(info.dtype);
  if (!src) fail(header.path, `dtype ${info.dtype} is not supported (peftkit reads F32, F16, BF16, F64, I64, I32, U8, BOOL)`, name);
  const t = Tensor.empty(info.shape, { dtype: src });
  try {
    if (t.numel > 0) native.readFileInto(header.path, info.begin, t.native);
  } catch (e) {
    t.dispose();
    fail(header.path, (e as Error).message, name);
  }
  const want = opts.dtype;
  if (!want || want === src || !isFloat(src) || !isFloat(want)) return t;
  const c = new Tensor(native.cast(t.native, want));
  t.dispose();
  return c;
}

/**
 * Read one tensor straight into an existing contiguous tensor `dst` of the same shape (any float
 * dtype; converted when it differs from the file's). Used by model loaders to fill parameters in place.
 */
export function readTensorInto(header: SafetensorsHeader, name: string, dst: Tensor): void {
  const info = header.tensors.get(name);
  if (!info) fail(header.path, 'no such tensor in the file', name);
  if (info.shape.length !== dst.shape.length || info.shape.some((d, i) => d !== dst.shape[i])) {
    fail(header.path, `shape [${info.shape}] does not match the expected [${dst.shape}]`, name);
  }
  const src = pkDType(info.dtype);
  if (!src) fail(header.path, `dtype ${info.dtype} is not supported`, name);
  if (src === dst.dtype && dst.native.isContiguous) {
    try { if (dst.numel > 0) native.readFileInto(header.path, info.begin, dst.native); } catch (e) { fail(header.path, (e as Error).message, name); }
    return;
  }
  const tmp = loadTensor(header, name);
  try { native.copy_(dst.native, tmp.native); } finally { tmp.dispose(); }
}

export interface LoadOptions extends LoadTensorOptions {
  /** Only tensors whose name passes (default: all). */
  filter?: (name: string) => boolean;
}

/** Load every tensor of one file (in file order). */
export function loadSafetensors(file: string, opts: LoadOptions = {}): Map<string, Tensor> {
  const h = readHeader(file);
  const out = new Map<string, Tensor>();
  try {
    for (const name of h.tensors.keys()) {
      if (opts.filter && !opts.filter(name)) continue;
      out.set(name, loadTensor(h, name, opts));
    }
  } catch (e) {
    for (const t of out.values()) t.dispose();
    throw e;
  }
  return out;
}

/** The `__metadata__` of a file (null when absent). */
export function readMetadata(file: string): Record<string, string> | null { return readHeader(file).metadata; }

// ---------------------------------------------------------------- writing

export interface SaveOptions {
  metadata?: Record<string, string>;
}

type TensorMap = Map<string, Tensor> | Record<string, Tensor>;
function entriesOf(tensors: TensorMap): [string, Tensor][] {
  return tensors instanceof Map ? [...tensors.entries()] : Object.entries(tensors);
}

/** Write a temp file next to `file`, fsync it, rename it over `file`; the temp file is removed on error. */
function atomicWrite(file: string, write: (tmp: string, fd: number) => void): void {
  const dir = path.dirname(path.resolve(file));
  const tmp = path.join(dir, `.${path.basename(file)}.tmp-${process.pid}-${Math.random().toString(36).slice(2, 10)}`);
  const fd = fs.openSync(tmp, 'wx', 0o644);
  let ok = false;
  try {
    write(tmp, fd);
    fs.fsyncSync(fd);
    ok = true;
  } finally {
    fs.closeSync(fd);
    if (!ok) { try { fs.unlinkSync(tmp); } catch { /* already gone */ } }
  }
  try {
    fs.renameSync(tmp, file);
  } catch (e) {
    try { fs.unlinkSync(tmp); } catch { /* ignore */ }
    throw e;
  }
}

/**
 * Write `t`'s bytes into the existing `file` at `offset`. A cuda tensor is copied to the host
 * first (writeFileFrom reads host memory), one tensor at a time.
 */
export function writeTensorAt(file: string, offset: number, t: Tensor): void {
  if (t.numel === 0) return;
  if (t.device === 'cpu') { native.writeFileFrom(file, offset, t.native); return; }
  const h = native.toDevice(t.native, 'cpu') as NativeTensor;
  try { native.writeFileFrom(file, offset, h); } finally { h.dispose(); }
}

/**
 * Save tensors to `file` in safetensors format (atomically: temp file + rename). Tensors are
 * written in their own dtype, largest element size first then by name (every tensor stays aligned).
 * Tensors on cuda are copied to the host one at a time as they are written (checkpoints and
 * adapters of a model trained on the GPU save without a second host copy of every tensor).
 */
export function saveSafetensors(file: string, tensors: TensorMap, opts: SaveOptions = {}): void {
  const list = entriesOf(tensors);
  const names = new Set<string>();
  for (const [name, t] of list) {
    if (typeof name !== 'string' || name === '' || name === '__metadata__') throw new SafetensorsError(`saveSafetensors: invalid tensor name ${JSON.stringify(name)}`);
    if (names.has(name)) throw new SafetensorsError(`saveSafetensors: duplicate tensor name '${name}'`);
    names.add(name);
    if (!(t instanceof Tensor) || t.disposed) throw new SafetensorsError(`saveSafetensors: '${name}' is not a live Tensor`);
    if (t.device !== 'cpu' && t.device !== 'cuda') throw new SafetensorsError(`saveSafetensors: '${name}' is on ${t.device}; move it to the CPU first`);
  }
  if (opts.metadata) {
    for (const [k, v] of Object.entries(opts.metadata)) {
      if (typeof v !== 'string') throw new SafetensorsError(`saveSafetensors: metadata '${k}' must be a string`);
    }
  }
  list.sort(([na, a], [nb, b]) => dtypeSize(b.dtype) - dtypeSize(a.dtype) || (na < nb ? -1 : na > nb ? 1 : 0));
  const header: Record<string, unknown> = {};
  if (opts.metadata) header.__metadata__ = opts.metadata;
  let off = 0;
  const places: [Tensor, number][] = [];
  for (const [name, t] of list) {
    const n = t.numel * dtypeSize(t.dtype);
    header[name] = { dtype: PK_TO_ST[t.dtype], shape: [...t.shape], data_offsets: [off, off + n] };
    places.push([t, off]);
    off += n;
  }
  let json = Buffer.from(JSON.stringify(header), 'utf8');
  const pad = (8 - (json.length % 8)) % 8;
  if (pad) json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const lenBuf = Buffer.alloc(8);
  lenBuf.writeBigUInt64LE(BigInt(json.length));
  const dataStart = 8 + json.length;
  atomicWrite(file, (tmp, fd) => {
    fs.writeSync(fd, lenBuf, 0, 8, 0);
    fs.writeSync(fd, json, 0, json.length, 8);
    fs.ftruncateSync(fd, dataStart + off);
    for (const [t, o] of places) writeTensorAt(tmp, dataStart + o, t);
  });
}

// ---------------------------------------------------------------- sharded checkpoints

export const INDEX_FILE = 'model.safetensors.index.json';
export const SINGLE_FILE = 'model.safetensors';

/** The safetensors files of a checkpoint folder and which file holds each tensor. */
export interface CheckpointFiles {
  /** Absolute paths of the files (one, or the shards of the index). */
  files: string[];
  /** Tensor name -> validated header of the file that holds it. */
  tensors: Map<string, SafetensorsHeader>;
  /** The index file, when sharded. */
  index: string | null;
}

/**
 * Find and validate the weights of a checkpoint folder: `model.safetensors`, or the shards named
 * by `model.safetensors.index.json` (every tensor of the weight map must be in the file it names,
 * and no tensor may appear in two shards). Headers only; no tensor data is read.
 */
export function openCheckpoint(dir: string, opts: { single?: string; index?: string } = {}): CheckpointFiles {
  const indexPath = path.join(dir, opts.index ?? INDEX_FILE);
  const singlePath = path.join(dir, opts.single ?? SINGLE_FILE);
  if (fs.existsSync(indexPath)) {
    let idx: unknown;
    try { idx = JSON.parse(fs.readFileSync(indexPath, 'utf8')); } catch (e) { throw new SafetensorsError(`safetensors: ${indexPath}: not valid JSON: ${(e as Error).message}`); }
    const wm = (idx as { weight_map?: unknown })?.weight_map;
    if (!wm || typeof wm !== 'object' || Array.isArray(wm)) throw new SafetensorsError(`safetensors: ${indexPath}: missing "weight_map" object`);
    const byFile = new Map<string, string[]>();
    for (const [name, f] of Object.entries(wm as Record<string, unknown>)) {
      if (typeof f !== 'string' || f.includes('/') || f.includes('\\') || f === '..') {
        throw new SafetensorsError(`safetensors: ${indexPath}: weight_map['${name}'] must be a file name in the folder, got ${JSON.stringify(f)}`);
      }
      const l = byFile.get(f) ?? [];
      l.push(name);
      byFile.set(f, l);
    }
    const tensors = new Map<string, SafetensorsHeader>();
    const files: string[] = [];
    for (const [f, names] of byFile) {
      const p = path.join(dir, f);
      if (!fs.existsSync(p)) throw new SafetensorsError(`safetensors: ${p}: shard named by ${INDEX_FILE} (for tensor '${names[0]}') does not exist`);
      const h = readHeader(p);
      files.push(p);
      for (const n of names) {
        if (!h.tensors.has(n)) fail(p, `listed in ${INDEX_FILE} but not present in this shard`, n);
      }
      for (const n of h.tensors.keys()) {
        const prev = tensors.get(n);
        if (prev) fail(p, `also present in ${prev.path}`, n);
        tensors.set(n, h);
      }
    }
    return { files, tensors, index: indexPath };
  }
  if (!fs.existsSync(singlePath)) {
    throw new SafetensorsError(`safetensors: no ${path.basename(singlePath)} or ${INDEX_FILE} in ${dir}`);
  }
  const h = readHeader(singlePath);
  const tensors = new Map<string, SafetensorsHeader>();
  for (const n of h.tensors.keys()) tensors.set(n, h);
  return { files: [singlePath], tensors, index: null };
}

/** Load every tensor of a (possibly sharded) checkpoint folder. */
export function loadCheckpoint(dir: string, opts: LoadOptions = {}): Map<string, Tensor> {
  const ck = openCheckpoint(dir);
  const out = new Map<string, Tensor>();
  try {
    for (const [name, h] of ck.tensors) {
      if (opts.filter && !opts.filter(name)) continue;
      out.set(name, loadTensor(h, name, opts));
    }
  } catch (e) {
    for (const t of out.values()) t.dispose();
    throw e;
  }
  return out;
}

/**
 * Save a checkpoint folder: one `model.safetensors` when it fits in `maxShardBytes` (default 5 GB,
 * as transformers), else shards `model-0000i-of-0000n.safetensors` plus the index.
 */
export function saveCheckpoint(dir: string, tensors: TensorMap, opts: SaveOptions & { maxShardBytes?: number } = {}): string[] {
  const max = opts.maxShardBytes ?? 5e9;
  const list = entriesOf(tensors);
  fs.mkdirSync(dir, { recursive: true });
  const shards: [string, Tensor][][] = [[]];
  let size = 0, total = 0;
  for (const e of list) {
    const n = e[1].numel * dtypeSize(e[1].dtype);
    total += n;
    if (size > 0 && size + n > max) { shards.push([]); size = 0; }
    shards[shards.length - 1].push(e);
    size += n;
  }
  const metadata = { format: 'pt', ...(opts.metadata ?? {}) };
  if (shards.length === 1) {
    const p = path.join(dir, SINGLE_FILE);
    saveSafetensors(p, new Map(shards[0]), { metadata });
    return [p];
  }
  const pad = (i: number) => String(i).padStart(5, '0');
  const weightMap: Record<string, string> = {};
  const written: string[] = [];
  shards.forEach((s, i) => {
    const f = `model-${pad(i + 1)}-of-${pad(shards.length)}.safetensors`;
    saveSafetensors(path.join(dir, f), new Map(s), { metadata });
    for (const [n] of s) weightMap[n] = f;
    written.push(path.join(dir, f));
  });
  const sortedMap: Record<string, string> = {};
  for (const k of Object.keys(weightMap).sort()) sortedMap[k] = weightMap[k];
  const idx = path.join(dir, INDEX_FILE);
  atomicWrite(idx, (_tmp, fd) => { fs.writeSync(fd, JSON.stringify({ metadata: { total_size: total }, weight_map: sortedMap }, null, 2) + '\n'); });
  written.push(idx);
  return written;
}
