import { createHash } from 'node:crypto';
import type { OutgoingHttpHeaders } from 'node:http';
import { Readable } from 'node:stream';
import type { Logger } from '../core/log.js';
import { isRetryableStatus } from '../net/retry.js';
import { Authenticator } from './auth.js';
import { HttpResponse } from './http.js';
import { mirrorUrl, type MirrorConfig, type MirrorHost } from './mirrors.js';

/**
 * Asking the mirrors, in order, before the origin. A mirror that refuses the connection, answers
 * 404, 5xx or will not let us in is skipped for this request (said once per mirror in the log) and
 * the next one, finally the origin, is asked. Only a mirror's own `header` entries and an
 * anonymous token it hands out travel to it: the origin's credentials never do.
 */
export class MirrorSet {
  private readonly said = new Set<string>();
  private readonly auths = new Map<string, Authenticator>();

  constructor(
    readonly config: MirrorConfig,
    readonly originHost: string,
    readonly repository: string,
    private readonly log: Logger,
    private readonly signal?: AbortSignal,
  ) {}

  get size(): number {
    return this.config.mirrors.length;
  }

  /** Mirrors that may serve `ref`: any pull mirror for a digest, `resolve` ones for a tag. */
  candidates(ref: string): MirrorHost[] {
    const byDigest = ref.startsWith('sha256:');
    return this.config.mirrors.filter(
      (m) => m.capabilities.has('pull') && (byDigest || m.capabilities.has('resolve')),
    );
  }

  skip(m: MirrorHost, why: string): void {
    if (this.said.has(m.origin)) {
      this.log.debug(`mirror ${m.origin}: ${why}; skipped`);
      return;
    }
    this.said.add(m.origin);
    this.log.info(`mirror ${m.origin}: ${why}; using the next mirror or the origin (said once)`);
  }

  private auth(m: MirrorHost): Authenticator {
    let a = this.auths.get(m.origin);
    if (!a)
      this.auths.set(m.origin, (a = new Authenticator(m.http, new URL(m.origin).host, undefined, this.log)));
    return a;
  }

  /** The Authorization a mirror asked for (after a request to it), for the transfer workers. */
  authorization(m: MirrorHost): Promise<string | undefined> {
    return this.auth(m).header([`repository:${this.repository}:pull`]);
  }

  /** One request to one mirror: its own headers, an anonymous token when it asks for one. */
  async send(
    m: MirrorHost,
    method: string,
    kind: 'blobs' | 'manifests',
    ref: string,
    headers: OutgoingHttpHeaders,
  ): Promise<HttpResponse> {
    const url = mirrorUrl(m, this.originHost, this.repository, kind, ref);
    const scopes = [`repository:${this.repository}:pull`];
    const auth = this.auth(m);
    for (let tries = 0; ; tries++) {
      const authz = await auth.header(scopes);
      const res = await m.http.send({
        method,
        url,
        headers: { ...headers, ...m.headers, ...(authz ? { authorization: authz } : {}) },
        signal: this.signal,
      });
      if (res.status === 401 && tries === 0 && auth.learn(res)) {
        await res.discard();
        continue;
      }
      return res;
    }
  }

  /**
   * The first mirror's answer for `kind/ref` that is not a reason to skip it (2xx, 3xx, 416), or
   * undefined when every mirror was skipped.
   */
  async first(
    method: string,
    kind: 'blobs' | 'manifests',
    ref: string,
    headers: OutgoingHttpHeaders,
  ): Promise<HttpResponse | undefined> {
    for (const m of this.candidates(ref)) {
      let res: HttpResponse;
      try {
        res = await this.send(m, method, kind, ref, headers);
      } catch (err) {
        if (this.signal?.aborted) throw err;
        this.skip(m, (err as Error).message);
        continue;
      }
      if (res.status < 400 || res.status === 416) return res;
      await res.discard();
      const why =
        res.status === 404
          ? `has no ${kind === 'blobs' ? 'blob' : 'manifest'} ${ref.slice(0, 19)} (HTTP 404)`
          : isRetryableStatus(res.status)
            ? `HTTP ${res.status}`
            : `HTTP ${res.status} (refused)`;
      this.skip(m, why);
    }
    return undefined;
  }

  /**
   * A blob from the mirrors. A small one read whole (configs, manifests' neighbours) is checked
   * here, so a mirror with a bad copy costs a fallback to the origin instead of the pull; bigger
   * ones are checked by the caller as they stream (the transfer workers fall back themselves).
   */
  async blob(digest: string, size: number, headers: OutgoingHttpHeaders): Promise<HttpResponse | undefined> {
    const res = await this.first('GET', 'blobs', digest, headers);
    if (!res || res.status !== 200 || size > SMALL_BLOB) return res;
    const m = this.config.mirrors.find((x) => x.origin === res.url.origin);
    let bytes: Buffer;
    try {
      bytes = await res.buffer(size);
    } catch (err) {
      if (m) this.skip(m, `blob ${digest.slice(0, 19)}: ${(err as Error).message}`);
      return undefined;
    }
    if ('sha256:' + createHash('sha256').update(bytes).digest('hex') !== digest) {
      if (m) this.skip(m, `blob ${digest.slice(0, 19)} arrived with another digest`);
      return undefined;
    }
    return new HttpResponse(res.status, res.headers, res.url, Readable.from([bytes]));
  }
}

/** Blobs up to this size are verified on arrival from a mirror (see MirrorSet.blob). */
const SMALL_BLOB = 4 << 20;
