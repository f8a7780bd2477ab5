/**
 * merge.ts — merge LoRA adapters into a 4-bit (QLoRA) base and write a plain bf16 / f32
 * HuggingFace model folder that loadModel (and transformers) load as an ordinary model.
 *
 * For every 4-bit layer W (Linear4bit): W' = dequantize(W) + Σ s·B·A over the active adapters
 * (DoRA: W' = m / ‖W + s·B·A‖_row · (W + s·B·A)), computed in f32 and rounded to the output dtype;
 * GPT-2 layers that were Conv1D are written back as [in, out]. Other parameters are converted to
 * the output dtype. Works on
 *   - a PeftModel (wrapWithLora / loadAdapter over a quantized model): the adapters are read
 *     through the LoRA layers' public API (weightsOf, scaling, activeAdapters, useDora);
 *   - a model with Linear4bit layers plus explicit `deltas` {modulePath: {loraA, loraB, scaling}};
 *   - a model with Linear4bit layers alone (plain dequantization).
 * The file is written tensor by tensor (each merged weight is produced, written and freed before
 * the next), so peak memory is the 4-bit model plus one float layer — never the merged model.
 */
import * as fs from 'fs';
import * as path from 'path';
import { writeTensorAt } from '../io/safetensors';
import { native } from '../native';
import type { CausalLM } from '../models/base';
import { Module } from '../nn/module';
import { add, cast, div, mul, sqrt, square } from '../ops/elementwise';
import { matmul } from '../ops/matmul';
import { sum } from '../ops/reduce';
import { contiguous, transpose, reshape } from '../ops/shape';
import { noGrad } from '../tensor/autograd';
import { DType, dtypeSize } from '../tensor/dtype';
import { Tensor } from '../tensor/tensor';
import { Linear4bit } from './linear4bit';
import { dequantize } from './nf4';

/** One LoRA update of a module: W += scaling · loraB · loraA (A [r, in], B [out, r]). */
export interface LoraDelta { loraA: Tensor; loraB: Tensor; scaling: number; magnitude?: Tensor | null }

export interface MergeQuantizedOptions {
  /** Output dtype of every floating parameter (default 'bf16'). */
  dtype?: 'bf16' | 'f32' | 'f16';
  /** Explicit LoRA updates by module path (relative to the CausalLM), when the model holds no LoRA layers. */
  deltas?: Map<string, LoraDelta> | Record<string, LoraDelta>;
  /** Shard size of model-0000i-of-0000n.safetensors (default 5e9 bytes, as transformers). */
  maxShardBytes?: number;
}

interface Entry { name: string; shape: number[]; dtype: DType; produce: () => Tensor }

type LoraLike = Module & {
  baseLayer: Module; activeAdapters: string[]; scaling: Map<string, number>; useDora: Map<string, boolean>;
  disabled: boolean; hasAdapter(n: string): boolean; weightsOf(n: string): { A: Tensor; B: Tensor; bB: Tensor | null };
  magnitude?: { get(n: string): { weight: Tensor } | undefined };
};
function isLoraLinear(m: Module): m is LoraLike {
  const x = m as unknown as Record<string, unknown>;
  return typeof x.weightsOf === 'function' && 'baseLayer' in x && x.scaling instanceof Map;
}
function isLoraOther(m: Module): boolean {
  const x = m as unknown as Record<string, unknown>;
  return 'baseLayer' in x && x.scaling instanceof Map && typeof x.weightsOf !== 'function';
}
type WrapperLike = Module & { activeModule(): Module; originalModule: Module; activeAdapter: string | null };
function isWrapper(m: Module): m is WrapperLike {
  const x = m as unknown as Record<string, unknown>;
  return typeof x.activeModule === 'function' && 'originalModule' in x;
}

/** W (out, in) f32 + Σ deltas (f32), DoRA-scaled when a magnitude is given. Consumes `w`. */
function applyDeltas(w: Tensor, deltas: LoraDelta[]): Tensor {
  return noGrad(() => {
    let cur = w;
    for (const d of deltas) {
      const A = cast(d.loraA, 'f32'), B = cast(d.loraB, 'f32');
      const ba = matmul(B, A);
      const sba = mul(ba, d.scaling);
      let next = add(cur, sba);
      if (d.magnitude) {
        const n = sqrt(sum(square(next), 1));                       // ‖W + sBA‖ per output row
        const m = cast(d.magnitude, 'f32');
        const scale = reshape(div(m, n), [-1, 1]);
        const scaled = mul(next, scale);
        for (const t of [n, m, scale, next]) t.dispose();
        next = scaled;
      }
      for (const t of [ba, sba]) t.dispose();
      if (A !== d.loraA) A.dispose();
      if (B !== d.loraB) B.dispose();
      cur.dispose();
      cur = next;
    }
    return cur;
  });
}

function asDeltaMap(d: MergeQuantizedOptions['deltas']): Map<string, LoraDelta> {
  if (!d) return new Map();
  return d instanceof Map ? d : new Map(Object.entries(d));
}

/** The CausalLM inside a PeftModel (or the model itself). */
function innerModel(model: Module): Module {
  const x = model as unknown as { getBaseModel?: () => Module };
  return typeof x.getBaseModel === 'function' ? x.getBaseModel() : model;
}

/** Plan every tensor of the merged model: names as in the plain HF checkpoint. */
function planEntries(root: Module, deltas: Map<string, LoraDelta>, dtype: DType): Entry[] {
  const out: Entry[] = [];
  const seen = new Set<Tensor>();
  const usedDeltas = new Set<string>();
  const emitTensor = (name: string, t: Tensor) => {
    if (seen.has(t)) return;   // tied weights once (the first name, as stateDict)
    seen.add(t);
    const float = isFloatDtype(t.dtype);
    out.push({ name, shape: [...t.shape], dtype: float ? dtype : t.dtype,
      produce: () => (t.dtype === dtype || !float ? new Tensor(native.clone(t.native)) : cast(t, dtype)) });
  };
  const emitWeight = (prefix: string, base: Module, ds: LoraDelta[]) => {
    const lin4 = base instanceof Linear4bit ? base : null;
    const w = base.getTensor('weight') as Tensor;
    if (seen.has(w)) return;
    seen.add(w);
    const conv = lin4 ? lin4.fromConv1D : base.constructor.name === 'Conv1D';
    const outF = lin4 ? lin4.outFeatures : conv ? w.shape[1] : w.shape[0];
    const inF = lin4 ? lin4.inFeatures : conv ? w.shape[0] : w.shape[1];
    out.push({
      name: `${prefix}.weight`, shape: conv ? [inF, outF] : [outF, inF], dtype,
      produce: () => noGrad(() => {
        let wf: Tensor;
        if (lin4) wf = dequantize(lin4.quantState, 'f32');
        else { const wt = conv ? transpose(w, 0, 1) : w; wf = wt.dtype === 'f32' ? contiguous(wt) : cast(wt, 'f32'); if (wt !== w && wt !== wf) wt.dispose(); }
        let merged = ds.length ? applyDeltas(wf, ds) : wf;
        if (conv) { const t = transpose(merged, 0, 1); const c = contiguous(t); t.dispose(); merged.dispose(); merged = c; }
        if (merged.dtype === dtype) return merged;
        const r = cast(merged, dtype); merged.dispose(); return r;
      }),
    });
    if (hasOwn(base, 'bias')) { const b = base.getTensor('bias'); if (b) emitTensor(`${prefix}.bias`, b); }
  };
  const walk = (m: Module, prefix: string) => {
    const at = (n: string) => (prefix ? `${prefix}.${n}` : n);
    if (isLoraLinear(m)) {
      const ds: LoraDelta[] = [];
      if (!m.disabled) {
        for (const a of m.activeAdapters.filter((x) => m.hasAdapter(x))) {
          const { A, B, bB } = m.weightsOf(a);
          if (bB) throw new Error(`mergeQuantized: '${prefix}': adapters with lora_bias cannot be merged into a 4-bit base yet`);
          const dora = m.useDora.get(a) ? m.magnitude?.get(a)?.weight ?? null : null;
          ds.push({ loraA: A, loraB: B, scaling: m.scaling.get(a)!, magnitude: dora });
        }
      }
      emitWeight(prefix, m.baseLayer, ds);
      return;
    }
    if (isLoraOther(m)) throw new Error(`mergeQuantized: '${prefix}' is a ${m.constructor.name} (LoRA on a non-linear layer); merge it with the adapter's own merge() first`);
    if (isWrapper(m)) { walk(m.activeAdapter !== null ? m.activeModule() : m.originalModule, prefix); return; }
    if (m instanceof Linear4bit || deltas.has(prefix)) {
      const d = deltas.get(prefix);
      if (d) usedDeltas.add(prefix);
      emitWeight(prefix, m, d ? [d] : []);
      return;
    }
    const own = m as unknown as { _params: Map<string, Tensor | null>; _buffers: Map<string, Tensor | null>; _nonPersistent: Set<string> };
    for (const [n, t] of own._params) if (t) emitTensor(at(n), t);
    for (const [n, t] of own._buffers) if (t && !own._nonPersistent.has(n)) emitTensor(at(n), t);
    for (const [n, c] of m.namedChildren()) walk(c, at(n));
  };
  walk(root, '');
  for (const k of deltas.keys()) if (!usedDeltas.has(k)) throw new Error(`mergeQuantized: no linear layer '${k}' for the given delta`);
  return out;
}

function hasOwn(m: Module, name: string): boolean {
  return (m as unknown as { _params: Map<string, unknown> })._params.has(name);
}
function isFloatDtype(d: DType): boolean { return d === 'f32' || d === 'bf16' || d === 'f16' || d === 'f64'; }

const ST: Record<string, string> = { f32: 'F32', bf16: 'BF16', f16: 'F16', f64: 'F64', i32: 'I32', i64: 'I64', u8: 'U8' };

/** Write entries to one safetensors file, producing each tensor just before it is written. */
function writeStreaming(file: string, entries: Entry[]): void {
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  let off = 0;
  const places: [Entry, number][] = [];
  for (const e of entries) {
    const n = e.shape.reduce((a, b) => a * b, 1) * dtypeSize(e.dtype);
    header[e.name] = { dtype: ST[e.dtype], shape: e.shape, data_offsets: [off, off + n] };
    places.push([e, off]);
    off += n;
  }
  let json = Buffer.from(JSON.stringify(header), 'utf8');
  const pad = (8 - (json.length % 8)) % 8;
  if (pad) json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  const start = 8 + json.length;
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.tmp-${process.pid}-${Math.random().toString(36).slice(2, 8)}`);
  const fd = fs.openSync(tmp, 'wx', 0o644);
  let ok = false;
  try {
    fs.writeSync(fd, len, 0, 8, 0);
    fs.writeSync(fd, json, 0, json.length, 8);
    fs.ftruncateSync(fd, start + off);
    for (const [e, o] of places) {
      const t = e.produce();
      try {
        if (t.dtype !== e.dtype || t.shape.join(',') !== e.shape.join(',')) {
          throw new Error(`mergeQuantized: internal: '${e.name}' produced ${t.dtype}[${t.shape}] for ${e.dtype}[${e.shape}]`);
        }
        writeTensorAt(tmp, start + o, t);   // merged weights of a model on cuda are written from the host
      } finally { t.dispose(); }
    }
    fs.fsyncSync(fd);
    ok = true;
  } finally {
    fs.closeSync(fd);
    if (!ok) { try { fs.unlinkSync(tmp); } catch { /* gone */ } }
  }
  fs.renameSync(tmp, file);
}

/**
 * Merge the adapters of `model` (a PeftModel over a 4-bit model, or a model with Linear4bit
 * layers and optional explicit `deltas`) into dequantized weights and write a float HF folder:
 * model.safetensors (or shards + index), config.json without quantization_config, and
 * generation_config.json when known. Returns the files written.
 */
export function mergeQuantized(model: Module, dir: string, opts: MergeQuantizedOptions = {}): string[] {
  const dtype: DType = opts.dtype ?? 'bf16';
  if (dtype !== 'bf16' && dtype !== 'f32' && dtype !== 'f16') throw new TypeError(`mergeQuantized: dtype must be 'bf16', 'f32' or 'f16', got ${JSON.stringify(dtype)}`);
  const inner = innerModel(model);
  const entries = planEntries(inner, asDeltaMap(opts.deltas), dtype);
  fs.mkdirSync(dir, { recursive: true });
  const max = opts.maxShardBytes ?? 5e9;
  const shards: Entry[][] = [[]];
  let size = 0, total = 0;
  for (const e of entries) {
    const n = e.shape.reduce((a, b) => a * b, 1) * dtypeSize(e.dtype);
    total += n;
    if (size > 0 && size + n > max) { shards.push([]); size = 0; }
    shards[shards.length - 1].push(e);
    size += n;
  }
  const written: string[] = [];
  if (shards.length === 1) {
    const f = path.join(dir, 'model.safetensors');
    writeStreaming(f, shards[0]);
    written.push(f);
  } else {
    const pad = (i: number) => String(i).padStart(5, '0');
    const weightMap: Record<string, string> = {};
    shards.forEach((s, i) => {
      const name = `model-${pad(i + 1)}-of-${pad(shards.length)}.safetensors`;
      writeStreaming(path.join(dir, name), s);
      for (const e of s) weightMap[e.name] = name;
      written.push(path.join(dir, name));
    });
    const sorted: Record<string, string> = {};
    for (const k of Object.keys(weightMap).sort()) sorted[k] = weightMap[k];
    const idx = path.join(dir, 'model.safetensors.index.json');
    fs.writeFileSync(idx, JSON.stringify({ metadata: { total_size: total }, weight_map: sorted }, null, 2) + '\n');
    written.push(idx);
  }
  const lm = inner as unknown as CausalLM;
  const raw = { ...(lm.config?.raw ?? {}) } as Record<string, unknown>;
  delete raw.quantization_config;
  const torchName = dtype === 'bf16' ? 'bfloat16' : dtype === 'f16' ? 'float16' : 'float32';
  raw.torch_dtype = torchName;
  if ('dtype' in raw) raw.dtype = torchName;
  const cfgPath = path.join(dir, 'config.json');
  fs.writeFileSync(cfgPath, JSON.stringify(raw, null, 2) + '\n');
  written.push(cfgPath);
  const gen = (lm as unknown as { generationConfig?: { raw?: unknown } | null }).generationConfig;
  if (gen && gen.raw) {
    const gp = path.join(dir, 'generation_config.json');
    fs.writeFileSync(gp, JSON.stringify(gen.raw, null, 2) + '\n');
    written.push(gp);
  }
  return written;
}
