/**
 * config.ts — PEFT's adapter_config.json, shared by every method.
 *
 * PEFT writes the full dataclass of the method's config, sorted by key, indented by 2 (its
 * `save_pretrained`), with `inference_mode: true`. Each method declares the exact key set of
 * PEFT 0.21 with their defaults (`PeftConfigSchema`); writing emits those keys only, reading
 * takes the keys it knows and ignores the rest (configs written by newer or older PEFT versions
 * load as long as the keys that matter are there).
 */
import * as fs from 'fs';
import * as path from 'path';

/** Name of the adapter config file in an adapter folder. */
export const ADAPTER_CONFIG_NAME = 'adapter_config.json';
/** Name of the adapter weights file in an adapter folder. */
export const ADAPTER_WEIGHTS_NAME = 'adapter_model.safetensors';
/** The PEFT version whose file format peftkit writes. */
export const PEFT_VERSION = '0.21.0';

/** PEFT's `peft_type` values (the ones peftkit knows about). */
export type PeftType = 'LORA' | 'IA3' | 'PROMPT_TUNING' | 'PREFIX_TUNING' | 'P_TUNING' | 'ADALORA' | 'LOHA' | 'LOKR' | string;

/** JSON values as they appear in adapter_config.json. */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [k: string]: JsonValue };
export type JsonObject = { [k: string]: JsonValue };

/** Keys every PEFT config has (PeftConfigMixin + PeftConfig). */
export const BASE_CONFIG_DEFAULTS: JsonObject = {
  auto_mapping: null,
  base_model_name_or_path: null,
  inference_mode: false,
  peft_type: null,
  peft_version: PEFT_VERSION,
  revision: null,
  task_type: null,
};

/** Read and parse `dir/adapter_config.json` (throws an error naming the file on any problem). */
export function readAdapterConfig(dir: string): JsonObject {
  const file = path.join(dir, ADAPTER_CONFIG_NAME);
  if (!fs.existsSync(file)) throw new Error(`readAdapterConfig: ${file} does not exist (not a PEFT adapter folder?)`);
  let obj: unknown;
  try {
    obj = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new Error(`readAdapterConfig: ${file} is not valid JSON: ${(e as Error).message}`);
  }
  if (!obj || typeof obj !== 'object' || Array.isArray(obj)) throw new Error(`readAdapterConfig: ${file} must hold a JSON object`);
  const cfg = obj as JsonObject;
  if (typeof cfg.peft_type !== 'string') throw new Error(`readAdapterConfig: ${file} has no "peft_type"`);
  return cfg;
}

/** The adapter type of a folder ('LORA', 'IA3', ...). */
export function adapterType(dir: string): PeftType {
  return readAdapterConfig(dir).peft_type as string;
}

/**
 * Keep only the keys of `schema` (filling missing ones with the schema's defaults), sorted.
 * `values` may hold extra keys: they are dropped.
 */
export function normalizeConfig(values: JsonObject, schema: JsonObject): JsonObject {
  const out: JsonObject = {};
  for (const k of Object.keys(schema).sort()) out[k] = k in values ? values[k] : schema[k];
  return out;
}

/** PEFT's serialisation: keys sorted, 2-space indent (json.dumps(..., indent=2, sort_keys=True)). */
export function stringifyConfig(cfg: JsonObject, floatKeys: readonly string[] = []): string {
  const o = sortDeep(cfg) as JsonObject;
  const floats = new Set(floatKeys);
  const keys = Object.keys(o);
  if (keys.length === 0) return '{}';
  return '{\n' + keys.map((k) => {
    const v = o[k];
    const s = floats.has(k) && typeof v === 'number' && Number.isInteger(v) ? `${v}.0` : pythonJson(v, 2);
    return '  ' + pythonJson(k, 2) + ': ' + s;
  }).join(',\n') + '\n}';
}

/**
 * Write `cfg` (already normalised to PEFT's keys) as `dir/adapter_config.json` (temp file + rename).
 * `floatKeys`: top-level keys Python holds as floats (written `0.0`, not `0`).
 */
export function writeAdapterConfig(dir: string, cfg: JsonObject, floatKeys: readonly string[] = []): void {
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, ADAPTER_CONFIG_NAME);
  const tmp = path.join(dir, `.${ADAPTER_CONFIG_NAME}.tmp-${process.pid}-${Math.random().toString(36).slice(2, 10)}`);
  fs.writeFileSync(tmp, stringifyConfig(cfg, floatKeys));
  fs.renameSync(tmp, file);
}

function sortDeep(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortDeep);
  if (v && typeof v === 'object') {
    const o: Record<string, unknown> = {};
    for (const k of Object.keys(v as object).sort()) o[k] = sortDeep((v as Record<string, unknown>)[k]);
    return o;
  }
  return v;
}

// json.dumps(indent=2): empty containers stay `{}` / `[]`, separators ", " -> "," at line ends, ": ".
// Floats keep a decimal point (Python writes 8.0 for a float 8.0 but 8 for an int; JS cannot tell
// them apart, so integral numbers are written as ints — PEFT reads both).
function pythonJson(v: JsonValue, indent: number): string {
  const pad = ' '.repeat(indent + 2), end = ' '.repeat(indent);
  if (v === null) return 'null';
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) return Number.isNaN(v) ? 'NaN' : v > 0 ? 'Infinity' : '-Infinity';
    return String(v);
  }
  if (typeof v === 'string') return JSON.stringify(v).replace(/[\u007f-\uffff]/g, (c) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0'));
  if (Array.isArray(v)) {
    if (v.length === 0) return '[]';
    return '[\n' + v.map((e) => pad + pythonJson(e, indent + 2)).join(',\n') + '\n' + end + ']';
  }
  const keys = Object.keys(v);
  if (keys.length === 0) return '{}';
  return '{\n' + keys.map((k) => pad + pythonJson(k, indent + 2) + ': ' + pythonJson(v[k], indent + 2)).join(',\n') + '\n' + end + '}';
}
