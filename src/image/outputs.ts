import { OrbError } from '../core/errors.js';
import { sha256File } from '../core/fsutil.js';
import type { Logger } from '../core/log.js';
import type { BuildInfo } from '../core/stage-manifest-file.js';
import type { Progress } from '../core/progress.js';
import { OciLayout } from '../oci/layout.js';
import type { DiskConfig } from '../formats/oci-media.js';
import { ChunkedSink, reusableBlobs, writeChunkedManifest } from './chunked/encode.js';
import type { ChunkedImage } from './chunked/read.js';
import type { Qcow2Compression } from './qcow2.js';
import type { DiskReader } from './reader.js';
import { scanDisk, type UnitSink } from './scan.js';
import { Qcow2Sink, RawSink, ZstSink } from './sinks.js';
import { Hasher, SlotPool, slotCount, type WorkerPool } from './workers.js';

export interface OutputRun {
  reader: DiskReader;
  pool: WorkerPool;
  format: 'qcow2' | 'raw' | 'raw.zst' | 'chunked';
  /** file, or layout directory for chunked */
  target: string;
  /** chunked: write into an existing layout (new blobs + a tag) instead of a fresh directory */
  addToLayout?: boolean;
  level: number;
  compression: Qcow2Compression;
  clusterSize: number;
  chunkSize: number;
  tag: string;
  bases: ChunkedImage[];
  build?: BuildInfo | undefined;
  progress: Progress;
  signal?: AbortSignal | undefined;
  log: Logger;
}

export interface OutputDone {
  outputBytes: number;
  sha256: string;
  contentSha256: string;
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
  /** undo what was written outside the .partial path (new blobs in an existing layout) */
  rollback?(): Promise<void>;
  /** make the result visible (tag it in an existing layout); run after verification */
  commit?(): Promise<void>;
}

/** raw.zst frame size: large enough that independent frames cost under 0.5% in ratio, small
 * enough to keep the buffers in flight (and the RSS) low. */
const ZST_FRAME = 16 << 20;
/** qcow2 and raw units: small enough to keep writes flowing, large enough to amortise messages */
const FILE_UNIT = 8 << 20;

/** Scan the input once, writing one output format; returns sizes and digests. */
export async function runOutput(r: OutputRun): Promise<OutputDone> {
  const threads = r.pool.size;
  const unit =
    r.format === 'chunked'
      ? r.chunkSize
      : r.format === 'raw.zst'
        ? ZST_FRAME
        : Math.max(FILE_UNIT, r.clusterSize);
  const slots = new SlotPool(slotCount(unit, threads), unit);
  const hasher = new Hasher(r.signal);
  if (r.reader.file) hasher.readAhead(r.reader.file, r.reader.extents);
  const scan = (sink: UnitSink) =>
    scanDisk({
      reader: r.reader,
      unitSize: unit,
      slots,
      sink,
      hasher,
      progress: r.progress,
      signal: r.signal,
    });
  try {
    switch (r.format) {
      case 'raw': {
        const sink = await RawSink.create(r.target, r.reader.virtualSize, r.pool);
        try {
          await scan(sink);
          const content = await hasher.digest();
          const bytes = await sink.finish();
          r.progress.done();
          // the output is the content: its sha256 is the content digest (verify re-reads to prove it)
          return { outputBytes: bytes, sha256: content, contentSha256: content };
        } catch (err) {
          await sink.abort();
          throw err;
        }
      }
      case 'raw.zst': {
        const sink = await ZstSink.create(r.target, r.pool, r.level);
        try {
          await scan(sink);
          const content = await hasher.digest();
          const f = await sink.finish();
          r.progress.done();
          return { outputBytes: f.bytes, sha256: f.sha256, contentSha256: content };
        } catch (err) {
          await sink.abort();
          throw err;
        }
      }
      case 'qcow2': {
        const sink = await Qcow2Sink.create(r.target, {
          virtualSize: r.reader.virtualSize,
          clusterSize: r.clusterSize,
          compression: r.compression,
          level: r.level,
          pool: r.pool,
        });
        try {
          await scan(sink);
          const content = await hasher.digest();
          const bytes = await sink.finish();
          r.progress.done();
          return {
            outputBytes: bytes,
            sha256: 'sha256:' + (await sha256File(r.target, undefined, r.signal)),
            contentSha256: content,
          };
        } catch (err) {
          await sink.abort();
          throw err;
        }
      }
      case 'chunked':
        return await chunked(r, scan, hasher);
      default:
        throw new OrbError('internal', `unknown format ${String(r.format)}`);
    }
  } finally {
    await hasher.close();
  }
}

async function chunked(
  r: OutputRun,
  scan: (s: UnitSink) => Promise<unknown>,
  hasher: Hasher,
): Promise<OutputDone> {
  const layout = new OciLayout(r.target);
  await layout.init();
  const reuse = reusableBlobs(r.bases);
  const sink = new ChunkedSink(layout, r.pool, r.level, reuse);
  try {
    await scan(sink);
    const content = await hasher.digest();
    const config: DiskConfig = {
      schema: 'orb-disk/v1',
      virtualSize: r.reader.virtualSize,
      chunkSize: r.chunkSize,
      contentDigest: content,
      sourceFormat: r.reader.info.format,
      compression: 'zstd',
      level: r.level,
      ...(r.build ? { build: r.build as Record<string, unknown> } : {}),
    };
    const layers = sink.layerList;
    const m = await writeChunkedManifest(layout, config, layers, r.addToLayout ? undefined : r.tag);
    r.progress.done();
    const unique = new Map(layers.map((l) => [l.digest, l.size]));
    const blobBytes = [...unique.values()].reduce((a, b) => a + b, 0);
    const s = sink.stats;
    if (m.size > 3_500_000) {
      // registries commonly refuse manifests above about 4 MB (one descriptor per stored chunk)
      r.log.warn(
        `the manifest lists ${layers.length} chunks in ${m.size} bytes; registries often refuse manifests over 4 MB: use a larger --chunk-size`,
      );
    }
    return {
      outputBytes: blobBytes + m.size + m.manifest.config.size,
      sha256: m.digest,
      contentSha256: content,
      chunked: {
        tag: r.tag,
        manifestDigest: m.digest,
        chunkSize: r.chunkSize,
        chunks: s.chunks,
        stored: s.stored,
        reused: s.reused,
        compressed: s.compressed,
        zero: s.zero,
      },
      ...(r.addToLayout
        ? { rollback: () => sink.removeCreated(), commit: () => layout.tag(m.descriptor, r.tag) }
        : {}),
    };
  } catch (err) {
    if (r.addToLayout) await sink.removeCreated();
    throw err;
  }
}
