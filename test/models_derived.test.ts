/**
 * Phi-3 and Qwen3 have no transformers fixture; they are checked here from their definitions:
 *  - Phi-3 built from the llama fixture by fusing q/k/v into qkv_proj and gate/up into
 *    gate_up_proj must reproduce llama's HF logits, loss and (concatenated) gradients exactly;
 *  - Phi-3 with partial rotary + sliding window, and Qwen3 (q_norm/k_norm, a sliding layer),
 *    against a naive float64 reference (test/helpers/naive_decoder.ts), with Qwen3's q/k-norm
 *    gradients checked by central differences of the naive loss.
 * Also: rope inverse frequencies per rope type against the formulas, and legacy vs
 * transformers-5 rope config keys.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { loadSafetensors, saveSafetensors } from '../lib/io/safetensors';
import { computeRope, loadModel, parseConfig } from '../lib/models';
import { cat } from '../lib/ops/shape';
import { Tensor } from '../lib/tensor/tensor';
import { naiveLogits, naiveLoss, NaiveConfig, NaiveWeights } from './helpers/naive_decoder';

const LLAMA = path.join(__dirname, 'fixtures', 'hf', 'models', 'llama');
let tmp: string;
let llamaW: Map<string, Tensor>;
let ref: Map<string, Tensor>;
let llamaCfg: Record<string, unknown>;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pk-derived-'));
  llamaW = loadSafetensors(path.join(LLAMA, 'model.safetensors'));
  ref = loadSafetensors(path.join(LLAMA, 'reference.safetensors'));
  llamaCfg = JSON.parse(fs.readFileSync(path.join(LLAMA, 'config.json'), 'utf8'));
});
afterAll(() => { fs.rmSync(tmp, { recursive: true, force: true }); });

function writeModel(name: string, cfg: Record<string, unknown>, weights: Map<string, Tensor>): string {
  const d = path.join(tmp, name);
  fs.mkdirSync(d, { recursive: true });
  fs.writeFileSync(path.join(d, 'config.json'), JSON.stringify(cfg));
  saveSafetensors(path.join(d, 'model.safetensors'), weights);
  return d;
}
function phi3Weights(): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  for (const [n, t] of llamaW) {
    const m = /^(model\.layers\.\d+\.)(self_attn\.[qkv]_proj|mlp\.(gate|up)_proj)\.weight$/.exec(n);
    if (!m) { out.set(n, t); continue; }
    const p = m[1];
    if (n.endsWith('q_proj.weight')) out.set(`${p}self_attn.qkv_proj.weight`, cat(['q', 'k', 'v'].map((x) => llamaW.get(`${p}self_attn.${x}_proj.weight`)!), 0));
    if (n.endsWith('gate_proj.weight')) out.set(`${p}mlp.gate_up_proj.weight`, cat(['gate', 'up'].map((x) => llamaW.get(`${p}mlp.${x}_proj.weight`)!), 0));
  }
  return out;
}
function phi3Config(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    model_type: 'phi3', architectures: ['Phi3ForCausalLM'], vocab_size: 512, hidden_size: 64, intermediate_size: 128,
    num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 128,
    original_max_position_embeddings: 128, rms_norm_eps: 1e-6, rope_theta: 10000.0, rope_scaling: null,
    hidden_act: 'silu', tie_word_embeddings: false, sliding_window: null, ...extra,
  };
}
function naiveW(ws: Map<string, Tensor>): NaiveWeights {
  const m = new Map<string, { data: Float64Array; shape: number[] }>();
  for (const [n, t] of ws) m.set(n, { data: t.toFloat64Array(), shape: [...t.shape] });
  return m;
}
function maxAbs(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let e = 0; for (let i = 0; i < a.length; i++) e = Math.max(e, Math.abs(a[i] - b[i])); return e;
}
function relErr(g: ArrayLike<number>, r: ArrayLike<number>): number {
  let num = 0, den = 0; for (let i = 0; i < r.length; i++) { num += (g[i] - r[i]) ** 2; den += r[i] ** 2; } return Math.sqrt(num / den);
}
const ids = () => ref.get('input_ids')!.toArray() as number[][];
const flatNaive = (l: Float64Array[][]) => Float64Array.from(l.flatMap((r) => r.flatMap((x) => Array.from(x))));

describe('Phi-3', () => {
  test('fused qkv_proj / gate_up_proj reproduce llama (HF logits, loss, gradients, generation)', async () => {
    const m = await loadModel(writeModel('phi3-fused', phi3Config(), phi3Weights()));
    const names = m.namedParameters().map(([n]) => n);
    expect(names).toContain('model.layers.0.self_attn.qkv_proj.weight');
    expect(names).toContain('model.layers.1.mlp.gate_up_proj.weight');
    const out = m.forward({ inputIds: ref.get('input_ids')!, labels: ref.get('labels')! });
    expect(maxAbs(out.logits.toFloat32Array(), ref.get('logits')!.toFloat32Array())).toBeLessThanOrEqual(1e-4);
    const l = out.loss!.item(), lr = ref.get('loss')!.item();
    expect(Math.abs(l - lr) / lr).toBeLessThanOrEqual(1e-5);
    out.loss!.backward();
    for (const [n, p] of m.namedParameters()) {
      let expected: Float32Array;
      const mq = /^(.*)self_attn\.qkv_proj\.weight$/.exec(n), mg = /^(.*)mlp\.gate_up_proj\.weight$/.exec(n);
      const g = (x: string) => Array.from(ref.get(`grad.${x}`)!.toFloat32Array());
      if (mq) expected = Float32Array.from(['q', 'k', 'v'].flatMap((x) => g(`${mq[1]}self_attn.${x}_proj.weight`)));
      else if (mg) expected = Float32Array.from(['gate', 'up'].flatMap((x) => g(`${mg[1]}mlp.${x}_proj.weight`)));
      else expected = ref.get(`grad.${n}`)!.toFloat32Array();
      expect(relErr(p.grad!.toFloat32Array(), expected)).toBeLessThanOrEqual(1e-3);
    }
    const gen = await m.generate([ids()[0].slice(0, 8)], { maxNewTokens: 8, eosTokenId: null });
    expect(gen).toEqual(ref.get('generate_greedy')!.toArray());
  });

  test('partial rotary (0.5) and a sliding window against the naive reference', async () => {
    const cfg = phi3Config({ partial_rotary_factor: 0.5, sliding_window: 5 });
    const m = await loadModel(writeModel('phi3-partial', cfg, phi3Weights()));
    const nc: NaiveConfig = { hidden: 64, heads: 4, kvHeads: 2, headDim: 16, inter: 128, layers: 2, vocab: 512, eps: 1e-6, theta: 10000, rotaryDim: 8, qkvBias: false, qkNorm: false, fused: true, windows: [5, 5], tied: false };
    const want = flatNaive(naiveLogits(naiveW(phi3Weights()), nc, ids()));
    const got = m.forward({ inputIds: ids() }).logits.toFloat32Array();
    expect(maxAbs(got, want)).toBeLessThanOrEqual(1e-4);
    // and it differs from full rotary / no window (the switches are live)
    const full = flatNaive(naiveLogits(naiveW(phi3Weights()), { ...nc, rotaryDim: 16, windows: [null, null] }, ids()));
    expect(maxAbs(got, full)).toBeGreaterThan(1e-3);
    const a = await m.generate([ids()[0].slice(0, 8)], { maxNewTokens: 8, eosTokenId: null });
    const b = await m.generate([ids()[0].slice(0, 8)], { maxNewTokens: 8, eosTokenId: null, useCache: false });
    expect(a).toEqual(b);
  });
});

describe('Qwen3', () => {
  function qwen3Weights(): Map<string, Tensor> {
    const out = new Map(llamaW);
    for (let l = 0; l < 2; l++) {
      out.set(`model.layers.${l}.self_attn.q_norm.weight`, Tensor.fromArray(Array.from({ length: 16 }, (_, i) => 1 + 0.3 * Math.sin(i + l))));
      out.set(`model.layers.${l}.self_attn.k_norm.weight`, Tensor.fromArray(Array.from({ length: 16 }, (_, i) => 1 + 0.3 * Math.cos(2 * i + l))));
    }
    return out;
  }
  const cfg = () => ({
    ...llamaCfg, model_type: 'qwen3', architectures: ['Qwen3ForCausalLM'], attention_bias: false,
    use_sliding_window: true, sliding_window: 5, max_window_layers: 1, layer_types: ['full_attention', 'sliding_attention'],
  });
  const nc: NaiveConfig = { hidden: 64, heads: 4, kvHeads: 2, headDim: 16, inter: 128, layers: 2, vocab: 512, eps: 1e-6, theta: 10000, rotaryDim: 16, qkvBias: false, qkNorm: true, fused: false, windows: [null, 5], tied: false };

  test('logits against the naive reference; generation with and without cache agree', async () => {
    const m = await loadModel(writeModel('qwen3', cfg(), qwen3Weights()));
    expect(m.namedParameters().map(([n]) => n)).toContain('model.layers.1.self_attn.k_norm.weight');
    const want = flatNaive(naiveLogits(naiveW(qwen3Weights()), nc, ids()));
    expect(maxAbs(m.forward({ inputIds: ids() }).logits.toFloat32Array(), want)).toBeLessThanOrEqual(1e-4);
    const a = await m.generate([ids()[1].slice(0, 9)], { maxNewTokens: 7, eosTokenId: null });
    const b = await m.generate([ids()[1].slice(0, 9)], { maxNewTokens: 7, eosTokenId: null, useCache: false });
    expect(a).toEqual(b);
  });

  test('q_norm / k_norm gradients match central differences of the naive loss', async () => {
    const m = await loadModel(writeModel('qwen3-grad', cfg(), qwen3Weights()));
    const out = m.forward({ inputIds: ids(), labels: ids() });
    const W = naiveW(qwen3Weights()) as Map<string, { data: Float64Array; shape: number[] }>;
    expect(Math.abs(out.loss!.item() - naiveLoss(W, nc, ids())) / out.loss!.item()).toBeLessThanOrEqual(1e-5);
    out.loss!.backward();
    const params = new Map(m.namedParameters());
    for (const n of ['model.layers.0.self_attn.q_norm.weight', 'model.layers.1.self_attn.k_norm.weight']) {
      const g = params.get(n)!.grad!.toFloat64Array();
      const fd = new Float64Array(16);
      const data = W.get(n)!.data;
      const h = 1e-5;
      for (let i = 0; i < 16; i++) {
        const v = data[i];
        data[i] = v + h; const lp = naiveLoss(W, nc, ids());
        data[i] = v - h; const lm = naiveLoss(W, nc, ids());
        data[i] = v;
        fd[i] = (lp - lm) / (2 * h);
      }
      expect(relErr(g, fd)).toBeLessThanOrEqual(1e-3);
    }
  });
});

describe('rope', () => {
  const inv = (theta: number, d: number) => Array.from({ length: d / 2 }, (_, i) => 1 / Math.pow(theta, (2 * i) / d));
  const close = (a: ArrayLike<number>, b: ArrayLike<number>) => { for (let i = 0; i < b.length; i++) expect(Math.abs(a[i] - b[i]) / Math.abs(b[i])).toBeLessThan(1e-6); };
  test('default, linear, dynamic, llama3 inverse frequencies', () => {
    close(computeRope({ type: 'default', theta: 500000, partialRotaryFactor: 1 }, 64, 2048).invFreq, inv(500000, 64));
    close(computeRope({ type: 'linear', theta: 10000, partialRotaryFactor: 1, factor: 4 }, 64, 2048).invFreq, inv(10000, 64).map((x) => x / 4));
    // dynamic at init = default; beyond the context the base grows
    close(computeRope({ type: 'dynamic', theta: 10000, partialRotaryFactor: 1, factor: 2 }, 64, 2048).invFreq, inv(10000, 64));
    const b = 10000 * Math.pow((2 * 4096) / 2048 - 1, 64 / 62);
    close(computeRope({ type: 'dynamic', theta: 10000, partialRotaryFactor: 1, factor: 2 }, 64, 2048, 4096).invFreq, inv(b, 64));
    // llama3 (Llama-3.1 settings)
    const r = computeRope({ type: 'llama3', theta: 500000, partialRotaryFactor: 1, factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 }, 128, 131072);
    const want = inv(500000, 128).map((f) => {
      const wl = (2 * Math.PI) / f;
      if (wl < 8192 / 4) return f;
      if (wl > 8192 / 1) return f / 8;
      const s = (8192 / wl - 1) / (4 - 1);
      return (1 - s) * f / 8 + s * f;
    });
    close(r.invFreq, want);
    expect(r.attentionScaling).toBe(1);
  });
  test('legacy rope_theta/rope_scaling and transformers-5 rope_parameters parse the same', () => {
    const base = { model_type: 'llama', hidden_size: 64, num_attention_heads: 4, num_hidden_layers: 1, intermediate_size: 128, vocab_size: 10 };
    const a = parseConfig({ ...base, rope_theta: 500000, rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 } });
    const b = parseConfig({ ...base, rope_parameters: { rope_type: 'llama3', rope_theta: 500000, factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 } });
    expect(a.rope).toEqual(b.rope);
    expect(a.rope!.theta).toBe(500000);
    const c = parseConfig({ ...base, rope_scaling: { type: 'linear', factor: 2 } });
    expect(c.rope!.type).toBe('linear');
    expect(() => parseConfig({ ...base, rope_scaling: { type: 'weird', factor: 2 } })).toThrow(/unsupported rope type 'weird'/);
  });
});
