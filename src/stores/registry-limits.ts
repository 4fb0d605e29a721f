import { UsageError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { formatBytes } from '../core/progress.js';

/**
 * What hosted registries accept, known before the first byte goes up: an image ECR refuses for
 * its 501st layer is otherwise refused only when the manifest is pushed, after every blob was
 * uploaded. Numbers are the documented ones (docs/stores.md cites each); where a registry
 * documents nothing, nothing is enforced. The profile comes from the registry host, or from
 * --registry-profile for hosts that do not say what they are (Harbor, a self-managed GitLab).
 */
export interface RegistryLimits {
  name: string;
  /** layers in one manifest */
  maxLayers?: number;
  /** bytes of one layer (blob) */
  maxLayerBytes?: number;
  /** bytes of the manifest JSON */
  maxManifestBytes?: number;
  /** seconds one blob upload may take before the registry gives up on it */
  uploadSeconds?: number;
}

const GB = 1e9;
const MiB = 1 << 20;
/** The OCI distribution spec asks registries to accept manifests of at least 4 MiB; distribution's own cap. */
const OCI_MANIFEST = 4 * MiB;

export const REGISTRY_PROFILES = {
  ghcr: {
    name: 'GitHub Container Registry',
    maxLayerBytes: 10 * GB,
    uploadSeconds: 600,
    maxManifestBytes: OCI_MANIFEST,
  },
  // ECR's layer count is not in its quota table; 500 is what pushes hit ("Limit on number of layers per image exceeded")
  ecr: { name: 'Amazon ECR', maxLayers: 500, maxLayerBytes: 52_000 * MiB, maxManifestBytes: OCI_MANIFEST },
  'ecr-public': {
    name: 'Amazon ECR Public',
    maxLayers: 500,
    maxLayerBytes: 10_000 * MiB,
    maxManifestBytes: OCI_MANIFEST,
  },
  gitlab: { name: 'GitLab container registry', maxManifestBytes: OCI_MANIFEST },
  dockerhub: { name: 'Docker Hub', maxManifestBytes: OCI_MANIFEST },
  quay: { name: 'Quay', maxLayerBytes: 20 * 2 ** 30, maxManifestBytes: OCI_MANIFEST },
  harbor: { name: 'Harbor', maxManifestBytes: OCI_MANIFEST },
} satisfies Record<string, RegistryLimits>;

export type RegistryProfile = keyof typeof REGISTRY_PROFILES;
export const PROFILE_NAMES = Object.keys(REGISTRY_PROFILES) as RegistryProfile[];

/** The profile a registry host implies, or undefined for a host that does not say (self-hosted). */
export function profileForHost(host: string): RegistryProfile | undefined {
  const h = host.toLowerCase().replace(/:\d+$/, '');
  if (h === 'ghcr.io') return 'ghcr';
  if (/^\d{12}\.dkr\.ecr(-fips)?\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$/.test(h)) return 'ecr';
  if (h === 'public.ecr.aws') return 'ecr-public';
  if (h === 'registry.gitlab.com') return 'gitlab';
  if (h === 'docker.io' || h === 'registry-1.docker.io' || h === 'index.docker.io') return 'dockerhub';
  if (h === 'quay.io') return 'quay';
  return undefined;
}

/** The registry host of an `oci://HOST/REPO:TAG` target, or undefined for other stores. */
export function ociHost(target: string): string | undefined {
  const m = /^oci:\/\/([^/]+)\//.exec(target);
  return m?.[1];
}

/** `--registry-profile`: auto (from the host), none, or a profile name. */
export function resolveProfile(asked: string, target: string): RegistryLimits | undefined {
  if (asked === 'none') return undefined;
  if (asked !== 'auto') {
    if (!(asked in REGISTRY_PROFILES))
      throw new UsageError(
        `unknown registry profile '${asked}'`,
        `one of: auto, none, ${PROFILE_NAMES.join(', ')}`,
      );
    return REGISTRY_PROFILES[asked as RegistryProfile];
  }
  const host = ociHost(target);
  const p = host ? profileForHost(host) : undefined;
  return p ? REGISTRY_PROFILES[p] : undefined;
}

/**
 * A single file is split into parts before anything is known of the target's limits: parts
 * no larger than the registry's largest layer adapt the file instead of refusing it.
 */
export function partSizeForProfile(limits: RegistryLimits | undefined, asked: number, log: Logger): number {
  const max = limits?.maxLayerBytes;
  if (max === undefined || asked <= max) return asked;
  const capped = Math.floor(max / MiB) * MiB;
  log.info(
    `${limits!.name} accepts layers of at most ${formatBytes(max)}: splitting files into parts of ${formatBytes(capped)}`,
  );
  return capped;
}

export interface ArtifactShape {
  describe: string;
  layers: readonly { size: number }[];
  manifestBytes: number;
  /** a plain file split into parts (a larger --part-size helps) rather than a chunked disk */
  singleFile: boolean;
}

/**
 * Refuses an artifact the registry would refuse, with the change that makes it fit. Called
 * before any blob is checked or uploaded. Upload time is only warned about: the bandwidth is
 * not known here, only the rate it takes.
 */
export function checkRegistryLimits(limits: RegistryLimits, a: ArtifactShape, log: Logger): void {
  const problems: string[] = [];
  const hints: string[] = [];
  const n = a.layers.length;
  if (limits.maxLayers !== undefined && n > limits.maxLayers) {
    const factor = Math.ceil(n / limits.maxLayers);
    problems.push(`${n} layers; ${limits.name} accepts at most ${limits.maxLayers}`);
    hints.push(
      a.singleFile
        ? `publish with a --part-size at least ${factor}x larger`
        : `the disk image lists ${n - 1} packs: convert with a --pack-size at least ${factor}x larger, or convert it again with --repack (fresh packs of --pack-size each)`,
    );
  }
  const largest = a.layers.reduce((m, l) => Math.max(m, l.size), 0);
  if (limits.maxLayerBytes !== undefined && largest > limits.maxLayerBytes) {
    problems.push(
      `a layer of ${formatBytes(largest)}; ${limits.name} accepts at most ${formatBytes(limits.maxLayerBytes)} per layer`,
    );
    hints.push(
      a.singleFile
        ? `publish with --part-size ${Math.floor(limits.maxLayerBytes / MiB)}MiB or smaller`
        : `convert with --pack-size ${Math.floor(limits.maxLayerBytes / MiB)}MiB or smaller`,
    );
  }
  if (limits.maxManifestBytes !== undefined && a.manifestBytes > limits.maxManifestBytes) {
    problems.push(
      `a manifest of ${formatBytes(a.manifestBytes)}; ${limits.name} accepts at most ${formatBytes(limits.maxManifestBytes)}`,
    );
    hints.push(
      a.singleFile
        ? 'publish with a larger --part-size (fewer parts)'
        : 'convert with a larger --pack-size (fewer packs)',
    );
  }
  if (problems.length) {
    throw new UsageError(
      `${a.describe} does not fit ${limits.name}: ${problems.join('; ')}`,
      [
        ...hints,
        'nothing was uploaded',
        'or give --registry-profile none if this registry is configured otherwise',
      ].join('; '),
    );
  }
  if (limits.uploadSeconds !== undefined && largest > 0) {
    const rate = largest / limits.uploadSeconds;
    if (rate > 10e6)
      log.warn(
        `${limits.name} gives one layer upload ${limits.uploadSeconds / 60} minutes: the largest (${formatBytes(largest)}) needs at least ${formatBytes(rate)}/s; a smaller --part-size or --pack-size lowers that`,
      );
  }
}
