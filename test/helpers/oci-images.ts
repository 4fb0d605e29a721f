import { createHash, randomBytes } from 'node:crypto';
import { closeSync, ftruncateSync, openSync, readFileSync, writeSync } from 'node:fs';
import { zstdCompressSync } from 'node:zlib';
import { OciLayout } from '../../src/oci/layout.js';
import { BLOCK_SIZE, FRAME_BLOCKS, IndexBuilder, encodeIndex } from '../../src/formats/disk-index.js';
import {
  ANN_CONTENT_DIGEST,
  DISK_V2_ARTIFACT,
  DISK_V2_CONFIG,
  DISK_V2_INDEX,
  DISK_V2_PACK,
  OCI_MANIFEST,
  type Descriptor,
  type ImageManifest,
} from '../../src/formats/oci-media.js';

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
 * Converts a raw disk into a chunked (format v2) OCI layout under `tag`, written independently of
 * `orb convert` (so tests of pull and the stores do not depend on the encoder): 32 KiB blocks,
 * zero blocks absent, repeated blocks stored once, runs of up to 8 new blocks per zstd frame,
 * frames appended to packs of about `packSize` bytes. `build` is the config's build record.
 */
export async function buildLayout(
  rawPath: string,
  dir: string,
  tag: string,
  packSize: number,
  build: Record<string, unknown> = { os: 'test', arch: 'x86_64', firmware: 'bios' },
): Promise<BuiltLayout> {
  const layout = new OciLayout(dir);
  await layout.init();
  const data = readFileSync(rawPath);
  const ib = new IndexBuilder(data.length);
  const seen = new Map<string, { frame: number; slot: number }>();
  const packs: Buffer[][] = [];
  let cur: Buffer[] = [];
  let curBytes = 0;
  const frames: { pack: number; offset: number; length: number; blocks: number }[] = [];
  const entries: { block: number; ref?: { frame: number; slot: number }; digest: Buffer }[] = [];
  const blocks = Math.ceil(data.length / BLOCK_SIZE);
  let run: { block: number; buf: Buffer; digest: Buffer }[] = [];
  const flush = () => {
    if (!run.length) return;
    const z = zstdCompressSync(Buffer.concat(run.map((r) => r.buf)));
    if (curBytes && curBytes + z.length > packSize) {
      packs.push(cur);
      cur = [];
      curBytes = 0;
    }
    frames.push({ pack: packs.length, offset: curBytes, length: z.length, blocks: run.length });
    cur.push(z);
    curBytes += z.length;
    run.forEach((r, slot) => {
      const e = entries.find((x) => x.block === r.block)!;
      e.ref = { frame: frames.length - 1, slot };
      seen.set(r.digest.toString('hex'), e.ref);
    });
    run = [];
  };
  for (let b = 0; b < blocks; b++) {
    const buf = Buffer.alloc(BLOCK_SIZE);
    data.copy(buf, 0, b * BLOCK_SIZE, Math.min(data.length, (b + 1) * BLOCK_SIZE));
    if (buf.every((x) => x === 0)) {
      flush();
      continue;
    }
    const digest = createHash('sha256').update(buf).digest();
    const known = seen.get(digest.toString('hex')) ?? run.find((r) => r.digest.equals(digest));
    if (known && 'frame' in known) {
      flush();
      entries.push({ block: b, ref: known, digest });
      continue;
    }
    if (known) {
      // a repeat of a block waiting in the current run: it gets its slot when the run is flushed
      flush();
      entries.push({ block: b, ref: seen.get(digest.toString('hex'))!, digest });
      continue;
    }
    entries.push({ block: b, digest });
    run.push({ block: b, buf, digest });
    if (run.length === FRAME_BLOCKS) flush();
  }
  flush();
  if (cur.length) packs.push(cur);
  let storedBytes = 0;
  const packDescs: Descriptor[] = [];
  for (const p of packs) {
    const d = await layout.putBytes(Buffer.concat(p));
    storedBytes += d.size;
    packDescs.push({ mediaType: DISK_V2_PACK, digest: d.digest, size: d.size });
    ib.addPack({ digest: d.digest, size: d.size });
  }
  for (const f of frames) ib.addFrame(f.pack, f.offset, f.length, f.blocks);
  for (const e of entries) ib.addEntry(e.block, e.ref!.frame, e.ref!.slot, e.digest);
  const idx = ib.finish();
  const indexBlob = await layout.putBytes(encodeIndex(idx));
  storedBytes += indexBlob.size;
  const config = {
    schema: 'orb-disk/v2',
    virtualSize: data.length,
    blockSize: BLOCK_SIZE,
    contentDigest: idx.contentDigest,
    index: indexBlob.digest,
    sourceFormat: 'raw',
    compression: 'zstd',
    level: 3,
    build,
  };
  const cfg = await layout.putBytes(JSON.stringify(config));
  const manifest: ImageManifest = {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    artifactType: DISK_V2_ARTIFACT,
    config: { mediaType: DISK_V2_CONFIG, digest: cfg.digest, size: cfg.size },
    layers: [{ mediaType: DISK_V2_INDEX, digest: indexBlob.digest, size: indexBlob.size }, ...packDescs],
    annotations: { [ANN_CONTENT_DIGEST]: idx.contentDigest },
  };
  const m = await layout.putBytes(JSON.stringify(manifest));
  await layout.tag(
    { mediaType: OCI_MANIFEST, digest: m.digest, size: m.size, artifactType: DISK_V2_ARTIFACT },
    tag,
  );
  return {
    dir,
    tag,
    manifestDigest: m.digest,
    contentDigest: idx.contentDigest,
    sha256: sha256(data),
    blobs: packDescs.length + 2,
    storedBytes: storedBytes + cfg.size,
  };
}

export function randomTag(): string {
  return 't' + randomBytes(4).toString('hex');
}
