import { rm } from 'node:fs/promises';
import { OrbError } from '../core/errors.js';
import { sha256File } from '../core/fsutil.js';
import type { Logger } from '../core/log.js';
import type { BuildInfo } from '../core/stage-manifest-file.js';
import type { Progress } from '../core/progress.js';
import { OciLayout } from '../oci/layout.js';
import { ChunkedSink, type EncodeStats } from './chunked/encode.js';
import { linkBasePacks } from './chunked/encode-index.js';
import { writeDiskV2Manifest } from './chunked/manifest.js';
import type { BaseImage } from './chunked/image.js';
import { ANN_BASE_DIGEST, ANN_BASE_REFERENCE } from '../formats/oci-media.js';
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
  /** chunked: a pack is closed before a frame would take it past this many bytes */
  packSize: number;
  tag: string;
  /** chunked: earlier versions whose blocks are referenced instead of stored again */
  bases: BaseImage[];
  /** chunked with bases: compress every base block again into fresh packs */
  repack?: boolean;
  build?: BuildInfo | undefined;
  progress: Progress;
  signal?: AbortSignal | undefined;
  log: Logger;
}

/** What a chunked conversion stored (blocks are 32 KiB of disk): the encoder's counts and more. */
export interface ChunkedSummary extends EncodeStats {
  tag: string;
  manifestDigest: string;
  blockSize: number;
  /** index entries (non-zero blocks) */
  stored: number;
  /** packs the manifest lists */
  packs: number;
  newPacks: number;
  newPackBytes: number;
  indexBytes: number;
}

export interface OutputDone {
  outputBytes: number;
  sha256: string;
  /** sha256:<hex> of the disk content: plain-file outputs (the whole-disk hash) */
  contentSha256?: string;
  /** orb2:sha256:<hex>: chunked outputs (the content root, no extra pass) */
  contentDigest?: string;
  chunked?: ChunkedSummary;
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

/** chunked: units of 128 blocks; frames never cross a unit (one short frame per 4 MiB at worst) */
const CHUNKED_UNIT = 4 << 20;

/** Scan the input once, writing one output format; returns sizes and digests. */
export async function runOutput(r: OutputRun): Promise<OutputDone> {
  if (r.format === 'chunked') return chunked(r);
  const threads = r.pool.size;
  const unit = r.format === 'raw.zst' ? ZST_FRAME : Math.max(FILE_UNIT, r.clusterSize);
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
      default:
        throw new OrbError('internal', `unknown format ${String(r.format)}`);
    }
  } finally {
    await hasher.close();
  }
}

async function chunked(r: OutputRun): Promise<OutputDone> {
  const layout = new OciLayout(r.target);
  await layout.init();
  const threads = r.pool.size;
  const slots = new SlotPool(slotCount(CHUNKED_UNIT, threads), CHUNKED_UNIT);
  const sink = new ChunkedSink({
    layout,
    pool: r.pool,
    level: r.level,
    packSize: r.packSize,
    virtualSize: r.reader.virtualSize,
    bases: r.bases,
    ...(r.repack ? { repack: true } : {}),
  });
  for (const why of sink.repackReasons) r.log.info(`repack: ${why}`);
  const created: string[] = [];
  const rollback = async () => {
    for (const p of [...sink.packs.created, ...created]) await rm(p, { force: true });
  };
  try {
    // no whole-disk hash: the content identity is the root the sink feeds from block digests
    await scanDisk({
      reader: r.reader,
      unitSize: CHUNKED_UNIT,
      slots,
      sink,
      progress: r.progress,
      signal: r.signal,
    });
    const { index, baseRefs } = await sink.finish();
    created.push(...(await linkBasePacks(layout, baseRefs)));
    const remote = r.bases.find((b) => !b.layout);
    const m = await writeDiskV2Manifest(layout, index, {
      sourceFormat: r.reader.info.format,
      level: r.level,
      ...(remote?.reference
        ? {
            annotations: {
              [ANN_BASE_REFERENCE]: remote.reference,
              [ANN_BASE_DIGEST]: remote.manifestDigest,
            },
          }
        : {}),
      ...(r.build ? { build: r.build as Record<string, unknown> } : {}),
    });
    created.push(...m.created);
    if (!r.addToLayout) await layout.tag(m.descriptor, r.tag);
    r.progress.done();
    const s = sink.stats;
    const newPackBytes = sink.packs.packs.reduce((n, p) => n + p.size, 0);
    const packBytes = index.packs.reduce((n, p) => n + p.size, 0);
    r.log.info(
      `blocks: ${s.blocks} (${s.fresh} new in ${s.frames} frames${s.repacked ? `, ${s.repacked} of them repacked from the base` : ''}, ${s.reused} reused from the base, ${s.duplicate} repeated, ${s.zero} zero); new packs: ${sink.packs.packs.length} (${newPackBytes} bytes); index ${m.indexBytes} bytes`,
    );
    return {
      outputBytes: packBytes + m.indexBytes + m.size + m.manifest.config.size,
      sha256: m.digest,
      contentDigest: index.contentDigest,
      chunked: {
        tag: r.tag,
        manifestDigest: m.digest,
        blockSize: index.blockSize,
        blocks: s.blocks,
        zero: s.zero,
        fresh: s.fresh,
        duplicate: s.duplicate,
        reused: s.reused,
        repacked: s.repacked,
        stored: index.entryCount,
        frames: s.frames,
        packs: index.packs.length,
        newPacks: sink.packs.packs.length,
        newPackBytes,
        indexBytes: m.indexBytes,
      },
      ...(r.addToLayout ? { rollback, commit: () => layout.tag(m.descriptor, r.tag) } : {}),
    };
  } catch (err) {
    await sink.abort();
    if (r.addToLayout) await rollback();
    throw err;
  }
}
