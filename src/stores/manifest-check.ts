import { createHash } from 'node:crypto';
import { OrbError } from '../core/errors.js';
import { OCI_MANIFEST } from '../formats/oci-media.js';
import { MAX_MANIFEST_BYTES, parseJsonObject } from '../core/untrusted.js';

/**
 * Stores that keep the manifest as a plain file (GitHub release asset, GitLab package file) have
 * no registry to vouch for it: a pinned reference must match the bytes' digest, and the media
 * type comes from the manifest itself.
 */
export function checkManifestBytes(
  bytes: Buffer,
  ref: string,
  where: string,
): { bytes: Buffer; mediaType: string; digest: string } {
  const digest = 'sha256:' + createHash('sha256').update(bytes).digest('hex');
  if (ref.startsWith('sha256:') && ref !== digest)
    throw new OrbError('integrity', `${where}: manifest ${ref} does not match its digest (got ${digest})`);
  const parsed = parseJsonObject(bytes, `${where}: its manifest`, MAX_MANIFEST_BYTES);
  return {
    bytes,
    mediaType: typeof parsed.mediaType === 'string' ? parsed.mediaType : OCI_MANIFEST,
    digest,
  };
}
