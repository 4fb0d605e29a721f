import { OrbError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import type { Descriptor } from '../formats/oci-media.js';
import {
  backoffMs,
  defaultRetryPolicy,
  isConnectionError,
  RetryAfterTooLongError,
  sleep,
  type RetryPolicy,
} from '../net/retry.js';
import { RangeIgnoredError } from '../stores/https-ranged.js';
import type { BlobStore } from '../stores/store.js';
import {
  classifyAttemptError,
  httpRangeAttempt,
  RangeFailure,
  type HttpSource,
  type RangeTarget,
} from './range-http.js';

/**
 * Bounded reads of a blob (a pack of the chunked format): bytes [start, start + length) into one
 * Buffer of exactly that size, for the pull engine's coalesced ranges and the lazy block server.
 * Many run in parallel against one store.
 *
 * Stores with httpSource (registries and their mirrors, S3, GitLab, GitHub, pre-signed bundles)
 * are read with plain GETs and `Range: bytes=a-b` (range-http.ts); the others (oci-layout:, a
 * single https:// file) through getBlob(desc, start, end). Either way the answer must be exactly
 * the bytes asked for; a dropped connection continues from the byte where it stopped, under the
 * retry policy of src/net/retry.ts (backoff, Retry-After, 408/429/5xx). A server that ignores
 * Range is not an error: the caller gets a RangeIgnored and fetches that pack whole.
 */
export class RangeIgnored {
  readonly rangeIgnored = true;
  /** what happened, for the caller's one log line */
  readonly why: string;
  constructor(why: string) {
    this.why = why;
  }
}

export interface ReadRangeOptions {
  signal?: AbortSignal | undefined;
  retry?: RetryPolicy | undefined;
  /** a line per retry (info) */
  log?: Logger | undefined;
  /** bytes as they land; negative when landed bytes were dropped (a mirror sent wrong ones) */
  onBytes?: ((n: number) => void) | undefined;
  /** an HTTP connection with no bytes moving for this long is dropped and resumed (default 120 s) */
  idleMs?: number | undefined;
}

/**
 * Exactly the bytes [start, start + length) of `desc`, or RangeIgnored when the store answers
 * ranged requests with the whole blob. The bytes are not verified here (the caller checks the
 * blocks they hold); their count and position are, strictly.
 */
export async function readRange(
  store: BlobStore,
  desc: Descriptor,
  start: number,
  length: number,
  opts: ReadRangeOptions = {},
): Promise<Buffer | RangeIgnored> {
  if (
    !Number.isSafeInteger(start) ||
    !Number.isSafeInteger(length) ||
    start < 0 ||
    length < 0 ||
    start + length > desc.size
  )
    throw new OrbError('internal', `bad range ${start}+${length} of a blob of ${desc.size} bytes`);
  const t: RangeTarget = {
    buf: Buffer.allocUnsafe(length),
    start,
    filled: 0,
    size: desc.size,
    what: `bytes ${start}-${start + length - 1} of blob ${desc.digest.slice(7, 19)} from ${store.describe()}`,
    onBytes: opts.onBytes,
  };
  if (length === 0) return t.buf;
  return store.httpSource ? viaHttp(store, desc, t, opts) : viaStore(store, desc, t, opts);
}

/** Counts attempts that moved no byte; progress starts the count again (see fetch.ts). */
class Patience {
  private stalls = 0;
  private waited = 0;
  constructor(
    private readonly policy: RetryPolicy,
    private readonly o: ReadRangeOptions,
  ) {}
  reset(): void {
    this.stalls = 0;
    this.waited = 0;
  }
  /** Waits before the next attempt; false when it is time to give up. */
  async wait(progressed: boolean, why: string, t: RangeTarget, retryAfterMs?: number): Promise<boolean> {
    this.stalls = progressed ? 1 : this.stalls + 1;
    if (retryAfterMs !== undefined && retryAfterMs > this.policy.maxRetryAfterMs)
      throw new RetryAfterTooLongError(t.what, retryAfterMs, new Error(why));
    const ms = backoffMs(this.stalls, this.policy, retryAfterMs);
    if (this.stalls >= this.policy.attempts || this.waited + ms > this.policy.maxTotalMs) return false;
    this.o.log?.info(
      `${t.what}: ${why}; resuming at byte ${t.start + t.filled} in ${(ms / 1000).toFixed(1)} s`,
    );
    await sleep(ms, this.o.signal);
    this.waited += ms;
    return true;
  }
}

function drop(t: RangeTarget): void {
  if (t.filled) t.onBytes?.(-t.filled);
  t.filled = 0;
}

function ignored(t: RangeTarget): RangeIgnored {
  drop(t);
  return new RangeIgnored(`${t.what}: the server ignored the Range header and sends whole blobs`);
}

function gaveUp(t: RangeTarget, why: string, short: boolean): OrbError {
  if (short)
    return new OrbError(
      'integrity',
      `${t.what} is truncated: the server sends only ${t.filled} of ${t.buf.length} bytes`,
      { hint: 'the store copy is damaged or a proxy cuts it short; publish the image again' },
    );
  return new OrbError('network', `${t.what} failed: ${why}`, {
    hint: 'run the same command again: what was downloaded is kept',
  });
}

function interrupted(signal: AbortSignal | undefined): OrbError {
  const r: unknown = signal?.reason;
  return r instanceof OrbError ? r : new OrbError('interrupted', 'interrupted');
}

// ---- httpSource: plain GETs, the source shared by every read of one blob ----

/** store -> blob digest -> its current source: parallel reads of one pack resolve it once */
const sources = new WeakMap<BlobStore, Map<string, Promise<HttpSource>>>();

function resolveSource(store: BlobStore, desc: Descriptor, refresh: boolean): Promise<HttpSource> {
  let byDigest = sources.get(store);
  if (!byDigest) sources.set(store, (byDigest = new Map()));
  const slot = byDigest;
  const p = store.httpSource!(desc, refresh).then((s) => ({ url: new URL(s.url), headers: s.headers }));
  slot.set(desc.digest, p);
  // a failed resolution is not cached: the next read asks again
  p.catch(() => {
    if (slot.get(desc.digest) === p) slot.delete(desc.digest);
  });
  return p;
}

function currentSource(store: BlobStore, desc: Descriptor): Promise<HttpSource> {
  return sources.get(store)?.get(desc.digest) ?? resolveSource(store, desc, false);
}

/**
 * The source after `old` failed: the one another read already moved to, else a refreshed one
 * (new token or signed URL), else the next mirror when `old` was one; undefined when none.
 */
function nextSource(
  store: BlobStore,
  desc: Descriptor,
  old: HttpSource,
  how: { refresh: true } | { failed: string },
): Promise<HttpSource> | undefined {
  if (old.next) return old.next;
  if ('failed' in how && !store.sourceFailed?.(desc, how.failed)) return undefined;
  old.next = resolveSource(store, desc, 'refresh' in how);
  return old.next;
}

async function viaHttp(
  store: BlobStore,
  desc: Descriptor,
  t: RangeTarget,
  o: ReadRangeOptions,
): Promise<Buffer | RangeIgnored> {
  const patience = new Patience(o.retry ?? defaultRetryPolicy(), o);
  let src = await currentSource(store, desc);
  let refreshed = false;
  let reresolved = false;
  while (t.filled < t.buf.length) {
    if (o.signal?.aborted) throw interrupted(o.signal);
    const before = t.filled;
    let f: RangeFailure;
    try {
      const r = await httpRangeAttempt(src, t, { signal: o.signal, idleMs: o.idleMs ?? 120_000 });
      if (r === 'ignored') return ignored(t);
      continue;
    } catch (err) {
      if (o.signal?.aborted) throw interrupted(o.signal);
      f = classifyAttemptError(err);
    }
    if (f.kind === 'stale' && !reresolved) {
      // a signed object-storage URL expired: the origin signs a new one
      reresolved = true;
      src.final = undefined;
      continue;
    }
    if ((f.kind === 'auth' || f.kind === 'stale') && !refreshed) {
      // a token or our own signed URL can expire mid-pull: one fresh one
      refreshed = true;
      src = await nextSource(store, desc, src, { refresh: true })!;
      continue;
    }
    if (f.kind === 'retry' && (await patience.wait(t.filled > before, f.message, t, f.retryAfterMs)))
      continue;
    // this source cannot give the range: the next mirror or the origin, if there is one
    const next = nextSource(store, desc, src, { failed: f.message });
    if (next) {
      // what a mirror sent wrong is dropped whole; bytes of a connection that failed are kept
      if (f.kind === 'bad') drop(t);
      src = await next;
      patience.reset();
      refreshed = reresolved = false;
      continue;
    }
    if (f.kind === 'auth' || f.kind === 'stale')
      throw new OrbError('network', `${t.what}: refused (${f.message})`, {
        hint: 'check the credentials (username/password, GITHUB_TOKEN, docker login) and their permissions',
      });
    if (f.kind === 'bad') throw f.error ?? new OrbError('network', `${t.what}: ${f.message}`);
    throw gaveUp(t, f.message, f.short);
  }
  return t.buf;
}

// ---- getBlob(desc, offset, end): stores without httpSource ----

async function viaStore(
  store: BlobStore,
  desc: Descriptor,
  t: RangeTarget,
  o: ReadRangeOptions,
): Promise<Buffer | RangeIgnored> {
  const patience = new Patience(o.retry ?? defaultRetryPolicy(), o);
  const end = t.start + t.buf.length;
  const whole = t.start === 0 && end === desc.size;
  while (t.filled < t.buf.length) {
    if (o.signal?.aborted) throw interrupted(o.signal);
    const before = t.filled;
    const from = t.start + t.filled;
    let why: string;
    let short = false;
    try {
      const r = await store.getBlob(desc, from, end);
      const stop = r.end ?? end;
      if (r.offset !== from || stop !== end) {
        r.stream.destroy();
        // the whole blob from its first byte: the server ignored the Range
        if (r.offset === 0 && stop === desc.size && !whole) return ignored(t);
        if (r.offset === 0 && stop === desc.size) drop(t);
        else
          throw new OrbError(
            'integrity',
            `${t.what}: asked for bytes ${from}-${end - 1}, the store sent ${r.offset}-${stop - 1}`,
          );
        continue;
      }
      try {
        for await (const c of r.stream) {
          const chunk = c as Buffer;
          if (chunk.length > t.buf.length - t.filled)
            throw new OrbError('integrity', `${t.what}: the store sent more bytes than asked for`);
          chunk.copy(t.buf, t.filled);
          t.filled += chunk.length;
          o.onBytes?.(chunk.length);
        }
      } finally {
        r.stream.destroy();
      }
      if (t.filled >= t.buf.length) break;
      short = true;
      why = `the answer ended after ${t.filled} of ${t.buf.length} bytes`;
    } catch (err) {
      if (o.signal?.aborted) throw interrupted(o.signal);
      // a file-like store's server stopped honouring Range mid-read (https-ranged.ts)
      if (err instanceof RangeIgnoredError) return ignored(t);
      // OrbErrors are final (the store retried what it could); a stream that breaks is resumed
      if (err instanceof OrbError) throw err;
      if (!isConnectionError(err))
        throw new OrbError('network', `${t.what}: ${(err as Error)?.message ?? String(err)}`, { cause: err });
      why = (err as Error).message;
    }
    if (!(await patience.wait(t.filled > before, why, t))) throw gaveUp(t, why, short);
  }
  return t.buf;
}
