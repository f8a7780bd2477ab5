/**
 * swiglu.ts — fused gated activations of gated MLPs, with autograd:
 *
 *   swiglu(gate, up)              = silu(gate) · up                      (Llama, Mistral, Qwen, Phi-3)
 *   geglu(gate, up, approximate)  = gelu(gate) · up, erf or tanh GELU     (Gemma: 'tanh')
 *
 * One native pass forward and one backward (csrc/cpu/swiglu.cpp), instead of the activation, the
 * product and their two backward twins; backward saves only gate and up (no act(gate) tensor).
 * Results equal `mul(silu(gate), up)` up to float rounding (in bf16/f16 the intermediates are
 * rounded where the composition stores them). gate and up must have the same shape; strided
 * views (the halves of a fused gate_up projection) are read in place. On the GPU the same single
 * pass runs in csrc/cuda/swiglu.cu (gate and up must be on the same device).
 */
import { native, NativeTensor } from '../native';
import { needsGrad, record, save } from '../tensor/autograd';
import { Tensor } from '../tensor/tensor';
import { checkTensor, sameShape, wrap } from './util';

/** The activation of a gated unit. */
export type GluActivation = 'silu' | 'gelu' | 'gelu_tanh';

/** act(gate) · up for act ∈ silu / gelu / gelu_tanh, fused. */
export function gatedActivation(gate: Tensor, up: Tensor, act: GluActivation): Tensor {
  const op = act === 'silu' ? 'swiglu' : 'geglu';
  checkTensor(gate, op, 'gate'); checkTensor(up, op, 'up');
  if (act !== 'silu' && act !== 'gelu' && act !== 'gelu_tanh') throw new TypeError(`${op}: unknown activation '${String(act)}'`);
  if (!sameShape(gate.shape, up.shape)) {
    throw new Error(`${op}: gate [${gate.shape.join(',')}] and up [${up.shape.join(',')}] must have the same shape`);
  }
  if (gate.device !== up.device) throw new Error(`${op}: gate is on ${gate.device} but up is on ${up.device}`);
  const out = wrap(native.glu(act, gate.native, up.native));
  if (!needsGrad(gate, up)) return out;
  const needGate = gate.requiresGrad, needUp = up.requiresGrad;
  const sg = save(gate), su = save(up);
  return record(op, out, [gate, up], (g) => {
    const [dg, du] = native.glu_backward(act, sg, su, g.native, needGate, needUp) as (NativeTensor | null)[];
    return [dg ? wrap(dg) : null, du ? wrap(du) : null];
  }, [sg, su]);
}

/** SwiGLU: silu(gate) · up, fused (forward and backward in one pass each). */
export function swiglu(gate: Tensor, up: Tensor): Tensor { return gatedActivation(gate, up, 'silu'); }

/** GeGLU: gelu(gate) · up, erf GELU or (approximate = 'tanh') the tanh approximation, fused. */
export function geglu(gate: Tensor, up: Tensor, approximate: 'none' | 'tanh' = 'none'): Tensor {
  return gatedActivation(gate, up, approximate === 'tanh' ? 'gelu_tanh' : 'gelu');
}
