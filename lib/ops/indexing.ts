/**
 * indexing.ts — gather / indexSelect with gradients (scatter-add / index-add backward).
 * Indices are validated natively before any memory is touched.
 */
import { native } from '../native';
import { needsGrad, record, save } from '../tensor/autograd';
import { Tensor } from '../tensor/tensor';
import { checkTensor, wrap, wrapDim } from './util';

/** out[i][j] = x[i][index[i][j]] along `dim` (torch.gather). */
export function gather(x: Tensor, dim: number, index: Tensor): Tensor {
  checkTensor(x, 'gather', 'x'); checkTensor(index, 'gather', 'index');
  const d = wrapDim(dim, x.ndim, 'gather');
  const out = wrap(native.gather(x.native, d, index.native));
  if (!needsGrad(x)) return out;
  const si = save(index), inShape = x.shape;
  return record('gather', out, [x], (g) => [wrap(native.scatter_add([...inShape], d, si, g.native))], [si]);
}

/** Whole slices x.index_select(dim, index) with a 1-d integer index. */
export function indexSelect(x: Tensor, dim: number, index: Tensor): Tensor {
  checkTensor(x, 'indexSelect', 'x'); checkTensor(index, 'indexSelect', 'index');
  const d = wrapDim(dim, x.ndim, 'indexSelect');
  const out = wrap(native.index_select(x.native, d, index.native));
  if (!needsGrad(x)) return out;
  const si = save(index), inShape = x.shape;
  return record('indexSelect', out, [x], (g) => [wrap(native.index_add([...inShape], d, si, g.native))], [si]);
}
