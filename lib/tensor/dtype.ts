/**
 * dtype.ts — element types and the typed arrays that carry them across the N-API boundary.
 */

/** Element types of peftkit tensors. bf16/f16 are storage formats (computed in f32). */
export type DType = 'f32' | 'bf16' | 'f16' | 'f64' | 'i32' | 'i64' | 'u8';
export type Device = 'cpu' | 'cuda';

export const FLOAT_DTYPES: readonly DType[] = ['f32', 'bf16', 'f16', 'f64'];
export const ALL_DTYPES: readonly DType[] = ['f32', 'bf16', 'f16', 'f64', 'i32', 'i64', 'u8'];

export function isFloat(d: DType): boolean { return d === 'f32' || d === 'bf16' || d === 'f16' || d === 'f64'; }

export function checkDType(d: unknown, what = 'dtype'): DType {
  if (typeof d !== 'string' || !(ALL_DTYPES as readonly string[]).includes(d)) {
    throw new TypeError(`${what}: expected one of ${ALL_DTYPES.join(', ')}, got ${JSON.stringify(d)}`);
  }
  return d as DType;
}

export function dtypeSize(d: DType): number {
  switch (d) {
    case 'f64': case 'i64': return 8;
    case 'f32': case 'i32': return 4;
    case 'bf16': case 'f16': return 2;
    case 'u8': return 1;
  }
}

/** bf16 bits -> number. */
export function bf16ToNumber(bits: number): number {
  const u = new Uint32Array([bits << 16]);
  return new Float32Array(u.buffer)[0];
}
/** number -> bf16 bits (round to nearest even, NaN preserved). */
export function numberToBf16(x: number): number {
  const f = new Float32Array([x]);
  const u = new Uint32Array(f.buffer)[0];
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) | 0x40) & 0xffff;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}
