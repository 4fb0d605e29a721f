import { Readable } from 'node:stream';
import { OrbError } from '../core/errors.js';
import { sleep } from '../net/retry.js';
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

/**
 * Optional zero-copy fetch of [start, start + target.length) straight into `target` (plain HTTP):
 * 'ok' when it all landed, 'fallback' to use `fetch` instead; on a broken connection it throws
 * after reporting through `onData` what did land.
 */
export type RangeFetchInto = (
  start: number,
  target: Buffer,
  signal: AbortSignal,
  onData: (n: number) => void,
) => Promise<'ok' | 'fallback'>;

export interface RangedOptions {
  fetch: RangeFetch;
  fetchInto?: RangeFetchInto;
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
      await sleep(Math.min(5000, 200 * 2 ** (stalls - 1)), signal);
    } finally {
      if (flow) flow.current = undefined;
    }
  }
}

/**
 * One segment being filled in the background. The consumer reads its head as it arrives (views
 * into the buffer, no copy), so writing overlaps downloading instead of waiting for whole segments.
 */
class Segment {
  readonly buf: Buffer;
  filled = 0;
  taken = 0;
  done = false;
  error: unknown;
  private wake?: () => void;
  constructor(opts: RangedOptions, start: number, end: number, signal: AbortSignal) {
    this.buf = Buffer.allocUnsafe(end - start + 1);
    this.run(opts, start, end, signal).then(
      () => {
        this.done = true;
        this.notify();
      },
      (err: unknown) => {
        this.error = err ?? new Error('download failed');
        this.notify();
      },
    );
  }

  private landed(n: number): void {
    this.filled += n;
    if (this.filled - this.taken >= PIECE || this.filled === this.buf.length) this.notify();
  }

  private async run(opts: RangedOptions, start: number, end: number, signal: AbortSignal): Promise<void> {
    if (opts.fetchInto) {
      let stalls = 0;
      while (this.filled < this.buf.length) {
        const before = this.filled;
        try {
          const r = await opts.fetchInto(start + this.filled, this.buf.subarray(this.filled), signal, (n) =>
            this.landed(n),
          );
          if (r === 'fallback') break;
        } catch (err) {
          if (signal.aborted) throw signal.reason ?? err;
          stalls = this.filled > before ? 1 : stalls + 1;
          if (stalls > MAX_STALLS)
            throw new OrbError(
              'network',
              `${opts.what}: download kept failing at byte ${start + this.filled}: ${(err as Error).message}`,
              { cause: err },
            );
          opts.log?.warn(
            `${opts.what}: ${(err as Error).message}; continuing from byte ${start + this.filled}`,
          );
          await sleep(Math.min(5000, 200 * 2 ** (stalls - 1)), signal);
        }
      }
      if (this.filled >= this.buf.length) return;
    }
    await transfer(opts, start + this.filled, end, signal, (c) => {
      c.copy(this.buf, this.filled);
      this.landed(c.length);
    });
  }

  private notify(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }
  /** the next bytes of this segment (at least a piece, or the rest), undefined at its end */
  async next(): Promise<Buffer | undefined> {
    for (;;) {
      if (this.error !== undefined) throw this.error;
      const ready = this.filled - this.taken;
      if (ready >= PIECE || (this.done && ready > 0)) {
        const out = this.buf.subarray(this.taken, this.filled);
        this.taken = this.filled;
        return out;
      }
      if (this.done) return undefined;
      await new Promise<void>((r) => (this.wake = r));
    }
  }
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

  // Several connections: segments in flight, handed over in order as their bytes arrive.
  async function* segments(): AsyncGenerator<Buffer> {
    try {
      const ranges: [number, number][] = [];
      for (let s = offset; s < opts.size; s += seg) ranges.push([s, Math.min(opts.size, s + seg) - 1]);
      const inflight: Segment[] = [];
      let next = 0;
      const schedule = () => {
        while (next < ranges.length && inflight.length < conns) {
          const [s, e] = ranges[next++]!;
          inflight.push(new Segment(opts, s, e, signal));
        }
      };
      schedule();
      while (inflight.length) {
        const head = inflight[0]!;
        const piece = await head.next();
        if (piece) yield piece;
        else {
          inflight.shift();
          schedule();
        }
      }
    } finally {
      finish();
    }
  }
  return Readable.from(segments(), { objectMode: false, highWaterMark: 1 << 20 });
}
