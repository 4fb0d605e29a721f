import { Readable } from 'node:stream';
import { OrbError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { withRetries } from './https-client.js';

/**
 * Parallel ranged downloads delivered as ONE ordered stream (what `aria2c -x16` does, but the
 * consumer still sees bytes in order, so it can hash and write sequentially, and resume from a
 * byte offset). Up to `connections` segments are in flight; memory stays below
 * connections x segmentSize whatever the file size. A segment that breaks mid-way is continued
 * from the byte where it stopped, not restarted.
 *
 * Bytes are copied from the socket straight into segment buffers ('data' events, no per-chunk
 * promises) and handed over in large pieces, so the consumer hashes and writes in few calls: the
 * main thread, which also parses HTTP, stays the cheapest part of a download.
 */
export type RangeFetch = (start: number, endInclusive: number, signal: AbortSignal) => Promise<Readable>;

export class RangeIgnoredError extends OrbError {
  constructor(what: string) {
    super('network', `${what}: the server ignored the Range header (answered 200 instead of 206)`);
  }
}

export interface RangedOptions {
  fetch: RangeFetch;
  size: number;
  offset?: number;
  connections?: number;
  segmentSize?: number;
  signal?: AbortSignal;
  log?: Logger;
  what: string;
}

export const DEFAULT_SEGMENT = 8 << 20;
/** pieces handed over by the single-connection path */
const PIECE = 1 << 20;
const MAX_STALLS = 8;

/**
 * Reads [start, end] into `sink(chunk)` with in-place resumption: a connection that drops is
 * replaced by a ranged request from the first missing byte. `pause`/`resume` let the caller
 * apply backpressure to the current connection.
 */
async function transfer(
  opts: RangedOptions,
  start: number,
  end: number,
  signal: AbortSignal,
  sink: (chunk: Buffer) => void,
  flow?: { current?: Readable },
): Promise<void> {
  let pos = start;
  let stalls = 0;
  while (pos <= end) {
    const stream = await withRetries(() => opts.fetch(pos, end, signal), {
      what: opts.what,
      signal,
      ...(opts.log ? { log: opts.log } : {}),
    });
    if (flow) flow.current = stream;
    const before = pos;
    try {
      await new Promise<void>((resolve, reject) => {
        stream.on('data', (c: Buffer) => {
          if (c.length > end - pos + 1) {
            stream.destroy();
            reject(
              new OrbError(
                'integrity',
                `${opts.what}: the server sent more bytes than requested for range ${start}-${end}`,
              ),
            );
            return;
          }
          pos += c.length;
          sink(c);
        });
        stream.once('end', resolve);
        stream.once('error', reject);
        stream.once('close', () =>
          pos > end
            ? resolve()
            : reject(
                Object.assign(new Error(`connection closed at byte ${pos} of range ${start}-${end}`), {
                  code: 'ERR_STREAM_PREMATURE_CLOSE',
                }),
              ),
        );
      });
      if (pos <= end)
        throw Object.assign(new Error(`connection closed at byte ${pos} of range ${start}-${end}`), {
          code: 'ERR_STREAM_PREMATURE_CLOSE',
        });
    } catch (err) {
      stream.destroy();
      if (signal.aborted) throw signal.reason ?? err;
      if (err instanceof OrbError && err.kind !== 'network') throw err;
      stalls = pos > before ? 1 : stalls + 1;
      if (stalls > MAX_STALLS)
        throw new OrbError(
          'network',
          `${opts.what}: download kept failing at byte ${pos}: ${(err as Error).message}`,
          { cause: err },
        );
      opts.log?.warn(`${opts.what}: ${(err as Error).message}; continuing from byte ${pos}`);
      await new Promise((r) => setTimeout(r, Math.min(5000, 200 * 2 ** (stalls - 1))));
    } finally {
      if (flow) flow.current = undefined;
    }
  }
}

/** One segment, whole, in one buffer. */
async function segment(
  opts: RangedOptions,
  start: number,
  end: number,
  signal: AbortSignal,
): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(end - start + 1);
  let at = 0;
  await transfer(opts, start, end, signal, (c) => {
    c.copy(buf, at);
    at += c.length;
  });
  return buf;
}

/** An ordered stream of bytes [offset, size) fetched over up to `connections` parallel ranges. */
export function rangedStream(opts: RangedOptions): Readable {
  const offset = opts.offset ?? 0;
  const seg = Math.max(1 << 20, opts.segmentSize ?? DEFAULT_SEGMENT);
  const conns = Math.max(1, Math.min(64, opts.connections ?? 8));
  const controller = new AbortController();
  const onOuterAbort = () => controller.abort(opts.signal?.reason);
  opts.signal?.addEventListener('abort', onOuterAbort, { once: true });
  const signal = controller.signal;
  const finish = () => {
    opts.signal?.removeEventListener('abort', onOuterAbort);
    if (!signal.aborted) controller.abort(new OrbError('interrupted', 'download stopped'));
  };

  if (offset >= opts.size) {
    finish();
    return Readable.from([]);
  }

  // One connection: stream it, regrouped into 1 MiB pieces, with backpressure on the socket.
  if (conns === 1 || opts.size - offset <= seg) {
    const flow: { current?: Readable } = {};
    let piece = Buffer.allocUnsafe(Math.min(PIECE, opts.size - offset));
    let fill = 0;
    let left = opts.size - offset;
    const out = new Readable({
      highWaterMark: 4 * PIECE,
      read() {
        flow.current?.resume();
      },
      destroy(err, cb) {
        finish();
        cb(err);
      },
    });
    const sink = (c: Buffer) => {
      let b = c;
      while (b.length) {
        const n = Math.min(b.length, piece.length - fill);
        b.copy(piece, fill, 0, n);
        fill += n;
        left -= n;
        b = b.subarray(n);
        if (fill === piece.length) {
          const more = out.push(piece);
          piece = Buffer.allocUnsafe(Math.min(PIECE, Math.max(left, 1)));
          fill = 0;
          if (!more) flow.current?.pause();
        }
      }
    };
    transfer(opts, offset, opts.size - 1, signal, sink, flow).then(
      () => {
        if (fill) out.push(piece.subarray(0, fill));
        out.push(null);
        finish();
      },
      (err: unknown) => {
        finish();
        out.destroy(err as Error);
      },
    );
    return out;
  }

  // Several connections: whole segments in flight, handed over in order.
  async function* segments(): AsyncGenerator<Buffer> {
    try {
      const ranges: [number, number][] = [];
      for (let s = offset; s < opts.size; s += seg) ranges.push([s, Math.min(opts.size, s + seg) - 1]);
      const inflight: Promise<Buffer>[] = [];
      let next = 0;
      const schedule = () => {
        while (next < ranges.length && inflight.length < conns) {
          const [s, e] = ranges[next++]!;
          const p = segment(opts, s, e, signal);
          p.catch(() => {}); // awaited in order below; avoid an unhandled rejection meanwhile
          inflight.push(p);
        }
      };
      schedule();
      while (inflight.length) {
        const buf = await inflight.shift()!;
        schedule();
        yield buf;
      }
    } finally {
      finish();
    }
  }
  return Readable.from(segments(), { objectMode: false, highWaterMark: 1 << 20 });
}
