/**
 * bnb_format.ts — 4-bit models in bitsandbytes' serialized layout, as transformers saves a model
 * loaded with BitsAndBytesConfig(load_in_4bit=True) (bnb.nn.Linear4bit._save_to_state_dict →
 * QuantState.as_dict(packed=True)). For a quantized layer at <p>:
 *
 *   <p>.weight                                  U8  [(n+1)/2, 1]   packed codes (element 2j high nibble)
 *   <p>.weight.absmax                           U8  [nblocks]      (F32 when not double-quantized)
 *   <p>.weight.quant_map                        F32 [16]
 *   <p>.weight.nested_absmax                    F32 [ceil(nblocks/256)]        (double quant only)
 *   <p>.weight.nested_quant_map                 F32 [256]                      (double quant only)
 *   <p>.weight.quant_state.bitsandbytes__nf4    U8  [len]  UTF-8 of json.dumps({"quant_type", "blocksize",
 *                                               "dtype", "shape", "nested_blocksize", "nested_dtype",
 *                                               "nested_offset"}) — Python's default separators ", " / ": "
 *   <p>.bias                                    as saved (float)
 *
 * plus every other parameter under its usual name, and config.json's `quantization_config`
 * (quant_method "bitsandbytes", load_in_4bit, bnb_4bit_*). loadModel() recognises such folders
 * (lib/models/load.ts) and rebuilds Linear4bit layers from them.
 */
import * as fs from 'fs';
import * as path from 'path';
import type { CausalLM } from '../models/base';
import { Module } from '../nn/module';
import { loadTensor, saveCheckpoint, SafetensorsHeader } from '../io/safetensors';
import { Tensor } from '../tensor/tensor';
import { Linear4bit } from './linear4bit';
import { ComputeDtype, dynamicMap, QuantizedTensor, QuantType } from './nf4';

/** Suffix of the packed JSON entry for a quant type. */
export function quantStateKey(t: QuantType): string { return `quant_state.bitsandbytes__${t}`; }

const TORCH_DTYPE: Record<ComputeDtype, string> = { bf16: 'bfloat16', f32: 'float32', f16: 'float16' };
const FROM_TORCH: Record<string, ComputeDtype> = { bfloat16: 'bf16', float32: 'f32', float16: 'f16', float: 'f32', half: 'f16' };

/**
 * Python's repr() of a float (what json.dumps writes): the shortest round-trip digits, in fixed
 * notation when -4 <= exponent < 16, else d.ddde±XX; integral values keep a '.0'.
 */
export function pyFloatRepr(x: number): string {
  if (Number.isNaN(x)) return 'NaN';
  if (!Number.isFinite(x)) return x > 0 ? 'Infinity' : '-Infinity';
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  const [mant, expS] = x.toExponential().split('e');   // shortest digits
  const exp = parseInt(expS, 10);
  const neg = mant.startsWith('-');
  const digits = mant.replace('-', '').replace('.', '');
  let s: string;
  if (exp >= -4 && exp < 16) {
    if (exp >= 0) {
      const intPart = digits.slice(0, exp + 1).padEnd(exp + 1, '0');
      const frac = digits.slice(exp + 1);
      s = `${intPart}.${frac || '0'}`;
    } else {
      s = `0.${'0'.repeat(-exp - 1)}${digits}`;
    }
  } else {
    const m = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    s = `${m}e${exp < 0 ? '-' : '+'}${String(Math.abs(exp)).padStart(2, '0')}`;
  }
  return neg ? `-${s}` : s;
}

/** The non-tensor part of bnb's QuantState.as_dict(packed=True), as json.dumps writes it. */
export function quantStateJson(q: QuantizedTensor): string {
  const parts = [
    `"quant_type": "${q.quantType}"`,
    `"blocksize": ${q.blockSize}`,
    `"dtype": "${TORCH_DTYPE[q.dtype]}"`,
    `"shape": [${q.shape.join(', ')}]`,
  ];
  if (q.nested) {
    parts.push(`"nested_blocksize": ${q.nested.blockSize}`, '"nested_dtype": "float32"', `"nested_offset": ${pyFloatRepr(q.nested.offset)}`);
  }
  return `{${parts.join(', ')}}`;
}

/** bnb's state-dict entries of one quantized weight, keyed by suffix after `<p>.weight` ('' = the data). */
export function packQuantState(q: QuantizedTensor): Map<string, Tensor> {
  const m = new Map<string, Tensor>();
  m.set('', q.data);
  m.set('.absmax', q.absmax);
  m.set('.quant_map', q.quantMap);
  if (q.nested) {
    m.set('.nested_absmax', q.nested.absmax);
    m.set('.nested_quant_map', q.nested.quantMap);
  }
  const bytes = Buffer.from(quantStateJson(q), 'utf8');
  m.set(`.${quantStateKey(q.quantType)}`, Tensor.fromBuffer(bytes, [bytes.length], 'u8'));
  return m;
}

/**
 * The model's state dict in bitsandbytes' layout: Linear4bit weights expanded to their quant
 * state entries, everything else as in stateDict(). The JSON entries are new tensors (returned in
 * `owned`, to be disposed by the caller).
 */
export function quantizedStateDict(model: Module): { tensors: Map<string, Tensor>; owned: Tensor[] } {
  const tensors = new Map<string, Tensor>();
  const owned: Tensor[] = [];
  const q4 = new Map<Tensor, string>();   // packed data -> module path
  for (const [p, m] of model.namedModules()) if (m instanceof Linear4bit) q4.set(m.weight, p);
  for (const [name, t] of model.stateDict()) {
    const p = q4.get(t);
    if (p === undefined) { tensors.set(name, t); continue; }
    const mod = model.getSubmodule(p) as Linear4bit;
    for (const [suffix, v] of packQuantState(mod.quantState)) {
      tensors.set(`${name}${suffix}`, v);
      if (suffix.startsWith('.quant_state.')) owned.push(v);
    }
  }
  return { tensors, owned };
}

/** transformers' BitsAndBytesConfig.to_dict() for a 4-bit model. */
export function bnbQuantizationConfig(o: { quantType: QuantType; doubleQuant: boolean; computeDtype: ComputeDtype; skipModules: string[] | null }): Record<string, unknown> {
  return {
    quant_method: 'bitsandbytes',
    _load_in_8bit: false,
    _load_in_4bit: true,
    llm_int8_threshold: 6.0,
    llm_int8_skip_modules: o.skipModules,
    llm_int8_enable_fp32_cpu_offload: false,
    llm_int8_has_fp16_weight: false,
    bnb_4bit_quant_type: o.quantType,
    bnb_4bit_use_double_quant: o.doubleQuant,
    bnb_4bit_compute_dtype: TORCH_DTYPE[o.computeDtype],
    bnb_4bit_quant_storage: 'uint8',
    load_in_4bit: true,
    load_in_8bit: false,
  };
}

/**
 * Save a model holding Linear4bit layers to `dir` in bitsandbytes' layout: model.safetensors (or
 * shards) + config.json with `quantization_config` + generation_config.json when known.
 */
export function saveQuantized(model: CausalLM, dir: string, opts: { maxShardBytes?: number; skipModules?: string[] } = {}): string[] {
  const layers = model.namedModules().filter(([, m]) => m instanceof Linear4bit) as [string, Linear4bit][];
  if (!layers.length) throw new Error('saveQuantized: the model has no 4-bit layers (quantize it with quantizeNF4 or loadModel(dir, { quantize }))');
  const q0 = layers[0][1].quantState;
  fs.mkdirSync(dir, { recursive: true });
  const { tensors, owned } = quantizedStateDict(model);
  try {
    const written = saveCheckpoint(dir, tensors, { maxShardBytes: opts.maxShardBytes });
    const raw = { ...(model.config?.raw ?? {}) } as Record<string, unknown>;
    let floatDtype: string | null = null;
    for (const [, t] of model.namedParameters()) {
      if (t.dtype === 'bf16') floatDtype = 'bfloat16'; else if (t.dtype === 'f16') floatDtype = 'float16'; else if (t.dtype === 'f32') floatDtype = 'float32';
      if (floatDtype) break;
    }
    if (floatDtype) { raw.torch_dtype = floatDtype; if ('dtype' in raw) raw.dtype = floatDtype; }
    const linearPaths = new Set(layers.map(([p]) => p));
    const skip = opts.skipModules ?? model.namedModules().filter(([p, m]) => p && !linearPaths.has(p) && m.constructor.name === 'Linear').map(([p]) => p);
    raw.quantization_config = bnbQuantizationConfig({ quantType: q0.quantType, doubleQuant: !!q0.nested, computeDtype: q0.dtype, skipModules: skip.length ? skip : null });
    const cfgPath = path.join(dir, 'config.json');
    fs.writeFileSync(cfgPath, JSON.stringify(raw, null, 2) + '\n');
    written.push(cfgPath);
    const gen = (model as unknown as { generationConfig?: unknown }).generationConfig;
    if (gen && typeof gen === 'object' && (gen as { raw?: unknown }).raw) {
      const gp = path.join(dir, 'generation_config.json');
      fs.writeFileSync(gp, JSON.stringify((gen as { raw: unknown }).raw, null, 2) + '\n');
      written.push(gp);
    }
    return written;
  } finally {
    for (const t of owned) t.dispose();
  }
}

/** Names of the quantized layers of a checkpoint (module paths with a `.weight.quant_state.bitsandbytes__*` entry). */
export function quantizedModulePaths(names: Iterable<string>): Map<string, QuantType> {
  const out = new Map<string, QuantType>();
  for (const n of names) {
    const m = /^(.*)\.weight\.quant_state\.bitsandbytes__(nf4|fp4)$/.exec(n);
    if (m) out.set(m[1], m[2] as QuantType);
  }
  return out;
}

/** Is `name` one of bnb's extra entries of a quantized layer at `p` (everything under `<p>.weight.`)? */
export function isQuantStateEntry(name: string, p: string): boolean { return name.startsWith(`${p}.weight.`); }

function fail(file: string, p: string, msg: string): never {
  throw new Error(`bitsandbytes checkpoint ${file}: layer '${p}': ${msg}`);
}

/**
 * Rebuild the QuantizedTensor of layer `p` from a checkpoint (tensor name -> header), checking
 * every entry against the JSON quant state. `expectShape` is the (out, in) the model implies.
 */
export function readQuantizedWeight(tensors: Map<string, SafetensorsHeader>, p: string, quantType: QuantType,
                                    expectShape?: readonly number[]): QuantizedTensor {
  const get = (suffix: string, required = true): Tensor | null => {
    const name = `${p}.weight${suffix}`;
    const h = tensors.get(name);
    if (!h) { if (required) fail([...tensors.values()][0]?.path ?? '?', p, `missing tensor '${name}'`); return null; }
    return loadTensor(h, name, { dtype: 'f32' });   // float entries as f32; u8 entries stay u8
  };
  const file = tensors.get(`${p}.weight`)?.path ?? '?';
  const js = get(`.${quantStateKey(quantType)}`)!;
  let meta: Record<string, unknown>;
  try { meta = JSON.parse(Buffer.from(js.toTypedArray() as Uint8Array).toString('utf8')); } catch (e) { fail(file, p, `quant_state is not valid JSON: ${(e as Error).message}`); }
  finally { js.dispose(); }
  if (meta!.quant_type !== quantType) fail(file, p, `quant_type ${JSON.stringify(meta!.quant_type)} does not match the entry name (${quantType})`);
  const shape = meta!.shape as number[];
  if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d > 0)) fail(file, p, `bad shape ${JSON.stringify(shape)}`);
  if (expectShape && (shape.length !== expectShape.length || shape.some((d, i) => d !== expectShape[i]))) {
    fail(file, p, `quantized shape [${shape}] but the model expects [${expectShape}]`);
  }
  const blockSize = meta!.blocksize as number;
  const dtype = FROM_TORCH[String(meta!.dtype)];
  if (!dtype) fail(file, p, `unsupported dtype ${JSON.stringify(meta!.dtype)}`);
  const n = shape.reduce((a, b) => a * b, 1), nb = Math.ceil(n / blockSize);
  const owned: Tensor[] = [];
  try {
    const data = get('')!; owned.push(data);
    if (data.dtype !== 'u8' || data.numel !== Math.ceil(n / 2)) fail(file, p, `weight must be U8 with ${Math.ceil(n / 2)} bytes, got ${data.dtype} [${data.shape}]`);
    const absmax = get('.absmax')!; owned.push(absmax);
    if (absmax.numel !== nb) fail(file, p, `absmax has ${absmax.numel} entries, expected ${nb}`);
    const quantMap = get('.quant_map')!; owned.push(quantMap);
    let nested = null;
    if ('nested_absmax' in meta! || tensors.has(`${p}.weight.nested_absmax`) || absmax.dtype === 'u8') {
      const na = get('.nested_absmax')!; owned.push(na);
      const nm = get('.nested_quant_map', false) ?? dynamicMap(); owned.push(nm);
      const nbs = Number(meta!.nested_blocksize ?? 256);
      const off = Number(meta!.nested_offset);
      if (!Number.isFinite(off)) fail(file, p, `nested_offset ${JSON.stringify(meta!.nested_offset)} is not a number`);
      if (na.dtype !== 'f32' || na.numel !== Math.ceil(nb / nbs)) fail(file, p, `nested_absmax must be float with ${Math.ceil(nb / nbs)} entries`);
      if (nm.numel !== 256) fail(file, p, `nested_quant_map must have 256 entries, got ${nm.numel}`);
      nested = { absmax: na, quantMap: nm, blockSize: nbs, offset: Math.fround(off) };
    } else if (absmax.dtype !== 'f32') {
      fail(file, p, `absmax must be float without double quantization, got ${absmax.dtype}`);
    }
    if (quantMap.numel !== 16) fail(file, p, `quant_map must have 16 entries, got ${quantMap.numel}`);
    return new QuantizedTensor({ quantType, shape, blockSize, dtype, data, absmax, quantMap, nested });
  } catch (e) {
    for (const t of owned) t.dispose();
    throw e;
  }
}
