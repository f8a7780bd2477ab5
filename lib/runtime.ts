/**
 * runtime.ts — process-level facts and knobs: native memory, threads, CPU features.
 */
import { native } from './native';

export interface DeviceMemory { liveBytes: number; peakBytes: number; allocations: number; }
/** The host allocator's cache of freed large blocks (reused instead of mapping fresh memory). */
export interface HostCacheStats { cachedBytes: number; limitBytes: number; hits: number; misses: number; }
export interface MemoryStats { cpu: DeviceMemory; cuda: DeviceMemory; hostCache: HostCacheStats; }
export interface CpuInfo {
  isa: 'scalar' | 'avx2' | 'avx512'; avx2: boolean; fma: boolean; avx512f: boolean; avx512bf16: boolean; amxBf16: boolean; cudaBuild: boolean;
  /** The AVX512-BF16 kernels are in use now (off below avx512, or with PEFTKIT_ISA=avx512-nobf16). */
  bf16Kernels: boolean;
}

/** Bytes held by native tensors now and at peak (since start or resetPeakMemory()). */
export function memoryStats(): MemoryStats { return native.memoryStats() as MemoryStats; }
export function resetPeakMemory(): void { native.resetPeakMemory(); }
/** Return the host allocator's cached free blocks to the OS (PEFTKIT_HOST_CACHE_MB caps the cache). */
export function releaseHostCache(): void { native.releaseHostCache(); }
/** Size of the native thread pool (PEFTKIT_NUM_THREADS, default = cores). */
export function numThreads(): number { return native.numThreads() as number; }
export function setNumThreads(n: number): void { native.setNumThreads(n); }
/** The CPU features the kernels dispatch on, and whether this build has CUDA. */
export function cpuInfo(): CpuInfo { return native.cpuInfo() as CpuInfo; }
