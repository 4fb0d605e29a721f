import { webcrypto } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { zstdDecompress } from 'node:zlib';
import { OrbError } from '../../core/errors.js';
import {
  MAX_CONFIG_BYTES,
  MAX_MANIFEST_BYTES,
  MAX_VIRTUAL_SIZE,
  checkDescriptor,
  checkTag,
  clip,
  isObject,
  parseJsonObject,
  quoteUntrusted,
  untrustedError,
} from '../../core/untrusted.js';
import { checkDiskConfig, diskRegions } from '../../oci/disk-check.js';
import { OciLayout } from '../../oci/layout.js';
import {
  DISK_ARTIFACT,
  DISK_CHUNK_RAW,
  DISK_CONFIG,
  type DiskConfig,
  type ImageManifest,
} from '../../formats/oci-media.js';
import type { ChunkRef } from '../../formats/chunked-index.js';
import { Extents } from '../extents.js';
import type { DiskReader, ImageInfo } from '../disk.js';

export type { ChunkRef } from '../../formats/chunked-index.js';

export interface ChunkedImage {
  layout: OciLayout;
  tag: string;
  manifest: ImageManifest;
  manifestDigest: string;
  manifestSize: number;
  config: DiskConfig;
  /** stored chunks in disk order; everything between them is zeros */
  chunks: ChunkRef[];
  /** sum of the stored blob sizes (compressed) */
  storedBytes: number;
}

export async function isChunkedLayout(dir: string): Promise<boolean> {
  return !!(await stat(join(dir, 'oci-layout')).catch(() => undefined));
}

/** `oci-layout:DIR[:TAG]` or a plain directory path → directory and tag (if given). */
export function parseLayoutRef(ref: string): { dir: string; tag?: string } {
  if (!ref.startsWith('oci-layout:')) return { dir: ref };
  const rest = ref.slice('oci-layout:'.length);
  const i = rest.lastIndexOf(':');
  return i > 0 ? { dir: rest.slice(0, i), tag: rest.slice(i + 1) } : { dir: rest };
}

/**
 * Reads and validates the manifest, config and chunk list of a chunked image. `tag` defaults
 * to the layout's only orb disk, else `latest`.
 */
export async function readChunkedLayout(dir: string, tag?: string): Promise<ChunkedImage> {
  const layout = new OciLayout(dir);
  if (!(await layout.isLayout())) {
    throw new OrbError('input', `${dir} is not an OCI image layout (no oci-layout file)`, {
      hint: 'give a directory written by orb convert --format chunked',
    });
  }
  if (tag === undefined) {
    const disks = (await layout.readIndex()).manifests.filter((m) => m.artifactType === DISK_ARTIFACT);
    tag =
      disks.length === 1
        ? checkTag(
            disks[0]!.annotations?.['org.opencontainers.image.ref.name'] ?? 'latest',
            `${dir}/index.json ref.name`,
          )
        : 'latest';
  }
  const desc = await layout.resolve(tag);
  const where = `${dir}:${clip(tag)}`;
  if (desc.size > MAX_MANIFEST_BYTES)
    throw untrustedError(`${where}: manifest size`, `is more than ${MAX_MANIFEST_BYTES} bytes`, desc.size);
  const bytes = await layout.readBytes(desc.digest);
  const json = parseJsonObject(bytes, `${where}: manifest`, MAX_MANIFEST_BYTES);
  if (
    json.artifactType !== DISK_ARTIFACT ||
    !isObject(json.config) ||
    json.config.mediaType !== DISK_CONFIG
  ) {
    throw new OrbError(
      'input',
      `${where} is not an orb disk image (artifactType ${quoteUntrusted(json.artifactType)})`,
      {
        hint: 'give a layout written by orb convert --format chunked',
      },
    );
  }
  if (!Array.isArray(json.layers))
    throw untrustedError(`${where}: manifest layers`, 'is not an array', json.layers);
  const manifest: ImageManifest = {
    ...(json as unknown as ImageManifest),
    config: checkDescriptor(json.config, `${where}: manifest config`, MAX_CONFIG_BYTES),
    layers: json.layers.map((l, i) =>
      checkDescriptor(l, `${where}: manifest layers[${i}]`, MAX_VIRTUAL_SIZE),
    ),
  };
  const config = checkDiskConfig(await layout.readBytes(manifest.config.digest, MAX_CONFIG_BYTES), where);
  if (!(config.chunkSize > 0))
    throw untrustedError(`${where}: disk config chunkSize`, 'is missing', config.chunkSize);
  const chunks: ChunkRef[] = diskRegions(manifest, config.virtualSize, where).map((c, index) => ({
    index,
    offset: c.region.offset,
    length: c.region.length,
    digest: c.region.digest,
    blob: c.layer,
  }));
  // diskRegions checked overlaps in any order; readers walk the chunks in disk order.
  chunks.sort((a, b) => a.offset - b.offset);
  const storedBytes = chunks.reduce((n, c) => n + c.blob.size, 0);
  return {
    layout,
    tag,
    manifest,
    manifestDigest: desc.digest,
    manifestSize: bytes.length,
    config,
    chunks,
    storedBytes,
  };
}

const inflate = promisify(zstdDecompress);

/**
 * Reads one chunk's blob and returns its uncompressed bytes, after checking the blob digest and
 * the uncompressed sha256 (`ANN_CHUNK_DIGEST`). Decompression and hashing run off the main
 * thread (libuv pool), so several chunks decode in parallel.
 */
export async function decompressChunk(layout: OciLayout, chunk: ChunkRef): Promise<Buffer> {
  const blob = await readFile(layout.blobPath(chunk.blob.digest)).catch((err: Error) => {
    throw new OrbError(
      'input',
      `chunk at offset ${chunk.offset}: blob ${chunk.blob.digest} is missing from ${layout.dir}: ${err.message}`,
    );
  });
  if (blob.length !== chunk.blob.size || (await sha256(blob)) !== chunk.blob.digest) {
    throw new OrbError(
      'integrity',
      `chunk at offset ${chunk.offset}: blob ${chunk.blob.digest} in ${layout.dir} is corrupt (size or digest mismatch)`,
    );
  }
  return decodeChunkBlob(blob, chunk);
}

/** Decompress and verify a blob already in memory (the OCI pull path has it from the wire). */
export async function decodeChunkBlob(blob: Buffer, chunk: ChunkRef): Promise<Buffer> {
  let plain: Buffer;
  if (chunk.blob.mediaType === DISK_CHUNK_RAW) plain = blob;
  else {
    try {
      plain = await inflate(blob, { maxOutputLength: chunk.length });
    } catch (err) {
      throw new OrbError(
        'integrity',
        `chunk at offset ${chunk.offset} does not decompress: ${(err as Error).message}`,
      );
    }
  }
  if (plain.length !== chunk.length || (await sha256(plain)) !== chunk.digest) {
    throw new OrbError(
      'integrity',
      `chunk at offset ${chunk.offset} decodes to other bytes than its digest ${chunk.digest}`,
    );
  }
  return plain;
}

async function sha256(data: Uint8Array): Promise<string> {
  const d = await webcrypto.subtle.digest('SHA-256', data);
  return 'sha256:' + Buffer.from(d).toString('hex');
}

/** A DiskReader over a chunked image: stored chunks are the data extents, gaps are zeros. */
class ChunkedReader implements DiskReader {
  readonly extents: Extents;
  private readonly cache = new Map<number, Promise<Buffer>>();
  constructor(
    readonly info: ImageInfo,
    private readonly img: ChunkedImage,
  ) {
    this.extents = new Extents(img.config.virtualSize);
    for (const c of img.chunks) this.extents.add(c.offset, c.length);
  }
  get virtualSize(): number {
    return this.img.config.virtualSize;
  }
  /** index of the first chunk that ends after `offset` */
  private indexAt(offset: number): number {
    const cs = this.img.chunks;
    let lo = 0;
    let hi = cs.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (cs[mid]!.offset + cs[mid]!.length <= offset) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
  private decoded(c: ChunkRef): Promise<Buffer> {
    let p = this.cache.get(c.index);
    if (!p) {
      p = decompressChunk(this.img.layout, c);
      this.cache.set(c.index, p);
      // keep the few most recent chunks: reads arrive in disk order
      while (this.cache.size > 3) this.cache.delete(this.cache.keys().next().value!);
    }
    return p;
  }
  async read(offset: number, target: Uint8Array): Promise<void> {
    let pos = offset;
    const end = offset + target.length;
    while (pos < end) {
      const c = this.img.chunks[this.indexAt(pos)];
      if (!c || c.offset > pos) {
        // between chunks: zeros up to the next chunk
        const stop = Math.min(end, c ? c.offset : end);
        target.fill(0, pos - offset, stop - offset);
        pos = stop;
        continue;
      }
      const data = await this.decoded(c);
      const stop = Math.min(end, c.offset + c.length);
      target.set(data.subarray(pos - c.offset, stop - c.offset), pos - offset);
      pos = stop;
    }
  }
  async close(): Promise<void> {
    this.cache.clear();
  }
}

export async function openChunkedReader(info: ImageInfo): Promise<DiskReader> {
  const { dir, tag } = parseLayoutRef(info.path);
  return new ChunkedReader(info, await readChunkedLayout(dir, info.tag ?? tag));
}
