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

export interface ChunkInfo {
  layout: string;
  tag: string;
  chunkSize: number;
  chunks: number;
  storedChunks: number;
  manifestDigest: string;
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
    /** chunked disks (format v2): the orb2 content root, orb2:sha256:<hex> */
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
