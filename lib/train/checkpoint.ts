/**
 * checkpoint.ts — training checkpoints, written atomically.
 *
 * A checkpoint is a folder `<outputDir>/checkpoint-<step>/` holding
 *   trainable.safetensors   every trainable parameter by name (adapter weights, or all weights for
 *                           full fine-tuning), bit-exact
 *   optimizer.safetensors   the optimizer state (lib/optim flattenState)
 *   trainer_state.json      step, data position, scheduler, RNG, early stopping, log history
 *   adapter/                the PEFT adapter (when the model has saveAdapter), for use outside training
 *
 * Atomicity: everything is written into `<outputDir>/.tmp-checkpoint-<step>-<random>/`, each file
 * fsync'ed, then the folder is renamed to its final name (a rename within one filesystem is
 * atomic) and the parent folder fsync'ed. A crash at any moment leaves either no new checkpoint
 * (only a temp folder, ignored and cleaned later) or a complete one; the previous checkpoints are
 * untouched. After a successful save only the newest `keep` checkpoints remain.
 */
import * as fs from 'fs';
import * as path from 'path';
import { loadSafetensors, readMetadata, saveSafetensors } from '../io/safetensors';
import { flattenState, OptimizerState, unflattenState } from '../optim/state';
import { Tensor } from '../tensor/tensor';

export const CHECKPOINT_PREFIX = 'checkpoint-';
export const TRAINER_STATE_FILE = 'trainer_state.json';
export const TRAINABLE_FILE = 'trainable.safetensors';
export const OPTIMIZER_FILE = 'optimizer.safetensors';
const TMP_PREFIX = '.tmp-checkpoint-';

/** The JSON part of a checkpoint. */
export interface TrainerStateJson {
  format: 'peftkit.trainer.v1';
  globalStep: number;
  /** Data position: the next micro-batch is batch `batchIndex` of epoch `epoch`. */
  epoch: number;
  batchIndex: number;
  scheduler: { step: number } | null;
  /** RNG state of the trainer's generator (sfc32 words). */
  rng: number[];
  /** Dropout counter of the ops layer when available (see trainer.ts). */
  dropoutState?: number | null;
  tokensSeen: number;
  nonFiniteInRow: number;
  earlyStopping: { best: number | null; bad: number } | null;
  /** Every step's loss and lr, every eval (for the report and loss continuity after resume). */
  history: { steps: [number, number, number][]; evals: [number, number, number][] };
  totalSteps: number;
  args: Record<string, unknown>;
  savedAt: string;
}

export interface CheckpointContent {
  state: TrainerStateJson;
  /** Trainable parameters by name. */
  trainable: Map<string, Tensor>;
  optimizer: OptimizerState | null;
  /** Called with the temp folder to write extra files (e.g. the PEFT adapter) before the commit. */
  extra?: (tmpDir: string) => void | Promise<void>;
}

/** @internal Test hooks: called at named points of a save (throw to simulate a crash there). */
export const _hooks: { beforeCommit: ((tmpDir: string) => void) | null; afterFile: ((file: string) => void) | null } = {
  beforeCommit: null, afterFile: null,
};

function fsyncPath(p: string): void {
  let fd: number | null = null;
  try { fd = fs.openSync(p, 'r'); fs.fsyncSync(fd); } catch { /* directories cannot be fsync'ed on every platform */ } finally {
    if (fd !== null) try { fs.closeSync(fd); } catch { /* ignore */ }
  }
}

function writeFileSynced(file: string, data: string): void {
  const fd = fs.openSync(file, 'w', 0o644);
  try { fs.writeSync(fd, data); fs.fsyncSync(fd); } finally { fs.closeSync(fd); }
}

export function checkpointDir(outputDir: string, step: number): string {
  return path.join(outputDir, `${CHECKPOINT_PREFIX}${step}`);
}

/**
 * Write a checkpoint for `state.globalStep` into outputDir atomically; returns its folder. An
 * existing checkpoint of the same step is replaced (the old one is removed only after the new one
 * is in place). Keeps the newest `keep` checkpoints (0 or undefined: keep all).
 */
export async function saveTrainingCheckpoint(outputDir: string, c: CheckpointContent, keep?: number): Promise<string> {
  fs.mkdirSync(outputDir, { recursive: true });
  const step = c.state.globalStep;
  const final = checkpointDir(outputDir, step);
  const tmp = path.join(outputDir, `${TMP_PREFIX}${step}-${process.pid}-${Math.random().toString(36).slice(2, 10)}`);
  fs.mkdirSync(tmp);
  try {
    saveSafetensors(path.join(tmp, TRAINABLE_FILE), c.trainable, { metadata: { format: 'peftkit.trainable.v1', step: String(step) } });
    _hooks.afterFile?.(path.join(tmp, TRAINABLE_FILE));
    if (c.optimizer) {
      const { tensors, metadata } = flattenState(c.optimizer);
      saveSafetensors(path.join(tmp, OPTIMIZER_FILE), tensors, { metadata });
      _hooks.afterFile?.(path.join(tmp, OPTIMIZER_FILE));
    }
    if (c.extra) await c.extra(tmp);
    writeFileSynced(path.join(tmp, TRAINER_STATE_FILE), JSON.stringify(c.state, null, 1));
    _hooks.afterFile?.(path.join(tmp, TRAINER_STATE_FILE));
    fsyncPath(tmp);
    _hooks.beforeCommit?.(tmp);
    if (fs.existsSync(final)) {
      const old = path.join(outputDir, `${TMP_PREFIX}old-${step}-${Math.random().toString(36).slice(2, 10)}`);
      fs.renameSync(final, old);
      fs.renameSync(tmp, final);
      fs.rmSync(old, { recursive: true, force: true });
    } else {
      fs.renameSync(tmp, final);
    }
    fsyncPath(outputDir);
  } catch (e) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
  if (keep && keep > 0) rotateCheckpoints(outputDir, keep);
  return final;
}

/** Completed checkpoints in outputDir, oldest first: [step, folder]. */
export function listCheckpoints(outputDir: string): [number, string][] {
  if (!fs.existsSync(outputDir)) return [];
  const out: [number, string][] = [];
  for (const name of fs.readdirSync(outputDir)) {
    const m = /^checkpoint-(\d+)$/.exec(name);
    if (!m) continue;
    const dir = path.join(outputDir, name);
    if (!fs.existsSync(path.join(dir, TRAINER_STATE_FILE))) continue;
    out.push([Number(m[1]), dir]);
  }
  return out.sort((a, b) => a[0] - b[0]);
}

/** The newest completed checkpoint of outputDir, or null. */
export function latestCheckpoint(outputDir: string): string | null {
  const l = listCheckpoints(outputDir);
  return l.length ? l[l.length - 1][1] : null;
}

/** Remove all but the newest `keep` checkpoints, and stale temp folders of earlier crashes. */
export function rotateCheckpoints(outputDir: string, keep: number): void {
  const l = listCheckpoints(outputDir);
  for (const [, dir] of l.slice(0, Math.max(0, l.length - keep))) fs.rmSync(dir, { recursive: true, force: true });
  for (const name of fs.readdirSync(outputDir)) {
    if (name.startsWith(TMP_PREFIX) && !name.includes(`-${process.pid}-`)) fs.rmSync(path.join(outputDir, name), { recursive: true, force: true });
  }
}

/** Resolve `resumeFrom`: a checkpoint folder, an output folder (its latest checkpoint), or 'latest'. */
export function resolveCheckpoint(resumeFrom: string, outputDir: string): string {
  if (resumeFrom === 'latest') {
    const l = latestCheckpoint(outputDir);
    if (!l) throw new Error(`resumeFrom 'latest': no checkpoint in ${outputDir}`);
    return l;
  }
  if (!fs.existsSync(resumeFrom)) throw new Error(`resumeFrom: ${resumeFrom} does not exist`);
  if (fs.existsSync(path.join(resumeFrom, TRAINER_STATE_FILE))) return resumeFrom;
  const l = latestCheckpoint(resumeFrom);
  if (!l) throw new Error(`resumeFrom: ${resumeFrom} is neither a checkpoint (no ${TRAINER_STATE_FILE}) nor a folder with checkpoints`);
  return l;
}

/** Read a checkpoint folder (tensors are owned by the caller). */
export function loadTrainingCheckpoint(dir: string): { state: TrainerStateJson; trainable: Map<string, Tensor>; optimizer: OptimizerState | null } {
  const sf = path.join(dir, TRAINER_STATE_FILE);
  if (!fs.existsSync(sf)) throw new Error(`loadCheckpoint: ${dir} has no ${TRAINER_STATE_FILE} (incomplete or not a checkpoint)`);
  let state: TrainerStateJson;
  try { state = JSON.parse(fs.readFileSync(sf, 'utf8')); } catch (e) { throw new Error(`loadCheckpoint: ${sf}: ${(e as Error).message}`); }
  if (state.format !== 'peftkit.trainer.v1') throw new Error(`loadCheckpoint: ${sf}: unknown format ${JSON.stringify(state.format)}`);
  const trainable = loadSafetensors(path.join(dir, TRAINABLE_FILE));
  let optimizer: OptimizerState | null = null;
  const of = path.join(dir, OPTIMIZER_FILE);
  if (fs.existsSync(of)) {
    const tensors = loadSafetensors(of);
    try { optimizer = unflattenState(tensors, readMetadata(of) ?? {}); } catch (e) {
      for (const t of tensors.values()) t.dispose();
      for (const t of trainable.values()) t.dispose();
      throw new Error(`loadCheckpoint: ${of}: ${(e as Error).message}`);
    }
  }
  return { state, trainable, optimizer };
}
