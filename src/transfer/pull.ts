import { mkdir, open, rm, rmdir, stat, type FileHandle } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { OrbError, UsageError } from '../core/errors.js';
import { ensureFreeSpace, environmentError, exists } from '../core/fsutil.js';
import type { Logger } from '../core/log.js';
import { newManifest, writeManifest, type BuildInfo, type ImageFormat } from '../core/stage-manifest-file.js';
import { qemuInfoName, vetImage } from '../image/untrusted.js';
import { formatBytes, type Progress } from '../core/progress.js';
import { defaultRetryPolicy, type RetryPolicy } from '../net/retry.js';
import type { BlobStore } from '../stores/store.js';
import { openBase, type BaseSource } from './pull-base.js';
import { blockTarget, isBlockDevice, zeroRanges, type BlockTarget } from './block-device.js';
import { Journal } from './pull-journal.js';
import { OrderedHasher } from './hasher.js';
import { finishOutput, type OutputFormat } from './pull-output.js';
import {
  contentSegments,
  makePlan,
  resolveManifest,
  type Plan,
  type Region,
  type Unit,
} from './pull-plan.js';
import { ByteBudget, runPool } from './pool.js';
import { HttpWorkers } from '../net/http-workers.js';
import { downloadUnit, type UnitContext } from './place-blob.js';

/**
 * Pull engine, generic over BlobStore. The output is assembled in `<output>.partial` (sparse:
 * zero chunks are never written), with a journal beside it so a rerun after any interruption
 * fetches only what is missing. Every blob is checked against its digest and every chunk
 * against its content digest before it counts; the whole content's sha256 is computed in order
 * while the pieces land and compared at the end. Only then does the output path appear
 * (rename), converted to qcow2 when asked.
 */
export interface PullOptions {
  source: BlobStore;
  /** tag or digest in the source */
  ref: string;
  /** the reference as the user wrote it, for messages */
  display: string;
  output: string;
  format: OutputFormat;
  base?: string;
  concurrency: number;
  /** write a stage manifest describing the pulled image here */
  manifestPath?: string;
  log: Logger;
  progress(label: string, total?: number): Progress;
  signal?: AbortSignal;
  retry?: RetryPolicy;
  /** memory for compressed chunks in flight (bigger blobs are spooled to disk) */
  memoryBudget?: number;
}

export interface PullResult {
  path: string;
  format: string;
  digest: string;
  reference: string;
  artifactType: string;
  contentSha256: string;
  virtualSize: number;
  fileSize: number;
  bytesDownloaded: number;
  bytesReused: number;
  bytesResumed: number;
  chunks: number;
  chunksDownloaded: number;
  chunksReused: number;
  seconds: number;
  manifestPath?: string;
}

export async function pull(o: PullOptions): Promise<PullResult> {
  const started = Date.now();
  const log = o.log;
  const out = resolve(o.output);
  const { manifest, digest } = await resolveManifest(o.source, o.ref, o.display);
  const plan = await makePlan(o.source, manifest, digest, o.display);
  const srcFormat = plan.kind === 'disk' ? 'raw' : (plan.fileFormat ?? 'raw');
  if (plan.kind === 'disk' && o.format === 'auto') o.format = 'raw';
  const regionCount = plan.units.reduce((a, u) => a + u.regions.length, 0);
  log.info(
    `${o.display}: ${plan.kind === 'disk' ? 'disk image' : `file ${plan.fileName} (${srcFormat})`}, ${formatBytes(plan.size)}, ${regionCount} ${plan.kind === 'disk' ? 'chunks' : 'parts'} in ${plan.units.length} blobs`,
  );

  // A block device is written in place: no .partial, no rename, no truncate (block-device.ts).
  const device: BlockTarget | undefined = (await isBlockDevice(out))
    ? await blockTarget(out, { size: plan.size, kind: plan.kind, format: o.format })
    : undefined;
  const partial = device ? out : `${out}.partial`;
  const journalPath = device ? device.journalPath : `${partial}.journal`;
  const spoolDir = device ? device.spoolDir : `${partial}.d`;
  const dataBytes = plan.units.reduce((a, u) => a + u.regions.reduce((b, r) => b + r.length, 0), 0);
  // A conversion afterwards needs room for its output too: about the data a qcow2 holds (the
  // sparse raw's data bytes), or for a published file about its size again (a rough guess).
  const converted =
    plan.kind === 'disk'
      ? o.format === 'qcow2'
        ? dataBytes
        : 0
      : o.format !== 'auto' && o.format !== plan.fileFormat
        ? plan.size
        : 0;
  // A fresh pull is checked before anything is created, so a refusal leaves nothing behind; a
  // resumed one is checked again below, once the journal says what is already in place.
  const fresh = !device && !(await exists(partial));
  if (fresh) await ensureFreeSpace(out, dataBytes + converted, `pulling ${o.display}`);
  try {
    await mkdir(dirname(device ? journalPath : out), { recursive: true });
  } catch (err) {
    throw environmentError(err, `cannot create the folder of ${device ? journalPath : out}`);
  }
  if ((await stat(out).catch(() => undefined))?.isDirectory())
    throw new UsageError(`output ${out} is a directory`, 'give a file path');

  const fh = await open(partial, fresh ? 'w+' : 'r+').catch((err: unknown) => {
    throw environmentError(err, `cannot ${fresh ? 'create' : 'open'} ${partial}`);
  });
  let hasher: OrderedHasher | undefined;
  let base: BaseSource | undefined;
  let openJournal: Journal | undefined;
  let workers: HttpWorkers | undefined;
  try {
    const { journal, resumed } = await Journal.open(journalPath, { manifest: digest, size: plan.size }, fh);
    openJournal = journal;
    if (!device) {
      if (!resumed) await fh.truncate(0); // stale bytes of another manifest would break the zero gaps
      try {
        await fh.truncate(plan.size);
      } catch (err) {
        // e.g. EFBIG on FAT32: nothing was fetched yet, so a fresh pull leaves nothing behind
        if (fresh) {
          openJournal = undefined;
          await journal.remove();
          await fh.close().catch(() => undefined);
          await rm(partial, { force: true });
        }
        throw environmentError(err, `cannot make room for ${formatBytes(plan.size)} in ${partial}`);
      }
    }
    const segments = contentSegments(plan);
    const segIndex = new Map<number, number>();
    segments.forEach((s, i) => {
      if (!s.zero) segIndex.set(s.offset, i);
    });
    hasher = new OrderedHasher(partial, segments);
    const h = hasher;
    const done = new Set<number>();
    let bytesResumed = 0;
    for (const u of plan.units) {
      for (const r of u.regions) {
        if (journal.regions.get(r.offset) === r.digest) {
          done.add(r.offset);
          bytesResumed += r.length;
          h.markDone(segIndex.get(r.offset)!);
        }
      }
    }
    const markDone = (r: Region) => {
      done.add(r.offset);
      journal.regionDone(r.offset, r.digest);
      h.markDone(segIndex.get(r.offset)!);
    };
    const pending = (u: Unit) => u.regions.filter((r) => !done.has(r.offset));
    if (resumed && bytesResumed)
      log.info(`resuming: ${formatBytes(bytesResumed)} already in place from an earlier run`);

    const remainingBytes = plan.units.reduce((a, u) => a + pending(u).reduce((b, r) => b + r.length, 0), 0);
    if (!fresh && !device) await ensureFreeSpace(out, remainingBytes + converted, `pulling ${o.display}`);
    // Room for each parallel download to hold one default-size chunk and its decoded bytes.
    const budget = new ByteBudget(
      o.memoryBudget ?? Math.min(1 << 30, Math.max(256 << 20, o.concurrency * (64 << 20))),
    );

    // 1. Take what the base has (verified chunk by chunk).
    let bytesReused = 0;
    let chunksReused = 0;
    if (o.base) {
      base = await openBase(o.base);
      const b = base;
      // --base naming the output device itself: a chunk found in place is already written.
      const inPlace = !!device && resolve(o.base) === out;
      const candidates = plan.units.filter((u) => pending(u).length);
      const progress = o.progress(
        `reusing from ${b.describe}`,
        candidates.reduce((a, u) => a + pending(u).reduce((s, r) => s + r.length, 0), 0),
      );
      await runPool(
        candidates,
        Math.max(2, Math.min(4, o.concurrency)),
        async (u) => {
          for (const r of pending(u)) {
            await budget.acquire(r.length);
            try {
              const data = await b.lookup(r);
              if (data) {
                if (!inPlace) await writeAll(fh, data, r.offset);
                markDone(r);
                bytesReused += r.length;
                chunksReused++;
              }
            } finally {
              budget.release(r.length);
            }
            progress.add(r.length);
          }
        },
        o.signal,
      );
      progress.done(`reused ${formatBytes(bytesReused)} (${chunksReused} chunks) from ${b.describe}`);
    }

    // 2. Download the rest in parallel.
    const todo = plan.units.filter((u) => pending(u).length);
    const downloadTotal = todo.reduce(
      (a, u) => a + u.blob.size - (journal.partial.get(u.blob.digest)?.bytes ?? 0),
      0,
    );
    const progress = o.progress('downloading', downloadTotal);
    let bytesDownloaded = 0;
    let unreported = 0;
    // Stores reachable by plain HTTP GET are read by worker threads: receiving and hashing
    // gigabytes is CPU work that one JavaScript thread would make the bottleneck.
    workers = o.source.httpSource
      ? new HttpWorkers(Math.min(Number(process.env.ORB_TRANSFER_WORKERS) || 4, o.concurrency), o.signal)
      : undefined;
    const ctx: UnitContext = {
      workers,
      idleMs: Number(process.env.ORB_HTTP_IDLE_TIMEOUT_MS || 120_000),
      store: o.source,
      fh,
      partialPath: partial,
      spoolDir,
      journal,
      budget,
      retry: o.retry ?? defaultRetryPolicy(),
      log,
      signal: o.signal,
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
    await runPool(todo, o.concurrency, (u) => downloadUnit(ctx, u, pending(u)), o.signal);
    progress.add(unreported);
    progress.done();
    await journal.close();
    log.debug(`pull: downloads done after ${((Date.now() - started) / 1000).toFixed(2)} s`);

    // The hasher takes the ranges without data as zeros: on a device, make them so.
    if (device)
      await zeroRanges(
        fh,
        out,
        segments.filter((s) => s.zero),
        log,
        o.signal,
      );

    // 3. The whole content, hashed in order as it landed.
    const content = await h.finish(o.signal);
    hasher = undefined;
    log.debug(`pull: content hash done after ${((Date.now() - started) / 1000).toFixed(2)} s`);
    if (content !== plan.contentDigest) {
      openJournal = undefined;
      await journal.remove();
      await fh.close().catch(() => undefined);
      if (!device) await rm(partial, { force: true });
      await rm(spoolDir, { recursive: true, force: true });
      throw new OrbError(
        'integrity',
        `the assembled ${plan.kind === 'disk' ? 'disk' : 'file'} has sha256 ${content}, the image says ${plan.contentDigest}`,
        {
          hint: 'every chunk matched its digest, so the published manifest is inconsistent; publish the image again',
        },
      );
    }
    await fh.datasync();
    await fh.close();
    openJournal = undefined;
    log.debug(`pull: synced after ${((Date.now() - started) / 1000).toFixed(2)} s`);
    const format = device ? srcFormat : await finishOutput(partial, srcFormat, out, o.format, log, o.signal);
    await journal.remove();
    await rm(spoolDir, { recursive: true, force: true });
    const fileSize = device ? plan.size : (await stat(out)).size;
    const seconds = (Date.now() - started) / 1000;
    const result: PullResult = {
      path: out,
      format,
      digest,
      reference: `${o.source.describe()}@${digest}`,
      artifactType: plan.artifactType,
      contentSha256: plan.contentDigest.slice('sha256:'.length),
      virtualSize:
        plan.kind === 'disk'
          ? plan.size
          : format === srcFormat
            ? plan.size
            : await virtualSizeOf(out, format),
      fileSize,
      bytesDownloaded,
      bytesReused,
      bytesResumed,
      chunks: regionCount,
      chunksDownloaded: ctx.regionsDownloaded,
      chunksReused,
      seconds,
    };
    log.info(
      `pulled ${o.display} to ${out} (${format}) in ${seconds.toFixed(1)} s: downloaded ${formatBytes(bytesDownloaded)}, reused ${formatBytes(bytesReused)}` +
        (bytesResumed ? `, ${formatBytes(bytesResumed)} from an earlier run` : ''),
    );
    if (o.manifestPath) {
      await writeStageManifest(o.manifestPath, plan, result);
      result.manifestPath = o.manifestPath;
    }
    return result;
  } catch (err) {
    await hasher?.abort();
    // Record what did land, so the rerun the hint suggests continues from there.
    await openJournal?.close().catch(() => undefined);
    await fh.close().catch(() => undefined);
    // rmdir removes the spool folder only when empty: spooled blobs are kept for the rerun.
    await rmdir(spoolDir).catch(() => undefined);
    // The hint promises a kept partial only when there is one (a whole-content mismatch deletes it).
    if (
      err instanceof OrbError &&
      (err.kind === 'network' || err.kind === 'interrupted' || err.kind === 'integrity') &&
      (await exists(partial))
    ) {
      const hint = err.hint ? `${err.hint}. ` : '';
      throw new OrbError(err.kind, err.message, {
        hint: device
          ? `${hint}What was written stays on ${out} (journal ${journalPath}): run the same command again to continue`
          : `${hint}What was fetched is kept in ${partial}: run the same command again to continue, or delete ${partial}* to start over`,
        cause: err,
      });
    }
    throw environmentError(err, `pulling ${o.display} to ${out}`);
  } finally {
    await workers?.close();
    await base?.close();
  }
}

export async function writeAll(fh: FileHandle, data: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await fh.write(data, done, data.length - done, position + done);
    done += bytesWritten;
  }
}

async function virtualSizeOf(path: string, format: string): Promise<number> {
  if (format === 'raw') return (await stat(path)).size;
  const { run, requireTool } = await import('../core/proc.js');
  // never let qemu-img open a file the pulled image names (src/image/untrusted.ts)
  const vetted = await vetImage(path);
  if (vetted.format !== format)
    throw new OrbError('input', `the pulled file says ${format}, but its header is ${vetted.format}`);
  const r = await run(
    requireTool('qemu-img', 'qemu-utils'),
    ['info', '-U', '--output=json', qemuInfoName(vetted)],
    {
      check: true,
    },
  );
  return (JSON.parse(r.stdout) as { 'virtual-size': number })['virtual-size'];
}

async function writeStageManifest(path: string, plan: Plan, r: PullResult): Promise<void> {
  const m = newManifest(
    'pull',
    {
      path: r.path,
      format: r.format as ImageFormat,
      virtualSize: r.virtualSize,
      fileSize: r.fileSize,
      contentSha256: r.contentSha256,
    },
    { published: { reference: r.reference, digest: r.digest } },
  );
  const build = (plan.build ?? plan.config?.build) as BuildInfo | undefined;
  if (build) m.build = build;
  await writeManifest(path, m);
}
