/**
 * inspect.ts — `peftkit inspect <dir>`: what a model folder holds, from config.json and the
 * safetensors headers only (no weights are read): architecture, shape of the network, parameter
 * count, the checkpoint's dtypes, and the memory its weights need in f32 / bf16 / f16 and as NF4
 * (QLoRA: 4-bit linear-layer weights with one f32 absmax per 64 values; embeddings, norms and
 * lm_head stay in bf16).
 */
import * as fs from 'fs';
import * as path from 'path';
import { openCheckpoint } from '../io/safetensors';
import { loadConfig, ModelConfig } from '../models/config';

export interface InspectReport {
  dir: string;
  architecture: string;
  modelType: string;
  layers: number;
  hiddenSize: number;
  intermediateSize: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  vocabSize: number;
  contextLength: number;
  tiedEmbeddings: boolean;
  rope: string | null;
  parameters: number;
  /** Parameters of linear layers inside the decoder blocks (what NF4 quantizes). */
  linearParameters: number;
  checkpointDtypes: Record<string, number>;
  files: string[];
  fileBytes: number;
  memory: { f32: number; bf16: number; f16: number; nf4: number; nf4DoubleQuant: number };
}

const NF4_BLOCK = 64;

export function inspectModel(dir: string): InspectReport {
  const cfg: ModelConfig = loadConfig(dir);
  const ck = openCheckpoint(dir);
  let params = 0, linear = 0;
  const dtypes: Record<string, number> = {};
  for (const [name, h] of ck.tensors) {
    if (/rotary_emb\.inv_freq$/.test(name) || /\.attn\.(bias|masked_bias)$/.test(name) && cfg.modelType === 'gpt2') continue;
    if (cfg.tieWordEmbeddings && name === 'lm_head.weight') continue;
    const t = h.tensors.get(name)!;
    const n = t.shape.reduce((a, b) => a * b, 1);
    params += n;
    dtypes[t.dtype] = (dtypes[t.dtype] ?? 0) + n;
    const inBlock = /(^|\.)(layers|h)\.\d+\./.test(name);
    if (inBlock && t.shape.length === 2 && name.endsWith('.weight')) linear += n;
  }
  const other = params - linear;
  const nf4 = linear * 0.5 + (linear / NF4_BLOCK) * 4 + other * 2;
  // double quantization: absmax as 8-bit with one f32 scale per 256 blocks
  const nf4dq = linear * 0.5 + (linear / NF4_BLOCK) * (1 + 4 / 256) + other * 2;
  const fileBytes = ck.files.reduce((s, f) => s + fs.statSync(f).size, 0);
  const rope = cfg.rope ? `${cfg.rope.type} (theta ${cfg.rope.theta}${cfg.rope.factor !== undefined ? `, factor ${cfg.rope.factor}` : ''}${cfg.rope.partialRotaryFactor !== 1 ? `, partial ${cfg.rope.partialRotaryFactor}` : ''})` : null;
  return {
    dir: path.resolve(dir),
    architecture: cfg.architectures[0] ?? cfg.modelType,
    modelType: cfg.modelType,
    layers: cfg.numLayers, hiddenSize: cfg.hiddenSize, intermediateSize: cfg.intermediateSize,
    heads: cfg.numHeads, kvHeads: cfg.numKvHeads, headDim: cfg.headDim, vocabSize: cfg.vocabSize,
    contextLength: cfg.maxPositionEmbeddings, tiedEmbeddings: cfg.tieWordEmbeddings, rope,
    parameters: params, linearParameters: linear, checkpointDtypes: dtypes,
    files: ck.files.map((f) => path.basename(f)), fileBytes,
    memory: { f32: params * 4, bf16: params * 2, f16: params * 2, nf4: Math.ceil(nf4), nf4DoubleQuant: Math.ceil(nf4dq) },
  };
}

export function formatBytes(n: number): string {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0, v = n;
  while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
  return `${i === 0 ? v : v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2)} ${u[i]}`;
}
export function formatCount(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}K`;
  return String(n);
}

export function formatReport(r: InspectReport): string {
  const dt = Object.entries(r.checkpointDtypes).map(([k, v]) => `${k} (${formatCount(v)})`).join(', ');
  const lines = [
    `${r.architecture}  (model_type ${r.modelType})  ${r.dir}`,
    `  layers ${r.layers}, hidden ${r.hiddenSize}, intermediate ${r.intermediateSize}, heads ${r.heads} (kv ${r.kvHeads}), head_dim ${r.headDim}`,
    `  vocab ${r.vocabSize}, context ${r.contextLength}${r.tiedEmbeddings ? ', tied embeddings' : ''}${r.rope ? `, rope ${r.rope}` : ', learned positions'}`,
    `  parameters ${formatCount(r.parameters)} (${r.parameters.toLocaleString('en-US')}; ${formatCount(r.linearParameters)} in decoder linear layers)`,
    `  checkpoint dtype ${dt}; ${r.files.length} file${r.files.length > 1 ? 's' : ''}, ${formatBytes(r.fileBytes)}`,
    '  weights in memory:',
    `    f32   ${formatBytes(r.memory.f32)}`,
    `    bf16  ${formatBytes(r.memory.bf16)}`,
    `    f16   ${formatBytes(r.memory.f16)}`,
    `    nf4   ${formatBytes(r.memory.nf4)} (${formatBytes(r.memory.nf4DoubleQuant)} with double quantization; non-linear weights in bf16)`,
  ];
  return lines.join('\n');
}
