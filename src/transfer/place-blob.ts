import { createHash, type Hash } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import { OrbError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import type { RetryPolicy } from '../net/retry.js';
import type { Descriptor } from '../formats/oci-media.js';
import type { BlobStore } from '../stores/store.js';
import { sha256Async } from './part-check.js';
import { fetchBlob, type BlobSink } from './fetch.js';
import type { Journal } from './pull-journal.js';
import type { Region, Unit } from './pull-plan.js';
import type { ByteBudget } from './pool.js';
import type { HttpWorkers } from '../net/http-workers.js';

/**
 * Fetching one part of a file artifact and putting it where it belongs (disks, format v2, are
 * pull-disk.ts): a part is written straight into the output as it arrives (by a transfer worker
 * thread when the store offers plain HTTP, else here), and only counts once its digest matched;
 * progress is journaled so a rerun continues mid-blob. A part whose digest does not match is
 * fetched once more from the start, then rejected.
 */
export interface UnitContext {
  store: BlobStore;
  fh: FileHandle;
  partialPath: string;
  spoolDir: string;
  journal: Journal;
  budget: ByteBudget;
  retry: RetryPolicy;
  log: Logger;
  signal?: AbortSignal | undefined;
  onBytes(n: number): void;
  markDone(r: Region): void;
  regionsDownloaded: number;
  /** transfer worker threads, used when the store offers httpSource */
  workers?: HttpWorkers | undefined;
  idleMs?: number;
}

const PROGRESS_RECORD_EVERY = 64 << 20;

/** Blobs up to this size are fetched into memory (when the budget allows) and hashed off the main thread. */
const MEMORY_BLOB_MAX = 64 << 20;

export async function downloadUnit(ctx: UnitContext, u: Unit, regions: Region[]): Promise<void> {
  if (!regions.length) return;
  const memory = u.blob.size <= MEMORY_BLOB_MAX && ctx.budget.fits(u.blob.size);
  // Parts go straight into the output (no copy into a buffer); they count once their digest matched.
  if (ctx.workers && ctx.store.httpSource) await workerUnit(ctx, u, regions, 0);
  else if (memory) await memoryUnit(ctx, u, regions, u.blob.size);
  else await directUnit(ctx, u, regions);
  ctx.regionsDownloaded += regions.length;
}

/**
 * Fetches until the bytes match the descriptor's digest: a mismatch is fetched once more from the
 * start, then rejected. `digestOf` hashes what arrived when the sink keeps it in memory (in the
 * thread pool); otherwise the stream is hashed as it arrives.
 */
async function fetchVerified(
  ctx: UnitContext,
  desc: Descriptor,
  sink: BlobSink,
  have = 0,
  hash?: Hash,
  digestOf?: () => Promise<string>,
): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    const r = await fetchBlob({
      store: ctx.store,
      desc,
      sink,
      have,
      ...(hash ? { hash } : {}),
      ...(digestOf ? { hashing: false } : {}),
      onBytes: ctx.onBytes,
      retry: ctx.retry,
      log: ctx.log,
      signal: ctx.signal,
    });
    const digest = digestOf ? await digestOf() : r.digest;
    if (digest === desc.digest) return;
    if (attempt >= 1) {
      throw new OrbError(
        'integrity',
        `blob ${desc.digest} from ${ctx.store.describe()} arrived with digest ${digest}, twice: it is corrupt in the store or on the way`,
        {
          hint: 'nothing of it was used; if a proxy sits between you and the registry, check it, or publish the image again',
        },
      );
    }
    ctx.log.warn(
      `blob ${desc.digest.slice(7, 19)}: received bytes have digest ${digest.slice(7, 19)}, not the expected one; downloading it again`,
    );
    await sink.reset();
    have = 0;
    hash = undefined;
  }
}

/**
 * Writes a blob into a file at `base`, gathering the network's small reads into one writev of a
 * few MiB: one thread-pool round trip per 4 MiB instead of one per 64 KiB.
 */
class FileSink implements BlobSink {
  private parts: Buffer[] = [];
  private bytes = 0;
  private at = 0;
  /** bytes of the blob written to the file (contiguous from 0) */
  flushed = 0;

  constructor(
    private readonly fh: FileHandle,
    private readonly base: number,
    private readonly onFlushed?: (n: number) => void,
  ) {}

  async write(chunk: Buffer, at: number): Promise<void> {
    if (this.bytes && this.at + this.bytes !== at) await this.flush();
    if (!this.bytes) this.at = at;
    this.parts.push(chunk);
    this.bytes += chunk.length;
    if (this.bytes >= 4 << 20) await this.flush();
  }

  async flush(): Promise<void> {
    if (!this.bytes) return;
    const parts = this.parts;
    const at = this.at;
    const n = this.bytes;
    this.parts = [];
    this.bytes = 0;
    const { bytesWritten } = await this.fh.writev(parts, this.base + at);
    if (bytesWritten < n)
      await writeAll(this.fh, Buffer.concat(parts).subarray(bytesWritten), this.base + at + bytesWritten);
    if (at <= this.flushed) this.flushed = Math.max(this.flushed, at + n);
    this.onFlushed?.(this.flushed);
  }

  async reset(): Promise<void> {
    this.parts = [];
    this.bytes = 0;
    this.flushed = 0;
  }
}

async function writeAll(fh: FileHandle, data: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await fh.write(data, done, data.length - done, position + done);
    done += bytesWritten;
  }
}

async function readAll(fh: FileHandle, target: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < target.length) {
    const { bytesRead } = await fh.read(target, done, target.length - done, position + done);
    if (bytesRead === 0) throw new OrbError('internal', `unexpected end of ${position + done}`);
    done += bytesRead;
  }
}

/** Identical chunks elsewhere on the disk: copy the verified first region to the others. */
async function copyToOthers(ctx: UnitContext, first: Region, others: Region[]): Promise<void> {
  if (!others.length) return;
  const step = Math.min(first.length, 8 << 20);
  await ctx.budget.acquire(step);
  try {
    const buf = Buffer.allocUnsafe(step);
    for (let at = 0; at < first.length; at += step) {
      const n = Math.min(step, first.length - at);
      await readAll(ctx.fh, buf.subarray(0, n), first.offset + at);
      for (const r of others) await writeAll(ctx.fh, buf.subarray(0, n), r.offset + at);
    }
  } finally {
    ctx.budget.release(step);
  }
}

function sameContent(u: Unit, regions: Region[]): void {
  const r0 = regions[0]!;
  for (const r of regions) {
    if (r.length !== r0.length || r.digest !== r0.digest) {
      throw new OrbError(
        'input',
        `the manifest maps blob ${u.blob.digest} to chunks with different contents (at ${r0.offset} and ${r.offset})`,
      );
    }
  }
}

async function memoryUnit(ctx: UnitContext, u: Unit, regions: Region[], need: number): Promise<void> {
  sameContent(u, regions);
  await ctx.budget.acquire(need);
  try {
    const buf = Buffer.allocUnsafe(u.blob.size);
    await fetchVerified(
      ctx,
      u.blob,
      { write: async (c, at) => void c.copy(buf, at), reset: async () => {} },
      0,
      undefined,
      () => sha256Async(buf),
    );
    // the blob digest just checked is the part's digest (pull-plan.ts made sure)
    for (const r of regions) {
      await writeAll(ctx.fh, buf, r.offset);
      ctx.markDone(r);
    }
  } finally {
    ctx.budget.release(need);
  }
}

interface WorkerDone {
  downloaded?: number;
  error?: { kind: string; message: string; status?: number };
}

/**
 * The same as memoryUnit (need > 0) or directUnit (need = 0), done by a transfer worker thread:
 * the worker downloads, hashes, verifies, decodes and writes; this thread only keeps the books.
 */
async function workerUnit(ctx: UnitContext, u: Unit, regions: Region[], need: number): Promise<void> {
  sameContent(u, regions);
  const r0 = regions[0]!;
  const short = u.blob.digest.slice(7, 19);
  const memory = need > 0;
  if (memory) await ctx.budget.acquire(need);
  try {
    let have = 0;
    let recorded = 0;
    if (!memory) {
      const prev = ctx.journal.partial.get(u.blob.digest);
      if (prev && prev.offset === r0.offset && prev.bytes > 0 && prev.bytes < u.blob.size) {
        have = recorded = prev.bytes;
        ctx.log.info(`blob ${short}: continuing at byte ${have} from an earlier run`);
      }
    }
    let refresh = false;
    let refreshed = false;
    let mismatches = 0;
    for (;;) {
      const src = await ctx.store.httpSource!(u.blob, refresh);
      const done = await ctx.workers!.run<WorkerDone>(
        {
          op: 'get',
          url: src.url,
          headers: src.headers,
          size: u.blob.size,
          digest: u.blob.digest,
          have,
          kind: u.kind,
          retry: {
            attempts: ctx.retry.attempts,
            baseDelayMs: ctx.retry.baseDelayMs,
            maxDelayMs: ctx.retry.maxDelayMs,
          },
          idleMs: ctx.idleMs ?? 120_000,
          target: memory ? { kind: 'memory' } : { kind: 'file', path: ctx.partialPath, offset: r0.offset },
          write: {
            path: ctx.partialPath,
            offsets: regions.map((r) => r.offset),
            length: r0.length,
            digest: r0.digest,
          },
        },
        {
          onProgress: ctx.onBytes,
          onLog: (line) => ctx.log.info(`blob ${short}: ${line}`),
          ...(memory
            ? {}
            : {
                onFlushed: (n: number) => {
                  if (n - recorded >= PROGRESS_RECORD_EVERY) {
                    recorded = n;
                    ctx.journal.progress(u.blob.digest, r0.offset, n);
                  }
                },
              }),
        },
      );
      const e = done.error;
      if (!e) break;
      refresh = false;
      if (e.kind === 'auth' && !refreshed) {
        // a token can expire mid-pull: one fresh one
        refresh = refreshed = true;
        continue;
      }
      if (e.kind !== 'auth' && e.kind !== 'environment' && ctx.store.sourceFailed?.(u.blob, e.message)) {
        // a mirror failed this blob: the next mirror or the origin; a bad copy is dropped whole
        if (e.kind === 'mismatch') have = 0;
        continue;
      }
      if (e.kind === 'mismatch' && mismatches++ === 0) {
        ctx.log.warn(
          `blob ${short}: received bytes have digest ${e.message.slice(7, 19)}, not the expected one; downloading it again`,
        );
        have = 0;
        continue;
      }
      const where = `blob ${u.blob.digest} from ${ctx.store.describe()}`;
      switch (e.kind) {
        case 'auth':
          throw new OrbError(
            'network',
            `${ctx.store.describe()} refused the download of blob ${u.blob.digest} (HTTP ${e.status})`,
            {
              hint: 'check the credentials (username/password, GITHUB_TOKEN, docker login) and their permissions',
            },
          );
        case 'mismatch':
          throw new OrbError(
            'integrity',
            `${where} arrived with digest ${e.message}, twice: it is corrupt in the store or on the way`,
            {
              hint: 'nothing of it was used; if a proxy sits between you and the registry, check it, or publish the image again',
            },
          );
        case 'missing':
          throw new OrbError('input', `${where} is missing`, {
            hint: 'the manifest refers to a blob the store no longer has; publish the image again',
          });
        case 'truncated':
          throw new OrbError('integrity', `${where} is truncated: ${e.message}`, {
            hint: 'the registry copy is damaged or a proxy cuts it short; publish the image again',
          });
        case 'integrity':
          throw new OrbError('integrity', `chunk at ${r0.offset}: ${e.message}`);
        case 'environment':
          throw new OrbError('environment', e.message);
        default:
          throw new OrbError('network', `download of ${where} failed: ${e.message}`, {
            hint: 'run the same command again: what was downloaded is kept',
          });
      }
    }
    for (const r of regions) ctx.markDone(r);
  } finally {
    if (memory) ctx.budget.release(need);
  }
}

async function rehash(fh: FileHandle, position: number, length: number): Promise<Hash> {
  const hash = createHash('sha256');
  const buf = Buffer.allocUnsafe(Math.min(length, 4 << 20) || 1);
  for (let at = 0; at < length;) {
    const n = Math.min(buf.length, length - at);
    await readAll(fh, buf.subarray(0, n), position + at);
    hash.update(buf.subarray(0, n));
    at += n;
  }
  return hash;
}

async function directUnit(ctx: UnitContext, u: Unit, regions: Region[]): Promise<void> {
  sameContent(u, regions);
  const first = regions[0]!;
  if (first.length !== u.blob.size)
    throw new OrbError(
      'input',
      `blob ${u.blob.digest} has ${u.blob.size} bytes for a ${first.length}-byte region`,
    );
  let have = 0;
  let hash: Hash | undefined;
  const prev = ctx.journal.partial.get(u.blob.digest);
  if (prev && prev.offset === first.offset && prev.bytes > 0 && prev.bytes < u.blob.size) {
    have = prev.bytes;
    hash = await rehash(ctx.fh, first.offset, have);
    ctx.log.info(`blob ${u.blob.digest.slice(7, 19)}: continuing at byte ${have} from an earlier run`);
  }
  let recorded = have;
  const sink = new FileSink(ctx.fh, first.offset, (n) => {
    if (n - recorded >= PROGRESS_RECORD_EVERY) {
      recorded = n;
      ctx.journal.progress(u.blob.digest, first.offset, n);
    }
  });
  sink.flushed = have;
  await fetchVerified(ctx, u.blob, sink, have, hash);
  await copyToOthers(ctx, first, regions.slice(1));
  for (const r of regions) ctx.markDone(r);
}
