/** nn — modules (HF-style dotted parameter names). */
export { Module } from './module';
export { Linear } from './linear';
export type { LinearOptions } from './linear';
