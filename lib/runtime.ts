/**
 * runtime.ts — process-level facts and knobs: native memory, threads, CPU features, and the CUDA
 * runtime (availability, the caching allocator's numbers, releasing its cache).
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

/** One CUDA device as the runtime sees it. */
export interface CudaDevice { index: number; name: string; computeCapability: string; multiprocessors: number; totalBytes: number; freeBytes: number; }
/** Whether this addon can run on the GPU, and if not, why (also `peftkit inspect gpu`). */
export interface CudaInfo {
  built: boolean; available: boolean;
  /** The host-memory CUDA emulator (development builds only): no GPU, CPU kernels. */
  emulated: boolean;
  reason: string; driverVersion: number; runtimeVersion: number; cublasLt: boolean; devices: CudaDevice[];
}
/** The CUDA caching allocator's counters (all zero without CUDA). */
export interface CudaMemoryStats {
  allocatedBytes: number; reservedBytes: number; peakAllocatedBytes: number; peakReservedBytes: number;
  requests: number; cacheHits: number; deviceAllocs: number; deviceFrees: number; oomFlushes: number;
  liveBlocks: number; cachedBlocks: number;
}
export function cudaInfo(): CudaInfo { return native.cudaInfo() as CudaInfo; }
export function cudaMemoryStats(): CudaMemoryStats { return native.cudaMemoryStats() as CudaMemoryStats; }
/**
 * Return the caching allocator's unused device blocks, and the unused page-locked host blocks of
 * activation offload, to the driver (like torch.cuda.empty_cache()). Live tensors are untouched.
 */
export function cudaEmptyCache(): void { native.cudaEmptyCache(); }
/** Wait for all queued GPU work (only timing code needs this: reading a tensor back already waits). */
export function cudaSynchronize(): void { native.cudaSynchronize(); }
