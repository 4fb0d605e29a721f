import { OrbError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { backoffMs, sleep, type RetryPolicy } from '../net/retry.js';
import type { Descriptor } from '../formats/oci-media.js';
import type { BlobStore } from '../stores/store.js';

/**
 * Reads bytes [start, start + length) of a blob through any store's getBlob, continuing after a
 * dropped connection from the bytes it has. The store is asked for exactly that range (stores
 * that know `end` send only it; others send to the blob's end and the rest is dropped unread).
 * A store that answers from byte 0 to a range that does not start there ignores Range: that is
 * RANGE_IGNORED, and the caller fetches whole packs instead.
 *
 * This is the pull's adapter over the ranged read of the `ranges` branch (src/transfer/
 * range-read.ts, readRange with the same arguments); it goes once that is merged.
 */
export const RANGE_IGNORED = Symbol('range ignored');

export interface RangeReadOptions {
  signal?: AbortSignal | undefined;
  retry: RetryPolicy;
  log: Logger;
  onBytes?: (n: number) => void;
}

type GetBlob = (desc: Descriptor, offset?: number, end?: number) => ReturnType<BlobStore['getBlob']>;

export async function readPackRange(
  store: BlobStore,
  desc: Descriptor,
  start: number,
  length: number,
  o: RangeReadOptions,
): Promise<Buffer | typeof RANGE_IGNORED> {
  if (start < 0 || length <= 0 || start + length > desc.size)
    throw new OrbError('internal', `range ${start}+${length} outside blob ${desc.digest} of ${desc.size} bytes`);
  const out = Buffer.allocUnsafe(length);
  let have = 0;
  let stalls = 0;
  const get = store.getBlob.bind(store) as GetBlob;
  for (;;) {
    if (o.signal?.aborted) throw new OrbError('interrupted', 'interrupted');
    const before = have;
    let why: string;
    try {
      const { stream, offset } = await get(desc, start + have, start + length);
      if (offset !== start + have) {
        stream.destroy();
        if (offset === 0) return RANGE_IGNORED;
        throw new OrbError(
          'integrity',
          `blob ${desc.digest}: asked for bytes from ${start + have}, ${store.describe()} sent from ${offset}`,
        );
      }
      try {
        for await (const c of stream) {
          const chunk = c as Buffer;
          const n = Math.min(chunk.length, length - have);
          chunk.copy(out, have, 0, n);
          have += n;
          o.onBytes?.(n);
          if (have >= length) break;
        }
      } finally {
        stream.destroy();
      }
      if (have >= length) return out;
      why = `the connection closed after ${have} of ${length} bytes`;
    } catch (err) {
      if (err instanceof OrbError) throw err;
      why = (err as Error).message || String(err);
    }
    stalls = have > before ? 1 : stalls + 1;
    if (stalls >= o.retry.attempts)
      throw new OrbError(
        'network',
        `reading bytes ${start}-${start + length - 1} of blob ${desc.digest} failed: ${why}`,
        { hint: 'run the same command again: what was fetched is kept' },
      );
    const wait = backoffMs(stalls, o.retry);
    o.log.info(
      `blob ${desc.digest.slice(7, 19)}: ${why}; resuming at byte ${start + have} in ${(wait / 1000).toFixed(1)} s`,
    );
    await sleep(wait, o.signal);
  }
}
