import { OrbError } from '../core/errors.js';
import type { Progress } from '../core/progress.js';
import type { DiskReader } from './reader.js';
import type { Hasher, SlotPool } from './workers.js';

/**
 * The one read loop every conversion uses: walk the disk in fixed units, skip the ranges the map
 * says are zero (no read, no buffer; only the hasher sees them as zeros), read the rest into a
 * shared slot, feed the whole-disk hash in order, and hand the unit to a sink. Units are issued
 * in order and processed concurrently; memory is the slot pool.
 */
export interface Unit {
  index: number;
  offset: number;
  length: number;
  /** known zero from the map: nothing was read and `sab` is unset */
  hole: boolean;
  sab?: SharedArrayBuffer;
}

export interface UnitSink {
  /** Resolve when the unit's bytes are no longer needed (its slot is then reused). */
  process(u: Unit): Promise<void>;
}

export interface ScanOptions {
  reader: DiskReader;
  unitSize: number;
  slots: SlotPool;
  sink: UnitSink;
  hasher?: Hasher;
  progress?: Progress;
  signal?: AbortSignal;
  /** size of one read request (several are in flight per unit) */
  readPiece?: number;
  /** only scan [start, end) (benchmark samples) */
  start?: number;
  end?: number;
}

export interface ScanResult {
  units: number;
  /** bytes actually read from the input */
  readBytes: number;
}

/**
 * Ensures writers of sequential files act in unit order, whatever order the compression
 * finishes in. A failure anywhere aborts every waiter, so no unit waits for a turn that never
 * comes.
 */
export class InOrder {
  private next = 0;
  private failed: unknown;
  private readonly waiting = new Map<number, { resolve(): void; reject(e: unknown): void }>();

  private turn(index: number): Promise<void> {
    if (this.failed !== undefined) return Promise.reject(this.failed);
    if (index === this.next) return Promise.resolve();
    return new Promise((resolve, reject) => this.waiting.set(index, { resolve, reject }));
  }

  private done(): void {
    this.next++;
    const w = this.waiting.get(this.next);
    if (w) {
      this.waiting.delete(this.next);
      w.resolve();
    }
  }

  abort(err: unknown): void {
    this.failed ??= err;
    for (const w of this.waiting.values()) w.reject(this.failed);
    this.waiting.clear();
  }

  /** Await `work` (any order), then run `write` with its result in unit order. */
  async sequence<T>(
    index: number,
    work: Promise<T> | T,
    write: (r: T) => Promise<void> | void,
  ): Promise<void> {
    let r: T;
    try {
      r = await work;
    } catch (err) {
      this.abort(err);
      throw err;
    }
    await this.turn(index);
    try {
      await write(r);
    } catch (err) {
      this.abort(err);
      throw err;
    }
    this.done();
  }
}

export async function scanDisk(o: ScanOptions): Promise<ScanResult> {
  const { reader, unitSize, slots, sink } = o;
  const piece = o.readPiece ?? 4 << 20;
  const start = o.start ?? 0;
  const end = o.end ?? reader.virtualSize;
  if (unitSize > slots.slotSize) throw new OrbError('internal', 'unit larger than slot');
  const limit = slots.slots.length * 2;
  const inflight = new Set<Promise<void>>();
  let failure: unknown;
  let readBytes = 0;
  let index = 0;
  const track = (p: Promise<void>, length: number) => {
    const t = p.then(
      () => o.progress?.add(length),
      (err: unknown) => {
        failure ??= err;
      },
    );
    inflight.add(t);
    void t.finally(() => inflight.delete(t));
  };
  let yielded = Date.now();
  for (let offset = start; offset < end; offset += unitSize, index++) {
    // Holes resolve in microtasks only: without a turn of the event loop now and then, a long run
    // of them (minutes on a large sparse disk) would hold off signals and timers.
    if (Date.now() - yielded > 20) {
      await new Promise((r) => setImmediate(r));
      yielded = Date.now();
    }
    while (inflight.size >= limit && failure === undefined) await Promise.race(inflight);
    if (failure !== undefined) break;
    if (o.signal?.aborted) {
      failure = new OrbError('interrupted', 'interrupted');
      break;
    }
    const length = Math.min(unitSize, end - offset);
    const ranges = reader.extents.within(offset, offset + length);
    if (ranges.length === 0) {
      const u: Unit = { index, offset, length, hole: true };
      track(
        Promise.all([o.hasher?.zeros(length), sink.process(u)]).then(() => undefined),
        length,
      );
      o.hasher?.scanned(offset + length);
      continue;
    }
    const slot = await slots.acquire();
    const sab = slots.slots[slot]!;
    const view = new Uint8Array(sab, 0, length);
    let read: Promise<void>;
    try {
      let pos = offset;
      const reads: Promise<void>[] = [];
      for (const [a, b] of ranges) {
        if (a > pos) view.fill(0, pos - offset, a - offset);
        for (let p = a; p < b; p += piece) {
          const n = Math.min(piece, b - p);
          reads.push(reader.read(p, view.subarray(p - offset, p - offset + n)));
          readBytes += n;
        }
        pos = b;
      }
      if (pos < offset + length) view.fill(0, pos - offset, length);
      read = Promise.all(reads).then(() => undefined);
      // Read this unit fully before issuing the next: reads stay sequential on the disk and the
      // hash sees units in order; compression of earlier units overlaps with it.
      await read;
    } catch (err) {
      slots.release(slot);
      failure ??= err;
      break;
    }
    o.hasher?.scanned(offset + length);
    const u: Unit = { index, offset, length, hole: false, sab };
    const work = Promise.all([o.hasher?.update(sab, 0, length), sink.process(u)]).then(() => undefined);
    track(
      work.finally(() => slots.release(slot)),
      length,
    );
  }
  await Promise.allSettled([...inflight]);
  while (inflight.size) await Promise.allSettled([...inflight]);
  if (failure !== undefined) throw failure;
  return { units: index, readBytes };
}
