import { OrbError } from '../core/errors.js';
import {
  MAX_MANIFEST_BYTES,
  checkDescriptor,
  parseDigest,
  parseJsonObject,
  untrustedError,
} from '../core/untrusted.js';
import { OCI_INDEX, type Descriptor, type ImageIndex } from '../formats/oci-media.js';
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
    const m = await client.getManifest(fallbackTag(parseDigest(subject, 'subject digest').digest));
    return checkIndex(m.bytes, `referrers index of ${subject.slice(0, 19)}`);
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
  parseDigest(digest, 'subject digest');
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
    manifests = checkIndex(
      await res.buffer(MAX_MANIFEST_BYTES),
      `referrers of ${digest.slice(0, 19)}`,
    ).manifests;
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

/** A referrers list from the registry: bounded, and every descriptor checked before use. */
function checkIndex(bytes: Buffer, field: string): ImageIndex {
  const json = parseJsonObject(bytes, field, MAX_MANIFEST_BYTES);
  const list = json.manifests ?? [];
  if (!Array.isArray(list)) throw untrustedError(`${field} manifests`, 'is not an array', list);
  return {
    ...(json as unknown as ImageIndex),
    // checked, but kept whole: the fallback index is written back with every field it had
    manifests: list.map((d: unknown, i) => {
      checkDescriptor(d, `${field} manifests[${i}]`, MAX_MANIFEST_BYTES);
      return d as Descriptor;
    }),
  };
}
