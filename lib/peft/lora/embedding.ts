/**
 * lora/embedding.ts — LoRA on token embeddings (PEFT's lora.Embedding).
 *
 *   y = E[ids] + s · Aᵀ[ids] · Bᵀ      A = lora_embedding_A [r, V], B = lora_embedding_B [C, r]
 *
 * Parameters are plain tensors in ParameterDicts, so their names end in the adapter name:
 * `<module>.lora_embedding_A.<adapter>` in memory, `<module>.lora_embedding_A` in the file.
 * Default init: A = 0, B ~ N(0, 1) (PEFT's, following loralib). No dropout (PEFT applies none).
 */
import { onDevice } from '../../models/base';
import { Module } from '../../nn/module';
import { add, cast, mul, sub } from '../../ops/elementwise';
import { matmul } from '../../ops/matmul';
import { embedding } from '../../ops/nn';
import { contiguous, transpose } from '../../ops/shape';
import { noGrad } from '../../tensor/autograd';
import { Tensor } from '../../tensor/tensor';
import { adapterDtype, assign, LoraLayer, ParameterDict, UpdateLayerOptions } from './layer';

export class LoraEmbedding extends LoraLayer {
  readonly numEmbeddings: number;
  readonly embeddingDim: number;

  constructor(base: Module) {
    super(base);
    const w = base.getTensor('weight');
    if (!w || w.ndim !== 2) throw new Error('LoraEmbedding: the base layer needs a 2-d weight (V, C)');
    this.numEmbeddings = w.shape[0];
    this.embeddingDim = w.shape[1];
    this.registerModule('lora_embedding_A', new ParameterDict());
    this.registerModule('lora_embedding_B', new ParameterDict());
  }

  get embA(): ParameterDict { return this.getSubmodule('lora_embedding_A') as ParameterDict; }
  get embB(): ParameterDict { return this.getSubmodule('lora_embedding_B') as ParameterDict; }
  hasAdapter(name: string): boolean { return this.embA.has(name); }

  updateLayer(name: string, o: UpdateLayerOptions): void {
    if (o.useDora) throw new Error('LoraEmbedding: DoRA on embedding layers is not supported by peftkit');
    if (o.loraBias) throw new Error('LoraEmbedding: lora_bias is not supported for embedding layers');
    if (o.init === 'pissa' || o.init === 'olora') throw new Error(`LoraEmbedding: init '${o.init}' is not supported for embedding layers`);
    this.setCommon(name, o);
    const dt = adapterDtype(this.weight.dtype);
    const A = Tensor.zeros([o.r, this.numEmbeddings], { dtype: dt });
    const B = o.init === 'none' ? Tensor.zeros([this.embeddingDim, o.r], { dtype: dt })
      : Tensor.randn([this.embeddingDim, o.r], { seed: o.seed, dtype: dt });
    // The adapter lives where the base layer does (as LoraLinear's): initialised on the host with
    // the same seeded values, then moved.
    this.embA.set(name, onDevice(A, this.weight.device));
    this.embB.set(name, onDevice(B, this.weight.device));
    if (!this.activeAdapters.length) this.activeAdapters = [name];
  }

  forward(ids: Tensor): Tensor {
    if (this.disabled) {
      if (this.merged) this.unmerge();
      return this.callBase(ids);
    }
    if (this.merged) return this.callBase(ids);
    let result = this.callBase(ids);
    const dt = result.dtype;
    for (const a of this.activeAdapters) {
      if (!this.hasAdapter(a)) continue;
      const A = this.embA.get(a)!, B = this.embB.get(a)!;
      const at = contiguous(transpose(A, 0, 1));      // [V, r]
      const afterA = embedding(at, ids);               // (..., r)
      const ab = matmul(afterA, B, { transB: true });  // (..., C)
      const abs = mul(ab, this.scaling.get(a)!);
      const next = add(result, abs);
      for (const t of [at, afterA, ab, abs, result]) t.dispose();
      result = next;
    }
    if (result.dtype === dt) return result;
    const c = cast(result, dt);
    result.dispose();
    return c;
  }

  /** s·(B·A)ᵀ [V, C]. */
  deltaWeight(name: string): Tensor {
    return noGrad(() => {
      const ba = matmul(this.embB.get(name)!, this.embA.get(name)!);  // [C, V]
      const t = contiguous(transpose(ba, 0, 1));
      const d = mul(t, this.scaling.get(name)!);
      ba.dispose(); t.dispose();
      return d;
    });
  }

  merge(adapterNames?: string[]): void {
    const names = (adapterNames ?? this.activeAdapters).filter((n) => this.hasAdapter(n) && !this.mergedAdapters.includes(n));
    noGrad(() => {
      for (const a of names) {
        const W = this.weight;
        const d = this.deltaWeight(a);
        const dc = d.dtype === W.dtype ? d : cast(d, W.dtype);
        const nw = add(W, dc);
        assign(W, nw);
        for (const t of new Set([d, dc, nw])) t.dispose();
        this.mergedAdapters.push(a);
      }
    });
  }

  unmerge(): void {
    noGrad(() => {
      while (this.mergedAdapters.length) {
        const a = this.mergedAdapters.pop()!;
        if (!this.hasAdapter(a)) continue;
        const W = this.weight;
        const d = this.deltaWeight(a);
        const dc = d.dtype === W.dtype ? d : cast(d, W.dtype);
        const nw = sub(W, dc);
        assign(W, nw);
        for (const t of new Set([d, dc, nw])) t.dispose();
      }
    });
  }

  adapterTensors(name: string): [string, string, Tensor][] {
    if (!this.hasAdapter(name)) return [];
    return [
      [`lora_embedding_A.${name}`, 'lora_embedding_A', this.embA.get(name)!],
      [`lora_embedding_B.${name}`, 'lora_embedding_B', this.embB.get(name)!],
    ];
  }

  deleteAdapter(name: string): void {
    for (const [, , t] of this.adapterTensors(name)) { t.zeroGrad(); t.dispose(); }
    this.embA.delete(name); this.embB.delete(name);
    for (const m of [this.r, this.loraAlpha, this.scaling, this.loraDropout, this.useDora, this.loraBias]) m.delete(name);
    this.activeAdapters = this.activeAdapters.filter((a) => a !== name);
  }
}
