import http, { type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http';
import https from 'node:https';
import { Readable } from 'node:stream';
import type { HttpWorkers } from '../transfer/http-workers.js';
import { OrbError } from '../core/errors.js';

/**
 * The HTTP layer under the registry client: keep-alive connections, an idle timeout (a stalled
 * link fails instead of hanging a CI job for hours), no automatic redirects (the registry client
 * follows them itself so credentials never go to a storage host), and the retry policy shared by
 * every call: 408/429/5xx and dropped connections are retried with exponential backoff and jitter,
 * honouring Retry-After.
 */
/**
 * A request body: bytes, or a stream factory (so a retry can reopen it). A stream body may name
 * the file region it comes from; then a transfer worker thread sends it, reporting progress
 * through `onProgress` instead of the stream.
 */
export type Body =
  | Buffer
  | string
  | {
      length: number;
      open(): Readable;
      file?: { path: string; start: number };
      onProgress?(n: number): void;
    };

export interface HttpRequest {
  method: string;
  url: string | URL;
  headers?: OutgoingHttpHeaders;
  body?: Body;
  signal?: AbortSignal | undefined;
}

export class HttpResponse {
  constructor(
    readonly status: number,
    readonly headers: IncomingHttpHeaders,
    readonly url: URL,
    readonly stream: Readable,
  ) {}

  header(name: string): string | undefined {
    const v = this.headers[name.toLowerCase()];
    return Array.isArray(v) ? v[0] : v;
  }

  async buffer(limit = 16 << 20): Promise<Buffer> {
    const parts: Buffer[] = [];
    let n = 0;
    for await (const chunk of this.stream) {
      n += (chunk as Buffer).length;
      if (n > limit) {
        this.stream.destroy();
        throw new OrbError('network', `response from ${this.url.host} is larger than ${limit} bytes`);
      }
      parts.push(chunk as Buffer);
    }
    return Buffer.concat(parts);
  }

  async text(limit?: number): Promise<string> {
    return (await this.buffer(limit)).toString('utf8');
  }

  /** Reads and drops the body so the connection can be reused. */
  async discard(): Promise<void> {
    if (this.stream.readableEnded || this.stream.destroyed) return;
    try {
      for await (const _ of this.stream) void _;
    } catch {
      /* the connection is gone anyway */
    }
  }
}

/** A failure worth retrying: dropped connection, timeout, reset. */
export class TransientError extends Error {
  constructor(
    message: string,
    readonly retryAfterMs?: number,
  ) {
    super(message);
    this.name = 'TransientError';
  }
}

export interface HttpClientOptions {
  maxSockets?: number;
  /** transfer worker threads for bodies read from files (uploads) */
  workers?: HttpWorkers;
  /** a request or response with no bytes moving for this long fails (and is retried) */
  idleTimeoutMs?: number;
}

export class HttpClient {
  private readonly httpAgent: http.Agent;
  private readonly httpsAgent: https.Agent;
  readonly idleTimeoutMs: number;
  workers: HttpWorkers | undefined;

  constructor(opts: HttpClientOptions = {}) {
    this.workers = opts.workers;
    const maxSockets = opts.maxSockets ?? 16;
    this.httpAgent = new http.Agent({ keepAlive: true, maxSockets, maxFreeSockets: maxSockets });
    this.httpsAgent = new https.Agent({ keepAlive: true, maxSockets, maxFreeSockets: maxSockets });
    this.idleTimeoutMs = opts.idleTimeoutMs ?? Number(process.env.ORB_HTTP_IDLE_TIMEOUT_MS || 120_000);
  }

  /** One attempt. Rejects with TransientError on network failures; any HTTP status resolves. */
  send(req: HttpRequest): Promise<HttpResponse> {
    const b = req.body;
    if (this.workers && b !== undefined && typeof b === 'object' && !Buffer.isBuffer(b) && b.file)
      return this.sendFromWorker(req, b.file, b.length, b.onProgress);
    const url = typeof req.url === 'string' ? new URL(req.url) : req.url;
    const lib = url.protocol === 'https:' ? https : http;
    const agent = url.protocol === 'https:' ? this.httpsAgent : this.httpAgent;
    const headers: OutgoingHttpHeaders = { 'user-agent': 'orb-actions', ...(req.headers ?? {}) };
    const body = req.body;
    if (body !== undefined) {
      headers['content-length'] = typeof body === 'string' ? Buffer.byteLength(body) : body.length;
    } else if (req.method === 'PUT' || req.method === 'POST' || req.method === 'PATCH') {
      headers['content-length'] = 0;
    }
    return new Promise<HttpResponse>((resolve, reject) => {
      if (req.signal?.aborted) {
        reject(req.signal.reason ?? new OrbError('interrupted', 'interrupted'));
        return;
      }
      let settled = false;
      let source: Readable | undefined;
      const fail = (err: unknown) => {
        if (settled) return;
        settled = true;
        source?.destroy();
        req.signal?.removeEventListener('abort', onAbort);
        if (err instanceof OrbError) reject(err);
        else
          reject(
            new TransientError(
              `${req.method} ${url.host}${url.pathname}: ${(err as Error)?.message ?? String(err)}`,
            ),
          );
      };
      const onAbort = () => {
        const reason = req.signal?.reason ?? new OrbError('interrupted', 'interrupted');
        r.destroy(reason instanceof Error ? reason : new Error(String(reason)));
        fail(reason instanceof OrbError ? reason : new OrbError('interrupted', 'interrupted'));
      };
      const r = lib.request(url, { method: req.method, headers, agent });
      r.setTimeout(this.idleTimeoutMs, () =>
        r.destroy(new Error(`no data for ${Math.round(this.idleTimeoutMs / 1000)} s`)),
      );
      r.on('error', fail);
      r.on('response', (res) => {
        if (settled) {
          res.destroy();
          return;
        }
        settled = true;
        // The body may still be streaming when an early answer (401, 413) arrives: stop sending.
        if (source && !source.readableEnded) {
          source.unpipe(r);
          source.destroy();
          // The request body is incomplete, so this connection cannot carry another request.
          res.once('close', () => r.destroy());
        }
        req.signal?.removeEventListener('abort', onAbort);
        if (req.signal) {
          const s = req.signal;
          const abortBody = () => res.destroy(new OrbError('interrupted', 'interrupted'));
          s.addEventListener('abort', abortBody, { once: true });
          res.once('close', () => s.removeEventListener('abort', abortBody));
        }
        resolve(new HttpResponse(res.statusCode ?? 0, res.headers, url, res));
      });
      req.signal?.addEventListener('abort', onAbort, { once: true });
      if (body === undefined) r.end();
      else if (typeof body === 'string' || Buffer.isBuffer(body)) r.end(body);
      else {
        source = body.open();
        source.on('error', (err) => {
          r.destroy(err);
          // A local read error is not the network's fault: report it as it is.
          fail(new OrbError('input', `cannot read the data to upload: ${err.message}`, { cause: err }));
        });
        source.pipe(r);
      }
    });
  }

  /** The body is a file region: a worker thread reads and sends it. */
  private async sendFromWorker(
    req: HttpRequest,
    file: { path: string; start: number },
    length: number,
    onProgress?: (n: number) => void,
  ): Promise<HttpResponse> {
    if (req.signal?.aborted) throw req.signal.reason ?? new OrbError('interrupted', 'interrupted');
    const url = typeof req.url === 'string' ? new URL(req.url) : req.url;
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries(req.headers ?? {})) if (v !== undefined) headers[k] = String(v);
    const done = await this.workers!.run<{
      status?: number;
      headers?: IncomingHttpHeaders;
      body?: string;
      error?: { kind: string; message: string };
    }>(
      {
        op: 'put',
        method: req.method,
        url: url.toString(),
        headers,
        path: file.path,
        start: file.start,
        length,
        idleMs: this.idleTimeoutMs,
      },
      onProgress ? { onProgress } : {},
    );
    if (done.error) {
      if (done.error.kind === 'input') throw new OrbError('input', done.error.message);
      throw new TransientError(`${req.method} ${url.host}${url.pathname}: ${done.error.message}`);
    }
    return new HttpResponse(
      done.status ?? 0,
      done.headers ?? {},
      url,
      Readable.from([Buffer.from(done.body ?? '')]),
    );
  }

  close(): void {
    this.httpAgent.destroy();
    this.httpsAgent.destroy();
  }
}

export interface RetryPolicy {
  /** total attempts, the first included */
  attempts: number;
  baseDelayMs: number;
  maxDelayMs: number;
  /** a Retry-After longer than this is not waited for: the error says what the server asked */
  maxRetryAfterMs: number;
}

export function defaultRetryPolicy(): RetryPolicy {
  const base = Number(process.env.ORB_RETRY_BASE_MS);
  return {
    attempts: Number(process.env.ORB_RETRY_ATTEMPTS) || 6,
    baseDelayMs: Number.isFinite(base) && base >= 0 && process.env.ORB_RETRY_BASE_MS ? base : 500,
    maxDelayMs: 30_000,
    maxRetryAfterMs: 300_000,
  };
}

export function isRetryableStatus(status: number): boolean {
  return status === 408 || status === 429 || (status >= 500 && status !== 501 && status !== 505);
}

/** Retry-After as milliseconds: delta-seconds or an HTTP date. */
export function parseRetryAfter(value: string | undefined, now = Date.now()): number | undefined {
  if (!value) return undefined;
  const v = value.trim();
  if (/^\d+(\.\d+)?$/.test(v)) return Math.round(Number(v) * 1000);
  const t = Date.parse(v);
  return Number.isFinite(t) ? Math.max(0, t - now) : undefined;
}

/** Backoff for attempt n (1-based) with full jitter in the upper half; Retry-After wins when given. */
export function backoffMs(attempt: number, policy: RetryPolicy, retryAfterMs?: number): number {
  if (retryAfterMs !== undefined) return retryAfterMs;
  const exp = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (attempt - 1));
  return Math.round(exp / 2 + (Math.random() * exp) / 2);
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(new OrbError('interrupted', 'interrupted'));
      return;
    }
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(new OrbError('interrupted', 'interrupted'));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
