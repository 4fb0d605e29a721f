import { OrbError } from '../core/errors.js';

/**
 * Runs `fn` over `items` with at most `concurrency` at once. The first failure stops new work;
 * the tasks already running finish (so nothing is left half-written), then the error is thrown.
 */
export async function runPool<T>(
  items: readonly T[],
  concurrency: number,
  fn: (item: T, index: number) => Promise<void>,
  signal?: AbortSignal,
): Promise<void> {
  let next = 0;
  let failure: unknown;
  const worker = async () => {
    while (failure === undefined && next < items.length) {
      if (signal?.aborted) {
        failure ??= new OrbError('interrupted', 'interrupted');
        return;
      }
      const i = next++;
      try {
        await fn(items[i]!, i);
      } catch (err) {
        failure ??= err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(concurrency, items.length)) }, worker));
  if (failure !== undefined) throw failure;
}

/** A counting semaphore over bytes: bounds the memory held by in-flight transfers. */
export class ByteBudget {
  private used = 0;
  private readonly waiters: { n: number; resolve: () => void }[] = [];
  constructor(readonly capacity: number) {}

  /** True when `n` bytes can ever fit (otherwise the caller should stream instead). */
  fits(n: number): boolean {
    return n <= this.capacity;
  }

  async acquire(n: number): Promise<void> {
    if (this.used + n <= this.capacity && this.waiters.length === 0) {
      this.used += n;
      return;
    }
    await new Promise<void>((resolve) => this.waiters.push({ n, resolve }));
  }

  release(n: number): void {
    this.used -= n;
    while (this.waiters.length && this.used + this.waiters[0]!.n <= this.capacity) {
      const w = this.waiters.shift()!;
      this.used += w.n;
      w.resolve();
    }
  }
}
