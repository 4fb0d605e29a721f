import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import type { Readable } from 'node:stream';
import { OrbError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { sendFollowing } from '../net/http.js';
import { isLoopbackHost } from '../net/loopback.js';
import {
  defaultRetryPolicy,
  isConnectionError,
  isRetryableStatus,
  parseRetryAfter,
  retry,
} from '../net/retry.js';

/**
 * The file-like stores' view of src/net/ (HTTPS downloads, GitLab generic packages, GitHub
 * release assets): redirects that never carry credentials to another origin, the one retry
 * policy, errors with the server's message and a hint, and plain HTTP only for loopback.
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

/** One request, following redirects; does not retry and does not check the status. */
export async function request(href: string, req: HttpRequest = {}): Promise<HttpResponse> {
  const body = req.body;
  const { res, url } = await sendFollowing({
    method: req.method ?? 'GET',
    url: new URL(href),
    headers: req.headers ?? {},
    authHeaders: req.authHeaders,
    body: typeof body === 'function' ? { open: body } : body,
    signal: req.signal,
    idleMs: req.timeoutMs,
    follow: req.follow !== false,
  });
  return { status: res.statusCode ?? 0, headers: res.headers, url: url.href, body: res };
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
    parseRetryAfter(res.headers['retry-after']),
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

/** A retryable status (408/429/5xx), a network-kind error or a dropped connection. */
export function isRetryable(err: unknown): boolean {
  if (err instanceof HttpStatusError) return isRetryableStatus(err.status);
  if (err instanceof OrbError) return err.kind === 'network' || err.kind === 'timeout';
  return isConnectionError(err);
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

/** Runs `fn` under the one retry policy (src/net/retry.ts); Retry-After wins when given. */
export function withRetries<T>(fn: (attempt: number) => Promise<T>, opts: RetryOptions): Promise<T> {
  const policy = defaultRetryPolicy();
  if (opts.attempts) policy.attempts = opts.attempts;
  if (opts.baseMs !== undefined) policy.baseDelayMs = opts.baseMs;
  if (opts.maxMs !== undefined) policy.maxDelayMs = opts.maxMs;
  return retry(fn, {
    policy,
    what: opts.what,
    ...(opts.signal ? { signal: opts.signal } : {}),
    ...(opts.log ? { onRetry: (line: string) => opts.log!.warn(line) } : {}),
    classify: (err) => ({
      retry: isRetryable(err) || opts.retryIf?.(err) === true,
      ...(err instanceof HttpStatusError && err.retryAfterMs !== undefined
        ? { retryAfterMs: err.retryAfterMs }
        : {}),
    }),
  });
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
