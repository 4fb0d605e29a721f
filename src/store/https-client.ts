import http, { type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import https from 'node:https';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { OrbError } from '../core/errors.js';
import type { Logger } from '../core/log.js';

/**
 * A small HTTP client for the file-like stores (HTTPS downloads, GitLab generic packages, GitHub
 * release assets): keep-alive agents, manual redirects that never carry credentials to another
 * origin, retries with backoff that honour Retry-After, and plain HTTP only for loopback.
 */
export interface HttpResponse {
  status: number;
  headers: IncomingHttpHeaders;
  /** final URL after redirects */
  url: string;
  body: IncomingMessage;
}

export interface HttpRequest {
  method?: string;
  headers?: Record<string, string>;
  /** headers only sent to the first origin (tokens): dropped when a redirect leaves it */
  authHeaders?: Record<string, string>;
  body?: Buffer | string | (() => Readable);
  /** follow redirects (GET/HEAD); default true */
  follow?: boolean;
  signal?: AbortSignal;
  /** idle socket timeout */
  timeoutMs?: number;
}

const agents = {
  http: new http.Agent({ keepAlive: true, maxSockets: 64 }),
  https: new https.Agent({ keepAlive: true, maxSockets: 64 }),
};

export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d+\.\d+\.\d+$/.test(h);
}

/** Plain http:// only for loopback (tests, local mirrors) or when the caller explicitly allows it. */
export function checkUrlScheme(url: URL, allowPlainHttp = false): void {
  if (url.protocol === 'https:') return;
  if (url.protocol === 'http:' && (allowPlainHttp || isLoopbackHost(url.hostname))) return;
  throw new OrbError('usage', `refusing ${url.protocol}// URL ${redactUrl(url.href)}`, {
    hint: 'use https:// (plain http:// is accepted only for 127.0.0.1/localhost or with --plain-http)',
  });
}

/** The URL without query string secrets (pre-signed signatures, tokens) and user info. */
export function redactUrl(href: string): string {
  try {
    const u = new URL(href);
    u.username = '';
    u.password = '';
    for (const k of [...u.searchParams.keys()]) {
      if (/signature|credential|token|key|sig|secret|auth/i.test(k)) u.searchParams.set(k, '***');
    }
    return u.href;
  } catch {
    return href.replace(/\?.*$/, '?…');
  }
}

export class HttpStatusError extends OrbError {
  constructor(
    readonly status: number,
    readonly url: string,
    message: string,
    readonly retryAfterMs?: number,
    hint?: string,
  ) {
    super('network', message, hint ? { hint } : {});
  }
}

export function retryAfterMs(headers: IncomingHttpHeaders): number | undefined {
  const v = headers['retry-after'];
  if (!v) return undefined;
  const secs = Number(v);
  if (Number.isFinite(secs)) return Math.max(0, secs * 1000);
  const at = Date.parse(v);
  return Number.isFinite(at) ? Math.max(0, at - Date.now()) : undefined;
}

function once(url: URL, req: HttpRequest, headers: Record<string, string>): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    const mod = url.protocol === 'https:' ? https : http;
    const body = req.body;
    const r = mod.request(
      url,
      {
        method: req.method ?? 'GET',
        headers,
        agent: url.protocol === 'https:' ? agents.https : agents.http,
        signal: req.signal,
      },
      resolve,
    );
    r.on('error', reject);
    if (req.timeoutMs) {
      r.setTimeout(req.timeoutMs, () =>
        r.destroy(
          new OrbError('timeout', `no data from ${url.host} for ${Math.round(req.timeoutMs! / 1000)} s`),
        ),
      );
    }
    if (body === undefined) r.end();
    else if (typeof body === 'function') {
      const src = body();
      src.on('error', (err) => r.destroy(err));
      src.pipe(r);
    } else r.end(body);
  });
}

/** One request, following redirects; does not retry and does not check the status. */
export async function request(href: string, req: HttpRequest = {}): Promise<HttpResponse> {
  let url = new URL(href);
  const origin = url.origin;
  for (let hop = 0; hop < 10; hop++) {
    const headers: Record<string, string> = { 'user-agent': 'orb-actions', ...(req.headers ?? {}) };
    if (url.origin === origin) Object.assign(headers, req.authHeaders ?? {});
    const res = await once(url, req, headers);
    const status = res.statusCode ?? 0;
    const loc = res.headers.location;
    if (req.follow !== false && loc && [301, 302, 303, 307, 308].includes(status)) {
      res.resume();
      url = new URL(loc, url);
      continue;
    }
    return { status, headers: res.headers, url: url.href, body: res };
  }
  throw new OrbError('network', `too many redirects from ${redactUrl(href)}`);
}

export async function readBody(res: HttpResponse, limit = 16 << 20): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of res.body) {
    n += (c as Buffer).length;
    if (n > limit) {
      res.body.destroy();
      throw new OrbError('network', `response from ${redactUrl(res.url)} is larger than ${limit} bytes`);
    }
    chunks.push(c as Buffer);
  }
  return Buffer.concat(chunks);
}

/** Turns an unexpected status into an error with the server's message (trimmed) and a hint. */
export async function statusError(res: HttpResponse, what: string): Promise<HttpStatusError> {
  let text = '';
  try {
    text = (await readBody(res, 64 << 10)).toString('utf8');
  } catch {
    /* body is best effort */
  }
  const s3 = /<Code>([^<]+)<\/Code>(?:.*?<Message>([^<]+)<\/Message>)?/s.exec(text);
  const detail = s3 ? `${s3[1]}${s3[2] ? ': ' + s3[2] : ''}` : text.replace(/\s+/g, ' ').trim().slice(0, 300);
  const url = redactUrl(res.url);
  let hint: string | undefined;
  if (res.status === 403 && presignedExpiry(res.url) !== undefined && /expired/i.test(text)) {
    const at = presignedExpiry(res.url)!;
    return new HttpStatusError(
      403,
      url,
      `the pre-signed URL expired at ${new Date(at).toISOString()} (${what})`,
      undefined,
      'ask the publisher for a new pre-signed URL (orb publish --presign, at most 7 days) and rerun: the download resumes from what is already on disk',
    );
  }
  if (res.status === 401 || res.status === 403)
    hint = 'check the token or credentials and that they grant access to this resource';
  if (res.status === 404)
    hint =
      'check the reference: the project, bucket, release or file does not exist or is not visible with these credentials';
  return new HttpStatusError(
    res.status,
    url,
    `${what}: HTTP ${res.status}${detail ? ` (${detail})` : ''} from ${url}`,
    retryAfterMs(res.headers),
    hint,
  );
}

/** When a SigV4 pre-signed URL stops working (ms since epoch), if `href` is one. */
export function presignedExpiry(href: string): number | undefined {
  try {
    const q = new URL(href).searchParams;
    const date = q.get('X-Amz-Date');
    const expires = Number(q.get('X-Amz-Expires'));
    if (!date || !Number.isFinite(expires)) return undefined;
    const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(date);
    if (!m) return undefined;
    return Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!) + expires * 1000;
  } catch {
    return undefined;
  }
}

export function isRetryable(err: unknown): boolean {
  if (err instanceof HttpStatusError)
    return (
      err.status === 408 ||
      err.status === 429 ||
      (err.status >= 500 && err.status !== 501 && err.status !== 505)
    );
  if (err instanceof OrbError) return err.kind === 'network' || err.kind === 'timeout';
  const code = (err as NodeJS.ErrnoException)?.code;
  if (code === 'ABORT_ERR' || (err as Error)?.name === 'AbortError') return false;
  return (
    (typeof code === 'string' &&
      [
        'ECONNRESET',
        'ECONNREFUSED',
        'EPIPE',
        'ETIMEDOUT',
        'EAI_AGAIN',
        'ENOTFOUND',
        'ECONNABORTED',
        'UND_ERR_SOCKET',
        'ERR_STREAM_PREMATURE_CLOSE',
        'EHOSTUNREACH',
        'ENETUNREACH',
      ].includes(code)) ||
    /socket hang up|premature close|aborted/i.test((err as Error)?.message ?? '')
  );
}

export interface RetryOptions {
  attempts?: number;
  baseMs?: number;
  maxMs?: number;
  signal?: AbortSignal;
  log?: Logger;
  what: string;
  /** extra predicate: errors this returns true for are retried too */
  retryIf?: (err: unknown) => boolean;
}

/** Runs `fn` with exponential backoff (jittered) on retryable failures; Retry-After wins when given. */
export async function withRetries<T>(fn: (attempt: number) => Promise<T>, opts: RetryOptions): Promise<T> {
  const attempts = opts.attempts ?? envAttempts() ?? 6;
  const base = opts.baseMs ?? envBaseMs() ?? 500;
  const max = opts.maxMs ?? 30_000;
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn(attempt);
    } catch (err) {
      if (opts.signal?.aborted) throw opts.signal.reason ?? err;
      const retry = isRetryable(err) || opts.retryIf?.(err) === true;
      if (!retry || attempt >= attempts) throw err;
      const after = err instanceof HttpStatusError ? err.retryAfterMs : undefined;
      const backoff = Math.min(max, base * 2 ** (attempt - 1)) * (0.5 + Math.random() / 2);
      const wait = after !== undefined ? Math.min(after, 120_000) : backoff;
      opts.log?.warn(
        `${opts.what}: ${(err as Error).message}; retrying in ${(wait / 1000).toFixed(1)} s (attempt ${attempt + 1} of ${attempts})`,
      );
      await sleep(wait, undefined, opts.signal ? { signal: opts.signal } : undefined);
    }
  }
}

// Tests shorten backoff so fault-injection suites stay fast.
function envAttempts(): number | undefined {
  const n = Number(process.env.ORB_HTTP_ATTEMPTS);
  return Number.isFinite(n) && n > 0 ? n : undefined;
}
function envBaseMs(): number | undefined {
  const n = Number(process.env.ORB_HTTP_BACKOFF_MS);
  return Number.isFinite(n) && n >= 0 ? n : undefined;
}

/** request() + status check, retried. Returns the response for a 2xx (or an `ok` status). */
export async function requestOk(
  href: string,
  req: HttpRequest & { ok?: number[]; what: string; log?: Logger; attempts?: number },
): Promise<HttpResponse> {
  return withRetries(
    async () => {
      const res = await request(href, req);
      const ok = req.ok ?? [];
      if ((res.status >= 200 && res.status < 300) || ok.includes(res.status)) return res;
      throw await statusError(res, req.what);
    },
    {
      what: req.what,
      ...(req.signal ? { signal: req.signal } : {}),
      ...(req.log ? { log: req.log } : {}),
      ...(req.attempts ? { attempts: req.attempts } : {}),
    },
  );
}

export async function getJson<T>(
  href: string,
  req: HttpRequest & { what: string; log?: Logger },
): Promise<T> {
  const res = await requestOk(href, {
    ...req,
    headers: { accept: 'application/json', ...(req.headers ?? {}) },
  });
  const body = await readBody(res);
  try {
    return JSON.parse(body.toString('utf8')) as T;
  } catch {
    throw new OrbError('network', `${req.what}: ${redactUrl(res.url)} did not return JSON`);
  }
}
