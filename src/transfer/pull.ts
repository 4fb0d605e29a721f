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
import { closeBase, openBase, type Base } from './pull-base.js';
import { blockTarget, isBlockDevice, zeroRanges, type BlockTarget } from './block-device.js';
import { Journal } from './pull-journal.js';
import { finishOutput, type OutputFormat } from './pull-output.js';
import { makePlan, resolveManifest, type Plan } from './pull-plan.js';
import { BlockPool } from './block-pool.js';
import { pullDisk } from './pull-disk.js';
import { ContentMismatch, pullFile } from './pull-file.js';
import { checkDiskV2Manifest } from '../oci/disk-v2.js';
import type { DiskIndex } from '../formats/disk-index.js';

/**
 * Pull engine, generic over BlobStore. The output is assembled in `<output>.partial` (sparse:
 * zero blocks are never written), with a journal beside it so a rerun after any interruption
 * fetches only what is missing. A disk (chunked format v2, pull-disk.ts) is proven block by
 * block against its index, whose root is the content identity: no pass over the output. A file
 * artifact (pull-file.ts) is checked part by part and as a whole. Only then does the output path
 * appear (rename), converted to qcow2 when asked.
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
  /** memory for fetched bytes in flight (ranges, file parts) */
  memoryBudget?: number;
}

export interface PullResult {
  path: string;
  format: string;
  digest: string;
  reference: string;
  artifactType: string;
  /** file artifacts: sha256 (hex) of the file */
  contentSha256?: string;
  /** disks: the orb2 content root (orb2:sha256:<hex>), proven block by block */
  contentDigest?: string;
  virtualSize: number;
  fileSize: number;
  bytesDownloaded: number;
  bytesReused: number;
  bytesResumed: number;
  /** disks: non-zero blocks / file: parts */
  chunks: number;
  chunksDownloaded: number;
  chunksReused: number;
  /** disks: byte ranges requested and packs fetched whole */
  ranges?: number;
  wholePacks?: number;
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
  const index: DiskIndex | undefined = plan.index;
  const pieces = index ? index.entryCount : plan.units.reduce((a, u) => a + u.regions.length, 0);
  log.info(
    index
      ? `${o.display}: disk image, ${formatBytes(plan.size)}, ${index.entryCount} blocks of data (${formatBytes(index.entryCount * index.blockSize)}) in ${index.frameCount} frames, ${index.packs.length} packs`
      : `${o.display}: file ${plan.fileName} (${srcFormat}), ${formatBytes(plan.size)}, ${pieces} parts in ${plan.units.length} blobs`,
  );

  // A block device is written in place: no .partial, no rename, no truncate (block-device.ts).
  const device: BlockTarget | undefined = (await isBlockDevice(out))
    ? await blockTarget(out, { size: plan.size, kind: plan.kind, format: o.format })
    : undefined;
  const partial = device ? out : `${out}.partial`;
  const journalPath = device ? device.journalPath : `${partial}.journal`;
  const spoolDir = device ? device.spoolDir : `${partial}.d`;
  const dataBytes = index
    ? index.entryCount * index.blockSize
    : plan.units.reduce((a, u) => a + u.regions.reduce((b, r) => b + r.length, 0), 0);
  // A conversion afterwards needs room for its output too: about the data a qcow2 holds (the
  // sparse raw's data bytes), or for a published file about its size again (a rough guess).
  const converted = index
    ? o.format === 'qcow2'
      ? dataBytes
      : 0
    : o.format !== 'auto' && o.format !== plan.fileFormat
      ? plan.size
      : 0;
  // A fresh pull is checked before anything is created, so a refusal leaves nothing behind.
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
  let base: Base | undefined;
  let openJournal: Journal | undefined;
  let pool: BlockPool | undefined;
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
    // bytes fetched and not yet decoded (ranges, whole-pack batches): peak memory under 512 MiB
    const memoryBudget =
      o.memoryBudget ?? Math.min(256 << 20, Math.max(128 << 20, o.concurrency * (16 << 20)));
    // what a disk pull and a file pull take alike
    const transfer = {
      concurrency: o.concurrency,
      retry: o.retry ?? defaultRetryPolicy(),
      log,
      progress: o.progress,
      signal: o.signal,
      memoryBudget,
    };
    if (o.base) base = await openBase(o.base);
    let stats: {
      bytesDownloaded: number;
      bytesReused: number;
      bytesResumed: number;
      chunksDownloaded: number;
      chunksReused: number;
      ranges?: number;
      wholePacks?: number;
    };
    if (index) {
      pool = new BlockPool({ out: partial, size: plan.size, blockSize: index.blockSize });
      const s = await pullDisk({
        store: o.source,
        display: o.display,
        index,
        packs: checkDiskV2Manifest(plan.manifest, o.display).packs,
        pool,
        journal,
        base,
        // --base naming the output device itself: a block found in place is already written
        inPlace: !!device && !!o.base && resolve(o.base) === out,
        ...transfer,
      });
      await pool.close();
      pool = undefined;
      await journal.close();
      stats = { ...s, chunksDownloaded: s.blocksDownloaded, chunksReused: s.blocksReused };
      // zero runs are holes in a file; a device must read them back as zeros
      if (device) await zeroRanges(fh, out, zeroRuns(index), log, o.signal);
    } else {
      if (base?.kind === 'layout')
        throw new UsageError(
          `base ${o.base} is a disk layout; ${o.display} is a file`,
          'give an earlier copy of the file',
        );
      const s = await pullFile({
        plan,
        store: o.source,
        fh,
        partial,
        spoolDir,
        journal,
        base,
        ...transfer,
      });
      stats = { ...s, chunksDownloaded: s.partsDownloaded, chunksReused: s.partsReused };
    }
    log.debug(`pull: fetched after ${((Date.now() - started) / 1000).toFixed(2)} s`);
    await fh.datasync();
    await fh.close();
    openJournal = undefined;
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
      ...(index
        ? { contentDigest: index.contentDigest }
        : { contentSha256: plan.contentDigest.slice('sha256:'.length) }),
      virtualSize: index ? plan.size : format === srcFormat ? plan.size : await virtualSizeOf(out, format),
      fileSize,
      bytesDownloaded: stats.bytesDownloaded,
      bytesReused: stats.bytesReused,
      bytesResumed: stats.bytesResumed,
      chunks: pieces,
      chunksDownloaded: stats.chunksDownloaded,
      chunksReused: stats.chunksReused,
      ...(stats.ranges !== undefined ? { ranges: stats.ranges, wholePacks: stats.wholePacks ?? 0 } : {}),
      seconds,
    };
    log.info(
      `pulled ${o.display} to ${out} (${format}) in ${seconds.toFixed(1)} s: downloaded ${formatBytes(stats.bytesDownloaded)}` +
        (index ? ` in ${stats.ranges} ranges and ${stats.wholePacks} whole packs` : '') +
        `, reused ${formatBytes(stats.bytesReused)}` +
        (stats.bytesResumed ? `, ${formatBytes(stats.bytesResumed)} from an earlier run` : '') +
        (index ? `; content ${index.contentDigest}` : ''),
    );
    if (o.manifestPath) {
      await writeStageManifest(o.manifestPath, plan, result);
      result.manifestPath = o.manifestPath;
    }
    return result;
  } catch (err) {
    await pool?.close().catch(() => undefined);
    if (err instanceof ContentMismatch) {
      // every part matched, the whole did not: nothing here is worth keeping
      openJournal = undefined;
      await rm(journalPath, { force: true });
      await fh.close().catch(() => undefined);
      if (!device) await rm(partial, { force: true });
      await rm(spoolDir, { recursive: true, force: true });
      throw err;
    }
    // Record what did land, so the rerun the hint suggests continues from there.
    await openJournal?.close().catch(() => undefined);
    await fh.close().catch(() => undefined);
    // rmdir removes the spool folder only when empty
    await rmdir(spoolDir).catch(() => undefined);
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
    await closeBase(base);
  }
}

/** The zero runs of a disk (between entries), for a device that must read them back as zeros. */
function zeroRuns(idx: DiskIndex): { offset: number; length: number }[] {
  const out: { offset: number; length: number }[] = [];
  let next = 0;
  const add = (from: number, to: number) => {
    if (to > from)
      out.push({
        offset: from * idx.blockSize,
        length: Math.min(to * idx.blockSize, idx.virtualSize) - from * idx.blockSize,
      });
  };
  for (let i = 0; i < idx.entryCount; i++) {
    const b = idx.entryBlock[i]!;
    add(next, b);
    next = b + 1;
  }
  add(next, idx.blockCount);
  return out;
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
      ...(r.contentSha256 ? { contentSha256: r.contentSha256 } : {}),
      ...(r.contentDigest ? { contentDigest: r.contentDigest } : {}),
    },
    { published: { reference: r.reference, digest: r.digest } },
  );
  const build = (plan.build ?? plan.config?.build) as BuildInfo | undefined;
  if (build) m.build = build;
  await writeManifest(path, m);
}
