import zlib from 'node:zlib';
import {
  MAX_ENTRIES,
  MAX_FRAME_BYTES,
  MAX_FRAME_COMPRESSED,
  MAX_FRAMES,
  MAX_INDEX_BLOB,
  MAX_INDEX_BYTES,
  MAX_PACK_SIZE,
  MAX_PACKS,
  MAX_SLOTS,
  MAX_VIRTUAL_SIZE_V2,
  ROOT_PREFIX,
  ZERO_BLOCK_DIGEST,
  indexRoot,
  type DiskIndex,
  type PackRef,
} from './disk-index.js';
import { zstdFrameHeader } from './zstd-frame.js';

/**
 * Decoding of the v2 index (docs/chunked-format.md, "Index"), every rule of the spec checked
 * before the caller uses one entry: the index arrives from a store and is hostile. `fail` makes
 * the caller's error (this folder imports nothing of ours); its message names what was wrong.
 */
export interface DecodeIndexOptions {
  fail(why: string): Error;
  /** the manifest's pack layers, in order: the index's pack table must equal them */
  packs?: readonly PackRef[];
  /** the content digest the config or manifest states */
  contentDigest?: string;
}

const MAGIC = Buffer.from('ORBIDX\r\n', 'latin1');
const MAX_WINDOW = 8 << 20;

/** Decompresses (size declared and bounded first) and decodes an index blob. */
export function decodeIndex(blob: Buffer, o: DecodeIndexOptions): DiskIndex {
  if (blob.length > MAX_INDEX_BLOB) throw o.fail(`is ${blob.length} bytes, more than ${MAX_INDEX_BLOB}`);
  const h = zstdFrameHeader(blob);
  if (!h) throw o.fail('is not a zstd frame');
  if (h.contentSize === undefined) throw o.fail('does not declare its decompressed size');
  if (h.contentSize > MAX_INDEX_BYTES || h.contentSize < 72)
    throw o.fail(`declares ${h.contentSize} decompressed bytes (allowed 72..${MAX_INDEX_BYTES})`);
  let bytes: Buffer;
  try {
    bytes = zlib.zstdDecompressSync(blob, { maxOutputLength: h.contentSize });
  } catch (err) {
    throw o.fail(`does not decompress: ${(err as Error).message}`);
  }
  if (bytes.length !== h.contentSize)
    throw o.fail(`decompressed to ${bytes.length} bytes, its header says ${h.contentSize}`);
  return parseIndex(bytes, o);
}

class Reader {
  at = 0;
  constructor(
    readonly b: Buffer,
    private readonly fail: (why: string) => Error,
  ) {}
  uvarint(what: string): number {
    let v = 0;
    let mul = 1;
    for (let i = 0; i < 8; i++) {
      if (this.at >= this.b.length) throw this.fail(`ends inside ${what}`);
      const c = this.b[this.at++]!;
      v += (c & 0x7f) * mul;
      if (!(c & 0x80)) {
        if (c === 0 && i > 0) throw this.fail(`has an overlong varint in ${what}`);
        return v;
      }
      mul *= 128;
    }
    throw this.fail(`has a varint above 2^53 in ${what}`);
  }
  take(n: number, what: string): Buffer {
    if (this.at + n > this.b.length) throw this.fail(`ends inside ${what}`);
    const s = this.b.subarray(this.at, this.at + n);
    this.at += n;
    return s;
  }
}

const unzigzag = (v: number) => (v % 2 === 0 ? v / 2 : -(v + 1) / 2);

/** Decodes and validates the decompressed index bytes. */
export function parseIndex(bytes: Buffer, o: DecodeIndexOptions): DiskIndex {
  const fail = o.fail;
  if (bytes.length < 72) throw fail('is shorter than its header');
  if (!bytes.subarray(0, 8).equals(MAGIC)) throw fail('does not start with the orb index magic');
  const version = bytes.readUInt16LE(8);
  if (version !== 2) throw fail(`has version ${version}, this orb reads version 2`);
  if (bytes.readUInt16LE(10) !== 0) throw fail('sets flags this orb does not know');
  const blockShift = bytes[12]!;
  if (blockShift < 12 || blockShift > 20) throw fail(`has block size 2^${blockShift} (allowed 2^12..2^20)`);
  if (bytes[13] !== 1) throw fail(`uses hash algorithm ${bytes[13]} (only 1, sha256, is known)`);
  if (bytes.readUInt16LE(14) !== 0 || bytes[37] || bytes[38] || bytes[39]) throw fail('sets reserved bytes');
  const big = bytes.readBigUInt64LE(16);
  if (big < 1n || big > BigInt(MAX_VIRTUAL_SIZE_V2) || big % 512n !== 0n)
    throw fail(`has virtual size ${big} (allowed: a multiple of 512 up to 2^44)`);
  const virtualSize = Number(big);
  const blockSize = 2 ** blockShift;
  const blockCount = Math.ceil(virtualSize / blockSize);
  const P = bytes.readUInt32LE(24);
  const F = bytes.readUInt32LE(28);
  const E = bytes.readUInt32LE(32);
  const maxFrameBlocks = bytes[36]!;
  if (P > MAX_PACKS) throw fail(`lists ${P} packs (at most ${MAX_PACKS})`);
  if (F > MAX_FRAMES) throw fail(`lists ${F} frames (at most ${MAX_FRAMES})`);
  if (E > Math.min(MAX_ENTRIES, blockCount)) throw fail(`lists ${E} blocks for a disk of ${blockCount}`);
  if ((E === 0) !== (F === 0) || (F === 0) !== (P === 0))
    throw fail(`lists ${P} packs, ${F} frames and ${E} blocks: all or none must be zero`);
  if (maxFrameBlocks < 1 || maxFrameBlocks * blockSize > MAX_FRAME_BYTES)
    throw fail(`allows ${maxFrameBlocks} blocks per frame (at most ${MAX_FRAME_BYTES} bytes)`);
  const contentDigest = ROOT_PREFIX + bytes.subarray(40, 72).toString('hex');
  const r = new Reader(bytes, fail);
  r.at = 72;

  const packs: PackRef[] = [];
  const seen = new Set<string>();
  for (let p = 0; p < P; p++) {
    const rec = r.take(40, 'the pack table');
    const digest = 'sha256:' + rec.subarray(0, 32).toString('hex');
    const size = Number(rec.readBigUInt64LE(32));
    if (size < 1 || size > MAX_PACK_SIZE) throw fail(`pack ${p} has size ${size} (allowed 1..2^36)`);
    if (seen.has(digest)) throw fail(`lists pack ${digest} twice`);
    seen.add(digest);
    packs.push({ digest, size });
  }
  if (o.packs) {
    if (o.packs.length !== P) throw fail(`lists ${P} packs, the manifest ${o.packs.length}`);
    for (let p = 0; p < P; p++)
      if (o.packs[p]!.digest !== packs[p]!.digest || o.packs[p]!.size !== packs[p]!.size)
        throw fail(`pack ${p} (${packs[p]!.digest}) is not the manifest's pack layer ${p}`);
  }

  const framePack = new Uint32Array(F);
  const frameOffset = new Float64Array(F);
  const frameLength = new Uint32Array(F);
  const frameBlocks = new Uint8Array(F);
  const slotStart = new Uint32Array(F + 1);
  const packEnd = new Float64Array(P);
  let pack = 0;
  let slots = 0;
  for (let f = 0; f < F; f++) {
    pack += unzigzag(r.uvarint('the frame table'));
    if (pack < 0 || pack >= P) throw fail(`frame ${f} names pack ${pack} of ${P}`);
    const gap = r.uvarint('the frame table');
    const len = r.uvarint('the frame table');
    const blocks = r.uvarint('the frame table');
    if (len < 1 || len > MAX_FRAME_COMPRESSED) throw fail(`frame ${f} is ${len} bytes compressed`);
    if (blocks < 1 || blocks > maxFrameBlocks) throw fail(`frame ${f} holds ${blocks} blocks`);
    const off = packEnd[pack]! + gap;
    if (off + len > packs[pack]!.size)
      throw fail(
        `frame ${f} ends at ${off + len}, after the end of pack ${pack} (${packs[pack]!.size} bytes)`,
      );
    framePack[f] = pack;
    frameOffset[f] = off;
    frameLength[f] = len;
    frameBlocks[f] = blocks;
    packEnd[pack] = off + len;
    slotStart[f] = slots;
    slots += blocks;
    if (slots > MAX_SLOTS) throw fail(`has more than ${MAX_SLOTS} frame slots`);
  }
  slotStart[F] = slots;

  const entryBlock = new Float64Array(E);
  const entryFrame = new Uint32Array(E);
  const entrySlot = new Uint8Array(E);
  const digestPos = new Uint32Array(E);
  const slotEntry = new Int32Array(slots).fill(-1);
  let block = -1;
  let frame = -1;
  let slot = -1;
  for (let i = 0; i < E; i++) {
    block += 1 + r.uvarint('the entries');
    if (block >= blockCount) throw fail(`entry ${i} names block ${block}, past the disk's ${blockCount}`);
    const ref = r.uvarint('the entries');
    if (ref === 0) {
      if (frame < 0) throw fail(`entry ${i} continues a frame before any frame`);
      slot++;
    } else {
      frame = frame + 1 + unzigzag(ref - 1);
      slot = r.uvarint('the entries');
    }
    if (frame < 0 || frame >= F) throw fail(`entry ${i} names frame ${frame} of ${F}`);
    if (slot >= frameBlocks[frame]!)
      throw fail(`entry ${i} names slot ${slot} of a ${frameBlocks[frame]}-block frame`);
    digestPos[i] = r.at;
    const d = r.take(32, 'the entries');
    if (d.equals(ZERO_BLOCK_DIGEST)) throw fail(`entry ${i} stores a zero block`);
    const s = slotStart[frame]! + slot;
    const first = slotEntry[s]!;
    if (first < 0) slotEntry[s] = i;
    else if (!bytes.subarray(digestPos[first]!, digestPos[first]! + 32).equals(d))
      throw fail(`entries ${first} and ${i} name frame ${frame} slot ${slot} with different digests`);
    entryBlock[i] = block;
    entryFrame[i] = frame;
    entrySlot[i] = slot;
  }
  if (r.at !== bytes.length) throw fail(`has ${bytes.length - r.at} bytes after its last entry`);
  for (let f = 0; f < F; f++) {
    let used = false;
    for (let s = slotStart[f]!; s < slotStart[f + 1]! && !used; s++) used = slotEntry[s]! >= 0;
    if (!used) throw fail(`frame ${f} is referenced by no block`);
  }
  // Digests packed contiguously (the decompressed buffer is dropped).
  const digests = Buffer.allocUnsafe(E * 32);
  for (let i = 0; i < E; i++) bytes.copy(digests, i * 32, digestPos[i]!, digestPos[i]! + 32);
  const idx: Omit<DiskIndex, 'contentDigest'> = {
    virtualSize,
    blockShift,
    blockSize,
    blockCount,
    maxFrameBlocks,
    packs,
    frameCount: F,
    framePack,
    frameOffset,
    frameLength,
    frameBlocks,
    entryCount: E,
    entryBlock,
    entryFrame,
    entrySlot,
    digests,
  };
  const root = indexRoot(idx);
  if (root !== contentDigest) throw fail(`states content digest ${contentDigest}, its blocks give ${root}`);
  if (o.contentDigest !== undefined && o.contentDigest !== root)
    throw fail(`has content digest ${root}, the image states ${o.contentDigest}`);
  return { ...idx, contentDigest };
}

/**
 * Decompresses one frame of `blocks` blocks: the declared size must be exactly that, the window
 * small, and the output is capped, so a frame that decompresses to more is an error.
 */
export function decodeFrame(
  compressed: Uint8Array,
  blocks: number,
  blockSize: number,
  fail: (why: string) => Error,
): Buffer {
  const want = blocks * blockSize;
  const h = zstdFrameHeader(compressed);
  if (!h) throw fail('is not a zstd frame');
  if (h.contentSize !== want) throw fail(`declares ${h.contentSize ?? 'no'} bytes, the index says ${want}`);
  if (h.windowSize > MAX_WINDOW) throw fail(`needs a ${h.windowSize}-byte window`);
  let out: Buffer;
  try {
    out = zlib.zstdDecompressSync(compressed, { maxOutputLength: want });
  } catch (err) {
    throw fail(`does not decompress: ${(err as Error).message}`);
  }
  if (out.length !== want) throw fail(`decompressed to ${out.length} bytes, not ${want}`);
  return out;
}
