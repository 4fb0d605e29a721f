import { UsageError } from '../core/errors.js';

/**
 * `oci://HOST[:PORT]/REPO[:TAG][@sha256:...]` and `oci-layout:DIR[:TAG|@sha256:...]`.
 * Parsed strictly: a typo in a reference must fail before any upload starts.
 */
export interface RegistryRef {
  /** host[:port] as written (docker.io is mapped to its API host in `apiHost`) */
  host: string;
  /** where the registry API answers */
  apiHost: string;
  repository: string;
  tag?: string;
  digest?: string;
}

export interface LayoutRef {
  dir: string;
  tag?: string;
  digest?: string;
}

const COMPONENT = '[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*';
const REPO_RE = new RegExp(`^${COMPONENT}(?:/${COMPONENT})*$`);
export const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;
const DIGEST_RE = /^sha256:[a-f0-9]{64}$/;
const HOST_RE = /^(?:\[[0-9a-fA-F:]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::\d{1,5})?$/;

export function isDigest(s: string): boolean {
  return DIGEST_RE.test(s);
}

export function parseRegistryRef(ref: string): RegistryRef {
  const text = ref.startsWith('oci://') ? ref.slice('oci://'.length) : ref;
  const example = 'oci://ghcr.io/OWNER/IMAGE:TAG';
  const slash = text.indexOf('/');
  if (slash <= 0)
    throw new UsageError(`'${ref}' has no registry host and repository`, `write it as ${example}`);
  const host = text.slice(0, slash);
  if (!HOST_RE.test(host))
    throw new UsageError(`'${host}' in '${ref}' is not a registry host`, `write it as ${example}`);
  let rest = text.slice(slash + 1);
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST_RE.test(digest))
      throw new UsageError(
        `'${digest}' in '${ref}' is not a sha256 digest`,
        'digests look like sha256:<64 hex digits>',
      );
  }
  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon >= 0) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG_RE.test(tag))
      throw new UsageError(
        `'${tag}' in '${ref}' is not a valid tag`,
        'tags are up to 128 letters, digits, _ . and -, not starting with . or -',
      );
  }
  if (!REPO_RE.test(rest)) {
    throw new UsageError(
      `'${rest}' in '${ref}' is not a valid repository name`,
      'repository names are lower-case letters, digits and . _ - separated by /',
    );
  }
  const dockerHub = host === 'docker.io' || host === 'index.docker.io';
  const repository = dockerHub && !rest.includes('/') ? `library/${rest}` : rest;
  return {
    host,
    apiHost: dockerHub ? 'registry-1.docker.io' : host,
    repository,
    ...(tag !== undefined ? { tag } : {}),
    ...(digest !== undefined ? { digest } : {}),
  };
}

export function formatRegistryRef(r: {
  host: string;
  repository: string;
  tag?: string;
  digest?: string;
}): string {
  return `oci://${r.host}/${r.repository}${r.tag ? ':' + r.tag : ''}${r.digest ? '@' + r.digest : ''}`;
}

/** `oci-layout:DIR:TAG`, `oci-layout:DIR@sha256:...` or `oci-layout:DIR` (no tag). */
export function parseLayoutRef(ref: string): LayoutRef {
  let text = ref.startsWith('oci-layout:') ? ref.slice('oci-layout:'.length) : ref;
  if (!text) throw new UsageError(`'${ref}' names no directory`, 'write it as oci-layout:DIR:TAG');
  let digest: string | undefined;
  const at = text.lastIndexOf('@');
  if (at > 0 && DIGEST_RE.test(text.slice(at + 1))) {
    digest = text.slice(at + 1);
    text = text.slice(0, at);
  }
  let tag: string | undefined;
  const colon = text.lastIndexOf(':');
  // DIR may itself contain ':' (rare); the tag is what follows the last ':' when it has no '/'.
  if (colon > 0 && !text.slice(colon + 1).includes('/')) {
    tag = text.slice(colon + 1);
    text = text.slice(0, colon);
    if (!TAG_RE.test(tag))
      throw new UsageError(
        `'${tag}' in '${ref}' is not a valid tag`,
        'tags are up to 128 letters, digits, _ . and -',
      );
  }
  return { dir: text, ...(tag !== undefined ? { tag } : {}), ...(digest !== undefined ? { digest } : {}) };
}
