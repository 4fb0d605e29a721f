import { redact } from './log.js';

/**
 * Progress with rate and ETA. On a terminal it redraws one line on stderr; elsewhere (Actions,
 * GitLab, pipes) it prints a line every `intervalMs`, because CI logs have no carriage returns.
 */
export interface Progress {
  /** add `n` units done */
  add(n: number): void;
  /** set the absolute amount done */
  set(done: number): void;
  /** the whole amount, and what it counts when the reporter learns that only now */
  setTotal(total: number, unit?: ProgressUnit): void;
  done(message?: string): void;
}

/**
 * What the numbers count. Bytes get sizes and a transfer rate; percent (a tool that reports only
 * "42/100%", such as `qemu-img convert -p`) gets the percentage and an ETA, since "%/s" says
 * nothing a reader can use; count (files, blobs) gets "3/10" and items per second.
 */
export type ProgressUnit = 'bytes' | 'percent' | 'count';

/** The factory a command gets: `progress('write disk.qcow2', 100, 'percent')`. */
export type ProgressFactory = (label: string, total?: number, unit?: ProgressUnit) => Progress;

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
    private unit: ProgressUnit = 'bytes',
  ) {
    if (unit === 'percent') this.total ??= 100;
  }

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

  setTotal(total: number, unit?: ProgressUnit): void {
    this.total = total;
    if (unit) this.unit = unit;
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
    const total = this.total && this.total > 0 ? this.total : undefined;
    const parts = [this.label];
    if (this.unit === 'percent') {
      // Floored: "100%" only once the tool is really done.
      parts.push(`${Math.floor(Math.min(100, (100 * this.doneUnits) / (total ?? 100)))}%`);
    } else if (total) {
      const pct = Math.min(100, (100 * this.doneUnits) / total);
      parts.push(`${pct.toFixed(1)}%`, `${this.amount(this.doneUnits)}/${this.amount(total)}`);
      parts.push(this.rateText(rate));
    } else {
      parts.push(this.amount(this.doneUnits), this.rateText(rate));
    }
    const left = (total ?? (this.unit === 'percent' ? 100 : 0)) - this.doneUnits;
    if (rate > 0 && left > 0) parts.push(`ETA ${formatDuration(left / rate)}`);
    return parts.join('  ');
  }

  done(message?: string): void {
    if (this.finished) return;
    this.finished = true;
    const secs = (Date.now() - this.start) / 1000;
    const avg = secs > 0 ? this.doneUnits / secs : 0;
    const summary =
      this.unit === 'percent'
        ? `done in ${formatDuration(secs)}`
        : `done: ${this.amount(this.doneUnits)} in ${formatDuration(secs)} (${this.rateText(avg)})`;
    this.sink.write(message ?? `${this.label}  ${summary}`, true);
  }

  private amount(n: number): string {
    return this.unit === 'bytes' ? formatBytes(n) : String(Math.round(n));
  }

  private rateText(perSecond: number): string {
    return this.unit === 'bytes' ? `${formatBytes(perSecond)}/s` : `${perSecond.toFixed(1)}/s`;
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
