import type { Socket } from 'node:net';

/** The peer closed the connection (or it was destroyed) before the bytes asked for arrived. */
export class ConnectionClosed extends Error {
  constructor() {
    super('connection closed');
    this.name = 'ConnectionClosed';
  }
}

/**
 * Reads exact byte counts from a socket with bounded buffering: past `highWater` queued bytes the
 * socket is paused, so a client that sends faster than we parse (or a huge bogus write payload)
 * waits in its own kernel buffers instead of our memory.
 */
export class SocketReader {
  private chunks: Buffer[] = [];
  private queued = 0;
  private closed = false;
  private wake: (() => void) | undefined;

  constructor(
    private readonly sock: Socket,
    private readonly highWater = 1 << 20,
  ) {
    sock.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.queued += d.length;
      if (this.queued > this.highWater) sock.pause();
      this.notify();
    });
    const end = (): void => {
      this.closed = true;
      this.notify();
    };
    sock.on('end', end);
    sock.on('close', end);
  }

  private notify(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  private async fill(n: number): Promise<void> {
    while (this.queued < n) {
      if (this.closed) throw new ConnectionClosed();
      if (this.sock.isPaused()) this.sock.resume();
      await new Promise<void>((r) => (this.wake = r));
    }
  }

  private take(n: number): Buffer {
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.queued);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.queued = rest.length;
    if (this.queued <= this.highWater && this.sock.isPaused() && !this.closed) this.sock.resume();
    return out;
  }

  /** Exactly `n` bytes (n at most a few highWaters: callers bound it). */
  async read(n: number): Promise<Buffer> {
    await this.fill(n);
    return this.take(n);
  }

  /** Whether the peer closed cleanly with nothing left unread (the end of a session, not an error). */
  async atEnd(): Promise<boolean> {
    while (this.queued === 0 && !this.closed) await new Promise<void>((r) => (this.wake = r));
    return this.queued === 0;
  }

  /** Discards `n` bytes in bounded pieces (the payload of a write we refuse). */
  async skip(n: number): Promise<void> {
    let left = n;
    while (left > 0) {
      const piece = Math.min(left, this.highWater);
      await this.read(piece);
      left -= piece;
    }
  }
}
