import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http';
import { Readable } from 'node:stream';
import type { HttpWorkers } from '../net/http-workers.js';
import { OrbError } from '../core/errors.js';
import { makeAgents, sendOnce, type Agents, type TlsSettings } from '../net/http.js';
import type { PutDone, WorkerFailure } from '../net/http-worker.js';

/**
 * The registry client's view of src/net/http.ts: its own keep-alive agents, responses as
 * HttpResponse, network failures as TransientError (the registry client retries them under the
 * policy of src/net/retry.ts), no automatic redirects (the registry client follows them itself so
 * credentials never go to a storage host), and file-region bodies sent by a transfer worker.
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
  /** trust and verification of this client's https servers (a mirror's ca, skip_verify) */
  tls?: TlsSettings;
}

export class HttpClient {
  private readonly agents: Agents;
  readonly idleTimeoutMs: number;
  workers: HttpWorkers | undefined;

  constructor(opts: HttpClientOptions = {}) {
    this.workers = opts.workers;
    const maxSockets = opts.maxSockets ?? 16;
    this.agents = makeAgents(maxSockets, opts.tls);
    this.idleTimeoutMs = opts.idleTimeoutMs ?? Number(process.env.ORB_HTTP_IDLE_TIMEOUT_MS || 120_000);
  }

  /** One attempt. Rejects with TransientError on network failures; any HTTP status resolves. */
  async send(req: HttpRequest): Promise<HttpResponse> {
    const b = req.body;
    if (this.workers && b !== undefined && typeof b === 'object' && !Buffer.isBuffer(b) && b.file)
      return this.sendFromWorker(req, b.file, b.length, b.onProgress);
    const url = typeof req.url === 'string' ? new URL(req.url) : req.url;
    try {
      const res = await sendOnce({
        method: req.method,
        url,
        headers: req.headers ?? {},
        body: req.body,
        signal: req.signal,
        idleMs: this.idleTimeoutMs,
        agents: this.agents,
      });
      return new HttpResponse(res.statusCode ?? 0, res.headers, url, res);
    } catch (err) {
      if (err instanceof OrbError) throw err;
      throw new TransientError(
        `${req.method} ${url.host}${url.pathname}: ${(err as Error)?.message ?? String(err)}`,
      );
    }
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
    const done = await this.workers!.run<Partial<PutDone> & { error?: WorkerFailure }>(
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
    this.agents.http.destroy();
    this.agents.https.destroy();
  }
}
