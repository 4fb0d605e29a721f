import { availableParallelism, freemem } from 'node:os';
import { Worker } from 'node:worker_threads';
import { OrbError, type ErrorKind } from '../core/errors.js';
import { onCleanup } from '../core/cleanup.js';
import type { Extents } from './extents.js';
import { startWorker } from '../core/worker-file.js';

/**
 * A fixed set of worker threads running compress-worker.ts, one task at a time each, plus the
 * SharedArrayBuffer slots that hold disk bytes while they are hashed and compressed. Memory is
 * bounded by the slots (count x size), never by the image.
 */
export interface TaskResult {
  error?: string;
  kind?: ErrorKind;
  [key: string]: unknown;
}

interface Job {
  msg: Record<string, unknown>;
  transfer: ArrayBuffer[];
  resolve(r: TaskResult): void;
  reject(e: Error): void;
}

class Thread {
  readonly worker: Worker;
  job: Job | undefined;
  constructor(onDone: (t: Thread, r: TaskResult | Error) => void, workerData: unknown) {
    this.worker = startWorker('./compress-worker.js', import.meta.url, { workerData });
    this.worker.on('message', (r: TaskResult) => onDone(this, r));
    this.worker.on('error', (err) => onDone(this, err));
  }
}

export class WorkerPool {
  private readonly threads: Thread[] = [];
  private readonly idle: Thread[] = [];
  private readonly queue: Job[] = [];
  private nextId = 1;
  private closed = false;
  private failed: Error | undefined;
  private readonly unregister: () => void;

  constructor(readonly size: number) {
    for (let i = 0; i < size; i++) {
      const t = new Thread((th, r) => this.done(th, r), { role: 'orb-compress' });
      this.threads.push(t);
      this.idle.push(t);
    }
    this.unregister = onCleanup(() => this.close());
  }

  private done(t: Thread, r: TaskResult | Error): void {
    const job = t.job;
    t.job = undefined;
    if (r instanceof Error) {
      // a thread that crashed is gone: fail everything rather than wait for it forever
      const err = new OrbError('internal', `worker thread failed: ${r.message}`);
      job?.reject(err);
      this.failed = err;
      for (const j of this.queue.splice(0)) j.reject(err);
      void this.close();
      return;
    }
    if (job) {
      if (r.error) job.reject(new OrbError(r.kind ?? 'internal', r.error));
      else job.resolve(r);
    }
    this.idle.push(t);
    this.pump();
  }

  private pump(): void {
    while (this.idle.length && this.queue.length) {
      const t = this.idle.pop()!;
      const job = this.queue.shift()!;
      t.job = job;
      t.worker.postMessage({ ...job.msg, id: this.nextId++ }, job.transfer);
    }
  }

  run(msg: Record<string, unknown>, transfer: ArrayBuffer[] = []): Promise<TaskResult> {
    if (this.closed) return Promise.reject(this.failed ?? new OrbError('internal', 'worker pool is closed'));
    return new Promise((resolve, reject) => {
      this.queue.push({ msg, transfer, resolve, reject });
      this.pump();
    });
  }

  /** Stops the threads; jobs queued or running are rejected with `reason` (none waits forever). */
  async close(reason: Error = new OrbError('interrupted', 'stopped')): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.failed ??= reason;
    this.unregister();
    for (const j of this.queue.splice(0)) j.reject(reason);
    for (const t of this.threads) {
      t.job?.reject(reason);
      t.job = undefined;
    }
    await Promise.all(this.threads.map((t) => t.worker.terminate()));
  }
}

/**
 * The whole-disk sha256 in its own thread, fed strictly in disk order. For a raw file the thread
 * can instead read the file itself (`readAhead`), running ahead of the conversion: fed by the
 * conversion, the hash lags behind compression and hashes a disk's trailing zeros alone at the
 * end (measured: 2 s of a 14 s raw.zst conversion with one core idle).
 */
export class Hasher {
  private readonly pool = new WorkerPool(1);
  private own: { scanned: BigInt64Array; result: Promise<TaskResult> } | undefined;

  /**
   * `signal`: its abort stops the thread mid-task (hashing a long zero run takes minutes: sha256
   * runs at ~1.7 GiB/s whatever the update size) and rejects what waits on it.
   */
  constructor(private readonly signal?: AbortSignal) {
    if (signal?.aborted) this.stop();
    else signal?.addEventListener('abort', this.stop, { once: true });
  }
  private readonly stop = () => {
    const reason: unknown = this.signal?.reason;
    void this.pool.close(reason instanceof Error ? reason : new OrbError('interrupted', 'interrupted'));
  };

  /**
   * Hash `file` (data where `extents` says, zeros elsewhere) in the hash thread, at most `lead`
   * bytes past what the conversion has read (see `scanned`), so the page cache serves the
   * conversion what the hasher read. `update` and `zeros` are then no-ops.
   */
  readAhead(file: { path: string; fileSize: number }, extents: Extents, lead = defaultLead()): void {
    const progress = new SharedArrayBuffer(8);
    const result = this.pool.run({
      task: 'hashFile',
      path: file.path,
      fileSize: file.fileSize,
      size: extents.virtualSize,
      ranges: [...extents.ranges()],
      progress,
      lead,
    });
    // observed in digest(); a failed scan closes the pool instead
    result.catch(() => undefined);
    this.own = { scanned: new BigInt64Array(progress), result };
  }
  /** The conversion has read the disk up to `offset`. */
  scanned(offset: number): void {
    if (!this.own) return;
    Atomics.store(this.own.scanned, 0, BigInt(Math.min(offset, Number.MAX_SAFE_INTEGER)));
    Atomics.notify(this.own.scanned, 0);
  }
  update(sab: SharedArrayBuffer, off: number, len: number): Promise<unknown> {
    if (this.own) return Promise.resolve();
    return this.pool.run({ task: 'hash', sab, off, len });
  }
  zeros(n: number): Promise<unknown> {
    if (this.own) return Promise.resolve();
    return this.pool.run({ task: 'hash', zeros: n });
  }
  async digest(): Promise<string> {
    const r = await (this.own ? this.own.result : this.pool.run({ task: 'digest' }));
    return 'sha256:' + String(r.hex);
  }
  close(): Promise<void> {
    this.signal?.removeEventListener('abort', this.stop);
    return this.pool.close();
  }
}

/** Read-ahead of the raw-file hasher: 1 GiB, less when memory is short (it relies on the page cache). */
function defaultLead(): number {
  return Math.max(64 << 20, Math.min(1 << 30, Math.floor(freemem() / 4)));
}

/** Fixed-size shared buffers handed out in turn; `acquire` waits when all are in use. */
export class SlotPool {
  readonly slots: SharedArrayBuffer[];
  private readonly free: number[];
  private waiters: ((i: number) => void)[] = [];
  constructor(
    count: number,
    readonly slotSize: number,
  ) {
    this.slots = Array.from({ length: count }, () => new SharedArrayBuffer(slotSize));
    this.free = this.slots.map((_, i) => i);
  }
  acquire(): Promise<number> {
    const i = this.free.pop();
    if (i !== undefined) return Promise.resolve(i);
    return new Promise((r) => this.waiters.push(r));
  }
  release(i: number): void {
    const w = this.waiters.shift();
    if (w) w(i);
    else this.free.push(i);
  }
}

export function defaultThreads(): number {
  return Math.max(1, availableParallelism());
}

/**
 * Slot memory stays under this whatever the image size or core count. The rest of the 512 MiB
 * RSS bound goes to Node and each thread (~15 MiB idle) and to compressed outputs in flight.
 */
export const SLOT_BUDGET = 160 << 20;

/** One slot being read, one per thread compressing, one waiting: more only adds memory. */
export function slotCount(slotSize: number, threads: number): number {
  return Math.max(3, Math.min(threads + 2, Math.floor(SLOT_BUDGET / slotSize)));
}
