import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import { OrbError } from '../core/errors.js';
import { fastGet } from '../net/fast-get.js';
import { sendOnce } from '../net/http.js';
import { isLoopbackHost } from '../net/loopback.js';
import { isConnectionError, isRetryableStatus, parseRetryAfter } from '../net/retry.js';

/**
 * One HTTP attempt of a bounded range read (see range-read.ts): GET with `Range: bytes=a-b`,
 * redirects followed hop by hop with the Range kept and credentials left with the origin, the
 * answer checked strictly before a byte of it is used, and the body received straight into the
 * caller's buffer (plain http:// through the raw-socket reader of src/net/fast-get.ts, https://
 * through src/net/http.ts). The peer is untrusted: a body longer than asked for is never read
 * past the buffer.
 */

/** Where to GET a blob: what the store's httpSource named, and where its redirect last led. */
export interface HttpSource {
  url: URL;
  headers: Record<string, string>;
  /** a redirect target (signed object-storage URL) that worked: asked first next time */
  final?: URL | undefined;
  /** the source that replaced this one (a refreshed token, the next mirror), set once */
  next?: Promise<HttpSource>;
}

/**
 * Why an attempt failed, for the retry loop: `retry` (connection, 408/429/5xx, body cut short),
 * `stale` (a redirect target refused: ask the origin again), `auth` (the origin refused our
 * credentials), `bad` (wrong answer: asking the same server again will not help).
 */
export class RangeFailure extends Error {
  readonly kind: 'retry' | 'stale' | 'auth' | 'bad';
  readonly status: number | undefined;
  readonly retryAfterMs: number | undefined;
  /** `bad`: the error to report; `retry`: the server's copy looked short */
  readonly error: OrbError | undefined;
  readonly short: boolean;
  constructor(
    kind: RangeFailure['kind'],
    message: string,
    extra: { status?: number; retryAfterMs?: number | undefined; error?: OrbError; short?: boolean } = {},
  ) {
    super(message);
    this.kind = kind;
    this.status = extra.status;
    this.retryAfterMs = extra.retryAfterMs;
    this.error = extra.error;
    this.short = extra.short === true;
  }
}

/** The buffer being filled and what the answer must look like. */
export interface RangeTarget {
  buf: Buffer;
  /** blob offset of buf[0] */
  start: number;
  /** bytes of buf already received */
  filled: number;
  /** the blob's size (the total a Content-Range must name) */
  size: number;
  /** what the messages call it: "range 0-99 of blob 0123abcd" */
  what: string;
  /** `n` bytes landed (negative: bytes dropped) */
  onBytes?: ((n: number) => void) | undefined;
}

const REDIRECTS = [301, 302, 303, 307, 308];
const MAX_HOPS = 5;

/** Headers that may follow a redirect to another origin: never credentials. */
function portable(headers: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(headers)) if (k.toLowerCase() === 'accept') out[k] = v;
  return out;
}

function one(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}

type Verdict = 'body' | 'ignored' | 'redirect' | 'slow';

/**
 * GETs the rest of `t` ([t.start + t.filled, t.start + t.buf.length)) from `src`. Resolves
 * 'done' when the buffer is full, 'ignored' when the server answered a ranged request with the
 * whole blob (200); rejects with a RangeFailure (or the connection's error) otherwise, after
 * counting into `t.filled` what did land.
 */
export async function httpRangeAttempt(
  src: HttpSource,
  t: RangeTarget,
  opts: { signal?: AbortSignal | undefined; idleMs: number },
): Promise<'done' | 'ignored'> {
  const length = t.buf.length;
  const whole = t.start === 0 && length === t.size;
  let url = src.final ?? src.url;
  for (let hop = 0; ; hop++) {
    const from = t.start + t.filled;
    const last = t.start + length - 1;
    const headers = url.origin === src.url.origin ? { ...src.headers } : portable(src.headers);
    for (const k of Object.keys(headers)) if (k.toLowerCase() === 'range') delete headers[k];
    headers.range = `bytes=${from}-${last}`;
    // A refusal from anything but the URL httpSource named is a stale signed redirect target.
    const redirected = url.href !== src.url.href;
    let location: URL | undefined;
    const head = (status: number, h: IncomingHttpHeaders | Record<string, string>): Verdict => {
      if (REDIRECTS.includes(status)) {
        const loc = one(h.location);
        if (!loc) throw bad(t, `HTTP ${status} from ${url.host} without a Location`);
        location = new URL(loc, url);
        return 'redirect';
      }
      if (status === 401 || status === 403)
        throw new RangeFailure(redirected ? 'stale' : 'auth', `HTTP ${status} from ${url.host}`, { status });
      if (status === 404 || status === 410) {
        if (redirected) throw new RangeFailure('stale', `HTTP ${status} from ${url.host}`, { status });
        throw new RangeFailure('bad', `HTTP ${status}`, {
          status,
          error: new OrbError('input', `${t.what}: the blob is missing (HTTP ${status} from ${url.host})`, {
            hint: 'the manifest refers to a blob the store no longer has; publish the image again',
          }),
        });
      }
      if (status === 416)
        throw bad(
          t,
          `${url.host} says the range is not satisfiable (HTTP 416): its copy is shorter than the ${t.size} bytes the manifest says`,
        );
      if (isRetryableStatus(status))
        throw new RangeFailure('retry', `HTTP ${status} from ${url.host}`, {
          status,
          retryAfterMs: parseRetryAfter(h['retry-after']),
        });
      const len = one(h['content-length']);
      const chunked = h['transfer-encoding'] !== undefined || len === undefined;
      const rest = length - t.filled;
      if (status === 200) {
        if (!whole) return 'ignored';
        // the whole blob was asked for: a 200 is that, from its first byte
        if (t.filled) t.onBytes?.(-t.filled);
        t.filled = 0;
        if (!chunked && Number(len) !== length)
          throw bad(t, `${url.host} answered ${len} bytes for a blob of ${length}`);
        return chunked ? 'slow' : 'body';
      }
      if (status !== 206) throw bad(t, `unexpected HTTP ${status} from ${url.host}`);
      const cr = one(h['content-range']) ?? '';
      const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(cr.trim());
      if (!m || Number(m[1]) !== from || Number(m[2]) !== last || Number(m[3]) !== t.size)
        throw bad(
          t,
          `asked ${url.host} for bytes ${from}-${last}/${t.size}, it answered Content-Range "${cr.slice(0, 80)}"`,
        );
      if (!chunked && Number(len) !== rest)
        throw bad(t, `${url.host} answered ${len} bytes for a range of ${rest}`);
      return chunked ? 'slow' : 'body';
    };
    if (url.protocol === 'http:' && !process.env.ORB_NO_FAST_GET) {
      const r = await fastGet(
        url,
        headers,
        { idleMs: opts.idleMs, signal: opts.signal },
        {
          head,
          target: () => t.buf.subarray(t.filled),
          data: (n) => {
            t.filled += n;
            t.onBytes?.(n);
          },
        },
      );
      if (r.decision === 'body') {
        if (url.href !== src.url.href) src.final = url;
        return 'done';
      }
      if (r.decision === 'ignored') return 'ignored';
      if (r.decision === 'redirect') {
        url = follow(url, location!, hop, t);
        continue;
      }
      // 'slow': a chunked body, which the regular client decodes
    }
    const res = await sendOnce({ url, headers, signal: opts.signal, idleMs: opts.idleMs });
    let verdict: Verdict;
    try {
      verdict = head(res.statusCode ?? 0, res.headers);
    } catch (err) {
      res.destroy();
      throw err;
    }
    if (verdict === 'redirect') {
      res.resume();
      url = follow(url, location!, hop, t);
      continue;
    }
    if (verdict === 'ignored') {
      // never download a whole pack by accident: the caller decides
      res.destroy();
      return 'ignored';
    }
    await receive(res, t);
    if (url.href !== src.url.href) src.final = url;
    return 'done';
  }
}

/** The next hop of a redirect chain; an https:// origin never hands us to plain http elsewhere. */
function follow(from: URL, to: URL, hop: number, t: RangeTarget): URL {
  if (hop >= MAX_HOPS) throw bad(t, `more than ${MAX_HOPS} redirects from ${from.host}`);
  if (to.protocol !== 'http:' && to.protocol !== 'https:')
    throw bad(t, `${from.host} redirected to a ${to.protocol} URL`);
  if (from.protocol === 'https:' && to.protocol === 'http:' && !isLoopbackHost(to.hostname))
    throw bad(t, `${from.host} redirected from https:// to plain http://${to.host}`);
  return to;
}

function bad(t: RangeTarget, message: string): RangeFailure {
  return new RangeFailure('bad', message, { error: new OrbError('integrity', `${t.what}: ${message}`) });
}

/** Reads a response body into the buffer, refusing a byte past its end. */
function receive(res: IncomingMessage, t: RangeTarget): Promise<void> {
  const length = t.buf.length;
  return new Promise<void>((resolve, reject) => {
    let settled = false;
    const done = (err?: unknown) => {
      if (settled) return;
      settled = true;
      if (err) {
        res.destroy();
        reject(err);
      } else if (t.filled < length)
        reject(
          new RangeFailure('retry', `the answer ended after ${t.filled} of ${length} bytes`, { short: true }),
        );
      else resolve();
    };
    res.on('data', (c: Buffer) => {
      if (settled) return;
      if (c.length > length - t.filled) {
        done(bad(t, `the server sent more bytes than the ${length} asked for`));
        return;
      }
      c.copy(t.buf, t.filled);
      t.filled += c.length;
      t.onBytes?.(c.length);
    });
    res.once('end', () => done());
    res.once('error', (e) => done(e));
    res.once('close', () =>
      done(
        res.complete
          ? undefined
          : Object.assign(new Error('the connection was cut'), { code: 'ERR_STREAM_PREMATURE_CLOSE' }),
      ),
    );
  });
}

/** The retry loop's view of any error an attempt threw. */
export function classifyAttemptError(err: unknown): RangeFailure {
  if (err instanceof RangeFailure) return err;
  if (err instanceof OrbError && err.kind === 'interrupted') throw err;
  const message = (err as Error)?.message ?? String(err);
  if (isConnectionError(err)) return new RangeFailure('retry', message);
  return new RangeFailure('bad', message, {
    error: new OrbError('network', message, { cause: err }),
  });
}
