import type { OutgoingHttpHeaders } from 'node:http';
import { MAX_MANIFEST_BYTES, checkManifestRef, parseDigest } from '../core/untrusted.js';
import { OrbError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { Authenticator, credentialHint } from './auth.js';
import { resolveCredentials, type CredentialOptions, type Credentials } from './credentials.js';
import {
  backoffMs,
  defaultRetryPolicy,
  isRetryableStatus,
  parseRetryAfter,
  retry,
  sleep,
  type RetryPolicy,
} from '../net/retry.js';
import { HttpClient, TransientError, type Body, type HttpResponse } from './http.js';
import { sha256Digest } from './layout.js';
import { OCI_INDEX, OCI_MANIFEST } from '../formats/oci-media.js';
import { isLoopbackHost } from '../net/loopback.js';
import type { RegistryRef } from './reference.js';
import { MirrorSet } from './mirror-fetch.js';
import type { MirrorConfig } from './mirrors.js';

/**
 * Our OCI distribution-spec client (v1.1): ping and auth, blobs (HEAD, ranged GET following
 * storage redirects without credentials), manifests and tags. Uploads (and mounts) live in
 * upload.ts, referrers in referrers.ts. Every call goes through `request`, which owns retries
 * and token refresh.
 */
export const MANIFEST_ACCEPT = [
  OCI_MANIFEST,
  OCI_INDEX,
  'application/vnd.docker.distribution.manifest.v2+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
].join(', ');

export interface RegistryClientOptions {
  ref: Pick<RegistryRef, 'host' | 'apiHost' | 'repository'>;
  /** use http:// (always allowed for loopback hosts) */
  plainHttp?: boolean;
  /** explicit credentials; otherwise resolved from the environment and docker config */
  credentials?: CredentialOptions | Credentials | null;
  log: Logger;
  signal?: AbortSignal | undefined;
  retry?: RetryPolicy;
  maxSockets?: number;
  http?: HttpClient;
  /** mirrors for what is named by digest (see mirrors.ts); `server` replaces the origin's URL */
  mirrors?: MirrorConfig | undefined;
}

export interface RequestOptions {
  method: string;
  /** path under the registry (`/v2/...`) or an absolute URL */
  path: string;
  headers?: OutgoingHttpHeaders;
  body?: Body;
  scopes: readonly string[];
  /** what the user would call this request, for messages */
  what: string;
  /** false: a retryable failure is thrown at once as TransientError (callers with their own resume logic) */
  retry?: boolean;
  /** statuses the caller handles itself (404 for HEAD, 3xx for redirects, ...) */
  accept?: readonly number[];
}

export class RegistryClient {
  readonly host: string;
  readonly repository: string;
  readonly base: string;
  readonly http: HttpClient;
  readonly retry: RetryPolicy;
  readonly log: Logger;
  readonly signal: AbortSignal | undefined;
  readonly auth: Authenticator;
  private pinged: Promise<void> | undefined;
  private readonly ownsHttp: boolean;
  readonly mirrors: MirrorSet | undefined;

  constructor(opts: RegistryClientOptions) {
    this.host = opts.ref.host;
    this.repository = opts.ref.repository;
    const plain = opts.plainHttp || isLoopbackHost(opts.ref.apiHost);
    this.base = opts.mirrors?.server
      ? new URL(opts.mirrors.server).origin
      : `${plain ? 'http' : 'https'}://${opts.ref.apiHost}`;
    this.ownsHttp = !opts.http;
    this.http = opts.http ?? new HttpClient({ maxSockets: opts.maxSockets ?? 16 });
    this.retry = opts.retry ?? defaultRetryPolicy();
    this.log = opts.log;
    this.signal = opts.signal;
    const creds =
      opts.credentials === null
        ? undefined
        : opts.credentials && 'source' in opts.credentials
          ? (opts.credentials as Credentials)
          : resolveCredentials(opts.ref.host, (opts.credentials as CredentialOptions | undefined) ?? {});
    if (creds) this.log.debug(`${this.host}: using credentials from ${creds.source}`);
    this.auth = new Authenticator(this.http, this.host, creds, this.log);
    this.mirrors = opts.mirrors?.mirrors.length
      ? new MirrorSet(opts.mirrors, this.host, this.repository, this.log, this.signal)
      : undefined;
  }

  get pullScope(): string {
    return `repository:${this.repository}:pull`;
  }
  get pushScope(): string {
    return `repository:${this.repository}:pull,push`;
  }

  close(): void {
    if (this.ownsHttp) this.http.close();
    for (const m of this.mirrors?.config.mirrors ?? []) m.http.close();
  }

  /** GET /v2/: learns the auth challenge before any request with a large body is sent. */
  ping(): Promise<void> {
    this.pinged ??= (async () => {
      let res: HttpResponse;
      try {
        res = await this.sendWithRetry('GET', `${this.base}/v2/`, {}, undefined, 'connect');
      } catch (err) {
        this.pinged = undefined;
        const msg = (err as Error).message;
        const tlsHint = /EPROTO|wrong version number|SSL|certificate/i.test(msg)
          ? 'if the registry speaks plain HTTP, add --plain-http (plain-http: true); for a private CA set NODE_EXTRA_CA_CERTS'
          : 'check the host name and port, and that the registry is reachable from here';
        throw new OrbError('network', `cannot reach the registry at ${this.base}: ${msg}`, {
          hint: tlsHint,
          cause: err,
        });
      }
      if (res.status === 401) this.auth.learn(res);
      else if (res.status !== 200) {
        await res.discard();
        this.pinged = undefined;
        throw new OrbError(
          'network',
          `${this.base}/v2/ answered HTTP ${res.status}: this does not look like an OCI registry`,
          {
            hint: 'check the host and port of the oci:// reference',
          },
        );
      }
      await res.discard();
    })();
    return this.pinged;
  }

  private async sendWithRetry(
    method: string,
    url: string,
    headers: OutgoingHttpHeaders,
    body: Body | undefined,
    what: string,
  ): Promise<HttpResponse> {
    return retry(
      () =>
        this.http.send({
          method,
          url,
          headers,
          ...(body !== undefined ? { body } : {}),
          signal: this.signal,
        }),
      {
        what,
        policy: this.retry,
        ...(this.signal ? { signal: this.signal } : {}),
        onRetry: (line) => this.log.info(line),
        classify: (err) => ({ retry: err instanceof TransientError }),
      },
    );
  }

  url(path: string): string {
    return /^https?:\/\//.test(path) ? path : `${this.base}${path}`;
  }

  /**
   * One logical request: adds the Authorization the challenge asks for, refreshes the token
   * once on 401, retries 408/429/5xx and dropped connections with backoff (Retry-After wins).
   */
  async request(o: RequestOptions): Promise<HttpResponse> {
    await this.ping();
    let authRetried = false;
    // all waits of this request together stay within the policy's budget
    let waited = 0;
    for (let attempt = 1; ;) {
      const headers: OutgoingHttpHeaders = { ...(o.headers ?? {}) };
      // Credentials go to the registry only, never to another host an upload Location names.
      const sameHost = new URL(this.url(o.path)).host === new URL(this.base).host;
      const authz = sameHost ? await this.auth.header(o.scopes) : undefined;
      if (authz) headers.authorization = authz;
      let res: HttpResponse;
      try {
        res = await this.http.send({
          method: o.method,
          url: this.url(o.path),
          headers,
          ...(o.body !== undefined ? { body: o.body } : {}),
          signal: this.signal,
        });
      } catch (err) {
        if (!(err instanceof TransientError)) throw err;
        if (o.retry === false) throw err;
        const wait = backoffMs(attempt, this.retry);
        if (attempt >= this.retry.attempts || waited + wait > this.retry.maxTotalMs)
          throw this.gaveUp(o, err.message, attempt);
        this.log.info(
          `${o.what}: ${err.message}; retry ${attempt}/${this.retry.attempts - 1} in ${(wait / 1000).toFixed(1)} s`,
        );
        await sleep(wait, this.signal);
        waited += wait;
        attempt++;
        continue;
      }
      if (o.accept?.includes(res.status)) return res;
      if (res.status === 401) {
        await res.discard();
        // A token can expire (or be revoked) mid-transfer: fetch a fresh one, once.
        if (!authRetried && (this.auth.learn(res) || this.auth.scheme !== 'none')) {
          authRetried = true;
          this.auth.invalidate(o.scopes, authz);
          this.log.debug(`${o.what}: 401, refreshing the token`);
          continue;
        }
        throw new OrbError('network', `${this.host} refused ${o.what} (HTTP 401 unauthorized)`, {
          hint: credentialHint(this.host),
        });
      }
      if (res.status === 403) {
        const detail = errorText(await res.text(64 << 10).catch(() => ''));
        throw new OrbError(
          'network',
          `${this.host} denied ${o.what} (HTTP 403${detail ? ': ' + detail : ''})`,
          {
            hint: `the credentials lack permission on ${this.repository}; ${credentialHint(this.host)}`,
          },
        );
      }
      if (isRetryableStatus(res.status)) {
        const retryAfter = parseRetryAfter(res.header('retry-after'));
        const detail = errorText(await res.text(64 << 10).catch(() => ''));
        const msg = `HTTP ${res.status}${detail ? ' ' + detail : ''}`;
        if (o.retry === false) throw new TransientError(`${o.what}: ${msg}`, retryAfter);
        if (attempt >= this.retry.attempts) throw this.gaveUp(o, msg, attempt);
        if (retryAfter !== undefined && retryAfter > this.retry.maxRetryAfterMs) {
          throw new OrbError(
            'network',
            `${this.host} asks to retry ${o.what} after ${Math.round(retryAfter / 1000)} s (${msg})`,
            {
              hint: 'the registry is rate-limiting or down; run again later',
            },
          );
        }
        const wait = backoffMs(attempt, this.retry, retryAfter);
        if (waited + wait > this.retry.maxTotalMs) throw this.gaveUp(o, msg, attempt);
        this.log.info(
          `${o.what}: ${msg}; retry ${attempt}/${this.retry.attempts - 1} in ${(wait / 1000).toFixed(1)} s`,
        );
        await sleep(wait, this.signal);
        waited += wait;
        attempt++;
        continue;
      }
      return res;
    }
  }

  private gaveUp(o: RequestOptions, last: string, attempts: number): OrbError {
    return new OrbError('network', `${o.what} failed after ${attempts} attempts: ${last}`, {
      hint: 'the registry or the network kept failing; run the same command again to resume',
    });
  }

  /** Throws a clear error for an unexpected status (after reading the registry's error body). */
  async unexpected(res: HttpResponse, what: string): Promise<never> {
    const detail = errorText(await res.text(64 << 10).catch(() => ''));
    throw new OrbError(
      res.status === 404 ? 'input' : 'network',
      `${what}: ${this.host} answered HTTP ${res.status}${detail ? ' (' + detail + ')' : ''}`,
    );
  }

  // ---- blobs ----

  async headBlob(digest: string, repository = this.repository): Promise<number | undefined> {
    parseDigest(digest, 'blob digest');
    const res = await this.request({
      method: 'HEAD',
      path: `/v2/${repository}/blobs/${digest}`,
      scopes: [this.pullScope],
      what: `check for blob ${digest.slice(7, 19)}`,
      accept: [200, 404, 307, 302],
    });
    await res.discard();
    if (res.status === 404) return undefined;
    const len = Number(res.header('content-length'));
    return Number.isFinite(len) && res.status === 200 ? len : -1;
  }

  /**
   * GET a blob from `offset` up to `end` (exclusive; Range). Follows storage redirects without
   * sending our credentials to another host. Returns the stream and the bytes [offset, end) it
   * really carries (offset 0 and end `size` when the server ignored the Range).
   */
  async getBlob(
    digest: string,
    size: number,
    offset = 0,
    end = size,
  ): Promise<{ res: HttpResponse; offset: number; end: number }> {
    parseDigest(digest, 'blob digest');
    const asked = offset > 0 || end < size ? `bytes=${offset}-${end < size ? String(end - 1) : ''}` : '';
    const range = asked ? { range: asked } : {};
    // mirrors first (what they send is checked against the digest like the origin's bytes)
    let res =
      (!asked
        ? await this.mirrors?.blob(digest, size, range)
        : await this.mirrors?.first('GET', 'blobs', digest, range)) ??
      (await this.request({
        method: 'GET',
        path: `/v2/${this.repository}/blobs/${digest}`,
        headers: range,
        scopes: [this.pullScope],
        what: `download blob ${digest.slice(7, 19)}`,
        accept: [200, 206, 301, 302, 303, 307, 308, 404, 416],
      }));
    for (let hops = 0; res.status >= 300 && res.status < 400; hops++) {
      const location = res.header('location');
      await res.discard();
      if (!location || hops >= 5)
        throw new OrbError('network', `download blob ${digest}: redirect without a usable Location`);
      const target = new URL(location, res.url);
      // Pre-signed storage URLs carry their own authorization; never add ours.
      res = await this.fetchUrl(target.toString(), range, `download blob ${digest.slice(7, 19)}`);
    }
    if (res.status === 404) {
      await res.discard();
      throw new OrbError('input', `blob ${digest} is missing from ${this.host}/${this.repository}`, {
        hint: 'the manifest refers to a blob the registry no longer has; publish the image again',
      });
    }
    if (res.status === 416) {
      await res.discard();
      if (offset >= size) return { res, offset: size, end: size };
      throw new TransientError(`download blob ${digest.slice(7, 19)}: HTTP 416 for ${asked}`);
    }
    if (res.status === 206) {
      const m = /bytes\s+(\d+)-(\d+)/.exec(res.header('content-range') ?? '');
      return m ? { res, offset: Number(m[1]), end: Number(m[2]) + 1 } : { res, offset, end };
    }
    if (res.status === 200) return { res, offset: 0, end: size };
    return this.unexpected(res, `download blob ${digest}`);
  }

  /** A GET to a storage URL (after a redirect): retries, no registry credentials. */
  async fetchUrl(url: string, headers: OutgoingHttpHeaders, what: string): Promise<HttpResponse> {
    return retry(
      async () => {
        const res = await this.http.send({ method: 'GET', url, headers, signal: this.signal });
        if (!isRetryableStatus(res.status)) return res;
        await res.discard();
        throw new TransientError(`HTTP ${res.status}`, parseRetryAfter(res.header('retry-after')));
      },
      {
        what,
        policy: this.retry,
        ...(this.signal ? { signal: this.signal } : {}),
        classify: (err) =>
          err instanceof TransientError
            ? { retry: true, ...(err.retryAfterMs !== undefined ? { retryAfterMs: err.retryAfterMs } : {}) }
            : { retry: false },
        gaveUp: (err, attempts) =>
          new OrbError('network', `${what} failed after ${attempts} attempts: ${(err as Error).message}`),
      },
    );
  }

  // ---- manifests ----

  async getManifest(ref: string): Promise<{ bytes: Buffer; mediaType: string; digest: string }> {
    checkManifestRef(ref, 'manifest reference');
    // by digest from a mirror when one has it; a tag only from mirrors allowed to resolve
    const fromMirror = await this.mirrors?.first('GET', 'manifests', ref, { accept: MANIFEST_ACCEPT });
    if (fromMirror && fromMirror.status !== 200) await fromMirror.discard();
    const res =
      fromMirror?.status === 200
        ? fromMirror
        : await this.request({
            method: 'GET',
            path: `/v2/${this.repository}/manifests/${ref}`,
            headers: { accept: MANIFEST_ACCEPT },
            scopes: [this.pullScope],
            what: `get manifest ${this.repository}:${ref}`,
            accept: [200, 404],
          });
    if (res.status === 404) {
      await res.discard();
      throw new OrbError('input', `${this.host}/${this.repository} has no manifest '${ref}'`, {
        hint: 'check the tag or digest (and the repository name); it may not be published yet',
      });
    }
    const bytes = await res.buffer(MAX_MANIFEST_BYTES);
    const digest = sha256Digest(bytes);
    if (ref.startsWith('sha256:') && digest !== ref) {
      throw new OrbError(
        'integrity',
        `manifest ${ref} from ${this.host} has digest ${digest}: the registry returned different bytes`,
      );
    }
    const header = res.header('docker-content-digest');
    if (header && header.startsWith('sha256:') && header !== digest) {
      throw new OrbError(
        'integrity',
        `manifest ${this.repository}:${ref} from ${this.host}: body digest ${digest} differs from the registry's ${header}`,
      );
    }
    const mediaType = (res.header('content-type') ?? '').split(';')[0]!.trim() || guessMediaType(bytes);
    return { bytes, mediaType, digest };
  }

  /** PUT a manifest under `ref` (a tag or its digest); returns whether the registry handled `subject`. */
  async putManifest(
    bytes: Buffer,
    mediaType: string,
    ref: string,
  ): Promise<{ digest: string; subjectHandled: boolean }> {
    checkManifestRef(ref, 'manifest reference');
    const res = await this.request({
      method: 'PUT',
      path: `/v2/${this.repository}/manifests/${ref}`,
      headers: { 'content-type': mediaType },
      body: bytes,
      scopes: [this.pushScope],
      what: `push manifest ${this.repository}:${ref}`,
      accept: [200, 201, 202, 400, 404],
    });
    if (res.status === 400) {
      // A registry that does not take image-spec 1.1 artifacts (an own config media type,
      // artifactType) says MANIFEST_INVALID or similar; the blobs stay for a retry elsewhere.
      const detail = errorText(await res.text(64 << 10).catch(() => ''));
      throw new OrbError(
        'input',
        `push manifest ${this.repository}:${ref}: ${this.host} refused the manifest (HTTP 400${detail ? ': ' + detail : ''})`,
        {
          hint: 'this registry may not accept OCI 1.1 artifacts (our own config media type and artifactType); the uploaded blobs stay there, so publishing again to a registry that does (or after upgrading it) uploads nothing twice',
        },
      );
    }
    if (res.status >= 400) return this.unexpected(res, `push manifest ${this.repository}:${ref}`);
    await res.discard();
    const digest = sha256Digest(bytes);
    const header = res.header('docker-content-digest');
    if (header && header !== digest) {
      throw new OrbError('integrity', `the registry stored manifest ${ref} as ${header}, expected ${digest}`);
    }
    return { digest, subjectHandled: !!res.header('oci-subject') };
  }
}

/** The `errors[0].message` of a distribution error body, or a short excerpt of the body. */
export function errorText(body: string): string {
  if (!body) return '';
  try {
    const j = JSON.parse(body) as { errors?: { code?: string; message?: string; detail?: unknown }[] };
    const e = j.errors?.[0];
    if (e) return [e.code, e.message].filter(Boolean).join(': ');
  } catch {
    /* not JSON */
  }
  return body.slice(0, 200).replace(/\s+/g, ' ').trim();
}

function guessMediaType(bytes: Buffer): string {
  try {
    const j = JSON.parse(bytes.toString('utf8')) as { mediaType?: string; manifests?: unknown };
    return j.mediaType ?? (j.manifests ? OCI_INDEX : OCI_MANIFEST);
  } catch {
    return OCI_MANIFEST;
  }
}
