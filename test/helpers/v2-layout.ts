import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { zstdCompressSync, constants } from 'node:zlib';
import { OciLayout } from '../../src/oci/layout.js';
import {
  BLOCK_SIZE,
  FRAME_BLOCKS,
  IndexBuilder,
  encodeIndex,
  type DiskIndex,
} from '../../src/formats/disk-index.js';
import {
  ANN_CONTENT_DIGEST,
  ANN_CREATED,
  DISK_V2_ARTIFACT,
  DISK_V2_CONFIG,
  DISK_V2_INDEX,
  DISK_V2_PACK,
  OCI_MANIFEST,
  type Descriptor,
  type ImageManifest,
} from '../../src/formats/oci-media.js';
import type { BlobStore } from '../../src/stores/store.js';

/**
 * A chunked v2 image built from bytes in memory, in an OCI layout: the shape `orb convert
 * --format chunked` writes (32 KiB blocks, zero blocks absent, repeats deduplicated, runs of new
 * blocks in zstd frames of at most 8 blocks, frames concatenated into packs, one index blob).
 * For tests of readers while the converter is built elsewhere.
 */
export interface V2Image {
  dir: string;
  tag: string;
  manifest: ImageManifest;
  manifestBytes: Buffer;
  manifestDigest: string;
  contentDigest: string;
  index: DiskIndex;
  packs: Descriptor[];
  /** compressed bytes of all packs */
  packBytes: number;
}

export async function buildV2Layout(
  disk: Buffer,
  dir: string,
  tag: string,
  opts: { packSize?: number } = {},
): Promise<V2Image> {
  const packSize = opts.packSize ?? 1 << 30;
  const b = new IndexBuilder(disk.length);
  const blocks = Math.ceil(disk.length / BLOCK_SIZE);
  const packs: Buffer[][] = [[]];
  let packLen = 0;
  const frames: { pack: number; offset: number; length: number; blocks: number }[] = [];
  const entries: { block: number; frame: number; slot: number; digest: Buffer }[] = [];
  const known = new Map<string, { frame: number; slot: number }>();
  const zero = Buffer.alloc(BLOCK_SIZE);
  const blockAt = (i: number) => {
    const out = Buffer.alloc(BLOCK_SIZE);
    disk.copy(out, 0, i * BLOCK_SIZE, Math.min(disk.length, (i + 1) * BLOCK_SIZE));
    return out;
  };
  let run: { block: number; data: Buffer; digest: Buffer }[] = [];
  const closeRun = () => {
    if (!run.length) return;
    const data = Buffer.concat(run.map((r) => r.data));
    const z = zstdCompressSync(data, {
      params: { [constants.ZSTD_c_compressionLevel]: 3, [constants.ZSTD_c_checksumFlag]: 0 },
    });
    if (packLen && packLen + z.length > packSize) {
      packs.push([]);
      packLen = 0;
    }
    const frame = frames.length;
    frames.push({ pack: packs.length - 1, offset: packLen, length: z.length, blocks: run.length });
    packs[packs.length - 1]!.push(z);
    packLen += z.length;
    run.forEach((r, slot) => {
      known.set(r.digest.toString('hex'), { frame, slot });
      entries.push({ block: r.block, frame, slot, digest: r.digest });
    });
    run = [];
  };
  for (let i = 0; i < blocks; i++) {
    const data = blockAt(i);
    if (data.equals(zero)) {
      closeRun();
      continue;
    }
    const digest = createHash('sha256').update(data).digest();
    const hex = digest.toString('hex');
    // A repeat of a block of the open run: close the run so the earlier copy has its frame.
    if (!known.has(hex) && run.some((r) => r.digest.equals(digest))) closeRun();
    const again = known.get(hex);
    if (again) {
      closeRun();
      entries.push({ block: i, frame: again.frame, slot: again.slot, digest });
      continue;
    }
    run.push({ block: i, data, digest });
    if (run.length === FRAME_BLOCKS) closeRun();
  }
  closeRun();
  const layout = new OciLayout(dir);
  await layout.init();
  const packDescs: Descriptor[] = [];
  let packBytes = 0;
  for (const parts of packs) {
    const bytes = Buffer.concat(parts);
    if (!bytes.length) continue;
    const d = await layout.putBytes(bytes);
    b.addPack({ digest: d.digest, size: d.size });
    packDescs.push({ mediaType: DISK_V2_PACK, digest: d.digest, size: d.size });
    packBytes += d.size;
  }
  for (const f of frames) b.addFrame(f.pack, f.offset, f.length, f.blocks);
  for (const e of entries) b.addEntry(e.block, e.frame, e.slot, e.digest);
  const index = b.finish();
  const indexBlob = await layout.putBytes(encodeIndex(index));
  const config = {
    schema: 'orb-disk/v2',
    virtualSize: disk.length,
    blockSize: BLOCK_SIZE,
    contentDigest: index.contentDigest,
    index: indexBlob.digest,
    sourceFormat: 'raw',
    compression: 'zstd',
    level: 3,
    build: { os: 'test', arch: 'x86_64', firmware: 'bios' },
  };
  const cfg = await layout.putBytes(JSON.stringify(config));
  const manifest: ImageManifest = {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    artifactType: DISK_V2_ARTIFACT,
    config: { mediaType: DISK_V2_CONFIG, digest: cfg.digest, size: cfg.size },
    layers: [{ mediaType: DISK_V2_INDEX, ...indexBlob }, ...packDescs],
    annotations: { [ANN_CONTENT_DIGEST]: index.contentDigest, [ANN_CREATED]: '2026-01-01T00:00:00Z' },
  };
  const manifestBytes = Buffer.from(JSON.stringify(manifest));
  const m = await layout.putBytes(manifestBytes);
  await layout.tag(
    { mediaType: OCI_MANIFEST, digest: m.digest, size: m.size, artifactType: DISK_V2_ARTIFACT },
    tag,
  );
  return {
    dir,
    tag,
    manifest,
    manifestBytes,
    manifestDigest: m.digest,
    contentDigest: index.contentDigest,
    index,
    packs: packDescs,
    packBytes,
  };
}

/** Copies a built image into any store (a registry) under `tag`. */
export async function pushV2(image: V2Image, store: BlobStore, tag: string): Promise<void> {
  const layout = new OciLayout(image.dir);
  for (const d of [image.manifest.config, ...image.manifest.layers])
    await store.putBlob(d, (offset) => createReadStream(layout.blobPath(d.digest), { start: offset }));
  await store.putManifest(image.manifestBytes, OCI_MANIFEST, [tag]);
}
