import { inflateSync } from 'node:zlib';
import { OrbError } from '../core/errors.js';

/**
 * A small PNG reader: our screenshots and users' reference screenshots (saved from any tool) come
 * back as plain RGB pixels to compare. Non-interlaced PNGs of every colour type and bit depth;
 * alpha is dropped (a screenshot has no transparency worth comparing).
 */
export interface RgbImage {
  width: number;
  height: number;
  /** 3 bytes per pixel, rows top to bottom */
  data: Buffer;
}

const SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

function bad(what: string, why: string): OrbError {
  return new OrbError('input', `${what} is not a PNG this tool can read: ${why}`, {
    hint: 'give a PNG screenshot (for example one from a previous smoke test run), non-interlaced',
  });
}

function paeth(a: number, b: number, c: number): number {
  const p = a + b - c;
  const pa = Math.abs(p - a);
  const pb = Math.abs(p - b);
  const pc = Math.abs(p - c);
  return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

export function decodePng(buf: Buffer, what = 'the image'): RgbImage {
  if (buf.length < 8 || !buf.subarray(0, 8).equals(SIGNATURE)) throw bad(what, 'no PNG signature');
  let pos = 8;
  let width = 0;
  let height = 0;
  let depth = 0;
  let colorType = -1;
  let palette: Buffer | undefined;
  const idat: Buffer[] = [];
  while (pos + 8 <= buf.length) {
    const len = buf.readUInt32BE(pos);
    const type = buf.toString('ascii', pos + 4, pos + 8);
    const body = buf.subarray(pos + 8, pos + 8 + len);
    if (body.length !== len) throw bad(what, `truncated ${type} chunk`);
    pos += 12 + len;
    if (type === 'IHDR') {
      width = body.readUInt32BE(0);
      height = body.readUInt32BE(4);
      depth = body[8]!;
      colorType = body[9]!;
      if (body[12] !== 0) throw bad(what, 'interlaced');
    } else if (type === 'PLTE') palette = body;
    else if (type === 'IDAT') idat.push(body);
    else if (type === 'IEND') break;
  }
  const channels = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 }[colorType as 0 | 2 | 3 | 4 | 6];
  if (!width || !height || channels === undefined || ![1, 2, 4, 8, 16].includes(depth)) {
    throw bad(what, `unsupported header (colour type ${colorType}, bit depth ${depth})`);
  }
  if (colorType === 3 && !palette) throw bad(what, 'palette image without a palette');
  if (width * height > 64 * 1024 * 1024) throw bad(what, `${width}x${height} is too large for a screenshot`);
  let raw: Buffer;
  try {
    raw = inflateSync(Buffer.concat(idat));
  } catch (err) {
    throw bad(what, `corrupt image data (${(err as Error).message})`);
  }
  const bitsPerPixel = channels * depth;
  const stride = Math.ceil((width * bitsPerPixel) / 8);
  const bpp = Math.max(1, bitsPerPixel >> 3);
  if (raw.length < height * (stride + 1)) throw bad(what, 'image data shorter than the header says');
  const rows = Buffer.alloc(height * stride);
  let prev = Buffer.alloc(stride);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)]!;
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    const out = rows.subarray(y * stride, (y + 1) * stride);
    for (let i = 0; i < stride; i++) {
      const a = i >= bpp ? out[i - bpp]! : 0;
      const b = prev[i]!;
      const c = i >= bpp ? prev[i - bpp]! : 0;
      const x = line[i]!;
      switch (filter) {
        case 0:
          out[i] = x;
          break;
        case 1:
          out[i] = x + a;
          break;
        case 2:
          out[i] = x + b;
          break;
        case 3:
          out[i] = x + ((a + b) >> 1);
          break;
        case 4:
          out[i] = x + paeth(a, b, c);
          break;
        default:
          throw bad(what, `unknown row filter ${filter}`);
      }
    }
    prev = out;
  }
  const data = Buffer.alloc(width * height * 3);
  // Sample n of a row at bit depth `depth`, scaled to 0..255.
  const sample = (row: Buffer, n: number): number => {
    if (depth === 8) return row[n]!;
    if (depth === 16) return row[n * 2]!;
    const bit = n * depth;
    const v = (row[bit >> 3]! >> (8 - depth - (bit & 7))) & ((1 << depth) - 1);
    return colorType === 3 ? v : Math.round((v * 255) / ((1 << depth) - 1));
  };
  for (let y = 0; y < height; y++) {
    const row = rows.subarray(y * stride, (y + 1) * stride);
    for (let x = 0; x < width; x++) {
      const o = (y * width + x) * 3;
      if (colorType === 2 || colorType === 6) {
        data[o] = sample(row, x * channels);
        data[o + 1] = sample(row, x * channels + 1);
        data[o + 2] = sample(row, x * channels + 2);
      } else if (colorType === 3) {
        const idx = sample(row, x) * 3;
        data[o] = palette![idx] ?? 0;
        data[o + 1] = palette![idx + 1] ?? 0;
        data[o + 2] = palette![idx + 2] ?? 0;
      } else {
        const g = sample(row, x * channels);
        data[o] = g;
        data[o + 1] = g;
        data[o + 2] = g;
      }
    }
  }
  return { width, height, data };
}
