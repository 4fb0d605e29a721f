import { OrbError } from '../core/errors.js';
import { formatBytes } from '../core/progress.js';
import { sleep } from '../net/retry.js';
import type { LazyDisk } from './lazy-disk.js';

/**
 * The background fill of a lazy disk: fetches every frame not yet local, the boot profile's
 * blocks first (in the order the boot read them), then in disk order, at most `rate` bytes per
 * second. It yields to demand reads: a new request starts only while no read waits for the store.
 */
export interface FillOptions {
  /** block numbers in the order a boot read them (fetched first) */
  profile?: readonly number[];
  /** bytes per second (0 or undefined: no limit) */
  rate?: number;
  /** requests at once */
  concurrency?: number;
  /** bytes per request (adjacent frames) */
  batchBytes?: number;
}

const MERGE_GAP = 32 << 10;

export class Filler {
  private stopped = false;
  private next = 0;
  private pending: number[] = [];
  private order: Generator<number> | undefined;
  private progressed = false;
  private running: Promise<void> | undefined;

  constructor(
    private readonly disk: LazyDisk,
    private readonly o: FillOptions = {},
  ) {}

  /** Runs until every block is local, the cache is full, or stop(); never rejects. */
  start(): Promise<void> {
    this.running ??= this.run().catch((err: unknown) => {
      if (!this.disk.signal.aborted) this.disk.log.warn(`fill stopped: ${(err as Error).message}`);
    });
    return this.running;
  }

  stop(): void {
    this.stopped = true;
  }

  private get active(): boolean {
    return !this.stopped && !this.disk.complete && !this.disk.diskFull && !this.disk.signal.aborted;
  }

  private async run(): Promise<void> {
    const began = Date.now();
    const before = this.disk.stats.fillBytes;
    while (this.active) {
      this.order = this.frames();
      this.progressed = false;
      const n = this.o.concurrency ?? 2;
      await Promise.all(Array.from({ length: n }, () => this.worker()));
      if (!this.active) break;
      if (this.remainingAreBad()) {
        this.disk.log.error(
          `fill: ${this.disk.badFrames.size} frame(s) failed verification twice; the disk cannot complete`,
        );
        return;
      }
      // Something is left (a failed range, a frame a read held): another pass, later if none progressed.
      if (!this.progressed) await sleep(5000, this.disk.signal);
    }
    if (this.disk.complete)
      this.disk.log.info(
        `fill: done, ${formatBytes(this.disk.stats.fillBytes - before)} in ${((Date.now() - began) / 1000).toFixed(1)} s`,
      );
  }

  /** Frames in fill order, each once per pass. */
  private *frames(): Generator<number> {
    const { idx } = this.disk.map;
    const given = new Uint8Array(idx.frameCount);
    for (const block of this.o.profile ?? []) {
      const e = this.disk.map.entryOf(block);
      if (e < 0) continue;
      const f = idx.entryFrame[e]!;
      if (!given[f]) yield ((given[f] = 1), f);
    }
    for (let e = 0; e < idx.entryCount; e++) {
      const f = idx.entryFrame[e]!;
      if (!given[f]) yield ((given[f] = 1), f);
    }
  }

  private wanted(f: number): boolean {
    return !this.disk.badFrames.has(f) && !this.disk.isInflight(f) && !this.disk.map.frameLocal(f);
  }

  /** The next run of adjacent frames of one pack, up to the batch size. */
  private nextBatch(): number[] {
    const { idx } = this.disk.map;
    // At a low rate limit, smaller requests keep the pace even (and a read waits behind less).
    const limit = Math.max(256 << 10, Math.min(this.o.batchBytes ?? 4 << 20, (this.o.rate || Infinity) / 2));
    const batch: number[] = [];
    let end = 0;
    let bytes = 0;
    for (;;) {
      const f = this.pending.shift() ?? this.order?.next().value;
      if (f === undefined) return batch;
      if (!this.wanted(f)) continue;
      if (batch.length) {
        const off = idx.frameOffset[f]!;
        const gap = off - end;
        if (idx.framePack[f] !== idx.framePack[batch[0]!] || gap < 0 || gap > MERGE_GAP || bytes >= limit) {
          this.pending.unshift(f);
          return batch;
        }
      }
      batch.push(f);
      end = idx.frameOffset[f]! + idx.frameLength[f]!;
      bytes += idx.frameLength[f]!;
    }
  }

  private async worker(): Promise<void> {
    while (this.active) {
      await this.disk.demandIdle();
      if (!this.active) return;
      const batch = this.nextBatch();
      if (!batch.length) return;
      const { idx } = this.disk.map;
      await this.throttle(batch.reduce((n, f) => n + idx.frameLength[f]!, 0));
      if (!this.active) return;
      const landed = await Promise.allSettled(this.disk.fetchFrames(batch, 'fill').values());
      const failed = landed.find((r) => r.status === 'rejected');
      if (landed.some((r) => r.status === 'fulfilled')) this.progressed = true;
      if (failed && !this.disk.signal.aborted) {
        const err = failed.reason as Error;
        // Integrity failures marked their frames bad already; a network failure is tried in the next pass.
        if (!(err instanceof OrbError && err.kind === 'integrity'))
          this.disk.log.warn(`fill: ${err.message}; trying again later`);
        await sleep(2000, this.disk.signal).catch(() => {});
      }
    }
  }

  private async throttle(bytes: number): Promise<void> {
    const rate = this.o.rate;
    if (!rate) return;
    const now = Date.now();
    this.next = Math.max(this.next, now);
    const wait = this.next - now;
    this.next += (bytes / rate) * 1000;
    if (wait > 0) await sleep(wait, this.disk.signal).catch(() => {});
  }

  private remainingAreBad(): boolean {
    const { idx } = this.disk.map;
    for (let f = 0; f < idx.frameCount; f++)
      if (!this.disk.badFrames.has(f) && !this.disk.map.frameLocal(f)) return false;
    return this.disk.badFrames.size > 0;
  }
}
