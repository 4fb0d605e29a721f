import type { FileHandle } from 'node:fs/promises';
import { OrbError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { formatBytes, type Progress } from '../core/progress.js';
import type { RetryPolicy } from '../net/retry.js';
import { HttpWorkers } from '../net/http-workers.js';
import type { BlobStore } from '../stores/store.js';
import type { BaseSource } from './pull-base.js';
import { OrderedHasher } from './hasher.js';
import type { Journal } from './pull-journal.js';
import { contentSegments, type Plan, type Region, type Unit } from './pull-plan.js';
import { ByteBudget, runPool } from './pool.js';
import { downloadUnit, type UnitContext } from './place-blob.js';

/**
 * A file artifact's parts (`application/vnd.orb.file.v1`): taken from a base where it holds the
 * same bytes at the same offset, downloaded otherwise, and the whole file's sha256 computed in
 * order as the parts land (a file has no block index to prove it by). Disks are pull-disk.ts.
 */
export interface FilePullContext {
  plan: Plan;
  store: BlobStore;
  fh: FileHandle;
  partial: string;
  spoolDir: string;
  journal: Journal;
  base?: BaseSource | undefined;
  concurrency: number;
  retry: RetryPolicy;
  log: Logger;
  progress(label: string, total?: number): Progress;
  signal?: AbortSignal | undefined;
  memoryBudget: number;
}

export interface FilePullStats {
  bytesDownloaded: number;
  bytesReused: number;
  bytesResumed: number;
  parts: number;
  partsDownloaded: number;
  partsReused: number;
}

/** The parts all matched, the whole did not: the partial is worthless (the caller deletes it). */
export class ContentMismatch extends OrbError {
  constructor(message: string) {
    super('integrity', message, {
      hint: 'every part matched its digest, so the published manifest is inconsistent; publish the image again',
    });
  }
}

export async function pullFile(c: FilePullContext): Promise<FilePullStats> {
  const { plan, journal, log } = c;
  const segments = contentSegments(plan);
  const segIndex = new Map<number, number>();
  segments.forEach((s, i) => {
    if (!s.zero) segIndex.set(s.offset, i);
  });
  const h = new OrderedHasher(c.partial, segments);
  let workers: HttpWorkers | undefined;
  try {
    const done = new Set<number>();
    let bytesResumed = 0;
    for (const u of plan.units)
      for (const r of u.regions)
        if (journal.regions.get(r.offset) === r.digest) {
          done.add(r.offset);
          bytesResumed += r.length;
          h.markDone(segIndex.get(r.offset)!);
        }
    const markDone = (r: Region) => {
      done.add(r.offset);
      journal.regionDone(r.offset, r.digest);
      h.markDone(segIndex.get(r.offset)!);
    };
    const pending = (u: Unit) => u.regions.filter((r) => !done.has(r.offset));
    if (bytesResumed) log.info(`resuming: ${formatBytes(bytesResumed)} already in place from an earlier run`);
    const budget = new ByteBudget(c.memoryBudget);

    let bytesReused = 0;
    let partsReused = 0;
    if (c.base) {
      const b = c.base;
      const candidates = plan.units.filter((u) => pending(u).length);
      const progress = c.progress(
        `reusing from ${b.describe}`,
        candidates.reduce((a, u) => a + pending(u).reduce((s, r) => s + r.length, 0), 0),
      );
      await runPool(
        candidates,
        Math.max(2, Math.min(4, c.concurrency)),
        async (u) => {
          for (const r of pending(u)) {
            await budget.acquire(r.length);
            try {
              const data = await b.lookup(r);
              if (data) {
                await writeAll(c.fh, data, r.offset);
                markDone(r);
                bytesReused += r.length;
                partsReused++;
              }
            } finally {
              budget.release(r.length);
            }
            progress.add(r.length);
          }
        },
        c.signal,
      );
      progress.done(`reused ${formatBytes(bytesReused)} (${partsReused} parts) from ${b.describe}`);
    }

    const todo = plan.units.filter((u) => pending(u).length);
    const total = todo.reduce(
      (a, u) => a + u.blob.size - (journal.partial.get(u.blob.digest)?.bytes ?? 0),
      0,
    );
    const progress = c.progress('downloading', total);
    let bytesDownloaded = 0;
    let unreported = 0;
    // Stores reachable by plain HTTP GET are read by worker threads: receiving and hashing
    // gigabytes is CPU work that one JavaScript thread would make the bottleneck.
    workers = c.store.httpSource
      ? new HttpWorkers(Math.min(Number(process.env.ORB_TRANSFER_WORKERS) || 4, c.concurrency), c.signal)
      : undefined;
    const ctx: UnitContext = {
      workers,
      idleMs: Number(process.env.ORB_HTTP_IDLE_TIMEOUT_MS || 120_000),
      store: c.store,
      fh: c.fh,
      partialPath: c.partial,
      spoolDir: c.spoolDir,
      journal,
      budget,
      retry: c.retry,
      log,
      signal: c.signal,
      onBytes: (n) => {
        bytesDownloaded += n;
        unreported += n;
        if (unreported >= 1 << 20) {
          progress.add(unreported);
          unreported = 0;
        }
      },
      markDone,
      regionsDownloaded: 0,
    };
    await runPool(todo, c.concurrency, (u) => downloadUnit(ctx, u, pending(u)), c.signal);
    progress.add(unreported);
    progress.done();
    await journal.close();

    const content = await h.finish(c.signal);
    if (content !== plan.contentDigest)
      throw new ContentMismatch(
        `the assembled file has sha256 ${content}, the image says ${plan.contentDigest}`,
      );
    return {
      bytesDownloaded,
      bytesReused,
      bytesResumed,
      parts: plan.units.reduce((a, u) => a + u.regions.length, 0),
      partsDownloaded: ctx.regionsDownloaded,
      partsReused,
    };
  } catch (err) {
    await h.abort();
    throw err;
  } finally {
    await workers?.close();
  }
}

export async function writeAll(fh: FileHandle, data: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await fh.write(data, done, data.length - done, position + done);
    done += bytesWritten;
  }
}
