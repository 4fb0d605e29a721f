/**
 * The guest's serial console as QEMU writes it to our pipe: copied to serial.log as it arrives,
 * kept in memory (bounded) as text and lines, and offered to callers as a callback, an async
 * iterator of lines, or a wait for a pattern.
 */
import { createWriteStream, type WriteStream } from 'node:fs';
import { OrbError } from '../core/errors.js';

/** In-memory history: enough for any boot log, bounded for a guest that floods the console. */
const KEEP_CHARS = 4 * 1024 * 1024;
const KEEP_LINES = 100_000;

export class SerialConsole {
  readonly logPath: string;
  private readonly log: WriteStream;
  private readonly decoder = new TextDecoder('utf-8');
  private readonly onLine: ((line: string) => void) | undefined;
  private text = '';
  private partial = '';
  private lines: string[] = [];
  private dropped = 0;
  private ended = false;
  private readonly wakers = new Set<() => void>();

  constructor(logPath: string, onLine?: (line: string) => void) {
    this.logPath = logPath;
    this.onLine = onLine;
    this.log = createWriteStream(logPath);
    this.log.on('error', () => undefined);
  }

  push(chunk: Buffer): void {
    this.log.write(chunk);
    this.addText(this.decoder.decode(chunk, { stream: true }));
  }

  /** The stream ended (QEMU exited): flush the last partial line and the log file. */
  async end(): Promise<void> {
    if (this.ended) return;
    this.addText(this.decoder.decode());
    if (this.partial) this.pushLine(this.partial);
    this.partial = '';
    this.ended = true;
    this.wake();
    await new Promise<void>((r) => this.log.end(r));
  }

  private addText(s: string): void {
    if (!s) return;
    this.text += s;
    if (this.text.length > KEEP_CHARS * 1.25) this.text = this.text.slice(-KEEP_CHARS);
    const parts = (this.partial + s).split('\n');
    this.partial = parts.pop() ?? '';
    for (const l of parts) this.pushLine(l);
    this.wake();
  }

  private pushLine(raw: string): void {
    const line = raw.replace(/\r+$/, '');
    this.lines.push(line);
    if (this.lines.length > KEEP_LINES * 1.25) {
      const n = this.lines.length - KEEP_LINES;
      this.lines.splice(0, n);
      this.dropped += n;
    }
    try {
      this.onLine?.(line);
    } catch {
      /* a caller's callback must not break serial capture */
    }
  }

  private wake(): void {
    for (const w of [...this.wakers]) w();
  }

  /** Output so far (the last 4 MiB). */
  textSoFar(): string {
    return this.text.length > KEEP_CHARS ? this.text.slice(-KEEP_CHARS) : this.text;
  }

  lastLine(): string | undefined {
    return this.lines.at(-1);
  }

  /** Every line from the start (replayed), then live ones; ends when the stream ends. */
  async *iterate(): AsyncGenerator<string> {
    let next = this.dropped;
    for (;;) {
      if (next < this.dropped) next = this.dropped;
      while (next - this.dropped < this.lines.length) yield this.lines[next++ - this.dropped]!;
      if (this.ended) return;
      await new Promise<void>((r) => {
        const w = (): void => {
          this.wakers.delete(w);
          r();
        };
        this.wakers.add(w);
      });
    }
  }

  /**
   * The first line (from the start) matching pattern; the unfinished last line counts too, so a
   * prompt without a newline can be waited for. OrbError 'timeout', or 'check' if output ends first.
   */
  waitFor(pattern: string | RegExp, timeoutMs: number): Promise<string> {
    const test = (l: string): boolean => {
      if (typeof pattern === 'string') return l.includes(pattern);
      pattern.lastIndex = 0;
      return pattern.test(l);
    };
    const hint = (): string => `serial log: ${this.logPath}; last line: ${this.lastLine() ?? '(none)'}`;
    return new Promise<string>((resolve, reject) => {
      let next = this.dropped;
      const finish = (err: Error | undefined, line?: string): true => {
        clearTimeout(timer);
        this.wakers.delete(check);
        if (err) reject(err);
        else resolve(line!);
        return true;
      };
      const check = (): boolean => {
        if (next < this.dropped) next = this.dropped;
        while (next - this.dropped < this.lines.length) {
          const l = this.lines[next++ - this.dropped]!;
          if (test(l)) return finish(undefined, l);
        }
        const p = this.partial.replace(/\r+$/, '');
        if (p && test(p)) return finish(undefined, p);
        if (this.ended) {
          return finish(
            new OrbError('check', `the VM exited before its serial console showed ${String(pattern)}`, {
              hint: hint(),
            }),
          );
        }
        return false;
      };
      const timer = setTimeout(
        () => {
          finish(
            new OrbError(
              'timeout',
              `no serial output matching ${String(pattern)} within ${(timeoutMs / 1000).toFixed(0)} s`,
              { hint: hint() },
            ),
          );
        },
        Math.min(timeoutMs, 2 ** 31 - 1),
      );
      if (!check()) this.wakers.add(check);
    });
  }
}
