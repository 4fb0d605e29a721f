import { encodeIndex, type DiskIndex } from '../../formats/disk-index.js';
import {
  ANN_CONTENT_DIGEST,
  ANN_CREATED,
  DISK_V2_ARTIFACT,
  DISK_V2_CONFIG,
  DISK_V2_INDEX,
  DISK_V2_PACK,
  OCI_MANIFEST,
  type Descriptor,
  type DiskV2Config,
  type ImageManifest,
} from '../../formats/oci-media.js';
import { sha256Digest, type OciLayout } from '../../oci/layout.js';

/** SOURCE_DATE_EPOCH (reproducible builds convention) makes equal inputs give equal manifest digests. */
function createdTime(): string {
  const epoch = Number(process.env.SOURCE_DATE_EPOCH);
  return new Date(Number.isFinite(epoch) && epoch > 0 ? epoch * 1000 : Date.now()).toISOString();
}

export interface WrittenManifest {
  digest: string;
  size: number;
  manifest: ImageManifest;
  descriptor: Descriptor;
  config: DiskV2Config;
  indexBytes: number;
  /** small blobs this call added to the layout (removed on rollback) */
  created: string[];
}

/**
 * Writes the index blob, the config (our own media type: image-spec 1.1 artifact guidance) and
 * the manifest (docs/chunked-format-v2.md, "Layout"). Layers: the index, then every pack of the
 * index's pack table in that order. The caller tags it (after verifying, so a failed run never
 * moves a tag).
 */
export async function writeDiskV2Manifest(
  layout: OciLayout,
  index: DiskIndex,
  facts: {
    sourceFormat: string;
    level: number;
    build?: Record<string, unknown>;
    /** extra manifest annotations (ANN_BASE_* for a published base) */
    annotations?: Record<string, string>;
  },
): Promise<WrittenManifest> {
  const created: string[] = [];
  // putBytes keeps an existing blob: only what was not there is ours to remove on rollback
  const put = async (bytes: Uint8Array | string) => {
    const digest = sha256Digest(bytes);
    const had = (await layout.blobSize(digest)) !== undefined;
    const r = await layout.putBytes(bytes);
    if (!had) created.push(layout.blobPath(r.digest));
    return r;
  };
  const idx = await put(encodeIndex(index));
  const config: DiskV2Config = {
    schema: 'orb-disk/v2',
    virtualSize: index.virtualSize,
    blockSize: index.blockSize,
    contentDigest: index.contentDigest,
    index: idx.digest,
    sourceFormat: facts.sourceFormat,
    compression: 'zstd',
    level: facts.level,
    ...(facts.build ? { build: facts.build } : {}),
  };
  const cfg = await put(JSON.stringify(config));
  const created2 = createdTime();
  const manifest: ImageManifest = {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    artifactType: DISK_V2_ARTIFACT,
    config: { mediaType: DISK_V2_CONFIG, digest: cfg.digest, size: cfg.size },
    layers: [
      { mediaType: DISK_V2_INDEX, digest: idx.digest, size: idx.size },
      ...index.packs.map((p) => ({ mediaType: DISK_V2_PACK, digest: p.digest, size: p.size })),
    ],
    annotations: {
      ...facts.annotations,
      [ANN_CONTENT_DIGEST]: index.contentDigest,
      [ANN_CREATED]: created2,
    },
  };
  const m = await put(JSON.stringify(manifest));
  const descriptor: Descriptor = {
    mediaType: OCI_MANIFEST,
    digest: m.digest,
    size: m.size,
    artifactType: DISK_V2_ARTIFACT,
  };
  return {
    ...m,
    manifest,
    descriptor,
    config,
    indexBytes: idx.size,
    created,
  };
}
