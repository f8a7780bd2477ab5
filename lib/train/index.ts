/** train — the Trainer, its callbacks, checkpoints, the HTML report and gradient checkpointing. */
export { Trainer, NonFiniteError, TrainerRng, countLossTokens, causalLoss } from './trainer';
export type {
  TrainerOptions, TrainingArgs, TrainResult, TrainableModel, TrainerTokenizer, TrainerOptimizer, Batch, SequenceLike,
  DataCollator, TrainData, OptimName,
} from './trainer';
export { ProgressBar, JsonlLogger, EarlyStopping } from './callbacks';
export type { TrainerCallback, LogRecord, StepMetrics, EvalMetrics, TrainerProgress, EarlyStoppingOptions } from './callbacks';
export {
  saveTrainingCheckpoint, loadTrainingCheckpoint, listCheckpoints, latestCheckpoint, resolveCheckpoint, rotateCheckpoints,
} from './checkpoint';
export type { TrainerStateJson, CheckpointContent } from './checkpoint';
export { renderReport, writeReport, svgChart } from './report';
export type { ReportData } from './report';
export { enableGradientCheckpointing, checkpointed, decoderLayers } from './recompute';
export type { CheckpointOptions } from './recompute';
