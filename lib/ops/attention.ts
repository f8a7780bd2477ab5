/**
 * attention.ts — fused scaled-dot-product attention with autograd (FlashAttention-2 on the CPU).
 *
 * One native call computes softmax(scale·q·kᵀ + mask)·v blockwise, never materialising the T×S
 * score matrix; it also returns the per-row log-sum-exp, which is all the backward needs to
 * recompute the probabilities block by block. Native kernels: csrc/cpu/attention.cpp.
 *
 * Layout as in HF transformers after the head split: q (B,Hq,T,D), k (B,Hkv,S,D), v (B,Hkv,S,Dv).
 * Grouped-query / multi-query attention: Hq a multiple of Hkv, query head h reads kv head
 * ⌊h / (Hq/Hkv)⌋ — no need to repeat k/v. With a KV cache the T queries are the last T of the S
 * positions (query i sits at position S − T + i).
 *
 * Sequence packing: `segmentIds` (B,S) keeps the examples packed into one row apart — query i
 * sees key j only if their segment ids are equal (on top of causal, window and key padding).
 */
import { native, NativeTensor } from '../native';
import { needsGrad, record, save } from '../tensor/autograd';
import { Tensor } from '../tensor/tensor';
import { add, cast, mul, ne } from './elementwise';
import { matmul } from './matmul';
import { softmax } from './nn';
import { dropout } from './random';
import { checkTensor, wrap } from './util';

export interface AttentionOptions {
  /** Causal masking: key j is visible to query i iff j ≤ S − T + i. Default true. */
  causal?: boolean;
  /**
   * Key padding mask (B,S): nonzero = real token, 0 = padding (never attended). u8 is used as is;
   * any other dtype (e.g. an i64 HF `attention_mask`) is converted with `!= 0`.
   */
  keyMask?: Tensor | null;
  /**
   * Sliding window (HF Mistral/Qwen2 `sliding_window`): key j is visible iff (S − T + i) − j < window.
   * 0 or undefined = no window. Requires causal.
   */
  window?: number | null;
  /** Softmax scale; default 1/√D. */
  scale?: number | null;
  /**
   * Logit soft-capping (Gemma-2 `attn_logit_softcapping`): scores become softcap·tanh(s/softcap)
   * before masking. 0 or undefined = none.
   */
  softcap?: number | null;
  /**
   * Segment ids (B,S), i32 or i64, for sequence packing (lib/data/collate.ts `segmentIds`): key j
   * is visible to query i only if segmentIds[b][S − T + i] === segmentIds[b][j]. Padding may carry
   * its own id (e.g. 0) or be masked with keyMask. Key blocks of other segments are skipped, so a
   * packed row costs about Σ len² over its examples. null/undefined = no segment masking.
   */
  segmentIds?: Tensor | null;
}

/**
 * softmax(scale · q·kᵀ + mask) · v → (B,Hq,T,Dv) in q's dtype.
 *
 * Rows with no visible key (e.g. left-padding queries) give 0 and zero gradients, never NaN.
 * Gradients flow to q, k and v (recomputed blockwise in backward; only q, k, v, the mask, the
 * output and the (B,Hq,T) log-sum-exp are kept for it).
 */
export function scaledDotProductAttention(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions = {}): Tensor {
  const op = 'scaledDotProductAttention';
  checkTensor(q, op, 'q'); checkTensor(k, op, 'k'); checkTensor(v, op, 'v');
  const causal = opts.causal ?? true;
  if (typeof causal !== 'boolean') throw new TypeError(`${op}: causal must be a boolean, got ${typeof causal}`);
  const window = opts.window ?? 0;
  if (!Number.isInteger(window) || window < 0) {
    throw new RangeError(`${op}: window must be a non-negative integer (0 = none), got ${window}`);
  }
  if (q.ndim !== 4) throw new Error(`${op}: q must be 4-d (B,Hq,T,D), got shape [${q.shape}]`);
  const scale = opts.scale ?? 1 / Math.sqrt(q.shape[3]);
  if (typeof scale !== 'number' || !Number.isFinite(scale)) throw new RangeError(`${op}: scale must be a finite number, got ${scale}`);
  const softcap = opts.softcap ?? 0;
  if (typeof softcap !== 'number' || !Number.isFinite(softcap) || softcap < 0) {
    throw new RangeError(`${op}: softcap must be a finite number >= 0 (0 = none), got ${softcap}`);
  }

  let seg: Tensor | null = null;
  if (opts.segmentIds != null) {
    seg = checkTensor(opts.segmentIds, op, 'segmentIds');
    if (seg.dtype !== 'i32' && seg.dtype !== 'i64') throw new TypeError(`${op}: segmentIds must be an i32 or i64 tensor, got ${seg.dtype}`);
    const [B, , S] = k.shape;
    if (k.ndim === 4 && (seg.ndim !== 2 || seg.shape[0] !== B || seg.shape[1] !== S)) {
      throw new Error(`${op}: segmentIds must have shape (B,S) = [${B},${S}] (one id per key position), got [${seg.shape}]`);
    }
  }

  // The kernel takes a u8 mask; convert other dtypes (and own the temporary).
  let mask: Tensor | null = null, ownMask = false;
  if (opts.keyMask != null) {
    mask = checkTensor(opts.keyMask, op, 'keyMask');
    if (mask.dtype !== 'u8') { mask = ne(mask, 0); ownMask = true; }
  }

  let res: (NativeTensor | null)[];
  try {
    res = native.attention_forward(q.native, k.native, v.native, mask ? mask.native : null, causal, window, scale,
      softcap, seg ? seg.native : null);
  } catch (e) {
    if (ownMask) mask!.dispose();
    throw e;
  }
  const out = wrap(res[0] as NativeTensor);
  const lse = res[1] as NativeTensor;
  if (!needsGrad(q, k, v)) {
    lse.dispose();
    if (ownMask) mask!.dispose();
    return out;
  }
  const sq = save(q), sk = save(k), sv = save(v), so = save(out);
  const sm = mask ? save(mask) : null;
  if (ownMask) mask!.dispose();  // the saved alias keeps its storage alive
  const ss = seg ? save(seg) : null;
  const gq = q.requiresGrad, gk = k.requiresGrad, gv = v.requiresGrad;
  const saved = [sq, sk, sv, so, lse];
  if (sm) saved.push(sm);
  if (ss) saved.push(ss);
  return record(op, out, [q, k, v], (g) => {
    const [dq, dk, dv] = native.attention_backward(sq, sk, sv, sm, so, lse, g.native, causal, window, scale,
      softcap, gq, gk, gv, ss) as (NativeTensor | null)[];
    return [dq ? wrap(dq) : null, dk ? wrap(dk) : null, dv ? wrap(dv) : null];
  }, saved);
}

/**
 * Attention with dropout on the probabilities (HF `attn_pdrop`, e.g. GPT-2 in training mode),
 * composed from ops: softmax(scale·q·kᵀ + mask) in f32, dropout(p) with the Philox stream of
 * `dropout` (seed), then ·v. The fused kernel has no probability dropout, so this path
 * materialises the (B,H,T,S) scores; models take it only when training with p > 0. Masking as in
 * scaledDotProductAttention (causal with the queries as the last T of S positions, key padding,
 * segment ids; no window or soft-capping). Masked scores get f32's lowest value rather than −∞,
 * as HF's eager attention does, so a row with no visible key averages v instead of giving NaN.
 * Query and key/value heads must match (no GQA: only GPT-2-style models use this path).
 */
export function attentionWithDropout(q: Tensor, k: Tensor, v: Tensor, p: number, seed: number,
                                     opts: { scale?: number | null; keyMask?: Tensor | null; segmentIds?: Tensor | null } = {}): Tensor {
  const op = 'attentionWithDropout';
  checkTensor(q, op, 'q'); checkTensor(k, op, 'k'); checkTensor(v, op, 'v');
  if (q.ndim !== 4 || k.ndim !== 4 || v.ndim !== 4) throw new Error(`${op}: q, k, v must be 4-d (B,H,T,D), got [${q.shape}], [${k.shape}], [${v.shape}]`);
  const [B, H, T, D] = q.shape, S = k.shape[2];
  if (k.shape[0] !== B || k.shape[1] !== H || k.shape[3] !== D || v.shape[0] !== B || v.shape[1] !== H || v.shape[2] !== S) {
    throw new Error(`${op}: k [${k.shape}] and v [${v.shape}] must be (B,H,S,·) matching q [${q.shape}] (no grouped-query heads on this path)`);
  }
  if (T > S) throw new Error(`${op}: ${T} queries but only ${S} keys`);
  if (!(p >= 0 && p < 1)) throw new RangeError(`${op}: dropout must be in [0, 1), got ${p}`);
  const scale = opts.scale ?? 1 / Math.sqrt(D);
  // Additive mask (B,1,T,S): 0 where query i (position S−T+i) may see key j, else f32's lowest.
  const km = opts.keyMask ? opts.keyMask.toFloat64Array() : null;
  const sg = opts.segmentIds ? opts.segmentIds.toFloat64Array() : null;
  if (km && km.length !== B * S) throw new Error(`${op}: keyMask must be (B,S) = [${B},${S}]`);
  if (sg && sg.length !== B * S) throw new Error(`${op}: segmentIds must be (B,S) = [${B},${S}]`);
  const LOW = -3.4028234663852886e38;
  const bias = new Float32Array(B * T * S);
  for (let b = 0; b < B; b++) {
    for (let i = 0; i < T; i++) {
      const pos = S - T + i;
      for (let j = 0; j < S; j++) {
        const ok = j <= pos && (!km || km[b * S + j] !== 0) && (!sg || sg[b * S + j] === sg[b * S + pos]);
        if (!ok) bias[(b * T + i) * S + j] = LOW;
      }
    }
  }
  const maskT = Tensor.fromBuffer(bias, [B, 1, T, S], 'f32');
  const qf = q.dtype === 'f64' ? q : cast(q, 'f32'), kf = k.dtype === 'f64' ? k : cast(k, 'f32');
  const s0 = matmul(qf, kf, { transB: true });
  const s1 = mul(s0, scale);
  const s2 = add(s1, maskT.dtype === s1.dtype ? maskT : cast(maskT, s1.dtype));
  const pr = softmax(s2, -1);
  const pd = dropout(pr, p, seed, true);
  const pv = pd.dtype === v.dtype ? pd : cast(pd, v.dtype);
  const o = matmul(pv, v);
  for (const t of [s0, s1, s2, pr, maskT]) t.dispose();
  if (pd !== pr) pd.dispose();
  if (pv !== pd) pv.dispose();
  if (qf !== q) qf.dispose();
  if (kf !== k) kf.dispose();
  return o;
}
