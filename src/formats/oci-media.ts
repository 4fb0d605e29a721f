/**
 * Media types and annotations of orb's distribution format (docs/chunked-format.md). Every
 * stage, store and test imports these constants; never spell the strings elsewhere.
 */
export const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
export const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
export const OCI_EMPTY = 'application/vnd.oci.empty.v1+json';

/**
 * artifactType of format v1 chunked disks (one chunk per layer), which no orb reads any more:
 * known only so a pull of one says that instead of "not an orb image".
 */
export const DISK_V1_ARTIFACT = 'application/vnd.orb.disk.v1';
/**
 * Chunked disk format v2 (docs/chunked-format.md): an image-spec 1.1 artifact whose config type is
 * its own (container tools refuse it before fetching a layer), an index blob, then pack blobs.
 */
export const DISK_V2_ARTIFACT = 'application/vnd.orb.disk.v2';
export const DISK_V2_CONFIG = 'application/vnd.orb.disk.config.v2+json';
/** the binary block index (src/formats/disk-index.ts), one zstd frame */
export const DISK_V2_INDEX = 'application/vnd.orb.disk.index.v2+zstd';
/** concatenated zstd frames of blocks; where each frame is, only the index says */
export const DISK_V2_PACK = 'application/vnd.orb.disk.pack.v2';

/** artifactType of a single file (qcow2, .zst) published in parts */
export const FILE_ARTIFACT = 'application/vnd.orb.file.v1';
export const FILE_PART = 'application/vnd.orb.file.part.v1';
/**
 * config blob of a file artifact (image-spec 1.1: an artifact's config type is its own): what
 * the file is and the build facts, so firmware, TPM and OS reach pull and smoke-test for a
 * published qcow2 or .zst as they do for chunked images
 */
export const FILE_CONFIG = 'application/vnd.orb.file.config.v1+json';

export const ANN_TITLE = 'org.opencontainers.image.title';
export const ANN_REF_NAME = 'org.opencontainers.image.ref.name';
export const ANN_CREATED = 'org.opencontainers.image.created';
/** for file parts: name of the whole file, part index, offset in the whole file */
export const ANN_PART_FILE = 'dev.orb.part.file';
export const ANN_PART_INDEX = 'dev.orb.part.index';
export const ANN_PART_OFFSET = 'dev.orb.part.offset';
/** on the manifest: sha256:<hex> of the whole disk content or file */
export const ANN_CONTENT_DIGEST = 'dev.orb.content.digest';
/** on a file artifact's manifest: format of the whole file (qcow2, raw.zst, raw, ...) and its size */
/**
 * A chunked layout converted with `--base REF` (a published image): its manifest lists packs of
 * that image which are not in the layout. Publish skips or mounts them; readers say where they are.
 */
export const ANN_BASE_REFERENCE = 'dev.orb.base.reference';
export const ANN_BASE_DIGEST = 'dev.orb.base.digest';
export const ANN_FILE_FORMAT = 'dev.orb.file.format';
export const ANN_FILE_SIZE = 'dev.orb.file.size';
/** the OCI empty config `{}` (image-spec 1.1), used by file artifacts */
export const EMPTY_CONFIG = {
  mediaType: OCI_EMPTY,
  digest: 'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a',
  size: 2,
} as const;

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  artifactType?: string;
  urls?: string[];
}

export interface ImageManifest {
  schemaVersion: 2;
  mediaType: typeof OCI_MANIFEST;
  artifactType?: string;
  config: Descriptor;
  layers: Descriptor[];
  subject?: Descriptor;
  annotations?: Record<string, string>;
}

export interface ImageIndex {
  schemaVersion: 2;
  mediaType: typeof OCI_INDEX;
  manifests: Descriptor[];
  annotations?: Record<string, string>;
}

/** The config blob of a file artifact. */
export interface FileConfig {
  schema: 'orb-file/v1';
  /** qcow2, raw.zst, raw, ... */
  format: string;
  fileSize: number;
  /** bytes the guest sees, when the publisher knew it (from a stage manifest) */
  virtualSize?: number;
  /** sha256:<hex> of the whole file */
  contentDigest: string;
  build?: Record<string, unknown>;
}

/** The config blob of a chunked disk image, format v2. */
export interface DiskV2Config {
  schema: 'orb-disk/v2';
  virtualSize: number;
  blockSize: number;
  /** orb2:sha256:<hex>: the root over block digests and zero runs (src/formats/disk-index.ts) */
  contentDigest: string;
  /** sha256:<hex> of the index blob (also layers[0]) */
  index: string;
  sourceFormat: string;
  compression: 'zstd';
  level: number;
  build?: Record<string, unknown>;
}
