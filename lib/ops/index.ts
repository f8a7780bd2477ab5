/**
 * The op namespace: every differentiable op of peftkit (also re-exported as `ops` from the package).
 */
export * from './elementwise';
export * from './reduce';
export * from './shape';
export * from './matmul';
export * from './indexing';
export * from './random';
export * from './nn';
export * from './attention';
export * from './lora';
export * from './nf4';
export * from './swiglu';
