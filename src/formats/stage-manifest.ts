import { basename, dirname, isAbsolute, join, resolve } from 'node:path';

/**
 * The hand-over between stages: build -> convert -> publish -> pull -> smoke-test. Each stage
 * reads the previous manifest (when given) and writes its own beside its output, so the stages
 * compose in any CI or on a laptop without re-deriving facts (firmware, digests, sizes).
 */
export const MANIFEST_SCHEMA = 'orb-manifest/v1';

export type ImageFormat = 'raw' | 'qcow2' | 'raw.zst' | 'chunked' | 'vhdx' | 'vmdk' | 'vdi' | 'vpc';

export interface BuildInfo {
  os: 'windows' | 'linux' | 'test';
  arch: 'x86_64' | 'aarch64';
  firmware: 'bios' | 'uefi' | 'uefi-secure';
  tpm?: boolean;
  edition?: string;
  adminUser?: string;
  /** where the guest's RDP (or other) service listens, for smoke tests */
  ports?: number[];
  /** seconds the build took */
  seconds?: number;
  [key: string]: unknown;
}

/** A chunked (format v2) layout: where, which tag, and what the conversion stored. */
export interface ChunkInfo {
  layout: string;
  tag: string;
  manifestDigest: string;
  blockSize: number;
  /** blocks of the disk (zero blocks included) */
  blocks: number;
  /** non-zero blocks the index lists */
  storedBlocks: number;
  /** packs the manifest lists */
  packs: number;
}

export interface OrbManifest {
  schema: typeof MANIFEST_SCHEMA;
  stage: string;
  createdAt: string;
  image: {
    /** relative to the manifest's directory, or absolute */
    path: string;
    format: ImageFormat;
    virtualSize: number;
    fileSize: number;
    sha256?: string;
    contentSha256?: string;
    /**
     * orb2:sha256:<hex>, the disk's content identity (docs/chunked-format.md): a root over its
     * 32 KiB block digests and zero runs, computed without reading zeros. `orb digest` gives the
     * same value for the disk in any format; chunked stages record it instead of contentSha256.
     */
    contentDigest?: string;
    chunked?: ChunkInfo;
  };
  build?: BuildInfo;
  published?: { reference: string; digest: string; [key: string]: unknown };
  /**
   * The manifest this stage read as its input: where it was and the sha256 of its bytes, so a
   * chain build -> convert -> publish can be followed back without any stage editing another's.
   */
  input?: StageInput;
}

export interface StageInput {
  stage: string;
  path: string;
  /** sha256:<hex> of the input manifest file as read */
  sha256: string;
}

export function manifestImagePath(manifestPath: string, m: OrbManifest): string {
  return isAbsolute(m.image.path) ? m.image.path : resolve(dirname(manifestPath), m.image.path);
}

export function newManifest(
  stage: string,
  image: OrbManifest['image'],
  extra: Partial<OrbManifest> = {},
): OrbManifest {
  return { schema: MANIFEST_SCHEMA, stage, createdAt: new Date().toISOString(), image, ...extra };
}

/**
 * The one file-name rule for stage manifests: beside the stage's output, as `<output>.orb.json`.
 * Publish has no local output (it writes to a store), so it writes beside what it published, as
 * `<source>.published.orb.json`, and never touches the manifest it was given.
 */
export function stageManifestPath(output: string, stage?: string): string {
  const suffix = stage === 'publish' ? '.published.orb.json' : '.orb.json';
  return join(dirname(output), `${basename(output)}${suffix}`);
}
