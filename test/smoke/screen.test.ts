import { deflateSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { decodePng, type RgbImage } from '../../src/smoke/png-decode.js';
import { compareImages, parseRect, screenFacts, SettleTracker } from '../../src/smoke/screen.js';

/** CRC-32 for PNG chunks. */
function crc32(buf: Buffer): number {
  let c = ~0;
  for (const b of buf) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1;
  }
  return ~c >>> 0;
}

function chunk(type: string, body: Buffer): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(body.length);
  const tb = Buffer.concat([Buffer.from(type, 'ascii'), body]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(tb));
  return Buffer.concat([len, tb, crc]);
}

/**
 * A test PNG encoder independent of the decoder: packed rows (any depth), each row encoded with
 * filter (y % 5) so every filter type is exercised.
 */
function encodePng(
  width: number,
  height: number,
  colorType: number,
  depth: number,
  rows: Buffer[],
  palette?: Buffer,
): Buffer {
  const channels = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 }[colorType as 0]!;
  const bpp = Math.max(1, (channels * depth) >> 3);
  const out: Buffer[] = [];
  let prev: Buffer = Buffer.alloc(rows[0]!.length);
  rows.forEach((row, y) => {
    const f = y % 5;
    const line = Buffer.alloc(row.length + 1);
    line[0] = f;
    for (let i = 0; i < row.length; i++) {
      const a = i >= bpp ? row[i - bpp]! : 0;
      const b = prev[i]!;
      const c = i >= bpp ? prev[i - bpp]! : 0;
      const p = a + b - c;
      const pr =
        Math.abs(p - a) <= Math.abs(p - b) && Math.abs(p - a) <= Math.abs(p - c)
          ? a
          : Math.abs(p - b) <= Math.abs(p - c)
            ? b
            : c;
      const pred = [0, a, b, (a + b) >> 1, pr][f]!;
      line[i + 1] = (row[i]! - pred) & 0xff;
    }
    out.push(line);
    prev = row;
  });
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = depth;
  ihdr[9] = colorType;
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    ...(palette ? [chunk('PLTE', palette)] : []),
    chunk('IDAT', deflateSync(Buffer.concat(out))),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

function rgbImage(
  width: number,
  height: number,
  fn: (x: number, y: number) => [number, number, number],
): RgbImage {
  const data = Buffer.alloc(width * height * 3);
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) data.set(fn(x, y), (y * width + x) * 3);
  return { width, height, data };
}

const pattern = (x: number, y: number): [number, number, number] => [
  (x * 37 + y) & 255,
  (y * 11) & 255,
  (x ^ y) & 255,
];

describe('PNG decoding', () => {
  it('reads RGB and RGBA with every row filter', () => {
    const w = 23;
    const h = 11;
    const want = rgbImage(w, h, pattern);
    const rgbRows = Array.from({ length: h }, (_, y) => want.data.subarray(y * w * 3, (y + 1) * w * 3));
    expect(decodePng(encodePng(w, h, 2, 8, rgbRows))).toEqual(want);
    const rgbaRows = rgbRows.map((r) => {
      const o = Buffer.alloc(w * 4);
      for (let x = 0; x < w; x++) o.set([r[x * 3]!, r[x * 3 + 1]!, r[x * 3 + 2]!, 200], x * 4);
      return o;
    });
    expect(decodePng(encodePng(w, h, 6, 8, rgbaRows))).toEqual(want);
  });

  it('reads 1-bit grayscale, 4-bit palette and 16-bit images', () => {
    // 1-bit gray: a checkerboard, 10 wide (2 bytes per row, the last bits padding)
    const rows1 = Array.from({ length: 4 }, (_, y) => Buffer.from(y % 2 ? [0x55, 0x40] : [0xaa, 0x80]));
    const g = decodePng(encodePng(10, 4, 0, 1, rows1));
    expect([...g.data.subarray(0, 6)]).toEqual([255, 255, 255, 0, 0, 0]);
    expect([...g.data.subarray(30, 36)]).toEqual([0, 0, 0, 255, 255, 255]);
    const pal = Buffer.from([10, 20, 30, 200, 100, 50]);
    const p = decodePng(encodePng(3, 1, 3, 4, [Buffer.from([0x01, 0x00])], pal));
    expect([...p.data]).toEqual([10, 20, 30, 200, 100, 50, 10, 20, 30]);
    const r16 = decodePng(encodePng(1, 1, 2, 16, [Buffer.from([0x12, 0x34, 0xab, 0xcd, 0xff, 0x00])]));
    expect([...r16.data]).toEqual([0x12, 0xab, 0xff]);
  });

  it('rejects what is not a readable PNG with a clear message', () => {
    expect(() => decodePng(Buffer.from('GIF89a....'), 'ref.gif')).toThrow(
      /ref\.gif is not a PNG this tool can read: no PNG signature/,
    );
    const good = encodePng(2, 2, 2, 8, [Buffer.alloc(6), Buffer.alloc(6)]);
    const interlaced = Buffer.from(good);
    interlaced[8 + 8 + 12] = 1; // IHDR interlace byte (CRC mismatch is not checked)
    expect(() => decodePng(interlaced)).toThrow(/interlaced/);
    expect(() => decodePng(good.subarray(0, good.length - 20))).toThrow(/truncated|corrupt|shorter/);
  });
});

describe('screen analysis', () => {
  const black = rgbImage(64, 48, () => [0, 0, 0]);
  const desktop = rgbImage(64, 48, (x, y) =>
    y > 40 ? [30, 60, 200] : x > 50 && y < 10 ? [255, 255, 255] : [0, 120, 215],
  );

  it('tells a black screen from a desktop; a cursor does not count', () => {
    expect(screenFacts(black).black).toBe(true);
    const cursor = rgbImage(64, 48, (x, y) => (x === 3 && y === 3 ? [200, 200, 200] : [0, 0, 0]));
    expect(screenFacts(cursor).black).toBe(true);
    expect(screenFacts(desktop)).toMatchObject({ black: false, litFraction: 1 });
  });

  it('compares with a reference outside masked rectangles', () => {
    // the "clock" (top-right 14x10) differs; masked, the screens match
    const other = rgbImage(64, 48, (x, y) =>
      x > 50 && y < 10
        ? [0, 0, 0]
        : (desktop.data.subarray((y * 64 + x) * 3, (y * 64 + x) * 3 + 3) as unknown as [
            number,
            number,
            number,
          ]),
    );
    const unmasked = compareImages(other, desktop);
    expect(unmasked.differing).toBe(13 * 10);
    const masked = compareImages(other, desktop, [parseRect('14x10+50+0')]);
    expect(masked).toMatchObject({ differing: 0, compared: 64 * 48 - 14 * 10 });
    // small colour noise is tolerated
    const noisy = rgbImage(64, 48, (x, y) => {
      const o = (y * 64 + x) * 3;
      return [Math.min(255, desktop.data[o]! + 10), desktop.data[o + 1]!, desktop.data[o + 2]!];
    });
    expect(compareImages(noisy, desktop).fraction).toBe(0);
    expect(() => compareImages(rgbImage(32, 24, pattern), desktop)).toThrow(
      /screen is 32x24 but the reference screenshot is 64x48/,
    );
  });

  it('parses rectangles and refuses bad ones', () => {
    expect(parseRect('200x40+824+728')).toEqual({ x: 824, y: 728, width: 200, height: 40 });
    expect(() => parseRect('10,10,20,20')).toThrow(/WIDTHxHEIGHT\+X\+Y/);
    expect(() => parseRect('0x10+1+1')).toThrow(/empty/);
  });

  it('settles only on a lit screen that stopped changing', () => {
    const t = new SettleTracker(3);
    expect(t.add(black)).toBe(false);
    expect(t.add(black)).toBe(false);
    expect(t.add(black)).toBe(false);
    expect(t.describe()).toMatch(/black/);
    const frames = [pattern, desktop, desktop, desktop].map((f) =>
      typeof f === 'function' ? rgbImage(64, 48, f) : f,
    );
    const results = frames.map((f) => t.add(f));
    expect(results).toEqual([false, false, false, true]);
  });
});
