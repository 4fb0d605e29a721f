import { OrbError } from '../core/errors.js';
import {
  MAX_CONFIG_BYTES,
  boundedInt,
  isObject,
  parseJsonObject,
  sha256Digest,
  untrustedError,
} from '../core/untrusted.js';
import {
  BLOCK_SIZE,
  MAX_INDEX_BLOB,
  MAX_PACK_SIZE,
  MAX_PACKS,
  MAX_VIRTUAL_SIZE_V2,
  ROOT_PREFIX,
  type DiskIndex,
} from '../formats/disk-index.js';
import { decodeFrame, decodeIndex } from '../formats/disk-index-decode.js';
import {
  ANN_CONTENT_DIGEST,
  DISK_V2_CONFIG,
  DISK_V2_INDEX,
  DISK_V2_PACK,
  type Descriptor,
  type DiskV2Config,
  type ImageManifest,
} from '../formats/oci-media.js';

/**
 * The checks of a v2 chunked disk image (docs/chunked-format.md) before anything is allocated or
 * fetched, shared by every reader (`orb pull`, the layout reader behind `orb convert`, `orb
 * digest`, `orb serve`) so all refuse the same hostile images with the same messages.
 */
export interface DiskV2Layers {
  index: Descriptor;
  packs: Descriptor[];
}

/** layers[0] is the index, every other layer a pack (distinct, bounded). */
export function checkDiskV2Manifest(manifest: ImageManifest, display: string): DiskV2Layers {
  if (manifest.config.mediaType !== DISK_V2_CONFIG)
    throw untrustedError(
      `${display}: manifest config mediaType`,
      `is not ${DISK_V2_CONFIG}`,
      manifest.config.mediaType,
    );
  const [index, ...packs] = manifest.layers;
  if (!index || index.mediaType !== DISK_V2_INDEX)
    throw untrustedError(
      `${display}: manifest layers[0] mediaType`,
      `is not ${DISK_V2_INDEX}`,
      index?.mediaType,
    );
  if (index.size > MAX_INDEX_BLOB)
    throw untrustedError(`${display}: index size`, `is above ${MAX_INDEX_BLOB} bytes`, index.size);
  if (packs.length > MAX_PACKS)
    throw untrustedError(`${display}: manifest`, `lists ${packs.length} packs (at most ${MAX_PACKS})`);
  const seen = new Set<string>();
  packs.forEach((p, i) => {
    const where = `${display}: manifest layers[${i + 1}]`;
    if (p.mediaType !== DISK_V2_PACK)
      throw untrustedError(`${where} mediaType`, `is not ${DISK_V2_PACK}`, p.mediaType);
    if (p.size < 1 || p.size > MAX_PACK_SIZE) throw untrustedError(`${where} size`, 'is not 1..2^36', p.size);
    if (seen.has(p.digest)) throw untrustedError(where, `lists pack ${p.digest} twice`);
    seen.add(p.digest);
  });
  return { index, packs };
}

export function contentRootOf(value: unknown, field: string): string {
  if (typeof value !== 'string' || !/^orb2:sha256:[0-9a-f]{64}$/.test(value))
    throw untrustedError(field, `is not ${ROOT_PREFIX}<64 hex>`, value);
  return value;
}

/** The config blob's fields, checked. */
export function checkDiskV2Config(bytes: Buffer, display: string): DiskV2Config {
  const field = `${display}: disk config`;
  const c = parseJsonObject(bytes, field, MAX_CONFIG_BYTES);
  if (c.schema !== 'orb-disk/v2') throw untrustedError(`${field} schema`, 'is not orb-disk/v2', c.schema);
  const virtualSize = boundedInt(c.virtualSize, `${field} virtualSize`, 512, MAX_VIRTUAL_SIZE_V2, false);
  if (virtualSize % 512)
    throw untrustedError(`${field} virtualSize`, 'is not a multiple of 512', virtualSize);
  if (c.blockSize !== BLOCK_SIZE)
    throw untrustedError(
      `${field} blockSize`,
      `is not ${BLOCK_SIZE} (the only block size of format v2)`,
      c.blockSize,
    );
  const contentDigest = contentRootOf(c.contentDigest, `${field} contentDigest`);
  const index = sha256Digest(c.index, `${field} index`);
  if (c.build !== undefined && !isObject(c.build))
    throw untrustedError(`${field} build`, 'is not an object', c.build);
  const level = c.level === undefined ? 3 : boundedInt(c.level, `${field} level`, -7, 22, true);
  return {
    schema: 'orb-disk/v2',
    virtualSize,
    blockSize: BLOCK_SIZE,
    contentDigest,
    index,
    sourceFormat: typeof c.sourceFormat === 'string' ? c.sourceFormat.slice(0, 32) : 'raw',
    compression: 'zstd',
    level,
    ...(c.build !== undefined ? { build: c.build as Record<string, unknown> } : {}),
  };
}

/**
 * Decodes the index blob (already checked against its descriptor's digest by the caller) and
 * ties it to the manifest and config: same packs in the same order, same virtual size, the same
 * content digest everywhere.
 */
export function loadDiskIndex(
  blob: Buffer,
  manifest: ImageManifest,
  config: DiskV2Config,
  layers: DiskV2Layers,
  display: string,
): DiskIndex {
  if (config.index !== layers.index.digest)
    throw untrustedError(
      `${display}: disk config index`,
      `is not layers[0] (${layers.index.digest})`,
      config.index,
    );
  const ann = manifest.annotations?.[ANN_CONTENT_DIGEST];
  if (ann !== undefined && ann !== config.contentDigest)
    throw untrustedError(
      `${display}: manifest ${ANN_CONTENT_DIGEST}`,
      `is not the config's ${config.contentDigest}`,
      ann,
    );
  const idx = decodeIndex(blob, {
    fail: (why) => untrustedError(`${display}: index`, why),
    packs: layers.packs,
    contentDigest: config.contentDigest,
  });
  if (idx.virtualSize !== config.virtualSize)
    throw untrustedError(
      `${display}: index`,
      `is for ${idx.virtualSize} bytes, the config says ${config.virtualSize}`,
    );
  return idx;
}

/** Decodes frame `f` of `idx` from its compressed bytes; a bad frame is an integrity error. */
export function decodeIndexFrame(idx: DiskIndex, f: number, compressed: Uint8Array, display: string): Buffer {
  return decodeFrame(compressed, idx.frameBlocks[f]!, idx.blockSize, (why) => {
    const pack = idx.packs[idx.framePack[f]!]!;
    return new OrbError(
      'integrity',
      `${display}: frame ${f} (pack ${pack.digest.slice(7, 19)} at ${idx.frameOffset[f]}) ${why}`,
      { hint: 'the pack is corrupt in the store or on the way; nothing of it was used' },
    );
  });
}
