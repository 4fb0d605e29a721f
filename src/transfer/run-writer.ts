import { closeSync, openSync, writeSync } from 'node:fs';

/**
 * The most bytes per write call. Linux sizes the page-cache folios of a buffered write by the
 * call's length; on a VM whose free memory goes back to the host (free page reporting, as here),
 * folios of 64 KiB and more come from memory the host must fault in again: 2.3 GB written in
 * 128 KiB-8 MiB calls took 3-5 s of system time, in 32 KiB calls 0.7-1.1 s (16 KiB: no better;
 * the whole pull: 4.5 s against 5.9 s). This is also what `zstd -d` writes.
 */
const PIECE = 32 << 10;

/**
 * The output writes of the block threads (block-ops.ts), all into one file. Two threads writing
 * one file at the same time cost this machine (Linux 6.18, ext4, a 2-core VM) 1-8 s of system
 * time for 2.3 GB that one thread writes in 0.6 s: the inode's lock is spun on and handed back
 * and forth (measured with two worker threads; a user-space lock around the writes brought it
 * back to 0.6 s). So the threads take turns through a lock in shared memory, and each turn writes
 * all the blocks a thread has verified since its last turn.
 */
export class RunWriter {
  private fd: number | undefined;
  /** queued pieces: disk offset, offset in the caller's buffer, length */
  private readonly runs: number[] = [];
  private readonly path: string;
  private readonly size: number;
  private readonly lock: Int32Array | undefined;

  // no parameter properties: worker threads run from the sources in tests under Node's type
  // stripping, which does not take them
  /** `lock`: one Int32 in a SharedArrayBuffer, shared by every thread writing `path` */
  constructor(path: string, size: number, lock?: Int32Array) {
    this.path = path;
    this.size = size;
    this.lock = lock;
  }

  /** Queues `length` bytes at `from` in the buffer the next `flush` gets, for disk offset `at`. */
  add(at: number, from: number, length: number): void {
    this.runs.push(at, from, length);
  }

  /** Writes the queued pieces of `buf` in one turn and forgets them. */
  flush(buf: Uint8Array): void {
    const r = this.runs;
    if (r.length === 0) return;
    this.acquire();
    try {
      for (let i = 0; i < r.length; i += 3) this.write(buf.subarray(r[i + 1]!, r[i + 1]! + r[i + 2]!), r[i]!);
    } finally {
      this.release();
      r.length = 0;
    }
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }

  /** the last block is clipped to the disk size */
  private write(buf: Uint8Array, offset: number): void {
    this.fd ??= openSync(this.path, 'r+');
    const n = Math.min(buf.length, this.size - offset);
    for (let done = 0; done < n;)
      done += writeSync(this.fd, buf, done, Math.min(n - done, PIECE), offset + done);
  }

  private acquire(): void {
    const l = this.lock;
    if (!l) return;
    // a timed wait, so a thread being terminated is never parked for good on a lock whose
    // holder was terminated first
    while (Atomics.compareExchange(l, 0, 0, 1) !== 0) Atomics.wait(l, 0, 1, 100);
  }

  private release(): void {
    const l = this.lock;
    if (!l) return;
    Atomics.store(l, 0, 0);
    Atomics.notify(l, 0, 1);
  }
}
