/** eval — generation metrics (exact match, token F1, ROUGE-L) and perplexity. */
export { normalizeAnswer, exactMatch, tokenF1, rougeTokens, rougeL, scoreGenerations } from './metrics';
export type { GenerationScores } from './metrics';
export { perplexity } from './perplexity';
export type { PerplexityModel, PerplexityTokenizer, PerplexityResult } from './perplexity';
