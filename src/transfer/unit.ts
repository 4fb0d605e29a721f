import { createHash, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, rm, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import zlib from 'node:zlib';
import { OrbError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import type { RetryPolicy } from '../oci/http.js';
import type { Descriptor } from '../oci/media.js';
import type { BlobStore } from '../store/types.js';
import { decodeChunk } from './chunk.js';
import { fetchBlob, type BlobSink } from './fetch.js';
import type { Journal } from './journal.js';
import type { Region, Unit } from './plan.js';
import type { ByteBudget } from './pool.js';

/**
 * Fetching one blob of a pull and putting its content where it belongs, three ways:
 *  - memory: a compressed chunk small enough for the memory budget is downloaded into a
 *    buffer, verified, decompressed, verified again and written;
 *  - direct: an uncompressed chunk or a file part is written straight into the output as it
 *    arrives (it only counts once its digest matched; progress is journaled so a rerun continues
 *    mid-blob);
 *  - spool: a compressed blob too big for memory is downloaded to a spool file (a rerun continues
 *    it), verified, then decompressed into the output as a stream.
 * A blob whose digest does not match is fetched once more from the start, then rejected.
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
}

const PROGRESS_RECORD_EVERY = 64 << 20;

export async function downloadUnit(ctx: UnitContext, u: Unit, regions: Region[]): Promise<void> {
  if (!regions.length) return;
  if (u.kind === 'zstd') {
    const need = u.blob.size + regions[0]!.length;
    if (ctx.budget.fits(need)) await memoryUnit(ctx, u, regions, need);
    else await spoolUnit(ctx, u, regions);
  } else {
    await directUnit(ctx, u, regions);
  }
  ctx.regionsDownloaded += regions.length;
}

async function fetchVerified(ctx: UnitContext, desc: Descriptor, sink: BlobSink, have = 0, hash?: Hash, onHave?: (n: number) => void): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    const r = await fetchBlob({
      store: ctx.store,
      desc,
      sink,
      have,
      ...(hash ? { hash } : {}),
      onBytes: ctx.onBytes,
      ...(onHave ? { onHave } : {}),
      retry: ctx.retry,
      log: ctx.log,
      signal: ctx.signal,
    });
    if (r.digest === desc.digest) return;
    if (attempt >= 1) {
      throw new OrbError('integrity', `blob ${desc.digest} from ${ctx.store.describe()} arrived with digest ${r.digest}, twice: it is corrupt in the store or on the way`, {
        hint: 'nothing of it was used; if a proxy sits between you and the registry, check it, or publish the image again',
      });
    }
    ctx.log.warn(`blob ${desc.digest.slice(7, 19)}: received bytes have digest ${r.digest.slice(7, 19)}, not the expected one; downloading it again`);
    await sink.reset();
    have = 0;
    hash = undefined;
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
      throw new OrbError('input', `the manifest maps blob ${u.blob.digest} to chunks with different contents (at ${r0.offset} and ${r.offset})`);
    }
  }
}

async function memoryUnit(ctx: UnitContext, u: Unit, regions: Region[], need: number): Promise<void> {
  sameContent(u, regions);
  await ctx.budget.acquire(need);
  try {
    const buf = Buffer.allocUnsafe(u.blob.size);
    await fetchVerified(ctx, u.blob, {
      write: async (c, at) => void c.copy(buf, at),
      reset: async () => {},
    });
    const r0 = regions[0]!;
    const data = await decodeChunk('zstd', buf, r0.length, r0.digest, `chunk at ${r0.offset}`);
    for (const r of regions) {
      await writeAll(ctx.fh, data, r.offset);
      ctx.markDone(r);
    }
  } finally {
    ctx.budget.release(need);
  }
}

async function rehash(fh: FileHandle, position: number, length: number): Promise<Hash> {
  const hash = createHash('sha256');
  const buf = Buffer.allocUnsafe(Math.min(length, 4 << 20) || 1);
  for (let at = 0; at < length; ) {
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
  if (first.length !== u.blob.size) throw new OrbError('input', `blob ${u.blob.digest} has ${u.blob.size} bytes for a ${first.length}-byte region`);
  let have = 0;
  let hash: Hash | undefined;
  const prev = ctx.journal.partial.get(u.blob.digest);
  if (prev && prev.offset === first.offset && prev.bytes > 0 && prev.bytes < u.blob.size) {
    have = prev.bytes;
    hash = await rehash(ctx.fh, first.offset, have);
    ctx.log.info(`blob ${u.blob.digest.slice(7, 19)}: continuing at byte ${have} from an earlier run`);
  }
  let recorded = have;
  await fetchVerified(
    ctx,
    u.blob,
    { write: (c, at) => writeAll(ctx.fh, c, first.offset + at), reset: async () => {} },
    have,
    hash,
    (n) => {
      if (n - recorded >= PROGRESS_RECORD_EVERY) {
        recorded = n;
        ctx.journal.progress(u.blob.digest, first.offset, n);
      }
    },
  );
  await copyToOthers(ctx, first, regions.slice(1));
  for (const r of regions) ctx.markDone(r);
}

async function spoolUnit(ctx: UnitContext, u: Unit, regions: Region[]): Promise<void> {
  sameContent(u, regions);
  await mkdir(ctx.spoolDir, { recursive: true });
  const path = join(ctx.spoolDir, u.blob.digest.slice('sha256:'.length));
  let sfh = await open(path, 'a+').then(async (h) => {
    await h.close();
    return open(path, 'r+');
  });
  try {
    let have = Math.min((await sfh.stat()).size, u.blob.size);
    const hash = have > 0 ? await rehash(sfh, 0, have) : undefined;
    if (have > 0) ctx.log.info(`blob ${u.blob.digest.slice(7, 19)}: continuing at byte ${have} from an earlier run`);
    const s = sfh;
    await fetchVerified(ctx, u.blob, { write: (c, at) => writeAll(s, c, at), reset: () => s.truncate(0) }, have, hash);
    have = u.blob.size;
    await sfh.close();
    sfh = undefined as unknown as FileHandle;
    const r0 = regions[0]!;
    const content = createHash('sha256');
    let pos = 0;
    const sink = new Writable({
      highWaterMark: 4 << 20,
      write(chunk: Buffer, _e, cb) {
        if (pos + chunk.length > r0.length) {
          cb(new OrbError('integrity', `chunk at ${r0.offset} decompresses to more than the ${r0.length} bytes the manifest says`));
          return;
        }
        content.update(chunk);
        const at = pos;
        pos += chunk.length;
        writeAll(ctx.fh, chunk, r0.offset + at).then(() => cb(), cb);
      },
    });
    try {
      await pipeline(createReadStream(path, { highWaterMark: 4 << 20 }), zlib.createZstdDecompress(), sink);
    } catch (err) {
      if (err instanceof OrbError) throw err;
      throw new OrbError('integrity', `chunk at ${r0.offset} does not decompress: ${(err as Error).message}`);
    }
    const got = 'sha256:' + content.digest('hex');
    if (pos !== r0.length || got !== r0.digest) {
      throw new OrbError('integrity', `chunk at ${r0.offset}: content is ${pos} bytes with digest ${got}, the manifest says ${r0.length} bytes, ${r0.digest}`);
    }
    await copyToOthers(ctx, r0, regions.slice(1));
    for (const r of regions) ctx.markDone(r);
    await rm(path, { force: true });
  } finally {
    await sfh?.close().catch(() => undefined);
  }
}
