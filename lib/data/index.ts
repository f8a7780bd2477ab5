/** data — datasets (JSONL/JSON/CSV), tokenization with chat templates, padding, packing, batching. */
export { loadDataset, parseCsv, Dataset, DatasetError } from './dataset';
export type { DataFormat, FileType, ChatTurn, Example, LoadDatasetOptions, InvalidRow } from './dataset';
export { tokenizeExample, tokenizeDataset, alpacaPrompt, IGNORE_INDEX } from './tokenize';
export type { TokenizerLike, TokenizeOptions, TokenizedExample, TokenizeStats } from './tokenize';
export { Rng, padBatch, packExamples, lengthGroupedIndices, DataLoader, batchToTensors } from './collate';
export type { Batch, SequenceLike, PackedSequence, PadOptions, PackOptions, DataLoaderOptions } from './collate';
