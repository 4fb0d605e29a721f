import { Worker } from 'node:worker_threads';
import { OrbError } from '../core/errors.js';
import { startWorker } from '../core/worker-file.js';

/**
 * A few transfer worker threads (src/net/http-worker.ts). Jobs go to the least busy worker;
 * each worker runs many at once on its own event loop. Closing (or an abort) terminates them,
 * failing whatever is in flight as interrupted.
 */
export interface WorkerEvents {
  onProgress?(n: number): void;
  onFlushed?(n: number): void;
  onLog?(line: string): void;
}

export interface WorkerError {
  kind: string;
  message: string;
  status?: number;
  downloaded?: number;
}

interface Slot {
  worker: Worker;
  active: number;
}

interface Pending {
  resolve(v: unknown): void;
  reject(e: unknown): void;
  events: WorkerEvents;
  slot: Slot;
}

export class HttpWorkers {
  private readonly slots: Slot[] = [];
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private closed = false;

  constructor(
    private readonly size: number,
    signal?: AbortSignal,
  ) {
    signal?.addEventListener('abort', () => void this.close(), { once: true });
  }

  private slot(): Slot {
    if (this.slots.length < this.size && this.slots.every((s) => s.active > 0)) {
      const worker = startWorker('./http-worker.js', import.meta.url, {
        workerData: { role: 'orb-http' },
      });
      const slot: Slot = { worker, active: 0 };
      worker.on(
        'message',
        (m: { id: number; progress?: number; flushed?: number; log?: string; done?: unknown }) =>
          this.onMessage(m),
      );
      worker.on('error', (err) => this.failSlot(slot, err));
      worker.on('exit', () => this.failSlot(slot, new OrbError('interrupted', 'interrupted')));
      worker.unref();
      this.slots.push(slot);
    }
    return this.slots.reduce((a, b) => (b.active < a.active ? b : a));
  }

  private onMessage(m: {
    id: number;
    progress?: number;
    flushed?: number;
    log?: string;
    done?: unknown;
  }): void {
    const p = this.pending.get(m.id);
    if (!p) return;
    if (m.progress !== undefined) p.events.onProgress?.(m.progress);
    if (m.flushed !== undefined) p.events.onFlushed?.(m.flushed);
    if (m.log !== undefined) p.events.onLog?.(m.log);
    if (m.done !== undefined) {
      this.pending.delete(m.id);
      p.slot.active--;
      p.resolve(m.done);
    }
  }

  private failSlot(slot: Slot, err: unknown): void {
    for (const [id, p] of this.pending) {
      if (p.slot !== slot) continue;
      this.pending.delete(id);
      p.reject(
        err instanceof OrbError
          ? err
          : new OrbError('internal', `transfer worker failed: ${(err as Error).message}`),
      );
    }
    const i = this.slots.indexOf(slot);
    if (i >= 0) this.slots.splice(i, 1);
  }

  /** Runs one job; resolves with the worker's `done` value. */
  run<T>(job: Record<string, unknown>, events: WorkerEvents = {}): Promise<T> {
    if (this.closed) return Promise.reject(new OrbError('interrupted', 'interrupted'));
    const slot = this.slot();
    const id = this.nextId++;
    slot.active++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, events, slot });
      slot.worker.ref();
      slot.worker.postMessage({ ...job, id });
    }).finally(() => {
      if (slot.active === 0) slot.worker.unref();
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const slots = this.slots.splice(0);
    for (const [, p] of this.pending) p.reject(new OrbError('interrupted', 'interrupted'));
    this.pending.clear();
    await Promise.all(slots.map((s) => s.worker.terminate()));
  }
}
