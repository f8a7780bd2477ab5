/**
 * autograd.ts — reverse-mode automatic differentiation with PyTorch semantics.
 *
 * Every differentiable op calls `record()` after its native forward: when grad mode is on and any
 * input requires grad, the output gets a Node holding the backward closure, the inputs to route
 * gradients to, and *saved* native handles (aliases that share storage with what the forward
 * needed). `backward()` walks the graph in reverse topological order, accumulates into `.grad` of
 * leaves, and then releases every saved handle: memory is freed deterministically when backward
 * finishes, never left to the GC. `noGrad()` turns recording off for a scope.
 */
import { native, NativeTensor } from '../native';
import type { Tensor } from './tensor';

let gradEnabled = true;

/** True when ops record the graph. */
export function isGradEnabled(): boolean { return gradEnabled; }
export function setGradEnabled(on: boolean): void { gradEnabled = on; }

/** Run `fn` with gradient recording off (like `torch.no_grad()`); restores the previous mode. */
export function noGrad<T>(fn: () => T): T {
  const prev = gradEnabled;
  gradEnabled = false;
  try { return fn(); } finally { gradEnabled = prev; }
}

/** Run `fn` with gradient recording on. */
export function enableGrad<T>(fn: () => T): T {
  const prev = gradEnabled;
  gradEnabled = true;
  try { return fn(); } finally { gradEnabled = prev; }
}

/** Backward closure: receives d(loss)/d(output), returns one gradient (or null) per input. */
export type BackwardFn = (grad: Tensor) => (Tensor | null)[];

/** One recorded op in the graph (the output's `gradFn`). */
export class Node {
  readonly name: string;
  inputs: (Tensor | null)[];
  backwardFn: BackwardFn | null;
  saved: NativeTensor[];
  constructor(name: string, inputs: (Tensor | null)[], backwardFn: BackwardFn, saved: NativeTensor[]) {
    this.name = name; this.inputs = inputs; this.backwardFn = backwardFn; this.saved = saved;
  }
  /** Drop saved handles and references (frees intermediates now rather than at GC). */
  release(): void {
    for (const h of this.saved) h.dispose();
    this.saved = [];
    this.backwardFn = null;
    this.inputs = [];
  }
}

/** Keep a native alias of `t` alive for backward (shares storage; disposing `t` does not free it). */
export function save(t: Tensor): NativeTensor {
  return native.alias(t.native) as NativeTensor;
}

/**
 * Attach a backward node to `out` if grad mode is on and any input requires grad.
 * `saved` handles are released by the caller when nothing is recorded, so ops can always pass them.
 */
export function record(name: string, out: Tensor, inputs: (Tensor | null)[], backwardFn: BackwardFn,
                       saved: NativeTensor[] = []): Tensor {
  const needs = gradEnabled && inputs.some((t) => t !== null && t.requiresGrad);
  if (!needs) {
    for (const h of saved) h.dispose();
    return out;
  }
  out.requiresGrad = true;
  out.gradFn = new Node(name, inputs, backwardFn, saved);
  return out;
}

/** Whether an op should bother preparing saved tensors at all. */
export function needsGrad(...inputs: (Tensor | null | undefined)[]): boolean {
  return gradEnabled && inputs.some((t) => t != null && t.requiresGrad);
}

/**
 * Backpropagate from `root` (scalar unless `grad` is given). Gradients accumulate into `.grad` of
 * leaf tensors with requiresGrad. Unless `retainGraph`, the graph is released afterwards.
 */
export function runBackward(root: Tensor, grad: Tensor | null, retainGraph: boolean,
                            makeOnes: (like: Tensor) => Tensor, add: (a: Tensor, b: Tensor) => Tensor): void {
  if (!root.requiresGrad) throw new Error('backward: tensor does not require grad (no leaf it depends on has requiresGrad)');
  if (!root.gradFn && root.grad === undefined) throw new Error('backward: tensor has no graph');
  if (grad === null && root.numel !== 1) {
    throw new Error(`backward: grad can be implicitly created only for scalar outputs, got shape [${root.shape}]`);
  }
  // Topological order by iterative DFS over gradFn edges.
  const order: Tensor[] = [];
  const visited = new Set<Tensor>();
  const stack: [Tensor, number][] = [[root, 0]];
  while (stack.length) {
    const top = stack[stack.length - 1];
    const [t, i] = top;
    if (i === 0) {
      if (visited.has(t)) { stack.pop(); continue; }
      visited.add(t);
    }
    const inputs = t.gradFn ? t.gradFn.inputs : [];
    if (i < inputs.length) {
      top[1] = i + 1;
      const c = inputs[i];
      if (c && c.requiresGrad && !visited.has(c)) stack.push([c, 0]);
    } else {
      order.push(t);
      stack.pop();
    }
  }
  const grads = new Map<Tensor, Tensor>();
  grads.set(root, grad ?? makeOnes(root));
  const nodes: Node[] = [];
  try {
    for (let k = order.length - 1; k >= 0; k--) {
      const t = order[k];
      const g = grads.get(t);
      if (!g) continue;
      grads.delete(t);
      const node = t.gradFn;
      if (!node) {
        // leaf: accumulate
        // .grad belongs to the leaf, not to any tidy() scope the backward ran in.
        if (t.grad) { const s = add(t.grad, g); t.grad.dispose(); g.dispose(); t.grad = s; s.kept = true; }
        else { t.grad = g; g.kept = true; }
        continue;
      }
      if (!node.backwardFn) throw new Error(`backward: the graph through '${node.name}' was already freed; pass retainGraph to backward twice`);
      nodes.push(node);
      const gin = node.backwardFn(g);
      if (g !== grad) g.dispose();
      for (let j = 0; j < node.inputs.length; j++) {
        const inp = node.inputs[j];
        const gi = gin[j];
        if (!inp || !gi || !inp.requiresGrad) { if (gi && gi !== g) gi.dispose(); continue; }
        const prev = grads.get(inp);
        if (prev) { grads.set(inp, add(prev, gi)); prev.dispose(); gi.dispose(); }
        else grads.set(inp, gi);
      }
    }
  } finally {
    for (const g of grads.values()) if (g !== grad) g.dispose();
    if (!retainGraph) {
      // Keep gradFn (so a second backward gets a clear error) but free what it holds.
      for (const t of order) if (t.gradFn) t.gradFn.release();
    }
  }
}
