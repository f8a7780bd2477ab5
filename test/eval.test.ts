/**
 * Metrics against hand-computed values (SQuAD normalisation, bag-of-tokens F1, LCS-based
 * ROUGE-L) and perplexity against exp(loss) computed independently from the model's logits.
 */
import * as path from 'path';
import { exactMatch, tokenF1, rougeL, normalizeAnswer, scoreGenerations, perplexity } from '../lib/eval';
import { loadModel, ops, Tensor, noGrad } from '../lib';

describe('generation metrics', () => {
  test('SQuAD normalisation and exact match', () => {
    expect(normalizeAnswer('The  Cat, sat!')).toBe('cat sat');
    expect(exactMatch('A dog.', 'dog')).toBe(1);
    expect(exactMatch('dogs', 'dog')).toBe(0);
  });
  test('token F1 on a bag of tokens', () => {
    // pred: [big, red, dog], ref: [red, dog, barked]: common 2, P=2/3, R=2/3, F1=2/3
    expect(tokenF1('the big red dog', 'red dog barked')).toBeCloseTo(2 / 3, 12);
    expect(tokenF1('x x y', 'x y y')).toBeCloseTo(2 / 3, 12);  // counts are clipped
    expect(tokenF1('', '')).toBe(1);
    expect(tokenF1('a', 'b c')).toBe(0);
  });
  test('ROUGE-L F-measure via the LCS', () => {
    // pred: police killed the gunman (4), ref: police kill the gunman (4): LCS = 3 (police the gunman)
    expect(rougeL('police killed the gunman', 'police kill the gunman')).toBeCloseTo(0.75, 12);
    // pred: the gunman kill police (4): LCS = 2 ("the gunman") -> P=R=0.5
    expect(rougeL('the gunman kill police', 'police kill the gunman')).toBeCloseTo(0.5, 12);
    expect(rougeL('A-B c', 'a b C')).toBe(1);
    expect(rougeL('', 'x')).toBe(0);
  });
  test('scoreGenerations averages and checks lengths', () => {
    const s = scoreGenerations(['a b', 'c'], ['a b', 'd']);
    expect(s).toEqual({ exactMatch: 0.5, tokenF1: 0.5, rougeL: 0.5, count: 2 });
    expect(() => scoreGenerations(['a'], [])).toThrow(/1 predictions for 0 references/);
  });
});

test('perplexity equals exp of the mean token NLL computed from logits', async () => {
  const model = await loadModel(path.join(__dirname, 'fixtures/hf/models/llama'));
  const ids = [[5, 17, 99, 3, 250, 7, 8, 400, 12, 13]];
  const tok = { encode: () => ids[0] };
  const r = perplexity(model, tok, ['ignored'], { maxLength: 64 });
  // independent: log-softmax of logits, gather the next-token log-probs
  const nll = noGrad(() => {
    const logits = model.forward({ inputIds: ids }).logits;
    const lp = ops.logSoftmax(logits, -1).toFloat64Array();
    let s = 0;
    for (let t = 0; t < ids[0].length - 1; t++) s -= lp[t * 512 + ids[0][t + 1]];
    return s / (ids[0].length - 1);
  });
  expect(r.tokens).toBe(9);
  expect(r.nll).toBeCloseTo(nll, 5);
  expect(r.perplexity).toBeCloseTo(Math.exp(nll), 3);
  expect(Tensor).toBeDefined();
});
