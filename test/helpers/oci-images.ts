import { createHash, randomBytes } from 'node:crypto';
import { closeSync, ftruncateSync, openSync, readFileSync, writeSync } from 'node:fs';
import { writeV2Image } from './v2-images.js';

/**
 * Small test disks and chunked (format v2) layouts in the distribution format, the same shape as
 * `orb convert --format chunked` writes (docs/chunked-format.md).
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
  /** the orb2 content identity (what pull and `orb digest` report) */
  contentDigest: string;
  /** sha256:<hex> of the raw disk */
  sha256: string;
  blobs: number;
  storedBytes: number;
}

/**
 * Converts a raw disk into a chunked (format v2) OCI layout under `tag`, independently of
 * `orb convert` (writeV2Image of test/helpers/v2-images.ts), so tests of pull and the stores do
 * not depend on the encoder. Packs close at about `packSize` bytes; `build` is the config's build
 * record.
 */
export async function buildLayout(
  rawPath: string,
  dir: string,
  tag: string,
  packSize: number,
  build: Record<string, unknown> = { os: 'test', arch: 'x86_64', firmware: 'bios' },
): Promise<BuiltLayout> {
  const img = await writeV2Image(rawPath, dir, tag, { packSize, build });
  const packBytes = img.packs.reduce((n, p) => n + p.size, 0);
  return {
    dir,
    tag,
    manifestDigest: img.manifestDigest,
    contentDigest: img.index.contentDigest,
    sha256: sha256(readFileSync(rawPath)),
    blobs: img.packs.length + 2,
    storedBytes: packBytes + img.indexBlob.length + img.manifest.config.size,
  };
}

export function randomTag(): string {
  return 't' + randomBytes(4).toString('hex');
}
