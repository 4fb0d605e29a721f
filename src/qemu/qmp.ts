/**
 * A small QMP (QEMU Machine Protocol) client over a unix socket: greeting, qmp_capabilities,
 * commands with ids and per-command timeouts, asynchronous events as an emitter.
 */
import { EventEmitter } from 'node:events';
import { connect, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { OrbError } from '../core/errors.js';

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

export interface QmpGreeting {
  QMP: {
    version: { qemu: { major: number; minor: number; micro: number }; package: string };
    capabilities: string[];
  };
}

export interface QmpConnectOptions {
  /** how long to wait for the socket to appear and accept; default 30 s */
  timeoutMs?: number;
  /** when this becomes true (e.g. the QEMU process exited) waiting stops early with a clear error */
  isDead?: () => string | undefined;
}

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
  cmd: string;
}

/**
 * Events: 'event' (QmpEvent) for every event, and one per event name ('SHUTDOWN', 'POWERDOWN',
 * 'RESET', 'STOP', 'RESUME', ...) with the QmpEvent; 'close' when the connection ends.
 */
export class QmpClient extends EventEmitter {
  readonly greeting: QmpGreeting;
  private readonly sock: Socket;
  private buf = '';
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private closedReason: string | undefined;
  /** every event received, in order (tests and waitForEvent look back through it) */
  readonly events: QmpEvent[] = [];

  private constructor(sock: Socket, greeting: QmpGreeting, rest: string) {
    super();
    this.sock = sock;
    this.greeting = greeting;
    this.buf = rest;
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => this.onData(d));
    sock.on('error', () => {
      /* 'close' follows */
    });
    sock.on('close', () => this.onClose('QEMU closed the QMP connection (it exited or crashed)'));
    if (rest) this.onData('');
    sock.resume();
  }

  /** Waits for the socket, reads the greeting and negotiates capabilities. */
  static async connect(path: string, opts: QmpConnectOptions = {}): Promise<QmpClient> {
    const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
    let lastErr = '';
    for (;;) {
      const dead = opts.isDead?.();
      if (dead) throw new OrbError('environment', `QEMU exited before its QMP socket was ready: ${dead}`);
      try {
        const sock = await new Promise<Socket>((resolve, reject) => {
          const s = connect(path);
          s.once('connect', () => {
            s.removeAllListeners('error');
            resolve(s);
          });
          s.once('error', reject);
        });
        const { greeting, rest } = await readGreeting(sock, Math.max(1000, deadline - Date.now()));
        const client = new QmpClient(sock, greeting, rest);
        await client.execute('qmp_capabilities', undefined, { timeoutMs: 10_000 });
        return client;
      } catch (err) {
        if (err instanceof OrbError) throw err;
        lastErr = (err as Error).message;
      }
      if (Date.now() > deadline) {
        throw new OrbError('timeout', `QMP socket ${path} did not accept connections: ${lastErr}`, {
          hint: 'QEMU may be stuck starting up; see its log (qemu.log in the VM work dir)',
        });
      }
      await sleep(50);
    }
  }

  get closed(): boolean {
    return this.closedReason !== undefined;
  }

  /**
   * Runs a QMP command. Rejects with an OrbError: 'timeout' when QEMU does not answer within
   * timeoutMs (default 30 s), 'environment' when QEMU returns an error or the connection is gone.
   */
  execute<T = unknown>(
    command: string,
    args?: Record<string, unknown>,
    opts: { timeoutMs?: number } = {},
  ): Promise<T> {
    if (this.closedReason) {
      return Promise.reject(new OrbError('environment', `QMP '${command}' failed: ${this.closedReason}`));
    }
    const id = `orb-${this.nextId++}`;
    const timeoutMs = opts.timeoutMs ?? 30_000;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(
          new OrbError(
            'timeout',
            `QEMU did not answer QMP '${command}' within ${(timeoutMs / 1000).toFixed(1)} s`,
          ),
        );
      }, timeoutMs);
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, timer, cmd: command });
      const msg: Record<string, unknown> = { execute: command, id };
      if (args) msg.arguments = args;
      this.sock.write(JSON.stringify(msg) + '\n');
    });
  }

  /** Shortcut for HMP commands through QMP ('info usernet', ...). */
  hmp(commandLine: string, opts: { timeoutMs?: number } = {}): Promise<string> {
    return this.execute<string>('human-monitor-command', { 'command-line': commandLine }, opts);
  }

  /**
   * Resolves with the next event called `name` (or one already received after `since`, an index
   * into `events`, when given). Rejects with an OrbError 'timeout', or when the connection closes.
   */
  waitForEvent(name: string, timeoutMs: number, since?: number): Promise<QmpEvent> {
    if (since !== undefined) {
      const seen = this.events.slice(since).find((e) => e.event === name);
      if (seen) return Promise.resolve(seen);
    }
    return new Promise<QmpEvent>((resolve, reject) => {
      const done = (): void => {
        clearTimeout(timer);
        this.off(name, onEvent);
        this.off('close', onClose);
      };
      const onEvent = (ev: QmpEvent): void => {
        done();
        resolve(ev);
      };
      const onClose = (): void => {
        done();
        reject(
          new OrbError('environment', `QMP closed while waiting for ${name}: ${this.closedReason ?? ''}`),
        );
      };
      const timer = setTimeout(() => {
        done();
        reject(
          new OrbError('timeout', `no ${name} event from QEMU within ${(timeoutMs / 1000).toFixed(1)} s`),
        );
      }, timeoutMs);
      this.on(name, onEvent);
      this.once('close', onClose);
      if (this.closedReason) onClose();
    });
  }

  /** Closes the connection (QEMU keeps running). */
  close(): void {
    this.sock.end();
    this.sock.destroy();
    this.onClose('QMP connection closed by us');
  }

  private onData(chunk: string): void {
    this.buf += chunk;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (!line) continue;
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(line) as Record<string, unknown>;
      } catch {
        continue;
      }
      this.onMessage(msg);
    }
  }

  private onMessage(msg: Record<string, unknown>): void {
    if (typeof msg.event === 'string') {
      const ev = msg as unknown as QmpEvent;
      this.events.push(ev);
      this.emit('event', ev);
      this.emit(ev.event, ev);
      return;
    }
    const id = typeof msg.id === 'string' ? msg.id : undefined;
    const p = id ? this.pending.get(id) : undefined;
    if (!p || !id) return;
    this.pending.delete(id);
    clearTimeout(p.timer);
    if ('error' in msg) {
      const e = msg.error as { class?: string; desc?: string };
      p.reject(
        new OrbError(
          'environment',
          `QMP '${p.cmd}' failed: ${e.desc ?? 'unknown error'} (${e.class ?? 'error'})`,
        ),
      );
    } else {
      p.resolve(msg.return);
    }
  }

  private onClose(reason: string): void {
    if (this.closedReason) return;
    this.closedReason = reason;
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      this.pending.delete(id);
      p.reject(new OrbError('environment', `QMP '${p.cmd}' got no answer: ${reason}`));
    }
    this.emit('close', reason);
  }
}

function readGreeting(sock: Socket, timeoutMs: number): Promise<{ greeting: QmpGreeting; rest: string }> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const done = (): void => {
      clearTimeout(timer);
      sock.off('data', onData);
      sock.off('close', onClose);
      sock.off('error', onClose);
    };
    const onData = (d: Buffer): void => {
      buf += d.toString('utf8');
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      done();
      sock.pause();
      try {
        const greeting = JSON.parse(buf.slice(0, nl)) as QmpGreeting;
        if (!greeting.QMP) throw new Error('not a QMP greeting');
        resolve({ greeting, rest: buf.slice(nl + 1) });
      } catch (err) {
        sock.destroy();
        reject(new OrbError('environment', `unexpected data on the QMP socket: ${(err as Error).message}`));
      }
    };
    const onClose = (): void => {
      done();
      reject(new Error('connection closed before the QMP greeting'));
    };
    const timer = setTimeout(() => {
      done();
      sock.destroy();
      reject(new OrbError('timeout', 'no QMP greeting from QEMU'));
    }, timeoutMs);
    sock.on('data', onData);
    sock.once('close', onClose);
    sock.once('error', onClose);
  });
}
