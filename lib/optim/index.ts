/** optim — AdamW (32/8-bit, paged), gradient clipping, learning-rate schedules. */
export { AdamW } from './adamw';
export type { AdamWOptions, AdamWHyperParams, ParamGroup, ParamGroupSpec, ParamList, NamedParameter } from './adamw';
export { AdamW8bit, PagedAdamW, PagedAdamW8bit, pagedMemoryStats } from './paged';
export type { EightBitOptions, PagedOptions } from './paged';
export { clipGradNorm, gradNorm } from './clip';
export type { ClipOptions } from './clip';
export {
  getSchedule, constantSchedule, linearSchedule, cosineSchedule, cosineWithRestartsSchedule, polynomialSchedule,
  warmupStepsOf, LRScheduler,
} from './schedules';
export type { LrLambda, ScheduleName, ScheduleOptions, SchedulableOptimizer } from './schedules';
export { flattenState, unflattenState, disposeState } from './state';
export type { OptimizerState, ParamState, SavedParamGroup } from './state';
