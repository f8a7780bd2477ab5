/**
 * naive_decoder.ts — a deliberately plain float64 reference of the Llama-family decoder, written
 * from the HF definitions with loops only (no peftkit ops), to check models without a
 * transformers fixture (Phi-3 fused projections + partial rotary, Qwen3 q/k norms, sliding windows).
 */
export interface NaiveWeights { get(name: string): { data: Float64Array; shape: number[] } | undefined; }
export interface NaiveConfig {
  hidden: number; heads: number; kvHeads: number; headDim: number; inter: number; layers: number; vocab: number;
  eps: number; theta: number; rotaryDim: number; qkvBias: boolean; qkNorm: boolean; fused: boolean;
  windows: (number | null)[]; tied: boolean;
}

function w(W: NaiveWeights, n: string): Float64Array {
  const t = W.get(n);
  if (!t) throw new Error(`naive: missing ${n}`);
  return t.data;
}
// y[o] = sum_i x[i] W[o][i] (+ b[o]) for W (out, in); rows offset `row0` of W
function lin(x: Float64Array, W: Float64Array, inF: number, outF: number, b?: Float64Array, row0 = 0): Float64Array {
  const y = new Float64Array(outF);
  for (let o = 0; o < outF; o++) {
    let s = b ? b[row0 + o] : 0;
    for (let i = 0; i < inF; i++) s += x[i] * W[(row0 + o) * inF + i];
    y[o] = s;
  }
  return y;
}
function rms(x: Float64Array, g: Float64Array, eps: number): Float64Array {
  let ss = 0; for (const v of x) ss += v * v;
  const r = 1 / Math.sqrt(ss / x.length + eps);
  return x.map((v, i) => v * r * g[i]);
}

/** Logits [B][T][V] for ids [B][T] (positions 0..T-1, no padding). */
export function naiveLogits(W: NaiveWeights, c: NaiveConfig, ids: number[][]): Float64Array[][] {
  const C = c.hidden, D = c.headDim, Hq = c.heads, Hkv = c.kvHeads, R = c.rotaryDim;
  const emb = w(W, 'model.embed_tokens.weight');
  const inv: number[] = [];
  for (let i = 0; i < R / 2; i++) inv.push(1 / Math.pow(c.theta, (2 * i) / R));
  const rope = (x: Float64Array, p: number) => {
    const out = Float64Array.from(x);
    for (let i = 0; i < R / 2; i++) {
      const a = p * inv[i], cs = Math.cos(a), sn = Math.sin(a);
      const x1 = x[i], x2 = x[i + R / 2];
      out[i] = x1 * cs - x2 * sn;
      out[i + R / 2] = x2 * cs + x1 * sn;
    }
    return out;
  };
  return ids.map((row) => {
    const T = row.length;
    let h = row.map((id) => emb.slice(id * C, (id + 1) * C));
    for (let l = 0; l < c.layers; l++) {
      const P = `model.layers.${l}.`;
      const xs = h.map((x) => rms(x, w(W, P + 'input_layernorm.weight'), c.eps));
      const qs: Float64Array[][] = [], ks: Float64Array[][] = [], vs: Float64Array[][] = [];
      for (let t = 0; t < T; t++) {
        let q: Float64Array, k: Float64Array, v: Float64Array;
        if (c.fused) {
          const Wf = w(W, P + 'self_attn.qkv_proj.weight');
          q = lin(xs[t], Wf, C, Hq * D, undefined, 0);
          k = lin(xs[t], Wf, C, Hkv * D, undefined, Hq * D);
          v = lin(xs[t], Wf, C, Hkv * D, undefined, (Hq + Hkv) * D);
        } else {
          const b = (n: string) => (c.qkvBias ? w(W, P + `self_attn.${n}.bias`) : undefined);
          q = lin(xs[t], w(W, P + 'self_attn.q_proj.weight'), C, Hq * D, b('q_proj'));
          k = lin(xs[t], w(W, P + 'self_attn.k_proj.weight'), C, Hkv * D, b('k_proj'));
          v = lin(xs[t], w(W, P + 'self_attn.v_proj.weight'), C, Hkv * D, b('v_proj'));
        }
        const heads = (z: Float64Array, H: number, norm?: string) => Array.from({ length: H }, (_, hh) => {
          let e = z.slice(hh * D, (hh + 1) * D);
          if (norm) e = rms(e, w(W, P + `self_attn.${norm}.weight`), c.eps);
          return rope(e, t);
        });
        qs.push(heads(q, Hq, c.qkNorm ? 'q_norm' : undefined));
        ks.push(heads(k, Hkv, c.qkNorm ? 'k_norm' : undefined));
        vs.push(Array.from({ length: Hkv }, (_, hh) => v.slice(hh * D, (hh + 1) * D)));
      }
      const win = c.windows[l];
      const attn = h.map((_, t) => {
        const o = new Float64Array(Hq * D);
        for (let hh = 0; hh < Hq; hh++) {
          const kv = Math.floor(hh / (Hq / Hkv));
          const sc: number[] = [];
          for (let j = 0; j <= t; j++) {
            if (win !== null && t - j >= win) { sc.push(-Infinity); continue; }
            let s = 0; for (let d = 0; d < D; d++) s += qs[t][hh][d] * ks[j][kv][d];
            sc.push(s / Math.sqrt(D));
          }
          const m = Math.max(...sc); const e = sc.map((s) => Math.exp(s - m)); const z = e.reduce((a, b) => a + b, 0);
          for (let j = 0; j <= t; j++) for (let d = 0; d < D; d++) o[hh * D + d] += (e[j] / z) * vs[j][kv][d];
        }
        return lin(o, w(W, P + 'self_attn.o_proj.weight'), Hq * D, C);
      });
      h = h.map((x, t) => x.map((v, i) => v + attn[t][i]));
      const x2 = h.map((x) => rms(x, w(W, P + 'post_attention_layernorm.weight'), c.eps));
      const mlp = x2.map((x) => {
        let g: Float64Array, u: Float64Array;
        if (c.fused) {
          const Wf = w(W, P + 'mlp.gate_up_proj.weight');
          g = lin(x, Wf, C, c.inter, undefined, 0); u = lin(x, Wf, C, c.inter, undefined, c.inter);
        } else {
          g = lin(x, w(W, P + 'mlp.gate_proj.weight'), C, c.inter); u = lin(x, w(W, P + 'mlp.up_proj.weight'), C, c.inter);
        }
        const a = g.map((v, i) => (v / (1 + Math.exp(-v))) * u[i]);
        return lin(a, w(W, P + 'mlp.down_proj.weight'), c.inter, C);
      });
      h = h.map((x, t) => x.map((v, i) => v + mlp[t][i]));
    }
    const head = c.tied ? emb : w(W, 'lm_head.weight');
    return h.map((x) => lin(rms(x, w(W, 'model.norm.weight'), c.eps), head, C, c.vocab));
  });
}

/** Causal-LM loss (mean CE of logits[:, :-1] vs ids[:, 1:]). */
export function naiveLoss(W: NaiveWeights, c: NaiveConfig, ids: number[][]): number {
  const lg = naiveLogits(W, c, ids);
  let s = 0, n = 0;
  ids.forEach((row, b) => {
    for (let t = 0; t + 1 < row.length; t++) {
      const z = lg[b][t]; const m = Math.max(...z);
      let se = 0; for (const v of z) se += Math.exp(v - m);
      s += m + Math.log(se) - z[row[t + 1]]; n++;
    }
  });
  return s / n;
}
