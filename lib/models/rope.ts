/**
 * rope.ts — rotary inverse frequencies and attention scaling per rope type, following
 * transformers' ROPE_INIT_FUNCTIONS (modeling_rope_utils.py): default, linear, dynamic (NTK),
 * llama3, yarn, longrope. Arithmetic is rounded to f32 where torch computes in f32, so the
 * tables match HF's bit for bit in nearly every entry.
 *
 * `dynamic` and `longrope` depend on the sequence length: RotaryEmbedding.invFreqFor(seqLen)
 * implements transformers' `dynamic_rope_update` (dynamic grows the base once sequences exceed
 * the original context and keeps the largest seen; longrope switches short/long factors).
 */
import { Module } from '../nn/module';
import { Tensor } from '../tensor/tensor';
import type { RopeConfig } from './config';

const f = Math.fround;

export interface RopeInit {
  /** Inverse frequencies (R/2 entries, f32 values). */
  invFreq: Float32Array;
  /** Multiplier of cos/sin (yarn/longrope attention factor; 1 otherwise). */
  attentionScaling: number;
}

/** Rotated dimension R = ⌊head_dim · partial_rotary_factor⌋. */
export function rotaryDim(rope: RopeConfig, headDim: number): number {
  return Math.floor(headDim * rope.partialRotaryFactor);
}

/** 1 / base^(2i/dim) in f32 like `1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))`. */
function baseInvFreq(base: number, dim: number): Float32Array {
  const out = new Float32Array(dim / 2);
  for (let i = 0; i < dim / 2; i++) {
    const e = f(f(2 * i) / dim);
    out[i] = f(1 / f(Math.pow(base, e)));
  }
  return out;
}

/**
 * inv_freq and attention scaling for `rope` (seqLen: the current sequence length for the
 * length-dependent types; omitted = initialisation, as transformers at model construction).
 */
export function computeRope(rope: RopeConfig, headDim: number, maxPositionEmbeddings: number, seqLen?: number): RopeInit {
  const dim = rotaryDim(rope, headDim);
  const base = rope.theta;
  switch (rope.type) {
    case 'default':
      return { invFreq: baseInvFreq(base, dim), attentionScaling: 1 };
    case 'linear': {
      const inv = baseInvFreq(base, dim);
      const factor = rope.factor!;
      for (let i = 0; i < inv.length; i++) inv[i] = f(inv[i] / factor);
      return { invFreq: inv, attentionScaling: 1 };
    }
    case 'dynamic': {
      const maxPos = rope.originalMaxPositionEmbeddings ?? maxPositionEmbeddings;
      const factor = rope.factor!;
      const L = Math.max(seqLen ?? maxPos, maxPos);
      const b = base * Math.pow((factor * L) / maxPos - (factor - 1), dim / (dim - 2));
      return { invFreq: baseInvFreq(b, dim), attentionScaling: 1 };
    }
    case 'llama3': {
      const inv = baseInvFreq(base, dim);
      const factor = rope.factor!, low = rope.lowFreqFactor!, high = rope.highFreqFactor!;
      const oldCtx = rope.originalMaxPositionEmbeddings!;
      const lowWavelen = oldCtx / low, highWavelen = oldCtx / high;
      const out = new Float32Array(inv.length);
      for (let i = 0; i < inv.length; i++) {
        const wavelen = f((2 * Math.PI) / inv[i]);
        let v = wavelen > lowWavelen ? f(inv[i] / factor) : inv[i];
        const isMedium = !(wavelen < highWavelen) && !(wavelen > lowWavelen);
        if (isMedium) {
          const smooth = f(f(f(oldCtx / wavelen) - low) / (high - low));
          v = f(f(f(f(1 - smooth) * v) / factor) + f(smooth * v));
        }
        out[i] = v;
      }
      return { invFreq: out, attentionScaling: 1 };
    }
    case 'yarn': {
      let factor = rope.factor!;
      let origMax: number;
      if (rope.originalMaxPositionEmbeddings !== undefined) {
        origMax = rope.originalMaxPositionEmbeddings;
        factor = maxPositionEmbeddings / origMax;
      } else {
        origMax = maxPositionEmbeddings;
      }
      const getMscale = (scale: number, m = 1) => (scale <= 1 ? 1 : 0.1 * m * Math.log(scale) + 1);
      let attn = rope.attentionFactor;
      if (attn === undefined) {
        attn = rope.mscale && rope.mscaleAllDim ? getMscale(factor, rope.mscale) / getMscale(factor, rope.mscaleAllDim) : getMscale(factor);
      }
      const betaFast = rope.betaFast || 32, betaSlow = rope.betaSlow || 1;
      const corrDim = (rot: number) => (dim * Math.log(origMax / (rot * 2 * Math.PI))) / (2 * Math.log(base));
      let lo = corrDim(betaFast), hi = corrDim(betaSlow);
      if (rope.truncate ?? true) { lo = Math.floor(lo); hi = Math.ceil(hi); }
      lo = Math.max(lo, 0); hi = Math.min(hi, dim - 1);
      if (lo === hi) hi += 0.001;
      const half = dim / 2;
      const out = new Float32Array(half);
      for (let i = 0; i < half; i++) {
        const posFreq = f(Math.pow(base, f(f(2 * i) / dim)));
        const extra = f(1 / posFreq), inter = f(1 / f(factor * posFreq));
        const ramp = Math.min(1, Math.max(0, f(f(i - lo) / f(hi - lo))));
        const ef = f(1 - f(ramp));
        out[i] = f(f(inter * f(1 - ef)) + f(extra * ef));
      }
      return { invFreq: out, attentionScaling: attn };
    }
    case 'longrope': {
      let factor = rope.factor ?? 1;
      let origMax: number;
      if (rope.originalMaxPositionEmbeddings !== undefined) {
        origMax = rope.originalMaxPositionEmbeddings;
        factor = maxPositionEmbeddings / origMax;
      } else {
        origMax = maxPositionEmbeddings;
      }
      let attn = rope.attentionFactor;
      if (attn === undefined) attn = factor <= 1 ? 1 : Math.sqrt(1 + Math.log(factor) / Math.log(origMax));
      const ext = seqLen !== undefined && seqLen > origMax ? rope.longFactor! : rope.shortFactor!;
      if (ext.length !== dim / 2) throw new Error(`rope: longrope factors have ${ext.length} entries, expected ${dim / 2}`);
      const out = new Float32Array(dim / 2);
      for (let i = 0; i < dim / 2; i++) out[i] = f(1 / f(f(ext[i]) * f(Math.pow(base, f(f(2 * i) / dim)))));
      return { invFreq: out, attentionScaling: attn };
    }
  }
}

/**
 * The model's rotary embedding (HF `model.rotary_emb`): holds inv_freq as a non-persistent buffer
 * and updates it for the length-dependent rope types.
 */
export class RotaryEmbedding extends Module {
  readonly rope: RopeConfig;
  readonly headDim: number;
  readonly maxPositionEmbeddings: number;
  attentionScaling: number;
  private maxSeqLenCached: number;
  private longActive = false;
  private readonly originalMaxSeqLen: number;
  private readonly originalInvFreq: Float32Array;

  constructor(rope: RopeConfig, headDim: number, maxPositionEmbeddings: number) {
    super();
    this.rope = rope; this.headDim = headDim; this.maxPositionEmbeddings = maxPositionEmbeddings;
    const init = computeRope(rope, headDim, maxPositionEmbeddings);
    this.attentionScaling = init.attentionScaling;
    this.originalInvFreq = init.invFreq;
    this.originalMaxSeqLen = rope.type === 'longrope' || rope.type === 'dynamic'
      ? (rope.originalMaxPositionEmbeddings ?? maxPositionEmbeddings) : maxPositionEmbeddings;
    this.maxSeqLenCached = maxPositionEmbeddings;
    this.registerBuffer('inv_freq', Tensor.fromArray(init.invFreq, { dtype: 'f32' }), false);
  }

  get invFreq(): Tensor { return this.getTensor('inv_freq') as Tensor; }
  get dim(): number { return rotaryDim(this.rope, this.headDim); }

  private setInvFreq(v: Float32Array): void {
    const old = this.invFreq;
    let t = Tensor.fromArray(v, { dtype: 'f32' });
    if (old.device !== 'cpu') { const d = t.to(old.device); t.dispose(); t = d; }   // stay on the model's device
    this.registerBuffer('inv_freq', t, false);
    old.dispose();
  }

  /** transformers' dynamic_rope_update, given max(position_ids) + 1. */
  update(seqLen: number): void {
    if (this.rope.type === 'dynamic') {
      if (seqLen > this.maxSeqLenCached) {
        const r = computeRope(this.rope, this.headDim, this.maxPositionEmbeddings, seqLen);
        this.setInvFreq(r.invFreq);
        this.maxSeqLenCached = seqLen;
      }
      if (seqLen < this.originalMaxSeqLen && this.maxSeqLenCached > this.originalMaxSeqLen) {
        this.setInvFreq(this.originalInvFreq);
        this.maxSeqLenCached = this.originalMaxSeqLen;
      }
    } else if (this.rope.type === 'longrope') {
      const long = seqLen > this.originalMaxSeqLen;
      if (long === this.longActive) return;
      this.longActive = long;
      const r = computeRope(this.rope, this.headDim, this.maxPositionEmbeddings, long ? seqLen : undefined);
      this.setInvFreq(r.invFreq);
    }
  }
}
