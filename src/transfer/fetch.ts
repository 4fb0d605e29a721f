import { createHash, type Hash } from 'node:crypto';
import { OrbError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { backoffMs, sleep, type RetryPolicy } from '../net/retry.js';
import type { Descriptor } from '../formats/oci-media.js';
import type { BlobStore } from '../stores/store.js';

/**
 * Downloads one blob into a sink, resuming after a dropped connection with a ranged request from
 * the bytes it has. A server that ignores the range (answers from byte 0) makes the sink start
 * over: bytes are never appended to the wrong place. Returns the digest of what was received;
 * the caller compares it with the descriptor before using the bytes.
 */
export interface BlobSink {
  write(chunk: Buffer, at: number): Promise<void>;
  /** the server restarted the blob: drop what was written */
  reset(): Promise<void>;
  /** write out anything buffered (called when a response ends, cleanly or not) */
  flush?(): Promise<void>;
}

export interface FetchOptions {
  store: BlobStore;
  desc: Descriptor;
  sink: BlobSink;
  /** bytes already in the sink (and in `hash`) from an earlier attempt or run */
  have?: number;
  hash?: Hash;
  /** false: do not hash as bytes arrive (the caller hashes the whole blob itself) */
  hashing?: boolean;
  onBytes?: (n: number) => void;
  /** called after each write with the bytes in place (for progress records) */
  onHave?: (have: number) => void;
  retry: RetryPolicy;
  log: Logger;
  signal?: AbortSignal | undefined;
}

export async function fetchBlob(o: FetchOptions): Promise<{ digest: string; downloaded: number }> {
  const size = o.desc.size;
  const short = o.desc.digest.slice(7, 19);
  let have = o.have ?? 0;
  let hash = o.hash ?? createHash('sha256');
  const hashing = o.hashing !== false;
  let downloaded = 0;
  // Attempts that moved no byte count toward giving up; progress resets the count, so a long
  // transfer over a flaky link keeps going as long as it advances.
  let stalls = 0;
  // the server ended a response early, or refused the range of the rest: its copy may be short
  let shortBody = false;
  for (;;) {
    if (o.signal?.aborted) throw new OrbError('interrupted', 'interrupted');
    if (have >= size) break;
    const before = have;
    let why: string;
    try {
      const { stream, offset } = await o.store.getBlob(o.desc, have);
      if (offset !== have) {
        if (offset !== 0) {
          stream.destroy();
          throw new OrbError(
            'network',
            `blob ${o.desc.digest}: asked for bytes from ${have}, the server sent from ${offset}`,
          );
        }
        if (have > 0)
          o.log.info(
            `blob ${short}: the server ignored the range request; downloading it again from the start`,
          );
        await o.sink.reset();
        hash = createHash('sha256');
        have = 0;
      }
      try {
        for await (const c of stream) {
          const chunk = c as Buffer;
          if (have + chunk.length > size) {
            stream.destroy();
            throw new OrbError(
              'integrity',
              `blob ${o.desc.digest} from ${o.store.describe()} is longer than the ${size} bytes the manifest says`,
            );
          }
          if (hashing) hash.update(chunk);
          try {
            await o.sink.write(chunk, have);
          } catch (err) {
            stream.destroy();
            throw new OrbError('environment', `cannot write the download: ${(err as Error).message}`, {
              cause: err,
            });
          }
          have += chunk.length;
          downloaded += chunk.length;
          o.onBytes?.(chunk.length);
          o.onHave?.(have);
        }
      } catch (err) {
        stream.destroy();
        await flushSink(o.sink);
        throw err;
      }
      stream.destroy();
      await flushSink(o.sink);
      if (have >= size) break;
      shortBody = true;
      why = `the connection closed after ${have} of ${size} bytes`;
    } catch (err) {
      // OrbErrors are final (the store already retried what it could); anything else is the
      // connection failing mid-blob, which a ranged request continues.
      if (err instanceof OrbError) throw err;
      why = (err as Error).message || String(err);
      if (/HTTP 416/.test(why)) shortBody = true;
    }
    stalls = have > before ? 1 : stalls + 1;
    if (stalls >= o.retry.attempts) {
      if (shortBody) {
        throw new OrbError(
          'integrity',
          `blob ${o.desc.digest} from ${o.store.describe()} is truncated: the server sends only ${have} of ${size} bytes`,
          {
            hint: 'the registry copy is damaged or a proxy cuts it short; publish the image again',
          },
        );
      }
      throw new OrbError('network', `download of blob ${o.desc.digest} failed: ${why}`, {
        hint: 'run the same command again: what was downloaded is kept',
      });
    }
    const wait = backoffMs(stalls, o.retry);
    o.log.info(`blob ${short}: ${why}; resuming at byte ${have} in ${(wait / 1000).toFixed(1)} s`);
    await sleep(wait, o.signal);
  }
  return { digest: hashing ? 'sha256:' + hash.digest('hex') : '', downloaded };
}

/** Writes out what the sink buffered; a failure there is the disk's, not the network's. */
async function flushSink(sink: BlobSink): Promise<void> {
  try {
    await sink.flush?.();
  } catch (err) {
    throw new OrbError('environment', `cannot write the download: ${(err as Error).message}`, { cause: err });
  }
}
