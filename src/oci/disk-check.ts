import {
  MAX_CHUNK_LENGTH,
  MAX_CONFIG_BYTES,
  MAX_VIRTUAL_SIZE,
  boundedInt,
  isObject,
  parseJsonObject,
  sha256Digest,
  untrustedError,
} from '../core/untrusted.js';
import {
  ANN_CHUNK_DIGEST,
  ANN_CHUNK_LENGTH,
  ANN_CHUNK_OFFSET,
  DISK_CHUNK_RAW,
  DISK_CHUNK_ZSTD,
  type Descriptor,
  type DiskConfig,
  type ImageManifest,
} from '../formats/oci-media.js';

/**
 * The checks of a chunked disk image's config and chunk list, before anything is allocated or
 * fetched: shared by `orb pull` (src/transfer/pull-plan.ts) and the chunked layout reader
 * (src/image/chunked/read.ts), so both refuse the same hostile images with the same messages.
 */
export interface DiskRegion {
  offset: number;
  length: number;
  /** sha256:<hex> of the region's bytes (uncompressed) */
  digest: string;
}

/** A compressed chunk is smaller than its data (else it is stored raw); allow zstd's frame overhead. */
export function zstdBound(length: number): number {
  return length + (length >> 7) + (64 << 10);
}

/** The disk config blob's fields, checked: schema, virtual size within bounds, content digest. */
export function checkDiskConfig(bytes: Buffer, display: string): DiskConfig {
  const field = `${display}: disk config`;
  const c = parseJsonObject(bytes, field, MAX_CONFIG_BYTES);
  if (c.schema !== 'orb-disk/v1') throw untrustedError(`${field} schema`, 'is not orb-disk/v1', c.schema);
  const virtualSize = boundedInt(c.virtualSize, `${field} virtualSize`, 1, MAX_VIRTUAL_SIZE, false);
  sha256Digest(c.contentDigest, `${field} contentDigest`);
  if (c.chunkSize !== undefined) boundedInt(c.chunkSize, `${field} chunkSize`, 1, MAX_CHUNK_LENGTH, false);
  if (c.build !== undefined && !isObject(c.build))
    throw untrustedError(`${field} build`, 'is not an object', c.build);
  return { ...(c as unknown as DiskConfig), virtualSize };
}

/**
 * The chunks of a disk manifest: media types, offsets, lengths and digests checked, every chunk
 * inside the disk and no two overlapping (shared with `orb convert` of a chunked layout).
 */
export function diskRegions(
  manifest: ImageManifest,
  virtualSize: number,
  display: string,
): { layer: Descriptor; kind: 'zstd' | 'raw'; region: DiskRegion }[] {
  const out = manifest.layers.map((l, i) => {
    const where = `${display}: manifest layers[${i}]`;
    if (l.mediaType !== DISK_CHUNK_ZSTD && l.mediaType !== DISK_CHUNK_RAW)
      throw untrustedError(`${where} mediaType`, 'is not an orb disk chunk', l.mediaType);
    const a = l.annotations ?? {};
    const kind: 'zstd' | 'raw' = l.mediaType === DISK_CHUNK_RAW ? 'raw' : 'zstd';
    const region: DiskRegion = {
      offset: boundedInt(a[ANN_CHUNK_OFFSET], `${where} ${ANN_CHUNK_OFFSET}`, 0, virtualSize - 1),
      length: boundedInt(a[ANN_CHUNK_LENGTH], `${where} ${ANN_CHUNK_LENGTH}`, 1, MAX_CHUNK_LENGTH),
      digest: sha256Digest(
        a[ANN_CHUNK_DIGEST] ?? (kind === 'raw' ? l.digest : undefined),
        `${where} ${ANN_CHUNK_DIGEST}`,
      ),
    };
    if (region.offset + region.length > virtualSize)
      throw untrustedError(
        `${where}`,
        `is a chunk at ${region.offset}+${region.length} beyond the disk end ${virtualSize}`,
      );
    if (kind === 'raw' && (l.size !== region.length || l.digest !== region.digest))
      throw untrustedError(
        `${where}`,
        'is an uncompressed chunk whose size or digest disagrees with its annotations',
      );
    if (kind === 'zstd' && (l.size < 1 || l.size > zstdBound(region.length)))
      throw untrustedError(
        `${where} size`,
        `is not a plausible compressed size for ${region.length} bytes`,
        l.size,
      );
    return { layer: l, kind, region };
  });
  checkOverlaps(
    out.map((c) => c.region),
    display,
  );
  return out;
}

function checkOverlaps(regions: DiskRegion[], display: string): void {
  const sorted = [...regions].sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < sorted.length; i++) {
    const p = sorted[i - 1]!;
    if (p.offset + p.length > sorted[i]!.offset)
      throw untrustedError(
        `${display}: manifest layers`,
        `overlap (chunks at ${p.offset} and ${sorted[i]!.offset})`,
      );
  }
}
