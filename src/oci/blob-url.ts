import { OrbError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { parseChallenge } from './auth.js';
import { OCI_INDEX, type ImageManifest } from '../formats/oci-media.js';
import { formatRegistryRef, parseRegistryRef } from './reference.js';
import { RegistryClient } from './registry.js';

/**
 * Anonymous, time-limited download URLs for blobs, for people who want curl or a browser:
 * challenge, anonymous pull token, then the blob GET without following the redirect. Registries
 * backed by object storage (GHCR, Docker Hub, ECR, GitLab with S3) answer with a pre-signed
 * storage URL; a registry that serves blobs itself answers 200, and then the registry URL is all
 * there is (plus, when it wants a token, where to get an anonymous one).
 */
export interface BlobUrl {
  digest: string;
  url: string;
  /** true: the registry serves the blob itself (no storage redirect) */
  direct: boolean;
  /** seconds the URL stays valid, when the URL says */
  expiresIn?: number;
  /** a direct URL that needs a bearer token: the anonymous token endpoint */
  tokenUrl?: string;
  /** the part's file name, for file artifacts */
  title?: string;
}

export interface BlobUrlOptions {
  plainHttp?: boolean;
  log: Logger;
  signal?: AbortSignal | undefined;
  /** one blob; otherwise every layer of the manifest REF names */
  digest?: string;
}

/** Seconds until a pre-signed URL expires, from the query conventions of S3, Azure and CloudFront. */
export function expiresIn(url: string, now = Date.now()): number | undefined {
  const q = new URL(url).searchParams;
  const amzDate = q.get('X-Amz-Date');
  const amzExpires = q.get('X-Amz-Expires');
  if (amzDate && amzExpires) {
    const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(amzDate);
    if (m)
      return Math.round(
        (Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!) + Number(amzExpires) * 1000 - now) /
          1000,
      );
  }
  const se = q.get('se');
  if (se && !Number.isNaN(Date.parse(se))) return Math.round((Date.parse(se) - now) / 1000);
  const exp = q.get('Expires') ?? q.get('expires');
  if (exp && /^\d+$/.test(exp)) return Math.round(Number(exp) - now / 1000);
  return undefined;
}

export async function blobUrls(ref: string, o: BlobUrlOptions): Promise<BlobUrl[]> {
  const r = parseRegistryRef(ref);
  // Anonymous on purpose: a URL minted with someone's credentials must not be handed around.
  const client = new RegistryClient({
    ref: r,
    plainHttp: o.plainHttp ?? false,
    credentials: null,
    log: o.log,
    signal: o.signal,
  });
  try {
    let targets: { digest: string; title?: string }[];
    if (o.digest) targets = [{ digest: o.digest }];
    else {
      const m = await client.getManifest(r.digest ?? r.tag ?? 'latest').catch((err: unknown) => {
        throw anonymousHint(err, formatRegistryRef(r));
      });
      const json = JSON.parse(m.bytes.toString('utf8')) as ImageManifest & { manifests?: unknown };
      if (m.mediaType === OCI_INDEX || json.manifests)
        throw new OrbError('input', `${ref} is an image index; name one manifest or give --digest`);
      targets = json.layers.map((l) => ({
        digest: l.digest,
        ...(l.annotations?.['org.opencontainers.image.title']
          ? { title: l.annotations['org.opencontainers.image.title'] }
          : {}),
      }));
    }
    const out: BlobUrl[] = [];
    for (const t of targets) {
      const res = await client
        .request({
          method: 'GET',
          path: `/v2/${r.repository}/blobs/${t.digest}`,
          scopes: [client.pullScope],
          what: `get blob ${t.digest.slice(7, 19)}`,
          accept: [200, 206, 301, 302, 303, 307, 308, 404],
        })
        .catch((err: unknown) => {
          throw anonymousHint(err, formatRegistryRef(r));
        });
      // Only the headers matter: never download the blob itself.
      res.stream.destroy();
      if (res.status === 404) throw new OrbError('input', `${formatRegistryRef(r)} has no blob ${t.digest}`);
      const direct = `${client.base}/v2/${r.repository}/blobs/${t.digest}`;
      if (res.status >= 300) {
        const location = res.header('location');
        if (!location)
          throw new OrbError('network', `the registry redirected ${t.digest} without a Location`);
        const url = new URL(location, res.url).toString();
        const exp = expiresIn(url);
        out.push({
          digest: t.digest,
          url,
          direct: false,
          ...(exp !== undefined ? { expiresIn: exp } : {}),
          ...(t.title ? { title: t.title } : {}),
        });
      } else {
        const entry: BlobUrl = {
          digest: t.digest,
          url: direct,
          direct: true,
          ...(t.title ? { title: t.title } : {}),
        };
        if (client.auth.scheme === 'bearer') entry.tokenUrl = await anonymousTokenUrl(client, r.repository);
        out.push(entry);
      }
    }
    return out;
  } finally {
    client.close();
  }
}

async function anonymousTokenUrl(client: RegistryClient, repository: string): Promise<string | undefined> {
  const res = await client.http.send({ method: 'GET', url: `${client.base}/v2/` });
  await res.discard();
  const c = parseChallenge(res.header('www-authenticate'));
  if (!c?.realm) return undefined;
  const u = new URL(c.realm);
  if (c.service) u.searchParams.set('service', c.service);
  u.searchParams.set('scope', `repository:${repository}:pull`);
  return u.toString();
}

function anonymousHint(err: unknown, where: string): unknown {
  if (err instanceof OrbError && err.kind === 'network' && /401|403|rejected anonymous/.test(err.message)) {
    return new OrbError(
      'network',
      `${where} is not readable anonymously, so there is no anonymous URL for its blobs`,
      {
        hint: 'make the package public, or pull it with credentials (orb pull)',
        cause: err,
      },
    );
  }
  return err;
}
