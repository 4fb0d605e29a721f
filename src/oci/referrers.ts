import { OrbError } from '../core/errors.js';
import { OCI_INDEX, type Descriptor, type ImageIndex } from './media.js';
import type { RegistryClient } from './registry.js';

/**
 * OCI referrers (distribution-spec 1.1): manifests whose `subject` names another manifest. The
 * referrers API where the registry has it; otherwise the spec's fallback, an image index tagged
 * `sha256-<hex>` that the pusher keeps up to date.
 */
export function fallbackTag(digest: string): string {
  return digest.replace(':', '-');
}

async function fallbackIndex(client: RegistryClient, subject: string): Promise<ImageIndex | undefined> {
  try {
    const m = await client.getManifest(fallbackTag(subject));
    return JSON.parse(m.bytes.toString('utf8')) as ImageIndex;
  } catch (err) {
    if (err instanceof OrbError && err.kind === 'input') return undefined;
    throw err;
  }
}

/** Manifests whose `subject` is `digest`, optionally of one artifactType. */
export async function listReferrers(
  client: RegistryClient,
  digest: string,
  artifactType?: string,
): Promise<Descriptor[]> {
  const q = artifactType ? `?artifactType=${encodeURIComponent(artifactType)}` : '';
  const res = await client.request({
    method: 'GET',
    path: `/v2/${client.repository}/referrers/${digest}${q}`,
    headers: { accept: OCI_INDEX },
    scopes: [client.pullScope],
    what: `list referrers of ${digest.slice(0, 19)}`,
    accept: [200, 404, 400, 405],
  });
  let manifests: Descriptor[];
  if (res.status === 200 && (res.header('content-type') ?? '').includes(OCI_INDEX)) {
    manifests = (JSON.parse(await res.text()) as ImageIndex).manifests ?? [];
  } else {
    await res.discard();
    manifests = (await fallbackIndex(client, digest))?.manifests ?? [];
  }
  return artifactType ? manifests.filter((m) => m.artifactType === artifactType) : manifests;
}

/** For registries without the API: add `desc` to the index tagged `sha256-<hex>` of `subject`. */
export async function addFallbackReferrer(
  client: RegistryClient,
  subject: string,
  desc: Descriptor,
): Promise<void> {
  const index: ImageIndex = (await fallbackIndex(client, subject)) ?? {
    schemaVersion: 2,
    mediaType: OCI_INDEX,
    manifests: [],
  };
  if (index.manifests.some((m) => m.digest === desc.digest)) return;
  index.manifests.push(desc);
  await client.putManifest(Buffer.from(JSON.stringify(index)), OCI_INDEX, fallbackTag(subject));
}
