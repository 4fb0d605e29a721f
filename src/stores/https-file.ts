import type { Readable } from 'node:stream';
import { OrbError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { defaultRetryPolicy, isRetryableStatus, parseRetryAfter, sleep } from '../net/retry.js';
import { redactUrl, request, statusError, type HttpResponse } from './https-client.js';
import { fastRangeGet } from './https-fastget.js';
import { rangedStream, RangeIgnoredError, type RangeFetch, type RangeFetchInto } from './https-ranged.js';

/**
 * One remote file over HTTP(S): probed once (size, Range support, published digests), then read
 * from any offset with parallel ranged GETs. Shared by the https://, GitLab and GitHub stores.
 * Redirects (GitHub assets, GitLab object storage) are resolved once and re-resolved when the
 * short-lived target stops answering.
 */
export interface RemoteFileOptions {
  headers?: Record<string, string>;
  /** sent to the first origin only (never to a redirect target on another host) */
  authHeaders?: Record<string, string>;
  connections?: number;
  segmentSize?: number;
  log?: Logger;
  signal?: AbortSignal;
  what: string;
  /** a new URL for the same file when the server refuses the current one (401/403) */
  refreshUrl?: () => Promise<string>;
}

export interface Probe {
  size: number;
  ranges: boolean;
  finalUrl: string;
  contentType: string;
  headers: HttpResponse['headers'];
}

/** sha256 hex published in response headers, if any (S3 metadata, RFC 9530, Artifactory). */
export function digestFromHeaders(h: HttpResponse['headers']): string | undefined {
  for (const name of ['x-amz-meta-sha256', 'x-goog-meta-sha256', 'x-checksum-sha256', 'x-orb-sha256']) {
    const v = h[name];
    if (typeof v === 'string' && /^(sha256:)?[a-f0-9]{64}$/i.test(v.trim()))
      return v
        .trim()
        .toLowerCase()
        .replace(/^sha256:/, '');
  }
  for (const name of ['repr-digest', 'content-digest', 'digest']) {
    const v = h[name];
    if (typeof v !== 'string') continue;
    const m = /sha-256=:?([A-Za-z0-9+/=]{43,44}):?/i.exec(v);
    if (m) {
      const buf = Buffer.from(m[1]!, 'base64');
      if (buf.length === 32) return buf.toString('hex');
    }
  }
  return undefined;
}

export class RemoteFile {
  private probed?: Probe;
  constructor(
    public url: string,
    private readonly opts: RemoteFileOptions,
  ) {}

  /** A fresh URL when the current one is refused (an expired pre-signed URL), if the owner can make one. */
  private async renew(): Promise<boolean> {
    if (!this.opts.refreshUrl) return false;
    this.url = await this.opts.refreshUrl();
    if (this.probed) this.probed.finalUrl = this.url;
    return true;
  }

  private get signal(): AbortSignal | undefined {
    return this.opts.signal;
  }

  async probe(): Promise<Probe> {
    if (this.probed) return this.probed;
    // GET of one byte rather than HEAD: pre-signed GET URLs reject HEAD (signature covers the method).
    const ask = () =>
      request(this.url, {
        headers: { ...(this.opts.headers ?? {}), range: 'bytes=0-0' },
        authHeaders: this.opts.authHeaders ?? {},
        ...(this.signal ? { signal: this.signal } : {}),
        timeoutMs: 60_000,
      });
    let res = await ask();
    if ((res.status === 401 || res.status === 403) && this.opts.refreshUrl) {
      res.body.resume();
      await this.renew();
      res = await ask();
    }
    const status = res.status;
    if (status === 416) {
      res.body.resume();
      this.probed = {
        size: 0,
        ranges: true,
        finalUrl: res.url,
        contentType: String(res.headers['content-type'] ?? ''),
        headers: res.headers,
      };
      return this.probed;
    }
    if (status !== 206 && status !== 200) throw await statusError(res, this.opts.what);
    res.body.destroy();
    let size: number;
    if (status === 206) {
      const m = /\/(\d+)\s*$/.exec(String(res.headers['content-range'] ?? ''));
      if (!m)
        throw new OrbError(
          'network',
          `${this.opts.what}: ${redactUrl(res.url)} sent 206 without a total size in Content-Range`,
        );
      size = Number(m[1]);
    } else {
      size = Number(res.headers['content-length']);
      if (!Number.isFinite(size))
        throw new OrbError(
          'network',
          `${this.opts.what}: ${redactUrl(res.url)} does not say how large the file is`,
        );
    }
    this.probed = {
      size,
      ranges: status === 206,
      finalUrl: res.url,
      contentType: String(res.headers['content-type'] ?? ''),
      headers: res.headers,
    };
    return this.probed;
  }

  /** Range fetcher against the resolved URL; a 403/404 from a redirect target re-resolves once. */
  private fetcher(): RangeFetch {
    return async (start, end, signal) => {
      const p = await this.probe();
      const attempt = async (url: string, auth: boolean) =>
        request(url, {
          headers: { ...(this.opts.headers ?? {}), range: `bytes=${start}-${end}` },
          authHeaders: auth ? (this.opts.authHeaders ?? {}) : {},
          signal,
          timeoutMs: 60_000,
        });
      let res = await attempt(p.finalUrl, new URL(p.finalUrl).origin === new URL(this.url).origin);
      if ((res.status === 403 || res.status === 404 || res.status === 401) && p.finalUrl !== this.url) {
        // the signed redirect target expired: ask the origin again
        res.body.resume();
        res = await attempt(this.url, true);
        p.finalUrl = res.url;
      }
      if ((res.status === 401 || res.status === 403) && this.opts.refreshUrl) {
        // our own signed URL expired: sign a new one
        res.body.resume();
        await this.renew();
        res = await attempt(this.url, true);
        p.finalUrl = res.url;
      }
      if (res.status === 206) {
        const m = /bytes (\d+)-(\d+)\//.exec(String(res.headers['content-range'] ?? ''));
        if (!m || Number(m[1]) !== start) {
          res.body.destroy();
          throw new OrbError(
            'network',
            `${this.opts.what}: asked for bytes from ${start}, got ${String(res.headers['content-range'])}`,
          );
        }
        return res.body as Readable;
      }
      if (res.status === 200) {
        if (start === 0 && end === p.size - 1) return res.body as Readable;
        res.body.destroy();
        throw new RangeIgnoredError(this.opts.what);
      }
      throw await statusError(res, this.opts.what);
    };
  }

  /** Zero-copy ranged GETs for plain-HTTP targets (anything unexpected falls back to fetcher()). */
  private fetcherInto(p: Probe): RangeFetchInto | undefined {
    const url = new URL(p.finalUrl);
    if (url.protocol !== 'http:' || process.env.ORB_NO_FAST_GET) return undefined;
    const sameOrigin = url.origin === new URL(this.url).origin;
    const headers = { ...(this.opts.headers ?? {}), ...(sameOrigin ? (this.opts.authHeaders ?? {}) : {}) };
    return async (start, target, signal, onData) => {
      const r = await fastRangeGet(url, headers, start, target, {
        signal,
        onData,
        wholeFileSize: p.size,
        idleMs: 60_000,
      });
      if (r.kind === 'status' && r.status && isRetryableStatus(r.status)) {
        // busy server: honour Retry-After before the regular client asks again
        const policy = defaultRetryPolicy();
        const wait = Math.min(policy.maxRetryAfterMs, parseRetryAfter(r.headers?.['retry-after']) ?? 500);
        await sleep(wait, signal);
      }
      return r.kind === 'ok' ? 'ok' : 'fallback';
    };
  }

  /**
   * Bytes from `offset` up to `end` (exclusive; default: the end of the file). When the server
   * ignores Range, the stream is the whole file from 0 and the returned offset and end say so
   * (the caller must then rewrite, never append).
   */
  async read(offset = 0, end?: number): Promise<{ stream: Readable; offset: number; end: number }> {
    const p = await this.probe();
    const stop = p.ranges ? Math.min(end ?? p.size, p.size) : p.size;
    const start = p.ranges ? Math.min(offset, stop) : 0;
    const into = p.ranges ? this.fetcherInto(p) : undefined;
    const stream = rangedStream({
      fetch: this.fetcher(),
      ...(into ? { fetchInto: into } : {}),
      // rangedStream reads [offset, size): a bounded read is a shorter "file"
      size: stop,
      offset: start,
      connections: p.ranges ? (this.opts.connections ?? 8) : 1,
      ...(this.opts.segmentSize ? { segmentSize: this.opts.segmentSize } : {}),
      ...(this.signal ? { signal: this.signal } : {}),
      ...(this.opts.log ? { log: this.opts.log } : {}),
      what: this.opts.what,
    });
    return { stream, offset: start, end: stop };
  }

  /** The first `n` bytes (format detection), one short request. */
  async head(n: number): Promise<Buffer> {
    const p = await this.probe();
    const len = Math.min(n, p.size);
    if (len === 0) return Buffer.alloc(0);
    const ctl = new AbortController();
    const parts: Buffer[] = [];
    let got = 0;
    let stream: Readable;
    try {
      stream = p.ranges ? await this.fetcher()(0, len - 1, ctl.signal) : (await this.read(0)).stream;
    } catch (err) {
      ctl.abort();
      throw err;
    }
    for await (const c of stream) {
      parts.push(c as Buffer);
      got += (c as Buffer).length;
      if (got >= len) break;
    }
    stream.destroy();
    return Buffer.concat(parts).subarray(0, len);
  }

  /** Whole small body (manifests, JSON bundles, .sha256 side files). */
  async text(limit = 8 << 20): Promise<Buffer> {
    const p = await this.probe();
    if (p.size > limit)
      throw new OrbError(
        'input',
        `${this.opts.what}: ${redactUrl(this.url)} is ${p.size} bytes, expected a small document`,
      );
    const { stream } = await this.read(0);
    const parts: Buffer[] = [];
    for await (const c of stream) parts.push(c as Buffer);
    return Buffer.concat(parts);
  }
}
