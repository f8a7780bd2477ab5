/**
 * nn.ts — the transformer building blocks: softmax / logSoftmax, RMSNorm (Llama and Gemma
 * flavours), LayerNorm, rotary embeddings, token embedding and the fused cross-entropy loss —
 * each with its backward wired into autograd through the native backward twin.
 *
 * Native kernels: csrc/cpu/{softmax,norm,rope,embedding,cross_entropy}.cpp. Numerics follow HF
 * transformers / torch, including where the eager bf16 graph rounds (RMSNorm, RoPE), so a bf16
 * model gives the same bits. What each backward keeps alive is the minimum it needs:
 *   softmax / logSoftmax: the output y          rmsNorm: x, weight, rstd (per row)
 *   layerNorm: x, weight, mean, rstd           applyRotary: cos, sin
 *   embedding: ids                              crossEntropy: logits (an alias), labels, lse
 */
import { native, NativeTensor } from '../native';
import { needsGrad, record, save } from '../tensor/autograd';
import { checkDType, DType, isFloat } from '../tensor/dtype';
import { Tensor } from '../tensor/tensor';
import { checkTensor, wrap } from './util';

function checkInt(v: unknown, op: string, what: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v)) throw new TypeError(`${op}: ${what} must be an integer, got ${String(v)}`);
  return v;
}

function checkEps(eps: unknown, op: string): number {
  if (typeof eps !== 'number' || !Number.isFinite(eps) || eps < 0) {
    throw new RangeError(`${op}: eps must be a finite number >= 0, got ${String(eps)}`);
  }
  return eps;
}

function optTensor(t: Tensor | null | undefined, op: string, arg: string): Tensor | null {
  return t == null ? null : checkTensor(t, op, arg);
}

// ---------------------------------------------------------------------------- softmax

/** softmax(x) along `dim` (default last), in x's dtype; computed in f32 (f64 for f64) with max subtraction. */
export function softmax(x: Tensor, dim = -1): Tensor {
  const op = 'softmax';
  checkTensor(x, op, 'x'); checkInt(dim, op, 'dim');
  const out = wrap(native.softmax(x.native, dim));
  if (!needsGrad(x)) return out;
  const sy = save(out);  // dx = y * (dy - Σ dy·y): only y is needed
  return record(op, out, [x], (g) => [wrap(native.softmax_backward(sy, g.native, dim))], [sy]);
}

/** log(softmax(x)) along `dim` (default last), computed stably as (x − max) − log Σ exp(x − max). */
export function logSoftmax(x: Tensor, dim = -1): Tensor {
  const op = 'logSoftmax';
  checkTensor(x, op, 'x'); checkInt(dim, op, 'dim');
  const out = wrap(native.log_softmax(x.native, dim));
  if (!needsGrad(x)) return out;
  const sy = save(out);  // dx = dy − exp(y) · Σ dy
  return record(op, out, [x], (g) => [wrap(native.log_softmax_backward(sy, g.native, dim))], [sy]);
}

// ---------------------------------------------------------------------------- norms

export interface RmsNormOptions {
  /**
   * Gemma's RMSNorm: y = (h · (1 + w)).to(x.dtype) with h in f32. Default false (Llama, Mistral,
   * Qwen, ...: y = w · h.to(x.dtype), rounding h to x's dtype before the weight multiply).
   */
  unitOffset?: boolean;
}

/**
 * RMSNorm over the last dim, HF LlamaRMSNorm semantics: h = x·rsqrt(mean(x²) + eps) in f32.
 * `weight` (C) may be null (no affine). The output dtype is x's (promoted with weight's for the
 * Llama flavour, like torch's `w * h`). Gradients flow to x and weight.
 */
export function rmsNorm(x: Tensor, weight: Tensor | null, eps = 1e-6, opts: RmsNormOptions = {}): Tensor {
  const op = 'rmsNorm';
  checkTensor(x, op, 'x');
  const w = optTensor(weight, op, 'weight');
  checkEps(eps, op);
  const unitOffset = opts.unitOffset ?? false;
  if (typeof unitOffset !== 'boolean') throw new TypeError(`${op}: unitOffset must be a boolean, got ${typeof unitOffset}`);
  const [y, rstd] = native.rms_norm(x.native, w ? w.native : null, eps, unitOffset) as NativeTensor[];
  const out = wrap(y);
  if (!needsGrad(x, w)) { rstd.dispose(); return out; }
  const sx = save(x), sw = w ? save(w) : null;
  const gx = x.requiresGrad, gw = !!w && w.requiresGrad;
  return record(op, out, [x, w], (g) => {
    const [dx, dw] = native.rms_norm_backward(sx, sw, rstd, g.native, unitOffset, gx, gw) as (NativeTensor | null)[];
    return [dx ? wrap(dx) : null, dw ? wrap(dw) : null];
  }, sw ? [sx, sw, rstd] : [sx, rstd]);
}

/**
 * torch.nn.LayerNorm over the last dim: (x − mean)·rsqrt(var + eps)·w + b with the biased
 * variance; weight and bias (C) are optional. Output in x's dtype; gradients to x, weight, bias.
 */
export function layerNorm(x: Tensor, weight: Tensor | null, bias: Tensor | null, eps = 1e-5): Tensor {
  const op = 'layerNorm';
  checkTensor(x, op, 'x');
  const w = optTensor(weight, op, 'weight'), b = optTensor(bias, op, 'bias');
  checkEps(eps, op);
  const [y, mean, rstd] = native.layer_norm(x.native, w ? w.native : null, b ? b.native : null, eps) as NativeTensor[];
  const out = wrap(y);
  if (!needsGrad(x, w, b)) { mean.dispose(); rstd.dispose(); return out; }
  const sx = save(x), sw = w ? save(w) : null;
  const gx = x.requiresGrad, gw = !!w && w.requiresGrad, gb = !!b && b.requiresGrad;
  const saved = [sx, mean, rstd];
  if (sw) saved.push(sw);
  return record(op, out, [x, w, b], (g) => {
    const [dx, dw, db] = native.layer_norm_backward(sx, sw, mean, rstd, g.native, gx, gw, gb) as (NativeTensor | null)[];
    return [dx ? wrap(dx) : null, dw ? wrap(dw) : null, db ? wrap(db) : null];
  }, saved);
}

// ---------------------------------------------------------------------------- rotary

/**
 * cos/sin tables of HF's rotary embedding: freqs = positions (B,T) ⊗ invFreq (R/2), emb =
 * cat(freqs, freqs), cos = cos(emb)·scaling → each (B,T,R) in `dtype` (default f32). Computed in
 * f32 like HF (f64 when invFreq is f64). `scaling` is the rope type's attention_scaling (1 for
 * the default rope). positions: i64 or i32. No gradient (tables are buffers).
 */
export function ropeTables(positions: Tensor, invFreq: Tensor, scaling = 1, dtype: DType = 'f32'): [Tensor, Tensor] {
  const op = 'ropeTables';
  checkTensor(positions, op, 'positions'); checkTensor(invFreq, op, 'invFreq');
  if (typeof scaling !== 'number' || !Number.isFinite(scaling)) throw new RangeError(`${op}: scaling must be a finite number, got ${String(scaling)}`);
  const dt = checkDType(dtype, `${op}: dtype`);
  if (!isFloat(dt)) throw new TypeError(`${op}: dtype must be a float dtype, got ${dt}`);
  const [c, s] = native.rope_tables(positions.native, invFreq.native, scaling, dt) as NativeTensor[];
  return [wrap(c), wrap(s)];
}

/**
 * HF apply_rotary_pos_emb on x (B,H,T,D) with cos/sin (B or 1, T, R), R ≤ D even:
 * x[..., :R]·cos + rotate_half(x[..., :R])·sin, and x[..., R:] passed through (partial rotary).
 * x may be a strided view such as (B,T,H,D).transpose(1, 2). Output contiguous (B,H,T,D) in x's
 * dtype (promoted with cos's). Gradient flows to x only (cos/sin are buffers).
 */
export function applyRotary(x: Tensor, cos: Tensor, sin: Tensor): Tensor {
  const op = 'applyRotary';
  checkTensor(x, op, 'x'); checkTensor(cos, op, 'cos'); checkTensor(sin, op, 'sin');
  const out = wrap(native.rope(x.native, cos.native, sin.native));
  if (!needsGrad(x)) return out;
  const sc = save(cos), ss = save(sin);
  return record(op, out, [x], (g) => [wrap(native.rope_backward(g.native, sc, ss))], [sc, ss]);
}

// ---------------------------------------------------------------------------- embedding

/**
 * weight (V,C) rows selected by ids (i64 or i32, any shape) → (...ids, C) in weight's dtype.
 * Every id is checked against [0, V). The gradient (a deterministic scatter-add, accumulated in
 * f32) is returned in weight's dtype, like torch.
 */
export function embedding(weight: Tensor, ids: Tensor): Tensor {
  const op = 'embedding';
  checkTensor(weight, op, 'weight'); checkTensor(ids, op, 'ids');
  const out = wrap(native.embedding(weight.native, ids.native));
  if (!needsGrad(weight)) return out;
  if (weight.ndim !== 2) throw new Error(`${op}: weight must be 2-d (V,C), got shape [${weight.shape}]`);
  const V = weight.shape[0], wdt = weight.dtype;
  const sids = save(ids);
  return record(op, out, [weight], (g) => {
    const dw = native.embedding_backward(g.native, sids, V) as NativeTensor;
    if (dw.dtype === wdt) return [wrap(dw)];
    try { return [wrap(native.cast(dw, wdt))]; } finally { dw.dispose(); }
  }, [sids]);
}

// ---------------------------------------------------------------------------- cross-entropy

export interface CrossEntropyOptions {
  /** Labels equal to this contribute nothing (HF's -100 for prompt/padding tokens). Default -100. */
  ignoreIndex?: number;
  /**
   * The loss is Σ (lse − logit[label]) / normalizer over non-ignored rows. ≤ 0 (default) means the
   * count of non-ignored labels (torch's reduction='mean'); 1 gives reduction='sum'; a fixed token
   * count gives loss averaging that is exact across gradient-accumulation steps.
   */
  normalizer?: number;
}

/**
 * Fused softmax cross-entropy: logits (..., V) (f32/bf16/f16/f64, any strides — e.g. the
 * logits[:, :-1] view of a causal LM), labels (...) i64/i32 → 0-d loss (f32; f64 for f64).
 * The vocabulary is processed in chunks (no full f32 copy of bf16 logits). If every label is
 * ignored and normalizer ≤ 0 the loss is NaN (0/0), exactly like torch; its gradient is zero.
 * Labels outside [0, V) that are not ignoreIndex throw, naming the position.
 */
export function crossEntropy(logits: Tensor, labels: Tensor, opts: CrossEntropyOptions = {}): Tensor {
  const op = 'crossEntropy';
  checkTensor(logits, op, 'logits'); checkTensor(labels, op, 'labels');
  const ignoreIndex = checkInt(opts.ignoreIndex ?? -100, op, 'ignoreIndex');
  const normalizer = opts.normalizer ?? 0;
  if (typeof normalizer !== 'number' || Number.isNaN(normalizer)) throw new TypeError(`${op}: normalizer must be a number, got ${String(normalizer)}`);
  const [loss, lse] = native.cross_entropy(logits.native, labels.native, ignoreIndex, normalizer) as NativeTensor[];
  const out = wrap(loss);
  if (!needsGrad(logits)) { lse.dispose(); return out; }
  const sl = save(logits), sy = save(labels);
  return record(op, out, [logits], (g) => [wrap(native.cross_entropy_backward(sl, sy, lse, g.native, ignoreIndex, normalizer))],
    [sl, sy, lse]);
}
