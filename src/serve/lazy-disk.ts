import { createHash } from 'node:crypto';
import { mkdir, open, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { OrbError, UsageError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { formatBytes } from '../core/progress.js';
import type { DiskIndex, PackRef } from '../formats/disk-index.js';
import { sleep } from '../net/retry.js';
import { decodeIndexFrame } from '../oci/disk-v2.js';
import { BlockMap, loadState, saveState } from './block-map.js';

/**
 * A v2 chunked disk served before it is downloaded (issue 16). A read of blocks that are not yet
 * local fetches the frames holding them (one Range request per run of adjacent frames), checks
 * every block against its sha256 in the index, writes it into a sparse cache file and records it
 * in a persisted bitmap, then answers from the file. Bytes that did not verify are never served:
 * a read that cannot get verified bytes fails (the NBD client sees EIO). When every block is
 * local, the cache file is renamed to its final name: it is then the same verified disk that
 * `orb pull` writes.
 */
export type RangeFetcher = (
  pack: PackRef,
  start: number,
  length: number,
  signal: AbortSignal,
) => Promise<Buffer>;

export interface LazyDiskOptions {
  index: DiskIndex;
  /** the image's name in log lines and errors */
  display: string;
  /** the final disk path; `<cache>.partial` and `<cache>.state` while it fills */
  cache: string;
  fetch: RangeFetcher;
  log: Logger;
  /** how long a read waits for an unreachable store before it fails (ms) */
  retryMs?: number;
  /** how often the bitmap is persisted (ms) */
  flushMs?: number;
}

export type FetchKind = 'demand' | 'fill';

/**
 * Fill requests span frames closer than this in a pack (the gap, frames that are local already,
 * is read and dropped: one request instead of two). Reads take only adjacent frames: a boot pays
 * for every byte it fetches.
 */
const FILL_MERGE_GAP = 32 << 10;
const MAX_RANGE = 8 << 20;

export class LazyDisk {
  readonly size: number;
  readonly map: BlockMap;
  readonly stats = { bytesFetched: 0, demandBytes: 0, fillBytes: 0, ranges: 0, frames: 0, corrupt: 0 };
  /** frames being fetched: the decoded (verified) frame once it landed */
  private readonly inflight = new Map<number, Promise<Buffer>>();
  private readonly life = new AbortController();
  private demandActive = 0;
  private demandWaiters: (() => void)[] = [];
  private dirty = false;
  private flushing: Promise<void> = Promise.resolve();
  private timer: NodeJS.Timeout | undefined;
  private outage = false;
  private finishing: Promise<void> | undefined;
  private completeListeners: (() => void)[] = [];
  private closing: Promise<void> | undefined;
  /** the cache cannot take more blocks (disk full): verified bytes are served from memory */
  diskFull = false;
  /** frames that failed verification twice: never tried again by the fill */
  readonly badFrames = new Set<number>();

  private constructor(
    private readonly o: LazyDiskOptions,
    private fh: FileHandle,
    map: BlockMap,
    private completed: boolean,
  ) {
    this.size = o.index.virtualSize;
    this.map = map;
    this.timer = setInterval(() => void this.flush().catch(() => {}), o.flushMs ?? 3000);
    this.timer.unref();
  }

  get partialPath(): string {
    return `${this.o.cache}.partial`;
  }
  get complete(): boolean {
    return this.completed;
  }
  get signal(): AbortSignal {
    return this.life.signal;
  }
  get log(): Logger {
    return this.o.log;
  }

  /** Opens (or resumes) the cache of `o.index` at `o.cache`. */
  static async open(o: LazyDiskOptions): Promise<LazyDisk> {
    const map = new BlockMap(o.index);
    const statePath = `${o.cache}.state`;
    const partial = `${o.cache}.partial`;
    await mkdir(dirname(o.cache), { recursive: true });
    const saved = await loadState(statePath, map);
    const sizeOf = async (p: string) => (await stat(p).catch(() => undefined))?.size;
    if (saved?.complete && (await sizeOf(o.cache)) === o.index.virtualSize) {
      o.log.info(`${o.cache}: complete from an earlier run; serving it without fetching`);
      return new LazyDisk(o, await open(o.cache, 'r'), map, true);
    }
    if (saved && !saved.complete && (await sizeOf(partial)) === o.index.virtualSize) {
      o.log.info(
        `${o.cache}: resuming, ${formatBytes(map.localBytes())} of ${map.localCount}/${o.index.entryCount} blocks already local`,
      );
      const disk = new LazyDisk(o, await open(partial, 'r+'), map, false);
      if (map.complete) await disk.finish();
      return disk;
    }
    if ((await sizeOf(o.cache)) !== undefined && !saved)
      throw new UsageError(
        `${o.cache} exists and is not an orb serve cache of ${o.display}`,
        'remove it or pass another --cache',
      );
    const fresh = new BlockMap(o.index);
    // Truncated first: nothing of an older file may show through a hole.
    const fh = await open(partial, 'w+');
    await fh.truncate(o.index.virtualSize);
    await saveState(statePath, fresh.local, fresh, false);
    const disk = new LazyDisk(o, fh, fresh, false);
    if (fresh.complete) await disk.finish(); // an all-zero disk
    return disk;
  }

  /** Exactly `length` verified bytes at `offset` (the NBD server checked the bounds). */
  async read(offset: number, length: number, signal?: AbortSignal): Promise<Buffer> {
    const { idx } = this.map;
    const bs = idx.blockSize;
    const first = Math.floor(offset / bs);
    const end = Math.ceil((offset + length) / bs);
    const waits = new Map<number, Promise<Buffer>>();
    const fresh: number[] = [];
    let missing = false;
    for (let e = this.map.firstEntryAt(first); e < idx.entryCount && idx.entryBlock[e]! < end; e++) {
      if (this.map.isLocal(e)) continue;
      missing = true;
      const f = idx.entryFrame[e]!;
      if (waits.has(f) || fresh.includes(f)) continue;
      const p = this.inflight.get(f);
      if (p) waits.set(f, p);
      else fresh.push(f);
    }
    if (fresh.length) for (const [f, p] of this.fetchFrames(fresh, 'demand')) waits.set(f, p);
    const frames = new Map<number, Buffer>();
    if (waits.size) {
      this.demandActive++;
      try {
        const all = Promise.all([...waits].map(async ([f, p]) => frames.set(f, await p)));
        await (signal ? raceAbort(all, signal) : all);
      } finally {
        if (--this.demandActive === 0) for (const w of this.demandWaiters.splice(0)) w();
      }
    }
    const out = Buffer.alloc(length);
    for (let at = 0; at < length;) {
      const { bytesRead } = await this.fh.read(out, at, length - at, offset + at);
      if (!bytesRead) break; // past the end of the file: zeros, as the disk is
      at += bytesRead;
    }
    if (missing) this.overlay(out, offset, first, end, frames);
    return out;
  }

  /** Copies blocks the cache could not take (disk full) from their verified frames. */
  private overlay(
    out: Buffer,
    offset: number,
    first: number,
    end: number,
    frames: Map<number, Buffer>,
  ): void {
    const { idx } = this.map;
    const bs = idx.blockSize;
    for (let e = this.map.firstEntryAt(first); e < idx.entryCount && idx.entryBlock[e]! < end; e++) {
      if (this.map.isLocal(e)) continue;
      const data = frames.get(idx.entryFrame[e]!);
      if (!data) throw new OrbError('internal', `block ${idx.entryBlock[e]} is neither local nor fetched`);
      const blockStart = idx.entryBlock[e]! * bs;
      const from = Math.max(offset, blockStart);
      const to = Math.min(offset + out.length, blockStart + bs);
      const slot = idx.entrySlot[e]! * bs;
      data.copy(out, from - offset, slot + from - blockStart, slot + to - blockStart);
    }
  }

  /** Runs from `offset`: zero blocks (holes, never fetched) or data. */
  status(offset: number, length: number): { length: number; zero: boolean }[] {
    const { idx } = this.map;
    const bs = idx.blockSize;
    const stop = Math.min(offset + length, this.size);
    const runs: { length: number; zero: boolean }[] = [];
    let e = this.map.firstEntryAt(Math.floor(offset / bs));
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
        to = Math.min(e < idx.entryCount ? idx.entryBlock[e]! * bs : this.size, stop);
        runs.push({ length: to - pos, zero: true });
      }
      pos = to;
    }
    return runs;
  }

  /**
   * Starts fetching `frames` (none of them in flight): adjacent ones in a pack share a request.
   * Returns one promise per frame, resolved once its blocks verified and landed in the cache.
   */
  fetchFrames(frames: number[], kind: FetchKind): Map<number, Promise<Buffer>> {
    const { idx } = this.map;
    const sorted = [...frames].sort(
      (a, b) => idx.framePack[a]! - idx.framePack[b]! || idx.frameOffset[a]! - idx.frameOffset[b]!,
    );
    const out = new Map<number, Promise<Buffer>>();
    for (let i = 0; i < sorted.length;) {
      const group = [sorted[i]!];
      const pack = idx.framePack[sorted[i]!]!;
      const start = idx.frameOffset[sorted[i]!]!;
      let end = start + idx.frameLength[sorted[i]!]!;
      for (i++; i < sorted.length; i++) {
        const f = sorted[i]!;
        const fEnd = idx.frameOffset[f]! + idx.frameLength[f]!;
        const gap = kind === 'fill' ? FILL_MERGE_GAP : 0;
        if (idx.framePack[f] !== pack || idx.frameOffset[f]! - end > gap || fEnd - start > MAX_RANGE) break;
        group.push(f);
        end = Math.max(end, fEnd);
      }
      const range = this.download(pack, start, end - start, kind);
      // Rejections are handled by each frame's promise; this one must not be reported twice.
      range.catch(() => {});
      for (const f of group) {
        const p = range.then((buf) => {
          const at = idx.frameOffset[f]! - start;
          return this.land(f, buf.subarray(at, at + idx.frameLength[f]!), kind);
        });
        this.inflight.set(f, p);
        const done = () => {
          if (this.inflight.get(f) === p) this.inflight.delete(f);
        };
        p.then(done, done);
        out.set(f, p);
      }
    }
    return out;
  }

  isInflight(f: number): boolean {
    return this.inflight.has(f);
  }

  /** Resolves when no demand read is waiting for the store (the fill yields to them). */
  demandIdle(): Promise<void> {
    if (this.demandActive === 0) return Promise.resolve();
    return new Promise((r) => this.demandWaiters.push(r));
  }

  /** Resolves when every block is local and the cache has its final name. */
  whenComplete(): Promise<void> {
    if (this.completed) return Promise.resolve();
    return new Promise((r) => this.completeListeners.push(r));
  }

  /** Range bytes of a pack, retried with backoff while the store is unreachable, for a bounded time. */
  private async download(pack: number, start: number, length: number, kind: FetchKind): Promise<Buffer> {
    const ref = this.map.idx.packs[pack]!;
    const limit = this.o.retryMs ?? 60_000;
    const deadline = Date.now() + limit;
    for (let attempt = 0; ; attempt++) {
      this.life.signal.throwIfAborted();
      try {
        const buf = await this.o.fetch(ref, start, length, this.life.signal);
        if (buf.length !== length)
          throw new OrbError('network', `got ${buf.length} bytes for a range of ${length}`);
        this.stats.bytesFetched += length;
        this.stats[kind === 'demand' ? 'demandBytes' : 'fillBytes'] += length;
        this.stats.ranges++;
        if (this.outage) this.o.log.info(`${this.o.display}: the store answers again`);
        this.outage = false;
        return buf;
      } catch (err) {
        if (this.life.signal.aborted) throw err;
        const why = (err as Error).message;
        const where = `bytes ${start}-${start + length - 1} of pack ${ref.digest.slice(7, 19)}`;
        if (Date.now() >= deadline) {
          const msg = `${this.o.display}: ${where} could not be fetched for ${Math.round(limit / 1000)} s (${why}); the ${kind === 'demand' ? 'read fails with an I/O error' : 'fill tries again later'}`;
          if (kind === 'demand') this.o.log.error(msg);
          throw new OrbError('network', msg, { cause: err });
        }
        if (!this.outage)
          this.o.log.warn(
            `${this.o.display}: fetching ${where} failed (${why}); retrying for up to ${Math.round(limit / 1000)} s`,
          );
        this.outage = true;
        await sleep(Math.min(250 * 2 ** attempt, 5000, Math.max(0, deadline - Date.now())), this.life.signal);
      }
    }
  }

  /** Verifies frame f (fetched once more if it does not), writes its blocks, marks them local. */
  private async land(f: number, compressed: Buffer, kind: FetchKind): Promise<Buffer> {
    const { idx } = this.map;
    let data: Buffer;
    try {
      data = this.verify(f, compressed);
    } catch (err) {
      if (!(err instanceof OrbError) || err.kind !== 'integrity') throw err;
      this.stats.corrupt++;
      this.o.log.warn(`${err.message}; rejected, fetching the frame again`);
      const again = await this.download(idx.framePack[f]!, idx.frameOffset[f]!, idx.frameLength[f]!, kind);
      try {
        data = this.verify(f, again);
      } catch (err2) {
        this.stats.corrupt++;
        this.badFrames.add(f);
        this.o.log.error(`${(err2 as Error).message}; twice: the read fails with an I/O error`);
        throw err2;
      }
    }
    this.stats.frames++;
    await this.store(f, data);
    return data;
  }

  private verify(f: number, compressed: Buffer): Buffer {
    const { idx } = this.map;
    const data = decodeIndexFrame(idx, f, compressed, this.o.display);
    const bs = idx.blockSize;
    const seen = new Map<number, Buffer>();
    for (let i = this.map.frameStart[f]!; i < this.map.frameStart[f + 1]!; i++) {
      const e = this.map.frameEntries[i]!;
      const slot = idx.entrySlot[e]!;
      let d = seen.get(slot);
      if (!d)
        seen.set(
          slot,
          (d = createHash('sha256')
            .update(data.subarray(slot * bs, (slot + 1) * bs))
            .digest()),
        );
      if (!d.equals(idx.digests.subarray(e * 32, e * 32 + 32)))
        throw new OrbError(
          'integrity',
          `${this.o.display}: block ${idx.entryBlock[e]} (frame ${f}, slot ${slot}) does not match its sha256 in the index`,
        );
    }
    return data;
  }

  /** Writes the verified blocks of frame f into the cache (unless it is full or complete). */
  private async store(f: number, data: Buffer): Promise<void> {
    if (this.diskFull || this.completed) return;
    const { idx } = this.map;
    const bs = idx.blockSize;
    const landed: number[] = [];
    try {
      for (let i = this.map.frameStart[f]!; i < this.map.frameStart[f + 1]!; i++) {
        const e = this.map.frameEntries[i]!;
        if (this.map.isLocal(e)) continue;
        const at = idx.entryBlock[e]! * bs;
        // The last block is zero-padded in the image: only the disk's bytes are written.
        const n = Math.min(bs, this.size - at);
        const slot = idx.entrySlot[e]! * bs;
        for (let w = 0; w < n;) w += (await this.fh.write(data, slot + w, n - w, at + w)).bytesWritten;
        landed.push(e);
      }
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOSPC' && code !== 'EDQUOT')
        throw new OrbError('environment', `${this.partialPath}: ${(err as Error).message}`, { cause: err });
      this.diskFull = true;
      this.o.log.warn(
        `${this.partialPath}: the disk is full (${formatBytes(this.map.localBytes())} local): filling stopped; ` +
          'what is local is served from the cache, the rest is fetched on each read and not kept',
      );
    }
    for (const e of landed) this.map.setLocal(e);
    if (landed.length) this.dirty = true;
    if (this.map.complete) await this.finish();
  }

  /** Every block local: sync, rename to the final name, record the state as complete. */
  private finish(): Promise<void> {
    this.finishing ??= (async () => {
      await this.flushing;
      await this.fh.datasync();
      await rm(this.o.cache, { force: true });
      await rename(this.partialPath, this.o.cache);
      await saveState(`${this.o.cache}.state`, this.map.local, this.map, true);
      this.dirty = false;
      this.completed = true;
      this.o.log.info(`${this.o.cache}: every block is local and verified (${this.map.idx.contentDigest})`);
      for (const l of this.completeListeners.splice(0)) l();
    })();
    return this.finishing;
  }

  /** Persists the bitmap of what is local (after the data it names is on disk). */
  flush(): Promise<void> {
    this.flushing = this.flushing.then(async () => {
      if (!this.dirty || this.completed || this.finishing) return;
      this.dirty = false;
      const bits = Buffer.from(this.map.local);
      try {
        await this.fh.datasync();
        await saveState(`${this.o.cache}.state`, bits, this.map, false);
      } catch (err) {
        this.dirty = true;
        this.o.log.warn(`${this.o.cache}.state: not saved (${(err as Error).message})`);
      }
    });
    return this.flushing;
  }

  /** Stops fetching, waits for what is in flight to settle, persists the state, closes the file. */
  close(): Promise<void> {
    this.closing ??= this.shut();
    return this.closing;
  }

  private async shut(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.life.abort(new OrbError('interrupted', 'the disk was closed'));
    await Promise.allSettled([...this.inflight.values()]);
    await this.finishing?.catch(() => {});
    await this.flush();
    await this.fh.close();
  }
}

function raceAbort<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason as Error);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason as Error);
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => (signal.removeEventListener('abort', onAbort), resolve(v)),
      (e: unknown) => (signal.removeEventListener('abort', onAbort), reject(e as Error)),
    );
  });
}
