/**
 * recompute.ts — gradient checkpointing (per-layer activation recompute), as a hook on the model
 * instance: no change to lib/models is needed.
 *
 * `enableGradientCheckpointing(model)` finds the decoder layers (children of a ModuleList named
 * `layers`, `h` or `blocks`: Llama/Mistral/Qwen/Phi-3/Gemma and GPT-2) and replaces each layer's
 * `forward` on the instance with a wrapper that
 *   forward:  runs the original forward under noGrad() inside tidy(), so the layer's internal
 *             activations are freed at once; only the layer's tensor inputs are kept (native
 *             aliases), and the output gets one autograd node 'checkpoint' whose inputs are the
 *             inputs that require grad plus the layer's trainable parameters;
 *   backward: re-runs the original forward with grad recording on detached aliases of the inputs
 *             (leaves), backpropagates the incoming gradient through that sub-graph — trainable
 *             parameters accumulate their `.grad` directly — and returns the inputs' gradients to
 *             the outer graph. The recomputed activations are freed when it returns.
 * Peak activation memory drops from (all layers' internals) to (one layer's internals + each
 * layer's input), at the cost of a second forward per layer.
 *
 * Requirements on a layer: forward(x, ...rest) is deterministic given its inputs. Dropout inside
 * a layer must draw the same mask on recompute: every dropout in the library (LoRA dropout,
 * GPT-2's resid/attn dropout) takes its seeds from the shared stream of lib/ops/random.ts, which
 * is pinned before the forward and reset to the same value for the recompute (tested on GPT-2
 * with every dropout on). Prefix tuning, whose prefix keys/values reach the layers through the
 * KV cache, is refused with checkpointing, as PEFT does.
 *
 * Offload (`{ offload: true }`, the Trainer's `offloadActivations`; cuda models): each layer's
 * hidden-state input — the only activation kept from forward to backward — is copied to
 * page-locked host memory on a copy stream as soon as the layer has run, and its device memory is
 * released when the copy has landed (csrc/cuda/offload.cu). In backward, the layer being
 * recomputed waits for its own input and starts bringing back the input of the layer before it,
 * so that copy overlaps this layer's recompute and backward. Device memory for activations is
 * then about two layers' inputs plus one layer's internals, whatever the depth (as Unsloth's
 * offloaded checkpointing).
 */
import { native, NativeTensor } from '../native';
import { getDropoutSeed, setDropoutSeed } from '../ops/random';
import { Module } from '../nn/module';
import { enableGrad, isGradEnabled, noGrad, record, save } from '../tensor/autograd';
import { Tensor, tidy } from '../tensor/tensor';

type AnyFn = (...args: unknown[]) => unknown;
const PATCHED = Symbol('peftkit.checkpointed');

/** The decoder layers of a model: [dotted path, module]. */
export function decoderLayers(model: Module): [string, Module][] {
  return model.namedModules().filter(([p]) => /(^|\.)(layers|h|blocks)\.\d+$/.test(p));
}

/** A deep copy of args with every Tensor replaced by a marker; tensors are saved as native aliases. */
interface Frozen { tensors: NativeTensor[]; grads: boolean[]; tree: unknown }
const TENSOR_SLOT = Symbol('slot');

function freeze(v: unknown, out: Frozen, depth: number): unknown {
  if (v instanceof Tensor) {
    out.tensors.push(save(v));
    out.grads.push(v.requiresGrad);
    return { [TENSOR_SLOT]: out.tensors.length - 1 };
  }
  if (depth > 4 || v === null || typeof v !== 'object') return v;
  if (Array.isArray(v)) return v.map((e) => freeze(e, out, depth + 1));
  if (Object.getPrototypeOf(v) !== Object.prototype) return v;  // class instances (e.g. a KV cache) as they are
  const o: Record<string, unknown> = {};
  for (const [k, e] of Object.entries(v)) o[k] = freeze(e, out, depth + 1);
  return o;
}

function thaw(v: unknown, leaves: Tensor[]): unknown {
  if (v === null || typeof v !== 'object') return v;
  if (TENSOR_SLOT in (v as object)) return leaves[(v as Record<symbol, number>)[TENSOR_SLOT]];
  if (Array.isArray(v)) return v.map((e) => thaw(e, leaves));
  if (Object.getPrototypeOf(v) !== Object.prototype) return v;
  const o: Record<string, unknown> = {};
  for (const [k, e] of Object.entries(v)) o[k] = thaw(e, leaves);
  return o;
}

function collectInputs(v: unknown, out: Tensor[], depth: number): void {
  if (v instanceof Tensor) { out.push(v); return; }
  if (depth > 4 || v === null || typeof v !== 'object') return;
  if (Array.isArray(v)) { for (const e of v) collectInputs(e, out, depth + 1); return; }
  if (Object.getPrototypeOf(v) !== Object.prototype) return;
  for (const e of Object.values(v)) collectInputs(e, out, depth + 1);
}

/** Options of enableGradientCheckpointing. */
export interface CheckpointOptions {
  /** Keep the checkpointed layer inputs of cuda models in page-locked host memory (see the file comment). */
  offload?: boolean;
}

/**
 * The offloaded input of one checkpointed layer call: the host copy, and the device copy once a
 * prefetch has been issued. `prev` is the record of the layer that ran just before in the same
 * forward pass (the next one backward visits), so its input can be prefetched one layer ahead.
 */
interface OffloadRecord { host: NativeTensor | null; device: NativeTensor | null; prev: OffloadRecord | null; index: number }
interface OffloadChain { last: OffloadRecord | null }

function prefetch(rec: OffloadRecord, deferWait: boolean): void {
  if (rec.device || !rec.host) return;
  rec.device = native.prefetchToDevice(rec.host, deferWait) as NativeTensor;
  rec.host.dispose();   // the native side keeps the pinned buffer until the copy has landed
  rec.host = null;
}

/** Run `fn(...args)` of `layer` with activation recompute (see the file comment). */
export function checkpointed(layer: Module, fn: AnyFn, args: unknown[], offload: { chain: OffloadChain; index: number } | null = null): Tensor {
  const params = layer.parameters().filter((p) => p.requiresGrad);
  const inputs: Tensor[] = [];
  collectInputs(args, inputs, 0);
  const gradInputs = inputs.filter((t) => t.requiresGrad);
  if (!isGradEnabled() || (params.length === 0 && gradInputs.length === 0)) return fn.apply(layer, args) as Tensor;

  // Remember the dropout seed stream so the recompute draws the same masks.
  const seed = getDropoutSeed();
  const out = tidy(() => noGrad(() => fn.apply(layer, args) as Tensor));
  if (!(out instanceof Tensor)) throw new Error('gradient checkpointing: a decoder layer returned something other than a Tensor');
  const frozen: Frozen = { tensors: [], grads: [], tree: null };
  frozen.tree = freeze(args, frozen, 0);
  // Offload the hidden-state input (the first argument, slot 0); position tables and masks are
  // shared by every layer and stay on the device.
  let rec: OffloadRecord | null = null;
  if (offload && args[0] instanceof Tensor && args[0].device === 'cuda') {
    const last = offload.chain.last;
    rec = { host: native.offloadToHost(frozen.tensors[0]) as NativeTensor, device: null,
      prev: last && last.index < offload.index ? last : null, index: offload.index };
    offload.chain.last = rec;
    frozen.tensors[0].dispose();   // the device bytes go when the copy has landed (and the model drops its handle)
  }
  // The node's inputs: tensors of args that require grad (in slot order), then the parameters.
  const slotOfInput: number[] = [];
  const nodeInputs: Tensor[] = [];
  {
    let slot = 0;
    const walk = (v: unknown, depth: number) => {
      if (v instanceof Tensor) { if (v.requiresGrad) { nodeInputs.push(v); slotOfInput.push(slot); } slot++; return; }
      if (depth > 4 || v === null || typeof v !== 'object') return;
      if (Array.isArray(v)) { for (const e of v) walk(e, depth + 1); return; }
      if (Object.getPrototypeOf(v) !== Object.prototype) return;
      for (const e of Object.values(v)) walk(e, depth + 1);
    };
    walk(args, 0);
  }
  const nIn = nodeInputs.length;
  for (const p of params) nodeInputs.push(p);
  return record('checkpoint', out, nodeInputs, (g) => {
    if (rec) {
      // This layer's input: prefetched (deferred) by the layer after it, or fetched now.
      if (rec.device) native.waitCopy(rec.device);
      else prefetch(rec, false);
      frozen.tensors[0] = rec.device as NativeTensor;
      rec.device = null;
      // Start bringing back the input of the layer before this one (backward visits it next).
      if (rec.prev) prefetch(rec.prev, true);
      rec.prev = null;
    }
    const resumeSeed = getDropoutSeed();
    setDropoutSeed(seed);
    const grads = tidy(() => enableGrad(() => {
      const leaves = frozen.tensors.map((h, i) => {
        const t = new Tensor(native.alias(h));
        if (frozen.grads[i]) t.requiresGrad_(true);
        return t;
      });
      const a2 = thaw(frozen.tree, leaves) as unknown[];
      const y = fn.apply(layer, a2) as Tensor;
      if (!y.requiresGrad) return [] as (Tensor | null)[];
      y.backward(g);
      return slotOfInput.map((s) => leaves[s].grad);
    }));
    setDropoutSeed(resumeSeed);
    const res: (Tensor | null)[] = [];
    for (let i = 0; i < nIn; i++) res.push(grads[i] ?? null);
    for (let i = 0; i < params.length; i++) res.push(null);  // accumulated into .grad directly
    return res;
  }, frozen.tensors);
}

/**
 * Turn on per-layer recompute for every decoder layer of `model`; returns a function that turns
 * it off again. Calling it twice is harmless.
 */
export function enableGradientCheckpointing(model: Module, options: CheckpointOptions = {}): () => void {
  const layers = decoderLayers(model);
  if (layers.length === 0) throw new Error('gradientCheckpointing: no decoder layers found (expected a ModuleList named layers, h or blocks)');
  if (options.offload) {
    const onCpu = model.parameters().find((p) => p.device !== 'cuda');
    if (onCpu || model.parameters().length === 0) {
      throw new Error('gradientCheckpointing offload: activations are offloaded from the GPU to host memory, but this model is on the CPU ' +
        '(load it with device: \'cuda\', or train without offloadActivations)');
    }
  }
  const chain: OffloadChain = { last: null };
  const patched: Module[] = [];
  for (const [index, [, layer]] of layers.entries()) {
    const l = layer as unknown as Record<string | symbol, unknown> & { forward: AnyFn };
    if (l[PATCHED]) continue;
    const orig = Object.getPrototypeOf(layer).forward as AnyFn;
    if (typeof orig !== 'function') continue;
    const off = options.offload ? { chain, index } : null;
    l.forward = function (this: Module, ...args: unknown[]) { return checkpointed(layer, orig, args, off); };
    l[PATCHED] = true;
    patched.push(layer);
  }
  return () => {
    for (const layer of patched) {
      const l = layer as unknown as Record<string | symbol, unknown>;
      delete l.forward;
      delete l[PATCHED];
    }
  };
}
