import { OrbError } from '../core/errors.js';
import { readSmallBlob } from '../oci/layout-store.js';
import {
  ANN_CHUNK_DIGEST,
  ANN_CHUNK_LENGTH,
  ANN_CHUNK_OFFSET,
  ANN_CONTENT_DIGEST,
  ANN_FILE_FORMAT,
  ANN_PART_FILE,
  ANN_PART_INDEX,
  ANN_PART_OFFSET,
  ANN_TITLE,
  DISK_ARTIFACT,
  DISK_CHUNK_RAW,
  DISK_CHUNK_ZSTD,
  DISK_CONFIG,
  FILE_ARTIFACT,
  FILE_CONFIG,
  FILE_PART,
  OCI_INDEX,
  type Descriptor,
  type DiskConfig,
  type FileConfig,
  type ImageIndex,
  type ImageManifest,
} from '../oci/media.js';
import type { BlobStore } from '../store/types.js';

/**
 * What a pull must produce, derived from the manifest and checked before a byte is downloaded:
 * every chunk inside the disk, no overlaps, sizes consistent. One unit per distinct blob (a
 * chunk that occurs several times is fetched once and written to every region).
 */
export interface Region {
  offset: number;
  length: number;
  /** sha256:<hex> of the region's bytes (uncompressed) */
  digest: string;
}

export interface Unit {
  blob: Descriptor;
  /** zstd: compressed chunk; raw/part: the blob bytes are the region bytes */
  kind: 'zstd' | 'raw' | 'part';
  regions: Region[];
}

export interface Plan {
  kind: 'disk' | 'file';
  artifactType: string;
  manifestDigest: string;
  manifest: ImageManifest;
  /** bytes of the disk content (virtual size) or of the file */
  size: number;
  /** sha256:<hex> of the whole content */
  contentDigest: string;
  units: Unit[];
  config?: DiskConfig;
  /** build facts from the config (disk config, or a file artifact's orb config) */
  build?: Record<string, unknown>;
  /** file artifacts: the published file's name and format (qcow2, raw.zst, ...) */
  fileName?: string;
  fileFormat?: string;
}

function num(v: string | undefined, what: string, where: string): number {
  const n = Number(v);
  if (v === undefined || !Number.isSafeInteger(n) || n < 0)
    throw new OrbError('input', `${where}: ${what} annotation is missing or invalid (${String(v)})`);
  return n;
}

/** Fetches the manifest behind `ref` (following an index to our artifact) and checks its type. */
export async function resolveManifest(
  store: BlobStore,
  ref: string,
  display: string,
): Promise<{ manifest: ImageManifest; digest: string }> {
  let m = await store.getManifest(ref);
  type Loose = Partial<Omit<ImageManifest, 'mediaType'>> & {
    manifests?: ImageIndex['manifests'];
    mediaType?: string;
  };
  let json = JSON.parse(m.bytes.toString('utf8')) as Loose;
  if (m.mediaType === OCI_INDEX || Array.isArray(json.manifests)) {
    const pick = (json.manifests ?? []).find(
      (d) => d.artifactType === DISK_ARTIFACT || d.artifactType === FILE_ARTIFACT,
    );
    if (!pick) throw wrongType(display, 'an image index without an orb disk image or file');
    m = await store.getManifest(pick.digest);
    json = JSON.parse(m.bytes.toString('utf8')) as Loose;
  }
  if (!json.config || !Array.isArray(json.layers))
    throw wrongType(display, `a ${m.mediaType || 'manifest'} that is not an OCI image manifest`);
  const type = json.artifactType ?? json.config.mediaType;
  if (type !== DISK_ARTIFACT && type !== FILE_ARTIFACT) {
    const what =
      type === 'application/vnd.oci.image.config.v1+json' ||
      type === 'application/vnd.docker.container.image.v1+json'
        ? `a container image (${type})`
        : `an artifact of type ${type}`;
    throw wrongType(display, what);
  }
  return { manifest: json as ImageManifest, digest: m.digest };
}

function wrongType(display: string, what: string): OrbError {
  return new OrbError(
    'input',
    `${display} is ${what}, not an orb disk image (${DISK_ARTIFACT}) or file (${FILE_ARTIFACT})`,
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
  if (type === DISK_ARTIFACT) return diskPlan(store, manifest, manifestDigest, display);
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
  let cfg: Partial<FileConfig>;
  try {
    cfg = JSON.parse(
      (await readSmallBlob(store, manifest.config, 1 << 20)).toString('utf8'),
    ) as Partial<FileConfig>;
  } catch (err) {
    if (err instanceof OrbError) throw err;
    throw new OrbError('input', `${display}: the file config is not JSON`, { cause: err });
  }
  if (cfg.schema !== 'orb-file/v1')
    throw new OrbError('input', `${display}: the file config is not orb-file/v1`);
  const b = cfg.build;
  return b && typeof b === 'object' && !Array.isArray(b) ? b : undefined;
}

async function diskPlan(
  store: BlobStore,
  manifest: ImageManifest,
  manifestDigest: string,
  display: string,
): Promise<Plan> {
  if (manifest.config.mediaType !== DISK_CONFIG)
    throw new OrbError(
      'input',
      `${display}: config is ${manifest.config.mediaType}, expected ${DISK_CONFIG}`,
    );
  const config = JSON.parse(
    (await readSmallBlob(store, manifest.config, 1 << 20)).toString('utf8'),
  ) as DiskConfig;
  if (
    config.schema !== 'orb-disk/v1' ||
    !Number.isSafeInteger(config.virtualSize) ||
    !/^sha256:[a-f0-9]{64}$/.test(config.contentDigest ?? '')
  ) {
    throw new OrbError(
      'input',
      `${display}: the disk config is not orb-disk/v1 or lacks the virtual size or content digest`,
    );
  }
  const byBlob = new Map<string, Unit>();
  const regions: Region[] = [];
  for (const l of manifest.layers) {
    const where = `${display} layer ${l.digest.slice(0, 19)}`;
    if (l.mediaType !== DISK_CHUNK_ZSTD && l.mediaType !== DISK_CHUNK_RAW)
      throw new OrbError('input', `${where}: unexpected media type ${l.mediaType}`);
    const a = l.annotations ?? {};
    const region: Region = {
      offset: num(a[ANN_CHUNK_OFFSET], ANN_CHUNK_OFFSET, where),
      length: num(a[ANN_CHUNK_LENGTH], ANN_CHUNK_LENGTH, where),
      digest: a[ANN_CHUNK_DIGEST] ?? (l.mediaType === DISK_CHUNK_RAW ? l.digest : ''),
    };
    if (!/^sha256:[a-f0-9]{64}$/.test(region.digest))
      throw new OrbError('input', `${where}: ${ANN_CHUNK_DIGEST} annotation is missing or invalid`);
    if (region.offset + region.length > config.virtualSize)
      throw new OrbError(
        'input',
        `${where}: chunk at ${region.offset}+${region.length} lies beyond the disk end ${config.virtualSize}`,
      );
    const kind = l.mediaType === DISK_CHUNK_RAW ? 'raw' : 'zstd';
    if (kind === 'raw' && (l.size !== region.length || l.digest !== region.digest))
      throw new OrbError(
        'input',
        `${where}: an uncompressed chunk whose size or digest disagrees with its annotations`,
      );
    regions.push(region);
    const u = byBlob.get(l.digest);
    if (u) u.regions.push(region);
    else byBlob.set(l.digest, { blob: l, kind, regions: [region] });
  }
  checkOverlaps(regions, display);
  return {
    kind: 'disk',
    artifactType: DISK_ARTIFACT,
    manifestDigest,
    manifest,
    size: config.virtualSize,
    contentDigest: config.contentDigest,
    units: [...byBlob.values()],
    config,
  };
}

function filePlan(manifest: ImageManifest, manifestDigest: string, display: string): Plan {
  const contentDigest = manifest.annotations?.[ANN_CONTENT_DIGEST];
  if (!contentDigest || !/^sha256:[a-f0-9]{64}$/.test(contentDigest))
    throw new OrbError('input', `${display}: the file artifact lacks the ${ANN_CONTENT_DIGEST} annotation`);
  const parts = manifest.layers.map((l) => {
    const where = `${display} part ${l.digest.slice(0, 19)}`;
    if (l.mediaType !== FILE_PART)
      throw new OrbError('input', `${where}: unexpected media type ${l.mediaType}`);
    const a = l.annotations ?? {};
    return {
      l,
      index: num(a[ANN_PART_INDEX], ANN_PART_INDEX, where),
      offset: num(a[ANN_PART_OFFSET], ANN_PART_OFFSET, where),
    };
  });
  parts.sort((a, b) => a.index - b.index);
  let size = 0;
  const byBlob = new Map<string, Unit>();
  for (const [i, p] of parts.entries()) {
    if (p.index !== i || p.offset !== size)
      throw new OrbError(
        'input',
        `${display}: parts are not contiguous (part ${p.index} at ${p.offset}, expected ${i} at ${size})`,
      );
    const region = { offset: p.offset, length: p.l.size, digest: p.l.digest };
    const u = byBlob.get(p.l.digest);
    if (u) u.regions.push(region);
    else byBlob.set(p.l.digest, { blob: p.l, kind: 'part', regions: [region] });
    size += p.l.size;
  }
  const first = manifest.layers[0]?.annotations;
  const fileName = first?.[ANN_PART_FILE] ?? manifest.annotations?.[ANN_TITLE] ?? 'file';
  return {
    kind: 'file',
    artifactType: FILE_ARTIFACT,
    manifestDigest,
    manifest,
    size,
    contentDigest,
    units: [...byBlob.values()],
    fileName,
    fileFormat: manifest.annotations?.[ANN_FILE_FORMAT] ?? 'raw',
  };
}

function checkOverlaps(regions: Region[], display: string): void {
  const sorted = [...regions].sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < sorted.length; i++) {
    const p = sorted[i - 1]!;
    if (p.offset + p.length > sorted[i]!.offset)
      throw new OrbError('input', `${display}: chunks at ${p.offset} and ${sorted[i]!.offset} overlap`);
  }
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
