import { createHash } from 'node:crypto';
import { closeSync, createReadStream, openSync, readSync, writeSync } from 'node:fs';
import type { IncomingHttpHeaders } from 'node:http';
import { parentPort, workerData } from 'node:worker_threads';
import zlib from 'node:zlib';
import { OrbError } from '../core/errors.js';
import { fastGet } from './fast-get.js';
import { sendFollowing, sendOnce } from './http.js';
import {
  backoffMs,
  defaultRetryPolicy,
  isRetryableStatus,
  parseRetryAfter,
  sleep,
  type RetryPolicy,
} from './retry.js';

/**
 * The transfer worker thread (started by src/net/http-workers.ts; bundled as
 * dist/orb/http-worker.js). Receiving and hashing gigabytes is CPU work: spread over a few
 * threads, a pull keeps up with the link instead of with one JavaScript thread.
 *
 *   get   GET a blob (ranges to resume, redirects followed without our credentials, the retry
 *         policy of retry.ts), hashing it as it arrives, either into memory or straight into the
 *         output file; then (memory) check the blob digest, decompress a zstd chunk and check its
 *         content digest, and write the content at every region offset. Plain http:// bodies are
 *         received by the kernel straight into the staging buffer (fast-get.ts).
 *   put   send a request whose body is a region of a file (blob uploads); answer status, headers
 *         and the (small) response body.
 *
 * Messages back: {id, progress: n} (bytes moved since the last one), {id, flushed: n} (bytes of
 * the blob in the output file, for the journal), {id, log}, and one final {id, done: {...}}.
 */
export interface GetJob {
  op: 'get';
  url: string;
  headers: Record<string, string>;
  size: number;
  digest: string;
  /** bytes of the blob already in the output file (file target only) */
  have?: number;
  kind: string;
  retry: Partial<RetryPolicy>;
  idleMs: number;
  target: { kind: 'memory' } | { kind: 'file'; path: string; offset: number };
  write: { path: string; offsets: number[]; length: number; digest: string };
}

export interface PutJob {
  op: 'put';
  method: string;
  url: string;
  headers: Record<string, string>;
  path: string;
  start: number;
  length: number;
  idleMs: number;
}

export interface PutDone {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

export interface WorkerFailure {
  kind: string;
  message: string;
  status?: number;
  downloaded?: number;
}

type Post = (m: { progress?: number; flushed?: number; log?: string }) => void;

// (no parameter properties here or in what this file imports: under vitest the thread runs the
// .ts sources with Node's type stripping, which accepts only erasable syntax)
export class Fail extends Error {
  readonly kind: string;
  readonly extra: { status?: number; downloaded?: number };
  constructor(kind: string, message: string, extra: { status?: number; downloaded?: number } = {}) {
    super(message);
    this.kind = kind;
    this.extra = extra;
  }
}

function writeAll(fd: number, buf: Buffer, pos: number): void {
  for (let done = 0; done < buf.length;) done += writeSync(fd, buf, done, buf.length - done, pos + done);
}

function readAll(fd: number, buf: Buffer, pos: number): void {
  for (let done = 0; done < buf.length;) {
    const n = readSync(fd, buf, done, buf.length - done, pos + done);
    if (n === 0) throw new Fail('internal', `unexpected end of file at ${pos + done}`);
    done += n;
  }
}

const tooLong = (size: number) =>
  new Fail('integrity', `the blob is longer than the ${size} bytes the manifest says`);

/** Downloads one blob (see the file comment); resolves with the bytes moved over the network. */
export async function get(m: GetJob, post: Post): Promise<{ downloaded: number }> {
  const policy: RetryPolicy = { ...defaultRetryPolicy(), ...m.retry };
  const size = m.size;
  let have = m.have ?? 0;
  let hash = createHash('sha256');
  let fd: number | undefined;
  let buf: Buffer | undefined;
  // file mode: bytes land in a staging buffer, hashed as they land, written 4 MiB at a time
  let staging = Buffer.alloc(0);
  let fill = 0;
  const t = m.target;
  if (t.kind === 'file') {
    fd = openSync(t.path, 'r+');
    staging = Buffer.allocUnsafe(Math.max(1, Math.min(size, 4 << 20)));
    // continue a blob an earlier run left half done: its bytes are in the file already
    for (let at = 0; at < have;) {
      const n = Math.min(staging.length, have - at);
      readAll(fd, staging.subarray(0, n), t.offset + at);
      hash.update(staging.subarray(0, n));
      at += n;
    }
  } else buf = Buffer.allocUnsafe(size);
  const fileOffset = t.kind === 'file' ? t.offset : 0;
  let reported = 0;
  let downloaded = 0;
  const flush = () => {
    if (!fill || fd === undefined) return;
    writeAll(fd, staging.subarray(0, fill), fileOffset + have - fill);
    fill = 0;
    post({ flushed: have });
  };
  const sinkTarget = (): Buffer => (buf ? buf.subarray(have) : staging.subarray(fill));
  const landed = (n: number) => {
    hash.update(buf ? buf.subarray(have, have + n) : staging.subarray(fill, fill + n));
    have += n;
    downloaded += n;
    reported += n;
    if (reported >= 4 << 20) {
      post({ progress: reported });
      reported = 0;
    }
    if (!buf) {
      fill += n;
      if (fill === staging.length || have === size) flush();
    }
  };
  const restart = () => {
    if (have > 0)
      post({ log: 'the server ignored the range request; downloading the blob again from the start' });
    hash = createHash('sha256');
    have = 0;
    fill = 0;
  };
  const state: { short: boolean; wait: number | undefined } = { short: false, wait: undefined };
  // What to do with an answer's status line; throws what the retry loop should see.
  const onHead = (status: number, headers: Record<string, string | string[] | undefined>): string => {
    if (status === 401 || status === 403) throw new Fail('auth', `HTTP ${status}`, { status });
    if (status === 404) throw new Fail('missing', 'HTTP 404');
    if (status === 416) {
      state.short = true;
      throw new Error(`HTTP 416 for bytes=${have}-`);
    }
    if (isRetryableStatus(status)) {
      state.wait = parseRetryAfter(headers['retry-after']);
      throw new Error(`HTTP ${status}`);
    }
    if (status >= 300 && status < 400) return 'redirect';
    if (status !== 200 && status !== 206) throw new Fail('network', `HTTP ${status}`);
    let start = 0;
    if (status === 206) {
      const cr = /bytes\s+(\d+)-/.exec(String(headers['content-range'] ?? ''));
      start = cr ? Number(cr[1]) : have;
    }
    if (start !== have) {
      if (start !== 0)
        throw new Fail('network', `asked for bytes from ${have}, the server sent from ${start}`);
      restart();
    }
    const len = Number(headers['content-length']);
    if (headers['transfer-encoding'] || !Number.isFinite(len)) return 'slow';
    if (have + len > size) throw tooLong(size);
    return 'body';
  };
  let stalls = 0;
  let waited = 0;
  try {
    while (have < size) {
      const before = have;
      let why: string;
      state.wait = undefined;
      try {
        const headers = { ...m.headers };
        if (have > 0) headers.range = `bytes=${have}-`;
        const u = new URL(m.url);
        let mode = 'slow';
        if (u.protocol === 'http:' && !process.env.ORB_NO_FAST_GET) {
          const r = await fastGet(
            u,
            headers,
            { idleMs: m.idleMs },
            { head: onHead, target: sinkTarget, data: landed },
          );
          mode = r.decision;
        }
        if (mode !== 'body')
          await slowGet(u, headers, m.idleMs, onHead, sinkTarget, landed, () => have, size);
        flush();
        if (have >= size) break;
        state.short = true;
        why = `the connection closed after ${have} of ${size} bytes`;
      } catch (e) {
        try {
          flush();
        } catch (w) {
          throw new Fail('environment', `cannot write the download: ${(w as Error).message}`);
        }
        if (e instanceof Fail) throw e;
        why = (e as Error)?.message ?? String(e);
      }
      stalls = have > before ? 1 : stalls + 1;
      const ms = backoffMs(stalls, policy, state.wait);
      if (stalls >= policy.attempts || waited + ms > policy.maxTotalMs || ms > policy.maxRetryAfterMs) {
        if (state.short) throw new Fail('truncated', `the server sends only ${have} of ${size} bytes`);
        throw new Fail('network', why);
      }
      post({ log: `${why}; resuming at byte ${have} in ${(ms / 1000).toFixed(1)} s` });
      await sleep(ms);
      waited += ms;
    }
    if (reported) post({ progress: reported });
    const digest = 'sha256:' + hash.digest('hex');
    if (digest !== m.digest) throw new Fail('mismatch', digest, { downloaded });
    // verified: now the content may be used
    if (buf) writeContent(m, buf);
    else if (fd !== undefined && m.write.offsets.length > 1) {
      // identical chunks elsewhere: copy the verified bytes
      for (let at = 0; at < size; at += staging.length) {
        const n = Math.min(staging.length, size - at);
        readAll(fd, staging.subarray(0, n), fileOffset + at);
        for (const off of m.write.offsets.slice(1)) writeAll(fd, staging.subarray(0, n), off + at);
      }
    }
    return { downloaded };
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/** Redirects, chunked answers and https: the regular client (src/net/http.ts). */
async function slowGet(
  u: URL,
  headers: Record<string, string>,
  idleMs: number,
  onHead: (status: number, h: IncomingHttpHeaders) => string,
  target: () => Buffer,
  landed: (n: number) => void,
  have: () => number,
  size: number,
): Promise<void> {
  // pre-signed storage URLs carry their own authorization; ours stays with the first origin
  const { authorization, ...plain } = headers;
  const { res } = await sendFollowing({
    url: u,
    headers: plain,
    authHeaders: authorization !== undefined ? { authorization } : {},
    idleMs,
    maxHops: 5,
  }).catch((e: unknown) => {
    // too many redirects: asking again will not help
    throw e instanceof OrbError && e.kind === 'network' ? new Fail('network', e.message) : e;
  });
  try {
    if (onHead(res.statusCode ?? 0, res.headers) === 'redirect')
      throw new Fail('network', 'too many redirects');
  } catch (e) {
    res.resume();
    throw e;
  }
  await new Promise<void>((resolve, reject) => {
    res.on('data', (c: Buffer) => {
      if (have() + c.length > size) {
        res.destroy();
        reject(tooLong(size));
        return;
      }
      while (c.length) {
        const t = target();
        const k = Math.min(t.length, c.length);
        c.copy(t, 0, 0, k);
        landed(k);
        c = c.subarray(k);
      }
    });
    res.on('end', resolve);
    res.on('error', reject);
    res.on('close', () => {
      if (!res.complete) reject(new Error('the connection was cut'));
    });
  });
}

/** A verified blob held in memory: decompress a zstd chunk, check it, write it at every offset. */
function writeContent(m: GetJob, blob: Buffer): void {
  const w = m.write;
  let content = blob;
  if (m.kind === 'zstd') {
    try {
      content = zlib.zstdDecompressSync(blob, { maxOutputLength: Math.max(1, w.length) });
    } catch (e) {
      throw new Fail('integrity', `the chunk does not decompress (${(e as Error).message})`);
    }
    if (content.length !== w.length)
      throw new Fail('integrity', `the chunk holds ${content.length} bytes, the manifest says ${w.length}`);
    const cd = 'sha256:' + createHash('sha256').update(content).digest('hex');
    if (cd !== w.digest)
      throw new Fail('integrity', `the chunk's content has digest ${cd}, the manifest says ${w.digest}`);
  }
  const out = openSync(w.path, 'r+');
  try {
    for (const off of w.offsets) writeAll(out, content, off);
  } finally {
    closeSync(out);
  }
}

/** Sends a file region as the request body; answers status, headers and up to 1 MiB of the response. */
export async function put(m: PutJob, post: Post): Promise<PutDone> {
  let reported = 0;
  const open = () => {
    const src = createReadStream(m.path, {
      start: m.start,
      end: m.start + m.length - 1,
      highWaterMark: 1 << 20,
    });
    src.on('data', (c) => {
      reported += c.length;
      if (reported >= 1 << 20) {
        post({ progress: reported });
        reported = 0;
      }
    });
    src.on('end', () => {
      if (reported) post({ progress: reported });
    });
    return src;
  };
  let res;
  try {
    res = await sendOnce({
      method: m.method,
      url: new URL(m.url),
      headers: m.headers,
      body: m.length === 0 ? Buffer.alloc(0) : { length: m.length, open },
      idleMs: m.idleMs,
    });
  } catch (e) {
    if ((e as { kind?: string }).kind === 'input')
      throw new Fail('input', `cannot read ${m.path}: ${(e as Error).message}`);
    throw new Fail('transient', (e as Error).message);
  }
  const parts: Buffer[] = [];
  let n = 0;
  try {
    for await (const c of res as AsyncIterable<Buffer>) {
      if (n < 1 << 20) parts.push(c);
      n += c.length;
    }
  } catch (e) {
    throw new Fail('transient', (e as Error).message);
  }
  return { status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(parts).toString('utf8') };
}

// Only in a thread http-workers.ts started (not when a test imports this file).
if (parentPort && (workerData as { role?: string } | undefined)?.role === 'orb-http') {
  const port = parentPort;
  port.on('message', (m: (GetJob | PutJob) & { id: number }) => {
    const post: Post = (x) => port.postMessage({ id: m.id, ...x });
    (m.op === 'get' ? get(m, post) : put(m, post)).then(
      (done) => port.postMessage({ id: m.id, done }),
      (e: unknown) => {
        const f = e instanceof Fail ? e : undefined;
        const error: WorkerFailure = {
          kind: f?.kind ?? 'internal',
          message: (e as Error)?.message ?? String(e),
          ...(f?.extra ?? {}),
        };
        port.postMessage({ id: m.id, done: { error } });
      },
    );
  });
}
