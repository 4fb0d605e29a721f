import { OrbError } from '../core/errors.js';
import {
  MAX_CONFIG_BYTES,
  MAX_MANIFEST_BYTES,
  MAX_VIRTUAL_SIZE,
  annotationsOf,
  boundedInt,
  checkDescriptor,
  clip,
  isObject,
  parseJsonObject,
  quoteUntrusted,
  safeFileName,
  sha256Digest,
  shortString,
  untrustedError,
} from '../core/untrusted.js';
import { readSmallBlob } from '../stores/layout.js';
import {
  ANN_CONTENT_DIGEST,
  ANN_FILE_FORMAT,
  ANN_PART_FILE,
  ANN_PART_INDEX,
  ANN_PART_OFFSET,
  ANN_TITLE,
  DISK_V1_ARTIFACT,
  DISK_V2_ARTIFACT,
  FILE_ARTIFACT,
  FILE_CONFIG,
  FILE_PART,
  OCI_INDEX,
  OCI_MANIFEST,
  type Descriptor,
  type DiskV2Config,
  type ImageManifest,
} from '../formats/oci-media.js';
import type { BlobStore } from '../stores/store.js';
import { MAX_INDEX_BLOB, type DiskIndex } from '../formats/disk-index.js';
import { checkDiskV2Config, checkDiskV2Manifest, loadDiskIndex, type DiskV2Layers } from '../oci/disk-v2.js';

/**
 * What a pull must produce, derived from the manifest and checked before a byte is downloaded.
 * A disk (format v2) is its index, decoded with every check of the spec (src/oci/disk-v2.ts):
 * the blocks, frames and packs. A file artifact is its parts: one unit per distinct blob (a part
 * that occurs several times is fetched once and written to every region).
 */
export interface Region {
  offset: number;
  length: number;
  digest: string;
}

export interface Unit {
  blob: Descriptor;
  /** part: the blob bytes are the region bytes */
  kind: 'part';
  regions: Region[];
}

export interface Plan {
  kind: 'disk' | 'file';
  artifactType: string;
  manifestDigest: string;
  manifest: ImageManifest;
  /** bytes of the disk content (virtual size) or of the file */
  size: number;
  /** disk: the orb2 content root (orb2:sha256:<hex>); file: sha256:<hex> of the whole file */
  contentDigest: string;
  /** file parts (empty for a disk) */
  units: Unit[];
  /** disk: the decoded, checked index and the config */
  index?: DiskIndex;
  config?: DiskV2Config;
  /** build facts from the config (disk config, or a file artifact's orb config) */
  build?: Record<string, unknown>;
  /** file artifacts: the published file's name and format (qcow2, raw.zst, ...) */
  fileName?: string;
  fileFormat?: string;
}

/** Fetches the manifest behind `ref` (following an index to our artifact) and checks its type. */
export async function resolveManifest(
  store: BlobStore,
  ref: string,
  display: string,
): Promise<{ manifest: ImageManifest; digest: string }> {
  let m = await store.getManifest(ref);
  let json = parseJsonObject(m.bytes, `${display}: manifest`, MAX_MANIFEST_BYTES);
  if (m.mediaType === OCI_INDEX || json.manifests !== undefined) {
    if (!Array.isArray(json.manifests))
      throw untrustedError(`${display}: index manifests`, 'is not an array', json.manifests);
    const i = json.manifests.findIndex(
      (d) => isObject(d) && (d.artifactType === DISK_V2_ARTIFACT || d.artifactType === FILE_ARTIFACT),
    );
    if (i < 0) throw wrongType(display, 'an image index without an orb disk image or file');
    const pick = checkDescriptor(json.manifests[i], `${display}: index manifests[${i}]`, MAX_MANIFEST_BYTES);
    m = await store.getManifest(pick.digest);
    if (m.digest !== pick.digest)
      throw new OrbError(
        'integrity',
        `${display}: manifest ${pick.digest} arrived with digest ${clip(m.digest)}`,
      );
    json = parseJsonObject(m.bytes, `${display}: manifest ${pick.digest.slice(0, 19)}`, MAX_MANIFEST_BYTES);
  }
  if (!isObject(json.config) || !Array.isArray(json.layers))
    throw wrongType(display, `a ${clip(m.mediaType || 'manifest')} that is not an OCI image manifest`);
  const type = json.artifactType ?? json.config.mediaType;
  if (type === DISK_V1_ARTIFACT)
    throw new OrbError(
      'input',
      `${display} is an orb disk image of chunked format v1 (${DISK_V1_ARTIFACT}), which this orb no longer reads`,
      { hint: 'convert and publish the disk again with this orb (format v2)' },
    );
  if (type !== DISK_V2_ARTIFACT && type !== FILE_ARTIFACT) {
    const what =
      type === 'application/vnd.oci.image.config.v1+json' ||
      type === 'application/vnd.docker.container.image.v1+json'
        ? `a container image (${type})`
        : `an artifact of type ${quoteUntrusted(type)}`;
    throw wrongType(display, what);
  }
  return { manifest: checkManifest(json, display), digest: m.digest };
}

/** Every descriptor and annotation of an image manifest, checked before any of them is used. */
function checkManifest(json: Record<string, unknown>, display: string): ImageManifest {
  const layers = json.layers as unknown[];
  const manifest: ImageManifest = {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: checkDescriptor(json.config, `${display}: manifest config`, MAX_CONFIG_BYTES),
    layers: layers.map((l, i) => checkDescriptor(l, `${display}: manifest layers[${i}]`, MAX_VIRTUAL_SIZE)),
  };
  if (json.artifactType !== undefined)
    manifest.artifactType = shortString(json.artifactType, `${display}: manifest artifactType`);
  if (json.annotations !== undefined)
    manifest.annotations = annotationsOf(json.annotations, `${display}: manifest annotations`);
  return manifest;
}

function wrongType(display: string, what: string): OrbError {
  return new OrbError(
    'input',
    `${display} is ${what}, not an orb disk image (${DISK_V2_ARTIFACT}) or file (${FILE_ARTIFACT})`,
    {
      hint: 'check the reference; orb pulls what orb publish pushed',
    },
  );
}

export async function makePlan(
  store: BlobStore,
  manifest: ImageManifest,
  manifestDigest: string,
  display: string,
): Promise<Plan> {
  const type = manifest.artifactType ?? manifest.config.mediaType;
  if (type === DISK_V2_ARTIFACT) return diskPlan(store, manifest, manifestDigest, display);
  const plan = filePlan(manifest, manifestDigest, display);
  const build = await fileBuildInfo(store, manifest, display);
  return build ? { ...plan, build } : plan;
}

/** A file artifact's build facts, from its orb config (older or foreign ones have the empty config). */
async function fileBuildInfo(
  store: BlobStore,
  manifest: ImageManifest,
  display: string,
): Promise<Record<string, unknown> | undefined> {
  if (manifest.config.mediaType !== FILE_CONFIG) return undefined;
  const field = `${display}: file config`;
  const cfg = parseJsonObject(
    await readSmallBlob(store, manifest.config, MAX_CONFIG_BYTES),
    field,
    MAX_CONFIG_BYTES,
  );
  if (cfg.schema !== 'orb-file/v1') throw untrustedError(`${field} schema`, 'is not orb-file/v1', cfg.schema);
  if (cfg.build === undefined) return undefined;
  if (!isObject(cfg.build)) throw untrustedError(`${field} build`, 'is not an object', cfg.build);
  return cfg.build;
}

/**
 * A v2 disk's config and index: only those two blobs are fetched (each checked against its
 * descriptor by readSmallBlob), then tied to the manifest by every rule of src/oci/disk-v2.ts.
 * Pull, `orb serve`, `orb digest REF` and `convert --base REF` all read a published disk here.
 */
export async function readDiskV2(
  store: BlobStore,
  manifest: ImageManifest,
  display: string,
): Promise<{ layers: DiskV2Layers; config: DiskV2Config; index: DiskIndex; indexBytes: number }> {
  // Layers first: they are in the manifest already, the config and the index cost requests.
  const layers = checkDiskV2Manifest(manifest, display);
  const config = checkDiskV2Config(await readSmallBlob(store, manifest.config, MAX_CONFIG_BYTES), display);
  const blob = await readSmallBlob(store, layers.index, MAX_INDEX_BLOB);
  const index = loadDiskIndex(blob, manifest, config, layers, display);
  return { layers, config, index, indexBytes: blob.length };
}

async function diskPlan(
  store: BlobStore,
  manifest: ImageManifest,
  manifestDigest: string,
  display: string,
): Promise<Plan> {
  const { config, index } = await readDiskV2(store, manifest, display);
  return {
    kind: 'disk',
    artifactType: DISK_V2_ARTIFACT,
    manifestDigest,
    manifest,
    size: config.virtualSize,
    contentDigest: index.contentDigest,
    units: [],
    index,
    config,
  };
}

function filePlan(manifest: ImageManifest, manifestDigest: string, display: string): Plan {
  const ann = manifest.annotations ?? {};
  const contentDigest = sha256Digest(ann[ANN_CONTENT_DIGEST], `${display}: manifest ${ANN_CONTENT_DIGEST}`);
  const parts = manifest.layers.map((l, i) => {
    const where = `${display}: manifest layers[${i}]`;
    if (l.mediaType !== FILE_PART)
      throw untrustedError(`${where} mediaType`, `is not ${FILE_PART}`, l.mediaType);
    if (l.size < 1) throw untrustedError(`${where} size`, 'is zero: a part holds at least one byte', l.size);
    const a = l.annotations ?? {};
    return {
      l,
      index: boundedInt(a[ANN_PART_INDEX], `${where} ${ANN_PART_INDEX}`, 0, manifest.layers.length - 1),
      offset: boundedInt(a[ANN_PART_OFFSET], `${where} ${ANN_PART_OFFSET}`, 0, MAX_VIRTUAL_SIZE),
    };
  });
  parts.sort((a, b) => a.index - b.index);
  let size = 0;
  const byBlob = new Map<string, Unit>();
  for (const [i, p] of parts.entries()) {
    if (p.index !== i || p.offset !== size)
      throw untrustedError(
        `${display}: manifest parts`,
        `are not contiguous (part ${p.index} at ${p.offset}, expected ${i} at ${size})`,
      );
    const region = { offset: p.offset, length: p.l.size, digest: p.l.digest };
    const u = byBlob.get(p.l.digest);
    if (u) u.regions.push(region);
    else byBlob.set(p.l.digest, { blob: p.l, kind: 'part', regions: [region] });
    size += p.l.size;
    if (size > MAX_VIRTUAL_SIZE)
      throw untrustedError(`${display}: manifest parts`, `add up to more than ${MAX_VIRTUAL_SIZE} bytes`);
  }
  const first = manifest.layers[0]?.annotations;
  const nameField = first?.[ANN_PART_FILE] !== undefined ? `layers[0] ${ANN_PART_FILE}` : ANN_TITLE;
  const fileName = safeFileName(
    first?.[ANN_PART_FILE] ?? ann[ANN_TITLE] ?? 'file',
    `${display}: manifest ${nameField}`,
  );
  const fileFormat = ann[ANN_FILE_FORMAT] ?? 'raw';
  if (!/^[a-z0-9][a-z0-9.+-]{0,31}$/.test(fileFormat))
    throw untrustedError(`${display}: manifest ${ANN_FILE_FORMAT}`, 'is not a format name', fileFormat);
  return {
    kind: 'file',
    artifactType: FILE_ARTIFACT,
    manifestDigest,
    manifest,
    size,
    contentDigest,
    units: [...byBlob.values()],
    fileName,
    fileFormat,
  };
}

/** Every region plus the zero gaps between them, in disk order: the order of the content hash. */
export function contentSegments(
  plan: Plan,
): ({ zero: true; offset: number; length: number } | ({ zero: false } & Region))[] {
  const regions = plan.units.flatMap((u) => u.regions).sort((a, b) => a.offset - b.offset);
  const out: ({ zero: true; offset: number; length: number } | ({ zero: false } & Region))[] = [];
  let at = 0;
  for (const r of regions) {
    if (r.offset > at) out.push({ zero: true, offset: at, length: r.offset - at });
    out.push({ zero: false, ...r });
    at = r.offset + r.length;
  }
  if (at < plan.size) out.push({ zero: true, offset: at, length: plan.size - at });
  return out;
}
