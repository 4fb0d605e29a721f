import { redact } from './log.js';

/**
 * Progress with rate and ETA. On a terminal it redraws one line on stderr; elsewhere (Actions,
 * GitLab, pipes) it prints a line every `intervalMs`, because CI logs have no carriage returns.
 */
export interface Progress {
  /** add `n` units (bytes) done */
  add(n: number): void;
  /** set the absolute amount done */
  set(done: number): void;
  setTotal(total: number): void;
  done(message?: string): void;
}

export interface ProgressSink {
  write(line: string, final: boolean): void;
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '?';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  if (h > 0) return `${h}h${String(m).padStart(2, '0')}m`;
  if (m > 0) return `${m}m${String(sec).padStart(2, '0')}s`;
  return `${sec}s`;
}

export class RateProgress implements Progress {
  private doneUnits = 0;
  private readonly start = Date.now();
  private lastPrint = 0;
  // Rate over a sliding window so ETA follows the current link speed, not the average since start.
  private window: [number, number][] = [];
  private finished = false;

  constructor(
    private readonly label: string,
    private total: number | undefined,
    private readonly sink: ProgressSink,
    private readonly intervalMs: number,
  ) {}

  add(n: number): void {
    this.set(this.doneUnits + n);
  }

  set(done: number): void {
    this.doneUnits = done;
    const now = Date.now();
    this.window.push([now, done]);
    while (this.window.length > 2 && now - this.window[0]![0] > 10_000) this.window.shift();
    if (now - this.lastPrint >= this.intervalMs) {
      this.lastPrint = now;
      this.sink.write(this.line(now), false);
    }
  }

  setTotal(total: number): void {
    this.total = total;
  }

  rate(now = Date.now()): number {
    const first = this.window[0];
    if (!first || now - first[0] < 200) {
      const elapsed = (now - this.start) / 1000;
      return elapsed > 0 ? this.doneUnits / elapsed : 0;
    }
    return (this.doneUnits - first[1]) / ((now - first[0]) / 1000);
  }

  line(now = Date.now()): string {
    const rate = this.rate(now);
    const parts = [this.label];
    if (this.total && this.total > 0) {
      const pct = Math.min(100, (100 * this.doneUnits) / this.total);
      parts.push(`${pct.toFixed(1)}%`, `${formatBytes(this.doneUnits)}/${formatBytes(this.total)}`);
      parts.push(`${formatBytes(rate)}/s`);
      if (rate > 0) parts.push(`ETA ${formatDuration((this.total - this.doneUnits) / rate)}`);
    } else {
      parts.push(formatBytes(this.doneUnits), `${formatBytes(rate)}/s`);
    }
    return parts.join('  ');
  }

  done(message?: string): void {
    if (this.finished) return;
    this.finished = true;
    const secs = (Date.now() - this.start) / 1000;
    const avg = secs > 0 ? this.doneUnits / secs : 0;
    this.sink.write(
      message ??
        `${this.label}  done: ${formatBytes(this.doneUnits)} in ${formatDuration(secs)} (${formatBytes(avg)}/s)`,
      true,
    );
  }
}

export function stderrSink(): ProgressSink {
  const tty = process.stderr.isTTY === true && !process.env.CI;
  return {
    write(line, final) {
      const text = redact(line);
      if (tty) process.stderr.write(`\r\x1b[2K${text}${final ? '\n' : ''}`);
      else process.stderr.write(text + '\n');
    },
  };
}

export function progressInterval(): number {
  const fromEnv = Number(process.env.ORB_PROGRESS_INTERVAL_MS);
  if (Number.isFinite(fromEnv) && fromEnv > 0) return fromEnv;
  return process.stderr.isTTY && !process.env.CI ? 250 : 10_000;
}

export const nullProgress: Progress = { add() {}, set() {}, setTotal() {}, done() {} };
