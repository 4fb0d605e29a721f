import { OrbError } from '../../core/errors.js';
import {
  BLOCK_SIZE,
  ContentRoot,
  FRAME_BLOCKS,
  MAX_ENTRIES,
  type DiskIndex,
} from '../../formats/disk-index.js';
import type { OciLayout } from '../../oci/layout.js';
import { InOrder, type Unit, type UnitSink } from '../scan.js';
import type { WorkerPool } from '../workers.js';
import { DigestPages, DigestTable } from './digest-table.js';
import { buildIndex, type BaseRefs } from './encode-index.js';
import { PackWriter } from './pack-writer.js';
import { decideRepack, keepsFrame, type RepackDecision } from './repack.js';
import type { BaseImage } from './image.js';

/**
 * `orb convert --format chunked` (docs/chunked-format-v2.md, "Publish: only new blocks"): the
 * scan loop hands units (a few MiB of disk, holes never read) to this sink. Per unit, a worker
 * tests every 32 KiB block for zeros and hashes it; the main thread then, in disk order, feeds the
 * content root, deduplicates (against earlier blocks of this disk and the bases' indexes) and cuts
 * runs of consecutive new blocks into frames of at most FRAME_BLOCKS; a worker compresses those frames
 * and the main thread appends them to packs, again in disk order. Memory: the scan's slots, the
 * compressed frames of the units in flight, and ~60 bytes per non-zero block for the index.
 */
export interface EncodeStats {
  /** blocks of the disk, zero blocks included */
  blocks: number;
  zero: number;
  /** blocks compressed into new frames */
  fresh: number;
  /** blocks equal to an earlier block of this disk (stored once) */
  duplicate: number;
  /** blocks a base already holds (its frame is referenced, nothing compressed) */
  reused: number;
  /** blocks a base holds in a pack the repack policy drops: compressed again (counted in fresh) */
  repacked: number;
  frames: number;
}

/** Flag on an entry's frame reference: a frame of a base (global base frame number below it). */
const BASE = 0x80000000;

class Grow<T extends Uint32Array | Uint8Array | Float64Array> {
  a: T;
  n = 0;
  constructor(private readonly make: (n: number) => T) {
    this.a = make(1024);
  }
  push(v: number): number {
    if (this.n === this.a.length) {
      const b = this.make(this.a.length * 2);
      b.set(this.a);
      this.a = b;
    }
    this.a[this.n] = v;
    return this.n++;
  }
}

export class ChunkedSink implements UnitSink {
  readonly stats: EncodeStats = {
    blocks: 0,
    zero: 0,
    fresh: 0,
    duplicate: 0,
    reused: 0,
    repacked: 0,
    frames: 0,
  };
  /** what the repack policy decided, one line per base that repacks (for the log) */
  readonly repackReasons: string[] = [];
  readonly root: ContentRoot;
  readonly packs: PackWriter;
  private readonly decide = new InOrder();
  private readonly write = new InOrder();
  // entries, in disk order
  private readonly entryBlock = new Grow((n) => new Float64Array(n));
  private readonly entryRef = new Grow((n) => new Uint32Array(n));
  private readonly entrySlot = new Grow((n) => new Uint8Array(n));
  private readonly digests = new DigestPages();
  private readonly seen = new DigestTable((id) => this.digests.get(id));
  // new frames, by number
  private readonly frameBlocks = new Grow((n) => new Uint8Array(n));
  private readonly framePack = new Grow((n) => new Uint32Array(n));
  private readonly frameOffset = new Grow((n) => new Float64Array(n));
  private readonly frameLength = new Grow((n) => new Uint32Array(n));
  private readonly bases: { idx: DiskIndex; table: DigestTable; first: number; repack: RepackDecision }[] =
    [];

  constructor(
    private readonly o: {
      layout: OciLayout;
      pool: WorkerPool;
      level: number;
      packSize: number;
      virtualSize: number;
      bases: readonly BaseImage[];
      /** compress every base block again into fresh packs (`--repack`) */
      repack?: boolean;
    },
  ) {
    this.root = new ContentRoot(o.virtualSize);
    this.packs = new PackWriter(o.layout, o.packSize);
    let first = 0;
    for (const b of o.bases) {
      const idx = b.index;
      const table = new DigestTable((i) => idx.digests.subarray(i * 32, i * 32 + 32), idx.entryCount);
      for (let i = 0; i < idx.entryCount; i++) table.add(i);
      const repack = decideRepack(idx, o.repack ?? false);
      // a published base repacks too: the blocks of the packs it drops are compressed again from
      // the new disk's own bytes, so none of the base's packs is read
      if (repack.reason) this.repackReasons.push(`${b.display}: ${repack.reason}`);
      this.bases.push({ idx, table, first, repack });
      first += idx.frameCount;
    }
  }

  async process(u: Unit): Promise<void> {
    const n = Math.ceil(u.length / BLOCK_SIZE);
    const first = u.offset / BLOCK_SIZE;
    const hashed = u.hole
      ? Promise.resolve(undefined)
      : this.o.pool.run({ task: 'blocks', sab: u.sab, off: 0, len: u.length, block: BLOCK_SIZE });
    let runs: number[] = [];
    let firstFrame = 0;
    const decided = this.decide.sequence(u.index, hashed, (r) => {
      firstFrame = this.frameBlocks.n;
      runs = r ? this.decideUnit(first, n, r.zero as Uint8Array, r.digests as Uint8Array) : this.zeros(n);
    });
    const compressed = decided.then(() =>
      runs.length
        ? this.o.pool.run({
            task: 'frames',
            sab: u.sab,
            off: 0,
            len: u.length,
            block: BLOCK_SIZE,
            level: this.o.level,
            runs: Uint32Array.from(runs),
          })
        : undefined,
    );
    await this.write.sequence(u.index, compressed, async (r) => {
      if (!r) return;
      const lengths = r.lengths as Uint32Array;
      const data = r.data as Uint8Array;
      let at = 0;
      for (let i = 0; i < lengths.length; i++) {
        const len = lengths[i]!;
        const put = await this.packs.append(data.subarray(at, at + len));
        at += len;
        const f = firstFrame + i;
        this.framePack.a[f] = put.pack;
        this.frameOffset.a[f] = put.offset;
        this.frameLength.a[f] = len;
      }
    });
  }

  private zeros(n: number): number[] {
    this.stats.blocks += n;
    this.stats.zero += n;
    this.root.zeros(n);
    return [];
  }

  /** Disk order: content root, dedupe, and the runs of new blocks ([first, count] pairs) to compress. */
  private decideUnit(first: number, n: number, zero: Uint8Array, digests: Uint8Array): number[] {
    const runs: number[] = [];
    let open = -1;
    for (let i = 0; i < n; i++) {
      this.stats.blocks++;
      if (zero[i]) {
        this.stats.zero++;
        this.root.zeros(1);
        open = -1;
        continue;
      }
      const d = digests.subarray(i * 32, i * 32 + 32);
      this.root.block(d);
      if (this.digests.count >= MAX_ENTRIES)
        throw new OrbError(
          'input',
          `the disk has more than ${MAX_ENTRIES} non-zero blocks of ${BLOCK_SIZE} bytes (format v2's limit: 256 GiB of data)`,
          {
            hint: 'trim free space in the guest (fstrim) so unused blocks read as zeros, or ship the disk as qcow2',
          },
        );
      const e = this.digests.push(d);
      this.entryBlock.push(first + i);
      const same = this.seen.get(d);
      if (same >= 0) {
        this.entryRef.push(this.entryRef.a[same]!);
        this.entrySlot.push(this.entrySlot.a[same]!);
        this.stats.duplicate++;
        open = -1;
        continue;
      }
      const base = this.inBase(d);
      if (base === 'repack') this.stats.repacked++;
      else if (base) {
        this.entryRef.push(BASE + base.frame);
        this.entrySlot.push(base.slot);
        this.stats.reused++;
        open = -1;
        continue;
      }
      if (open < 0 || runs[open + 1] === FRAME_BLOCKS) {
        open = runs.length;
        runs.push(i, 0);
        this.frameBlocks.push(0);
        this.framePack.push(0);
        this.frameOffset.push(0);
        this.frameLength.push(0);
        this.stats.frames++;
      }
      const f = this.frameBlocks.n - 1;
      this.entryRef.push(f);
      this.entrySlot.push(runs[open + 1]!);
      runs[open + 1]!++;
      this.frameBlocks.a[f]!++;
      this.seen.add(e);
      this.stats.fresh++;
    }
    return runs;
  }

  /** Where a base holds this block; 'repack' when only packs the repack policy drops hold it. */
  private inBase(d: Uint8Array): { frame: number; slot: number } | 'repack' | undefined {
    let dropped = false;
    for (const b of this.bases) {
      const i = b.table.get(d);
      if (i < 0) continue;
      const f = b.idx.entryFrame[i]!;
      if (keepsFrame(b.idx, b.repack, f)) return { frame: b.first + f, slot: b.idx.entrySlot[i]! };
      dropped = true;
    }
    return dropped ? 'repack' : undefined;
  }

  /** After the scan: close the last pack and assemble the index (base packs first, in base order). */
  async finish(): Promise<{ index: DiskIndex; baseRefs: BaseRefs }> {
    await this.packs.close();
    const entries = this.entryBlock.n;
    return buildIndex({
      virtualSize: this.o.virtualSize,
      bases: this.o.bases,
      newPacks: this.packs.packs,
      frames: {
        count: this.frameBlocks.n,
        pack: this.framePack.a,
        offset: this.frameOffset.a,
        length: this.frameLength.a,
        blocks: this.frameBlocks.a,
      },
      entries: {
        count: entries,
        block: this.entryBlock.a,
        ref: this.entryRef.a,
        slot: this.entrySlot.a,
        digest: (i) => this.digests.get(i),
      },
      baseFlag: BASE,
      root: this.root.digest(),
    });
  }

  async abort(): Promise<void> {
    this.decide.abort(new OrbError('interrupted', 'stopped'));
    this.write.abort(new OrbError('interrupted', 'stopped'));
    await this.packs.abort();
  }
}
