import { execFileSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { flatten } from '../../src/qemu/img.js';
import { RateProgress, type ProgressSink, type ProgressUnit } from '../../src/core/progress.js';

function recorder(): ProgressSink & { lines: string[]; finals: string[] } {
  const lines: string[] = [];
  const finals: string[] = [];
  return {
    lines,
    finals,
    write(line, final) {
      (final ? finals : lines).push(line);
    },
  };
}

describe('progress units', () => {
  const T0 = new Date('2026-01-01T00:00:00Z');
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(T0);
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  /** `steps` of [seconds since start, done]: the reporter's lines, one per step. */
  function run(unit: ProgressUnit | undefined, total: number | undefined, steps: [number, number][]) {
    vi.setSystemTime(T0);
    const sink = recorder();
    const p = new RateProgress('work', total, sink, 0, unit);
    for (const [s, done] of steps) {
      vi.setSystemTime(T0.getTime() + s * 1000);
      p.set(done);
    }
    p.done();
    return sink;
  }

  it('percent: the percentage and an ETA, never bytes', () => {
    const sink = run('percent', 100, [
      [10, 20],
      [20, 42],
    ]);
    // 22% in the last 10 s: 2.2%/s, 58% left -> 26 s (the rate follows the recent window).
    expect(sink.lines).toEqual(['work  20%  ETA 40s', 'work  42%  ETA 26s']);
    expect(sink.finals).toEqual(['work  done in 20s']);
    expect([...sink.lines, ...sink.finals].join('\n')).not.toMatch(/\bB\b|\/s/);
  });

  it('percent learned late through setTotal, as qemu-img convert -p reports it', () => {
    const sink = recorder();
    const p = new RateProgress('write disk.qcow2', undefined, sink, 0);
    p.setTotal(100, 'percent');
    vi.setSystemTime(T0.getTime() + 5000);
    p.set(99.7);
    expect(sink.lines).toEqual(['write disk.qcow2  99%  ETA 0s']);
  });

  it('bytes: sizes, rate and ETA as before', () => {
    const sink = run('bytes', 1024 ** 3, [[8, 512 * 1024 ** 2]]);
    expect(sink.lines).toEqual(['work  50.0%  512.0 MiB/1.0 GiB  64.0 MiB/s  ETA 8s']);
    expect(sink.finals).toEqual(['work  done: 512.0 MiB in 8s (64.0 MiB/s)']);
    // The default unit is bytes, so every existing caller keeps its lines.
    expect(run(undefined, 1024 ** 3, [[8, 512 * 1024 ** 2]]).lines).toEqual(sink.lines);
  });

  it('bytes without a total: amount and rate only', () => {
    expect(run('bytes', undefined, [[2, 2048]]).lines).toEqual(['work  2.0 KiB  1.0 KiB/s']);
  });

  it('count: done/total with items per second', () => {
    const sink = run('count', 10, [[4, 2]]);
    expect(sink.lines).toEqual(['work  20.0%  2/10  0.5/s  ETA 16s']);
    expect(sink.finals).toEqual(['work  done: 2 in 4s (0.5/s)']);
    expect(run('count', undefined, [[4, 2]]).lines).toEqual(['work  2  0.5/s']);
  });
});

describe('qemu-img convert progress', () => {
  it('prints percent, not "0 B/100 B"', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'orb-progress-'));
    try {
      const src = join(dir, 'src.qcow2');
      execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', src, '64M']);
      const sink = recorder();
      await flatten(src, join(dir, 'out.qcow2'), 'qcow2', new RateProgress('write out.qcow2', 100, sink, 0));
      const all = [...sink.lines, ...sink.finals];
      expect(sink.lines.length).toBeGreaterThan(0);
      for (const line of sink.lines) expect(line).toMatch(/^write out\.qcow2 {2}\d{1,3}%( {2}ETA \S+)?$/);
      expect(sink.finals).toEqual([expect.stringMatching(/^write out\.qcow2 {2}done in \d+s$/)]);
      expect(all.join('\n')).not.toMatch(/\d B\b/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
