import { OrbError } from '../core/errors.js';

/**
 * The one retry policy of every network path (registry client, file-like stores, build
 * downloads, transfer worker threads): 408/429/5xx and dropped connections are retried with
 * exponential backoff and full jitter, Retry-After (seconds or an HTTP date) wins when the server
 * sends one, a Retry-After longer than `maxRetryAfterMs` is not waited for (the error says what
 * the server asked), and all waits together stay under `maxTotalMs`. Every wait ends at once when
 * the caller's AbortSignal fires.
 *
 * This file imports nothing but the error type, so the worker threads share it.
 */
export interface RetryPolicy {
  /** total attempts, the first included */
  attempts: number;
  baseDelayMs: number;
  maxDelayMs: number;
  /** a Retry-After longer than this is not waited for: the error says what the server asked */
  maxRetryAfterMs: number;
  /** the waits of one operation together never exceed this */
  maxTotalMs: number;
}

/**
 * Attempts and base delay come from ORB_RETRY_ATTEMPTS / ORB_RETRY_BASE_MS (their older names for
 * the stores, ORB_HTTP_ATTEMPTS / ORB_HTTP_BACKOFF_MS, still work): fault-injection tests shorten
 * the backoff with them, and a user on a flaky link can allow more attempts.
 */
export function defaultRetryPolicy(env: NodeJS.ProcessEnv = process.env): RetryPolicy {
  return {
    attempts: positive(env.ORB_RETRY_ATTEMPTS) ?? positive(env.ORB_HTTP_ATTEMPTS) ?? 6,
    baseDelayMs: nonNegative(env.ORB_RETRY_BASE_MS) ?? nonNegative(env.ORB_HTTP_BACKOFF_MS) ?? 500,
    maxDelayMs: 30_000,
    maxRetryAfterMs: 300_000,
    maxTotalMs: 15 * 60_000,
  };
}

function positive(v: string | undefined): number | undefined {
  const n = Number(v);
  return v && Number.isFinite(n) && n > 0 ? Math.floor(n) : undefined;
}
function nonNegative(v: string | undefined): number | undefined {
  const n = Number(v);
  return v && Number.isFinite(n) && n >= 0 ? n : undefined;
}

/** 408, 429 and 5xx except 501 (not implemented) and 505 (version): asking again may work. */
export function isRetryableStatus(status: number): boolean {
  return status === 408 || status === 429 || (status >= 500 && status !== 501 && status !== 505);
}

/** Retry-After as milliseconds: delta-seconds or an HTTP date; undefined when absent or unreadable. */
export function parseRetryAfter(
  value: string | readonly string[] | undefined,
  now = Date.now(),
): number | undefined {
  const raw = Array.isArray(value) ? value[0] : value;
  if (typeof raw !== 'string' || !raw.trim()) return undefined;
  const v = raw.trim();
  if (/^\d+(\.\d+)?$/.test(v)) return Math.round(Number(v) * 1000);
  const t = Date.parse(v);
  return Number.isFinite(t) ? Math.max(0, t - now) : undefined;
}

/**
 * The wait before attempt n + 1 (n is 1-based): the server's Retry-After when given, else full
 * jitter over the exponential step (uniform in [0, min(max, base * 2^(n-1))]), which spreads
 * many clients hitting one overloaded server better than a fixed step.
 */
export function backoffMs(attempt: number, policy: RetryPolicy, retryAfterMs?: number): number {
  if (retryAfterMs !== undefined) return retryAfterMs;
  const step = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (attempt - 1));
  return Math.round(Math.random() * step);
}

/** Waits `ms`; rejects with OrbError('interrupted') as soon as `signal` aborts. */
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

const TRANSIENT_CODES = new Set([
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
]);

/** A failure of the connection itself (reset, refused, timeout, cut short): worth another try. */
export function isConnectionError(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException)?.code;
  if (code === 'ABORT_ERR' || (err as Error)?.name === 'AbortError') return false;
  if (typeof code === 'string' && TRANSIENT_CODES.has(code)) return true;
  return /socket hang up|premature close|aborted|connection was cut|closed before an answer|no data for/i.test(
    (err as Error)?.message ?? '',
  );
}

/** What a failed attempt means for the retry loop. */
export interface RetryVerdict {
  retry: boolean;
  /** the server's Retry-After, when it sent one */
  retryAfterMs?: number;
}

export interface RetryOptions {
  policy?: RetryPolicy;
  signal?: AbortSignal;
  /** what is being done, for messages: "download disk.img" */
  what: string;
  /** a line per retry (warn level) */
  onRetry?(line: string): void;
  /** decides whether an error is retried; default: connection errors only */
  classify?(err: unknown): RetryVerdict;
  /** the error to throw when the attempts or the time budget are used up (default: the last error) */
  gaveUp?(err: unknown, attempts: number): unknown;
}

/** Thrown when a server asks for a longer wait than the policy allows. */
export class RetryAfterTooLongError extends OrbError {
  constructor(what: string, waitMs: number, cause: unknown) {
    super(
      'network',
      `the server asks to retry ${what} after ${Math.round(waitMs / 1000)} s (${(cause as Error)?.message ?? String(cause)})`,
      { hint: 'the service is rate limiting or down for maintenance: rerun later' },
    );
  }
}

/**
 * Runs `fn(attempt)` until it succeeds, an error is not retryable, the attempts are used up or
 * the next wait would break the time budget. An abort ends any wait at once.
 */
export async function retry<T>(fn: (attempt: number) => Promise<T>, o: RetryOptions): Promise<T> {
  const policy = o.policy ?? defaultRetryPolicy();
  const classify = o.classify ?? ((err: unknown): RetryVerdict => ({ retry: isConnectionError(err) }));
  let waited = 0;
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn(attempt);
    } catch (err) {
      if (o.signal?.aborted) throw o.signal.reason instanceof OrbError ? o.signal.reason : interrupted();
      const v = classify(err);
      if (!v.retry) throw err;
      if (v.retryAfterMs !== undefined && v.retryAfterMs > policy.maxRetryAfterMs)
        throw new RetryAfterTooLongError(o.what, v.retryAfterMs, err);
      const wait = backoffMs(attempt, policy, v.retryAfterMs);
      if (attempt >= policy.attempts || waited + wait > policy.maxTotalMs)
        throw o.gaveUp?.(err, attempt) ?? err;
      o.onRetry?.(
        `${o.what}: ${(err as Error)?.message ?? String(err)}; retrying in ${(wait / 1000).toFixed(1)} s (attempt ${attempt + 1} of ${policy.attempts})`,
      );
      await sleep(wait, o.signal);
      waited += wait;
    }
  }
}

function interrupted(): OrbError {
  return new OrbError('interrupted', 'interrupted');
}
