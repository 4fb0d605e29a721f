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

/** Bytes [start, end] with in-place resumption after a dropped connection. */
async function* resilient(
  opts: RangedOptions,
  start: number,
  end: number,
  signal: AbortSignal,
): AsyncGenerator<Buffer> {
  let pos = start;
  let failures = 0;
  while (pos <= end) {
    const stream = await withRetries(() => opts.fetch(pos, end, signal), {
      what: opts.what,
      signal,
      ...(opts.log ? { log: opts.log } : {}),
    });
    try {
      for await (const chunk of stream) {
        const b = chunk as Buffer;
        const room = end - pos + 1;
        if (b.length > room) {
          stream.destroy();
          throw new OrbError(
            'integrity',
            `${opts.what}: the server sent more bytes than requested for range ${start}-${end}`,
          );
        }
        pos += b.length;
        failures = 0;
        yield b;
      }
      if (pos <= end)
        throw Object.assign(new Error(`connection closed at byte ${pos} of range ${start}-${end}`), {
          code: 'ERR_STREAM_PREMATURE_CLOSE',
        });
    } catch (err) {
      stream.destroy();
      if (signal.aborted) throw signal.reason ?? err;
      if (err instanceof OrbError && err.kind !== 'network') throw err;
      if (++failures > 8)
        throw new OrbError(
          'network',
          `${opts.what}: download kept failing at byte ${pos}: ${(err as Error).message}`,
          { cause: err },
        );
      opts.log?.warn(`${opts.what}: ${(err as Error).message}; continuing from byte ${pos}`);
      await new Promise((r) => setTimeout(r, Math.min(5000, 200 * 2 ** (failures - 1))));
    }
  }
}

/** A whole segment as one buffer: consumers then hash and write in few, large calls. */
async function collect(gen: AsyncGenerator<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const b of gen) parts.push(b);
  return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
}

/** Socket-sized pieces (16-64 KiB) regrouped into ~1 MiB ones, for the same reason. */
async function* coalesce(gen: AsyncGenerator<Buffer>, min = 1 << 20): AsyncGenerator<Buffer> {
  let parts: Buffer[] = [];
  let n = 0;
  for await (const b of gen) {
    parts.push(b);
    n += b.length;
    if (n >= min) {
      yield parts.length === 1 ? parts[0]! : Buffer.concat(parts, n);
      parts = [];
      n = 0;
    }
  }
  if (n) yield parts.length === 1 ? parts[0]! : Buffer.concat(parts, n);
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

  async function* gen(): AsyncGenerator<Buffer> {
    try {
      if (offset >= opts.size) return;
      if (conns === 1 || opts.size - offset <= seg) {
        yield* coalesce(resilient(opts, offset, opts.size - 1, signal));
        return;
      }
      const segments: [number, number][] = [];
      for (let s = offset; s < opts.size; s += seg) segments.push([s, Math.min(opts.size, s + seg) - 1]);
      const inflight: Promise<Buffer>[] = [];
      let next = 0;
      const schedule = () => {
        while (next < segments.length && inflight.length < conns) {
          const [s, e] = segments[next++]!;
          const p = collect(resilient(opts, s, e, signal));
          p.catch(() => {}); // awaited in order below; avoid an unhandled rejection meanwhile
          inflight.push(p);
        }
      };
      schedule();
      while (inflight.length) {
        const segment = await inflight.shift()!;
        schedule();
        yield segment;
      }
    } finally {
      opts.signal?.removeEventListener('abort', onOuterAbort);
      if (!signal.aborted) controller.abort(new OrbError('interrupted', 'download stopped'));
    }
  }
  return Readable.from(gen(), { objectMode: false, highWaterMark: 1 << 20 });
}
