import { mkdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Summary } from '../core/command.js';
import { formatDuration } from '../core/progress.js';
import type { Vm } from '../qemu/runner.js';
import type { SmokeResult } from './types.js';

/**
 * Screenshots over time, bounded in number: when more than `max` accumulate, every second one of
 * the older ones is dropped, so a long boot keeps an even film strip from start to end.
 */
export class ScreenshotRecorder {
  readonly files: string[] = [];
  private n = 0;
  constructor(
    private readonly dir: string,
    private readonly t0: number,
    private readonly max = 120,
  ) {}

  async take(vm: Vm, label = ''): Promise<{ path: string } | { error: string }> {
    await mkdir(this.dir, { recursive: true });
    const secs = Math.round((performance.now() - this.t0) / 1000);
    const name = `${String(++this.n).padStart(4, '0')}-t${String(secs).padStart(5, '0')}s${label ? '-' + label : ''}.png`;
    const path = join(this.dir, name);
    try {
      await vm.screenshot(path);
    } catch (err) {
      return { error: (err as Error).message };
    }
    this.files.push(path);
    if (this.files.length > this.max) await this.thin();
    return { path };
  }

  private async thin(): Promise<void> {
    // Keep the first and the newest quarter intact; halve the rest.
    const keepTail = Math.floor(this.max / 4);
    const older = this.files.slice(1, this.files.length - keepTail);
    const drop = older.filter((_, i) => i % 2 === 0);
    for (const f of drop) await rm(f, { force: true });
    const dropped = new Set(drop);
    const kept = this.files.filter((f) => !dropped.has(f));
    this.files.length = 0;
    this.files.push(...kept);
  }
}

/** The last `n` lines of a log file (for the summary and failure messages). */
export async function tailFile(path: string, n: number): Promise<string> {
  const text = await readFile(path, 'utf8').catch(() => '');
  // Serial consoles carry ANSI escapes and CRs; strip them so the summary stays readable.
  // eslint-disable-next-line no-control-regex -- matching the ESC of terminal sequences is the point
  const clean = text.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '').replace(/\r/g, '');
  return clean
    .split('\n')
    .filter((l) => l.trim())
    .slice(-n)
    .join('\n');
}

const ICON = { passed: 'passed', failed: 'FAILED', skipped: 'skipped' } as const;

export async function writeSummary(summary: Summary, r: SmokeResult): Promise<void> {
  summary.heading(`smoke-test: ${r.passed ? 'passed' : 'FAILED'}`);
  if (!r.passed) summary.text(r.failures.map((f) => `- ${f}`).join('\n'));
  summary.table(
    ['check', 'result', 'after', 'detail'],
    r.checks.map((c) => [
      c.name,
      ICON[c.status],
      c.seconds === undefined ? '' : `${c.seconds.toFixed(1)} s`,
      c.detail,
    ]),
  );
  const rows: [string, string][] = [
    ['image', r.imageDescription],
    ['machine', `${r.arch}, ${r.firmware}${r.tpm ? ' + TPM 2.0' : ''}, ${r.accelerator}, ${r.memoryMiB} MiB`],
    [
      'first serial output',
      r.timings.firstSerial === undefined ? 'none' : `${r.timings.firstSerial.toFixed(1)} s`,
    ],
    [
      'RDP ready',
      r.timings.rdpReady === undefined
        ? r.rdpEnabled
          ? 'not reached'
          : 'not checked'
        : `${r.timings.rdpReady.toFixed(1)} s`,
    ],
    ['total', formatDuration(r.timings.total)],
  ];
  if (r.rdp) {
    rows.push(['RDP protocol', r.rdp.description]);
    if (r.rdp.tls)
      rows.push([
        'certificate',
        `${r.rdp.tls.subject} (valid ${r.rdp.tls.validFrom} to ${r.rdp.tls.validTo})`,
      ]);
  }
  if (r.shutdown) rows.push(['shutdown', r.shutdown]);
  rows.push(['evidence', `${r.evidenceDir} (${r.screenshots.length} screenshots, serial.log, qemu.log)`]);
  summary.table(['', ''], rows);
  if (!r.passed) {
    const tail = await tailFile(r.serialLog, 30);
    summary.text('Last lines of the serial console:').code(tail || '(no serial output)');
  }
}
