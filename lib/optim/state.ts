/**
 * state.ts — the serialisable form of an optimizer's state, and its flat (safetensors) encoding.
 *
 * `optimizer.state()` returns an {@link OptimizerState}: per parameter group the hyper-parameters
 * and the indices of its parameters (counted across groups in order, as torch's state_dict does),
 * and per parameter index its step count and state tensors:
 *   32-bit: `expAvg`, `expAvgSq` (f32; f64 for f64 parameters)
 *   8-bit:  `state1`, `state2` (u8 codes into bitsandbytes' signed / unsigned dynamic maps, blocks
 *           of 256) and `absmax1`, `absmax2` (f32, one per block)
 *
 * {@link flattenState} turns it into `{ tensors, metadata }` for `saveSafetensors(file, tensors,
 * { metadata })`; {@link unflattenState} reverses it after `loadSafetensors` + `readMetadata`.
 */
import { Tensor } from '../tensor/tensor';

/** State tensors of one parameter (which ones depends on the parameter's state kind). */
export interface ParamState {
  /** Number of updates applied to this parameter (torch's state['step']). */
  step: number;
  expAvg?: Tensor;
  expAvgSq?: Tensor;
  state1?: Tensor;
  state2?: Tensor;
  absmax1?: Tensor;
  absmax2?: Tensor;
}

/** Hyper-parameters of one group in a saved state. */
export interface SavedParamGroup {
  name?: string;
  lr: number;
  initialLr: number;
  betas: [number, number];
  eps: number;
  weightDecay: number;
  /** Indices of this group's parameters (global order across groups). */
  params: number[];
  /** Their names when the optimizer was given [name, tensor] pairs (checked on load). */
  paramNames: (string | null)[];
}

export interface OptimizerState {
  format: 'peftkit.adamw.v1';
  optimBits: 32 | 8;
  paged: boolean;
  paramGroups: SavedParamGroup[];
  /** Keyed by parameter index; parameters that never had a gradient have no entry. */
  state: Record<number, ParamState>;
}

export const STATE_TENSOR_KEYS = ['expAvg', 'expAvgSq', 'state1', 'state2', 'absmax1', 'absmax2'] as const;
export type StateTensorKey = typeof STATE_TENSOR_KEYS[number];

/** Dispose every tensor of a state returned by `state()` (it holds copies by default). */
export function disposeState(s: OptimizerState): void {
  for (const ps of Object.values(s.state)) {
    for (const k of STATE_TENSOR_KEYS) ps[k]?.dispose();
  }
}

/**
 * Flat encoding for safetensors: tensors named `state.<index>.<key>` and string metadata
 * (`peftkit.optimizer` holds the JSON of everything that is not a tensor).
 */
export function flattenState(s: OptimizerState): { tensors: Map<string, Tensor>; metadata: Record<string, string> } {
  const tensors = new Map<string, Tensor>();
  const steps: Record<string, number> = {};
  for (const [idx, ps] of Object.entries(s.state)) {
    steps[idx] = ps.step;
    for (const k of STATE_TENSOR_KEYS) {
      const t = ps[k];
      if (t) tensors.set(`state.${idx}.${k}`, t);
    }
  }
  const meta = { format: s.format, optimBits: s.optimBits, paged: s.paged, paramGroups: s.paramGroups, steps };
  return { tensors, metadata: { 'peftkit.optimizer': JSON.stringify(meta) } };
}

/** Inverse of {@link flattenState}. The tensors are used as they are (not copied). */
export function unflattenState(tensors: Map<string, Tensor> | Record<string, Tensor>, metadata: Record<string, string>): OptimizerState {
  const raw = metadata['peftkit.optimizer'];
  if (typeof raw !== 'string') throw new Error("unflattenState: metadata has no 'peftkit.optimizer' entry (not an optimizer state file?)");
  let meta: { format: string; optimBits: 32 | 8; paged: boolean; paramGroups: SavedParamGroup[]; steps: Record<string, number> };
  try { meta = JSON.parse(raw); } catch (e) { throw new Error(`unflattenState: bad 'peftkit.optimizer' metadata: ${(e as Error).message}`); }
  if (meta.format !== 'peftkit.adamw.v1') throw new Error(`unflattenState: unknown optimizer state format '${meta.format}'`);
  const state: Record<number, ParamState> = {};
  for (const [idx, step] of Object.entries(meta.steps)) state[Number(idx)] = { step };
  const entries = tensors instanceof Map ? [...tensors.entries()] : Object.entries(tensors);
  for (const [name, t] of entries) {
    const m = /^state\.(\d+)\.(\w+)$/.exec(name);
    if (!m || !(STATE_TENSOR_KEYS as readonly string[]).includes(m[2])) throw new Error(`unflattenState: unexpected tensor '${name}'`);
    const ps = state[Number(m[1])];
    if (!ps) throw new Error(`unflattenState: tensor '${name}' has no step count in the metadata`);
    ps[m[2] as StateTensorKey] = t;
  }
  return { format: 'peftkit.adamw.v1', optimBits: meta.optimBits, paged: meta.paged, paramGroups: meta.paramGroups, state };
}
