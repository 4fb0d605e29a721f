import { access, mkdir, realpath, stat, constants as fsc } from 'node:fs/promises';
import { basename, dirname, resolve } from 'node:path';
import { OrbError, UsageError } from '../core/errors.js';
import { ensureFreeSpace, freeBytes, partialOutput, type PartialOutput } from '../core/fsutil.js';
import { silentLogger, type Logger } from '../core/log.js';
import {
  manifestImagePath,
  readStageInput,
  type BuildInfo,
  type OrbManifest,
  type StageInput,
} from '../core/stage-manifest-file.js';
import { nullProgress, type Progress } from '../core/progress.js';
import { isChunkedLayout, LayoutReader, parseLayoutRef, readChunkedLayout } from './chunked/read.js';
import { layoutBase, type BaseImage } from './chunked/image.js';
import { inspectImage, type ImageInfo } from './inspect.js';
import { estimateOutputBytes } from './estimate.js';
import { openDiskReader, type DiskReader } from './reader.js';
import { runOutput, type ChunkedSummary, type OutputDone } from './outputs.js';
import { OciLayout } from '../oci/layout.js';
import { MAX_PACK_SIZE } from '../formats/disk-index.js';
import { DISK_V2_ARTIFACT } from '../formats/oci-media.js';
import { verifyOutput } from './verify.js';
import { writeStageManifest } from './convert-manifest.js';
import { defaultThreads, WorkerPool } from './workers.js';
import { validateClusterSize, type Qcow2Compression } from './qcow2.js';

export const OUTPUT_FORMATS = ['qcow2', 'raw', 'raw.zst', 'chunked'] as const;
export type OutputFormat = (typeof OUTPUT_FORMATS)[number];

/**
 * Default pack size of the chunked format (docs/chunked-format-v2.md, "Chosen parameters"): a
 * 60 GB-compressed image is ~56 packs, far below registries' layer limits; each pack stays under
 * every store's object cap.
 */
export const DEFAULT_PACK_SIZE = 1 << 30;
/** smallest pack: a frame is at most ~128 KiB; smaller packs would only multiply layers */
export const MIN_PACK_SIZE = 1 << 20;
export const DEFAULT_ZSTD_LEVEL = 3;
export const DEFAULT_ZLIB_LEVEL = 6;

export interface ConvertOptions {
  /** image path, `oci-layout:DIR[:TAG]`, a chunked layout directory, or an orb manifest (.json) */
  input: string;
  output: string;
  format: OutputFormat;
  /** zstd 1-19 (default 3); zlib 1-9 (default 6) for qcow2 with zlib */
  level?: number;
  /** qcow2 cluster compression (default zstd) */
  compression?: Qcow2Compression;
  clusterSize?: number;
  /** chunked: bytes per pack blob at most (default 1 GiB) */
  packSize?: number;
  tag?: string;
  /** earlier chunked version(s): blocks they hold are referenced, not stored again */
  base?: string[];
  /**
   * published earlier versions, already resolved by the caller from their manifest, config and
   * index (src/transfer/remote-base.ts): their packs stay in the store (at most one)
   */
  remoteBases?: BaseImage[];
  /** with bases: compress every block again into fresh packs (the repack policy's full repack) */
  repack?: boolean;
  threads?: number;
  verify?: boolean;
  /** files the input image may name (backing, data file, extents): exactly these, nothing else */
  allowExternalFiles?: string[];
  /** write `<output>.orb.json` (default true) */
  manifest?: boolean;
  build?: BuildInfo;
  /** tests: pretend the output needs this many bytes (to exercise the free-space check) */
  estimateBytes?: number;
  log?: Logger;
  progress?: (label: string, total?: number) => Progress;
  signal?: AbortSignal;
}

export interface ConvertResult {
  path: string;
  format: OutputFormat;
  virtualSize: number;
  /** input bytes the image format marks as holding data */
  allocatedBytes: number;
  outputBytes: number;
  /** virtual size / output bytes */
  ratio: number;
  /** sha256 (hex) of the output file; for chunked, of the manifest (its digest) */
  sha256: string;
  /** sha256 (hex) of the disk content (the bytes the guest sees); plain-file outputs only */
  contentSha256?: string;
  /** orb2:sha256:<hex>, the chunked format's content identity: chunked output or input */
  contentDigest?: string;
  seconds: number;
  /** disk content converted per second, in MB (10^6) */
  mbPerSecond: number;
  verified: boolean;
  inputFormat: string;
  manifest?: string;
  chunked?: ChunkedSummary;
}

interface ResolvedInput {
  path: string;
  manifest?: OrbManifest;
  /** provenance of the input manifest, recorded (not edited) in ours */
  input?: StageInput;
}

async function resolveInput(input: string): Promise<ResolvedInput> {
  if (input.endsWith('.json')) {
    const { manifest: m, input: record } = await readStageInput(input);
    return {
      path:
        m.image.format === 'chunked' && m.image.chunked
          ? `oci-layout:${manifestImagePath(input, m)}:${m.image.chunked.tag}`
          : manifestImagePath(input, m),
      manifest: m,
      input: record,
    };
  }
  return { path: input };
}

function validate(o: ConvertOptions): {
  level: number;
  compression: Qcow2Compression;
  clusterSize: number;
  packSize: number;
} {
  const compression = o.compression ?? 'zstd';
  const zlib = o.format === 'qcow2' && compression === 'zlib';
  const level = o.level ?? (zlib ? DEFAULT_ZLIB_LEVEL : DEFAULT_ZSTD_LEVEL);
  const max = zlib ? 9 : 19;
  if (!Number.isInteger(level) || level < 1 || level > max) {
    throw new UsageError(
      `level ${level} is out of range for ${zlib ? 'zlib' : 'zstd'}: use 1 to ${max}`,
      zlib ? undefined : 'levels 20-22 need gigabytes of memory per thread and are not offered',
    );
  }
  const clusterSize = o.clusterSize ?? 65536;
  validateClusterSize(clusterSize);
  const packSize = o.packSize ?? DEFAULT_PACK_SIZE;
  if (!Number.isInteger(packSize) || packSize < MIN_PACK_SIZE || packSize > MAX_PACK_SIZE) {
    throw new UsageError(
      `pack size ${packSize} is not valid`,
      "use 1M to 64G (default 1G; at most the target store's largest object: GitHub releases 2,000,000,000 bytes, GitLab 5G, GHCR 10G)",
    );
  }
  if (o.format !== 'chunked' && o.base?.length)
    throw new UsageError('--base only applies to --format chunked');
  return { level, compression, clusterSize, packSize };
}

/** Refuse outputs that would destroy the input or cannot be written, before any work. */
async function checkOutput(
  input: ImageInfo,
  output: string,
  format: OutputFormat,
): Promise<'new' | 'replace' | 'add-to-layout'> {
  const out = resolve(output);
  const inReal = await realpath(input.path).catch(() => resolve(input.path));
  const outReal = await realpath(out).catch(() => out);
  if (inReal === outReal)
    throw new UsageError(`the output ${output} is the input; choose another output path`);
  const st = await stat(out).catch(() => undefined);
  let mode: 'new' | 'replace' | 'add-to-layout' = 'new';
  if (st?.isDirectory()) {
    if (format !== 'chunked')
      throw new UsageError(`the output ${output} is a directory; give a file path for --format ${format}`);
    if (!(await isChunkedLayout(out)))
      throw new UsageError(`the output ${output} exists and is not an OCI layout; choose a new path`);
    mode = 'add-to-layout';
  } else if (st) {
    if (format === 'chunked')
      throw new UsageError(`the output ${output} is a file; --format chunked writes a directory`);
    mode = 'replace';
  }
  const parent = dirname(out);
  await mkdir(parent, { recursive: true }).catch((err: NodeJS.ErrnoException) => {
    throw new OrbError('environment', `cannot create the output directory ${parent}: ${err.message}`);
  });
  const dir = mode === 'add-to-layout' ? out : parent;
  await access(dir, fsc.W_OK).catch((err: NodeJS.ErrnoException) => {
    throw new OrbError(
      'environment',
      `cannot write to ${dir}: ${err.code === 'EROFS' ? 'read-only file system' : err.message}`,
      {
        hint: 'choose an output directory you can write to',
      },
    );
  });
  return mode;
}

export async function convertImage(o: ConvertOptions): Promise<ConvertResult> {
  const log = o.log ?? silentLogger;
  const progress = o.progress ?? (() => nullProgress);
  const started = Date.now();
  const settings = validate(o);
  const src = await resolveInput(o.input);
  const info = await inspectImage(src.path, {
    ...(o.signal ? { signal: o.signal } : {}),
    ...(o.allowExternalFiles ? { allow: o.allowExternalFiles } : {}),
  });
  if (info.external) log.warn(`reading files the input names, as allowed: ${info.external.join(', ')}`);
  const mode = await checkOutput(info, o.output, o.format);
  log.info(`input: ${info.path} (${info.format}, ${info.virtualSize} bytes virtual)`);
  const build = o.build ?? src.manifest?.build;
  const threads = Math.max(1, o.threads ?? defaultThreads());

  // Earlier versions whose blocks are referenced instead of stored again.
  const bases: BaseImage[] = [];
  if (o.format !== 'chunked' && o.remoteBases?.length)
    throw new UsageError('--base only applies to --format chunked');
  if (o.remoteBases?.length && o.verify)
    throw new UsageError(
      '--verify reads the output back, and a published --base leaves its packs in the store',
      'verify after orb pull of the published version, or convert without --verify',
    );
  if ((o.remoteBases?.length ?? 0) > 1)
    throw new UsageError(
      'at most one published image (oci://, s3://, ...) can be a --base',
      'give the others as local layouts',
    );
  if (o.format === 'chunked') {
    for (const b of o.base ?? []) {
      const r = await resolveInput(b);
      const { dir, tag } = parseLayoutRef(r.path);
      const base = await readChunkedLayout(dir, tag);
      if (base.config.virtualSize !== info.virtualSize)
        log.info(
          `base ${dir}: ${base.config.virtualSize} bytes, the input ${info.virtualSize}: blocks are matched by content`,
        );
      bases.push(layoutBase(base));
    }
    for (const b of o.remoteBases ?? []) {
      if (b.index.virtualSize !== info.virtualSize)
        log.info(
          `base ${b.display}: ${b.index.virtualSize} bytes, the input ${info.virtualSize}: blocks are matched by content`,
        );
      log.info(`base: ${b.display} (published; its packs stay there and are referenced)`);
      bases.push(b);
    }
    if (mode === 'add-to-layout') {
      // the natural base of a new version: the tag it replaces, else the layout's latest disk
      const layout = new OciLayout(o.output);
      const existing =
        (await layout.resolve(o.tag ?? 'latest').catch(() => undefined)) ??
        (await layout.readIndex()).manifests.filter((m) => m.artifactType === DISK_V2_ARTIFACT).at(-1);
      if (existing) {
        bases.push(layoutBase(await readChunkedLayout(o.output, existing.digest)));
        log.info(`base: ${o.output} manifest ${existing.digest} (blocks it holds are not stored again)`);
      }
    }
  }

  const reader: DiskReader = await openDiskReader(info, { signal: o.signal });
  const pool = new WorkerPool(threads);
  if (reader instanceof LayoutReader) reader.pool = pool;
  let partial: PartialOutput | undefined;
  let done: OutputDone | undefined;
  try {
    // Worst case first (the data does not compress at all): when that fits, skip the sampled
    // estimate, which costs a second or two of CPU on a large image.
    const worst =
      reader.extents.dataBytes + (4 << 20) + Math.ceil(info.virtualSize / settings.clusterSize) * 8;
    const fitsWorst = o.estimateBytes === undefined && (await freeBytes(resolve(o.output))) >= worst;
    const estimate =
      o.estimateBytes ??
      (fitsWorst
        ? worst
        : (
            await estimateOutputBytes(reader, pool, {
              format: o.format,
              level: settings.level,
              codec: settings.compression,
              clusterSize: settings.clusterSize,
            })
          ).bytes);
    await ensureFreeSpace(resolve(o.output), estimate, `the ${o.format} output`);
    log.info(
      `data to read: ${reader.extents.dataBytes} bytes in ${reader.extents.count} extents; output at most ${estimate} bytes`,
    );
    if (mode !== 'add-to-layout') partial = await partialOutput(resolve(o.output));
    done = await runOutput({
      reader,
      pool,
      format: o.format,
      target: partial?.partial ?? resolve(o.output),
      addToLayout: mode === 'add-to-layout',
      ...settings,
      tag: o.tag ?? 'latest',
      bases,
      ...(o.repack ? { repack: true } : {}),
      build,
      progress: progress(`convert ${o.format}`, info.virtualSize),
      signal: o.signal,
      log,
    });
    // A chunked input needs no check here: its index's root was recomputed when it was read and
    // every block was checked against its digest as it was decoded.
    checkStageContent(src.manifest, done, info);
    let verified = false;
    if (o.verify) {
      await verifyOutput({
        info,
        output: partial?.partial ?? resolve(o.output),
        format: o.format,
        done,
        tag: o.tag ?? 'latest',
        pool,
        progress,
        signal: o.signal,
        log,
      });
      verified = true;
    }
    await reader.close();
    await done.commit?.();
    await partial?.commit();
    const seconds = (Date.now() - started) / 1000;
    const result: ConvertResult = {
      path: resolve(o.output),
      format: o.format,
      virtualSize: info.virtualSize,
      allocatedBytes: reader.extents.dataBytes,
      outputBytes: done.outputBytes,
      ratio: done.outputBytes > 0 ? info.virtualSize / done.outputBytes : 0,
      sha256: hex(done.sha256),
      ...(done.contentSha256 ? { contentSha256: hex(done.contentSha256) } : {}),
      ...((done.contentDigest ?? info.contentDigest)
        ? { contentDigest: done.contentDigest ?? info.contentDigest }
        : {}),
      seconds,
      mbPerSecond: info.virtualSize / 1e6 / Math.max(seconds, 1e-6),
      verified,
      inputFormat: info.format,
      ...(done.chunked ? { chunked: done.chunked } : {}),
    };
    if (o.manifest !== false) result.manifest = await writeStageManifest(result, src, build);
    log.info(
      `wrote ${basename(result.path)}: ${result.outputBytes} bytes, ratio ${result.ratio.toFixed(2)}, ${seconds.toFixed(1)} s`,
    );
    return result;
  } catch (err) {
    await done?.rollback?.();
    await partial?.abort();
    throw translateFsError(err, o.output);
  } finally {
    await reader.close().catch(() => undefined);
    await pool.close();
  }
}

const hex = (d: string) => d.replace(/^sha256:/, '');

/** The previous stage's manifest must describe the disk we read (it may have changed since). */
function checkStageContent(m: OrbManifest | undefined, done: OutputDone, info: ImageInfo): void {
  const pairs: [string | undefined, string | undefined][] = [
    [m?.image.contentSha256, done.contentSha256],
    [m?.image.contentDigest, done.contentDigest ?? info.contentDigest],
  ];
  for (const [want, got] of pairs) {
    if (want && got && hex(want) !== hex(got)) {
      throw new OrbError(
        'integrity',
        `the input's content (${hex(got)}) differs from its manifest (${hex(want)})`,
        {
          hint: 'the image changed after the previous stage wrote its manifest; rebuild it or give the image path instead',
        },
      );
    }
  }
}

/** ENOSPC and friends become errors that say what to do. */
export function translateFsError(err: unknown, output: string): unknown {
  const code = (err as NodeJS.ErrnoException)?.code;
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new OrbError('environment', `the disk holding ${output} is full; nothing was kept`, {
      hint: 'free space or choose another output directory; the estimate before starting was too low for this image',
      cause: err,
    });
  }
  if (code === 'EROFS' || code === 'EACCES' || code === 'EPERM') {
    return new OrbError('environment', `cannot write ${output}: ${(err as Error).message}`, {
      hint: 'choose an output directory you can write to',
      cause: err,
    });
  }
  return err;
}
