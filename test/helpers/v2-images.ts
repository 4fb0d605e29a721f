import { createHash } from 'node:crypto';
import { closeSync, openSync, readSync, fstatSync } from 'node:fs';
import { Readable } from 'node:stream';
import { zstdCompressSync, constants as Z } from 'node:zlib';
import type { BlobStore } from '../../src/stores/store.js';
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
  DISK_V2_ARTIFACT,
  DISK_V2_CONFIG,
  DISK_V2_INDEX,
  DISK_V2_PACK,
  OCI_MANIFEST,
  type Descriptor,
  type DiskV2Config,
  type ImageManifest,
} from '../../src/formats/oci-media.js';

/**
 * Chunked v2 test images, written the way the format describes (docs/chunked-format.md):
 * 32 KiB blocks, zero blocks absent, blocks deduplicated by sha256 (against the disk itself and
 * an optional base image), runs of new blocks in zstd frames of at most 8 blocks, frames appended
 * to packs closed at `packSize`. A stand-in for `orb convert` until the encoder lands; the tests
 * only need the layout to be what a reader must accept.
 */
export interface V2Image {
  dir: string;
  tag: string;
  manifest: ImageManifest;
  manifestDigest: string;
  config: DiskV2Config;
  index: DiskIndex;
  indexBlob: Buffer;
  packs: Descriptor[];
  /** packs as bytes (for tests that corrupt them) */
  packBytes: Buffer[];
}

export interface V2Options {
  /** close a pack once it reaches this many bytes (default 1 GiB) */
  packSize?: number;
  /** reuse blocks of this image (they stay in its packs, which the new manifest lists again) */
  base?: V2Image;
  level?: number;
  /** the config's build record (smoke tests read the firmware from it) */
  build?: Record<string, unknown>;
}

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest();
const hex = (b: Uint8Array) => 'sha256:' + createHash('sha256').update(b).digest('hex');

export function compressFrame(data: Buffer, level = 3): Buffer {
  return zstdCompressSync(data, {
    params: { [Z.ZSTD_c_compressionLevel]: level, [Z.ZSTD_c_checksumFlag]: 0 },
  });
}

/** Reads a raw disk and writes it as a v2 image into the layout `dir` under `tag`. */
export async function writeV2Image(
  disk: string,
  dir: string,
  tag: string,
  o: V2Options = {},
): Promise<V2Image> {
  const fd = openSync(disk, 'r');
  const size = fstatSync(fd).size;
  const b = new IndexBuilder(size);
  const packSize = o.packSize ?? 1 << 30;
  const known = new Map<string, { frame: number; slot: number }>();
  const packs: Buffer[][] = [];
  const packLen: number[] = [];
  // base packs come first, in the base's order, as publish lists them
  const basePacks = o.base ? o.base.index.packs.length : 0;
  if (o.base) {
    const bi = o.base.index;
    for (const p of bi.packs) b.addPack({ ...p });
    for (let i = 0; i < bi.entryCount; i++) {
      const d = bi.digests.subarray(i * 32, i * 32 + 32).toString('hex');
      if (!known.has(d)) known.set(d, { frame: -1 - bi.entryFrame[i]!, slot: bi.entrySlot[i]! });
    }
  }
  // frames of the base that entries end up using, added lazily (in base offset order at the end)
  const usedBaseFrames = new Set<number>();
  const pending: { block: number; ref: { frame: number; slot: number }; digest: Buffer }[] = [];
  let run: { block: number; data: Buffer; digest: Buffer }[] = [];
  const newFrames: { pack: number; offset: number; length: number; blocks: number }[] = [];
  let curPack = -1;
  const flushRun = () => {
    if (!run.length) return;
    const raw = Buffer.concat(run.map((r) => r.data));
    const z = compressFrame(raw, o.level ?? 3);
    if (curPack < 0 || packLen[curPack]! >= packSize) {
      packs.push([]);
      packLen.push(0);
      curPack = packs.length - 1;
    }
    const f = newFrames.length;
    newFrames.push({ pack: curPack, offset: packLen[curPack]!, length: z.length, blocks: run.length });
    packs[curPack]!.push(z);
    packLen[curPack]! += z.length;
    run.forEach((r, slot) => {
      const ref = { frame: f, slot };
      known.set(r.digest.toString('hex'), ref);
      pending.push({ block: r.block, ref, digest: r.digest });
    });
    run = [];
  };
  const buf = Buffer.alloc(BLOCK_SIZE);
  const blocks = Math.ceil(size / BLOCK_SIZE);
  let lastNew = -2;
  for (let blk = 0; blk < blocks; blk++) {
    buf.fill(0);
    readSync(fd, buf, 0, BLOCK_SIZE, blk * BLOCK_SIZE);
    if (buf.every((x) => x === 0)) continue;
    const d = sha(buf);
    const ref = known.get(d.toString('hex'));
    if (ref) {
      if (ref.frame < 0) usedBaseFrames.add(-1 - ref.frame);
      pending.push({ block: blk, ref, digest: d });
      continue;
    }
    if (run.length && (lastNew !== blk - 1 || run.length >= FRAME_BLOCKS)) flushRun();
    run.push({ block: blk, data: Buffer.from(buf), digest: d });
    lastNew = blk;
  }
  flushRun();
  closeSync(fd);
  const layout = new OciLayout(dir);
  await layout.init();
  // new packs as blobs
  const newPackDescs: Descriptor[] = [];
  for (const parts of packs) {
    const bytes = Buffer.concat(parts);
    const { digest } = await layout.putBytes(bytes);
    newPackDescs.push({ mediaType: DISK_V2_PACK, digest, size: bytes.length });
  }
  // frames: base frames used (their own pack numbers), then new frames (pack numbers shifted)
  const frameIndex = new Map<number, number>(); // base frame -> new frame number
  if (o.base) {
    const bi = o.base.index;
    const sorted = [...usedBaseFrames].sort((x, y) => x - y);
    for (const f of sorted)
      frameIndex.set(
        f,
        b.addFrame(bi.framePack[f]!, bi.frameOffset[f]!, bi.frameLength[f]!, bi.frameBlocks[f]!),
      );
  }
  const firstNew = b.frameCount;
  for (const d of newPackDescs) b.addPack({ digest: d.digest, size: d.size });
  for (const f of newFrames) b.addFrame(basePacks + f.pack, f.offset, f.length, f.blocks);
  pending.sort((x, y) => x.block - y.block);
  for (const e of pending) {
    const frame = e.ref.frame < 0 ? frameIndex.get(-1 - e.ref.frame)! : firstNew + e.ref.frame;
    b.addEntry(e.block, frame, e.ref.slot, e.digest);
  }
  const index = b.finish();
  const indexBlob = encodeIndex(index);
  const idx = await layout.putBytes(indexBlob);
  const config: DiskV2Config = {
    schema: 'orb-disk/v2',
    virtualSize: size,
    blockSize: BLOCK_SIZE,
    contentDigest: index.contentDigest,
    index: idx.digest,
    sourceFormat: 'raw',
    compression: 'zstd',
    level: o.level ?? 3,
    ...(o.build ? { build: o.build } : {}),
  };
  const cfgBytes = Buffer.from(JSON.stringify(config));
  const cfg = await layout.putBytes(cfgBytes);
  const allPacks: Descriptor[] = [...(o.base ? o.base.packs : []), ...newPackDescs];
  // a base pack must be in this layout too (a registry holds it once)
  if (o.base)
    for (const [i, p] of o.base.packs.entries())
      if ((await layout.blobSize(p.digest)) === undefined) await layout.putBytes(o.base.packBytes[i]!);
  const manifest: ImageManifest = {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    artifactType: DISK_V2_ARTIFACT,
    config: { mediaType: DISK_V2_CONFIG, digest: cfg.digest, size: cfgBytes.length },
    layers: [{ mediaType: DISK_V2_INDEX, digest: idx.digest, size: indexBlob.length }, ...allPacks],
    annotations: { [ANN_CONTENT_DIGEST]: index.contentDigest },
  };
  const mBytes = Buffer.from(JSON.stringify(manifest));
  const m = await layout.putBytes(mBytes);
  await layout.tag({ mediaType: OCI_MANIFEST, digest: m.digest, size: mBytes.length }, tag);
  return {
    dir,
    tag,
    manifest,
    manifestDigest: m.digest,
    config,
    index,
    indexBlob,
    packs: allPacks,
    packBytes: [...(o.base ? o.base.packBytes : []), ...packs.map((p) => Buffer.concat(p))],
  };
}

export { hex as sha256Hex };

/**
 * The same image with some parts replaced (hostile variants): pack bytes (named by their new
 * digest, the index's pack table updated to match), or the index blob as given (encoded from a
 * mutated DiskIndex, or any bytes). Config and manifest are rewritten to name what was given.
 */
export async function writeV2Variant(
  img: V2Image,
  dir: string,
  tag: string,
  o: { packBytes?: (Buffer | undefined)[]; indexBlob?: Buffer; mutate?: (idx: DiskIndex) => void },
): Promise<V2Image> {
  const layout = new OciLayout(dir);
  await layout.init();
  const packs = [...img.packs];
  const packBytes = [...img.packBytes];
  const idx: DiskIndex = {
    ...img.index,
    packs: img.index.packs.map((p) => ({ ...p })),
    frameOffset: Float64Array.from(img.index.frameOffset),
    frameLength: Uint32Array.from(img.index.frameLength),
    frameBlocks: Uint8Array.from(img.index.frameBlocks),
    entrySlot: Uint8Array.from(img.index.entrySlot),
    entryFrame: Uint32Array.from(img.index.entryFrame),
  };
  for (const [i, b] of (o.packBytes ?? []).entries()) {
    if (!b) continue;
    const { digest } = await layout.putBytes(b);
    packs[i] = { mediaType: DISK_V2_PACK, digest, size: b.length };
    packBytes[i] = b;
    idx.packs[i] = { digest, size: b.length };
  }
  o.mutate?.(idx);
  const indexBlob = o.indexBlob ?? encodeIndex(idx);
  const ib = await layout.putBytes(indexBlob);
  const config: DiskV2Config = { ...img.config, index: ib.digest };
  const cfgBytes = Buffer.from(JSON.stringify(config));
  const cfg = await layout.putBytes(cfgBytes);
  const manifest: ImageManifest = {
    ...img.manifest,
    config: { mediaType: DISK_V2_CONFIG, digest: cfg.digest, size: cfgBytes.length },
    layers: [{ mediaType: DISK_V2_INDEX, digest: ib.digest, size: indexBlob.length }, ...packs],
  };
  const mBytes = Buffer.from(JSON.stringify(manifest));
  const m = await layout.putBytes(mBytes);
  await layout.tag({ mediaType: OCI_MANIFEST, digest: m.digest, size: mBytes.length }, tag);
  return {
    ...img,
    dir,
    tag,
    manifest,
    manifestDigest: m.digest,
    config,
    index: idx,
    indexBlob,
    packs,
    packBytes,
  };
}

/** sha256 digest of bytes, `sha256:<hex>` */
export const digestOf = hex;

/** Puts an image's blobs and manifest into any store (a stand-in for publish in pull tests). */
export async function pushV2(
  img: Pick<V2Image, 'dir' | 'manifest' | 'manifestDigest'>,
  store: BlobStore,
  tag: string,
): Promise<void> {
  const layout = new OciLayout(img.dir);
  const blobs = [img.manifest.config, ...img.manifest.layers];
  for (const d of blobs) {
    if ((await store.statBlob(d.digest)) !== undefined) continue;
    const bytes = await layout.readBytes(d.digest, 1 << 30);
    await store.putBlob(d, () => Readable.from([bytes]));
  }
  await store.putManifest(await layout.readBytes(img.manifestDigest), OCI_MANIFEST, [tag]);
}
