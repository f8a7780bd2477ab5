/** tokenizer — HuggingFace tokenizers and chat templates. */
export { Tokenizer, loadTokenizer } from './tokenizer';
export type { ChatMessage, EncodeOptions, DecodeOptions, ChatTemplateOptions } from './tokenizer';
