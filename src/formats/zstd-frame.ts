/**
 * Reads a zstd frame header (RFC 8878 section 3.1.1) without decompressing anything, so a
 * hostile blob's declared size and window are checked before any buffer is allocated for it.
 */
export interface ZstdFrameHeader {
  /** Frame_Content_Size, or undefined when the frame does not declare it */
  contentSize: number | undefined;
  /** the window the decoder needs (the content size for single-segment frames) */
  windowSize: number;
}

const MAGIC = 0xfd2fb528;

/** undefined when `b` does not start with a zstd frame header. */
export function zstdFrameHeader(b: Uint8Array): ZstdFrameHeader | undefined {
  if (b.length < 6) return undefined;
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (v.getUint32(0, true) !== MAGIC) return undefined;
  const fhd = b[4]!;
  if (fhd & 0x08) return undefined; // reserved bit must be zero
  const fcsFlag = fhd >> 6;
  const single = (fhd >> 5) & 1;
  const dictFlag = fhd & 3;
  let at = 5;
  let windowSize = 0;
  if (!single) {
    const wd = b[at++]!;
    const exp = wd >> 3;
    const base = 2 ** (10 + exp);
    windowSize = base + (base / 8) * (wd & 7);
  }
  at += [0, 1, 2, 4][dictFlag]!;
  const fcsBytes = fcsFlag === 0 ? single : [0, 2, 4, 8][fcsFlag]!;
  if (at + fcsBytes > b.length) return undefined;
  let contentSize: number | undefined;
  if (fcsBytes === 1) contentSize = b[at]!;
  else if (fcsBytes === 2) contentSize = v.getUint16(at, true) + 256;
  else if (fcsBytes === 4) contentSize = v.getUint32(at, true);
  else if (fcsBytes === 8) {
    const big = v.getBigUint64(at, true);
    contentSize = big > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(big);
  }
  if (single) windowSize = contentSize ?? 0;
  return { contentSize, windowSize };
}

/** The declared content size, or undefined (no header, or no size in it). */
export function zstdFrameContentSize(b: Uint8Array): number | undefined {
  return zstdFrameHeader(b)?.contentSize;
}
