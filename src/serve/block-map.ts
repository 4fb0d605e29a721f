import { createHash } from 'node:crypto';
import { open, rename, rm } from 'node:fs/promises';
import { OrbError } from '../core/errors.js';
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

  /** Runs of [offset, stop): zero blocks (holes) or data, as NBD block status reports them. */
  runs(offset: number, stop: number): { length: number; zero: boolean }[] {
    const { idx } = this;
    const bs = idx.blockSize;
    const runs: { length: number; zero: boolean }[] = [];
    let e = this.firstEntryAt(Math.floor(offset / bs));
    for (let pos = offset; pos < stop && runs.length < 4096;) {
      const block = Math.floor(pos / bs);
      let to: number;
      if (e < idx.entryCount && idx.entryBlock[e] === block) {
        let last = block;
        while (e + 1 < idx.entryCount && idx.entryBlock[e + 1] === last + 1) {
          e++;
          last++;
        }
        e++;
        to = Math.min((last + 1) * bs, stop);
        runs.push({ length: to - pos, zero: false });
      } else {
        to = Math.min(e < idx.entryCount ? idx.entryBlock[e]! * bs : idx.virtualSize, stop);
        runs.push({ length: to - pos, zero: true });
      }
      pos = to;
    }
    return runs;
  }

  /** Copies into `out` (disk bytes from `offset`) the blocks not local, from their decoded frames. */
  copyNotLocal(out: Buffer, offset: number, frames: Map<number, Buffer>): void {
    const { idx } = this;
    const bs = idx.blockSize;
    const end = Math.ceil((offset + out.length) / bs);
    for (
      let e = this.firstEntryAt(Math.floor(offset / bs));
      e < idx.entryCount && idx.entryBlock[e]! < end;
      e++
    ) {
      if (this.isLocal(e)) continue;
      const data = frames.get(idx.entryFrame[e]!);
      if (!data) throw new OrbError('internal', `block ${idx.entryBlock[e]} is neither local nor fetched`);
      const blockStart = idx.entryBlock[e]! * bs;
      const from = Math.max(offset, blockStart);
      const to = Math.min(offset + out.length, blockStart + bs);
      const slot = idx.entrySlot[e]! * bs;
      data.copy(out, from - offset, slot + from - blockStart, slot + to - blockStart);
    }
  }

  /** Every block frame f holds (decoded `data`) against its sha256 in the index. */
  checkFrame(f: number, data: Buffer, display: string): void {
    const { idx } = this;
    const bs = idx.blockSize;
    const seen = new Map<number, Buffer>();
    for (let i = this.frameStart[f]!; i < this.frameStart[f + 1]!; i++) {
      const e = this.frameEntries[i]!;
      const slot = idx.entrySlot[e]!;
      let d = seen.get(slot);
      if (!d) {
        d = createHash('sha256')
          .update(data.subarray(slot * bs, (slot + 1) * bs))
          .digest();
        seen.set(slot, d);
      }
      if (!d.equals(idx.digests.subarray(e * 32, e * 32 + 32)))
        throw new OrbError(
          'integrity',
          `${display}: block ${idx.entryBlock[e]} (frame ${f}, slot ${slot}) does not match its sha256 in the index`,
        );
    }
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
