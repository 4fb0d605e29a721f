import { availableParallelism } from 'node:os';
import type { Worker } from 'node:worker_threads';
import { onCleanup } from '../core/cleanup.js';
import { OrbError } from '../core/errors.js';
import { startWorker } from '../core/worker-file.js';
import type { BlockOp, BlockReply, BlockWorkerData } from './block-ops.js';

/**
 * Worker threads that decode, verify and write blocks of a v2 pull (block-ops.ts). Each job goes
 * to the thread with the fewest jobs queued; replies are matched by id.
 */
export class BlockPool {
  private readonly workers: { w: Worker; busy: number }[] = [];
  private readonly waiting = new Map<number, { resolve(r: BlockReply): void; reject(e: Error): void }>();
  private nextId = 0;
  private failed: Error | undefined;
  private readonly unregister: () => void;
  /** the output the threads write */
  readonly outPath: string;

  constructor(data: Omit<BlockWorkerData, 'mode' | 'writeLock'>, threads = defaultThreads()) {
    this.outPath = data.out;
    // the threads take turns writing the output (run-writer.ts says why)
    const writeLock = new Int32Array(new SharedArrayBuffer(4));
    for (let i = 0; i < threads; i++) {
      const w = startWorker('./hash-worker.js', import.meta.url, {
        workerData: { mode: 'blocks', ...data, writeLock },
      });
      const slot = { w, busy: 0 };
      w.on('message', (msg: { id?: number; r?: BlockReply; error?: string }) => {
        if (msg.id === undefined) return;
        const p = this.waiting.get(msg.id);
        this.waiting.delete(msg.id);
        slot.busy--;
        if (msg.error !== undefined)
          p?.reject(new OrbError('environment', `writing the output: ${msg.error}`));
        else p?.resolve(msg.r!);
      });
      w.on('error', (err) => this.fail(err));
      this.workers.push(slot);
    }
    this.unregister = onCleanup(() => this.close());
  }

  private fail(err: Error): void {
    this.failed ??= err;
    for (const p of this.waiting.values()) p.reject(err);
    this.waiting.clear();
  }

  /**
   * `give`: the caller hands over the frame bytes (a buffer it owns whole and never touches again),
   * so they move to the thread instead of being copied.
   */
  run<R extends BlockReply>(m: BlockOp, give = false): Promise<R> {
    if (this.failed) return Promise.reject(this.failed);
    const slot = this.workers.reduce((a, b) => (b.busy < a.busy ? b : a));
    const id = this.nextId++;
    slot.busy++;
    const transfer: ArrayBuffer[] = [];
    if (
      give &&
      m.op === 'frames' &&
      m.data.byteOffset === 0 &&
      m.data.byteLength === m.data.buffer.byteLength &&
      m.data.buffer instanceof ArrayBuffer
    )
      transfer.push(m.data.buffer);
    return new Promise<R>((resolve, reject) => {
      this.waiting.set(id, { resolve: resolve as (r: BlockReply) => void, reject });
      slot.w.postMessage({ id, m }, transfer);
    });
  }

  /** Closes the output in every thread (so its writes are done) and stops them. */
  async close(): Promise<void> {
    this.unregister();
    await Promise.all(
      this.workers.map(
        ({ w }) =>
          new Promise<void>((resolve) => {
            const t = setTimeout(resolve, 2000);
            w.once('message', () => {
              clearTimeout(t);
              resolve();
            });
            w.once('exit', () => {
              clearTimeout(t);
              resolve();
            });
            try {
              w.postMessage({ close: true });
            } catch {
              resolve();
            }
          }),
      ),
    );
    await Promise.all(this.workers.map(({ w }) => w.terminate().catch(() => undefined)));
    this.workers.length = 0;
  }
}

function defaultThreads(): number {
  return Math.max(1, Math.min(Number(process.env.ORB_BLOCK_WORKERS) || availableParallelism(), 8));
}
