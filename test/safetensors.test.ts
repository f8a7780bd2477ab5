/**
 * safetensors reader/writer: bytes checked against the format spec written by hand (independent
 * of our writer), round trips, dtype conversion, sharded checkpoints, and every kind of bad file
 * (truncated, corrupt header, overlaps, holes, shapes contradicting config.json, missing or
 * unexpected tensors) giving an error that names the file and the tensor.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import {
  loadCheckpoint, loadSafetensors, openCheckpoint, readHeader, saveCheckpoint, saveSafetensors, SafetensorsError,
} from '../lib/io/safetensors';
import { loadModel } from '../lib/models';
import { Tensor } from '../lib/tensor/tensor';

const FIX = path.join(__dirname, 'fixtures', 'hf', 'models');
let tmp: string;
beforeAll(() => { tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pk-st-')); });
afterAll(() => { fs.rmSync(tmp, { recursive: true, force: true }); });

/** A safetensors file assembled by hand: header object + raw data. */
function handMade(file: string, header: Record<string, unknown>, data: Buffer, opts: { lenOverride?: bigint; raw?: Buffer } = {}): string {
  const json = opts.raw ?? Buffer.from(JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(opts.lenOverride ?? BigInt(json.length));
  fs.writeFileSync(file, Buffer.concat([len, json, data]));
  return file;
}
function f32(...v: number[]): Buffer { return Buffer.from(new Float32Array(v).buffer); }

describe('reading', () => {
  test('a hand-written file: values, shapes, metadata, i64 and bf16', () => {
    const bf = Buffer.from(new Uint16Array([0x3f80, 0xc000]).buffer);  // 1, -2 in bf16
    const i64 = Buffer.from(new BigInt64Array([5n, -7n]).buffer);
    const data = Buffer.concat([f32(1, 2, 3, 4, 5, 6), i64, bf]);
    const file = handMade(path.join(tmp, 'hand.safetensors'), {
      __metadata__: { format: 'pt' },
      w: { dtype: 'F32', shape: [2, 3], data_offsets: [0, 24] },
      ids: { dtype: 'I64', shape: [2], data_offsets: [24, 40] },
      h: { dtype: 'BF16', shape: [2], data_offsets: [40, 44] },
    }, data);
    const h = readHeader(file);
    expect(h.metadata).toEqual({ format: 'pt' });
    const m = loadSafetensors(file);
    expect(m.get('w')!.toArray()).toEqual([[1, 2, 3], [4, 5, 6]]);
    expect(m.get('ids')!.dtype).toBe('i64');
    expect(m.get('ids')!.toArray()).toEqual([5, -7]);
    expect(m.get('h')!.dtype).toBe('bf16');
    expect(m.get('h')!.toArray()).toEqual([1, -2]);
    const asF32 = loadSafetensors(file, { dtype: 'f32' });
    expect(asF32.get('h')!.dtype).toBe('f32');
    expect(asF32.get('ids')!.dtype).toBe('i64');  // integers are never converted
    const asBf = loadSafetensors(file, { dtype: 'bf16' });
    expect(asBf.get('w')!.dtype).toBe('bf16');
    expect(asBf.get('w')!.toArray()).toEqual([[1, 2, 3], [4, 5, 6]]);
  });

  test('the fixture checkpoints parse', () => {
    const h = readHeader(path.join(FIX, 'llama', 'model.safetensors'));
    expect(h.tensors.get('model.embed_tokens.weight')!.shape).toEqual([512, 64]);
    expect(h.tensors.size).toBe(21);
  });
});

describe('writing', () => {
  test('round trip of every dtype; the header is 8-byte aligned JSON; no temp files left', () => {
    const file = path.join(tmp, 'rt.safetensors');
    const ts = {
      a: Tensor.fromArray([[1.5, -2], [3, 4]]),
      b: Tensor.fromArray([1, 2, 3], { dtype: 'i64' }),
      c: Tensor.fromArray([0.5, 0.25], { dtype: 'bf16' }),
      d: Tensor.fromArray([0.5, -8], { dtype: 'f16' }),
      e: Tensor.fromArray([7, 9], { dtype: 'u8' }),
      f: Tensor.fromArray([1e-300, 2], { dtype: 'f64' }),
      g: Tensor.fromArray([-3, 4], { dtype: 'i32' }),
      empty: Tensor.zeros([0, 3]),
    };
    saveSafetensors(file, ts, { metadata: { format: 'pt', note: 'x' } });
    const raw = fs.readFileSync(file);
    const n = Number(raw.readBigUInt64LE(0));
    expect(n % 8).toBe(0);
    const hdr = JSON.parse(raw.subarray(8, 8 + n).toString('utf8'));
    expect(hdr.__metadata__).toEqual({ format: 'pt', note: 'x' });
    expect(hdr.a).toEqual({ dtype: 'F32', shape: [2, 2], data_offsets: expect.any(Array) });
    const [b0, b1] = hdr.a.data_offsets;
    expect(Array.from(new Float32Array(raw.buffer.slice(raw.byteOffset + 8 + n + b0, raw.byteOffset + 8 + n + b1)))).toEqual([1.5, -2, 3, 4]);
    const back = loadSafetensors(file);
    for (const [k, t] of Object.entries(ts)) {
      expect(back.get(k)!.dtype).toBe(t.dtype);
      expect(back.get(k)!.shape).toEqual(t.shape);
      expect(back.get(k)!.toArray()).toEqual(t.toArray());
    }
    expect(fs.readdirSync(tmp).filter((f) => f.includes('.tmp-'))).toEqual([]);
  });

  test('a failed save leaves the previous file intact', () => {
    const file = path.join(tmp, 'keep.safetensors');
    saveSafetensors(file, { a: Tensor.fromArray([1, 2]) });
    const before = fs.readFileSync(file);
    const dead = Tensor.fromArray([1]); dead.dispose();
    expect(() => saveSafetensors(file, { a: Tensor.fromArray([3]), b: dead })).toThrow(/not a live Tensor/);
    expect(fs.readFileSync(file).equals(before)).toBe(true);
  });

  test('non-contiguous tensors are written in logical order', () => {
    const file = path.join(tmp, 'nc.safetensors');
    const t = Tensor.fromArray([[1, 2, 3], [4, 5, 6]]).transpose(0, 1);
    saveSafetensors(file, { t });
    expect(loadSafetensors(file).get('t')!.toArray()).toEqual([[1, 4], [2, 5], [3, 6]]);
  });

  test('sharded checkpoints: index + shards round trip', () => {
    const dir = path.join(tmp, 'sharded');
    const ts = new Map<string, Tensor>();
    for (let i = 0; i < 5; i++) ts.set(`layer.${i}.w`, Tensor.fromArray(new Array(64).fill(i), { shape: [8, 8] }));
    const files = saveCheckpoint(dir, ts, { maxShardBytes: 600 });
    expect(files.some((f) => f.endsWith('model.safetensors.index.json'))).toBe(true);
    expect(files.length).toBeGreaterThan(2);
    const idx = JSON.parse(fs.readFileSync(path.join(dir, 'model.safetensors.index.json'), 'utf8'));
    expect(idx.metadata.total_size).toBe(5 * 256);
    const back = loadCheckpoint(dir);
    for (const [k, t] of ts) expect(back.get(k)!.toArray()).toEqual(t.toArray());
    // a tensor listed in the index but absent from its shard
    idx.weight_map['ghost.w'] = idx.weight_map['layer.0.w'];
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify(idx));
    expect(() => openCheckpoint(dir)).toThrow(/model-00001-of-0000\d\.safetensors: tensor 'ghost\.w': listed in model\.safetensors\.index\.json but not present/);
  });
});

describe('bad files name the file and the tensor', () => {
  const base = { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [3], data_offsets: [8, 20] } };
  const data = f32(1, 2, 3, 4, 5);
  const cases: [string, () => string, RegExp][] = [
    ['truncated data', () => handMade(path.join(tmp, 'trunc.safetensors'), base, data.subarray(0, 16)), /trunc\.safetensors: tensor 'b': .*truncated/],
    ['truncated header', () => handMade(path.join(tmp, 'trunch.safetensors'), base, Buffer.alloc(0), { lenOverride: 4096n }), /trunch\.safetensors: header claims 4096 bytes .*truncated/],
    ['huge header length', () => handMade(path.join(tmp, 'huge.safetensors'), base, data, { lenOverride: 1n << 40n }), /huge\.safetensors: header length .* exceeds/],
    ['not JSON', () => handMade(path.join(tmp, 'json.safetensors'), {}, data, { raw: Buffer.from('{"a": [1,') }), /json\.safetensors: header is not valid JSON/],
    ['unknown dtype', () => handMade(path.join(tmp, 'dt.safetensors'), { ...base, a: { ...base.a, dtype: 'F31' } }, data), /dt\.safetensors: tensor 'a': unknown dtype "F31"/],
    ['shape vs bytes', () => handMade(path.join(tmp, 'sh.safetensors'), { ...base, b: { ...base.b, shape: [4] } }, data), /sh\.safetensors: tensor 'b': shape \[4\] of F32 needs 16 bytes/],
    ['overlap', () => handMade(path.join(tmp, 'ov.safetensors'), { a: { dtype: 'F32', shape: [3], data_offsets: [0, 12] }, b: { dtype: 'F32', shape: [3], data_offsets: [8, 20] } }, data), /ov\.safetensors: tensor 'b': .*overlap tensor 'a'/],
    ['hole', () => handMade(path.join(tmp, 'hole.safetensors'), { a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] }, b: { dtype: 'F32', shape: [3], data_offsets: [8, 20] } }, data), /hole\.safetensors: tensor 'b': hole in the data/],
    ['negative shape', () => handMade(path.join(tmp, 'neg.safetensors'), { ...base, a: { ...base.a, shape: [-2] } }, data), /neg\.safetensors: tensor 'a': shape \[-2\]/],
    ['empty file', () => { const p = path.join(tmp, 'empty.safetensors'); fs.writeFileSync(p, ''); return p; }, /empty\.safetensors: file has 0 bytes/],
  ];
  test.each(cases)('%s', (_name, make, re) => {
    const file = make();
    expect(() => loadSafetensors(file)).toThrow(SafetensorsError);
    expect(() => loadSafetensors(file)).toThrow(re);
  });
});

describe('loadModel rejects bad checkpoints', () => {
  const src = path.join(FIX, 'llama');
  function copyModel(name: string, edit?: (w: Map<string, Tensor>, cfg: Record<string, unknown>) => void): string {
    const dir = path.join(tmp, name);
    fs.mkdirSync(dir, { recursive: true });
    const cfg = JSON.parse(fs.readFileSync(path.join(src, 'config.json'), 'utf8'));
    const w = loadSafetensors(path.join(src, 'model.safetensors'));
    if (edit) edit(w, cfg);
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(cfg));
    saveSafetensors(path.join(dir, 'model.safetensors'), w);
    return dir;
  }
  test('truncated file', async () => {
    const dir = copyModel('m-trunc');
    const f = path.join(dir, 'model.safetensors');
    const buf = fs.readFileSync(f);
    fs.writeFileSync(f, buf.subarray(0, buf.length - 100));
    await expect(loadModel(dir)).rejects.toThrow(/model\.safetensors: tensor '[\w.]+': .*truncated/);
  });
  test('corrupt header', async () => {
    const dir = copyModel('m-corrupt');
    const f = path.join(dir, 'model.safetensors');
    const buf = fs.readFileSync(f);
    buf[12] = 0x00;  // inside the JSON
    fs.writeFileSync(f, buf);
    await expect(loadModel(dir)).rejects.toThrow(/m-corrupt\/model\.safetensors: header is not valid JSON/);
  });
  test('shape contradicting config.json', async () => {
    const dir = copyModel('m-shape', (_w, cfg) => { cfg.intermediate_size = 96; });
    await expect(loadModel(dir)).rejects.toThrow(/model\.safetensors: tensor 'model\.layers\.0\.mlp\.down_proj\.weight' has shape \[64,128\] but config\.json \(.*intermediate_size=96.*\) implies \[64,96\]/);
  });
  test('missing tensor', async () => {
    const dir = copyModel('m-missing', (w) => { w.delete('model.layers.1.self_attn.k_proj.weight'); });
    await expect(loadModel(dir)).rejects.toThrow(/model\.safetensors: missing tensor 'model\.layers\.1\.self_attn\.k_proj\.weight'/);
  });
  test('unexpected tensor', async () => {
    const dir = copyModel('m-extra', (w) => { w.set('model.layers.0.self_attn.q_norm.weight', Tensor.ones([16])); });
    await expect(loadModel(dir)).rejects.toThrow(/unexpected tensor 'model\.layers\.0\.self_attn\.q_norm\.weight' \(in .*m-extra\/model\.safetensors\)/);
  });
  test('unsupported model_type lists the supported ones', async () => {
    const dir = copyModel('m-type', (_w, cfg) => { cfg.model_type = 'falcon'; });
    await expect(loadModel(dir)).rejects.toThrow(/unsupported model_type "falcon"; supported model types: llama, mistral, qwen2, qwen3, phi3, gemma, gpt2/);
  });
  test('a sharded copy loads to the same logits', async () => {
    const dir = path.join(tmp, 'm-sharded');
    fs.mkdirSync(dir, { recursive: true });
    fs.copyFileSync(path.join(src, 'config.json'), path.join(dir, 'config.json'));
    saveCheckpoint(dir, loadSafetensors(path.join(src, 'model.safetensors')), { maxShardBytes: 150_000 });
    expect(fs.existsSync(path.join(dir, 'model.safetensors'))).toBe(false);
    const a = await loadModel(src), b = await loadModel(dir);
    const ids = [[1, 2, 3, 4]];
    expect(b.forward({ inputIds: ids }).logits.toArray()).toEqual(a.forward({ inputIds: ids }).logits.toArray());
  });
});
