import { createHash, randomBytes } from 'node:crypto';
import zlib from 'node:zlib';
import { describe, expect, it } from 'vitest';
import {
  BLOCK_SIZE,
  ContentRoot,
  IndexBuilder,
  ZERO_BLOCK_DIGEST,
  encodeIndex,
  entryDigest,
  serializeIndex,
  type DiskIndex,
} from '../../src/formats/disk-index.js';
import { decodeFrame, decodeIndex, parseIndex } from '../../src/formats/disk-index-decode.js';

const fail = (why: string) => new Error(`index ${why}`);
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest();

/** A small disk: blocks 0..2 in frame 0, block 5 a duplicate of block 1, block 9 in frame 1 (pack 1). */
function sample(): { idx: DiskIndex; blocks: Map<number, Buffer> } {
  const blocks = new Map<number, Buffer>();
  for (const b of [0, 1, 2, 9]) blocks.set(b, randomBytes(BLOCK_SIZE));
  blocks.set(5, blocks.get(1)!);
  const ib = new IndexBuilder(12 * BLOCK_SIZE - 512);
  const p0 = ib.addPack({ digest: 'sha256:' + 'a'.repeat(64), size: 1000 });
  const p1 = ib.addPack({ digest: 'sha256:' + 'b'.repeat(64), size: 500 });
  const f0 = ib.addFrame(p0, 10, 900, 3);
  const f1 = ib.addFrame(p1, 0, 500, 1);
  ib.addEntry(0, f0, 0, sha(blocks.get(0)!));
  ib.addEntry(1, f0, 1, sha(blocks.get(1)!));
  ib.addEntry(2, f0, 2, sha(blocks.get(2)!));
  ib.addEntry(5, f0, 1, sha(blocks.get(1)!));
  ib.addEntry(9, f1, 0, sha(blocks.get(9)!));
  return { idx: ib.finish(), blocks };
}

describe('disk index v2', () => {
  it('round-trips and computes the content root from the disk bytes alone', () => {
    const { idx, blocks } = sample();
    const back = decodeIndex(encodeIndex(idx), { fail, packs: idx.packs });
    expect(back.contentDigest).toBe(idx.contentDigest);
    expect([...back.entryBlock]).toEqual([0, 1, 2, 5, 9]);
    expect([...back.entryFrame]).toEqual([0, 0, 0, 0, 1]);
    expect([...back.entrySlot]).toEqual([0, 1, 2, 1, 0]);
    expect([...back.frameOffset]).toEqual([10, 0]);
    expect(entryDigest(back, 4).equals(sha(blocks.get(9)!))).toBe(true);
    // The same root from a block walk where zeros come as explicit zero blocks, in pieces.
    const r = new ContentRoot(idx.virtualSize);
    for (let b = 0; b < idx.blockCount; b++) {
      const d = blocks.get(b);
      if (d) r.block(sha(d));
      else r.zeros(1);
    }
    expect(r.digest()).toBe(idx.contentDigest);
  });

  it('an all-zero disk has an empty index', () => {
    const idx = new IndexBuilder(1 << 20).finish();
    expect(decodeIndex(encodeIndex(idx), { fail }).entryCount).toBe(0);
  });

  const bad: [string, (b: Buffer) => void, RegExp][] = [
    ['magic', (b) => (b[0] = 0), /magic/],
    ['version', (b) => b.writeUInt16LE(3, 8), /version 3/],
    ['flags', (b) => b.writeUInt16LE(1, 10), /flags/],
    ['virtual size', (b) => b.writeBigUInt64LE(2n ** 50n, 16), /virtual size/],
    ['root', (b) => (b[40] = b[40]! ^ 1), /content digest/],
    ['frame past its pack', (b) => b.writeBigUInt64LE(100n, 72 + 32), /after the end of pack/],
    ['too many entries', (b) => b.writeUInt32LE(99, 32), /lists 99 blocks/],
    ['trailing bytes', () => undefined, /after its last entry/],
  ];
  for (const [name, mutate, msg] of bad)
    it(`refuses an index with a bad ${name}`, () => {
      const { idx } = sample();
      let bytes = serializeIndex(idx);
      mutate(bytes);
      if (name === 'trailing bytes') bytes = Buffer.concat([bytes, Buffer.from([0])]);
      expect(() => parseIndex(bytes, { fail })).toThrow(msg);
    });

  it('refuses a pack table that is not the manifest’s, and a stored zero block', () => {
    const { idx } = sample();
    const packs = [...idx.packs].reverse();
    expect(() => decodeIndex(encodeIndex(idx), { fail, packs })).toThrow(/not the manifest/);
    const z = new IndexBuilder(BLOCK_SIZE * 2);
    const p = z.addPack({ digest: 'sha256:' + 'c'.repeat(64), size: 10 });
    z.addEntry(0, z.addFrame(p, 0, 10, 1), 0, ZERO_BLOCK_DIGEST);
    expect(() => parseIndex(serializeIndex(z.finish()), { fail })).toThrow(/zero block/);
  });

  it('refuses an index blob without a declared size or declaring too much', () => {
    const { idx } = sample();
    const raw = serializeIndex(idx);
    const stream = zlib.zstdCompressSync(raw, { params: { [zlib.constants.ZSTD_c_contentSizeFlag]: 0 } });
    expect(() => decodeIndex(stream, { fail })).toThrow(/does not declare/);
    expect(() => decodeIndex(Buffer.from('not zstd at all'), { fail })).toThrow(/not a zstd frame/);
  });

  it('decodes frames only at their declared size', () => {
    const data = randomBytes(2 * BLOCK_SIZE);
    const f = zlib.zstdCompressSync(data);
    expect(decodeFrame(f, 2, BLOCK_SIZE, fail).equals(data)).toBe(true);
    expect(() => decodeFrame(f, 1, BLOCK_SIZE, fail)).toThrow(/declares/);
    const bomb = zlib.zstdCompressSync(Buffer.alloc(64 << 20), {
      params: { [zlib.constants.ZSTD_c_contentSizeFlag]: 0 },
    });
    expect(() => decodeFrame(bomb, 8, BLOCK_SIZE, fail)).toThrow(/declares no bytes/);
  });
});
