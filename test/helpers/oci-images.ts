import { createHash, randomBytes } from 'node:crypto';
import { closeSync, ftruncateSync, openSync, readFileSync, writeSync } from 'node:fs';
import { zstdCompressSync } from 'node:zlib';
import { OciLayout } from '../../src/oci/layout.js';
import {
  ANN_CHUNK_DIGEST,
  ANN_CHUNK_LENGTH,
  ANN_CHUNK_OFFSET,
  ANN_CONTENT_DIGEST,
  DISK_ARTIFACT,
  DISK_CHUNK_RAW,
  DISK_CHUNK_ZSTD,
  DISK_CONFIG,
  OCI_MANIFEST,
  type Descriptor,
  type ImageManifest,
} from '../../src/formats/oci-media.js';

/**
 * Small test disks and chunked layouts in the distribution format (the same shape as
 * `orb convert --format chunked`): zero chunks absent, each other chunk a zstd blob (or raw when
 * zstd does not shrink it) annotated with offset, length and content digest.
 */
export function sha256(data: Uint8Array): string {
  return 'sha256:' + createHash('sha256').update(data).digest('hex');
}

/** Deterministic pseudo-random bytes (compressible by about half when `text` is set). */
export function pattern(seed: number, n: number, text = false): Buffer {
  const out = Buffer.alloc(n);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < n; i += 4) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    if (text) {
      // letters from a small alphabet: zstd halves it, like file-system content
      out[i] = 97 + (x & 15);
      if (i + 1 < n) out[i + 1] = 97 + ((x >>> 4) & 15);
      if (i + 2 < n) out[i + 2] = 32;
      if (i + 3 < n) out[i + 3] = 97 + ((x >>> 8) & 15);
    } else out.writeUInt32LE(x, i);
  }
  return out.subarray(0, n);
}

export interface DiskSpec {
  size: number;
  chunkSize: number;
  /** which chunks hold data (others are zero); default: 3 of every 4 */
  data?: (index: number) => boolean;
  /** seed per chunk (change it to change a chunk) */
  seed?: (index: number) => number;
  /** incompressible data (raw chunks) instead of compressible */
  random?: boolean;
}

/** Writes a sparse raw disk; returns its sha256. */
export function makeDisk(path: string, spec: DiskSpec): string {
  const fd = openSync(path, 'w');
  const hash = createHash('sha256');
  try {
    ftruncateSync(fd, spec.size);
    for (let i = 0, off = 0; off < spec.size; i++, off += spec.chunkSize) {
      const n = Math.min(spec.chunkSize, spec.size - off);
      if (spec.data ? spec.data(i) : i % 4 !== 3) {
        const buf = pattern(spec.seed ? spec.seed(i) : i + 1, n, !spec.random);
        writeSync(fd, buf, 0, n, off);
        hash.update(buf);
      } else hash.update(Buffer.alloc(n));
    }
  } finally {
    closeSync(fd);
  }
  return hash.digest('hex');
}

export interface BuiltLayout {
  dir: string;
  tag: string;
  manifestDigest: string;
  contentDigest: string;
  blobs: number;
  storedBytes: number;
}

/** Chunks a raw disk into an OCI layout under `tag`. */
export async function buildLayout(
  rawPath: string,
  dir: string,
  tag: string,
  chunkSize: number,
): Promise<BuiltLayout> {
  const layout = new OciLayout(dir);
  await layout.init();
  const data = readFileSync(rawPath);
  const layers: Descriptor[] = [];
  let storedBytes = 0;
  for (let off = 0; off < data.length; off += chunkSize) {
    const chunk = data.subarray(off, Math.min(data.length, off + chunkSize));
    if (chunk.every((b) => b === 0)) continue;
    const z = zstdCompressSync(chunk);
    const raw = z.length >= chunk.length;
    const blob = raw ? chunk : z;
    const d = await layout.putBytes(blob);
    storedBytes += d.size;
    layers.push({
      mediaType: raw ? DISK_CHUNK_RAW : DISK_CHUNK_ZSTD,
      digest: d.digest,
      size: d.size,
      annotations: {
        [ANN_CHUNK_OFFSET]: String(off),
        [ANN_CHUNK_LENGTH]: String(chunk.length),
        [ANN_CHUNK_DIGEST]: sha256(chunk),
      },
    });
  }
  const contentDigest = sha256(data);
  const config = {
    schema: 'orb-disk/v1',
    virtualSize: data.length,
    chunkSize,
    contentDigest,
    sourceFormat: 'raw',
    compression: 'zstd',
    level: 3,
    build: { os: 'test', arch: 'x86_64', firmware: 'bios' },
    architecture: 'amd64',
    os: 'linux',
    rootfs: { type: 'layers', diff_ids: [] },
  };
  const cfg = await layout.putBytes(JSON.stringify(config));
  const manifest: ImageManifest = {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    artifactType: DISK_ARTIFACT,
    config: { mediaType: DISK_CONFIG, digest: cfg.digest, size: cfg.size },
    layers,
    annotations: { [ANN_CONTENT_DIGEST]: contentDigest },
  };
  const m = await layout.putBytes(JSON.stringify(manifest));
  await layout.tag(
    { mediaType: OCI_MANIFEST, digest: m.digest, size: m.size, artifactType: DISK_ARTIFACT },
    tag,
  );
  return {
    dir,
    tag,
    manifestDigest: m.digest,
    contentDigest,
    blobs: layers.length + 1,
    storedBytes: storedBytes + cfg.size,
  };
}

export function randomTag(): string {
  return 't' + randomBytes(4).toString('hex');
}
