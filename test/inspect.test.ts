/** `peftkit inspect`: counts from the fixture checkpoints' headers (computed independently from the shapes). */
import * as path from 'path';
import { main } from '../lib/cli';
import { inspectModel } from '../lib/cli/inspect';

const FIX = path.join(__dirname, 'fixtures', 'hf', 'models');

test('llama fixture: parameters, dtype, memory per dtype and NF4', () => {
  const r = inspectModel(path.join(FIX, 'llama'));
  // embed + lm_head 2·512·64; per layer q,o 64·64, k,v 32·64, gate,up,down 3·128·64, 2 norms 64; final norm 64
  const perLayer = 2 * 64 * 64 + 2 * 32 * 64 + 3 * 128 * 64 + 2 * 64;
  const total = 2 * 512 * 64 + 2 * perLayer + 64;
  expect(r.parameters).toBe(total);
  expect(r.linearParameters).toBe(2 * (perLayer - 128));
  expect(r.architecture).toBe('LlamaForCausalLM');
  expect(r.checkpointDtypes).toEqual({ F32: total });
  expect(r.memory.f32).toBe(4 * total);
  expect(r.memory.bf16).toBe(2 * total);
  const lin = r.linearParameters;
  expect(r.memory.nf4).toBe(Math.ceil(lin / 2 + (lin / 64) * 4 + (total - lin) * 2));
});

test('tied embeddings are counted once; the command prints a report', () => {
  const r = inspectModel(path.join(FIX, 'gpt2'));
  expect(r.tiedEmbeddings).toBe(true);
  const out: string[] = [], err: string[] = [];
  expect(main(['inspect', path.join(FIX, 'qwen2')], (s) => out.push(s), (s) => err.push(s))).toBe(0);
  expect(out.join('\n')).toMatch(/Qwen2ForCausalLM[\s\S]*parameters[\s\S]*nf4/);
  expect(main(['inspect', '/nonexistent'], (s) => out.push(s), (s) => err.push(s))).toBe(1);
  expect(err.join('\n')).toMatch(/config\.json/);
  expect(main(['bogus'], (s) => out.push(s), (s) => err.push(s))).toBe(2);
});
