/**
 * Screenshots: QEMU's screendump writes PPM (P6); we turn it into PNG with a tiny encoder on
 * node:zlib and compute simple statistics the smoke test uses to tell "black screen" from "desktop".
 */
import { deflateSync } from 'node:zlib';

export interface ScreenStats {
  width: number;
  height: number;
  /** mean luma 0..255 */
  meanBrightness: number;
  /** every pixel is (near) black: luma <= 8 */
  allBlack: boolean;
  /** number of distinct colours (capped at 65536): 1-2 means a blank screen */
  distinctColors: number;
  /** fraction of pixels that differ from the most common colour, 0..1 */
  nonBackgroundFraction: number;
}

export interface RgbImage {
  width: number;
  height: number;
  /** width * height * 3 bytes, row-major RGB */
  rgb: Buffer;
}

/** Parses binary PPM (P6, maxval < 256) as QEMU's screendump writes it. */
export function parsePpm(buf: Buffer): RgbImage {
  let off = 0;
  const tokens: string[] = [];
  while (tokens.length < 4) {
    // skip whitespace and comments
    while (off < buf.length) {
      const c = buf[off]!;
      if (c === 0x23) {
        while (off < buf.length && buf[off] !== 0x0a) off++;
      } else if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) off++;
      else break;
    }
    const start = off;
    while (off < buf.length && ![0x20, 0x0a, 0x0d, 0x09].includes(buf[off]!)) off++;
    if (start === off) throw new Error('truncated PPM header');
    tokens.push(buf.toString('ascii', start, off));
  }
  off++; // exactly one whitespace byte before the raster
  const [magic, w, h, max] = tokens as [string, string, string, string];
  const width = Number(w);
  const height = Number(h);
  if (magic !== 'P6' || !(width > 0) || !(height > 0) || Number(max) !== 255) {
    throw new Error(`unsupported PPM (${magic} ${w}x${h} maxval ${max})`);
  }
  const size = width * height * 3;
  if (buf.length - off < size) throw new Error(`PPM raster truncated: ${buf.length - off} of ${size} bytes`);
  return { width, height, rgb: buf.subarray(off, off + size) };
}

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(parts: Buffer[]): number {
  let c = 0xffffffff;
  for (const p of parts) for (let i = 0; i < p.length; i++) c = CRC_TABLE[(c ^ p[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type: string, data: Buffer): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const t = Buffer.from(type, 'ascii');
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32([t, data]));
  return Buffer.concat([len, t, data, crc]);
}

/** Encodes 8-bit RGB as PNG (colour type 2), filter "Up" on every row (good for screens). */
export function encodePng(img: RgbImage): Buffer {
  const { width, height, rgb } = img;
  const stride = width * 3;
  const raw = Buffer.alloc((stride + 1) * height);
  for (let y = 0; y < height; y++) {
    const o = y * (stride + 1);
    const row = y * stride;
    if (y === 0) {
      raw[o] = 0;
      rgb.copy(raw, o + 1, row, row + stride);
    } else {
      raw[o] = 2; // Up
      for (let x = 0; x < stride; x++) raw[o + 1 + x] = (rgb[row + x]! - rgb[row - stride + x]!) & 0xff;
    }
  }
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // truecolour
  ihdr[10] = 0;
  ihdr[11] = 0;
  ihdr[12] = 0;
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(raw, { level: 6 })),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

export function screenStats(img: RgbImage): ScreenStats {
  const { width, height, rgb } = img;
  const n = width * height;
  let sum = 0;
  let allBlack = true;
  const counts = new Map<number, number>();
  for (let i = 0; i < n; i++) {
    const r = rgb[i * 3]!;
    const g = rgb[i * 3 + 1]!;
    const b = rgb[i * 3 + 2]!;
    const y = 0.299 * r + 0.587 * g + 0.114 * b;
    sum += y;
    if (y > 8) allBlack = false;
    const key = (r << 16) | (g << 8) | b;
    const c = counts.get(key);
    if (c !== undefined) counts.set(key, c + 1);
    else if (counts.size < 65536) counts.set(key, 1);
  }
  let top = 0;
  for (const c of counts.values()) if (c > top) top = c;
  return {
    width,
    height,
    meanBrightness: n ? Math.round((sum / n) * 100) / 100 : 0,
    allBlack,
    distinctColors: counts.size,
    nonBackgroundFraction: n ? Math.round(((n - top) / n) * 10000) / 10000 : 0,
  };
}
