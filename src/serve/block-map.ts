import { open, rename, rm } from 'node:fs/promises';
import type { DiskIndex } from '../formats/disk-index.js';

/**
 * Lookups over a v2 index for serving reads, and the persisted record of which non-zero blocks
 * are already verified in the local cache file. The record is per index entry (one bit each:
 * 1 MiB at the format's 2^23 entry limit), keyed to the image's content digest so a cache left
 * by another image is never taken for this one.
 */
export class BlockMap {
  /** entries of frame f: frameEntries[frameStart[f] .. frameStart[f + 1]) */
  readonly frameStart: Uint32Array;
  readonly frameEntries: Uint32Array;
  /** bit per entry: verified and written to the cache */
  readonly local: Uint8Array;
  localCount = 0;

  constructor(readonly idx: DiskIndex) {
    const f = idx.frameCount;
    const start = new Uint32Array(f + 1);
    for (let i = 0; i < idx.entryCount; i++) start[idx.entryFrame[i]! + 1]!++;
    for (let i = 0; i < f; i++) start[i + 1]! += start[i]!;
    const fill = start.slice(0, f);
    const entries = new Uint32Array(idx.entryCount);
    for (let i = 0; i < idx.entryCount; i++) entries[fill[idx.entryFrame[i]!]!++] = i;
    this.frameStart = start;
    this.frameEntries = entries;
    this.local = new Uint8Array(Math.ceil(idx.entryCount / 8));
  }

  isLocal(e: number): boolean {
    return (this.local[e >> 3]! & (1 << (e & 7))) !== 0;
  }

  setLocal(e: number): void {
    if (this.isLocal(e)) return;
    this.local[e >> 3]! |= 1 << (e & 7);
    this.localCount++;
  }

  get complete(): boolean {
    return this.localCount === this.idx.entryCount;
  }

  /** True when every entry that frame f holds is local. */
  frameLocal(f: number): boolean {
    for (let i = this.frameStart[f]!; i < this.frameStart[f + 1]!; i++)
      if (!this.isLocal(this.frameEntries[i]!)) return false;
    return true;
  }

  /** The first entry whose block is >= `block` (entryCount when none). */
  firstEntryAt(block: number): number {
    const b = this.idx.entryBlock;
    let lo = 0;
    let hi = this.idx.entryCount;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (b[mid]! < block) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** The entry of `block`, or -1 for a zero block. */
  entryOf(block: number): number {
    const e = this.firstEntryAt(block);
    return e < this.idx.entryCount && this.idx.entryBlock[e] === block ? e : -1;
  }

  /** Bytes of local data (entries verified in the cache), for progress. */
  localBytes(): number {
    return this.localCount * this.idx.blockSize;
  }
}

// ---- persisted state -------------------------------------------------------------------------

const MAGIC = Buffer.from('ORBSERV1', 'latin1');
const HEAD = 8 + 1 + 3 + 4 + 32;

export interface SavedState {
  complete: boolean;
}

/**
 * Reads a state file into `map`. Undefined when there is none, or it is for another image (a
 * different content digest or entry count), or it is damaged: the caller then starts over.
 */
export async function loadState(path: string, map: BlockMap): Promise<SavedState | undefined> {
  const fh = await open(path, 'r').catch(() => undefined);
  if (!fh) return undefined;
  try {
    const want = HEAD + map.local.length;
    const buf = Buffer.alloc(want);
    const { bytesRead } = await fh.read(buf, 0, want, 0);
    if (bytesRead !== want || !buf.subarray(0, 8).equals(MAGIC)) return undefined;
    if (buf.readUInt32LE(12) !== map.idx.entryCount) return undefined;
    const root = map.idx.contentDigest.slice('orb2:sha256:'.length);
    if (buf.subarray(16, 48).toString('hex') !== root) return undefined;
    map.local.set(buf.subarray(HEAD));
    // Bits past the last entry would count blocks that do not exist.
    const tail = map.idx.entryCount & 7;
    if (tail) map.local[map.local.length - 1]! &= (1 << tail) - 1;
    map.localCount = 0;
    for (const byte of map.local) map.localCount += popcount(byte);
    return { complete: buf[8] === 1 && map.complete };
  } finally {
    await fh.close();
  }
}

/**
 * Writes the state atomically (a crash leaves the previous state, never a torn one). `bits` is a
 * snapshot of `map.local` taken before the data it names was synced.
 */
export async function saveState(
  path: string,
  bits: Uint8Array,
  map: BlockMap,
  complete: boolean,
): Promise<void> {
  const head = Buffer.alloc(HEAD);
  MAGIC.copy(head, 0);
  head[8] = complete ? 1 : 0;
  head.writeUInt32LE(map.idx.entryCount, 12);
  Buffer.from(map.idx.contentDigest.slice('orb2:sha256:'.length), 'hex').copy(head, 16);
  const tmp = `${path}.tmp`;
  const fh = await open(tmp, 'w');
  try {
    await fh.writev([head, bits]);
    await fh.datasync();
  } catch (err) {
    await fh.close();
    await rm(tmp, { force: true });
    throw err;
  }
  await fh.close();
  await rename(tmp, path);
}

function popcount(b: number): number {
  let n = 0;
  for (; b; b &= b - 1) n++;
  return n;
}
