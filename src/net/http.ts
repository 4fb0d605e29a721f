import http, { type IncomingMessage, type OutgoingHttpHeaders } from 'node:http';
import https from 'node:https';
import tls from 'node:tls';
import { Readable } from 'node:stream';
import { OrbError } from '../core/errors.js';
import { ProxyHttpsAgent, proxyFor } from './proxy.js';
import { isConnectionError, isRetryableStatus, parseRetryAfter, retry, type RetryPolicy } from './retry.js';

/**
 * The one place that speaks HTTP for orb (registry client, file-like stores, build downloads,
 * transfer worker threads): keep-alive agents, an idle timeout (a stalled link fails instead of
 * hanging a CI job for hours), abort at any point, bodies from bytes or from a stream, and
 * redirects followed without carrying credentials to another origin. Retries are the caller's
 * choice: `sendWithRetry` applies the one policy of retry.ts.
 */

/**
 * A request body: bytes; a factory that opens the body afresh (replayable: a retry reopens it);
 * or a one-shot stream, which is never sent twice, so a request with one is never retried.
 */
export type RequestBody = Buffer | string | { length?: number; open(): Readable } | Readable;

export interface SendOptions {
  method?: string;
  url: URL;
  headers?: OutgoingHttpHeaders;
  body?: RequestBody | undefined;
  signal?: AbortSignal | undefined;
  /** a request or response with no bytes moving for this long fails with ETIMEDOUT */
  idleMs?: number | undefined;
  agents?: Agents | undefined;
}

export interface Agents {
  http: http.Agent;
  https: https.Agent;
}

/** TLS settings of one server (a mirror's `ca` and `skip_verify`). */
export interface TlsSettings {
  ca?: (string | Buffer)[];
  rejectUnauthorized?: boolean;
}

/** Keep-alive agents; the https one tunnels through HTTPS_PROXY where NO_PROXY does not say otherwise. */
export function makeAgents(maxSockets: number, tlsSettings: TlsSettings = {}): Agents {
  const ca = tlsSettings.ca?.length ? { ca: [...tls.getCACertificates('default'), ...tlsSettings.ca] } : {};
  return {
    http: new http.Agent({ keepAlive: true, maxSockets, maxFreeSockets: maxSockets }),
    https: new ProxyHttpsAgent({
      keepAlive: true,
      maxSockets,
      maxFreeSockets: maxSockets,
      ...ca,
      ...(tlsSettings.rejectUnauthorized === false ? { rejectUnauthorized: false } : {}),
    }),
  };
}

let shared: Agents | undefined;
/** The process-wide agents of callers that do not bring their own. */
export function sharedAgents(): Agents {
  return (shared ??= makeAgents(64));
}

export function isReplayable(body: RequestBody | undefined): boolean {
  return !(body instanceof Readable);
}

function bodyLength(body: RequestBody): number | undefined {
  if (typeof body === 'string') return Buffer.byteLength(body);
  if (Buffer.isBuffer(body)) return body.length;
  if (body instanceof Readable) return undefined;
  return body.length;
}

function interrupted(signal: AbortSignal | undefined): OrbError {
  const r: unknown = signal?.reason;
  return r instanceof OrbError ? r : new OrbError('interrupted', 'interrupted');
}

/**
 * One request, one attempt, no redirects followed. Resolves with the response whatever its
 * status. Rejects with the connection's error (its `code` kept: ECONNRESET, ETIMEDOUT...),
 * OrbError('input') when the body cannot be read, OrbError('interrupted') on abort. When the
 * server answers before the body is sent (401, 413), sending stops and the connection is not
 * reused. An abort after the answer destroys the response stream.
 */
export function sendOnce(o: SendOptions): Promise<IncomingMessage> {
  const url = o.url;
  const secure = url.protocol === 'https:';
  const agents = o.agents ?? sharedAgents();
  const method = o.method ?? 'GET';
  const headers: OutgoingHttpHeaders = { 'user-agent': 'orb-actions', ...(o.headers ?? {}) };
  const body = o.body;
  const len = body === undefined ? undefined : bodyLength(body);
  if (len !== undefined) headers['content-length'] = len;
  else if (body === undefined && (method === 'PUT' || method === 'POST' || method === 'PATCH'))
    headers['content-length'] = 0;
  return new Promise<IncomingMessage>((resolve, reject) => {
    if (o.signal?.aborted) {
      reject(interrupted(o.signal));
      return;
    }
    let settled = false;
    let source: Readable | undefined;
    const fail = (err: unknown) => {
      if (settled) return;
      settled = true;
      source?.destroy();
      o.signal?.removeEventListener('abort', onAbort);
      reject(err);
    };
    const onAbort = () => {
      const e = interrupted(o.signal);
      r.destroy(e);
      fail(e);
    };
    // an http target behind HTTP_PROXY: the request goes to the proxy with the absolute URI
    const viaProxy = secure ? undefined : proxyFor(url);
    const r = viaProxy
      ? http.request({
          host: viaProxy.url.hostname.replace(/^\[|\]$/g, ''),
          port: Number(viaProxy.url.port) || 80,
          path: url.href,
          method,
          headers: {
            host: url.host,
            ...headers,
            ...(viaProxy.auth ? { 'proxy-authorization': viaProxy.auth } : {}),
          },
          agent: agents.http,
        })
      : (secure ? https : http).request(url, {
          method,
          headers,
          agent: secure ? agents.https : agents.http,
        });
    if (o.idleMs) {
      const idle = o.idleMs;
      r.setTimeout(idle, () =>
        r.destroy(
          Object.assign(new Error(`no data from ${url.host} for ${Math.round(idle / 1000)} s`), {
            code: 'ETIMEDOUT',
          }),
        ),
      );
    }
    r.on('error', fail);
    r.on('response', (res) => {
      if (settled) {
        res.destroy();
        return;
      }
      settled = true;
      if (source && !source.readableEnded) {
        source.unpipe(r);
        source.destroy();
        // the request body is incomplete, so this connection cannot carry another request
        res.once('close', () => r.destroy());
      }
      o.signal?.removeEventListener('abort', onAbort);
      if (o.signal) {
        const s = o.signal;
        const abortBody = () => res.destroy(interrupted(s));
        s.addEventListener('abort', abortBody, { once: true });
        res.once('close', () => s.removeEventListener('abort', abortBody));
      }
      resolve(res);
    });
    o.signal?.addEventListener('abort', onAbort, { once: true });
    if (body === undefined) r.end();
    else if (typeof body === 'string' || Buffer.isBuffer(body)) r.end(body);
    else {
      source = body instanceof Readable ? body : body.open();
      source.on('error', (err) => {
        r.destroy(err);
        // a local read error is not the network's fault: report it as it is
        fail(new OrbError('input', `cannot read the data to upload: ${err.message}`, { cause: err }));
      });
      source.pipe(r);
    }
  });
}

export interface FollowOptions extends SendOptions {
  /** headers sent to the first origin only (tokens): dropped when a redirect leaves it */
  authHeaders?: Record<string, string> | undefined;
  /** follow 301/302/303/307/308 (default true) */
  follow?: boolean;
  maxHops?: number;
}

/** sendOnce, following redirects; credentials in `authHeaders` stay with the first origin. */
export async function sendFollowing(o: FollowOptions): Promise<{ res: IncomingMessage; url: URL }> {
  let url = o.url;
  const origin = url.origin;
  const maxHops = o.maxHops ?? 10;
  for (let hop = 0; ; hop++) {
    const headers = { ...(o.headers ?? {}), ...(url.origin === origin ? (o.authHeaders ?? {}) : {}) };
    const res = await sendOnce({ ...o, url, headers });
    const status = res.statusCode ?? 0;
    const loc = res.headers.location;
    if (o.follow === false || !loc || ![301, 302, 303, 307, 308].includes(status)) return { res, url };
    res.resume();
    if (hop >= maxHops) throw new OrbError('network', `too many redirects from ${o.url.host}`);
    url = new URL(loc, url);
  }
}

/** Thrown by sendWithRetry for a retryable status that stayed after the last attempt. */
export class RetryableStatusError extends OrbError {
  readonly status: number;
  readonly retryAfterMs: number | undefined;
  constructor(status: number, what: string, retryAfterMs?: number) {
    super('network', `${what}: HTTP ${status}`);
    this.status = status;
    this.retryAfterMs = retryAfterMs;
  }
}

/**
 * sendFollowing under the retry policy: 408/429/5xx and dropped connections are tried again
 * (Retry-After honoured), except when the body is a one-shot stream, which cannot be sent twice.
 * Resolves with the first response that is not a retryable status.
 */
export function sendWithRetry(
  o: FollowOptions & { what: string; policy?: RetryPolicy; onRetry?(line: string): void },
): Promise<{ res: IncomingMessage; url: URL }> {
  const replayable = isReplayable(o.body);
  return retry(
    async () => {
      const r = await sendFollowing(o);
      const status = r.res.statusCode ?? 0;
      if (!isRetryableStatus(status)) return r;
      r.res.resume();
      throw new RetryableStatusError(status, o.what, parseRetryAfter(r.res.headers['retry-after']));
    },
    {
      what: o.what,
      ...(o.policy ? { policy: o.policy } : {}),
      ...(o.signal ? { signal: o.signal } : {}),
      ...(o.onRetry ? { onRetry: o.onRetry } : {}),
      classify: (err) => {
        if (!replayable) return { retry: false };
        if (err instanceof RetryableStatusError)
          return {
            retry: true,
            ...(err.retryAfterMs !== undefined ? { retryAfterMs: err.retryAfterMs } : {}),
          };
        return { retry: isConnectionError(err) };
      },
    },
  );
}
