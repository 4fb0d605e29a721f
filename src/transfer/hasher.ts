import type { Worker } from 'node:worker_threads';
import { onCleanup } from '../core/cleanup.js';
import { OrbError } from '../core/errors.js';
import { startWorker } from '../core/worker-file.js';

/**
 * The whole-content sha256 of a file being assembled out of order. Segments are marked done as
 * they land; a worker thread reads the file back in order as soon as the next segment is there,
 * so the final check costs no extra pass at the end and no main-thread time. Zero gaps are
 * hashed without reading. The thread is src/transfer/hash-worker.ts.
 */

export interface Segment {
  offset: number;
  length: number;
  zero: boolean;
}

export class OrderedHasher {
  private readonly worker: Worker;
  private readonly done: boolean[];
  private next = 0;
  private result: Promise<string>;
  private failed: string | undefined;
  private readonly unregister: () => void;

  constructor(
    path: string,
    private readonly segments: readonly Segment[],
  ) {
    this.worker = startWorker('./hash-worker.js', import.meta.url, { workerData: { path } });
    // a forced exit after a signal stops the thread even if no one awaits finish() or abort()
    this.unregister = onCleanup(() => this.worker.terminate().then(() => undefined));
    this.done = segments.map((s) => s.zero);
    this.result = new Promise<string>((resolve, reject) => {
      this.worker.on('message', (m: { digest?: string; error?: string }) => {
        if (m.error) {
          this.failed = m.error;
          reject(new OrbError('internal', `hashing the output failed: ${m.error}`));
        } else if (m.digest) resolve(m.digest);
      });
      this.worker.on('error', (err) => reject(err));
    });
    // Rejections are observed in finish(); avoid an unhandled rejection before that.
    this.result.catch(() => undefined);
    this.pump();
  }

  /** Segment `i` (index into the segments given) is on disk. */
  markDone(i: number): void {
    this.done[i] = true;
    this.pump();
  }

  private pump(): void {
    while (this.next < this.segments.length && this.done[this.next]) {
      const s = this.segments[this.next++]!;
      if (s.length > 0)
        this.worker.postMessage(
          s.zero ? { type: 'zeros', length: s.length } : { type: 'file', offset: s.offset, length: s.length },
        );
    }
  }

  /**
   * The digest, once every segment is done. Hashing long zero runs takes a while (sha256 runs at
   * ~1.7 GiB/s whatever the update size, measured): an abort of `signal` stops the thread at once.
   */
  async finish(signal?: AbortSignal): Promise<string> {
    if (this.next < this.segments.length) {
      throw new OrbError(
        'internal',
        `content hash: segment at ${this.segments[this.next]!.offset} was never written`,
      );
    }
    this.worker.postMessage({ type: 'end' });
    let onAbort: (() => void) | undefined;
    try {
      if (!signal) return await this.result;
      return await Promise.race([
        this.result,
        new Promise<never>((_, reject) => {
          onAbort = () => reject(signal.reason ?? new OrbError('interrupted', 'interrupted'));
          if (signal.aborted) onAbort();
          else signal.addEventListener('abort', onAbort, { once: true });
        }),
      ]);
    } finally {
      if (onAbort) signal?.removeEventListener('abort', onAbort);
      await this.abort();
    }
  }

  async abort(): Promise<void> {
    this.unregister();
    await this.worker.terminate();
  }
}
