import { randomBytes } from 'node:crypto';
import zlib from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { ZstdFrameDecoder, ZstdFrameEncoder } from '../../src/formats/zstd-context.js';
import { zstdFrameHeader } from '../../src/formats/zstd-frame.js';

const frame = (data: Buffer) =>
  zlib.zstdCompressSync(data, { params: { [zlib.constants.ZSTD_c_contentSizeFlag]: 1 } });
// half random, half repeated: real sequences, literals and matches
const block = (seed: number) => Buffer.concat([randomBytes(16384), Buffer.alloc(16384, seed)]);

describe('ZstdFrameDecoder', () => {
  it('decodes frame after frame with one context, each result exact', () => {
    const d = new ZstdFrameDecoder(23);
    for (let i = 0; i < 20; i++) {
      const data = Buffer.concat([block(i), block(i + 1)]);
      expect(d.decode(frame(data), data.length)?.equals(data)).toBe(true);
    }
  });

  it('refuses what is not one whole frame of the wanted size, and decodes the next frame', () => {
    const d = new ZstdFrameDecoder(23);
    const data = block(7);
    const f = frame(data);
    // the first block header made of the reserved block type (bytes flipped inside a raw block
    // would decode: only the blocks' sha256 catches those)
    const fhd = f[4]!;
    const single = (fhd >> 5) & 1;
    const header = 5 + (single ? 0 : 1) + [0, 1, 2, 4][fhd & 3]! + [single, 2, 4, 8][fhd >> 6]!;
    const corrupt = Buffer.from(f);
    corrupt[header]! |= 0x06;
    expect(d.decode(corrupt, data.length)).toBeUndefined();
    expect(d.decode(f.subarray(0, f.length - 9), data.length)).toBeUndefined(); // truncated
    expect(d.decode(f, data.length - 1)).toBeUndefined(); // gives more than wanted
    expect(d.decode(f, data.length + 1)).toBeUndefined(); // gives less
    expect(d.decode(Buffer.concat([f, f]), data.length)).toBeUndefined(); // two frames
    expect(d.decode(f, data.length)?.equals(data)).toBe(true);
  });
});

describe('ZstdFrameEncoder', () => {
  it('writes frame after frame with one context: each a whole frame with its size, as zstd would', () => {
    const e = new ZstdFrameEncoder(3);
    const inputs = Array.from({ length: 12 }, (_, i) => Buffer.concat([block(i), block(i + 2)]));
    const out = Buffer.alloc(inputs.reduce((n, b) => n + ZstdFrameEncoder.bound(b.length), 0));
    let at = 0;
    for (const data of inputs) {
      const n = e.encode(data, out, at)!;
      const f = out.subarray(at, at + n);
      expect(zstdFrameHeader(f)?.contentSize).toBe(data.length);
      expect(zlib.zstdDecompressSync(f).equals(data)).toBe(true);
      // the same bytes as the one-shot call of the same settings
      expect(
        f.equals(zlib.zstdCompressSync(data, { params: { [zlib.constants.ZSTD_c_checksumFlag]: 0 } })),
      ).toBe(true);
      at += n;
    }
  });

  it('gives up on a buffer too small (the caller falls back) and then encodes the next frame', () => {
    const e = new ZstdFrameEncoder(3);
    const data = randomBytes(65536);
    expect(e.encode(data, Buffer.alloc(1000), 0)).toBeUndefined();
    const out = Buffer.alloc(ZstdFrameEncoder.bound(data.length));
    const n = e.encode(data, out, 0)!;
    expect(zlib.zstdDecompressSync(out.subarray(0, n)).equals(data)).toBe(true);
  });
});
