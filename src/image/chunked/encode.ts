import { copyFile, link, rename, rm, stat, constants as fsc } from 'node:fs/promises';
import { dirname } from 'node:path';
import { OrbError } from '../../core/errors.js';
import { OciLayout } from '../../oci/layout.js';
import {
  ANN_CHUNK_DIGEST,
  ANN_CHUNK_LENGTH,
  ANN_CHUNK_OFFSET,
  ANN_CONTENT_DIGEST,
  ANN_CREATED,
  ANN_TITLE,
  DISK_ARTIFACT,
  DISK_CHUNK_RAW,
  DISK_CHUNK_ZSTD,
  DISK_CONFIG,
  OCI_MANIFEST,
  type Descriptor,
  type DiskConfig,
  type ImageManifest,
} from '../../formats/oci-media.js';
import type { Unit, UnitSink } from '../scan.js';
import type { WorkerPool } from '../workers.js';
import type { ChunkedImage } from './read.js';

/** A blob that can be reused for an unchanged chunk: which layout has it, and its descriptor. */
export interface ReusableBlob {
  layout: OciLayout;
  blob: Descriptor;
}

/** uncompressed chunk digest → reusable blob, from earlier versions (--base, or the output layout itself) */
export function reusableBlobs(images: readonly ChunkedImage[]): Map<string, ReusableBlob> {
  const m = new Map<string, ReusableBlob>();
  for (const img of images)
    for (const c of img.chunks) if (!m.has(c.digest)) m.set(c.digest, { layout: img.layout, blob: c.blob });
  return m;
}

export interface ChunkStats {
  chunks: number;
  zero: number;
  stored: number;
  reused: number;
  /** chunks compressed in this run */
  compressed: number;
  storedBytes: number;
}

/**
 * Writes each non-zero chunk as a blob of `layout`: compressed with zstd in a worker (or kept
 * raw when zstd does not shrink it), or, when its uncompressed digest is in `reuse`, linked
 * from the earlier layout without compressing. Zero chunks produce nothing.
 */
export class ChunkedSink implements UnitSink {
  readonly stats: ChunkStats = { chunks: 0, zero: 0, stored: 0, reused: 0, compressed: 0, storedBytes: 0 };
  private readonly layers = new Map<number, Descriptor>();
  /** blobs this run created (removed again if the run fails) */
  readonly created: string[] = [];
  private readonly blobDir: string;

  constructor(
    private readonly layout: OciLayout,
    private readonly pool: WorkerPool,
    private readonly level: number,
    private readonly reuse: Map<string, ReusableBlob>,
  ) {
    this.blobDir = dirname(layout.blobPath(`sha256:${'0'.repeat(64)}`));
  }

  private annotations(u: Unit, digest: string, ext: string): Record<string, string> {
    return {
      [ANN_CHUNK_OFFSET]: String(u.offset),
      [ANN_CHUNK_LENGTH]: String(u.length),
      [ANN_CHUNK_DIGEST]: digest,
      // `oras pull` writes titled layers as files; a stable name per position is useful there
      [ANN_TITLE]: `chunk-${String(u.index).padStart(6, '0')}.${ext}`,
    };
  }

  private async linkBlob(src: ReusableBlob): Promise<void> {
    const dest = this.layout.blobPath(src.blob.digest);
    if (await stat(dest).catch(() => undefined)) return;
    const from = src.layout.blobPath(src.blob.digest);
    const st = await stat(from).catch(() => undefined);
    if (!st || st.size !== src.blob.size) {
      throw new OrbError(
        'input',
        `base blob ${src.blob.digest} is missing or has the wrong size in ${src.layout.dir}`,
        {
          hint: 'the --base layout is incomplete; convert without --base or restore it',
        },
      );
    }
    const tmp = `${dest}.${process.pid}.partial`;
    // A hard link costs no space and no time; across file systems, copy (reflink where possible).
    await link(from, tmp).catch(() => copyFile(from, tmp, fsc.COPYFILE_FICLONE));
    await rename(tmp, dest);
    this.created.push(dest);
  }

  async process(u: Unit): Promise<void> {
    this.stats.chunks++;
    if (u.hole) {
      this.stats.zero++;
      return;
    }
    const r = await this.pool.run({
      task: 'chunk',
      sab: u.sab,
      off: 0,
      len: u.length,
      level: this.level,
      blobs: this.blobDir,
    });
    if (r.zero) {
      this.stats.zero++;
      return;
    }
    const digest = String(r.digest);
    if (r.reused) {
      const src = this.reuse.get(digest)!;
      await this.linkBlob(src);
      this.layers.set(u.index, {
        ...src.blob,
        annotations: this.annotations(u, digest, src.blob.mediaType === DISK_CHUNK_RAW ? 'raw' : 'zst'),
      });
      this.stats.reused++;
      this.stats.storedBytes += src.blob.size;
      return;
    }
    this.stats.compressed++;
    const blobDigest = String(r.blobDigest);
    if (r.created) this.created.push(this.layout.blobPath(blobDigest));
    const desc: Descriptor = r.raw
      ? { mediaType: DISK_CHUNK_RAW, digest, size: u.length, annotations: this.annotations(u, digest, 'raw') }
      : {
          mediaType: DISK_CHUNK_ZSTD,
          digest: blobDigest,
          size: Number(r.size),
          annotations: this.annotations(u, digest, 'zst'),
        };
    this.layers.set(u.index, desc);
    this.stats.stored++;
    this.stats.storedBytes += desc.size;
  }

  /** Layers in disk order. */
  get layerList(): Descriptor[] {
    return [...this.layers.entries()].sort((a, b) => a[0] - b[0]).map(([, d]) => d);
  }

  async removeCreated(): Promise<void> {
    for (const p of this.created) await rm(p, { force: true });
  }
}

/** The config blob: an OCI image config (so `skopeo inspect` reads it) carrying DiskConfig. */
export function configBlob(c: DiskConfig, created: string): string {
  const build = c.build ?? {};
  const arch = build.arch === 'aarch64' ? 'arm64' : 'amd64';
  const os = build.os === 'windows' ? 'windows' : 'linux';
  return JSON.stringify({
    ...c,
    created,
    architecture: arch,
    os,
    rootfs: { type: 'layers', diff_ids: [] },
    config: {
      Labels: {
        'dev.orb.disk.virtual-size': String(c.virtualSize),
        'dev.orb.disk.chunk-size': String(c.chunkSize),
        'dev.orb.disk.source-format': c.sourceFormat,
        [ANN_CONTENT_DIGEST]: c.contentDigest,
      },
    },
  });
}

/** SOURCE_DATE_EPOCH (reproducible builds convention) makes equal inputs give equal manifest digests. */
function createdTime(): string {
  const epoch = Number(process.env.SOURCE_DATE_EPOCH);
  return new Date(Number.isFinite(epoch) && epoch > 0 ? epoch * 1000 : Date.now()).toISOString();
}

/** Writes config and manifest blobs and points `tag` (when given) at the manifest. */
export async function writeChunkedManifest(
  layout: OciLayout,
  config: DiskConfig,
  layers: Descriptor[],
  tag: string | undefined,
): Promise<{ digest: string; size: number; manifest: ImageManifest; descriptor: Descriptor }> {
  const created = createdTime();
  const cfg = await layout.putBytes(configBlob(config, created));
  const manifest: ImageManifest = {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    artifactType: DISK_ARTIFACT,
    config: { mediaType: DISK_CONFIG, digest: cfg.digest, size: cfg.size },
    layers,
    annotations: { [ANN_CREATED]: created, [ANN_CONTENT_DIGEST]: config.contentDigest },
  };
  const bytes = JSON.stringify(manifest);
  const m = await layout.putBytes(bytes);
  const descriptor: Descriptor = {
    mediaType: OCI_MANIFEST,
    digest: m.digest,
    size: m.size,
    artifactType: DISK_ARTIFACT,
  };
  // `undefined`: the caller tags later (after verifying), so a failed run never moves a tag
  if (tag !== undefined) await layout.tag(descriptor, tag);
  return { ...m, manifest, descriptor };
}
