import { createHash } from 'node:crypto';
import zlib from 'node:zlib';

/**
 * The index of a chunked disk image, format v2 (docs/chunked-format.md, "Index"). It maps every
 * non-zero 32 KiB block of the disk to its sha256 and to the zstd frame (in a pack blob) that holds
 * it. Pure: encoding, decoding with every check the spec names, and the content identity (a root
 * over block digests and zero runs). It comes from a store, so decoding treats it as hostile and
 * bounds memory by the header's counts, which are themselves bounded.
 *
 * Decoded indexes are arrays of numbers, not objects: a 60 GB disk has about two million entries.
 */
export const BLOCK_SHIFT = 15;
export const BLOCK_SIZE = 1 << BLOCK_SHIFT;
/** blocks per frame that writers use (128 KiB frames: docs/chunked-format.md, "Chosen parameters") */
export const FRAME_BLOCKS = 4;
export const MAX_VIRTUAL_SIZE_V2 = 2 ** 44;
export const MAX_PACKS = 1000;
export const MAX_FRAMES = 2 ** 24;
export const MAX_ENTRIES = 2 ** 23;
/** slots over all frames (live or not): bounds the dedupe check's table */
export const MAX_SLOTS = 2 ** 24;
export const MAX_FRAME_COMPRESSED = 2 << 20;
export const MAX_FRAME_BYTES = 1 << 20;
export const MAX_PACK_SIZE = 2 ** 36;
export const MAX_INDEX_BYTES = 320 << 20;
export const MAX_INDEX_BLOB = 384 << 20;
const MAGIC = Buffer.from('ORBIDX\r\n', 'latin1');
const HEADER = 72;
const PACK_RECORD = 40;
export const ROOT_PREFIX = 'orb2:sha256:';

export interface PackRef {
  /** sha256:<hex> of the pack blob */
  digest: string;
  size: number;
}

export interface DiskIndex {
  virtualSize: number;
  blockShift: number;
  blockSize: number;
  /** number of blocks in the disk: ceil(virtualSize / blockSize) */
  blockCount: number;
  maxFrameBlocks: number;
  /** orb2:sha256:<hex> */
  contentDigest: string;
  packs: PackRef[];
  frameCount: number;
  framePack: Uint32Array;
  frameOffset: Float64Array;
  frameLength: Uint32Array;
  frameBlocks: Uint8Array;
  /** entries in disk order */
  entryCount: number;
  entryBlock: Float64Array;
  entryFrame: Uint32Array;
  entrySlot: Uint8Array;
  /** 32 bytes per entry */
  digests: Buffer;
}

/** sha256 of entry i (a view, not a copy). */
export function entryDigest(idx: DiskIndex, i: number): Buffer {
  return idx.digests.subarray(i * 32, i * 32 + 32);
}

export const ZERO_BLOCK_DIGEST = createHash('sha256').update(Buffer.alloc(BLOCK_SIZE)).digest();

/**
 * The content identity: sha256 over "orb-disk-v2\0", the virtual size, the block size and, in disk
 * order, 0x00 + u64 n for each maximal run of n zero blocks and 0x01 + digest for each non-zero
 * block. Callers feed blocks in order; runs are merged here, so they need not be maximal.
 */
export class ContentRoot {
  private readonly h = createHash('sha256');
  private zeroRun = 0;
  private seen = 0;
  private readonly buf = Buffer.alloc(33);
  readonly blockCount: number;

  constructor(
    readonly virtualSize: number,
    readonly blockShift = BLOCK_SHIFT,
  ) {
    this.blockCount = Math.ceil(virtualSize / 2 ** blockShift);
    const head = Buffer.alloc(12 + 8 + 1);
    head.write('orb-disk-v2\0', 0, 'latin1');
    head.writeBigUInt64LE(BigInt(virtualSize), 12);
    head.writeUInt8(blockShift, 20);
    this.h.update(head);
  }

  zeros(n: number): void {
    if (n <= 0) return;
    this.zeroRun += n;
    this.seen += n;
  }

  block(digest: Uint8Array): void {
    this.flushZeros();
    this.buf[0] = 1;
    this.buf.set(digest.subarray(0, 32), 1);
    this.h.update(this.buf);
    this.seen++;
  }

  private flushZeros(): void {
    if (!this.zeroRun) return;
    this.buf[0] = 0;
    this.buf.writeBigUInt64LE(BigInt(this.zeroRun), 1);
    this.h.update(this.buf.subarray(0, 9));
    this.zeroRun = 0;
  }

  /** The root, once every block of the disk was given (throws otherwise: a caller bug). */
  digest(): string {
    if (this.seen < this.blockCount) this.zeros(this.blockCount - this.seen);
    if (this.seen !== this.blockCount)
      throw new Error(`content root: ${this.seen} blocks given for a disk of ${this.blockCount}`);
    this.flushZeros();
    return ROOT_PREFIX + this.h.digest('hex');
  }
}

/** The content identity of an index's entries. */
export function indexRoot(idx: Omit<DiskIndex, 'contentDigest'>): string {
  const r = new ContentRoot(idx.virtualSize, idx.blockShift);
  let next = 0;
  for (let i = 0; i < idx.entryCount; i++) {
    const b = idx.entryBlock[i]!;
    r.zeros(b - next);
    r.block(idx.digests.subarray(i * 32, i * 32 + 32));
    next = b + 1;
  }
  return r.digest();
}

/** Collects an index in disk order, as convert writes it. */
export class IndexBuilder {
  readonly packs: PackRef[] = [];
  private frames: { pack: number[]; offset: number[]; length: number[]; blocks: number[] } = {
    pack: [],
    offset: [],
    length: [],
    blocks: [],
  };
  private block: number[] = [];
  private frame: number[] = [];
  private slot: number[] = [];
  /** digests in pages of 2^16 (2 MiB): one Buffer per entry would cost ~100 bytes more each */
  private digestPages: Buffer[] = [];
  private last = -1;

  constructor(
    readonly virtualSize: number,
    readonly blockShift = BLOCK_SHIFT,
  ) {}

  get frameCount(): number {
    return this.frames.pack.length;
  }
  get entryCount(): number {
    return this.block.length;
  }

  addPack(p: PackRef): number {
    this.packs.push(p);
    return this.packs.length - 1;
  }

  /** Frames must be added in offset order within each pack. */
  addFrame(pack: number, offset: number, length: number, blocks: number): number {
    this.frames.pack.push(pack);
    this.frames.offset.push(offset);
    this.frames.length.push(length);
    this.frames.blocks.push(blocks);
    return this.frames.pack.length - 1;
  }

  /** Entries must come in increasing block order. */
  addEntry(block: number, frame: number, slot: number, digest: Uint8Array): void {
    if (block <= this.last) throw new Error(`index builder: block ${block} after ${this.last}`);
    this.last = block;
    this.block.push(block);
    this.frame.push(frame);
    this.slot.push(slot);
    const i = this.block.length - 1;
    if ((i & 0xffff) === 0) this.digestPages.push(Buffer.allocUnsafe(32 << 16));
    this.digestPages[i >> 16]!.set(digest.subarray(0, 32), (i & 0xffff) * 32);
  }

  finish(): DiskIndex {
    const blockSize = 2 ** this.blockShift;
    const idx: Omit<DiskIndex, 'contentDigest'> = {
      virtualSize: this.virtualSize,
      blockShift: this.blockShift,
      blockSize,
      blockCount: Math.ceil(this.virtualSize / blockSize),
      maxFrameBlocks: FRAME_BLOCKS,
      packs: this.packs,
      frameCount: this.frames.pack.length,
      framePack: Uint32Array.from(this.frames.pack),
      frameOffset: Float64Array.from(this.frames.offset),
      frameLength: Uint32Array.from(this.frames.length),
      frameBlocks: Uint8Array.from(this.frames.blocks),
      entryCount: this.block.length,
      entryBlock: Float64Array.from(this.block),
      entryFrame: Uint32Array.from(this.frame),
      entrySlot: Uint8Array.from(this.slot),
      digests: Buffer.concat(this.digestPages, this.block.length * 32),
    };
    let maxBlocks = FRAME_BLOCKS;
    for (const b of idx.frameBlocks) maxBlocks = Math.max(maxBlocks, b);
    idx.maxFrameBlocks = maxBlocks;
    return { ...idx, contentDigest: indexRoot(idx) };
  }
}

// ---- encoding --------------------------------------------------------------------------------

class Writer {
  private parts: Buffer[] = [];
  private cur = Buffer.alloc(1 << 20);
  private at = 0;
  private room(n: number): void {
    if (this.at + n <= this.cur.length) return;
    this.parts.push(this.cur.subarray(0, this.at));
    this.cur = Buffer.alloc(Math.max(1 << 20, n));
    this.at = 0;
  }
  uvarint(v: number): void {
    this.room(10);
    while (v >= 0x80) {
      this.cur[this.at++] = (v % 0x80) | 0x80;
      v = Math.floor(v / 0x80);
    }
    this.cur[this.at++] = v;
  }
  bytes(b: Uint8Array): void {
    this.room(b.length);
    this.cur.set(b, this.at);
    this.at += b.length;
  }
  done(): Buffer {
    this.parts.push(this.cur.subarray(0, this.at));
    return Buffer.concat(this.parts);
  }
}

const zigzag = (v: number) => (v >= 0 ? 2 * v : -2 * v - 1);

/** The index's decompressed bytes. */
export function serializeIndex(idx: DiskIndex): Buffer {
  const w = new Writer();
  const head = Buffer.alloc(HEADER);
  MAGIC.copy(head, 0);
  head.writeUInt16LE(2, 8);
  head.writeUInt16LE(0, 10);
  head.writeUInt8(idx.blockShift, 12);
  head.writeUInt8(1, 13);
  head.writeBigUInt64LE(BigInt(idx.virtualSize), 16);
  head.writeUInt32LE(idx.packs.length, 24);
  head.writeUInt32LE(idx.frameCount, 28);
  head.writeUInt32LE(idx.entryCount, 32);
  head.writeUInt8(idx.maxFrameBlocks, 36);
  Buffer.from(idx.contentDigest.slice(ROOT_PREFIX.length), 'hex').copy(head, 40);
  w.bytes(head);
  for (const p of idx.packs) {
    const rec = Buffer.alloc(PACK_RECORD);
    Buffer.from(p.digest.slice('sha256:'.length), 'hex').copy(rec, 0);
    rec.writeBigUInt64LE(BigInt(p.size), 32);
    w.bytes(rec);
  }
  const end = new Float64Array(idx.packs.length);
  let prevPack = 0;
  for (let f = 0; f < idx.frameCount; f++) {
    const p = idx.framePack[f]!;
    w.uvarint(zigzag(p - prevPack));
    prevPack = p;
    const off = idx.frameOffset[f]!;
    if (off < end[p]!) throw new Error(`index: frame ${f} overlaps the previous frame of pack ${p}`);
    w.uvarint(off - end[p]!);
    w.uvarint(idx.frameLength[f]!);
    w.uvarint(idx.frameBlocks[f]!);
    end[p] = off + idx.frameLength[f]!;
  }
  let prevBlock = -1;
  let prevFrame = -1;
  let prevSlot = -1;
  for (let i = 0; i < idx.entryCount; i++) {
    const b = idx.entryBlock[i]!;
    const f = idx.entryFrame[i]!;
    const s = idx.entrySlot[i]!;
    w.uvarint(b - prevBlock - 1);
    if (f === prevFrame && s === prevSlot + 1) w.uvarint(0);
    else {
      w.uvarint(1 + zigzag(f - prevFrame - 1));
      w.uvarint(s);
    }
    w.bytes(idx.digests.subarray(i * 32, i * 32 + 32));
    prevBlock = b;
    prevFrame = f;
    prevSlot = s;
  }
  return w.done();
}

/** The index blob: one zstd frame with its content size in the header. */
export function encodeIndex(idx: DiskIndex): Buffer {
  return zlib.zstdCompressSync(serializeIndex(idx), {
    params: {
      [zlib.constants.ZSTD_c_compressionLevel]: 9,
      [zlib.constants.ZSTD_c_checksumFlag]: 1,
    },
  });
}
