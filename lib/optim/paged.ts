/**
 * paged.ts — AdamW variants with 8-bit and/or paged optimizer states.
 *
 * - `AdamW8bit`: bitsandbytes-style blockwise 8-bit states (blocks of 256; m on the signed
 *   dynamic map, v on the unsigned one; an f32 absmax per block). Tensors with fewer than
 *   `minSize8bit` (4096) elements keep f32 states, as bitsandbytes' min_8bit_size.
 * - `PagedAdamW` (`optimBits: 32 | 8`): states in paged memory. On the CPU that is an mmap of an
 *   unlinked temp file in PEFTKIT_PAGED_DIR (default: the OS temp dir), which the OS writes back
 *   and faults in as memory pressure demands, so states larger than RAM still work (point
 *   PEFTKIT_PAGED_DIR at a disk-backed directory when /tmp is a tmpfs). For parameters on a GPU the
 *   states live in CUDA managed (unified) memory, prefetched to the GPU at the start of each step
 *   and left to migrate back to the host under memory pressure (never more than the card has free).
 * - `PagedAdamW8bit`: both.
 *
 * The update rule is the same AdamW in all of them (see adamw.ts).
 */
import { native } from '../native';
import { AdamW, AdamWOptions, ParamGroupSpec, ParamList } from './adamw';

export interface EightBitOptions {
  /** Tensors with fewer elements keep f32 states (default 4096, bitsandbytes' min_8bit_size). */
  minSize8bit?: number;
}

export interface PagedOptions extends EightBitOptions {
  /** 32 (default) or 8 bits per state element. */
  optimBits?: 32 | 8;
  /** Directory for the paged-memory files (default: PEFTKIT_PAGED_DIR, else the OS temp dir). */
  pagedDir?: string;
}

function minSize(v: number | undefined, where: string): number {
  const m = v ?? 4096;
  if (!Number.isInteger(m) || m < 0) throw new RangeError(`${where}: minSize8bit must be a non-negative integer, got ${v}`);
  return m;
}

/** AdamW with blockwise 8-bit states (bitsandbytes AdamW8bit). */
export class AdamW8bit extends AdamW {
  constructor(params: ParamList | ParamGroupSpec[], opts: AdamWOptions & EightBitOptions = {}) {
    super(params, opts, { optimBits: 8, paged: false, minSize8bit: minSize(opts.minSize8bit, 'AdamW8bit') });
  }
}

/** AdamW whose states live in paged memory; `optimBits: 8` for 8-bit paged states. */
export class PagedAdamW extends AdamW {
  constructor(params: ParamList | ParamGroupSpec[], opts: AdamWOptions & PagedOptions = {}) {
    const bits = opts.optimBits ?? 32;
    if (bits !== 32 && bits !== 8) throw new RangeError(`PagedAdamW: optimBits must be 32 or 8, got ${bits}`);
    super(params, opts, { optimBits: bits, paged: true, pagedDir: opts.pagedDir, minSize8bit: minSize(opts.minSize8bit, 'PagedAdamW') });
  }
}

/** PagedAdamW with 8-bit states (bitsandbytes PagedAdamW8bit). */
export class PagedAdamW8bit extends PagedAdamW {
  constructor(params: ParamList | ParamGroupSpec[], opts: AdamWOptions & Omit<PagedOptions, 'optimBits'> = {}) {
    super(params, { ...opts, optimBits: 8 });
  }
}

/** Paged-memory counters: bytes mapped now and at peak, live mappings, and the default directory. */
export function pagedMemoryStats(): { liveBytes: number; peakBytes: number; mappings: number; dir: string } {
  return native.pagedStats() as { liveBytes: number; peakBytes: number; mappings: number; dir: string };
}
