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
import { isChunkedLayout, parseLayoutRef, readChunkedLayout, type ChunkedImage } from './chunked/read.js';
import { inspectImage, type ImageInfo } from './inspect.js';
import { estimateOutputBytes } from './estimate.js';
import { openDiskReader, type DiskReader } from './reader.js';
import { runOutput, type OutputDone } from './outputs.js';
import { verifyOutput } from './verify.js';
import { writeStageManifest } from './convert-manifest.js';
import { defaultThreads, WorkerPool } from './workers.js';
import { validateClusterSize, type Qcow2Compression } from './qcow2.js';

export const OUTPUT_FORMATS = ['qcow2', 'raw', 'raw.zst', 'chunked'] as const;
export type OutputFormat = (typeof OUTPUT_FORMATS)[number];

/** Default chunk size of the chunked format; docs/chunked-format.md gives the measurements. */
export const DEFAULT_CHUNK_SIZE = 16 << 20;
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
  chunkSize?: number;
  tag?: string;
  /** earlier chunked version(s): unchanged chunks reuse their blobs */
  base?: string[];
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
  /** sha256 (hex) of the disk content (the bytes the guest sees) */
  contentSha256: string;
  seconds: number;
  /** disk content converted per second, in MB (10^6) */
  mbPerSecond: number;
  verified: boolean;
  inputFormat: string;
  manifest?: string;
  chunked?: {
    tag: string;
    manifestDigest: string;
    chunkSize: number;
    chunks: number;
    stored: number;
    reused: number;
    compressed: number;
    zero: number;
  };
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
  chunkSize: number;
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
  const chunkSize = o.chunkSize ?? DEFAULT_CHUNK_SIZE;
  if (chunkSize < 1 << 20 || chunkSize > 128 << 20 || chunkSize % 65536 !== 0) {
    throw new UsageError(
      `chunk size ${chunkSize} is not valid`,
      'use 1M to 128M, a multiple of 64K (default 16M)',
    );
  }
  if (o.format !== 'chunked' && o.base?.length)
    throw new UsageError('--base only applies to --format chunked');
  return { level, compression, clusterSize, chunkSize };
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

  // Earlier versions whose blobs unchanged chunks can reuse.
  const bases: ChunkedImage[] = [];
  if (o.format === 'chunked') {
    for (const b of o.base ?? []) {
      const r = await resolveInput(b);
      const { dir, tag } = parseLayoutRef(r.path);
      bases.push(await readChunkedLayout(dir, tag));
    }
    if (mode === 'add-to-layout') {
      const existing = await readChunkedLayout(o.output).catch(() => undefined);
      if (existing) bases.push(existing);
    }
  }

  const reader: DiskReader = await openDiskReader(info, { signal: o.signal });
  const pool = new WorkerPool(
    threads,
    bases.flatMap((b) => b.chunks.map((c) => c.digest)),
  );
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
      build,
      progress: progress(`convert ${o.format}`, info.virtualSize),
      signal: o.signal,
      log,
    });
    if (info.contentDigest && hex(info.contentDigest) !== hex(done.contentSha256)) {
      throw new OrbError(
        'integrity',
        `${info.path}: the decoded disk (${hex(done.contentSha256)}) differs from the image's content digest (${hex(info.contentDigest)})`,
        {
          hint: 'every chunk matched its own digest, so the manifest itself is inconsistent: publish the image again',
        },
      );
    }
    const expected = src.manifest?.image.contentSha256;
    if (expected && hex(expected) !== hex(done.contentSha256)) {
      throw new OrbError(
        'integrity',
        `the input's content (${hex(done.contentSha256)}) differs from its manifest (${hex(expected)})`,
        {
          hint: 'the image changed after the previous stage wrote its manifest; rebuild it or give the image path instead',
        },
      );
    }
    let verified = false;
    if (o.verify) {
      await verifyOutput({
        info,
        output: partial?.partial ?? resolve(o.output),
        format: o.format,
        done,
        tag: o.tag ?? 'latest',
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
      contentSha256: hex(done.contentSha256),
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
